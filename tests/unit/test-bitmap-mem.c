/* rawtrack - unit test for lib/bitmap-mem.c.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every operation is checked against a naive model that keeps one byte
 * per bit and computes the touched granules by division (the library
 * uses shifts and word masks), over random operations for several seeds,
 * granularities (512 B .. 2 GiB) and sizes chosen around granule and
 * 64-bit word boundaries.  Then the fixed cases: constructor errors and
 * limits, OOM, the worked example of qcow2-facts.md §5.5, tail-bit
 * handling of the stream, merge errors.
 */
#undef NDEBUG
#include <assert.h>
#include <pthread.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap-mem.h"
#include "random.h"

/* ---- the model -------------------------------------------------------- */

struct model {
  uint64_t size;
  uint64_t g;
  uint64_t nbits;
  uint8_t *bit;                    /* one byte per bit, 0 or 1 */
};

static void
model_init (struct model *m, uint64_t size, uint64_t g)
{
  m->size = size;
  m->g = g;
  m->nbits = size / g + (size % g != 0);
  m->bit = calloc (m->nbits + 1, 1);
  assert (m->bit);
}

static void
model_free (struct model *m)
{
  free (m->bit);
}

/* Every granule that [off, off+len) ∩ [0, size) touches gets v. */
static void
model_range (struct model *m, uint64_t off, uint64_t len, uint8_t v)
{
  unsigned __int128 end = (unsigned __int128) off + len;
  uint64_t k, lo, hi;

  if (end > m->size)
    end = m->size;
  if (len == 0 || off >= end)
    return;
  lo = off / m->g;
  hi = (uint64_t) ((end + m->g - 1) / m->g);
  for (k = lo; k < hi; k++)
    m->bit[k] = v;
}

static uint64_t
model_count (const struct model *m)
{
  uint64_t k, n = 0;

  for (k = 0; k < m->nbits; k++)
    n += m->bit[k];
  return n;
}

static int64_t
model_next (const struct model *m, uint64_t off, uint64_t end, uint8_t v)
{
  uint64_t e = end < m->size ? end : m->size, k;

  if (off >= e)
    return -1;
  for (k = off / m->g; k <= (e - 1) / m->g; k++)
    if (m->bit[k] == v)
      return (int64_t) (k * m->g > off ? k * m->g : off);
  return -1;
}

static bool
model_area (const struct model *m, uint64_t off, uint64_t end,
            uint64_t *start, uint64_t *len)
{
  uint64_t e = end < m->size ? end : m->size, k, stop;
  int64_t s = model_next (m, off, end, 1);

  if (s < 0)
    return false;
  for (k = (uint64_t) s / m->g; k <= (e - 1) / m->g && m->bit[k]; k++)
    ;
  stop = k > (e - 1) / m->g ? e : k * m->g;
  *start = (uint64_t) s;
  *len = stop - (uint64_t) s;
  return true;
}

static uint64_t
model_stream_len (const struct model *m)
{
  return (m->nbits + 7) / 8;
}

static uint8_t
model_stream_byte (const struct model *m, uint64_t j)
{
  uint8_t b = 0;
  unsigned i;

  for (i = 0; i < 8; i++)
    if (8 * j + i < m->nbits && m->bit[8 * j + i])
      b |= (uint8_t) (1u << i);
  return b;
}

/* Full comparison of bitmap and model. */
static void
check_equal (const struct bitmap_mem *bm, const struct model *m)
{
  uint64_t len = model_stream_len (m), j;
  uint8_t *buf;

  assert (bitmap_mem_size (bm) == m->size);
  assert (bitmap_mem_granularity (bm) == m->g);
  assert (bitmap_mem_nbits (bm) == m->nbits);
  assert (bitmap_mem_stream_bytes (bm) == len);
  assert (bitmap_mem_count (bm) == model_count (m));
  assert (bitmap_mem_dirty_bytes (bm) == model_count (m) * m->g);
  buf = malloc (len + 16);
  assert (buf);
  memset (buf, 0xa5, len + 16);
  bitmap_mem_store (bm, 0, len + 16, buf);
  for (j = 0; j < len; j++)
    assert (buf[j] == model_stream_byte (m, j));
  for (j = len; j < len + 16; j++)
    assert (buf[j] == 0);
  free (buf);
}

/* ---- random inputs ---------------------------------------------------- */

static uint64_t rng_state;

static uint64_t
rnd (void)
{
  return rt_random (&rng_state);
}

