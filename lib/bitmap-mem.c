/* rawtrack - in-memory dirty bitmap.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the bits of one dirty bitmap while it is in RAM, the byte-range
 * semantics of QEMU's HBitmap-backed dirty bitmaps (set and clear both
 * round outwards to whole granules, ranges clamp to the disk size), and
 * the conversion to and from the qcow2 on-disk bit stream.  Reading and
 * writing bitmap clusters is bitmap-store.c's job, not this file's.
 *
 * Locking: none for the plain functions.  A bitmap belongs to an image
 * and callers hold the image lock (or own the bitmap privately, as
 * during load and tests).  The *_atomic functions may run concurrently
 * with each other (see "concurrent access" below).
 *
 * Representation: SPARSE, so that memory follows what was touched, not
 * the disk size.  The bits are cut into chunks of CHUNK_BITS bits (4 KiB,
 * 2 GiB of disk at 64 KiB granularity); a directory holds, per chunk,
 * NULL (all clean: costs nothing), ONES (every bit
 * dirty: the shared read-only ones_chunk, costs nothing) or a private
 * 512-word array (bit k of the chunk in word k/64 at bit k%64).  Chunks
 * are allocated on the first bit set (or cleared in a ONES chunk); the
 * plain functions turn chunks that become wholly clean or dirty back
 * into NULL / ONES where a whole chunk is written, the atomic ones never
 * free a chunk (another thread may be reading it).  Only a full chunk is
 * ever ONES: the last, partial one is always stored.  A chunk allocation
 * failing aborts the process with a message: every caller's bitmap
 * update is a void operation that must not lose bits, and a 4 KiB
 * allocation failing leaves nothing sensible to do.
 * The directory has two levels, so that a new bitmap costs O(1) whatever
 * the disk size (a server builds one per BLOCK_STATUS request): a top
 * array of ceil(nchunks / 512) page pointers (2 KiB at most), and pages
 * of 512 chunk pointers allocated with the first chunk stored in them
 * (a missing page: 512 NULL chunks).  Pages are never freed before the
 * bitmap; the atomic functions install them with a compare-and-swap.
 *
 * Invariants:
 *   1. nbits = ceil(size / granularity), nchunks = ceil(nbits /
 *      CHUNK_BITS), and the serialized stream (ceil(nbits / 8) bytes) is
 *      <= BME_MAX_PHYS_SIZE (so nchunks <= 2^17).
 *   2. Bits at index >= nbits in the last chunk are always zero.  store
 *      relies on it to produce zero tail bits; count and the scanners rely
 *      on it to need no tail masking.
 *   3. On a little-endian host the memory image of a chunk *is* its part
 *      of the qcow2 stream (bit k in byte k/8 at bit k%8), so store/load
 *      are memcpy; a portable byte loop serves big-endian hosts (and can
 *      be forced with -DBITMAP_MEM_PORTABLE to test it).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
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

#define CHUNK_SHIFT  15                          /* bits per chunk: 2^15 */
#define CHUNK_BITS   (1ull << CHUNK_SHIFT)
#define CHUNK_WORDS  (CHUNK_BITS / 64)
#define CHUNK_BYTES  (CHUNK_BITS / 8)
#define PAGE_SHIFT_  9                           /* chunks per page: 2^9 */
#define PAGE_SLOTS   (1ull << PAGE_SHIFT_)

static const uint64_t ones_chunk[CHUNK_WORDS] = {
  [0 ... CHUNK_WORDS - 1] = ~0ull
};
static const uint64_t zero_chunk[CHUNK_WORDS];
#define ONES ((uint64_t *) ones_chunk)

struct bitmap_mem {
  uint64_t size;                   /* virtual disk size in bytes */
  uint64_t nbits;                  /* ceil(size / granularity) */
  uint64_t nchunks;                /* ceil(nbits / CHUNK_BITS) */
  uint32_t granularity;            /* bytes per bit, power of two */
  uint32_t gran_bits;              /* log2 (granularity) */
  uint64_t npages;                 /* ceil(nchunks / PAGE_SLOTS) */
  uint64_t ***pages;               /* NULL or PAGE_SLOTS chunk pointers,
                                    * each NULL, ONES or CHUNK_WORDS words */
  uint64_t allocated;              /* chunks allocated (atomic) */
};

/* ---- chunks ----------------------------------------------------------- */

