/* rawtrack - guest writes: write, write zeroes, discard, flush, block
 * status.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the write side of the guest I/O path (reads and the raw
 * one-to-one map are guest-read.c's, one layer down) for the three kinds
 * of image:
 *
 *   raw external data   every cluster is mapped one to one; data, zeroes
 *                       and discards go straight to the data file, and the
 *                       metadata never changes (the raw file stays a valid
 *                       raw image of the disk).  Clusters that QEMU left
 *                       unallocated or zero are re-mapped on write.
 *   external data file  a write to an unmapped cluster maps it (host offset
 *                       = guest offset, COPIED, no refcount), writing the
 *                       whole cluster so the rest of it reads as zeros.
 *   standard qcow2      allocation on write in the image file, with copy of
 *                       zero, unallocated and compressed clusters.
 *
 * Every entry point calls track_before_write first: the bitmaps cover a
 * change before any of its data can reach storage (track.c).  Each holds
 * img->guest_gate shared for its whole run (rawtrack_image_write_target:
 * for its own part; the caller's write that follows must not race a
 * bitmap change, which the caller orders), so a bitmap change, which
 * takes it exclusive and restarts the tracker (bitmap-ops.c), never
 * splits a write between two sets of enabled bitmaps.
 *
 * Locking and ordering:
 *  - img->lock serialises metadata: mapping lookups, allocation, L1/L2
 *    updates.  In-place data writes run outside it.
 *  - img->free_lock: an in-place data write holds it shared from the
 *    lookup until its data write returns; anything that frees a data
 *    cluster holds it exclusive, so no write lands in a cluster after it
 *    was freed (and possibly reused for metadata).
 *  - Allocating write (standard image):  refcount 1 (flushed) -> data ->
 *    L2 entry -> (next flush).  A crash leaks at worst.
 *  - New L2 table: allocate, write zeros, flush, then point L1 at it.
 *
 * Refused (ENOTSUP, with a message): images with a backing file, internal
 * snapshots or extended L2 entries, which this path does not write.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"
#include "cleanup.h"

static bool
has_data_file (const struct rawtrack_image *img)
{
  return (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

static bool
data_raw (const struct rawtrack_image *img)
{
  return has_data_file (img) &&
         (img->h.autoclear & QCOW2_AUTOCLEAR_DATA_RAW) != 0;
}

/* Common checks for every modifying call. */
static int
prepare (struct rawtrack_image *img, uint64_t count, uint64_t offset,
         const char *what)
{
  rt_clear_error ();
  if (!img->writable)
    return set_error (EROFS, "%s: the image is open read-only", what);
  if (offset > img->virtual_size || count > img->virtual_size - offset)
    return set_error (EINVAL, "%s of %" PRIu64 " bytes at offset %" PRIu64
                      " is past the end of the disk (%" PRIu64 " bytes)",
                      what, count, offset, img->virtual_size);
  if (img->h.backing_file)
    return set_error (ENOTSUP, "%s: writing to images with a backing file is "
                      "not supported", what);
  if (img->h.nb_snapshots)
    return set_error (ENOTSUP, "%s: writing to images with internal "
                      "snapshots is not supported", what);
  if (img->ext_l2)
    return set_error (ENOTSUP, "%s: writing to images with extended L2 "
                      "entries is not supported", what);
  if (has_data_file (img) && !img->data)
    return set_error (EINVAL, "%s: the data file is not open", what);
  if (!__atomic_load_n (&img->track, __ATOMIC_ACQUIRE)) {
    int r = 0;

    pthread_mutex_lock (&img->track_init_lock);
    if (!img->track)
      r = track_start (img);
    pthread_mutex_unlock (&img->track_init_lock);
    if (r == -1)
      return -1;
  }
  return 0;
}

/* The L2 table for guest offset `guest`, allocating it if the L1 entry is
 * empty.  Returns the table (in the cache) and its file offset. */
