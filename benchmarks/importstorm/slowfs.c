/* slowfs: a FUSE passthrough that models a shared filesystem's metadata server.
 *
 * Every metadata operation (the OPS table below) waits DELAY while holding one lock: the
 * operations of all clients are served one at a time, as by the one metadata server of an
 * NFS export or a Lustre MDT, so N clients see a throughput of 1/DELAY operations per
 * second between them. Data reads and writes pass through at once, in parallel, with no
 * delay. Every request is counted by type.
 *
 * The kernel caches nothing below the mount point (entry, attribute and negative timeouts
 * are 0), so every lookup, stat and permission check of every client process reaches the
 * server: the traffic of N clients on N nodes whose caches are cold, the worst case of a
 * metadata storm. Only the mount point's own attributes are cached, as a client keeps
 * those of its mount point; that also keeps reading the control file below off the
 * counters (the kernel checks the mount point's permissions on the way). File data stays in
 * the page cache across opens (keep_cache), as an NFS client keeps it while the file's
 * mtime is unchanged: the model is about metadata, not bandwidth.
 *
 * Usage:
 *   slowfs BACKING MOUNTPOINT [-f] [-o delay_us=1000,stats=FILE,allow_other,...]
 *
 *   delay_us=N   the wait of each metadata operation, in microseconds (default 1000)
 *   stats=FILE   where the counters are written (JSON) on unmount and on SIGUSR1
 *   and any libfuse option (allow_other, max_threads=N, ...)
 *
 * The counters are also read at any time, synchronously, from the control file
 * MOUNTPOINT/.slowfs-stats (not listed by readdir, not counted itself):
 *   {"delay_us": 1000, "metadata_ops": 1234, "ops": {"lookup": 800, ...}}
 *
 * Written in C with libfuse3's low-level API, not Python: with 128 clients the server
 * must not be the bottleneck, and a Python server serialises its data path on the GIL.
 * Measured on a 2-core VM with delay_us=0: 13.5 us a metadata request end to end (client
 * and kernel included), about 1% of the default delay; `import numpy` through it takes
 * 0.26 s against 0.20 s from the local disk.
 * The inode table follows libfuse's example/passthrough_ll.c (an O_PATH descriptor per
 * inode, looked up by device and inode number), with glibc's tsearch in place of its
 * linear list.
 */

#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <search.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>


/** Constants **/

#define CONTROL_NAME ".slowfs-stats"
#define DEFAULT_DELAY_US 1000
/* libfuse's default of 10 worker threads would queue data reads behind metadata requests
 * waiting for the server lock: enough threads that every client's request is taken at
 * once (a later -o max_threads=N still wins).
 */
#define DEFAULT_MAX_THREADS "-omax_threads=1024"
#define STATS_MAX 2048
#define ROOT_ATTR_TIMEOUT 86400.0   // seconds; every other timeout is 0

_Static_assert(sizeof(fuse_ino_t) >= sizeof(uintptr_t), "node pointers are inode numbers");


/** Types **/

/* Every request type served; `metadata` ones go through the metadata server (delayed and
 * serialised). NFS and Lustre send these to the server; reads, writes and closes of a
 * file already open go to the data path (NFSv3 closes are local; flush and fsync carry
 * data).
 */
enum op {
    OP_LOOKUP, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKDIR, OP_SYMLINK, OP_UNLINK,
    OP_RMDIR, OP_RENAME, OP_OPEN, OP_CREATE, OP_OPENDIR, OP_READDIR,
    OP_READ, OP_WRITE, OP_FLUSH, OP_FSYNC, OP_RELEASE, OP_RELEASEDIR, OP_FORGET, OP_STATFS,
    N_OPS
};

