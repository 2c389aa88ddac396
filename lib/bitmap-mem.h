/* rawtrack - in-memory dirty bitmap (internal API of lib/bitmap-mem.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A dirty bitmap with QEMU's HBitmap semantics: bit k covers guest bytes
 * [k*g, (k+1)*g), g the granularity; the bitmap covers a virtual disk of
 * `size` bytes with nbits = ceil(size / g).  Byte ranges are rounded
 * outwards for both set and clear: every bit a range touches changes.
 * Ranges are clamped to the disk size; a zero length is a no-op.
 *
 * All offsets and lengths are guest bytes unless the name ends in _byte
 * (a byte of the serialized qcow2 bit stream, qcow2-facts.md §5.5).
 *
 * Sparse: memory follows the chunks that were touched (bitmap-mem.c).
 * Not internally locked: callers hold the image lock (or own the bitmap).
 */
#ifndef RAWTRACK_BITMAP_MEM_H
#define RAWTRACK_BITMAP_MEM_H

#include <stdint.h>
#include <stdbool.h>

struct bitmap_mem;

/* New all-clean bitmap for a disk of size bytes (0 allowed: no bits).
 * granularity must be a power of two in [512, 2 GiB].  Returns NULL with
 * an error: EINVAL for a bad granularity, ERANGE if the serialized bitmap
 * would exceed BME_MAX_PHYS_SIZE, ENOMEM.  Caller frees with
 * bitmap_mem_free. */
struct bitmap_mem *bitmap_mem_new (uint64_t size, uint32_t granularity);
/* NULL-safe. */
void bitmap_mem_free (struct bitmap_mem *bm);

uint64_t bitmap_mem_size (const struct bitmap_mem *bm);
uint32_t bitmap_mem_granularity (const struct bitmap_mem *bm);
uint64_t bitmap_mem_nbits (const struct bitmap_mem *bm);
/* Bytes of memory the bitmap holds now (directory and chunks): it grows
 * with the chunks that hold a mix of clean and dirty bits, never with the
 * disk size alone beyond one pointer per chunk (bitmap-mem.c). */
uint64_t bitmap_mem_memory (const struct bitmap_mem *bm);

/* Mark dirty / clean every granule that [offset, offset+len) touches. */
void bitmap_mem_set (struct bitmap_mem *bm, uint64_t offset, uint64_t len);
void bitmap_mem_clear (struct bitmap_mem *bm, uint64_t offset, uint64_t len);
void bitmap_mem_set_all (struct bitmap_mem *bm);
void bitmap_mem_clear_all (struct bitmap_mem *bm);

/* Is the granule holding offset dirty?  false at or past the size. */
bool bitmap_mem_get (const struct bitmap_mem *bm, uint64_t offset);

/* First dirty (clean) granule intersecting [offset, min(end, size)):
 * returns max(offset, start of that granule), or -1 if there is none
 * (QEMU hbitmap_next_dirty / hbitmap_next_zero). */
int64_t bitmap_mem_next_dirty (const struct bitmap_mem *bm, uint64_t offset,
                               uint64_t end);
int64_t bitmap_mem_next_clean (const struct bitmap_mem *bm, uint64_t offset,
                               uint64_t end);
/* The first maximal dirty run intersecting [offset, end), clipped to
 * [offset, end) and to the size, in *start and *len.  false if there is
 * none (QEMU hbitmap_next_dirty_area without a length cap). */
bool bitmap_mem_next_dirty_area (const struct bitmap_mem *bm,
                                 uint64_t offset, uint64_t end,
                                 uint64_t *start, uint64_t *len);

/* Number of dirty bits. */
uint64_t bitmap_mem_count (const struct bitmap_mem *bm);
/* count * granularity, not clipped to the size: what QEMU reports as a
 * bitmap's "count" (bdrv_get_dirty_count). */
uint64_t bitmap_mem_dirty_bytes (const struct bitmap_mem *bm);

/* dst |= src.  The sizes must be equal (-1, EINVAL otherwise).  With
 * different granularities, every dirty run of src (clipped to the size)
 * dirties every dst granule it touches, as QEMU's hbitmap_merge does. */
int bitmap_mem_merge (struct bitmap_mem *dst, const struct bitmap_mem *src);

/* The qcow2 bit stream: byte j holds bits 8j..8j+7, LSB first; its length
 * is ceil(nbits / 8) and the unused tail bits are zero. */
uint64_t bitmap_mem_stream_bytes (const struct bitmap_mem *bm);
/* Copy stream bytes [start_byte, start_byte+n) into buf; bytes past the
 * end of the stream are written as 0. */
void bitmap_mem_store (const struct bitmap_mem *bm, uint64_t start_byte,
                       uint64_t n, uint8_t *buf);
/* Replace the bits of stream bytes [start_byte, start_byte+n) with buf.
 * Bits past nbits (and bytes past the stream) are ignored. */
void bitmap_mem_load (struct bitmap_mem *bm, uint64_t start_byte,
                      uint64_t n, const uint8_t *buf);
/* Set (ones) or clear every bit of stream bytes [start_byte, start_byte+n):
 * the all-ones / all-zeros bitmap table entries (qcow2-facts.md §5.4). */
void bitmap_mem_fill (struct bitmap_mem *bm, uint64_t start_byte,
                      uint64_t n, bool ones);
/* State of stream bytes [start_byte, start_byte+n), counting only bits
 * below nbits: 0 all clean (also for an empty range), 1 all dirty,
 * -1 mixed.  Lets the writer leave all-zero clusters unallocated. */
int bitmap_mem_stream_range_state (const struct bitmap_mem *bm,
                                   uint64_t start_byte, uint64_t n);

/* Concurrent variants: atomic per word, safe against each other and
 * against concurrent atomic readers (see bitmap-mem.c). */
void bitmap_mem_set_atomic (struct bitmap_mem *bm, uint64_t offset,
                            uint64_t len);
void bitmap_mem_clear_atomic (struct bitmap_mem *bm, uint64_t offset,
                              uint64_t len);
/* true if every bit covering [offset, offset+len) is set (true if empty). */
bool bitmap_mem_all_set_atomic (const struct bitmap_mem *bm, uint64_t offset,
                                uint64_t len);
/* Call fn for the set bits covering [offset, offset+len), as byte ranges
 * (runs within a word; clipped to the size), reading every word with one
 * atomic load - or, with take, taking and clearing its bits in one atomic
 * step, so that a bit set concurrently is either passed to fn or left
 * set, never lost. */
void bitmap_mem_each_dirty_atomic (struct bitmap_mem *bm, uint64_t offset,
                                   uint64_t len, bool take,
                                   void (*fn) (void *opaque, uint64_t start,
                                               uint64_t len),
                                   void *opaque);

#endif /* RAWTRACK_BITMAP_MEM_H */
