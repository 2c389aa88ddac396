/* rawtrack - persistent dirty bitmaps: the public operations.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: rawtrack_bitmap_* (include/rawtrack/rawtrack-bitmap.h): add,
 * remove, clear, enable, disable, merge, and reading bits (extents, dirty
 * byte counts).  The one way the bitmap directory on disk changes, the
 * update transaction, is bitmap-update.c's (with the on-disk invariants
 * every operation keeps); tables and data are bitmap-store.c's; the
 * directory format is bitmap-dir.c's.
 *
 * Locking: every entry point takes img->lock for the whole operation (a
 * merge between two images takes both, lower address first).  The ones
 * that change the image first take img->guest_gate for writing (no guest
 * write is in flight through this handle) and stop the tracker if it runs
 * (track_stop: every tracked bitmap's exact bits are on disk), then
 * img->free_lock for writing (guest-io.c: no in-place data write may race
 * with freeing clusters).  The next guest write starts the tracker again
 * on the new directory, so a bitmap added enabled (rotate) records from
 * the first write after the change and a disabled one no longer does.
 * Bits that are only read
 * (extents, counts) are loaded under the lock into a private copy and
 * walked after it is dropped.
 *
 * What each operation touches:
 *
 *   op       reads bits  new data  new table    new dir  freed afterwards
 *   add      no          no        yes (zeros)  yes      old dir
 *   rotate   = add, and the same directory clears others' auto flags
 *   remove   no          no        no           yes/none old dir, table, data
 *   clear    no          no        yes (zeros)  yes      old dir, table, data
 *   enable   no          no        no           yes      old dir
 *   disable  no          no        no           yes      old dir
 *   merge    yes         yes       yes          yes      old dir, table, data
 *
 * ("reads bits" = bitmap data clusters; remove and clear read the old table
 * to know which data clusters to free, never the data.)
 *
 * In-use: rawtrack does not write guest data through these handles, so a
 * writable open for bitmap operations does not set in_use (QEMU sets it
 * because its handle records guest writes in RAM until close).  Bitmaps
 * that are in_use on disk stay so: they can only be removed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap.h"
#include "arith.h"

/* ---- locking ---------------------------------------------------------- */

static void
lock (struct rawtrack_image *img)
{
  if (pthread_mutex_lock (&img->lock) != 0)
    abort ();
}

static void
unlock (struct rawtrack_image *img)
{
  if (pthread_mutex_unlock (&img->lock) != 0)
    abort ();
}

/* Changing operations: no guest write in flight (guest_gate), the
 * tracker stopped (its bits written exactly, to disk), then free_lock for
 * writing (taken before img->lock), so that no in-place guest data write
 * can land in a cluster freed and reused under it (guest-io.c).  -1 if
 * stopping the tracker failed (nothing held then). */
static int
quiesce (struct rawtrack_image *img)
{
  int r = 0;

  if (pthread_rwlock_wrlock (&img->guest_gate) != 0)
    abort ();
  pthread_mutex_lock (&img->track_init_lock);
  if (img->track && track_stop (img) == -1)
    r = -1;
  pthread_mutex_unlock (&img->track_init_lock);
  if (r == -1 && pthread_rwlock_unlock (&img->guest_gate) != 0)
    abort ();
  return r;
}

static int
lock_w (struct rawtrack_image *img)
{
  if (quiesce (img) == -1)
    return -1;
  if (pthread_rwlock_wrlock (&img->free_lock) != 0)
    abort ();
  lock (img);
  return 0;
}

static void
unlock_w (struct rawtrack_image *img)
{
  unlock (img);
  if (pthread_rwlock_unlock (&img->free_lock) != 0 ||
      pthread_rwlock_unlock (&img->guest_gate) != 0)
    abort ();
}

/* Both images' locks, lower address first (b may be a or NULL). */
static void
lock2 (struct rawtrack_image *a, struct rawtrack_image *b)
{
  if (!b || b == a)
    lock (a);
  else if (a < b) {
    lock (a);
    lock (b);
  }
  else {
    lock (b);
    lock (a);
  }
}

static void
unlock2 (struct rawtrack_image *a, struct rawtrack_image *b)
{
  unlock (a);
  if (b && b != a)
    unlock (b);
}

