/* hpcbind-squashfuse: squashfuse_ll's file system, with the kernel told to keep what it has.
 *
 *   hpcbind-squashfuse [-f] [-d] [-o offset=N] IMAGE MOUNTPOINT
 *
 * (squashfuse_ll's command line, as hpcbind/runtime/rootfs.py runs it; MOUNTPOINT is
 * /dev/fd/N, the /dev/fuse descriptor the runtime mounted; -d logs every request.) Every operation is libsquashfuse's
 * own (libsquashfuse-dev); what differs is what the kernel asks for. Under squashfuse_ll each
 * rank of a node costs the one server ~340 requests that can never change an answer, since
 * the image is read-only: an OPEN and a RELEASE for each of the ~120 libraries and MPI
 * components it maps, a READLINK for each symlink on the way (/lib, lib*.so.N), and the
 * component directories' OPENDIR/READDIR/RELEASEDIR. On a node whose ranks busy-poll in
 * MPI_Init every request waits for the server to get a CPU, and the launch falls off a cliff
 * (benchmarks/launch/README.md). Here:
 *   - open and opendir answer ENOSYS, so the kernel stops sending them (FUSE_CAP_NO_OPEN_SUPPORT,
 *     FUSE_CAP_NO_OPENDIR_SUPPORT) and keeps file pages and directory listings cached
 *     (the kernel's no-open default is FOPEN_KEEP_CACHE, plus FOPEN_CACHE_DIR for directories);
 *   - symlink targets are cached in the page cache (FUSE_CAP_CACHE_SYMLINKS).
 * Reads and directory listings then find their inode from the request's inode number
 * instead of a handle made at open.
 *
 * Extended attributes are named here too: libsquashfuse before 0.4 (Debian 12 has 0.1.105)
 * swaps the "trusted." and "security." prefixes (vasi/squashfuse#83), so an image built on
 * an SELinux host listed "trusted.selinux", which no plain user may read, and fuse-overlayfs
 * failed every copy-up from it with ENODATA.
 */
#define FUSE_USE_VERSION 32
#include <errno.h>
#include <fuse3/fuse_lowlevel.h>
#include <squashfuse/ll.h>
#include <squashfuse/xattr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#define CACHED_BLOCKS 64

static void fail(const char *what)
{
    fprintf(stderr, "hpcbind-squashfuse: %s\n", what);
    exit(1);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    unsigned wanted = FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_NO_OPENDIR_SUPPORT
                      | FUSE_CAP_CACHE_SYMLINKS;
    conn->want |= conn->capable & wanted;
}

static void op_no_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    if (fi->flags & (O_WRONLY | O_RDWR))
        fuse_reply_err(req, EROFS);
    else
        fuse_reply_err(req, ENOSYS);
}

/* libsquashfuse's read takes the inode its open left in fi->fh */
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    sqfs_ll_i lli;
    if (sqfs_ll_iget(req, &lli, ino) != SQFS_OK)
        return; /* answered ENOENT */
    struct fuse_file_info handle = *fi;
    handle.fh = (uintptr_t)&lli.inode;
    sqfs_ll_op_read(req, ino, size, off, &handle);
}

/* and its readdir the directory its opendir left there */
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    sqfs_ll_i lli;
    if (sqfs_ll_iget(req, &lli, ino) != SQFS_OK)
        return;
    if (!S_ISDIR(lli.inode.base.mode)) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    struct fuse_file_info handle = *fi;
    handle.fh = (uintptr_t)&lli;
    sqfs_ll_op_readdir(req, ino, size, off, &handle);
}

/* squashfs_fs.h's SQUASHFS_XATTR_USER, _TRUSTED, _SECURITY, as the kernel names them */
static const char *const xattr_prefixes[] = {"user.", "trusted.", "security."};

/* Each of ino's attributes in turn, with its full name in name (at most 255 bytes plus
 * the longest prefix); a callback that returns nonzero stops the walk. */
typedef int (*xattr_visit)(sqfs_xattr *x, const char *name, void *data);

static sqfs_err walk_xattrs(fuse_req_t req, fuse_ino_t ino, xattr_visit visit, void *data)
{
    sqfs_ll_i lli;
    sqfs_xattr x;
    char name[256 + 16];
    if (sqfs_ll_iget(req, &lli, ino) != SQFS_OK)
        return SQFS_ERR; /* answered ENOENT */
    if (sqfs_xattr_open(&lli.ll->fs, &lli.inode, &x) != SQFS_OK)
        goto failed;
    while (x.remain) {
        if (sqfs_xattr_read(&x) != SQFS_OK || x.type >= 3)
            goto failed;
        /* the bare name's length: sqfs_xattr_name_size adds the library's prefix */
        size_t prefix = strlen(xattr_prefixes[x.type]), length = x.entry.size;
        memcpy(name, xattr_prefixes[x.type], prefix);
        if (length > 255 || sqfs_xattr_name(&x, name + prefix, false) != SQFS_OK)
            goto failed;
        name[prefix + length] = '\0';
        if (visit(&x, name, data))
            return SQFS_OK;
    }
    return SQFS_OK;
failed:
    fuse_reply_err(req, EIO);
    return SQFS_ERR;
}

struct name_list { char *buf; size_t size, used; };