static uint64_t
rnd_below (uint64_t n)
{
  return n ? rnd () % n : 0;
}

/* An offset biased towards the interesting places: granule and word
 * boundaries, the end of the disk, and a little past it. */
static uint64_t
rnd_offset (const struct model *m)
{
  uint64_t span = m->size + 2 * m->g, wordb = 64 * m->g;
  uint64_t base, k;

  switch (rnd () % 7) {
  case 6:                          /* chunk boundary (32768 bits) +- 1 */
    k = rnd_below (m->nbits / 32768 + 2);
    base = k * 32768 * m->g;
    return base + (rnd () % 3) - (base ? 1 : 0);
  case 0:                          /* anywhere, byte precision */
    return rnd_below (span + 1);
  case 1:                          /* granule boundary +- 1 */
    k = rnd_below (m->nbits + 2);
    base = k * m->g;
    return base + (rnd () % 3) - (base ? 1 : 0);
  case 2:                          /* word boundary +- a granule or byte */
    k = rnd_below (m->nbits / 64 + 2);
    base = k * wordb;
    switch (rnd () % 4) {
    case 0: return base;
    case 1: return base + 1;
    case 2: return base >= m->g ? base - m->g : base;
    default: return base ? base - 1 : 0;
    }
  case 3:                          /* near the end */
    return m->size - (m->size ? rnd_below (m->size < 3 * m->g
                                           ? m->size : 3 * m->g) : 0);
  case 4:
    return 0;
  default:                         /* granule aligned */
    return rnd_below (m->nbits + 1) * m->g;
  }
}

static uint64_t
rnd_len (const struct model *m)
{
  switch (rnd () % 8) {
  case 0: return 0;
  case 1: return 1;
  case 2: return UINT64_MAX - rnd_below (3);   /* clamp with overflow */
  case 3: return m->g * (1 + rnd_below (3)) - rnd_below (2);
  case 4: return 64 * m->g + rnd_below (3) * m->g;
  case 7: return (32768 + rnd_below (3) - 1) * m->g * (1 + rnd_below (2));
  case 5: return rnd_below (m->size + 1);
  default: return rnd_below (m->size / 8 + m->g + 1);
  }
}

/* A bitmap in a random state, with its model. */
static void
randomize (struct bitmap_mem *bm, struct model *m, unsigned ops)
{
  unsigned i;

  for (i = 0; i < ops; i++) {
    uint64_t off = rnd_offset (m), len = rnd_len (m);

    if (rnd () % 3) {
      bitmap_mem_set (bm, off, len);
      model_range (m, off, len, 1);
    }
    else {
      bitmap_mem_clear (bm, off, len);
      model_range (m, off, len, 0);
    }
  }
}

/* ---- random operation sequence ---------------------------------------- */

