/* rawtrack - consistency check and repair of an image (`rawtrack check`).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: rawtrack_image_check.  It recomputes, from every structure that
 * references a cluster of the image file, the refcount each host cluster
 * should have (the "IMRT", in-memory refcount table), compares it with the
 * refcounts stored on disk, validates L1/L2/bitmap/snapshot entries on the
 * way, checks the COPIED flags, and with repair flags fixes what can be
 * fixed safely.  The semantics (what is counted, what is an error, which
 * counters move) are QEMU's qcow2_check_refcounts (block/qcow2-refcount.c)
 * and qcow2_check_bitmaps_refcounts (block/qcow2-bitmap.c), so that our
 * counters agree with `qemu-img check`.  One deliberate addition: with an
 * external data file, a host offset that differs from the guest offset is
 * a corruption (qemu-img does not look, but QEMU marks the image corrupt
 * when it reads such a cluster).
 *
 * Locking: the whole check runs under img->lock.
 *
 * One pass (run_pass) is:
 *
 *   1. read_snapshots   parse and bound the snapshot table
 *   2. calculate        IMRT += header, active L1 + its L2 tables + data
 *                       clusters (images without a data file), compressed
 *                       ranges (512-byte granular), snapshot L1/L2/data,
 *                       snapshot table, refcount table, FDE header, bitmap
 *                       directory, bitmap tables, bitmap data clusters,
 *                       refcount blocks (each must end up at exactly 1)
 *   3. scan_uncovered   a cluster that needs a refcount but has no usable
 *                       refcount block forces a rebuild
 *   4. compare          stored vs IMRT: stored < IMRT is an error, stored >
 *                       IMRT a leak; (repair) raise too-low refcounts
 *   5. lower            (repair) lower leaked refcounts
 *   6. check_copied     COPIED (bit 63) iff refcount == 1, in the active L1
 *                       and every L2 entry it reaches; (repair) rewrite
 *   7. clear the dirty and corrupt bits when nothing remains (repair)
 *
 * and rawtrack_image_check runs a second, read-only pass when the first
 * one fixed anything ("Double checking the fixed image now..."), like
 * qemu-img: the result holds that pass's findings plus the first one's
 * fixed counters.
 *
 * On-disk invariants relied on: refcount blocks and the refcount table
 * are covered by refcounts themselves; every number read from disk is
 * bounded before it sizes anything (the IMRT is sized by the image file
 * length plus one cluster of slack, references past that are errors and
 * are not counted; tables by QEMU's limits).  Reads past the end of the
 * file return zeros (the I/O contract), as they do in QEMU.
 *
 * Repair ordering (crash rules; a crash anywhere leaves at worst leaks):
 *
 *   R1  Refcount increases are written and flushed before anything else
 *       that relies on them; decreases come after that flush, and are
 *       flushed too.  A torn refcount block write mixes old and new
 *       sectors of one phase only, so every mix is as safe as its parts.
 *   R2  Rebuild (QEMU's rebuild_refcount_structure, but placed at the end
 *       of the file): new refcount blocks and a new refcount table are
 *       written into clusters past the end of the file and flushed BEFORE
 *       the header is switched to them (12 bytes at offset 48, one sector,
 *       written and flushed).  Until the switch the old structures are
 *       untouched and authoritative; afterwards the old ones are merely
 *       leaked, and the recount that follows lowers them (R1).
 *   R3  COPIED fixes are written only after the refcounts are right and
 *       flushed: a COPIED bit on a cluster whose refcount is not yet 1 on
 *       disk would let QEMU overwrite shared data in place.  An L2 table
 *       is rewritten only when every reference to its cluster is an L1
 *       entry (l2_writable): never when it doubles as data or other
 *       metadata.  (qemu-img rewrites it, changing what the guest reads.)
 *   R4  A misaligned preallocated zero cluster is turned into a plain zero
 *       entry (it reads as zeros either way; this only drops a reference).
 *       The write waits until the count is complete, and is made only in
 *       a cluster whose every reference is as an L2 table: never into
 *       something that merely looks like one (a refcount block, data).
 *   R5  The dirty and corrupt bits (8 bytes at offset 72) are cleared last,
 *       after a flush, and only when no corruption or check error remains.
 *   R6  Nothing is freed (no leak is lowered, no rebuild, which would give
 *       every uncounted cluster refcount 0) when some table could not be
 *       followed: an unreadable table, a misaligned L2 table or snapshot
 *       L1 offset, an invalid bitmap table entry.  What looks leaked may
 *       then still be in use.  (qemu-img frees it.)
 *   R7  With only leak repair requested, nothing is written to a refcount
 *       structure that needs a rebuild: a refcount block may double as a
 *       data cluster.
 *
 * Sections below: helpers and the IMRT; stored refcounts; snapshots; L1
 * and L2 (with the deferred zero fixes); bitmaps; refcount structures and
 * calculate; compare, lower and rebuild; COPIED; the pass driver and the
 * public entry point.
 */
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <stdarg.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"
#include "vector.h"
#include "cleanup.h"

#define FIX_LEAKS   RAWTRACK_CHECK_REPAIR_LEAKS
#define FIX_ERRORS  (RAWTRACK_CHECK_REPAIR_ALL & ~RAWTRACK_CHECK_REPAIR_LEAKS)

/* Snapshot table limits, as QEMU's block/qcow2.h. */
#define SN_HEADER_SIZE    40                 /* fixed part of an entry */
#define SN_MAX            65536u             /* QCOW_MAX_SNAPSHOTS */
#define SN_MAX_EXTRA      1024u              /* QCOW_MAX_SNAPSHOT_EXTRA_DATA */
#define SN_MAX_TABLE      (1024ull * SN_MAX) /* QCOW_MAX_SNAPSHOTS_SIZE */
#define SN_MIN_EXTRA_V3   16u                /* vm_state_size_large + disk_size */

#define L2_BITMAP_ALL_ALLOC  0x00000000ffffffffull
#define L2_BITMAP_ALL_ZEROES 0xffffffff00000000ull

#define HEADER_REFTABLE_AT 48   /* refcount_table_offset, then _clusters */
#define HEADER_INCOMPAT_AT 72

/* One snapshot table entry (the parts the check needs). */
struct snapshot {
  uint64_t l1_offset;         /* snapshot's L1 table */
  uint32_t l1_size;           /* entries */
  uint32_t extra_size;        /* extra data bytes */
  char *id;                   /* NUL-terminated copies */
  char *name;
};

/* A misaligned preallocated zero cluster to be made a plain zero entry
 * once the count is complete (R4). */
struct zero_fix {
  uint64_t l2_off;            /* its L2 table */
  uint32_t idx;               /* entry index */
  uint64_t host;              /* the misaligned host offset */
};
DEFINE_VECTOR_TYPE (zero_fixes, struct zero_fix, rt_realloc)

/* An L2 table of the active L1, and how many L1 entries (active or
 * snapshot) point to it. */
struct l2ref {
  uint64_t off;
  uint64_t refs;
};

/* QEMU's cluster types (qcow2_get_cluster_type). */
enum ctype {
  CT_UNALLOCATED,
  CT_ZERO_PLAIN,
  CT_ZERO_ALLOC,
  CT_NORMAL,
  CT_COMPRESSED,
};

/* Where refcount block idx is. */
enum rb_state {
  RB_NONE,                    /* no block: every refcount it would hold is 0 */
  RB_OK,                      /* at *off */
  RB_BAD,                     /* misaligned: unreadable */
};