/* Valid bits of chunk c (CHUNK_BITS except in a partial last chunk). */
static uint64_t
chunk_nbits (const struct bitmap_mem *bm, uint64_t c)
{
  uint64_t left = bm->nbits - (c << CHUNK_SHIFT);

  return left < CHUNK_BITS ? left : CHUNK_BITS;
}

static bool
is_private (const uint64_t *p)
{
  return p != NULL && p != ONES;
}

static uint64_t *
chunk_alloc (struct bitmap_mem *bm, bool ones)
{
  uint64_t *p = malloc (CHUNK_BYTES);

  if (!p) {
    fprintf (stderr, "rawtrack: out of memory for a %u-byte dirty bitmap "
             "chunk; aborting rather than losing dirty bits\n",
             (unsigned) CHUNK_BYTES);
    abort ();
  }
  memset (p, ones ? 0xff : 0, CHUNK_BYTES);
  __atomic_add_fetch (&bm->allocated, 1, __ATOMIC_RELAXED);
  return p;
}

static void
chunk_release (struct bitmap_mem *bm, uint64_t *p)
{
  if (is_private (p)) {
    free (p);
    __atomic_sub_fetch (&bm->allocated, 1, __ATOMIC_RELAXED);
  }
}

static uint64_t **
page_alloc (void)
{
  uint64_t **p = calloc (PAGE_SLOTS, sizeof *p);

  if (!p) {
    fprintf (stderr, "rawtrack: out of memory for a dirty bitmap directory "
             "page; aborting rather than losing dirty bits\n");
    abort ();
  }
  return p;
}

/* Chunk c's pointer (plain access): NULL, ONES or its words. */
static uint64_t *
chunk_ptr (const struct bitmap_mem *bm, uint64_t c)
{
  uint64_t **pg = bm->pages[c >> PAGE_SHIFT_];

  return pg ? pg[c & (PAGE_SLOTS - 1)] : NULL;
}

/* Where chunk c's pointer lives (plain access), its page allocated. */
static uint64_t **
chunk_slot (struct bitmap_mem *bm, uint64_t c)
{
  uint64_t ***pp = &bm->pages[c >> PAGE_SHIFT_];

  if (!*pp)
    *pp = page_alloc ();
  return &(*pp)[c & (PAGE_SLOTS - 1)];
}

/* The same for concurrent threads: a page allocated by two threads at
 * once is installed once, the loser's copy freed. */
static uint64_t **
chunk_slot_atomic (struct bitmap_mem *bm, uint64_t c)
{
  uint64_t ***pp = &bm->pages[c >> PAGE_SHIFT_];
  uint64_t **pg = __atomic_load_n (pp, __ATOMIC_ACQUIRE);

  if (!pg) {
    uint64_t **n = page_alloc ();

    if (__atomic_compare_exchange_n (pp, &pg, n, false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_ACQUIRE))
      pg = n;
    else
      free (n);
  }
  return &pg[c & (PAGE_SLOTS - 1)];
}

/* Words of chunk c for reading (plain access). */
static const uint64_t *
chunk_rd (const struct bitmap_mem *bm, uint64_t c)
{
  const uint64_t *p = chunk_ptr (bm, c);

  return p ? p : zero_chunk;
}

/* Words of chunk c for writing (plain access): allocated if needed. */
static uint64_t *
chunk_wr (struct bitmap_mem *bm, uint64_t c)
{
  uint64_t **slot = chunk_slot (bm, c), *p = *slot;

  if (!is_private (p))
    p = *slot = chunk_alloc (bm, p == ONES);
  return p;
}

/* Replace chunk c by NULL or ONES (plain access). */
static void
chunk_put (struct bitmap_mem *bm, uint64_t c, uint64_t *v)
{
  uint64_t **slot;

  if (v == NULL && !bm->pages[c >> PAGE_SHIFT_])
    return;                        /* a missing page is all NULL */
  slot = chunk_slot (bm, c);
  chunk_release (bm, *slot);
  *slot = v;
}

/* Words of chunk c for writing by concurrent threads: a chunk allocated
 * by two threads at once is installed once, the loser's copy freed. */