static void
random_run (uint64_t size, uint32_t g, unsigned ops)
{
  struct bitmap_mem *bm = bitmap_mem_new (size, g);
  struct model m;
  unsigned i;

  assert (bm);
  model_init (&m, size, g);
  check_equal (bm, &m);

  for (i = 0; i < ops; i++) {
    uint64_t off = rnd_offset (&m), len = rnd_len (&m), end;
    uint64_t s1, l1, s2, l2, lim = model_stream_len (&m) + 3;
    uint64_t sb = rnd_below (lim), n = rnd_below (lim - sb + 9);
    uint8_t *buf;
    bool r1, r2;
    int st, want;

    end = (rnd () & 1) ? off + rnd_len (&m) : rnd_offset (&m);
    if (end < off && (rnd () & 1))
      end = UINT64_MAX;

    switch (rnd () % 12) {
    case 0: case 1: case 2: case 3:
      bitmap_mem_set (bm, off, len);
      model_range (&m, off, len, 1);
      break;
    case 4: case 5: case 6:
      bitmap_mem_clear (bm, off, len);
      model_range (&m, off, len, 0);
      break;
    case 7:
      if (rnd () % 8 == 0) {
        if (rnd () & 1) {
          bitmap_mem_set_all (bm);
          memset (m.bit, 1, m.nbits);
        }
        else {
          bitmap_mem_clear_all (bm);
          memset (m.bit, 0, m.nbits);
        }
      }
      break;
    case 8:                        /* load random bytes */
      buf = malloc (n + 1);
      assert (buf);
      for (uint64_t j = 0; j < n; j++)
        buf[j] = (uint8_t) (rnd () % 4 ? rnd () : (rnd () & 1) * 0xff);
      bitmap_mem_load (bm, sb, n, buf);
      for (uint64_t j = 0; j < n; j++)
        for (unsigned b = 0; b < 8; b++) {
          uint64_t k = 8 * (sb + j) + b;
          if (k < m.nbits)
            m.bit[k] = (buf[j] >> b) & 1;
        }
      free (buf);
      break;
    case 9:                        /* fill */
      {
        bool ones = rnd () & 1;
        bitmap_mem_fill (bm, sb, n, ones);
        for (uint64_t k = 8 * sb; k < 8 * (sb + n) && k < m.nbits; k++)
          m.bit[k] = ones;
      }
      break;
    case 10:                       /* partial store */
      buf = malloc (n + 1);
      assert (buf);
      memset (buf, 0x5a, n + 1);
      bitmap_mem_store (bm, sb, n, buf);
      for (uint64_t j = 0; j < n; j++)
        assert (buf[j] == (sb + j < model_stream_len (&m)
                           ? model_stream_byte (&m, sb + j) : 0));
      assert (buf[n] == 0x5a);
      free (buf);
      break;
    default:                       /* range state */
      st = bitmap_mem_stream_range_state (bm, sb, n);
      {
        uint64_t ones = 0, bits = 0;
        for (uint64_t k = 8 * sb; k < 8 * (sb + n) && k < m.nbits; k++) {
          bits++;
          ones += m.bit[k];
        }
        want = ones == 0 ? 0 : ones == bits ? 1 : -1;
      }
      assert (st == want);
      break;
    }

    /* Queries after every step. */
    assert (bitmap_mem_get (bm, off) ==
            (off < m.size && m.bit[off / m.g]));
    assert (bitmap_mem_next_dirty (bm, off, end) ==
            model_next (&m, off, end, 1));
    assert (bitmap_mem_next_clean (bm, off, end) ==
            model_next (&m, off, end, 0));
    r1 = bitmap_mem_next_dirty_area (bm, off, end, &s1, &l1);
    r2 = model_area (&m, off, end, &s2, &l2);
    assert (r1 == r2);
    if (r1)
      assert (s1 == s2 && l1 == l2 && l1 > 0);
    if (i % 16 == 0)
      check_equal (bm, &m);
  }
  check_equal (bm, &m);

  /* Iterating all dirty areas reproduces the model exactly. */
  {
    uint64_t pos = 0, s, l, covered = 0;
    while (bitmap_mem_next_dirty_area (bm, pos, UINT64_MAX, &s, &l)) {
      assert (s >= pos && l > 0 && s + l <= m.size);
      assert (m.bit[s / m.g]);
      covered += l;
      pos = s + l;
      assert (pos == m.size || !m.bit[pos / m.g]);
    }
    (void) covered;
  }

  model_free (&m);
  bitmap_mem_free (bm);
}

/* ---- merge ------------------------------------------------------------ */

static void
merge_run (uint64_t size, uint32_t gd, uint32_t gs, unsigned ops)
{
  struct bitmap_mem *dst = bitmap_mem_new (size, gd);
  struct bitmap_mem *src = bitmap_mem_new (size, gs);
  struct model md, ms;
  uint64_t k;

  assert (dst && src);
  model_init (&md, size, gd);
  model_init (&ms, size, gs);
  randomize (dst, &md, ops);
  randomize (src, &ms, ops);

  assert (bitmap_mem_merge (dst, src) == 0);
  for (k = 0; k < ms.nbits; k++)
    if (ms.bit[k])
      model_range (&md, k * ms.g, ms.g, 1);   /* clamps to the size */
  check_equal (dst, &md);
  check_equal (src, &ms);

  /* Merging into itself changes nothing. */
  assert (bitmap_mem_merge (dst, dst) == 0);
  check_equal (dst, &md);

  model_free (&md);
  model_free (&ms);
  bitmap_mem_free (dst);
  bitmap_mem_free (src);
}

/* ---- fixed cases ------------------------------------------------------ */

