/* rawtrack - crash-safe dirty tracking of guest writes.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: keeping every enabled (auto), consistent persistent bitmap up to
 * date while guest writes happen, in one of three modes:
 *
 *   SAFE (default)  survives kill -9 and power loss
 *   PROCESS         survives kill -9 (bitmap updates are not synced)
 *   LAZY            QEMU's scheme: in_use while open, stored at close
 *
 * THE INVARIANT (SAFE and PROCESS modes)
 *   At every instant, the bits on stable storage (PROCESS: in the kernel)
 *   of every tracked bitmap cover every guest write whose data may have
 *   reached stable storage.  in_use is never set, so after any crash QEMU
 *   and rawtrack read every bitmap as consistent; it may over-report, never
 *   under-report.
 *
 * HOW (DRBD's activity log and md's write-intent bitmap, in qcow2 terms)
 *   1. Starting reads each tracked bitmap's table and nothing else: cost
 *      O(bitmap directory + tables), whatever the disk size.  A commit
 *      loads the 4 KiB blocks of the bit stream it is about to change
 *      (ensure_loaded), gives a cluster that has none a new one and
 *      publishes it before its bits count (need_clusters, publish_new:
 *      the order is written there), and updates bits in place.  All-zero
 *      clusters stay table entries 0, as QEMU writes them.
 *   2. The disk is cut into extents of 2^ext_bits bytes (1 MiB: small,
 *      so that a scattered write marks little).  An extent is HOT when, on disk, every bit covering it is set in every
 *      tracked bitmap.  A write into a hot extent, or into granules whose
 *      bits are already set on disk in every bitmap (`summary`), passes
 *      with no I/O at all.
 *   3. Any other write queues its extents and waits.  One waiter becomes
 *      the leader of a GROUP COMMIT: it sets the bits of every queued
 *      extent in each bitmap's disk image, writes those sectors (SAFE: all
 *      bitmaps' sectors as one batch, submitted together - write_sectors),
 *      syncs the image file once (SAFE), then marks the extents hot and
 *      wakes every waiter.  The cost is one sync per extent, shared by all
 *      writers, and less: while the hot set has room, the cold extents
 *      whose bits share a sector with a queued one's (16 at 64 KiB
 *      granularity) join the commit for free (queue_riders).
 *      A sequential stream (a write whose preceding granule was just
 *      written, per delta) also makes the next extents hot in the same
 *      commit, each with its riders (stream_lookahead, queue_stream).
 *      Better still, a stream running through hot extents PREFETCHES:
 *      once it has filled a quarter of an extent, the cold extents among
 *      the next 48 (and their riders) are queued and a committer thread
 *      commits them while the stream goes on (prefetch), so a stream
 *      waits for its first commit only.  Extents a stream filled cool
 *      with no I/O (their exact bits are the all-ones on disk).
 *   4. At most max_hot extents are hot (the over-report bound: max_hot x
 *      extent size per bitmap, 64 MiB).  To make room the leader COOLS the
 *      oldest hot extents in the same commit: it replaces their all-ones
 *      by the exact bits, written before the new all-ones (under kill -9
 *      the kernel never holds more than max_hot extents' all-ones).  A
 *      cooled sector is a superset of the truth whichever version of it
 *      survives a crash, so cooling needs no sync of its own.
 *      IDLE COOLING: the committer thread also cools every hot extent no
 *      write touched for idle_ms (1 s; idle_sweep), so the over-report
 *      decays to nothing once writes stop.
 *   5. Exact bits are kept in memory, sparse (bitmap-mem.c): memory
 *      follows what was written.  Every write sets its granules in ONE
 *      shared `delta` bitmap (finest granularity, atomic word operations)
 *      before its data is issued, whatever the number of bitmaps; the
 *      delta is folded into ONE `written` bitmap when an extent cools and
 *      at close.  A bitmap's exact bits are orig | written | delta at its
 *      granularity, orig being its bits at open, kept for the blocks
 *      loaded.  A write that passes without the lock
 *      re-checks a per-extent sequence number that is odd while the
 *      extent is being cooled (see fast_path), so every write that passed
 *      is in the cooling snapshot.
 *   6. At clean close every hot extent is cooled and synced: the on-disk
 *      bitmaps are exact.
 *   7. A bitmap coarser than an extent has bits that cover several
 *      extents.  Such a bit stays set while any extent under it is hot or
 *      pending, and WHEN IT IS CLEARED ON DISK THE SUMMARY OVER THE WHOLE
 *      BIT IS WITHDRAWN FIRST, then the delta under the whole bit folded
 *      (withdraw_coarse): no neighbour may pass the fast path on a
 *      summary that was true only while the bit was held.
 *
 *   state of an extent          function
 *     COLD --(write waits)--> PENDING       track_before_write
 *     PENDING --(bits synced)--> HOT        commit (leader)
 *     HOT --(oldest, room needed)--> COLD   commit: cool_prepare
 *     HOT --(idle for idle_ms)--> COLD      committer: idle_sweep, commit
 *
 * BOOKKEEPING AND OTHER WRITERS
 *   The hot list is kept in the tracking log (track-log.c: a private
 *   header extension "RTRC" inside cluster 0, rewritten in place by each
 *   commit) and autoclear bit 63 is set while rawtrack tracks.  QEMU keeps unknown extensions but clears
 *   unknown autoclear bits on any writable open, so a clear bit 63 means
 *   another program wrote the image since: the log is then ignored
 *   (check reports the over-report bound only when it can trust it).
 *
 * LOCKING
 *   Writes into hot or already-dirty extents take no lock (fast_path):
 *   they use atomic operations on delta, summary, est, seq and ref only,
 *   and write no shared word but delta's and ref's (no cache line that
 *   every writer bounces).
 *   track->lock protects everything else in struct track, and serialises
 *   every modification of est, seq and summary; the disk images are
 *   touched only by the commit leader (track->committing): a waiting
 *   writer or the committer thread (SAFE and PROCESS modes; it sleeps on
 *   track->kick and is joined by track_stop before the final cooling).
 *   Lock order: track->lock may be held while taking img->lock, never the
 *   reverse.  The commit does its I/O with track->lock dropped.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>
#include <time.h>

#include "internal.h"
#include "bitmap.h"
#include "byteorder.h"
#include "arith.h"
#include "vector.h"

enum { MODE_SAFE, MODE_PROCESS, MODE_LAZY };
enum { EXT_COLD = 0, EXT_PENDING = 1, EXT_HOT = 2 };

#define DEFAULT_EXT_BITS    20                   /* 1 MiB extents */
#define DEFAULT_MAX_HOT     64
#define SEQ_AHEAD           7                    /* see stream_lookahead() */
#define PREFETCH            48                   /* see prefetch() */
#define STREAM_MIN          (64u * 1024)         /* see stream_lookahead() */
#define WR_BLOCK            4096                 /* see write_sectors() */
#define DEFAULT_IDLE_MS     1000                 /* see sweep_idle() */
#define IDLE_TICKS          4                    /* sweeps per idle period */

struct range { uint64_t lo, hi; };
DEFINE_VECTOR_TYPE (range_list, struct range, rt_realloc)
DEFINE_VECTOR_TYPE (extent_list, uint64_t, rt_realloc)

struct newc { uint32_t index; bool fresh; };

struct tbm {                       /* one tracked bitmap */
  uint32_t dir_index;
  uint32_t gran_bits;
  uint64_t nbits;
  uint64_t *table;                 /* its bitmap table, host order: what the
                                    * tracker allocated (published or in
                                    * newc) */
  uint32_t table_size;
  uint64_t table_offset;
  uint64_t disk_len;               /* table_size * cluster size */
  uint64_t *loaded;                /* bit per stream block of t->lb bytes:
                                    * orig and disk hold its bits */
  struct bitmap_mem *orig;         /* the bits at open (loaded blocks) */
  struct bitmap_mem *disk;         /* what the disk holds (loaded blocks) */
  struct range_list wr;            /* stream bytes to write in this commit */
  struct newc *newc;               /* clusters allocated, not yet published */
  uint32_t nr_newc, cap_newc;
};

