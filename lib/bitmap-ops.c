/* rawtrack - persistent dirty bitmaps: the public operations.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: rawtrack_bitmap_* (include/rawtrack/rawtrack-bitmap.h): add,
 * remove, clear, enable, disable, merge, and reading bits (extents, dirty
 * byte counts); and the one way the bitmap directory on disk changes, the
 * update transaction below.  Tables and data are bitmap-store.c's; the
 * directory format is bitmap-dir.c's.
 *
 * Locking: every entry point takes img->lock for the whole operation (a
 * merge between two images takes both, lower address first).  The ones
 * that change the image first take img->free_lock for writing (guest-io.c:
 * no in-place data write may race with freeing clusters), and refuse to
 * run while the handle tracks guest writes (img->track): the tracker owns
 * the enabled bitmaps' bits until it stops.  Bits that are only read
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
 * On-disk invariants kept at every instant, also across a crash:
 *   1. The header's bitmaps extension, the directory it points to, the
 *      tables the directory points to and their data clusters all have
 *      refcount >= 1 before any of them is referenced.
 *   2. Autoclear bit 0 is set iff the extension is present (never set
 *      without it: QEMU 7.2 marks such an image corrupt on its first write,
 *      qcow2-facts.md §5.9).
 *   3. Nothing referenced by a durable header is overwritten or freed until
 *      a header that no longer references it is durable.
 *
 * In-use: rawtrack does not write guest data through these handles, so a
 * writable open for bitmap operations does not set in_use (QEMU sets it
 * because its handle records guest writes in RAM until close).  Bitmaps
 * that are in_use on disk stay so: they can only be removed.
 *
 * The update transaction (bitmap_update_commit), for every operation:
 *
 *   bitmap_store() / add: data + table --> NEW clusters (not flushed)
 *        |
 *   [1] new directory --> NEW clusters              (refcounts written)
 *   [2] flush                                       all of the above durable
 *   [3] header switch (header_switch), flushed:
 *         extension {nb_bitmaps, dir size, dir offset} + autoclear bit 0
 *   [4] free old directory, old tables, old data    (refcount decrements)
 *   [5] flush
 *
 *   crash before [3] durable : old header -> old directory; new clusters leak
 *   crash after [3], before [5]: new header; old clusters leak
 *   error before [3]         : new clusters are freed again, nothing changed
 *   error in [3]             : state unknown (old or new); nothing is freed,
 *                              the in-memory state stays the old one
 *
 * The header switch.  qcow2_write_header rewrites cluster 0 whole, but
 * only the bytes that differ can tear.  A disk writes a 512-byte sector
 * (4 KiB on most modern drives) atomically, so:
 *
 *   - if every changed byte lies in one 512-byte sector, one write+flush
 *     switches atomically.  This is the common case: with the bitmaps
 *     extension present before and after, only its 24 bytes of data change
 *     (nb_bitmaps, directory size and offset), which sit in one sector
 *     unless they straddle a sector boundary;
 *   - otherwise (the first bitmap added or the last one removed: autoclear
 *     bit 0 in sector 0 and the extension further on both change, and
 *     later extensions and the backing file name shift), three steps,
 *     each flushed, use autoclear bit 0 as the commit bit:
 *
 *        old header                 (ext A, bit 0 = 1)
 *          | a. clear bit 0 only    (ext A, bit 0 = 0)   one sector
 *          | b. write the new ext   (ext B, bit 0 = 0)   may tear: harmless,
 *          |                                             bit 0 is clear
 *          | c. set bit 0 only      (ext B, bit 0 = 1)   one sector
 *        new header
 *
 *     a is skipped when bit 0 is already clear (no bitmaps before), c when
 *     there are no bitmaps after.  Between a and c the extension is not
 *     vouched for: QEMU and rawtrack ignore it (QEMU warns and, on its
 *     next writable open, drops it; the clusters leak).  So a crash there
 *     shows "no bitmaps": the old state for a first add, the new state for
 *     a last remove.  For the rare straddling layout it also shows no
 *     bitmaps, the one case where a crash loses bitmaps (never the
 *     image).  A torn step b with a backing file could move the backing
 *     file name; rawtrack images have none.
 *
 * QEMU's own header update is the same single cluster write; it relies on
 * the changed fields of the common case living in the first 4 KiB.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "bitmap.h"
#include "arith.h"

#define SECTOR 512u

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

/* Operations that free clusters also hold img->free_lock for writing
 * (taken before img->lock), so that no in-place guest data write can land
 * in a cluster freed and reused under it (guest-io.c). */
static void
lock_w (struct rawtrack_image *img)
{
  if (pthread_rwlock_wrlock (&img->free_lock) != 0)
    abort ();
  lock (img);
}

static void
unlock_w (struct rawtrack_image *img)
{
  unlock (img);
  if (pthread_rwlock_unlock (&img->free_lock) != 0)
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
  if (img->track)
    return set_error (EBUSY, "guest writes are being tracked through this "
                      "image handle; change bitmaps through a handle that "
                      "does not write guest data");
  return 0;
}

