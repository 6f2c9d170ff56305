"""mpi4py.futures as Python HPC codes use it: ``MPIPoolExecutor`` spawns its workers with
MPI_Comm_spawn. Maps a function over 8 items with 2 workers; prints the results and the
mount namespaces the items were computed in, and the parent's."""

from __future__ import annotations

import json
import os

from mpi4py.futures import MPIPoolExecutor


def square_where(item: int) -> tuple[int, str, int]:
    return item * item, os.readlink("/proc/self/ns/mnt"), os.getpid()


if __name__ == "__main__":
    with MPIPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(square_where, range(8)))
    print("pool " + json.dumps({
        "values": [value for value, _, _ in results],
        "namespaces": sorted({namespace for _, namespace, _ in results}),
        "workers": len({pid for _, _, pid in results} - {os.getpid()}),
        "parent": os.readlink("/proc/self/ns/mnt")}), flush=True)
