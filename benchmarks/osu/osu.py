"""OSU micro-benchmarks in mpi4py, with the OSU Micro-Benchmarks (OMB 7.x) methodology.

    mpirun -np 2 python3 osu.py latency|bw|bibw|mbw_mr|allreduce|alltoall|bcast
                         [--min 1] [--max 4194304] [--iters N] [--device] [--json]

What is kept from OMB (``c/mpi/pt2pt/standard/osu_*.c``, ``c/mpi/collective/blocking/``,
``c/util/osu_util.h``), so the numbers read like OMB's:

- sizes are powers of two from --min to --max; a size holding no element of the datatype is
  skipped (allreduce sums MPI_FLOAT, so it starts at 4 B);
- warm-up (skip) and timed iterations by kind, fewer above LARGE_MESSAGE_SIZE (8 KiB):
  latency 100+10000 / 10+1000, bandwidth 10+100 / 2+20, collectives 100+1000 / 10+100;
  ``--iters N`` sets the timed iterations of every size and leaves the warm-up alone;
- buffers are allocated once at the largest size, touched (OMB's set_buffer), and reused;
  host buffers are anonymous mmap pages, page-aligned as OMB's posix_memalign(page size);
- times are ``MPI.Wtime``; latency is half the round trip of a blocking ping-pong;
  bandwidth is a window of 64 MPI_Isend then a 4-byte ack, over the timed iterations (bibw:
  both ranks send a window and receive one; mbw_mr: pairs i <-> i+N/2, aggregate MB/s and
  messages/s, a barrier before every iteration); collectives time each call alone, with a
  barrier after it, and report the average over ranks of each rank's mean (min and max too);
- MB/s are 10^6 bytes per second; MPI is initialised with MPI_Init (thread level single), as
  OMB does, not mpi4py's default MPI_Init_thread(MULTIPLE).

``--device`` uses GPU buffers (OMB's ``D D``) from CuPy, Numba or PyTorch, whichever the
Python has and can reach a CUDA device with; when none can, or the MPI library says it is not
CUDA-aware, rank 0 prints why and every rank exits with EXIT_SKIPPED.

Rank 0 prints OMB's table; with ``--json`` it prints one JSON object per line instead: first
``{"meta": ...}`` (MPI library, mpi4py, Python, buffers), then one row per size.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import mmap
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

import mpi4py

mpi4py.rc.threads = False  # MPI_Init as OMB: thread level MULTIPLE costs locks per message
from mpi4py import MPI  # noqa: E402  (initialises MPI: after the rc setting above)

EXIT_SKIPPED = 77  # automake's and meson's code for a test that could not run here
LARGE_MESSAGE_SIZE = 8192
WINDOW = 64
ACK_BYTES = 4
MAX_SIZE = 1 << 22
# kind -> ((iterations, skip) up to LARGE_MESSAGE_SIZE, (iterations, skip) above), as osu_util.h
SCHEDULES = {
    "latency": ((10000, 100), (1000, 10)),
    "bandwidth": ((100, 10), (20, 2)),
    "collective": ((1000, 100), (100, 10)),
}
FLOAT_BYTES = 4  # allreduce sums MPI_FLOAT


@dataclass(frozen=True)
class Buffers:
    """What every benchmark sends from and receives into, allocated once."""

    send: object
    recv: object
    kind: str  # "host mmap" or the device library's name


@dataclass(frozen=True)
class Row:
    size: int
    value: float  # us for latencies, MB/s for bandwidths (rank 0's result)
    iterations: int
    extra: dict  # min/max for collectives, messages/s for mbw_mr


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # OMB's header line
    kind: str  # a SCHEDULES key
    unit: str
    column: str  # OMB's column header
    element: int  # bytes of the datatype the sizes count in
    exactly_two: bool  # pt2pt between ranks 0 and 1, as OMB (the others need >= 2)
    run: Callable[[MPI.Comm, Buffers, int, int, int], Row | None]


# --- the benchmarks: each returns rank 0's Row, None on the other ranks -----------------------


def latency(comm: MPI.Comm, buf: Buffers, size: int, iterations: int, skip: int) -> Row | None:
    send, recv = [buf.send, size, MPI.BYTE], [buf.recv, size, MPI.BYTE]
    rank = comm.Get_rank()
    comm.Barrier()
    start = 0.0
    for i in range(iterations + skip):
        if i == skip:
            start = MPI.Wtime()
        if rank == 0:
            comm.Send(send, 1, 1)
            comm.Recv(recv, 1, 1)
        else:
            comm.Recv(recv, 0, 1)
            comm.Send(send, 0, 1)
    elapsed = MPI.Wtime() - start
    return Row(size, elapsed * 1e6 / (2 * iterations), iterations, {}) if rank == 0 else None


def bw(comm: MPI.Comm, buf: Buffers, size: int, iterations: int, skip: int) -> Row | None:
    rank = comm.Get_rank()
    window = _window(comm, buf, size, sender=rank == 0, peer=1 - rank)
    comm.Barrier()
    total = 0.0
    for i in range(iterations + skip):
        seconds = window()
        if i >= skip:
            total += seconds
    return Row(size, size / 1e6 * iterations * WINDOW / total, iterations, {}) if rank == 0 else None


def bibw(comm: MPI.Comm, buf: Buffers, size: int, iterations: int, skip: int) -> Row | None:
    send, recv = [buf.send, size, MPI.BYTE], [buf.recv, size, MPI.BYTE]
    rank = comm.Get_rank()
    peer = 1 - rank
    # OMB's tags: rank 0 sends with 100 and receives 10, rank 1 the other way round
    send_tag, recv_tag = (100, 10) if rank == 0 else (10, 100)
    comm.Barrier()
    total = 0.0
    for i in range(iterations + skip):
        start = MPI.Wtime()
        receives = [comm.Irecv(recv, peer, recv_tag) for _ in range(WINDOW)]
        sends = [comm.Isend(send, peer, send_tag) for _ in range(WINDOW)]
        MPI.Request.Waitall(sends)
        MPI.Request.Waitall(receives)
        if i >= skip:
            total += MPI.Wtime() - start
    return Row(size, size / 1e6 * iterations * WINDOW * 2 / total, iterations, {}) if rank == 0 else None


def mbw_mr(comm: MPI.Comm, buf: Buffers, size: int, iterations: int, skip: int) -> Row | None:
    rank, pairs = comm.Get_rank(), comm.Get_size() // 2
    sender = rank < pairs
    # the odd rank out, if any, takes part in the barriers only
    window = _window(comm, buf, size, sender, rank + pairs if sender else rank - pairs) \
        if rank < 2 * pairs else (lambda: 0.0)
    total = 0.0
    for i in range(iterations + skip):
        comm.Barrier()  # mbw_mr lines the pairs up before every window
        seconds = window()
        if i >= skip:
            total += seconds
    if rank != 0:
        return None
    mbps = size / 1e6 * pairs * iterations * WINDOW / total
    return Row(size, mbps, iterations, {"messages_per_s": 1e6 * mbps / size, "pairs": pairs})


def _window(comm: MPI.Comm, buf: Buffers, size: int, sender: bool, peer: int) -> Callable[[], float]:
    """OMB's bandwidth step: a window of 64 messages one way, a 4-byte ack back. The step
    returns the sender's seconds for it (0 on the receiver)."""
    send, recv = [buf.send, size, MPI.BYTE], [buf.recv, size, MPI.BYTE]
    ack_out, ack_in = [buf.send, ACK_BYTES, MPI.BYTE], [buf.recv, ACK_BYTES, MPI.BYTE]

    def send_window() -> float:
        start = MPI.Wtime()
        MPI.Request.Waitall([comm.Isend(send, peer, 100) for _ in range(WINDOW)])
        comm.Recv(ack_in, peer, 101)
        return MPI.Wtime() - start

    def receive_window() -> float:
        MPI.Request.Waitall([comm.Irecv(recv, peer, 100) for _ in range(WINDOW)])
        comm.Send(ack_out, peer, 101)
        return 0.0

    return send_window if sender else receive_window


