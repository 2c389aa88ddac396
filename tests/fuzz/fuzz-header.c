/* rawtrack - fuzz target: qcow2_header_parse and its round trip.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The input is cluster 0 (or the start of it: parse is given exactly the
 * input's length, as image.c gives it min(cluster size, file size)).
 *
 * When the parse succeeds:
 *   1. qcow2_feature_name is asked about every bit of every type, which
 *      walks the image's own feature name table;
 *   2. the header is serialised into a cluster-sized buffer.  That may
 *      fail with ENOSPC (everything must fit in cluster 0, and QEMU's
 *      feature table is added for v3 with clusters over 4 KiB); otherwise
 *      the buffer is parsed again and every field that serialising keeps
 *      must compare equal;
 *   3. serialising the re-parsed header must give the same bytes
 *      (serialise o parse is idempotent after one round).
 *
 * What serialising legitimately changes, and so is not compared: the
 * feature name table (replaced by QEMU's), a header_length below 112
 * (written as 112; the fields it cut off read as zero either way), backing_file_offset (the name moves
 * behind the end marker), the data file name without incompatible bit 2
 * and the bitmaps extension with zero bitmaps (both dropped), and the
 * reserved word of the bitmaps extension (written as 0).
 */
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>

#include "internal.h"
#include "fuzz.h"

static bool
str_eq (const char *a, const char *b)
{
  if (!a || !b)
    return a == b;
  return strcmp (a, b) == 0;
}

static void
compare (const struct qcow2_header *a, const struct qcow2_header *b)
{
  size_t i;

  FUZZ_CHECK (a->version == b->version);
  FUZZ_CHECK (a->cluster_bits == b->cluster_bits);
  FUZZ_CHECK (a->size == b->size);
  FUZZ_CHECK (a->crypt_method == b->crypt_method);
  FUZZ_CHECK (a->l1_size == b->l1_size);
  FUZZ_CHECK (a->l1_table_offset == b->l1_table_offset);
  FUZZ_CHECK (a->refcount_table_offset == b->refcount_table_offset);
  FUZZ_CHECK (a->refcount_table_clusters == b->refcount_table_clusters);
  FUZZ_CHECK (a->nb_snapshots == b->nb_snapshots);
  FUZZ_CHECK (a->snapshots_offset == b->snapshots_offset);
  FUZZ_CHECK (a->incompat == b->incompat);
  FUZZ_CHECK (a->compat == b->compat);
  FUZZ_CHECK (a->autoclear == b->autoclear);
  FUZZ_CHECK (a->refcount_order == b->refcount_order);
  FUZZ_CHECK (a->compression_type == b->compression_type);
  if (a->version == 2 || a->header_length >= QCOW2_V3_HEADER_LEN)
    FUZZ_CHECK (a->header_length == b->header_length);
  FUZZ_CHECK (a->extra_len == b->extra_len);
  if (a->extra_len)
    FUZZ_CHECK (memcmp (a->extra_fields, b->extra_fields, a->extra_len) == 0);

  FUZZ_CHECK (str_eq (a->backing_file, b->backing_file));
  if (a->backing_file)
    FUZZ_CHECK (a->backing_file_size == b->backing_file_size);
  FUZZ_CHECK (str_eq (a->backing_format, b->backing_format));
  if (a->incompat & QCOW2_INCOMPAT_DATA_FILE)
    FUZZ_CHECK (str_eq (a->data_file, b->data_file));
  else
    FUZZ_CHECK (b->data_file == NULL);

  if (a->has_bitmaps_ext && a->nb_bitmaps > 0) {
    FUZZ_CHECK (b->has_bitmaps_ext);
    FUZZ_CHECK (a->nb_bitmaps == b->nb_bitmaps);
    FUZZ_CHECK (a->bitmap_dir_size == b->bitmap_dir_size);
    FUZZ_CHECK (a->bitmap_dir_offset == b->bitmap_dir_offset);
  }
  else
    FUZZ_CHECK (!b->has_bitmaps_ext);

  FUZZ_CHECK (a->has_fde_ext == b->has_fde_ext);
  if (a->has_fde_ext) {
    FUZZ_CHECK (a->fde_offset == b->fde_offset);
    FUZZ_CHECK (a->fde_length == b->fde_length);
  }

  FUZZ_CHECK (a->unknown.len == b->unknown.len);
  for (i = 0; i < a->unknown.len; i++) {
    FUZZ_CHECK (a->unknown.ptr[i].type == b->unknown.ptr[i].type);
    FUZZ_CHECK (a->unknown.ptr[i].len == b->unknown.ptr[i].len);
    FUZZ_CHECK (a->unknown.ptr[i].len == 0 ||
                memcmp (a->unknown.ptr[i].data, b->unknown.ptr[i].data,
                        a->unknown.ptr[i].len) == 0);
  }
}

static void
feature_names (const struct qcow2_header *h)
{
  int type, bit;

  for (type = 0; type < 3; type++)
    for (bit = 0; bit < 64; bit++) {
      const char *name = qcow2_feature_name (h, type, bit);

      if (name)
        FUZZ_CHECK (strlen (name) <= 46);
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct qcow2_header h, h2;
  uint8_t *c1 = NULL, *c2 = NULL;
  size_t cs;

  if (qcow2_header_parse (data, size, &h) == -1) {
    FUZZ_CHECK (rawtrack_get_error () != NULL);
    /* A failed parse leaves nothing allocated: the header is zeroed. */
    FUZZ_CHECK (h.unknown.ptr == NULL && h.extra_fields == NULL &&
                h.backing_file == NULL && h.features == NULL);
    return 0;
  }
  FUZZ_CHECK (h.version == 2 || h.version == 3);
  FUZZ_CHECK (h.cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
              h.cluster_bits <= QCOW2_MAX_CLUSTER_BITS);
  FUZZ_CHECK (h.refcount_order <= 6);
  FUZZ_CHECK (h.header_length <= size);
  feature_names (&h);

  cs = (size_t) 1 << h.cluster_bits;
  c1 = calloc (1, cs);
  c2 = calloc (1, cs);
  FUZZ_CHECK (c1 && c2);
  if (qcow2_header_serialize (&h, c1, cs) == -1) {
    FUZZ_CHECK (rawtrack_get_errno () == ENOSPC);
    goto out;
  }
  if (qcow2_header_parse (c1, cs, &h2) == -1) {
    fprintf (stderr, "re-parse failed: %s\n", rawtrack_get_error ());
    FUZZ_CHECK (!"a serialised header parses");
  }
  compare (&h, &h2);
  FUZZ_CHECK (qcow2_header_serialize (&h2, c2, cs) == 0);
  FUZZ_CHECK (memcmp (c1, c2, cs) == 0);
  qcow2_header_free (&h2);

 out:
  qcow2_header_free (&h);
  free (c1);
  free (c2);
  return 0;
}
