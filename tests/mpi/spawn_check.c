/* spawn-check [N]: the world's ranks spawn N copies of this program; every process prints
 * its role and mount namespace ("parent mnt:[...]", "child mnt:[...]"), so a test sees
 * whether spawned processes start in their parents' container. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char ns[64] = "";
    MPI_Comm parent, children;
    MPI_Init(&argc, &argv);
    ssize_t n = readlink("/proc/self/ns/mnt", ns, sizeof ns - 1);
    ns[n > 0 ? n : 0] = '\0';
    MPI_Comm_get_parent(&parent);
    if (parent == MPI_COMM_NULL) {
        char *child_args[] = {"child", NULL};
        MPI_Comm_spawn(argv[0], child_args, argc > 1 ? atoi(argv[1]) : 1, MPI_INFO_NULL, 0,
                       MPI_COMM_WORLD, &children, MPI_ERRCODES_IGNORE);
        printf("parent %s\n", ns);
        MPI_Comm_disconnect(&children);
    } else {
        printf("child %s\n", ns);
        MPI_Comm_disconnect(&parent);
    }
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