static const struct { const char *name; bool metadata; } OPS[N_OPS] = {
    [OP_LOOKUP] = { "lookup", true },       [OP_GETATTR] = { "getattr", true },
    [OP_SETATTR] = { "setattr", true },     [OP_READLINK] = { "readlink", true },
    [OP_MKDIR] = { "mkdir", true },         [OP_SYMLINK] = { "symlink", true },
    [OP_UNLINK] = { "unlink", true },       [OP_RMDIR] = { "rmdir", true },
    [OP_RENAME] = { "rename", true },       [OP_OPEN] = { "open", true },
    [OP_CREATE] = { "create", true },       [OP_OPENDIR] = { "opendir", true },
    [OP_READDIR] = { "readdir", true },
    [OP_READ] = { "read", false },          [OP_WRITE] = { "write", false },
    [OP_FLUSH] = { "flush", false },        [OP_FSYNC] = { "fsync", false },
    [OP_RELEASE] = { "release", false },    [OP_RELEASEDIR] = { "releasedir", false },
    [OP_FORGET] = { "forget", false },      [OP_STATFS] = { "statfs", false },
};

struct node {
    int fd;             // O_PATH descriptor of the backing file
    dev_t dev;
    ino_t ino;
    uint64_t nlookup;   // the kernel's references; protected by slowfs.nodes_lock
};

struct dir {
    DIR *dp;
    struct dirent *entry;   // read but not yet sent (it did not fit the last reply)
    off_t offset;
};

struct options {
    char *backing;
    char *stats_path;
    unsigned long delay_us;
};

struct slowfs {
    struct options opt;
    struct timespec delay;
    pthread_mutex_t server;      // the metadata server: held for each metadata operation
    pthread_mutex_t nodes_lock;
    void *nodes;                 // tsearch tree of struct node, by (dev, ino)
    struct node root;
    struct node control;         // the counters file: no backing file
    atomic_ullong count[N_OPS];
};


/** Counting and delay **/

static struct slowfs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static void timespec_add(struct timespec *t, const struct timespec *d)
{
    t->tv_sec += d->tv_sec;
    t->tv_nsec += d->tv_nsec;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

/* Count one request; a metadata one then waits its turn at the server and DELAY there.
 * The deadline is absolute so the lock hand-over and wake-up latency are not added on top
 * (the workers' timer slack is 1 ns, see main).
 */
static void serve(fuse_req_t req, enum op op)
{
    struct slowfs *fs = fs_of(req);
    struct timespec until;

    atomic_fetch_add_explicit(&fs->count[op], 1, memory_order_relaxed);
    if (!OPS[op].metadata || fs->opt.delay_us == 0)
        return;
    pthread_mutex_lock(&fs->server);
    clock_gettime(CLOCK_MONOTONIC, &until);
    timespec_add(&until, &fs->delay);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        ;
    pthread_mutex_unlock(&fs->server);
}

static size_t format_stats(struct slowfs *fs, char *buf, size_t size)
{
    unsigned long long n[N_OPS], metadata = 0;
    size_t len;

    for (int i = 0; i < N_OPS; i++) {
        n[i] = atomic_load_explicit(&fs->count[i], memory_order_relaxed);
        metadata += OPS[i].metadata ? n[i] : 0;
    }
    len = snprintf(buf, size, "{\"delay_us\": %lu, \"metadata_ops\": %llu, \"ops\": {",
                   fs->opt.delay_us, metadata);
    for (int i = 0; i < N_OPS && len < size; i++)
        len += snprintf(buf + len, size - len, "%s\"%s\": %llu", i ? ", " : "", OPS[i].name,
                        n[i]);
    if (len < size)
        len += snprintf(buf + len, size - len, "}}\n");
    assert(len < size);
    return len;
}

/* Write the counters to stats=FILE, through a rename so a reader never sees half. */
static void dump_stats(struct slowfs *fs)
{
    char buf[STATS_MAX], tmp[PATH_MAX];
    size_t len = format_stats(fs, buf, sizeof(buf));
    FILE *f;

    if (!fs->opt.stats_path)
        return;
    snprintf(tmp, sizeof(tmp), "%s.tmp", fs->opt.stats_path);
    f = fopen(tmp, "w");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0
        || rename(tmp, fs->opt.stats_path) != 0)
        fuse_log(FUSE_LOG_ERR, "slowfs: cannot write %s: %m\n", fs->opt.stats_path);
}

