/* rawtrack - qcow2 header and header extensions: parse and serialise.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the conversion between cluster 0 of a qcow2 file and struct
 * qcow2_header (pure functions over buffers: no I/O, no locking), and the
 * header write-back, qcow2_write_header: img->h serialised and written
 * over cluster 0 (caller holds img->lock or owns the image).  Crash
 * rules for what a header switch may change in one write are the
 * callers' (bitmap-update.c, track-log.c, qcow2-alloc.c).
 *
 * Parsing applies every check QEMU applies when it opens an image, so that
 * an image we accept QEMU accepts too, and every failure names the field
 * and its byte offset.  Parsing never allocates more than the extension
 * lengths it has already bounded by the cluster size.
 *
 * Serialising follows QEMU's own rewrite (qcow2_update_header):
 *   1. fixed header (72 bytes for v2; 112 + kept extra fields for v3),
 *   2. backing file format, 3. data file name (only with incompatible bit
 *   2), 4. full disk encryption pointer, 5. feature name table (v3 and
 *   cluster size > 4 KiB; always QEMU's table, never the one read),
 *   6. bitmaps (when nb_bitmaps > 0), 7. unknown extensions byte for byte
 *   - in the order they were read (QEMU reverses them on every rewrite; we
 *   keep them stable, which QEMU accepts either way), 8. the end marker,
 *   9. the backing file name.  The rest of cluster 0 is zero, and is
 *   not rewritten past the first 64 KiB (header_write_len).
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"
#include "cleanup.h"

/* QEMU's feature name table, in QEMU's order. */
static const struct {
  uint8_t type, bit;
  const char *name;
} feature_table[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};
#define FEATURE_ENTRY_SIZE 48

const char *
qcow2_feature_name (const struct qcow2_header *h, int type, int bit)
{
  static __thread char buf[FEATURE_ENTRY_SIZE - 2 + 1];
  size_t i;

  for (i = 0; h && h->features && i + FEATURE_ENTRY_SIZE <= h->features_len;
       i += FEATURE_ENTRY_SIZE) {
    if (h->features[i] == type && h->features[i + 1] == bit) {
      memcpy (buf, &h->features[i + 2], FEATURE_ENTRY_SIZE - 2);
      buf[FEATURE_ENTRY_SIZE - 2] = '\0';
      return buf;
    }
  }
  for (i = 0; i < sizeof feature_table / sizeof feature_table[0]; i++)
    if (feature_table[i].type == type && feature_table[i].bit == bit)
      return feature_table[i].name;
  return NULL;
}

static int
unsupported_features (const struct qcow2_header *h, uint64_t bits)
{
  char msg[512] = "";
  size_t used = 0;
  int bit;

  for (bit = 0; bit < 64; bit++) {
    const char *name;

    if (!(bits & (1ull << bit)))
      continue;
    if (used >= sizeof msg)     /* truncated: msg + used would be past it */
      break;
    name = qcow2_feature_name (h, 0, bit);
    if (name)
      used += snprintf (msg + used, sizeof msg - used,
                        "%s%s", used ? ", " : "", name);
    else
      used += snprintf (msg + used, sizeof msg - used,
                        "%sunknown incompatible feature bit %d",
                        used ? ", " : "", bit);
  }
  return set_error (ENOTSUP, "unsupported qcow2 feature(s): %s "
                    "(incompatible_features at offset 72 = 0x%" PRIx64 ")",
                    msg, h->incompat);
}

void
qcow2_header_free (struct qcow2_header *h)
{
  size_t i;

  free (h->extra_fields);
  free (h->backing_file);
  free (h->backing_format);
  free (h->data_file);
  free (h->features);
  for (i = 0; i < h->unknown.len; i++)
    free (h->unknown.ptr[i].data);
  ext_list_reset (&h->unknown);
  memset (h, 0, sizeof *h);
}

static int
dup_string (const uint8_t *p, uint32_t len, char **out, const char *what,
            uint64_t at)
{
  if (memchr (p, '\0', len))
    return set_corrupt ("%s at offset %" PRIu64 " contains a NUL byte",
                        what, at);
  *out = rt_strndup ((const char *) p, len);
  return *out ? 0 : -1;
}

