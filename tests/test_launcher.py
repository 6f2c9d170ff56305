"""``hpcrun [FLAGS] mpirun|mpiexec|srun ... IMAGE CMD``: the launcher line, then real jobs of
Open MPI's mpirun and MPICH's Hydra as the unprivileged user, one container per node."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import FUSE_SERVER, Unprivileged, user_processes
from hpcbind.errors import HpcbindError
from hpcbind.mpi import launcher
from leftovers import HostState, leftovers
from mpi_images import build_mpi_image

# --- the launcher line (pure) ---------------------------------------------------------------

LINES = {
    launcher.OPENMPI: (["mpirun", "-np", "4", "--mca", "btl", "self,vader", "-x", "FOO",
                        "--oversubscribe", "app.sif", "./solver", "-n", "3"],
                       ["-np", "4", "--mca", "btl", "self,vader", "-x", "FOO",
                        "--oversubscribe"]),
    launcher.MPICH: (["mpiexec.mpich", "-n", "2", "-genv", "A", "1", "-l", "app.sif", "./solver"],
                     ["-n", "2", "-genv", "A", "1", "-l"]),
    launcher.SLURM: (["srun", "-N", "3", "--ntasks=6", "--mpi", "pmix", "-O", "app.sif",
                      "./solver"],
                     ["-N", "3", "--ntasks=6", "--mpi", "pmix", "-O"]),
}


def test_every_family_has_a_golden_line():
    assert set(LINES) == set(launcher.LAUNCHER_FAMILIES.values())


@pytest.mark.parametrize("family", sorted(LINES))
def test_split_finds_the_image_after_the_launchers_options(family):
    argv, options = LINES[family]
    line = launcher.split(argv)
    assert (line.family, line.options, line.image) == (family, options, "app.sif")
    assert line.command == argv[argv.index("app.sif") + 1:]


def test_rewrite_makes_hpcrun_open_mpis_fork_agent():
    line = launcher.split(LINES[launcher.OPENMPI][0])
    env = {"HPCBIND_CONFIG": "/etc/x.toml", "APPTAINERENV_A": "1", "HOME": "/h"}
    rank = ["/opt/hpcrun", "exec", "--node-session", "KEY", "--nv", "app.sif"]
    argv, added = launcher.rewrite(line, "/opt/hpcrun", ["--nv"], "KEY", env, None)
    assert argv == [
        "mpirun", "-x", "APPTAINERENV_A", "-x", "HPCBIND_CONFIG", "-x", "HPCBIND_FORK_AGENT",
        "--mca", "orte_fork_agent", " ".join(rank), *LINES[launcher.OPENMPI][1],
        "/opt/hpcrun", "--hpcbind-fork-agent", "./solver", "-n", "3"]
    assert added == {"HPCBIND_FORK_AGENT": "1", "PRTE_MCA_prte_fork_agent": " ".join(rank)}
    # the starter is told how many words precede the program
    argv, added = launcher.rewrite(line, "/opt/hpcrun", ["--nv"], "KEY", env,
                                   "/opt/hpcrun-starter")
    assert added["PRTE_MCA_prte_fork_agent"] == " ".join(["/opt/hpcrun-starter", "KEY", "6",
                                                          *rank])
    assert argv[-5:] == ["/opt/hpcrun-starter", "--hpcbind-fork-agent", "./solver", "-n", "3"]


def test_rewrite_puts_hpcrun_in_front_of_the_command_elsewhere():
    env = {"HOME": "/h"}
    rank = ["/opt/hpcrun-starter", "K", "5", "/opt/hpcrun", "exec", "--node-session", "K",
            "app.sif", "./solver"]
    srun = launcher.split(LINES[launcher.SLURM][0])
    assert launcher.rewrite(srun, "/opt/hpcrun", [], "K", env, "/opt/hpcrun-starter") == (
        ["srun", *LINES[launcher.SLURM][1], *rank], {})
    hydra = launcher.split(LINES[launcher.MPICH][0])
    assert launcher.rewrite(hydra, "/opt/hpcrun", [], "K", env, "/opt/hpcrun-starter") == (
        ["mpiexec.mpich", *LINES[launcher.MPICH][1], *rank], {})


@pytest.mark.parametrize("argv, env, message", [
    (["mpirun", "--mca", "orte_fork_agent", "strace", "app.sif", "x"], {}, "orte_fork_agent"),
    (["mpirun", "app.sif", "x"], {"OMPI_MCA_orte_fork_agent": "strace"}, "orte_fork_agent"),
    (["mpirun", "--fork-agent=strace", "app.sif", "x"], {}, "--fork-agent"),
    (["mpirun", "my app.sif", "x"], {}, "split at spaces"),
])
def test_fork_agent_conflicts_are_refused(argv, env, message):
    with pytest.raises(HpcbindError, match=message):
        launcher.rewrite(launcher.split(argv), "/opt/hpcrun", [], "K", env, None)


def test_a_rank_drops_the_fork_agent_mark():
    from hpcbind.launch import started_as

    def program(argv):
        return started_as(argv, {})[0]

    assert program(("/opt/hpcrun-starter", "--hpcbind-fork-agent", "./solver", "-n")) == (
        "./solver", "-n")
    assert program(("/opt/hpcrun", "--hpcbind-fork-agent", "python3")) == ("python3",)
    assert program(("/bin/sh", "--hpcbind-fork-agent", "/opt/conda/bin/python")) == (
        "/opt/conda/bin/python",)
    # a process MPI_Comm_spawn started has no mark; a program's own options are its own
    assert program(("python3", "child.py")) == ("python3", "child.py")
    assert program(("./solver", "--hpcbind-fork-agent", "x")) == (
        "./solver", "--hpcbind-fork-agent", "x")


def test_a_rank_sees_open_mpis_names_of_its_program():
    """Open MPI names the program it started in OMPI_COMMAND and OMPI_ARGV: the rank sees
    what a bare run shows ("solver", "-n 3"), not hpcrun-starter and the mark."""
    from hpcbind.launch import started_as

    env = {"OMPI_COMMAND": "hpcrun-starter", "OMPI_ARGV": "--hpcbind-fork-agent ./solver -n 3"}
    assert started_as(("/opt/hpcrun-starter", "--hpcbind-fork-agent", "./solver", "-n", "3"),
                      env)[1] == {"OMPI_COMMAND": "solver", "OMPI_ARGV": "-n 3"}
    assert started_as(("/opt/hpcrun-starter", "--hpcbind-fork-agent", "/bin/true"),
                      env)[1] == {"OMPI_COMMAND": "true"}
    assert started_as(("python3", "x.py"), env)[1] == env


@pytest.mark.parametrize("argv, message", [
    (["mpirun", "-np", "4"], "no image"),
    (["mpirun", "-np", "4", "app.sif"], "no command after the image"),
    (["notalauncher", "app.sif", "x"], "is not a launcher"),
])
def test_bad_launcher_lines(argv, message):
    with pytest.raises(HpcbindError, match=message):
        launcher.split(argv)


# --- real jobs as the unprivileged user ------------------------------------------------------

@pytest.fixture(scope="module")
def mpi_images(unprivileged: Unprivileged):
    return {family: build_mpi_image(family, unprivileged.root)
            for family in ("openmpi", "mpich")}


OPENMPI = ["mpirun.openmpi", "--oversubscribe"]


def test_open_mpi_job_in_containers(unprivileged: Unprivileged, mpi_images):
    r = unprivileged.run(*OPENMPI, "-np", "4", str(mpi_images["openmpi"]),
                         "/usr/local/bin/mpi-check", timeout=120)
    assert (r.returncode, r.stdout) == (0, "OK size=4 sum=6 node_ranks=4\n"), r.stderr


def test_mpich_hydra_job_in_containers(unprivileged: Unprivileged, mpi_images):
    r = unprivileged.run("mpiexec.mpich", "-n", "4", str(mpi_images["mpich"]),
                         "/usr/local/bin/mpi-check", timeout=120)
    assert (r.returncode, r.stdout) == (0, "OK size=4 sum=6 node_ranks=4\n"), r.stderr


def test_ranks_of_a_node_share_one_container(unprivileged: Unprivileged):
    r = unprivileged.run(*OPENMPI, "-np", "3", str(unprivileged.busybox_sif), "sh", "-c",
                         "readlink /proc/self/ns/mnt; readlink /proc/self/ns/user", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and len(set(lines)) == 2  # 3 ranks, one mnt and one user ns
    host_mnt = subprocess.run(["readlink", "/proc/self/ns/mnt"], capture_output=True,
                              text=True).stdout.strip()
    assert host_mnt not in lines


def test_settings_reach_every_rank(unprivileged: Unprivileged):
    r = unprivileged.run("--env", "FROM_HPCRUN=yes", *OPENMPI, "-np", "2",
                         str(unprivileged.busybox_sif), "sh", "-c", "echo $FROM_HPCRUN",
                         timeout=120)
    assert (r.returncode, r.stdout) == (0, "yes\nyes\n"), r.stderr


def test_rank_exit_code_propagates(unprivileged: Unprivileged):
    r = unprivileged.run(*OPENMPI, "-np", "2", str(unprivileged.busybox_sif), "sh", "-c",
                         "exit 3", timeout=120)
    assert r.returncode == 3


def test_cleanup_after_kill_9_of_a_rank(unprivileged: Unprivileged):
    before = HostState.now(unprivileged.uid)
    job = unprivileged.popen(*OPENMPI, "-np", "3", str(unprivileged.busybox_sif), "sleep", "120",
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(user_processes(unprivileged.uid, "sleep")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    ranks = user_processes(unprivileged.uid, "sleep")
    assert len(ranks) == 3 and user_processes(unprivileged.uid, FUSE_SERVER)
    subprocess.run(["kill", "-9", str(ranks[0])], check=True)
    job.wait(timeout=60)
    assert job.returncode != 0
    assert leftovers(unprivileged.uid, before, timeout=20) == {}


@pytest.mark.parametrize("args, env, message", [
    (["srun", "-n", "2", "{sif}", "true"], {"PATH": "/nonexistent"},
     "launcher srun not found on PATH"),
    (["mpirun.openmpi", "-np", "2", "{missing}", "true"], {}, "not found"),
    # --host takes the image as its value: "true" is then the image, with no command
    (["mpirun.openmpi", "-np", "2", "--host", "{sif}", "true"], {},
     "no command after the image true"),
])
def test_launcher_errors_before_any_rank(unprivileged: Unprivileged, args, env, message):
    """Refused in one line; nothing is left, the holder that hpcrun mpirun started for this
    node before its checks (Open MPI) included."""
    subs = {"{sif}": str(unprivileged.busybox_sif), "{missing}": "/nonexistent/app.sif"}
    argv = [subs.get(a, a) for a in args]
    before = HostState.now(unprivileged.uid)
    r = unprivileged.run(*argv, env=env, timeout=60)
    assert r.returncode == 255 and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert leftovers(unprivileged.uid, before) == {}


# The live processes a rank sees named "hpcrun" (the node's holder: the front end's fork
# keeps its name; ranks run hpcrun-starter, then their program), each with its parent's
# name (exited ones may wait a while here for init to reap them)
HOLDERS = """
for stat in /proc/[0-9]*/stat; do
  read -r pid comm state ppid rest < "$stat" 2>/dev/null || continue
  if [ "$comm" = "(hpcrun)" ] && [ "$state" != Z ]; then cat "/proc/$ppid/comm"; fi
