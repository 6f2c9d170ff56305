"""``hpcrun validate``: does a container of IMAGE get what the host has?

The checks run *inside* the container, through ``hpcrun exec`` with the flags given (--nv,
--rocm, --ib), and their answers are compared with what discovery reads on the host:

- probe: the image's python3 runs (every in-container check below is one small script passed
  with ``python3 -c``, which needs nothing else of the image);
- gpu.nvidia.visible: the GPUs NVML (``pynvml``, when the image has it) or ``nvidia-smi -L``
  lists, by UUID, are those the host's driver serves, after CUDA_VISIBLE_DEVICES /
  NVIDIA_VISIBLE_DEVICES selection;
- gpu.cuda.init: ``cuInit`` and ``cuDeviceGetCount`` of ``libcuda.so.1`` through ctypes;
- gpu.rocm.devices: ``/dev/kfd`` and the render nodes of the selected AMD GPUs;
- fabric.rdma.ports: every selected RDMA port's state in the container's sysfs is the host's,
  and the ``uverbs`` nodes are there;
- fabric.verbs.provider: ``ibv_devices`` (or ``ibv_get_device_list`` through ctypes) lists the
  selected devices, so their rdma-core provider loads;
- mpi.init: ``hpcrun LAUNCHER -np 2 IMAGE ...`` initialises MPI on two ranks, which agree on
  an allreduce, and reports the library's version (mpi4py when the image has it; otherwise a
  C probe built with the host's mpicc of the image's MPI family, bound in).

A check whose hardware the host lacks, or that was not asked for, is a skip that says which;
never a pass. Every failure says how to go on. ``validate`` returns the results; nothing here
prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hpcbind.errors import HpcbindError
from hpcbind.fabric import verbs
from hpcbind.gpu import nvidia, rocm
from hpcbind.hostroot import HostRoot
from hpcbind.image import contents
from hpcbind.image.source import locate
from hpcbind.mpi.launcher import LAUNCHER_FAMILIES, OPENMPI, family_of

MPI_RANKS = 2
DEFAULT_LAUNCHER = "mpirun.openmpi"
PROBE_TIMEOUT_S = 120
MPI_TIMEOUT_S = 180
EXIT_NOT_FOUND = 127  # what hpcrun exec returns when the command is not in the image
MPI_MARKER = "hpcbind-validate-mpi"
MPICC = {"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}  # Debian's names; "mpicc" else
PLAN_FIX = "see what is bound and why with 'hpcrun plan {flags} --explain IMAGE'"


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Result:
    name: str  # "mpi.init"
    outcome: Outcome
    message: str
    fix: str = ""  # for a failure: how to go on


@dataclass(frozen=True, slots=True)
class Request:
    image: str
    nv: bool = False
    rocm: bool = False
    ib: bool = False
    launcher: str = DEFAULT_LAUNCHER

    @property
    def flags(self) -> list[str]:
        """The hpcrun flags every container of the validation gets."""
        return [flag for flag, on in (("--nv", self.nv), ("--rocm", self.rocm), ("--ib", self.ib)) if on]


# --- the host's side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NvidiaHost:
    uuids: tuple[str, ...]  # of the GPUs a container gets (selection applied)
    mig: bool  # a selected GPU has MIG instances: CUDA counts those, not GPUs


@dataclass(frozen=True, slots=True)
class RocmHost:
    render: tuple[str, ...]  # /dev/dri/renderD* of the selected GPUs


@dataclass(frozen=True, slots=True)
class RdmaHost:
    devices: tuple[str, ...]  # selected devices
    ports: Mapping[str, str]  # "mlx5_0/1" -> "ACTIVE", for the selected devices
    uverbs: tuple[str, ...]  # their /dev/infiniband/uverbsN


@dataclass(frozen=True, slots=True)
class HostView:
    """What a container given the flags should see; None where the host has no such device."""

    nvidia: NvidiaHost | None
    rocm: RocmHost | None
    rdma: RdmaHost | None


def host_view(host: HostRoot, env: Mapping[str, str]) -> HostView:
    nv_gpus = nvidia.read_gpus(host)
    nv_chosen = nvidia.select(nv_gpus, env)
    nv_gpus_in = nv_chosen.gpus if nv_chosen.mode == "gpus" else ()
    amd = rocm.read_gpus(host)
    rdma = verbs.read_devices(host)
    rdma_chosen = set(verbs.select(rdma, env).devices)
    picked = [d for d in rdma if d.name in rdma_chosen]
    return HostView(
        nvidia=NvidiaHost(tuple(g.uuid for g in nv_gpus_in), any(g.mig for g in nv_gpus_in))
        if nv_gpus else None,
        rocm=RocmHost(tuple(sorted(g.render.path for g in rocm.select(amd, env).gpus if g.render)))
        if amd else None,
        rdma=RdmaHost(tuple(d.name for d in picked),
                      {f"{d.name}/{p.number}": p.state for d in picked for p in d.ports},
                      tuple(n.path for d in picked for n in d.uverbs))
        if rdma else None,
    )


# --- inside the container ----------------------------------------------------------------------

# Runs with the image's python3 (any 3.x from 3.6): the standard library only. Prints one JSON
# object: python and mpi4py versions, then one entry per section named on the command line.
PROBE = r'''
import ctypes, glob, importlib.util, json, os, re, shutil, subprocess, sys

def run(argv):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    return done.returncode, done.stdout.strip()

def nvidia():
    try:
        import pynvml
    except ImportError:
        smi = shutil.which("nvidia-smi")
        if not smi:
            return {"error": "neither pynvml nor nvidia-smi is in the container"}
        code, out = run([smi, "-L"])
        if code:
            return {"error": "nvidia-smi -L: " + out}
        return {"source": "nvidia-smi -L",
                "uuids": re.findall(r"^GPU \d+: .*\(UUID: (GPU-[0-9a-fA-F-]+)\)", out, re.M)}
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
    except pynvml.NVMLError as err:
        return {"error": "NVML: %s" % err}
    return {"source": "pynvml", "uuids": [u.decode() if isinstance(u, bytes) else u for u in uuids]}

def cuda():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return {"error": str(err)}
    code = lib.cuInit(0)
    if code:
        name = ctypes.c_char_p()
        lib.cuGetErrorName(code, ctypes.byref(name))
        return {"error": "cuInit(0) returned %d (%s)" % (code, (name.value or b"?").decode())}
    count = ctypes.c_int()
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    return {"error": "cuDeviceGetCount returned %d" % code} if code else {"count": count.value}

def rocm():
    return {"kfd": os.path.exists("/dev/kfd"), "render": sorted(glob.glob("/dev/dri/renderD*"))}

def state(path):
    try:
        with open(path) as f:
            return f.read().split(":")[-1].strip()
    except OSError:
        return ""

def rdma():
    ports = {}
    for path in glob.glob("/sys/class/infiniband/*/ports/*/state"):
        parts = path.split("/")
        ports[parts[4] + "/" + parts[6]] = state(path)
    return {"ports": ports, "uverbs": sorted(glob.glob("/dev/infiniband/uverbs*"))}

def verbs():
    tool = shutil.which("ibv_devices")
    if tool:
        code, out = run([tool])
        if code:
            return {"error": "ibv_devices: " + out}
        return {"source": "ibv_devices",
                "devices": [l.split()[0] for l in out.splitlines()[2:] if l.strip()]}
    try:
        lib = ctypes.CDLL("libibverbs.so.1", use_errno=True)
    except OSError as err:
        return {"error": str(err)}
    lib.ibv_get_device_list.restype = ctypes.POINTER(ctypes.c_void_p)
    lib.ibv_get_device_name.restype = ctypes.c_char_p
    lib.ibv_get_device_name.argtypes = [ctypes.c_void_p]
    count = ctypes.c_int()
    devices = lib.ibv_get_device_list(ctypes.byref(count))
    if not devices:
        return {"error": "ibv_get_device_list: " + os.strerror(ctypes.get_errno())}
    names = [lib.ibv_get_device_name(devices[i]).decode() for i in range(count.value)]
    lib.ibv_free_device_list(devices)
    return {"source": "ibv_get_device_list", "devices": names}

out = {"python": sys.version.split()[0]}
if importlib.util.find_spec("mpi4py"):
    import mpi4py  # not mpi4py.MPI: that would initialise MPI outside a launcher
    out["mpi4py"] = mpi4py.__version__
for section in sys.argv[1:]:
    out[section] = globals()[section]()
print(json.dumps(out))
'''

MPI_PY = f'''
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank())
if comm.Get_rank() == 0:
    print("{MPI_MARKER} size=%d sum=%d" % (comm.Get_size(), total))
    print(MPI.Get_library_version().replace("\\0", "").strip(), flush=True)
'''

MPI_C = f'''
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {{
    int rank, size, sum, length;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Get_library_version(version, &length);
    if (rank == 0) printf("{MPI_MARKER} size=%d sum=%d\\n%s\\n", size, sum, version);
    MPI_Finalize();
    return 0;
}}
'''


@dataclass(frozen=True, slots=True)
class Probe:
    """The in-container probe's answer (``data``), or why there is none (``error``)."""

    data: Mapping[str, object] | None
    error: str = ""
    code: int = 0


