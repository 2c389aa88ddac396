/* rawtrack - unit test for lib/bitmap-ops.c and lib/bitmap-store.c.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Images are made with rawtrack_image_create in a temporary directory and
 * then live in memory (io-mem).  Covered:
 *   1. every operation, its effect and a reopen that sees the same state;
 *      add writes an all-zero table; extents against the in-memory model;
 *   2. limits and refusals: names, granularities, 512 MiB of bits, 65535
 *      bitmaps, 64 MiB directory, v2 images, read-only handles, unknown
 *      names, inconsistent (in-use) bitmaps, different sizes;
 *   3. bitmap table validation (reserved bits, unaligned, past EOF,
 *      all-ones with an offset) and the all-ones entry;
 *   4. FAULT INJECTION: for each operation (add, first add, remove, last
 *      remove, clear, enable, disable, merge, merge from another image,
 *      store of dirtied bits) the write+flush calls are counted, then the
 *      N-th call fails (once, and from then on), and separately the image
 *      "loses power" at the N-th call (io-crash: unflushed writes dropped
 *      or kept per 512-byte sector, many seeds).  Every time the surviving
 *      bytes must open, hold exactly the old or the new bitmaps (names,
 *      flags, granularities, bits), have no cluster referenced more often
 *      than its refcount says (leaks allowed), and accept a new change;
 *      after a one-shot fault the same handle must also finish the job;
 *   5. OOM injection at every allocation of each operation.
 * qemu-img check of what rawtrack writes is tests/interop/test-bitmap*.sh.
 */
#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "bitmap.h"
#include "byteorder.h"
#include "io/io-shims.h"
#include "random.h"

#define MiB (1024ull * 1024)
#define WF (IO_OP_WRITE | IO_OP_FLUSH)

static char tmpdir[] = "/tmp/test-bitmap-ops.XXXXXX";
static uint64_t rng = 42;

static uint64_t
rnd (void)
{
  return rt_random (&rng);
}

/* ---- image bytes ------------------------------------------------------ */

struct bytes {
  uint8_t *p;
  uint64_t n;
};

static void
bytes_free (struct bytes *b)
{
  free (b->p);
  b->p = NULL;
  b->n = 0;
}

static struct bytes
make_image (uint64_t size, uint32_t cs, int compat)
{
  struct rawtrack_create_opts o = { .struct_size = sizeof o, .size = size,
                                    .cluster_size = cs, .compat = compat };
  char path[256];
  struct bytes b;
  FILE *fp;
  long n;

  snprintf (path, sizeof path, "%s/img.qcow2", tmpdir);
  unlink (path);
  if (rawtrack_image_create (path, &o) == -1) {
    fprintf (stderr, "create: %s\n", rawtrack_get_error ());
    abort ();
  }
  fp = fopen (path, "rb");
  assert (fp);
  fseek (fp, 0, SEEK_END);
  n = ftell (fp);
  rewind (fp);
  b.n = (uint64_t) n;
  b.p = malloc (b.n);
  assert (b.p && fread (b.p, 1, b.n, fp) == b.n);
  fclose (fp);
  unlink (path);
  return b;
}

static struct bytes
bytes_of_io (struct rawtrack_io *mem)
{
  struct bytes b;
  const void *p = rawtrack_io_mem_data (mem, &b.n);

  b.p = malloc (b.n ? b.n : 1);
  assert (b.p);
  memcpy (b.p, p, b.n);
  return b;
}

static struct bytes
bytes_of (struct rawtrack_image *img)
{
  return bytes_of_io (img->file);
}

static struct rawtrack_image *
open_bytes (struct bytes b, bool rw)
{
  struct rawtrack_io *io = rawtrack_io_mem_new (b.p, b.n, 0);
  struct rawtrack_image *img;

  assert (io);
  img = rawtrack_image_open_io (io, NULL, RAWTRACK_OPEN_NO_DATA_FILE |
                                (rw ? RAWTRACK_OPEN_RDWR : 0));
  if (!img)
    fprintf (stderr, "open: %s\n", rawtrack_get_error ());
  return img;
}

/* ---- the observable state --------------------------------------------- */

static int
append_extent (void *opaque, uint64_t start, uint64_t len, int dirty)
{
  FILE *fp = opaque;

  fprintf (fp, " %" PRIu64 "+%" PRIu64 "%c", start, len, dirty ? 'D' : 'c');
  return 0;
}

/* Names, flags, granularities and bits of every bitmap, as one string. */
static char *
snapshot (struct rawtrack_image *img)
{
  char *s = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&s, &len);
  int i, n = rawtrack_image_bitmap_count (img);

  assert (fp);
  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint32_t fl = rawtrack_image_bitmap_flags (img, i);

    fprintf (fp, "%s fl=%" PRIu32 " g=%" PRIu64 ":", name, fl,
             rawtrack_image_bitmap_granularity (img, i));
    if (!(fl & RAWTRACK_BITMAP_IN_USE) &&
        rawtrack_bitmap_extents (img, name, 0, UINT64_MAX, append_extent,
                                 fp) == -1) {
      fprintf (stderr, "extents of %s: %s\n", name, rawtrack_get_error ());
      abort ();
    }
    fputc ('\n', fp);
  }
  fclose (fp);
  return s;
}

