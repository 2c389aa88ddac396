/* rawtrack - unit test for the fault and crash shims (lib/io/io-shims.h).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Fault: nth-call targeting, transient vs persistent, counters, and the
 * rule that a faulted call never reaches the inner backend.
 * Crash: read-your-writes against a byte model, flush = durable, and a
 * few hundred seeded power losses checking that every flushed byte
 * survives and every pending unit (sector clipped to its write) is either
 * all old or all new.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <pthread.h>

#include "internal.h"
#include "rawtrack/rawtrack-io.h"
#include "io/io-shims.h"
#include "test.h"

static bool
all_equal (const uint8_t *p, uint64_t len, uint8_t v)
{
  uint64_t i;

  for (i = 0; i < len; i++)
    if (p[i] != v)
      return false;
  return true;
}

static void
write_bytes (struct rawtrack_io *io, uint64_t offset, uint64_t len, uint8_t v,
             unsigned flags)
{
  uint8_t *buf = malloc (len);

  REQUIRE (buf != NULL);
  memset (buf, v, len);
  REQUIRE (rawtrack_io_pwrite (io, buf, len, offset, flags) == 0);
  free (buf);
}

static void
expect_bytes (struct rawtrack_io *io, uint64_t offset, uint64_t len, uint8_t v)
{
  uint8_t *buf = malloc (len);

  REQUIRE (buf != NULL);
  REQUIRE (rawtrack_io_pread (io, buf, len, offset) == 0);
  REQUIRE (all_equal (buf, len, v));
  free (buf);
}

static uint64_t
size_of (struct rawtrack_io *io)
{
  int64_t s = rawtrack_io_get_size (io);

  REQUIRE (s >= 0);
  return (uint64_t) s;
}

/* ---- fault shim -------------------------------------------------------- */

