/* rawtrack - counting a stored bitmap's dirty bytes without loading it.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: bitmap_count_dirty and the per-handle count cache.
 *
 * A hostile (or merely odd) image may point many bitmaps at one table,
 * or every table entry at one data cluster: loading each bitmap would
 * cost what the header claims (200 bitmaps x 64 MiB of bits for a 1 MiB
 * file; 65535 bitmaps: hours), not what the file holds.  Here the table
 * is walked: an all-clean entry counts 0, an all-ones entry its bits, a
 * data cluster its set bits - each distinct cluster read and counted
 * once per handle, and a table already counted (same offset, size and
 * granularity) answered from the cache.  So the work is bounded by the
 * distinct tables and clusters in the file.
 *
 * The cache is kept only on read-only handles: a writable handle changes
 * bitmap data in place (tracking), a read-only one never does, and the
 * image lock keeps writers out while the handle is open.  Bits past the
 * virtual size are not counted (they must be zero; a hostile image's are
 * ignored, as loading ignores them).
 *
 * Locking: the caller holds img->lock.
 */
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

#include "arith.h"
#include "internal.h"
#include "bitmap.h"

#define CACHE_MAX (1u << 17)           /* entries of each cache, at most */

struct count_slot {
  uint64_t key;                        /* 0: empty */
  uint64_t key2;
  uint64_t value;
};

struct count_cache {
  struct count_slot *clusters;         /* key: cluster offset */
  struct count_slot *tables;           /* key: table offset, key2: size and
                                        * granularity */
  uint32_t nclusters, ntables, cap;
};

static uint64_t
hash64 (uint64_t x)
{
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

/* The slot of (key, key2) in t (cap slots): found, or the empty one. */
static struct count_slot *
slot (struct count_slot *t, uint32_t cap, uint64_t key, uint64_t key2)
{
  uint64_t i = hash64 (key ^ key2 * 31) & (cap - 1);

  while (t[i].key != 0 && (t[i].key != key || t[i].key2 != key2))
    i = (i + 1) & (cap - 1);
  return &t[i];
}

static bool
lookup (struct count_slot *t, uint32_t cap, uint64_t key, uint64_t key2,
        uint64_t *value)
{
  struct count_slot *s;

  if (!t)
    return false;
  s = slot (t, cap, key, key2);
  if (s->key == 0)
    return false;
  *value = s->value;
  return true;
}

/* Remember; silently not when full (half the slots) or out of memory. */
static void
remember (struct count_slot **t, uint32_t *n, uint32_t cap, uint64_t key,
          uint64_t key2, uint64_t value)
{
  struct count_slot *s;

  if (!*t && !(*t = calloc (cap, sizeof **t)))
    return;
  if (*n >= cap / 2)
    return;
  s = slot (*t, cap, key, key2);
  if (s->key == 0) {
    s->key = key;
    s->key2 = key2;
    s->value = value;
    ++*n;
  }
}

void
bitmap_count_cache_free (struct rawtrack_image *img)
{
  struct count_cache *c = img->count_cache;

  if (!c)
    return;
  free (c->clusters);
  free (c->tables);
  free (c);
  img->count_cache = NULL;
}

static uint64_t
popcount_buf (const uint8_t *p, uint64_t bytes, uint64_t bits)
{
  uint64_t n = 0, i, full = bits / 8;

  if (full > bytes)
    full = bytes;
  for (i = 0; i + 8 <= full; i += 8) {
    uint64_t w;

    memcpy (&w, p + i, 8);
    n += (uint64_t) __builtin_popcountll (w);
  }
  for (; i < full; i++)
    n += (uint64_t) __builtin_popcount (p[i]);
  if (full < bytes && bits % 8)
    n += (uint64_t) __builtin_popcount (p[full] & ((1u << (bits % 8)) - 1));
  return n;
}

int
bitmap_count_dirty (struct rawtrack_image *img, const struct bitmap_entry *e,
                    uint64_t *bytes)
{
  const uint64_t cs = img->cluster_size, bits_per = cs * 8;
  uint64_t nbits, need, *table = NULL, i, count = 0;
  uint64_t key2 = ((uint64_t) e->table_size << 8) | e->granularity_bits;
  struct count_cache *c = img->count_cache;
  uint8_t *buf = NULL;

  need = bitmap_table_size_for (img->virtual_size, e->granularity_bits, cs);
  if (e->table_size != need)
    return set_corrupt ("bitmap '%s': its table has %" PRIu32 " entries, "
                        "the virtual size needs %" PRIu64, e->name,
                        e->table_size, need);
  if (!img->writable && !c && (c = calloc (1, sizeof *c)) != NULL) {
    c->cap = CACHE_MAX;
    img->count_cache = c;
  }
  if (!img->writable && c &&
      lookup (c->tables, c->cap, e->table_offset + 1, key2, bytes))
    return 0;
  nbits = DIV_ROUND_UP (img->virtual_size, (uint64_t) 1 << e->granularity_bits);
  if (bitmap_table_read (img, e, &table) == -1)
    return -1;
  for (i = 0; i < e->table_size; i++) {
    uint64_t off = table[i] & BME_TABLE_ENTRY_OFFSET_MASK, n;
    uint64_t here = MIN (bits_per, nbits - MIN (nbits, i * bits_per));

    if (off == 0) {
      if (table[i] & BME_TABLE_ENTRY_FLAG_ALL_ONES)
        count += here;
      continue;
    }
    /* The key says how many bits of the cluster count: the last entry
     * may cover fewer than a cluster's. */
    if (!img->writable && c &&
        lookup (c->clusters, c->cap, off, here, &n)) {
      count += n;
      continue;
    }
    if (!buf && !(buf = rt_malloc (cs)))
      goto fail;
    if (io_read (img->file, buf, cs, off, "bitmap data") == -1) {
      rt_prefix_error ("bitmap '%s': ", e->name);
      goto fail;
    }
    n = popcount_buf (buf, cs, here);
    if (!img->writable && c)
      remember (&c->clusters, &c->nclusters, c->cap, off, here, n);
    count += n;
  }
  free (buf);
  free (table);
  *bytes = count << e->granularity_bits;
  if (!img->writable && c)
    remember (&c->tables, &c->ntables, c->cap, e->table_offset + 1, key2,
              *bytes);
  return 0;

 fail:
  free (buf);
  free (table);
  return -1;
}