static char *
snapshot_bytes (struct bytes b)
{
  struct rawtrack_image *img = open_bytes (b, false);
  char *s;

  assert (img);
  s = snapshot (img);
  rawtrack_image_close (img);
  return s;
}

/* ---- reference checker ------------------------------------------------ */

static void
ref (uint32_t *refs, uint64_t nclusters, uint64_t off, uint64_t bytes,
     uint32_t cs)
{
  uint64_t c;

  if (bytes == 0)
    return;
  for (c = off / cs; c <= (off + bytes - 1) / cs; c++) {
    assert (c < nclusters);
    refs[c]++;
  }
}

/* Every cluster the metadata references has a refcount at least as large
 * as the number of references (no corruption; leaks are allowed).
 * Returns the number of leaked clusters. */
static uint64_t
check_refs (struct rawtrack_image *img)
{
  const uint32_t cs = img->cluster_size;
  int64_t fsize = rawtrack_io_get_size (img->file);
  uint64_t nclusters, i, c, leaks = 0;
  uint32_t *refs;

  assert (fsize > 0);
  nclusters = (uint64_t) fsize / cs + 2 + 64;
  refs = calloc (nclusters, sizeof *refs);
  assert (refs);
  ref (refs, nclusters, 0, cs, cs);
  ref (refs, nclusters, img->h.l1_table_offset, (uint64_t) img->l1_size * 8,
       cs);
  for (i = 0; i < img->l1_size; i++)
    ref (refs, nclusters, img->l1[i] & L1E_OFFSET_MASK,
         (img->l1[i] & L1E_OFFSET_MASK) ? cs : 0, cs);
  ref (refs, nclusters, img->h.refcount_table_offset,
       (uint64_t) img->h.refcount_table_clusters * cs, cs);
  assert (qcow2_refcount_load (img) == 0);
  for (i = 0; i < img->reftable_entries; i++)
    ref (refs, nclusters, img->reftable[i] & REFT_OFFSET_MASK,
         (img->reftable[i] & REFT_OFFSET_MASK) ? cs : 0, cs);
  if (img->bitmaps_trusted) {
    ref (refs, nclusters, img->h.bitmap_dir_offset, img->h.bitmap_dir_size,
         cs);
    for (i = 0; i < img->bitmaps.nr; i++) {
      const struct bitmap_entry *e = &img->bitmaps.entries[i];
      uint64_t *t, j;

      ref (refs, nclusters, e->table_offset, (uint64_t) e->table_size * 8,
           cs);
      if (bitmap_table_read (img, e, &t) == -1) {
        assert (e->flags & BME_FLAG_IN_USE);
        continue;
      }
      for (j = 0; j < e->table_size; j++)
        if (t[j] & BME_TABLE_ENTRY_OFFSET_MASK)
          ref (refs, nclusters, t[j] & BME_TABLE_ENTRY_OFFSET_MASK, cs, cs);
      free (t);
    }
  }
  for (c = 0; c < nclusters; c++) {
    uint64_t v;

    assert (qcow2_refcount_get (img, c, &v) == 0);
    if (v < refs[c]) {
      fprintf (stderr, "cluster %" PRIu64 ": refcount %" PRIu64 " but %"
               PRIu32 " references\n", c, v, refs[c]);
      abort ();
    }
    if (v > refs[c])
      leaks += v - refs[c];
  }
  free (refs);
  return leaks;
}

/* The surviving bytes: open read-only, state must be old or new, no
 * corruption; then open read-write and make one more change. */
static void
judge (struct bytes b, const char *old, const char *new, bool must_be_new,
       const char *what)
{
  struct rawtrack_image *img = open_bytes (b, false);
  char *s;

  if (!img) {
    fprintf (stderr, "%s: the image does not open\n", what);
    abort ();
  }
  s = snapshot (img);
  if (strcmp (s, new) != 0 && (must_be_new || strcmp (s, old) != 0)) {
    fprintf (stderr, "%s: state is neither old nor new%s\n--- got:\n%s"
             "--- old:\n%s--- new:\n%s", what,
             must_be_new ? " (must be new)" : "", s, old, new);
    abort ();
  }
  free (s);
  check_refs (img);
  rawtrack_image_close (img);

  img = open_bytes (b, true);
  assert (img);
  if (rawtrack_image_bitmap_count (img) < 100) {
    assert (rawtrack_bitmap_add (img, "post-check", 65536, 0) == 0);
    check_refs (img);
    assert (rawtrack_bitmap_remove (img, "post-check") == 0);
    check_refs (img);
  }
  rawtrack_image_close (img);
}

/* ---- scenarios -------------------------------------------------------- */

