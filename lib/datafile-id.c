/* rawtrack - noticing writes that bypassed rawtrack (data file identity).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the private header extension "RTID" and autoclear bit 62, which
 * record what the external data file looked like when rawtrack last had
 * it open for writing: device and inode, size, change time (ctime).
 *
 *   written at every read-write open that opens a local data file (state
 *   WRITING: a writer has it now) and again at its clean close (state
 *   clear), always after the writes it covers, with a header write and a
 *   flush.
 *
 *   checked at every such open, before anything is written: if the file
 *   now differs from the record - another inode (replaced, restored from a
 *   snapshot), another size, another ctime (any write, truncate, chmod or
 *   touch changes it) - something wrote it while rawtrack was not
 *   tracking, and every bitmap is marked in use (BME_FLAG_IN_USE), the
 *   inconsistency QEMU understands: qemu-img and qemu-nbd refuse such
 *   bitmaps and the next backup is a full one.  The record then says
 *   CHANGED, when and why, until no bitmap is in use any more (they can
 *   only be removed), so that info, bitmap list and check can explain.
 *
 * Trust: QEMU keeps unknown extensions but clears unknown autoclear bits
 * on every writable open.  A clear bit 62 therefore means QEMU (which
 * tracks its own writes in the bitmaps) had the image open for writing
 * since: the record is not compared, only renewed.  After a crash of a
 * rawtrack writer (state WRITING) only the inode is compared: the size
 * and ctime changed by rawtrack's own tracked writes.
 *
 * Not detected: writes to a block device (no change time: only another
 * device or size is), a change that restores the size and ctime exactly
 * (a deliberate clock or ctime forgery), and changes while a rawtrack
 * writer had crashed (only a replaced file is).  A touch without a write
 * is reported as a change: rawtrack cannot tell it from one.
 *
 * Best effort where the header has no room (512-byte clusters): nothing
 * is recorded, nothing detected.
 *
 * Locking: called at open and close only, with no other thread using the
 * handle.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "internal.h"
#include "bitmap.h"
#include "byteorder.h"

#define DATAID_MAGIC      0x72746931u          /* "rti1" */
#define ST_WRITING        0x1u
#define ST_CHANGED        0x2u

struct dataid {
  uint32_t state;
  uint64_t dev, ino, size, ctime_sec;
  uint32_t ctime_nsec, is_blockdev;
  uint64_t recorded_at, changed_at;
  uint32_t reason;
};

static int
find_ext (const struct qcow2_header *h)
{
  size_t i;

  for (i = 0; i < h->unknown.len; i++)
    if (h->unknown.ptr[i].type == DATAID_EXT_TYPE)
      return (int) i;
  return -1;
}

/* The record, if there is a valid one: 1; none: 0. */
static int
load (const struct qcow2_header *h, struct dataid *d)
{
  int i = find_ext (h);
  const uint8_t *p;

  if (i < 0 || h->unknown.ptr[i].len != DATAID_LEN)
    return 0;
  p = h->unknown.ptr[i].data;
  if (be32_load (p) != DATAID_MAGIC)
    return 0;
  d->state = be32_load (p + 4);
  d->dev = be64_load (p + 8);
  d->ino = be64_load (p + 16);
  d->size = be64_load (p + 24);
  d->ctime_sec = be64_load (p + 32);
  d->ctime_nsec = be32_load (p + 40);
  d->is_blockdev = be32_load (p + 44);
  d->recorded_at = be64_load (p + 48);
  d->changed_at = be64_load (p + 56);
  d->reason = be32_load (p + 64);
  return 1;
}

