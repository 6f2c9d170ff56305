"""How long a bind plan takes: made in-process, made by a whole ``hpcrun plan`` process, and
reused from a cached JSON plan (read, parse, digest verified).

The host is the combined 8-GPU/8-HCA fixture node, built once with the test builders
(``tests/hosts_gpu.py``, ``tests/hosts_fabric.py``) and read through ``--sysroot``, so the
figures are the same on a laptop and in CI. Prints medians and their ratio to the targets.

    .venv/bin/python benchmarks/plan/bench_plan.py [--rounds 200] [--processes 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hosts_fabric import build_mlx5_node  # noqa: E402  (the test builders live in tests/)
from hosts_gpu import build_nvidia_node  # noqa: E402

from hpcbind.discover import Request, load_plan, make_plan  # noqa: E402
from hpcbind.host import elf  # noqa: E402
from hpcbind.hostroot import HostRoot  # noqa: E402

HPCRUN = REPO / ".venv" / "bin" / "hpcrun"
TARGETS_MS = {"discovery + plan, in-process": 20.0, "cached plan: load + verify digest": 2.0}
REQUEST = Request(nv=True, ib=True)
ENV: dict[str, str] = {}  # no launcher, no GPU selection: the whole node


def median_ms(run: Callable[[], object], rounds: int) -> float:
    run()  # warm: imports, page cache
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def first_plan(root: Path):
    """A plan as one hpcrun process makes it: nothing remembered of an earlier look (the
    HostRoot's resolved directories, the ELF facts of the libraries)."""
    elf._SEEN.clear()
    return make_plan(REQUEST, HostRoot(root), ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="in-process repetitions (default 200)")
    parser.add_argument("--processes", type=int, default=20, help="hpcrun processes (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcbind-bench-plan-") as tmp:
        root = Path(tmp) / "node"
        build_mlx5_node(root)
        build_nvidia_node(root)
        host = HostRoot(root)
        plan = make_plan(REQUEST, host, ENV)
        cached = Path(tmp) / "plan.json"
        cached.write_text(plan.to_json())
        argv = [str(HPCRUN), "plan", "--nv", "--ib", "--sysroot", str(root), "--json"]
        figures = {
            "discovery + plan, in-process": median_ms(lambda: first_plan(root), args.rounds),
            "hpcrun plan --nv --ib --json, whole process": median_ms(
                lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV), args.processes),
            "cached plan: load + verify digest": median_ms(lambda: load_plan(cached), args.rounds),
        }
    print(f"host: fixture node, {len(plan.mounts)} mounts, {len(plan.devices)} devices, "
          f"{len(plan.env)} env, {len(plan.links)} links, {len(plan.rejected)} rejected")
    for name, ms in figures.items():
        target = TARGETS_MS.get(name)
        verdict = f"target <= {target:g} ms, ratio {ms / target:.2f}" if target else "no target"
        print(f"{name:<46} median {ms:8.2f} ms   ({verdict})")


if __name__ == "__main__":
    main()