def _collective(call: Callable[[MPI.Comm, Buffers, int], Callable[[], None]]
                ) -> Callable[[MPI.Comm, Buffers, int, int, int], Row | None]:
    """OMB's collective loop around ``call(comm, buf, size)``: each call timed alone, a barrier
    after it; per-rank mean, then min, max and mean over ranks at rank 0."""

    def run(comm: MPI.Comm, buf: Buffers, size: int, iterations: int, skip: int) -> Row | None:
        operation = call(comm, buf, size)
        comm.Barrier()
        timer = 0.0
        for i in range(iterations + skip):
            start = MPI.Wtime()
            operation()
            stop = MPI.Wtime()
            comm.Barrier()
            if i >= skip:
                timer += stop - start
        mean = timer * 1e6 / iterations
        low = comm.reduce(mean, MPI.MIN, 0)
        high = comm.reduce(mean, MPI.MAX, 0)
        total = comm.reduce(mean, MPI.SUM, 0)
        if comm.Get_rank() != 0:
            return None
        return Row(size, total / comm.Get_size(), iterations, {"min_us": low, "max_us": high})

    return run


def _allreduce(comm: MPI.Comm, buf: Buffers, size: int) -> Callable[[], None]:
    count = size // FLOAT_BYTES
    send, recv = [buf.send, count, MPI.FLOAT], [buf.recv, count, MPI.FLOAT]
    return lambda: comm.Allreduce(send, recv, MPI.SUM)