struct track {
  int mode;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct tbm *bm;
  uint32_t nr;
  uint64_t lb;                     /* stream block: min (4096, cluster) */
  struct bitmap_mem *written;      /* every write since open, folded */
  struct bitmap_mem *delta;        /* writes not yet folded into written */
  struct bitmap_mem *summary;      /* set: dirty on disk in every bitmap */
  uint32_t ext_bits;
  uint64_t nr_ext;
  uint8_t *est;                    /* EXT_* per extent (atomic access) */
  uint32_t *seq;                   /* per extent: odd while it is cooled */
  uint8_t *ref;                    /* referenced since last sweep */
  uint8_t *quiet;                  /* per extent: idle sweeps while hot */
  uint64_t *hot;                   /* hot extents, oldest first */
  uint32_t nr_hot, max_hot;
  struct extent_list pend;         /* extents queued for the next commit */
  struct extent_list stale;        /* cold, but all-ones may be on disk */
  struct rawtrack_io_vec *vec;     /* every bitmap's wr, for write_sectors */
  size_t cap_vec;
  uint8_t *scratch;                /* the bytes vec points at */
  size_t cap_scratch;
  bool committing;
  uint64_t commits;                /* completed commit rounds */
  int last_err;                    /* errno of the last failed commit */
  uint64_t commit_failed_at;       /* commits value when it failed */
  uint64_t log_off;                /* byte offset of the log in cluster 0
                                    * (track-log.c) */
  /* Prefetch (SAFE and PROCESS modes): the committer thread runs group
   * commits that no writer waits for. */
  struct rawtrack_image *img;
  uint32_t ahead;                  /* extents made hot ahead; 0: off */
  uint64_t span;                   /* extents whose bits share one sector
                                    * of every bitmap (see covered) */
  bool coarse;                     /* a bitmap's granule spans several
                                    * extents (see withdraw_coarse) */
  bool has_committer, stop;
  pthread_t committer;
  pthread_cond_t kick;             /* wakes the committer */
  /* Idle cooling (committer thread): a hot extent no write referenced
   * for idle_ms is cooled, so the over-report decays to nothing. */
  uint32_t idle_ms;                /* 0: off */
  uint64_t idle_cooled;            /* extents cooled for idleness */
};

/* ---- small helpers ---------------------------------------------------- */

/* Guest range of extent e, clipped to the disk. */
static void
extent_range (const struct rawtrack_image *img, const struct track *t,
              uint64_t e, uint64_t *start, uint64_t *end)
{
  *start = e << t->ext_bits;
  *end = MIN ((e + 1) << t->ext_bits, img->virtual_size);
}

/* Bits of bitmap b that cover guest [start, end). */
static void
bit_range (const struct tbm *b, uint64_t nbits, uint64_t start, uint64_t end,
           uint64_t *lo, uint64_t *hi)
{
  *lo = start >> b->gran_bits;
  *hi = MIN (DIV_ROUND_UP (end, 1ull << b->gran_bits), nbits);
}

static int
add_write (struct tbm *b, uint64_t byte_lo, uint64_t byte_hi)
{
  struct range r = { ROUND_DOWN (byte_lo, 512),
                     MIN (ROUND_UP (byte_hi, 512), b->disk_len) };

  if (b->wr.len && r.lo <= b->wr.ptr[b->wr.len - 1].hi &&
      r.hi >= b->wr.ptr[b->wr.len - 1].lo) {
    b->wr.ptr[b->wr.len - 1].lo = MIN (b->wr.ptr[b->wr.len - 1].lo, r.lo);
    b->wr.ptr[b->wr.len - 1].hi = MAX (b->wr.ptr[b->wr.len - 1].hi, r.hi);
    return 0;
  }
  return range_list_append (&b->wr, r);
}

/* ---- the bitmaps' clusters, loaded and allocated where touched --------- *
 * Nothing of a bitmap is read when tracking starts but its table.  A
 * commit that sets or cools bits first loads the stream blocks holding
 * them (ensure_loaded: orig and disk get the bits on disk, which are the
 * bits at open, as nothing else wrote them since), and gives a cluster
 * that has none (table entry 0 or all-ones) a new one (need_cluster).
 * A new cluster is published by the commit that needs it, in this order
 * (publish_new):
 *   1. its refcount (qcow2_alloc_clusters) and its whole contents written;
 *   2. flush (SAFE);
 *   3. the table sector holding its entry rewritten in place;
 *   4. the commit's sector writes, log, flush as before.
 * So a table entry never points at a cluster that is not yet written and
 * counted; a crash before 3 leaks the cluster at worst.  A commit that
 * fails keeps its new clusters in newc, and the next commit publishes
 * them.  Clusters are never freed while tracking. */

static bool
block_loaded (const struct tbm *b, uint64_t k)
{
  return (b->loaded[k >> 6] >> (k & 63)) & 1;
}

static void
block_mark (struct tbm *b, uint64_t k)
{
  b->loaded[k >> 6] |= 1ull << (k & 63);
}

/* Give stream block k the bits on disk.  track->lock held. */
static int
load_block (struct rawtrack_image *img, struct track *t, struct tbm *b,
            uint64_t k, uint8_t *buf)
{
  const uint64_t cs = img->cluster_size;
  uint64_t j = k * t->lb, entry = b->table[j / cs];
  uint64_t off = entry & BME_TABLE_ENTRY_OFFSET_MASK;

  if (off) {
    if (io_read (img->file, buf, t->lb, off + j % cs, "bitmap data") == -1)
      return -1;
    bitmap_mem_load (b->orig, j, t->lb, buf);
    bitmap_mem_load (b->disk, j, t->lb, buf);
  }
  else if (entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) {
    bitmap_mem_fill (b->orig, j, t->lb, true);
    bitmap_mem_fill (b->disk, j, t->lb, true);
  }
  block_mark (b, k);
  return 0;
}

/* Load every stream block of bitmap b meeting stream bytes [lo, hi). */
static int
ensure_loaded (struct rawtrack_image *img, struct track *t, struct tbm *b,
               uint64_t lo, uint64_t hi)
{
  uint8_t buf[4096];
  uint64_t k;

  for (k = lo / t->lb; k * t->lb < hi; k++)
    if (!block_loaded (b, k) && load_block (img, t, b, k, buf) == -1) {
      rt_prefix_error ("loading bitmap bits for tracking: ");
      return -1;
    }
  return 0;
}

/* Give every cluster of b meeting stream bytes [lo, hi) a data cluster.
 * track->lock held; takes img->lock. */
static int
need_clusters (struct rawtrack_image *img, struct track *t, struct tbm *b,
               uint64_t lo, uint64_t hi)
{
  const uint64_t cs = img->cluster_size;
  uint64_t ci;

  for (ci = lo / cs; ci * cs < hi; ci++) {
    int64_t fsize, off;
    bool fresh;

    if (b->table[ci] & BME_TABLE_ENTRY_OFFSET_MASK)
      continue;
    /* Its bits are 0 or 1 as the entry says: load without I/O. */
    if (ensure_loaded (img, t, b, ci * cs, (ci + 1) * cs) == -1)
      return -1;
    if (b->nr_newc == b->cap_newc) {
      uint32_t cap = b->cap_newc ? b->cap_newc * 2 : 8;
      struct newc *n = rt_realloc (b->newc, cap * sizeof *n);

      if (!n)
        return -1;
      b->newc = n;
      b->cap_newc = cap;
    }
    pthread_mutex_lock (&img->lock);
    fsize = rawtrack_io_get_size (img->file);
    off = fsize < 0 ? -1 : qcow2_alloc_clusters (img, 1);
    pthread_mutex_unlock (&img->lock);
    if (off < 0) {
      if (fsize < 0)
        set_error (errno ? errno : EIO, "reading the image file size");
      rt_prefix_error ("allocating a bitmap cluster: ");
      return -1;
    }
    /* Past the old end of the file the cluster reads as zeros already:
     * only its non-zero blocks need writing (publish_new). */
    fresh = off >= fsize;
    b->table[ci] = (uint64_t) off;
    b->newc[b->nr_newc++] = (struct newc) { (uint32_t) ci, fresh };
  }
  return 0;
}

/* Steps 1 to 3 above for every new cluster of every bitmap.  Only the
 * commit leader runs it; the clusters and tables are the tracker's. */
