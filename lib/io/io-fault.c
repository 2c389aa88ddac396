/* rawtrack - fault-injection shim (tests only).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: a wrapper around another backend that makes the n-th matching
 * call fail, after SQLite's test_vfs.c.  A test walks n = 1, 2, ... until
 * the operation under test succeeds without the fault firing, proving that
 * every I/O failure on the way is handled.
 *
 * Locking: one mutex protects the counters and the armed fault.  It is
 * held only while deciding whether a call fails, never across the call
 * into the inner backend, so the shim is as thread-safe as inner.
 *
 * Invariants:
 *  1. A call that faults never reaches inner: a faulted write writes
 *     nothing, a faulted flush makes nothing durable.
 *  2. count[] counts every call of each class since creation, faulted or
 *     not; "nth from now" is kept separately in ->remaining.
 *  3. Once a persistent fault has fired (->tripped), every later call in
 *     ->mask fails until io_fault_set rearms or disarms.
 */
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>

#include "internal.h"
#include "io-shims.h"

enum op { OP_READ, OP_WRITE, OP_FLUSH, OP_ZERO, OP_TRIM, OP_TRUNCATE,
          NR_OPS };

struct fault_io {
  struct rawtrack_io io;        /* must be first */
  struct rawtrack_io *inner;
  bool own_inner;               /* close inner with the shim */

  pthread_mutex_t lock;         /* protects everything below */
  uint64_t count[NR_OPS];       /* calls per class (invariant 2) */
  unsigned mask;                /* IO_OP_* classes the fault applies to */
  uint64_t remaining;           /* matching calls until it fires; 0: off */
  int err;                      /* errno to inject */
  bool persistent;
  bool tripped;                 /* persistent fault has fired */
  bool fired;                   /* any fault fired since io_fault_set */
};

static void
lock (struct fault_io *f)
{
  if (pthread_mutex_lock (&f->lock) != 0)
    abort ();
}

static void
unlock (struct fault_io *f)
{
  if (pthread_mutex_unlock (&f->lock) != 0)
    abort ();
}

/* Count a call of class op and decide its fate.  Returns 0 to let it
 * through, or -1 with errno set if it must fail. */
static int
enter (struct fault_io *f, enum op op)
{
  unsigned bit = 1u << op;
  int err = 0;

  lock (f);
  f->count[op]++;
  if (f->mask & bit) {
    if (f->tripped)
      err = f->err;
    else if (f->remaining > 0 && --f->remaining == 0) {
      err = f->err;
      f->fired = true;
      if (f->persistent)
        f->tripped = true;
      else
        f->mask = 0;            /* transient: disarm */
    }
  }
  unlock (f);

  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

static int
fault_pread (struct rawtrack_io *io, void *buf, uint64_t count,
             uint64_t offset)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_READ) == -1)
    return -1;
  return io_op_pread (f->inner, buf, count, offset);
}

static int
fault_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
              uint64_t offset, unsigned flags)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_WRITE) == -1)
    return -1;
  return io_op_pwrite (f->inner, buf, count, offset, flags);
}

static int
fault_flush (struct rawtrack_io *io)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_FLUSH) == -1)
    return -1;
  return io_op_flush (f->inner);
}

static int
fault_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
            unsigned flags)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_ZERO) == -1)
    return -1;
  return io_op_zero (f->inner, count, offset, flags);
}

static int
fault_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_TRIM) == -1)
    return -1;
  return io_op_trim (f->inner, count, offset);
}

static int64_t
fault_get_size (struct rawtrack_io *io)
{
  struct fault_io *f = (struct fault_io *) io;

  return io_op_get_size (f->inner);
}

static int
fault_truncate (struct rawtrack_io *io, uint64_t size)
{
  struct fault_io *f = (struct fault_io *) io;

  if (enter (f, OP_TRUNCATE) == -1)
    return -1;
  return io_op_truncate (f->inner, size);
}

static void
fault_close (struct rawtrack_io *io)
{
  struct fault_io *f = (struct fault_io *) io;

  if (f->own_inner)
    rawtrack_io_close (f->inner);
  pthread_mutex_destroy (&f->lock);
  free (f);
}

static unsigned
fault_caps (struct rawtrack_io *io)
{
  struct fault_io *f = (struct fault_io *) io;

  return rawtrack_io_caps (f->inner);
}

static int
fault_block_size (struct rawtrack_io *io, uint32_t *minimum,
                  uint32_t *preferred, uint32_t *maximum)
{
  struct fault_io *f = (struct fault_io *) io;

  return io_shim_block_size (f->inner, minimum, preferred, maximum);
}

static int64_t
fault_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
              int *is_data)
{
  struct fault_io *f = (struct fault_io *) io;

  return io_op_extent (f->inner, offset, count, is_data);
}

static const struct rawtrack_io_ops fault_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "fault",
  .pread = fault_pread,
  .pwrite = fault_pwrite,
  .flush = fault_flush,
  .zero = fault_zero,
  .trim = fault_trim,
  .get_size = fault_get_size,
  .truncate = fault_truncate,
  .close = fault_close,
  .caps = fault_caps,
  .block_size = fault_block_size,
  .extent = fault_extent,
};

struct rawtrack_io *
io_fault_new (struct rawtrack_io *inner, bool own_inner)
{
  struct fault_io *f;
  int err;

  if (inner == NULL) {
    rt_set_error (EINVAL, "fault shim: inner backend is NULL");
    return NULL;
  }
  f = rt_calloc (1, sizeof *f);
  if (f == NULL)
    goto fail;
  err = pthread_mutex_init (&f->lock, NULL);
  if (err != 0) {
    rt_set_error (err, "fault shim: pthread_mutex_init failed");
    free (f);
    goto fail;
  }
  f->io.ops = &fault_ops;
  f->inner = inner;
  f->own_inner = own_inner;
  return &f->io;

 fail:
  if (own_inner)
    rawtrack_io_close (inner);
  return NULL;
}

/* The shim's private struct, or abort: these calls only make sense on an
 * io_fault_new handle, and a test passing anything else is a bug. */
static struct fault_io *
to_fault (struct rawtrack_io *io)
{
  if (io == NULL || io->ops != &fault_ops)
    abort ();
  return (struct fault_io *) io;
}

void
io_fault_set (struct rawtrack_io *io, unsigned ops_mask, uint64_t nth,
              int err, bool persistent)
{
  struct fault_io *f = to_fault (io);

  lock (f);
  if (nth == 0)
    ops_mask = 0;
  f->mask = ops_mask & IO_OP_ALL;
  f->remaining = f->mask ? nth : 0;
  f->err = err ? err : EIO;
  f->persistent = persistent;
  f->tripped = false;
  f->fired = false;
  unlock (f);
}

uint64_t
io_fault_count (struct rawtrack_io *io, unsigned ops_mask)
{
  struct fault_io *f = to_fault (io);
  uint64_t n = 0;
  int op;

  lock (f);
  for (op = 0; op < NR_OPS; op++)
    if (ops_mask & (1u << op))
      n += f->count[op];
  unlock (f);
  return n;
}

bool
io_fault_fired (struct rawtrack_io *io)
{
  struct fault_io *f = to_fault (io);
  bool fired;

  lock (f);
  fired = f->fired;
  unlock (f);
  return fired;
}