/* SIGUSR1 is blocked in every thread (see main) and taken here, where writing a file is
 * safe, rather than in a signal handler, where stdio is not.
 */
static void *stats_on_sigusr1(void *arg)
{
    sigset_t set;
    int sig;

    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    for (;;)
        if (sigwait(&set, &sig) == 0)
            dump_stats(arg);
    return NULL;
}


/** Inodes **/

static int node_cmp(const void *a, const void *b)
{
    const struct node *x = a, *y = b;

    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    return x->ino < y->ino ? -1 : x->ino > y->ino;
}

static struct node *node_of(fuse_req_t req, fuse_ino_t ino)
{
    return ino == FUSE_ROOT_ID ? &fs_of(req)->root : (struct node *) (uintptr_t) ino;
}

static bool is_control(fuse_req_t req, fuse_ino_t ino)
{
    return node_of(req, ino) == &fs_of(req)->control;
}

/* The node of `fd` (an O_PATH descriptor of a file with attributes `st`), with one more
 * kernel reference; `fd` is kept by a new node or closed. Returns NULL if out of memory.
 */
static struct node *node_ref(struct slowfs *fs, int fd, const struct stat *st)
{
    struct node key = { .dev = st->st_dev, .ino = st->st_ino }, *node, **slot;

    pthread_mutex_lock(&fs->nodes_lock);
    slot = tfind(&key, &fs->nodes, node_cmp);
    if (slot) {
        node = *slot;
        node->nlookup++;
        close(fd);
    } else if ((node = malloc(sizeof(*node)))) {
        *node = (struct node) { .fd = fd, .dev = st->st_dev, .ino = st->st_ino, .nlookup = 1 };
        if (!tsearch(node, &fs->nodes, node_cmp)) {
            free(node);
            node = NULL;
        }
    }
    pthread_mutex_unlock(&fs->nodes_lock);
    if (!node && !slot)
        close(fd);
    return node;
}

static void node_unref(struct slowfs *fs, struct node *node, uint64_t n)
{
    if (node == &fs->root || node == &fs->control)
        return;
    pthread_mutex_lock(&fs->nodes_lock);
    assert(node->nlookup >= n);
    node->nlookup -= n;
    if (node->nlookup == 0) {
        tdelete(node, &fs->nodes, node_cmp);
        close(node->fd);
        free(node);
    }
    pthread_mutex_unlock(&fs->nodes_lock);
}

/* Look `name` up in `parent` and fill `e` (zero timeouts: the kernel caches nothing). */
static int do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name,
                     struct fuse_entry_param *e)
{
    struct node *node;
    int fd;

    memset(e, 0, sizeof(*e));
    fd = openat(node_of(req, parent)->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd == -1)
        return errno;
    if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1) {
        int err = errno;
        close(fd);
        return err;
    }
    node = node_ref(fs_of(req), fd, &e->attr);
    if (!node)
        return ENOMEM;
    e->ino = (uintptr_t) node;
    return 0;
}

static void reply_entry(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    int err = do_lookup(req, parent, name, &e);

    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

static void reply_attr(fuse_req_t req, fuse_ino_t ino, const struct stat *st)
{
    fuse_reply_attr(req, st, ino == FUSE_ROOT_ID ? ROOT_ATTR_TIMEOUT : 0);
}

static void reply_errno(fuse_req_t req, int res)
{
    fuse_reply_err(req, res == -1 ? errno : 0);
}

static void proc_path(char *buf, size_t size, int fd)
{
    snprintf(buf, size, "/proc/self/fd/%d", fd);
}


/** The control file **/

static void control_attr(struct stat *st)
{
    // size 0 with direct_io: the kernel reads until the server returns no more
    *st = (struct stat) { .st_mode = S_IFREG | 0444, .st_nlink = 1 };
}

static void control_lookup(fuse_req_t req)
{
    struct fuse_entry_param e = { .ino = (uintptr_t) &fs_of(req)->control };

    control_attr(&e.attr);
    fuse_reply_entry(req, &e);
}

static void control_open(fuse_req_t req, struct fuse_file_info *fi)
{
    char *snapshot;

    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return (void) fuse_reply_err(req, EACCES);
    snapshot = malloc(STATS_MAX);
    if (!snapshot)
        return (void) fuse_reply_err(req, ENOMEM);
    format_stats(fs_of(req), snapshot, STATS_MAX);
    fi->fh = (uintptr_t) snapshot;
    fi->direct_io = 1;
    fuse_reply_open(req, fi);
}

static void control_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
    const char *snapshot = (const char *) (uintptr_t) fi->fh;
    size_t len = strlen(snapshot);

    if ((size_t) off >= len)
        return (void) fuse_reply_buf(req, NULL, 0);
    fuse_reply_buf(req, snapshot + off, len - off < size ? len - off : size);
}