static int
publish_new (struct rawtrack_image *img, struct track *t)
{
  const uint64_t cs = img->cluster_size;
  uint64_t wb = MIN ((uint64_t) WR_BLOCK, cs);
  uint8_t *buf = NULL, sector[512];
  uint32_t k, i;
  bool any = false;
  int r = -1;

  for (k = 0; k < t->nr; k++)
    any |= t->bm[k].nr_newc > 0;
  if (!any)
    return 0;
  buf = rt_malloc (wb);
  if (!buf)
    return -1;
  for (k = 0; k < t->nr; k++) {
    struct tbm *b = &t->bm[k];
    uint64_t g = 1ull << b->gran_bits;

    for (i = 0; i < b->nr_newc; i++) {
      uint64_t ci = b->newc[i].index, off = b->table[ci], j;
      bool zeroed = b->newc[i].fresh;

      /* A reused cluster (freed earlier, inside the file) is zeroed in
       * one call (fallocate where the file system can), so that here too
       * only the blocks holding a set bit are written: with 2 MiB
       * clusters that is one block instead of 512. */
      if (!zeroed && io_op_zero (img->file, cs, off, 0) == 0)
        zeroed = true;
      for (j = 0; j < cs; j += wb) {
        uint64_t sj = ci * cs + j;       /* stream byte */
        uint64_t gs = sj * 8 * g, ge = MIN ((sj + wb) * 8 * g,
                                            img->virtual_size);

        /* The last block always: the file covers the whole cluster. */
        if (zeroed && j + wb < cs &&
            (gs >= ge || bitmap_mem_next_dirty (b->disk, gs, ge) < 0))
          continue;
        bitmap_mem_store (b->disk, sj, wb, buf);
        if (io_write (img->file, buf, wb, off + j, "bitmap data") == -1)
          goto out;
      }
    }
  }
  if (t->mode == MODE_SAFE && io_flush (img->file, "image file") == -1)
    goto out;
  for (k = 0; k < t->nr; k++) {
    struct tbm *b = &t->bm[k];

    for (i = 0; i < b->nr_newc; i++) {
      uint64_t first = (uint64_t) b->newc[i].index / 64 * 64, e;

      memset (sector, 0, sizeof sector);
      for (e = first; e < first + 64 && e < b->table_size; e++)
        be64_store (sector + (e - first) * 8, b->table[e]);
      if (io_write (img->file, sector, sizeof sector,
                    b->table_offset + first * 8, "bitmap table") == -1)
        goto out;
    }
  }
  r = 0;
 out:
  free (buf);
  return r;
}

/* After a commit's final flush: the new clusters are published. */
static void
published (struct track *t)
{
  uint32_t k;

  for (k = 0; k < t->nr; k++)
    t->bm[k].nr_newc = 0;
}

/* ---- start ------------------------------------------------------------ */

/* Read bitmap dir_index's table for tracking (its bits stay on disk).
 * Its clusters were found its own (track_start).  img->lock held. */
static int
tbm_open (struct rawtrack_image *img, struct tbm *b, uint32_t dir_index)
{
  const struct bitmap_entry *e = &img->bitmaps.entries[dir_index];
  uint64_t need = bitmap_table_size_for (img->virtual_size,
                                         e->granularity_bits,
                                         img->cluster_size);

  if (e->table_size != need)
    return set_corrupt ("bitmap '%s': its table has %" PRIu32 " entries, "
                        "the virtual size needs %" PRIu64, e->name,
                        e->table_size, need);
  b->dir_index = dir_index;
  b->gran_bits = e->granularity_bits;
  b->table_size = e->table_size;
  b->table_offset = e->table_offset;
  b->disk_len = (uint64_t) e->table_size * img->cluster_size;
  if (bitmap_table_read (img, e, &b->table) == -1)
    return -1;
  b->orig = bitmap_mem_new (img->virtual_size, 1u << e->granularity_bits);
  b->disk = bitmap_mem_new (img->virtual_size, 1u << e->granularity_bits);
  if (!b->orig || !b->disk)
    return -1;
  b->nbits = bitmap_mem_nbits (b->orig);
  /* One bit per stream block of min (4 KiB, cluster) bytes. */
  b->loaded = rt_calloc (DIV_ROUND_UP (DIV_ROUND_UP (b->disk_len,
                                                     MIN (4096u,
                                                          img->cluster_size)),
                                       64) + 1, sizeof *b->loaded);
  return b->loaded ? 0 : -1;
}

static void
track_free (struct track *t)
{
  uint32_t i;

  if (!t)
    return;
  for (i = 0; i < t->nr; i++) {
    bitmap_mem_free (t->bm[i].orig);
    bitmap_mem_free (t->bm[i].disk);
    free (t->bm[i].table);
    free (t->bm[i].loaded);
    range_list_reset (&t->bm[i].wr);
    free (t->bm[i].newc);
  }
  free (t->bm);
  bitmap_mem_free (t->written);
  bitmap_mem_free (t->delta);
  bitmap_mem_free (t->summary);
  free (t->est);
  free (t->seq);
  free (t->ref);
  free (t->quiet);
  free (t->hot);
  extent_list_reset (&t->pend);
  extent_list_reset (&t->stale);
  free (t->vec);
  free (t->scratch);
  pthread_mutex_destroy (&t->lock);
  pthread_cond_destroy (&t->cond);
  pthread_cond_destroy (&t->kick);
  free (t);
}

/* Set in_use on the tracked bitmaps (LAZY mode start), through the
 * bitmap directory transaction.  img->lock held. */
static int
set_in_use (struct rawtrack_image *img, struct track *t)
{
  struct bitmap_update u;
  uint32_t i;

  if (bitmap_update_begin (img, &u, 0) == -1)
    return -1;
  for (i = 0; i < t->nr; i++)
    u.dir.entries[t->bm[i].dir_index].flags |= BME_FLAG_IN_USE;
  return bitmap_update_commit (img, &u);
}

static void *committer (void *arg);

