/* rawtrack - the file backend: regular files and block devices.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: one file descriptor per backend (always O_CLOEXEC) and the ladder
 * of kernel interfaces tried for zero and trim, after nbdkit's file plugin:
 *
 *   zero   PUNCH_HOLE|KEEP_SIZE (only with MAY_TRIM)
 *          -> ZERO_RANGE -> BLKZEROOUT (block devices)
 *          -> pwrite from a zero buffer (refused with FAST_ZERO)
 *   trim   PUNCH_HOLE|KEEP_SIZE (regular files), BLKDISCARD (block devices)
 *
 * lock is io-file-lock.c's (QEMU's lock bytes).
 *
 * What may be opened (file_admit): a regular file or a block device, not
 * on a pseudo file system (pseudo_fs below: procfs, sysfs and the other
 * file systems whose "files" are kernel or process state - /proc/self/mem
 * reads and writes our own memory).  The rule is a deny list of f_type
 * values, not an allow list, so that every storage file system (local,
 * network, FUSE, tmpfs) keeps working.  Open sequence, so that nothing is
 * opened for I/O before it is vetted: open the name with O_PATH (no
 * side effects: a FIFO does not block, a device driver's open is not
 * called), fstat and fstatfs that; then open it for I/O with O_NONBLOCK |
 * O_NOCTTY, check that the same inode was opened (else the name changed
 * under us: refused), and clear O_NONBLOCK.  RAWTRACK_IO_NO_DEVICE
 * refuses block devices as well (data-file names read from an image).
 * pwrite_batch goes to io-file-aio.c (direct I/O on a second descriptor,
 * all ranges submitted at once) when the kernel allows it for this file,
 * else one pwrite per range.
 *
 * Locking: none here (io-file-aio.c serialises its own batches; the pointer
 * to it is set once, by compare-and-swap).  Data moves with pread/pwrite on
 * the fd, which several threads may issue at once.  extent uses lseek, which
 * moves the shared file position, but nothing here reads that position.
 * What the backend learns about the kernel ("this fallocate mode is not
 * supported") lives in bool flags read and cleared with atomics; they only
 * go from true to false, so a race costs one extra ENOTSUP syscall at worst.
 *
 * Invariants:
 *  1. A read-only backend issues no modifying syscall: every write path
 *     fails with EROFS before touching the fd.
 *  2. Everything handed to the kernel fits in off_t: offset + count above
 *     INT64_MAX is EINVAL (no file can be that large, so nothing valid is
 *     refused).
 *  3. Nothing is written past the end of a block device: that is ENOSPC,
 *     raised before any syscall, so a failed write has no partial effect.
 *  4. A zero reaching past the end of a regular file extends it exactly as
 *     a write would, and never shrinks it (no fstat + ftruncate race with a
 *     concurrent extending write).
 *  5. Callers see ENOTSUP, never EOPNOTSUPP or ENOTTY, for "not supported".
 */
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <linux/fs.h>
#include <linux/magic.h>

#include "internal.h"
#include "arith.h"
#include "io-file-aio.h"
#include "io-file-lock.h"

/* Largest single pread/pwrite (Linux transfers at most 0x7ffff000). */
#define MAX_IO (UINT64_C (1) << 30)
/* Zero-writing fallback chunk; the buffer is aligned for O_DIRECT. */
#define ZERO_BUF_SIZE (64 * 1024)

#define KNOWN_FLAGS (RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE | \
                     RAWTRACK_IO_EXCL | RAWTRACK_IO_DIRECT | \
                     RAWTRACK_IO_DSYNC | RAWTRACK_IO_NO_DEVICE)

/* Never written: .bss rather than 64 KiB of .rodata. */
static uint8_t zero_buf[ZERO_BUF_SIZE] __attribute__ ((aligned (4096)));

struct file_io {
  struct rawtrack_io io;        /* must be first */
  int fd;
  bool readonly;                /* opened without RAWTRACK_IO_RDWR */
  bool is_blockdev;             /* S_ISBLK at open */
  bool dsync;                   /* O_DSYNC: every write is already durable */
  bool direct;                  /* O_DIRECT: I/O must be aligned */
  uint32_t sector_size;         /* logical sector; 512 for regular files */
  uint32_t align;               /* minimum I/O size: 1, or the O_DIRECT unit */
  uint32_t preferred;           /* st_blksize */
  uint64_t bdev_size;           /* block devices: size, atomic */

