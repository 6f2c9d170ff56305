/*
 * mpi_hello: the smallest MPI program that goes through a whole start-up.
 *
 * MPI_Init (the PMI/PMIx wire-up with the launcher), one MPI_Barrier (every rank reached
 * every other) and MPI_Finalize: what the launch benchmarks time, bare and in a container.
 * It prints nothing unless asked, so that output does not weigh on the timings.
 *
 *   mpi_hello        exit 0 once every rank has passed the barrier
 *   mpi_hello -v     each rank also prints "rank R of N on HOST"
 */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    int verbose = argc == 2 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--verbose") == 0);
    int rank, size, length;
    char host[MPI_MAX_PROCESSOR_NAME];

    if (argc > 1 && !verbose) {
        fprintf(stderr, "usage: %s [-v|--verbose]\n", argv[0]);
        return 2;
    }
    /* MPI's default error handler aborts the job on failure: no return codes to check. */
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Barrier(MPI_COMM_WORLD);
    if (verbose) {
        MPI_Get_processor_name(host, &length);
        printf("rank %d of %d on %s\n", rank, size, host);
    }
    MPI_Finalize();
    return 0;
}
