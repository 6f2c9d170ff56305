"""Where spawned processes run: ``spawn_report.py N`` (the parents, MPI_COMM_WORLD) spawns N
children of this script, and rank 0 prints one line, ``report {JSON}``: its own facts and
each child's (mount namespace, /etc/os-release, MPI library version, executable). A child
started on the host instead of in the parent's container differs in all of them."""

from __future__ import annotations

import json
import os
import sys

from mpi4py import MPI


def facts() -> dict[str, str]:
    with open("/etc/os-release") as f:
        os_release = f.read()
    return {"mnt": os.readlink("/proc/self/ns/mnt"), "os_release": os_release,
            "library": MPI.Get_library_version(), "exe": os.readlink("/proc/self/exe")}


def child() -> None:
    parent = MPI.Comm.Get_parent()
    parent.gather(facts(), root=0)
    parent.Disconnect()


def parent(count: int) -> None:
    world = MPI.COMM_WORLD
    children = world.Spawn(sys.executable, [os.path.abspath(__file__), "child"],
                           maxprocs=count, root=0)
    root = world.Get_rank() == 0
    reports = children.gather(None, root=MPI.ROOT if root else MPI.PROC_NULL)
    children.Disconnect()
    mine = world.gather(facts(), root=0)
    if root:
        print("report " + json.dumps({"parents": mine, "children": reports}), flush=True)


if __name__ == "__main__":
    child() if sys.argv[1:] == ["child"] else parent(int(sys.argv[1]))