static void
test_fault (void)
{
  struct rawtrack_io *inner, *io;
  uint8_t buf[512];
  int is_data, n;

  inner = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (inner != NULL);
  io = io_fault_new (inner, true);
  REQUIRE (io != NULL);

  /* Unarmed: everything passes through and is counted. */
  write_bytes (io, 0, 512, 1, 0);
  write_bytes (io, 512, 512, 1, 0);
  write_bytes (io, 1024, 512, 1, 0);
  REQUIRE (io_fault_count (io, IO_OP_WRITE) == 3);
  REQUIRE (io_fault_count (io, IO_OP_READ) == 0);
  REQUIRE (!io_fault_fired (io));
  REQUIRE (size_of (io) == 1536);
  REQUIRE (rawtrack_io_caps (io) == rawtrack_io_caps (inner));
  REQUIRE (rawtrack_io_extent (io, 0, 100, &is_data) == 100 && is_data);

  /* Transient: only the 2nd write from now fails, and writes nothing. */
  io_fault_set (io, IO_OP_WRITE, 2, 0, false);
  write_bytes (io, 0, 512, 2, 0);
  memset (buf, 3, sizeof buf);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 512, 0), EIO);
  REQUIRE (io_fault_fired (io));
  expect_bytes (inner, 512, 512, 1);
  write_bytes (io, 1024, 512, 4, 0);
  write_bytes (io, 512, 512, 5, 0);
  expect_bytes (io, 0, 512, 2);
  expect_bytes (io, 512, 512, 5);
  expect_bytes (io, 1024, 512, 4);
  REQUIRE (io_fault_count (io, IO_OP_WRITE) == 7);
  REQUIRE (io_fault_count (io, IO_OP_READ) == 3);
  REQUIRE (io_fault_fired (io));

  /* Persistent on writes and flushes: the 3rd and all later fail; reads
   * are not in the mask and keep working. */
  io_fault_set (io, IO_OP_WRITE | IO_OP_FLUSH, 3, ENOSPC, true);
  REQUIRE (!io_fault_fired (io));
  REQUIRE (rawtrack_io_flush (io) == 0);
  write_bytes (io, 0, 512, 6, 0);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 0, 0), ENOSPC);
  REQUIRE (io_fault_fired (io));
  REQUIRE_ERR (rawtrack_io_flush (io), ENOSPC);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 0, 0), ENOSPC);
  expect_bytes (io, 0, 512, 6);
  REQUIRE (rawtrack_io_zero (io, 10, 0, 0) == 0);

  /* Disarm. */
  io_fault_set (io, IO_OP_ALL, 0, 0, false);
  REQUIRE (!io_fault_fired (io));
  write_bytes (io, 0, 512, 7, 0);
  REQUIRE (rawtrack_io_flush (io) == 0);

  /* Zero, trim and truncate faults leave inner untouched. */
  io_fault_set (io, IO_OP_ZERO, 1, EIO, false);
  REQUIRE_ERR (rawtrack_io_zero (io, 512, 0, 0), EIO);
  expect_bytes (inner, 0, 512, 7);
  io_fault_set (io, IO_OP_TRIM, 1, EIO, false);
  REQUIRE_ERR (rawtrack_io_trim (io, 512, 0), EIO);
  expect_bytes (inner, 0, 512, 7);
  io_fault_set (io, IO_OP_TRUNCATE, 1, EROFS, false);
  REQUIRE_ERR (rawtrack_io_truncate (io, 0), EROFS);
  REQUIRE (size_of (inner) == 1536);
  io_fault_set (io, IO_OP_READ, 1, EIO, false);
  REQUIRE_ERR (rawtrack_io_pread (io, buf, 10, 0), EIO);
  REQUIRE (rawtrack_io_pread (io, buf, 10, 0) == 0);
  REQUIRE (rawtrack_io_trim (io, 512, 0) == 0);
  REQUIRE (rawtrack_io_truncate (io, 1024) == 0);
  REQUIRE (size_of (io) == 1024);

  REQUIRE (io_fault_count (io, IO_OP_ALL) ==
         io_fault_count (io, IO_OP_READ) + io_fault_count (io, IO_OP_WRITE) +
         io_fault_count (io, IO_OP_FLUSH) + io_fault_count (io, IO_OP_ZERO) +
         io_fault_count (io, IO_OP_TRIM) +
         io_fault_count (io, IO_OP_TRUNCATE));
  REQUIRE (io_fault_count (io, IO_OP_ZERO) == 2);
  REQUIRE (io_fault_count (io, IO_OP_TRUNCATE) == 2);

  /* The SQLite loop: fail call n = 1, 2, ... of a 6-call operation until
   * it runs without the fault firing. */
  for (n = 1; ; n++) {
    int i, failed = 0;

    io_fault_set (io, IO_OP_ALL, (uint64_t) n, 0, false);
    for (i = 0; i < 5; i++)
      if (rawtrack_io_pwrite (io, buf, 100, (uint64_t) i * 100, 0) == -1)
        failed++;
    if (rawtrack_io_flush (io) == -1)
      failed++;
    if (!io_fault_fired (io)) {
      REQUIRE (failed == 0);
      break;
    }
    REQUIRE (failed == 1);
  }
  REQUIRE (n == 7);

  rawtrack_io_close (io);       /* closes inner too */

  /* Without ownership, inner outlives the shim. */
  inner = rawtrack_io_mem_new (NULL, 0, 0);
  io = io_fault_new (inner, false);
  REQUIRE (io != NULL);
  rawtrack_io_close (io);
  write_bytes (inner, 0, 10, 1, 0);
  rawtrack_io_close (inner);

  REQUIRE (io_fault_new (NULL, false) == NULL);
}

/* ---- crash shim: read-your-writes against a model ----------------------- */

#define MODEL_MAX 131072

struct model {
  uint8_t b[MODEL_MAX];
  uint64_t size;
};

static void
model_write (struct model *m, uint64_t off, uint64_t len, uint8_t v)
{
  memset (m->b + off, v, len);
  if (off + len > m->size)
    m->size = off + len;
}

static void
model_truncate (struct model *m, uint64_t size)
{
  if (size < m->size)
    memset (m->b + size, 0, m->size - size);
  m->size = size;
}

