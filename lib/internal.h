/* rawtrack - librawtrack private declarations.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One section per .c file.  Nothing here is installed.
 *
 * Layering: a file calls only files on lower lines, never one on its own
 * line or above (no loops).  errors.c, memory.c and datafile.c are leaves
 * that any file may call.
 *
 *    1  create.c                     new images (locks files via image.c)
 *       qcow2-writer.c               rawtrack_writer_* (sequential images;
 *                                    opens its backing file via image.c)
 *    2  image.c                      open, close, getters
 *       check.c                      check and repair
 *       bitmap-ops.c                 rawtrack_bitmap_* (public operations)
 *    3  guest-io.c                   guest writes, zeroes, discards, flush,
 *                                    block status
 *    4  guest-read.c                 guest reads, the raw one-to-one map
 *       track.c                      dirty tracking of guest writes
 *       datafile-id.c                the data file's identity (bypasses)
 *    5  track-log.c                  the tracking log in cluster 0
 *       bitmap-owner.c               bitmap clusters owned by one bitmap
 *       bitmap-count.c               dirty counts from the table, cached
 *       backing.c                    backing chains (open, read)
 *       bitmap-update.c              the bitmap directory's transaction
 *    6  bitmap-store.c               bitmap tables and data clusters
 *    7  bitmap-mem.c  bitmap-dir.c   bits in memory, directory format
 *       qcow2-map.c                  L1/L2 lookups and the L2 cache
 *       qcow2-compress.c             compressed clusters
 *    8  qcow2-alloc.c                cluster allocation
 *    9  qcow2-refcount.c             refcount table and blocks
 *       qcow2-header.c               header + extensions, the write-back
 *   10  struct rawtrack_io (lib/io/) storage
 *
 *   up: backing.c -> image.c guest-io.c guest-read.c
 *       (the one exception: a backing layer is an image of its own,
 *       opened and read through the entry points of ITS handle)
 *
 * One guest request's flow goes one way down: a write enters guest-io.c,
 * marks the bitmaps (track.c, which logs hot extents through
 * track-log.c), maps and allocates (qcow2-map.c, qcow2-alloc.c) and
 * reaches the backend; a read enters guest-read.c, maps, decompresses if
 * it must, and reads.
 *
 * Locking: struct rawtrack_image.lock (a mutex) protects every metadata
 * field of the image: the header copy, L1, the L2 cache, the refcount
 * table and blocks, the bitmap directory.  Functions named qcow2_* expect
 * it held (or the image to be private to one thread, as during open and
 * create).
 */
#ifndef RAWTRACK_INTERNAL_H
#define RAWTRACK_INTERNAL_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>

#include "rawtrack/rawtrack.h"
#include "vector.h"
#include "cleanup.h"

/* CLEANUP_IO_CLOSE struct rawtrack_io *io = ...;  closes the backend (if
 * not NULL) on every exit from the scope; set io to NULL to hand it on. */
static inline void
cleanup_io_close (struct rawtrack_io **io)
{
  rawtrack_io_close (*io);
}
#define CLEANUP_IO_CLOSE __attribute__ ((cleanup (cleanup_io_close)))

/* ---- errors.c --------------------------------------------------------- */
/* Record the thread's last error (message formatted printf-style).
 * Always returns -1, so that `return rt_set_error (...)` reads well. */