static int list_name(sqfs_xattr *x, const char *name, void *data)
{
    (void)x;
    struct name_list *list = data;
    size_t length = strlen(name) + 1;
    if (list->buf && list->used + length <= list->size)
        memcpy(list->buf + list->used, name, length);
    list->used += length;
    return 0;
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    char buf[size ? size : 1];
    struct name_list list = {size ? buf : NULL, size, 0};
    if (walk_xattrs(req, ino, list_name, &list) != SQFS_OK)
        return;
    if (!size)
        fuse_reply_xattr(req, list.used);
    else if (list.used > size)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, buf, list.used);
}

struct wanted { const char *name; fuse_req_t req; size_t size; int answered; };

static int answer_value(sqfs_xattr *x, const char *name, void *data)
{
    struct wanted *wanted = data;
    size_t size;
    if (strcmp(name, wanted->name) != 0)
        return 0;
    wanted->answered = 1;
    if (sqfs_xattr_value_size(x, &size) != SQFS_OK) {
        fuse_reply_err(wanted->req, EIO);
    } else if (!wanted->size) {
        fuse_reply_xattr(wanted->req, size);
    } else if (size > wanted->size) {
        fuse_reply_err(wanted->req, ERANGE);
    } else {
        char value[size ? size : 1];
        if (sqfs_xattr_value(x, value) != SQFS_OK)
            fuse_reply_err(wanted->req, EIO);
        else
            fuse_reply_buf(wanted->req, value, size);
    }
    return 1;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct wanted wanted = {name, req, size, 0};
    if (walk_xattrs(req, ino, answer_value, &wanted) == SQFS_OK && !wanted.answered)
        fuse_reply_err(req, ENODATA);
}

static void op_no_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0); /* nothing was opened */
}

int main(int argc, char **argv)
{
    /* run through /proc/self/fd/N (see rootfs.pin_server), /proc would name it "N" */
    prctl(PR_SET_NAME, "hpcbind-squashfuse", 0, 0, 0);
    const char *image = NULL, *mountpoint = NULL;
    size_t offset = 0;
    char *fuse_argv[] = {argv[0], NULL, NULL};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-f") == 0)
            continue; /* always in the foreground: the runtime watches it */
        if (strcmp(argv[i], "-d") == 0) {
            fuse_argv[1] = "-d";
            continue;
        }
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            char *end;
            if (strncmp(argv[++i], "offset=", 7) != 0)
                fail("only -o offset=N is understood");
            offset = strtoull(argv[i] + 7, &end, 10);
            if (*end)
                fail("-o offset=N takes a number of bytes");
        } else if (!image) {
            image = argv[i];
        } else if (!mountpoint) {
            mountpoint = argv[i];
        } else {
            fail("usage: hpcbind-squashfuse [-f] [-d] [-o offset=N] IMAGE MOUNTPOINT");
        }
    }
    if (!mountpoint)
        fail("usage: hpcbind-squashfuse [-f] [-d] [-o offset=N] IMAGE MOUNTPOINT");

    sqfs_ll *ll = sqfs_ll_open(image, offset);
    if (!ll)
        fail("can't open the image's squashfs");
    /* libsquashfuse keeps 1 decompressed data block and 3 fragment blocks: a kernel read
     * that straddles two blocks, or small files packed in one fragment block, decompress
     * the same block again and again. 64 of each (at most 16 MiB) took a 16-rank
     * mpi-hello launch from 0.73 s to 0.68 s here (benchmarks/launch/README.md). */
    sqfs_cache_destroy(&ll->fs.data_cache);
    sqfs_cache_destroy(&ll->fs.frag_cache);
    if (sqfs_block_cache_init(&ll->fs.data_cache, CACHED_BLOCKS) != SQFS_OK
        || sqfs_block_cache_init(&ll->fs.frag_cache, CACHED_BLOCKS) != SQFS_OK)
        fail("out of memory for the block caches");

    struct fuse_lowlevel_ops ops = {
        .init = op_init,
        .lookup = sqfs_ll_op_lookup,
        .forget = sqfs_ll_op_forget,
        .getattr = sqfs_ll_op_getattr,
        .readlink = sqfs_ll_op_readlink,
        .open = op_no_open,
        .read = op_read,
        .release = op_no_release,
        .opendir = op_no_open,
        .readdir = op_readdir,
        .releasedir = op_no_release,
        .statfs = stfs_ll_op_statfs,
        .getxattr = op_getxattr,
        .listxattr = op_listxattr,
    };
    struct fuse_args args = FUSE_ARGS_INIT(fuse_argv[1] ? 2 : 1, fuse_argv);
    struct fuse_session *session = fuse_session_new(&args, &ops, sizeof ops, ll);
    if (!session)
        fail("can't start a FUSE session");
    if (fuse_set_signal_handlers(session) != 0 || fuse_session_mount(session, mountpoint) != 0)
        fail("can't serve the mount point");
    /* one thread: after a rank or two, the kernel answers nearly everything itself */
    int status = fuse_session_loop(session);
    fuse_session_unmount(session);
    fuse_remove_signal_handlers(session);
    fuse_session_destroy(session);
    sqfs_ll_destroy(ll);
    return status < 0 ? 1 : 0;
}