/* ---- lookups and checks ----------------------------------------------- */

static int
find (struct rawtrack_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->bitmaps.nr; i++)
    if (strcmp (img->bitmaps.entries[i].name, name) == 0)
      return (int) i;
  return -1;
}

/* Index of name, or -1 with QEMU's message. */
static int
lookup (struct rawtrack_image *img, const char *name)
{
  int i;

  if (!name)
    return set_error (EINVAL, "no bitmap name");
  i = find (img, name);
  if (i < 0)
    return set_error (ENOENT, "Dirty bitmap '%s' not found", name);
  return i;
}

static int
check_consistent (const struct bitmap_entry *e)
{
  if (e->flags & BME_FLAG_IN_USE)
    return set_error (EINVAL, "Bitmap '%s' is inconsistent and cannot be "
                      "used (its writer did not close the image cleanly); "
                      "the only thing to do with it is to remove it: "
                      "rawtrack bitmap remove IMAGE '%s'", e->name, e->name);
  return 0;
}

static int
check_writable (struct rawtrack_image *img)
{
  if (!img->writable)
    return set_error (EROFS, "the image is open read-only");
  return 0;
}

/* ---- directories ------------------------------------------------------ */

static void
dir_delete (struct bitmap_dir *dir, uint32_t i)
{
  free (dir->entries[i].name);
  memmove (&dir->entries[i], &dir->entries[i + 1],
           (dir->nr - i - 1) * sizeof dir->entries[0]);
  dir->nr--;
}

/* ---- public entry points ---------------------------------------------- */

RAWTRACK_API int
rawtrack_bitmap_find (struct rawtrack_image *img, const char *name)
{
  int i;

  rt_clear_error ();
  lock (img);
  i = lookup (img, name);
  unlock (img);
  return i;
}

RAWTRACK_API uint64_t
rawtrack_bitmap_default_granularity (struct rawtrack_image *img)
{
  return MIN (MAX ((uint64_t) img->cluster_size, 4096), 65536);
}

/* Add name; with freeze, also clear the auto flag of every bitmap named
 * in freeze (a NULL-terminated list) in the same directory update. */
/* An enabled bitmap is tracked at the next write: refuse it up front,
 * before anything is written, where cluster 0 has no room for the
 * tracking log (512-byte or 1 KiB clusters with a long data file name),
 * rather than let every tracked write fail later. */
static int
check_track_room (struct rawtrack_image *img, const char *what)
{
  size_t other;
  int64_t room = track_log_room (&img->h, img->cluster_size, true, &other);

  if (room == -1)
    return -1;
  if (room < TRACK_LOG_MIN)
    return track_log_no_room (&img->h, img->cluster_size, other, what);
  return 0;
}