/* Random dirty runs in bm. */
static void
scribble (struct bitmap_mem *bm, int runs)
{
  uint64_t size = bitmap_mem_size (bm);
  int i;

  for (i = 0; i < runs; i++) {
    uint64_t off = rnd () % size;
    uint64_t len = 1 + rnd () % (size / 64);

    bitmap_mem_set (bm, off, len);
  }
}

static void
dirty (struct rawtrack_image *img, const char *name, int runs)
{
  int i = rawtrack_bitmap_find (img, name);
  struct bitmap_mem *bm;

  assert (i >= 0);
  bm = bitmap_mem_new (img->virtual_size,
                       (uint32_t) rawtrack_image_bitmap_granularity (img, i));
  assert (bm);
  scribble (bm, runs);
  pthread_mutex_lock (&img->lock);
  assert (bitmap_replace_bits (img, name, bm) == 0);
  pthread_mutex_unlock (&img->lock);
  bitmap_mem_free (bm);
}

static struct bytes base0, base1, base3, source;

static void
make_bases (uint64_t size, uint32_t cs)
{
  struct rawtrack_image *img;

  bytes_free (&base0);
  bytes_free (&base1);
  bytes_free (&base3);
  bytes_free (&source);
  base0 = make_image (size, cs, 3);

  img = open_bytes (base0, true);
  assert (img);
  assert (rawtrack_bitmap_add (img, "solo", 4096, 0) == 0);
  dirty (img, "solo", 5);
  base1 = bytes_of (img);
  rawtrack_image_close (img);

  img = open_bytes (base0, true);
  assert (img);
  assert (rawtrack_bitmap_add (img, "a", 65536, 0) == 0);
  assert (rawtrack_bitmap_add (img, "b", 512, RAWTRACK_BITMAP_ADD_DISABLED)
          == 0);
  assert (rawtrack_bitmap_add (img, "c", 4096, 0) == 0);
  dirty (img, "a", 7);
  dirty (img, "b", 9);
  base3 = bytes_of (img);
  rawtrack_image_close (img);

  img = open_bytes (base0, true);
  assert (img);
  assert (rawtrack_bitmap_add (img, "s", 1024, 0) == 0);
  dirty (img, "s", 6);
  source = bytes_of (img);
  rawtrack_image_close (img);
}

static struct rawtrack_image *source_img;

static int op_add (struct rawtrack_image *i) { return rawtrack_bitmap_add (i, "n", 8192, 0); }
static const char *const rot_freeze[] = { "a", "b", NULL };
static int op_rotate (struct rawtrack_image *i) { return rawtrack_bitmap_rotate (i, "n", 0, rot_freeze); }
static int op_add_first (struct rawtrack_image *i) { return rawtrack_bitmap_add (i, "first", 0, RAWTRACK_BITMAP_ADD_DISABLED); }
static int op_remove (struct rawtrack_image *i) { return rawtrack_bitmap_remove (i, "b"); }
static int op_remove_last (struct rawtrack_image *i) { return rawtrack_bitmap_remove (i, "solo"); }
static int op_clear (struct rawtrack_image *i) { return rawtrack_bitmap_clear (i, "a"); }
static int op_enable (struct rawtrack_image *i) { return rawtrack_bitmap_enable (i, "b"); }
static int op_disable (struct rawtrack_image *i) { return rawtrack_bitmap_disable (i, "a"); }
static int op_merge (struct rawtrack_image *i) { return rawtrack_bitmap_merge (i, "b", "a", NULL); }
static int op_merge_fine (struct rawtrack_image *i) { return rawtrack_bitmap_merge (i, "a", "b", NULL); }
static int op_merge_other (struct rawtrack_image *i) { return rawtrack_bitmap_merge (i, "s", "c", source_img); }

static struct bitmap_mem *store_bits;
static int
op_store (struct rawtrack_image *i)
{
  int r;

  pthread_mutex_lock (&i->lock);
  r = bitmap_replace_bits (i, "c", store_bits);
  pthread_mutex_unlock (&i->lock);
  return r;
}

struct op {
  const char *name;
  struct bytes *base;
  int (*run) (struct rawtrack_image *);
};

static const struct op ops[] = {
  { "add", &base3, op_add },
  { "add-first", &base0, op_add_first },
  { "rotate", &base3, op_rotate },
  { "remove", &base3, op_remove },
  { "remove-last", &base1, op_remove_last },
  { "clear", &base3, op_clear },
  { "enable", &base3, op_enable },
  { "disable", &base3, op_disable },
  { "merge", &base3, op_merge },
  { "merge-fine", &base3, op_merge_fine },
  { "merge-other", &base3, op_merge_other },
  { "store", &base3, op_store },
};
#define NR_OPS (sizeof ops / sizeof ops[0])

static int crash_seeds = 12;