int
track_start (struct rawtrack_image *img)
{
  struct track *t;
  uint32_t i, min_gran = 31, *sel = NULL, nsel = 0;
  int r = -1;

  /* Crash-safe tracking rests on syncing the image file: a backend that
   * cannot flush cannot keep the promise, so refuse rather than pretend
   * (the bits would be "durable" only in a cache nobody can empty). */
  if (!(img->flags & (RAWTRACK_OPEN_TRACK_LAZY | RAWTRACK_OPEN_TRACK_PROCESS))
      && !io_can_flush (img->file))
    return set_error (ENOTSUP, "crash-safe tracking (the default mode) needs "
                      "an image file backend that can flush, and the '%s' "
                      "backend has no flush method: the bitmaps could not "
                      "be made durable before the data they cover",
                      img->file->ops->name ? img->file->ops->name : "I/O");

  t = rt_calloc (1, sizeof *t);
  if (!t)
    return -1;
  pthread_mutex_init (&t->lock, NULL);
  pthread_cond_init (&t->cond, NULL);
  {
    pthread_condattr_t ca;

    /* The committer's idle sweeps wait on kick with a monotonic timeout. */
    pthread_condattr_init (&ca);
    pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
    pthread_cond_init (&t->kick, &ca);
    pthread_condattr_destroy (&ca);
  }
  t->mode = (img->flags & RAWTRACK_OPEN_TRACK_LAZY) ? MODE_LAZY
            : (img->flags & RAWTRACK_OPEN_TRACK_PROCESS) ? MODE_PROCESS
            : MODE_SAFE;
  t->ext_bits = DEFAULT_EXT_BITS;
  t->max_hot = DEFAULT_MAX_HOT;
  if (getenv ("RAWTRACK_EXTENT_BITS")) {      /* tests and benchmarks */
    int v = atoi (getenv ("RAWTRACK_EXTENT_BITS"));
    if (v >= 16 && v <= 34)
      t->ext_bits = (uint32_t) v;
  }
  if (getenv ("RAWTRACK_MAX_HOT")) {
    int v = atoi (getenv ("RAWTRACK_MAX_HOT"));
    if (v >= 2 && v <= TRACK_LOG_MAX)
      t->max_hot = (uint32_t) v;
  }
  /* Three quarters of the hot set at most, so that prefetching leaves
   * the extents a stream has just written hot (the oldest are cooled
   * first); as many as that, so that a background commit has the time
   * of ahead / 2 MiB of streaming to finish before the stream needs it. */
  t->ahead = MIN (PREFETCH, t->max_hot * 3 / 4);
  if (getenv ("RAWTRACK_PREFETCH")) {         /* 0: off */
    int v = atoi (getenv ("RAWTRACK_PREFETCH"));
    if (v >= 0 && (uint32_t) v <= t->max_hot * 3 / 4)
      t->ahead = (uint32_t) v;
  }
  if (t->ahead < 2)
    t->ahead = 0;
  t->idle_ms = DEFAULT_IDLE_MS;
  if (getenv ("RAWTRACK_IDLE_MS")) {          /* 0: no idle cooling */
    int v = atoi (getenv ("RAWTRACK_IDLE_MS"));
    if (v >= 0 && v <= 3600000)
      t->idle_ms = (uint32_t) v;
  }
  t->img = img;

  pthread_mutex_lock (&img->lock);
  if (img->bitmaps.nr && img->h.version < 3) {
    set_error (ENOTSUP, "bitmaps in a v2 image cannot be tracked");
    goto out;
  }
  t->bm = rt_calloc (img->bitmaps.nr ? img->bitmaps.nr : 1, sizeof *t->bm);
  sel = rt_calloc (img->bitmaps.nr ? img->bitmaps.nr : 1, sizeof *sel);
  if (!t->bm || !sel)
    goto out;
  /* Disabled bitmaps need no updates; in-use ones are inconsistent
   * already (QEMU does not track them either). */
  for (i = 0; i < img->bitmaps.nr; i++)
    if ((img->bitmaps.entries[i].flags & BME_FLAG_AUTO) &&
        !(img->bitmaps.entries[i].flags & BME_FLAG_IN_USE))
      sel[nsel++] = i;
  /* Bits and table entries are rewritten in place at every commit,
   * cooling and close: the clusters must be each bitmap's alone (one
   * pass over the metadata for all of them). */
  if (nsel && t->mode != MODE_LAZY &&
      bitmap_check_owned_set (img, &img->bitmaps, sel, nsel) == -1) {
    rt_prefix_error ("tracking: ");
    goto out;
  }
  for (i = 0; i < nsel; i++) {
    struct bitmap_entry *e = &img->bitmaps.entries[sel[i]];
    struct tbm *b = &t->bm[t->nr];

    t->nr++;                       /* (so that track_free frees it) */
    if (tbm_open (img, b, sel[i]) == -1) {
      rt_prefix_error ("bitmap '%s' for tracking: ", e->name);
      goto out;
    }
    if (b->gran_bits < min_gran)
      min_gran = b->gran_bits;
    if (b->gran_bits > t->ext_bits)
      t->coarse = true;
  }
  if (t->nr == 0) {
    r = 0;
    goto out;
  }

  t->lb = MIN (4096u, img->cluster_size);
  t->delta = bitmap_mem_new (img->virtual_size, 1u << min_gran);
  t->written = bitmap_mem_new (img->virtual_size, 1u << min_gran);
  if (!t->delta || !t->written)
    goto out;
  /* A 512-byte sector holds 4096 bits of the finest bitmap. */
  t->span = MAX ((4096ull << min_gran) >> t->ext_bits, 1);

  if (t->mode == MODE_LAZY) {
    if (set_in_use (img, t) == -1)
      goto out;
    r = 0;
    goto out;
  }

  /* Small clusters: the log gets what cluster 0 has left (track-log.c),
   * and the hot set shrinks with it (a tighter bound, more commits). */
  {
    size_t other;
    int64_t room = track_log_room (&img->h, img->cluster_size, false,
                                   &other);

    if (room == -1)
      goto out;
    if (room < TRACK_LOG_MIN) {
      track_log_no_room (&img->h, img->cluster_size, other,
                         "cannot track writes");
      goto out;
    }
    if (room < t->max_hot) {
      t->max_hot = (uint32_t) room;
      t->ahead = MIN (t->ahead, t->max_hot * 3 / 4);
      if (t->ahead < 2)
        t->ahead = 0;
    }
  }

  t->summary = bitmap_mem_new (img->virtual_size, 1u << min_gran);
  t->nr_ext = DIV_ROUND_UP (img->virtual_size, 1ull << t->ext_bits);
  t->est = rt_calloc (t->nr_ext, 1);
  t->seq = rt_calloc (t->nr_ext, sizeof *t->seq);
  t->ref = rt_calloc (t->nr_ext, 1);
  t->quiet = rt_calloc (t->nr_ext, 1);
  t->hot = rt_calloc (t->max_hot, sizeof *t->hot);
  if (!t->summary || !t->est || !t->seq || !t->ref || !t->quiet || !t->hot)
    goto out;

  /* summary starts clean: a write to bits that are dirty on disk already
   * commits once per extent (nothing is read to know better). */
  if (track_log_install (img, t->max_hot, t->ext_bits, &t->log_off) == -1)
    goto out;
  r = 0;

 out:
  pthread_mutex_unlock (&img->lock);
  free (sel);
  if (r == -1) {
    track_free (t);
    return -1;
  }
  /* Without the thread prefetching and idle cooling are off; tracking
   * works the same, with the max_hot bound alone. */
  if (t->mode != MODE_LAZY && t->nr > 0 && (t->ahead || t->idle_ms))
    t->has_committer = pthread_create (&t->committer, NULL, committer,
                                       t) == 0;
  if (!t->has_committer) {
    t->ahead = 0;
    t->idle_ms = 0;
  }
  __atomic_store_n (&img->track, t, __ATOMIC_RELEASE);
  return 0;
}

/* ---- commit ----------------------------------------------------------- */

static void
fold_run (void *opaque, uint64_t start, uint64_t len)
{
  struct track *t = opaque;

  bitmap_mem_set (t->written, start, len);
}

/* Move delta's bits over guest [start, end) into written (one record for
 * every bitmap: the exact bits of bitmap b are orig | written | delta at
 * b's granularity).  Writers may
 * be setting delta bits in that range at this very moment (fast_path sets
 * them before it checks the extent's state): each word is taken and
 * cleared in one atomic step, so a concurrent bit is either folded now or
 * still in delta afterwards, never lost between a read and a clear. */
static void
fold_delta (struct track *t, uint64_t start, uint64_t end)
{
  if (end > start)
    bitmap_mem_each_dirty_atomic (t->delta, start, end - start, true,
                                  fold_run, t);
}

static uint8_t
est_get (const struct track *t, uint64_t e)
{
  return __atomic_load_n (&t->est[e], __ATOMIC_ACQUIRE);
}

static void
est_set (struct track *t, uint64_t e, uint8_t v)
{
  __atomic_store_n (&t->est[e], v, __ATOMIC_SEQ_CST);
}

static bool
extent_busy (const struct track *t, uint64_t e)
{
  return e < t->nr_ext && est_get (t, e) != EXT_COLD;
}

/* Does an extent other than v among those [bs, be) overlaps stay hot or
 * pending (so a bit covering all of [bs, be) must stay set)? */
static bool
neighbour_busy (const struct track *t, uint64_t bs, uint64_t be, uint64_t v)
{
  uint64_t e;

  for (e = bs >> t->ext_bits; e <= (be - 1) >> t->ext_bits; e++)
    if (e != v && extent_busy (t, e))
      return true;
  return false;
}

/* BITS COARSER THAN AN EXTENT (granularity above 2^ext_bits, e.g. a 4 MiB
 * or 64 MiB bitmap over 1 MiB extents).  Cooling extent v decides the one
 * bit that covers v and its neighbours too.  While any of them is hot or
 * pending the bit stays set; once it is cleared on disk, no neighbour may
 * still pass the fast path on a summary that was true while the bit was
 * set (a neighbour cooled earlier keeps its summary, since the bit stayed
 * set then): a write there would go through with its bit clear on disk,
 * lost after a crash and after a clean close alike.  So, for every such
 * bit that may be cleared, the summary over the WHOLE bit is withdrawn
 * first, then the delta over the whole bit is folded (the neighbours are
 * not under v's sequence number).  A neighbour's fast-path writer sets
 * its delta bits, fences, then reads the summary; this side clears the
 * summary, fences, then takes the delta: either the writer sees the
 * summary cleared and takes the locked path, or its bits are in the fold
 * and keep the bit set (cool_prepare reads written after this).
 * track->lock held. */
static void
withdraw_coarse (struct rawtrack_image *img, struct track *t, uint64_t v,
                 uint64_t start)
{
  uint64_t ws = UINT64_MAX, we = 0;
  uint32_t i;

  for (i = 0; i < t->nr; i++) {
    const struct tbm *b = &t->bm[i];
    uint64_t bs, be;

    if (b->gran_bits <= t->ext_bits)
      continue;
    bs = ROUND_DOWN (start, 1ull << b->gran_bits);
    be = MIN (bs + (1ull << b->gran_bits), img->virtual_size);
    /* (orig is what the disk held at open where its block is loaded, and
     * reads clean elsewhere: withdrawing then is merely cautious.) */
    if (bitmap_mem_get (b->orig, bs) ||
        bitmap_mem_next_dirty (t->written, bs, be) >= 0 ||
        neighbour_busy (t, bs, be, v))
      continue;
    bitmap_mem_clear_atomic (t->summary, bs, be - bs);
    ws = MIN (ws, bs);
    we = MAX (we, be);
  }
  if (we > ws) {
    __atomic_thread_fence (__ATOMIC_SEQ_CST);
    fold_delta (t, ws, we);
  }
}

/* Replace extent v's all-ones with exact bits (track->lock held).  With
 * force, write its sectors even where disk (what rawtrack last wrote)
 * already holds them: after a failed commit the file may not.  The exact
 * bit of bitmap b over [bs, be) is orig | written there (delta folded
 * over v, and over the whole of a coarse bit by withdraw_coarse). */
