/* rawtrack - power-loss simulation shim (tests only).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: a wrapper that models a disk with a volatile write cache, in the
 * spirit of SQLite's test6.c.  The inner backend plays the platters: what
 * is in inner is what survives power loss.  Everything else is the cache:
 *
 *   pwrite/zero/trim/truncate --> pending list (in memory, in call order)
 *   pread                     --> inner, overlaid with the pending list
 *   flush                     --> apply the list to inner in order, flush
 *                                 inner, empty the list
 *   io_crash_crash / crash_at --> cut each pending operation into units,
 *                                 keep/drop/garble each at random, apply
 *                                 the kept ones to inner in random order,
 *                                 then fail everything with EIO
 *   close (not crashed)       --> like flush: the OS writes back in the end
 *
 * Locking: one mutex, held for the whole of every call, including the
 * calls into inner, so reads see a consistent overlay and a crash cannot
 * interleave with a write.  The shim is slow but fully thread-safe.
 *
 * Invariants:
 *  1. Read-your-writes: pread and get_size return what inner would hold if
 *     the pending list were applied in order now.
 *  2. Nothing reaches inner between two flushes except through flush,
 *     close or a crash.  A FUA write or zero is followed by a full flush
 *     (stronger than a device FUA, which covers one write).
 *  3. A crash never produces a state a real cache could not: a unit is a
 *     512-byte sector clipped to its operation, so a write not aligned to
 *     512 has partial-sector units; each unit ends up old, new, or (garble
 *     mode only) random.  For a sector written twice, any of its values
 *     can win.  A truncate is a barrier: the units of the operations before
 *     it are settled before it is applied or dropped, so a dropped-then-
 *     resurrected write past a shrink cannot appear.
 *  4. Pending memory is bounded: every pending operation is charged its
 *     data, its bookkeeping and the crash units it would need, and a call
 *     that would take the total past max_pending fails with ENOSPC and
 *     changes nothing.  Zero and trim ranges above MAX_ZERO_UNITS sectors
 *     use bigger (power-of-two) units so that zeroing a whole disk costs a
 *     bounded amount.
 *  5. After a crash every method fails with EIO (caps returns 0) and inner
 *     is left alone; close only frees memory.
 */
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>

#include "internal.h"
#include "cleanup.h"
#include "random.h"
#include "arith.h"
#include "io-shims.h"
#include "vector.h"

#define SECTOR_SHIFT 9
#define SECTOR (1u << SECTOR_SHIFT)
#define MAX_ZERO_UNITS 2048
#define ZERO_CHUNK (64 * 1024)

enum op { OP_READ, OP_WRITE, OP_FLUSH, OP_ZERO, OP_TRIM, OP_TRUNCATE,
          NR_OPS };

_Static_assert (IO_OP_TRUNCATE == 1u << OP_TRUNCATE && IO_OP_READ == 1u,
                "IO_OP_* bits follow enum op");

enum pkind { P_WRITE, P_ZERO, P_TRIM, P_TRUNCATE };

/* One operation in the cache. */
struct pending {
  enum pkind kind;
  uint64_t offset;              /* P_TRUNCATE: the new size */
  uint64_t count;               /* bytes; 0 for P_TRUNCATE */
  uint8_t *data;                /* P_WRITE: count bytes, owned */
  unsigned shift;               /* log2 of the crash unit size */
  uint64_t charge;              /* what it costs against max_pending */
};

/* A piece of a pending operation that survives a crash. */
struct unit {
  uint64_t offset;
  uint64_t len;
  size_t op;                    /* index into ->ops */
  bool garble;                  /* write random bytes instead */
};

/* Plain realloc: a backend reports through errno only, never through the
 * library's error message. */
DEFINE_VECTOR_TYPE (pending_list, struct pending, realloc)

struct crash_io {
  struct rawtrack_io io;        /* must be first */
  struct rawtrack_io *inner;
  bool own_inner;

  pthread_mutex_t lock;         /* protects everything below; held across
                                 * every call into inner */
  struct pending_list ops;      /* the cache, in call order */
  uint64_t pending_bytes;       /* sum of ->charge (invariant 4) */
  uint64_t max_pending;
  uint64_t rng;                 /* splitmix64 state */
  bool garble;
  bool crashed;
  uint64_t count[NR_OPS];       /* calls per class since creation */
  unsigned crash_mask;          /* crash_at: classes counted */
  uint64_t crash_remaining;     /* crash_at: calls to go; 0: off */
};

