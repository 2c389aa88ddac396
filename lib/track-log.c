/* rawtrack - the tracking log: rawtrack's record of its hot extents.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the on-disk format of the log, its writer (track.c calls
 * track_log_install once when tracking starts, then track_log_write at
 * every group commit and at close) and the parser `check` uses
 * (track_log_state).  The format is written down in docs/tracking.md
 * ("The tracking log"); in short, a private header extension inside
 * cluster 0, type 0x52545243 ("RTRC"), payload big-endian:
 *
 *   offset  size  field
 *        0     4  magic 0x72747231 ("rtr1")
 *        4     4  max: capacity of the extent list (entries)
 *        8     4  count: extents in the list (<= max)
 *       12     4  zero
 *       16     4  ext_bits: an extent is 2^ext_bits bytes of the disk
 *       20     4  zero
 *       24   8*max  extent indexes (u64), the first count meaningful
 *
 * together with autoclear bit 63 (QCOW2_AUTOCLEAR_RAWTRACK), set while
 * the log can be trusted.  QEMU keeps unknown extensions but clears
 * unknown autoclear bits on any writable open: a clear bit means another
 * program wrote the image since, and the log is stale.
 *
 * Crash rules: the extension is installed (and the bit set) by one header
 * write, flushed, before any extent is recorded.  The payload has a fixed
 * length and place, so every later write rewrites it in place inside
 * cluster 0 without moving any other byte of the header.  A group commit
 * writes the log - the hot list plus the extents it is about to make hot
 * - before the sync that makes their bits durable (track.c), and a clean
 * close writes count = 0 after the exact bits.  The log only bounds the
 * over-report `check` prints (count x extent size, never more than max x
 * extent size); the bitmaps are correct without it.
 *
 * Locking: every function expects img->lock held (the log shares cluster
 * 0 with the header that metadata updates rewrite), or the image private
 * to the caller.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"
#include "cleanup.h"

#define TRACK_EXT_TYPE      0x52545243u          /* "RTRC" */
#define TRACK_EXT_MAGIC     0x72747231u          /* "rtr1" */
#define TRACK_AUTOCLEAR     QCOW2_AUTOCLEAR_RAWTRACK
#define LOG_HEADER          24                   /* fields before the list */

static void
log_header_put (uint8_t *p, uint32_t max, uint32_t count, uint32_t ext_bits)
{
  memset (p, 0, LOG_HEADER);
  be32_store (p, TRACK_EXT_MAGIC);
  be32_store (p + 4, max);
  be32_store (p + 8, count);
  be32_store (p + 16, ext_bits);
}

int
track_log_install (struct rawtrack_image *img, uint32_t max,
                   uint32_t ext_bits, uint64_t *log_off)
{
  struct qcow2_header *h = &img->h;
  uint32_t len = LOG_HEADER + max * 8;
  uint8_t *data, *c0;
  size_t i, off;

  *log_off = 0;
  if (max > TRACK_LOG_MAX)
    return set_error (EINVAL, "tracking log: %" PRIu32 " entries (at most %d)",
                      max, TRACK_LOG_MAX);
  for (i = 0; i < h->unknown.len; i++)
    if (h->unknown.ptr[i].type == TRACK_EXT_TYPE)
      break;
  /* Already in place from an earlier session (and nobody else wrote the
   * image since): only find it; the first commit rewrites its contents. */
  if (i < h->unknown.len && (h->autoclear & TRACK_AUTOCLEAR) &&
      h->unknown.ptr[i].len == len &&
      be32_load (h->unknown.ptr[i].data) == TRACK_EXT_MAGIC &&
      be32_load (h->unknown.ptr[i].data + 16) == ext_bits)
    goto locate;
  if (i == h->unknown.len) {
    struct qcow2_ext u = { .type = TRACK_EXT_TYPE };

    if (ext_list_append (&h->unknown, u) == -1)
      return -1;
  }
  data = rt_calloc (1, len);
  if (!data)
    return -1;
  log_header_put (data, max, 0, ext_bits);
  free (h->unknown.ptr[i].data);
  h->unknown.ptr[i].data = data;
  h->unknown.ptr[i].len = len;
  h->autoclear |= TRACK_AUTOCLEAR;
  if (qcow2_write_header (img, true) == -1)
    return -1;

 locate:
  /* Find where the serialiser put it. */
  c0 = rt_malloc (img->cluster_size);
  if (!c0)
    return -1;
  if (qcow2_header_serialize (h, c0, img->cluster_size) == -1) {
    free (c0);
    return -1;
  }
  off = h->version == 2 ? QCOW2_V2_HEADER_LEN
                        : QCOW2_V3_HEADER_LEN + h->extra_len;
  while (off + 8 <= img->cluster_size) {
    uint32_t type = be32_load (c0 + off), elen = be32_load (c0 + off + 4);

    if (type == TRACK_EXT_TYPE) {
      *log_off = off + 8;
      break;
    }
    if (type == QCOW2_EXT_END)
      break;
    off += 8 + ROUND_UP ((size_t) elen, 8);
  }
  free (c0);
  if (!*log_off)
    return set_error (EIO, "tracking log extension not found after writing "
                      "the header");
  return 0;
}