static int
cool_prepare (struct rawtrack_image *img, struct track *t, uint64_t v,
              bool force)
{
  uint64_t start, end, lo, hi, bit;
  uint32_t i;
  bool changed;

  extent_range (img, t, v, &start, &end);
  fold_delta (t, start, end);
  if (t->coarse)
    withdraw_coarse (img, t, v, start);
  bitmap_mem_set_atomic (t->summary, start, end - start);
  for (i = 0; i < t->nr; i++) {
    struct tbm *b = &t->bm[i];
    uint64_t g = 1ull << b->gran_bits;

    bit_range (b, b->nbits, start, end, &lo, &hi);
    if (hi <= lo)
      continue;
    if (ensure_loaded (img, t, b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1 ||
        need_clusters (img, t, b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1)
      return -1;
    changed = force;
    for (bit = lo; bit < hi; bit++) {
      uint64_t bs = bit * g, be = MIN (bs + g, img->virtual_size);
      bool v1 = bitmap_mem_get (b->orig, bs) ||
                bitmap_mem_next_dirty (t->written, bs, be) >= 0;

      /* A bit that also covers a hot or pending extent stays set. */
      if (!v1 && (bs < start || be > end) && neighbour_busy (t, bs, be, v))
        v1 = true;
      if (v1 != bitmap_mem_get (b->disk, bs)) {
        if (v1)
          bitmap_mem_set (b->disk, bs, 1);
        else
          bitmap_mem_clear (b->disk, bs, 1);
        changed = true;
      }
      if (!v1) {
        uint64_t cs = MAX (bs, start), ce = MIN (be, end);

        if (ce > cs)
          bitmap_mem_clear_atomic (t->summary, cs, ce - cs);
      }
    }
    /* Only what changes: an extent a stream filled is all-ones already,
     * and cools with no I/O at all. */
    if (changed && add_write (b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1)
      return -1;
  }
  return 0;
}

/* Set every bit covering extent e in each disk image (track->lock held).
 * The blocks are loaded first: orig keeps the bits at open. */
static int
hot_prepare (struct rawtrack_image *img, struct track *t, uint64_t e)
{
  uint64_t start, end, lo, hi;
  uint32_t i;

  extent_range (img, t, e, &start, &end);
  for (i = 0; i < t->nr; i++) {
    struct tbm *b = &t->bm[i];

    bit_range (b, b->nbits, start, end, &lo, &hi);
    if (hi <= lo)
      continue;
    if (ensure_loaded (img, t, b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1 ||
        need_clusters (img, t, b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1)
      return -1;
    bitmap_mem_set (b->disk, start, end - start);
    if (add_write (b, lo / 8, DIV_ROUND_UP (hi, 8)) == -1)
      return -1;
  }
  return 0;
}

static int
range_cmp (const void *a, const void *b)
{
  const struct range *x = a, *y = b;

  return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Is cluster ci of b among the new ones (written whole by publish_new)? */
static bool
is_new (const struct tbm *b, uint64_t ci)
{
  uint32_t i;

  for (i = 0; i < b->nr_newc; i++)
    if (b->newc[i].index == ci)
      return true;
  return false;
}

/* Write the sectors every bitmap queued (its wr ranges: stream bytes,
 * mapped through the table cluster by cluster; those of new clusters go
 * with the whole cluster in publish_new).  SAFE mode hands them to the
 * backend as ONE batch: the commit is about to wait for the device
 * anyway, and n scattered sectors submitted together cost about one
 * round trip where page-cache writes would trickle out one by one at the
 * sync (io-file-aio.c; 64 bitmaps: ~5 ms a commit instead of ~14).
 * PROCESS mode only needs them in the kernel: plain page-cache writes. */
static int
write_sectors (struct rawtrack_image *img, struct track *t)
{
  const uint64_t cs = img->cluster_size;
  const uint64_t wb = MIN ((uint64_t) WR_BLOCK, cs);
  bool batch = t->mode == MODE_SAFE;
  size_t n = 0, w, bytes = 0, used = 0;
  uint32_t k;

  for (k = 0; k < t->nr; k++) {
    struct tbm *b = &t->bm[k];
    size_t m = 0;

    if (b->wr.len == 0)               /* (wr is NULL until first used) */
      continue;
    /* A batch goes in whole filesystem blocks: ext4 makes a sub-block
     * direct write wait for every other one in flight, which would undo
     * the batch.  The bytes around the sectors are what the disk holds
     * already (disk is the on-disk image, and a block never spans two
     * clusters nor leaves a loaded stream block), so a torn wider write
     * is still a superset.  Ranges are sorted and merged. */
    for (w = 0; w < b->wr.len; w++) {
      if (batch) {
        b->wr.ptr[w].lo = ROUND_DOWN (b->wr.ptr[w].lo, wb);
        b->wr.ptr[w].hi = MIN (ROUND_UP (b->wr.ptr[w].hi, wb), b->disk_len);
      }
    }
    qsort (b->wr.ptr, b->wr.len, sizeof *b->wr.ptr, range_cmp);
    for (w = 1; w < b->wr.len; w++) {
      if (b->wr.ptr[w].lo <= b->wr.ptr[m].hi)
        b->wr.ptr[m].hi = MAX (b->wr.ptr[m].hi, b->wr.ptr[w].hi);
      else
        b->wr.ptr[++m] = b->wr.ptr[w];
    }
    b->wr.len = m + 1;
    for (w = 0; w < b->wr.len; w++)
      /* at most one piece per cluster met, plus one */
      n += (b->wr.ptr[w].hi - 1) / cs - b->wr.ptr[w].lo / cs + 1;
    for (w = 0; w < b->wr.len; w++)
      bytes += b->wr.ptr[w].hi - b->wr.ptr[w].lo;
  }
  if (n > t->cap_vec) {
    struct rawtrack_io_vec *v = rt_realloc (t->vec, n * sizeof *v);

    if (!v)
      return -1;
    t->vec = v;
    t->cap_vec = n;
  }
  if (bytes > t->cap_scratch) {
    uint8_t *p = rt_realloc (t->scratch, bytes);

    if (!p)
      return -1;
    t->scratch = p;
    t->cap_scratch = bytes;
  }
  n = 0;
  for (k = 0; k < t->nr; k++) {
    struct tbm *b = &t->bm[k];

    for (w = 0; w < b->wr.len; w++) {
      uint64_t j = b->wr.ptr[w].lo;

      while (j < b->wr.ptr[w].hi) {
        uint64_t ci = j / cs, e = MIN (b->wr.ptr[w].hi, (ci + 1) * cs);
        uint64_t off = (b->table[ci] & BME_TABLE_ENTRY_OFFSET_MASK) + j % cs;
        struct rawtrack_io_vec *prev = n ? &t->vec[n - 1] : NULL;
        uint8_t *buf = t->scratch + used;

        if (!is_new (b, ci)) {
          bitmap_mem_store (b->disk, j, e - j, buf);
          used += e - j;
          if (prev && prev->offset + prev->count == off &&
              (const uint8_t *) prev->buf + prev->count == buf)
            prev->count += e - j;
          else
            t->vec[n++] = (struct rawtrack_io_vec) { buf, e - j, off };
        }
        j = e;
      }
    }
  }
  if (batch)
    return io_write_batch (img->file, t->vec, n, "bitmap data");
  for (w = 0; w < n; w++)
    if (io_write (img->file, t->vec[w].buf, t->vec[w].count,
                  t->vec[w].offset, "bitmap data") == -1)
      return -1;
  return 0;
}

/* Pick the oldest hot extent not referenced since the last sweep. */
static uint64_t
pick_victim (struct track *t)
{
  uint32_t i, tries;

  for (tries = 0; tries < 2 * t->nr_hot; tries++) {
    uint64_t e = t->hot[0];

    if (!__atomic_load_n (&t->ref[e], __ATOMIC_RELAXED) || tries >= t->nr_hot)
      break;
    __atomic_store_n (&t->ref[e], 0, __ATOMIC_RELAXED);
    memmove (t->hot, t->hot + 1, (t->nr_hot - 1) * sizeof *t->hot);
    t->hot[t->nr_hot - 1] = e;
  }
  {
    uint64_t e = t->hot[0];

    for (i = 1; i < t->nr_hot; i++)
      t->hot[i - 1] = t->hot[i];
    t->nr_hot--;
    return e;
  }
}

/* Remove hot list entry i (track->lock held). */
static uint64_t
hot_remove (struct track *t, uint32_t i)
{
  uint64_t e = t->hot[i];

  memmove (t->hot + i, t->hot + i + 1, (t->nr_hot - i - 1) * sizeof *t->hot);
  t->nr_hot--;
  return e;
}

/* A failed commit may have left all-ones on disk for extents that are
 * cold now (its batch) or not replaced them (its victims): a superset,
 * but the close must make them exact too.  Remember them; out of memory,
 * the over-report stays (track->lock held). */
static void
remember_stale (struct track *t, const uint64_t *e, uint64_t n)
{
  uint64_t i;

  if (extent_list_reserve (&t->stale, n) == -1)
    return;
  for (i = 0; i < n; i++)
    t->stale.ptr[t->stale.len++] = e[i];
}

/* Run one group commit: make the queued extents hot, cooling the oldest
 * hot ones to make room.  With idle, cool instead (and first) the hot
 * extents that idle_sweep found quiet for idle_ms: then the commit makes
 * nothing hot and SAFE mode syncs all the same, so that after a power
 * loss too the over-report decays with time.  Called and returns with
 * track->lock held. */
static void
commit (struct rawtrack_image *img, struct track *t, bool idle)
{
  uint64_t *batch = NULL, nr_batch, *victims = NULL, nr_victims = 0, i;
  uint32_t k;
  int err = 0;

  t->committing = true;
  nr_batch = idle ? 0 : MIN (t->pend.len, (uint64_t) t->max_hot);
  batch = rt_malloc ((nr_batch ? nr_batch : 1) * sizeof *batch);
  victims = rt_malloc ((size_t) t->max_hot * sizeof *victims);
  if (!batch || !victims) {
    err = ENOMEM;
    nr_batch = 0;                      /* the queue stays as it is */
    goto done_locked;
  }
  memcpy (batch, t->pend.ptr, nr_batch * sizeof *batch);
  extent_list_remove_front (&t->pend, nr_batch);

  /* Cooling: the extent's sequence number is odd from before it stops
   * being hot until its summary is exact again, so a lock-free writer
   * that raced with it retries under the lock (track_before_write). */
  for (k = 0; idle && k < t->nr_hot; ) {
    uint64_t v = t->hot[k];

    if (t->quiet[v] < IDLE_TICKS) {
      k++;
      continue;
    }
    hot_remove (t, k);
    __atomic_add_fetch (&t->seq[v], 1, __ATOMIC_SEQ_CST);
    est_set (t, v, EXT_COLD);
    victims[nr_victims++] = v;
    t->idle_cooled++;
  }
  while (t->nr_hot && t->nr_hot + nr_batch > t->max_hot) {
    uint64_t v = pick_victim (t);

    __atomic_add_fetch (&t->seq[v], 1, __ATOMIC_SEQ_CST);
    est_set (t, v, EXT_COLD);
    victims[nr_victims++] = v;
  }
  for (k = 0; k < t->nr; k++)
    t->bm[k].wr.len = 0;
  for (i = 0; i < nr_victims && !err; i++)
    if (cool_prepare (img, t, victims[i], false) == -1)
      err = errno ? errno : EIO;
  for (i = 0; i < nr_victims; i++)
    __atomic_add_fetch (&t->seq[victims[i]], 1, __ATOMIC_SEQ_CST);
  if (err)
    goto done_locked;

  /* I/O without the tracking lock: only the leader touches disk images
   * (disk, orig, loaded, table, wr, newc; track_bitmap reads orig and
   * loaded under track->lock, so the preparations that load blocks run
   * with it held).  The bitmaps' clusters are the tracker's alone while
   * it runs (the bitmap operations refuse to work meanwhile), so their
   * sectors are written without img->lock: a guest write that needs a
   * mapping must not wait for them.  The log lives in cluster 0 beside
   * the header, which metadata updates rewrite: it is written under
   * img->lock.
   * THE BOUND UNDER KILL -9: the cooled sectors are written before the
   * new all-ones are even prepared (two write_sectors calls, each
   * complete before the next starts), so at no instant does the kernel
   * hold more than max_hot extents' all-ones.  Power loss may keep the
   * second write and drop the first: there the bound is max_hot plus one
   * commit's batch.  New clusters are published before the sectors of
   * either write that land in them (publish_new; it may write a cluster
   * twice when both writes meet it). */
  if (nr_victims && nr_batch) {
    pthread_mutex_unlock (&t->lock);
    if (publish_new (img, t) == -1 || write_sectors (img, t) == -1)
      err = errno ? errno : EIO;
    pthread_mutex_lock (&t->lock);
    for (k = 0; k < t->nr; k++)
      t->bm[k].wr.len = 0;
  }
  for (i = 0; i < nr_batch && !err; i++)
    if (hot_prepare (img, t, batch[i]) == -1)
      err = errno ? errno : ENOMEM;
  pthread_mutex_unlock (&t->lock);
  if (!err && (publish_new (img, t) == -1 || write_sectors (img, t) == -1))
    err = errno ? errno : EIO;
  pthread_mutex_lock (&img->lock);
  if (!err && track_log_write (img, t->log_off, t->max_hot, t->ext_bits,
                               t->hot, t->nr_hot, batch, nr_batch) == -1)
    err = errno ? errno : EIO;
  pthread_mutex_unlock (&img->lock);
  if (!err && t->mode == MODE_SAFE &&
      io_flush (img->file, "image file") == -1)
    err = errno ? errno : EIO;
  pthread_mutex_lock (&t->lock);
  if (!err)
    published (t);

 done_locked:
  for (i = 0; i < nr_batch; i++) {
    uint64_t e = batch[i], start, end;

    if (err) {
      est_set (t, e, EXT_COLD);
      continue;
    }
    extent_range (img, t, e, &start, &end);
    bitmap_mem_set_atomic (t->summary, start, end - start);
    /* Referenced from the start: an extent made hot ahead of a stream is
     * not written yet, and must not be the first to cool when the next
     * commit needs room - the ones the stream has filled, older, go
     * first (pick_victim).  Idle cooling still counts from the next
     * sweep. */
    __atomic_store_n (&t->ref[e], 1, __ATOMIC_RELAXED);
    t->quiet[e] = 0;
    t->hot[t->nr_hot++] = e;
    est_set (t, e, EXT_HOT);
  }
  if (err) {
    remember_stale (t, batch, nr_batch);
    remember_stale (t, victims, nr_victims);
  }
  if (err && !idle) {
    /* Extents still queued stay queued; the waiters of this batch fail.
     * (A failed idle cooling fails nobody: the all-ones it could not
     * replace are a superset of the truth, and the next commit or the
     * close writes the exact bits again.) */
    t->last_err = err;
    t->commit_failed_at = t->commits + 1;
  }
  t->commits++;
  t->committing = false;
  free (batch);
  free (victims);
  pthread_cond_broadcast (&t->cond);
  /* Queued work, or (idle cooling) hot extents to watch: the committer. */
  if (t->has_committer && (t->pend.len || (t->idle_ms && t->nr_hot)))
    pthread_cond_signal (&t->kick);
}

/* IDLE COOLING, one sweep (every idle_ms / IDLE_TICKS, committer thread,
 * track->lock held): a hot extent that a write referenced since the last
 * sweep starts over; one that stayed quiet for IDLE_TICKS sweeps in a row
 * is due.  Returns whether one is due.  The ref flags are the ones
 * pick_victim uses (clearing them here only ages its second chances). */
static bool
idle_sweep (struct track *t)
{
  bool due = false;
  uint32_t i;

  for (i = 0; i < t->nr_hot; i++) {
    uint64_t e = t->hot[i];

    if (__atomic_load_n (&t->ref[e], __ATOMIC_RELAXED)) {
      __atomic_store_n (&t->ref[e], 0, __ATOMIC_RELAXED);
      t->quiet[e] = 0;
    }
    else if (t->quiet[e] < IDLE_TICKS && ++t->quiet[e] == IDLE_TICKS)
      due = true;
    else if (t->quiet[e] >= IDLE_TICKS)
      due = true;
  }
  return due;
}

/* The committer thread: runs the commits that prefetch() queues, which
 * no writer waits for, and the idle coolings.  A waiting writer may still
 * lead a commit itself; whoever comes first does it.  With idle cooling
 * on it wakes every idle_ms / IDLE_TICKS while extents are hot, and
 * sleeps until kicked when none is. */
static void *
committer (void *arg)
{
  struct track *t = arg;
  uint64_t tick_ns = (uint64_t) t->idle_ms * 1000000 / IDLE_TICKS;
  struct timespec next = { 0, 0 };

  pthread_mutex_lock (&t->lock);
  for (;;) {
    struct timespec now;

    if (t->stop)
      break;
    if (t->pend.len && !t->committing) {
      commit (t->img, t, false);
      continue;
    }
    if (!t->idle_ms || t->nr_hot == 0) {
      next.tv_sec = 0;
      pthread_cond_wait (&t->kick, &t->lock);
      continue;
    }
    clock_gettime (CLOCK_MONOTONIC, &now);
    if (next.tv_sec == 0) {            /* the first tick from now */
      uint64_t ns = (uint64_t) now.tv_nsec + tick_ns;

      next.tv_sec = now.tv_sec + (time_t) (ns / 1000000000);
      next.tv_nsec = (long) (ns % 1000000000);
    }
    if (now.tv_sec < next.tv_sec ||
        (now.tv_sec == next.tv_sec && now.tv_nsec < next.tv_nsec)) {
      pthread_cond_timedwait (&t->kick, &t->lock, &next);
      continue;
    }
    next.tv_sec = 0;
    if (!t->committing && idle_sweep (t))
      commit (t->img, t, true);
  }
  pthread_mutex_unlock (&t->lock);
  return NULL;
}

/* Is every byte of extent e dirty on disk in every bitmap already? */
static bool
extent_all_dirty (const struct track *t, uint64_t e)
{
  uint64_t start = e << t->ext_bits;
  uint64_t end = MIN (start + (1ull << t->ext_bits),
                      bitmap_mem_size (t->summary));

  return bitmap_mem_all_set_atomic (t->summary, start, end - start);
}

/* How many extents to make hot beyond each one a write must wait for.
 * A write that continues a stream - the granule just before its first
 * one was written since its extent was last cooled (delta knows, with no
 * shared word written on the fast path) - or that starts a large write
 * exactly on an extent boundary (where streams begin) gets the prefetch
 * window (at least SEQ_AHEAD): one sync for all of them.  Anything else
 * (random writes) gets 0, so the hot set holds what is really written. */
static uint32_t
stream_lookahead (const struct track *t, uint64_t offset, uint64_t len)
{
  uint64_t g = bitmap_mem_granularity (t->delta);
  uint64_t prev = ROUND_DOWN (offset, g);
  bool stream;

  stream = (prev > 0 && bitmap_mem_all_set_atomic (t->delta, prev - 1, 1)) ||
           ((offset & ((1ull << t->ext_bits) - 1)) == 0 &&
            len >= STREAM_MIN);
  return stream ? MAX (SEQ_AHEAD, t->ahead) : 0;
}

/* Queue cold extent e for the next commit (track->lock held). */
static bool
queue_extent (struct track *t, uint64_t e)
{
  if (extent_list_append (&t->pend, e) == -1)
    return false;
  est_set (t, e, EXT_PENDING);
  return true;
}

/* Queue extent k for the next commit if it is cold and not dirty on disk
 * already (look-ahead, free riders, prefetch); false only when out of
 * memory (track->lock held). */
static bool
queue_ahead (struct track *t, uint64_t k)
{
  return est_get (t, k) != EXT_COLD || extent_all_dirty (t, k) ||
         queue_extent (t, k);
}

/* Free riders: the cold extents whose bits share a disk sector with
 * queued extent e's in every bitmap cost no extra I/O in the same commit
 * - while the hot set has room for them, so nothing is cooled for them
 * and the over-report bound stays max_hot extents.  false only when out
 * of memory (track->lock held). */
static bool
queue_riders (struct track *t, uint64_t e)
{
  uint64_t lo = e / t->span * t->span, k;

  for (k = lo; k < lo + t->span && k < t->nr_ext &&
               t->nr_hot + t->pend.len < t->max_hot; k++)
    if (k != e && !queue_ahead (t, k))
      return false;
  return true;
}

/* Queue the cold extents among [from, to] ahead of a stream, each with its
 * riders; false only when out of memory (track->lock held). */
static bool
queue_stream (struct track *t, uint64_t from, uint64_t to)
{
  uint64_t k;

  for (k = from; k <= to && k < t->nr_ext; k++) {
    bool was_cold = est_get (t, k) == EXT_COLD;

    if (!queue_ahead (t, k))
      return false;
    if (was_cold && est_get (t, k) == EXT_PENDING && !queue_riders (t, k))
      return false;
  }
  return true;
}

/* Does every byte of [off, off+len) pass without a commit?  With queue,
 * queue what it needs (look extents of look-ahead after each). */
static bool
covered (struct track *t, uint64_t off, uint64_t len, bool queue,
         uint32_t look, bool *queue_failed)
{
  uint64_t e0 = off >> t->ext_bits, e1 = (off + len - 1) >> t->ext_bits, e;
  bool ok = true;

  for (e = e0; e <= e1; e++) {
    uint64_t s = MAX (off, e << t->ext_bits);
    uint64_t end = MIN (off + len, (e + 1) << t->ext_bits);

    if (est_get (t, e) == EXT_HOT) {
      __atomic_store_n (&t->ref[e], 1, __ATOMIC_RELAXED);
      continue;
    }
    if (bitmap_mem_all_set_atomic (t->summary, s, end - s))
      continue;
    ok = false;
    if (queue && est_get (t, e) == EXT_COLD) {
      if (!queue_extent (t, e)) {
        *queue_failed = true;
        return false;
      }
      /* Its riders, and for a sequential stream (see stream_lookahead)
       * the next few extents: hot in the same commit, one sync for all. */
      if (!queue_riders (t, e) || !queue_stream (t, e + 1, e + look)) {
        *queue_failed = true;
        return false;
      }
    }
  }
  return ok;
}

/* The lock-free path for writes whose extents are hot or whose granules
 * are already dirty on disk in every bitmap (the common, steady case).
 *
 *   writer                         cooler (commit, under track->lock)
 *   s = seq[e] (must be even)      seq[e]++         (odd)
 *   set delta bits (seq_cst)       est[e] = COLD
 *   read est[e] / summary          fold delta, write exact bits, fix summary
 *   seq[e] == s ?  -> pass         seq[e]++         (even)
 *
 * If the writer passes, its final read of seq[e] precedes the cooler's
 * first increment in the single order of seq_cst operations, so its delta
 * bits are set before the cooler folds them: they are in the exact bits
 * the cooler writes.  Otherwise it falls back to the locked path. */
static bool
fast_path (struct track *t, uint64_t offset, uint64_t len)
{
  uint64_t e0 = offset >> t->ext_bits, e1 = (offset + len - 1) >> t->ext_bits;
  uint32_t s[4];
  uint64_t e;

  if (e1 - e0 >= 4)
    return false;
  for (e = e0; e <= e1; e++) {
    s[e - e0] = __atomic_load_n (&t->seq[e], __ATOMIC_SEQ_CST);
    if (s[e - e0] & 1)
      return false;
  }
  bitmap_mem_set_atomic (t->delta, offset, len);
  __atomic_thread_fence (__ATOMIC_SEQ_CST);
  for (e = e0; e <= e1; e++) {
    uint64_t st = MAX (offset, e << t->ext_bits);
    uint64_t end = MIN (offset + len, (e + 1) << t->ext_bits);

    if (est_get (t, e) != EXT_HOT &&
        !bitmap_mem_all_set_atomic (t->summary, st, end - st))
      return false;
  }
  __atomic_thread_fence (__ATOMIC_SEQ_CST);
  for (e = e0; e <= e1; e++)
    if (__atomic_load_n (&t->seq[e], __ATOMIC_SEQ_CST) != s[e - e0])
      return false;
  for (e = e0; e <= e1; e++)
    if (!__atomic_load_n (&t->ref[e], __ATOMIC_RELAXED))
      __atomic_store_n (&t->ref[e], 1, __ATOMIC_RELAXED);
  return true;
}

/* PREFETCH: make the extents ahead of a sequential stream hot before it
 * gets there, by a commit that nobody waits for (the committer thread).
 * Checked when a write that passed the fast path covers the first
 * quarter point of its extent e, with lock-free loads only: if the stream
 * has less than ahead / 2 hot or pending extents in front of it and
 * filled the first quarter of e since e became hot (delta), queue the
 * cold extents among the next `ahead` ones.  So a stream waits for the
 * first commit only; the next run while it writes, one sync per
 * ahead / 2 extents.  The over-report bound is unchanged (commit cools to
 * stay within max_hot) and ahead <= 3/4 max_hot keeps the stream's own
 * recent extents hot. */
static void
prefetch (struct track *t, uint64_t offset, uint64_t len)
{
  uint64_t e = (offset + len - 1) >> t->ext_bits;
  uint64_t start = e << t->ext_bits;
  uint64_t q = start + (1ull << (t->ext_bits - 2)), k, last, before;

  if (!t->ahead || offset > q || offset + len <= q || e + 1 >= t->nr_ext)
    return;
  last = MIN (e + t->ahead, t->nr_ext - 1);
  k = MIN (e + t->ahead / 2, last);
  if (est_get (t, k) != EXT_COLD ||
      !bitmap_mem_all_set_atomic (t->delta, start, q - start))
    return;
  pthread_mutex_lock (&t->lock);
  before = t->pend.len;
  (void) queue_stream (t, e + 1, last);  /* no memory: writers will wait */
  if (t->pend.len > before)
    pthread_cond_signal (&t->kick);
  pthread_mutex_unlock (&t->lock);
}

bool
track_try_fast (struct rawtrack_image *img, uint64_t offset, uint64_t len)
{
  struct track *t = __atomic_load_n (&img->track, __ATOMIC_ACQUIRE);

  if (!t || t->nr == 0 || len == 0)
    return true;
  if (t->mode == MODE_LAZY) {
    bitmap_mem_set_atomic (t->delta, offset, len);
    return true;
  }
  if (!fast_path (t, offset, len))
    return false;
  prefetch (t, offset, len);
  return true;
}

int
track_before_write (struct rawtrack_image *img, uint64_t offset, uint64_t len)
{
  struct track *t = img->track;
  bool qfail = false;
  uint32_t look;
  uint64_t chunk;
  int r = 0;

  /* The exact record first: before any data of this write is issued. */
  if (track_try_fast (img, offset, len))
    return 0;
  pthread_mutex_lock (&t->lock);
  look = stream_lookahead (t, offset, len);
  bitmap_mem_set_atomic (t->delta, offset, len);
  /* A range wider than the hot set allows is made safe piece by piece;
   * each piece's extents are hot together at some instant. */
  chunk = ((uint64_t) t->max_hot / 2) << t->ext_bits;
  while (len > 0 && r == 0) {
    uint64_t n = MIN (len, chunk - (offset & ((1ull << t->ext_bits) - 1)));
    uint64_t waited_from = t->commits;

    while (!covered (t, offset, n, true, look, &qfail)) {
      if (qfail) {
        r = set_error (ENOMEM, "out of memory queueing extents");
        break;
      }
      if (t->commit_failed_at > waited_from) {
        r = set_error (t->last_err, "updating the dirty bitmaps failed: %s",
                       strerror (t->last_err));
        break;
      }
      if (!t->committing)
        commit (img, t, false);
      else
        pthread_cond_wait (&t->cond, &t->lock);
    }
    offset += n;
    len -= n;
  }
  pthread_mutex_unlock (&t->lock);
  return r;
}

/* ---- stop ------------------------------------------------------------- */

int
track_stop (struct rawtrack_image *img)
{
  struct track *t = img->track;
  uint32_t i, k;
  int r = 0;

  if (!t)
    return 0;
  if (t->has_committer) {
    pthread_mutex_lock (&t->lock);
    t->stop = true;
    pthread_cond_signal (&t->kick);
    pthread_mutex_unlock (&t->lock);
    pthread_join (t->committer, NULL);
    t->has_committer = false;
  }
  pthread_mutex_lock (&t->lock);
  while (t->committing)
    pthread_cond_wait (&t->cond, &t->lock);
  if (t->nr == 0)
    goto out;

  if (t->mode == MODE_LAZY) {
    /* QEMU's close: bits into new clusters and in_use cleared in one
     * directory transaction; the old tables and data are freed after. */
    struct bitmap_update u;

    fold_delta (t, 0, img->virtual_size);
    pthread_mutex_lock (&img->lock);
    if (bitmap_update_begin (img, &u, 0) == -1) {
      pthread_mutex_unlock (&img->lock);
      r = -1;
      goto out;
    }
    for (i = 0; i < t->nr && r == 0; i++) {
      struct bitmap_entry *e = &u.dir.entries[t->bm[i].dir_index];
      struct bitmap_entry consistent = *e;
      struct bitmap_mem *bits = NULL;

      /* Its old clusters are ours to free: collect them as consistent.
       * The bits: those on disk (reading the allocated clusters only)
       * and every write since open. */
      consistent.flags &= ~BME_FLAG_IN_USE;
      if (bitmap_collect_clusters (img, &consistent, &u.old) == -1 ||
          bitmap_load (img, &consistent, &bits) == -1 ||
          bitmap_mem_merge (bits, t->written) == -1 ||
          bitmap_store (img, bits, 0, &e->table_offset, &u.allocated) == -1)
        r = -1;
      bitmap_mem_free (bits);
      e->flags &= ~BME_FLAG_IN_USE;
    }
    if (r == 0)
      r = bitmap_update_commit (img, &u);
    else
      bitmap_update_end (img, &u, true);
    pthread_mutex_unlock (&img->lock);
    goto out;
  }

  /* SAFE / PROCESS: cool every hot extent, write, sync. */
  for (k = 0; k < t->nr; k++)
    t->bm[k].wr.len = 0;
  fold_delta (t, 0, img->virtual_size);
  while (t->nr_hot && r == 0) {
    uint64_t v = t->hot[--t->nr_hot];

    est_set (t, v, EXT_COLD);
    if (cool_prepare (img, t, v, false) == -1)
      r = -1;
  }
  while (t->stale.len && r == 0)
    if (cool_prepare (img, t, t->stale.ptr[--t->stale.len], true) == -1)
      r = -1;
  pthread_mutex_lock (&img->lock);
  if (r == 0)
    r = publish_new (img, t);
  if (r == 0)
    r = write_sectors (img, t);
  if (r == 0)
    r = track_log_write (img, t->log_off, t->max_hot, t->ext_bits, t->hot,
                         t->nr_hot, NULL, 0);
  if (r == 0)
    r = io_flush (img->file, "image file");
  pthread_mutex_unlock (&img->lock);

 out:
  pthread_mutex_unlock (&t->lock);
  img->track = NULL;
  track_free (t);
  return r;
}

static void
copy_run (void *opaque, uint64_t start, uint64_t len)
{
  bitmap_mem_set (opaque, start, len);
}

/* dst |= src over guest [start, end), whatever their granularities; src
 * may be delta, which writers change meanwhile: read atomically. */
static void
copy_range (struct bitmap_mem *dst, struct bitmap_mem *src, uint64_t start,
            uint64_t end)
{
  if (end > start)
    bitmap_mem_each_dirty_atomic (src, start, end - start, false, copy_run,
                                  dst);
}

struct bitmap_mem *
track_bitmap (struct rawtrack_image *img, const char *name, uint64_t start,
              uint64_t len)
{
  uint64_t end, k, lo, hi;
  struct track *t = __atomic_load_n (&img->track, __ATOMIC_ACQUIRE);
  struct bitmap_mem *copy = NULL;
  uint8_t buf[4096];
  uint32_t i;

  if (!t)
    return NULL;
  pthread_mutex_lock (&t->lock);
  for (i = 0; i < t->nr; i++) {
    struct tbm *b = &t->bm[i];
    struct bitmap_entry *e = &img->bitmaps.entries[b->dir_index];

    if (strcmp (e->name, name) != 0)
      continue;
    end = start < img->virtual_size
          ? start + MIN (len, img->virtual_size - start) : start;
    if (end == start) {
      copy = bitmap_mem_new (img->virtual_size, 1u << b->gran_bits);
      break;
    }
    /* The bits at open: on disk where the tracker has not touched them
     * (only the clusters of the range are read), from orig where it
     * has (the disk may hold all-ones there). */
    pthread_mutex_lock (&img->lock);
    if (bitmap_load_range (img, e, start, end - start, &copy) == -1) {
      pthread_mutex_unlock (&img->lock);
      break;
    }
    pthread_mutex_unlock (&img->lock);
    if (t->mode != MODE_LAZY) {
      bit_range (b, b->nbits, start, end, &lo, &hi);
      for (k = lo / 8 / t->lb; k * t->lb < DIV_ROUND_UP (hi, 8); k++)
        if (block_loaded (b, k)) {
          bitmap_mem_store (b->orig, k * t->lb, t->lb, buf);
          bitmap_mem_load (copy, k * t->lb, t->lb, buf);
        }
    }
    if (start > 0)
      bitmap_mem_clear (copy, 0, start);
    bitmap_mem_clear (copy, end, img->virtual_size - end);
    copy_range (copy, t->written, start, end);
    copy_range (copy, t->delta, start, end);
    break;
  }
  pthread_mutex_unlock (&t->lock);
  return copy;
}