int rt_set_error (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* Prefix the current message with more context ("reading L2 table: "). */
void rt_prefix_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
void rt_clear_error (void);

/* Set the error and return -1 (or NULL) in one statement. */
#define set_error(errnum, ...) rt_set_error ((errnum), __VA_ARGS__)
/* Metadata corruption: names the structure and the offset. */
#define set_corrupt(...) rt_set_error (RAWTRACK_ECORRUPT, __VA_ARGS__)

/* ---- memory.c --------------------------------------------------------- */
/* All allocations in lib/ go through these, so tests can inject ENOMEM.
 * They set the rawtrack error on failure. */
void *rt_malloc (size_t n);
void *rt_calloc (size_t nmemb, size_t size);
void *rt_realloc (void *p, size_t n);
char *rt_strdup (const char *s);
char *rt_strndup (const char *s, size_t n);
/* For backends, which report through errno only: realloc with the same
 * failure injection, ENOMEM without a message. */
void *rt_realloc_quiet (void *p, size_t n);
/* Tests: fail the n-th allocation from now (0 disables). */
void rt_alloc_fail_after (unsigned long n);
/* Tests: allocations left before the armed failure (0: fired or off). */
unsigned long rt_alloc_fail_pending (void);

/* ---- io/io.c: calls into backends ----------------------------------- */
/* The backend's method (ENOTSUP where it has none; EROFS for pwrite; flush
 * too: nothing is durable without it), reporting through errno only: the
 * library and the shims use these, the public rawtrack_io_* add the
 * thread's message. */
int io_op_pread (struct rawtrack_io *io, void *buf, uint64_t count,
                 uint64_t offset);
int io_op_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
                  uint64_t offset, unsigned flags);
int io_op_flush (struct rawtrack_io *io);
int io_op_zero (struct rawtrack_io *io, uint64_t count, uint64_t offset,
                unsigned flags);
int io_op_trim (struct rawtrack_io *io, uint64_t count, uint64_t offset);
int64_t io_op_get_size (struct rawtrack_io *io);
int io_op_truncate (struct rawtrack_io *io, uint64_t size);
int64_t io_op_extent (struct rawtrack_io *io, uint64_t offset,
                      uint64_t count, int *is_data);
int io_op_pwrite_batch (struct rawtrack_io *io,
                        const struct rawtrack_io_vec *v, size_t n);
int io_op_lock (struct rawtrack_io *io, unsigned perm, unsigned deny);
/* Has the backend a flush method? */
bool io_can_flush (struct rawtrack_io *io);
/* With messages that name the structure: */
/* what: "L1 table", "refcount block", ... used in the error message. */
int io_read (struct rawtrack_io *io, void *buf, uint64_t count,
             uint64_t offset, const char *what);
int io_write (struct rawtrack_io *io, const void *buf, uint64_t count,
              uint64_t offset, const char *what);
int io_write_batch (struct rawtrack_io *io, const struct rawtrack_io_vec *v,
                    size_t n, const char *what);
int io_flush (struct rawtrack_io *io, const char *what);

/* ---- qcow2-header.c --------------------------------------------------- */
#define QCOW2_MAGIC 0x514649FBu

#define QCOW2_INCOMPAT_DIRTY      (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT    (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE  (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2      (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN      0x1Full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS   (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW  (1ull << 1)
/* rawtrack's own: set while its tracking log (header extension "RTRC")
 * can be trusted; QEMU clears it on any writable open (track.c). */
#define QCOW2_AUTOCLEAR_RAWTRACK  (1ull << 63)
/* rawtrack's data-file identity record is trusted (datafile-id.c). */
#define QCOW2_AUTOCLEAR_DATAID    (1ull << 62)
#define QCOW2_AUTOCLEAR_KNOWN     (0x3ull | QCOW2_AUTOCLEAR_RAWTRACK | \
                                   QCOW2_AUTOCLEAR_DATAID)