static uint64_t *
l2_for_write (struct rawtrack_image *img, uint64_t guest, uint64_t *l2_off)
{
  const uint64_t cs = img->cluster_size;
  uint64_t l1_index = guest / ((uint64_t) img->l2_entries * cs);
  uint64_t *l2;
  bool absent;
  int64_t off;
  uint8_t *zero, e[8];

  l2 = qcow2_l2_get (img, l1_index, &absent);
  if (l2) {
    if (!(img->l1[l1_index] & QCOW_OFLAG_COPIED)) {
      rt_set_error (ENOTSUP, "L2 table %" PRIu64 " is shared (L1 entry "
                    "without COPIED); refusing to write", l1_index);
      return NULL;
    }
    *l2_off = img->l1[l1_index] & L1E_OFFSET_MASK;
    return l2;
  }
  if (!absent)
    return NULL;
  if (l1_index >= img->l1_size) {
    rt_set_error (RAWTRACK_ECORRUPT, "guest offset %" PRIu64 " is beyond the "
                  "L1 table (%" PRIu32 " entries)", guest, img->l1_size);
    return NULL;
  }
  off = qcow2_alloc_clusters (img, 1);
  if (off < 0)
    return NULL;
  zero = rt_calloc (1, cs);
  if (!zero)
    return NULL;
  if (io_write (img->file, zero, cs, (uint64_t) off, "new L2 table") == -1 ||
      io_flush (img->file, "image file") == -1) {
    free (zero);
    return NULL;
  }
  free (zero);
  be64_store (e, QCOW_OFLAG_COPIED | (uint64_t) off);
  if (io_write (img->file, e, 8, img->h.l1_table_offset + l1_index * 8,
                "L1 table entry") == -1)
    return NULL;
  img->l1[l1_index] = QCOW_OFLAG_COPIED | (uint64_t) off;
  *l2_off = (uint64_t) off;
  return qcow2_l2_get (img, l1_index, &absent);
}

/* Point the L2 entry of the guest cluster at `entry`. */
static int
l2_set (struct rawtrack_image *img, uint64_t guest, uint64_t entry)
{
  uint64_t l2_off, idx = (guest / img->cluster_size) % img->l2_entries;
  uint64_t *l2 = l2_for_write (img, guest, &l2_off);
  uint8_t e[8];

  if (!l2)
    return -1;
  be64_store (e, entry);
  if (io_write (img->file, e, 8, l2_off + idx * 8, "L2 entry") == -1)
    return -1;
  l2[idx] = entry;
  return 0;
}

/* Drop the host storage an L2 entry holds in the image file (standard
 * images only; data-file clusters carry no refcount). */
static int
release_entry (struct rawtrack_image *img, uint64_t entry)
{
  const uint64_t cs = img->cluster_size;

  if (has_data_file (img))
    return 0;
  if (entry & QCOW_OFLAG_COMPRESSED) {
    uint64_t host, len, first, last;

    qcow2_compressed_desc (entry, img->h.cluster_bits, &host, &len);
    first = ROUND_DOWN (host, 512);
    last = ROUND_UP (host + len, 512) - 1;
    return qcow2_free_clusters (img, ROUND_DOWN (first, cs),
                                last / cs - first / cs + 1);
  }
  if (entry & L2E_OFFSET_MASK)
    return qcow2_free_clusters (img, ROUND_DOWN (entry & L2E_OFFSET_MASK, cs),
                                1);
  return 0;
}

/* Write [in_off, in_off+n) of the guest cluster at `guest` when the
 * cluster cannot be written in place: build the whole cluster (zeros, or
 * the decompressed or shared old contents), put the new bytes in, store
 * it, and re-point the L2 entry.  img->lock held. */
static int
cow_write (struct rawtrack_image *img, uint64_t guest,
           const struct qcow2_extent *ext, const uint8_t *src,
           uint64_t in_off, uint64_t n)
{
  const uint64_t cs = img->cluster_size;
  uint64_t len = MIN (cs, img->virtual_size - guest), host;
  uint8_t *buf = rt_malloc (cs);
  int r = -1;

  if (!buf)
    return -1;
  switch (ext->type) {
  case QCOW2_UNALLOCATED:
  case QCOW2_ZERO:
    memset (buf, 0, cs);
    break;
  case QCOW2_COMPRESSED:
    if (qcow2_read_compressed (img, ext->l2_entry, guest, buf, cs) == -1)
      goto out;
    break;
  case QCOW2_NORMAL:            /* shared cluster (refcount > 1) */
    if (io_read (img->file, buf, cs, ext->l2_entry & L2E_OFFSET_MASK,
                 "data cluster") == -1)
      goto out;
    break;
  }
  if (src)
    memcpy (buf + in_off, src, n);
  else
    memset (buf + in_off, 0, n);

  if (has_data_file (img)) {
    host = guest;
    if (io_write (img->data, buf, len, host, "data file") == -1)
      goto out;
  }
  else {
    int64_t off = qcow2_alloc_clusters (img, 1);

    if (off < 0 || io_flush (img->file, "image file") == -1)
      goto out;
    host = (uint64_t) off;
    if (io_write (img->file, buf, cs, host, "data cluster") == -1)
      goto out;
  }
  if (l2_set (img, guest, QCOW_OFLAG_COPIED | host) == -1)
    goto out;
  if (ext->type == QCOW2_COMPRESSED || ext->type == QCOW2_NORMAL)
    r = release_entry (img, ext->l2_entry);
  else
    r = 0;
 out:
  free (buf);
  return r;
}