static int
store (struct qcow2_header *h, const struct dataid *d)
{
  int i = find_ext (h);
  uint8_t *p = rt_calloc (1, DATAID_LEN);

  if (!p)
    return -1;
  be32_store (p, DATAID_MAGIC);
  be32_store (p + 4, d->state);
  be64_store (p + 8, d->dev);
  be64_store (p + 16, d->ino);
  be64_store (p + 24, d->size);
  be64_store (p + 32, d->ctime_sec);
  be32_store (p + 40, d->ctime_nsec);
  be32_store (p + 44, d->is_blockdev);
  be64_store (p + 48, d->recorded_at);
  be64_store (p + 56, d->changed_at);
  be32_store (p + 64, d->reason);
  if (i < 0) {
    struct qcow2_ext u = { .type = DATAID_EXT_TYPE };

    if (ext_list_append (&h->unknown, u) == -1) {
      free (p);
      return -1;
    }
    i = (int) h->unknown.len - 1;
  }
  free (h->unknown.ptr[i].data);
  h->unknown.ptr[i].data = p;
  h->unknown.ptr[i].len = DATAID_LEN;
  h->autoclear |= QCOW2_AUTOCLEAR_DATAID;
  return 0;
}

static int
stat_data (struct rawtrack_image *img, struct stat *st)
{
  int fd = img->data ? rawtrack_io_raw_fd (img->data) : -1;

  return fd >= 0 && fstat (fd, st) == 0 ? 0 : -1;
}

/* io: the open data file (a block device's size), or NULL. */
static void
fill (struct dataid *d, const struct stat *st, struct rawtrack_io *io)
{
  d->dev = (uint64_t) st->st_dev;
  d->ino = (uint64_t) st->st_ino;
  d->size = (uint64_t) st->st_size;
  d->ctime_sec = (uint64_t) st->st_ctim.tv_sec;
  d->ctime_nsec = (uint32_t) st->st_ctim.tv_nsec;
  d->is_blockdev = S_ISBLK (st->st_mode);
  if (d->is_blockdev) {                 /* its size, not the node's */
    int64_t sz = io ? rawtrack_io_get_size (io) : -1;

    d->size = sz > 0 ? (uint64_t) sz : 0;
    d->ctime_sec = 0;
    d->ctime_nsec = 0;
  }
  d->recorded_at = (uint64_t) time (NULL);
}

/* What differs between the record and the file now (RAWTRACK_CHANGE_*). */
static uint32_t
differences (const struct dataid *rec, const struct dataid *now)
{
  uint32_t r = 0;

  if (rec->dev != now->dev || rec->ino != now->ino)
    r |= RAWTRACK_CHANGE_REPLACED;
  if (rec->state & ST_WRITING)          /* our own writes moved the rest */
    return r;
  if (rec->size != now->size && (rec->size || !now->is_blockdev) &&
      (now->size || !now->is_blockdev))
    r |= RAWTRACK_CHANGE_SIZE;
  if (!now->is_blockdev && (rec->ctime_sec != now->ctime_sec ||
                            rec->ctime_nsec != now->ctime_nsec))
    r |= RAWTRACK_CHANGE_CTIME;
  return r;
}

static bool
any_in_use (const struct rawtrack_image *img)
{
  uint32_t i;

  for (i = 0; i < img->bitmaps.nr; i++)
    if (img->bitmaps.entries[i].flags & BME_FLAG_IN_USE)
      return true;
  return false;
}

/* Every bitmap in use: QEMU's "inconsistent".  img->lock not needed (open). */
static int
mark_in_use (struct rawtrack_image *img)
{
  struct bitmap_update u;
  uint32_t i;

  if (img->bitmaps.nr == 0)
    return 0;
  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  for (i = 0; i < u.dir.nr; i++)
    u.dir.entries[i].flags |= BME_FLAG_IN_USE;
  return bitmap_update_commit (img, &u);
}

static int
write_record (struct rawtrack_image *img, struct dataid *d)
{
  if (store (&img->h, d) == -1)
    return -1;
  if (qcow2_write_header (img, true) == -1) {
    if (rawtrack_get_errno () == ENOSPC) {   /* no room in cluster 0 */
      int i = find_ext (&img->h);

      free (img->h.unknown.ptr[i].data);
      img->h.unknown.ptr[i] = img->h.unknown.ptr[--img->h.unknown.len];
      img->h.autoclear &= ~QCOW2_AUTOCLEAR_DATAID;
      rt_clear_error ();
      return 0;
    }
    return -1;
  }
  return 0;
}

