"""The import storm: N Python interpreters importing numpy from a slow shared filesystem,
from a directory tree and from a single-file image, side by side.

Python start-up on NFS or Lustre is dominated by metadata: each interpreter stats, lists
and opens thousands of files, and thousands of interpreters queue at the one metadata
server. A SIF turns that into reads of one file. This benchmark reproduces the effect on
one machine with ``slowfs`` (``slowfs.c`` here), a FUSE passthrough whose metadata
operations are serialised and each wait ``--delay-us`` (1 ms), while data passes at once.

The backing directory of the slow filesystem holds one numpy environment twice:

- ``env/site``: numpy installed by ``pip install --target`` (its .pyc files included), a
  plain directory tree, used as ``PYTHONPATH`` by the host's ``/usr/bin/python3``;
- ``env.sif``: built with ``hpcrun build`` from ``examples/example.sif`` (Debian 12 and its
  python3, the same 3.11 as the host's) via ``Bootstrap: localimage``, the same ``env``
  copied in by ``%files`` to ``/opt/env``, its .pyc files compiled again by ``%post`` (``cp``
  does not keep the sources' mtimes, which timestamp-checked .pyc files are tied to), and
  ``PYTHONPATH=/opt/env/site`` in ``%environment``.

Cases, for N = 1, 8, 32, 128 interpreters started at once:

- directory: ``PYTHONPATH=SLOWFS/env/site /usr/bin/python3 -c "import numpy"``;
- sif: ``hpcrun exec --node-session KEY SLOWFS/env.sif python3 -c "import numpy"``: the N
  share one mount of the image (one KEY per batch), as the ranks of one node do under
  ``hpcrun mpirun``. That is the fair model of one node; on N nodes, each node would add
  the handful of metadata operations of its own mount.

The cases alternate (directory first at one N, SIF first at the next, swapped each round)
so that drift on a shared machine hits both alike. Each batch is timed from the first start
to the last exit, and the metadata operations the slow filesystem served during it are read
from its control file. Everything runs as ``--user`` (default hpcbind-test: the unprivileged
path, squashfuse), from a local working directory; only the environment is on the slow
filesystem. Results (CSV, JSON, a log-log PNG and a README.md) go to ``results/`` here.

Needs root (the image build and the FUSE mount), gcc and libfuse3-dev, the example image
(``make example``) and PyPI for numpy. ``--work`` (default /var/tmp/hpcbind-importstorm)
keeps the environment and the image between runs; delete it to rebuild them.

    sudo .venv/bin/python benchmarks/importstorm/run.py [--ns 1,8,32,128] [--rounds 1]
        [--delay-us 1000] [--user hpcbind-test] [--work DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "launch"))
from bench_exec import user_prefix  # noqa: E402  (setpriv to the user, environment cleared)

NUMPY = "numpy==2.4.6"
BASE_IMAGE = REPO / "examples" / "example.sif"
HPCRUN = REPO / ".venv" / "bin" / "hpcrun"
PYTHON = "/usr/bin/python3"
IMPORT = "import numpy"
CASES = ("directory", "sif")
CONTROL_FILE = ".slowfs-stats"  # slowfs.c CONTROL_NAME
DEFINITION = """\
Bootstrap: localimage
From: {base}

%files
    {env} /opt/env

%post
    python3 -m compileall -q /opt/env/site

%environment
    export PYTHONPATH=/opt/env/site
"""


# ----------------------------------------------------------------------------------- slowfs


def build_slowfs(out: Path) -> Path:
    """Compile slowfs.c to ``out``."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "slowfs.c"), *flags],
                   check=True)
    return out


@contextmanager
def mounted(slowfs: Path, backing: Path, mountpoint: Path,
            *options: str) -> Iterator[subprocess.Popen]:
    """``backing`` served by slowfs (the process given) at ``mountpoint`` until exit;
    ``options`` are its ``-o`` items."""
    argv = [str(slowfs), str(backing), str(mountpoint), "-f"]
    if options:
        argv += ["-o", ",".join(options)]
    server = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        _wait_mounted(server, mountpoint)
        yield server
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=True)
        server.wait(timeout=10)