/** Operations: names **/

static void sf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    if (parent == FUSE_ROOT_ID && strcmp(name, CONTROL_NAME) == 0)
        return control_lookup(req);
    serve(req, OP_LOOKUP);
    reply_entry(req, parent, name);
}

static void forget_one(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    node_unref(fs_of(req), node_of(req, ino), nlookup);
}

static void sf_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    serve(req, OP_FORGET);
    forget_one(req, ino, nlookup);
    fuse_reply_none(req);
}

static void sf_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    serve(req, OP_FORGET);
    for (size_t i = 0; i < count; i++)
        forget_one(req, forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

static void sf_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    serve(req, OP_MKDIR);
    if (mkdirat(node_of(req, parent)->fd, name, mode) == -1)
        return (void) fuse_reply_err(req, errno);
    reply_entry(req, parent, name);
}

static void sf_symlink(fuse_req_t req, const char *target, fuse_ino_t parent,
                       const char *name)
{
    serve(req, OP_SYMLINK);
    if (symlinkat(target, node_of(req, parent)->fd, name) == -1)
        return (void) fuse_reply_err(req, errno);
    reply_entry(req, parent, name);
}

static void sf_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    serve(req, OP_UNLINK);
    reply_errno(req, unlinkat(node_of(req, parent)->fd, name, 0));
}

static void sf_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    serve(req, OP_RMDIR);
    reply_errno(req, unlinkat(node_of(req, parent)->fd, name, AT_REMOVEDIR));
}

static void sf_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
    serve(req, OP_RENAME);
    reply_errno(req, renameat2(node_of(req, parent)->fd, name, node_of(req, newparent)->fd,
                               newname, flags));
}


/** Operations: attributes **/

static void sf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;

    (void) fi;
    if (is_control(req, ino)) {
        control_attr(&st);
        return (void) reply_attr(req, ino, &st);
    }
    serve(req, OP_GETATTR);
    if (fstatat(node_of(req, ino)->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
        return (void) fuse_reply_err(req, errno);
    reply_attr(req, ino, &st);
}

/* chmod, chown, truncate and utimes on the backing file, through the open file when there
 * is one, else through /proc/self/fd (an O_PATH descriptor takes neither fchmod nor
 * ftruncate).
 */
static int set_attributes(int fd, const char *path, struct stat *attr, int valid,
                          bool is_open)
{
    if (valid & FUSE_SET_ATTR_MODE
        && (is_open ? fchmod(fd, attr->st_mode) : chmod(path, attr->st_mode)) == -1)
        return -1;
    if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        uid_t uid = valid & FUSE_SET_ATTR_UID ? attr->st_uid : (uid_t) -1;
        gid_t gid = valid & FUSE_SET_ATTR_GID ? attr->st_gid : (gid_t) -1;
        if (fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
            return -1;
    }
    if (valid & FUSE_SET_ATTR_SIZE
        && (is_open ? ftruncate(fd, attr->st_size) : truncate(path, attr->st_size)) == -1)
        return -1;
    if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
        struct timespec times[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
        if (valid & FUSE_SET_ATTR_ATIME)
            times[0] = valid & FUSE_SET_ATTR_ATIME_NOW
                       ? (struct timespec) { .tv_nsec = UTIME_NOW } : attr->st_atim;
        if (valid & FUSE_SET_ATTR_MTIME)
            times[1] = valid & FUSE_SET_ATTR_MTIME_NOW
                       ? (struct timespec) { .tv_nsec = UTIME_NOW } : attr->st_mtim;
        if (is_open ? futimens(fd, times) : utimensat(AT_FDCWD, path, times, 0))
            return -1;
    }
    return 0;
}

static void sf_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
                       struct fuse_file_info *fi)
{
    struct node *node = node_of(req, ino);
    char path[64];
    struct stat st;