static int
do_add (struct rawtrack_image *img, const char *name, uint64_t g,
        unsigned flags, const char *const *freeze)
{
  struct bitmap_update u;
  struct bitmap_entry *e;
  uint32_t gb;
  uint64_t bits, bytes, tsize;
  size_t k;

  if (check_writable (img) == -1)
    return -1;
  if (!name || !*name)
    return set_error (EINVAL, "Bitmap name cannot be empty");
  if (flags & ~RAWTRACK_BITMAP_ADD_DISABLED)
    return set_error (EINVAL, "unknown flags 0x%x", flags);
  if (g == 0)
    g = rawtrack_bitmap_default_granularity (img);
  else if (g < 512 || !is_power_of_2 (g))
    return set_error (EINVAL, "Granularity must be power of 2 and at least "
                      "512");
  if (find (img, name) >= 0)
    return set_error (EEXIST, "Bitmap already exists: %s", name);
  if (img->h.version < 3)
    return set_error (ENOTSUP, "Cannot store dirty bitmaps in qcow2 v2 "
                      "files");
  if (g > (1ull << BME_MAX_GRAN_BITS))
    return set_error (EINVAL, "Granularity exceeds maximum (%llu bytes)",
                      1ull << BME_MAX_GRAN_BITS);
  gb = (uint32_t) log2_u64 (g);
  bits = DIV_ROUND_UP (img->virtual_size, g);
  bytes = DIV_ROUND_UP (bits, 8);
  if (bytes > BME_MAX_PHYS_SIZE)
    return set_error (ERANGE, "Too much space will be occupied by the "
                      "bitmap. Use larger granularity");
  if (strlen (name) > BME_MAX_NAME)
    return set_error (EINVAL, "Name length exceeds maximum (%d characters)",
                      BME_MAX_NAME);
  if (img->bitmaps.nr + 1 > BME_MAX_BITMAPS)
    return set_error (ERANGE, "Maximum number of persistent bitmaps is "
                      "already reached");
  if (bitmap_dir_size (&img->bitmaps) +
      ROUND_UP (24 + (uint64_t) strlen (name), 8) > BME_MAX_DIR_SIZE)
    return set_error (ERANGE, "Not enough space in the bitmap directory");
  tsize = bitmap_table_size_for (img->virtual_size, gb, img->cluster_size);
  if (tsize == 0)
    return set_error (EINVAL, "cannot add a bitmap to a disk of size 0");
  if (!(flags & RAWTRACK_BITMAP_ADD_DISABLED) &&
      check_track_room (img, "cannot add an enabled bitmap") == -1)
    return -1;

  for (k = 0; freeze && freeze[k]; k++) {
    int fi = lookup (img, freeze[k]);

    if (fi < 0 || check_consistent (&img->bitmaps.entries[fi]) == -1)
      return -1;
  }

  if (bitmap_update_begin (img, &u, 1) == -1)
    return -1;
  for (k = 0; freeze && freeze[k]; k++)
    u.dir.entries[find (img, freeze[k])].flags &= ~BME_FLAG_AUTO;
  e = &u.dir.entries[u.dir.nr];
  memset (e, 0, sizeof *e);
  e->name = rt_strdup (name);
  if (!e->name) {
    bitmap_update_end (img, &u, false);
    return -1;
  }
  u.dir.nr++;
  e->name_size = (uint16_t) strlen (name);
  e->type = 1;
  e->granularity_bits = (uint8_t) gb;
  e->flags = (flags & RAWTRACK_BITMAP_ADD_DISABLED) ? 0 : BME_FLAG_AUTO;
  e->table_size = (uint32_t) tsize;
  if (bitmap_store (img, NULL, e->table_size, &e->table_offset,
                    &u.allocated) == -1) {
    bitmap_update_end (img, &u, true);
    return -1;
  }
  return bitmap_update_commit (img, &u);
}

RAWTRACK_API int
rawtrack_bitmap_add (struct rawtrack_image *img, const char *name,
                     uint64_t granularity, unsigned flags)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_add (img, name, granularity, flags, NULL);
  unlock_w (img);
  return r;
}

RAWTRACK_API int
rawtrack_bitmap_rotate (struct rawtrack_image *img, const char *name,
                        uint64_t granularity, const char *const *freeze)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_add (img, name, granularity, 0, freeze);
  unlock_w (img);
  return r;
}

static int
do_remove (struct rawtrack_image *img, const char *name)
{
  struct bitmap_update u;
  int i;

  if (check_writable (img) == -1 || (i = lookup (img, name)) < 0)
    return -1;
  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  /* Removing is how a broken bitmap is got rid of: if its table cannot be
   * read or does not validate, its clusters leak (as in QEMU). */
  if (bitmap_collect_clusters (img, &img->bitmaps.entries[i], &u.old) == -1) {
    cluster_list_reset (&u.old);
    rt_clear_error ();
  }
  dir_delete (&u.dir, (uint32_t) i);
  return bitmap_update_commit (img, &u);
}

RAWTRACK_API int
rawtrack_bitmap_remove (struct rawtrack_image *img, const char *name)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_remove (img, name);
  unlock_w (img);
  return r;
}

static int
do_clear (struct rawtrack_image *img, const char *name)
{
  struct bitmap_update u;
  struct bitmap_entry *e;
  int i;

  if (check_writable (img) == -1 || (i = lookup (img, name)) < 0 ||
      check_consistent (&img->bitmaps.entries[i]) == -1)
    return -1;
  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  e = &u.dir.entries[i];
  if (bitmap_collect_clusters (img, e, &u.old) == -1 ||
      bitmap_store (img, NULL, e->table_size, &e->table_offset,
                    &u.allocated) == -1) {
    bitmap_update_end (img, &u, true);
    return -1;
  }
  return bitmap_update_commit (img, &u);
}