static uint64_t *
chunk_wr_atomic (struct bitmap_mem *bm, uint64_t c)
{
  uint64_t **slot = chunk_slot_atomic (bm, c);
  uint64_t *p = __atomic_load_n (slot, __ATOMIC_ACQUIRE);

  while (!is_private (p)) {
    uint64_t *n = chunk_alloc (bm, p == ONES);

    if (__atomic_compare_exchange_n (slot, &p, n, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE))
      return n;
    chunk_release (bm, n);
  }
  return p;
}

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

  bm = rt_calloc (1, sizeof *bm);
  if (!bm)
    return NULL;
  bm->size = size;
  bm->nbits = nbits;
  bm->nchunks = (nbits + CHUNK_BITS - 1) >> CHUNK_SHIFT;
  bm->granularity = granularity;
  bm->gran_bits = gb;
  bm->npages = (bm->nchunks + PAGE_SLOTS - 1) >> PAGE_SHIFT_;
  bm->pages = rt_calloc (bm->npages ? bm->npages : 1, sizeof *bm->pages);
  if (!bm->pages) {
    free (bm);
    return NULL;
  }
  return bm;
}

void
bitmap_mem_free (struct bitmap_mem *bm)
{
  uint64_t c;

  if (!bm)
    return;
  for (c = 0; c < bm->npages; c++) {
    uint64_t i;

    if (!bm->pages[c])
      continue;
    for (i = 0; i < PAGE_SLOTS; i++)
      chunk_release (bm, bm->pages[c][i]);
    free (bm->pages[c]);
  }
  free (bm->pages);
  free (bm);
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

uint64_t
bitmap_mem_memory (const struct bitmap_mem *bm)
{
  uint64_t c, pages = 0;

  for (c = 0; c < bm->npages; c++)
    pages += __atomic_load_n (&bm->pages[c], __ATOMIC_RELAXED) != NULL;
  return sizeof *bm + bm->npages * sizeof *bm->pages +
         pages * PAGE_SLOTS * sizeof (uint64_t *) +
         __atomic_load_n (&bm->allocated, __ATOMIC_RELAXED) * CHUNK_BYTES;
}

/* ---- word-range primitives (bits [lo, hi) of one chunk, lo < hi) ------ */

static void
words_set (uint64_t *w, uint64_t lo, uint64_t hi)
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
words_clear (uint64_t *w, uint64_t lo, uint64_t hi)
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

/* First set (invert 0) or clear (invert ~0) bit of w in [lo, hi); hi if
 * none. */
static uint64_t
words_find (const uint64_t *w, uint64_t lo, uint64_t hi, uint64_t invert)
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

/* ---- bit-range primitives (bits [lo, hi), lo < hi <= nbits) ----------- *
 * Each walks the chunks the range meets; c0/clo/chi name chunk c's first
 * bit and the range's part of it, relative to c0. */

#define FOR_CHUNKS(bm, lo, hi, c, clo, chi)                                  \
  for (uint64_t c = (lo) >> CHUNK_SHIFT, c0_, clo, chi;                      \
       c <= ((hi) - 1) >> CHUNK_SHIFT &&                                     \
         (c0_ = c << CHUNK_SHIFT,                                            \
          clo = (lo) > c0_ ? (lo) - c0_ : 0,                                 \
          chi = (hi) - c0_ < CHUNK_BITS ? (hi) - c0_ : CHUNK_BITS, true);    \
       c++)

static void
set_bits (struct bitmap_mem *bm, uint64_t lo, uint64_t hi)
{
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    if (clo == 0 && chi == CHUNK_BITS)
      chunk_put (bm, c, ONES);
    else if (chunk_ptr (bm, c) != ONES)
      words_set (chunk_wr (bm, c), clo, chi);
  }
}

static void
clear_bits (struct bitmap_mem *bm, uint64_t lo, uint64_t hi)
{
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    if (clo == 0 && chi >= chunk_nbits (bm, c))
      chunk_put (bm, c, NULL);
    else if (chunk_ptr (bm, c) != NULL)
      words_clear (chunk_wr (bm, c), clo, chi);
  }
}

/* The first set bit in [lo, hi) when invert is 0, the first clear bit
 * when invert is ~0; hi when there is none.  hi <= nbits, so the zero
 * tail (invariant 2) never shows up as a clear bit. */