def _alltoall(comm: MPI.Comm, buf: Buffers, size: int) -> Callable[[], None]:
    send, recv = [buf.send, size, MPI.BYTE], [buf.recv, size, MPI.BYTE]  # size per peer
    return lambda: comm.Alltoall(send, recv)


def _bcast(comm: MPI.Comm, buf: Buffers, size: int) -> Callable[[], None]:
    message = [buf.send, size, MPI.BYTE]
    return lambda: comm.Bcast(message, 0)


def _columns(*names: str) -> str:
    """OMB's column header: "# Size" in 10 characters, each column right-aligned in 20."""
    return f"{'# Size':<10}" + "".join(f"{name:>20}" for name in names)


BENCHMARKS = {b.name: b for b in (
    Benchmark("latency", "OSU MPI Latency Test", "latency", "us", _columns("Latency (us)"),
              1, True, latency),
    Benchmark("bw", "OSU MPI Bandwidth Test", "bandwidth", "MB/s", _columns("Bandwidth (MB/s)"),
              1, True, bw),
    Benchmark("bibw", "OSU MPI Bi-Directional Bandwidth Test", "bandwidth", "MB/s",
              _columns("Bandwidth (MB/s)"), 1, True, bibw),
    Benchmark("mbw_mr", "OSU MPI Multiple Bandwidth / Message Rate Test", "bandwidth", "MB/s",
              _columns("MB/s", "Messages/s"), 1, False, mbw_mr),
    Benchmark("allreduce", "OSU MPI Allreduce Latency Test", "collective", "us",
              _columns("Avg Latency(us)"), FLOAT_BYTES, False, _collective(_allreduce)),
    Benchmark("alltoall", "OSU MPI All-to-All Personalized Exchange Latency Test", "collective",
              "us", _columns("Avg Latency(us)"), 1, False, _collective(_alltoall)),
    Benchmark("bcast", "OSU MPI Broadcast Latency Test", "collective", "us",
              _columns("Avg Latency(us)"), 1, False, _collective(_bcast)),
)}


# --- sizes, iterations, buffers ----------------------------------------------------------------


def sizes(low: int, high: int, element: int = 1) -> list[int]:
    """OMB's sizes: low, 2*low, ... <= high, leaving out those that hold no element."""
    out, size = [], low
    while size <= high:
        if size // element:
            out.append(size)
        size *= 2
    return out


def schedule(kind: str, size: int, iters: int | None) -> tuple[int, int]:
    """(timed iterations, warm-up iterations) for one size."""
    iterations, skip = SCHEDULES[kind][size > LARGE_MESSAGE_SIZE]
    return (iters or iterations), skip


def host_buffers(nbytes: int) -> Buffers:
    # anonymous mmap: page-aligned like OMB's posix_memalign, and numpy is not needed (neither
    # Debian's python3 nor the example image ships it)
    send, recv = mmap.mmap(-1, nbytes), mmap.mmap(-1, nbytes)
    send.write(b"a" * nbytes)  # touch every page before timing, as OMB's set_buffer
    recv.write(b"b" * nbytes)
    return Buffers(send, recv, "host mmap")


def device_buffers(nbytes: int) -> Buffers | str:
    """Buffers on the first CUDA device, or why there are none."""
    reasons = []
    for name, allocator in DEVICE_ALLOCATORS.items():
        try:
            allocate = allocator()
        except Exception as err:  # noqa: BLE001  each library has its own error types
            reasons.append(f"{name}: {err}")
            continue
        if mpi_cuda_aware() is False:
            return (f"{MPI.Get_library_version().splitlines()[0].strip()} is not CUDA-aware "
                    f"(MPIX_Query_cuda_support() == 0)")
        return Buffers(allocate(nbytes, ord("a")), allocate(nbytes, ord("b")), name)
    return "no CUDA device through " + "; ".join(reasons)