@dataclass(frozen=True, slots=True)
class MpiRun:
    size: int = 0
    total: int = 0
    library: str = ""  # MPI_Get_library_version, first line
    via: str = ""  # "mpi4py 3.1.4" or "a C probe built with mpicc.openmpi"
    error: str = ""


def probe_sections(request: Request, host: HostView) -> list[str]:
    """The probe sections worth running: asked for, and the host has the hardware."""
    wanted = (("nvidia", request.nv and host.nvidia), ("cuda", request.nv and host.nvidia),
              ("rocm", request.rocm and host.rocm), ("rdma", request.ib and host.rdma),
              ("verbs", request.ib and host.rdma))
    return [name for name, on in wanted if on]


def run_probe(hpcrun: str, request: Request, sections: list[str]) -> Probe:
    argv = [hpcrun, "exec", *request.flags, request.image, "python3", "-c", PROBE, *sections]
    code, out, err = _run(argv, PROBE_TIMEOUT_S)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if code == 0 and lines:
        return Probe(json.loads(lines[-1]))
    return Probe(None, _gist(err or out) or f"exit status {code}", code)


def run_mpi(hpcrun: str, request: Request, probe: Probe, image_family: str) -> MpiRun:
    """Two ranks under the launcher: with mpi4py if the image has it, else the C probe.

    The C probe is built on the host against the MPI family of the image and runs on the
    image's library (the ABI the family keeps); it needs the image's glibc to be as new as
    the host's (GLIBC_2.34 on Debian 12), or the loader says which version is missing."""
    if probe.data and "mpi4py" in probe.data:
        return _launch(hpcrun, request, [], ["python3", "-c", MPI_PY], f"mpi4py {probe.data['mpi4py']}")
    compiler = MPICC.get(image_family, "mpicc")
    if shutil.which(compiler) is None:
        return MpiRun(error=f"the image has no mpi4py, and this host has no {compiler} to build "
                            "the C probe")
    with tempfile.TemporaryDirectory(prefix="hpcbind-validate-") as work:
        source, binary = Path(work, "mpi_probe.c"), Path(work, "mpi-probe")
        source.write_text(MPI_C)
        code, out, err = _run([compiler, "-O", "-o", str(binary), str(source)], MPI_TIMEOUT_S)
        if code != 0:
            return MpiRun(error=f"{compiler} could not build the C probe: {_gist(err or out)}")
        return _launch(hpcrun, request, ["--bind", work], [str(binary)],
                       f"a C probe built with {compiler}")


