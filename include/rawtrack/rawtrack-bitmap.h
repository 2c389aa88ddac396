/* rawtrack - changed-block tracking for disk images
 * Copyright (C) 2026 the rawtrack authors.  SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Persistent dirty bitmaps: managing them and reading their bits.
 * Included by rawtrack.h; do not include it directly.
 *
 * The bitmaps are QEMU's (qcow2 "bitmaps" extension): every operation here
 * leaves an image that QEMU opens and whose bitmaps it uses, and follows
 * QEMU's rules and limits:
 *  - names are 1..1023 bytes and unique; at most 65535 bitmaps, and a
 *    directory of at most 65535 * 1024 bytes;
 *  - granularity is a power of two from 512 B to 2 GiB, and the bitmap
 *    data (one bit per granule of the virtual disk) at most 512 MiB;
 *  - bitmaps can only be stored in qcow2 version 3 images;
 *  - a bitmap whose in_use flag is set on disk (its writer did not close
 *    the image cleanly) is inconsistent: it can only be removed; every
 *    other operation fails with EINVAL and a message that says so.
 *
 * Opening an image read-write for these operations does not set in_use on
 * any bitmap: librawtrack does not write guest data through such a handle,
 * so no bitmap can miss a change while it is open.
 *
 * Every change is crash-atomic: new data, tables and directory go to new
 * clusters, are flushed, and a single header update switches to them; the
 * old clusters are freed afterwards.  A crash or an I/O error leaves the
 * image with either the old or the new set of bitmaps (and at worst some
 * leaked clusters, which `qemu-img check -r leaks` reclaims).
 *
 * Errno: EROFS image opened read-only; ENOTSUP qcow2 v2 image; ENOENT no
 * bitmap of that name; EEXIST a bitmap of that name exists; EINVAL bad
 * name, granularity or range, inconsistent bitmap, bitmaps of different
 * sizes; ERANGE a limit above is exceeded; RAWTRACK_ECORRUPT bitmap
 * metadata is corrupt (the message names the bitmap and the offset).
 *
 * Locking: each call takes the image lock (both image locks for a merge
 * between two images).  The changing operations may run while other
 * threads write guest data through the same handle: they wait for the
 * writes in flight, hold new ones back, write the tracker's exact bits
 * and change the directory; the next write is tracked by the new set of
 * enabled bitmaps (a write completed before the call returned is in the
 * old set, one started after it in the new set).
 */
#ifndef RAWTRACK_BITMAP_H_PUBLIC
#define RAWTRACK_BITMAP_H_PUBLIC

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct rawtrack_image;

/* Errors.  Every function here that fails returns -1 with the thread's
 * message and errno set (rawtrack_get_error, rawtrack_get_errno):
 *   EINVAL   a bad argument (no name, a name too long or with a bad
 *            character, a granularity out of range), or an inconsistent
 *            (in-use) bitmap where a consistent one is needed
 *   ENOENT   no bitmap of that name
 *   EEXIST   add: a bitmap of that name exists
 *   EROFS    the image is open read-only (the changing operations)
 *   ERANGE   too many bitmaps, a directory or table too large, or (merge)
 *            images of different virtual sizes
 *   ENOTSUP  the image or a backend cannot do it (no flush method, a
 *            bitmap type other than dirty tracking)
 *   ECANCELED  extents: the callback returned a negative value
 *   RAWTRACK_ECORRUPT  corrupt bitmap metadata (the message names it)
 *   ENOMEM, EIO, ENOSPC  from memory allocation and the backends
 * The directory getters of rawtrack.h (rawtrack_image_bitmap_*) may run
 * while other threads do these operations on the same handle. */

/* Flags for rawtrack_bitmap_add. */
#define RAWTRACK_BITMAP_ADD_DISABLED 0x1u  /* create it disabled (not auto) */

/* Index of the bitmap called name in the rawtrack_image_bitmap_* list, or
 * -1 (ENOENT). */
