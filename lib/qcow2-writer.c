/* rawtrack - a qcow2 v3 image written front to back (rawtrack_writer_*).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the sequential writer of include/rawtrack/rawtrack-writer.h, used
 * for backup files, and the cluster compressor (rawtrack_compress_cluster).
 *
 * Layout (host clusters, in the order they are written):
 *
 *   0                 header (written last, by finish)
 *   1 ..              data clusters in guest order; a packed cluster of
 *                     compressed clusters wherever the first one that does
 *                     not fit the current packed cluster arrives; the L2
 *                     table of an L1 slot as soon as the guest offsets move
 *                     past that slot
 *   then              L1 table, refcount blocks, refcount table (finish)
 *
 * Every host cluster has refcount 1 except packed clusters, whose refcount
 * is the number of compressed clusters that start in them (as QEMU counts:
 * a compressed cluster here never crosses a host cluster boundary).  L1
 * and normal L2 entries carry COPIED; compressed ones never do.
 *
 * Crash rules: the writer gives no crash guarantee by itself - the header
 * is written last, so an interrupted image has no valid header (a zeroed
 * cluster 0) and is never opened by QEMU or rawtrack as a qcow2 image.
 * Callers write to a temporary name and rename after finish (which syncs).
 *
 * Locking: none; a writer belongs to one thread at a time.
 */
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <inttypes.h>
#include <errno.h>

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

struct rawtrack_writer {
  struct rawtrack_io *io;
  bool own_io;
  bool failed, finished;
  uint64_t size;                   /* virtual size */
  uint32_t cluster_bits;
  uint64_t cs;
  uint64_t l2_entries;
  uint64_t l1_size;
  char *backing_file, *backing_format;
  int compression_type;

  uint64_t next;                   /* next free host offset (cluster-aligned) */
  uint64_t next_guest;             /* guest offsets below this are done */

  uint64_t *l1;                    /* l1_size entries, host endian */
  uint64_t *l2;                    /* the current L2 table, host endian */
  uint64_t l2_index;               /* L1 slot of l2 */
  bool l2_used;

  uint8_t *packed;                 /* the current packed cluster */
  uint64_t packed_off;             /* its host offset; 0: none */
  uint64_t packed_fill;

  uint16_t *refs;                  /* refcount of each host cluster */
  uint64_t refs_len, refs_cap;
  uint8_t *pad;                    /* one zeroed cluster (partial tails) */
};

static int
fail (struct rawtrack_writer *w)
{
  w->failed = true;
  return -1;
}

static int
set_ref (struct rawtrack_writer *w, uint64_t host, uint16_t v, bool add)
{
  uint64_t c = host >> w->cluster_bits;

  if (c >= w->refs_cap) {
    uint64_t cap = MAX (w->refs_cap * 2, MAX (c + 1, 1024));
    uint16_t *n = rt_realloc (w->refs, cap * sizeof *n);

    if (!n)
      return -1;
    memset (n + w->refs_cap, 0, (cap - w->refs_cap) * sizeof *n);
    w->refs = n;
    w->refs_cap = cap;
  }
  if (add)
    w->refs[c] += v;
  else
    w->refs[c] = v;
  if (c + 1 > w->refs_len)
    w->refs_len = c + 1;
  return 0;
}

/* A new host cluster with refcount 1. */
static int64_t
alloc_cluster (struct rawtrack_writer *w)
{
  uint64_t off = w->next;

  if (set_ref (w, off, 1, false) == -1)
    return -1;
  w->next += w->cs;
  return (int64_t) off;
}

static int
flush_packed (struct rawtrack_writer *w)
{
  if (!w->packed_off)
    return 0;
  if (io_write (w->io, w->packed, w->cs, w->packed_off,
                "compressed clusters") == -1)
    return -1;
  w->packed_off = 0;
  w->packed_fill = 0;
  return 0;
}

