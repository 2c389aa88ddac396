/* rawtrack - the memory backend.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: one growable heap buffer holding the whole "file", for unit tests
 * and fuzzing.  Nothing is ever durable beyond the process, so flush is a
 * no-op and FUA is free.
 *
 * Locking: a rwlock per backend.  pread, get_size and extent take it
 * shared; everything that changes the buffer or the size takes it
 * exclusive.  rawtrack_io_mem_data hands out the raw pointer, which is only
 * stable while no other thread writes.
 *
 * Invariants:
 *  1. size <= alloc <= max_size, and max_size fits in size_t and int64_t.
 *  2. data[size, alloc) is all zeros, so growing within the allocation
 *     needs no memset and a shrink + grow reads back zeros.
 *  3. The buffer only grows when the new end has been checked against
 *     max_size with overflow-checked arithmetic: content (a write offset
 *     decoded from a fuzzed image) can never drive an allocation beyond
 *     max_size.  Past it, writes fail with ENOSPC and change nothing.
 *  4. extent reports 512-byte sectors (clipped to the request) that read
 *     as all zeros as holes, everything else as data; past the end is a
 *     hole.
 */
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>

#include "internal.h"
#include "arith.h"

#define DEFAULT_MAX_SIZE (UINT64_C (1) << 30)
#define MIN_ALLOC 4096
#define EXTENT_SECTOR 512

struct mem_io {
  struct rawtrack_io io;        /* must be first */
  pthread_rwlock_t lock;        /* protects everything below */
  uint8_t *data;                /* alloc bytes; [size, alloc) are zero */
  uint64_t size;                /* bytes the backend holds */
  uint64_t alloc;               /* bytes allocated */
  uint64_t max_size;            /* growth bound (invariant 1) */
};

static void
rdlock (struct mem_io *m)
{
  if (pthread_rwlock_rdlock (&m->lock) != 0)
    abort ();
}

static void
wrlock (struct mem_io *m)
{
  if (pthread_rwlock_wrlock (&m->lock) != 0)
    abort ();
}

static void
unlock (struct mem_io *m)
{
  if (pthread_rwlock_unlock (&m->lock) != 0)
    abort ();
}

/* *end = offset + count, or EINVAL if that does not fit in 64 bits. */
static int
range_end (uint64_t offset, uint64_t count, uint64_t *end)
{
  if (ADD_OVERFLOW (offset, count, end)) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* Make the backend at least end bytes long (invariant 3).  Caller holds
 * the lock exclusive.  On failure nothing has changed. */
static int
grow (struct mem_io *m, uint64_t end)
{
  uint64_t new_alloc;
  uint8_t *p;

  if (end <= m->size)
    return 0;
  if (end > m->max_size) {
    errno = ENOSPC;
    return -1;
  }
  if (end > m->alloc) {
    /* Doubling keeps a run of appending writes linear; the cap keeps it
     * within max_size, which fits in size_t (invariant 1). */
    if (MUL_OVERFLOW (m->alloc, 2, &new_alloc))
      new_alloc = m->max_size;
    new_alloc = MAX (new_alloc, MAX (end, (uint64_t) MIN_ALLOC));
    new_alloc = MIN (new_alloc, m->max_size);
    p = rt_realloc_quiet (m->data, (size_t) new_alloc);
    if (p == NULL)
      return -1;                /* errno is ENOMEM */
    memset (p + m->alloc, 0, (size_t) (new_alloc - m->alloc));
    m->data = p;
    m->alloc = new_alloc;
  }
  m->size = end;                /* the new bytes are zero: invariant 2 */
  return 0;
}

static int
mem_pread (struct rawtrack_io *io, void *buf, uint64_t count,
           uint64_t offset)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t end, n = 0;

  if (range_end (offset, count, &end) == -1)
    return -1;
  rdlock (m);
  if (offset < m->size) {
    n = MIN (count, m->size - offset);
    memcpy (buf, m->data + offset, (size_t) n);
  }
  unlock (m);
  /* Past the end reads as zeros. */
  memset ((uint8_t *) buf + n, 0, (size_t) (count - n));
  return 0;
}

static int
mem_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
            uint64_t offset, unsigned flags)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t end;
  int r = 0;

  if (range_end (offset, count, &end) == -1)
    return -1;
  if (count == 0)
    return 0;
  wrlock (m);
  if (grow (m, end) == -1)
    r = -1;
  else
    memcpy (m->data + offset, buf, (size_t) count);
  unlock (m);
  return r;
}

static int
mem_flush (struct rawtrack_io *io)
{
  return 0;
}

static int
mem_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
          unsigned flags)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t end;
  int r = 0;

  if (range_end (offset, count, &end) == -1)
    return -1;
  if (count == 0)
    return 0;
  wrlock (m);
  /* Extends like a write; memset is as fast as zeroing gets, so
   * FAST_ZERO never fails. */
  if (grow (m, end) == -1)
    r = -1;
  else
    memset (m->data + offset, 0, (size_t) count);
  unlock (m);
  return r;
}

static int
mem_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t end;

  if (range_end (offset, count, &end) == -1)
    return -1;
  wrlock (m);
  /* Never extends: only the part inside the buffer is cleared. */
  if (offset < m->size) {
    end = MIN (end, m->size);
    memset (m->data + offset, 0, (size_t) (end - offset));
  }
  unlock (m);
  return 0;
}