/* ---- directories ------------------------------------------------------ */

/* Deep copy of src with room for extra more entries. */
static int
dir_clone (const struct bitmap_dir *src, struct bitmap_dir *dst,
           uint32_t extra)
{
  uint32_t i;

  memset (dst, 0, sizeof *dst);
  dst->entries = rt_calloc ((size_t) src->nr + extra + 1,
                            sizeof *dst->entries);
  if (!dst->entries)
    return -1;
  for (i = 0; i < src->nr; i++) {
    dst->entries[i] = src->entries[i];
    dst->entries[i].name = rt_strdup (src->entries[i].name);
    if (!dst->entries[i].name) {
      dst->nr = i;
      bitmap_dir_free (dst);
      return -1;
    }
  }
  dst->nr = src->nr;
  return 0;
}

static void
dir_delete (struct bitmap_dir *dir, uint32_t i)
{
  free (dir->entries[i].name);
  memmove (&dir->entries[i], &dir->entries[i + 1],
           (dir->nr - i - 1) * sizeof dir->entries[0]);
  dir->nr--;
}

/* ---- the update transaction ------------------------------------------- */

int
bitmap_update_begin (struct rawtrack_image *img, struct bitmap_update *u,
                     uint32_t extra)
{
  memset (u, 0, sizeof *u);
  return dir_clone (&img->bitmaps, &u->dir, extra);
}

/* Release u; with give_back, free its new clusters first (only before the
 * header switch was attempted).  The current error is kept. */
void
bitmap_update_end (struct rawtrack_image *img, struct bitmap_update *u,
                   bool give_back)
{
  if (give_back && u->allocated.nr) {
    const char *msg = rawtrack_get_error ();
    int err = rawtrack_get_errno ();
    char saved[1024];

    snprintf (saved, sizeof saved, "%s", msg ? msg : "");
    cluster_list_free_all (img, &u->allocated);
    if (msg)
      rt_set_error (err, "%s", saved);
  }
  cluster_list_reset (&u->allocated);
  cluster_list_reset (&u->old);
  bitmap_dir_free (&u->dir);
}

struct ext_state {
  bool present;
  uint32_t nb;
  uint64_t size, offset;
  bool bit0;
};

static void
ext_get (const struct qcow2_header *h, struct ext_state *s)
{
  s->present = h->has_bitmaps_ext;
  s->nb = h->nb_bitmaps;
  s->size = h->bitmap_dir_size;
  s->offset = h->bitmap_dir_offset;
  s->bit0 = (h->autoclear & QCOW2_AUTOCLEAR_BITMAPS) != 0;
}

static void
ext_put (struct qcow2_header *h, const struct ext_state *s)
{
  h->has_bitmaps_ext = s->present;
  h->nb_bitmaps = s->nb;
  h->bitmap_dir_size = s->size;
  h->bitmap_dir_offset = s->offset;
  if (s->bit0)
    h->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
  else
    h->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
}

/* Write the header with extension state s, flushed.  On failure img->h is
 * left with s (the caller restores). */
static int
write_ext (struct rawtrack_image *img, const struct ext_state *s)
{
  ext_put (&img->h, s);
  return qcow2_write_header (img, true);
}

/* Do the serialized headers for states a and b differ only inside one
 * 512-byte sector?  -1 if a header does not fit cluster 0. */
static int
one_sector_change (struct rawtrack_image *img, const struct ext_state *a,
                   const struct ext_state *b)
{
  const size_t cs = img->cluster_size;
  uint8_t *ba = rt_calloc (1, cs), *bb = rt_calloc (1, cs);
  struct ext_state saved;
  size_t i, first = cs, last = 0;
  int r = -1;

  ext_get (&img->h, &saved);
  if (!ba || !bb)
    goto out;
  ext_put (&img->h, a);
  if (qcow2_header_serialize (&img->h, ba, cs) == -1)
    goto out;
  ext_put (&img->h, b);
  if (qcow2_header_serialize (&img->h, bb, cs) == -1) {
    rt_prefix_error ("the bitmaps extension does not fit in the header "
                     "cluster: ");
    goto out;
  }
  /* Whole blocks with memcmp first: the cluster can be 2 MiB, nearly
   * all of it the zero tail after the extensions. */
  for (i = 0; i < cs && memcmp (ba + i, bb + i, MIN (cs - i, 4096)) == 0;
       i += 4096)
    ;
  for (; i < cs && first == cs; i++)
    if (ba[i] != bb[i])
      first = i;
  if (first < cs) {
    for (i = cs; i > first + 1 &&
                 memcmp (ba + ROUND_DOWN (i - 1, 4096),
                         bb + ROUND_DOWN (i - 1, 4096),
                         i - ROUND_DOWN (i - 1, 4096)) == 0;
         i = ROUND_DOWN (i - 1, 4096))
      ;
    for (last = i - 1; last > first && ba[last] == bb[last]; last--)
      ;
  }
  r = first == cs || first / SECTOR == last / SECTOR;

 out:
  ext_put (&img->h, &saved);
  free (ba);
  free (bb);
  return r;
}

