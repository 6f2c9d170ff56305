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
 */
#define FUSE_USE_VERSION 32
#include <errno.h>
#include <fuse3/fuse_lowlevel.h>
#include <squashfuse/ll.h>
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
        .getxattr = sqfs_ll_op_getxattr,
        .listxattr = sqfs_ll_op_listxattr,
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
