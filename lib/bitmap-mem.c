/* rawtrack - in-memory dirty bitmap.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the bits of one dirty bitmap while it is in RAM, the byte-range
 * semantics of QEMU's HBitmap-backed dirty bitmaps (set and clear both
 * round outwards to whole granules, ranges clamp to the disk size), and
 * the conversion to and from the qcow2 on-disk bit stream.  Reading and
 * writing bitmap clusters is bitmap-table's job, not this file's.
 *
 * Locking: none.  A bitmap belongs to an image and callers hold the image
 * lock (or own the bitmap privately, as during load and tests).
 *
 * Representation: a flat array of uint64_t words; bit k lives in word k/64
 * at bit k%64.  No hierarchy as in HBitmap: at the largest bitmap QEMU
 * accepts (512 MiB of bits) a linear ctz scan is fast enough for the
 * callers we have (one pass per backup or store).
 *
 * Invariants:
 *   1. nbits = ceil(size / granularity), nwords = ceil(nbits / 64), and the
 *      serialized stream (ceil(nbits / 8) bytes) is <= BME_MAX_PHYS_SIZE.
 *   2. Bits at index >= nbits in the last word are always zero.  store
 *      relies on it to produce zero tail bits; count and the scanners rely
 *      on it to need no tail masking.
 *   3. On a little-endian host the memory image of the word array *is* the
 *      qcow2 stream (bit k in byte k/8 at bit k%8), so store/load are
 *      memcpy; a portable byte loop serves big-endian hosts (and can be
 *      forced with -DBITMAP_MEM_PORTABLE to test it).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap-mem.h"

#if defined __BYTE_ORDER__ && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
  && !defined BITMAP_MEM_PORTABLE
#define WORDS_ARE_STREAM 1
#else
#define WORDS_ARE_STREAM 0
#endif

struct bitmap_mem {
  uint64_t size;                   /* virtual disk size in bytes */
  uint64_t nbits;                  /* ceil(size / granularity) */
  uint64_t nwords;                 /* ceil(nbits / 64) */
  uint32_t granularity;            /* bytes per bit, power of two */
  uint32_t gran_bits;              /* log2 (granularity) */
  uint64_t *words;                 /* nwords words, tail bits zero */
};

struct bitmap_mem *
bitmap_mem_new (uint64_t size, uint32_t granularity)
{
  struct bitmap_mem *bm;
  uint32_t gb;
  uint64_t nbits, stream;

  if (granularity == 0 || (granularity & (granularity - 1)) != 0) {
    rt_set_error (EINVAL, "bitmap granularity %" PRIu32
                  " is not a power of two", granularity);
    return NULL;
  }
  gb = (uint32_t) __builtin_ctz (granularity);
  if (gb < BME_MIN_GRAN_BITS || gb > BME_MAX_GRAN_BITS) {
    rt_set_error (EINVAL, "bitmap granularity %" PRIu32
                  " is outside 512 B .. 2 GiB", granularity);
    return NULL;
  }

  /* Written so that no step can overflow, even for size = UINT64_MAX. */
  nbits = (size >> gb) + ((size & (granularity - 1)) != 0);
  stream = (nbits >> 3) + ((nbits & 7) != 0);
  if (stream > BME_MAX_PHYS_SIZE) {
    rt_set_error (ERANGE, "Too much space will be occupied by the bitmap. "
                  "Use larger granularity");
    return NULL;
  }

  bm = rt_malloc (sizeof *bm);
  if (!bm)
    return NULL;
  bm->size = size;
  bm->nbits = nbits;
  bm->nwords = (nbits + 63) >> 6;
  bm->granularity = granularity;
  bm->gran_bits = gb;
  bm->words = rt_calloc (bm->nwords, sizeof (uint64_t));
  if (!bm->words) {
    free (bm);
    return NULL;
  }
  return bm;
}