/* Write (src) or zero (src NULL) guest bytes, cluster by cluster; no
 * tracking here (the caller did it). */
static int
write_data (struct rawtrack_image *img, const uint8_t *src, uint64_t count,
            uint64_t offset)
{
  const uint64_t cs = img->cluster_size;

  /* Raw external data, every cluster known one to one: no lock at all
   * (nothing frees or remaps such clusters). */
  if (src && normal_map_covers (img, offset, count))
    return io_write (img->data, src, count, offset, "data file");

  while (count > 0) {
    struct qcow2_extent ext;
    uint64_t guest = ROUND_DOWN (offset, cs), n;
    bool in_place;
    int r;

    pthread_rwlock_rdlock (&img->free_lock);
    pthread_mutex_lock (&img->lock);
    r = qcow2_map (img, offset, count, &ext);
    in_place = r == 0 && ext.type == QCOW2_NORMAL &&
               (has_data_file (img) || (ext.l2_entry & QCOW_OFLAG_COPIED));
    if (in_place)
      normal_map_note (img, offset, ext.bytes);
    if (r == 0 && !in_place) {
      n = MIN (count, guest + cs - offset);
      r = cow_write (img, guest, &ext, src, offset - guest, n);
      ext.bytes = n;
    }
    pthread_mutex_unlock (&img->lock);

    if (r == 0 && in_place) {
      struct rawtrack_io *io = has_data_file (img) ? img->data : img->file;

      if (src)
        r = io_write (io, src, ext.bytes, ext.host,
                      has_data_file (img) ? "data file" : "data cluster");
      else if (io_op_zero (io, ext.bytes, ext.host, 0) == -1)
        r = set_error (errno, "writing zeros at offset %" PRIu64 ": %s",
                       ext.host, strerror (errno));
    }
    pthread_rwlock_unlock (&img->free_lock);
    if (r == -1)
      return -1;
    if (src)
      src += ext.bytes;
    offset += ext.bytes;
    count -= ext.bytes;
  }
  return 0;
}

static void
gate_enter (struct rawtrack_image *img)
{
  if (pthread_rwlock_rdlock (&img->guest_gate) != 0)
    abort ();
}

static void
gate_leave (struct rawtrack_image *img)
{
  if (pthread_rwlock_unlock (&img->guest_gate) != 0)
    abort ();
}

RAWTRACK_API int
rawtrack_image_pwrite (struct rawtrack_image *img, const void *buf,
                       uint64_t count, uint64_t offset, unsigned flags)
{
  int r = 0;

  gate_enter (img);
  if (prepare (img, count, offset, "write") == -1 ||
      track_before_write (img, offset, count) == -1 ||
      write_data (img, buf, count, offset) == -1)
    r = -1;
  gate_leave (img);
  if (r == 0 && (flags & RAWTRACK_WRITE_FUA) &&
      rawtrack_image_flush (img) == -1)
    r = -1;
  return r;
}

/* The write is the caller's; tracking is done here without waiting. */
RAWTRACK_API int64_t
rawtrack_image_write_target (struct rawtrack_image *img, uint64_t offset,
                             uint64_t count, unsigned flags, int *fd,
                             uint64_t *file_offset)
{
  int64_t run;

  (void) flags;
  gate_enter (img);
  if (prepare (img, count, offset, "write") == -1)
    run = -1;
  else
    run = raw_run (img, offset, count, fd);
  /* Only when the bitmaps already cover it, or can without I/O: the
   * caller may be holding up other work (a socket's reader). */
  if (run >= 0 && ((uint64_t) run != count ||
                   !track_try_fast (img, offset, count)))
    run = 0;
  gate_leave (img);
  if (run <= 0)
    return run;
  *file_offset = offset;
  return (int64_t) count;
}

