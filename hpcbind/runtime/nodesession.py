"""One container per node, shared by the node's ranks.

Under ``hpcrun mpirun``, every rank runs ``hpcrun exec --node-session KEY ...`` with the same
KEY. The first rank on a node to bind the abstract socket ``\\0hpcbind/<uid>/<KEY>`` forks a
*holder*: a process that computes the container once (discovery, the plan, the image mount,
the binds) and stays in it. Every rank of the node, that first one included, connects,
receives the holder's user and mount namespaces as file descriptors (SCM_RIGHTS), joins them
with ``setns`` and execs its program. So the node mounts the image once, discovers once, and
its ranks share one user namespace, which CMA, XPMEM and ptrace-based shared memory need
(the approach of pyxis and Charliecloud's ``--join``).

Under Open MPI's ``mpirun`` (whose node runs its local ranks as its own children), ``hpcrun
mpirun`` starts that node's holder itself (``prestart``), before its checks and before it
becomes mpirun: the holder then imports what it needs meanwhile, and sets the container up from the
first rank's request instead of its own environment.

The holder watches its ranks through pidfds (Linux >= 5.3): it exits when the last rank
that joined has exited, however it ended (``kill -9`` included), and the kernel then tears
the namespaces and mounts down; the FUSE server dies with the holder (PR_SET_PDEATHSIG).
An abstract socket leaves no file behind, and the peer's uid is checked (SO_PEERCRED) both
ways, so another user cannot join someone else's container. KEY is in every rank's argv,
which /proc shows to all users, so the name also carries ``HPCBIND_NODE_SECRET``: ``hpcrun
mpirun|srun`` puts a fresh one in the ranks' environment, which only the user (and root) can
read, so no other user can bind the name first. Should another user hold it anyway (ranks
started by hand without the secret, or a name seen in /proc/net/unix and bound after its
holder went away), the rank runs in a container of its own, with a note: slower, never
refused.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
from collections import namedtuple

from hpcbind.errors import HpcbindError
from hpcbind.runtime import linux
from hpcbind.runtime.container import (RankExec, apply, command_line, cwd_failure,
                                       failure_line)

CLONE_NEWUSER = linux.CLONE_NEWUSER
CLONE_NEWNS = linux.CLONE_NEWNS
_IDLE_EXIT_S = 60.0  # a holder no rank ever joins goes away after this
# When the launcher does not say how many ranks this node runs, a rank may still be on its
# way when the first ones have finished: keep the container this long after the last exit.
_LINGER_S = 1.0
_MAX_MESSAGE = 1 << 20
_REQUEST_TIMEOUT_S = 5.0
SECRET_VARIABLE = "HPCBIND_NODE_SECRET"
LISTENER_VARIABLE = "HPCBIND_NODE_LISTENER"


def socket_name(key: str) -> bytes:
    """Per user, launch and *filesystem view*: the caller's mount namespace is part of the
    name, so processes that see different files (two slurmd of one host, each with its own
    spool and PMIx directory) never share a container, even though abstract sockets are
    shared by everything in the network namespace."""
    view = os.stat("/proc/self/ns/mnt").st_ino
    secret = os.environ.get(SECRET_VARIABLE, "")
    return f"\0hpcbind/{os.getuid()}/{key}/{secret}/{view:x}".encode()


class Request(namedtuple("Request", "pid argv env cwd")):
    """A rank asking to join: its pid (from the socket), command, environment and directory."""

    __slots__ = ()


def join(key: str, argv: list[str], env: dict[str, str], cwd: str,
         listener: socket.socket | None, make_container, make_rank, job_of) -> None:
    """Join (creating if first) the node's container for ``key`` and exec ``argv``.

    job_of(Request): (job, how many processes of that job this node runs, None where the
    launcher does not say); the holder stays while any job it has seen still has processes
    to come (see ``Tally``). Only the holder calls ``make_container()``, which gives the
    container spec to prepare and what it keeps for the ranks (``shared``), and
    ``make_rank(shared, Request)``, which gives a rank's ContainerSpec and the notes to
    print for it. A rank only applies what it is sent, as hpcrun-starter does.
    Returns only when it cannot join (another user holds the name): the caller then runs
    the rank in a container of its own. ``listener``: from ``inherited_listener``.
    """
    request = _pack(["1", cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())])
    for _ in range(5):  # a holder may be exiting just as we connect: start over
        if listener is None:
            listener = _try_bind(key)
        if listener is not None:
            _spawn_holder(listener, make_container, make_rank, job_of)
            listener = None
        reply = _exchange(key, request)
        if reply is None:
            continue
        fields, fds = reply
        if fields[0] == "error":
            raise HpcbindError(fields[1])
        notes, rank = fields[1], _rank_exec(fields)
        _enter_namespaces(fds)
        if notes:
            os.write(2, notes.encode())
        apply(rank)
    # another user holds the name (bound, listening or not), or holders kept dying
    print(f"hpcrun: note: could not join the node session {key}; this rank runs in a "
          "container of its own", file=sys.stderr)


def inherited_listener() -> socket.socket | None:
    """The node session's socket, bound and listening, when hpcrun-starter found no holder
    and made this rank the node's first (it then execs hpcrun with the descriptor)."""
    fd = os.environ.pop(LISTENER_VARIABLE, None)
    if fd is None or not fd.isdigit():
        return None
    listener = socket.socket(fileno=int(fd))
    os.set_inheritable(listener.fileno(), False)
    return listener