static void
test_new_errors (void)
{
  static const uint32_t bad[] = { 0, 1, 256, 511, 513, 3000, 4097,
                                  0x80000001u, 0xffffffffu };
  struct bitmap_mem *bm;
  size_t i;

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rt_clear_error ();
    assert (bitmap_mem_new (1 << 20, bad[i]) == NULL);
    assert (rawtrack_get_errno () == EINVAL);
    assert (rawtrack_get_error () != NULL);
  }

  /* The serialized size limit: 2^32 bits is exactly 512 MiB. */
  rt_clear_error ();
  assert (bitmap_mem_new ((UINT64_C (1) << 32) * 512 + 1, 512) == NULL);
  assert (rawtrack_get_errno () == ERANGE);
  assert (strstr (rawtrack_get_error (), "Use larger granularity"));
  assert (bitmap_mem_new (UINT64_MAX, 1u << 31) == NULL);
  assert (rawtrack_get_errno () == ERANGE);

  /* At the limit (2^63 bytes at 2 GiB): the largest offsets still fit the
   * int64_t results.  The 512 MiB calloc is untouched zero pages except
   * for what the scan reads. */
  bm = bitmap_mem_new (UINT64_C (1) << 63, 1u << 31);
  assert (bm);
  assert (bitmap_mem_nbits (bm) == UINT64_C (1) << 32);
  assert (bitmap_mem_stream_bytes (bm) == BME_MAX_PHYS_SIZE);
  bitmap_mem_set (bm, INT64_MAX, 1);
  assert (bitmap_mem_get (bm, INT64_MAX));
  assert (bitmap_mem_count (bm) == 1);
  assert (bitmap_mem_dirty_bytes (bm) == UINT64_C (1) << 31);
  assert (bitmap_mem_next_dirty (bm, INT64_MAX, UINT64_MAX) == INT64_MAX);
  assert (bitmap_mem_next_dirty (bm, INT64_MAX - 5, UINT64_MAX)
          == INT64_MAX - 5);
  assert (bitmap_mem_next_dirty (bm, 0, UINT64_MAX)
          == INT64_MAX - (1ll << 31) + 1);
  assert (bitmap_mem_next_clean (bm, INT64_MAX - 5, UINT64_MAX) == -1);
  bitmap_mem_free (bm);

  /* Size 0: no bits, every query empty. */
  bm = bitmap_mem_new (0, 65536);
  assert (bm);
  assert (bitmap_mem_nbits (bm) == 0 && bitmap_mem_stream_bytes (bm) == 0);
  bitmap_mem_set (bm, 0, UINT64_MAX);
  bitmap_mem_set_all (bm);
  assert (bitmap_mem_count (bm) == 0);
  assert (!bitmap_mem_get (bm, 0));
  assert (bitmap_mem_next_dirty (bm, 0, UINT64_MAX) == -1);
  assert (bitmap_mem_next_clean (bm, 0, UINT64_MAX) == -1);
  assert (bitmap_mem_stream_range_state (bm, 0, 10) == 0);
  bitmap_mem_free (bm);

  bitmap_mem_free (NULL);
}

static void
test_oom (void)
{
  rt_clear_error ();
  rt_alloc_fail_after (1);
  assert (bitmap_mem_new (1 << 30, 65536) == NULL);
  assert (rawtrack_get_errno () == ENOMEM);
  rt_clear_error ();
  rt_alloc_fail_after (2);
  assert (bitmap_mem_new (1 << 30, 65536) == NULL);
  assert (rawtrack_get_errno () == ENOMEM);
  rt_alloc_fail_after (0);
}

/* qcow2-facts.md §5.5: 64 MiB disk, writes at [0,4K), [1M,1M+64K),
 * [4095K,4097K). */
static void
test_worked_example (void)
{
  static const uint64_t w[3][2] = {
    { 0, 4096 }, { 1 << 20, 65536 }, { 4095 * 1024, 2048 },
  };
  struct bitmap_mem *bm;
  uint8_t buf[8192];
  size_t i;

  bm = bitmap_mem_new (64 << 20, 65536);
  assert (bm && bitmap_mem_nbits (bm) == 1024);
  assert (bitmap_mem_stream_bytes (bm) == 128);
  for (i = 0; i < 3; i++)
    bitmap_mem_set (bm, w[i][0], w[i][1]);
  bitmap_mem_store (bm, 0, 128, buf);
  for (i = 0; i < 128; i++) {
    uint8_t want = i == 0 || i == 2 || i == 8 ? 0x01 : i == 7 ? 0x80 : 0;
    assert (buf[i] == want);
  }
  assert (bitmap_mem_count (bm) == 4);
  assert (bitmap_mem_dirty_bytes (bm) == 4 * 65536);
  bitmap_mem_free (bm);

  bm = bitmap_mem_new (64 << 20, 512);
  assert (bm && bitmap_mem_stream_bytes (bm) == 16384);
  for (i = 0; i < 3; i++)
    bitmap_mem_set (bm, w[i][0], w[i][1]);
  bitmap_mem_store (bm, 0, sizeof buf, buf);
  for (i = 0; i < sizeof buf; i++) {
    uint8_t want = 0;
    if (i == 0 || (i >= 256 && i <= 271))
      want = 0xff;
    else if (i == 1023)
      want = 0xc0;
    else if (i == 1024)
      want = 0x03;
    assert (buf[i] == want);
  }
  /* One cluster of 64 KiB of stream holds it all; the next is clean. */
  assert (bitmap_mem_stream_range_state (bm, 0, 65536) == -1);
  assert (bitmap_mem_stream_range_state (bm, 256, 16) == 1);
  assert (bitmap_mem_stream_range_state (bm, 1025, 65536) == 0);
  bitmap_mem_free (bm);
}