void
bitmap_mem_free (struct bitmap_mem *bm)
{
  if (bm) {
    free (bm->words);
    free (bm);
  }
}

uint64_t
bitmap_mem_size (const struct bitmap_mem *bm)
{
  return bm->size;
}

uint32_t
bitmap_mem_granularity (const struct bitmap_mem *bm)
{
  return bm->granularity;
}

uint64_t
bitmap_mem_nbits (const struct bitmap_mem *bm)
{
  return bm->nbits;
}

/* ---- bit-range primitives (bits [lo, hi), lo < hi <= nbits) ----------- */

static void
set_bits (uint64_t *w, uint64_t lo, uint64_t hi)
{
  uint64_t i = lo >> 6, last = (hi - 1) >> 6;
  uint64_t first_mask = ~0ull << (lo & 63);
  uint64_t last_mask = ~0ull >> (63 - ((hi - 1) & 63));

  if (i == last) {
    w[i] |= first_mask & last_mask;
    return;
  }
  w[i] |= first_mask;
  if (last > i + 1)
    memset (&w[i + 1], 0xff, (last - i - 1) * sizeof *w);
  w[last] |= last_mask;
}

static void
clear_bits (uint64_t *w, uint64_t lo, uint64_t hi)
{
  uint64_t i = lo >> 6, last = (hi - 1) >> 6;
  uint64_t first_mask = ~0ull << (lo & 63);
  uint64_t last_mask = ~0ull >> (63 - ((hi - 1) & 63));

  if (i == last) {
    w[i] &= ~(first_mask & last_mask);
    return;
  }
  w[i] &= ~first_mask;
  if (last > i + 1)
    memset (&w[i + 1], 0, (last - i - 1) * sizeof *w);
  w[last] &= ~last_mask;
}

/* The first set bit in [lo, hi) when invert is 0, the first clear bit
 * when invert is ~0; hi when there is none.  hi <= nbits, so the zero
 * tail (invariant 2) never shows up as a clear bit. */
static uint64_t
find_bit (const uint64_t *w, uint64_t lo, uint64_t hi, uint64_t invert)
{
  uint64_t i, last, x, bit;

  if (lo >= hi)
    return hi;
  i = lo >> 6;
  last = (hi - 1) >> 6;
  x = (w[i] ^ invert) & (~0ull << (lo & 63));
  while (x == 0) {
    if (++i > last)
      return hi;
    x = w[i] ^ invert;
  }
  bit = (i << 6) + (uint64_t) __builtin_ctzll (x);
  return bit < hi ? bit : hi;
}

/* Bits touched by the guest range [offset, offset+len) clamped to the
 * size, as [*lo, *hi).  false when the clamped range is empty. */
static bool
byte_range_to_bits (const struct bitmap_mem *bm, uint64_t offset,
                    uint64_t len, uint64_t *lo, uint64_t *hi)
{
  if (len == 0 || offset >= bm->size)
    return false;
  if (len > bm->size - offset)
    len = bm->size - offset;
  *lo = offset >> bm->gran_bits;
  *hi = ((offset + len - 1) >> bm->gran_bits) + 1;
  return true;
}

/* ---- byte-range operations -------------------------------------------- */

void
bitmap_mem_set (struct bitmap_mem *bm, uint64_t offset, uint64_t len)
{
  uint64_t lo, hi;

  if (byte_range_to_bits (bm, offset, len, &lo, &hi))
    set_bits (bm->words, lo, hi);
}

void
bitmap_mem_clear (struct bitmap_mem *bm, uint64_t offset, uint64_t len)
{
  uint64_t lo, hi;

  if (byte_range_to_bits (bm, offset, len, &lo, &hi))
    clear_bits (bm->words, lo, hi);
}

void
bitmap_mem_set_all (struct bitmap_mem *bm)
{
  if (bm->nbits)
    set_bits (bm->words, 0, bm->nbits);
}

