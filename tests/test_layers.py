"""The import graph, drawn from the code: data flows one way (discovery -> plan -> seam ->
runtime), no module imports a higher layer, no two packages import each other."""

from __future__ import annotations

import ast
from collections import defaultdict
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcbind"

# Lowest first. A unit may import its own layer and those below.
LAYERS = {
    "hpcbind": 0, "errors": 0, "hostroot": 0, "plan": 0, "config": 0,  # the vocabulary
    "host": 1,  # facts of a Linux root: ELF, loader, sysfs
    "image": 2, "gpu": 2, "fabric": 2, "mpi": 2, "cdi": 2, "runtime": 2,  # formats, providers
    "checks": 3, "discover": 3, "capture": 3,  # the plan composed
    "assemble": 4,  # the seam: plan + options -> container spec
    "launch": 5, "specview": 5, "planview": 5, "validate": 5,  # recipes and views
    "commands": 6, "cli": 6,  # parsing only
}
DISCOVERY = {"gpu", "fabric", "mpi", "cdi", "checks", "discover", "capture"}


def unit(module: str) -> str:
    """"hpcbind.gpu.nvidia" -> "gpu"; "hpcbind.plan" -> "plan"; "hpcbind" -> "hpcbind"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports() -> dict[str, set[str]]:
    """module -> the hpcbind modules it imports anywhere (functions and TYPE_CHECKING too)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    (node.module or "").startswith("hpcbind"):
                graph[module] |= {_target(node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name.startswith("hpcbind")}
    return graph


def _target(module: str, name: str) -> str:
    """``from hpcbind import launch`` imports the module hpcbind.launch; ``from hpcbind
    import __version__`` the package."""
    below = PACKAGE.parent.joinpath(*module.split("."), name)
    return f"{module}.{name}" if below.is_dir() or below.with_suffix(".py").exists() else module


def unit_edges() -> set[tuple[str, str]]:
    return {(unit(a), unit(b)) for a, targets in imports().items() for b in targets
            if unit(a) != unit(b)}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in imports()} | {unit(b) for bs in imports().values() for b in bs}
    assert units - set(LAYERS) == set()


def test_no_import_reaches_a_higher_layer():
    upward = sorted((a, b) for a, b in unit_edges() if LAYERS[b] > LAYERS[a])
    assert upward == []


def test_discovery_and_runtime_never_meet():
    """The runtime knows nothing of GPUs, MPI or the plan; discovery never mounts."""
    assert sorted((a, b) for a, b in unit_edges()
                  if (a == "runtime" and (b in DISCOVERY or b == "plan"))
                  or (a in DISCOVERY and b == "runtime")) == []


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in unit_edges():
        graph[a].add(b)
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {err.args[1]}") from None


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rules above fail when the code breaks them (a runtime module importing a GPU
    provider, as a shortcut might)."""
    copy = tmp_path / "hpcbind"
    import shutil

    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    linux = copy / "runtime" / "linux.py"
    linux.write_text(linux.read_text() + "\nfrom hpcbind.gpu.nvidia import discover\n")
    monkeypatch.setitem(globals(), "PACKAGE", copy)
    assert ("runtime", "gpu") in unit_edges()