int
dataid_open (struct rawtrack_image *img)
{
  struct dataid rec, now;
  struct stat st;
  bool trusted;
  uint32_t diff = 0;

  /* check -r repairs metadata and writes no guest data: it leaves the
   * record (and a clean image) alone. */
  if (!img->writable || (img->flags & RAWTRACK_OPEN_CHECK) ||
      img->h.version < 3 || stat_data (img, &st) == -1)
    return 0;
  memset (&now, 0, sizeof now);
  fill (&now, &st, img->data);
  trusted = load (&img->h, &rec) && (img->h.autoclear & QCOW2_AUTOCLEAR_DATAID);
  if (trusted)
    diff = differences (&rec, &now);
  if (diff && img->bitmaps.nr) {
    if (mark_in_use (img) == -1) {
      rt_prefix_error ("the data file changed while rawtrack was not "
                       "tracking it, and marking the bitmaps in use failed: ");
      return -1;
    }
    now.state = ST_CHANGED;
    now.changed_at = now.recorded_at;
    now.reason = diff;
  }
  else if (trusted && (rec.state & ST_CHANGED) && any_in_use (img)) {
    now.state = ST_CHANGED;              /* still explained */
    now.changed_at = rec.changed_at;
    now.reason = rec.reason;
  }
  now.state |= ST_WRITING;
  return write_record (img, &now);
}

int
dataid_close (struct rawtrack_image *img)
{
  struct dataid rec, now;
  struct stat st;

  if (!img->writable || (img->flags & RAWTRACK_OPEN_CHECK) ||
      img->h.version < 3 || stat_data (img, &st) == -1 ||
      find_ext (&img->h) < 0)
    return 0;
  memset (&now, 0, sizeof now);
  fill (&now, &st, img->data);
  if (load (&img->h, &rec) && (rec.state & ST_CHANGED) && any_in_use (img)) {
    now.state = ST_CHANGED;
    now.changed_at = rec.changed_at;
    now.reason = rec.reason;
  }
  return write_record (img, &now);
}

RAWTRACK_API int
rawtrack_image_data_file_changed (struct rawtrack_image *img,
                                  struct rawtrack_data_file_change *c)
{
  struct dataid rec, now;
  struct stat st;
  size_t sz;
  struct rawtrack_data_file_change out;

  rt_clear_error ();
  if (!c || c->struct_size < sizeof (uint32_t))
    return set_error (EINVAL, "rawtrack_image_data_file_changed: struct_size");
  memset (&out, 0, sizeof out);
  out.struct_size = c->struct_size;
  if (load (&img->h, &rec) && (img->h.autoclear & QCOW2_AUTOCLEAR_DATAID)) {
    out.recorded = 1;
    out.recorded_at = (int64_t) rec.recorded_at;
    out.writer_open = (rec.state & ST_WRITING) != 0;
    if ((rec.state & ST_CHANGED) && any_in_use (img)) {
      out.marked = 1;
      out.since = (int64_t) rec.changed_at;
      out.reason = rec.reason;
    }
    /* Not yet marked: does the file differ now?  (stat only; the data
     * file need not be open.) */
    if (!out.marked) {
      int ok = stat_data (img, &st);

      if (ok == -1 && img->path && img->h.data_file &&
          !datafile_name_is_special (img->h.data_file)) {
        char *p = datafile_resolve (img->path, img->h.data_file);

        ok = p && stat (p, &st) == 0 ? 0 : -1;
        free (p);
        rt_clear_error ();
      }
      if (ok == 0) {
        memset (&now, 0, sizeof now);
        fill (&now, &st, img->data);
        out.pending_reason = differences (&rec, &now);
        out.pending = out.pending_reason != 0;
      }
    }
  }
  sz = c->struct_size < sizeof out ? c->struct_size : sizeof out;
  memcpy (c, &out, sz);
  return 0;
}