def _wait_mounted(server: subprocess.Popen, mountpoint: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if server.poll() is not None:
            raise RuntimeError(f"slowfs exited with {server.returncode}: {server.stderr.read()}")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"slowfs did not mount {mountpoint} in {timeout} s")
        time.sleep(0.01)


def read_stats(mountpoint: Path) -> dict:
    """slowfs's counters: {"delay_us": .., "metadata_ops": .., "ops": {name: count}}."""
    return json.loads((mountpoint / CONTROL_FILE).read_text())


def stats_delta(before: dict, after: dict) -> dict:
    return {"metadata_ops": after["metadata_ops"] - before["metadata_ops"],
            "ops": {k: after["ops"][k] - before["ops"][k] for k in after["ops"]}}


# ------------------------------------------------------------------------------ environment


def install_env(site: Path) -> None:
    if not (site / "numpy").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--only-binary=:all:", "--target", str(site), NUMPY], check=True)


def build_image(sif: Path, env: Path, work: Path) -> None:
    if sif.exists():
        return
    if not BASE_IMAGE.exists():
        sys.exit(f"{BASE_IMAGE} is missing: build it with 'make example'")
    definition = work / "env.def"
    definition.write_text(DEFINITION.format(base=BASE_IMAGE, env=env))
    subprocess.run([str(HPCRUN), "build", str(sif), str(definition)], check=True)


# ------------------------------------------------------------------------------------ storm


@dataclass(frozen=True)
class Batch:
    case: str
    n: int
    round: int
    wall_s: float
    metadata_ops: int
    metadata_ops_per_interpreter: float
    ops: dict[str, int]


def case_argv(case: str, mount: Path, prefix: Sequence[str], key: str,
              code: str = IMPORT) -> list[str]:
    if case == "directory":
        return [*prefix, f"PYTHONPATH={mount / 'env' / 'site'}", PYTHON, "-c", code]
    return [*prefix, str(HPCRUN), "exec", "--node-session", key, str(mount / "env.sif"),
            "python3", "-c", code]


