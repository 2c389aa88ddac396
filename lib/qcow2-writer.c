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
 * Copy-on-write (rawtrack_writer_pwrite): at most one guest cluster is
 * pending at a time, in w->cow, with cow_fill bytes from its start
 * settled (written by the caller, or gaps already copied from the
 * backing chain).  It is completed from the backing chain and stored as
 * a normal data cluster when a call reaches a later cluster, or at
 * finish; so writes may be in any granularity, as long as they come in
 * increasing guest order.  Backing reads go through opts.backing_read, or
 * the backing file opened here read-only (rawtrack_image_open for qcow2,
 * the plain file for raw; past the backing file's end: zeros, as QEMU
 * reads a shorter backing file).
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
#include <stddef.h>

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

/* Refcounts indexed by host cluster. */
DEFINE_VECTOR_TYPE (ref_list, uint16_t, rt_realloc)

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

  struct ref_list refs;            /* refcount of each host cluster */
  uint8_t *pad;                    /* one zeroed cluster (partial tails) */

  /* Copy-on-write of a partially written cluster (see above). */
  uint8_t *cow;                    /* its guest bytes; NULL until needed */
  uint64_t cow_off;                /* its guest offset */
  uint64_t cow_fill;               /* bytes settled from its start */
  bool cow_pending;
  int (*backing_read) (void *, void *, uint64_t, uint64_t);
  void *backing_opaque;
  char *dir;                       /* the image's directory (new by path) */
  struct rawtrack_image *bimg;     /* backing opened here (qcow2) */
  struct rawtrack_io *bio;         /* backing opened here (raw) */
  uint64_t bsize;                  /* its guest size */
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

  if (c >= w->refs.len) {
    if (ref_list_reserve (&w->refs, c + 1 - w->refs.len) == -1)
      return -1;
    memset (w->refs.ptr + w->refs.len, 0,
            (c + 1 - w->refs.len) * sizeof *w->refs.ptr);
    w->refs.len = c + 1;
  }
  if (add)
    w->refs.ptr[c] += v;
  else
    w->refs.ptr[c] = v;
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
  CLEANUP_FREE uint8_t *buf = NULL;
  int64_t off;
  uint64_t i;

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
  if (io_write (w->io, buf, w->cs, (uint64_t) off, "L2 table") == -1)
    return -1;
  w->l1[w->l2_index] = (uint64_t) off | QCOW_OFLAG_COPIED;
  memset (w->l2, 0, w->cs);
  w->l2_used = false;
  return 0;
}

static int store_data (struct rawtrack_writer *w, uint64_t offset,
                       const uint8_t *p, uint64_t count);

/* Open the backing file named in the header, read-only, beside the
 * image. */
static int
cow_open (struct rawtrack_writer *w)
{
  CLEANUP_FREE char *path = NULL;

  if (!w->dir && w->backing_file[0] != '/')
    return set_error (ENOTSUP, "copy-on-write from the backing file '%s' "
                      "needs opts.backing_read (an image written on a "
                      "backend has no directory to find it in)",
                      w->backing_file);
  if (w->backing_file[0] == '/')
    path = rt_strdup (w->backing_file);
  else if (asprintf (&path, "%s/%s", w->dir, w->backing_file) < 0)
    path = NULL;
  if (!path)
    return set_error (ENOMEM, "out of memory");
  if (w->backing_format && strcmp (w->backing_format, "raw") == 0) {
    int64_t sz;

    w->bio = rawtrack_io_file_open (path, 0);
    if (!w->bio || (sz = rawtrack_io_get_size (w->bio)) < 0)
      goto fail;
    w->bsize = (uint64_t) sz;
  }
  else {
    w->bimg = rawtrack_image_open (path, 0, NULL);
    if (!w->bimg)
      goto fail;
    w->bsize = rawtrack_image_virtual_size (w->bimg);
  }
  return 0;

 fail:
  return set_error (rawtrack_get_errno () ? rawtrack_get_errno () : EIO,
                    "copy-on-write: cannot open the backing file '%s': %s",
                    path, rawtrack_get_error () ? rawtrack_get_error ()
                    : "failed");
}

