/* hpcbind-spawn.so: MPI_Comm_spawn from a rank in the container starts its processes in the
 * container, or is refused in one line; never a process silently on the host.
 *
 * The node's holder binds this file at /.hpcbind/spawn.so and puts it first in the ranks'
 * LD_PRELOAD, so it comes before the image's MPI library in the symbol lookup.
 *
 * Under Open MPI's mpirun, hpcrun is the daemons' fork agent (hpcbind/mpi/launcher.py): they
 * put it in front of every process they start, spawned ones too. But the daemon first checks
 * that the spawned program exists on the host, which a program of the image need not (nor
 * the image's Python, at /opt/conda/bin/python say). So the command is rewritten to
 * `/bin/sh --hpcbind-fork-agent COMMAND ARGS...`: /bin/sh is on every host, and the rank's
 * hpcrun drops those two words (hpcbind.launch.started_as) and runs COMMAND in the container.
 *
 * MPICH's Hydra and Slurm's srun fork spawned processes from their own daemons, with no fork
 * agent: there spawning is refused, with one line on stderr and exit status 255.
 *
 * No libc is linked (-nostdlib) and no MPI header is read, so this loads into any image of
 * the host's architecture (glibc of any age, musl) whatever its MPI. What it needs of libc
 * (getenv, and dladdr/dlopen/dlsym to find the MPI library's own PMPI_ functions) it takes
 * through weak references, which the dynamic linker fills from the program's libc; the
 * refusal needs nothing but the write and exit_group system calls.
 */

#define FORK_AGENT_VARIABLE "HPCBIND_FORK_AGENT" /* rankenv.FORK_AGENT_VARIABLE */
#define FORK_AGENT_MARK "--hpcbind-fork-agent"   /* rankenv.FORK_AGENT_MARK */
#define HOST_COMMAND "/bin/sh"                   /* rankenv.SPAWN_COMMANDS */
#define STDERR 2
#define EXIT_CODE 255
#define RTLD_DEFAULT ((void *)0)
#define RTLD_LAZY 1
#define RTLD_NOLOAD 4 /* glibc and musl alike */

#if defined(__x86_64__)
#define SYS_WRITE 1
#define SYS_EXIT_GROUP 231
static long syscall3(long number, long a, long b, long c)
{
    long result;
    __asm__ volatile("syscall"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return result;
}
#elif defined(__aarch64__)
#define SYS_WRITE 64
#define SYS_EXIT_GROUP 94
static long syscall3(long number, long a, long b, long c)
{
    register long x8 __asm__("x8") = number;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}
#else
#error "hpcbind-spawn.so: add this architecture's write and exit_group system calls"
#endif

struct dl_info {
    const char *dli_fname;
    void *dli_fbase;
    const char *dli_sname;
    void *dli_saddr;
};
extern char *getenv(const char *) __attribute__((weak));
extern int dladdr(const void *, struct dl_info *) __attribute__((weak));
extern void *dlopen(const char *, int) __attribute__((weak));
extern void *dlsym(void *, const char *) __attribute__((weak));

/* Open MPI's handles (MPI_Info, MPI_Comm) are pointers; no other MPI gets this far. */
typedef int rank_fn(void *, int *);
typedef int spawn_fn(const char *, char **, int, void *, int, void *, void **, int *);
typedef int spawn_multiple_fn(int, char **, char ***, const int *, void **, int, void *,
                              void **, int *);

static void say(const char *text)
{
    long length = 0;
    while (text[length])
        length++;
    syscall3(SYS_WRITE, STDERR, (long)text, length);
}

static void refuse(const char *why)
{
    say("hpcrun: error: MPI_Comm_spawn is refused in this container: ");
    say(why);
    for (;;)
        syscall3(SYS_EXIT_GROUP, EXIT_CODE, 0, 0);
}

/* rankenv.under_fork_agent, else refused */
static void require_fork_agent(void)
{
    const char *value = getenv ? getenv(FORK_AGENT_VARIABLE) : 0;
    if (!value || value[0] != '1' || value[1])
        refuse("its launcher (MPICH's Hydra or srun) would start the new processes on the "
               "host, outside the container; launch the job with hpcrun mpirun of Open MPI, "
               "which starts them in the container\n");
}

/* The MPI library's PMPI_ function: in the global scope when the program links the library,
 * else among the dependencies of the object that called (Python loads mpi4py's module, and
 * with it libmpi, without adding them to the global scope). */
static void *real(const char *name, const void *caller)
{
    void *function = dlsym ? dlsym(RTLD_DEFAULT, name) : 0;
    struct dl_info info;
    if (!function && dladdr && dlopen && dlsym && dladdr(caller, &info) && info.dli_fname) {
        void *handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        function = handle ? dlsym(handle, name) : 0;
    }
    if (!function)
        refuse("hpcrun could not find the MPI library's PMPI_Comm_spawn to call; report it "
               "with the image's MPI\n");
    return function;
}

static int count_words(char **argv)
{
    int n = 0;
    while (argv && argv[n])
        n++;
    return n;
}

/* FORK_AGENT_MARK COMMAND ARGV... NULL into words, which has count_words(argv) + 3 slots */
static void marked(char **words, const char *command, char **argv)
{
    int n = count_words(argv);
    words[0] = FORK_AGENT_MARK;
    words[1] = (char *)command;
    for (int i = 0; i < n; i++)
        words[i + 2] = argv[i];
    words[n + 2] = 0;
}

/* Whether this process is the spawn's root, the one whose commands count (anything may be
 * passed elsewhere, garbage included) */
static int at_root(void *comm, int root, const void *caller)
{
    int rank = -1;
    ((rank_fn *)real("PMPI_Comm_rank", caller))(comm, &rank);
    return rank == root;
}

int MPI_Comm_spawn(const char *command, char **argv, int maxprocs, void *info, int root,
                   void *comm, void **intercomm, int *errcodes)
{
    require_fork_agent();
    const void *caller = __builtin_return_address(0);
    spawn_fn *spawn = (spawn_fn *)real("PMPI_Comm_spawn", caller);
    int rewrite = at_root(comm, root, caller) && command;
    char *words[rewrite ? count_words(argv) + 3 : 1];
    if (rewrite)
        marked(words, command, argv);
    return spawn(rewrite ? HOST_COMMAND : command, rewrite ? words : argv, maxprocs, info, root,
                 comm, intercomm, errcodes);
}

int MPI_Comm_spawn_multiple(int count, char **commands, char ***argvs, const int *maxprocs,
                            void **infos, int root, void *comm, void **intercomm,
                            int *errcodes)
{
    require_fork_agent();
    const void *caller = __builtin_return_address(0);
    spawn_multiple_fn *spawn = (spawn_multiple_fn *)real("PMPI_Comm_spawn_multiple", caller);
    int rewrite = at_root(comm, root, caller) && count > 0 && commands, total = 0;
    for (int i = 0; rewrite && i < count; i++)
        total += count_words(argvs ? argvs[i] : 0) + 3;
    char *words[rewrite ? total : 1], **marked_argvs[rewrite ? count : 1],
        *hosts[rewrite ? count : 1];
    for (int i = 0, at = 0; rewrite && i < count; i++) {
        marked(words + at, commands[i], argvs ? argvs[i] : 0);
        marked_argvs[i] = words + at;
        hosts[i] = HOST_COMMAND;
        at += count_words(argvs ? argvs[i] : 0) + 3;
    }
    return spawn(count, rewrite ? hosts : commands, rewrite ? marked_argvs : argvs, maxprocs,
                 infos, root, comm, intercomm, errcodes);
}