static void
test_op (const struct op *op)
{
  struct rawtrack_image *img;
  struct bytes after;
  char *old, *new, what[128];
  uint64_t n, N, c0;
  int r, seed, persistent;

  /* Plain run: the new state, and a reopen that sees it. */
  old = snapshot_bytes (*op->base);
  img = open_bytes (*op->base, true);
  assert (img);
  if (op->run (img) != 0) {
    fprintf (stderr, "%s: %s\n", op->name, rawtrack_get_error ());
    abort ();
  }
  new = snapshot (img);
  assert (strcmp (old, new) != 0);
  check_refs (img);
  after = bytes_of (img);
  rawtrack_image_close (img);
  {
    char *again = snapshot_bytes (after);
    assert (strcmp (again, new) == 0);
    free (again);
  }
  judge (after, old, new, true, op->name);
  bytes_free (&after);

  /* Count the write and flush calls. */
  {
    struct rawtrack_io *mem = rawtrack_io_mem_new (op->base->p, op->base->n, 0);
    struct rawtrack_io *f = io_fault_new (mem, true);

    img = rawtrack_image_open_io (f, NULL, RAWTRACK_OPEN_RDWR |
                                  RAWTRACK_OPEN_NO_DATA_FILE);
    assert (img);
    c0 = io_fault_count (f, WF);
    assert (op->run (img) == 0);
    n = io_fault_count (f, WF) - c0;
    rawtrack_image_close (img);
  }
  printf ("%-12s %3" PRIu64 " write+flush calls\n", op->name, n);
  assert (n >= 3);

  /* Fail the N-th call, once and from then on. */
  for (persistent = 0; persistent <= 1; persistent++)
    for (N = 1; N <= n + 1; N++) {
      struct rawtrack_io *mem = rawtrack_io_mem_new (op->base->p, op->base->n,
                                                     0);
      struct rawtrack_io *f = io_fault_new (mem, false);

      snprintf (what, sizeof what, "%s: %s fault at call %" PRIu64, op->name,
                persistent ? "persistent" : "one-shot", N);
      img = rawtrack_image_open_io (f, NULL, RAWTRACK_OPEN_RDWR |
                                    RAWTRACK_OPEN_NO_DATA_FILE);
      assert (img);
      io_fault_set (f, WF, N, N % 2 ? EIO : ENOSPC, persistent);
      r = op->run (img);
      assert (io_fault_fired (f) == (N <= n));
      if (r == -1) {
        assert (N <= n);
        assert (rawtrack_get_error () != NULL);
      }
      if (r == -1 && !persistent) {
        /* The handle stays usable: the retry finishes the job. */
        if (op->run (img) != 0) {
          fprintf (stderr, "%s: retry: %s\n", what, rawtrack_get_error ());
          abort ();
        }
        {
          char *s = snapshot (img);
          assert (strcmp (s, new) == 0);
          free (s);
        }
        check_refs (img);
      }
      after = bytes_of_io (mem);
      judge (after, old, new, r == 0 || !persistent, what);
      bytes_free (&after);
      rawtrack_image_close (img);
      rawtrack_io_close (mem);
    }

  /* Power loss at the N-th call (and at the flush of close). */
  for (N = 1; N <= n + 1; N++)
    for (seed = 1; seed <= crash_seeds; seed++) {
      struct rawtrack_io *mem = rawtrack_io_mem_new (op->base->p, op->base->n,
                                                     0);
      struct rawtrack_io *c = io_crash_new (mem, false,
                                            (uint64_t) seed * 1000 + N);

      snprintf (what, sizeof what, "%s: crash at call %" PRIu64 ", seed %d",
                op->name, N, seed);
      img = rawtrack_image_open_io (c, NULL, RAWTRACK_OPEN_RDWR |
                                    RAWTRACK_OPEN_NO_DATA_FILE);
      assert (img);
      io_crash_set_crash_at (c, WF, N);
      r = op->run (img);
      /* A crash after the header switch (while freeing the old clusters)
       * does not fail the operation: it is done, only leaks remain. */
      assert (r == 0 || N <= n);
      assert (io_crash_crashed (c) == (N <= n));
      rawtrack_image_close (img);
      after = bytes_of_io (mem);
      judge (after, old, new, r == 0, what);
      bytes_free (&after);
      rawtrack_io_close (mem);
    }

  /* Out of memory at every allocation. */
  for (N = 1;; N++) {
    img = open_bytes (*op->base, true);
    assert (img);
    rt_alloc_fail_after (N);
    r = op->run (img);
    rt_alloc_fail_after (0);
    if (r == -1)
      assert (rawtrack_get_errno () == ENOMEM);
    snprintf (what, sizeof what, "%s: OOM at allocation %" PRIu64,
              op->name, N);
    after = bytes_of (img);
    judge (after, old, new, r == 0, what);
    bytes_free (&after);
    rawtrack_image_close (img);
    if (r == 0)
      break;
  }

  free (old);
  free (new);
}

/* ---- semantics -------------------------------------------------------- */

struct collect {
  uint64_t next;
  int last;
  const struct bitmap_mem *bm;
  uint64_t n;
};