void
bitmap_mem_clear_all (struct bitmap_mem *bm)
{
  memset (bm->words, 0, bm->nwords * sizeof *bm->words);
}

bool
bitmap_mem_get (const struct bitmap_mem *bm, uint64_t offset)
{
  uint64_t k;

  if (offset >= bm->size)
    return false;
  k = offset >> bm->gran_bits;
  return (bm->words[k >> 6] >> (k & 63)) & 1;
}

static int64_t
next_with (const struct bitmap_mem *bm, uint64_t offset, uint64_t end,
           uint64_t invert)
{
  uint64_t lo, hi, bit, at;

  if (end <= offset || !byte_range_to_bits (bm, offset, end - offset,
                                            &lo, &hi))
    return -1;
  bit = find_bit (bm->words, lo, hi, invert);
  if (bit == hi)
    return -1;
  /* offset < size <= nbits * granularity <= 2^63 (invariant 1), so both
   * candidates fit in an int64_t. */
  at = bit << bm->gran_bits;
  return (int64_t) (at > offset ? at : offset);
}

int64_t
bitmap_mem_next_dirty (const struct bitmap_mem *bm, uint64_t offset,
                       uint64_t end)
{
  return next_with (bm, offset, end, 0);
}

int64_t
bitmap_mem_next_clean (const struct bitmap_mem *bm, uint64_t offset,
                       uint64_t end)
{
  return next_with (bm, offset, end, ~0ull);
}

bool
bitmap_mem_next_dirty_area (const struct bitmap_mem *bm,
                            uint64_t offset, uint64_t end,
                            uint64_t *start, uint64_t *len)
{
  int64_t s;
  uint64_t lo, hi, z, stop;

  s = bitmap_mem_next_dirty (bm, offset, end);
  if (s < 0)
    return false;
  /* [offset, end) is non-empty and below the size, since s was found. */
  byte_range_to_bits (bm, offset, end - offset, &lo, &hi);
  z = find_bit (bm->words, (uint64_t) s >> bm->gran_bits, hi, ~0ull);
  if (z == hi)
    stop = end < bm->size ? end : bm->size;
  else
    stop = z << bm->gran_bits;    /* z < hi, so stop < min(end, size) */
  *start = (uint64_t) s;
  *len = stop - (uint64_t) s;
  return true;
}

/* Baseline x86-64 has no POPCNT, so __builtin_popcountll becomes a
 * libgcc call per word; an ifunc clone with POPCNT counts a 32 MiB bitmap
 * 1.5 to 2.5 times faster (bench/bench-bitmap-mem.c). */
#if defined __x86_64__ && defined __ELF__ && defined __has_attribute && \
    !defined __SANITIZE_THREAD__
/* (TSan's runtime crashes at startup resolving ifuncs.) */
#if __has_attribute (target_clones)
#define POPCOUNT_CLONES __attribute__ ((target_clones ("popcnt", "default")))
#endif
#endif
#ifndef POPCOUNT_CLONES
#define POPCOUNT_CLONES
#endif

POPCOUNT_CLONES
static uint64_t
popcount_words (const uint64_t *w, uint64_t n)
{
  uint64_t i, c = 0;

  for (i = 0; i < n; i++)
    c += (uint64_t) __builtin_popcountll (w[i]);
  return c;
}

uint64_t
bitmap_mem_count (const struct bitmap_mem *bm)
{
  return popcount_words (bm->words, bm->nwords);
}

uint64_t
bitmap_mem_dirty_bytes (const struct bitmap_mem *bm)
{
  /* At most 2^32 bits of at most 2^31 bytes: no overflow. */
  return bitmap_mem_count (bm) << bm->gran_bits;
}

