/* rawtrack - generic I/O backend entry points.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the public rawtrack_io_* wrappers, which check the ops table's
 * struct_size before calling a method (a method past the size the backend
 * was built with, or NULL, is ENOTSUP), and the internal io_read/io_write/
 * io_flush helpers that turn a backend's errno into a message naming the
 * structure being accessed.
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

RAWTRACK_API int
rawtrack_io_pread (struct rawtrack_io *io, void *buf, uint64_t count,
                   uint64_t offset)
{
  if (!HAS (io, pread)) { errno = ENOTSUP; return -1; }
  return io->ops->pread (io, buf, count, offset);
}

RAWTRACK_API int
rawtrack_io_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
                    uint64_t offset, unsigned flags)
{
  if (!HAS (io, pwrite)) { errno = EROFS; return -1; }
  return io->ops->pwrite (io, buf, count, offset, flags);
}

RAWTRACK_API int
rawtrack_io_flush (struct rawtrack_io *io)
{
  if (!HAS (io, flush))
    return 0;
  return io->ops->flush (io);
}

RAWTRACK_API int
rawtrack_io_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
                  unsigned flags)
{
  if (!HAS (io, zero)) { errno = ENOTSUP; return -1; }
  return io->ops->zero (io, count, offset, flags);
}

RAWTRACK_API int
rawtrack_io_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  if (!HAS (io, trim)) { errno = ENOTSUP; return -1; }
  return io->ops->trim (io, count, offset);
}

RAWTRACK_API int64_t
rawtrack_io_get_size (struct rawtrack_io *io)
{
  if (!HAS (io, get_size)) { errno = ENOTSUP; return -1; }
  return io->ops->get_size (io);
}

RAWTRACK_API int
rawtrack_io_truncate (struct rawtrack_io *io, uint64_t size)
{
  if (!HAS (io, truncate)) { errno = ENOTSUP; return -1; }
  return io->ops->truncate (io, size);
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
  if (!HAS (io, extent)) {
    *is_data = 1;
    return (int64_t) count;
  }
  return io->ops->extent (io, offset, count, is_data);
}

RAWTRACK_API int
rawtrack_io_pwrite_batch (struct rawtrack_io *io,
                          const struct rawtrack_io_vec *v, size_t n)
{
  size_t i;

  if (HAS (io, pwrite_batch))
    return io->ops->pwrite_batch (io, v, n);
  for (i = 0; i < n; i++)
    if (rawtrack_io_pwrite (io, v[i].buf, v[i].count, v[i].offset, 0) == -1)
      return -1;
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
  if (!HAS (io, lock))
    return 0;
  return io->ops->lock (io, perm, deny);
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
  if (rawtrack_io_pread (io, buf, count, offset) == -1)
    return set_error (errno, "reading %s at offset %" PRIu64 " (%" PRIu64
                      " bytes): %s", what, offset, count, strerror (errno));
  return 0;
}

int
io_write (struct rawtrack_io *io, const void *buf, uint64_t count,
          uint64_t offset, const char *what)
{
  if (rawtrack_io_pwrite (io, buf, count, offset, 0) == -1)
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

  if (rawtrack_io_pwrite_batch (io, v, n) == -1) {
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
  if (rawtrack_io_flush (io) == -1)
    return set_error (errno, "flushing %s: %s", what, strerror (errno));
  return 0;
}