/* The state of one pass. */
struct pass {
  struct rawtrack_image *img;
  unsigned fix;               /* FIX_* for this pass */
  bool first;                 /* the first pass: report bitmap info lines */
  bool silent;                /* recount after a rebuild: no messages */
  rawtrack_check_report_fn report;
  void *opaque;
  struct rawtrack_check_result r;

  uint64_t file_size;         /* bytes */
  uint64_t cs;                /* cluster size */
  uint32_t cb;                /* cluster bits */
  uint32_t bits;              /* refcount width */
  uint64_t E;                 /* entries per refcount block */
  uint64_t max;               /* largest storable refcount */
  bool has_df;                /* external data file (incompatible bit 2) */

  uint8_t *imrt;              /* expected refcounts, refcount block layout */
  uint64_t imrt_bytes;        /* whole clusters */
  uint64_t nb;                /* clusters compared: the file's, grown by
                               * references into its last partial cluster */
  bool rebuild;               /* the refcount structure must be rebuilt */
  bool lost;                  /* some table could not be followed: clusters
                               * that look leaked may still be in use */
  bool wrote_l2;              /* an L1/L2 entry was rewritten */

  struct l2ref *l2r;          /* active L2 tables, sorted by offset */
  size_t nl2r;
  struct zero_fixes zf;       /* deferred R4 fixes */

  struct snapshot *sn;
  uint32_t nb_sn;
  uint64_t sn_size;           /* bytes of the snapshot table */

  uint8_t *l2buf;             /* one cluster: an L2 table */
  uint8_t *rb;                /* one cluster: a refcount block */
  uint8_t *rbc;               /* stored_get's cached block */
  uint64_t rbc_idx;
  bool rbc_valid;
};