static uint64_t
find_bit (const struct bitmap_mem *bm, uint64_t lo, uint64_t hi,
          uint64_t invert)
{
  if (lo >= hi)
    return hi;
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    const uint64_t *p = chunk_ptr (bm, c);
    uint64_t b;

    if (p == NULL || p == ONES) {
      if ((p == ONES) == (invert == 0))
        return (c << CHUNK_SHIFT) + clo;
      continue;
    }
    b = words_find (p, clo, chi, invert);
    if (b < chi)
      return (c << CHUNK_SHIFT) + b;
  }
  return hi;
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
    set_bits (bm, lo, hi);
}

void
bitmap_mem_clear (struct bitmap_mem *bm, uint64_t offset, uint64_t len)
{
  uint64_t lo, hi;

  if (byte_range_to_bits (bm, offset, len, &lo, &hi))
    clear_bits (bm, lo, hi);
}

void
bitmap_mem_set_all (struct bitmap_mem *bm)
{
  if (bm->nbits)
    set_bits (bm, 0, bm->nbits);
}

void
bitmap_mem_clear_all (struct bitmap_mem *bm)
{
  uint64_t c;

  for (c = 0; c < bm->nchunks; c++)
    chunk_put (bm, c, NULL);         /* (pages stay: O(nchunks) anyway) */
}

bool
bitmap_mem_get (const struct bitmap_mem *bm, uint64_t offset)
{
  uint64_t k;

  if (offset >= bm->size)
    return false;
  k = offset >> bm->gran_bits;
  return (chunk_rd (bm, k >> CHUNK_SHIFT)[(k & (CHUNK_BITS - 1)) >> 6]
          >> (k & 63)) & 1;
}