#define QCOW2_EXT_END          0x00000000u
#define QCOW2_EXT_BACKING_FMT  0xE2792ACAu
#define QCOW2_EXT_FEATURES     0x6803F857u
#define QCOW2_EXT_BITMAPS      0x23852875u
#define QCOW2_EXT_FDE          0x0537BE77u
#define QCOW2_EXT_DATA_FILE    0x44415441u

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES     (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_V2_HEADER_LEN    72
#define QCOW2_V3_HEADER_LEN    112  /* what we write */

/* An unknown header extension, kept byte for byte. */
struct qcow2_ext {
  uint32_t type;
  uint32_t len;
  uint8_t *data;
};
DEFINE_VECTOR_TYPE (ext_list, struct qcow2_ext, rt_realloc)

/* Host form of the header and every extension (see docs/format.md). */
struct qcow2_header {
  uint32_t version;                /* 2 or 3 */
  uint64_t backing_file_offset;    /* 0: none */
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;                   /* virtual size as stored */
  uint32_t crypt_method;
  uint32_t l1_size;                /* entries */
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompat;               /* v3 only; 0 for v2 */
  uint64_t compat;
  uint64_t autoclear;
  uint32_t refcount_order;         /* 4 for v2 */
  uint32_t header_length;          /* 72 (v2) or >= 104 */
  uint8_t compression_type;        /* 0 deflate, 1 zstd */
  uint8_t *extra_fields;           /* bytes 112..header_length, kept */
  uint32_t extra_len;

  char *backing_file;              /* NULL: none */
  char *backing_format;            /* NULL: extension absent */
  char *data_file;                 /* NULL: data-file name extension absent */
  bool has_features_ext;           /* a feature name table was present */
  uint8_t *features;               /* its raw bytes (for messages) */
  uint32_t features_len;
  bool has_bitmaps_ext;
  uint32_t nb_bitmaps;
  uint64_t bitmap_dir_size;
  uint64_t bitmap_dir_offset;
  bool has_fde_ext;
  uint64_t fde_offset, fde_length;

  struct ext_list unknown;         /* unknown extensions, in file order */
};

/* Parse cluster 0.  buf holds len bytes (at least min(cluster size, file
 * size)); the header must fit.  Validates everything QEMU validates at
 * open; returns -1 with a message naming the field and offset. */
int qcow2_header_parse (const uint8_t *buf, size_t len,
                        struct qcow2_header *h);
/* Serialise into a zeroed cluster-sized buffer, in QEMU's extension order
 * (backing format, data file, FDE, feature table, bitmaps, unknown ones in
 * file order, end, backing name).  -1 (ENOSPC) if it does not fit. */
int qcow2_header_serialize (const struct qcow2_header *h, uint8_t *buf,
                            size_t cluster_size);
/* The same; *used: the bytes of cluster 0 it takes (end marker and
 * backing name included). */
int qcow2_header_serialize_used (const struct qcow2_header *h, uint8_t *buf,
                                 size_t cluster_size, size_t *used);
void qcow2_header_free (struct qcow2_header *h);
struct rawtrack_image;
/* Write the header (cluster 0) from img->h; flushes when flush is set. */
int qcow2_write_header (struct rawtrack_image *img, bool flush);
/* Name of an incompatible feature bit from the table or our list. */
const char *qcow2_feature_name (const struct qcow2_header *h, int type,
                                int bit);

/* ---- bitmap-dir.c ----------------------------------------------------- */
#define BME_FLAG_IN_USE  (1u << 0)
#define BME_FLAG_AUTO    (1u << 1)
#define BME_MAX_NAME     1023
#define BME_MAX_BITMAPS  65535
#define BME_MAX_DIR_SIZE (1024u * 65535)
#define BME_MAX_TABLE_SIZE 0x8000000u
#define BME_MAX_PHYS_SIZE  0x20000000u
#define BME_MIN_GRAN_BITS 9
#define BME_MAX_GRAN_BITS 31
#define BME_TABLE_ENTRY_OFFSET_MASK   0x00fffffffffffe00ull
#define BME_TABLE_ENTRY_RESERVED_MASK 0xff000000000001feull
#define BME_TABLE_ENTRY_FLAG_ALL_ONES 1ull

struct bitmap_entry {
  uint64_t table_offset;
  uint32_t table_size;             /* entries */
  uint32_t flags;                  /* BME_FLAG_* */
  uint8_t type;
  uint8_t granularity_bits;
  char *name;                      /* NUL-terminated copy */
  uint16_t name_size;
  bool lent;                       /* name handed out by
                                    * rawtrack_image_bitmap_name: kept
                                    * until close (image.c) */
};

struct bitmap_dir {
  struct bitmap_entry *entries;
  uint32_t nr;
};

/* Parse a directory of dir_size bytes with nr entries, applying QEMU's
 * per-entry validation for an image of virtual size vsize and the given
 * cluster size.  at: file offset for messages. */
int bitmap_dir_parse (const uint8_t *buf, uint64_t dir_size, uint32_t nr,
                      uint64_t vsize, uint32_t cluster_size, uint64_t at,
                      struct bitmap_dir *dir);
/* Serialised size of dir, and serialise into buf (zeroed, that size). */
uint64_t bitmap_dir_size (const struct bitmap_dir *dir);
void bitmap_dir_serialize (const struct bitmap_dir *dir, uint8_t *buf);
void bitmap_dir_free (struct bitmap_dir *dir);
/* Number of table entries a consistent bitmap needs. */
uint64_t bitmap_table_size_for (uint64_t vsize, uint32_t gran_bits,
                                uint32_t cluster_size);

/* ---- the image handle (image.c) --------------------------------------- */
#define L2_CACHE_SLOTS 16

struct l2_slot {
  uint64_t offset;                 /* host offset of the L2 table; 0: empty */
  uint64_t *entries;               /* host-endian copy, l2_entries words
                                    * (twice that with extended L2) */
  uint64_t lru;
};

DEFINE_VECTOR_TYPE (name_list, char *, rt_realloc)

struct count_cache;

struct rawtrack_image {
  pthread_mutex_t lock;            /* see the top of this file */
  struct rawtrack_io *file;        /* the qcow2 file */
  struct rawtrack_io *data;        /* external data file, or NULL */
  char *path;                      /* as opened (NULL for _open_io) */
  unsigned flags;                  /* RAWTRACK_OPEN_* */
  bool writable;
  struct count_cache *count_cache; /* read-only handles: dirty counts
                                    * (bitmap-count.c); NULL: none yet */

  struct qcow2_header h;
  uint32_t cluster_size;
  uint64_t virtual_size;           /* h.size rounded down to 512 (QEMU) */
  uint32_t l2_entries;             /* entries per L2 table */
  uint32_t l2_entry_size;          /* 8, or 16 with extended L2 */
  uint32_t subcluster_bits;        /* cluster_bits - 5 with extended L2 */
  bool ext_l2;

  uint64_t *l1;                    /* h.l1_size entries, host endian */
  uint32_t l1_size;

  struct l2_slot l2_cache[L2_CACHE_SLOTS];
  uint64_t l2_clock;

  /* refcounts */
  uint32_t refcount_bits;
  uint64_t *reftable;              /* host endian */
  uint64_t reftable_entries;
  uint32_t refblock_entries;       /* entries per refcount block */
  uint64_t free_hint;              /* first cluster that may be free */
  void *rb_cache;                  /* refcount block cache (qcow2-refcount.c) */

  /* guest writes (guest-io.c): in-place data writes hold free_lock for
   * reading, operations that free clusters hold it for writing, so data is
   * never written into a cluster that was just freed and reused. */
  pthread_rwlock_t free_lock;
  /* Raw external data only: bit c set once guest cluster c is known to
   * map one to one (NORMAL).  Nothing in rawtrack unmaps a cluster of such
   * an image, so a set bit stays true while the image is open, and reads
   * and writes of known clusters skip the metadata lock entirely.  Bits
   * are set with atomic OR, read with atomic loads. */
  uint64_t *normal_map;
  uint64_t nr_clusters;
  struct backing *backing;         /* backing.c: the layer below, or NULL */
  struct track *track;             /* tracking state (track.c), created at
                                    * the first guest write */
  pthread_mutex_t track_init_lock;
  /* Guest writes (pwrite, zero, trim: the whole call; write_target: its
   * own part) hold guest_gate shared; bitmap changes hold it exclusive
   * and stop the tracker first (bitmap-ops.c), so that the tracker never
   * runs on a stale set of enabled bitmaps: it restarts, on the new
   * directory, at the next guest write.  Writer-preferring.  Order:
   * guest_gate -> track_init_lock -> free_lock -> img->lock. */
  pthread_rwlock_t guest_gate;

  /* bitmaps (directory only; bits are loaded on demand) */
  struct bitmap_dir bitmaps;
  /* Names rawtrack_image_bitmap_name handed out from directories that
   * were replaced since: the pointers stay valid until close. */
  struct name_list retired_names;
  bool bitmaps_trusted;            /* extension present and autoclear bit 0 */
};

/* ---- qcow2-refcount.c ------------------------------------------------- */
/* Set up refcount bookkeeping; the table itself is read by
 * qcow2_refcount_load, on first use (every function below calls it). */
int qcow2_refcount_init (struct rawtrack_image *img);
int qcow2_refcount_load (struct rawtrack_image *img);
void qcow2_refcount_free (struct rawtrack_image *img);
/* Refcount of host cluster c; 0 where no block covers it. */
int qcow2_refcount_get (struct rawtrack_image *img, uint64_t c,
                        uint64_t *value);
/* Set the refcount of c.  The covering block must exist.  Written through
 * to the file (not flushed). */
int qcow2_refcount_set (struct rawtrack_image *img, uint64_t c,
                        uint64_t value);
/* Forget cached refcount blocks (after they were rewritten wholesale). */
void qcow2_refcount_cache_drop (struct rawtrack_image *img);
/* Encode/decode one entry of a refcount block of the given width. */
uint64_t refblock_get (const uint8_t *block, uint64_t i, uint32_t bits);
void refblock_set (uint8_t *block, uint64_t i, uint32_t bits, uint64_t v);

/* ---- qcow2-alloc.c ---------------------------------------------------- */
/* Allocate n contiguous clusters with refcount 1 (growing the refcount
 * structures as needed) and return the host offset of the first.  The
 * refcount updates are written but not flushed: callers flush before they
 * publish a reference (refcount before reference). */
int64_t qcow2_alloc_clusters (struct rawtrack_image *img, uint64_t n);
/* Drop one reference from each of n clusters starting at offset. */
int qcow2_free_clusters (struct rawtrack_image *img, uint64_t offset,
                         uint64_t n);
/* Truncate the image file after its last cluster with a non-zero
 * refcount (free clusters at the end are given back, as QEMU does).  The
 * refcount updates that freed them must be flushed first.  img->lock. */
int qcow2_trim_tail (struct rawtrack_image *img);

/* ---- qcow2-map.c ------------------------------------------------------ */
enum qcow2_ctype {
  QCOW2_UNALLOCATED,               /* reads from backing, or zeros */
  QCOW2_ZERO,                      /* reads as zeros */
  QCOW2_NORMAL,                    /* host offset in the data source */
  QCOW2_COMPRESSED,                /* compressed cluster in the image file */
};

struct qcow2_extent {
  enum qcow2_ctype type;
  uint64_t host;                   /* NORMAL: host offset of guest offset */
  uint64_t bytes;                  /* length of the run from the guest offset */
  uint64_t l2_entry;               /* the L2 entry of the first unit (for
                                    * COMPRESSED the raw descriptor); a NORMAL
                                    * run has one COPIED value throughout */
};

/* Map guest [offset, offset+len) to its first run of one type (the run
 * stops at a cluster or subcluster boundary where the type changes).
 * Validates the entries it reads. */
int qcow2_map (struct rawtrack_image *img, uint64_t offset, uint64_t len,
               struct qcow2_extent *ext);
/* L2 table of l1 index i (loaded into the cache), or NULL with *absent set
 * when the L1 entry is 0. */
uint64_t *qcow2_l2_get (struct rawtrack_image *img, uint64_t l1_index,
                        bool *absent);
void qcow2_l2_cache_drop (struct rawtrack_image *img);

#define L1E_OFFSET_MASK   0x00fffffffffffe00ull
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_OFFSET_MASK   0x00fffffffffffe00ull
#define L2E_RESERVED_MASK 0x3f000000000001feull
#define QCOW_OFLAG_COPIED     (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO       (1ull << 0)
#define REFT_OFFSET_MASK      0xfffffffffffffe00ull
#define REFT_RESERVED_MASK    0x1ffull

/* ---- track.c: dirty tracking of guest writes -------------------------- */
struct track;
/* Start tracking (loads every enabled bitmap and prepares the on-disk
 * state for the chosen mode).  Called once, before the first write. */
int track_start (struct rawtrack_image *img);
/* true when the bitmaps cover [offset, offset + len) for a write without
 * any wait or I/O (then the write may go ahead); false: call
 * track_before_write. */
bool track_try_fast (struct rawtrack_image *img, uint64_t offset,
                     uint64_t len);
/* Before data for [offset, offset+len) may be issued: mark every enabled
 * bitmap and make the marks as durable as the mode promises.  Blocks
 * while a group commit makes the covering extents hot. */
int track_before_write (struct rawtrack_image *img, uint64_t offset,
                        uint64_t len);
/* Stop tracking: write exact bits, release everything (close path). */
int track_stop (struct rawtrack_image *img);
/* A copy of an enabled bitmap's bits as tracked right now (exact, with
 * every write so far), for readers such as the NBD server; NULL if the
 * bitmap is not being tracked.  Only the bits of guest bytes [start,
 * start + len) are copied (the rest read as clean), so that a reader of
 * a small range of a large disk pays for that range only.  Caller frees
 * with bitmap_mem_free. */
struct bitmap_mem *track_bitmap (struct rawtrack_image *img, const char *name,
                                 uint64_t start, uint64_t len);

/* ---- track-log.c: the tracking log in cluster 0 ----------------------- */
/* Most extents the log holds (RAWTRACK_MAX_HOT's upper bound). */
#define TRACK_LOG_MAX 256
/* Put the log extension (room for max extents of 2^ext_bits bytes) into
 * the header and set autoclear bit 63, unless a trusted one of that shape
 * is there; write the header, flushed.  *log_off: where the payload is in
 * cluster 0. */
int track_log_install (struct rawtrack_image *img, uint32_t max,
                       uint32_t ext_bits, uint64_t *log_off);
/* Rewrite the payload at log_off in place: the extents a[] then b[], the
 * first max of them (not flushed).  log_off 0: nothing to do. */
int track_log_write (struct rawtrack_image *img, uint64_t log_off,
                     uint32_t max, uint32_t ext_bits, const uint64_t *a,
                     uint64_t nr_a, const uint64_t *b, uint64_t nr_b);
/* What the log says (for check): NONE (no log), CLEAN (rawtrack closed
 * cleanly: the bitmaps are exact), CRASHED (*count extents of
 * *extent_bytes were hot: bits there may be over-reported), STALE
 * (another program wrote the image since). */
enum { TRACK_LOG_NONE, TRACK_LOG_CLEAN, TRACK_LOG_CRASHED, TRACK_LOG_STALE };
int track_log_state (const struct rawtrack_image *img, uint32_t *count,
                     uint64_t *extent_bytes);
/* Fewest extents a log may hold: below this rawtrack refuses to track
 * (and attach, create and bitmap add refuse the image). */
#define TRACK_LOG_MIN 8
/* How many extents a log can hold in cluster 0 (cluster_size bytes) beside
 * everything else header h holds (a log it has left out), at most
 * TRACK_LOG_MAX; 0 if even the rest does not fit.  With plan, count too a
 * bitmaps extension and the data file identity record (datafile-id.c)
 * where h has none yet: what a tracked image will need.  *other: the
 * bytes the rest takes (may be NULL).  -1: out of memory. */
int64_t track_log_room (const struct qcow2_header *h, size_t cluster_size,
                        bool plan, size_t *other);
/* A message for a cluster 0 with no room for TRACK_LOG_MIN entries (-1,
 * ENOSPC); what: "cannot track writes", "refusing to attach", ... */
int track_log_no_room (const struct qcow2_header *h, size_t cluster_size,
                       size_t other, const char *what);

/* ---- guest-read.c ------------------------------------------------------ */
/* Raw external data: is all of guest [offset, offset+len) known NORMAL? */
bool normal_map_covers (struct rawtrack_image *img, uint64_t offset,
                        uint64_t len);
/* Record that guest [offset, offset+len) maps NORMAL (one to one). */
void normal_map_note (struct rawtrack_image *img, uint64_t offset,
                      uint64_t len);
/* The prefix of [offset, offset+count) that lies one to one in the data
 * file's raw_fd: its length (0: none) with the fd in *fd, or -1
 * on a corrupt mapping. */
int64_t raw_run (struct rawtrack_image *img, uint64_t offset, uint64_t count,
                 int *fd);

/* ---- image.c ----------------------------------------------------------- */
/* Take QEMU's writer locks on an image file (data false) or a data file
 * (data true), unless flags lack RAWTRACK_OPEN_RDWR or ask for no locks
 * (RAWTRACK_OPEN_NO_LOCK, RAWTRACK_NO_LOCK=1); see image.c.  -1 with
 * EBUSY when another program has the file open in a conflicting way. */
int image_lock_file (struct rawtrack_io *io, unsigned flags, bool data,
                     const char *path);

/* ---- qcow2-compress.c ------------------------------------------------- */
/* Decompress one cluster: src/src_len as stored, dst gets exactly
 * dst_len (the cluster size) bytes.  type: 0 deflate (raw), 1 zstd.
 * Returns -1 with a message on malformed input. */
int qcow2_decompress (int type, const void *src, size_t src_len, void *dst,
                      size_t dst_len);
/* Read the compressed cluster of L2 entry l2e and copy its bytes for guest
 * [pos, pos+n) (within that cluster) to buf. */
int qcow2_read_compressed (struct rawtrack_image *img, uint64_t l2e,
                           uint64_t pos, uint8_t *buf, uint64_t n);
/* Host byte offset and stored length of a compressed L2 entry. */
void qcow2_compressed_desc (uint64_t l2e, uint32_t cluster_bits,
                            uint64_t *host, uint64_t *len);

/* ---- io/io-nbd.c ------------------------------------------------------- */
/* rawtrack_io_nbd_open; allow_local: the URI may name local files
 * (tls-certificates=, tls-psk-file=). */
struct rawtrack_io *io_nbd_open (const char *uri, unsigned flags,
                                 bool allow_local);

/* ---- datafile.c ------------------------------------------------------- */
/* name as seen from image_path: unchanged if absolute (or image_path has
 * no directory), else joined to image_path's directory.  Allocated. */
char *datafile_join (const char *image_path, const char *name);

/* ---- datafile-id.c ---------------------------------------------------- */
/* Its header extension: type and payload length (track-log.c plans room
 * for it in cluster 0). */
#define DATAID_EXT_TYPE   0x52544944u          /* "RTID" */
#define DATAID_LEN        72
/* At a read-write open with a local data file: compare the recorded
 * identity, mark the bitmaps in use if it changed, record WRITING. */
int dataid_open (struct rawtrack_image *img);
/* At a clean close, after the last flush: record the identity. */
int dataid_close (struct rawtrack_image *img);

/* ---- backing.c -------------------------------------------------------- */
#define BACKING_MAX_DEPTH 32
/* The files of a chain, top first (loop detection). */
struct chain_id {
  uint64_t dev, ino;
  const struct chain_id *next;
};
/* Open img's backing file (none: nothing to do); path is img's.  chain
 * holds img and the layers above it. */
int backing_open (struct rawtrack_image *img, const char *path,
                  unsigned flags, const struct chain_id *chain,
                  unsigned depth);
void backing_close (struct rawtrack_image *img);
/* Guest bytes the backing chain supplies (zeros without one, or past the
 * end of the layer below). */
int backing_read (struct rawtrack_image *img, uint8_t *buf, uint64_t count,
                  uint64_t offset);
/* Block status of [offset, offset+count) in the layers below. */
int64_t backing_status (struct rawtrack_image *img, uint64_t offset,
                        uint64_t count, unsigned *status);
/* rawtrack_image_open, for a layer of a chain (image.c). */
struct rawtrack_image *image_open_chain (const char *path, unsigned flags,
                                         const char *data_file,
                                         const struct chain_id *chain,
                                         unsigned depth);
/* Resolve the stored data file name for an image at image_path.  Returns a
 * malloc'd path, or NULL with an error (json:/protocol names refused). */
char *datafile_resolve (const char *image_path, const char *stored);
/* true if name looks like a json: or protocol: name. */
bool datafile_name_is_special (const char *name);
/* May an NBD URI stored in an image be followed (RAWTRACK_OPEN_ALLOW_REMOTE
 * in open_flags, or RAWTRACK_ALLOW_REMOTE=1)? */
bool datafile_remote_allowed (unsigned open_flags);

#endif /* RAWTRACK_INTERNAL_H */
