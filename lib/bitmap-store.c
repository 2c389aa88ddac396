/* rawtrack - persistent bitmap storage: bitmap tables and bitmap data.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the bitmap table (one 64-bit entry per cluster of the serialized
 * bit stream, qcow2-facts.md §5.4) and the data clusters it points to:
 * validating a table, loading bits from it into a struct bitmap_mem, and
 * storing a struct bitmap_mem into new clusters.  The directory and the
 * header belong to bitmap-update.c, which publishes what this file wrote.
 *
 * Locking: every function expects img->lock held; the entry points in
 * bitmap-ops.c and track.c take it.
 *
 * On-disk invariants (what QEMU checks, and what we write):
 *   1. A table has exactly ceil(ceil(ceil(size / g) / 8) / cs) entries for
 *      a consistent bitmap and starts cluster-aligned; it occupies
 *      ceil(8 * entries / cs) contiguous clusters.
 *   2. An entry is 0 (cluster of zeros, nothing allocated), 1 (all ones,
 *      read but never written - QEMU never writes it either), or a
 *      cluster-aligned offset with bit 0 clear; bits 1-8 and 56-63 are 0.
 *   3. Unused tail bits of the last data cluster are zero (bitmap-mem.c
 *      keeps them zero; clusters are zero-padded).
 *
 * Store ordering (nothing here is published; the caller flushes and then
 * switches the header, see bitmap-update.c):
 *
 *     bitmap_store()
 *       1. count the table entries whose bits are not all clean: k
 *       2. allocate k data clusters in one contiguous run   (refcount 1,
 *          written through, not flushed)
 *       3. write the k clusters of bits, 8 MiB at a time
 *       4. allocate ceil(8 * entries / cs) clusters for the table
 *       5. write the table (entries big-endian, zero-padded to clusters)
 *     every cluster of steps 2 and 4 is recorded in `allocated`; if a step
 *     fails, the caller frees them (nothing points to them yet).
 *
 * A crash anywhere in here leaves only leaked clusters: the header still
 * points to the old directory, which points to the old tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap.h"
#include "byteorder.h"
#include "arith.h"

/* Largest single read or write of bitmap data. */
#define IO_CHUNK (8u * 1024 * 1024)

int
cluster_list_add (struct cluster_list *l, uint64_t offset, uint64_t n)
{
  struct cluster_run r = { offset, n };

  if (n == 0)
    return 0;
  return cluster_list_append (l, r);
}

int
cluster_list_free_all (struct rawtrack_image *img, struct cluster_list *l)
{
  int r = 0;
  size_t i;

  for (i = 0; i < l->len; i++)
    if (qcow2_free_clusters (img, l->ptr[i].offset, l->ptr[i].n) == -1)
      r = -1;
  cluster_list_reset (l);
  return r;
}

int
bitmap_table_parse (const uint8_t *buf, uint32_t table_size,
                    uint32_t cluster_size, uint64_t file_size,
                    const char *name, uint64_t table_offset, uint64_t *out)
{
  uint32_t i;

  for (i = 0; i < table_size; i++) {
    uint64_t e = be64_load (buf + (uint64_t) i * 8);
    uint64_t off = e & BME_TABLE_ENTRY_OFFSET_MASK;

    if (e & BME_TABLE_ENTRY_RESERVED_MASK)
      return set_corrupt ("bitmap '%s': entry %" PRIu32 " of the bitmap "
                          "table at offset 0x%" PRIx64 " has reserved bits "
                          "set (0x%016" PRIx64 ")", name, i, table_offset, e);
    if (off != 0) {
      if (e & BME_TABLE_ENTRY_FLAG_ALL_ONES)
        return set_corrupt ("bitmap '%s': entry %" PRIu32 " of the bitmap "
                            "table at offset 0x%" PRIx64 " has both the "
                            "all-ones flag and a data offset (0x%016" PRIx64
                            ")", name, i, table_offset, e);
      if (!IS_ALIGNED (off, cluster_size))
        return set_corrupt ("bitmap '%s': entry %" PRIu32 " of the bitmap "
                            "table at offset 0x%" PRIx64 ": data offset 0x%"
                            PRIx64 " is not cluster-aligned", name, i,
                            table_offset, off);
      if (off >= file_size)
        return set_corrupt ("bitmap '%s': entry %" PRIu32 " of the bitmap "
                            "table at offset 0x%" PRIx64 ": data offset 0x%"
                            PRIx64 " is past the end of the image file (%"
                            PRIu64 " bytes)", name, i, table_offset, off,
                            file_size);
    }
    out[i] = e;
  }
  return 0;
}

static int
file_size_of (struct rawtrack_image *img, uint64_t *size)
{
  int64_t s = io_op_get_size (img->file);

  if (s < 0)
    return set_error (errno, "cannot get the size of the image file: %s",
                      strerror (errno));
  *size = (uint64_t) s;
  return 0;
}

