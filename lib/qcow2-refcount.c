/* rawtrack - qcow2 refcount table and refcount blocks.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the in-memory copy of the refcount table, a small cache of
 * refcount blocks, and reading/writing single refcounts of any width
 * (1, 2, 4, 8, 16, 32, 64 bits).
 *
 * Locking: callers hold img->lock.
 *
 * On-disk rules kept here:
 *  - A refcount table entry is the offset of a refcount block (bits 9-63)
 *    or 0 (every refcount it would hold is 0); bits 0-8 are reserved.
 *  - Entries of 8 bits and wider are big-endian integers; 1, 2 and 4 bit
 *    entries are packed LSB-first within each byte (entry i is in byte
 *    i*w/8 at bit (i*w)%8).
 *  - qcow2_refcount_set writes the changed bytes through at once (never
 *    flushed here).  Callers order it: refcount increases are made durable
 *    before any structure references the cluster; decreases only after the
 *    last reference is gone.  A crash in between leaves a leak, never a
 *    reference to a free cluster.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

#define RB_CACHE_SLOTS 8

/* Refblock cache, hung off the image (kept private to this file). */
struct rb_slot {
  uint64_t offset;   /* 0: empty */
  uint8_t *data;
  uint64_t lru;
};

struct rb_cache {
  struct rb_slot slot[RB_CACHE_SLOTS];
  uint64_t clock;
};

/* The cache lives in a side allocation keyed by the image. */
static struct rb_cache *
cache_of (struct rawtrack_image *img)
{
  return (struct rb_cache *) img->rb_cache;
}

uint64_t
refblock_get (const uint8_t *block, uint64_t i, uint32_t bits)
{
  switch (bits) {
  case 1: case 2: case 4: {
    uint64_t bit = i * bits;
    return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
  }
  case 8:  return block[i];
  case 16: return be16_load (block + i * 2);
  case 32: return be32_load (block + i * 4);
  default: return be64_load (block + i * 8);
  }
}

void
refblock_set (uint8_t *block, uint64_t i, uint32_t bits, uint64_t v)
{
  switch (bits) {
  case 1: case 2: case 4: {
    uint64_t bit = i * bits;
    uint8_t mask = (uint8_t) (((1u << bits) - 1) << (bit % 8));
    block[bit / 8] = (uint8_t) ((block[bit / 8] & ~mask) |
                                ((v << (bit % 8)) & mask));
    break;
  }
  case 8:  block[i] = (uint8_t) v; break;
  case 16: be16_store (block + i * 2, (uint16_t) v); break;
  case 32: be32_store (block + i * 4, (uint32_t) v); break;
  default: be64_store (block + i * 8, v); break;
  }
}

int
qcow2_refcount_init (struct rawtrack_image *img)
{
  uint64_t bytes = (uint64_t) img->h.refcount_table_clusters *
                   img->cluster_size;

  img->refcount_bits = 1u << img->h.refcount_order;
  img->refblock_entries = (uint32_t) ((uint64_t) img->cluster_size * 8 /
                                      img->refcount_bits);
  img->reftable_entries = bytes / 8;
  img->rb_cache = rt_calloc (1, sizeof (struct rb_cache));
  return img->rb_cache ? 0 : -1;
}

/* The table is read on first use: reading guest data never needs it, and
 * with large clusters it is megabytes that an `info` or `cat` would read
 * for nothing. */
int
qcow2_refcount_load (struct rawtrack_image *img)
{
  uint64_t bytes = img->reftable_entries * 8, i;
  uint64_t *t;

  if (img->reftable)
    return 0;
  t = rt_malloc (bytes ? bytes : 8);
  if (!t)
    return -1;
  if (bytes && io_read (img->file, t, bytes, img->h.refcount_table_offset,
                        "refcount table") == -1) {
    free (t);
    return -1;
  }
  for (i = 0; i < img->reftable_entries; i++)
    t[i] = be64_load (&t[i]);
  img->reftable = t;
  return 0;
}