/* Write the current L2 table out (if any entry is set) into L1. */
static int
flush_l2 (struct rawtrack_writer *w)
{
  uint8_t *buf;
  int64_t off;
  uint64_t i;
  int r;

  if (!w->l2_used)
    return 0;
  off = alloc_cluster (w);
  if (off < 0)
    return -1;
  buf = rt_malloc (w->cs);
  if (!buf)
    return -1;
  for (i = 0; i < w->l2_entries; i++)
    be64_store (buf + i * 8, w->l2[i]);
  r = io_write (w->io, buf, w->cs, (uint64_t) off, "L2 table");
  free (buf);
  if (r == -1)
    return -1;
  w->l1[w->l2_index] = (uint64_t) off | QCOW_OFLAG_COPIED;
  memset (w->l2, 0, w->cs);
  w->l2_used = false;
  return 0;
}

/* Check a range and move the current L2 table to offset's slot. */
static int
begin (struct rawtrack_writer *w, uint64_t offset, uint64_t count,
       const char *what)
{
  uint64_t end;

  if (w->failed || w->finished)
    return set_error (EINVAL, "the image writer has %s",
                      w->finished ? "finished" : "failed");
  if (!IS_ALIGNED (offset, w->cs) || count == 0 ||
      ADD_OVERFLOW (offset, count, &end) || end > w->size ||
      (!IS_ALIGNED (count, w->cs) && end != w->size))
    return set_error (EINVAL, "%s: bad range %" PRIu64 "+%" PRIu64
                      " (cluster size %" PRIu64 ", disk size %" PRIu64 ")",
                      what, offset, count, w->cs, w->size);
  if (offset < w->next_guest)
    return set_error (EINVAL, "%s: guest offset %" PRIu64 " is below %"
                      PRIu64 ", already written (clusters must come in "
                      "increasing order)", what, offset, w->next_guest);
  return 0;
}

static int
set_l2 (struct rawtrack_writer *w, uint64_t guest, uint64_t entry)
{
  uint64_t gc = guest >> w->cluster_bits;
  uint64_t slot = gc / w->l2_entries;

  if (w->l2_used && slot != w->l2_index && flush_l2 (w) == -1)
    return -1;
  w->l2_index = slot;
  w->l2_used = true;
  w->l2[gc % w->l2_entries] = entry;
  w->next_guest = guest + w->cs;
  return 0;
}

RAWTRACK_API int
rawtrack_writer_data (struct rawtrack_writer *w, uint64_t offset,
                      const void *buf, uint64_t count)
{
  const uint8_t *p = buf;
  uint64_t n = DIV_ROUND_UP (count, w->cs), i, host0;

  rt_clear_error ();
  if (begin (w, offset, count, "data") == -1)
    return -1;
  /* The clusters go to consecutive host clusters, unless an L2 table is
   * due in between: write run by run. */
  for (i = 0; i < n; ) {
    uint64_t gc = (offset >> w->cluster_bits) + i;
    uint64_t run = MIN (n - i, w->l2_entries - gc % w->l2_entries), j;
    uint64_t bytes = MIN (run * w->cs, count - i * w->cs);

    /* Move to this slot first so a due L2 table is placed before the
     * data. */
    if (w->l2_used && gc / w->l2_entries != w->l2_index &&
        flush_l2 (w) == -1)
      return fail (w);
    host0 = w->next;
    for (j = 0; j < run; j++)
      if (alloc_cluster (w) < 0 ||
          set_l2 (w, offset + (i + j) * w->cs,
                  (host0 + j * w->cs) | QCOW_OFLAG_COPIED) == -1)
        return fail (w);
    if (io_write (w->io, p + i * w->cs, bytes, host0, "data cluster") == -1)
      return fail (w);
    if (bytes % w->cs &&
        io_write (w->io, w->pad, w->cs - bytes % w->cs, host0 + bytes,
                  "data cluster") == -1)
      return fail (w);
    i += run;
  }
  return 0;
}