/* Stream tail bits, store past the end, load round trip. */
static void
test_stream_edges (void)
{
  /* 13 bits: stream of 2 bytes, byte 1 has 5 valid bits. */
  struct bitmap_mem *bm = bitmap_mem_new (13 * 4096 - 100, 4096);
  struct bitmap_mem *bm2;
  uint8_t buf[4], big[4096], back[4096];
  size_t i;

  assert (bm && bitmap_mem_nbits (bm) == 13);
  buf[0] = 0xff;
  buf[1] = 0xff;
  bitmap_mem_load (bm, 0, 2, buf);
  assert (bitmap_mem_count (bm) == 13);
  memset (buf, 0x77, sizeof buf);
  bitmap_mem_store (bm, 0, 4, buf);
  assert (buf[0] == 0xff && buf[1] == 0x1f && buf[2] == 0 && buf[3] == 0);
  assert (bitmap_mem_stream_range_state (bm, 0, 100) == 1);
  assert (bitmap_mem_stream_range_state (bm, 1, 1) == 1);
  assert (bitmap_mem_stream_range_state (bm, 2, 1) == 0);
  /* The last, partial granule counts whole in dirty_bytes. */
  assert (bitmap_mem_dirty_bytes (bm) == 13 * 4096);
  bitmap_mem_clear (bm, 13 * 4096 - 101, 1);
  assert (bitmap_mem_count (bm) == 12);
  assert (bitmap_mem_stream_range_state (bm, 0, 2) == -1);
  bitmap_mem_fill (bm, 1, 1, true);
  assert (bitmap_mem_count (bm) == 13);
  bitmap_mem_fill (bm, 0, UINT64_MAX, false);
  assert (bitmap_mem_count (bm) == 0);
  bitmap_mem_fill (bm, UINT64_MAX, UINT64_MAX, true);
  bitmap_mem_load (bm, UINT64_MAX - 1, 1, buf);
  memset (buf, 0x77, sizeof buf);
  bitmap_mem_store (bm, UINT64_MAX - 3, 3, buf);
  assert (buf[0] == 0 && buf[1] == 0 && buf[2] == 0 && buf[3] == 0x77);
  assert (bitmap_mem_count (bm) == 0);
  bitmap_mem_free (bm);

  /* Round trip through a fresh bitmap, in odd-sized chunks. */
  rng_state = 0x1234567;
  bm = bitmap_mem_new ((4096 * 8 - 3) * 512 - 3, 512);
  bm2 = bitmap_mem_new ((4096 * 8 - 3) * 512 - 3, 512);
  assert (bm && bm2);
  for (i = 0; i < sizeof big; i++)
    big[i] = (uint8_t) rnd ();
  bitmap_mem_load (bm, 0, sizeof big, big);
  for (i = 0; i < sizeof big; i += 37) {
    size_t n = sizeof big - i < 37 ? sizeof big - i : 37;
    uint8_t tmp[37];
    bitmap_mem_store (bm, i, n, tmp);
    bitmap_mem_load (bm2, i, n, tmp);
  }
  bitmap_mem_store (bm2, 0, sizeof back, back);
  big[sizeof big - 1] &= 0x1f;     /* 3 granules short: 5 valid bits */
  assert (memcmp (big, back, sizeof big) == 0);
  bitmap_mem_free (bm);
  bitmap_mem_free (bm2);
}

