/* hpcrun-starter: an MPI rank joins its node's container without starting Python.
 *
 *   hpcrun-starter KEY N HPCRUN-COMMAND...
 *
 * HPCRUN-COMMAND is the rank's `hpcrun exec --node-session KEY ... IMAGE PROGRAM [ARGS]`,
 * whose first N words come before PROGRAM. The starter connects to the node's holder (see
 * hpcbind/runtime/nodesession.py, whose wire format and socket name this file repeats),
 * sends PROGRAM [ARGS], its environment and directory, and receives the holder's answer:
 * the user and mount namespaces, and the argv, environment and directory the Python holder
 * computed for this rank. Then setns, chdir, no-new-privs, execve. Python computes, this
 * only applies: a Python interpreter costs each rank ~25-30 ms of CPU, paid 128 times on a
 * 128-rank node while the ranks busy-poll in MPI_Init.
 *
 * With no holder yet, the starter binds the node's socket itself and execs HPCRUN-COMMAND
 * with the listening descriptor in HPCBIND_NODE_LISTENER: that rank becomes the node's
 * holder (today's path), and the ranks behind it find a listener at once. Anything else it
 * cannot use (a full backlog, a holder that keeps going away, a name another user holds,
 * where Python runs the rank in a container of its own with a note) also goes to
 * HPCRUN-COMMAND. An answer cut short or malformed is one line on stderr and exit 255,
 * like every hpcrun error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_MESSAGE (1u << 20) /* nodesession._MAX_MESSAGE */
#define ATTEMPTS 5             /* nodesession.join's */
#define BACKLOG 4096
#define SECRET_VARIABLE "HPCBIND_NODE_SECRET"
#define LISTENER_VARIABLE "HPCBIND_NODE_LISTENER"

extern char **environ;

static void fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs("hpcrun: error: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(255);
}

static void pause_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* nodesession.socket_name: per user, launch, secret and mount namespace */
static socklen_t socket_name(struct sockaddr_un *addr, const char *key)
{
    struct stat view;
    const char *secret = getenv(SECRET_VARIABLE);
    if (stat("/proc/self/ns/mnt", &view) != 0)
        fail("can't read /proc/self/ns/mnt: %s; mount /proc", strerror(errno));
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "hpcbind/%u/%s/%s/%llx",
                     (unsigned)getuid(), key, secret ? secret : "",
                     (unsigned long long)view.st_ino);
    if (n < 0 || (size_t)n >= sizeof addr->sun_path - 1)
        fail("node session key %s is too long; let hpcrun mpirun|srun choose it", key);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* today's path: hpcrun itself, as the node's first rank when listener >= 0 */
static void exec_hpcrun(char **command, int listener)
{
    if (listener >= 0) {
        char number[16];
        snprintf(number, sizeof number, "%d", listener);
        if (fcntl(listener, F_SETFD, 0) != 0 || setenv(LISTENER_VARIABLE, number, 1) != 0)
            fail("can't pass the node session to %s: %s", command[0], strerror(errno));
    }
    execv(command[0], command);
    fail("can't execute %s: %s; check the hpcrun installation", command[0], strerror(errno));
}

static void append(char **buffer, size_t *used, size_t *size, const char *field)
{
    size_t length = strlen(field) + 1;
    while (*used + length > *size) {
        *size *= 2;
        if (!(*buffer = realloc(*buffer, *size)))
            fail("out of memory");
    }
    memcpy(*buffer + *used, field, length);
    *used += length;
}

/* nodesession._pack of ["1", cwd, argc, *argv, *environ] */
static char *request(char **argv, int argc, size_t *length)
{
    size_t size = 4096, used = 4;
    char *buffer = malloc(size), cwd[4096], count[16];
    if (!buffer)
        fail("out of memory");
    if (!getcwd(cwd, sizeof cwd))
        fail("can't read the current directory: %s; start the job from an existing directory",
             strerror(errno));
    snprintf(count, sizeof count, "%d", argc);
    append(&buffer, &used, &size, "1");
    append(&buffer, &used, &size, cwd);
    append(&buffer, &used, &size, count);
    for (int i = 0; i < argc; i++)
        append(&buffer, &used, &size, argv[i]);
    for (char **e = environ; *e; e++)
        append(&buffer, &used, &size, *e);
    uint32_t body = (uint32_t)(used - 4);
    memcpy(buffer, &body, 4);
    *length = used;
    return buffer;
}

static int send_all(int fd, const char *data, size_t length)
{
    while (length) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

static void read_all(int fd, char *data, size_t length, const char *key)
{
    while (length) {
        ssize_t n = read(fd, data, length);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("the holder of node session %s went away in the middle of its answer; run "
                 "the job again", key);
        data += n;
        length -= (size_t)n;
    }
}

struct answer {
    char *body;
    uint32_t length;
    int fds[2];
    int nfds;
};

/* 0: an answer; -1: the holder went away before answering (start over) */
static int receive(int fd, struct answer *answer, const char *key)
{
    char head[4];
    union {
        char buffer[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {head, sizeof head};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                         .msg_controllen = sizeof control.buffer};
    ssize_t n;
    do
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
        return -1;
    if (n < 0)
        fail("can't read the answer of node session %s: %s", key, strerror(errno));
    answer->nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *received = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (answer->nfds < 2)
                answer->fds[answer->nfds++] = received[i];
            else
                close(received[i]);
        }
    }
    if (msg.msg_flags & MSG_CTRUNC)
        fail("node session %s sent more descriptors than a rank takes", key);
    read_all(fd, head + n, sizeof head - (size_t)n, key);
    memcpy(&answer->length, head, 4);
    if (answer->length > MAX_MESSAGE)
        fail("node session %s sent an answer of %u bytes; run the job again", key,
             answer->length);
    if (!(answer->body = malloc(answer->length + 1)))
        fail("out of memory");
    read_all(fd, answer->body, answer->length, key);
    answer->body[answer->length] = '\0';
    return 0;
}