/* Never written; the source of zeros when inner cannot zero. */
static uint8_t zero_buf[ZERO_CHUNK];

static void
lock (struct crash_io *c)
{
  if (pthread_mutex_lock (&c->lock) != 0)
    abort ();
}

static void
unlock (struct crash_io *c)
{
  if (pthread_mutex_unlock (&c->lock) != 0)
    abort ();
}

/* common/random.h's generator: every seed (0 too) gives a good stream. */
static uint64_t
next_random (struct crash_io *c)
{
  return rt_random (&c->rng);
}

static uint64_t
random_below (struct crash_io *c, uint64_t n)
{
  return next_random (c) % n;
}

static void
free_ops (struct crash_io *c, size_t from, size_t to)
{
  size_t i;

  for (i = from; i < to; i++) {
    c->pending_bytes -= c->ops.ptr[i].charge;
    free (c->ops.ptr[i].data);
  }
}

/* Drop the first n operations of the list. */
static void
discard_ops (struct crash_io *c, size_t n)
{
  if (n == 0)
    return;
  free_ops (c, 0, n);
  pending_list_remove_front (&c->ops, n);
}

/* ---- the view through the cache (invariant 1) ------------------------- */

static int64_t
visible_size (struct crash_io *c)
{
  int64_t s = io_op_get_size (c->inner);
  uint64_t size;
  size_t i;

  if (s == -1)
    return -1;
  size = (uint64_t) s;
  for (i = 0; i < c->ops.len; i++) {
    const struct pending *p = &c->ops.ptr[i];

    switch (p->kind) {
    case P_WRITE:
    case P_ZERO:
      size = MAX (size, p->offset + p->count);
      break;
    case P_TRUNCATE:
      size = p->offset;
      break;
    case P_TRIM:
      break;
    }
  }
  return (int64_t) size;
}

/* Apply p to buf, which holds [offset, offset + count). */
static void
overlay (const struct pending *p, uint8_t *buf, uint64_t count,
         uint64_t offset)
{
  uint64_t end = offset + count;
  uint64_t s, e;

  if (p->kind == P_TRUNCATE) {
    /* Everything past the new size reads as zeros from now on. */
    if (p->offset < end) {
      s = MAX (p->offset, offset);
      memset (buf + (s - offset), 0, (size_t) (end - s));
    }
    return;
  }
  s = MAX (p->offset, offset);
  e = MIN (p->offset + p->count, end);
  if (s >= e)
    return;
  if (p->kind == P_WRITE)
    memcpy (buf + (s - offset), p->data + (s - p->offset), (size_t) (e - s));
  else
    memset (buf + (s - offset), 0, (size_t) (e - s));
}

/* ---- applying to inner ------------------------------------------------ */