static void
test_merge_errors (void)
{
  struct bitmap_mem *a = bitmap_mem_new (1 << 20, 4096);
  struct bitmap_mem *b = bitmap_mem_new ((1 << 20) + 512, 4096);

  assert (a && b);
  bitmap_mem_set (b, 0, 1 << 20);
  rt_clear_error ();
  assert (bitmap_mem_merge (a, b) == -1);
  assert (rawtrack_get_errno () == EINVAL);
  assert (strstr (rawtrack_get_error (), "different sizes"));
  assert (bitmap_mem_count (a) == 0);
  bitmap_mem_free (a);
  bitmap_mem_free (b);

  /* A coarse src granule past a partial fine tail stays clipped: size
   * 3000 with src g=65536 dirty -> dst g=512 gets 6 bits, not 128. */
  a = bitmap_mem_new (3000, 512);
  b = bitmap_mem_new (3000, 65536);
  assert (a && b);
  bitmap_mem_set_all (b);
  assert (bitmap_mem_merge (a, b) == 0);
  assert (bitmap_mem_count (a) == 6);
  bitmap_mem_clear_all (a);
  bitmap_mem_set (a, 2999, 1);
  bitmap_mem_clear_all (b);
  assert (bitmap_mem_merge (b, a) == 0);
  assert (bitmap_mem_count (b) == 1 && bitmap_mem_get (b, 0));
  bitmap_mem_free (a);
  bitmap_mem_free (b);
}

/* The atomic variants: threads that set and clear interleaved bits of the
 * same words at once never lose each other's bits. */
struct atomic_job {
  struct bitmap_mem *bm;
  unsigned id, nthreads, rounds;
};

static void *
atomic_worker (void *arg)
{
  struct atomic_job *j = arg;
  unsigned r, k;

  for (r = 0; r < j->rounds; r++)
    for (k = j->id; k < 4096; k += j->nthreads) {
      bitmap_mem_set_atomic (j->bm, (uint64_t) k * 512, 512);
      if (r % 2)
        bitmap_mem_clear_atomic (j->bm, (uint64_t) k * 512, 512);
    }
  /* Leave: bit k set iff k's owner ended on a set (rounds odd: cleared). */
  for (k = j->id; k < 4096; k += j->nthreads)
    bitmap_mem_set_atomic (j->bm, (uint64_t) k * 512, 512);
  return NULL;
}

static void
test_atomic (void)
{
  struct bitmap_mem *bm = bitmap_mem_new (4096 * 512, 512);
  struct atomic_job jobs[4];
  pthread_t th[4];
  unsigned i;

  assert (bm);
  for (i = 0; i < 4; i++) {
    jobs[i] = (struct atomic_job) { bm, i, 4, 200 };
    assert (pthread_create (&th[i], NULL, atomic_worker, &jobs[i]) == 0);
  }
  for (i = 0; i < 4; i++)
    pthread_join (th[i], NULL);
  assert (bitmap_mem_count (bm) == 4096);
  assert (bitmap_mem_all_set_atomic (bm, 0, 4096 * 512));
  /* Clear every other bit concurrently-safe, then check the pattern. */
  for (i = 0; i < 4096; i += 2)
    bitmap_mem_clear_atomic (bm, (uint64_t) i * 512, 512);
  assert (bitmap_mem_count (bm) == 2048);
  assert (!bitmap_mem_all_set_atomic (bm, 0, 1024));
  assert (bitmap_mem_all_set_atomic (bm, 512, 512));
  assert (bitmap_mem_all_set_atomic (bm, 0, 0));
  bitmap_mem_free (bm);
}

/* each_dirty_atomic: runs as byte ranges (within a word, clipped to the
 * size and to the range asked), reading or taking; and taking while other
 * threads set bits loses none: every bit ends up taken or still set. */
struct runs { struct bitmap_mem *into; uint64_t calls, bytes; };

static void
run_fn (void *opaque, uint64_t start, uint64_t len)
{
  struct runs *r = opaque;

  r->calls++;
  r->bytes += len;
  if (r->into)
    bitmap_mem_set_atomic (r->into, start, len);
}

struct setter { struct bitmap_mem *bm; unsigned id; };

static void *
setter_worker (void *arg)
{
  struct setter *s = arg;
  unsigned r, k;

  for (r = 0; r < 50; r++)
    for (k = s->id; k < 4096; k += 3)
      bitmap_mem_set_atomic (s->bm, (uint64_t) k * 512, 512);
  return NULL;
}

