/* rawtrack - qcow2 cluster allocation in the image file.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: finding free clusters, taking and dropping references, and
 * growing the refcount structures (new refcount blocks, a larger refcount
 * table) when an allocation runs past what they cover.
 *
 * Locking: callers hold img->lock.
 *
 * Ordering (a crash at any point leaves at worst leaked clusters, never a
 * structure that points at a cluster with refcount 0):
 *
 *   grow_and_alloc()
 *     1. new refcount blocks are written, each already counting itself and
 *        every other new structure cluster it covers;
 *     2. structure clusters covered by existing blocks get refcount 1;
 *     3. flush;
 *     4a. same table: the new table entries are written in place, or
 *     4b. new table: written in new clusters, flushed, the header switched
 *         to it (written and flushed), then the old table is freed;
 *     5. the requested clusters get refcount 1 (not flushed: the caller
 *        flushes before it publishes a reference to them).
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

static bool
covered (struct rawtrack_image *img, uint64_t c)
{
  uint64_t idx = c / img->refblock_entries;

  return idx < img->reftable_entries &&
         (img->reftable[idx] & REFT_OFFSET_MASK) != 0;
}

/* Is cluster c free?  Uncovered clusters are free by definition. */
static int
is_free (struct rawtrack_image *img, uint64_t c, bool *free_)
{
  uint64_t v;

  if (qcow2_refcount_get (img, c, &v) == -1)
    return -1;
  *free_ = v == 0;
  return 0;
}

/* Place n clusters and the refcount structures they need past the
 * covered area.  See the ordering at the top of the file. */
static int64_t
grow_and_alloc (struct rawtrack_image *img, uint64_t start_idx, uint64_t n)
{
  const uint64_t E = img->refblock_entries;
  const uint64_t cs = img->cluster_size;
  uint64_t s, k = 0, t = 0, new_entries = img->reftable_entries;
  uint64_t *idxs = NULL, nidx = 0, i, c;
  uint64_t *newtable = NULL;
  uint8_t *block = NULL;
  int64_t ret = -1;

  /* Find the first uncovered block range at or after start_idx whose
   * clusters, and those after it that we will use, are all free. */
  for (;;) {
    uint64_t end, j, first_idx, last_idx;
    bool ok = true;

    while (start_idx < img->reftable_entries &&
           (img->reftable[start_idx] & REFT_OFFSET_MASK))
      start_idx++;
    s = start_idx * E;

    /* Fixed point: k new blocks and t new table clusters after the run. */
    k = t = 0;
    for (;;) {
      uint64_t k2 = 0, t2 = 0, need;

      end = s + n + k + t;
      first_idx = s / E;
      last_idx = (end - 1) / E;
      for (j = first_idx; j <= last_idx; j++)
        if (!(j < img->reftable_entries &&
              (img->reftable[j] & REFT_OFFSET_MASK)))
          k2++;
      need = last_idx + 1;
      new_entries = img->reftable_entries;
      if (need > img->reftable_entries) {
        /* Grow by half again, so that growth is rare. */
        new_entries = MAX (need, img->reftable_entries * 3 / 2);
        new_entries = ROUND_UP (new_entries, cs / 8);
        t2 = new_entries * 8 / cs;
      }
      if (k2 == k && t2 == t)
        break;
      k = k2;
      t = t2;
    }
    if (t * cs > QCOW2_MAX_REFTABLE_BYTES)
      return set_error (ENOSPC, "the refcount table would exceed 8 MiB; "
                        "the image file cannot grow further");

    /* Covered clusters in [s, end) must be free. */
    for (c = s; c < end && ok; c++) {
      bool f;

      if (!covered (img, c))
        continue;
      if (is_free (img, c, &f) == -1)
        return -1;
      if (!f) {
        ok = false;
        start_idx = c / E + 1;
      }
    }
    if (ok)
      break;
  }

  /* The uncovered block indexes, in order: their blocks go at
   * [s + n, s + n + k). */
  idxs = rt_calloc (k ? k : 1, sizeof *idxs);
  block = rt_malloc (cs);
  if (!idxs || !block)
    goto out;
  for (i = s / E; nidx < k; i++)
    if (!(i < img->reftable_entries && (img->reftable[i] & REFT_OFFSET_MASK)))
      idxs[nidx++] = i;

  /* 1. New blocks, each counting the new structure clusters it covers. */
  for (i = 0; i < k; i++) {
    memset (block, 0, cs);
    for (c = s + n; c < s + n + k + t; c++)
      if (c / E == idxs[i])
        refblock_set (block, c % E, img->refcount_bits, 1);
    if (io_write (img->file, block, cs, (s + n + i) * cs,
                  "new refcount block") == -1)
      goto out;
  }

  /* 2. Structure clusters that existing blocks cover. */
  for (c = s + n; c < s + n + k + t; c++)
    if (covered (img, c) && qcow2_refcount_set (img, c, 1) == -1)
      goto out;

  /* 3. */
  if (io_flush (img->file, "image file") == -1)
    goto out;

  if (t == 0) {
    /* 4a. */
    for (i = 0; i < k; i++) {
      uint8_t e[8];

      be64_store (e, (s + n + i) * cs);
      if (io_write (img->file, e, 8,
                    img->h.refcount_table_offset + idxs[i] * 8,
                    "refcount table entry") == -1)
        goto out;
      img->reftable[idxs[i]] = (s + n + i) * cs;
    }
  }
  else {
    /* 4b. */
    uint64_t old_off = img->h.refcount_table_offset;
    uint32_t old_clusters = img->h.refcount_table_clusters;
    uint64_t new_off = (s + n + k) * cs;

    newtable = rt_calloc (new_entries, 8);
    if (!newtable)
      goto out;
    for (i = 0; i < img->reftable_entries; i++)
      be64_store (&newtable[i], img->reftable[i]);
    for (i = 0; i < k; i++)
      be64_store (&newtable[idxs[i]], (s + n + i) * cs);
    if (io_write (img->file, newtable, new_entries * 8, new_off,
                  "new refcount table") == -1 ||
        io_flush (img->file, "image file") == -1)
      goto out;
    img->h.refcount_table_offset = new_off;
    img->h.refcount_table_clusters = (uint32_t) t;
    if (qcow2_write_header (img, true) == -1) {
      img->h.refcount_table_offset = old_off;
      img->h.refcount_table_clusters = old_clusters;
      goto out;
    }
    for (i = 0; i < new_entries; i++)
      newtable[i] = be64_load (&newtable[i]);
    free (img->reftable);
    img->reftable = newtable;
    img->reftable_entries = new_entries;
    newtable = NULL;
    if (old_clusters &&
        qcow2_free_clusters (img, old_off, old_clusters) == -1)
      goto out;
  }

  /* 5. */
  for (c = s; c < s + n; c++)
    if (qcow2_refcount_set (img, c, 1) == -1)
      goto out;
  ret = (int64_t) (s * cs);

 out:
  free (idxs);
  free (block);
  free (newtable);
  return ret;
}