/* Zero through inner, writing zeros if inner has no zero method. */
static int
inner_zero (struct crash_io *c, uint64_t count, uint64_t offset,
            unsigned flags)
{
  if (io_op_zero (c->inner, count, offset, flags) == 0)
    return 0;
  if (errno != ENOTSUP)
    return -1;
  while (count > 0) {
    uint64_t n = MIN (count, (uint64_t) ZERO_CHUNK);

    if (io_op_pwrite (c->inner, zero_buf, n, offset, 0) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

/* A trim reads as zeros here (the strict reading of the contract) and is
 * applied as a MAY_TRIM zero, clipped so that it never extends inner. */
static int
inner_trim (struct crash_io *c, uint64_t count, uint64_t offset)
{
  int64_t size = io_op_get_size (c->inner);

  if (size == -1)
    return -1;
  if (offset >= (uint64_t) size)
    return 0;
  count = MIN (count, (uint64_t) size - offset);
  return inner_zero (c, count, offset, RAWTRACK_IO_MAY_TRIM);
}

static int
apply_op (struct crash_io *c, const struct pending *p)
{
  switch (p->kind) {
  case P_WRITE:
    return io_op_pwrite (c->inner, p->data, p->count, p->offset, 0);
  case P_ZERO:
    return inner_zero (c, p->count, p->offset, 0);
  case P_TRIM:
    return inner_trim (c, p->count, p->offset);
  case P_TRUNCATE:
    return io_op_truncate (c->inner, p->offset);
  }
  abort ();
}

/* Apply the whole list in order and flush inner.  On failure the
 * operations already applied leave the list and the rest stay. */
static int
do_flush (struct crash_io *c)
{
  size_t i;

  for (i = 0; i < c->ops.len; i++) {
    if (apply_op (c, &c->ops.ptr[i]) == -1) {
      int saved = errno;

      discard_ops (c, i);
      errno = saved;
      return -1;
    }
  }
  discard_ops (c, c->ops.len);
  return io_op_flush (c->inner);
}

/* ---- the crash (invariant 3) ------------------------------------------ */

static uint64_t
units_at (uint64_t offset, uint64_t count, unsigned shift)
{
  return ((offset + count - 1) >> shift) - (offset >> shift) + 1;
}

/* Unit size of an operation: a sector, or for a huge zero/trim the
 * smallest power of two that keeps it within MAX_ZERO_UNITS units. */
static unsigned
unit_shift (enum pkind kind, uint64_t offset, uint64_t count)
{
  unsigned shift = SECTOR_SHIFT;

  if (kind == P_WRITE || kind == P_TRUNCATE)
    return shift;
  while (units_at (offset, count, shift) > MAX_ZERO_UNITS)
    shift++;
  return shift;
}

static uint64_t
op_units (const struct pending *p)
{
  return p->kind == P_TRUNCATE ? 1 : units_at (p->offset, p->count, p->shift);
}

static int
apply_unit (struct crash_io *c, const struct unit *u)
{
  const struct pending *p = &c->ops.ptr[u->op];
  uint8_t junk[SECTOR];
  uint64_t i;

  if (u->garble) {
    for (i = 0; i < u->len; i++)
      junk[i] = (uint8_t) next_random (c);
    return io_op_pwrite (c->inner, junk, u->len, u->offset, 0);
  }
  switch (p->kind) {
  case P_WRITE:
    return io_op_pwrite (c->inner, p->data + (u->offset - p->offset),
                               u->len, u->offset, 0);
  case P_ZERO:
    return inner_zero (c, u->len, u->offset, 0);
  case P_TRIM:
    return inner_trim (c, u->len, u->offset);
  case P_TRUNCATE:
    break;
  }
  abort ();
}

/* Cut ops [from, to) (no truncate among them) into units, choose the fate
 * of each, and apply the survivors in random order. */
static int
settle_epoch (struct crash_io *c, struct unit *units, size_t from, size_t to)
{
  size_t n = 0, i, j;

  for (i = from; i < to; i++) {
    const struct pending *p = &c->ops.ptr[i];
    uint64_t unit = UINT64_C (1) << p->shift;
    uint64_t pos = p->offset, end = p->offset + p->count;

    while (pos < end) {
      uint64_t next = MIN (ROUND_DOWN (pos, unit) + unit, end);
      /* Garbling is for writes (a zero is a write of zeros) of at most a
       * sector; a trim never leaves garbage. */
      bool can_garble = c->garble && p->kind != P_TRIM &&
        next - pos <= SECTOR;
      uint64_t fate = random_below (c, can_garble ? 3 : 2);

      if (fate != 1) {          /* 0 apply, 1 drop, 2 garble */
        units[n].offset = pos;
        units[n].len = next - pos;
        units[n].op = i;
        units[n].garble = fate == 2;
        n++;
      }
      pos = next;
    }
  }

  /* Fisher-Yates: the cache destages in any order. */
  for (i = n; i > 1; i--) {
    struct unit tmp;

    j = (size_t) random_below (c, i);
    tmp = units[i - 1];
    units[i - 1] = units[j];
    units[j] = tmp;
  }
  for (i = 0; i < n; i++)
    if (apply_unit (c, &units[i]) == -1)
      return -1;
  return 0;
}

static int
do_crash (struct crash_io *c)
{
  struct unit *units = NULL;
  uint64_t total = 0;
  size_t i, from = 0;
  int r = 0, saved;

  for (i = 0; i < c->ops.len; i++)
    total += op_units (&c->ops.ptr[i]);
  /* Invariant 4 bounds total.  If the memory is not there anyway, losing
   * every pending operation is a legitimate crash outcome. */
  if (total > 0 && total <= SIZE_MAX / sizeof *units)
    units = rt_malloc ((size_t) total * sizeof *units);

  if (units) {
    /* Each truncate closes an epoch (invariant 3). */
    for (i = 0; i <= c->ops.len && r == 0; i++) {
      if (i < c->ops.len && c->ops.ptr[i].kind != P_TRUNCATE)
        continue;
      r = settle_epoch (c, units, from, i);
      if (r == 0 && i < c->ops.len && random_below (c, 2) == 0)
        r = io_op_truncate (c->inner, c->ops.ptr[i].offset);
      from = i + 1;
    }
    if (r == 0)
      r = io_op_flush (c->inner);
  }

  saved = errno;
  free (units);
  discard_ops (c, c->ops.len);
  c->crashed = true;
  errno = saved;
  return r;
}

/* ---- methods ---------------------------------------------------------- */

/* Count a call of class op, then fail it if the shim has crashed or if
 * crash_at says this is the call to crash at.  Lock held. */
static int
enter (struct crash_io *c, enum op op)
{
  c->count[op]++;
  if (!c->crashed && (c->crash_mask & (1u << op)) &&
      c->crash_remaining > 0 && --c->crash_remaining == 0) {
    c->crash_mask = 0;
    do_crash (c);
  }
  if (c->crashed) {
    errno = EIO;
    return -1;
  }
  return 0;
}

/* Range of a request: EINVAL if it wraps or cannot be a file offset. */
static int
check_range (uint64_t offset, uint64_t count)
{
  if (offset > INT64_MAX || count > INT64_MAX - offset ||
      count > SIZE_MAX) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* Refuse early what inner would refuse at flush: writing to a read-only
 * backend, past the end of a block device, or a method inner lacks. */
static int
check_modify (struct crash_io *c, unsigned need, uint64_t end)
{
  unsigned caps = rawtrack_io_caps (c->inner);
  int64_t size;

  if (!(caps & RAWTRACK_IO_CAN_WRITE)) {
    errno = EROFS;
    return -1;
  }
  if ((caps & need) != need) {
    errno = ENOTSUP;
    return -1;
  }
  if ((caps & RAWTRACK_IO_IS_BLOCKDEV) && end > 0) {
    size = visible_size (c);
    if (size == -1)
      return -1;
    if (end > (uint64_t) size) {
      errno = ENOSPC;
      return -1;
    }
  }
  return 0;
}

/* Append an operation to the cache (invariant 4). */
static int
push (struct crash_io *c, enum pkind kind, uint64_t offset, uint64_t count,
      const void *buf)
{
  struct pending p = { .kind = kind, .offset = offset, .count = count };
  uint64_t charge, total;

  p.shift = unit_shift (kind, offset, count);
  charge = sizeof p + op_units (&p) * sizeof (struct unit);
  if (kind == P_WRITE)
    charge += count;            /* count <= INT64_MAX: no overflow */
  if (ADD_OVERFLOW (c->pending_bytes, charge, &total) ||
      total > c->max_pending) {
    errno = ENOSPC;
    return -1;
  }

  if (pending_list_reserve (&c->ops, 1) == -1)
    return -1;
  if (kind == P_WRITE) {
    p.data = rt_malloc ((size_t) count);
    if (p.data == NULL)
      return -1;
    memcpy (p.data, buf, (size_t) count);
  }
  p.charge = charge;
  c->ops.ptr[c->ops.len++] = p;
  c->pending_bytes = total;
  return 0;
}

static int
crash_pread (struct rawtrack_io *io, void *buf, uint64_t count,
             uint64_t offset)
{
  struct crash_io *c = (struct crash_io *) io;
  size_t i;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (enter (c, OP_READ) == -1 || check_range (offset, count) == -1)
    return -1;
  if (io_op_pread (c->inner, buf, count, offset) == -1)
    return -1;
  for (i = 0; i < c->ops.len; i++)
    overlay (&c->ops.ptr[i], buf, count, offset);
  return 0;
}

static int
crash_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
              uint64_t offset, unsigned flags)
{
  struct crash_io *c = (struct crash_io *) io;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (enter (c, OP_WRITE) == -1 || check_range (offset, count) == -1 ||
      check_modify (c, 0, offset + count) == -1)
    return -1;
  if (count > 0 && push (c, P_WRITE, offset, count, buf) == -1)
    return -1;
  return (flags & RAWTRACK_IO_FUA) ? do_flush (c) : 0;
}

static int
crash_flush (struct rawtrack_io *io)
{
  struct crash_io *c = (struct crash_io *) io;
  int r = -1;

  lock (c);
  if (enter (c, OP_FLUSH) == 0)
    r = do_flush (c);
  unlock (c);
  return r;
}

static int
crash_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
            unsigned flags)
{
  struct crash_io *c = (struct crash_io *) io;
  unsigned need = (flags & RAWTRACK_IO_FAST_ZERO) ? RAWTRACK_IO_CAN_ZERO : 0;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (enter (c, OP_ZERO) == -1 || check_range (offset, count) == -1 ||
      check_modify (c, need, offset + count) == -1)
    return -1;
  if (count > 0 && push (c, P_ZERO, offset, count, NULL) == -1)
    return -1;
  return (flags & RAWTRACK_IO_FUA) ? do_flush (c) : 0;
}

static int
crash_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  struct crash_io *c = (struct crash_io *) io;
  int64_t size;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (enter (c, OP_TRIM) == -1 || check_range (offset, count) == -1 ||
      check_modify (c, RAWTRACK_IO_CAN_TRIM, 0) == -1)
    return -1;
  /* A trim never extends: keep only the part inside the current size. */
  size = visible_size (c);
  if (size == -1)
    return -1;
  if (offset < (uint64_t) size) {
    count = MIN (count, (uint64_t) size - offset);
    if (count > 0)
      return push (c, P_TRIM, offset, count, NULL);
  }
  return 0;
}

static int64_t
crash_get_size (struct rawtrack_io *io)
{
  struct crash_io *c = (struct crash_io *) io;
  int64_t r = -1;

  lock (c);
  if (c->crashed)
    errno = EIO;
  else
    r = visible_size (c);
  unlock (c);
  return r;
}

static int
crash_truncate (struct rawtrack_io *io, uint64_t size)
{
  struct crash_io *c = (struct crash_io *) io;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (enter (c, OP_TRUNCATE) == -1 ||
      check_modify (c, RAWTRACK_IO_CAN_TRUNCATE, 0) == -1)
    return -1;
  if (size > INT64_MAX) {
    errno = EINVAL;
    return -1;
  }
  return push (c, P_TRUNCATE, size, 0, NULL);
}

static void
crash_close (struct rawtrack_io *io)
{
  struct crash_io *c = (struct crash_io *) io;

  /* Invariant 5, and otherwise a clean shutdown: the cache drains.  Close
   * cannot fail, so an error here is dropped with the rest. */
  if (!c->crashed)
    do_flush (c);
  discard_ops (c, c->ops.len);
  pending_list_reset (&c->ops);
  if (c->own_inner)
    rawtrack_io_close (c->inner);
  pthread_mutex_destroy (&c->lock);
  free (c);
}

static unsigned
crash_caps (struct rawtrack_io *io)
{
  struct crash_io *c = (struct crash_io *) io;
  unsigned caps = 0;

  lock (c);
  /* FUA is emulated with a flush here. */
  if (!c->crashed)
    caps = rawtrack_io_caps (c->inner) & ~RAWTRACK_IO_CAN_FUA;
  unlock (c);
  return caps;
}

static int
crash_block_size (struct rawtrack_io *io, uint32_t *minimum,
                  uint32_t *preferred, uint32_t *maximum)
{
  struct crash_io *c = (struct crash_io *) io;
  int r = -1;

  lock (c);
  if (c->crashed)
    errno = EIO;
  else
    r = io_shim_block_size (c->inner, minimum, preferred, maximum);
  unlock (c);
  return r;
}

/* Inner's answer, corrected for the cache: a range a pending operation
 * covers is reported as data (always a safe answer), and an inner run is
 * cut where a pending operation begins. */
static int64_t
crash_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
              int *is_data)
{
  struct crash_io *c = (struct crash_io *) io;
  uint64_t covered = 0, len;
  int64_t r;
  size_t i;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&c->lock);
  if (c->crashed) {
    errno = EIO;
    return -1;
  }
  if (check_range (offset, count) == -1)
    return -1;
  if (count == 0) {
    errno = EINVAL;
    return -1;
  }
  for (i = 0; i < c->ops.len; i++) {
    const struct pending *p = &c->ops.ptr[i];

    /* A pending truncate moves the end; keep it simple and call it all
     * data until the next flush. */
    if (p->kind == P_TRUNCATE) {
      *is_data = 1;
      return (int64_t) count;
    }
    if (p->offset <= offset && offset < p->offset + p->count)
      covered = MAX (covered, p->offset + p->count - offset);
  }
  if (covered > 0) {
    *is_data = 1;
    return (int64_t) MIN (covered, count);
  }
  r = io_op_extent (c->inner, offset, count, is_data);
  if (r <= 0)
    return r;
  len = (uint64_t) r;
  for (i = 0; i < c->ops.len; i++)
    if (c->ops.ptr[i].offset > offset && c->ops.ptr[i].offset < offset + len)
      len = c->ops.ptr[i].offset - offset;
  return (int64_t) len;
}

