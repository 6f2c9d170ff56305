"""Launch at scale: ``hpcrun mpirun -np N IMG mpi-hello`` against bare ``mpirun -np N mpi-hello``.

As a plain user by default (``--user``, default hpcbind-test from ``make test-user``, with
a 20000 open-files hard limit): the path users take, squashfuse and hpcrun-starter.
``--as-root`` adds the kernel path (squashfs over a loop device) as root, in the same
alternation. N = 16, 64, 128, 256 ranks (oversubscribed on a small machine), bare and
container runs alternating so drift hits both alike; the mpi4py variant for N <= 64. Prints
the medians, the container/bare ratios and the gate (plain user: <= 1.25 at N = 16, <= 1.10
at N >= 64; exit status 1 when missed), writes ``results/launch.json`` and
``results/launch.png``.

    .venv/bin/python benchmarks/launch/bench_mpi.py [--sizes 16 64 128 256] [--repeat 3]
                                                    [--as-root] [--user NAME]

``mpi-hello`` is built from ``mpi_hello.c``: on the host here, and in the example image by
its definition file (at /usr/local/bin/mpi-hello). The image must exist (``make example``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import resource
import shutil
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


GATE = {16: 1.25}  # container/bare for the plain user; 1.10 at every other N >= 64


def as_user(user: str) -> list[str]:
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "env", "-i", f"HOME={pw.pw_dir}", f"USER={user}", "PATH=/usr/bin:/bin",
            "prlimit", "--nofile=20000:20000"]  # a plain user's hard limit on a cluster


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--python-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--user", default="hpcbind-test")
    parser.add_argument("--as-root", action="store_true", help="add the kernel path, as root")
    parser.add_argument("--image", default=str(REPO / "examples/example.sif"))
    parser.add_argument("--hpcrun", default=str(REPO / ".venv/bin/hpcrun"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # Open MPI needs it at 512
    work = Path(tempfile.mkdtemp(prefix="hpcbind-launch-"))
    work.chmod(0o755)
    hello = build_host_hello(work)
    image = work / "example.sif"  # where the plain user can read it
    image.write_bytes(Path(args.image).read_bytes())
    image.chmod(0o644)
    paths = {"user": as_user(args.user) if os.getuid() == 0 else []}
    if args.as_root:
        paths["root"] = []
    cases = []
    for path, prefix in paths.items():
        mpirun = prefix + MPIRUN + (["--allow-run-as-root"] if path == "root" else [])
        container = prefix + [args.hpcrun] + mpirun[len(prefix):]
        for n in args.sizes:
            cases.append((path, "mpi-hello", n, mpirun + ["-np", str(n), str(hello)],
                          container + ["-np", str(n), str(image), "/usr/local/bin/mpi-hello"]))
        for n in args.python_sizes:
            cases.append((path, "mpi4py", n, mpirun + ["-np", str(n), PYTHON, "-c", PY_HELLO],
                          container + ["-np", str(n), str(image), PYTHON, "-c", PY_HELLO]))
        # one container launch first: fills the image-facts cache and the page cache
        timed(container + ["-np", "2", str(image), "/usr/local/bin/mpi-hello"])

    rows = []
    for n in sorted({case[2] for case in cases}):  # each N's paths side by side in time
        for path, program, size, bare_argv, container_argv in cases:
            if size != n:
                continue
            bare, container = [], []
            try:
                for _ in range(args.repeat):
                    bare.append(timed(bare_argv))
                    container.append(timed(container_argv))
            except Failed as err:  # reported, not hidden: e.g. bare Open MPI at 512 ranks
                rows.append({"path": path, "program": program, "ranks": n, "failed": str(err)})
                print(f"{path:4s} {program:9s} N={n:4d}  FAILED {err}", flush=True)
                continue
            row = {"path": path, "program": program, "ranks": n,
                   "bare_s": statistics.median(bare), "container_s": statistics.median(container),
                   "bare_all": bare, "container_all": container}
            row["ratio"] = row["container_s"] / row["bare_s"]
            rows.append(row)
            print(f"{path:4s} {program:9s} N={n:4d}  bare {row['bare_s']:7.2f} s  container "
                  f"{row['container_s']:7.2f} s  ratio {row['ratio']:.2f}", flush=True)
    shutil.rmtree(work)

    missed = [r for r in rows if r["path"] == "user" and r["program"] == "mpi-hello"
              and r["ranks"] >= 16 and ("failed" in r or r["ratio"] > GATE.get(r["ranks"], 1.10))]
    for r in missed:
        what = r.get("failed") or f"ratio {r['ratio']:.2f} > {GATE.get(r['ranks'], 1.10)}"
        print(f"gate missed: plain user, N={r['ranks']}: {what}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "kernel": platform.release(),
               "python": platform.python_version(), "user": args.user,
               "paths": list(paths), "launcher": " ".join(MPIRUN), "repeat": args.repeat,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    (out / "launch.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    plot(rows, out / "launch.png")
    print(f"wrote {out / 'launch.json'} and {out / 'launch.png'}")
    sys.exit(1 if missed else 0)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (who, program), marker in ((("user", "mpi-hello"), "o"), (("root", "mpi-hello"), "^"),
                                   (("user", "mpi4py"), "s"), (("root", "mpi4py"), "v")):
        mine = [r for r in rows if (r["path"], r["program"]) == (who, program)
                and "failed" not in r]
        if not mine:
            continue
        label = f"{program}, {'plain user' if who == 'user' else 'root (kernel squashfs)'}"
        n = [r["ranks"] for r in mine]
        left.plot(n, [r["bare_s"] for r in mine], marker=marker, label=f"{label}: bare")
        left.plot(n, [r["container_s"] for r in mine], marker=marker, linestyle="--",
                  label=f"{label}: hpcrun")
        right.plot(n, [r["ratio"] for r in mine], marker=marker, label=label)
    left.set(xscale="log", yscale="log", xlabel="MPI ranks", ylabel="wall time (s)",
             title="mpirun launch, 2-core VM (oversubscribed)")
    right.axhline(1.10, color="grey", linestyle=":", label="gate 1.10 (1.25 at N=16)")
    right.set(xscale="log", xlabel="MPI ranks", ylabel="container / bare",
              title="hpcrun overhead")
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