/* Guest bytes [offset, offset + count) of the backing chain into buf. */
static int
cow_read (struct rawtrack_writer *w, uint8_t *buf, uint64_t count,
              uint64_t offset)
{
  uint64_t n;

  if (w->backing_read) {
    if (w->backing_read (w->backing_opaque, buf, count, offset) == -1)
      return set_error (EIO, "copy-on-write: reading the backing chain at "
                        "%" PRIu64 "+%" PRIu64 " failed", offset, count);
    return 0;
  }
  if (!w->backing_file) {
    memset (buf, 0, count);
    return 0;
  }
  if (!w->bimg && !w->bio && cow_open (w) == -1)
    return -1;
  n = offset < w->bsize ? MIN (count, w->bsize - offset) : 0;
  if (n && (w->bimg ? rawtrack_image_pread (w->bimg, buf, n, offset)
            : io_read (w->bio, buf, n, offset, "backing file")) == -1)
    return -1;
  memset (buf + n, 0, count - n);
  return 0;
}

/* Complete the pending cluster from the backing chain and store it. */
static int
cow_settle (struct rawtrack_writer *w)
{
  uint64_t len = MIN (w->cs, w->size - w->cow_off);

  if (w->cow_fill < len &&
      cow_read (w, w->cow + w->cow_fill, len - w->cow_fill,
                    w->cow_off + w->cow_fill) == -1)
    return -1;
  w->cow_pending = false;
  return store_data (w, w->cow_off, w->cow, len);
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
  if (w->cow_pending) {
    if (offset < w->cow_off + w->cs)
      return set_error (EINVAL, "%s: the cluster at guest offset %" PRIu64
                        " is already partly written", what, w->cow_off);
    if (cow_settle (w) == -1)
      return fail (w);
  }
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
  rt_clear_error ();
  if (begin (w, offset, count, "data") == -1)
    return -1;
  return store_data (w, offset, buf, count);
}