static int64_t
mem_get_size (struct rawtrack_io *io)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t size;

  rdlock (m);
  size = m->size;
  unlock (m);
  return (int64_t) size;        /* <= max_size <= INT64_MAX */
}

static int
mem_truncate (struct rawtrack_io *io, uint64_t size)
{
  struct mem_io *m = (struct mem_io *) io;
  int r = 0;

  wrlock (m);
  if (size < m->size) {
    /* Invariant 2: what is cut off must read as zeros if regrown.  The
     * allocation is kept; it is bounded by max_size anyway. */
    memset (m->data + size, 0, (size_t) (m->size - size));
    m->size = size;
  }
  else if (grow (m, size) == -1)
    r = -1;
  unlock (m);
  return r;
}

static void
mem_close (struct rawtrack_io *io)
{
  struct mem_io *m = (struct mem_io *) io;

  pthread_rwlock_destroy (&m->lock);
  free (m->data);
  free (m);
}

static unsigned
mem_caps (struct rawtrack_io *io)
{
  return RAWTRACK_IO_CAN_WRITE | RAWTRACK_IO_CAN_ZERO | RAWTRACK_IO_CAN_TRIM |
    RAWTRACK_IO_CAN_FUA | RAWTRACK_IO_CAN_EXTENTS | RAWTRACK_IO_CAN_TRUNCATE;
}

static int
mem_block_size (struct rawtrack_io *io, uint32_t *minimum,
                uint32_t *preferred, uint32_t *maximum)
{
  *minimum = 1;
  *preferred = 4096;
  *maximum = UINT32_MAX;
  return 0;
}

/* Whether [start, end), inside one sector, reads as zeros.  Lock held. */
static bool
reads_zero (const struct mem_io *m, uint64_t start, uint64_t end)
{
  const uint8_t *p;
  uint64_t len;

  if (start >= m->size)
    return true;
  end = MIN (end, m->size);
  p = m->data + start;
  len = end - start;
  return p[0] == 0 && memcmp (p, p + 1, (size_t) (len - 1)) == 0;
}

static int64_t
mem_extent (struct rawtrack_io *io, uint64_t offset, uint64_t count,
            int *is_data)
{
  struct mem_io *m = (struct mem_io *) io;
  uint64_t end, pos, next;
  bool data;

  if (range_end (offset, count, &end) == -1)
    return -1;
  if (count == 0) {
    errno = EINVAL;
    return -1;
  }

  rdlock (m);
  /* Invariant 4.  pos < size <= max_size keeps pos + 512 from wrapping;
   * at or past the end the rest of the request is one hole. */
  pos = offset;
  data = false;
  if (pos < m->size) {
    next = MIN (ROUND_DOWN (pos, EXTENT_SECTOR) + EXTENT_SECTOR, end);
    data = !reads_zero (m, pos, next);
    pos = next;
    while (pos < end && pos < m->size) {
      next = MIN (pos + EXTENT_SECTOR, end);
      if (!reads_zero (m, pos, next) != data)
        break;
      pos = next;
    }
  }
  if (!data && pos >= m->size)
    pos = end;
  unlock (m);

  *is_data = data;
  return (int64_t) (pos - offset);
}

static const struct rawtrack_io_ops mem_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "mem",
  .pread = mem_pread,
  .pwrite = mem_pwrite,
  .flush = mem_flush,
  .zero = mem_zero,
  .trim = mem_trim,
  .get_size = mem_get_size,
  .truncate = mem_truncate,
  .close = mem_close,
  .caps = mem_caps,
  .block_size = mem_block_size,
  .extent = mem_extent,
};

RAWTRACK_API struct rawtrack_io *
rawtrack_io_mem_new (const void *data, uint64_t size, uint64_t max_size)
{
  struct mem_io *m;
  int err;

  if (max_size == 0)
    max_size = DEFAULT_MAX_SIZE;
  /* Invariant 1. */
  max_size = MIN (max_size, (uint64_t) INT64_MAX);
  max_size = MIN (max_size, (uint64_t) SIZE_MAX);
  if (size > max_size) {
    rt_set_error (EINVAL, "memory backend: size %" PRIu64
                  " exceeds the maximum %" PRIu64, size, max_size);
    return NULL;
  }

  m = rt_calloc (1, sizeof *m);
  if (m == NULL)
    return NULL;
  m->data = data ? rt_malloc ((size_t) size) : rt_calloc (1, (size_t) size);
  if (m->data == NULL) {
    free (m);
    return NULL;
  }
  if (data && size > 0)
    memcpy (m->data, data, (size_t) size);
  err = pthread_rwlock_init (&m->lock, NULL);
  if (err != 0) {
    rt_set_error (err, "memory backend: pthread_rwlock_init: %s",
                  strerror (err));
    free (m->data);
    free (m);
    return NULL;
  }
  m->io.ops = &mem_ops;
  m->size = m->alloc = size;
  m->max_size = max_size;
  return &m->io;
}

RAWTRACK_API const void *
rawtrack_io_mem_data (struct rawtrack_io *io, uint64_t *size)
{
  struct mem_io *m = (struct mem_io *) io;
  const void *p;

  if (io == NULL || io->ops != &mem_ops) {
    if (size)
      *size = 0;
    rt_set_error (EINVAL, "rawtrack_io_mem_data: not a memory backend");
    return NULL;
  }
  rdlock (m);
  p = m->data;
  if (size)
    *size = m->size;
  unlock (m);
  return p;
}
