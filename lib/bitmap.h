/* rawtrack - persistent bitmap storage (internal API of lib/bitmap-store.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The bridge between a directory entry (struct bitmap_entry, bitmap-dir.c)
 * and the in-memory bits (struct bitmap_mem, bitmap-mem.c): reading and
 * validating a bitmap table, loading the bits it points to, and storing
 * bits into newly allocated clusters.
 *
 * Every function expects img->lock held (or the image private to the
 * caller).  Nothing here touches the header or the directory: switching
 * to what was stored is bitmap-update.c's job.
 */
#ifndef RAWTRACK_BITMAP_H
#define RAWTRACK_BITMAP_H

#include <stdint.h>
#include <stdbool.h>

#include "internal.h"
#include "bitmap-mem.h"
#include "vector.h"

/* A run of clusters in the image file: [offset, offset + n * cluster size). */
struct cluster_run {
  uint64_t offset;                 /* host byte offset, cluster-aligned */
  uint64_t n;                      /* clusters */
};

/* A growable list of runs (ptr[0..len-1]): clusters to free later, or to
 * give back when an update fails before it is published. */
DEFINE_VECTOR_TYPE (cluster_list, struct cluster_run, rt_realloc)

int cluster_list_add (struct cluster_list *l, uint64_t offset, uint64_t n);
/* Drop one reference from every run (qcow2_free_clusters); keeps going
 * after an error and returns -1 if any run failed.  Empties the list. */
int cluster_list_free_all (struct rawtrack_image *img, struct cluster_list *l);

/* Validate the raw (big-endian) bitmap table in buf (table_size entries)
 * and convert it to host order in out.  file_size bounds the data
 * offsets; name and table_offset only go into messages.  Rejected, as
 * RAWTRACK_ECORRUPT naming the bitmap, the table offset and the entry:
 * reserved bits (1-8, 56-63), a data offset that is not cluster-aligned
 * or starts at or past the end of the file, and the all-ones flag together
 * with an offset.  Pure: this is the function a bitmap-table fuzz target
 * calls. */
int bitmap_table_parse (const uint8_t *buf, uint32_t table_size,
                        uint32_t cluster_size, uint64_t file_size,
                        const char *name, uint64_t table_offset,
                        uint64_t *out);

/* Read and validate e's table (bounds of the table itself included).
 * *table is host-endian, e->table_size entries; caller frees. */
int bitmap_table_read (struct rawtrack_image *img,
                       const struct bitmap_entry *e, uint64_t **table);
/* The same for entries [first, first + n) only: (*table)[i] is entry
 * first + i (the bounds of the whole table are checked all the same). */
int bitmap_table_read_part (struct rawtrack_image *img,
                            const struct bitmap_entry *e, uint32_t first,
                            uint32_t n, uint64_t **table);

/* bitmap-owner.c: 0 when every cluster of dir's bitmap `self` (table and
 * data) has refcount 1 and is no other metadata's and no other bitmap's;
 * else -1, RAWTRACK_ECORRUPT with a message naming the overlap.  Asked
 * before bits are written in place or the clusters are freed. */
int bitmap_check_owned (struct rawtrack_image *img,
                        const struct bitmap_dir *dir, uint32_t self);
/* The same for n bitmaps of dir at once (one pass over the metadata). */
int bitmap_check_owned_set (struct rawtrack_image *img,
                            const struct bitmap_dir *dir,
                            const uint32_t *selves, uint32_t n);

/* bitmap-count.c: *bytes := the dirty bytes of consistent bitmap e, read
 * from its table and data clusters without loading it; each distinct
 * cluster and table is counted once per read-only handle.  Caller holds
 * img->lock. */
int bitmap_count_dirty (struct rawtrack_image *img,
                        const struct bitmap_entry *e, uint64_t *bytes);
void bitmap_count_cache_free (struct rawtrack_image *img);

/* Load the bits of a consistent bitmap (the in_use check is the caller's):
 * its table size must be the one the virtual size needs, every entry
 * valid; all-zero and all-ones entries are honoured.  *out: caller frees
 * with bitmap_mem_free. */
int bitmap_load (struct rawtrack_image *img, const struct bitmap_entry *e,
                 struct bitmap_mem **out);
/* The same, reading only the data clusters that hold the bits of guest
 * bytes [start, start + len) (len > 0); bits elsewhere read as clean. */
int bitmap_load_range (struct rawtrack_image *img,
                       const struct bitmap_entry *e, uint64_t start,
                       uint64_t len, struct bitmap_mem **out);

/* Store bm (sized for this image) into NEW clusters: one data cluster per
 * table entry whose bits are not all clean (all-clean entries are written
 * as 0 and get no cluster; the all-ones form is never written, as in
 * QEMU), then a new table (table_size is then ignored: bm's size sets
 * it).  With bm NULL, an all-clean table of table_size entries is written
 * (no data clusters).  Nothing is flushed.
 * Every cluster allocated is appended to allocated, so that the caller can
 * give them back if the update is abandoned before it is published.
 * Returns the table offset in *table_offset. */
int bitmap_store (struct rawtrack_image *img, const struct bitmap_mem *bm,
                  uint32_t table_size, uint64_t *table_offset,
                  struct cluster_list *allocated);

/* Append e's data clusters and table clusters to list, for freeing after
 * the switch.  Reads the table, never the data.  A table that does not
 * validate is an error for a consistent bitmap; for an in_use bitmap
 * nothing is listed and everything it points to leaks (QEMU's
 * free_bitmap_clusters gives up the same way): its table may be garbage. */
int bitmap_collect_clusters (struct rawtrack_image *img,
                             const struct bitmap_entry *e,
                             struct cluster_list *list);

/* ---- bitmap-ops.c ----------------------------------------------------- */
/* Replace all the bits of the consistent bitmap `name` with bm (which must
 * have the image's virtual size and the bitmap's granularity), crash-
 * atomically: new data, table and directory, one header switch, then the
 * old clusters are freed (the update transaction of bitmap-update.c).  The
 * caller holds img->lock, and img->free_lock for writing if guest writes
 * may run.  Used by tests and benchmarks to produce dirty bitmaps. */
int bitmap_replace_bits (struct rawtrack_image *img, const char *name,
                         const struct bitmap_mem *bm);

/* ---- bitmap-update.c -------------------------------------------------- */
/* The crash-atomic directory transaction (bitmap-update.c's opening
 * comment has the ordering).  begin clones the directory (with room for
 * `extra` more entries); the caller edits u->dir, records the clusters it
 * allocated in u->allocated and the ones to free after the switch in
 * u->old; commit writes the new directory, flushes, switches the header
 * and only then frees the old clusters, replacing img->bitmaps on success.
 * On failure before the switch the new clusters are given back.  end
 * releases u (give_back: free u->allocated first).  img->lock held. */
struct bitmap_update {
  struct bitmap_dir dir;           /* the new directory (owned) */
  struct cluster_list allocated;   /* new clusters: given back on abort */
  struct cluster_list old;         /* old clusters: freed after the switch */
};
int bitmap_update_begin (struct rawtrack_image *img, struct bitmap_update *u,
                         uint32_t extra);
int bitmap_update_commit (struct rawtrack_image *img, struct bitmap_update *u);
void bitmap_update_end (struct rawtrack_image *img, struct bitmap_update *u,
                        bool give_back);

#endif /* RAWTRACK_BITMAP_H */
