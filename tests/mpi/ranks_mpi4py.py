"""Run INSIDE the example image, on every rank, by tests/test_mpi4py_example.py:

    hpcrun mpirun -np 3 example.sif python3 -m pytest -p pytest_mpi --with-mpi ranks_mpi4py.py

Point-to-point, collectives and a shared-memory transfer, each checked by value, with the
image's own Python, mpi4py and Open MPI talking to the host's launcher.
"""

import pytest
from mpi4py import MPI

N = 1 << 16


@pytest.mark.mpi(min_size=2)
def test_point_to_point_ring():
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    out = bytearray((rank * 7 + i) % 251 for i in range(N))
    got = bytearray(N)
    comm.Sendrecv(out, dest=(rank + 1) % size, recvbuf=got, source=(rank - 1) % size)
    prev = (rank - 1) % size
    assert got == bytearray((prev * 7 + i) % 251 for i in range(N))


@pytest.mark.mpi(min_size=2)
def test_collectives():
    comm = MPI.COMM_WORLD
    assert comm.allreduce(comm.rank) == comm.size * (comm.size - 1) // 2
    assert comm.bcast({"from": 0, "size": comm.size} if comm.rank == 0 else None) == \
        {"from": 0, "size": comm.size}
    assert comm.allgather(comm.rank * comm.rank) == [r * r for r in range(comm.size)]
    assert comm.alltoall([comm.rank * 100 + r for r in range(comm.size)]) == \
        [r * 100 + comm.rank for r in range(comm.size)]


@pytest.mark.mpi(min_size=2)
def test_shared_memory_window_on_the_node():
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    itemsize = MPI.DOUBLE.Get_size()
    win = MPI.Win.Allocate_shared(itemsize, itemsize, comm=node)
    mine, _ = win.Shared_query(node.rank)
    mine = memoryview(mine).cast("d")
    win.Fence()
    mine[0] = 1000.0 + node.rank
    win.Fence()
    for r in range(node.size):
        buf, _ = win.Shared_query(r)
        assert memoryview(buf).cast("d")[0] == 1000.0 + r
    win.Fence()
    win.Free()
    assert node.size == MPI.COMM_WORLD.size  # all ranks share this node's container