done
"""


def test_mpirun_starts_the_holder_of_its_node(unprivileged: Unprivileged):
    """Under Open MPI the node's holder is started by hpcrun mpirun before it becomes
    mpirun (its child, then), not by the first rank: its imports overlap mpirun's start-up
    (benchmarks/launch/README.md). A job mpirun cannot start leaves nothing behind."""
    r = unprivileged.run(*OPENMPI, "-np", "2", str(unprivileged.busybox_sif), "sh", "-c",
                         HOLDERS, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["mpirun.openmpi"] * 2
    before = HostState.now(unprivileged.uid)
    r = unprivileged.run(*OPENMPI, "--no-such-option", "-np", "2",
                         str(unprivileged.busybox_sif), "true", timeout=120)
    assert r.returncode != 0
    assert leftovers(unprivileged.uid, before) == {}


def test_mpi_family_mismatch_is_refused(unprivileged: Unprivileged, mpi_images):
    r = unprivileged.run(*OPENMPI, "-np", "2", str(mpi_images["mpich"]),
                         "/usr/local/bin/mpi-check", timeout=120)
    assert r.returncode == 255
    assert "the image's MPI is MPICH" in r.stderr and "mpiexec.mpich" in r.stderr


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /scratch rw,relatime shared:9 - lustre 10.0.0.1@o2ib:/fs rw
31 22 0:41 / /home rw,relatime shared:10 - nfs4 srv:/home rw
32 22 0:42 / /tmp rw,nosuid shared:11 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize("path, fstype", [("/scratch/u/app.sif", "lustre"),
                                          ("/home/u/app.sif", "nfs4"), ("/tmp/app.sif", "tmpfs"),
                                          ("/opt/app.sif", "ext4"), ("/scratchy/app.sif", "ext4")])
def test_filesystem_of_a_path(path, fstype):
    assert launcher.filesystem_type(path, MOUNTINFO) == fstype


def test_hosts_named_by_each_family(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# nodes\nn1 slots=4\nn2:8\n\n")
    files = {str(hostfile): hostfile.read_text()}.get
    cases = {
        ("mpirun", "-H", "a:2,b", "--hostfile", str(hostfile)): ["a", "b", "n1", "n2"],
        ("mpiexec.mpich", "-hosts", "c,d", "-f", str(hostfile)): ["c", "d", "n1", "n2"],
        ("srun", "-N", "2", "--nodelist=e,f"): ["e", "f"],
    }
    for argv, hosts in cases.items():
        line = launcher.split([*argv, "app.sif", "x"])
        assert launcher.named_hosts(line, files) == hosts


def test_image_visibility_rule():
    assert launcher.image_visibility("/tmp/a.sif", "tmpfs", []) is None
    assert launcher.image_visibility("/scratch/a.sif", "lustre", ["n2"]) is None
    problem, fix = launcher.image_visibility("/tmp/a.sif", "ext4", ["n2", "n3"])
    assert problem == ("the image /tmp/a.sif is on a node-local filesystem (ext4) but the job "
                       "runs on n2, n3")


def test_node_local_image_with_remote_hosts_is_refused(unprivileged: Unprivileged):
    r = unprivileged.run(*OPENMPI, "-H", "localhost,192.0.2.7", "-np", "2",
                         str(unprivileged.busybox_sif), "true", timeout=60)
    assert r.returncode == 255 and r.stderr.count("\n") == 1
    assert "node-local filesystem" in r.stderr and "192.0.2.7" in r.stderr
