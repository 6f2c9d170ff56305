"""Bare metal vs hpcrun on the OSU benchmarks: medians per message size, ratios, thresholds.

    .venv/bin/python benchmarks/osu/run.py [--benchmarks latency bw ...] [--repeat 6] [--np 2]
        [--min 1] [--max 4194304] [--iters N] [--device] [--image examples/example.sif]
        [--launcher mpirun.openmpi] [--latency-ratio 1.05] [--bandwidth-ratio 0.95]
        [--latency-floor-us 0.1] [--out benchmarks/osu/results]
    .venv/bin/python benchmarks/osu/run.py --judge benchmarks/osu/results/osu_samples.csv \
        [--statistic median|best] [thresholds]

Each benchmark of ``osu.py`` runs bare (``LAUNCHER ... /usr/bin/python3 osu.py``) and in the
image (``hpcrun --bind DIR LAUNCHER ... IMAGE python3 osu.py``) with the same launcher and
flags, ``--repeat`` times, in ABBA order (bare first in even repetitions, container first in
odd ones) so that a drift of the machine weighs on both alike. Per message size the medians of
the repetitions (``--statistic best``: the best repetition of each mode) are compared:

- latencies (us: latency, allreduce, alltoall, bcast) pass when
  container <= bare * --latency-ratio, or when container - bare <= --latency-floor-us
  (default 0.1 us): below a microsecond, 5 % is tens of nanoseconds, less than the jitter of
  a quiet node, so 0.40 us vs 0.45 us is noise, not overhead; a container that adds work to
  every message costs more than 0.1 us and still fails;
- bandwidths (MB/s: bw, bibw, mbw_mr) pass when container >= bare * --bandwidth-ratio.

Writes into --out: ``osu_samples.csv`` (every measurement), ``osu_summary.csv`` (medians,
min-max over repetitions, ratio, verdict per size), ``osu.json`` (the summary with the
machine, the MPI libraries, the settings, the thresholds and the ratios per benchmark), ``osu_<benchmark>.png`` (values and ratio per size) and
``osu_ratios.png`` (every ratio). Prints the ratio table.

Exit status: 0 when every size of every benchmark passes, 1 when one fails (for acceptance
tests), 2 when a benchmark could not run, 77 when --device found no usable GPU.
``--judge FILE`` applies the thresholds and statistic given to the samples of an earlier
run (its osu_samples.csv) without running or writing anything.
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OSU = HERE / "osu.py"
HOST_PYTHON = "/usr/bin/python3"  # Debian's, with python3-mpi4py: the build the image has
# osu.py's benchmarks, in report order (not imported from it: importing osu.py starts MPI)
BENCHMARKS = ("latency", "bw", "bibw", "mbw_mr", "allreduce", "alltoall", "bcast")
LATENCY_UNIT, BANDWIDTH_UNIT = "us", "MB/s"
MODES = ("bare", "container")
EXIT_FAILED, EXIT_ERROR, EXIT_SKIPPED = 1, 2, 77


@dataclass(frozen=True)
class Thresholds:
    latency_ratio: float = 1.05
    bandwidth_ratio: float = 0.95
    latency_floor_us: float = 0.1


@dataclass(frozen=True)
class Sample:
    benchmark: str
    size: int
    unit: str
    mode: str  # "bare" or "container"
    repetition: int
    value: float


@dataclass(frozen=True)
class Comparison:
    benchmark: str
    size: int
    unit: str
    bare: float  # the statistic (median, or best) over repetitions
    container: float
    ratio: float  # container / bare
    bare_min: float
    bare_max: float
    container_min: float
    container_max: float
    passed: bool
    rule: str  # the test applied, with its numbers


class RunFailed(Exception):
    pass


class Skipped(Exception):
    pass


# --- judging (pure) ----------------------------------------------------------------------------


def judge(unit: str, bare: float, container: float, limits: Thresholds) -> tuple[bool, str]:
    """Whether the container's value passes against the bare one, and the rule applied."""
    if unit == BANDWIDTH_UNIT:
        floor = bare * limits.bandwidth_ratio
        return container >= floor, f"container >= {limits.bandwidth_ratio:g} x bare = {floor:.2f} MB/s"
    ceiling = max(bare * limits.latency_ratio, bare + limits.latency_floor_us)
    return container <= ceiling, (f"container <= max({limits.latency_ratio:g} x bare, bare + "
                                  f"{limits.latency_floor_us:g} us) = {ceiling:.3f} us")


