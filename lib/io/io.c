/* rawtrack - generic I/O backend entry points.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the calls into a backend.  io_op_* check the ops table's
 * struct_size before calling a method (a method past the size the backend
 * was built with, or NULL, is ENOTSUP - EROFS for pwrite) and report
 * through errno only: the library and the shims call backends with them.
 * The public rawtrack_io_* wrappers add the thread's message (naming the
 * backend, the operation and the range) on failure, as every rawtrack_*
 * function does; io_read/io_write/io_flush give the library's messages,
 * which name the structure being accessed.
 * Locking: none; backends state their own thread model.
 */
#include <string.h>
#include <errno.h>
#include <stddef.h>
#include <inttypes.h>

#include "internal.h"

#define HAS(io, m) \
  ((io)->ops->struct_size >= offsetof (struct rawtrack_io_ops, m) + \
   sizeof ((io)->ops->m) && (io)->ops->m != NULL)

/* ---- the calls, errno only (the library's own and the shims' use) ---- */

int
io_op_pread (struct rawtrack_io *io, void *buf, uint64_t count,
             uint64_t offset)
{
  if (!HAS (io, pread)) { errno = ENOTSUP; return -1; }
  return io->ops->pread (io, buf, count, offset);
}

int
io_op_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
              uint64_t offset, unsigned flags)
{
  if (!HAS (io, pwrite)) { errno = EROFS; return -1; }
  return io->ops->pwrite (io, buf, count, offset, flags);
}

/* A backend without flush cannot make anything durable: ENOTSUP, so that
 * nobody (safe-mode tracking, FUA, close) promises durability. */
int
io_op_flush (struct rawtrack_io *io)
{
  if (!HAS (io, flush)) { errno = ENOTSUP; return -1; }
  return io->ops->flush (io);
}

bool
io_can_flush (struct rawtrack_io *io)
{
  return HAS (io, flush);
}

int
io_op_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
            unsigned flags)
{
  if (!HAS (io, zero)) { errno = ENOTSUP; return -1; }
  return io->ops->zero (io, count, offset, flags);
}

int
io_op_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  if (!HAS (io, trim)) { errno = ENOTSUP; return -1; }
  return io->ops->trim (io, count, offset);
}

int64_t
io_op_get_size (struct rawtrack_io *io)
{
  if (!HAS (io, get_size)) { errno = ENOTSUP; return -1; }
  return io->ops->get_size (io);
}

int
io_op_truncate (struct rawtrack_io *io, uint64_t size)
{
  if (!HAS (io, truncate)) { errno = ENOTSUP; return -1; }
  return io->ops->truncate (io, size);
}

int64_t
io_op_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
              int *is_data)
{
  if (!HAS (io, extent)) {
    *is_data = 1;
    return (int64_t) count;
  }
  return io->ops->extent (io, offset, count, is_data);
}

int
io_op_pwrite_batch (struct rawtrack_io *io, const struct rawtrack_io_vec *v,
                    size_t n)
{
  size_t i;

  if (HAS (io, pwrite_batch))
    return io->ops->pwrite_batch (io, v, n);
  for (i = 0; i < n; i++)
    if (io_op_pwrite (io, v[i].buf, v[i].count, v[i].offset, 0) == -1)
      return -1;
  return 0;
}

int
io_op_lock (struct rawtrack_io *io, unsigned perm, unsigned deny)
{
  if (!HAS (io, lock))
    return 0;
  return io->ops->lock (io, perm, deny);
}

/* ---- the public wrappers: the same, plus the thread's message --------- */

static const char *
backend_name (struct rawtrack_io *io)
{
  return io->ops->name ? io->ops->name : "I/O";
}

/* Record errno (EIO if a backend forgot to set it) as the message. */
static int
fail_range (struct rawtrack_io *io, const char *op, uint64_t count,
            uint64_t offset)
{
  int e = errno ? errno : EIO;

  return rt_set_error (e, "%s backend: %s of %" PRIu64 " bytes at offset %"
                       PRIu64 ": %s", backend_name (io), op, count, offset,
                       strerror (e));
}

static int
fail_op (struct rawtrack_io *io, const char *op)
{
  int e = errno ? errno : EIO;

  return rt_set_error (e, "%s backend: %s: %s", backend_name (io), op,
                       strerror (e));
}

RAWTRACK_API int
rawtrack_io_pread (struct rawtrack_io *io, void *buf, uint64_t count,
                   uint64_t offset)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_pread (io, buf, count, offset) == -1)
    return fail_range (io, "read", count, offset);
  return 0;
}