static int64_t
next_with (const struct bitmap_mem *bm, uint64_t offset, uint64_t end,
           uint64_t invert)
{
  uint64_t lo, hi, bit, at;

  if (end <= offset || !byte_range_to_bits (bm, offset, end - offset,
                                            &lo, &hi))
    return -1;
  bit = find_bit (bm, lo, hi, invert);
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
  z = find_bit (bm, (uint64_t) s >> bm->gran_bits, hi, ~0ull);
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
  uint64_t c, n = 0;

  for (c = 0; c < bm->nchunks; c++) {
    const uint64_t *p = chunk_ptr (bm, c);

    if (!bm->pages[c >> PAGE_SHIFT_])
      c |= PAGE_SLOTS - 1;           /* a missing page: skip it whole */
    else if (p == ONES)
      n += CHUNK_BITS;
    else if (p)
      n += popcount_words (p, CHUNK_WORDS);
  }
  return n;
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
  uint64_t a, b, c, i, sg;

  if (dst->size != src->size)
    return set_error (EINVAL, "bitmaps are of different sizes "
                      "(%" PRIu64 " and %" PRIu64 " bytes)",
                      dst->size, src->size);

  if (dst->granularity == src->granularity) {
    for (c = 0; c < dst->nchunks; c++) {
      const uint64_t *s = chunk_ptr (src, c);
      uint64_t *d;

      if (!src->pages[c >> PAGE_SHIFT_]) {
        c |= PAGE_SLOTS - 1;         /* a missing page: nothing to merge */
        continue;
      }
      if (s == NULL || chunk_ptr (dst, c) == ONES)
        continue;
      if (s == ONES) {
        chunk_put (dst, c, ONES);
        continue;
      }
      d = chunk_wr (dst, c);
      for (i = 0; i < CHUNK_WORDS; i++)
        d[i] |= s[i];
    }
    return 0;
  }

  /* Walk the dirty runs of src and dirty the dst granules they touch
   * (QEMU hbitmap_sparse_merge).  bitmap_mem_set clamps each run to the
   * size, so a coarse src tail granule does not spill past it into a
   * finer dst's (nonexistent) bits. */
  sg = src->gran_bits;
  a = find_bit (src, 0, src->nbits, 0);
  while (a < src->nbits) {
    b = find_bit (src, a, src->nbits, ~0ull);
    bitmap_mem_set (dst, a << sg, (b - a) << sg);
    a = find_bit (src, b, src->nbits, 0);
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

/* Re-establish invariant 2 after a whole-byte write into the last chunk. */
static void
mask_tail (struct bitmap_mem *bm)
{
  uint64_t c = bm->nchunks - 1, v = chunk_nbits (bm, c);

  if (v < CHUNK_BITS && is_private (chunk_ptr (bm, c)))
    words_clear (chunk_ptr (bm, c), v, CHUNK_BITS);
}

static bool
all_bytes (const uint8_t *p, uint64_t n, uint8_t v)
{
  uint64_t i;

  for (i = 0; i < n; i++)
    if (p[i] != v)
      return false;
  return true;
}

/* Stream bytes [j, j+m) of chunk c: FOR_STREAM walks the chunks that
 * stream bytes [start, start+len) meet, with k the first stream byte in
 * chunk c and m the count. */
#define FOR_STREAM(start, len, c, k, m)                                      \
  for (uint64_t k = (start), m, c;                                           \
       k < (start) + (len) &&                                                \
         (c = k / CHUNK_BYTES,                                               \
          m = (c + 1) * CHUNK_BYTES - k < (start) + (len) - k                \
              ? (c + 1) * CHUNK_BYTES - k : (start) + (len) - k, true);      \
       k += m)

void
bitmap_mem_store (const struct bitmap_mem *bm, uint64_t start_byte,
                  uint64_t n, uint8_t *buf)
{
  uint64_t mm = stream_clip (bm, start_byte, n);
  uint8_t *out = buf;

  if (n == 0)
    return;
  FOR_STREAM (start_byte, mm, c, k, m) {
    const uint64_t *w = chunk_rd (bm, c);
    uint64_t in = k % CHUNK_BYTES, j;

    if (WORDS_ARE_STREAM)
      memcpy (out, (const uint8_t *) w + in, m);
    else
      for (j = 0; j < m; j++)
        out[j] = (uint8_t) (w[(in + j) >> 3] >> (((in + j) & 7) << 3));
    out += m;
  }
  memset (buf + mm, 0, n - mm);
}

void
bitmap_mem_load (struct bitmap_mem *bm, uint64_t start_byte, uint64_t n,
                 const uint8_t *buf)
{
  uint64_t mm = stream_clip (bm, start_byte, n);
  const uint8_t *src = buf;

  if (mm == 0)
    return;
  FOR_STREAM (start_byte, mm, c, k, m) {
    uint64_t in = k % CHUNK_BYTES, j, *w;

    if (m == CHUNK_BYTES && all_bytes (src, m, 0))
      chunk_put (bm, c, NULL);
    else if (m == CHUNK_BYTES && all_bytes (src, m, 0xff))
      chunk_put (bm, c, ONES);
    else if (!(chunk_ptr (bm, c) == NULL && all_bytes (src, m, 0)) &&
             !(chunk_ptr (bm, c) == ONES && all_bytes (src, m, 0xff))) {
      w = chunk_wr (bm, c);
      if (WORDS_ARE_STREAM)
        memcpy ((uint8_t *) w + in, src, m);
      else
        for (j = 0; j < m; j++) {
          unsigned shift = (unsigned) ((in + j) & 7) << 3;
          uint64_t *x = &w[(in + j) >> 3];

          *x = (*x & ~(0xffull << shift)) | ((uint64_t) src[j] << shift);
        }
    }
    src += m;
  }
  if (start_byte + mm == bitmap_mem_stream_bytes (bm))
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
    set_bits (bm, lo, hi);
  else
    clear_bits (bm, lo, hi);
}

int
bitmap_mem_stream_range_state (const struct bitmap_mem *bm,
                               uint64_t start_byte, uint64_t n)
{
  uint64_t lo, hi;

  if (!stream_to_bits (bm, start_byte, n, &lo, &hi))
    return 0;
  if (find_bit (bm, lo, hi, 0) == hi)
    return 0;
  if (find_bit (bm, lo, hi, ~0ull) == hi)
    return 1;
  return -1;
}

/* ---- concurrent access ------------------------------------------------ *
 * For bitmaps shared between threads without a lock (track.c's delta and
 * summary): chunk pointers are read with acquire loads and installed with
 * one compare-and-swap (chunk_wr_atomic), every word is read and modified
 * with atomic operations, so a set or clear by one thread never loses a
 * bit set concurrently by another in the same word.  Sets and clears are
 * sequentially consistent.  No chunk is freed here: a ONES chunk taken
 * whole becomes NULL, every other taken chunk stays allocated. */

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

static uint64_t *
chunk_load (const struct bitmap_mem *bm, uint64_t c)
{
  uint64_t **pg = __atomic_load_n (&bm->pages[c >> PAGE_SHIFT_],
                                   __ATOMIC_ACQUIRE);

  return pg ? __atomic_load_n (&pg[c & (PAGE_SLOTS - 1)], __ATOMIC_ACQUIRE)
            : NULL;
}

void
bitmap_mem_set_atomic (struct bitmap_mem *bm, uint64_t offset, uint64_t len)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return;
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    uint64_t *w = chunk_load (bm, c);

    if (w == ONES) {
      __atomic_thread_fence (__ATOMIC_SEQ_CST);
      continue;
    }
    if (w == NULL)
      w = chunk_wr_atomic (bm, c);
    for (i = clo >> 6; i <= (chi - 1) >> 6; i++) {
      uint64_t m = word_mask (i, clo, chi);

      /* Already set: no write (a cleared bit was folded into every base
       * first, see track.c), but keep the ordering of an RMW. */
      if ((__atomic_load_n (&w[i], __ATOMIC_RELAXED) & m) != m)
        __atomic_fetch_or (&w[i], m, __ATOMIC_SEQ_CST);
      else
        __atomic_thread_fence (__ATOMIC_SEQ_CST);
    }
  }
}