/* The NUL-terminated fields of a body, as a NULL-terminated array. */
static char **fields(char *body, uint32_t length, int *count, const char *key)
{
    if (length == 0 || body[length - 1] != '\0')
        fail("node session %s sent a malformed answer; run the job again", key);
    int n = 0;
    for (uint32_t i = 0; i < length; i++)
        n += body[i] == '\0';
    char **out = calloc((size_t)n + 1, sizeof *out);
    if (!out)
        fail("out of memory");
    char *p = body;
    for (int i = 0; i < n; i++, p += strlen(p) + 1)
        out[i] = p;
    *count = n;
    return out;
}

static void enter(int user_fd, int mnt_fd)
{
    struct stat theirs, mine;
    /* root's holder has no user namespace of its own: joining ours again is EINVAL */
    if (fstat(user_fd, &theirs) != 0 || stat("/proc/self/ns/user", &mine) != 0)
        fail("can't inspect the node's namespaces: %s", strerror(errno));
    if (theirs.st_ino != mine.st_ino && setns(user_fd, CLONE_NEWUSER) != 0)
        fail("can't join the node's user namespace: %s", strerror(errno));
    if (setns(mnt_fd, CLONE_NEWNS) != 0)
        fail("can't join the node's mount namespace: %s", strerror(errno));
    close(user_fd);
    close(mnt_fd);
}

/* container.apply, field for field: ["exec", notes, cwd, home, the missing directory's
 * line (prefix, suffix; none: fall back to home), the execve failure's line (prefix,
 * suffix), argc, argv..., environment...] */
static void apply(char **field, int count, const char *key)
{
    if (count < 10)
        fail("node session %s sent a malformed answer; run the job again", key);
    char *end;
    long argc = strtol(field[8], &end, 10);
    if (*end || argc < 1 || argc > count - 9)
        fail("node session %s sent a malformed answer; run the job again", key);
    char **argv = field + 9, **env = field + 9 + argc;
    fputs(field[1], stderr);
    if (chdir(field[2]) != 0) {
        struct stat home;
        if (*field[4]) {
            fprintf(stderr, "%s%s%s\n", field[4], strerror(errno), field[5]);
            exit(255);
        }
        if (stat(field[3], &home) != 0 || !S_ISDIR(home.st_mode) || chdir(field[3]) != 0)
            if (chdir("/") != 0)
                fail("can't change to / in the container: %s", strerror(errno));
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("can't set no-new-privileges: %s", strerror(errno));
    /* argv and environment stay NULL-terminated in place: cut them apart */
    char *program = argv[0];
    char **program_argv = calloc((size_t)argc + 1, sizeof *program_argv);
    if (!program_argv)
        fail("out of memory");
    memcpy(program_argv, argv, (size_t)argc * sizeof *argv);
    environ = env; /* execvp searches the PATH of the rank's own environment, as Python's */
    execvp(program, program_argv);
    fprintf(stderr, "%s%s%s\n", field[6], strerror(errno), field[7]);
    exit(255);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        fail("usage: hpcrun-starter KEY N HPCRUN-COMMAND...; it is run by hpcrun mpirun|srun");
    const char *key = argv[1];
    char *end;
    long before = strtol(argv[2], &end, 10);
    char **command = argv + 3;
    int words = argc - 3;
    if (*end || before < 1 || before >= words)
        fail("hpcrun-starter: N=%s does not split the command; it is run by hpcrun "
             "mpirun|srun", argv[2]);

    struct sockaddr_un addr;
    socklen_t addr_length = socket_name(&addr, key);
    size_t request_length;
    char *message = request(command + before, words - (int)before, &request_length);

    for (int attempt = 0; attempt < ATTEMPTS; attempt++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            fail("can't create a socket: %s", strerror(errno));
        /* non-blocking: a squatter's full backlog answers EAGAIN instead of hanging us */
        if (connect(fd, (struct sockaddr *)&addr, addr_length) != 0) {
            int why = errno;
            close(fd);
            if (why == ECONNREFUSED) { /* nobody holds the name: be the node's first rank */
                int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (listener >= 0 && bind(listener, (struct sockaddr *)&addr, addr_length) == 0
                    && listen(listener, BACKLOG) == 0)
                    exec_hpcrun(command, listener);
                if (listener >= 0)
                    close(listener);
            }
            if (why != ECONNREFUSED && why != EAGAIN)
                break;
            pause_ms(1L << attempt); /* bound but not listening yet, or a full backlog */
            continue;
        }
        struct ucred peer;
        socklen_t peer_length = sizeof peer;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_length) != 0)
            fail("can't check node session %s: %s", key, strerror(errno));
        if (peer.uid != getuid()) { /* squatted: Python runs the rank on its own, noted */
            close(fd);
            break;
        }
        if (fcntl(fd, F_SETFL, 0) != 0)
            fail("can't use node session %s: %s", key, strerror(errno));
        struct answer answer;
        if (send_all(fd, message, request_length) != 0 || receive(fd, &answer, key) != 0) {
            close(fd); /* the holder was exiting as we came: start over */
            continue;
        }
        close(fd);
        int count;
        char **field = fields(answer.body, answer.length, &count, key);
        if (count == 2 && strcmp(field[0], "error") == 0)
            fail("%s", field[1]);
        if (strcmp(field[0], "exec") != 0 || answer.nfds != 2)
            fail("node session %s sent a malformed answer; run the job again", key);
        enter(answer.fds[0], answer.fds[1]);
        apply(field, count, key);
    }
    free(message);
    exec_hpcrun(command, -1);
    return 255;
}
