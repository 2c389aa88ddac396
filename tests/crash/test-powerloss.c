/* rawtrack - crash test: power loss anywhere in the tracked write path.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The image and its raw data file sit on io-crash shims: writes stay
 * pending until a flush, and at the crash each pending 512-byte sector is
 * independently kept or dropped, in a random order (SQLite's crash VFS).
 *
 * For each seed a random workload (writes, write zeroes, discards,
 * flushes) runs with small extents and a tiny hot set, so that group
 * commits and coolings happen all the time.  The power fails at the Nth
 * write or flush of the image or the data file, N drawn over the whole
 * run (every point for the first seeds).  Then both shims crash at once,
 * and on what survived:
 *   1. the image opens (metadata consistent), no bitmap is in use;
 *   2. THE INVARIANT: every 512-byte sector of the data file that differs
 *      from its content before the run is dirty in every enabled bitmap;
 *   3. disabled bitmaps are untouched (still all clean).
 * LAZY mode is run too: there a crash must leave the bitmaps in use
 * (inconsistent) unless the close completed, never wrongly consistent.
 * Negative control: PROCESS mode (no sync before data) must break the
 * invariant under power loss - proof that this test can see a miss.
 * Then SEVERAL WRITERS: four threads run their own workloads on one image
 * at once (group commits shared between waiters, the committer thread
 * prefetching, idle cooling every 2 ms), and the power fails at a random
 * write or flush of either file; the same checks follow.
 *
 * Environment: RAWTRACK_CRASH_SEEDS (default 200),
 * RAWTRACK_CRASH_EXHAUSTIVE (how many of the first seeds try every crash
 * point; default 4, the rest draw one point each: the ASan build runs 1),
 * RAWTRACK_CRASH_THREAD_SEEDS (default 60).  The negative controls stop
 * at their first detected miss: one is the proof.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <pthread.h>

#include "internal.h"
#include "arith.h"
#include "io/io-shims.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "random.h"

#define VSIZE   (8u * 1024 * 1024)
#define SECTORS (VSIZE / 512)
#define NOPS    48

static uint8_t *data0;                 /* data file before every run */
static uint8_t *meta0;                 /* image before every run */
static uint64_t meta0_len;
static int failures;
static bool quiet;                     /* negative control: count, don't print */


static void
setup (void)
{
  struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_image *img;
  const void *p;
  uint64_t s = 42, i;

  data0 = malloc (VSIZE);
  assert (data0 && meta);
  for (i = 0; i < VSIZE; i += 8) {
    uint64_t v = rt_random (&s);
    memcpy (data0 + i, &v, 8);
  }
  assert (rawtrack_attach_io (meta, VSIZE, "disk.raw", 65536) == 0);
  p = rawtrack_io_mem_data (meta, &meta0_len);
  img = rawtrack_image_open_io (rawtrack_io_mem_new (p, meta0_len, 0),
                                rawtrack_io_mem_new (data0, VSIZE, 0),
                                RAWTRACK_OPEN_RDWR);
  rawtrack_io_close (meta);
  assert (img);
  assert (rawtrack_bitmap_add (img, "g64k", 65536, 0) == 0);
  assert (rawtrack_bitmap_add (img, "g512", 512, 0) == 0);
  assert (rawtrack_bitmap_add (img, "g4k", 4096, 0) == 0);
  assert (rawtrack_bitmap_add (img, "off", 4096,
                               RAWTRACK_BITMAP_ADD_DISABLED) == 0);
  /* Take the bytes back out through a fresh mem copy of the file. */
  {
    struct rawtrack_io *f = img->file;
    p = rawtrack_io_mem_data (f, &meta0_len);
    meta0 = malloc (meta0_len);
    assert (meta0);
    memcpy (meta0, p, meta0_len);
  }
  assert (rawtrack_image_close (img) == 0);
}

/* One workload operation; returns -1 if the library reported an error. */
static int
run_op (struct rawtrack_image *img, uint64_t *s, uint8_t *buf)
{
  uint64_t kind = rt_random (s) % 10, off, len;

  if (kind == 9)
    return rawtrack_image_flush (img);
  off = (rt_random (s) % SECTORS) * 512;
  if (rt_random (s) % 4 == 0)
    off += rt_random (s) % 512;              /* unaligned now and then */
  len = 1 + rt_random (s) % (256 * 1024);
  if (off >= VSIZE)
    off = VSIZE - 1;
  if (len > VSIZE - off)
    len = VSIZE - off;
  if (kind == 8)
    return rawtrack_image_zero (img, len, off,
                                rt_random (s) % 2 ? RAWTRACK_ZERO_MAY_TRIM : 0);
  if (kind == 7)
    return rawtrack_image_trim (img, len, off, 0);
  memset (buf, (int) (1 + rt_random (s) % 255), len);
  return rawtrack_image_pwrite (img, buf, len, off, 0);
}

