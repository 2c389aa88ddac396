/* rawtrack - is a bitmap's storage its own?  (QEMU's overlap checks)
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: bitmap_check_owned, asked before rawtrack writes bits into a
 * bitmap's existing clusters in place (tracking rewrites the table and
 * the data clusters it touches at every commit, cooling and close).  On a
 * corrupt image a
 * bitmap table may point into an L2 table, a refcount block, the header
 * or another bitmap's clusters; writing there would unmap guest data or
 * corrupt the other bitmap, and freeing there would let the cluster be
 * reused while still in use.  QEMU guards its metadata writes the same
 * way (qcow2_check_metadata_overlap); rawtrack refuses with a message
 * that names the corruption, and writes nothing.
 *
 * The rule: every cluster of the bitmap - its table and each data cluster
 * the table names - has refcount exactly 1, no data cluster is named
 * twice, and none is any of: cluster 0 (header), the L1 table, an L2
 * table, the refcount table, a refcount block, the bitmap directory,
 * another bitmap's table or data cluster.  (Guest data clusters inside
 * the image file are not enumerated, as QEMU does not either: with a
 * consistent refcount, sharing one shows as refcount 2.)
 *
 * Cost: one pass over the L1 table, the refcount table and every
 * bitmap's table, a sort of the metadata cluster indexes, and a binary
 * search per cluster of each bitmap checked; bitmap_check_owned_set
 * checks many bitmaps with one such pass (tracking start: not O(n^2)
 * in the number of bitmaps).  It runs once per bitmap when
 * tracking starts, before any in-place write: clusters are only added
 * while tracking (new ones, refcount 1, the tracker's), so the answer
 * holds until close (cached by being asked once).  Nothing in the write
 * path.
 *
 * Locking: img->lock held (the caller's).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap.h"
#include "arith.h"
#include "vector.h"

/* The cluster index of a byte offset: this file's unit. */
static inline uint64_t
cluster_of (const struct rawtrack_image *img, uint64_t off)
{
  return off >> img->h.cluster_bits;
}

enum owner_kind {
  OWN_HEADER, OWN_L1, OWN_L2, OWN_REFTABLE, OWN_REFBLOCK, OWN_BITMAP_DIR,
  OWN_TABLE, OWN_DATA,
};

struct owner {
  uint64_t cluster;
  uint32_t kind;                   /* enum owner_kind */
  uint32_t bitmap;                 /* OWN_TABLE, OWN_DATA: directory index */
};

DEFINE_VECTOR_TYPE (owners, struct owner, rt_realloc)

static int
owners_add (struct owners *o, uint64_t cluster, uint32_t kind,
            uint32_t bitmap)
{
  struct owner w = { .cluster = cluster, .kind = kind, .bitmap = bitmap };

  return owners_append (o, w);
}

/* Every cluster of the byte range [off, off + len). */
static int
owners_add_range (struct rawtrack_image *img, struct owners *o, uint64_t off,
                  uint64_t len, uint32_t kind, uint32_t bitmap)
{
  uint64_t c, end;

  if (len == 0)
    return 0;
  end = cluster_of (img, off + len - 1);
  for (c = cluster_of (img, off); c <= end; c++)
    if (owners_add (o, c, kind, bitmap) == -1)
      return -1;
  return 0;
}

static int
cmp_owner (const void *a, const void *b)
{
  const struct owner *x = a, *y = b;

  return x->cluster < y->cluster ? -1 : x->cluster > y->cluster;
}

static const struct owner *
owners_find (const struct owners *o, uint64_t cluster)
{
  size_t lo = 0, hi = o->len;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;

    if (o->ptr[mid].cluster < cluster)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < o->len && o->ptr[lo].cluster == cluster ? &o->ptr[lo] : NULL;
}