static void say (struct pass *p, int level, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Hand one finding to the caller's callback. */
static void
say (struct pass *p, int level, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  if (!p->report || p->silent)
    return;
  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  p->report (p->opaque, level, msg);
}

static const char *
last_error (void)
{
  const char *e = rawtrack_get_error ();

  return e ? e : "unknown error";
}

/* ---- the IMRT ------------------------------------------------------- */

static uint64_t
imrt_get (const struct pass *p, uint64_t c)
{
  return refblock_get (p->imrt, c, p->bits);
}

static void
imrt_set (struct pass *p, uint64_t c, uint64_t v)
{
  refblock_set (p->imrt, c, p->bits, v);
}

/* Make the IMRT hold at least n entries (zeroed).  Always whole
 * clusters, so that a refcount block is a slice of it. */
static int
imrt_reserve (struct pass *p, uint64_t n)
{
  uint64_t bytes, blocks;
  uint8_t *q;

  blocks = DIV_ROUND_UP (n, p->E);
  if (blocks == 0)
    blocks = 1;
  if (MUL_OVERFLOW (blocks, p->cs, &bytes) || bytes > SIZE_MAX)
    return set_error (ENOMEM, "the image file is too large to check (%"
                      PRIu64 " clusters)", n);
  if (bytes <= p->imrt_bytes)
    return 0;
  q = rt_realloc (p->imrt, bytes);
  if (!q)
    return -1;
  memset (q + p->imrt_bytes, 0, bytes - p->imrt_bytes);
  p->imrt = q;
  p->imrt_bytes = bytes;
  return 0;
}

/* Count one reference to every cluster that [offset, offset+size)
 * touches (qcow2_inc_refcounts_imrt).  The last cluster of a file may be
 * partial, so a reference reaching less than one cluster past the end is
 * fine; anything further is an error and is not counted. */
static void
inc_refs (struct pass *p, uint64_t offset, uint64_t size)
{
  uint64_t end, c, last, v;

  if (size == 0)
    return;
  if (ADD_OVERFLOW (offset, size, &end) ||
      end >= p->file_size + p->cs) {
    say (p, 2, "ERROR cluster %" PRIu64 " is past the end of the image "
         "file: a reference to %" PRIu64 " bytes at offset 0x%" PRIx64
         " (the file has %" PRIu64 " bytes)",
         (offset + size - 1) >> p->cb, size, offset, p->file_size);
    p->r.corruptions++;
    return;
  }
  last = (end - 1) >> p->cb;
  for (c = offset >> p->cb; c <= last; c++) {
    if ((c + 1) * p->bits > p->imrt_bytes * 8) {
      /* Cannot happen: the IMRT has one cluster of slack. */
      p->r.check_errors++;
      return;
    }
    if (c >= p->nb)
      p->nb = c + 1;
    v = imrt_get (p, c);
    if (v >= p->max) {
      say (p, 2, "ERROR: overflow cluster offset=0x%" PRIx64 ": more "
           "references than a %" PRIu32 "-bit refcount can hold (use "
           "'qemu-img amend -o refcount_bits=N' to widen the refcounts)",
           c << p->cb, p->bits);
      p->r.corruptions++;
      continue;
    }
    imrt_set (p, c, v + 1);
  }
}

/* ---- stored refcounts ---------------------------------------------- */

/* Locate refcount block idx, as qcow2_get_refcount does: reserved bits
 * are masked off, an offset of 0 means "no block". */
static enum rb_state
rb_locate (const struct pass *p, uint64_t idx, uint64_t *off)
{
  const struct rawtrack_image *img = p->img;
  uint64_t o;

  *off = 0;
  if (idx >= img->reftable_entries)
    return RB_NONE;
  o = img->reftable[idx] & REFT_OFFSET_MASK;
  if (o == 0)
    return RB_NONE;
  if (!IS_ALIGNED (o, p->cs))
    return RB_BAD;
  *off = o;
  return RB_OK;
}

/* Stored refcount of cluster c (one block cached).  -1 if unreadable. */
static int
stored_get (struct pass *p, uint64_t c, uint64_t *v)
{
  uint64_t idx = c / p->E, off;

  *v = 0;
  switch (rb_locate (p, idx, &off)) {
  case RB_NONE: return 0;
  case RB_BAD: return -1;
  case RB_OK: break;
  }
  if (!p->rbc_valid || p->rbc_idx != idx) {
    p->rbc_valid = false;
    if (io_read (p->img->file, p->rbc, p->cs, off, "refcount block") == -1)
      return -1;
    p->rbc_idx = idx;
    p->rbc_valid = true;
  }
  *v = refblock_get (p->rbc, c % p->E, p->bits);
  return 0;
}

/* ---- snapshots ------------------------------------------------------ */

static void
free_snapshots (struct pass *p)
{
  uint32_t i;

  for (i = 0; i < p->nb_sn; i++) {
    free (p->sn[i].id);
    free (p->sn[i].name);
  }
  free (p->sn);
  p->sn = NULL;
  p->nb_sn = 0;
  p->sn_size = 0;
}

/* Read a string of n bytes at *pos (n < 64 KiB: a u16 from disk). */
static char *
read_string (struct pass *p, uint64_t *pos, uint32_t n)
{
  char *s = rt_malloc (n + 1);

  if (!s)
    return NULL;
  if (n && io_read (p->img->file, s, n, *pos, "snapshot table") == -1) {
    free (s);
    return NULL;
  }
  s[n] = '\0';
  *pos += n;
  return s;
}

/* Parse the snapshot table (qcow2_check_read_snapshot_table).  Entry:
 * l1_table_offset u64, l1_size u32, id_str_size u16, name_size u16,
 * date_sec u32, date_nsec u32, vm_clock_nsec u64, vm_state_size u32,
 * extra_data_size u32; then the extra data, the id, the name; the next
 * entry starts 8-byte aligned.  A table that cannot be read is a check
 * error, and its snapshots are then not counted. */
static void
read_snapshots (struct pass *p)
{
  const struct qcow2_header *h = &p->img->h;
  uint64_t pos = h->snapshots_offset, len = 0;
  uint32_t i, n = h->nb_snapshots;

  if (n == 0)
    return;
  if (n > SN_MAX) {
    say (p, 2, "ERROR snapshot table too large: %" PRIu32 " snapshots "
         "(offset 60), at most %u are supported", n, SN_MAX);
    p->r.check_errors++;
    p->lost = true;
    return;
  }
  if (!IS_ALIGNED (pos, p->cs) ||
      pos > (uint64_t) INT64_MAX - (uint64_t) n * SN_HEADER_SIZE) {
    say (p, 2, "ERROR snapshot table offset invalid: 0x%" PRIx64
         " (offset 64)", pos);
    p->r.check_errors++;
    p->lost = true;
    return;
  }
  p->sn = rt_calloc (n, sizeof *p->sn);
  if (!p->sn)
    goto fail;
  for (i = 0; i < n; i++) {
    struct snapshot *s = &p->sn[i];
    uint8_t e[SN_HEADER_SIZE];
    uint32_t id_size, name_size;

    pos = ROUND_UP (pos, 8);
    len = ROUND_UP (len, 8);
    if (io_read (p->img->file, e, sizeof e, pos, "snapshot table") == -1)
      goto fail;
    pos += sizeof e;
    p->nb_sn = i + 1;
    s->l1_offset = be64_load (e);
    s->l1_size = be32_load (e + 8);
    id_size = be16_load (e + 12);
    name_size = be16_load (e + 14);
    s->extra_size = be32_load (e + 36);
    if (s->extra_size > SN_MAX_EXTRA) {
      rt_set_error (RAWTRACK_ECORRUPT, "too much extra metadata in "
                    "snapshot table entry %" PRIu32 " (%" PRIu32 " > %u "
                    "bytes)", i, s->extra_size, SN_MAX_EXTRA);
      goto fail;
    }
    pos += s->extra_size;
    if (!(s->id = read_string (p, &pos, id_size)) ||
        !(s->name = read_string (p, &pos, name_size)))
      goto fail;
    len += SN_HEADER_SIZE + s->extra_size + id_size + name_size;
    if (len > SN_MAX_TABLE) {
      rt_set_error (RAWTRACK_ECORRUPT, "the snapshot table is too big "
                    "(more than %llu bytes)", SN_MAX_TABLE);
      goto fail;
    }
  }
  p->sn_size = pos - h->snapshots_offset;

  /* v3 entries carry at least vm_state_size_large and disk_size. */
  if (h->version >= 3)
    for (i = 0; i < n; i++)
      if (p->sn[i].extra_size < SN_MIN_EXTRA_V3) {
        say (p, 2, "ERROR snapshot table entry %" PRIu32 " is incomplete "
             "(%" PRIu32 " bytes of extra data, version 3 needs %u)", i,
             p->sn[i].extra_size, SN_MIN_EXTRA_V3);
        p->r.corruptions++;
      }
  return;

 fail:
  say (p, 2, "ERROR failed to read the snapshot table at offset 0x%" PRIx64
       ": %s", h->snapshots_offset, last_error ());
  p->r.check_errors++;
  p->lost = true;
  free_snapshots (p);
}

/* ---- L1 and L2 ------------------------------------------------------ */

static enum ctype
ctype_of (const struct pass *p, uint64_t e)
{
  if (e & QCOW_OFLAG_COMPRESSED)
    return CT_COMPRESSED;
  if ((e & QCOW_OFLAG_ZERO) && !p->img->ext_l2)
    return (e & L2E_OFFSET_MASK) ? CT_ZERO_ALLOC : CT_ZERO_PLAIN;
  if (!(e & L2E_OFFSET_MASK))
    /* Offset 0 is a valid data file offset: COPIED tells them apart. */
    return p->has_df && (e & QCOW_OFLAG_COPIED) ? CT_NORMAL : CT_UNALLOCATED;
  return CT_NORMAL;
}

/* R4: make entry i of the L2 table at l2_off read as zeros without a
 * host cluster (QEMU's fix_l2_entry_by_zero).  The entry is read again:
 * the L2 buffer has moved on since the entry was seen. */
static int
zero_entry (struct pass *p, uint64_t l2_off, uint32_t i)
{
  struct rawtrack_image *img = p->img;
  const uint64_t at = l2_off + (uint64_t) i * img->l2_entry_size;
  uint8_t ep[16];

  if (io_read (img->file, ep, img->l2_entry_size, at, "L2 table entry") == -1)
    return -1;
  if (img->ext_l2) {
    uint64_t bm = be64_load (ep + 8);

    bm |= bm << 32;             /* allocated subclusters become zero */
    bm &= L2_BITMAP_ALL_ZEROES;
    be64_store (ep, 0);
    be64_store (ep + 8, bm);
  }
  else
    be64_store (ep, QCOW_OFLAG_ZERO);
  p->wrote_l2 = true;
  if (io_write (img->file, ep, img->l2_entry_size, at,
                "L2 table entry") == -1 ||
      io_flush (img->file, "image file") == -1)
    return -1;
  return 0;
}

/* Remember a zero fix for after the count; -1 if out of memory. */
static int
defer_zero (struct pass *p, uint64_t l2_off, uint32_t i, uint64_t host)
{
  struct zero_fix z = { .l2_off = l2_off, .idx = i, .host = host };

  return zero_fixes_append (&p->zf, z);
}

static int
zero_fix_cmp (const void *a, const void *b)
{
  const struct zero_fix *x = a, *y = b;

  if (x->l2_off != y->l2_off)
    return x->l2_off < y->l2_off ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Apply the deferred zero fixes, now that the count is complete.  An
 * entry is seen once per walk of its table (once per L1 entry, active or
 * snapshot, that points to it); the fix is made only when those walks
 * are all the references the table cluster has, i.e. it is an L2 table
 * and nothing else (not doubling as other metadata or as data).  QEMU
 * counts such an entry fixed once (later walks see the fixed table).
 * What is not fixed is counted as QEMU counts it unfixed. */
static void
apply_zero_fixes (struct pass *p)
{
  size_t k, n;

  if (p->zf.len == 0)
    return;
  qsort (p->zf.ptr, p->zf.len, sizeof *p->zf.ptr, zero_fix_cmp);
  for (k = 0; k < p->zf.len; k += n) {
    const struct zero_fix *z = &p->zf.ptr[k];
    bool alone;
    size_t j;

    for (n = 1; k + n < p->zf.len && p->zf.ptr[k + n].l2_off == z->l2_off &&
                p->zf.ptr[k + n].idx == z->idx; n++)
      ;
    alone = imrt_get (p, z->l2_off >> p->cb) == n;
    if (alone && zero_entry (p, z->l2_off, z->idx) == 0) {
      say (p, 2, "Repairing offset=%" PRIx64 ": Preallocated cluster is "
           "not properly aligned; L2 entry corrupted.", z->host);
      p->r.corruptions -= n;
      p->r.corruptions_fixed++;
      continue;
    }
    if (alone) {
      say (p, 2, "ERROR: failed to overwrite the L2 entry: %s",
           last_error ());
      p->r.check_errors++;
    }
    for (j = 0; j < n; j++) {
      if (alone)
        say (p, 2, "ERROR offset=%" PRIx64 ": Preallocated cluster is not "
             "properly aligned; L2 entry corrupted.", z->host);
      else
        say (p, 2, "ERROR offset=%" PRIx64 ": Preallocated cluster is not "
             "properly aligned; L2 entry corrupted.  Not repaired: its L2 "
             "table at offset 0x%" PRIx64 " is also used as something "
             "else", z->host, z->l2_off);
      inc_refs (p, z->host, p->cs);
    }
  }
  zero_fixes_reset (&p->zf);
}

/* Count what the L2 table at l2_off references and validate its entries
 * (check_refcounts_l2).  guest: guest offset of its first entry; frag:
 * update the allocation statistics (active L1 only). */
static void
check_l2 (struct pass *p, uint64_t l2_off, uint64_t guest, bool frag)
{
  /* Entries are only rewritten in what can be an L2 table. */
  const bool table_ok = IS_ALIGNED (l2_off, p->cs) && l2_off >= p->cs &&
                        l2_off < p->file_size;
  struct rawtrack_image *img = p->img;
  const uint32_t esize = img->l2_entry_size;
  uint64_t next = 0;
  uint32_t i;

  if (io_read (img->file, p->l2buf, p->cs, l2_off, "L2 table") == -1) {
    say (p, 2, "ERROR: I/O error reading the L2 table at offset 0x%" PRIx64
         ": %s", l2_off, last_error ());
    p->r.check_errors++;
    p->lost = true;
    return;
  }
  for (i = 0; i < img->l2_entries; i++) {
    const uint8_t *ep = p->l2buf + (uint64_t) i * esize;
    uint64_t e = be64_load (ep);
    uint64_t bm = img->ext_l2 ? be64_load (ep + 8) : 0;
    uint64_t g = guest + ((uint64_t) i << p->cb);
    enum ctype t = ctype_of (p, e);

    if (t != CT_COMPRESSED && (e & L2E_RESERVED_MASK)) {
      say (p, 2, "ERROR found l2 entry with reserved bits set: %" PRIx64
           " (L2 table at offset 0x%" PRIx64 ", entry %" PRIu32 ")", e,
           l2_off, i);
      p->r.corruptions++;
    }

    switch (t) {
    case CT_COMPRESSED: {
      uint64_t host, len;

      qcow2_compressed_desc (e, p->cb, &host, &len);
      if (e & QCOW_OFLAG_COPIED) {
        say (p, 2, "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
             "be set for compressed clusters", host);
        e &= ~QCOW_OFLAG_COPIED;
        p->r.corruptions++;
      }
      if (p->has_df) {
        say (p, 2, "ERROR compressed cluster %" PRIu32 " with data file, "
             "entry=0x%" PRIx64 " (L2 table at offset 0x%" PRIx64 ")", i, e,
             l2_off);
        p->r.corruptions++;
        break;
      }
      if (bm) {
        say (p, 2, "ERROR compressed cluster %" PRIu32 " with non-zero "
             "subcluster allocation bitmap, entry=0x%" PRIx64, i, e);
        p->r.corruptions++;
        break;
      }
      inc_refs (p, host, len);
      if (frag) {
        /* Compressed clusters are fragmented by nature (QEMU). */
        p->r.allocated_clusters++;
        p->r.compressed_clusters++;
        p->r.fragmented_clusters++;
      }
      break;
    }

    case CT_ZERO_ALLOC:
    case CT_NORMAL: {
      uint64_t off = e & L2E_OFFSET_MASK;
      bool deferred = false;

      if ((bm >> 32) & bm) {
        say (p, 2, "ERROR offset=%" PRIx64 ": Allocated cluster has "
             "corrupted subcluster allocation bitmap", off);
        p->r.corruptions++;
      }
      if (!IS_ALIGNED (off, p->cs)) {
        bool data = img->ext_l2 ? (bm & L2_BITMAP_ALL_ALLOC) != 0
                                : !(e & QCOW_OFLAG_ZERO);

        p->r.corruptions++;
        if (data)
          say (p, 2, "ERROR offset=%" PRIx64 ": Data cluster is not "
               "properly aligned; L2 entry corrupted.", off);
        else if (!(p->fix & FIX_ERRORS) || !table_ok ||
                 defer_zero (p, l2_off, i, off) == -1)
          say (p, 2, "ERROR offset=%" PRIx64 ": Preallocated cluster is "
               "not properly aligned; L2 entry corrupted.", off);
        else
          deferred = true;      /* apply_zero_fixes decides */
      }
      else if (p->has_df && off != g) {
        /* Not a qemu-img finding; QEMU marks the image corrupt on read. */
        say (p, 2, "ERROR data file cluster: guest offset 0x%" PRIx64
             " is mapped to data file offset 0x%" PRIx64 " (L2 table at "
             "offset 0x%" PRIx64 ", entry %" PRIu32 "); an external data "
             "file must be mapped one to one.  qemu-img check does not "
             "report this, but QEMU marks the image corrupt when it reads "
             "the cluster", g, off, l2_off, i);
        p->r.corruptions++;
      }
      if (frag) {
        p->r.allocated_clusters++;
        if (next && off != next)
          p->r.fragmented_clusters++;
        next = off + p->cs;
      }
      if (!p->has_df && !deferred)
        inc_refs (p, off, p->cs);
      break;
    }

    case CT_ZERO_PLAIN:
      break;

    case CT_UNALLOCATED:
      if (bm & L2_BITMAP_ALL_ALLOC) {
        say (p, 2, "ERROR: Unallocated cluster has non-zero subcluster "
             "allocation map (L2 table at offset 0x%" PRIx64 ", entry %"
             PRIu32 ")", l2_off, i);
        p->r.corruptions++;
      }
      break;
    }
  }
}

static int
l2ref_cmp (const void *a, const void *b)
{
  const struct l2ref *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

/* Collect the L2 tables of the active L1 (to be counted by check_l1).
 * Without memory the list stays empty: then no L2 table is rewritten. */
static void
l2refs_init (struct pass *p)
{
  const struct rawtrack_image *img = p->img;
  size_t n = 0, k;
  uint32_t i;

  free (p->l2r);
  p->l2r = NULL;
  p->nl2r = 0;
  if (img->l1_size == 0 ||
      !(p->l2r = rt_calloc (img->l1_size, sizeof *p->l2r)))
    return;
  for (i = 0; i < img->l1_size; i++)
    if (img->l1[i] & L1E_OFFSET_MASK)
      p->l2r[n++].off = img->l1[i] & L1E_OFFSET_MASK;
  if (n == 0)
    return;
  qsort (p->l2r, n, sizeof *p->l2r, l2ref_cmp);
  for (k = 1, p->nl2r = 1; k < n; k++)
    if (p->l2r[k].off != p->l2r[p->nl2r - 1].off)
      p->l2r[p->nl2r++].off = p->l2r[k].off;
}

static struct l2ref *
l2ref_find (const struct pass *p, uint64_t off)
{
  struct l2ref key = { .off = off };

  if (p->nl2r == 0)
    return NULL;
  return bsearch (&key, p->l2r, p->nl2r, sizeof key, l2ref_cmp);
}

/* May the active L2 table at off be rewritten in place?  Only when it is
 * where an L2 table can be and every reference to its cluster is an L1
 * entry: never when it doubles as other metadata or as data. */
static bool
l2_writable (const struct pass *p, uint64_t off)
{
  const struct l2ref *r = l2ref_find (p, off);

  return r && IS_ALIGNED (off, p->cs) && off >= p->cs &&
         off < p->file_size && imrt_get (p, off >> p->cb) == r->refs;
}

/* Count an L1 table, its L2 tables and what they reference
 * (check_refcounts_l1).  active: the image's L1 (img->l1), else a
 * snapshot's, read from disk (l1_size is bounded by the caller). */
static void
check_l1 (struct pass *p, uint64_t l1_off, uint32_t l1_size, bool active)
{
  struct rawtrack_image *img = p->img;
  const uint64_t span = (uint64_t) img->l2_entries << p->cb;
  CLEANUP_FREE uint64_t *buf = NULL;
  const uint64_t *l1;
  uint32_t i;

  if (l1_size == 0)
    return;
  inc_refs (p, l1_off, (uint64_t) l1_size * 8);
  if (active)
    l1 = img->l1;
  else {
    buf = rt_malloc ((size_t) l1_size * 8);
    if (!buf ||
        io_read (img->file, buf, (uint64_t) l1_size * 8, l1_off,
                 "snapshot L1 table") == -1) {
      say (p, 2, "ERROR: cannot read the L1 table at offset 0x%" PRIx64
           ": %s", l1_off, last_error ());
      p->r.check_errors++;
      p->lost = true;
      return;
    }
    for (i = 0; i < l1_size; i++)
      buf[i] = be64_load (&buf[i]);
    l1 = buf;
  }

  for (i = 0; i < l1_size; i++) {
    uint64_t e = l1[i], l2_off;

    if (e == 0)
      continue;
    if (e & L1E_RESERVED_MASK) {
      say (p, 2, "ERROR found L1 entry with reserved bits set: %" PRIx64
           " (L1 table at offset 0x%" PRIx64 ", entry %" PRIu32 ")", e,
           l1_off, i);
      p->r.corruptions++;
    }
    l2_off = e & L1E_OFFSET_MASK;
    inc_refs (p, l2_off, p->cs);
    if (l2_off) {
      struct l2ref *r = l2ref_find (p, l2_off);

      if (r)
        r->refs++;
    }
    if (!IS_ALIGNED (l2_off, p->cs)) {
      say (p, 2, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
           "aligned; L1 entry corrupted", l2_off);
      p->r.corruptions++;
      p->lost = true;           /* where is the real table? */
    }
    check_l2 (p, l2_off, (uint64_t) i * span, active);
  }
}

/* ---- bitmaps -------------------------------------------------------- */

/* qcow2_check_bitmaps_refcounts: the directory, every bitmap table and
 * every data cluster.  The directory itself was validated at open. */
static void
check_bitmaps (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint32_t b, j;

  if (!img->bitmaps_trusted || img->bitmaps.nr == 0)
    return;
  if (p->first) {
    uint32_t hot;
    uint64_t eb;

    switch (track_log_state (img, &hot, &eb)) {
    case TRACK_LOG_CRASHED:
      say (p, 0, "rawtrack stopped without closing the image: %" PRIu32
           " extent(s) of %" PRIu64 " MiB were marked dirty ahead of "
           "writes, so up to %" PRIu64 " bytes per enabled bitmap may be "
           "over-reported (never under-reported)", hot, eb >> 20, hot * eb);
      break;
    case TRACK_LOG_STALE:
      say (p, 0, "another program wrote this image after rawtrack tracked "
           "it: rawtrack's over-report record no longer applies");
      break;
    }
  }
  inc_refs (p, img->h.bitmap_dir_offset, img->h.bitmap_dir_size);
  for (b = 0; b < img->bitmaps.nr; b++) {
    const struct bitmap_entry *bm = &img->bitmaps.entries[b];
    uint64_t bytes = (uint64_t) bm->table_size * 8;
    CLEANUP_FREE uint64_t *table = NULL;

    if (bm->flags & BME_FLAG_IN_USE) {
      p->r.bitmaps_in_use++;
      if (p->first)
        say (p, 0, "bitmap '%s' is in use (inconsistent): remove it with "
             "'rawtrack bitmap remove' or 'qemu-img bitmap --remove'",
             bm->name);
    }
    inc_refs (p, bm->table_offset, bytes);
    /* At most 512 MiB of bitmap data: bytes <= 512 MiB / cs * 8. */
    table = rt_malloc (bytes);
    if (!table ||
        io_read (img->file, table, bytes, bm->table_offset,
                 "bitmap table") == -1) {
      say (p, 2, "ERROR cannot read the table of bitmap '%s' at offset 0x%"
           PRIx64 ": %s", bm->name, bm->table_offset, last_error ());
      p->r.check_errors++;
      p->lost = true;
      continue;
    }
    for (j = 0; j < bm->table_size; j++) {
      uint64_t e = be64_load (&table[j]);
      uint64_t off = e & BME_TABLE_ENTRY_OFFSET_MASK;

      if ((e & BME_TABLE_ENTRY_RESERVED_MASK) ||
          (off && ((e & BME_TABLE_ENTRY_FLAG_ALL_ONES) ||
                   !IS_ALIGNED (off, p->cs)))) {
        say (p, 2, "ERROR bitmap '%s': table entry %" PRIu32 " (at offset "
             "0x%" PRIx64 ") is invalid: 0x%016" PRIx64, bm->name, j,
             bm->table_offset + (uint64_t) j * 8, e);
        p->r.corruptions++;
        p->lost = true;
        continue;
      }
      if (off)
        inc_refs (p, off, p->cs);
    }
  }
}

/* ---- refcount structures -------------------------------------------- */

/* check_refblocks: every refcount table entry must be valid and point
 * into the image, and each block must be referenced exactly once. */
static void
check_refblocks (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint64_t i;

  for (i = 0; i < img->reftable_entries; i++) {
    uint64_t e = img->reftable[i], off = e & REFT_OFFSET_MASK;

    if (e & REFT_RESERVED_MASK) {
      say (p, 2, "ERROR refcount table entry %" PRIu64 " has reserved bits "
           "set: 0x%016" PRIx64, i, e);
      p->r.corruptions++;
      p->rebuild = true;
      continue;
    }
    if (!IS_ALIGNED (off, p->cs)) {
      say (p, 2, "ERROR refcount block %" PRIu64 " is not cluster aligned; "
           "refcount table entry corrupted (offset 0x%" PRIx64 ")", i, off);
      p->r.corruptions++;
      p->rebuild = true;
      continue;
    }
    if ((off >> p->cb) >= p->nb) {
      say (p, 2, "ERROR refcount block %" PRIu64 " is outside image "
           "(offset 0x%" PRIx64 ", the file has %" PRIu64 " bytes)", i, off,
           p->file_size);
      p->r.corruptions++;
      p->rebuild = true;
      continue;
    }
    if (off) {
      inc_refs (p, off, p->cs);
      if (imrt_get (p, off >> p->cb) != 1) {
        say (p, 2, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64
             " (offset 0x%" PRIx64 " is also used by something else)", i,
             imrt_get (p, off >> p->cb), off);
        p->r.corruptions++;
        p->rebuild = true;
      }
    }
  }
}

/* Build the IMRT from everything that references a cluster. */
static void
calculate (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint32_t i;

  l2refs_init (p);
  inc_refs (p, 0, p->cs);                               /* header */
  check_l1 (p, img->h.l1_table_offset, img->l1_size, true);

  if (p->has_df && p->nb_sn) {
    say (p, 2, "ERROR %" PRIu32 " snapshots in image with data file",
         p->nb_sn);
    p->r.corruptions++;
  }
  for (i = 0; i < p->nb_sn; i++) {
    const struct snapshot *s = &p->sn[i];

    if (!IS_ALIGNED (s->l1_offset, p->cs)) {
      say (p, 2, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table "
           "is not cluster aligned; snapshot table entry corrupted",
           s->id, s->name, s->l1_offset);
      p->r.corruptions++;
      p->lost = true;
      continue;
    }
    if (s->l1_size > QCOW2_MAX_L1_BYTES / 8) {
      say (p, 2, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table "
           "is too large; snapshot table entry corrupted", s->id, s->name,
           s->l1_size);
      p->r.corruptions++;
      p->lost = true;
      continue;
    }
    check_l1 (p, s->l1_offset, s->l1_size, false);
  }
  inc_refs (p, img->h.snapshots_offset, p->sn_size);

  inc_refs (p, img->h.refcount_table_offset, img->reftable_entries * 8);
  if (img->h.has_fde_ext && img->h.crypt_method == 2)
    inc_refs (p, img->h.fde_offset, img->h.fde_length);
  check_bitmaps (p);
  check_refblocks (p);
  apply_zero_fixes (p);
}

/* A cluster that needs a refcount but has no usable block: only a
 * rebuild can give it one. */
static void
scan_uncovered (struct pass *p)
{
  uint64_t idx, c, off, nblocks = DIV_ROUND_UP (p->nb, p->E);

  for (idx = 0; idx < nblocks && !p->rebuild; idx++) {
    if (rb_locate (p, idx, &off) == RB_OK)
      continue;
    for (c = idx * p->E; c < MIN ((idx + 1) * p->E, p->nb); c++)
      if (imrt_get (p, c)) {
        p->rebuild = true;
        break;
      }
  }
}

/* ---- compare, lower, rebuild ---------------------------------------- */

/* compare_refcounts.  raise: write too-low refcounts up (R1, caller
 * flushes); lower_later: leaks will be fixed by lower().  Sets *highest
 * to the last cluster with a stored or expected refcount. */
static void
compare (struct pass *p, bool raise, bool lower_later, uint64_t *highest)
{
  struct rawtrack_image *img = p->img;
  uint64_t idx, c, nblocks = DIV_ROUND_UP (p->nb, p->E);

  *highest = 0;
  for (idx = 0; idx < nblocks; idx++) {
    uint64_t first = idx * p->E, end = MIN (first + p->E, p->nb);
    uint64_t off, raised = 0;
    enum rb_state st = rb_locate (p, idx, &off);

    if (st == RB_OK &&
        io_read (img->file, p->rb, p->cs, off, "refcount block") == -1) {
      say (p, 2, "Can't get refcount for clusters %" PRIu64 "-%" PRIu64
           ": %s", first, end - 1, last_error ());
      p->r.check_errors += end - first;
      continue;
    }
    if (st == RB_BAD) {
      say (p, 2, "Can't get refcount for clusters %" PRIu64 "-%" PRIu64
           ": refcount block offset 0x%" PRIx64 " (refcount table entry %"
           PRIu64 ") is not cluster-aligned", first, end - 1,
           (uint64_t) (img->reftable[idx] & REFT_OFFSET_MASK), idx);
      p->r.check_errors += end - first;
      continue;
    }
    for (c = first; c < end; c++) {
      uint64_t stored = st == RB_OK ? refblock_get (p->rb, c - first,
                                                    p->bits) : 0;
      uint64_t exp = imrt_get (p, c);

      if (stored || exp)
        *highest = c;
      if (stored == exp)
        continue;
      if (stored < exp) {
        if (raise && st == RB_OK) {
          say (p, 2, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
               " reference=%" PRIu64, c, stored, exp);
          refblock_set (p->rb, c - first, p->bits, exp);
          raised++;
        }
        else {
          say (p, 2, "ERROR cluster %" PRIu64 " refcount=%" PRIu64
               " reference=%" PRIu64, c, stored, exp);
          p->r.corruptions++;
        }
      }
      else if (lower_later)
        say (p, 1, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
             " reference=%" PRIu64, c, stored, exp);
      else {
        say (p, 1, "Leaked cluster %" PRIu64 " refcount=%" PRIu64
             " reference=%" PRIu64, c, stored, exp);
        p->r.leaks++;
      }
    }
    if (raised) {
      p->rbc_valid = false;
      if (io_write (img->file, p->rb, p->cs, off, "refcount block") == 0)
        p->r.corruptions_fixed += raised;
      else {
        say (p, 2, "ERROR: cannot write the refcount block at offset 0x%"
             PRIx64 ": %s", off, last_error ());
        p->r.check_errors++;
        p->r.corruptions += raised;
      }
    }
  }
  qcow2_refcount_cache_drop (img);
}

/* Second half of R1: lower every refcount above its expected value. */
static void
lower (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint64_t idx, c, nblocks = DIV_ROUND_UP (p->nb, p->E);

  for (idx = 0; idx < nblocks; idx++) {
    uint64_t first = idx * p->E, end = MIN (first + p->E, p->nb);
    uint64_t off, n = 0;

    if (rb_locate (p, idx, &off) != RB_OK)
      continue;
    if (io_read (img->file, p->rb, p->cs, off, "refcount block") == -1) {
      say (p, 2, "ERROR: cannot read the refcount block at offset 0x%"
           PRIx64 ": %s", off, last_error ());
      p->r.check_errors++;
      continue;
    }
    for (c = first; c < end; c++) {
      uint64_t exp = imrt_get (p, c);

      if (refblock_get (p->rb, c - first, p->bits) > exp) {
        refblock_set (p->rb, c - first, p->bits, exp);
        n++;
      }
    }
    if (n == 0)
      continue;
    p->rbc_valid = false;
    if (io_write (img->file, p->rb, p->cs, off, "refcount block") == 0)
      p->r.leaks_fixed += n;
    else {
      say (p, 2, "ERROR: cannot write the refcount block at offset 0x%"
           PRIx64 ": %s", off, last_error ());
      p->r.check_errors++;
      p->r.leaks += n;
    }
  }
  qcow2_refcount_cache_drop (img);
  img->free_hint = 0;
}

/* R2: write a complete new refcount structure for the IMRT past the end
 * of the file, then switch the header to it. */
static int
rebuild (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  const uint64_t cs = p->cs, E = p->E;
  uint64_t start, end, k = 0, t = 0, nidx, idx, j, c, entries;
  uint64_t old_nblocks = DIV_ROUND_UP (p->nb, E);
  CLEANUP_FREE uint8_t *used = NULL;
  CLEANUP_FREE uint64_t *table = NULL;
  uint8_t field[12];

  start = MAX (p->nb, DIV_ROUND_UP (p->file_size, cs));

  /* Which of the existing block ranges hold a non-zero refcount. */
  used = rt_calloc (old_nblocks ? old_nblocks : 1, 1);
  if (!used)
    return -1;
  for (idx = 0; idx < old_nblocks; idx++)
    for (c = idx * E; c < MIN ((idx + 1) * E, p->nb); c++)
      if (imrt_get (p, c)) {
        used[idx] = 1;
        break;
      }

  /* Fixed point: k blocks and t table clusters at [start, start+k+t),
   * the blocks covering every used range including their own. */
  for (;;) {
    uint64_t k2 = 0, t2;

    end = start + k + t;
    nidx = DIV_ROUND_UP (end, E);
    for (idx = 0; idx < nidx; idx++)
      if ((idx < old_nblocks && used[idx]) ||
          (idx * E < end && (idx + 1) * E > start))
        k2++;
    t2 = DIV_ROUND_UP (nidx * 8, cs);
    if (k2 == k && t2 == t)
      break;
    k = k2;
    t = t2;
  }
  if (t * cs > QCOW2_MAX_REFTABLE_BYTES)
    return set_error (ENOSPC, "the new refcount table would need %" PRIu64
                      " clusters, more than 8 MiB", t);

  if (imrt_reserve (p, nidx * E) == -1)
    return -1;
  for (c = start; c < end; c++)
    imrt_set (p, c, 1);
  entries = t * cs / 8;
  table = rt_calloc (entries, 8);
  if (!table)
    return -1;

  /* New blocks are slices of the IMRT. */
  for (idx = 0, j = 0; idx < nidx; idx++) {
    uint64_t boff;

    if (!((idx < old_nblocks && used[idx]) ||
          (idx * E < end && (idx + 1) * E > start)))
      continue;
    boff = (start + j++) * cs;
    be64_store (&table[idx], boff);
    if (io_write (img->file, p->imrt + idx * cs, cs, boff,
                  "new refcount block") == -1)
      return -1;
  }
  if (io_write (img->file, table, entries * 8, (start + k) * cs,
                "new refcount table") == -1 ||
      io_flush (img->file, "image file") == -1)
    return -1;

  /* The switch: one sector, written and flushed. */
  be64_store (field, (start + k) * cs);
  be32_store (field + 8, (uint32_t) t);
  if (io_write (img->file, field, sizeof field, HEADER_REFTABLE_AT,
                "image header") == -1 ||
      io_flush (img->file, "image file") == -1)
    return -1;
  img->h.refcount_table_offset = (start + k) * cs;
  img->h.refcount_table_clusters = (uint32_t) t;

  for (idx = 0; idx < entries; idx++)
    table[idx] = be64_load (&table[idx]);
  free (img->reftable);
  img->reftable = table;
  img->reftable_entries = entries;
  table = NULL;
  qcow2_refcount_cache_drop (img);
  img->free_hint = 0;
  p->rbc_valid = false;
  p->nb = end;
  return 0;
}

/* ---- COPIED and the header bits ------------------------------------- */

/* check_oflag_copied: COPIED must be set iff the refcount is 1, in the
 * active L1 and the L2 tables it reaches (every allocated entry with a
 * data file).  Runs after the refcounts were repaired (R3). */
static void
check_copied (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  const uint32_t esize = img->l2_entry_size;
  uint64_t rc;
  uint32_t i, j;
  bool repair, l2_repair;

  if (p->fix & FIX_ERRORS)
    repair = true;
  else if (p->fix & FIX_LEAKS)
    /* Only if the refcounts are known to be right now. */
    repair = !p->r.check_errors && !p->r.corruptions && !p->r.leaks;
  else
    repair = false;

  for (i = 0; i < img->l1_size; i++) {
    uint64_t e = img->l1[i], l2_off = e & L1E_OFFSET_MASK;
    uint32_t dirty = 0;

    if (l2_off == 0)
      continue;
    if (stored_get (p, l2_off >> p->cb, &rc) == 0 &&
        (rc == 1) != ((e & QCOW_OFLAG_COPIED) != 0)) {
      p->r.corruptions++;
      say (p, 2, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
           " l1_entry=%" PRIx64 " refcount=%" PRIu64,
           repair ? "Repairing" : "ERROR", i, e, rc);
      if (repair) {
        uint8_t be[8];
        uint64_t ne = rc == 1 ? e | QCOW_OFLAG_COPIED
                              : e & ~QCOW_OFLAG_COPIED;

        be64_store (be, ne);
        p->wrote_l2 = true;
        if (io_write (img->file, be, 8,
                      img->h.l1_table_offset + (uint64_t) i * 8,
                      "L1 table entry") == -1) {
          say (p, 2, "ERROR: cannot write the L1 entry: %s",
               last_error ());
          p->r.check_errors++;
          return;
        }
        img->l1[i] = ne;
        p->r.corruptions--;
        p->r.corruptions_fixed++;
      }
    }

    if (io_read (img->file, p->l2buf, p->cs, l2_off, "L2 table") == -1) {
      say (p, 2, "ERROR: Could not read L2 table: %s", last_error ());
      p->r.check_errors++;
      return;
    }
    l2_repair = repair && l2_writable (p, l2_off);
    for (j = 0; j < img->l2_entries; j++) {
      uint8_t *ep = p->l2buf + (uint64_t) j * esize;
      uint64_t e2 = be64_load (ep);
      enum ctype t = ctype_of (p, e2);

      if (t != CT_NORMAL && t != CT_ZERO_ALLOC)
        continue;
      if (p->has_df)
        rc = 1;                 /* data file clusters are never shared */
      else if (stored_get (p, (e2 & L2E_OFFSET_MASK) >> p->cb, &rc) == -1)
        continue;
      if ((rc == 1) == ((e2 & QCOW_OFLAG_COPIED) != 0))
        continue;
      p->r.corruptions++;
      if (repair && !l2_repair)
        say (p, 2, "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
             " refcount=%" PRIu64 ".  Not repaired: the L2 table at offset "
             "0x%" PRIx64 " is also used as something else", e2, rc,
             l2_off);
      else
        say (p, 2, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
             " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", e2, rc);
      if (l2_repair) {
        be64_store (ep, rc == 1 ? e2 | QCOW_OFLAG_COPIED
                                : e2 & ~QCOW_OFLAG_COPIED);
        dirty++;
      }
    }
    if (dirty) {
      p->wrote_l2 = true;
      if (io_write (img->file, p->l2buf, p->cs, l2_off, "L2 table") == -1) {
        say (p, 2, "ERROR: Could not write L2 table: %s", last_error ());
        p->r.check_errors++;
        return;
      }
      p->r.corruptions -= dirty;
      p->r.corruptions_fixed += dirty;
    }
  }
}

/* R5: clear the dirty and corrupt bits. */
static void
mark_clean (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
  uint8_t be[8];

  if (img->h.version < 3 || !(img->h.incompat & bits))
    return;
  be64_store (be, img->h.incompat & ~bits);
  if (io_flush (img->file, "image file") == -1 ||
      io_write (img->file, be, 8, HEADER_INCOMPAT_AT, "image header") == -1 ||
      io_flush (img->file, "image file") == -1) {
    say (p, 2, "ERROR: cannot clear the dirty and corrupt bits: %s",
         last_error ());
    p->r.check_errors++;
    return;
  }
  img->h.incompat &= ~bits;
}

/* ---- the pass driver ------------------------------------------------- */

/* Size the IMRT for the file as it is now and build it. */
static int
count_references (struct pass *p)
{
  int64_t size = io_op_get_size (p->img->file);

  if (size < 0)
    return set_error (errno, "cannot get the size of the image file: %s",
                      strerror (errno));
  p->file_size = (uint64_t) size;
  p->nb = DIV_ROUND_UP (p->file_size, p->cs);
  if (imrt_reserve (p, p->nb + 1) == -1)
    return -1;
  memset (p->imrt, 0, p->imrt_bytes);
  p->rebuild = false;
  p->lost = false;
  read_snapshots (p);
  calculate (p);
  free_snapshots (p);
  scan_uncovered (p);
  return 0;
}

/* Zero the counters that a pass computes from scratch. */
static void
reset_counters (struct rawtrack_check_result *r)
{
  uint32_t sz = r->struct_size;

  memset (r, 0, sizeof *r);
  r->struct_size = sz;
}

/* After a rebuild: count again (silently), fix the leaks the old
 * structure left (not counted as fixes: the rebuild made them), and
 * account like QEMU: what disappeared was fixed. */
static void
recount_after_rebuild (struct pass *p, uint64_t *highest)
{
  struct rawtrack_check_result old = p->r, fresh;
  unsigned fix = p->fix;

  reset_counters (&p->r);
  p->silent = true;
  p->fix = 0;
  if (count_references (p) == -1) {
    p->silent = false;
    say (p, 2, "ERROR: %s", last_error ());
    p->r = old;
    p->r.check_errors++;
    p->fix = fix;
    return;
  }
  p->silent = false;
  p->fix = FIX_LEAKS;
  if (p->rebuild)
    say (p, 2, "ERROR rebuilt refcount structure is still broken");
  fresh = p->r;                  /* structural findings of the recount */
  compare (p, false, !p->rebuild && !p->lost, highest);
  if (!p->rebuild && !p->lost && io_flush (p->img->file, "image file") == 0)
    lower (p);
  p->fix = fix;

  fresh.leaks = p->r.leaks;      /* leaks that could not be fixed */
  fresh.corruptions = p->r.corruptions;
  fresh.check_errors = p->r.check_errors + old.check_errors;
  fresh.corruptions_fixed = old.corruptions_fixed +
    (old.corruptions > fresh.corruptions ? old.corruptions -
                                           fresh.corruptions : 0);
  fresh.leaks_fixed = old.leaks_fixed + old.leaks;
  p->r = fresh;
}

/* One check (and with p->fix, repair) of the whole image. */
static int
run_pass (struct pass *p)
{
  struct rawtrack_image *img = p->img;
  uint64_t highest = 0;
  const bool fix_errors = (p->fix & FIX_ERRORS) != 0;
  const bool fix_leaks = (p->fix & FIX_LEAKS) != 0;

  if (count_references (p) == -1)
    return -1;

  /* Freeing what looks unreferenced (lowering leaks, or a rebuild, which
   * gives unreferenced clusters refcount 0) is only safe when every
   * table could be followed. */
  if (p->rebuild && fix_errors && !p->lost) {
    compare (p, false, false, &highest);
    say (p, 0, "Rebuilding refcount structure");
    if (rebuild (p) == -1) {
      say (p, 2, "ERROR: rebuilding the refcount structure failed: %s",
           last_error ());
      p->r.check_errors++;
    }
    else
      recount_after_rebuild (p, &highest);
  }
  else {
    /* The structure is sound unless a rebuild is needed: then nothing
     * is written to it.  Otherwise raise, flush, lower (R1). */
    const bool sound = !p->rebuild;
    const bool lower_ok = sound && fix_leaks && !p->lost;

    compare (p, sound && fix_errors, lower_ok, &highest);
    if (p->rebuild && fix_errors)
      say (p, 0, "Not rebuilding the refcount structure: some tables could "
           "not be followed (see above), and a rebuild would free clusters "
           "that may still be in use");
    else if (p->rebuild && fix_leaks)
      say (p, 0, "The refcount structure is broken and needs a rebuild "
           "('-r all'); not repairing anything");
    if (sound && fix_leaks && p->lost && p->r.leaks)
      say (p, 0, "Not repairing leaked clusters: some tables could not be "
           "followed (see above), so clusters that look leaked may still "
           "be in use");
    if (sound && p->fix) {
      if (io_flush (img->file, "image file") == -1) {
        say (p, 2, "ERROR: %s", last_error ());
        p->r.check_errors++;
      }
      else if (lower_ok)
        lower (p);
    }
  }

  if (p->fix && io_flush (img->file, "image file") == -1) {
    say (p, 2, "ERROR: %s", last_error ());
    p->r.check_errors++;
  }
  check_copied (p);
  if (p->wrote_l2) {
    qcow2_l2_cache_drop (img);
    if (io_flush (img->file, "image file") == -1) {
      say (p, 2, "ERROR: %s", last_error ());
      p->r.check_errors++;
    }
  }
  if (p->fix && !p->r.check_errors && !p->r.corruptions)
    mark_clean (p);

  p->r.total_clusters = DIV_ROUND_UP (img->virtual_size, p->cs);
  p->r.image_end_offset = (highest + 1) * p->cs;
  return 0;
}

/* Both passes (the second only after repairs), img->lock held. */
static int
check_locked (struct pass *p, unsigned repair,
              struct rawtrack_check_result *res)
{
  struct rawtrack_check_result out;
  uint32_t want;

  p->l2buf = rt_malloc (p->cs);
  p->rb = rt_malloc (p->cs);
  p->rbc = rt_malloc (p->cs);
  if (!p->l2buf || !p->rb || !p->rbc)
    return -1;

  p->fix = repair;
  p->first = true;
  if (run_pass (p) == -1)
    return -1;
  out = p->r;

  if (out.corruptions_fixed || out.leaks_fixed) {
    /* "Double checking the fixed image now..." */
    reset_counters (&p->r);
    p->fix = 0;
    p->first = false;
    p->rbc_valid = false;
    if (run_pass (p) == -1)
      return -1;
    /* Like qemu-img: the findings of this pass, the first one's fixes. */
    p->r.corruptions_fixed = out.corruptions_fixed;
    p->r.leaks_fixed = out.leaks_fixed;
    p->r.bitmaps_in_use = out.bitmaps_in_use;
    out = p->r;
  }

  want = res->struct_size;
  out.struct_size = want;
  memcpy (res, &out, MIN (want, (uint32_t) sizeof out));
  return 0;
}

RAWTRACK_API int
rawtrack_image_check (struct rawtrack_image *img, unsigned repair,
                      struct rawtrack_check_result *res,
                      rawtrack_check_report_fn report, void *opaque)
{
  struct pass p;
  int r;

  rt_clear_error ();
  if (!img || !res || res->struct_size == 0)
    return set_error (EINVAL, "rawtrack_image_check: no image or no result "
                      "struct (set struct_size)");
  if (repair & ~RAWTRACK_CHECK_REPAIR_ALL)
    return set_error (EINVAL, "rawtrack_image_check: unknown repair flags "
                      "0x%x", repair & ~RAWTRACK_CHECK_REPAIR_ALL);
  if (repair && !img->writable)
    return set_error (EROFS, "repairing needs the image opened read-write");

  memset (&p, 0, sizeof p);
  p.img = img;
  p.report = report;
  p.opaque = opaque;
  p.cs = img->cluster_size;
  p.cb = img->h.cluster_bits;
  p.bits = img->refcount_bits;
  p.E = img->refblock_entries;
  p.max = p.bits == 64 ? UINT64_MAX : (1ull << p.bits) - 1;
  p.has_df = (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
  p.r.struct_size = sizeof p.r;

  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
    r = check_locked (&p, repair, res);
  }

  free_snapshots (&p);
  zero_fixes_reset (&p.zf);
  free (p.l2r);
  free (p.imrt);
  free (p.l2buf);
  free (p.rb);
  free (p.rbc);
  return r;
}