static int
check_extent (void *opaque, uint64_t start, uint64_t len, int dirty)
{
  struct collect *c = opaque;
  uint64_t g = bitmap_mem_granularity (c->bm), p;

  assert (start == c->next);
  assert (len > 0);
  assert (dirty != c->last);
  for (p = start; p < start + len; p += g - (p % g))
    assert (bitmap_mem_get (c->bm, p) == (dirty != 0));
  c->next = start + len;
  c->last = dirty;
  c->n++;
  return 0;
}

static int
stop_at_two (void *opaque, uint64_t start, uint64_t len, int dirty)
{
  int *n = opaque;

  return ++*n == 2 ? 1 : 0;
}

static int
fail_cb (void *opaque, uint64_t start, uint64_t len, int dirty)
{
  return -1;
}

static void
test_semantics (void)
{
  struct bytes b = make_image (64 * MiB + 1536, 65536, 3);
  struct rawtrack_image *img = open_bytes (b, true);
  struct bitmap_mem *bm;
  uint64_t bytes, *t, i;
  int k, n;
  char *s1, *s2;

  assert (img);
  /* Default granularity, flags, order. */
  assert (rawtrack_bitmap_default_granularity (img) == 65536);
  assert (rawtrack_bitmap_add (img, "z", 0, 0) == 0);
  assert (rawtrack_bitmap_add (img, "y", 1024, RAWTRACK_BITMAP_ADD_DISABLED)
          == 0);
  assert (rawtrack_image_bitmap_count (img) == 2);
  assert (strcmp (rawtrack_image_bitmap_name (img, 0), "z") == 0);
  assert (strcmp (rawtrack_image_bitmap_name (img, 1), "y") == 0);
  assert (rawtrack_image_bitmap_granularity (img, 0) == 65536);
  assert (rawtrack_image_bitmap_flags (img, 0) == RAWTRACK_BITMAP_AUTO);
  assert (rawtrack_image_bitmap_flags (img, 1) == 0);
  assert (rawtrack_bitmap_find (img, "y") == 1);
  assert (rawtrack_bitmap_find (img, "nope") == -1 &&
          rawtrack_get_errno () == ENOENT);
  /* add writes a table of zeros and no data. */
  assert (bitmap_table_read (img, &img->bitmaps.entries[1], &t) == 0);
  for (i = 0; i < img->bitmaps.entries[1].table_size; i++)
    assert (t[i] == 0);
  free (t);
  assert (rawtrack_bitmap_dirty_bytes (img, "y", &bytes) == 0 && bytes == 0);
  /* enable/disable twice is fine. */
  assert (rawtrack_bitmap_enable (img, "y") == 0);
  assert (rawtrack_bitmap_enable (img, "y") == 0);
  assert (rawtrack_image_bitmap_flags (img, 1) == RAWTRACK_BITMAP_AUTO);
  assert (rawtrack_bitmap_disable (img, "y") == 0);
  assert (rawtrack_bitmap_disable (img, "y") == 0);
  assert (rawtrack_image_bitmap_flags (img, 1) == 0);

  /* Extents against the model, on random ranges. */
  bm = bitmap_mem_new (img->virtual_size, 1024);
  assert (bm);
  scribble (bm, 40);
  bitmap_mem_set (bm, img->virtual_size - 10, 10);  /* the tail granule */
  pthread_mutex_lock (&img->lock);
  assert (bitmap_replace_bits (img, "y", bm) == 0);
  pthread_mutex_unlock (&img->lock);
  assert (rawtrack_bitmap_dirty_bytes (img, "y", &bytes) == 0);
  assert (bytes == bitmap_mem_dirty_bytes (bm));
  for (k = 0; k < 200; k++) {
    uint64_t off = k == 0 ? 0 : rnd () % (img->virtual_size + 4096);
    uint64_t len = k == 0 ? UINT64_MAX : rnd () % (8 * MiB);
    uint64_t end = off + len < img->virtual_size && len < UINT64_MAX - off
                   ? off + len : img->virtual_size;
    struct collect c = { .next = off, .last = -1, .bm = bm };

    assert (rawtrack_bitmap_extents (img, "y", off, len, check_extent, &c)
            == 0);
    if (off < img->virtual_size && len)
      assert (c.next == end);
    else
      assert (c.n == 0);
  }
  n = 0;
  assert (rawtrack_bitmap_extents (img, "y", 0, UINT64_MAX, stop_at_two, &n)
          == 0 && n == 2);
  assert (rawtrack_bitmap_extents (img, "y", 0, UINT64_MAX, fail_cb, NULL)
          == -1 && rawtrack_get_errno () == ECANCELED);

  /* Merge across granularities: z (64K) |= y (1K) dirties whole 64K
   * granules; merging back is then a superset of y. */
  assert (rawtrack_bitmap_merge (img, "y", "z", NULL) == 0);
  {
    struct collect c = { .next = 0, .last = -1 };
    struct bitmap_mem *z = bitmap_mem_new (img->virtual_size, 65536);

    assert (z);
    assert (bitmap_mem_merge (z, bm) == 0);
    c.bm = z;
    assert (rawtrack_bitmap_extents (img, "z", 0, UINT64_MAX, check_extent,
                                     &c) == 0);
    bitmap_mem_free (z);
  }
  /* Reopen sees the same. */
  s1 = snapshot (img);
  check_refs (img);
  {
    struct bytes a = bytes_of (img);
    s2 = snapshot_bytes (a);
    assert (strcmp (s1, s2) == 0);
    free (s2);
    bytes_free (&a);
  }
  free (s1);
  /* Clear, remove everything: the extension and autoclear bit 0 go. */
  assert (rawtrack_bitmap_clear (img, "z") == 0);
  assert (rawtrack_bitmap_dirty_bytes (img, "z", &bytes) == 0 && bytes == 0);
  assert (rawtrack_bitmap_remove (img, "z") == 0);
  assert (rawtrack_bitmap_remove (img, "y") == 0);
  assert (rawtrack_image_bitmap_count (img) == 0);
  assert (!img->h.has_bitmaps_ext);
  assert (!(img->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS));
  {
    struct bytes a = bytes_of (img);
    struct rawtrack_image *i2 = open_bytes (a, false);

    assert (i2 && !i2->h.has_bitmaps_ext &&
            !(i2->h.autoclear & QCOW2_AUTOCLEAR_BITMAPS));
    /* Everything was freed (only the leak-free structures remain). */
    assert (check_refs (i2) == 0);
    rawtrack_image_close (i2);
    bytes_free (&a);
  }
  bitmap_mem_free (bm);
  rawtrack_image_close (img);
  bytes_free (&b);
}