def best(values: Sequence[float], unit: str) -> float:
    """The best repetition: the lowest latency, the highest bandwidth."""
    return min(values) if unit == LATENCY_UNIT else max(values)


# How the repetitions of one size are summed up before the ratio. "median" is the default.
# "best" is for machines where each launch lands in one of a few performance states for its
# whole run (placement, page alignment, a noisy neighbour) and ten launches are too few for
# the median to fall in the same state for both modes: the best of each mode compares what
# either can reach.
STATISTICS = {"median": lambda values, unit: statistics.median(values), "best": best}


def compare(samples: Iterable[Sample], limits: Thresholds, statistic: str = "median") -> list[Comparison]:
    """One comparison per (benchmark, size) measured in both modes, in benchmark then size
    order, of the ``statistic`` (a STATISTICS key) of each mode's repetitions."""
    summed = STATISTICS[statistic]
    values: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    for s in samples:
        values.setdefault((s.benchmark, s.size, s.unit), {m: [] for m in MODES})[s.mode].append(s.value)
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    out = []
    for (bench, size, unit), by_mode in sorted(values.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        bare, container = by_mode["bare"], by_mode["container"]
        if not bare or not container:
            continue
        bare_value, container_value = summed(bare, unit), summed(container, unit)
        passed, rule = judge(unit, bare_value, container_value, limits)
        out.append(Comparison(bench, size, unit, bare_value, container_value,
                              container_value / bare_value, min(bare), max(bare),
                              min(container), max(container), passed, rule))
    return out


def ratio_table(comparisons: Sequence[Comparison]) -> str:
    """Sizes down, benchmarks across, container/bare ratios; a failing ratio is marked '!'."""
    benches = list(dict.fromkeys(c.benchmark for c in comparisons))
    sizes = sorted({c.size for c in comparisons})
    cell = {(c.benchmark, c.size): f"{c.ratio:.3f}{' ' if c.passed else '!'}" for c in comparisons}
    lines = [f"{'size (B)':>10}" + "".join(f"{b:>12}" for b in benches)]
    lines += [f"{size:>10}" + "".join(f"{cell.get((b, size), '-'):>12}" for b in benches)
              for size in sizes]
    return "\n".join(lines)


def ratio_summary(comparisons: Sequence[Comparison]) -> dict[str, dict[str, dict]]:
    """Median, lowest and highest ratio and sizes passed, per benchmark and per unit (us:
    every latency benchmark together, MB/s every bandwidth one)."""
    groups = {"benchmark": lambda c: c.benchmark, "unit": lambda c: c.unit}
    out: dict[str, dict[str, dict]] = {}
    for group, key in groups.items():
        members: dict[str, list[Comparison]] = {}
        for c in comparisons:
            members.setdefault(key(c), []).append(c)
        out[group] = {name: {"median": statistics.median(c.ratio for c in mine),
                             "min": min(c.ratio for c in mine), "max": max(c.ratio for c in mine),
                             "passed": sum(c.passed for c in mine), "sizes": len(mine)}
                      for name, mine in members.items()}
    return out


# --- running ----------------------------------------------------------------------------------


def launcher_argv(launcher: str, ranks: int) -> list[str]:
    flags = ["--allow-run-as-root"] if os.getuid() == 0 else []
    if ranks > (os.cpu_count() or 1):
        flags.append("--oversubscribe")
    return [launcher, *flags, "-np", str(ranks)]


def osu_args(benchmark: str, args: argparse.Namespace) -> list[str]:
    extra = ["--iters", str(args.iters)] if args.iters else []
    return [benchmark, "--min", str(args.min), "--max", str(args.max), "--json", *extra,
            *(["--device"] if args.device else [])]


def commands(benchmark: str, args: argparse.Namespace) -> dict[str, list[str]]:
    """The bare and the container command lines of one benchmark: same launcher, same flags."""
    mpirun = launcher_argv(args.launcher, args.np)
    osu = osu_args(benchmark, args)
    hpcrun_flags = ["--bind", str(HERE), *(["--nv"] if args.device else [])]
    return {"bare": [*mpirun, HOST_PYTHON, str(OSU), *osu],
            "container": [args.hpcrun, *hpcrun_flags, *mpirun, args.image, "python3", str(OSU), *osu]}


def run_once(argv: list[str]) -> tuple[dict, list[dict]]:
    """(meta, rows) of one osu.py run."""
    result = subprocess.run(argv, capture_output=True, text=True)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    skipped = [r["skipped"] for r in records if "skipped" in r]
    if skipped:
        raise Skipped(skipped[0])
    if result.returncode != 0:
        raise RunFailed(f"exit {result.returncode}: {' '.join(argv)}\n{result.stderr[-2000:]}")
    meta = next((r["meta"] for r in records if "meta" in r), {})
    return meta, [r for r in records if "benchmark" in r]


def measure(args: argparse.Namespace) -> tuple[list[Sample], dict[str, dict]]:
    samples, metas = [], {}
    for benchmark in args.benchmarks:
        argvs = commands(benchmark, args)
        for repetition in range(args.repeat):
            for mode in MODES if repetition % 2 == 0 else MODES[::-1]:
                meta, rows = run_once(argvs[mode])
                metas.setdefault(mode, meta)
                samples += [Sample(benchmark, r["size"], r["unit"], mode, repetition, r["value"])
                            for r in rows]
                print(f"  {benchmark:9s} repetition {repetition + 1}/{args.repeat} {mode:9s} "
                      f"{len(rows)} sizes", flush=True)
    return samples, metas


# lscpu's fields worth a line in a benchmark report
LSCPU_FIELDS = ("Model name", "CPU family", "Model", "Socket(s)", "Core(s) per socket",
                "Thread(s) per core", "NUMA node(s)", "L3 cache", "Hypervisor vendor")


def machine() -> dict:
    """The machine as lscpu (util-linux) and the kernel describe it, and how busy it is."""
    lscpu = json.loads(subprocess.run(["lscpu", "-J"], capture_output=True, text=True,
                                      check=True).stdout)
    cpu = {e["field"].rstrip(":"): e["data"] for e in lscpu["lscpu"]}
    os_release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                      if "=" in line)
    return {"cpu": {k: cpu[k] for k in LSCPU_FIELDS if k in cpu}, "cores": os.cpu_count(),
            "kernel": platform.release(), "os": os_release.get("PRETTY_NAME", "").strip('"'),
            "load_average_1_5_15": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def first_line(argv: list[str]) -> str:
    """The first line a version command prints ("" when it cannot run)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout
    except OSError:
        return ""
    return out.splitlines()[0] if out else ""


# --- writing -----------------------------------------------------------------------------------


def read_samples(path: Path) -> list[Sample]:
    with path.open(newline="") as f:
        return [Sample(r["benchmark"], int(r["size"]), r["unit"], r["mode"], int(r["repetition"]),
                       float(r["value"])) for r in csv.DictReader(f)]


def write_csv(path: Path, rows: Sequence[object]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot(comparisons: Sequence[Comparison], limits: Thresholds, out: Path, statistic: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for bench in dict.fromkeys(c.benchmark for c in comparisons):
        mine = [c for c in comparisons if c.benchmark == bench]
        unit = mine[0].unit
        sizes = [c.size for c in mine]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for mode, marker in (("bare", "o"), ("container", "s")):
            value = [getattr(c, mode) for c in mine]
            low = [v - getattr(c, f"{mode}_min") for v, c in zip(value, mine)]
            high = [getattr(c, f"{mode}_max") - v for v, c in zip(value, mine)]
            left.errorbar(sizes, value, yerr=[low, high], marker=marker, capsize=2,
                          label=f"{mode} ({statistic}, min-max)")
        left.set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel=unit,
                 title=f"osu {bench}")
        right.plot(sizes, [c.ratio for c in mine], marker="o", label="container / bare")
        failed = [c for c in mine if not c.passed]
        if failed:
            right.plot([c.size for c in failed], [c.ratio for c in failed], "rx", markersize=10,
                       label="fails the threshold")
        limit = limits.latency_ratio if unit == LATENCY_UNIT else limits.bandwidth_ratio
        right.axhline(limit, color="grey", linestyle=":", label=f"threshold {limit:g}")
        right.axhline(1.0, color="black", linewidth=0.5)
        right.set(xscale="log", xlabel="message size (bytes)", ylabel="container / bare",
                  title=f"container / bare ({statistic})")
        for ax in (left, right):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"osu_{bench}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, unit, limit in ((axes[0], LATENCY_UNIT, limits.latency_ratio),
                            (axes[1], BANDWIDTH_UNIT, limits.bandwidth_ratio)):
        for bench in dict.fromkeys(c.benchmark for c in comparisons if c.unit == unit):
            mine = [c for c in comparisons if c.benchmark == bench]
            ax.plot([c.size for c in mine], [c.ratio for c in mine], marker=".", label=bench)
        ax.axhline(limit, color="grey", linestyle=":", label=f"threshold {limit:g}")
        ax.axhline(1.0, color="black", linewidth=0.5)
        ax.set(xscale="log", xlabel="message size (bytes)",
               title=f"{'latency' if unit == LATENCY_UNIT else 'bandwidth'}: container / bare")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"container / bare ({statistic})")
    fig.tight_layout()
    path = out / "osu_ratios.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [*written, path]


def write(comparisons: Sequence[Comparison], samples: Sequence[Sample], limits: Thresholds,
          out: Path, context: dict, plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "osu_samples.csv", samples)
    write_csv(out / "osu_summary.csv", comparisons)
    document = {**context, "thresholds": asdict(limits), "ratios": ratio_summary(comparisons),
                "failed": failures(comparisons)}
    # one line per size: the file diffs row by row, as the CSV does
    rows = ",\n".join(f"  {json.dumps(asdict(c))}" for c in comparisons)
    text = json.dumps(document, indent=1)[:-2] + f',\n "summary": [\n{rows}\n ]\n}}\n'
    (out / "osu.json").write_text(text)
    written = plot(comparisons, limits, out, context["settings"]["statistic"]) if plots else []
    for path in [out / "osu.json", out / "osu_summary.csv", out / "osu_samples.csv", *written]:
        print(f"wrote {path}")


def failures(comparisons: Sequence[Comparison]) -> list[str]:
    return [f"{c.benchmark} {c.size} B: ratio {c.ratio:.3f}, needs {c.rule}"
            for c in comparisons if not c.passed]


def verdict(comparisons: Sequence[Comparison], statistic: str) -> int:
    """Print the ratios and the failures; the exit status."""
    print(f"\ncontainer / bare, {statistic} of the repetitions ('!': fails its threshold):")
    print(ratio_table(comparisons))
    for group in ratio_summary(comparisons).values():
        for name, r in group.items():
            print(f"{name:>10}: median ratio {r['median']:.3f} ({r['min']:.3f} .. {r['max']:.3f}), "
                  f"{r['passed']}/{r['sizes']} sizes pass")
    failed = failures(comparisons)
    for line in failed:
        print(f"FAIL {line}")
    return EXIT_FAILED if failed else 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--repeat", type=int, default=6,
                        help="repetitions of each mode (even: the ABBA order balances)")
    parser.add_argument("--np", type=int, default=2, help="MPI ranks")
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=1 << 22)
    parser.add_argument("--iters", type=int, help="osu.py --iters (default: OMB's counts)")
    parser.add_argument("--device", action="store_true",
                        help="GPU buffers (osu.py --device) and hpcrun --nv")
    parser.add_argument("--image", default=str(REPO / "examples" / "example.sif"))
    parser.add_argument("--hpcrun", default=str(REPO / ".venv" / "bin" / "hpcrun"))
    parser.add_argument("--launcher", default="mpirun.openmpi")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--judge", type=Path, metavar="OSU_SAMPLES_CSV",
                        help="judge the samples of an earlier run (its osu_samples.csv) with the "
                        "thresholds given; run and write nothing")
    defaults = Thresholds()
    parser.add_argument("--latency-ratio", type=float, default=defaults.latency_ratio)
    parser.add_argument("--bandwidth-ratio", type=float, default=defaults.bandwidth_ratio)
    parser.add_argument("--latency-floor-us", type=float, default=defaults.latency_floor_us)
    parser.add_argument("--statistic", choices=sorted(STATISTICS), default="median",
                        help="how a mode's repetitions of one size are summed up (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    limits = Thresholds(args.latency_ratio, args.bandwidth_ratio, args.latency_floor_us)
    if args.judge:
        samples = read_samples(args.judge)
        return verdict(compare(samples, limits, args.statistic), args.statistic)
    settings = {k: getattr(args, k) for k in ("benchmarks", "repeat", "np", "min", "max", "iters",
                                              "device", "image", "launcher", "statistic")}
    settings["commands"] = {b: commands(b, args) for b in args.benchmarks}
    start = machine()
    try:
        samples, metas = measure(args)
    except Skipped as why:
        print(f"skipped: {why}")
        return EXIT_SKIPPED
    except RunFailed as err:
        print(f"run.py: a benchmark failed: {err}", file=sys.stderr)
        return EXIT_ERROR
    context = {"machine": {**start, "load_average_after": os.getloadavg(),
                           "launcher": first_line([args.launcher, "--version"]),
                           "hpcrun": first_line([args.hpcrun, "--version"]),
                           "commit": first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"])},
               "settings": settings, "mpi": metas}
    comparisons = compare(samples, limits, args.statistic)
    write(comparisons, samples, limits, args.out, context, args.plots)
    return verdict(comparisons, args.statistic)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
