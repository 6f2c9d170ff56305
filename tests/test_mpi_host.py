"""Launcher discovery against real launchers: Debian's Open MPI 4.1 ``mpirun`` and MPICH 4's
Hydra ``mpiexec`` start two ranks here, each runs ``discover`` inside the job (where the PMIx
server and its directory are alive and ``PMI_FD`` is open) and also dumps its environment, which
is then replayed on fixture roots. Every expectation is derived from the rank's own environment.

The same under the suite's real Slurm 22.05 (tests/slurm_cluster.py), ``srun --mpi=pmix`` and
``--mpi=pmi2``, with literal expectations. The replay cases below it are written from
reference/mpi-fabric-pmi.md §4 (a public ``srun --mpi=pmix`` job dump of another site: PMIx
4.2.9, munge, the spmix appdir), which a one-node test cluster cannot show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hosts_gpu import unix_socket
from slurm_cluster import slurm_single  # noqa: F401 (fixture)
from hpcbind.hostroot import HostRoot
from hpcbind.mpi.abi import Family
from hpcbind.mpi.host import (MUNGE_DIR, MUNGE_SOCKET, PROVIDER, Launcher, detect_launcher, discover,
                              launcher_mpi, uri_versions)
from hpcbind.plan import EnvAction, Need, PlanPart, Status

REPO = Path(__file__).resolve().parents[1]
# Inside each rank: discover against the live host, and keep the rank's environment.
RANK_SCRIPT = """
import dataclasses, json, os, sys
from hpcbind.hostroot import HostRoot
from hpcbind.mpi.host import discover
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") \
    or os.environ["SLURM_PROCID"]
part = dataclasses.asdict(discover(HostRoot(), os.environ))
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as out:
    json.dump({"env": dict(os.environ), "part": part}, out)