static const struct rawtrack_io_ops crash_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "crash",
  .pread = crash_pread,
  .pwrite = crash_pwrite,
  .flush = crash_flush,
  .zero = crash_zero,
  .trim = crash_trim,
  .get_size = crash_get_size,
  .truncate = crash_truncate,
  .close = crash_close,
  .caps = crash_caps,
  .block_size = crash_block_size,
  .extent = crash_extent,
};

/* ---- test API --------------------------------------------------------- */

struct rawtrack_io *
io_crash_new (struct rawtrack_io *inner, bool own_inner, uint64_t seed)
{
  struct crash_io *c;
  int err;

  if (inner == NULL) {
    rt_set_error (EINVAL, "crash shim: inner backend is NULL");
    return NULL;
  }
  c = rt_calloc (1, sizeof *c);
  if (c == NULL)
    goto fail;
  err = pthread_mutex_init (&c->lock, NULL);
  if (err != 0) {
    rt_set_error (err, "crash shim: pthread_mutex_init failed");
    free (c);
    goto fail;
  }
  c->io.ops = &crash_ops;
  c->inner = inner;
  c->own_inner = own_inner;
  c->rng = seed;
  c->max_pending = IO_CRASH_DEFAULT_MAX_PENDING;
  return &c->io;

 fail:
  if (own_inner)
    rawtrack_io_close (inner);
  return NULL;
}