RAWTRACK_API int
rawtrack_image_write_done (struct rawtrack_image *img, uint64_t offset,
                           uint64_t count, unsigned flags)
{
  rt_clear_error ();
  if (offset > img->virtual_size || count > img->virtual_size - offset)
    return set_error (EINVAL, "write of %" PRIu64 " bytes at offset %"
                      PRIu64 " is past the end of the disk (%" PRIu64
                      " bytes)", count, offset, img->virtual_size);
  if ((flags & RAWTRACK_WRITE_FUA) && rawtrack_image_flush (img) == -1)
    return -1;
  return 0;
}

/* Zero whole clusters [guest, guest+len) of a standard or data-file image
 * by metadata alone (v3 zero flag).  img->lock held, free_lock exclusive. */
static int
zero_clusters (struct rawtrack_image *img, uint64_t offset, uint64_t len,
               bool discard)
{
  const uint64_t cs = img->cluster_size;
  uint64_t guest;

  for (guest = offset; guest < offset + len; guest += cs) {
    struct qcow2_extent ext;
    uint64_t entry;

    if (qcow2_map (img, guest, cs, &ext) == -1)
      return -1;
    if (ext.type == QCOW2_UNALLOCATED && (discard || img->h.version < 3))
      continue;
    if (ext.type == QCOW2_ZERO && !discard)
      continue;
    if (has_data_file (img))
      /* Keep the one-to-one mapping allocated: ZERO_ALLOC. */
      entry = ext.type == QCOW2_NORMAL
              ? (ext.l2_entry | QCOW_OFLAG_ZERO) : QCOW_OFLAG_ZERO;
    else
      entry = discard ? 0 : QCOW_OFLAG_ZERO;
    if (discard && has_data_file (img))
      entry = 0;
    if (l2_set (img, guest, entry) == -1)
      return -1;
    if ((ext.type == QCOW2_NORMAL || ext.type == QCOW2_COMPRESSED) &&
        release_entry (img, ext.l2_entry) == -1)
      return -1;
  }
  return 0;
}

static int
do_zero (struct rawtrack_image *img, uint64_t count, uint64_t offset,
         unsigned flags)
{
  const uint64_t cs = img->cluster_size;
  uint64_t head_end, tail_start;
  int r = 0;

  if (prepare (img, count, offset, "write zeroes") == -1 ||
      track_before_write (img, offset, count) == -1)
    return -1;
  if (count == 0)
    return 0;

  if (data_raw (img)) {
    /* The data file is the disk: zero it there; the mapping stays.  Every
     * cluster that is not NORMAL already reads as zeros. */
    unsigned zf = ((flags & RAWTRACK_ZERO_MAY_TRIM) ? RAWTRACK_IO_MAY_TRIM : 0) |
                  ((flags & RAWTRACK_ZERO_FAST) ? RAWTRACK_IO_FAST_ZERO : 0);

    if (io_op_zero (img->data, count, offset, zf) == -1)
      return set_error (errno, "zeroing %" PRIu64 " bytes of the data file "
                        "at offset %" PRIu64 ": %s", count, offset,
                        strerror (errno));
  }
  else {
    /* Whole clusters by metadata (v3), the edges by writing zeros. */
    head_end = MIN (offset + count, ROUND_UP (offset, cs));
    tail_start = MAX (head_end, ROUND_DOWN (offset + count, cs));
    if (offset + count == img->virtual_size)
      tail_start = offset + count;     /* the last, partial cluster */
    if (img->h.version < 3) {
      head_end = tail_start = offset + count;
    }
    if ((flags & RAWTRACK_ZERO_FAST) &&
        (head_end > offset || tail_start < offset + count))
      return set_error (ENOTSUP, "write zeroes: not fast for partial "
                        "clusters");
    if (head_end > offset)
      r = write_data (img, NULL, head_end - offset, offset);
    if (r == 0 && tail_start > head_end) {
      pthread_rwlock_wrlock (&img->free_lock);
      pthread_mutex_lock (&img->lock);
      r = zero_clusters (img, head_end, tail_start - head_end, false);
      pthread_mutex_unlock (&img->lock);
      pthread_rwlock_unlock (&img->free_lock);
    }
    if (r == 0 && offset + count > tail_start)
      r = write_data (img, NULL, offset + count - tail_start, tail_start);
    if (r == -1)
      return -1;
  }
  if ((flags & RAWTRACK_WRITE_FUA) && rawtrack_image_flush (img) == -1)
    return -1;
  return 0;
}