    if (is_control(req, ino))
        return (void) fuse_reply_err(req, EPERM);
    serve(req, OP_SETATTR);
    proc_path(path, sizeof(path), node->fd);
    if (set_attributes(fi ? (int) fi->fh : node->fd, path, attr, valid, fi != NULL) == -1
        || fstatat(node->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
        return (void) fuse_reply_err(req, errno);
    reply_attr(req, ino, &st);
}

static void sf_readlink(fuse_req_t req, fuse_ino_t ino)
{
    char buf[PATH_MAX + 1];
    ssize_t len;

    serve(req, OP_READLINK);
    len = readlinkat(node_of(req, ino)->fd, "", buf, sizeof(buf));
    if (len == -1)
        return (void) fuse_reply_err(req, errno);
    if (len == sizeof(buf))
        return (void) fuse_reply_err(req, ENAMETOOLONG);
    buf[len] = '\0';
    fuse_reply_readlink(req, buf);
}

static void sf_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct statvfs st;

    serve(req, OP_STATFS);
    if (fstatvfs(fs_of(req)->root.fd, &st) == -1)
        return (void) fuse_reply_err(req, errno);
    (void) ino;
    fuse_reply_statfs(req, &st);
}


/** Operations: directories **/

static void sf_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dir *d;
    int fd;

    serve(req, OP_OPENDIR);
    fd = openat(node_of(req, ino)->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1)
        return (void) fuse_reply_err(req, errno);
    d = calloc(1, sizeof(*d));
    if (!d || !(d->dp = fdopendir(fd))) {
        int err = d ? errno : ENOMEM;
        free(d);
        close(fd);
        return (void) fuse_reply_err(req, err);
    }
    fi->fh = (uintptr_t) d;
    fuse_reply_open(req, fi);
}

static void sf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                       struct fuse_file_info *fi)
{
    struct dir *d = (struct dir *) (uintptr_t) fi->fh;
    char *buf = malloc(size);
    size_t used = 0;
    int err = 0;

    (void) ino;
    serve(req, OP_READDIR);
    if (!buf)
        return (void) fuse_reply_err(req, ENOMEM);
    if (offset != d->offset) {
        seekdir(d->dp, offset);
        d->entry = NULL;
        d->offset = offset;
    }
    for (;;) {
        struct stat st;
        size_t entsize;

        if (!d->entry) {
            errno = 0;
            d->entry = readdir(d->dp);
            if (!d->entry) {
                err = errno;
                break;
            }
        }
        st = (struct stat) { .st_ino = d->entry->d_ino, .st_mode = d->entry->d_type << 12 };
        entsize = fuse_add_direntry(req, buf + used, size - used, d->entry->d_name, &st,
                                    d->entry->d_off);
        if (entsize > size - used)
            break;   // keep d->entry for the next request
        used += entsize;
        d->offset = d->entry->d_off;
        d->entry = NULL;
    }
    // an error after some entries is reported by the next request, which starts with it
    if (err && used == 0)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buf, used);
    free(buf);
}

static void sf_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dir *d = (struct dir *) (uintptr_t) fi->fh;

    (void) ino;
    serve(req, OP_RELEASEDIR);
    closedir(d->dp);
    free(d);
    fuse_reply_err(req, 0);
}


/** Operations: files **/

