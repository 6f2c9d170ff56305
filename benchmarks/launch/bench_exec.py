"""Start-up cost of one container: ``hpcrun exec IMG /bin/true`` against Charliecloud's
``ch-run`` on the same squashfs image, and against bare ``/bin/true``.

All cases run as the same unprivileged user (``--user``, default hpcbind-test when run as
root: ch-run and hpcrun both take their unprivileged paths, squashfuse), interleaved round by
round so drift on a shared machine hits every case alike. Prints medians and ratios.

    .venv/bin/python benchmarks/launch/bench_exec.py [--rounds 40] [--user NAME]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUSYBOX_SIF = REPO / "tests/data/sif/singularityce/images/busybox_amd64.sif"
PARTITION_OFFSET = 45056  # of the busybox SIF's squashfs (see its descriptor table)


def build_images(work: Path) -> dict[str, Path]:
    root = work / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", str(PARTITION_OFFSET), "-d",
                    str(root), str(BUSYBOX_SIF)], check=True, capture_output=True)
    images = {"dir": root, "sif": work / "busybox.sif"}
    shutil.copyfile(BUSYBOX_SIF, images["sif"])
    for comp in ("gzip", "lz4"):
        out = work / f"busybox-{comp}.sqfs"
        subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-no-progress",
                        "-all-root", "-comp", comp], check=True, capture_output=True)
        images[comp] = out
    return images


def user_prefix(user: str | None) -> list[str]:
    if not user:
        return []
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "env", "-i", f"HOME={pw.pw_dir}", f"USER={user}", "PATH=/usr/bin:/bin"]


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}: {result.stderr.decode()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--user", default="hpcbind-test" if os.getuid() == 0 else None)
    parser.add_argument("--hpcrun", default=str(REPO / ".venv/bin/hpcrun"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpcbind-bench-"))
    work.chmod(0o755)
    try:
        images = build_images(work)
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        prefix = user_prefix(args.user)
        cases = {
            "bare /bin/true": prefix + ["/bin/true"],
            "ch-run gzip sqfs": prefix + ["ch-run", str(images["gzip"]), "--", "/bin/true"],
            "hpcrun gzip sqfs": prefix + [args.hpcrun, "exec", str(images["gzip"]), "/bin/true"],
            "hpcrun SIF (gzip)": prefix + [args.hpcrun, "exec", str(images["sif"]), "/bin/true"],
            "ch-run lz4 sqfs": prefix + ["ch-run", str(images["lz4"]), "--", "/bin/true"],
            "hpcrun lz4 sqfs": prefix + [args.hpcrun, "exec", str(images["lz4"]), "/bin/true"],
            "ch-run directory": prefix + ["ch-run", str(images["dir"]), "--", "/bin/true"],
            "hpcrun directory": prefix + [args.hpcrun, "exec", str(images["dir"]), "/bin/true"],
        }
        if not shutil.which("ch-run"):
            cases = {k: v for k, v in cases.items() if not k.startswith("ch-run")}
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for name, argv in cases.items():  # warm-up: page cache, pycache
            timed(argv, work)
        for _ in range(args.rounds):
            for name, argv in cases.items():
                samples[name].append(timed(argv, work))
        med = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
        print(f"user={args.user or os.getlogin()} rounds={args.rounds} cpus={os.cpu_count()} "
              f"kernel={os.uname().release}")
        print(f"{'case':22s} {'median ms':>10s}  {'p90 ms':>8s}")
        for name, s in samples.items():
            p90 = sorted(s)[int(0.9 * (len(s) - 1))] * 1e3
            print(f"{name:22s} {med[name]:10.1f}  {p90:8.1f}")
        print("ratios:")
        for kind in ("gzip sqfs", "lz4 sqfs", "directory"):
            if f"ch-run {kind}" in med:
                print(f"  hpcrun/ch-run {kind:10s} {med[f'hpcrun {kind}'] / med[f'ch-run {kind}']:.2f}")
        print(f"  hpcrun SIF/bare          {med['hpcrun SIF (gzip)'] / med['bare /bin/true']:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
