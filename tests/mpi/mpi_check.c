/* Checks by value what a containerised MPI job must do: point-to-point, a collective, and a
 * transfer through node-local shared memory (MPI-3 shared windows). Prints one "OK" line on
 * rank 0 when every rank agrees, else "FAIL <what>" and exits 1. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define N 4096

int main(int argc, char **argv) {
    int rank, size, bad = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* ring: each rank sends N ints i*rank to the next */
    int *out = malloc(N * sizeof(int)), *in = malloc(N * sizeof(int));
    for (int i = 0; i < N; i++) out[i] = i * rank;
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    MPI_Sendrecv(out, N, MPI_INT, next, 7, in, N, MPI_INT, prev, 7, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
    for (int i = 0; i < N; i++) if (in[i] != i * prev) { bad |= 1; break; }

    long sum = 0, mine = rank;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (sum != (long)size * (size - 1) / 2) bad |= 2;

    /* shared memory among the ranks of this node: each writes its slot, all read all */
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int nrank, nsize;
    MPI_Comm_rank(node, &nrank);
    MPI_Comm_size(node, &nsize);
    long *base;
    MPI_Win win;
    MPI_Win_allocate_shared(sizeof(long), sizeof(long), MPI_INFO_NULL, node, &base, &win);
    MPI_Win_fence(0, win);
    *base = 1000 + nrank;
    MPI_Win_fence(0, win);
    for (int r = 0; r < nsize; r++) {
        MPI_Aint sz; int du; long *p;
        MPI_Win_shared_query(win, r, &sz, &du, &p);
        if (*p != 1000 + r) { bad |= 4; break; }
    }
    MPI_Win_fence(0, win);
    MPI_Win_free(&win);

    int allbad = 0;
    MPI_Allreduce(&bad, &allbad, 1, MPI_INT, MPI_BOR, MPI_COMM_WORLD);
    if (rank == 0) {
        if (allbad) printf("FAIL p2p=%d allreduce=%d shm=%d\n", allbad & 1, !!(allbad & 2), !!(allbad & 4));
        else printf("OK size=%d sum=%ld node_ranks=%d\n", size, sum, nsize);
    }
    MPI_Finalize();
    return allbad ? 1 : 0;
}