RAWTRACK_API int
rawtrack_bitmap_clear (struct rawtrack_image *img, const char *name)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_clear (img, name);
  unlock_w (img);
  return r;
}

static int
do_set_auto (struct rawtrack_image *img, const char *name, bool on)
{
  struct bitmap_update u;
  struct bitmap_entry *e;
  int i;

  if (check_writable (img) == -1 || (i = lookup (img, name)) < 0 ||
      check_consistent (&img->bitmaps.entries[i]) == -1)
    return -1;
  if (((img->bitmaps.entries[i].flags & BME_FLAG_AUTO) != 0) == on)
    return 0;
  if (on && check_track_room (img, "cannot enable the bitmap") == -1)
    return -1;
  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  e = &u.dir.entries[i];
  if (on)
    e->flags |= BME_FLAG_AUTO;
  else
    e->flags &= ~BME_FLAG_AUTO;
  return bitmap_update_commit (img, &u);
}

RAWTRACK_API int
rawtrack_bitmap_enable (struct rawtrack_image *img, const char *name)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_set_auto (img, name, true);
  unlock_w (img);
  return r;
}

RAWTRACK_API int
rawtrack_bitmap_disable (struct rawtrack_image *img, const char *name)
{
  int r;

  rt_clear_error ();
  if (lock_w (img) == -1)
    return -1;
  r = do_set_auto (img, name, false);
  unlock_w (img);
  return r;
}

static int
do_merge (struct rawtrack_image *img, const char *src_name,
          const char *dst_name, struct rawtrack_image *simg)
{
  struct bitmap_mem *dst = NULL, *src = NULL;
  struct bitmap_update u;
  struct bitmap_entry *e;
  int di, si, r = -1;

  if (check_writable (img) == -1 || (di = lookup (img, dst_name)) < 0 ||
      check_consistent (&img->bitmaps.entries[di]) == -1 ||
      (si = lookup (simg, src_name)) < 0 ||
      check_consistent (&simg->bitmaps.entries[si]) == -1)
    return -1;
  if (simg->virtual_size != img->virtual_size)
    return set_error (EINVAL, "Bitmaps are of different sizes (destination "
                      "size is %" PRIu64 ", source size is %" PRIu64 ") and "
                      "can't be merged", img->virtual_size,
                      simg->virtual_size);

  if (bitmap_load (img, &img->bitmaps.entries[di], &dst) == -1 ||
      bitmap_load (simg, &simg->bitmaps.entries[si], &src) == -1 ||
      bitmap_mem_merge (dst, src) == -1)
    goto out;
  bitmap_mem_free (src);
  src = NULL;

  if (bitmap_update_begin (img, &u, 0) == -1)
    goto out;
  e = &u.dir.entries[di];
  if (bitmap_collect_clusters (img, e, &u.old) == -1 ||
      bitmap_store (img, dst, e->table_size, &e->table_offset,
                    &u.allocated) == -1) {
    bitmap_update_end (img, &u, true);
    goto out;
  }
  r = bitmap_update_commit (img, &u);

 out:
  bitmap_mem_free (src);
  bitmap_mem_free (dst);
  return r;
}

RAWTRACK_API int
rawtrack_bitmap_merge (struct rawtrack_image *img, const char *source_name,
                       const char *target_name,
                       struct rawtrack_image *source_img)
{
  int r;

  rt_clear_error ();
  if (!source_img)
    source_img = img;
  /* The source's bits are read from its disk: a tracked source is
   * another handle's business (its tracker writes them back at close);
   * img itself is quiesced here. */
  if (quiesce (img) == -1)
    return -1;
  if (pthread_rwlock_wrlock (&img->free_lock) != 0)
    abort ();
  lock2 (img, source_img);
  r = do_merge (img, source_name, target_name, source_img);
  unlock2 (img, source_img);
  if (pthread_rwlock_unlock (&img->free_lock) != 0 ||
      pthread_rwlock_unlock (&img->guest_gate) != 0)
    abort ();
  return r;
}