int
bitmap_mem_merge (struct bitmap_mem *dst, const struct bitmap_mem *src)
{
  uint64_t a, b, i, sg;

  if (dst->size != src->size)
    return set_error (EINVAL, "bitmaps are of different sizes "
                      "(%" PRIu64 " and %" PRIu64 " bytes)",
                      dst->size, src->size);

  if (dst->granularity == src->granularity) {
    for (i = 0; i < dst->nwords; i++)
      dst->words[i] |= src->words[i];
    return 0;
  }

  /* Walk the dirty runs of src and dirty the dst granules they touch
   * (QEMU hbitmap_sparse_merge).  bitmap_mem_set clamps each run to the
   * size, so a coarse src tail granule does not spill past it into a
   * finer dst's (nonexistent) bits. */
  sg = src->gran_bits;
  a = find_bit (src->words, 0, src->nbits, 0);
  while (a < src->nbits) {
    b = find_bit (src->words, a, src->nbits, ~0ull);
    bitmap_mem_set (dst, a << sg, (b - a) << sg);
    a = find_bit (src->words, b, src->nbits, 0);
  }
  return 0;
}

/* ---- the qcow2 bit stream --------------------------------------------- */

uint64_t
bitmap_mem_stream_bytes (const struct bitmap_mem *bm)
{
  return (bm->nbits + 7) >> 3;
}

/* Clip stream bytes [start_byte, start_byte+n) to the stream; returns the
 * number of bytes inside it (0 if start_byte is at or past the end). */
static uint64_t
stream_clip (const struct bitmap_mem *bm, uint64_t start_byte, uint64_t n)
{
  uint64_t len = bitmap_mem_stream_bytes (bm);

  if (start_byte >= len)
    return 0;
  return n < len - start_byte ? n : len - start_byte;
}

/* Re-establish invariant 2 after a whole-byte write into the last word. */
static void
mask_tail (struct bitmap_mem *bm)
{
  if (bm->nbits & 63)
    bm->words[bm->nwords - 1] &= ~0ull >> (64 - (bm->nbits & 63));
}

void
bitmap_mem_store (const struct bitmap_mem *bm, uint64_t start_byte,
                  uint64_t n, uint8_t *buf)
{
  uint64_t m = stream_clip (bm, start_byte, n), j;

  if (n == 0)
    return;
  if (WORDS_ARE_STREAM)
    memcpy (buf, (const uint8_t *) bm->words + start_byte, m);
  else {
    for (j = 0; j < m; j++) {
      uint64_t k = start_byte + j;
      buf[j] = (uint8_t) (bm->words[k >> 3] >> ((k & 7) << 3));
    }
  }
  memset (buf + m, 0, n - m);
}

void
bitmap_mem_load (struct bitmap_mem *bm, uint64_t start_byte, uint64_t n,
                 const uint8_t *buf)
{
  uint64_t m = stream_clip (bm, start_byte, n), j;

  if (m == 0)
    return;
  if (WORDS_ARE_STREAM)
    memcpy ((uint8_t *) bm->words + start_byte, buf, m);
  else {
    for (j = 0; j < m; j++) {
      uint64_t k = start_byte + j;
      unsigned shift = (unsigned) (k & 7) << 3;
      uint64_t *w = &bm->words[k >> 3];

      *w = (*w & ~(0xffull << shift)) | ((uint64_t) buf[j] << shift);
    }
  }
  if (start_byte + m == bitmap_mem_stream_bytes (bm))
    mask_tail (bm);
}

/* Bits of the clipped stream range as [*lo, *hi); false if empty. */
static bool
stream_to_bits (const struct bitmap_mem *bm, uint64_t start_byte,
                uint64_t n, uint64_t *lo, uint64_t *hi)
{
  uint64_t m = stream_clip (bm, start_byte, n);

  if (m == 0)
    return false;
  *lo = start_byte << 3;
  *hi = (start_byte + m) << 3;
  if (*hi > bm->nbits)
    *hi = bm->nbits;
  return true;
}

void
bitmap_mem_fill (struct bitmap_mem *bm, uint64_t start_byte, uint64_t n,
                 bool ones)
{
  uint64_t lo, hi;

  if (!stream_to_bits (bm, start_byte, n, &lo, &hi))
    return;
  if (ones)
    set_bits (bm->words, lo, hi);
  else
    clear_bits (bm->words, lo, hi);
}

