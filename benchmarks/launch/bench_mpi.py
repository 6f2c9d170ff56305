"""Launch at scale: ``hpcrun mpirun -np N IMG mpi-hello`` against bare ``mpirun -np N mpi-hello``.

N = 16, 64, 256, 512 ranks (oversubscribed on a small machine), bare and container runs
alternating so drift hits both alike; the mpi4py variant for N <= 64. Prints the medians and
the container/bare ratios, writes ``results/launch.json`` and ``results/launch.png``.

    .venv/bin/python benchmarks/launch/bench_mpi.py [--sizes 16 64 256 512] [--repeat 3]

``mpi-hello`` is built from ``mpi_hello.c``: on the host here, and in the example image by
its definition file (at /usr/local/bin/mpi-hello). The image must exist (``make example``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MPIRUN = ["mpirun.openmpi", "--oversubscribe", "--bind-to", "none"]
PY_HELLO = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
PYTHON = "/usr/bin/python3"  # Debian's, with python3-mpi4py: the same build as in the image


def build_host_hello(work: Path) -> Path:
    out = work / "mpi-hello"
    subprocess.run(["mpicc.openmpi", "-O2", "-o", str(out), str(HERE / "mpi_hello.c")],
                   check=True)
    return out


class Failed(Exception):
    pass


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise Failed(f"exit {result.returncode} after {elapsed:.0f} s: {' '.join(argv[:9])}... "
                     f"{result.stderr.decode(errors='replace').strip()[:300]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 512])
    parser.add_argument("--python-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image", default=str(REPO / "examples/example.sif"))
    parser.add_argument("--hpcrun", default=str(REPO / ".venv/bin/hpcrun"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Open MPI needs it at 512
    mpirun = MPIRUN + (["--allow-run-as-root"] if os.getuid() == 0 else [])
    work = Path(tempfile.mkdtemp(prefix="hpcbind-launch-"))
    hello = build_host_hello(work)
    cases = []
    for n in args.sizes:
        cases.append(("mpi-hello", n, mpirun + ["-np", str(n), str(hello)],
                      [args.hpcrun, *mpirun, "-np", str(n), args.image,
                       "/usr/local/bin/mpi-hello"]))
    for n in args.python_sizes:
        cases.append(("mpi4py", n, mpirun + ["-np", str(n), PYTHON, "-c", PY_HELLO],
                      [args.hpcrun, *mpirun, "-np", str(n), args.image, PYTHON, "-c",
                       PY_HELLO]))
    # one container launch first: fills the image-facts cache and the page cache
    timed([args.hpcrun, *mpirun, "-np", "2", args.image, "/usr/local/bin/mpi-hello"])

    rows = []
    for program, n, bare_argv, container_argv in cases:
        bare, container = [], []
        try:
            for _ in range(args.repeat):
                bare.append(timed(bare_argv))
                container.append(timed(container_argv))
        except Failed as err:  # reported, not hidden: e.g. bare Open MPI at 512 ranks here
            rows.append({"program": program, "ranks": n, "failed": str(err)})
            print(f"{program:9s} N={n:4d}  FAILED {err}", flush=True)
            continue
        row = {"program": program, "ranks": n, "bare_s": statistics.median(bare),
               "container_s": statistics.median(container), "bare_all": bare,
               "container_all": container}
        row["ratio"] = row["container_s"] / row["bare_s"]
        rows.append(row)
        print(f"{program:9s} N={n:4d}  bare {row['bare_s']:7.2f} s  container "
              f"{row['container_s']:7.2f} s  ratio {row['ratio']:.2f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "kernel": platform.release(),
               "python": platform.python_version(), "uid": os.getuid(),
               "launcher": " ".join(MPIRUN), "repeat": args.repeat,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (out / "launch.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    plot(rows, out / "launch.png")
    print(f"wrote {out / 'launch.json'} and {out / 'launch.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for program, marker in (("mpi-hello", "o"), ("mpi4py", "s")):
        mine = [r for r in rows if r["program"] == program and "failed" not in r]
        if not mine:
            continue
        n = [r["ranks"] for r in mine]
        left.plot(n, [r["bare_s"] for r in mine], marker=marker, label=f"{program} bare")
        left.plot(n, [r["container_s"] for r in mine], marker=marker, linestyle="--",
                  label=f"{program} hpcrun")
        right.plot(n, [r["ratio"] for r in mine], marker=marker, label=program)
    left.set(xscale="log", yscale="log", xlabel="MPI ranks", ylabel="wall time (s)",
             title="mpirun launch, 2-core VM (oversubscribed)")
    right.axhline(1.10, color="grey", linestyle=":", label="target 1.10")
    right.set(xscale="log", xlabel="MPI ranks", ylabel="container / bare",
              title="hpcrun overhead")
    for ax in (left, right):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