int64_t
qcow2_alloc_clusters (struct rawtrack_image *img, uint64_t n)
{
  const uint64_t E = img->refblock_entries;
  uint64_t c = img->free_hint, run = 0, start = 0, i;
  bool first_free_seen = false;

  if (n == 0 || n > (1ull << 40))
    return set_error (EINVAL, "cannot allocate %" PRIu64 " clusters", n);
  if (!img->writable)
    return set_error (EROFS, "the image is open read-only");
  if (qcow2_refcount_load (img) == -1)
    return -1;

  /* First fit inside the covered area. */
  while (covered (img, c)) {
    bool f;

    if (is_free (img, c, &f) == -1)
      return -1;
    if (f) {
      if (!first_free_seen) {
        img->free_hint = c;
        first_free_seen = true;
      }
      if (run == 0)
        start = c;
      if (++run == n) {
        for (i = start; i < start + n; i++)
          if (qcow2_refcount_set (img, i, 1) == -1)
            return -1;
        if (img->free_hint == start)
          img->free_hint = start + n;
        return (int64_t) (start * img->cluster_size);
      }
    }
    else
      run = 0;
    c++;
  }
  return grow_and_alloc (img, c / E, n);
}

int
qcow2_free_clusters (struct rawtrack_image *img, uint64_t offset, uint64_t n)
{
  uint64_t c = offset / img->cluster_size, end = c + n, v;

  for (; c < end; c++) {
    if (qcow2_refcount_get (img, c, &v) == -1)
      return -1;
    if (v == 0)
      return set_corrupt ("freeing cluster %" PRIu64 " (offset 0x%" PRIx64
                          ") whose refcount is already 0", c,
                          c * img->cluster_size);
    if (qcow2_refcount_set (img, c, v - 1) == -1)
      return -1;
    if (v == 1 && c < img->free_hint)
      img->free_hint = c;
  }
  return 0;
}

int
qcow2_trim_tail (struct rawtrack_image *img)
{
  const uint64_t cs = img->cluster_size;
  int64_t size;
  uint64_t c, v;

  if (!img->writable)
    return 0;
  size = rawtrack_io_get_size (img->file);
  if (size < 0)
    return set_error (errno ? errno : EIO, "reading the image file size");
  if (qcow2_refcount_load (img) == -1)
    return -1;
  c = DIV_ROUND_UP ((uint64_t) size, cs);
  while (c > 1) {
    if (qcow2_refcount_get (img, c - 1, &v) == -1)
      return -1;
    if (v)
      break;
    c--;
  }
  if (c * cs >= (uint64_t) size)
    return 0;
  if (rawtrack_io_truncate (img->file, c * cs) == -1)
    return set_error (errno ? errno : EIO, "giving back the free clusters "
                      "at the end of the image file (truncating it to %"
                      PRIu64 " bytes): %s", c * cs, strerror (errno));
  if (img->free_hint > c)
    img->free_hint = c;
  return 0;
}