static void
model_check (const struct model *m, struct rawtrack_io *io)
{
  static uint8_t buf[MODEL_MAX];

  REQUIRE (size_of (io) == m->size);
  memset (buf, 0xee, sizeof buf);
  REQUIRE (rawtrack_io_pread (io, buf, MODEL_MAX, 0) == 0);
  REQUIRE (memcmp (buf, m->b, MODEL_MAX) == 0);
}

static void
test_crash_view (void)
{
  static struct model m;
  struct rawtrack_io *inner, *io;
  const uint8_t *data;
  uint64_t size;
  int is_data;

  inner = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (inner != NULL);
  write_bytes (inner, 0, 65536, 0x11, 0);
  io = io_crash_new (inner, false, 42);
  REQUIRE (io != NULL);
  memset (&m, 0, sizeof m);
  model_write (&m, 0, 65536, 0x11);
  model_check (&m, io);

  /* Pending writes are seen through the shim, not in inner. */
  write_bytes (io, 1000, 2000, 0x22, 0);
  model_write (&m, 1000, 2000, 0x22);
  write_bytes (io, 70000, 1000, 0x33, 0);
  model_write (&m, 70000, 1000, 0x33);
  REQUIRE (rawtrack_io_zero (io, 500, 2000, 0) == 0);
  model_write (&m, 2000, 500, 0);
  REQUIRE (rawtrack_io_trim (io, 100, 0) == 0);
  model_write (&m, 0, 100, 0);
  /* A trim past the end does not extend. */
  REQUIRE (rawtrack_io_trim (io, 10000, 70500) == 0);
  model_write (&m, 70500, 500, 0);
  model_check (&m, io);
  REQUIRE (io_crash_pending (io) == 5);
  data = rawtrack_io_mem_data (inner, &size);
  REQUIRE (size == 65536 && all_equal (data, 65536, 0x11));

  /* Truncate, then write past the new end: the gap reads as zeros. */
  REQUIRE (rawtrack_io_truncate (io, 60000) == 0);
  model_truncate (&m, 60000);
  write_bytes (io, 60005, 5, 0x44, 0);
  model_write (&m, 60005, 5, 0x44);
  model_check (&m, io);

  /* Extents see pending writes as data and cut inner runs at them. */
  REQUIRE (rawtrack_io_extent (io, 1000, 10, &is_data) == 10 && is_data);

  /* Flush applies the list in order: inner now holds the model. */
  REQUIRE (rawtrack_io_flush (io) == 0);
  REQUIRE (io_crash_pending (io) == 0);
  data = rawtrack_io_mem_data (inner, &size);
  REQUIRE (size == m.size && memcmp (data, m.b, size) == 0);
  model_check (&m, io);

  /* FUA is durable at once. */
  write_bytes (io, 0, 512, 0x55, RAWTRACK_IO_FUA);
  model_write (&m, 0, 512, 0x55);
  REQUIRE (io_crash_pending (io) == 0);
  data = rawtrack_io_mem_data (inner, &size);
  REQUIRE (all_equal (data, 512, 0x55));

  /* Bad ranges. */
  REQUIRE_ERR (rawtrack_io_pwrite (io, data, 10, UINT64_MAX - 5, 0), EINVAL);
  REQUIRE_ERR (rawtrack_io_pread (io, m.b, 10, UINT64_MAX - 5), EINVAL);
  REQUIRE_ERR (rawtrack_io_zero (io, 10, UINT64_MAX - 5, 0), EINVAL);
  REQUIRE_ERR (rawtrack_io_truncate (io, UINT64_MAX), EINVAL);
  REQUIRE (io_crash_pending (io) == 0);

  /* Closing without a crash drains the cache into inner. */
  write_bytes (io, 512, 512, 0x66, 0);
  rawtrack_io_close (io);
  expect_bytes (inner, 512, 512, 0x66);
  rawtrack_io_close (inner);

  /* Extents over an all-zero inner: a pending write cuts the hole. */
  inner = rawtrack_io_mem_new (NULL, 65536, 0);
  io = io_crash_new (inner, true, 1);
  REQUIRE (io != NULL);
  write_bytes (io, 8192, 100, 0x77, 0);
  REQUIRE (rawtrack_io_extent (io, 0, 65536, &is_data) == 8192 && !is_data);
  REQUIRE (rawtrack_io_extent (io, 8192, 65536, &is_data) == 100 && is_data);
  REQUIRE (rawtrack_io_flush (io) == 0);
  REQUIRE (rawtrack_io_extent (io, 8192, 65536, &is_data) == 512 && is_data);
  rawtrack_io_close (io);       /* closes inner too */
}