RAWTRACK_API int
rawtrack_writer_compressed (struct rawtrack_writer *w, uint64_t offset,
                            const void *buf, size_t len)
{
  uint64_t need = ROUND_UP ((uint64_t) len, 512), host, sectors, x, desc;

  rt_clear_error ();
  if (begin (w, offset, MIN (w->cs, w->size - MIN (offset, w->size)),
             "compressed cluster") == -1)
    return -1;
  if (len == 0 || len >= w->cs)
    return set_error (EINVAL, "compressed cluster of %zu bytes (cluster "
                      "size %" PRIu64 ")", len, w->cs);
  if (w->l2_used && (offset >> w->cluster_bits) / w->l2_entries !=
      w->l2_index && flush_l2 (w) == -1)
    return fail (w);
  if (!w->packed_off || w->packed_fill + need > w->cs) {
    int64_t off;

    if (flush_packed (w) == -1)
      return fail (w);
    off = alloc_cluster (w);
    if (off < 0)
      return fail (w);
    w->refs[(uint64_t) off >> w->cluster_bits] = 0;
    w->packed_off = (uint64_t) off;
    w->packed_fill = 0;
    memset (w->packed, 0, w->cs);
  }
  host = w->packed_off + w->packed_fill;
  memcpy (w->packed + w->packed_fill, buf, len);
  w->packed_fill += need;
  w->refs[w->packed_off >> w->cluster_bits]++;
  /* Descriptor: host offset in bits 0..x-1, additional 512-byte sectors
   * above (qcow2 spec, "Compressed Clusters Descriptor"). */
  x = 62 - (w->cluster_bits - 8);
  sectors = need / 512 - 1;
  desc = host | (sectors << x) | QCOW_OFLAG_COMPRESSED;
  if (set_l2 (w, offset, desc) == -1)
    return fail (w);
  return 0;
}

RAWTRACK_API int
rawtrack_writer_zero (struct rawtrack_writer *w, uint64_t offset,
                      uint64_t count)
{
  uint64_t i, n = DIV_ROUND_UP (count, w->cs);

  rt_clear_error ();
  if (begin (w, offset, count, "zero") == -1)
    return -1;
  for (i = 0; i < n; i++)
    if (set_l2 (w, offset + i * w->cs, QCOW_OFLAG_ZERO) == -1)
      return fail (w);
  return 0;
}

RAWTRACK_API uint64_t
rawtrack_writer_file_bytes (struct rawtrack_writer *w)
{
  return w->next;
}

/* Write n 64-bit big-endian words from v at off. */
static int
write_words (struct rawtrack_writer *w, const uint64_t *v, uint64_t n,
             uint64_t bytes, uint64_t off, const char *what)
{
  uint8_t *buf = rt_calloc (1, bytes);
  uint64_t i;
  int r;

  if (!buf)
    return -1;
  for (i = 0; i < n; i++)
    be64_store (buf + i * 8, v[i]);
  r = io_write (w->io, buf, bytes, off, what);
  free (buf);
  return r;
}

