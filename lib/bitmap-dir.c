/* rawtrack - the qcow2 bitmap directory: parse, validate, serialise.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the conversion between the on-disk bitmap directory (a packed run
 * of variable-length, 8-byte aligned entries) and struct bitmap_dir.
 * Pure functions over buffers; the caller holds the image lock.
 *
 * Validation is QEMU's (block/qcow2-bitmap.c check_dir_entry and
 * bitmap_list_load), because QEMU refuses to open an image - even for
 * `info` - whose directory breaks any of these rules:
 *   - extra_data_size must be 0 and flags may only hold in_use and auto;
 *   - type 1, granularity bits 9..31, name 1..1023 bytes, names unique;
 *   - table offset non-zero and cluster-aligned, table size 1..2^27 entries
 *     and at most 512 MiB of bitmap data;
 *   - a consistent (not in_use) bitmap's table has exactly the number of
 *     entries the virtual size needs;
 *   - the entries fill the directory exactly.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

#define ENTRY_HEADER 24

uint64_t
bitmap_table_size_for (uint64_t vsize, uint32_t gran_bits,
                       uint32_t cluster_size)
{
  uint64_t bits = DIV_ROUND_UP (vsize, 1ull << gran_bits);
  uint64_t bytes = ROUND_UP (DIV_ROUND_UP (bits, 8), 8);

  return DIV_ROUND_UP (bytes, cluster_size);
}

void
bitmap_dir_free (struct bitmap_dir *dir)
{
  uint32_t i;

  for (i = 0; i < dir->nr; i++)
    free (dir->entries[i].name);
  free (dir->entries);
  dir->entries = NULL;
  dir->nr = 0;
}

static uint64_t
entry_size (uint16_t name_size)
{
  return ROUND_UP ((uint64_t) ENTRY_HEADER + name_size, 8);
}

static int
cmp_names (const void *a, const void *b)
{
  const struct bitmap_entry *const *x = a, *const *y = b;

  return strcmp ((*x)->name, (*y)->name);
}

/* Names must be unique.  Sorted, not pairwise: a hostile directory of
 * 65535 entries compared pairwise took over 10 s of CPU per open. */
static int
check_unique_names (const struct bitmap_dir *dir, uint64_t at)
{
  const struct bitmap_entry **v;
  uint32_t i;
  int r = 0;

  if (dir->nr < 2)
    return 0;
  v = rt_malloc ((size_t) dir->nr * sizeof *v);
  if (!v)
    return -1;
  for (i = 0; i < dir->nr; i++)
    v[i] = &dir->entries[i];
  qsort (v, dir->nr, sizeof *v, cmp_names);
  for (i = 1; i < dir->nr && r == 0; i++)
    if (strcmp (v[i - 1]->name, v[i]->name) == 0)
      r = set_corrupt ("bitmap directory at offset %" PRIu64 ": duplicate "
                       "bitmap name '%s'", at, v[i]->name);
  free (v);
  return r;
}

int
bitmap_dir_parse (const uint8_t *buf, uint64_t dir_size, uint32_t nr,
                  uint64_t vsize, uint32_t cluster_size, uint64_t at,
                  struct bitmap_dir *dir)
{
  uint64_t off = 0;
  uint32_t i;

  memset (dir, 0, sizeof *dir);
  if (nr == 0)
    return 0;
  dir->entries = rt_calloc (nr, sizeof *dir->entries);
  if (!dir->entries)
    return -1;