def storm(argv: list[str], n: int, cwd: Path) -> float:
    """Start ``n`` copies of ``argv`` at once; seconds until the last has exited."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(n)]
    errors = [p.communicate()[1].decode()[-500:] for p in procs]
    wall = time.perf_counter() - start
    failed = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        sys.exit(f"{len(failed)} of {n} failed: {' '.join(argv)}\n{failed[0]}")
    return wall


def check_origin(case: str, mount: Path, prefix: Sequence[str], cwd: Path) -> str:
    """Where numpy is imported from in ``case`` (and a warm-up of its caches)."""
    code = "import numpy; print(numpy.__file__)"
    out = subprocess.run(case_argv(case, mount, prefix, f"importstorm-check-{case}", code),
                         cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()
    expected = str(mount / "env/site") if case == "directory" else "/opt/env/site"
    if not out.startswith(expected):
        sys.exit(f"{case}: numpy came from {out}, not from {expected}")
    return out


def run_batches(mount: Path, prefix: Sequence[str], ns: Sequence[int], rounds: int,
                cwd: Path) -> list[Batch]:
    batches = []
    for r in range(rounds):
        for i, n in enumerate(ns):
            order = CASES if (r + i) % 2 == 0 else CASES[::-1]
            for case in order:
                key = f"importstorm-{os.getpid()}-{r}-{n}"
                before = read_stats(mount)
                wall = storm(case_argv(case, mount, prefix, key), n, cwd)
                delta = stats_delta(before, read_stats(mount))
                batch = Batch(case, n, r, wall, delta["metadata_ops"],
                              delta["metadata_ops"] / n, delta["ops"])
                print(f"round {r} N={n:4d} {case:9s} {wall:8.2f} s "
                      f"{batch.metadata_ops_per_interpreter:9.1f} metadata ops/interpreter",
                      flush=True)
                batches.append(batch)
    return batches


# ---------------------------------------------------------------------------------- results


def summarise(batches: Sequence[Batch], ns: Sequence[int]) -> list[dict]:
    rows = []
    for n in ns:
        of = {c: [b for b in batches if b.case == c and b.n == n] for c in CASES}
        wall = {c: statistics.median(b.wall_s for b in of[c]) for c in CASES}
        ops = {c: statistics.median(b.metadata_ops_per_interpreter for b in of[c]) for c in CASES}
        rows.append({"n": n, "directory_wall_s": wall["directory"], "sif_wall_s": wall["sif"],
                     "speedup": wall["directory"] / wall["sif"],
                     "directory_ops_per_interpreter": ops["directory"],
                     "sif_ops_per_interpreter": ops["sif"],
                     "ops_ratio": ops["directory"] / ops["sif"]})
    return rows


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    osname = next((line.split("=", 1)[1].strip('"') for line in
                   Path("/etc/os-release").read_text().splitlines()
                   if line.startswith("PRETTY_NAME=")), "Linux")
    versions = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "squashfuse",
                               "libfuse3-3"], capture_output=True, text=True).stdout.split("\n")
    return {"cpu": cpu, "cpus": str(os.cpu_count()), "memory_gib": f"{mem_kib / 2**20:.0f}",
            "os": osname, "kernel": platform.release(),
            "python": subprocess.run([PYTHON, "-V"], capture_output=True, text=True).stdout.strip(),
            "packages": ", ".join(v for v in versions if v)}


def plot(summary: Sequence[dict], delay_us: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [row["n"] for row in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(ns, [row["directory_wall_s"] for row in summary], "o-", color="tab:red",
              label="directory tree on the slow FS (PYTHONPATH)")
    left.plot(ns, [row["sif_wall_s"] for row in summary], "s-", color="tab:blue",
              label="SIF on the slow FS (hpcrun exec, one mount)")
    bound = [row["n"] * row["directory_ops_per_interpreter"] * delay_us / 1e6 for row in summary]
    left.plot(ns, bound, ":", color="tab:red", alpha=0.6,
              label=f"metadata server bound: N x ops x {delay_us / 1000:g} ms")
    left.set(xscale="log", yscale="log", xlabel="number of Python processes",
             ylabel="time until all have imported numpy (s)",
             title="Start-up time vs number of processes")
    right.plot(ns, [row["directory_ops_per_interpreter"] for row in summary], "o-",
               color="tab:red", label="directory tree")
    right.plot(ns, [row["sif_ops_per_interpreter"] for row in summary], "s-", color="tab:blue",
               label="SIF")
    right.set(xscale="log", yscale="log", xlabel="number of Python processes",
              ylabel="metadata operations per interpreter",
              title="Metadata server load")
    for ax in (left, right):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, batches: Sequence[Batch], summary: Sequence[dict],
                  meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    op_names = list(batches[0].ops)
    with open(out / "batches.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "n", "round", "wall_s", "metadata_ops",
                         "metadata_ops_per_interpreter", *op_names])
        for b in batches:
            writer.writerow([b.case, b.n, b.round, f"{b.wall_s:.3f}", b.metadata_ops,
                             f"{b.metadata_ops_per_interpreter:.1f}",
                             *(b.ops[k] for k in op_names)])
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (out / "results.json").write_text(json.dumps(
        {**meta, "summary": list(summary), "batches": [asdict(b) for b in batches]}, indent=1)
        + "\n")
    plot(summary, meta["delay_us"], out / "importstorm.png")
    (out / "README.md").write_text(readme(summary, meta))


MEANING = ("From a directory tree, start-up time grows linearly with the number of processes "
           "because every interpreter's thousands of metadata operations queue at the one "
           "metadata server; from a single-file image each interpreter costs that server a "
           "handful of operations, so start-up is bounded by the node's own CPUs instead of by "
           "the shared filesystem.")


def readme(summary: Sequence[dict], meta: dict) -> str:
    m, first, last = meta["machine"], summary[0], summary[-1]
    mount = ("the kernel's squashfs over a loop device" if meta["user"] == "root"
             else "squashfuse_ll")
    table = "\n".join(
        f"| {r['n']} | {r['directory_wall_s']:.2f} | {r['sif_wall_s']:.2f} | {r['speedup']:.1f} "
        f"| {r['directory_ops_per_interpreter']:.0f} | {r['sif_ops_per_interpreter']:.1f} |"
        for r in summary)
    return f"""# Import storm: results

Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['os']}, Linux \
{m['kernel']}, {m['python']}, {meta['numpy']}, {m['packages']}; written by \
`benchmarks/importstorm/run.py` on {meta['date']}, {meta['rounds']} round(s), the two cases \
alternated, the interpreters run as `{meta['user']}`. `importstorm.png` is drawn after the \
Singularity paper's start-up figure. Left, on log-log axes: the time until N Python \
interpreters started at once have all run `import numpy`, with the environment as a \
directory tree on a slow shared filesystem (red; slowfs: every metadata operation waits \
{meta['delay_us']} us and all are served one at a time, the client caching nothing, as \
from N cold clients: the worst case) and with the same environment inside a SIF on that \
filesystem, run by `hpcrun exec --node-session` (blue; the N share one {mount} mount, as \
the ranks of one node do); the dotted line is N x (metadata operations per interpreter) x \
delay, what the serialised metadata server alone needs. Right: the metadata operations the \
server saw per interpreter. At N = {last['n']} the SIF case is {last['speedup']:.1f}x \
faster and costs the server {last['ops_ratio']:.0f}x fewer operations per interpreter \
({last['directory_ops_per_interpreter']:.0f} vs {last['sif_ops_per_interpreter']:.1f}; at \
N = {first['n']}, {first['sif_ops_per_interpreter']:.0f} for the SIF, whose mount is then \
one interpreter's alone). {MEANING}