  /* Learned capabilities: start true, cleared on ENOTSUP (atomics). */
  bool can_punch;               /* fallocate PUNCH_HOLE|KEEP_SIZE */
  bool can_zero_range;          /* fallocate ZERO_RANGE */
  bool can_zeroout;             /* ioctl BLKZEROOUT */
  bool can_discard;             /* ioctl BLKDISCARD */
  bool can_extents;             /* lseek SEEK_DATA/SEEK_HOLE */

  /* pwrite_batch's direct-I/O writer (io-file-aio.c), made on first use:
   * set once with a compare-and-swap; aio_off once it cannot be made. */
  struct file_aio *aio;
  bool aio_off;
};

static bool
learned (const bool *flag)
{
  return __atomic_load_n (flag, __ATOMIC_RELAXED);
}

static void
unlearn (bool *flag)
{
  __atomic_store_n (flag, false, __ATOMIC_RELAXED);
}

/* Invariant 5: fold the kernel's "not supported" spellings into ENOTSUP. */
static bool
normalize_enotsup (void)
{
  if (errno == EOPNOTSUPP || errno == ENOTSUP || errno == ENOTTY ||
      errno == ENODEV) {
    errno = ENOTSUP;
    return true;
  }
  return false;
}

/* Invariant 2. */
static int
check_range (uint64_t offset, uint64_t count)
{
  if (offset > INT64_MAX || count > INT64_MAX - offset) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

static int64_t
file_get_size (struct rawtrack_io *io)
{
  struct file_io *f = (struct file_io *) io;
  struct stat st;

  if (f->is_blockdev) {
    uint64_t size;

    if (ioctl (f->fd, BLKGETSIZE64, &size) == -1)
      return -1;
    if (size > INT64_MAX) {
      errno = EOVERFLOW;
      return -1;
    }
    __atomic_store_n (&f->bdev_size, size, __ATOMIC_RELAXED);
    return (int64_t) size;
  }
  if (fstat (f->fd, &st) == -1)
    return -1;
  return st.st_size;
}

/* Common checks of every modifying method (invariants 1-3). */
static int
check_write (struct file_io *f, uint64_t count, uint64_t offset)
{
  if (f->readonly) {
    errno = EROFS;
    return -1;
  }
  if (check_range (offset, count) == -1)
    return -1;
  if (f->is_blockdev &&
      offset + count > __atomic_load_n (&f->bdev_size, __ATOMIC_RELAXED)) {
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

static int
file_pread (struct rawtrack_io *io, void *buf, uint64_t count,
            uint64_t offset)
{
  struct file_io *f = (struct file_io *) io;
  uint8_t *p = buf;

  if (check_range (offset, count) == -1)
    return -1;
  while (count > 0) {
    uint64_t n = MIN (count, MAX_IO);
    ssize_t r = pread (f->fd, p, n, (off_t) offset);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    /* End of file: the rest reads as zeros.  With O_DIRECT a short read
     * also means end of file, and retrying at the unaligned remainder
     * would fail with EINVAL. */
    if (r == 0 || (f->direct && (uint64_t) r < n)) {
      memset (p + r, 0, count - r);
      break;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* pwrite everything or fail; a zero-byte result is treated as ENOSPC. */
static int
write_all (struct file_io *f, const void *buf, uint64_t count,
           uint64_t offset)
{
  const uint8_t *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (f->fd, p, MIN (count, MAX_IO), (off_t) offset);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {
      errno = ENOSPC;
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

/* FUA is emulated with fdatasync unless every write is already O_DSYNC. */
static int
sync_after (struct file_io *f, unsigned flags)
{
  if ((flags & RAWTRACK_IO_FUA) && !f->dsync)
    return fdatasync (f->fd);
  return 0;
}

static int
file_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
             uint64_t offset, unsigned flags)
{
  struct file_io *f = (struct file_io *) io;

  if (check_write (f, count, offset) == -1)
    return -1;
  if (write_all (f, buf, count, offset) == -1)
    return -1;
  return sync_after (f, flags);
}

/* The batch writer, made on first use by whichever thread gets there. */
static struct file_aio *
get_aio (struct file_io *f)
{
  struct file_aio *a = __atomic_load_n (&f->aio, __ATOMIC_ACQUIRE), *none = NULL;

  if (a || __atomic_load_n (&f->aio_off, __ATOMIC_RELAXED))
    return a;
  a = getenv ("RAWTRACK_NO_AIO") ? NULL
      : file_aio_new (f->fd, f->direct, f->dsync, f->direct ? f->align : 512);
  if (a == NULL) {
    __atomic_store_n (&f->aio_off, true, __ATOMIC_RELAXED);
    return NULL;
  }
  if (!__atomic_compare_exchange_n (&f->aio, &none, a, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    file_aio_free (a);
    return none;
  }
  return a;
}

/* Direct I/O through io-file-aio.c when the kernel allows it here, else
 * one buffered pwrite per range (the rewrite is harmless if a refused
 * batch got partly written: same bytes). */
static int
file_pwrite_batch (struct rawtrack_io *io, const struct rawtrack_io_vec *v,
                   size_t n)
{
  struct file_io *f = (struct file_io *) io;
  struct file_aio *a;
  size_t i;

  for (i = 0; i < n; i++)
    if (check_write (f, v[i].count, v[i].offset) == -1)
      return -1;
  a = n > 1 ? get_aio (f) : NULL;
  if (a) {
    int r = file_aio_write (a, v, n);

    if (r <= 0)
      return r;
  }
  for (i = 0; i < n; i++)
    if (write_all (f, v[i].buf, v[i].count, v[i].offset) == -1)
      return -1;
  return 0;
}

static int
file_flush (struct rawtrack_io *io)
{
  struct file_io *f = (struct file_io *) io;

  return fdatasync (f->fd);
}

static int
do_fallocate (struct file_io *f, int mode, uint64_t offset, uint64_t count)
{
  int r;

  do
    r = fallocate (f->fd, mode, (off_t) offset, (off_t) count);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    normalize_enotsup ();
  return r;
}

/* Invariant 4: after a KEEP_SIZE punch, make a regular file reach end as a
 * write ending there would.  The last byte (with O_DIRECT, the last
 * aligned unit) of the zeroed range is written as zeros, which changes
 * nothing a reader sees and, unlike ftruncate, can never shrink the file. */
static int
extend_to (struct file_io *f, uint64_t offset, uint64_t end)
{
  struct stat st;
  uint64_t len = MIN ((uint64_t) f->align, end - offset);

  if (fstat (f->fd, &st) == -1)
    return -1;
  if ((uint64_t) st.st_size >= end)
    return 0;
  return write_all (f, zero_buf, len, end - len);
}

/* Try the efficient ways to zero, in order.  Returns 0 once the range
 * reads as zeros (and a regular file reaches its end), -1 with ENOTSUP if
 * no method applies, -1 with another errno on a real failure. */
static int
zero_fast (struct file_io *f, uint64_t count, uint64_t offset,
           unsigned flags)
{
  /* The kernel refuses fallocate on a block device with EINVAL unless the
   * range is sector-aligned; such a range goes straight to the fallback. */
  if (f->is_blockdev && !IS_ALIGNED (offset | count, f->sector_size)) {
    errno = ENOTSUP;
    return -1;
  }

  /* Punching may deallocate, which only MAY_TRIM allows.  On a block
   * device the kernel implements it without a zero-writing fallback, and
   * on a regular file a hole always reads as zeros. */
  if ((flags & RAWTRACK_IO_MAY_TRIM) && learned (&f->can_punch)) {
    if (do_fallocate (f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      offset, count) == 0)
      return f->is_blockdev ? 0 : extend_to (f, offset, offset + count);
    if (errno != ENOTSUP)
      return -1;
    unlearn (&f->can_punch);
  }

  /* Without KEEP_SIZE, ZERO_RANGE extends a regular file itself. */
  if (learned (&f->can_zero_range)) {
    if (do_fallocate (f, FALLOC_FL_ZERO_RANGE, offset, count) == 0)
      return 0;
    if (errno != ENOTSUP)
      return -1;
    unlearn (&f->can_zero_range);
  }

#ifdef BLKZEROOUT
  if (f->is_blockdev && learned (&f->can_zeroout)) {
    uint64_t range[2] = { offset, count };

    if (ioctl (f->fd, BLKZEROOUT, range) == 0)
      return 0;
    if (!normalize_enotsup ())
      return -1;
    unlearn (&f->can_zeroout);
  }
#endif

  errno = ENOTSUP;
  return -1;
}

static int
write_zeros (struct file_io *f, uint64_t count, uint64_t offset)
{
  while (count > 0) {
    uint64_t n = MIN (count, (uint64_t) ZERO_BUF_SIZE);

    if (write_all (f, zero_buf, n, offset) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

static int
file_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct file_io *f = (struct file_io *) io;

  if (check_write (f, count, offset) == -1)
    return -1;
  if (count == 0)
    return 0;

  if (zero_fast (f, count, offset, flags) == -1) {
    if (errno != ENOTSUP)
      return -1;
    if (flags & RAWTRACK_IO_FAST_ZERO)
      return -1;                /* errno is ENOTSUP */
    if (write_zeros (f, count, offset) == -1)
      return -1;
  }
  return sync_after (f, flags);
}

static int
file_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  struct file_io *f = (struct file_io *) io;

  if (f->readonly) {
    errno = EROFS;
    return -1;
  }
  if (check_range (offset, count) == -1)
    return -1;
  if (count == 0)
    return 0;

  if (f->is_blockdev) {
#ifdef BLKDISCARD
    uint64_t size = __atomic_load_n (&f->bdev_size, __ATOMIC_RELAXED);
    uint64_t start, end;
    uint64_t range[2];

    /* Trim is advisory: discard only the whole sectors inside the part
     * of the range that lies on the device. */
    end = ROUND_DOWN (MIN (offset + count, size), (uint64_t) f->sector_size);
    start = ROUND_UP (offset, (uint64_t) f->sector_size);
    if (start >= end)
      return 0;
    if (!learned (&f->can_discard)) {
      errno = ENOTSUP;
      return -1;
    }
    range[0] = start;
    range[1] = end - start;
    if (ioctl (f->fd, BLKDISCARD, range) == 0)
      return 0;
    if (normalize_enotsup ())
      unlearn (&f->can_discard);
    return -1;
#else
    errno = ENOTSUP;
    return -1;
#endif
  }

  if (!learned (&f->can_punch)) {
    errno = ENOTSUP;
    return -1;
  }
  if (do_fallocate (f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    offset, count) == 0)
    return 0;
  if (errno == ENOTSUP)
    unlearn (&f->can_punch);
  return -1;
}

static int
file_truncate (struct rawtrack_io *io, uint64_t size)
{
  struct file_io *f = (struct file_io *) io;
  int r;

  if (f->readonly) {
    errno = EROFS;
    return -1;
  }
  if (f->is_blockdev) {
    errno = ENOTSUP;
    return -1;
  }
  if (size > INT64_MAX) {
    errno = EINVAL;
    return -1;
  }
  do
    r = ftruncate (f->fd, (off_t) size);
  while (r == -1 && errno == EINTR);
  return r;
}

static void
file_close (struct rawtrack_io *io)
{
  struct file_io *f = (struct file_io *) io;

  /* Durability is flush's job; an error from close is not actionable. */
  file_aio_free (f->aio);
  close (f->fd);
  free (f);
}

static unsigned
file_caps (struct rawtrack_io *io)
{
  struct file_io *f = (struct file_io *) io;
  unsigned caps = 0;

  if (f->is_blockdev)
    caps |= RAWTRACK_IO_IS_BLOCKDEV;
  else if (learned (&f->can_extents))
    caps |= RAWTRACK_IO_CAN_EXTENTS;
  if (f->readonly)
    return caps;

  caps |= RAWTRACK_IO_CAN_WRITE;
  if (f->dsync)
    caps |= RAWTRACK_IO_CAN_FUA;
  if (f->is_blockdev) {
    if (learned (&f->can_zero_range) || learned (&f->can_zeroout))
      caps |= RAWTRACK_IO_CAN_ZERO;
    if (learned (&f->can_discard))
      caps |= RAWTRACK_IO_CAN_TRIM;
  }
  else {
    caps |= RAWTRACK_IO_CAN_TRUNCATE;
    if (learned (&f->can_zero_range))
      caps |= RAWTRACK_IO_CAN_ZERO;
    if (learned (&f->can_punch))
      caps |= RAWTRACK_IO_CAN_TRIM;
  }
  return caps;
}

static int
file_block_size (struct rawtrack_io *io, uint32_t *minimum,
                 uint32_t *preferred, uint32_t *maximum)
{
  struct file_io *f = (struct file_io *) io;

  *minimum = f->align;
  *preferred = MAX (f->preferred, f->align);
  *maximum = UINT32_MAX;
  return 0;
}

static int64_t
file_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
             int *is_data)
{
  struct file_io *f = (struct file_io *) io;
  off_t data, hole;

  if (check_range (offset, count) == -1)
    return -1;
  if (count == 0) {
    errno = EINVAL;
    return -1;
  }
  if (f->is_blockdev || !learned (&f->can_extents)) {
    *is_data = 1;
    return (int64_t) count;
  }

  data = lseek (f->fd, (off_t) offset, SEEK_DATA);
  if (data == -1) {
    /* ENXIO: no data at or after offset, so a hole up to the end of the
     * file and zeros past it. */
    if (errno == ENXIO) {
      *is_data = 0;
      return (int64_t) count;
    }
    if (errno == EINVAL || normalize_enotsup ()) {
      unlearn (&f->can_extents);
      *is_data = 1;
      return (int64_t) count;
    }
    return -1;
  }
  if ((uint64_t) data > offset) {
    *is_data = 0;
    return (int64_t) MIN ((uint64_t) data - offset, count);
  }

  hole = lseek (f->fd, (off_t) offset, SEEK_HOLE);
  if (hole == -1) {
    /* The file shrank below offset since SEEK_DATA: now past the end. */
    if (errno == ENXIO) {
      *is_data = 0;
      return (int64_t) count;
    }
    return -1;
  }
  *is_data = 1;
  /* A concurrent change can leave hole <= offset; "data" is always a
   * safe answer. */
  if ((uint64_t) hole <= offset)
    return (int64_t) count;
  return (int64_t) MIN ((uint64_t) hole - offset, count);
}

/* O_DIRECT I/O must be aligned, which sendfile and splice do not promise. */
static int
file_raw_fd (struct rawtrack_io *io)
{
  struct file_io *f = (struct file_io *) io;

  return f->direct ? -1 : f->fd;
}

static int
file_lock (struct rawtrack_io *io, unsigned perm, unsigned deny)
{
  struct file_io *f = (struct file_io *) io;

  return file_lock_fd (f->fd, perm, deny);
}

static const struct rawtrack_io_ops file_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "file",
  .pread = file_pread,
  .pwrite = file_pwrite,
  .flush = file_flush,
  .zero = file_zero,
  .trim = file_trim,
  .get_size = file_get_size,
  .truncate = file_truncate,
  .close = file_close,
  .caps = file_caps,
  .block_size = file_block_size,
  .extent = file_extent,
  .raw_fd = file_raw_fd,
  .pwrite_batch = file_pwrite_batch,
  .lock = file_lock,
};

/* Fill in what fstat and the block-device ioctls say about the open fd.
 * Returns -1 with errno set. */
static int
probe (struct file_io *f, const struct stat *st)
{
  uint32_t blksize = st->st_blksize > 0 && st->st_blksize <= (1 << 24)
    ? (uint32_t) st->st_blksize : 4096;

  f->preferred = blksize;
  f->sector_size = 512;

  if (S_ISBLK (st->st_mode)) {
    int ssz;
    uint64_t size;

    f->is_blockdev = true;
    if (ioctl (f->fd, BLKSSZGET, &ssz) == -1)
      return -1;
    if (ssz >= 512 && ssz <= 65536 && is_power_of_2 ((uint64_t) ssz))
      f->sector_size = (uint32_t) ssz;
    if (ioctl (f->fd, BLKGETSIZE64, &size) == -1)
      return -1;
    f->bdev_size = size;
    f->align = f->direct ? f->sector_size : 1;
    f->can_extents = false;
  }
  else {
    /* Linux's generic lseek treats every file as one data run, so EINVAL
     * here means an unusual filesystem; ENXIO (empty file) is fine. */
    f->can_extents = lseek (f->fd, 0, SEEK_DATA) != -1 || errno == ENXIO;
    /* O_DIRECT alignment on a filesystem is at most its block size. */
    f->align = f->direct ? blksize : 1;
  }
  return 0;
}

/* Pseudo file systems: their files are views of kernel or process state,
 * never a disk.  (Some magic numbers are missing from older headers.) */
static const struct {
  unsigned long magic;
  const char *name;
} pseudo_fs[] = {
  { 0x9fa0, "proc" },                   /* PROC_SUPER_MAGIC */
  { 0x62656572, "sysfs" },              /* SYSFS_MAGIC */
  { 0x64626720, "debugfs" },            /* DEBUGFS_MAGIC */
  { 0x74726163, "tracefs" },            /* TRACEFS_MAGIC */
  { 0x27e0eb, "cgroup" },               /* CGROUP_SUPER_MAGIC */
  { 0x63677270, "cgroup2" },            /* CGROUP2_SUPER_MAGIC */
  { 0x73636673, "securityfs" },         /* SECURITYFS_MAGIC */
  { 0xf97cff8c, "selinuxfs" },          /* SELINUX_MAGIC */
  { 0x43415d53, "smackfs" },            /* SMACK_MAGIC */
  { 0x6165676c, "pstore" },             /* PSTOREFS_MAGIC */
  { 0xde5e81e4, "efivarfs" },           /* EFIVARFS_MAGIC */
  { 0xcafe4a11, "bpf" },                /* BPF_FS_MAGIC */
  { 0x62656570, "configfs" },           /* CONFIGFS_MAGIC */
  { 0x65735543, "fusectl" },            /* FUSE_CTL_SUPER_MAGIC */
  { 0x1cd1, "devpts" },                 /* DEVPTS_SUPER_MAGIC */
  { 0x42494e4d, "binfmt_misc" },        /* BINFMTFS_MAGIC */
  { 0x6e736673, "nsfs" },               /* NSFS_MAGIC */
  { 0x09041934, "anon_inodefs" },       /* ANON_INODE_FS_MAGIC */
  { 0x50495045, "pipefs" },             /* PIPEFS_MAGIC */
  { 0x534f434b, "sockfs" },             /* SOCKFS_MAGIC */
  { 0x19800202, "mqueue" },             /* MQUEUE_MAGIC */
  { 0x67596969, "rpc_pipefs" },         /* RPCAUTH_GSSMAGIC */
  { 0x6e667364, "nfsd" },               /* NFSD_MAGIC */
  { 0x9fa2, "usbdevfs" },               /* USBDEVICE_SUPER_MAGIC */
  { 0x62646576, "bdev" },               /* BDEVFS_MAGIC */
};

static const char *
file_type_name (mode_t mode)
{
  if (S_ISDIR (mode)) return "a directory";
  if (S_ISFIFO (mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK (mode)) return "a socket";
  if (S_ISCHR (mode)) return "a character device";
  if (S_ISLNK (mode)) return "a symbolic link";
  return "not a regular file or block device";
}

/* May this be opened as a disk?  fd may be an O_PATH descriptor.  Returns
 * 0, or -1 with the rawtrack error set. */
static int
file_admit (int fd, const struct stat *st, const char *path, unsigned flags)
{
  struct statfs sfs;
  size_t i;

  if (!S_ISREG (st->st_mode) && !S_ISBLK (st->st_mode))
    return set_error (S_ISDIR (st->st_mode) ? EISDIR : EINVAL,
                      "%s: %s: refusing it (only a regular file or a block "
                      "device can hold a disk)", path,
                      file_type_name (st->st_mode));
  if (S_ISBLK (st->st_mode) && (flags & RAWTRACK_IO_NO_DEVICE))
    return set_error (EPERM, "%s: a block device named by the image, not "
                      "by you: refusing it (name it yourself with "
                      "--data-file, or allow it with --allow-device)", path);
  if (fstatfs (fd, &sfs) == -1)
    return set_error (errno, "%s: fstatfs: %s", path, strerror (errno));
  for (i = 0; i < sizeof pseudo_fs / sizeof pseudo_fs[0]; i++)
    if ((unsigned long) sfs.f_type == pseudo_fs[i].magic)
      return set_error (EPERM, "%s: on the %s pseudo file system (kernel or "
                        "process state, not storage): refusing it", path,
                        pseudo_fs[i].name);
  return 0;
}

/* The O_PATH stage of the open sequence (see the note at the top):
 * 0 vetted (*st filled), 1 does not exist and may be created, -1 error. */
static int
file_vet_name (const char *path, unsigned flags, struct stat *st)
{
  int pfd, r;

  do
    pfd = open (path, O_PATH | O_CLOEXEC);
  while (pfd == -1 && errno == EINTR);
  if (pfd == -1) {
    if (errno == ENOENT && (flags & RAWTRACK_IO_CREATE))
      return 1;
    return set_error (errno, "%s: %s", path, strerror (errno));
  }
  if (fstat (pfd, st) == -1)
    r = set_error (errno, "%s: %s", path, strerror (errno));
  else
    r = file_admit (pfd, st, path, flags);
  close (pfd);
  return r;
}

RAWTRACK_API struct rawtrack_io *
rawtrack_io_file_open (const char *path, unsigned flags)
{
  struct file_io *f;
  struct stat st;
  struct stat vetted;
  int oflags = O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  int fd, saved, v;

  if (path == NULL) {
    rt_set_error (EINVAL, "rawtrack_io_file_open: path is NULL");
    return NULL;
  }
  if ((flags & ~KNOWN_FLAGS) ||
      ((flags & RAWTRACK_IO_CREATE) && !(flags & RAWTRACK_IO_RDWR)) ||
      ((flags & RAWTRACK_IO_EXCL) && !(flags & RAWTRACK_IO_CREATE))) {
    rt_set_error (EINVAL, "%s: invalid open flags 0x%x", path, flags);
    return NULL;
  }

  oflags |= (flags & RAWTRACK_IO_RDWR) ? O_RDWR : O_RDONLY;
  if (flags & RAWTRACK_IO_CREATE)
    oflags |= O_CREAT;
  if (flags & RAWTRACK_IO_EXCL)
    oflags |= O_EXCL;
  if (flags & RAWTRACK_IO_DIRECT)
    oflags |= O_DIRECT;
  if (flags & RAWTRACK_IO_DSYNC)
    oflags |= O_DSYNC;

  v = file_vet_name (path, flags, &vetted);
  if (v == -1)
    return NULL;
  do
    fd = open (path, oflags, 0644);
  while (fd == -1 && errno == EINTR);
  if (fd == -1) {
    rt_set_error (errno, "%s: %s", path, strerror (errno));
    return NULL;
  }
  if (fstat (fd, &st) == -1) {
    saved = errno;
    goto fail;
  }
  if ((v == 0 && (st.st_dev != vetted.st_dev || st.st_ino != vetted.st_ino))) {
    rt_set_error (EAGAIN, "%s: the name changed while it was being opened; "
                  "refusing it", path);
    close (fd);
    return NULL;
  }
  if (file_admit (fd, &st, path, flags) == -1) {
    close (fd);
    return NULL;
  }
  if (fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    saved = errno;
    goto fail;
  }

  f = rt_calloc (1, sizeof *f);
  if (f == NULL) {
    rt_prefix_error ("%s: ", path);
    close (fd);
    return NULL;
  }
  f->io.ops = &file_ops;
  f->fd = fd;
  f->readonly = !(flags & RAWTRACK_IO_RDWR);
  f->direct = flags & RAWTRACK_IO_DIRECT;
  f->dsync = flags & RAWTRACK_IO_DSYNC;
  f->can_punch = f->can_zero_range = f->can_zeroout = f->can_discard = true;
  if (probe (f, &st) == -1) {
    saved = errno;
    free (f);
    goto fail;
  }
  return &f->io;

 fail:
  rt_set_error (saved, "%s: %s", path, strerror (saved));
  close (fd);
  return NULL;
}