"""
LAUNCHERS = {
    "openmpi": ["mpirun.openmpi", "--allow-run-as-root", "--oversubscribe", "-np", "2"],
    "hydra": ["mpirun.mpich", "-np", "2"],
}
DIR_VARS = ("PMIX_SERVER_TMPDIR", "PMIX_DSTORE_21_BASE_PATH", "PMIX_DSTORE_ESH_BASE_PATH",
            "OMPI_MCA_orte_jobfam_session_dir")


def _launch(name: str, out: Path, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*LAUNCHERS[name], *argv], env=env, cwd=out, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def ranks(request, tmp_path_factory) -> list[dict]:
    """What each of two real ranks found, and its environment."""
    out = tmp_path_factory.mktemp(request.param)
    _launch(request.param, out, [sys.executable, "-c", RANK_SCRIPT, str(out)])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def captured(request, tmp_path_factory) -> list[dict[str, str]]:
    """Rank environments written by ``env``, for replay after the job has ended."""
    out = tmp_path_factory.mktemp(f"{request.param}-env")
    rank_var = "OMPI_COMM_WORLD_RANK" if request.param == "openmpi" else "PMI_RANK"
    _launch(request.param, out, ["/bin/sh", "-c", f'/usr/bin/env -0 > "$0/env.${rank_var}"', str(out)])
    return [dict(item.split("=", 1) for item in (out / f"env.{r}").read_text().split("\0") if item)
            for r in (0, 1)]


def _prefixed(env: dict[str, str], *prefixes: str) -> list[str]:
    return sorted(n for n in env if n.startswith(prefixes))


def _facts(part: dict) -> dict[str, str]:
    return {f["name"]: f["value"] for f in part["facts"]}


def test_each_rank_finds_its_launcher_and_place(ranks: list[dict]) -> None:
    seen = set()
    for rank in ranks:
        env, facts = rank["env"], _facts(rank["part"])
        assert all(f["provider"] == PROVIDER for f in rank["part"]["facts"])
        if "OMPI_COMM_WORLD_SIZE" in env:
            assert facts["launcher"] == Launcher.OPENMPI_ORTE  # Open MPI 4.1: orterun, no PRRTE
            expected = (env["OMPI_COMM_WORLD_RANK"], env["OMPI_COMM_WORLD_LOCAL_RANK"], env["OMPI_COMM_WORLD_SIZE"])
        else:
            assert facts["launcher"] == Launcher.HYDRA
            expected = (env["PMI_RANK"], env["MPI_LOCALRANKID"], env["PMI_SIZE"])
        assert (facts["rank"], facts["local-rank"], facts["size"]) == expected
        seen.add(facts["rank"])
    assert seen == {"0", "1"}


def test_rendezvous_variables_pass_even_under_cleanenv(ranks: list[dict]) -> None:
    for rank in ranks:
        env, ops = rank["env"], rank["part"]["env"]
        passed = [op["name"] for op in ops if op["action"] == EnvAction.PASS]
        if "OMPI_COMM_WORLD_SIZE" in env:
            assert passed == _prefixed(env, "OMPI_", "PMIX_")
        else:
            assert passed == sorted([*_prefixed(env, "PMI_"), "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
                                     "MPIR_CVAR_CH3_INTERFACE_HOSTNAME"])
        # the rank's own value is read at exec: the plan carries none, so ranks can share it
        assert all(op["value"] == "" and op["provider"] == PROVIDER for op in ops if op["action"] == EnvAction.PASS)


def test_open_mpi_server_directory_is_bound_read_write(ranks: list[dict]) -> None:
    for rank in ranks:
        env, part = rank["env"], rank["part"]
        if "PMIX_SERVER_TMPDIR" not in env:
            assert part["mounts"] == []  # Hydra: a socket, no directory
            continue
        server_dir = os.path.normpath(env["PMIX_SERVER_TMPDIR"])
        assert [(m["source"], m["destination"], m["kind"], tuple(m["options"]), m["need"])
                for m in part["mounts"]] == [(server_dir, server_dir, "dir", ("rw", "nosuid", "nodev"),
                                              Need.REQUIRED)]
        assert part["mounts"][0]["rule"] == "pmix-server-tmpdir"
        # the other rendezvous directories are inside it, and recorded as covered
        covered = {r["candidate"] for r in part["rejected"]}
        for var in DIR_VARS[1:]:
            if var in env:
                assert os.path.normpath(env[var]) in covered
                assert os.path.normpath(env[var]).startswith(server_dir)


def test_pmix_modules_become_mca_selections(ranks: list[dict]) -> None:
    for rank in ranks:
        env, ops = rank["env"], rank["part"]["env"]
        sets = {op["name"]: op["value"] for op in ops if op["action"] == EnvAction.SET}
        expected = {}
        if "PMIX_GDS_MODULE" in env:
            expected["PMIX_MCA_gds"] = env["PMIX_GDS_MODULE"]
        if "PMIX_SECURITY_MODE" in env:  # no munged on this machine: munge is dropped
            expected["PMIX_MCA_psec"] = ",".join(m for m in env["PMIX_SECURITY_MODE"].split(",") if m != "munge")
        if "PMIX_PTL_MODULE" in env:
            expected["PMIX_MCA_ptl"] = env["PMIX_PTL_MODULE"]
        assert sets == expected


def test_pmix_server_facts(ranks: list[dict]) -> None:
    for rank in ranks:
        env, facts = rank["env"], _facts(rank["part"])
        if "PMIX_VERSION" not in env:
            assert "pmix-version" not in facts
            continue
        assert facts["pmix-version"] == env["PMIX_VERSION"]
        names = sorted(n.removeprefix("PMIX_SERVER_URI") for n in env if n.startswith("PMIX_SERVER_URI"))
        assert facts["pmix-uri-versions"] == ",".join(
            f"{n[0]}.{n[1:] or 0}" for n in sorted(names, key=lambda n: (int(n[0]), int(n[1:] or 0))))
        assert facts["pmix-server"].startswith("tcp4://127.0.0.1:")  # loopback: the host network
        assert facts["pmix-server"] in env["PMIX_SERVER_URI41"]


def test_pmi_fd_is_open_in_the_rank(ranks: list[dict]) -> None:
    for rank in ranks:
        env, checks = rank["env"], rank["part"]["checks"]
        if "PMI_FD" not in env:
            assert checks == []
            continue
        assert _facts(rank["part"])["pmi-fd"] == env["PMI_FD"]
        assert [(c["name"], c["status"], c["message"]) for c in checks] == [
            ("pmi-fd", Status.OK, f"PMI_FD={env['PMI_FD']} is open and inherited across exec")]


# --- replayed environments ----------------------------------------------------------------


def test_replay_after_the_job_ended(captured: list[dict[str, str]], tmp_path: Path) -> None:
    """On an empty root the server directory is gone: a warning, and nothing mounted."""
    for env in captured:
        part = discover(HostRoot(tmp_path), env)
        assert part.mounts == []
        if "PMIX_SERVER_TMPDIR" in env:
            server_dir = os.path.normpath(env["PMIX_SERVER_TMPDIR"])
            assert (server_dir, PROVIDER, f"PMIX_SERVER_TMPDIR={server_dir} does not exist on this host") in {
                (r.candidate, r.provider, r.reason) for r in part.rejected}
            assert {(c.name, c.status) for c in part.checks} == {("pmi-rendezvous", Status.WARN)}
        else:
            assert part.checks == []  # a capture has no /proc/self/fd to check PMI_FD against


def test_replay_on_a_root_with_the_server_directory(captured: list[dict[str, str]], tmp_path: Path) -> None:
    for env in captured:
        for var in DIR_VARS:
            if var in env:
                (tmp_path / env[var].lstrip("/")).mkdir(parents=True, exist_ok=True)
        part = discover(HostRoot(tmp_path), env)
        expected = [os.path.normpath(env["PMIX_SERVER_TMPDIR"])] if "PMIX_SERVER_TMPDIR" in env else []
        assert [m.source for m in part.mounts] == expected
        assert all(c.status is Status.OK for c in part.checks)


def test_launcher_mpi_is_the_launchers_own(captured: list[dict[str, str]]) -> None:
    lib = launcher_mpi(HostRoot(), captured[0])
    assert lib.family is (Family.OPENMPI if "OMPI_COMM_WORLD_SIZE" in captured[0] else Family.MPICH)
    assert lib.soname == ("libmpi.so.40" if lib.family is Family.OPENMPI else "libmpich.so.12")


# --- Slurm, real ------------------------------------------------------------------------------

def _srun_ranks(cluster, mpi: str) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix="srun-ranks-"))  # under /tmp: slurmstepd can enter it
    try:
        r = cluster.srun(f"--mpi={mpi}", "-n", "2", sys.executable, "-c", RANK_SCRIPT, str(out),
                         env={"PYTHONPATH": str(REPO)}, cwd=out, timeout=120)
        assert r.returncode == 0, r.stderr
        return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    finally:
        shutil.rmtree(out)


def test_real_srun_pmix_ranks(slurm_single) -> None:
    for number, rank in enumerate(_srun_ranks(slurm_single, "pmix")):
        env, facts = rank["env"], _facts(rank["part"])
        step = f"{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
        assert (facts["launcher"], facts["rank"], facts["local-rank"], facts["size"]) == (
            "slurm-pmix", str(number), str(number), "2")
        assert facts["pmix-version"] == "4.2.2rc2"  # Debian 12's libpmix2, which slurm-wlm uses
        tmpdir = str(slurm_single.scratch / "spool" / f"pmix.{step}")
        assert env["PMIX_SERVER_TMPDIR"].rstrip("/") == tmpdir
        assert [(m["source"], m["rule"], m["options"]) for m in rank["part"]["mounts"]] == [
            (tmpdir, "pmix-server-tmpdir", ["rw", "nosuid", "nodev"])]
        assert rank["part"]["checks"] == []


def test_real_srun_pmi2_ranks(slurm_single) -> None:
    for number, rank in enumerate(_srun_ranks(slurm_single, "pmi2")):
        env, facts = rank["env"], _facts(rank["part"])
        assert (facts["launcher"], facts["rank"], facts["size"]) == ("slurm-pmi2", str(number),
                                                                     "2")
        assert facts["pmi-fd"] == env["PMI_FD"] and env["PMI_FD"].isdigit()
        assert rank["part"]["mounts"] == []
        assert [(c["name"], c["status"]) for c in rank["part"]["checks"]] == [("pmi-fd", "ok")]
        assert [e["name"] for e in rank["part"]["env"]] == _prefixed(env, "SLURM_", "SLURMD_",
                                                                      "PMI_")


# --- Slurm, from the reference -------------------------------------------------------------

SLURM_PMIX = {
    "SLURM_JOB_ID": "5816711", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8", "SLURM_MPI_TYPE": "pmix_v4", "SLURM_JOB_UID": "1000",
    "SLURMD_NODENAME": "n1", "SLURM_PMIX_DIRECT_CONN": "true",
    "PMIX_NAMESPACE": "slurm.pmix.5816711.0", "PMIX_RANK": "3",
    "PMIX_SERVER_TMPDIR": "/var/spool/slurmd/pmix.5816711.0/",
    "PMIX_SERVER_URI2": "pmix-server.1050522;tcp4://127.0.0.1:60043",
    "PMIX_SERVER_URI21": "pmix-server.1050522;tcp4://127.0.0.1:60043",
    "PMIX_SERVER_URI3": "pmix-server.1050522;tcp4://127.0.0.1:60043",
    "PMIX_SERVER_URI4": "pmix-server.1050522;tcp4://127.0.0.1:60043",
    "PMIX_SERVER_URI41": "pmix-server.1050522;tcp4://127.0.0.1:60043",
    "PMIX_SYSTEM_TMPDIR": "/tmp", "PMIX_VERSION": "4.2.9",
    "PMIX_SECURITY_MODE": "munge,native", "PMIX_GDS_MODULE": "shmem2,hash",
    "PMIX_BFROP_BUFFER_TYPE": "PMIX_BFROP_BUFFER_NON_DESC",
    "HOME": "/home/u", "PATH": "/usr/bin",
}
SLURM_PMI2 = {
    "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "2", "SLURM_MPI_TYPE": "pmi2",
    "PMI_FD": "5", "PMI_JOBID": "77.2", "PMI_RANK": "0", "PMI_SIZE": "2",
}
APPDIR = "/tmp/spmix_appdir_1000_5816711.0"


def _slurm_root(tmp_path: Path, munged: bool, appdir: str = APPDIR) -> HostRoot:
    (tmp_path / "var/spool/slurmd/pmix.5816711.0").mkdir(parents=True)
    (tmp_path / appdir.lstrip("/")).mkdir(parents=True)
    if munged:
        unix_socket(tmp_path, MUNGE_SOCKET)
    return HostRoot(tmp_path)


def _sets(part: PlanPart) -> dict[str, str]:
    return {e.name: e.value for e in part.env if e.action is EnvAction.SET}


def test_slurm_pmix_binds_spool_appdir_and_munge(tmp_path: Path) -> None:
    part = discover(_slurm_root(tmp_path, munged=True), SLURM_PMIX)
    assert [(m.source, m.destination, m.kind, m.rule, m.options, m.need) for m in part.mounts] == [
        (APPDIR, APPDIR, "dir", "slurm-spmix-appdir", ("rw", "nosuid", "nodev"), Need.REQUIRED),
        ("/var/spool/slurmd/pmix.5816711.0", "/var/spool/slurmd/pmix.5816711.0", "dir", "pmix-server-tmpdir",
         ("rw", "nosuid", "nodev"), Need.REQUIRED),
        (MUNGE_DIR, MUNGE_DIR, "socket", "munge-socket", ("ro", "nosuid", "nodev"), Need.OPTIONAL),
    ]
    assert _sets(part) == {"PMIX_MCA_psec": "munge,native", "PMIX_MCA_gds": "shmem2,hash"}
    assert [e.name for e in part.env if e.action is EnvAction.PASS] == _prefixed(
        SLURM_PMIX, "SLURM_", "SLURMD_", "PMIX_")
    facts = {f.name: f.value for f in part.facts}
    assert facts["launcher"] == Launcher.SLURM_PMIX
    assert (facts["rank"], facts["local-rank"], facts["size"]) == ("3", "1", "8")
    assert facts["pmix-version"] == "4.2.9"
    assert facts["pmix-server"] == "tcp4://127.0.0.1:60043"
    assert part.checks == []


def test_slurm_pmix_without_munged_falls_back_to_native(tmp_path: Path) -> None:
    part = discover(_slurm_root(tmp_path, munged=False, appdir="/tmp/spmix_appdir_5816711.0"), SLURM_PMIX)
    assert _sets(part)["PMIX_MCA_psec"] == "native"
    assert [m.rule for m in part.mounts] == ["slurm-spmix-appdir", "pmix-server-tmpdir"]
    assert part.mounts[0].source == "/tmp/spmix_appdir_5816711.0"  # Slurm before 20.11: no uid
    assert (MUNGE_SOCKET, PROVIDER, "psec munge,native lists munge, and munged is not running here") in {
        (r.candidate, r.provider, r.reason) for r in part.rejected}


def test_munge_only_server_without_munged_fails(tmp_path: Path) -> None:
    part = discover(_slurm_root(tmp_path, munged=False), {**SLURM_PMIX, "PMIX_SECURITY_MODE": "munge"})
    assert "PMIX_MCA_psec" not in _sets(part)
    assert [(c.name, c.status) for c in part.checks] == [("pmix-psec", Status.FAIL)]
    assert part.checks[0].fix == "start munged on this node, or configure the PMIx server with psec native"


def test_user_choice_of_psec_is_kept(tmp_path: Path) -> None:
    part = discover(_slurm_root(tmp_path, munged=True), {**SLURM_PMIX, "PMIX_MCA_psec": "native"})
    assert "PMIX_MCA_psec" not in _sets(part)  # passed through as the user set it
    assert "PMIX_MCA_psec" in [e.name for e in part.env if e.action is EnvAction.PASS]
    assert MUNGE_DIR not in [m.source for m in part.mounts]


def test_missing_appdir_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "var/spool/slurmd/pmix.5816711.0").mkdir(parents=True)
    part = discover(HostRoot(tmp_path), SLURM_PMIX)
    assert (APPDIR, "no Slurm PMIx client directory on this host") in {(r.candidate, r.reason) for r in part.rejected}


def test_slurm_pmi2_passes_the_descriptor(tmp_path: Path) -> None:
    part = discover(HostRoot(tmp_path), SLURM_PMI2)
    facts = {f.name: f.value for f in part.facts}
    assert (facts["launcher"], facts["pmi-fd"], facts["rank"], facts["size"]) == (Launcher.SLURM_PMI2, "5", "0", "2")
    assert [e.name for e in part.env] == _prefixed(SLURM_PMI2, "SLURM_", "PMI_")
    assert part.mounts == [] and part.checks == []  # a capture: no descriptors to check against


def test_pmi_fd_closed_or_close_on_exec_here(tmp_path: Path) -> None:
    """This test process's own descriptors, through the live root."""
    read, write = os.pipe()  # Python makes them close-on-exec
    os.close(write)
    try:
        warn = discover(HostRoot(), {**SLURM_PMI2, "PMI_FD": str(read)}).checks
    finally:
        os.close(read)
    assert [(c.name, c.status, c.message) for c in warn] == [
        ("pmi-fd", Status.WARN, f"PMI_FD={read} is open but close-on-exec")]
    closed = discover(HostRoot(), {**SLURM_PMI2, "PMI_FD": str(read)}).checks
    assert [(c.name, c.status) for c in closed] == [("pmi-fd", Status.FAIL)]
    bad = discover(HostRoot(), {**SLURM_PMI2, "PMI_FD": "sock"}).checks
    assert [(c.status, c.message) for c in bad] == [(Status.FAIL, "PMI_FD='sock' is not a descriptor number")]