static const char *const kind_name[] = {
  [OWN_HEADER] = "the image header",
  [OWN_L1] = "the L1 table",
  [OWN_L2] = "an L2 table",
  [OWN_REFTABLE] = "the refcount table",
  [OWN_REFBLOCK] = "a refcount block",
  [OWN_BITMAP_DIR] = "the bitmap directory",
  [OWN_TABLE] = "the bitmap table of",
  [OWN_DATA] = "a data cluster of",
};

/* Every metadata cluster and every bitmap's clusters (the bitmaps being
 * checked included: check_cluster tells their own entries apart). */
static int
collect_owners (struct rawtrack_image *img, const struct bitmap_dir *dir,
                struct owners *o)
{
  const uint64_t cs = img->cluster_size;
  uint64_t i;
  uint32_t j;

  if (owners_add (o, 0, OWN_HEADER, 0) == -1 ||
      owners_add_range (img, o, img->h.l1_table_offset,
                        (uint64_t) img->l1_size * 8, OWN_L1, 0) == -1 ||
      owners_add_range (img, o, img->h.refcount_table_offset,
                        (uint64_t) img->h.refcount_table_clusters * cs,
                        OWN_REFTABLE, 0) == -1)
    return -1;
  for (i = 0; i < img->l1_size; i++)
    if ((img->l1[i] & L1E_OFFSET_MASK) &&
        owners_add (o, cluster_of (img, img->l1[i] & L1E_OFFSET_MASK),
                    OWN_L2, 0) == -1)
      return -1;
  for (i = 0; i < img->reftable_entries; i++)
    if ((img->reftable[i] & REFT_OFFSET_MASK) &&
        owners_add (o, cluster_of (img, img->reftable[i] & REFT_OFFSET_MASK),
                    OWN_REFBLOCK, 0) == -1)
      return -1;
  if (img->h.has_bitmaps_ext && img->h.nb_bitmaps &&
      owners_add_range (img, o, img->h.bitmap_dir_offset,
                        img->h.bitmap_dir_size, OWN_BITMAP_DIR, 0) == -1)
    return -1;
  for (j = 0; j < dir->nr; j++) {
    const struct bitmap_entry *e = &dir->entries[j];
    CLEANUP_FREE uint64_t *table = NULL;

    if (owners_add_range (img, o, e->table_offset,
                          (uint64_t) e->table_size * 8, OWN_TABLE, j) == -1)
      return -1;
    /* An unreadable table names no clusters we could protect. */
    if (bitmap_table_read (img, e, &table) == -1) {
      rt_clear_error ();
      continue;
    }
    for (i = 0; i < e->table_size; i++)
      if ((table[i] & BME_TABLE_ENTRY_OFFSET_MASK) &&
          owners_add (o, cluster_of (img, table[i] &
                                     BME_TABLE_ENTRY_OFFSET_MASK),
                      OWN_DATA, j) == -1)
        return -1;
  }
  qsort (o->ptr, o->len, sizeof *o->ptr, cmp_owner);
  return 0;
}