/* ---- refusals and limits ---------------------------------------------- */

static void
expect_err (int r, int err, const char *needle)
{
  const char *m = rawtrack_get_error ();

  if (r != -1 || rawtrack_get_errno () != err || !m || !strstr (m, needle)) {
    fprintf (stderr, "expected error %d with '%s', got r=%d errno=%d '%s'\n",
             err, needle, r, rawtrack_get_errno (), m ? m : "(null)");
    abort ();
  }
}

/* Patch the directory flags of bitmap index i in the bytes. */
static void
patch_flags (struct bytes b, int i, uint32_t flags)
{
  struct rawtrack_image *img = open_bytes (b, false);
  uint64_t off;
  uint8_t *p;
  int k;

  assert (img);
  off = img->h.bitmap_dir_offset;
  p = b.p + off;
  for (k = 0; k < i; k++)
    p += (24 + be16_load (p + 18) + 7) & ~7u;
  be32_store (p + 12, flags);
  rawtrack_image_close (img);
}

static void
test_refusals (void)
{
  struct bytes b = make_image (64 * MiB, 65536, 3), v2, big, other;
  struct rawtrack_image *img, *ro;
  char name[1100];
  int i;

  /* v2. */
  v2 = make_image (MiB, 65536, 2);
  img = open_bytes (v2, true);
  assert (img);
  expect_err (rawtrack_bitmap_add (img, "x", 0, 0), ENOTSUP,
              "Cannot store dirty bitmaps in qcow2 v2 files");
  expect_err (rawtrack_bitmap_remove (img, "x"), ENOENT,
              "Dirty bitmap 'x' not found");
  rawtrack_image_close (img);
  bytes_free (&v2);

  /* Read-only. */
  ro = open_bytes (b, false);
  assert (ro);
  expect_err (rawtrack_bitmap_add (ro, "x", 0, 0), EROFS, "read-only");
  rawtrack_image_close (ro);

  img = open_bytes (b, true);
  assert (img);
  /* Names. */
  expect_err (rawtrack_bitmap_add (img, "", 0, 0), EINVAL,
              "Bitmap name cannot be empty");
  memset (name, 'n', sizeof name);
  name[1023] = 0;
  assert (rawtrack_bitmap_add (img, name, 0, 0) == 0);
  name[1023] = 'n';
  name[1024] = 0;
  expect_err (rawtrack_bitmap_add (img, name, 0, 0), EINVAL,
              "Name length exceeds maximum (1023 characters)");
  assert (rawtrack_bitmap_add (img, "dup", 0, 0) == 0);
  expect_err (rawtrack_bitmap_add (img, "dup", 0, 0), EEXIST,
              "Bitmap already exists: dup");
  expect_err (rawtrack_bitmap_add (img, "x", 0, 0x100), EINVAL, "flags");
  /* Granularities. */
  expect_err (rawtrack_bitmap_add (img, "g", 256, 0), EINVAL,
              "Granularity must be power of 2 and at least 512");
  expect_err (rawtrack_bitmap_add (img, "g", 3000, 0), EINVAL,
              "Granularity must be power of 2");
  expect_err (rawtrack_bitmap_add (img, "g", 1ull << 32, 0), EINVAL,
              "Granularity exceeds maximum (2147483648 bytes)");
  assert (rawtrack_bitmap_add (img, "g2G", 1ull << 31, 0) == 0);
  assert (rawtrack_bitmap_add (img, "g512", 512, 0) == 0);
  /* Unknown names. */
  expect_err (rawtrack_bitmap_clear (img, "nope"), ENOENT,
              "Dirty bitmap 'nope' not found");
  expect_err (rawtrack_bitmap_merge (img, "nope", "dup", NULL), ENOENT,
              "Dirty bitmap 'nope' not found");
  expect_err (rawtrack_bitmap_merge (img, "dup", "nope", NULL), ENOENT,
              "Dirty bitmap 'nope' not found");
  check_refs (img);

  /* The 65535-bitmap and 64 MiB directory limits, checked before anything
   * is written: pretend the directory is full. */
  {
    struct bitmap_dir saved = img->bitmaps, fake = { 0 };
    uint32_t k;

    fake.nr = BME_MAX_BITMAPS;
    fake.entries = calloc (fake.nr, sizeof *fake.entries);
    assert (fake.entries);
    for (k = 0; k < fake.nr; k++) {
      fake.entries[k] = saved.entries[0];
      fake.entries[k].name = (char *) "";
      fake.entries[k].name_size = 1;
    }
    img->bitmaps = fake;
    expect_err (rawtrack_bitmap_add (img, "one-more", 0, 0), ERANGE,
                "Maximum number of persistent bitmaps is already reached");
    fake.nr = 65000;
    for (k = 0; k < fake.nr; k++)
      fake.entries[k].name_size = 1023;
    img->bitmaps = fake;
    expect_err (rawtrack_bitmap_add (img, "one-more", 0, 0), ERANGE,
                "Not enough space in the bitmap directory");
    img->bitmaps = saved;
    free (fake.entries);
  }

  /* Inconsistent bitmaps: only remove. */
  {
    struct bytes a = bytes_of (img);
    struct rawtrack_image *i2;
    uint64_t bytes;

    i = rawtrack_bitmap_find (img, "dup");
    patch_flags (a, i, BME_FLAG_IN_USE | BME_FLAG_AUTO);
    i2 = open_bytes (a, true);
    assert (i2);
    assert (rawtrack_image_bitmap_flags (i2, i) ==
            (RAWTRACK_BITMAP_IN_USE | RAWTRACK_BITMAP_AUTO));
    expect_err (rawtrack_bitmap_clear (i2, "dup"), EINVAL,
                "rawtrack bitmap remove");
    expect_err (rawtrack_bitmap_enable (i2, "dup"), EINVAL, "inconsistent");
    expect_err (rawtrack_bitmap_disable (i2, "dup"), EINVAL, "inconsistent");
    expect_err (rawtrack_bitmap_merge (i2, "dup", "g512", NULL), EINVAL,
                "Bitmap 'dup' is inconsistent");
    expect_err (rawtrack_bitmap_merge (i2, "g512", "dup", NULL), EINVAL,
                "Bitmap 'dup' is inconsistent");
    expect_err (rawtrack_bitmap_dirty_bytes (i2, "dup", &bytes), EINVAL,
                "inconsistent");
    expect_err (rawtrack_bitmap_extents (i2, "dup", 0, 1, fail_cb, NULL),
                EINVAL, "inconsistent");
    expect_err (rawtrack_bitmap_add (i2, "dup", 0, 0), EEXIST,
                "Bitmap already exists: dup");
    assert (rawtrack_bitmap_remove (i2, "dup") == 0);
    assert (rawtrack_bitmap_find (i2, "dup") == -1);
    check_refs (i2);
    rawtrack_image_close (i2);
    bytes_free (&a);
  }

  /* Different sizes. */
  other = make_image (32 * MiB, 65536, 3);
  ro = open_bytes (other, true);
  assert (ro);
  assert (rawtrack_bitmap_add (ro, "s", 0, 0) == 0);
  expect_err (rawtrack_bitmap_merge (img, "s", "dup", ro), EINVAL,
              "Bitmaps are of different sizes (destination size is 67108864,"
              " source size is 33554432) and can't be merged");
  rawtrack_image_close (ro);
  bytes_free (&other);
  rawtrack_image_close (img);
  bytes_free (&b);

  /* 512 MiB of bits: 4 TiB at 512 B is too much, at 1 KiB just fits. */
  big = make_image (4ull << 40, 65536, 3);
  img = open_bytes (big, true);
  assert (img);
  expect_err (rawtrack_bitmap_add (img, "fine", 512, 0), ERANGE,
              "Too much space will be occupied by the bitmap");
  assert (rawtrack_bitmap_add (img, "fine", 1024, 0) == 0);
  assert (img->bitmaps.entries[0].table_size == 8192);
  check_refs (img);
  rawtrack_image_close (img);
  bytes_free (&big);
}