def _launch(hpcrun: str, request: Request, binds: list[str], program: list[str], via: str) -> MpiRun:
    argv = [hpcrun, *request.flags, *binds, request.launcher, *launcher_args(request.launcher),
            request.image, *program]
    code, out, err = _run(argv, MPI_TIMEOUT_S)
    found = re.search(rf"^{MPI_MARKER} size=(\d+) sum=(-?\d+)\n(.*)$", out, re.M)
    if code != 0 or not found:
        return MpiRun(via=via, error=_gist(err or out) or f"exit status {code}")
    return MpiRun(int(found.group(1)), int(found.group(2)), " ".join(found.group(3).split()), via)


def launcher_args(launcher: str) -> list[str]:
    """-np 2, and what Open MPI needs to start them here: as root it refuses without being
    told, and on a one-core machine two ranks oversubscribe."""
    args = ["-np", str(MPI_RANKS)]
    if family_of(launcher) == OPENMPI:
        args += ["--allow-run-as-root"] if os.getuid() == 0 else []
        args += ["--oversubscribe"] if (os.cpu_count() or 1) < MPI_RANKS else []
    return args


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); on a timeout the whole process group is killed, the
    launcher's ranks with it."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return -signal.SIGKILL, "", f"no answer within {timeout:g} s"
    return proc.returncode, out, err