def _rank_exec(fields: list[str]) -> RankExec:
    *lines, argc = fields[2:9]
    argv = fields[9:9 + int(argc)]
    env = dict(entry.partition("=")[::2] for entry in fields[9 + int(argc):])
    return RankExec(argv, env, *lines)


def _exec_fields(rank: RankExec, notes: str) -> list[str]:
    """["exec", notes, cwd, home, the two failure lines' prefixes and suffixes, argc, argv...,
    environment...]: what hpcrun-starter's ``apply`` reads."""
    return ["exec", notes, *rank[2:], str(len(rank.argv)), *rank.argv,
            *(f"{k}={v}" for k, v in rank.env.items())]


def _request(pid: int, fields: list[str]) -> Request:
    if len(fields) < 3 or fields[0] != "1":
        raise ValueError("not a version 1 request")
    cwd, argc = fields[1], int(fields[2])
    argv = fields[3:3 + argc]
    env = dict(entry.partition("=")[::2] for entry in fields[3 + argc:])
    return Request(pid, argv, env, cwd)


def _pack(fields: list[str]) -> bytes:
    """A message both ways: its length (uint32, native order) and NUL-terminated fields,
    which C reads without a parser (argv and environment strings cannot contain NUL)."""
    body = b"".join(os.fsencode(field) + b"\0" for field in fields)
    return struct.pack("=I", len(body)) + body


def _unpack(body: bytes) -> list[str]:
    return [os.fsdecode(field) for field in body.split(b"\0")[:-1]]


def _read_message(conn: socket.socket, with_fds: bool) -> tuple[list[str], list[int]] | None:
    """A whole message (None at EOF before its first byte) and the descriptors sent with it."""
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(conn, 4, 2, socket.MSG_CMSG_CLOEXEC)
    else:
        head = conn.recv(4)
    if not head:
        return None
    head += _read_exactly(conn, 4 - len(head))
    (length,) = struct.unpack("=I", head)
    if length > _MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes")
    return _unpack(_read_exactly(conn, length)), fds


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("message cut short")
        data += chunk
    return data


def _try_bind(key: str) -> socket.socket | None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(socket_name(key))
    except OSError as err:
        listener.close()
        if err.errno == 98:  # EADDRINUSE: another rank of this node created it
            return None
        raise
    listener.listen(4096)
    return listener


