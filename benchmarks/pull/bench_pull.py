"""Pull and convert time of a ~100 MB image from a local registry: ``hpcrun pull`` cold and
with the layer cache warm, against the floor, the same steps by hand (``skopeo copy`` +
``umoci raw unpack`` + ``mksquashfs``).

    .venv/bin/python benchmarks/pull/bench_pull.py [--rounds 2] [--image examples/example.sif]

The image is the example image's root filesystem as one gzip layer (made with umoci), pushed
to Debian's docker-registry on 127.0.0.1 (plain HTTP). Every figure is the median of
``--rounds`` runs, each in a fresh cache and output directory ("warm": the cache kept from a
cold pull just before).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hpcbind.image.source import locate  # noqa: E402
from tests.oci_registry import oci_image, start_registry  # noqa: E402

HPCRUN = str(REPO / ".venv" / "bin" / "hpcrun")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def floor(reference: str, work: Path) -> float:
    """What any converter must do: fetch, apply the layers, squash."""
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", reference,
                    f"oci:{work}/layout:x"], check=True, capture_output=True)
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{work}/layout:x", f"{work}/rootfs"],
                   check=True, capture_output=True)
    subprocess.run(["mksquashfs", f"{work}/rootfs", f"{work}/x.sqfs", "-noappend", "-comp",
                    "gzip", "-quiet", "-no-progress"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "example.sif")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    registry = start_registry(scratch / "registry")
    try:
        found = locate(str(args.image))
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(scratch / "root"), "-o",
                        str(found.offset), found.path], check=True, capture_output=True)
        reference = registry.push(oci_image(scratch / "root", scratch / "layout", "1"),
                                  "bench/image:1")
        layer_mb = sum(p.stat().st_size for p in (scratch / "layout/blobs").rglob("*")) / 2**20
        figures: dict[str, list[float]] = {"floor": [], "cold": [], "warm": []}
        for n in range(args.rounds):
            run = scratch / f"run{n}"
            (run / "floor").mkdir(parents=True)
            figures["floor"].append(floor(reference, run / "floor"))
            env = {"HPCRUN_CACHEDIR": str(run / "cache")}
            pull = [HPCRUN, "pull", "--no-https", "--force"]
            figures["cold"].append(timed([*pull, str(run / "a.sif"), reference], env))
            figures["warm"].append(timed([*pull, str(run / "b.sif"), reference], env))
            shutil.rmtree(run)
        print(f"image: {layer_mb:.0f} MiB compressed in the registry, {args.rounds} rounds")
        base = statistics.median(figures["floor"])
        for name, values in figures.items():
            median = statistics.median(values)
            print(f"{name:>6}: {median:6.1f} s  ({median / base:.2f} x floor)")
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
