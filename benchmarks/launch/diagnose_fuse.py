"""Where a plain user's MPI launch goes on the squashfuse path: FUSE requests, server CPU.

For each FUSE server (Debian's ``squashfuse_ll`` and ``hpcbind-squashfuse``) and each N:

- a timed run of ``hpcrun mpirun -np N example.sif mpi-hello`` as the plain user, sampling
  /proc every 20 ms for the server's CPU time and for the moment the N-th ``mpi-hello``
  process appears (time to the last rank's execve);
- a run with the server's ``-d`` log, counting the FUSE requests by operation and by the
  process that made them (per rank), and the READs (flat in N: ranks share the page cache).

    .venv/bin/python benchmarks/launch/diagnose_fuse.py [--sizes 16 64 128 256] [--user NAME]

Prints a table and writes ``results/fuse.json``. Needs ``make starter example`` and the
plain user (``make test-user``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MPIRUN = ["mpirun.openmpi", "--oversubscribe", "--bind-to", "none"]
SERVERS = {"squashfuse_ll": "/usr/bin/squashfuse_ll",
           "hpcbind-squashfuse": str(REPO / ".venv/bin/hpcbind-squashfuse")}
COMMS = {"squashfuse_ll", "hpcbind-squashf"}  # as /proc names them (15 characters)
HZ = os.sysconf("SC_CLK_TCK")


def as_user(user: str, env: dict[str, str]) -> list[str]:
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "env", "-i", f"HOME={pw.pw_dir}", f"USER={user}", "PATH=/usr/bin:/bin",
            *(f"{k}={v}" for k, v in env.items()),
            "prlimit", "--nofile=20000:20000"]  # a plain user's hard limit on a cluster


def processes(uid: int) -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds) of the user's processes."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / HZ)
    return found


def sampled_run(argv: list[str], uid: int, ranks: int) -> dict:
    """Wall time, the server's CPU time and when the last rank became mpi-hello."""
    seen_ranks: set[int] = set()
    server_cpu: dict[int, float] = {}
    last_rank_at = [None]
    done = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            for pid, (name, cpu) in processes(uid).items():
                if name in COMMS:
                    server_cpu[pid] = max(cpu, server_cpu.get(pid, 0.0))
                elif name == "mpi-hello" and pid not in seen_ranks:
                    seen_ranks.add(pid)
                    if len(seen_ranks) == ranks:
                        last_rank_at[0] = time.perf_counter() - start
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if result.returncode != 0:
        raise SystemExit(f"failed: {result.stderr.decode(errors='replace')[-400:]}")
    return {"wall_s": wall, "server_cpu_s": sum(server_cpu.values()),
            "last_rank_exec_s": last_rank_at[0]}


def counted_run(argv: list[str], log: Path, ranks: int) -> dict:
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ops: collections.Counter = collections.Counter()
    by_pid: collections.Counter = collections.Counter()
    for match in re.finditer(r"opcode: (\w+) \(\d+\), nodeid: \d+, insize: \d+, pid: (\d+)",
                             log.read_text(errors="replace")):
        ops[match[1]] += 1
        if match[2] != "0":  # the kernel's own (RELEASE, FORGET) come with pid 0
            by_pid[match[2]] += 1
    per_process = sorted(by_pid.values())
    return {"requests": sum(ops.values()), "per_rank": sum(ops.values()) / ranks,
            "by_op": dict(ops.most_common()), "reads": ops["READ"],
            "median_per_process": per_process[len(per_process) // 2] if per_process else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS))
    parser.add_argument("--user", default="hpcbind-test")
    parser.add_argument("--image", default=str(REPO / "examples/example.sif"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    pw = pwd.getpwnam(args.user)
    # outside /tmp: the container's session covers /tmp before its FUSE server starts
    work = Path(tempfile.mkdtemp(prefix="hpcbind-fuse-", dir="/var/tmp"))
    work.chmod(0o755)
    image = work / "example.sif"
    shutil.copyfile(args.image, image)
    hpcrun = str(REPO / ".venv/bin/hpcrun")
    rows = []
    for server in args.servers:
        log = work / f"{server}.log"
        log.write_text("")  # before the chown below: the user's server appends to it
        wrapper = work / f"{server}-logged"
        wrapper.write_text(f'#!/bin/sh\nexec {SERVERS[server]} -d "$@" 2>>{log}\n')
        for path, text in ((work / f"{server}.toml", f'[image]\nsquashfuse = "{SERVERS[server]}"\n'),
                           (work / f"{server}-logged.toml", f'[image]\nsquashfuse = "{wrapper}"\n')):
            path.write_text(text)
        for path in work.iterdir():
            os.chown(path, pw.pw_uid, pw.pw_gid)
            path.chmod(0o755)
        for n in args.sizes:
            job = [hpcrun, *MPIRUN, "-np", str(n), str(image), "/usr/local/bin/mpi-hello"]
            plain = as_user(args.user, {"HPCBIND_CONFIG": str(work / f"{server}.toml")})
            logged = as_user(args.user, {"HPCBIND_CONFIG": str(work / f"{server}-logged.toml")})
            row = {"server": server, "ranks": n, **sampled_run(plain + job, pw.pw_uid, n)}
            log.write_text("")
            row.update(counted_run(logged + job, log, n))
            rows.append(row)
            print(f"{server:19s} N={n:4d}  wall {row['wall_s']:6.2f} s  last execve "
                  f"{row['last_rank_exec_s'] or float('nan'):6.2f} s  server CPU "
                  f"{row['server_cpu_s']:6.2f} s  requests {row['requests']:6d} "
                  f"({row['per_rank']:.0f}/rank, READ {row['reads']})  "
                  f"{dict(list(row['by_op'].items())[:6])}", flush=True)
    shutil.rmtree(work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuse.json").write_text(json.dumps({"user": args.user, "rows": rows}, indent=2))
    print(f"wrote {out / 'fuse.json'}")


if __name__ == "__main__":
    main()