def prestart(key: str, warm, setup) -> None:
    """Fork the node's holder for ``key`` now, ahead of its ranks, unless one is bound.

    In the child: ``warm()`` (the imports a holder needs), then, with the first request
    that comes, ``setup(request)``: (make_container, make_rank, job_of) as ``join`` takes
    them, computed from that rank's command, environment and directory. The holder dies
    with this process, which execs the launcher once its checks pass (PR_SET_PDEATHSIG):
    when a check fails, or no rank of this node ever comes."""
    listener = _try_bind(key)  # before the launcher starts any rank
    if listener is None:
        return
    parent = os.getpid()
    pid = os.fork()
    if pid:
        listener.close()
        return
    try:
        linux.die_with(parent)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the launcher forwards standard input to a rank, not here
        os.close(devnull)
        warm()
        uid, received = os.getuid(), None
        while received is None:
            received = _receive(listener, uid)
        _holder(listener, *setup(received[1]), received)
    finally:
        os._exit(0)


def _spawn_holder(listener: socket.socket, make_container, make_rank, job_of) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            _holder(listener, make_container, make_rank, job_of)
        finally:
            os._exit(0)
    listener.close()
    # the holder is reparented to init (or a subreaper) when this rank execs; no wait here


def _holder(listener: socket.socket, make_container, make_rank, job_of,
            received: tuple[socket.socket, Request] | None = None) -> None:
    """Set the container up and serve the node's ranks; ``received``: a rank's connection
    and request already read, answered once the container is ready."""
    os.setsid()  # signals aimed at one rank's process group must not take the node down
    kept = [listener.fileno(), *([received[0].fileno()] if received else [])]
    failure = None
    try:
        # discovery first: it checks the launcher's descriptors (PMI_FD) as a rank has them
        spec, shared = make_container()
        _keep_only(*kept)
        from hpcbind.runtime.container import prepare

        prepare(spec)
        # Its executable (the user's Python, writable by them) stays running on the host
        # while the ranks' programs run: keep them from reopening it through /proc/PID/exe
        # (runc's CVE-2019-5736). Its capabilities in the container's user namespace already
        # do; this holds should it ever drop them. Not before prepare: it writes its uid_map.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        fds = [os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC),
               os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)]
    except HpcbindError as err:
        failure, fds = str(err), []
    except Exception as err:  # a bug: its traceback would go to /dev/null, so tell the ranks
        failure, fds = (f"internal error setting up the node's container: {err!r}; report it "
                        "with the command line"), []
    _keep_only(*kept, *fds)

    def answer(request: Request) -> list[str]:
        if failure is not None:
            return ["error", failure]
        try:
            rank, notes = make_rank(shared, request)
            return _exec_fields(RankExec(*command_line(rank), rank.cwd, rank.home,
                                         *cwd_failure(rank), *failure_line(rank)), notes)
        except HpcbindError as err:
            return ["error", str(err)]
        except Exception as err:
            return ["error", f"internal error preparing a rank: {err!r}; report it with the "
                             "command line"]

    _serve(listener, answer, fds, job_of, received)


def _keep_only(*needed: int) -> None:
    """Let go of everything else inherited from the rank: the launcher waits for EOF on the
    ranks' output pipes, and Hydra's PMI_FD must close when the rank that owns it exits.
    (Idempotent: called after set-up, and before it when set-up got that far.)"""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    keep = sorted({0, 1, 2, *needed})
    for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
        os.closerange(low + 1, high)


class Tally:
    """Who the holder still waits for, per job: the initial ranks are one job, the processes
    each MPI_Comm_spawn starts another, with its own local count. A spawned process may
    arrive before the node's last initial rank has (a parent on another node spawns onto
    this one while its ranks still start): counted with the initial ranks, it would let the
    holder leave before the last of them came. One that comes after the holder has left
    starts a new one, as a node's first rank does."""

    def __init__(self) -> None:
        self.jobs: dict[str, list] = {}  # job -> [expected or None, joined]

    def joined(self, job: str, expected: int | None) -> None:
        entry = self.jobs.setdefault(job, [expected, 0])
        entry[1] += 1

    def complete(self) -> bool:
        """Every job seen has had all its processes (a job of unknown size never has)."""
        return bool(self.jobs) and all(expected is not None and joined >= expected
                                       for expected, joined in self.jobs.values())