/* ---- table validation ------------------------------------------------- */

static void
test_tables (void)
{
  struct bytes b = make_image (64 * MiB, 65536, 3);
  struct rawtrack_image *img = open_bytes (b, true);
  uint64_t toff, data, bytes;
  struct bytes a;
  struct {
    uint64_t entry;                /* ~0: data + 512; ~1: data | 1 */
    const char *needle;
  } cases[] = {
    { 1ull << 1, "reserved bits" },
    { 1ull << 60, "reserved bits" },
    { ~0ull, "not cluster-aligned" },
    { ~1ull, "all-ones flag and a data offset" },
    { 1ull << 40, "past the end of the image file" },
  };
  size_t k;
  char msg[128];

  assert (img);
  assert (rawtrack_bitmap_add (img, "t", 65536, 0) == 0);
  assert (rawtrack_bitmap_add (img, "other", 65536, 0) == 0);
  dirty (img, "t", 3);
  a = bytes_of (img);
  toff = img->bitmaps.entries[0].table_offset;
  data = be64_load (a.p + toff);
  assert (data && !(data & 0x1ff));
  rawtrack_image_close (img);

  for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    struct bytes c = { malloc (a.n), a.n };
    uint64_t e = cases[k].entry;

    assert (c.p);
    memcpy (c.p, a.p, a.n);
    if (e == ~0ull)
      e = data + 512;
    else if (e == ~1ull)
      e = data | 1;
    be64_store (c.p + toff, e);
    img = open_bytes (c, true);
    assert (img);
    expect_err (rawtrack_bitmap_dirty_bytes (img, "t", &bytes),
                RAWTRACK_ECORRUPT, cases[k].needle);
    snprintf (msg, sizeof msg, "bitmap 't': entry 0 of the bitmap table at "
              "offset 0x%" PRIx64, toff);
    expect_err (rawtrack_bitmap_merge (img, "t", "other", NULL),
                RAWTRACK_ECORRUPT, msg);
    expect_err (rawtrack_bitmap_clear (img, "t"), RAWTRACK_ECORRUPT, msg);
    /* What does not read the bits still works, and remove gets rid of
     * the broken bitmap (its clusters leak). */
    assert (rawtrack_bitmap_disable (img, "t") == 0);
    assert (rawtrack_bitmap_add (img, "new", 0, 0) == 0);
    assert (rawtrack_bitmap_remove (img, "t") == 0);
    check_refs (img);
    rawtrack_image_close (img);
    bytes_free (&c);
  }

  /* The all-ones entry (read, never written). */
  be64_store (a.p + toff, 1);
  img = open_bytes (a, true);
  assert (img);
  assert (rawtrack_bitmap_dirty_bytes (img, "t", &bytes) == 0);
  assert (bytes == 64 * MiB);
  assert (rawtrack_bitmap_merge (img, "t", "other", NULL) == 0);
  assert (rawtrack_bitmap_dirty_bytes (img, "other", &bytes) == 0);
  assert (bytes == 64 * MiB);
  {
    uint64_t *t;

    assert (bitmap_table_read (img, &img->bitmaps.entries[1], &t) == 0);
    assert (t[0] != 1 && (t[0] & BME_TABLE_ENTRY_OFFSET_MASK));
    free (t);
  }
  rawtrack_image_close (img);
  bytes_free (&a);
  img = open_bytes (b, true);
  rawtrack_image_close (img);
  bytes_free (&b);
}

