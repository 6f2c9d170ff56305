"""--mpi=host: the host's MPI replaces the image's, only when Sarus's ABI rules allow."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Unprivileged, hpcrun_main
from mpi_images import build_mpi_image

EXAMPLE = REPO / "examples" / "example.sif"


@pytest.fixture(scope="module")
def openmpi_image(unprivileged: Unprivileged) -> Path:
    return build_mpi_image("openmpi", unprivileged.root)


def test_the_plan_binds_the_host_mpi_first(openmpi_image):
    code, out, _ = hpcrun_main("plan", "--mpi=host", "--json", str(openmpi_image))
    assert code == 0
    plan = json.loads(out)
    mine = {m["destination"]: m for m in plan["mounts"] if m["provider"] == "mpi.hostmpi"}
    libmpi = next(d for d in mine if Path(d).name.startswith("libmpi.so.40."))
    assert libmpi.startswith("/.hpcbind/lib/") and mine[libmpi]["rule"] == "mpi-host"
    assert "/usr/lib/x86_64-linux-gnu/openmpi" in mine  # components at their compiled-in path
    assert not any(Path(d).name.startswith(("libc.so", "ld-linux")) for d in mine)
    assert {"name": "LD_LIBRARY_PATH", "action": "prepend", "value": "/.hpcbind/lib",
            "provider": "mpi.hostmpi",
            "reason": "--mpi=host: the host's MPI before the image's"} in plan["env"]
    assert [c["status"] for c in plan["checks"] if c["name"] == "mpi-abi"] == ["ok"]
    assert not [r for r in plan["rejected"] if r["provider"] == "mpi.hostmpi"]


def test_bind_model_job(unprivileged: Unprivileged, openmpi_image):
    r = unprivileged.run("--mpi=host", "mpirun.openmpi", "-np", "2", str(openmpi_image),
                         "/usr/local/bin/mpi-check", timeout=180)
    assert (r.returncode, r.stdout) == (0, "OK size=2 sum=1 node_ranks=2\n"), r.stderr


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/example.sif missing: make example")
def test_ranks_really_load_the_host_library(unprivileged: Unprivileged):
    image = unprivileged.root / "example-hostmpi.sif"
    if not image.exists():
        image.write_bytes(EXAMPLE.read_bytes())
        image.chmod(0o644)
    probe = ("from mpi4py import MPI; import re; "
             "print(sorted({m for m in re.findall(r'\\S*libmpi\\.so\\S*', "
             "open('/proc/self/maps').read())}))")
    r = unprivileged.run("--mpi=host", "mpirun.openmpi", "-np", "1", str(image), "python3", "-c",
                         probe, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['/.hpcbind/lib/libmpi.so.40.30.4']"


def test_an_mpi_family_the_host_lacks_is_refused(tmp_path):
    root = tmp_path / "image"
    (root / "usr/lib").mkdir(parents=True)
    (root / "bin").mkdir()
    src = tmp_path / "abi.c"
    src.write_text("int MPI_Init(int *c, char ***v) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libmpi_abi.so.1", "-o",
                    str(root / "usr/lib/libmpi_abi.so.1"), str(src)], check=True)
    code, _, err = hpcrun_main("plan", "--mpi=host", str(root))
    assert code == 1  # a failed check
    code, out, _ = hpcrun_main("plan", "--mpi=host", "--json", str(root))
    failed = [c for c in json.loads(out)["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["mpi-host"]
    assert "no host MPI of the image's family" in failed[0]["message"]