def _cupy() -> Callable[[int, int], object]:
    import cupy

    cupy.cuda.runtime.getDeviceCount()  # raises without a driver or a device
    return lambda n, fill: cupy.full(n, fill, dtype=cupy.uint8)


def _numba() -> Callable[[int, int], object]:
    import numpy
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("numba.cuda.is_available() is False")
    return lambda n, fill: cuda.to_device(numpy.full(n, fill, dtype=numpy.uint8))


def _torch() -> Callable[[int, int], object]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    return lambda n, fill: torch.full((n,), fill, dtype=torch.uint8, device="cuda")


# tried in this order; each returns allocate(nbytes, fill) or raises why it cannot
DEVICE_ALLOCATORS = {"cupy": _cupy, "numba": _numba, "torch": _torch}


def mpi_cuda_aware() -> bool | None:
    """Open MPI's answer (MPIX_Query_cuda_support); None where the library does not say
    (MPICH and vendor MPIs: trusted, as OMB trusts its -d cuda)."""
    query = getattr(ctypes.CDLL(None), "MPIX_Query_cuda_support", None)
    return None if query is None else bool(query())


def ranks_problem(bench: Benchmark, ranks: int) -> str:
    """Why ``bench`` cannot run on ``ranks`` processes ("" when it can)."""
    if bench.exactly_two and ranks != 2:
        return f"{bench.name} needs exactly 2 processes, not {ranks}"
    if ranks < 2:
        return f"{bench.name} needs at least 2 processes"
    return ""


# --- output ------------------------------------------------------------------------------------


def table_line(row: Row) -> str:
    line = f"{row.size:<10d}{row.value:>20.2f}"
    if "messages_per_s" in row.extra:
        line += f"{row.extra['messages_per_s']:>20.2f}"
    return line


def json_row(bench: Benchmark, row: Row, ranks: int) -> str:
    return json.dumps({"benchmark": bench.name, "size": row.size, "value": row.value,
                       "unit": bench.unit, "iterations": row.iterations, "ranks": ranks,
                       **row.extra})


def meta(buf: Buffers, ranks: int) -> dict:
    return {"mpi": MPI.Get_library_version().replace("\0", "").strip(),
            "mpi_standard": "%d.%d" % MPI.Get_version(), "mpi4py": mpi4py.__version__,
            "python": platform.python_version(), "buffers": buf.kind, "ranks": ranks,
            "host": MPI.Get_processor_name()}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("--min", type=int, default=1, help="smallest message size in bytes")
    parser.add_argument("--max", type=int, default=MAX_SIZE, help="largest message size in bytes")
    parser.add_argument("--iters", type=int, help="timed iterations of every size (default: OMB's)")
    parser.add_argument("--device", action="store_true", help="CUDA device buffers (OMB's D D)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    args = parser.parse_args(argv)
    if not 1 <= args.min <= args.max:
        parser.error(f"need 1 <= --min <= --max, got {args.min} and {args.max}")
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be at least 1")
    return args


def main(argv: list[str]) -> int:
    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    try:
        with contextlib.redirect_stdout(sys.stdout if rank == 0 else io.StringIO()), \
                contextlib.redirect_stderr(sys.stderr if rank == 0 else io.StringIO()):
            args = parse(argv)
    except SystemExit as done:  # --help or a usage error: said once, by rank 0
        return int(done.code or 0)
    bench = BENCHMARKS[args.benchmark]
    problem = ranks_problem(bench, ranks)
    if problem:
        if rank == 0:
            print(f"osu.py: {problem}", file=sys.stderr)
        return 2
    # alltoall sends --max bytes to every rank, so its buffers hold that many blocks
    nbytes = args.max * (ranks if bench.name == "alltoall" else 1)
    buf = device_buffers(nbytes) if args.device else host_buffers(nbytes)
    if isinstance(buf, str):
        if rank == 0:
            print(json.dumps({"skipped": buf}) if args.json else f"# skipped: {buf}", flush=True)
        return EXIT_SKIPPED
    if rank == 0:
        print(json.dumps({"meta": meta(buf, ranks)}) if args.json else
              f"# {bench.title} (mpi4py, OMB 7.x methodology, {buf.kind} buffers)\n"
              f"# {meta(buf, ranks)['mpi']}\n{bench.column}", flush=True)
    for size in sizes(args.min, args.max, bench.element):
        iterations, skip = schedule(bench.kind, size, args.iters)
        row = bench.run(comm, buf, size, iterations, skip)
        if row is not None:
            print(json_row(bench, row, ranks) if args.json else table_line(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))  # mpi4py finalises MPI at exit