void
qcow2_refcount_free (struct rawtrack_image *img)
{
  struct rb_cache *c = cache_of (img);
  int i;

  if (c) {
    for (i = 0; i < RB_CACHE_SLOTS; i++)
      free (c->slot[i].data);
    free (c);
  }
  img->rb_cache = NULL;
  free (img->reftable);
  img->reftable = NULL;
}

void
qcow2_refcount_cache_drop (struct rawtrack_image *img)
{
  struct rb_cache *c = cache_of (img);
  int i;

  if (!c)
    return;
  for (i = 0; i < RB_CACHE_SLOTS; i++)
    c->slot[i].offset = 0;
}

/* Validate reftable entry idx and return the block offset (0: none). */
static int
block_offset (struct rawtrack_image *img, uint64_t idx, uint64_t *offset)
{
  uint64_t e = img->reftable[idx];

  if (e & REFT_RESERVED_MASK)
    return set_corrupt ("refcount table entry %" PRIu64 " (at offset %"
                        PRIu64 ") has reserved bits set: 0x%" PRIx64, idx,
                        img->h.refcount_table_offset + idx * 8, e);
  e &= REFT_OFFSET_MASK;
  if (!IS_ALIGNED (e, img->cluster_size))
    return set_corrupt ("refcount block offset 0x%" PRIx64 " (refcount "
                        "table entry %" PRIu64 ") is not cluster-aligned",
                        e, idx);
  *offset = e;
  return 0;
}

/* Load (through the cache) the refcount block at offset. */
static uint8_t *
load_block (struct rawtrack_image *img, uint64_t offset)
{
  struct rb_cache *c = cache_of (img);
  struct rb_slot *victim = &c->slot[0];
  int i;

  for (i = 0; i < RB_CACHE_SLOTS; i++) {
    if (c->slot[i].offset == offset) {
      c->slot[i].lru = ++c->clock;
      return c->slot[i].data;
    }
    if (c->slot[i].lru < victim->lru)
      victim = &c->slot[i];
  }
  if (!victim->data && !(victim->data = rt_malloc (img->cluster_size)))
    return NULL;
  victim->offset = 0;
  if (io_read (img->file, victim->data, img->cluster_size, offset,
               "refcount block") == -1)
    return NULL;
  victim->offset = offset;
  victim->lru = ++c->clock;
  return victim->data;
}

int
qcow2_refcount_get (struct rawtrack_image *img, uint64_t c, uint64_t *value)
{
  uint64_t idx = c / img->refblock_entries, off = 0;
  uint8_t *block;

  *value = 0;
  if (idx >= img->reftable_entries)
    return 0;
  if (qcow2_refcount_load (img) == -1)
    return -1;
  if (block_offset (img, idx, &off) == -1)
    return -1;
  if (off == 0)
    return 0;
  if (!(block = load_block (img, off)))
    return -1;
  *value = refblock_get (block, c % img->refblock_entries, img->refcount_bits);
  return 0;
}

int
qcow2_refcount_set (struct rawtrack_image *img, uint64_t c, uint64_t value)
{
  uint64_t idx = c / img->refblock_entries, off = 0, i, byte, nbytes;
  uint8_t *block;

  if (img->refcount_bits < 64 && value >> img->refcount_bits)
    return set_error (ERANGE, "refcount %" PRIu64 " of cluster %" PRIu64
                      " does not fit in %" PRIu32 " bits", value, c,
                      img->refcount_bits);
  if (idx >= img->reftable_entries)
    return set_error (EINVAL, "cluster %" PRIu64 " is not covered by the "
                      "refcount table", c);
  if (qcow2_refcount_load (img) == -1)
    return -1;
  if (block_offset (img, idx, &off) == -1)
    return -1;
  if (off == 0)
    return set_error (EINVAL, "cluster %" PRIu64 " has no refcount block", c);
  if (!(block = load_block (img, off)))
    return -1;
  i = c % img->refblock_entries;
  refblock_set (block, i, img->refcount_bits, value);
  byte = i * img->refcount_bits / 8;
  nbytes = img->refcount_bits >= 8 ? img->refcount_bits / 8 : 1;
  return io_write (img->file, block + byte, nbytes, off + byte,
                   "refcount block");
}