struct dirty_map { uint8_t *sector; };

static int
mark (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct dirty_map *m = opaque;
  uint64_t sct;

  if (dirty)
    for (sct = start / 512; sct < DIV_ROUND_UP (start + length, 512); sct++)
      m->sector[sct] = 1;
  return 0;
}

static void
verify (uint64_t seed, const char *why, const uint8_t *meta, uint64_t mlen,
        const uint8_t *data, bool lazy)
{
  struct rawtrack_image *img;
  uint8_t *dirty = calloc (SECTORS, 1);
  uint8_t *changed = calloc (SECTORS, 1);
  int i, n;
  uint64_t sct;

  assert (dirty && changed);
  /* The sectors that differ from before the run, found once for all the
   * bitmaps. */
  for (sct = 0; sct < SECTORS; sct++)
    changed[sct] = memcmp (data + sct * 512, data0 + sct * 512, 512) != 0;
  img = rawtrack_image_open_io (rawtrack_io_mem_new (meta, mlen, 0),
                                rawtrack_io_mem_new (data, VSIZE, 0), 0);
  if (!img) {
    if (!quiet)
      fprintf (stderr, "seed %" PRIu64 " (%s): image does not open: %s\n",
             seed, why, rawtrack_get_error ());
    failures++;
    free (dirty);
    free (changed);
    return;
  }
  n = rawtrack_image_bitmap_count (img);
  if (n != 4) {
    if (!quiet)
      fprintf (stderr, "seed %" PRIu64 " (%s): %d bitmaps\n", seed, why, n);
    failures++;
  }
  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint32_t flags = rawtrack_image_bitmap_flags (img, i);
    struct dirty_map m = { dirty };

    if (flags & RAWTRACK_BITMAP_IN_USE) {
      if (!lazy) {
        if (!quiet)
          fprintf (stderr, "seed %" PRIu64 " (%s): bitmap %s in use\n",
                 seed, why, name);
        failures++;
      }
      continue;                        /* honest: inconsistent */
    }
    memset (dirty, 0, SECTORS);
    if (rawtrack_bitmap_extents (img, name, 0, VSIZE, mark, &m) == -1) {
      if (!quiet)
        fprintf (stderr, "seed %" PRIu64 " (%s): bitmap %s unreadable: %s\n",
               seed, why, name, rawtrack_get_error ());
      failures++;
      continue;
    }
    if (strcmp (name, "off") == 0) {
      for (sct = 0; sct < SECTORS; sct++)
        if (dirty[sct]) {
          if (!quiet)
            fprintf (stderr, "seed %" PRIu64 ": disabled bitmap changed\n",
                   seed);
          failures++;
          break;
        }
      continue;
    }
    for (sct = 0; sct < SECTORS; sct++)
      if (changed[sct] && !dirty[sct]) {
        if (!quiet)
          fprintf (stderr, "seed %" PRIu64 " (%s): sector %" PRIu64
                 " changed on disk but is clean in bitmap %s\n", seed, why,
                 sct, name);
        failures++;
        break;
      }
  }
  rawtrack_image_close (img);
  free (dirty);
  free (changed);
}

/* Run seed's workload; crash the target shim at its nth write/flush (0:
 * never).  Returns the number of write/flush ops the target saw. */