# An MPI failure prints a page (Open MPI's help blocks, one "[host:pid] ***" line per rank);
# the report has one line for it: hpcrun's own error if any, else the loader's, else the last
# line that says what failed (a Python traceback ends with its exception), else the last line.
_DECORATION = re.compile(r"^(\[[\w.-]+:\d+\]\s*)?(\*\*\*\s*)?")
_PREFERRED = (re.compile(r"^hpcrun: error:"), re.compile(r"error while loading shared libraries"),
              re.compile(r"error|fail|not found|cannot|can't|denied|refused|timed out", re.I))


def _gist(text: str) -> str:
    lines = [_DECORATION.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and set(line) != {"-"}]
    for pattern in _PREFERRED:
        found = next((line for line in reversed(lines) if pattern.search(line)), None)
        if found:
            return found
    return lines[-1] if lines else ""


# --- judging (pure) ----------------------------------------------------------------------------


def probe_result(probe: Probe) -> Result:
    if probe.data is not None:
        mpi4py = f", mpi4py {probe.data['mpi4py']}" if "mpi4py" in probe.data else ", no mpi4py"
        return Result("probe", Outcome.PASS, f"python3 {probe.data['python']} runs in the container{mpi4py}")
    if probe.code == EXIT_NOT_FOUND:
        return Result("probe", Outcome.FAIL, f"the image has no python3 to run the checks: {probe.error}",
                      "install python3 in the image (the in-container checks are python3 -c scripts)")
    return Result("probe", Outcome.FAIL, f"the container did not run the probe: {probe.error}",
                  "the checks are python3 -c scripts, so the image needs python3; if it has it, "
                  "see why the container does not start with 'hpcrun -v exec [FLAGS] IMAGE python3 -V'")


def _gate(name: str, asked: bool, present: object, flag: str, what: str, where: str) -> Result | None:
    """The skip for a check whose hardware is absent or that was not asked for; else None."""
    if not present:
        return Result(name, Outcome.SKIP, f"this host has no {what} ({where} lists none)")
    if not asked:
        return Result(name, Outcome.SKIP, f"not requested: give {flag} to check this host's {what}s")
    return None


def _section(name: str, probe: Probe, section: str) -> dict | Result:
    """The probe's answer for ``section``, or the failure saying there is none."""
    if probe.data is None:
        return Result(name, Outcome.FAIL, "no answer from inside the container (see 'probe')",
                      "fix the probe's failure first")
    return probe.data.get(section, {})