int
bitmap_mem_stream_range_state (const struct bitmap_mem *bm,
                               uint64_t start_byte, uint64_t n)
{
  uint64_t lo, hi;

  if (!stream_to_bits (bm, start_byte, n, &lo, &hi))
    return 0;
  if (find_bit (bm->words, lo, hi, 0) == hi)
    return 0;
  if (find_bit (bm->words, lo, hi, ~0ull) == hi)
    return 1;
  return -1;
}

/* ---- concurrent access ------------------------------------------------ *
 * For bitmaps shared between threads without a lock (track.c's delta and
 * summary): every word is read and modified with atomic operations, so a
 * set or clear by one thread never loses a bit set concurrently by another
 * in the same word.  Sets and clears are sequentially consistent. */

/* The bits of word i that lie in [lo, hi). */
static uint64_t
word_mask (uint64_t i, uint64_t lo, uint64_t hi)
{
  uint64_t m = ~0ull;

  if (i == lo >> 6)
    m &= ~0ull << (lo & 63);
  if (i == (hi - 1) >> 6)
    m &= ~0ull >> (63 - ((hi - 1) & 63));
  return m;
}

void
bitmap_mem_set_atomic (struct bitmap_mem *bm, uint64_t offset, uint64_t len)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return;
  for (i = lo >> 6; i <= (hi - 1) >> 6; i++) {
    uint64_t m = word_mask (i, lo, hi);

    /* Already set: no write (a cleared bit was folded into every base
     * first, see track.c), but keep the ordering of an RMW. */
    if ((__atomic_load_n (&bm->words[i], __ATOMIC_RELAXED) & m) != m)
      __atomic_fetch_or (&bm->words[i], m, __ATOMIC_SEQ_CST);
    else
      __atomic_thread_fence (__ATOMIC_SEQ_CST);
  }
}

void
bitmap_mem_each_dirty_atomic (struct bitmap_mem *bm, uint64_t offset,
                              uint64_t len, bool take,
                              void (*fn) (void *opaque, uint64_t start,
                                          uint64_t len),
                              void *opaque)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return;
  for (i = lo >> 6; i <= (hi - 1) >> 6; i++) {
    uint64_t m = word_mask (i, lo, hi), x;

    x = take ? __atomic_fetch_and (&bm->words[i], ~m, __ATOMIC_SEQ_CST)
             : __atomic_load_n (&bm->words[i], __ATOMIC_SEQ_CST);
    x &= m;
    while (x) {
      uint64_t b = (uint64_t) __builtin_ctzll (x), y = x >> b, n, start, end;

      n = ~y ? (uint64_t) __builtin_ctzll (~y) : 64 - b;
      start = ((i << 6) + b) << bm->gran_bits;
      end = ((i << 6) + b + n) << bm->gran_bits;
      fn (opaque, start, (end < bm->size ? end : bm->size) - start);
      x &= n + b < 64 ? ~0ull << (b + n) : 0;
    }
  }
}

void
bitmap_mem_clear_atomic (struct bitmap_mem *bm, uint64_t offset,
                         uint64_t len)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return;
  for (i = lo >> 6; i <= (hi - 1) >> 6; i++)
    __atomic_fetch_and (&bm->words[i], ~word_mask (i, lo, hi),
                        __ATOMIC_SEQ_CST);
}

bool
bitmap_mem_all_set_atomic (const struct bitmap_mem *bm, uint64_t offset,
                           uint64_t len)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return true;
  for (i = lo >> 6; i <= (hi - 1) >> 6; i++) {
    uint64_t m = word_mask (i, lo, hi);

    if ((__atomic_load_n (&bm->words[i], __ATOMIC_ACQUIRE) & m) != m)
      return false;
  }
  return true;
}
