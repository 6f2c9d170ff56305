"""mpi4py ranks inside the example image (examples/example.sif, ``make example``) under the
host's launchers, as the unprivileged user: the pytest-mpi tests of tests/mpi/ranks_mpi4py.py
run on every rank, inside the container."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from conftest import REPO, Unprivileged
from slurm_cluster import slurm_single  # noqa: F401 (fixture)

EXAMPLE = REPO / "examples" / "example.sif"
PYTEST_PACKAGES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pytest_mpi", "py",
                   "pygments")
pytestmark = pytest.mark.skipif(not EXAMPLE.exists(),
                                reason="examples/example.sif missing: run 'make example'")


@pytest.fixture(scope="module")
def staged(unprivileged: Unprivileged) -> dict[str, str]:
    """The image, the tests and pytest where the test user can read them."""
    image = unprivileged.root / "example.sif"
    if not image.exists():
        shutil.copyfile(EXAMPLE, image)
    site = unprivileged.root / "pytest-site"
    for name in PYTEST_PACKAGES:
        module = importlib.import_module(name)
        source = Path(module.__file__)
        target = site / (name if source.name == "__init__.py" else source.name)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    tests = unprivileged.root / "ranks_mpi4py.py"
    shutil.copyfile(REPO / "tests/mpi/ranks_mpi4py.py", tests)
    for path in [image, tests, *site.rglob("*"), site]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"image": str(image), "tests": str(tests), "site": str(site)}


def ranks_run_pytest(staged: dict[str, str]) -> list[str]:
    return ["--bind", f"{staged['site']}:/opt/pytest-site:ro", "--env",
            "PYTHONPATH=/opt/pytest-site", "--env", "PYTHONDONTWRITEBYTECODE=1"]


def pytest_argv(staged):
    return [staged["image"], "python3", "-m", "pytest", "-p", "pytest_mpi", "--with-mpi", "-q",
            "-p", "no:cacheprovider", staged["tests"]]


def test_mpi4py_under_open_mpi_mpirun(unprivileged: Unprivileged, staged):
    r = unprivileged.run(*ranks_run_pytest(staged), "mpirun.openmpi", "--oversubscribe", "-np",
                         "3", *pytest_argv(staged), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("3 passed") == 3


def test_mpi4py_under_srun_pmix(unprivileged: Unprivileged, staged, slurm_single):
    r = unprivileged.run(*ranks_run_pytest(staged), "srun", "--mpi=pmix", "-n", "2",
                         *pytest_argv(staged), env=slurm_single.env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("3 passed") == 2


def test_open_mpi_image_under_hydra_is_refused(unprivileged: Unprivileged, staged):
    r = unprivileged.run("mpiexec.mpich", "-n", "2", staged["image"], "python3", "-c", "pass",
                         timeout=120)
    assert r.returncode == 255 and "the image's MPI is Open MPI" in r.stderr