RAWTRACK_API int
rawtrack_writer_finish (struct rawtrack_writer *w)
{
  const uint64_t cs = w->cs;
  const uint64_t E = cs / 2;       /* 16-bit refcounts per block */
  uint64_t l1c, l1_off, rb, rt, total, rb_off, rt_off, i, *rtable = NULL;
  struct qcow2_header h;
  uint8_t *buf = NULL;
  int r = -1;

  rt_clear_error ();
  if (w->failed || w->finished)
    return set_error (EINVAL, "the image writer has %s",
                      w->finished ? "finished" : "failed");
  w->finished = true;
  if (flush_l2 (w) == -1 || flush_packed (w) == -1)
    goto out;

  /* L1 table. */
  l1c = MAX (1, DIV_ROUND_UP (w->l1_size * 8, cs));
  l1_off = w->next;
  for (i = 0; i < l1c; i++)
    if (alloc_cluster (w) < 0)
      goto out;
  if (write_words (w, w->l1, w->l1_size, l1c * cs, l1_off, "L1 table") == -1)
    goto out;

  /* Refcount blocks and table cover every cluster, themselves included:
   * grow both until they do. */
  rb = 1;
  rt = 1;
  for (;;) {
    total = w->next / cs + rb + rt;
    if (DIV_ROUND_UP (total, E) <= rb && DIV_ROUND_UP (rb * 8, cs) <= rt)
      break;
    rb = DIV_ROUND_UP (total, E);
    rt = MAX (1, DIV_ROUND_UP (rb * 8, cs));
  }
  rb_off = w->next;
  for (i = 0; i < rb + rt; i++)
    if (alloc_cluster (w) < 0)
      goto out;
  rt_off = rb_off + rb * cs;

  buf = rt_calloc (1, cs);
  rtable = rt_calloc (rt * cs / 8, 8);
  if (!buf || !rtable)
    goto out;
  for (i = 0; i < rb; i++) {
    uint64_t c;

    memset (buf, 0, cs);
    for (c = i * E; c < MIN ((i + 1) * E, w->refs_len); c++)
      be16_store (buf + (c - i * E) * 2, w->refs[c]);
    if (io_write (w->io, buf, cs, rb_off + i * cs, "refcount block") == -1)
      goto out;
    rtable[i] = rb_off + i * cs;
  }
  if (write_words (w, rtable, rb, rt * cs, rt_off, "refcount table") == -1)
    goto out;

  /* Data before header: the header makes the image. */
  if (io_flush (w->io, "image") == -1)
    goto out;
  memset (&h, 0, sizeof h);
  h.version = 3;
  h.cluster_bits = w->cluster_bits;
  h.size = w->size;
  h.l1_size = (uint32_t) w->l1_size;
  h.l1_table_offset = l1_off;
  h.refcount_table_offset = rt_off;
  h.refcount_table_clusters = (uint32_t) rt;
  h.refcount_order = 4;
  h.header_length = QCOW2_V3_HEADER_LEN;
  h.compression_type = (uint8_t) w->compression_type;
  if (w->compression_type != 0)
    h.incompat |= QCOW2_INCOMPAT_COMPRESSION;
  h.backing_file = w->backing_file;
  h.backing_format = w->backing_format;
  memset (buf, 0, cs);
  if (qcow2_header_serialize (&h, buf, cs) == -1 ||
      io_write (w->io, buf, cs, 0, "image header") == -1 ||
      io_flush (w->io, "image") == -1)
    goto out;
  r = 0;

 out:
  if (r == -1)
    w->failed = true;
  free (buf);
  free (rtable);
  return r;
}

static struct rawtrack_writer *
writer_new (struct rawtrack_io *io, bool own,
            const struct rawtrack_writer_opts *o)
{
  struct rawtrack_writer *w;
  uint64_t cs = o->cluster_size ? o->cluster_size : 65536, nclusters;

  if (!o || o->struct_size < sizeof *o) {
    set_error (EINVAL, "bad rawtrack_writer_opts");
    goto err_io;
  }
  if (!is_power_of_2 (cs) || cs < 512 || cs > 2 * 1024 * 1024) {
    set_error (EINVAL, "invalid cluster size %" PRIu64, cs);
    goto err_io;
  }
  if (o->size == 0 || o->size % 512) {
    set_error (EINVAL, "invalid disk size %" PRIu64 ": it must be a "
               "non-zero multiple of 512", o->size);
    goto err_io;
  }
  if (o->compression_type != 0 && o->compression_type != 1) {
    set_error (EINVAL, "unknown compression type %d", o->compression_type);
    goto err_io;
  }
  if (o->backing_format && !o->backing_file) {
    set_error (EINVAL, "a backing format without a backing file");
    goto err_io;
  }
  nclusters = DIV_ROUND_UP (o->size, cs);
  w = rt_calloc (1, sizeof *w);
  if (!w)
    goto err_io;
  w->io = io;
  w->own_io = own;
  w->size = o->size;
  w->cs = cs;
  w->cluster_bits = (uint32_t) log2_u64 (cs);
  w->l2_entries = cs / 8;
  w->l1_size = DIV_ROUND_UP (nclusters, w->l2_entries);
  w->compression_type = o->compression_type;
  if (w->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
    set_error (EFBIG, "a %" PRIu64 "-byte disk needs an L1 table larger "
               "than QEMU accepts with %" PRIu64 "-byte clusters", o->size,
               cs);
    goto err;
  }
  w->l1 = rt_calloc (w->l1_size, 8);
  w->l2 = rt_calloc (1, cs);
  w->packed = rt_calloc (1, cs);
  w->pad = rt_calloc (1, cs);
  if (!w->l1 || !w->l2 || !w->packed || !w->pad)
    goto err;
  if (o->backing_file &&
      (!(w->backing_file = rt_strdup (o->backing_file)) ||
       (o->backing_format &&
        !(w->backing_format = rt_strdup (o->backing_format)))))
    goto err;
  /* Cluster 0: the header, written by finish. */
  if (alloc_cluster (w) < 0)
    goto err;
  return w;

 err:
  rawtrack_writer_free (w);
  return NULL;
 err_io:
  if (own)
    rawtrack_io_close (io);
  return NULL;
}