RAWTRACK_API int
rawtrack_image_zero (struct rawtrack_image *img, uint64_t count,
                     uint64_t offset, unsigned flags)
{
  int r;

  gate_enter (img);
  r = do_zero (img, count, offset, flags);
  gate_leave (img);
  return r;
}

static int
do_trim (struct rawtrack_image *img, uint64_t count, uint64_t offset,
         unsigned flags)
{
  const uint64_t cs = img->cluster_size;
  int r = 0;

  if (prepare (img, count, offset, "discard") == -1 ||
      track_before_write (img, offset, count) == -1)
    return -1;
  if (count == 0)
    return 0;
  if (has_data_file (img)) {
    /* Pass the discard to the data file; the mapping stays, so the raw
     * file and the image keep reading the same bytes. */
    if (io_op_trim (img->data, count, offset) == -1 &&
        errno != ENOTSUP && errno != EOPNOTSUPP)
      return set_error (errno, "discarding %" PRIu64 " bytes of the data "
                        "file at offset %" PRIu64 ": %s", count, offset,
                        strerror (errno));
  }
  else {
    uint64_t start = ROUND_UP (offset, cs);
    uint64_t end = offset + count == img->virtual_size
                   ? offset + count : ROUND_DOWN (offset + count, cs);

    if (end > start) {
      pthread_rwlock_wrlock (&img->free_lock);
      pthread_mutex_lock (&img->lock);
      r = zero_clusters (img, start, end - start, true);
      pthread_mutex_unlock (&img->lock);
      pthread_rwlock_unlock (&img->free_lock);
    }
  }
  if (r == 0 && (flags & RAWTRACK_WRITE_FUA))
    r = rawtrack_image_flush (img);
  return r;
}

RAWTRACK_API int
rawtrack_image_trim (struct rawtrack_image *img, uint64_t count,
                     uint64_t offset, unsigned flags)
{
  int r;

  gate_enter (img);
  r = do_trim (img, count, offset, flags);
  gate_leave (img);
  return r;
}

RAWTRACK_API int64_t
rawtrack_image_block_status (struct rawtrack_image *img, uint64_t offset,
                             uint64_t count, unsigned *status)
{
  struct qcow2_extent ext;
  int r;

  rt_clear_error ();
  *status = 0;
  if (offset >= img->virtual_size || count == 0)
    return set_error (EINVAL, "block status at offset %" PRIu64 " (%" PRIu64
                      " bytes): outside the disk", offset, count);
  pthread_mutex_lock (&img->lock);
  r = qcow2_map (img, offset, count, &ext);
  pthread_mutex_unlock (&img->lock);
  if (r == -1)
    return -1;
  switch (ext.type) {
  case QCOW2_UNALLOCATED:
    /* The backing chain's, or a hole that reads as zeros without one. */
    return backing_status (img, offset, ext.bytes, status);
  case QCOW2_ZERO:
    *status = RAWTRACK_STATUS_ALLOCATED | RAWTRACK_STATUS_ZERO |
              ((ext.l2_entry & L2E_OFFSET_MASK) || has_data_file (img)
               ? 0 : RAWTRACK_STATUS_HOLE);
    break;
  case QCOW2_COMPRESSED:
    *status = RAWTRACK_STATUS_ALLOCATED;
    break;
  case QCOW2_NORMAL:
    *status = RAWTRACK_STATUS_ALLOCATED;
    if (img->data) {
      int is_data = 1;
      int64_t n = io_op_extent (img->data, ext.host, ext.bytes,
                                      &is_data);

      if (n <= 0)
        return set_error (errno, "block status of the data file at offset %"
                          PRIu64 ": %s", ext.host, strerror (errno));
      if (!is_data)
        *status |= RAWTRACK_STATUS_HOLE | RAWTRACK_STATUS_ZERO;
      return n;
    }
    break;
  }
  return (int64_t) ext.bytes;
}

RAWTRACK_API int
rawtrack_image_flush (struct rawtrack_image *img)
{
  int r = 0;

  rt_clear_error ();
  if (!img->writable)
    return 0;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
    r = io_flush (img->file, "image file");
  }
  if (r == 0 && img->data && io_flush (img->data, "data file") == -1)
    r = -1;
  return r;
}