/* ---- crash shim: power loss -------------------------------------------- */

#define BASE 32768              /* inner size before the test */

static uint8_t
old_byte (uint64_t i)
{
  return (uint8_t) (i * 7 + 3);
}

/* A pending write in the crash scenario. */
struct pw {
  uint64_t off, len;
  int kind;                     /* 0 write, 1 zero */
  uint8_t v;
};

static const struct pw pending_set[] = {
  { 8192, 4096, 0, 0xb1 },      /* sector-aligned */
  { 13000, 1500, 0, 0xb2 },     /* partial sectors at both ends */
  { 20000, 1, 0, 0xb3 },        /* one byte */
  { 16384, 1024, 1, 0 },        /* zero over old data */
  { BASE + 100, 1100, 0, 0xb4 },/* past the end: extends */
};
#define NR_PENDING (sizeof pending_set / sizeof pending_set[0])

struct tally {
  uint64_t kept, dropped, garbled;
};

/* Check one unit [s, e) of the inner after a crash. */
static void
check_unit (const uint8_t *data, uint64_t size, uint64_t s, uint64_t e,
            const uint8_t *durable, uint8_t v, bool garble,
            struct tally *t)
{
  bool is_old = true, is_new = true;
  uint64_t i;

  for (i = s; i < e; i++) {
    uint8_t b = i < size ? data[i] : 0;

    if (b != durable[i])
      is_old = false;
    if (b != v)
      is_new = false;
  }
  if (is_new)
    t->kept++;
  else if (is_old)
    t->dropped++;
  else {
    REQUIRE (garble);
    t->garbled++;
  }
}

