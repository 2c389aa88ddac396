/* rawtrack - the bitmap directory's update transaction.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the one way the bitmap directory on disk changes
 * (bitmap_update_begin / _commit / _end), used by the public bitmap
 * operations (bitmap-ops.c) and by the tracker when it stores bits
 * (track.c).  The directory format is bitmap-dir.c's; tables and data
 * bitmap-store.c's.
 *
 * Locking: the caller holds img->lock for the whole transaction (and
 * img->free_lock for writing when clusters are freed; guest-io.c).
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
 *   [6] truncate the file after its last cluster in use (qcow2_trim_tail):
 *       only clusters whose freeing is durable are given back
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
  if (give_back && u->allocated.len) {
    const char *msg = rawtrack_get_error ();
    int err = rawtrack_get_errno ();
    char saved[1024];

    snprintf (saved, sizeof saved, "%s", msg ? msg : "");
    if (cluster_list_free_all (img, &u->allocated) == 0 &&
        io_flush (img->file, "image file") == 0)
      qcow2_trim_tail (img);
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
  CLEANUP_FREE uint8_t *ba = rt_calloc (1, cs);
  CLEANUP_FREE uint8_t *bb = rt_calloc (1, cs);
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

/* Names of the current directory that rawtrack_image_bitmap_name handed
 * out may still be in a caller's hands: move them to img->retired_names
 * (freed at close) instead of freeing them with the directory.  Out of
 * memory, a name is leaked rather than freed under a reader. */
static void
retire_lent_names (struct rawtrack_image *img)
{
  uint32_t i;

  for (i = 0; i < img->bitmaps.nr; i++) {
    struct bitmap_entry *e = &img->bitmaps.entries[i];

    if (!e->lent)
      continue;
    if (name_list_append (&img->retired_names, e->name) == -1)
      rt_clear_error ();
    e->name = NULL;
  }
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
  retire_lent_names (img);
  bitmap_dir_free (&img->bitmaps);
  img->bitmaps = u->dir;
  memset (&u->dir, 0, sizeof u->dir);
  img->bitmaps_trusted = img->bitmaps.nr > 0;

  /* [4], [5]: failures here only leak clusters; the operation is done. */
  if (cluster_list_free_all (img, &u->old) == -1 ||
      io_flush (img->file, "image file") == -1 ||
      qcow2_trim_tail (img) == -1)
    rt_clear_error ();
  bitmap_update_end (img, u, false);
  return 0;

 abort:
  free (buf);
  bitmap_update_end (img, u, true);
  return -1;
}