RAWTRACK_API struct rawtrack_writer *
rawtrack_writer_new_io (struct rawtrack_io *io,
                        const struct rawtrack_writer_opts *opts)
{
  rt_clear_error ();
  if (!io || !opts)
    return set_error (EINVAL, "no backend or options"), NULL;
  return writer_new (io, false, opts);
}

RAWTRACK_API struct rawtrack_writer *
rawtrack_writer_new (const char *path, const struct rawtrack_writer_opts *opts)
{
  struct rawtrack_io *io;

  rt_clear_error ();
  if (!path || !opts)
    return set_error (EINVAL, "no path or options"), NULL;
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                              RAWTRACK_IO_EXCL);
  if (!io)
    return NULL;
  return writer_new (io, true, opts);
}

RAWTRACK_API void
rawtrack_writer_free (struct rawtrack_writer *w)
{
  if (!w)
    return;
  if (w->own_io)
    rawtrack_io_close (w->io);
  free (w->l1);
  free (w->l2);
  free (w->packed);
  free (w->pad);
  free (w->refs);
  free (w->backing_file);
  free (w->backing_format);
  free (w);
}

/* ---- compression -------------------------------------------------------- */

RAWTRACK_API int64_t
rawtrack_compress_cluster (int type, const void *src, size_t len,
                           size_t cluster_size, void *dst)
{
  const void *in = src;
  uint8_t *padded = NULL;
  int64_t r = -1;

  rt_clear_error ();
  if (len == 0 || len > cluster_size)
    return set_error (EINVAL, "bad cluster length %zu", len);
  if (len < cluster_size) {
    padded = rt_calloc (1, cluster_size);
    if (!padded)
      return -1;
    memcpy (padded, src, len);
    in = padded;
  }
  if (type == RAWTRACK_COMPRESS_ZSTD) {
    size_t n = ZSTD_compress (dst, cluster_size, in, cluster_size, 1);

    if (ZSTD_isError (n))
      r = ZSTD_getErrorCode (n) == ZSTD_error_dstSize_tooSmall ? 0 :
        set_error (EIO, "zstd: %s", ZSTD_getErrorName (n));
    else
      r = n < cluster_size ? (int64_t) n : 0;
  }
  else if (type == RAWTRACK_COMPRESS_ZLIB) {
    z_stream s;
    int zr;

    memset (&s, 0, sizeof s);
    if (deflateInit2 (&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                      Z_DEFAULT_STRATEGY) != Z_OK) {
      set_error (ENOMEM, "deflateInit2 failed");
      goto out;
    }
    s.next_in = (Bytef *) in;
    s.avail_in = (uInt) cluster_size;
    s.next_out = dst;
    s.avail_out = (uInt) cluster_size - 1;
    zr = deflate (&s, Z_FINISH);
    r = zr == Z_STREAM_END ? (int64_t) s.total_out : 0;
    deflateEnd (&s);
  }
  else
    r = set_error (EINVAL, "unknown compression type %d", type);
 out:
  free (padded);
  return r;
}