def nvidia_visible(request: Request, host: HostView, probe: Probe) -> Result:
    name = "gpu.nvidia.visible"
    gate = _gate(name, request.nv, host.nvidia, "--nv", "NVIDIA GPU", "/proc/driver/nvidia/gpus")
    seen = gate or _section(name, probe, "nvidia")
    if isinstance(seen, Result):
        return seen
    fix = ("check CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES; " + PLAN_FIX.format(flags="--nv"))
    if "error" in seen:
        return Result(name, Outcome.FAIL, f"the container cannot list its GPUs: {seen['error']}", fix)
    expected, uuids = sorted(host.nvidia.uuids), sorted(seen["uuids"])
    if uuids != expected:
        return Result(name, Outcome.FAIL, f"the container sees {len(uuids)} GPUs {uuids} "
                      f"({seen['source']}); the host gives it {len(expected)} {expected}", fix)
    return Result(name, Outcome.PASS, f"{len(uuids)} GPUs, the host's UUIDs ({seen['source']})")


def cuda_init(request: Request, host: HostView, probe: Probe) -> Result:
    name = "gpu.cuda.init"
    gate = _gate(name, request.nv, host.nvidia, "--nv", "NVIDIA GPU", "/proc/driver/nvidia/gpus")
    seen = gate or _section(name, probe, "cuda")
    if isinstance(seen, Result):
        return seen
    if "error" in seen:
        return Result(name, Outcome.FAIL, f"CUDA driver API: {seen['error']}",
                      "the image's CUDA must not exceed the host driver's; " + PLAN_FIX.format(flags="--nv"))
    expected = len(host.nvidia.uuids)
    if seen["count"] < 1 or (not host.nvidia.mig and seen["count"] != expected):
        return Result(name, Outcome.FAIL, f"cuDeviceGetCount = {seen['count']}, the host gives "
                      f"the container {expected} GPUs", PLAN_FIX.format(flags="--nv"))
    return Result(name, Outcome.PASS, f"cuInit(0) succeeded, cuDeviceGetCount = {seen['count']}")


def rocm_devices(request: Request, host: HostView, probe: Probe) -> Result:
    name = "gpu.rocm.devices"
    gate = _gate(name, request.rocm, host.rocm, "--rocm", "AMD GPU", "/sys/class/kfd/kfd/topology/nodes")
    seen = gate or _section(name, probe, "rocm")
    if isinstance(seen, Result):
        return seen
    fix = "check ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES; " + PLAN_FIX.format(flags="--rocm")
    missing = sorted(set(host.rocm.render) - set(seen["render"]))
    if not seen["kfd"] or missing:
        lacks = ["/dev/kfd"] * (not seen["kfd"]) + missing
        return Result(name, Outcome.FAIL, f"the container lacks {', '.join(lacks)}", fix)
    return Result(name, Outcome.PASS, f"/dev/kfd and {len(host.rocm.render)} render nodes "
                  f"({', '.join(host.rocm.render) or 'none selected'})")


def rdma_ports(request: Request, host: HostView, probe: Probe) -> Result:
    name = "fabric.rdma.ports"
    gate = _gate(name, request.ib, host.rdma, "--ib", "RDMA device", "/sys/class/infiniband")
    seen = gate or _section(name, probe, "rdma")
    if isinstance(seen, Result):
        return seen
    differ = [f"{port} {state} on the host, {seen['ports'].get(port) or 'absent'} inside"
              for port, state in sorted(host.rdma.ports.items()) if seen["ports"].get(port) != state]
    missing = sorted(set(host.rdma.uverbs) - set(seen["uverbs"]))
    if differ or missing:
        problems = differ + [f"{path} missing inside" for path in missing]
        return Result(name, Outcome.FAIL, "; ".join(problems),
                      "check HPCBIND_HCA / UCX_NET_DEVICES; " + PLAN_FIX.format(flags="--ib"))
    ports = ", ".join(f"{p} {s}" for p, s in sorted(host.rdma.ports.items()))
    return Result(name, Outcome.PASS, f"ports as on the host ({ports}); "
                  f"{', '.join(host.rdma.uverbs)} present")


