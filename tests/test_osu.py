"""The OSU benchmarks: ``osu.py`` under a real ``mpirun -np 2`` (bare), the runner's medians,
ratios and thresholds on rows given here, and one small run bare vs container."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OSU_DIR = REPO / "benchmarks" / "osu"
OSU = OSU_DIR / "osu.py"
EXAMPLE = REPO / "examples" / "example.sif"
HOST_PYTHON = "/usr/bin/python3"  # Debian's, with python3-mpi4py: what the runner's bare runs use
MPIRUN = ["mpirun.openmpi", *(["--allow-run-as-root"] if os.getuid() == 0 else [])]

_spec = importlib.util.spec_from_file_location("osu_run", OSU_DIR / "run.py")
runner = sys.modules["osu_run"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(runner)

needs_mpi = pytest.mark.skipif(
    shutil.which("mpirun.openmpi") is None
    or subprocess.run([HOST_PYTHON, "-c", "import mpi4py"], capture_output=True).returncode != 0,
    reason="needs Open MPI's mpirun.openmpi and Debian's python3-mpi4py (make deps)")


def osu(benchmark: str, *args: str, ranks: int = 2) -> tuple[subprocess.CompletedProcess, list[dict]]:
    extra = ["--oversubscribe"] if ranks > (os.cpu_count() or 1) else []
    done = subprocess.run([*MPIRUN, *extra, "-np", str(ranks), HOST_PYTHON, str(OSU), benchmark,
                           "--json", *args], capture_output=True, text=True, timeout=120)
    return done, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def rows_of(records: list[dict]) -> dict[int, dict]:
    return {r["size"]: r for r in records if "benchmark" in r}


# --- osu.py, bare, under mpirun --------------------------------------------------------------


@needs_mpi
def test_latency_grows_with_the_message():
    done, records = osu("latency", "--max", "1048576", "--iters", "100")
    assert done.returncode == 0, done.stderr
    meta = records[0]["meta"]
    assert meta["ranks"] == 2 and meta["buffers"] == "host mmap"
    assert meta["mpi"].startswith("Open MPI v")  # mpirun.openmpi runs Debian's Open MPI
    rows = rows_of(records)
    assert list(rows) == [1 << i for i in range(21)]  # 1 B .. 1 MiB, powers of two
    assert all(r["value"] > 0 and r["unit"] == "us" and r["iterations"] == 100 for r in rows.values())
    # a 1 MiB ping-pong copies a megabyte each way: far more than a 1-byte one
    assert rows[1 << 20]["value"] > rows[1 << 16]["value"] > rows[1]["value"]


@needs_mpi
@pytest.mark.parametrize("benchmark", ["bw", "bibw", "mbw_mr"])
def test_bandwidth_grows_with_the_message(benchmark):
    done, records = osu(benchmark, "--max", "1048576", "--iters", "10")
    assert done.returncode == 0, done.stderr
    rows = rows_of(records)
    assert len(rows) == 21 and all(r["value"] > 0 and r["unit"] == "MB/s" for r in rows.values())
    # 64 messages of 1 MiB move 10^6 times the bytes of 64 of 1 B in far less than 10^6 times the time
    assert rows[1 << 20]["value"] > 100 * rows[1]["value"]


@needs_mpi
def test_message_rate_is_bandwidth_over_size():
    done, records = osu("mbw_mr", "--max", "4096", "--iters", "10")
    assert done.returncode == 0, done.stderr
    for size, row in rows_of(records).items():
        assert row["pairs"] == 1
        assert row["messages_per_s"] == pytest.approx(1e6 * row["value"] / size)


@needs_mpi
def test_three_ranks_pair_two_and_leave_one_out():
    done, records = osu("mbw_mr", "--max", "64", "--iters", "5", ranks=3)
    assert done.returncode == 0, done.stderr
    assert {r["pairs"] for r in rows_of(records).values()} == {1}


@needs_mpi
@pytest.mark.parametrize("benchmark, first", [("allreduce", 4), ("alltoall", 1), ("bcast", 1)])
def test_collectives_report_the_mean_over_ranks(benchmark, first):
    done, records = osu(benchmark, "--max", "65536", "--iters", "20")
    assert done.returncode == 0, done.stderr
    rows = rows_of(records)
    # allreduce sums MPI_FLOAT: a size holding no float is skipped, as OMB does
    assert min(rows) == first and max(rows) == 65536
    for row in rows.values():
        assert 0 < row["min_us"] <= row["value"] <= row["max_us"]


@needs_mpi
def test_the_runner_knows_every_benchmark_of_osu_py():
    done, _ = osu("--help")
    assert done.returncode == 0
    assert "{" + ",".join(sorted(runner.BENCHMARKS)) + "}" in done.stdout


@needs_mpi
def test_point_to_point_needs_exactly_two_ranks():
    done, _ = osu("latency", "--max", "8", ranks=3)
    assert done.returncode != 0
    assert "latency needs exactly 2 processes, not 3" in done.stderr


@needs_mpi
def test_a_usage_error_is_said_once():
    done, _ = osu("bw", "--min", "0")
    assert done.returncode != 0
    assert done.stderr.count("need 1 <= --min <= --max, got 0") == 1  # rank 0 only


@needs_mpi
def test_device_buffers_skip_with_the_reason_where_no_gpu_library_runs():
    found = subprocess.run([HOST_PYTHON, "-c", "import importlib.util as u; print(any(u.find_spec(m) "
                            "for m in ('cupy', 'numba', 'torch')))"], capture_output=True, text=True)
    if found.stdout.strip() != "False" or shutil.which("nvidia-smi"):
        pytest.skip("this host may have CUDA device buffers: the skip path does not apply")
    done, records = osu("bw", "--max", "8", "--device")
    assert done.returncode != 0
    reason = records[0]["skipped"]
    assert reason.startswith("no CUDA device through cupy: ")
    assert all(f"{name}: No module named" in reason for name in ("cupy", "numba", "torch"))


# --- the runner's judging, on given rows -------------------------------------------------------


LIMITS = runner.Thresholds(latency_ratio=1.05, bandwidth_ratio=0.95, latency_floor_us=0.25)


@pytest.mark.parametrize("unit, bare, container, passes", [
    ("us", 0.40, 0.45, True),  # +12 % but 0.05 us: inside the floor
    ("us", 0.40, 0.66, False),  # +0.26 us: beyond the floor and the ratio
    ("us", 10.0, 10.4, True),  # +4 %
    ("us", 10.0, 10.6, False),  # +6 %, and 0.6 us > the floor
    ("us", 10.0, 9.0, True),  # faster
    ("MB/s", 1000.0, 960.0, True),
    ("MB/s", 1000.0, 940.0, False),
    ("MB/s", 1000.0, 1100.0, True),
])
def test_judge_applies_the_ratio_and_the_latency_floor(unit, bare, container, passes):
    assert runner.judge(unit, bare, container, LIMITS)[0] is passes


def samples(bench: str, unit: str, values: dict[str, dict[int, list[float]]]) -> list:
    return [runner.Sample(bench, size, unit, mode, rep, value)
            for mode, by_size in values.items() for size, reps in by_size.items()
            for rep, value in enumerate(reps)]


def test_compare_takes_medians_per_size_and_mode():
    rows = (samples("bw", "MB/s", {"bare": {1: [1.0, 3.0, 2.0], 8: [80.0, 80.0, 80.0]},
                                   "container": {1: [2.0, 2.1, 1.9], 8: [70.0, 90.0, 72.0]}})
            + samples("latency", "us", {"bare": {1: [2.0, 2.2, 2.1]},
                                        "container": {1: [2.1, 2.3, 9.0], 2: [1.0]}}))
    got = {(c.benchmark, c.size): c for c in runner.compare(rows, LIMITS)}
    # latency first (runner order); size 2 has no bare measurement: left out
    assert list(got) == [("latency", 1), ("bw", 1), ("bw", 8)]
    lat = got["latency", 1]
    assert (lat.bare, lat.container, lat.container_max) == (2.1, 2.3, 9.0)  # one outlier ignored
    assert lat.ratio == pytest.approx(2.3 / 2.1) and lat.passed
    bw8 = got["bw", 8]
    assert (bw8.bare, bw8.container, bw8.ratio) == (80.0, 72.0, 0.9) and not bw8.passed
    assert got["bw", 1].passed and (got["bw", 1].bare_min, got["bw", 1].bare_max) == (1.0, 3.0)


def test_best_compares_the_best_repetition_of_each_mode():
    rows = (samples("bw", "MB/s", {"bare": {8: [40.0, 80.0, 41.0]}, "container": {8: [78.0, 39.0, 40.0]}})
            + samples("latency", "us", {"bare": {1: [2.0, 0.5, 2.1]}, "container": {1: [0.52, 2.3, 2.2]}}))
    # the medians fall in the slow state for one mode and not the other; the best do not
    median = {c.benchmark: c for c in runner.compare(rows, LIMITS)}
    best = {c.benchmark: c for c in runner.compare(rows, LIMITS, "best")}
    assert (median["bw"].ratio, median["latency"].ratio) == (40.0 / 41.0, 2.2 / 2.0)
    assert (best["bw"].bare, best["bw"].container) == (80.0, 78.0) and best["bw"].passed
    assert (best["latency"].bare, best["latency"].container) == (0.5, 0.52) and best["latency"].passed


def test_ratio_summary_per_benchmark_and_unit():
    rows = (samples("bw", "MB/s", {"bare": {1: [10.0], 2: [20.0], 4: [40.0]},
                                   "container": {1: [10.0], 2: [15.0], 4: [44.0]}})
            + samples("bibw", "MB/s", {"bare": {1: [10.0]}, "container": {1: [9.0]}}))
    summary = runner.ratio_summary(runner.compare(rows, LIMITS))
    assert summary["benchmark"]["bw"] == {"median": 1.0, "min": 0.75, "max": 1.1, "passed": 2, "sizes": 3}
    assert summary["unit"]["MB/s"] == {"median": pytest.approx(0.95), "min": 0.75, "max": 1.1,
                                       "passed": 2, "sizes": 4}


def test_ratio_table_marks_the_failures():
    rows = samples("bw", "MB/s", {"bare": {1: [10.0], 2: [20.0]}, "container": {1: [10.0], 2: [15.0]}})
    table = runner.ratio_table(runner.compare(rows, LIMITS)).splitlines()
    assert table[0].split() == ["size", "(B)", "bw"]
    assert table[1].split() == ["1", "1.000"] and table[2].split() == ["2", "0.750!"]


def test_judge_an_earlier_run_with_other_thresholds(tmp_path, capsys):
    rows = samples("latency", "us", {"bare": {1: [1.0, 1.0]}, "container": {1: [1.08, 1.08]}})
    earlier = tmp_path / "osu_samples.csv"
    runner.write_csv(earlier, rows)
    assert runner.read_samples(earlier) == rows
    assert runner.main(["--judge", str(earlier)]) == 0  # +0.08 us: inside the default floor
    assert runner.main(["--judge", str(earlier), "--latency-floor-us", "0.05"]) == runner.EXIT_FAILED
    assert "FAIL latency 1 B: ratio 1.080" in capsys.readouterr().out
    assert not (tmp_path / "osu_summary.csv").exists()  # judging writes nothing


def test_bare_and_container_share_the_launcher_line():
    args = runner.parse(["--np", "2", "--iters", "7", "--image", "app.sif", "--hpcrun", "/x/hpcrun"])
    lines = runner.commands("bibw", args)
    bare, container = lines["bare"], lines["container"]
    launcher = bare[:bare.index(HOST_PYTHON)]
    assert launcher[0] == "mpirun.openmpi" and launcher[-2:] == ["-np", "2"]
    start = container.index("mpirun.openmpi")
    assert container[:start] == ["/x/hpcrun", "--bind", str(OSU_DIR)]
    assert container[start:start + len(launcher)] == launcher
    assert container[start + len(launcher):start + len(launcher) + 2] == ["app.sif", "python3"]
    osu_args = [str(OSU), "bibw", "--min", "1", "--max", str(1 << 22), "--json", "--iters", "7"]
    assert bare[len(launcher) + 1:] == container[start + len(launcher) + 2:] == osu_args


def test_oversubscribe_only_beyond_the_cores():
    cores = os.cpu_count() or 1
    assert "--oversubscribe" not in runner.launcher_argv("mpirun.openmpi", cores)
    assert "--oversubscribe" in runner.launcher_argv("mpirun.openmpi", cores + 1)
    assert ("--allow-run-as-root" in runner.launcher_argv("mpirun.openmpi", 2)) is (os.getuid() == 0)


# --- one small run, bare vs container ----------------------------------------------------------


@needs_mpi
@pytest.mark.slow
@pytest.mark.skipif(not EXAMPLE.exists(), reason=f"{EXAMPLE} missing: build it with 'make example'")
def test_runner_bare_vs_container(tmp_path):
    done = subprocess.run([sys.executable, str(OSU_DIR / "run.py"), "--benchmarks", "latency", "bw",
                           "--max", "1024", "--iters", "20", "--repeat", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    document = json.loads((tmp_path / "osu.json").read_text())
    # the exit status is the verdict: 1 exactly when a size failed its threshold
    assert done.returncode == (1 if document["failed"] else 0), done.stderr
    order = re.findall(r"^ +(\w+) +repetition (\d)/2 (\w+) ", done.stdout, re.M)
    assert order == [(bench, rep, mode) for bench in ("latency", "bw")  # ABBA, per benchmark
                     for rep, mode in (("1", "bare"), ("1", "container"), ("2", "container"), ("2", "bare"))]
    sizes = [1 << i for i in range(11)]
    assert [(c["benchmark"], c["size"]) for c in document["summary"]] == \
        [(b, s) for b in ("latency", "bw") for s in sizes]
    assert len(runner.read_samples(tmp_path / "osu_samples.csv")) == 2 * 2 * 2 * len(sizes)
    assert document["mpi"]["bare"]["mpi"] and document["mpi"]["container"]["mpi"]
    assert {"cpu", "cores", "kernel", "launcher", "date"} <= set(document["machine"])
    for name in ("osu_samples.csv", "osu_summary.csv", "osu_latency.png", "osu_bw.png", "osu_ratios.png"):
        assert (tmp_path / name).stat().st_size > 0
    # the same samples judged with thresholds nothing meets, then with ones everything meets
    strict = ["--latency-ratio", "0", "--latency-floor-us", "0", "--bandwidth-ratio", "1e9"]
    lenient = ["--latency-ratio", "1e9", "--bandwidth-ratio", "0"]
    for thresholds, status in ((strict, runner.EXIT_FAILED), (lenient, 0)):
        again = subprocess.run([sys.executable, str(OSU_DIR / "run.py"), "--judge",
                                str(tmp_path / "osu_samples.csv"), *thresholds], capture_output=True,
                               text=True)
        assert again.returncode == status, again.stdout
