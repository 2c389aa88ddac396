/* rawtrack - a backend that forwards to another one and never closes it.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Test helper for fuzz-image and test-hostile (see borrow-io.h).  Every
 * method goes through the public rawtrack_io_* wrappers, so the inner
 * backend's missing methods stay missing.  No state of its own beyond the
 * pointer; thread safety is the inner backend's.
 */
#include <stdio.h>
#include <stdlib.h>

#include "borrow-io.h"

struct borrow_io {
  struct rawtrack_io io;                /* must be first */
  struct rawtrack_io *inner;            /* owned by the caller */
};

static struct rawtrack_io *
inner_of (struct rawtrack_io *io)
{
  return ((struct borrow_io *) io)->inner;
}

static int
borrow_pread (struct rawtrack_io *io, void *buf, uint64_t count,
              uint64_t offset)
{
  return rawtrack_io_pread (inner_of (io), buf, count, offset);
}

static int
borrow_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
               uint64_t offset, unsigned flags)
{
  return rawtrack_io_pwrite (inner_of (io), buf, count, offset, flags);
}

static int
borrow_flush (struct rawtrack_io *io)
{
  return rawtrack_io_flush (inner_of (io));
}

static int
borrow_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
             unsigned flags)
{
  return rawtrack_io_zero (inner_of (io), count, offset, flags);
}

static int
borrow_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  return rawtrack_io_trim (inner_of (io), count, offset);
}

static int64_t
borrow_get_size (struct rawtrack_io *io)
{
  return rawtrack_io_get_size (inner_of (io));
}

static int
borrow_truncate (struct rawtrack_io *io, uint64_t size)
{
  return rawtrack_io_truncate (inner_of (io), size);
}

static void
borrow_close (struct rawtrack_io *io)
{
  free (io);
}

static unsigned
borrow_caps (struct rawtrack_io *io)
{
  return rawtrack_io_caps (inner_of (io));
}

static int64_t
borrow_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
               int *is_data)
{
  return rawtrack_io_extent (inner_of (io), offset, count, is_data);
}

static const struct rawtrack_io_ops borrow_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "borrow",
  .pread = borrow_pread,
  .pwrite = borrow_pwrite,
  .flush = borrow_flush,
  .zero = borrow_zero,
  .trim = borrow_trim,
  .get_size = borrow_get_size,
  .truncate = borrow_truncate,
  .close = borrow_close,
  .caps = borrow_caps,
  .extent = borrow_extent,
};

struct rawtrack_io *
borrow_io_new (struct rawtrack_io *inner)
{
  struct borrow_io *b = malloc (sizeof *b);

  if (!b) {
    fprintf (stderr, "borrow_io_new: out of memory\n");
    abort ();
  }
  b->io.ops = &borrow_ops;
  b->inner = inner;
  return &b->io;
}