int
track_log_write (struct rawtrack_image *img, uint64_t log_off, uint32_t max,
                 uint32_t ext_bits, const uint64_t *a, uint64_t nr_a,
                 const uint64_t *b, uint64_t nr_b)
{
  uint8_t buf[LOG_HEADER + TRACK_LOG_MAX * 8];
  uint32_t count = 0;
  uint64_t j;

  if (!log_off)
    return 0;
  if (max > TRACK_LOG_MAX)
    return set_error (EINVAL, "tracking log: %" PRIu32 " entries (at most %d)",
                      max, TRACK_LOG_MAX);
  memset (buf, 0, sizeof buf);
  for (j = 0; j < nr_a && count < max; j++)
    be64_store (buf + LOG_HEADER + count++ * 8, a[j]);
  for (j = 0; j < nr_b && count < max; j++)
    be64_store (buf + LOG_HEADER + count++ * 8, b[j]);
  log_header_put (buf, max, count, ext_bits);
  return io_write (img->file, buf, LOG_HEADER + (uint64_t) max * 8, log_off,
                   "tracking log");
}

int
track_log_state (const struct rawtrack_image *img, uint32_t *count,
                 uint64_t *extent_bytes)
{
  const struct qcow2_header *h = &img->h;
  size_t i;

  *count = 0;
  *extent_bytes = 0;
  for (i = 0; i < h->unknown.len; i++) {
    const struct qcow2_ext *u = &h->unknown.ptr[i];
    uint32_t max, bits;

    if (u->type != TRACK_EXT_TYPE)
      continue;
    if (u->len < LOG_HEADER || be32_load (u->data) != TRACK_EXT_MAGIC)
      return TRACK_LOG_NONE;             /* not ours, or damaged */
    if (!(h->autoclear & TRACK_AUTOCLEAR))
      return TRACK_LOG_STALE;
    max = be32_load (u->data + 4);
    *count = be32_load (u->data + 8);
    bits = be32_load (u->data + 16);
    if (*count > max || (uint64_t) u->len < LOG_HEADER + (uint64_t) max * 8 ||
        bits < 9 || bits > 40) {
      *count = 0;
      return TRACK_LOG_NONE;
    }
    *extent_bytes = 1ull << bits;
    return *count ? TRACK_LOG_CRASHED : TRACK_LOG_CLEAN;
  }
  return TRACK_LOG_NONE;
}

/* ---- room in cluster 0 ------------------------------------------------ */

/* Small clusters (512 B, 1 KiB) leave little room in cluster 0 once the
 * header, the data file name, the bitmaps extension and the identity
 * record (datafile-id.c) are in: the log is sized to what is left, and
 * below TRACK_LOG_MIN extents the image cannot be tracked at all.  QEMU
 * keeps every extension inside cluster 0 too (it writes no feature table
 * for clusters of 4 KiB or less, nor does qcow2-header.c), so an image
 * that fits here keeps fitting when QEMU rewrites the header. */
int64_t
track_log_room (const struct qcow2_header *h, size_t cs, bool plan,
                size_t *other)
{
  static const uint8_t zero_id[DATAID_LEN];
  struct qcow2_header c = *h;
  CLEANUP_FREE struct qcow2_ext *ext = NULL;
  CLEANUP_FREE uint8_t *buf = NULL;
  size_t i, used = 0, need;
  bool has_id = false;

  if (other)
    *other = cs;
  ext = rt_calloc (h->unknown.len + 1, sizeof *ext);
  buf = rt_malloc (cs);
  if (!ext || !buf)
    return -1;
  c.unknown.len = 0;
  for (i = 0; i < h->unknown.len; i++) {
    if (h->unknown.ptr[i].type == TRACK_EXT_TYPE)
      continue;
    if (h->unknown.ptr[i].type == DATAID_EXT_TYPE)
      has_id = true;
    ext[c.unknown.len++] = h->unknown.ptr[i];
  }
  if (plan && !has_id && (h->incompat & QCOW2_INCOMPAT_DATA_FILE))
    ext[c.unknown.len++] = (struct qcow2_ext) {
      .type = DATAID_EXT_TYPE, .len = DATAID_LEN, .data = (uint8_t *) zero_id
    };
  c.unknown.ptr = ext;
  if (plan && !(c.has_bitmaps_ext && c.nb_bitmaps > 0)) {
    c.has_bitmaps_ext = true;
    c.nb_bitmaps = 1;
  }
  if (qcow2_header_serialize_used (&c, buf, cs, &used) == -1) {
    rt_clear_error ();
    return 0;
  }
  if (other)
    *other = used;
  need = used + 8 + LOG_HEADER;
  if (need >= cs)
    return 0;
  return (int64_t) MIN ((cs - need) / 8, (size_t) TRACK_LOG_MAX);
}

int
track_log_no_room (const struct qcow2_header *h, size_t cs, size_t other,
                   const char *what)
{
  size_t name = (h->incompat & QCOW2_INCOMPAT_DATA_FILE) && h->data_file
                ? strlen (h->data_file) : 0;
  size_t need = other + 8 + LOG_HEADER + 8 * TRACK_LOG_MIN;

  return set_error (ENOSPC, "%s: with %zu-byte clusters the image header "
                    "(cluster 0) has no room for rawtrack's tracking log: "
                    "it needs %zu bytes for the header%s, the bitmaps "
                    "extension, the data file record and a log of %d "
                    "extents, more than %zu; use a cluster size of 4 KiB "
                    "or more%s", what, cs, need,
                    name ? " with the data file name" : "", TRACK_LOG_MIN,
                    cs, name ? " or a shorter data file path" : "");
}