/* Switch the header from its current bitmaps extension to `to` (see the
 * top of the file).  On failure img->h is restored; what is on disk is
 * unknown (old, new, or the extension with bit 0 clear). */
static int
header_switch (struct rawtrack_image *img, const struct ext_state *to)
{
  struct ext_state from, step;
  int one;

  ext_get (&img->h, &from);
  one = one_sector_change (img, &from, to);
  if (one == -1)
    return -1;
  if (one) {
    if (write_ext (img, to) == -1)
      goto fail;
    return 0;
  }
  /* a. */
  if (from.bit0) {
    step = from;
    step.bit0 = false;
    if (write_ext (img, &step) == -1)
      goto fail;
  }
  /* b. */
  step = *to;
  step.bit0 = false;
  if (write_ext (img, &step) == -1)
    goto fail;
  /* c. */
  if (to->bit0 && write_ext (img, to) == -1)
    goto fail;
  return 0;

 fail:
  ext_put (&img->h, &from);
  return -1;
}

/* Publish u->dir: steps [1]..[5] of the top of the file.  Consumes u. */
int
bitmap_update_commit (struct rawtrack_image *img, struct bitmap_update *u)
{
  const uint64_t cs = img->cluster_size;
  struct ext_state to = { 0 };
  uint64_t dsize = bitmap_dir_size (&u->dir);
  uint8_t *buf = NULL;

  if (u->dir.nr > BME_MAX_BITMAPS) {
    set_error (ERANGE, "Maximum number of persistent bitmaps is already "
               "reached");
    goto abort;
  }
  if (dsize > BME_MAX_DIR_SIZE) {
    set_error (ERANGE, "Not enough space in the bitmap directory");
    goto abort;
  }

  /* [1] */
  if (u->dir.nr > 0) {
    uint64_t n = DIV_ROUND_UP (dsize, cs);
    int64_t off;

    buf = rt_calloc (n, cs);
    if (!buf)
      goto abort;
    bitmap_dir_serialize (&u->dir, buf);
    off = qcow2_alloc_clusters (img, n);
    if (off < 0)
      goto abort;
    if (cluster_list_add (&u->allocated, (uint64_t) off, n) == -1) {
      qcow2_free_clusters (img, (uint64_t) off, n);
      goto abort;
    }
    if (io_write (img->file, buf, n * cs, (uint64_t) off,
                  "bitmap directory") == -1)
      goto abort;
    to.present = true;
    to.nb = u->dir.nr;
    to.size = dsize;
    to.offset = (uint64_t) off;
    to.bit0 = true;
    free (buf);
    buf = NULL;
  }
  if (img->h.has_bitmaps_ext && img->h.nb_bitmaps > 0 &&
      cluster_list_add (&u->old, img->h.bitmap_dir_offset,
                        DIV_ROUND_UP (img->h.bitmap_dir_size, cs)) == -1)
    goto abort;

  /* [2] */
  if (io_flush (img->file, "image file") == -1)
    goto abort;

  /* [3] */
  if (header_switch (img, &to) == -1) {
    bitmap_update_end (img, u, false);
    return -1;
  }

  /* Switched: the new directory is the image's. */
  bitmap_dir_free (&img->bitmaps);
  img->bitmaps = u->dir;
  memset (&u->dir, 0, sizeof u->dir);
  img->bitmaps_trusted = img->bitmaps.nr > 0;

  /* [4], [5]: failures here only leak clusters; the operation is done. */
  if (cluster_list_free_all (img, &u->old) == -1 ||
      io_flush (img->file, "image file") == -1)
    rt_clear_error ();
  bitmap_update_end (img, u, false);
  return 0;

 abort:
  free (buf);
  bitmap_update_end (img, u, true);
  return -1;
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
  lock_w (img);
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
  lock_w (img);
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
  lock_w (img);
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
  lock_w (img);
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
  lock_w (img);
  r = do_set_auto (img, name, true);
  unlock_w (img);
  return r;
}

RAWTRACK_API int
rawtrack_bitmap_disable (struct rawtrack_image *img, const char *name)
{
  int r;

  rt_clear_error ();
  lock_w (img);
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
  if (pthread_rwlock_wrlock (&img->free_lock) != 0)
    abort ();
  lock2 (img, source_img);
  r = do_merge (img, source_name, target_name, source_img);
  unlock2 (img, source_img);
  if (pthread_rwlock_unlock (&img->free_lock) != 0)
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

  rt_clear_error ();
  bm = load_copy (img, name, 0, rawtrack_image_virtual_size (img));
  if (!bm)
    return -1;
  *bytes = bitmap_mem_dirty_bytes (bm);
  bitmap_mem_free (bm);
  return 0;
}