static int
parse_extensions (const uint8_t *buf, uint64_t start, uint64_t end,
                  struct qcow2_header *h)
{
  uint64_t off = start;
  uint32_t seen_known = 0;   /* bit per known type, to refuse duplicates */

  while (off + 8 <= end) {
    uint32_t type = be32_load (buf + off);
    uint32_t len = be32_load (buf + off + 4);
    const uint8_t *data = buf + off + 8;
    uint64_t at = off;
    uint32_t known_bit = 0;

    if (type == QCOW2_EXT_END)
      return 0;
    if (len > end - (off + 8))
      return set_corrupt ("header extension 0x%08x at offset %" PRIu64
                          " is too large (%" PRIu32 " bytes, %" PRIu64
                          " available)", type, at, len, end - (off + 8));

    switch (type) {
    case QCOW2_EXT_BACKING_FMT: known_bit = 1; break;
    case QCOW2_EXT_FEATURES:    known_bit = 2; break;
    case QCOW2_EXT_BITMAPS:     known_bit = 4; break;
    case QCOW2_EXT_FDE:         known_bit = 8; break;
    case QCOW2_EXT_DATA_FILE:   known_bit = 16; break;
    }
    if (known_bit && (seen_known & known_bit))
      return set_corrupt ("duplicate header extension 0x%08x at offset %"
                          PRIu64, type, at);
    seen_known |= known_bit;

    switch (type) {
    case QCOW2_EXT_BACKING_FMT:
      if (len > 15)
        return set_corrupt ("backing format extension at offset %" PRIu64
                            " is %" PRIu32 " bytes (QEMU allows at most 15)",
                            at, len);
      if (dup_string (data, len, &h->backing_format, "backing format", at) == -1)
        return -1;
      break;
    case QCOW2_EXT_FEATURES:
      h->has_features_ext = true;
      h->features = rt_malloc (len);
      if (!h->features)
        return -1;
      memcpy (h->features, data, len);
      h->features_len = len;
      break;
    case QCOW2_EXT_BITMAPS:
      if (len != 24)
        return set_corrupt ("bitmaps extension at offset %" PRIu64
                            " has length %" PRIu32 " (must be 24)", at, len);
      h->has_bitmaps_ext = true;
      h->nb_bitmaps = be32_load (data);
      if (be32_load (data + 4) != 0 &&
          (h->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return set_corrupt ("bitmaps extension at offset %" PRIu64
                            ": reserved field is not zero", at);
      h->bitmap_dir_size = be64_load (data + 8);
      h->bitmap_dir_offset = be64_load (data + 16);
      break;
    case QCOW2_EXT_FDE:
      if (len != 16)
        return set_corrupt ("encryption header extension at offset %" PRIu64
                            " has length %" PRIu32 " (must be 16)", at, len);
      h->has_fde_ext = true;
      h->fde_offset = be64_load (data);
      h->fde_length = be64_load (data + 8);
      break;
    case QCOW2_EXT_DATA_FILE:
      if (dup_string (data, len, &h->data_file, "data file name", at) == -1)
        return -1;
      break;
    default: {
      struct qcow2_ext *u;

      if (h->unknown.len >= 4096)
        return set_corrupt ("too many header extensions (at offset %" PRIu64
                            ")", at);
      if (ext_list_reserve (&h->unknown, 1) == -1)
        return -1;
      u = &h->unknown.ptr[h->unknown.len];
      u->type = type;
      u->len = len;
      u->data = rt_malloc (len);
      if (!u->data)
        return -1;
      memcpy (u->data, data, len);
      h->unknown.len++;
    }
    }
    off += 8 + ROUND_UP ((uint64_t) len, 8);
  }
  return 0;
}

int
qcow2_header_parse (const uint8_t *buf, size_t len, struct qcow2_header *h)
{
  uint64_t cs, ext_end;

  memset (h, 0, sizeof *h);
  if (len < QCOW2_V2_HEADER_LEN)
    return set_error (EINVAL, "not a qcow2 image: only %zu bytes, a header "
                      "needs %d", len, QCOW2_V2_HEADER_LEN);
  if (be32_load (buf) != QCOW2_MAGIC)
    return set_error (EINVAL, "not a qcow2 image: bad magic 0x%08x at offset 0",
                      be32_load (buf));

  h->version = be32_load (buf + 4);
  h->backing_file_offset = be64_load (buf + 8);
  h->backing_file_size = be32_load (buf + 16);
  h->cluster_bits = be32_load (buf + 20);
  h->size = be64_load (buf + 24);
  h->crypt_method = be32_load (buf + 32);
  h->l1_size = be32_load (buf + 36);
  h->l1_table_offset = be64_load (buf + 40);
  h->refcount_table_offset = be64_load (buf + 48);
  h->refcount_table_clusters = be32_load (buf + 56);
  h->nb_snapshots = be32_load (buf + 60);
  h->snapshots_offset = be64_load (buf + 64);

  if (h->version != 2 && h->version != 3)
    return set_error (ENOTSUP, "unsupported qcow2 version %" PRIu32
                      " (offset 4); only 2 and 3 exist", h->version);
  if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return set_corrupt ("cluster_bits %" PRIu32 " at offset 20 is out of "
                        "range (9..21: 512 B to 2 MiB)", h->cluster_bits);
  cs = 1ull << h->cluster_bits;

  if (h->version == 2) {
    h->refcount_order = 4;
    h->header_length = QCOW2_V2_HEADER_LEN;
  }
  else {
    if (len < 104)
      return set_corrupt ("version 3 header truncated: %zu bytes (needs 104)",
                          len);
    h->incompat = be64_load (buf + 72);
    h->compat = be64_load (buf + 80);
    h->autoclear = be64_load (buf + 88);
    h->refcount_order = be32_load (buf + 96);
    h->header_length = be32_load (buf + 100);
    if (h->header_length < 104)
      return set_corrupt ("header_length %" PRIu32 " at offset 100 is too "
                          "small (at least 104)", h->header_length);
    if (h->header_length > cs || h->header_length > len)
      return set_corrupt ("header_length %" PRIu32 " at offset 100 is larger "
                          "than the cluster size", h->header_length);
    if (h->header_length > 104) {
      h->compression_type = buf[104];
      if (h->header_length > QCOW2_V3_HEADER_LEN) {
        h->extra_len = h->header_length - QCOW2_V3_HEADER_LEN;
        h->extra_fields = rt_malloc (h->extra_len);
        if (!h->extra_fields)
          return -1;
        memcpy (h->extra_fields, buf + QCOW2_V3_HEADER_LEN, h->extra_len);
      }
    }
  }

  /* Extensions come first so that an unknown-feature message can use the
   * image's own feature name table. */
  ext_end = h->backing_file_offset ? h->backing_file_offset : cs;
  if (ext_end > len)
    ext_end = len;
  if (h->backing_file_offset > cs) {
    set_corrupt ("backing_file_offset %" PRIu64 " at offset 8 is "
                 "outside cluster 0", h->backing_file_offset);
    goto fail;                  /* extra_fields may be allocated */
  }
  if (parse_extensions (buf, h->header_length, ext_end, h) == -1)
    goto fail;

  if (h->incompat & ~QCOW2_INCOMPAT_KNOWN) {
    unsupported_features (h, h->incompat & ~QCOW2_INCOMPAT_KNOWN);
    goto fail;
  }
  if (h->refcount_order > 6) {
    set_corrupt ("refcount_order %" PRIu32 " at offset 96 is out of range "
                 "(0..6)", h->refcount_order);
    goto fail;
  }
  if (h->compression_type > 1) {
    set_error (ENOTSUP, "unknown compression type %u at offset 104",
               h->compression_type);
    goto fail;
  }
  if ((h->compression_type != 0) !=
      !!(h->incompat & QCOW2_INCOMPAT_COMPRESSION)) {
    set_corrupt ("compression type %u at offset 104 disagrees with the "
                 "compression type feature bit", h->compression_type);
    goto fail;
  }
  if ((h->incompat & QCOW2_INCOMPAT_EXTL2) && h->cluster_bits < 14) {
    set_corrupt ("extended L2 entries need a cluster size of at least 16 KiB "
                 "(cluster_bits is %" PRIu32 ")", h->cluster_bits);
    goto fail;
  }
  if ((uint64_t) h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
    set_corrupt ("L1 table size %" PRIu32 " (offset 36) is too large "
                 "(at most %u entries)", h->l1_size, QCOW2_MAX_L1_BYTES / 8);
    goto fail;
  }
  if (!IS_ALIGNED (h->l1_table_offset, cs)) {
    set_corrupt ("L1 table offset 0x%" PRIx64 " (offset 40) is not "
                 "cluster-aligned", h->l1_table_offset);
    goto fail;
  }
  if (!IS_ALIGNED (h->refcount_table_offset, cs)) {
    set_corrupt ("refcount table offset 0x%" PRIx64 " (offset 48) is not "
                 "cluster-aligned", h->refcount_table_offset);
    goto fail;
  }
  if ((uint64_t) h->refcount_table_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
    set_corrupt ("refcount table of %" PRIu32 " clusters (offset 56) is too "
                 "large (at most 8 MiB)", h->refcount_table_clusters);
    goto fail;
  }
  if (h->nb_snapshots > 65536) {
    set_corrupt ("%" PRIu32 " snapshots (offset 60): at most 65536",
                 h->nb_snapshots);
    goto fail;
  }
  if (h->nb_snapshots && !IS_ALIGNED (h->snapshots_offset, cs)) {
    set_corrupt ("snapshot table offset 0x%" PRIx64 " (offset 64) is not "
                 "cluster-aligned", h->snapshots_offset);
    goto fail;
  }
  if (h->backing_file_offset) {
    if (h->backing_file_size > 1023 ||
        h->backing_file_size > cs - h->backing_file_offset ||
        h->backing_file_offset + h->backing_file_size > len) {
      set_corrupt ("backing file name of %" PRIu32 " bytes at offset %" PRIu64
                   " does not fit in cluster 0 (or exceeds 1023 bytes)",
                   h->backing_file_size, h->backing_file_offset);
      goto fail;
    }
    if (dup_string (buf + h->backing_file_offset, h->backing_file_size,
                    &h->backing_file, "backing file name",
                    h->backing_file_offset) == -1)
      goto fail;
  }
  return 0;

 fail:
  qcow2_header_free (h);
  return -1;
}

static int
put_ext (uint8_t *buf, size_t cs, size_t *off, uint32_t type,
         const void *data, uint32_t len)
{
  size_t need = 8 + ROUND_UP ((size_t) len, 8);

  if (*off + need > cs)
    return set_error (ENOSPC, "header extensions do not fit in cluster 0");
  be32_store (buf + *off, type);
  be32_store (buf + *off + 4, len);
  if (len)
    memcpy (buf + *off + 8, data, len);
  *off += need;
  return 0;
}

int
qcow2_header_serialize (const struct qcow2_header *h, uint8_t *buf,
                        size_t cs)
{
  return qcow2_header_serialize_used (h, buf, cs, NULL);
}

int
qcow2_header_serialize_used (const struct qcow2_header *h, uint8_t *buf,
                             size_t cs, size_t *used)
{
  size_t off, i;
  uint32_t header_length;

  memset (buf, 0, cs);
  be32_store (buf, QCOW2_MAGIC);
  be32_store (buf + 4, h->version);
  be32_store (buf + 16, h->backing_file ? (uint32_t) strlen (h->backing_file) : 0);
  be32_store (buf + 20, h->cluster_bits);
  be64_store (buf + 24, h->size);
  be32_store (buf + 32, h->crypt_method);
  be32_store (buf + 36, h->l1_size);
  be64_store (buf + 40, h->l1_table_offset);
  be64_store (buf + 48, h->refcount_table_offset);
  be32_store (buf + 56, h->refcount_table_clusters);
  be32_store (buf + 60, h->nb_snapshots);
  be64_store (buf + 64, h->snapshots_offset);

  if (h->version == 2)
    header_length = QCOW2_V2_HEADER_LEN;
  else {
    header_length = QCOW2_V3_HEADER_LEN + h->extra_len;
    if (header_length > cs)
      return set_error (ENOSPC, "header does not fit in cluster 0");
    be64_store (buf + 72, h->incompat);
    be64_store (buf + 80, h->compat);
    be64_store (buf + 88, h->autoclear);
    be32_store (buf + 96, h->refcount_order);
    be32_store (buf + 100, header_length);
    buf[104] = h->compression_type;
    if (h->extra_len)
      memcpy (buf + QCOW2_V3_HEADER_LEN, h->extra_fields, h->extra_len);
  }
  off = header_length;

  if (h->backing_format &&
      put_ext (buf, cs, &off, QCOW2_EXT_BACKING_FMT, h->backing_format,
               strlen (h->backing_format)) == -1)
    return -1;
  if ((h->incompat & QCOW2_INCOMPAT_DATA_FILE) && h->data_file &&
      put_ext (buf, cs, &off, QCOW2_EXT_DATA_FILE, h->data_file,
               strlen (h->data_file)) == -1)
    return -1;
  if (h->has_fde_ext) {
    uint8_t fde[16];

    be64_store (fde, h->fde_offset);
    be64_store (fde + 8, h->fde_length);
    if (put_ext (buf, cs, &off, QCOW2_EXT_FDE, fde, 16) == -1)
      return -1;
  }
  if (h->version >= 3 && cs > 4096) {
    uint8_t table[sizeof feature_table / sizeof feature_table[0]]
                 [FEATURE_ENTRY_SIZE];

    memset (table, 0, sizeof table);
    for (i = 0; i < sizeof feature_table / sizeof feature_table[0]; i++) {
      table[i][0] = feature_table[i].type;
      table[i][1] = feature_table[i].bit;
      memcpy (&table[i][2], feature_table[i].name,
              strlen (feature_table[i].name));
    }
    if (put_ext (buf, cs, &off, QCOW2_EXT_FEATURES, table,
                 sizeof table) == -1)
      return -1;
  }
  if (h->has_bitmaps_ext && h->nb_bitmaps > 0) {
    uint8_t bm[24];

    be32_store (bm, h->nb_bitmaps);
    be32_store (bm + 4, 0);
    be64_store (bm + 8, h->bitmap_dir_size);
    be64_store (bm + 16, h->bitmap_dir_offset);
    if (put_ext (buf, cs, &off, QCOW2_EXT_BITMAPS, bm, 24) == -1)
      return -1;
  }
  for (i = 0; i < h->unknown.len; i++)
    if (put_ext (buf, cs, &off, h->unknown.ptr[i].type, h->unknown.ptr[i].data,
                 h->unknown.ptr[i].len) == -1)
      return -1;
  if (put_ext (buf, cs, &off, QCOW2_EXT_END, NULL, 0) == -1)
    return -1;

  if (h->backing_file) {
    size_t blen = strlen (h->backing_file);

    if (off + blen > cs)
      return set_error (ENOSPC, "backing file name does not fit in cluster 0");
    memcpy (buf + off, h->backing_file, blen);
    be64_store (buf + 8, off);
    off += blen;
  }
  if (used)
    *used = off;
  return 0;
}

/* How much of cluster 0 a header write covers: the serialised header,
 * rounded up to 4 KiB blocks, and never less than the first 64 KiB (what
 * any header rawtrack or QEMU writes with the default cluster size fills,
 * so a shorter header wipes what a longer one left).  The rest of a big
 * cluster (2 MiB for a 15 TiB disk) is zeros already: rewriting it at
 * every header write would cost 2 MiB and its writeback each time. */
static size_t
header_write_len (const uint8_t *buf, size_t cs)
{
  size_t end = cs;

  while (end > 0 && buf[end - 1] == 0)
    end--;
  return MIN (cs, MAX ((size_t) 65536, ROUND_UP (end, (size_t) 4096)));
}

int
qcow2_write_header (struct rawtrack_image *img, bool flush)
{
  CLEANUP_FREE uint8_t *buf = rt_malloc (img->cluster_size);

  if (!buf ||
      qcow2_header_serialize (&img->h, buf, img->cluster_size) == -1 ||
      io_write (img->file, buf, header_write_len (buf, img->cluster_size), 0,
                "image header") == -1 ||
      (flush && io_flush (img->file, "image file") == -1))
    return -1;
  return 0;
}