  for (i = 0; i < nr; i++) {
    struct bitmap_entry *e = &dir->entries[i];
    const uint8_t *p = buf + off;
    uint64_t eat = at + off;
    uint32_t extra;

    if (dir_size - off < ENTRY_HEADER) {
      set_corrupt ("bitmap directory at offset %" PRIu64 " is broken: "
                   "entry %" PRIu32 " at offset %" PRIu64 " crosses its end "
                   "(fewer bitmaps than the %" PRIu32 " the header says)",
                   at, i, eat, nr);
      goto fail;
    }
    e->table_offset = be64_load (p);
    e->table_size = be32_load (p + 8);
    e->flags = be32_load (p + 12);
    e->type = p[16];
    e->granularity_bits = p[17];
    e->name_size = be16_load (p + 18);
    extra = be32_load (p + 20);

    if (extra != 0) {
      set_corrupt ("bitmap directory entry at offset %" PRIu64 ": extra data "
                   "(%" PRIu32 " bytes) is not supported", eat, extra);
      goto fail;
    }
    if (entry_size (e->name_size) > dir_size - off) {
      set_corrupt ("bitmap directory entry at offset %" PRIu64 " crosses the "
                   "end of the directory", eat);
      goto fail;
    }
    if (e->name_size == 0 || e->name_size > BME_MAX_NAME) {
      set_corrupt ("bitmap directory entry at offset %" PRIu64 ": name "
                   "length %u is out of range (1..%d)", eat, e->name_size,
                   BME_MAX_NAME);
      goto fail;
    }
    e->name = rt_strndup ((const char *) p + ENTRY_HEADER, e->name_size);
    if (!e->name)
      goto fail;
    if (strlen (e->name) != e->name_size) {
      set_corrupt ("bitmap directory entry at offset %" PRIu64 ": name "
                   "contains a NUL byte", eat);
      goto fail;
    }
    if (e->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO)) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "reserved flags 0x%" PRIx32 " are set", e->name, eat,
                   e->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO));
      goto fail;
    }
    if (e->type != 1) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "type %u is not a dirty tracking bitmap", e->name, eat,
                   e->type);
      goto fail;
    }
    if (e->granularity_bits < BME_MIN_GRAN_BITS ||
        e->granularity_bits > BME_MAX_GRAN_BITS) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "granularity bits %u out of range (9..31)", e->name, eat,
                   e->granularity_bits);
      goto fail;
    }
    if (e->table_offset == 0 || !IS_ALIGNED (e->table_offset, cluster_size)) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "table offset 0x%" PRIx64 " is %s", e->name, eat,
                   e->table_offset, e->table_offset ? "not cluster-aligned"
                   : "zero");
      goto fail;
    }
    if (e->table_size == 0 || e->table_size > BME_MAX_TABLE_SIZE ||
        (uint64_t) e->table_size * cluster_size > BME_MAX_PHYS_SIZE) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "table size %" PRIu32 " is out of range", e->name, eat,
                   e->table_size);
      goto fail;
    }
    if (!(e->flags & BME_FLAG_IN_USE) &&
        e->table_size != bitmap_table_size_for (vsize, e->granularity_bits,
                                                cluster_size)) {
      set_corrupt ("bitmap '%s' (directory entry at offset %" PRIu64 "): "
                   "table size %" PRIu32 " does not match the virtual size "
                   "(%" PRIu64 " entries needed)", e->name, eat,
                   e->table_size,
                   bitmap_table_size_for (vsize, e->granularity_bits,
                                          cluster_size));
      goto fail;
    }
    dir->nr = i + 1;
    off += entry_size (e->name_size);
  }
  if (off != dir_size) {
    set_corrupt ("bitmap directory at offset %" PRIu64 " is broken: %"
                 PRIu64 " bytes of entries, but its size is %" PRIu64
                 " (more bitmaps than the %" PRIu32 " the header says?)",
                 at, off, dir_size, nr);
    goto fail;
  }
  dir->nr = nr;
  if (check_unique_names (dir, at) == -1) {
    bitmap_dir_free (dir);
    return -1;
  }
  return 0;

 fail:
  dir->nr = i + 1 <= nr ? i + 1 : nr;
  bitmap_dir_free (dir);
  return -1;
}

uint64_t
bitmap_dir_size (const struct bitmap_dir *dir)
{
  uint64_t size = 0;
  uint32_t i;

  for (i = 0; i < dir->nr; i++)
    size += entry_size (dir->entries[i].name_size);
  return size;
}

void
bitmap_dir_serialize (const struct bitmap_dir *dir, uint8_t *buf)
{
  uint64_t off = 0;
  uint32_t i;

  for (i = 0; i < dir->nr; i++) {
    const struct bitmap_entry *e = &dir->entries[i];
    uint8_t *p = buf + off;

    memset (p, 0, entry_size (e->name_size));
    be64_store (p, e->table_offset);
    be32_store (p + 8, e->table_size);
    be32_store (p + 12, e->flags);
    p[16] = e->type;
    p[17] = e->granularity_bits;
    be16_store (p + 18, e->name_size);
    be32_store (p + 20, 0);
    memcpy (p + ENTRY_HEADER, e->name, e->name_size);
    off += entry_size (e->name_size);
  }
}