static uint64_t
run (uint64_t seed, int target, uint64_t nth, unsigned mode, bool check)
{
  struct rawtrack_io *im = rawtrack_io_mem_new (meta0, meta0_len, 0);
  struct rawtrack_io *dm = rawtrack_io_mem_new (data0, VSIZE, 0);
  struct rawtrack_io *ci = io_crash_new (im, false, seed * 2 + 1);
  struct rawtrack_io *cd = io_crash_new (dm, false, seed * 2 + 2);
  struct rawtrack_image *img;
  const unsigned mask = IO_OP_WRITE | IO_OP_FLUSH | IO_OP_ZERO | IO_OP_TRIM;
  uint8_t *buf = malloc (256 * 1024);
  uint64_t s = seed, count, mlen, dlen;
  const uint8_t *meta, *data;
  char why[64];
  int i, closed = 0;

  assert (im && dm && ci && cd && buf);
  if (nth)
    io_crash_set_crash_at (target ? cd : ci, mask, nth);
  img = rawtrack_image_open_io (ci, cd, RAWTRACK_OPEN_RDWR | mode);
  assert (img);
  for (i = 0; i < NOPS; i++)
    if (run_op (img, &s, buf) == -1)
      break;
  count = io_crash_count (target ? cd : ci, mask);
  if (!nth && i == NOPS)
    closed = rawtrack_image_close (img) == 0;
  else {
    /* Power fails: both files lose what was not flushed, together. */
    if (!io_crash_crashed (ci))
      io_crash_crash (ci);
    if (!io_crash_crashed (cd))
      io_crash_crash (cd);
    rawtrack_image_close (img);
  }
  if (check) {
    meta = rawtrack_io_mem_data (im, &mlen);
    data = rawtrack_io_mem_data (dm, &dlen);
    snprintf (why, sizeof why, "%s op %" PRIu64 "%s",
              target ? "data" : "image", nth, closed ? ", closed" : "");
    verify (seed, why, meta, mlen, data, (mode & RAWTRACK_OPEN_TRACK_LAZY) &&
            !closed);
  }
  rawtrack_io_close (im);
  rawtrack_io_close (dm);
  free (buf);
  return count;
}

/* ---- several writers ---------------------------------------------------- */

#define NTHREADS 4

struct writer {
  struct rawtrack_image *img;
  uint64_t seed;
};

static void *
writer (void *arg)
{
  struct writer *w = arg;
  uint8_t *buf = malloc (256 * 1024);
  uint64_t s = w->seed;
  int i;

  assert (buf);
  for (i = 0; i < NOPS / 2; i++)
    if (run_op (w->img, &s, buf) == -1)
      break;
  free (buf);
  return NULL;
}

/* Like run(), with NTHREADS writers at once.  The power fails at the nth
 * write/flush of the target file, or after the writers stop if they never
 * get there (or nth is 0: returns the count seen). */
static uint64_t
run_threads (uint64_t seed, int target, uint64_t nth, unsigned mode)
{
  struct rawtrack_io *im = rawtrack_io_mem_new (meta0, meta0_len, 0);
  struct rawtrack_io *dm = rawtrack_io_mem_new (data0, VSIZE, 0);
  struct rawtrack_io *ci = io_crash_new (im, false, seed * 2 + 1);
  struct rawtrack_io *cd = io_crash_new (dm, false, seed * 2 + 2);
  const unsigned mask = IO_OP_WRITE | IO_OP_FLUSH | IO_OP_ZERO | IO_OP_TRIM;
  struct writer w[NTHREADS];
  pthread_t th[NTHREADS];
  struct rawtrack_image *img;
  const uint8_t *meta, *data;
  uint64_t count, mlen, dlen;
  char why[64];
  int k;

  assert (im && dm && ci && cd);
  if (nth)
    io_crash_set_crash_at (target ? cd : ci, mask, nth);
  img = rawtrack_image_open_io (ci, cd, RAWTRACK_OPEN_RDWR | mode);
  assert (img);
  for (k = 0; k < NTHREADS; k++) {
    w[k].img = img;
    w[k].seed = seed * 1000 + (uint64_t) k;
    assert (pthread_create (&th[k], NULL, writer, &w[k]) == 0);
  }
  for (k = 0; k < NTHREADS; k++)
    pthread_join (th[k], NULL);
  count = io_crash_count (target ? cd : ci, mask);
  if (!io_crash_crashed (ci))
    io_crash_crash (ci);
  if (!io_crash_crashed (cd))
    io_crash_crash (cd);
  rawtrack_image_close (img);
  if (nth) {
    meta = rawtrack_io_mem_data (im, &mlen);
    data = rawtrack_io_mem_data (dm, &dlen);
    snprintf (why, sizeof why, "%d writers, %s op %" PRIu64, NTHREADS,
              target ? "data" : "image", nth);
    verify (seed, why, meta, mlen, data, false);
  }
  rawtrack_io_close (im);
  rawtrack_io_close (dm);
  return count;
}