RAWTRACK_API int
rawtrack_io_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
                    uint64_t offset, unsigned flags)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_pwrite (io, buf, count, offset, flags) == -1)
    return fail_range (io, "write", count, offset);
  return 0;
}

RAWTRACK_API int
rawtrack_io_flush (struct rawtrack_io *io)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_flush (io) == -1) {
    if (!HAS (io, flush))
      return rt_set_error (ENOTSUP, "%s backend: no flush method: nothing "
                           "written through it can be made durable",
                           backend_name (io));
    return fail_op (io, "flush");
  }
  return 0;
}

RAWTRACK_API int
rawtrack_io_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
                  unsigned flags)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_zero (io, count, offset, flags) == -1)
    return fail_range (io, "write zeroes", count, offset);
  return 0;
}

RAWTRACK_API int
rawtrack_io_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_trim (io, count, offset) == -1)
    return fail_range (io, "trim", count, offset);
  return 0;
}

RAWTRACK_API int64_t
rawtrack_io_get_size (struct rawtrack_io *io)
{
  int64_t r;

  rt_clear_error ();
  errno = 0;
  r = io_op_get_size (io);
  if (r < 0)
    return fail_op (io, "get size");
  return r;
}

RAWTRACK_API int
rawtrack_io_truncate (struct rawtrack_io *io, uint64_t size)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_truncate (io, size) == -1)
    return fail_range (io, "truncate", 0, size);
  return 0;
}

RAWTRACK_API unsigned
rawtrack_io_caps (struct rawtrack_io *io)
{
  if (!HAS (io, caps))
    return 0;
  return io->ops->caps (io);
}

RAWTRACK_API int64_t
rawtrack_io_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
                    int *is_data)
{
  int64_t r;

  rt_clear_error ();
  errno = 0;
  r = io_op_extent (io, offset, count, is_data);
  if (r < 0)
    return fail_range (io, "extent query", count, offset);
  return r;
}

RAWTRACK_API int
rawtrack_io_pwrite_batch (struct rawtrack_io *io,
                          const struct rawtrack_io_vec *v, size_t n)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_pwrite_batch (io, v, n) == -1)
    return fail_range (io, "batch write", n ? v[0].count : 0,
                       n ? v[0].offset : 0);
  return 0;
}

RAWTRACK_API int
rawtrack_io_raw_fd (struct rawtrack_io *io)
{
  if (!HAS (io, raw_fd))
    return -1;
  return io->ops->raw_fd (io);
}

RAWTRACK_API int
rawtrack_io_lock (struct rawtrack_io *io, unsigned perm, unsigned deny)
{
  rt_clear_error ();
  errno = 0;
  if (io_op_lock (io, perm, deny) == -1) {
    if (errno == EBUSY)
      return rt_set_error (EBUSY, "%s backend: lock: another opener holds "
                           "a permission asked to be denied, or denies one "
                           "asked for (QEMU's image lock: is a VM, qemu-nbd "
                           "or another rawtrack using it?)",
                           backend_name (io));
    return fail_op (io, "lock");
  }
  return 0;
}

RAWTRACK_API void
rawtrack_io_close (struct rawtrack_io *io)
{
  if (io && HAS (io, close))
    io->ops->close (io);
}

int
io_read (struct rawtrack_io *io, void *buf, uint64_t count, uint64_t offset,
         const char *what)
{
  if (io_op_pread (io, buf, count, offset) == -1)
    return set_error (errno, "reading %s at offset %" PRIu64 " (%" PRIu64
                      " bytes): %s", what, offset, count, strerror (errno));
  return 0;
}

int
io_write (struct rawtrack_io *io, const void *buf, uint64_t count,
          uint64_t offset, const char *what)
{
  if (io_op_pwrite (io, buf, count, offset, 0) == -1)
    return set_error (errno, "writing %s at offset %" PRIu64 " (%" PRIu64
                      " bytes): %s", what, offset, count, strerror (errno));
  return 0;
}

int
io_write_batch (struct rawtrack_io *io, const struct rawtrack_io_vec *v,
                size_t n, const char *what)
{
  uint64_t bytes = 0;
  size_t i;

  if (io_op_pwrite_batch (io, v, n) == -1) {
    for (i = 0; i < n; i++)
      bytes += v[i].count;
    return set_error (errno, "writing %s (%zu ranges, %" PRIu64 " bytes, "
                      "the first at offset %" PRIu64 "): %s", what, n, bytes,
                      n ? v[0].offset : 0, strerror (errno));
  }
  return 0;
}

int
io_flush (struct rawtrack_io *io, const char *what)
{
  if (io_op_flush (io) == -1)
    return set_error (errno, "flushing %s: %s", what, strerror (errno));
  return 0;
}