static void sf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    char path[64];
    int fd;

    if (is_control(req, ino))
        return control_open(req, fi);
    serve(req, OP_OPEN);
    proc_path(path, sizeof(path), node_of(req, ino)->fd);
    fd = open(path, (fi->flags & ~O_NOFOLLOW) | O_CLOEXEC);
    if (fd == -1)
        return (void) fuse_reply_err(req, errno);
    fi->fh = fd;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void sf_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    struct fuse_entry_param e;
    int fd, err;

    serve(req, OP_CREATE);
    fd = openat(node_of(req, parent)->fd, name,
                ((fi->flags | O_CREAT) & ~O_NOFOLLOW) | O_CLOEXEC, mode);
    if (fd == -1)
        return (void) fuse_reply_err(req, errno);
    err = do_lookup(req, parent, name, &e);
    if (err) {
        close(fd);
        return (void) fuse_reply_err(req, err);
    }
    fi->fh = fd;
    fuse_reply_create(req, &e, fi);
}

static void sf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                    struct fuse_file_info *fi)
{
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

    if (is_control(req, ino))
        return control_read(req, size, offset, fi);
    serve(req, OP_READ);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = fi->fh;
    buf.buf[0].pos = offset;
    fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void sf_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
                         struct fuse_file_info *fi)
{
    struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
    ssize_t res;

    (void) ino;
    serve(req, OP_WRITE);
    out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    out.buf[0].fd = fi->fh;
    out.buf[0].pos = off;
    res = fuse_buf_copy(&out, in, 0);
    if (res < 0)
        fuse_reply_err(req, -res);
    else
        fuse_reply_write(req, res);
}

static void sf_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (is_control(req, ino))
        return (void) fuse_reply_err(req, 0);
    serve(req, OP_FLUSH);
    // close a duplicate: reports the backing filesystem's close errors, as close(2) would
    reply_errno(req, close(dup(fi->fh)));
}

static void sf_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void) ino;
    serve(req, OP_FSYNC);
    reply_errno(req, datasync ? fdatasync(fi->fh) : fsync(fi->fh));
}

static void sf_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (is_control(req, ino)) {
        free((void *) (uintptr_t) fi->fh);
        return (void) fuse_reply_err(req, 0);
    }
    serve(req, OP_RELEASE);
    close(fi->fh);
    fuse_reply_err(req, 0);
}

/* Reads of an open file do not ask the server: an NFS client revalidates a file's
 * attributes when it opens it (close-to-open), not at each read; the kernel's
 * auto_inval_data would send a getattr before every read, the timeouts being 0.
 */