RAWTRACK_API int rawtrack_bitmap_find (struct rawtrack_image *img,
                                       const char *name);

/* The granularity rawtrack_bitmap_add uses for 0: QEMU's default, the
 * cluster size clamped to [4 KiB, 64 KiB]. */
RAWTRACK_API uint64_t rawtrack_bitmap_default_granularity (struct rawtrack_image *img);

/* Add an empty (all clean) persistent bitmap, enabled (auto) unless
 * RAWTRACK_BITMAP_ADD_DISABLED.  granularity 0: the default.  It is
 * appended to the directory, as QEMU does.  Writes no bitmap data: the new
 * table holds only all-zero entries. */
RAWTRACK_API int rawtrack_bitmap_add (struct rawtrack_image *img,
                                      const char *name, uint64_t granularity,
                                      unsigned flags);

/* A checkpoint in one crash-atomic step: add the empty enabled bitmap
 * name (as rawtrack_bitmap_add with no flags) and disable (freeze) every
 * bitmap listed in freeze (NULL-terminated; NULL or empty: none) with the
 * same directory update, so that a crash leaves either the old set of
 * bitmaps or the new one - never a moment when no enabled bitmap records
 * a write, nor one with the new bitmap and the old one still enabled.
 * A backup then copies what the frozen bitmaps mark. */
RAWTRACK_API int rawtrack_bitmap_rotate (struct rawtrack_image *img,
                                         const char *name,
                                         uint64_t granularity,
                                         const char *const *freeze);

/* Remove a bitmap (also an inconsistent one) and free its clusters. */
RAWTRACK_API int rawtrack_bitmap_remove (struct rawtrack_image *img,
                                         const char *name);

/* Mark every bit clean. */
RAWTRACK_API int rawtrack_bitmap_clear (struct rawtrack_image *img,
                                        const char *name);

/* Set (enable) or clear (disable) the auto flag: whether writers must
 * record guest writes in the bitmap.  A no-op when already so. */
RAWTRACK_API int rawtrack_bitmap_enable (struct rawtrack_image *img,
                                         const char *name);
RAWTRACK_API int rawtrack_bitmap_disable (struct rawtrack_image *img,
                                          const char *name);

/* target |= source.  The source bitmap is read from source_img (NULL: img
 * itself; it may be opened read-only), whose virtual size must equal img's.
 * The granularities may differ: every dirty granule of the source dirties
 * every target granule it touches.  The target may be disabled. */
RAWTRACK_API int rawtrack_bitmap_merge (struct rawtrack_image *img,
                                        const char *source_name,
                                        const char *target_name,
                                        struct rawtrack_image *source_img);

/* Called for each extent, in order.  dirty is 1 or 0.  Return 0 to go on;
 * a positive value stops the walk (rawtrack_bitmap_extents returns 0), a
 * negative one stops it with an error (returns -1, ECANCELED). */
typedef int (*rawtrack_bitmap_extent_fn) (void *opaque, uint64_t start,
                                          uint64_t length, int dirty);

/* Walk [offset, offset + length) clipped to the virtual size as maximal
 * alternating clean and dirty extents that exactly cover it (the shape of
 * `nbdinfo --map=qemu:dirty-bitmap:NAME`).  A dirty granule that crosses
 * the range's ends is cut at them.  An empty range calls nothing. */
RAWTRACK_API int rawtrack_bitmap_extents (struct rawtrack_image *img,
                                          const char *name, uint64_t offset,
                                          uint64_t length,
                                          rawtrack_bitmap_extent_fn fn,
                                          void *opaque);

/* Dirty granules times the granularity (QEMU's "count"; the last granule
 * counts whole even when the disk ends inside it). */
RAWTRACK_API int rawtrack_bitmap_dirty_bytes (struct rawtrack_image *img,
                                              const char *name,
                                              uint64_t *bytes);

#ifdef __cplusplus
}
#endif

#endif /* RAWTRACK_BITMAP_H_PUBLIC */