static void
crash_once (uint64_t seed, bool garble, struct tally *t)
{
  static uint8_t durable[BASE + 4096];
  static uint8_t covered[BASE + 4096];
  struct rawtrack_io *inner, *io;
  const uint8_t *data;
  uint64_t size, i, s;
  uint32_t min, pref, max;
  uint8_t buf[16];
  int is_data;
  size_t k;

  /* Old content, then two flushed writes: "durable". */
  inner = rawtrack_io_mem_new (NULL, BASE, 0);
  REQUIRE (inner != NULL);
  memset (durable, 0, sizeof durable);
  for (i = 0; i < BASE; i++)
    durable[i] = old_byte (i);
  REQUIRE (rawtrack_io_pwrite (inner, durable, BASE, 0, 0) == 0);

  io = io_crash_new (inner, false, seed);
  REQUIRE (io != NULL);
  io_crash_set_garble (io, garble);
  write_bytes (io, 0, 4096, 0xa1, 0);
  write_bytes (io, 5000, 100, 0xa2, 0);
  REQUIRE (rawtrack_io_flush (io) == 0);
  memset (durable, 0xa1, 4096);
  memset (durable + 5000, 0xa2, 100);

  /* Pending, then power loss. */
  memset (covered, 0, sizeof covered);
  for (k = 0; k < NR_PENDING; k++) {
    const struct pw *p = &pending_set[k];

    if (p->kind == 0)
      write_bytes (io, p->off, p->len, p->v, 0);
    else
      REQUIRE (rawtrack_io_zero (io, p->len, p->off, 0) == 0);
    memset (covered + p->off, 1, p->len);
  }
  REQUIRE (io_crash_pending (io) == NR_PENDING);
  REQUIRE (io_crash_crash (io) == 0);
  REQUIRE (io_crash_crashed (io));

  /* Everything fails with EIO from now on. */
  REQUIRE_ERR (rawtrack_io_pread (io, buf, 1, 0), EIO);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 1, 0, 0), EIO);
  REQUIRE_ERR (rawtrack_io_flush (io), EIO);
  REQUIRE_ERR (rawtrack_io_zero (io, 1, 0, 0), EIO);
  REQUIRE_ERR (rawtrack_io_trim (io, 1, 0), EIO);
  REQUIRE_ERR (rawtrack_io_truncate (io, 0), EIO);
  REQUIRE_ERR (rawtrack_io_get_size (io), EIO);
  REQUIRE_ERR (rawtrack_io_extent (io, 0, 1, &is_data), EIO);
  REQUIRE_ERR (io->ops->block_size (io, &min, &pref, &max), EIO);
  REQUIRE (rawtrack_io_caps (io) == 0);
  REQUIRE (io_crash_crash (io) == 0);
  rawtrack_io_close (io);

  /* Every byte no pending write touched is exactly as flushed. */
  data = rawtrack_io_mem_data (inner, &size);
  REQUIRE (size >= BASE && size <= BASE + 1200);
  for (i = 0; i < BASE + 1200; i++)
    if (!covered[i])
      REQUIRE ((i < size ? data[i] : 0) == durable[i]);

  /* Every pending unit is old or new (or, garbling, anything). */
  for (k = 0; k < NR_PENDING; k++) {
    const struct pw *p = &pending_set[k];

    for (s = p->off; s < p->off + p->len; ) {
      uint64_t e = (s | 511) + 1;

      if (e > p->off + p->len)
        e = p->off + p->len;
      check_unit (data, size, s, e, durable, p->v, garble, t);
      s = e;
    }
  }
  /* The file only grew as far as a unit of the extending write that
   * made it. */
  if (size > BASE)
    REQUIRE (data[size - 1] == 0xb4 || garble);
  rawtrack_io_close (inner);
}

static void
test_crash_seeds (void)
{
  struct tally t = { 0 }, g = { 0 };
  uint64_t seed;

  for (seed = 0; seed < 300; seed++)
    crash_once (seed, false, &t);
  REQUIRE (t.kept > 0 && t.dropped > 0 && t.garbled == 0);
  for (seed = 0; seed < 100; seed++)
    crash_once (seed, true, &g);
  REQUIRE (g.kept > 0 && g.dropped > 0 && g.garbled > 0);
}

/* Two writes to the same sectors: each unit ends up with one of the
 * values it has had, never a mix within the unit. */
static void
test_crash_overlap (void)
{
  bool seen_b = false, seen_c = false, seen_old = false;
  uint64_t seed;

  for (seed = 0; seed < 200; seed++) {
    struct rawtrack_io *inner = rawtrack_io_mem_new (NULL, 4096, 0);
    struct rawtrack_io *io = io_crash_new (inner, false, seed);
    const uint8_t *data;
    uint64_t size, s, i;

    REQUIRE (io != NULL);
    write_bytes (io, 0, 1024, 0xbb, 0);
    write_bytes (io, 512, 1024, 0xcc, 0);
    REQUIRE (io_crash_crash (io) == 0);
    rawtrack_io_close (io);
    data = rawtrack_io_mem_data (inner, &size);
    REQUIRE (size == 4096);
    for (s = 0; s < 1536; s += 512) {
      uint8_t v = data[s];

      for (i = s; i < s + 512; i++)
        REQUIRE (data[i] == v);
      REQUIRE (v == 0 || (v == 0xbb && s < 1024) || (v == 0xcc && s >= 512));
      seen_old |= v == 0;
      seen_b |= v == 0xbb;
      seen_c |= v == 0xcc;
    }
    REQUIRE (all_equal (data + 1536, 4096 - 1536, 0));
    rawtrack_io_close (inner);
  }
  REQUIRE (seen_old && seen_b && seen_c);
}