/* The shim's private struct, or abort: passing another backend to these
 * test calls is a bug in the test. */
static struct crash_io *
to_crash (struct rawtrack_io *io)
{
  if (io == NULL || io->ops != &crash_ops)
    abort ();
  return (struct crash_io *) io;
}

int
io_crash_crash (struct rawtrack_io *io)
{
  struct crash_io *c = to_crash (io);
  int r = 0;

  lock (c);
  if (!c->crashed)
    r = do_crash (c);
  unlock (c);
  return r;
}

void
io_crash_set_crash_at (struct rawtrack_io *io, unsigned ops_mask,
                       uint64_t nth)
{
  struct crash_io *c = to_crash (io);

  lock (c);
  c->crash_mask = nth ? ops_mask & IO_OP_ALL : 0;
  c->crash_remaining = c->crash_mask ? nth : 0;
  unlock (c);
}

uint64_t
io_crash_count (struct rawtrack_io *io, unsigned ops_mask)
{
  struct crash_io *c = to_crash (io);
  uint64_t n = 0;
  int op;

  lock (c);
  for (op = 0; op < NR_OPS; op++)
    if (ops_mask & (1u << op))
      n += c->count[op];
  unlock (c);
  return n;
}

void
io_crash_set_garble (struct rawtrack_io *io, bool garble)
{
  struct crash_io *c = to_crash (io);

  lock (c);
  c->garble = garble;
  unlock (c);
}

void
io_crash_set_max_pending (struct rawtrack_io *io, uint64_t max_bytes)
{
  struct crash_io *c = to_crash (io);

  lock (c);
  c->max_pending = max_bytes ? max_bytes : IO_CRASH_DEFAULT_MAX_PENDING;
  unlock (c);
}

uint64_t
io_crash_pending (struct rawtrack_io *io)
{
  struct crash_io *c = to_crash (io);
  uint64_t n;

  lock (c);
  n = c->ops.len;
  unlock (c);
  return n;
}

bool
io_crash_crashed (struct rawtrack_io *io)
{
  struct crash_io *c = to_crash (io);
  bool crashed;

  lock (c);
  crashed = c->crashed;
  unlock (c);
  return crashed;
}