@pytest.mark.parametrize(("env", "launcher"), [
    ({}, Launcher.NONE),
    ({"HOME": "/root"}, Launcher.NONE),
    (SLURM_PMIX, Launcher.SLURM_PMIX),
    (SLURM_PMI2, Launcher.SLURM_PMI2),
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_MPI_TYPE": "none"}, Launcher.SLURM),
    # Open MPI 5's prterun, as observed (reference §4); mpirun inside a Slurm allocation
    ({"OMPI_COMM_WORLD_SIZE": "2", "PRTE_LAUNCHED": "1", "PMIX_RANK": "0"}, Launcher.OPENMPI_PRRTE),
    ({**SLURM_PMIX, "OMPI_COMM_WORLD_SIZE": "2"}, Launcher.OPENMPI_ORTE),
    ({"PMI_RANK": "0", "PMI_PORT": "node1:4000"}, Launcher.HYDRA),
    ({"PMIX_NAMESPACE": "flux-123", "PMIX_RANK": "0"}, Launcher.PMIX),
])
def test_launcher_detection(env: dict[str, str], launcher: Launcher) -> None:
    assert detect_launcher(env) is launcher


def test_no_launcher_contributes_only_the_fact() -> None:
    part = discover(HostRoot(), {"HOME": "/root", "PATH": "/usr/bin"})
    assert [(f.name, f.value) for f in part.facts] == [("launcher", "none")]
    assert (part.mounts, part.env, part.checks, part.rejected) == ([], [], [], [])


def test_no_mpi_family_under_srun() -> None:
    assert launcher_mpi(HostRoot(), SLURM_PMIX) is None


def test_uri_versions() -> None:
    assert uri_versions(SLURM_PMIX) == ((2, 0), (2, 1), (3, 0), (4, 0), (4, 1))
    assert uri_versions({"PMIX_SERVER_URI51": "x", "PMIX_SERVER_URI": "y"}) == ((5, 1),)