static void
test_each_dirty_atomic (void)
{
  struct bitmap_mem *bm = bitmap_mem_new (1000 * 512 + 100, 512);
  struct bitmap_mem *got, *src;
  struct runs r = { NULL, 0, 0 };
  struct setter st[3];
  pthread_t th[3];
  unsigned i, round;

  assert (bm);
  bitmap_mem_set (bm, 60 * 512, 10 * 512);      /* crosses a word */
  bitmap_mem_set (bm, 1000 * 512, 100);         /* the short last granule */
  bitmap_mem_each_dirty_atomic (bm, 0, 1000 * 512 + 100, false, run_fn, &r);
  assert (r.calls == 3 && r.bytes == 10 * 512 + 100);
  assert (bitmap_mem_count (bm) == 11);         /* read: nothing taken */
  r = (struct runs) { NULL, 0, 0 };
  bitmap_mem_each_dirty_atomic (bm, 62 * 512, 4 * 512, true, run_fn, &r);
  assert (r.calls == 2 && r.bytes == 4 * 512);  /* 62-63 and 64-65 */
  assert (bitmap_mem_count (bm) == 7);
  assert (!bitmap_mem_get (bm, 63 * 512) && bitmap_mem_get (bm, 61 * 512) &&
          bitmap_mem_get (bm, 66 * 512));
  r = (struct runs) { NULL, 0, 0 };
  bitmap_mem_each_dirty_atomic (bm, 0, 0, true, run_fn, &r);
  bitmap_mem_each_dirty_atomic (bm, 2000 * 512, 512, true, run_fn, &r);
  assert (r.calls == 0 && bitmap_mem_count (bm) == 7);
  bitmap_mem_free (bm);

  /* Taking while three threads set every bit, 50 times over. */
  for (round = 0; round < 20; round++) {
    src = bitmap_mem_new (4096 * 512, 512);
    got = bitmap_mem_new (4096 * 512, 512);
    assert (src && got);
    r = (struct runs) { got, 0, 0 };
    for (i = 0; i < 3; i++) {
      st[i] = (struct setter) { src, i };
      assert (pthread_create (&th[i], NULL, setter_worker, &st[i]) == 0);
    }
    for (i = 0; i < 200; i++)
      bitmap_mem_each_dirty_atomic (src, 0, 4096 * 512, true, run_fn, &r);
    for (i = 0; i < 3; i++)
      pthread_join (th[i], NULL);
    bitmap_mem_each_dirty_atomic (src, 0, 4096 * 512, true, run_fn, &r);
    assert (bitmap_mem_count (src) == 0);
    assert (bitmap_mem_count (got) == 4096);
    bitmap_mem_free (src);
    bitmap_mem_free (got);
  }
}

/* Memory follows what was touched: a 15 TiB bitmap at 64 KiB (30 MiB of
 * bits) costs its chunk directory plus one chunk per chunk holding a mix;
 * all-dirty chunks cost nothing; scans skip clean chunks.  Concurrent
 * setters that race to allocate one chunk lose no bit. */