def _serve(listener: socket.socket, answer, fds: list[int], job_of,
           received: tuple[socket.socket, Request] | None) -> None:
    uid = os.getuid()
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    ranks: set[int] = set()  # pidfds of the processes in the container
    tally = Tally()
    while True:
        if received is not None:
            pidfd = _reply(*received, answer, fds, job_of, tally)
            received = None
            if pidfd is not None:
                ranks.add(pidfd)
                poller.register(pidfd, select.POLLIN)
        if not ranks and tally.complete():
            return  # every process of this node came and went
        if not tally.jobs:
            timeout = _IDLE_EXIT_S
        elif ranks:
            timeout = None
        else:
            timeout = _LINGER_S  # all gone, but more may be on their way
        events = poller.poll(None if timeout is None else timeout * 1000)
        if not events:
            return
        for fd, _ in events:
            if fd != listener.fileno():  # a rank exited
                poller.unregister(fd)
                os.close(fd)
                ranks.discard(fd)
                continue
            received = _receive(listener, uid)


def _receive(listener: socket.socket, uid: int) -> tuple[socket.socket, Request] | None:
    """The next connection and its request, or None (another user, garbage, gone)."""
    conn, _ = listener.accept()
    pid, peer_uid = _peer(conn)
    request = None
    if peer_uid == uid:
        # a rank writes its request right after connecting: waiting long means a stuck or
        # hostile peer, which must not stall the node's other ranks
        conn.settimeout(_REQUEST_TIMEOUT_S)
        try:
            message = _read_message(conn, with_fds=False)
            request = _request(pid, message[0]) if message else None
        except (OSError, ValueError):  # it died waiting, or sent garbage
            pass
    if request is None:
        conn.close()
        return None
    return conn, request


def _reply(conn: socket.socket, request: Request, answer, fds: list[int], job_of,
           tally: Tally) -> int | None:
    """Answer a received request; the pidfd of the process that joined, or None."""
    with conn:
        tally.joined(*job_of(request))  # a rank that dies waiting for us came and went too
        try:
            pidfd = os.pidfd_open(request.pid)
        except OSError:
            return None  # it died before we looked
        try:
            reply = answer(request)
            socket.send_fds(conn, [_pack(reply)], fds if reply[0] == "exec" else [])
        except OSError:  # it died waiting (EPIPE)
            os.close(pidfd)
            return None
    return pidfd


def _peer(conn: socket.socket) -> tuple[int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _exchange(key: str, request: bytes) -> tuple[list[str], list[int]] | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    with conn:
        # a squatter that never accepts fills its backlog, where a blocking connect waits
        # forever: a unix socket's non-blocking connect answers EAGAIN at once instead
        conn.setblocking(False)
        try:
            conn.connect(socket_name(key))
        except (ConnectionRefusedError, BlockingIOError):
            return None  # bound but not listening yet, backlog full, or gone: try again
        conn.setblocking(True)
        if _peer(conn)[1] != os.getuid():
            return None  # squatted: never take namespaces from another user
        try:
            conn.sendall(request)
            reply = _read_message(conn, with_fds=True)
        except (ConnectionResetError, BrokenPipeError):
            return None  # the holder died before accepting us: try again
        except ValueError as err:
            raise HpcbindError(f"the node's holder for session {key} answered badly ({err})",
                               "run the job again; report it if it happens again") from None
    if reply is not None and reply[0] and reply[0][0] == "exec" and len(reply[1]) != 2:
        raise HpcbindError("the node's holder sent no namespaces with its answer",
                           "report it with the command line")
    return reply


def _enter_namespaces(fds: list[int]) -> None:
    user_fd, mnt_fd = fds
    # root's holder has no user namespace of its own: joining ours again would be EINVAL
    if os.fstat(user_fd).st_ino != os.stat("/proc/self/ns/user").st_ino:
        linux.setns(user_fd, CLONE_NEWUSER)
    linux.setns(mnt_fd, CLONE_NEWNS)
    os.close(user_fd)
    os.close(mnt_fd)