/* Whole clusters at offset (checked by begin). */
static int
store_data (struct rawtrack_writer *w, uint64_t offset, const uint8_t *p,
            uint64_t count)
{
  uint64_t n = DIV_ROUND_UP (count, w->cs), i, host0;

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
rawtrack_writer_pwrite (struct rawtrack_writer *w, uint64_t offset,
                        const void *buf, uint64_t count)
{
  const uint8_t *p = buf;
  uint64_t end;

  rt_clear_error ();
  if (w->failed || w->finished)
    return set_error (EINVAL, "the image writer has %s",
                      w->finished ? "finished" : "failed");
  if (count == 0 || ADD_OVERFLOW (offset, count, &end) || end > w->size)
    return set_error (EINVAL, "write: bad range %" PRIu64 "+%" PRIu64
                      " (disk size %" PRIu64 ")", offset, count, w->size);
  if (offset < w->next_guest ||
      (w->cow_pending && offset < w->cow_off + w->cow_fill))
    return set_error (EINVAL, "write: guest offset %" PRIu64 " is below %"
                      PRIu64 ", already written (writes must come in "
                      "increasing order)", offset,
                      w->cow_pending ? w->cow_off + w->cow_fill
                      : w->next_guest);
  while (count) {
    uint64_t c0 = ROUND_DOWN (offset, w->cs);
    uint64_t clen = MIN (w->cs, w->size - c0), pos, n;

    if (w->cow_pending && w->cow_off != c0 && cow_settle (w) == -1)
      return fail (w);
    if (!w->cow_pending && offset == c0 && count >= clen) {
      /* Whole clusters: straight out. */
      n = end == w->size ? count : ROUND_DOWN (count, w->cs);
      if (begin (w, offset, n, "write") == -1 ||
          store_data (w, offset, p, n) == -1)
        return fail (w);
    }
    else {
      if (!w->cow_pending) {
        if (!w->cow && !(w->cow = rt_malloc (w->cs)))
          return fail (w);
        if (begin (w, c0, clen, "write") == -1)
          return fail (w);
        w->cow_off = c0;
        w->cow_fill = 0;
        w->cow_pending = true;
      }
      pos = offset - c0;
      if (pos > w->cow_fill &&
          cow_read (w, w->cow + w->cow_fill, pos - w->cow_fill,
                        c0 + w->cow_fill) == -1)
        return fail (w);
      n = MIN (count, clen - pos);
      memcpy (w->cow + pos, p, n);
      w->cow_fill = pos + n;
      if (w->cow_fill == clen && cow_settle (w) == -1)
        return fail (w);
    }
    offset += n;
    p += n;
    count -= n;
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
    w->refs.ptr[(uint64_t) off >> w->cluster_bits] = 0;
    w->packed_off = (uint64_t) off;
    w->packed_fill = 0;
    memset (w->packed, 0, w->cs);
  }
  host = w->packed_off + w->packed_fill;
  memcpy (w->packed + w->packed_fill, buf, len);
  w->packed_fill += need;
  w->refs.ptr[w->packed_off >> w->cluster_bits]++;
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
  CLEANUP_FREE uint8_t *buf = rt_calloc (1, bytes);
  uint64_t i;

  if (!buf)
    return -1;
  for (i = 0; i < n; i++)
    be64_store (buf + i * 8, v[i]);
  return io_write (w->io, buf, bytes, off, what);
}

RAWTRACK_API int
rawtrack_writer_finish (struct rawtrack_writer *w)
{
  const uint64_t cs = w->cs;
  const uint64_t E = cs / 2;       /* 16-bit refcounts per block */
  uint64_t l1c, l1_off, rb, rt, total, rb_off, rt_off, i;
  CLEANUP_FREE uint64_t *rtable = NULL;
  CLEANUP_FREE uint8_t *buf = NULL;
  struct qcow2_header h;

  rt_clear_error ();
  if (w->failed || w->finished)
    return set_error (EINVAL, "the image writer has %s",
                      w->finished ? "finished" : "failed");
  if (w->cow_pending && cow_settle (w) == -1)
    goto out;
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
    for (c = i * E; c < MIN ((i + 1) * E, w->refs.len); c++)
      be16_store (buf + (c - i * E) * 2, w->refs.ptr[c]);
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
  return 0;

 out:
  return fail (w);
}

static struct rawtrack_writer *
writer_new (struct rawtrack_io *io, bool own,
            const struct rawtrack_writer_opts *o)
{
  struct rawtrack_writer *w;
  uint64_t cs = o->cluster_size ? o->cluster_size : 65536, nclusters;

  if (!o || o->struct_size < offsetof (struct rawtrack_writer_opts,
                                       backing_read)) {
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
  if (o->struct_size >= offsetof (struct rawtrack_writer_opts,
                                  backing_opaque) + sizeof (void *)) {
    w->backing_read = o->backing_read;
    w->backing_opaque = o->backing_opaque;
  }
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
  struct rawtrack_writer *w;
  const char *slash;

  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                              RAWTRACK_IO_EXCL);
  if (!io)
    return NULL;
  w = writer_new (io, true, opts);
  if (!w)
    return NULL;
  /* The directory a relative backing name is relative to. */
  slash = strrchr (path, '/');
  w->dir = slash ? rt_strndup (path, (size_t) (slash - path + (slash == path)))
    : rt_strdup (".");
  if (!w->dir) {
    rawtrack_writer_free (w);
    return NULL;
  }
  return w;
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
  free (w->cow);
  free (w->dir);
  if (w->bimg)
    rawtrack_image_close (w->bimg);
  if (w->bio)
    rawtrack_io_close (w->bio);
  ref_list_reset (&w->refs);
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
  CLEANUP_FREE uint8_t *padded = NULL;
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
                      Z_DEFAULT_STRATEGY) != Z_OK)
      return set_error (ENOMEM, "deflateInit2 failed");
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
  return r;
}