/* A truncate is a barrier: what was flushed below the new size stays. */
static void
test_crash_truncate (void)
{
  uint64_t seed;

  for (seed = 0; seed < 100; seed++) {
    struct rawtrack_io *inner = rawtrack_io_mem_new (NULL, 0, 0);
    struct rawtrack_io *io;
    const uint8_t *data;
    uint64_t size, i;

    write_bytes (inner, 0, 8192, 0x11, 0);
    io = io_crash_new (inner, false, seed);
    REQUIRE (io != NULL);
    REQUIRE (rawtrack_io_truncate (io, 1000) == 0);
    write_bytes (io, 2000, 1000, 0x22, 0);
    REQUIRE (size_of (io) == 3000);
    expect_bytes (io, 1000, 1000, 0);
    REQUIRE (io_crash_crash (io) == 0);
    rawtrack_io_close (io);

    data = rawtrack_io_mem_data (inner, &size);
    REQUIRE (size == 1000 || size >= 2000);
    for (i = 0; i < size; i++) {
      uint8_t b = data[i];

      if (i < 1000)
        REQUIRE (b == 0x11);
      else if (i >= 2000 && i < 3000)
        REQUIRE (b == 0x22 || b == 0x11 || b == 0);
      else
        REQUIRE (b == 0x11 || b == 0);
    }
    rawtrack_io_close (inner);
  }
}

/* The shims have no pwrite_batch of their own: a batch reaches them as
 * one pwrite per range, in order, so each range is faulted, counted and
 * kept pending like any write (what the tracker's commits rely on in the
 * crash tests). */
static void
test_batch_through_shims (void)
{
  struct rawtrack_io *inner, *io;
  struct rawtrack_io_vec v[3];
  uint8_t a[512], b[512], c[512];

  memset (a, 0xa1, sizeof a);
  memset (b, 0xb2, sizeof b);
  memset (c, 0xc3, sizeof c);
  v[0] = (struct rawtrack_io_vec) { a, 512, 0 };
  v[1] = (struct rawtrack_io_vec) { b, 512, 65536 };
  v[2] = (struct rawtrack_io_vec) { c, 512, 4096 };

  /* Fault on the 2nd range: the batch fails with its errno, the first
   * range is written, the third never attempted. */
  inner = rawtrack_io_mem_new (NULL, 131072, 0);
  io = io_fault_new (inner, false);
  REQUIRE (io != NULL);
  io_fault_set (io, IO_OP_WRITE, 2, ENOSPC, false);
  REQUIRE_ERR (rawtrack_io_pwrite_batch (io, v, 3), ENOSPC);
  REQUIRE (io_fault_count (io, IO_OP_WRITE) == 2);
  expect_bytes (inner, 0, 512, 0xa1);
  expect_bytes (inner, 65536, 512, 0);
  expect_bytes (inner, 4096, 512, 0);
  REQUIRE (rawtrack_io_pwrite_batch (io, v, 3) == 0);
  REQUIRE (io_fault_count (io, IO_OP_WRITE) == 5);
  expect_bytes (inner, 65536, 512, 0xb2);
  expect_bytes (inner, 4096, 512, 0xc3);
  rawtrack_io_close (io);
  rawtrack_io_close (inner);

  /* Crash shim: pending until flush, three writes pending. */
  inner = rawtrack_io_mem_new (NULL, 131072, 0);
  io = io_crash_new (inner, false, 11);
  REQUIRE (io != NULL);
  REQUIRE (rawtrack_io_pwrite_batch (io, v, 3) == 0);
  REQUIRE (io_crash_count (io, IO_OP_WRITE) == 3);
  REQUIRE (io_crash_pending (io) == 3);
  expect_bytes (io, 65536, 512, 0xb2);
  expect_bytes (inner, 65536, 512, 0);
  REQUIRE (rawtrack_io_flush (io) == 0);
  expect_bytes (inner, 0, 512, 0xa1);
  expect_bytes (inner, 65536, 512, 0xb2);
  expect_bytes (inner, 4096, 512, 0xc3);
  rawtrack_io_close (io);
  rawtrack_io_close (inner);
}