def verbs_provider(request: Request, host: HostView, probe: Probe) -> Result:
    name = "fabric.verbs.provider"
    gate = _gate(name, request.ib, host.rdma, "--ib", "RDMA device", "/sys/class/infiniband")
    seen = gate or _section(name, probe, "verbs")
    if isinstance(seen, Result):
        return seen
    fix = ("the image needs libibverbs (rdma-core), and a provider for the HCA that --ib binds "
           "from the host; " + PLAN_FIX.format(flags="--ib"))
    if "error" in seen:
        return Result(name, Outcome.FAIL, f"verbs: {seen['error']}", fix)
    missing = sorted(set(host.rdma.devices) - set(seen["devices"]))
    if missing:
        return Result(name, Outcome.FAIL, f"{seen['source']} lists {seen['devices']}, not "
                      f"{missing}: their provider did not load", fix)
    return Result(name, Outcome.PASS, f"{seen['source']} lists {', '.join(seen['devices'])}")


def mpi_init(request: Request, image_mpi: tuple[str, ...], run: MpiRun | None) -> Result:
    """``image_mpi``: the MPI libraries the image ships, described; ``run``: None when none."""
    name = "mpi.init"
    if run is None:
        return Result(name, Outcome.SKIP, "the image has no MPI library (no libmpi.so or "
                      "libmpich.so in its loader's paths): nothing to launch")
    line = f"{request.launcher} {' '.join(launcher_args(request.launcher))}"
    if run.error:
        return Result(name, Outcome.FAIL, f"{line} ({run.via or 'no program'}): {run.error}",
                      f"run 'hpcrun -v {' '.join(request.flags + [line])} IMAGE ...' by hand; "
                      "'hpcrun plan --explain IMAGE' shows the MPI checks")
    expected = MPI_RANKS * (MPI_RANKS - 1) // 2
    if (run.size, run.total) != (MPI_RANKS, expected):
        return Result(name, Outcome.FAIL, f"{line}: {run.size} ranks summed to {run.total}, not "
                      f"{MPI_RANKS} ranks to {expected}",
                      "the ranks did not form one job: check the launcher's PMIx/PMI")
    return Result(name, Outcome.PASS, f"{MPI_RANKS} ranks under {line} ({run.via}): "
                  f"{run.library} (the image ships {', '.join(image_mpi)})")


# --- the whole --------------------------------------------------------------------------------


def validate(request: Request, hpcrun: str) -> list[Result]:
    """Every check, in report order: the container's view (through ``hpcrun``) against this
    host's, with the selection variables of this process's environment."""
    if family_of(request.launcher) is None:
        raise HpcbindError(f"{request.launcher!r} is not a launcher hpcrun knows",
                           f"give --launcher one of {', '.join(sorted(LAUNCHER_FAMILIES))}")
    image = locate(request.image)
    facts = contents.located_image_facts(image)
    seen = host_view(HostRoot(), os.environ)
    probe = run_probe(hpcrun, request, probe_sections(request, seen))
    mpi = run_mpi(hpcrun, request, probe, facts.mpi[0].family.value) if facts.mpi else None
    return [probe_result(probe),
            *(check(request, seen, probe) for check in (nvidia_visible, cuda_init, rocm_devices,
                                                         rdma_ports, verbs_provider)),
            mpi_init(request, tuple(lib.describe() for lib in facts.mpi), mpi)]


def render(results: list[Result]) -> str:
    """One line per check (with the fix of a failure), then the counts."""
    width = max(len(r.name) for r in results)
    lines = [f"{r.outcome.value.upper():4}  {r.name:<{width}}  {r.message}"
             + (f"; fix: {r.fix}" if r.outcome is Outcome.FAIL and r.fix else "") for r in results]
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    lines.append(f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
                 f"{counts[Outcome.SKIP]} skipped")
    return "\n".join(lines)


def failed(results: list[Result]) -> bool:
    return any(r.outcome is Outcome.FAIL for r in results)