static void sf_init(void *userdata, struct fuse_conn_info *conn)
{
    (void) userdata;
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static void sf_destroy(void *userdata)
{
    dump_stats(userdata);
}

static const struct fuse_lowlevel_ops operations = {
    .init = sf_init,
    .destroy = sf_destroy,
    .lookup = sf_lookup,
    .forget = sf_forget,
    .forget_multi = sf_forget_multi,
    .getattr = sf_getattr,
    .setattr = sf_setattr,
    .readlink = sf_readlink,
    .mkdir = sf_mkdir,
    .symlink = sf_symlink,
    .unlink = sf_unlink,
    .rmdir = sf_rmdir,
    .rename = sf_rename,
    .open = sf_open,
    .create = sf_create,
    .read = sf_read,
    .write_buf = sf_write_buf,
    .flush = sf_flush,
    .fsync = sf_fsync,
    .release = sf_release,
    .opendir = sf_opendir,
    .readdir = sf_readdir,
    .releasedir = sf_releasedir,
    .statfs = sf_statfs,
};


/** Main **/

static const struct fuse_opt option_spec[] = {
    { "delay_us=%lu", offsetof(struct options, delay_us), 0 },
    { "stats=%s", offsetof(struct options, stats_path), 0 },
    FUSE_OPT_END
};

/* The first argument that is not an option is the backing directory; the next one, the
 * mount point, is left for fuse_parse_cmdline.
 */
static int take_backing(void *data, const char *arg, int key, struct fuse_args *args)
{
    struct options *opt = data;

    (void) args;
    if (key == FUSE_OPT_KEY_NONOPT && !opt->backing) {
        opt->backing = strdup(arg);
        return 0;
    }
    return 1;
}

static void usage(const char *prog)
{
    printf("usage: %s BACKING MOUNTPOINT [-f] [-o delay_us=N,stats=FILE,...]\n\n", prog);
    fuse_cmdline_help();
    fuse_lowlevel_help();
}

/* The mount options every slowfs gets: the kernel checks permissions from the backing
 * file's modes (the server runs as root, and allow_other lets others in), and names it.
 */
static int add_mount_options(struct fuse_args *args, const char *backing)
{
    char fsname[PATH_MAX + 32];

    snprintf(fsname, sizeof(fsname), "-ofsname=slowfs:%s,subtype=slowfs", backing);
    return fuse_opt_add_arg(args, "-odefault_permissions") || fuse_opt_add_arg(args, fsname);
}

static int run(struct slowfs *fs, struct fuse_args *args, struct fuse_cmdline_opts *cmd)
{
    struct fuse_session *se;
    struct fuse_loop_config *loop;
    pthread_t stats_thread;
    sigset_t usr1;
    int ret = 1;

    se = fuse_session_new(args, &operations, sizeof(operations), fs);
    if (!se)
        return 1;
    if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, cmd->mountpoint) != 0)
        goto out;
    fuse_daemonize(cmd->foreground);
    // after fuse_daemonize, whose fork keeps no thread; before the workers, which inherit
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    if (pthread_create(&stats_thread, NULL, stats_on_sigusr1, fs) == 0)
        pthread_detach(stats_thread);
    prctl(PR_SET_TIMERSLACK, 1UL);   // inherited by the workers: DELAY means DELAY
    loop = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(loop, cmd->clone_fd);
    if (cmd->max_idle_threads != UINT_MAX)   // libfuse 3.14 logs an error for its own default
        fuse_loop_cfg_set_idle_threads(loop, cmd->max_idle_threads);
    fuse_loop_cfg_set_max_threads(loop, cmd->max_threads);
    ret = fuse_session_loop_mt(se, loop);
    fuse_loop_cfg_destroy(loop);
    fuse_session_unmount(se);
out:
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);   // calls sf_destroy: the final counters
    return ret ? 1 : 0;
}

int main(int argc, char *argv[])
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts cmd = { 0 };
    struct slowfs fs = { .opt = { .delay_us = DEFAULT_DELAY_US } };
    int ret = 1;

    umask(0);   // the kernel has applied the caller's umask to create modes already
    // fuse_opt_parse first: it leaves `args` allocated, which fuse_opt_insert_arg needs
    if (fuse_opt_parse(&args, &fs.opt, option_spec, take_backing) != 0
        || fuse_opt_insert_arg(&args, 1, DEFAULT_MAX_THREADS) != 0
        || fuse_parse_cmdline(&args, &cmd) != 0)
        return 1;
    if (cmd.show_help || cmd.show_version) {
        if (cmd.show_help)
            usage(argv[0]);
        else
            fuse_lowlevel_version();
        ret = 0;
        goto out;
    }
    if (!fs.opt.backing || !cmd.mountpoint) {
        usage(argv[0]);
        goto out;
    }
    fs.root.fd = open(fs.opt.backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fs.root.fd == -1) {
        fprintf(stderr, "slowfs: cannot open backing directory %s: %s\n", fs.opt.backing,
                strerror(errno));
        goto out;
    }
    fs.control.fd = -1;
    fs.delay = (struct timespec) { .tv_sec = fs.opt.delay_us / 1000000,
                                   .tv_nsec = (fs.opt.delay_us % 1000000) * 1000 };
    pthread_mutex_init(&fs.server, NULL);
    pthread_mutex_init(&fs.nodes_lock, NULL);
    if (add_mount_options(&args, fs.opt.backing) == 0)
        ret = run(&fs, &args, &cmd);
out:
    free(cmd.mountpoint);
    fuse_opt_free_args(&args);
    return ret;
}