| N | directory (s) | SIF (s) | speed-up | directory ops/interpreter | SIF ops/interpreter |
|---|---|---|---|---|---|
{table}

Files: `summary.csv` (the table), `batches.csv` (every batch, with each operation type), \
`results.json` (all of it, with the machine).
"""


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="1,8,32,128",
                        help="interpreter counts (default 1,8,32,128)")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions of every batch")
    parser.add_argument("--delay-us", type=int, default=1000,
                        help="slowfs wait per metadata operation (default 1000)")
    parser.add_argument("--user", default="hpcbind-test", help="who runs the interpreters")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/hpcbind-importstorm"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the image build and the FUSE mount need it")
    ns = [int(n) for n in args.ns.split(",")]
    work = args.work
    backing, mount, cwd = work / "backing", work / "mnt", work / "cwd"
    for d in (work, backing, mount, cwd):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
    install_env(backing / "env" / "site")
    build_image(backing / "env.sif", backing / "env", work)
    slowfs = build_slowfs(work / "slowfs")
    prefix = user_prefix(args.user)
    with mounted(slowfs, backing, mount, f"delay_us={args.delay_us}", "allow_other"):
        origins = {case: check_origin(case, mount, prefix, cwd) for case in CASES}
        batches = run_batches(mount, prefix, ns, args.rounds, cwd)
    summary = summarise(batches, ns)
    numpy_version = NUMPY.split("==")[1]
    meta = {"date": time.strftime("%Y-%m-%d"), "delay_us": args.delay_us, "rounds": args.rounds,
            "user": args.user, "numpy": f"numpy {numpy_version}", "numpy_from": origins,
            "machine": machine()}
    write_results(args.out, batches, summary, meta)
    for row in summary:
        print(f"N={row['n']:4d}  directory {row['directory_wall_s']:8.2f} s  "
              f"SIF {row['sif_wall_s']:7.2f} s  speed-up {row['speedup']:5.1f}x  "
              f"metadata ops/interpreter {row['directory_ops_per_interpreter']:7.0f} vs "
              f"{row['sif_ops_per_interpreter']:5.1f}")


if __name__ == "__main__":
    main()