int
main (void)
{
  static const uint32_t sizes[][2] = {
    { 64 * 1024 * 1024, 65536 },     /* extension at 504, data in sector 1 */
    { 16 * 1024 * 1024 + 3584, 4096 },  /* multi-cluster tables */
    { 8 * 1024 * 1024, 512 },        /* no feature table: all in sector 0 */
  };
  size_t s, k;

  if (!mkdtemp (tmpdir)) {
    perror ("mkdtemp");
    return 99;
  }
  if (getenv ("TEST_BITMAP_OPS_SEEDS"))
    crash_seeds = atoi (getenv ("TEST_BITMAP_OPS_SEEDS"));

  test_semantics ();
  test_refusals ();
  test_tables ();

  for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    struct rawtrack_image *src;

    printf ("size %" PRIu32 ", cluster size %" PRIu32 "\n", sizes[s][0],
            sizes[s][1]);
    make_bases (sizes[s][0], sizes[s][1]);
    src = open_bytes (source, false);
    assert (src);
    source_img = src;
    store_bits = bitmap_mem_new (sizes[s][0], 4096);
    assert (store_bits);
    scribble (store_bits, 11);
    for (k = 0; k < NR_OPS; k++)
      test_op (&ops[k]);
    bitmap_mem_free (store_bits);
    rawtrack_image_close (src);
  }
  bytes_free (&base0);
  bytes_free (&base1);
  bytes_free (&base3);
  bytes_free (&source);
  rmdir (tmpdir);
  printf ("OK\n");
  return 0;
}