int
bitmap_table_read (struct rawtrack_image *img, const struct bitmap_entry *e,
                   uint64_t **table)
{
  return bitmap_table_read_part (img, e, 0, e->table_size, table);
}

int
bitmap_table_read_part (struct rawtrack_image *img,
                        const struct bitmap_entry *e, uint32_t first,
                        uint32_t n, uint64_t **table)
{
  uint64_t fsize = 0, bytes = (uint64_t) e->table_size * 8;
  uint8_t *buf;
  uint64_t *t;

  *table = NULL;
  if (first > e->table_size || n > e->table_size - first)
    return set_error (EINVAL, "bitmap '%s': table entries %" PRIu32
                      "..+%" PRIu32 " asked of %" PRIu32, e->name, first, n,
                      e->table_size);
  if (file_size_of (img, &fsize) == -1)
    return -1;
  /* bitmap_dir_parse bounded table_size (<= 2^27, <= 512 MiB of data). */
  if (e->table_offset >= fsize || bytes > fsize - e->table_offset)
    return set_corrupt ("bitmap '%s': the bitmap table at offset 0x%" PRIx64
                        " (%" PRIu32 " entries) is past the end of the image "
                        "file (%" PRIu64 " bytes)", e->name, e->table_offset,
                        e->table_size, fsize);
  bytes = (uint64_t) n * 8;
  buf = rt_malloc (bytes ? bytes : 1);
  t = rt_malloc (bytes ? bytes : 1);
  if (!buf || !t)
    goto fail;
  if ((bytes && io_read (img->file, buf, bytes,
                         e->table_offset + (uint64_t) first * 8,
                         "bitmap table") == -1) ||
      bitmap_table_parse (buf, n, img->cluster_size, fsize, e->name,
                          e->table_offset + (uint64_t) first * 8, t) == -1)
    goto fail;
  free (buf);
  *table = t;
  return 0;

 fail:
  free (buf);
  free (t);
  return -1;
}

int
bitmap_load (struct rawtrack_image *img, const struct bitmap_entry *e,
             struct bitmap_mem **out)
{
  return bitmap_load_range (img, e, 0, img->virtual_size, out);
}

int
bitmap_load_range (struct rawtrack_image *img, const struct bitmap_entry *e,
                   uint64_t start, uint64_t len, struct bitmap_mem **out)
{
  const uint64_t cs = img->cluster_size;
  uint64_t need, *table = NULL, i, j, first, last, lo, hi;
  struct bitmap_mem *bm = NULL;
  uint8_t *buf = NULL;
  size_t bufsize;

  *out = NULL;
  need = bitmap_table_size_for (img->virtual_size, e->granularity_bits,
                                img->cluster_size);
  if (e->table_size != need)
    return set_corrupt ("bitmap '%s': its table has %" PRIu32 " entries, "
                        "the virtual size needs %" PRIu64, e->name,
                        e->table_size, need);
  bm = bitmap_mem_new (img->virtual_size, 1u << e->granularity_bits);
  if (!bm)
    return -1;

  /* The stream bytes that hold the bits of [start, start + len) (bit k
   * covers guest bytes k << granularity_bits and is stream bit k), widened
   * to 4 KiB: only those are read, so a client asking about 4 GiB of a
   * 16 TiB disk reads 4 KiB of a 64 KiB-granularity bitmap, not its
   * cluster. */
  if (len == 0 || start >= img->virtual_size)
    first = last = lo = hi = 0;
  else {
    uint64_t end = MIN (start + len, img->virtual_size);

    lo = ROUND_DOWN ((start >> e->granularity_bits) / 8, 4096);
    hi = MIN (ROUND_UP (((end - 1) >> e->granularity_bits) / 8 + 1, 4096),
              (uint64_t) e->table_size * cs);
    first = lo / cs;
    last = DIV_ROUND_UP (hi, cs);
  }
  /* Only the table entries of those clusters (table[i - first]): a
   * request costs what it covers, not the disk size. */
  if (bitmap_table_read_part (img, e, (uint32_t) first,
                              (uint32_t) (last - first), &table) == -1)
    goto fail;
  /* One piece (at most a cluster) fits; runs of contiguous clusters are
   * read up to IO_CHUNK at a time. */
  bufsize = (size_t) MAX (MIN ((uint64_t) IO_CHUNK, hi - lo),
                          MIN ((uint64_t) cs, hi - lo));
  buf = rt_malloc (bufsize ? bufsize : 1);
  if (!buf)
    goto fail;
  for (i = first; i < last; i = j) {
    uint64_t off = table[i - first] & BME_TABLE_ENTRY_OFFSET_MASK;
    uint64_t plo = MAX (lo, i * cs), phi = MIN (hi, (i + 1) * cs);

    j = i + 1;
    if (off == 0) {
      /* The bitmap starts all clean; only all-ones needs work. */
      if (table[i - first] & BME_TABLE_ENTRY_FLAG_ALL_ONES)
        bitmap_mem_fill (bm, plo, phi - plo, true);
      continue;
    }
    /* Coalesce a run of contiguous data clusters into one read. */
    while (j < last && phi == j * cs &&
           MIN (hi, (j + 1) * cs) - plo <= bufsize &&
           (table[j - first] & BME_TABLE_ENTRY_OFFSET_MASK) ==
           off + (j - i) * cs) {
      phi = MIN (hi, (j + 1) * cs);
      j++;
    }
    if (io_read (img->file, buf, phi - plo, off + (plo - i * cs),
                 "bitmap data") == -1) {
      rt_prefix_error ("bitmap '%s': ", e->name);
      goto fail;
    }
    bitmap_mem_load (bm, plo, phi - plo, buf);
  }
  free (buf);
  free (table);
  *out = bm;
  return 0;

 fail:
  free (buf);
  free (table);
  bitmap_mem_free (bm);
  return -1;
}