static void
test_crash_at (void)
{
  struct rawtrack_io *inner, *io;
  const uint8_t *data;
  uint64_t size;
  uint8_t buf[512];

  /* The 3rd write crashes: it never reaches inner, and later calls fail. */
  inner = rawtrack_io_mem_new (NULL, 8192, 0);
  io = io_crash_new (inner, false, 7);
  REQUIRE (io != NULL);
  io_crash_set_crash_at (io, IO_OP_WRITE, 3);
  write_bytes (io, 0, 512, 0x01, 0);
  REQUIRE (rawtrack_io_pread (io, buf, 512, 0) == 0);
  write_bytes (io, 512, 512, 0x02, 0);
  memset (buf, 0x03, sizeof buf);
  REQUIRE (!io_crash_crashed (io));
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 512, 1024, 0), EIO);
  REQUIRE (io_crash_crashed (io));
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 512, 1024, 0), EIO);
  REQUIRE (io_crash_count (io, IO_OP_WRITE) == 4);
  REQUIRE (io_crash_count (io, IO_OP_READ) == 1);
  REQUIRE (io_crash_count (io, IO_OP_ALL) == 5);
  rawtrack_io_close (io);
  data = rawtrack_io_mem_data (inner, &size);
  REQUIRE (size == 8192 && all_equal (data + 1024, 512, 0));
  rawtrack_io_close (inner);

  /* Crash at the first flush: the flush is not applied as a flush. */
  inner = rawtrack_io_mem_new (NULL, 0, 0);
  io = io_crash_new (inner, false, 8);
  REQUIRE (io != NULL);
  io_crash_set_crash_at (io, IO_OP_FLUSH, 1);
  write_bytes (io, 0, 4096, 0x09, 0);
  REQUIRE_ERR (rawtrack_io_flush (io), EIO);
  REQUIRE (io_crash_crashed (io));
  rawtrack_io_close (io);
  rawtrack_io_close (inner);

  /* Disarmed: nothing happens. */
  inner = rawtrack_io_mem_new (NULL, 0, 0);
  io = io_crash_new (inner, true, 9);
  REQUIRE (io != NULL);
  io_crash_set_crash_at (io, IO_OP_READ, 1);
  io_crash_set_crash_at (io, IO_OP_READ, 0);
  REQUIRE (rawtrack_io_pread (io, buf, 10, 0) == 0);
  REQUIRE (!io_crash_crashed (io));
  rawtrack_io_close (io);
}

static void
test_crash_limits (void)
{
  struct rawtrack_io *inner, *fault, *io;
  uint8_t buf[8192] = { 0 };

  /* Pending memory is bounded; a refused write changes nothing. */
  inner = rawtrack_io_mem_new (NULL, 0, 0);
  io = io_crash_new (inner, true, 3);
  REQUIRE (io != NULL);
  io_crash_set_max_pending (io, 8192);
  write_bytes (io, 0, 4096, 0x01, 0);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 4096, 0), ENOSPC);
  REQUIRE (io_crash_pending (io) == 1);
  REQUIRE (size_of (io) == 4096);
  REQUIRE (rawtrack_io_flush (io) == 0);
  write_bytes (io, 4096, 4096, 0x02, 0);
  /* A huge zero is cheap (its units are bounded), and the bound holds. */
  io_crash_set_max_pending (io, 0);
  REQUIRE (rawtrack_io_zero (io, UINT64_C (1) << 40, UINT64_C (1) << 40, 0)
         == 0);
  REQUIRE (size_of (io) == UINT64_C (1) << 41);
  io_crash_set_max_pending (io, 1);
  REQUIRE_ERR (rawtrack_io_zero (io, 1, 0, 0), ENOSPC);
  REQUIRE (io_crash_pending (io) == 2);
  /* Close drains into inner, which refuses the zero past its 1 GiB bound
   * before allocating anything; close cannot report that. */
  rawtrack_io_close (io);

  /* A failed flush keeps what it did not apply. */
  inner = rawtrack_io_mem_new (NULL, 0, 0);
  fault = io_fault_new (inner, true);
  io = io_crash_new (fault, true, 4);
  REQUIRE (io != NULL);
  write_bytes (io, 0, 512, 0x05, 0);
  write_bytes (io, 512, 512, 0x06, 0);
  io_fault_set (fault, IO_OP_WRITE, 2, EIO, false);
  REQUIRE_ERR (rawtrack_io_flush (io), EIO);
  REQUIRE (io_crash_pending (io) == 1);
  expect_bytes (inner, 0, 512, 0x05);
  expect_bytes (inner, 512, 512, 0);
  REQUIRE (rawtrack_io_flush (io) == 0);
  REQUIRE (io_crash_pending (io) == 0);
  expect_bytes (inner, 512, 512, 0x06);
  rawtrack_io_close (io);       /* closes fault, which closes inner */

  REQUIRE (io_crash_new (NULL, false, 0) == NULL);
}