/* Report the dirty runs of word x (already masked) of chunk c, word i. */
static void
report_word (const struct bitmap_mem *bm, uint64_t c, uint64_t i, uint64_t x,
             void (*fn) (void *opaque, uint64_t start, uint64_t len),
             void *opaque)
{
  uint64_t base = (c << CHUNK_SHIFT) + (i << 6);

  while (x) {
    uint64_t b = (uint64_t) __builtin_ctzll (x), y = x >> b, n, start, end;

    n = ~y ? (uint64_t) __builtin_ctzll (~y) : 64 - b;
    start = (base + b) << bm->gran_bits;
    end = (base + b + n) << bm->gran_bits;
    fn (opaque, start, (end < bm->size ? end : bm->size) - start);
    x &= n + b < 64 ? ~0ull << (b + n) : 0;
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
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    uint64_t *w = chunk_load (bm, c);

    if (w == NULL)
      continue;
    if (w == ONES) {
      uint64_t start = ((c << CHUNK_SHIFT) + clo) << bm->gran_bits;
      uint64_t end = ((c << CHUNK_SHIFT) + chi) << bm->gran_bits;

      if (!take ||
          (clo == 0 && chi == CHUNK_BITS &&
           __atomic_compare_exchange_n (chunk_slot_atomic (bm, c), &w, NULL,
                                        false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_ACQUIRE))) {
        fn (opaque, start, (end < bm->size ? end : bm->size) - start);
        continue;
      }
      w = chunk_wr_atomic (bm, c);
    }
    for (i = clo >> 6; i <= (chi - 1) >> 6; i++) {
      uint64_t m = word_mask (i, clo, chi), x;

      x = __atomic_load_n (&w[i], __ATOMIC_SEQ_CST) & m;
      if (x && take)
        x = __atomic_fetch_and (&w[i], ~m, __ATOMIC_SEQ_CST) & m;
      if (x)
        report_word (bm, c, i, x, fn, opaque);
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
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    uint64_t *w = chunk_load (bm, c);

    if (w == NULL) {
      __atomic_thread_fence (__ATOMIC_SEQ_CST);
      continue;
    }
    if (w == ONES)
      w = chunk_wr_atomic (bm, c);
    for (i = clo >> 6; i <= (chi - 1) >> 6; i++)
      __atomic_fetch_and (&w[i], ~word_mask (i, clo, chi), __ATOMIC_SEQ_CST);
  }
}

bool
bitmap_mem_all_set_atomic (const struct bitmap_mem *bm, uint64_t offset,
                           uint64_t len)
{
  uint64_t lo, hi, i;

  if (!byte_range_to_bits (bm, offset, len, &lo, &hi))
    return true;
  FOR_CHUNKS (bm, lo, hi, c, clo, chi) {
    const uint64_t *w = chunk_load (bm, c);

    if (w == ONES)
      continue;
    if (w == NULL)
      return false;
    for (i = clo >> 6; i <= (chi - 1) >> 6; i++) {
      uint64_t m = word_mask (i, clo, chi);

      if ((__atomic_load_n (&w[i], __ATOMIC_ACQUIRE) & m) != m)
        return false;
    }
  }
  return true;
}