/* Allocate n clusters, recording them in allocated. */
static int64_t
alloc_recorded (struct rawtrack_image *img, uint64_t n,
                struct cluster_list *allocated)
{
  int64_t off = qcow2_alloc_clusters (img, n);

  if (off < 0)
    return -1;
  if (cluster_list_add (allocated, (uint64_t) off, n) == -1) {
    qcow2_free_clusters (img, (uint64_t) off, n);
    return -1;
  }
  return off;
}

int
bitmap_store (struct rawtrack_image *img, const struct bitmap_mem *bm,
              uint32_t table_size, uint64_t *table_offset,
              struct cluster_list *allocated)
{
  const uint64_t cs = img->cluster_size;
  uint64_t i, k = 0, done, tclusters;
  uint8_t *tbl = NULL, *buf = NULL, *dirty = NULL;
  int64_t data = 0, toff;
  int r = -1;

  if (bm)
    table_size = (uint32_t) DIV_ROUND_UP (bitmap_mem_stream_bytes (bm), cs);
  if (table_size == 0 || table_size > BME_MAX_TABLE_SIZE ||
      (uint64_t) table_size * cs > BME_MAX_PHYS_SIZE)
    return set_error (ERANGE, "bitmap table of %" PRIu32 " entries is out "
                      "of range", table_size);
  tclusters = DIV_ROUND_UP ((uint64_t) table_size * 8, cs);
  tbl = rt_calloc (tclusters, cs);
  if (!tbl)
    return -1;

  /* 1. */
  if (bm) {
    dirty = rt_calloc (table_size, 1);
    if (!dirty)
      goto out;
    for (i = 0; i < table_size; i++)
      if (bitmap_mem_stream_range_state (bm, i * cs, cs) != 0) {
        dirty[i] = 1;
        k++;
      }
  }

  if (k > 0) {
    size_t bufsize = (size_t) MIN ((uint64_t) IO_CHUNK, k * cs);
    uint64_t fill = 0, at;

    /* 2. */
    data = alloc_recorded (img, k, allocated);
    if (data < 0)
      goto out;
    buf = rt_malloc (bufsize);
    if (!buf)
      goto out;
    /* 3.  Data cluster d of the run holds the d-th non-clean entry. */
    at = (uint64_t) data;
    for (i = 0, done = 0; i < table_size; i++) {
      if (!dirty[i])
        continue;
      bitmap_mem_store (bm, i * cs, cs, buf + fill);
      be64_store (tbl + i * 8, (uint64_t) data + done * cs);
      fill += cs;
      done++;
      if (fill == bufsize || done == k) {
        if (io_write (img->file, buf, fill, at, "bitmap data") == -1)
          goto out;
        at += fill;
        fill = 0;
      }
    }
  }

  /* 4, 5. */
  toff = alloc_recorded (img, tclusters, allocated);
  if (toff < 0 ||
      io_write (img->file, tbl, tclusters * cs, (uint64_t) toff,
                "bitmap table") == -1)
    goto out;
  *table_offset = (uint64_t) toff;
  r = 0;

 out:
  free (dirty);
  free (buf);
  free (tbl);
  return r;
}

int
bitmap_collect_clusters (struct rawtrack_image *img,
                         const struct bitmap_entry *e,
                         struct cluster_list *list)
{
  const uint64_t cs = img->cluster_size;
  uint64_t *table = NULL, i;

  if (bitmap_table_read (img, e, &table) == -1) {
    if (!(e->flags & BME_FLAG_IN_USE))
      return -1;
    /* An inconsistent bitmap's table may be anything: leak it rather
     * than drop references to clusters that may not be ours (QEMU's
     * free_bitmap_clusters gives up the same way). */
    rt_clear_error ();
    return 0;
  }
  for (i = 0; i < e->table_size; i++) {
    uint64_t off = table[i] & BME_TABLE_ENTRY_OFFSET_MASK;

    if (off && cluster_list_add (list, off, 1) == -1)
      goto fail;
  }
  if (cluster_list_add (list, e->table_offset,
                        DIV_ROUND_UP ((uint64_t) e->table_size * 8, cs)) == -1)
    goto fail;
  free (table);
  return 0;

 fail:
  free (table);
  return -1;
}