int
main (void)
{
  uint64_t seeds = 200, exhaustive = 4, seed, runs = 0;
  const char *env = getenv ("RAWTRACK_CRASH_SEEDS");

  if (env)
    seeds = strtoull (env, NULL, 10);
  env = getenv ("RAWTRACK_CRASH_EXHAUSTIVE");
  if (env)
    exhaustive = strtoull (env, NULL, 10);
  /* Small extents and a tiny hot set: commits and coolings everywhere. */
  setenv ("RAWTRACK_EXTENT_BITS", "18", 1);
  setenv ("RAWTRACK_MAX_HOT", "4", 1);
  setup ();

  for (seed = 1; seed <= seeds && failures == 0; seed++) {
    int target;

    for (target = 0; target < 2; target++) {
      uint64_t total = run (seed, target, 0, 0, seed <= 3), n;

      if (total == 0)
        continue;
      if (seed <= exhaustive) {
        for (n = 1; n <= total && failures == 0; n++, runs++)
          run (seed, target, n, 0, true);
      }
      else {
        uint64_t s = seed * 7919 + (uint64_t) target;
        run (seed, target, 1 + rt_random (&s) % total, 0, true);
        runs++;
      }
    }
    /* Lazy mode: a crash leaves bitmaps in use, never wrong. */
    if (seed % 10 == 0) {
      uint64_t total = run (seed, 0, 0, RAWTRACK_OPEN_TRACK_LAZY, true);
      uint64_t s = seed;
      if (total)
        run (seed, 0, 1 + rt_random (&s) % total, RAWTRACK_OPEN_TRACK_LAZY, true);
      runs++;
    }
  }
  if (failures) {
    fprintf (stderr, "test-powerloss: %d failures\n", failures);
    return 1;
  }

  printf ("test-powerloss: %" PRIu64 " crash runs over %" PRIu64
          " seeds passed\n", runs, seeds);

  /* Negative control: without the sync, power loss must lose bits.  Every
   * crash point of the first seeds in turn, up to the first miss. */
  quiet = true;
  for (seed = 1; seed <= 3 && failures == 0; seed++) {
    uint64_t total = run (seed, 0, 0, RAWTRACK_OPEN_TRACK_PROCESS, false), n;

    for (n = 1; n <= total && failures == 0; n++)
      run (seed, 0, n, RAWTRACK_OPEN_TRACK_PROCESS, true);
  }
  if (failures == 0) {
    fprintf (stderr, "test-powerloss: the negative control (no sync) saw no "
             "missed change: the test cannot detect one\n");
    return 1;
  }
  printf ("test-powerloss: negative control (process mode, no sync) lost "
          "a change at seed %" PRIu64 ", as it must\n", seed - 1);

  /* Several writers; idle cooling racing with them. */
  quiet = false;
  failures = 0;
  seeds = 60;
  if (getenv ("RAWTRACK_CRASH_THREAD_SEEDS"))
    seeds = strtoull (getenv ("RAWTRACK_CRASH_THREAD_SEEDS"), NULL, 10);
  setenv ("RAWTRACK_IDLE_MS", "2", 1);
  runs = 0;
  for (seed = 1; seed <= seeds && failures == 0; seed++) {
    int target = (int) (seed & 1);
    uint64_t total = run_threads (seed, target, 0, 0), s = seed * 104729;

    if (total == 0)
      continue;
    run_threads (seed, target, 1 + rt_random (&s) % total, 0);
    runs++;
  }
  if (failures) {
    fprintf (stderr, "test-powerloss: %d failures with %d writers\n",
             failures, NTHREADS);
    return 1;
  }
  printf ("test-powerloss: %" PRIu64 " crash runs with %d writers passed\n",
          runs, NTHREADS);

  /* Its negative control: the same writers in PROCESS mode (no sync)
   * must lose a change somewhere. */
  quiet = true;
  for (seed = 1; seed <= 40 && failures == 0; seed++) {
    uint64_t total = run_threads (seed, 0, 0, RAWTRACK_OPEN_TRACK_PROCESS);
    uint64_t s = seed * 7, n;

    for (n = 0; n < 8 && total && failures == 0; n++)
      run_threads (seed, 0, 1 + rt_random (&s) % total, RAWTRACK_OPEN_TRACK_PROCESS);
  }
  if (failures == 0) {
    fprintf (stderr, "test-powerloss: the negative control with %d writers "
             "(no sync) saw no missed change\n", NTHREADS);
    return 1;
  }
  printf ("test-powerloss: negative control with %d writers (process mode) "
          "lost a change, as it must\n", NTHREADS);
  return 0;
}