/* Cluster c of bitmap `self` (what: "data cluster", "table cluster"). */
static int
check_cluster (struct rawtrack_image *img, const struct bitmap_dir *dir,
               const struct owners *o, const struct bitmap_entry *e,
               uint64_t c, const char *what)
{
  const struct owner *w = owners_find (o, c);
  uint32_t self = (uint32_t) (e - dir->entries);
  uint64_t rc;

  /* The bitmap's own entries for c are no overlap (its table named as a
   * data cluster is caught by the caller); any other one is. */
  while (w && w < o->ptr + o->len && w->cluster == c &&
         w->kind >= OWN_TABLE && w->bitmap == self)
    w++;
  if (w && (w == o->ptr + o->len || w->cluster != c))
    w = NULL;
  if (w)
    return set_corrupt ("bitmap '%s': its %s at offset 0x%" PRIx64 " is also "
                        "%s%s%s%s: the image is corrupt (see 'rawtrack "
                        "check'); refusing to write the bitmap there",
                        e->name, what, c << img->h.cluster_bits,
                        kind_name[w->kind],
                        w->kind >= OWN_TABLE ? " bitmap '" : "",
                        w->kind >= OWN_TABLE ? dir->entries[w->bitmap].name
                                             : "",
                        w->kind >= OWN_TABLE ? "'" : "");
  if (qcow2_refcount_get (img, c, &rc) == -1)
    return -1;
  if (rc != 1)
    return set_corrupt ("bitmap '%s': its %s at offset 0x%" PRIx64 " has "
                        "refcount %" PRIu64 ", not 1: the image is corrupt "
                        "(see 'rawtrack check'); refusing to write the bitmap "
                        "there", e->name, what, c << img->h.cluster_bits, rc);
  return 0;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* Check one bitmap against the owners collected. */
static int
check_one (struct rawtrack_image *img, const struct bitmap_dir *dir,
           const struct owners *os, uint32_t self)
{
  const struct bitmap_entry *e = &dir->entries[self];
  const struct owners o = *os;
  CLEANUP_FREE uint64_t *table = NULL;
  CLEANUP_FREE uint64_t *data = NULL;
  uint64_t i, n = 0, c, tend;

  if (bitmap_table_read (img, e, &table) == -1)
    return -1;
  /* The table itself. */
  tend = e->table_offset + (uint64_t) e->table_size * 8;
  for (c = cluster_of (img, e->table_offset);
       e->table_size && c <= cluster_of (img, tend - 1); c++)
    if (check_cluster (img, dir, &o, e, c, "table cluster") == -1)
      return -1;
  /* Its data clusters: not metadata, not its own table, not named twice. */
  data = rt_malloc ((e->table_size ? e->table_size : 1) * sizeof *data);
  if (!data)
    return -1;
  for (i = 0; i < e->table_size; i++)
    if (table[i] & BME_TABLE_ENTRY_OFFSET_MASK)
      data[n++] = cluster_of (img, table[i] & BME_TABLE_ENTRY_OFFSET_MASK);
  qsort (data, n, sizeof *data, cmp_u64);
  for (i = 0; i < n; i++) {
    if (i > 0 && data[i] == data[i - 1])
      return set_corrupt ("bitmap '%s': its table names the data cluster "
                          "at offset 0x%" PRIx64 " twice: the image is "
                          "corrupt (see 'rawtrack check'); refusing to write "
                          "the bitmap there", e->name,
                          data[i] << img->h.cluster_bits);
    if (data[i] >= cluster_of (img, e->table_offset) && e->table_size &&
        data[i] <= cluster_of (img, tend - 1))
      return set_corrupt ("bitmap '%s': its data cluster at offset 0x%"
                          PRIx64 " is its own bitmap table: the image is "
                          "corrupt (see 'rawtrack check'); refusing to write "
                          "the bitmap there", e->name,
                          data[i] << img->h.cluster_bits);
    if (check_cluster (img, dir, &o, e, data[i], "data cluster") == -1)
      return -1;
  }
  return 0;
}

int
bitmap_check_owned_set (struct rawtrack_image *img,
                        const struct bitmap_dir *dir, const uint32_t *selves,
                        uint32_t n)
{
  CLEANUP_VECTOR (owners) struct owners o = { 0 };
  uint32_t i;

  /* The owners once for all of them: every bitmap's table is read once
   * here and once in check_one, not once per other bitmap. */
  if (qcow2_refcount_load (img) == -1 || collect_owners (img, dir, &o) == -1)
    return -1;
  for (i = 0; i < n; i++)
    if (check_one (img, dir, &o, selves[i]) == -1)
      return -1;
  return 0;
}

int
bitmap_check_owned (struct rawtrack_image *img, const struct bitmap_dir *dir,
                    uint32_t self)
{
  return bitmap_check_owned_set (img, dir, &self, 1);
}