/* A read-only inner is refused up front, not at flush. */
static void
test_crash_readonly (void)
{
  const char *t = getenv ("TMPDIR");
  char tpath[4200];
  struct rawtrack_io *inner, *io;
  uint8_t buf[16] = { 0 };
  int fd;

  snprintf (tpath, sizeof tpath, "%s/test-io-shims.XXXXXX",
            t && *t ? t : "/tmp");
  fd = mkstemp (tpath);
  REQUIRE (fd >= 0);
  close (fd);
  inner = rawtrack_io_file_open (tpath, RAWTRACK_IO_RDONLY);
  REQUIRE (inner != NULL);
  io = io_crash_new (inner, true, 5);
  REQUIRE (io != NULL);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 0, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_zero (io, 10, 0, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_trim (io, 10, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_truncate (io, 10), EROFS);
  REQUIRE (io_crash_pending (io) == 0);
  rawtrack_io_close (io);
  unlink (tpath);
}

/* ---- crash shim under threads ----------------------------------------- */

#define WORKERS 4

struct worker {
  struct rawtrack_io *io;
  int id;
};

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  uint8_t buf[1024], back[1024];
  int i;

  for (i = 0; i < 50; i++) {
    uint64_t off = ((uint64_t) i * WORKERS + (uint64_t) w->id) * sizeof buf;

    memset (buf, w->id + 1, sizeof buf);
    REQUIRE (rawtrack_io_pwrite (w->io, buf, sizeof buf, off, 0) == 0);
    REQUIRE (rawtrack_io_pread (w->io, back, sizeof back, off) == 0);
    REQUIRE (memcmp (buf, back, sizeof buf) == 0);
    if (i % 10 == 9)
      REQUIRE (rawtrack_io_flush (w->io) == 0);
  }
  return NULL;
}

static void
test_crash_threads (void)
{
  struct rawtrack_io *inner = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_io *io = io_crash_new (inner, false, 11);
  struct worker w[WORKERS];
  pthread_t th[WORKERS];
  int i;

  REQUIRE (io != NULL);
  for (i = 0; i < WORKERS; i++) {
    w[i].io = io;
    w[i].id = i;
    REQUIRE (pthread_create (&th[i], NULL, worker_main, &w[i]) == 0);
  }
  for (i = 0; i < WORKERS; i++)
    REQUIRE (pthread_join (th[i], NULL) == 0);
  REQUIRE (rawtrack_io_flush (io) == 0);
  for (i = 0; i < 50 * WORKERS; i++)
    expect_bytes (inner, (uint64_t) i * 1024, 1024,
                  (uint8_t) (i % WORKERS + 1));
  rawtrack_io_close (io);
  rawtrack_io_close (inner);
}

int
main (void)
{
  test_fault ();
  test_crash_view ();
  test_crash_seeds ();
  test_crash_overlap ();
  test_crash_truncate ();
  test_crash_at ();
  test_batch_through_shims ();
  test_crash_limits ();
  test_crash_readonly ();
  test_crash_threads ();
  return 0;
}