static void
test_sparse (void)
{
  uint64_t size = UINT64_C (15) << 40, m0;
  struct bitmap_mem *bm = bitmap_mem_new (size, 65536);
  struct bitmap_mem *src;
  struct setter st[3];
  pthread_t th[3];
  uint8_t *buf;
  unsigned i;

  assert (bm);
  m0 = bitmap_mem_memory (bm);
  assert (m0 < 512);                        /* O(1): no chunk directory */
  bitmap_mem_set (bm, UINT64_C (1) << 30, 65536);
  bitmap_mem_set (bm, UINT64_C (9) << 40, 4096);
  /* Two chunks, and the two directory pages (512 chunks, 1 TiB each)
   * that hold them: 4 KiB each. */
  assert (bitmap_mem_memory (bm) == m0 + 4 * 4096);
  assert (bitmap_mem_count (bm) == 2);
  /* 1 TiB dirty: 512 whole chunks, none allocated (their page is). */
  bitmap_mem_set (bm, UINT64_C (2) << 40, UINT64_C (1) << 40);
  assert (bitmap_mem_memory (bm) == m0 + 5 * 4096);
  assert (bitmap_mem_count (bm) == 2 + (UINT64_C (1) << 24));
  assert (bitmap_mem_all_set_atomic (bm, UINT64_C (2) << 40,
                                     UINT64_C (1) << 40));
  /* Clearing inside an all-dirty chunk allocates that one chunk. */
  bitmap_mem_clear_atomic (bm, (UINT64_C (2) << 40) + 65536, 1);
  assert (bitmap_mem_memory (bm) == m0 + 6 * 4096);
  assert (bitmap_mem_next_clean (bm, UINT64_C (2) << 40, size) ==
          (int64_t) ((UINT64_C (2) << 40) + 65536));
  assert (bitmap_mem_next_dirty (bm, (UINT64_C (1) << 30) + 65536, size) ==
          (int64_t) (UINT64_C (2) << 40));
  /* A whole chunk loaded as zeros or ones is given back. */
  buf = calloc (1, 4096);
  assert (buf);
  bitmap_mem_load (bm, 0, 4096, buf);       /* chunk 0 held the 1 GiB bit */
  assert (bitmap_mem_memory (bm) == m0 + 5 * 4096);
  bitmap_mem_clear (bm, 0, size);          /* (pages stay) */
  assert (bitmap_mem_memory (bm) == m0 + 3 * 4096 &&
          bitmap_mem_count (bm) == 0);
  assert (bitmap_mem_stream_range_state (bm, 0, bitmap_mem_stream_bytes (bm))
          == 0);
  memset (buf, 0xff, 4096);
  bitmap_mem_load (bm, 8192, 4096, buf);
  assert (bitmap_mem_memory (bm) == m0 + 3 * 4096 &&
          bitmap_mem_count (bm) == 32768);
  /* Taking an all-dirty chunk whole leaves it clean at no cost. */
  {
    struct runs r = { NULL, 0, 0 };
    bitmap_mem_each_dirty_atomic (bm, 0, size, true, run_fn, &r);
    assert (r.calls == 1 && r.bytes == (UINT64_C (32768) << 16));
    assert (bitmap_mem_count (bm) == 0);
  }
  free (buf);
  bitmap_mem_free (bm);

  /* Racing first sets of one chunk (many rounds, fresh bitmap each). */
  for (i = 0; i < 30; i++) {
    unsigned k;

    src = bitmap_mem_new (4096 * 512, 512);
    assert (src);
    for (k = 0; k < 3; k++) {
      st[k] = (struct setter) { src, k };
      assert (pthread_create (&th[k], NULL, setter_worker, &st[k]) == 0);
    }
    for (k = 0; k < 3; k++)
      pthread_join (th[k], NULL);
    assert (bitmap_mem_count (src) == 4096);
    bitmap_mem_free (src);
  }
}

int
main (void)
{
  static const uint32_t grans[] = { 512, 4096, 65536, 1u << 31 };
  unsigned seed, gi, si, gj;
  unsigned long runs = 0;

  test_new_errors ();
  test_oom ();
  test_worked_example ();
  test_stream_edges ();
  test_merge_errors ();
  test_atomic ();
  test_each_dirty_atomic ();

  for (seed = 1; seed <= 10; seed++) {
    for (gi = 0; gi < 4; gi++) {
      uint64_t g = grans[gi];
      uint64_t sizes[] = {
        0, 1, g - 1, g, g + 1, 63 * g, 64 * g - 1, 64 * g, 64 * g + 1,
        65 * g - 7, 128 * g, 129 * g + 511, 1000 * g + 7,
        g * (1 + seed * 97 % 700) + seed * 13,
      };

      for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        rng_state = 0x9E3779B97F4A7C15ull * (seed * 131 + gi * 17 + si + 1);
        random_run (sizes[si], (uint32_t) g, 600);
        runs++;
        for (gj = 0; gj < 4; gj++) {
          /* Both bitmaps must stay within the size limit: they do, the
           * sizes here are at most ~1000 granules of the larger g. */
          if (sizes[si] / grans[gj] > (UINT64_C (1) << 20))
            continue;
          merge_run (sizes[si], (uint32_t) g, grans[gj], 40);
          runs++;
        }
      }
    }
  }

  /* Sizes spanning several 32768-bit chunks, with a partial last one:
   * whole-chunk NULL / ONES states, chunk boundaries, the tail. */
  for (seed = 1; seed <= 6; seed++) {
    static const uint64_t nb[] = { 32768, 65536 + 1, 3 * 32768 + 77,
                                   4 * 32768 - 1 };
    for (si = 0; si < 4; si++) {
      uint32_t g = seed & 1 ? 512 : 65536;
      rng_state = 0x9E3779B97F4A7C15ull * (seed * 7919 + si + 1);
      random_run (nb[si] * g - (seed % 3) * 100, g, 400);
      merge_run (nb[si] * g - (seed % 3) * 100, g, g * 2, 30);
      merge_run (nb[si] * g - (seed % 3) * 100, g, g, 30);
      runs += 3;
    }
  }
  test_sparse ();

  printf ("test-bitmap-mem: %lu random runs passed\n", runs);
  return 0;
}