int
bitmap_replace_bits (struct rawtrack_image *img, const char *name,
                     const struct bitmap_mem *bm)
{
  struct bitmap_update u;
  struct bitmap_entry *e;
  int i;

  if (!img->writable)
    return set_error (EROFS, "the image is open read-only");
  if ((i = lookup (img, name)) < 0 ||
      check_consistent (&img->bitmaps.entries[i]) == -1)
    return -1;
  if (bitmap_mem_size (bm) != img->virtual_size ||
      bitmap_mem_granularity (bm) !=
      1u << img->bitmaps.entries[i].granularity_bits)
    return set_error (EINVAL, "bitmap '%s': the new bits do not match its "
                      "size and granularity", name);
  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  e = &u.dir.entries[i];
  if (bitmap_collect_clusters (img, e, &u.old) == -1 ||
      bitmap_store (img, bm, e->table_size, &e->table_offset,
                    &u.allocated) == -1) {
    bitmap_update_end (img, &u, true);
    return -1;
  }
  return bitmap_update_commit (img, &u);
}

/* Load a private copy of a consistent bitmap's bits over guest [start,
 * start + len) (outside it they read as clean): the live tracked bits
 * while guest writes are being tracked (exact, where the disk copy may
 * over-report hot extents), else the bits stored in the image - only the
 * clusters holding that range are read, so a client asking about 64 MiB
 * of a 16 TiB disk does not read 32 MiB of bitmap.  track_bitmap is
 * called before taking img->lock (lock order: track.c). */
static struct bitmap_mem *
load_copy (struct rawtrack_image *img, const char *name, uint64_t start,
           uint64_t len)
{
  struct bitmap_mem *bm = track_bitmap (img, name, start, len);
  int i;

  if (bm)
    return bm;
  lock (img);
  if ((i = lookup (img, name)) >= 0 &&
      check_consistent (&img->bitmaps.entries[i]) == 0)
    bitmap_load_range (img, &img->bitmaps.entries[i], start, len, &bm);
  unlock (img);
  return bm;
}

RAWTRACK_API int
rawtrack_bitmap_extents (struct rawtrack_image *img, const char *name,
                         uint64_t offset, uint64_t length,
                         rawtrack_bitmap_extent_fn fn, void *opaque)
{
  struct bitmap_mem *bm;
  uint64_t end, pos, s, l;
  int r = 0, c;

  rt_clear_error ();
  if (!fn)
    return set_error (EINVAL, "no extent callback");
  bm = load_copy (img, name, offset, length);
  if (!bm)
    return -1;
  end = bitmap_mem_size (bm);
  if (length < end && offset < end - length)
    end = offset + length;
  for (pos = offset; pos < end; pos = s + l) {
    if (!bitmap_mem_next_dirty_area (bm, pos, end, &s, &l)) {
      s = end;
      l = 0;
    }
    if (s > pos && (c = fn (opaque, pos, s - pos, 0)) != 0)
      goto stop;
    if (l > 0 && (c = fn (opaque, s, l, 1)) != 0)
      goto stop;
  }
  goto out;

 stop:
  if (c < 0)
    r = set_error (ECANCELED, "the extent callback failed");
 out:
  bitmap_mem_free (bm);
  return r;
}

RAWTRACK_API int
rawtrack_bitmap_dirty_bytes (struct rawtrack_image *img, const char *name,
                             uint64_t *bytes)
{
  struct bitmap_mem *bm;
  int i, r = -1;

  rt_clear_error ();
  /* A tracked bitmap: its live bits.  Otherwise counted from the table,
   * without loading it (bitmap-count.c: work bounded by the file). */
  bm = track_bitmap (img, name, 0, img->virtual_size);
  if (bm) {
    *bytes = bitmap_mem_dirty_bytes (bm);
    bitmap_mem_free (bm);
    return 0;
  }
  lock (img);
  if ((i = lookup (img, name)) >= 0 &&
      check_consistent (&img->bitmaps.entries[i]) == 0)
    r = bitmap_count_dirty (img, &img->bitmaps.entries[i], bytes);
  unlock (img);
  return r;
}
