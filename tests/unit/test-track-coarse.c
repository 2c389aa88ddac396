/* rawtrack - unit test: bitmaps coarser than the tracking extent.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * lib/track.c cuts the disk into 1 MiB extents, but a bitmap may have a
 * granularity of 4 MiB, 64 MiB or more: one of its bits then covers
 * several extents, and cooling one extent decides a bit its neighbours
 * share.  Before the fix, a neighbour cooled while the bit was still held
 * set kept its "dirty on disk in every bitmap" summary after the last
 * holder cleared the bit, and a later write there passed the lock-free
 * path with the bit clear on disk: lost after kill -9 and after a clean
 * close alike (lib/track.c, withdraw_coarse).  The condition needs a finer
 * bitmap that is already dirty there (so the summary is decided by the
 * coarse ones), as after adding a coarse bitmap beside an old fine one.
 *
 * 1. The deterministic sequence: one write makes an extent hot with its
 *    sector-sharing riders (extents 0..62), writes elsewhere push them
 *    out one at a time, then a write at offset 0 - after a simulated
 *    kill -9 (the child _exits without closing) and after a clean close,
 *    offset 0 must be dirty in the 4 MiB and the 64 MiB bitmap.
 * 2. Races: 4 threads of scattered 4 KiB writes, a hot set of 8 and idle
 *    cooling every millisecond, killed with SIGKILL at a random moment:
 *    every write reported done must be dirty in every bitmap.  One round
 *    closes cleanly instead: then the coarse bitmaps must be exact.
 *    RAWTRACK_TEST_ROUNDS=N runs N kill rounds (default 4).
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdbool.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "test.h"

#define DISK      (4ull << 30)
#define MiB       (1ull << 20)
#define THREADS   4
#define MAX_OPS   20000

static const struct { const char *name; uint64_t gran; } coarse[] = {
  { "c4m", 4 * MiB }, { "c64m", 64 * MiB },
};
#define NCOARSE ((int) (sizeof coarse / sizeof coarse[0]))

static char dir[256], raw[300], image[300];

/* A fresh image: "fine" (64 KiB) dirty over the whole disk, then the
 * coarse bitmaps added clean - the summary is theirs to decide. */
static void
setup (void)
{
  struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1,
                                    .cluster_size = 65536 };
  struct rawtrack_image *img;
  int fd, k;

  static int n;

  /* The same data file each time (only the bitmaps are checked), and a
   * new image name: unlinking or truncating a file whose pages are still
   * being written back can take many seconds on a busy disk. */
  if (n == 0) {
    snprintf (raw, sizeof raw, "%s/disk.raw", dir);
    fd = open (raw, O_CREAT | O_WRONLY | O_EXCL, 0644);
    REQUIRE (fd != -1 && ftruncate (fd, (off_t) DISK) == 0 &&
             close (fd) == 0);
  }
  snprintf (image, sizeof image, "%s/disk%d.qcow2", dir, n++);
  REQUIRE (rawtrack_attach (raw, image, &o) == 0);
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR |
                             RAWTRACK_OPEN_TRACK_PROCESS, NULL);
  REQUIRE (img != NULL);
  REQUIRE (rawtrack_bitmap_add (img, "fine", 65536, 0) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR |
                             RAWTRACK_OPEN_TRACK_PROCESS, NULL);
  REQUIRE (img != NULL);
  REQUIRE (rawtrack_image_zero (img, DISK, 0, 0) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR, NULL);
  REQUIRE (img != NULL);
  for (k = 0; k < NCOARSE; k++)
    REQUIRE (rawtrack_bitmap_add (img, coarse[k].name, coarse[k].gran,
                                  0) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
}

struct collect { uint8_t *flags; uint64_t gran; };

static int
collect_fn (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct collect *c = opaque;
  uint64_t g;

  if (dirty)
    for (g = start / c->gran; g < (start + length + c->gran - 1) / c->gran;
         g++)
      c->flags[g] = 1;
  return 0;
}

/* One flag per granule of bitmap name, read from the image on disk. */
static uint8_t *
granules (struct rawtrack_image *img, const char *name, uint64_t gran)
{
  struct collect c = { calloc (DISK / gran, 1), gran };

  REQUIRE (c.flags != NULL);
  REQUIRE (rawtrack_bitmap_extents (img, name, 0, DISK, collect_fn,
                                    &c) == 0);
  return c.flags;
}

/* ---- 1. the deterministic sequence ------------------------------------ */

static void
sequence (struct rawtrack_image *img)
{
  static uint8_t buf[4096];
  uint64_t k;

  memset (buf, 0x5a, sizeof buf);
  /* Extent 10 hot, with extents 0..62 as riders (they share its bitmap
   * sectors), then 70 extents elsewhere: each cools one of them. */
  REQUIRE (rawtrack_image_pwrite (img, buf, sizeof buf, 10 * MiB, 0) == 0);
  for (k = 0; k < 70; k++)
    REQUIRE (rawtrack_image_pwrite (img, buf, sizeof buf, (100 + k) * MiB,
                                    0) == 0);
  REQUIRE (rawtrack_image_pwrite (img, buf, sizeof buf, 0, 0) == 0);
}

static void
check_offset0 (const char *label)
{
  struct rawtrack_image *img = rawtrack_image_open (image, 0, NULL);
  int k;

  REQUIRE (img != NULL);
  for (k = 0; k < NCOARSE; k++) {
    uint8_t *f = granules (img, coarse[k].name, coarse[k].gran);

    if (!f[0])
      fprintf (stderr, "test-track-coarse: %s: the write at offset 0 is "
               "not dirty in %s\n", label, coarse[k].name);
    CHECK (f[0]);
    free (f);
  }
  REQUIRE (rawtrack_image_close (img) == 0);
}

static void
part_sequence (void)
{
  struct rawtrack_image *img;
  pid_t pid;
  int st;

  REQUIRE (setenv ("RAWTRACK_IDLE_MS", "0", 1) == 0);
  /* As kill -9: the child stops without closing. */
  setup ();
  pid = fork ();
  REQUIRE (pid != -1);
  if (pid == 0) {
    img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR |
                               RAWTRACK_OPEN_TRACK_PROCESS, NULL);
    if (!img)
      _exit (2);
    sequence (img);
    _exit (0);
  }
  REQUIRE (waitpid (pid, &st, 0) == pid && WIFEXITED (st) &&
           WEXITSTATUS (st) == 0);
  check_offset0 ("sequence, no close");

  /* A clean close, safe mode. */
  setup ();
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR, NULL);
  REQUIRE (img != NULL);
  sequence (img);
  REQUIRE (rawtrack_image_close (img) == 0);
  check_offset0 ("sequence, clean close");
  REQUIRE (unsetenv ("RAWTRACK_IDLE_MS") == 0);
  if (test_failures == 0)
    printf ("test-track-coarse: the sequence: offset 0 dirty after kill and "
            "after close\n");
}

/* ---- 2. races, killed at a random moment ------------------------------ */

struct log {                        /* shared with the child */
  uint64_t n[THREADS];
  uint64_t off[THREADS][MAX_OPS];
};

struct worker {
  struct rawtrack_image *img;
  struct log *log;
  int id;
  uint64_t seed, ops;
};

static void *
work (void *arg)
{
  struct worker *w = arg;
  uint8_t buf[4096];
  uint64_t s = w->seed, i, off = 0;

  memset (buf, w->id + 1, sizeof buf);
  for (i = 0; i < w->ops && i < MAX_OPS; i++) {
    /* Mostly scattered; now and then the next block (a short stream). */
    if (rt_random (&s) % 8 || off + 8192 > DISK)
      off = rt_random (&s) % (DISK / 4096) * 4096;
    else
      off += 4096;
    REQUIRE (rawtrack_image_pwrite (w->img, buf, sizeof buf, off, 0) == 0);
    w->log->off[w->id][i] = off;
    __atomic_store_n (&w->log->n[w->id], i + 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

static void
run_writers (struct log *log, uint64_t seed, uint64_t ops, bool close_it)
{
  struct worker w[THREADS];
  pthread_t th[THREADS];
  struct rawtrack_image *img;
  int t;

  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR |
                             RAWTRACK_OPEN_TRACK_PROCESS,
                             NULL);
  REQUIRE (img != NULL);
  for (t = 0; t < THREADS; t++) {
    w[t] = (struct worker) { img, log, t, seed * 100 + (uint64_t) t, ops };
    REQUIRE (pthread_create (&th[t], NULL, work, &w[t]) == 0);
  }
  for (t = 0; t < THREADS; t++)
    REQUIRE (pthread_join (th[t], NULL) == 0);
  if (close_it)
    REQUIRE (rawtrack_image_close (img) == 0);
}

/* Every logged write dirty in every bitmap; with exact, nothing else in
 * the coarse ones. */
static void
verify (const struct log *log, const char *label, bool exact)
{
  struct rawtrack_image *img = rawtrack_image_open (image, 0, NULL);
  uint64_t total = 0, missed = 0, extra = 0;
  int k, t;

  REQUIRE (img != NULL);
  for (k = 0; k < NCOARSE; k++) {
    uint64_t gran = coarse[k].gran, g, i;
    uint8_t *got = granules (img, coarse[k].name, gran);
    uint8_t *want = calloc (DISK / gran, 1);

    REQUIRE (want != NULL);
    for (t = 0; t < THREADS; t++)
      for (i = 0; i < log->n[t]; i++) {
        g = log->off[t][i] / gran;
        want[g] = 1;
        total++;
        if (!got[g] && missed++ < 5)
          fprintf (stderr, "test-track-coarse: %s: write at %" PRIu64
                   " done but clean in %s\n", label, log->off[t][i],
                   coarse[k].name);
      }
    for (g = 0; exact && g < DISK / gran; g++)
      if (got[g] && !want[g] && extra++ < 5)
        fprintf (stderr, "test-track-coarse: %s: %s granule %" PRIu64
                 " dirty after a clean close, never written\n", label,
                 coarse[k].name, g);
    free (got);
    free (want);
  }
  CHECK (missed == 0);
  CHECK (extra == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
  printf ("test-track-coarse: %s: %" PRIu64 " writes checked, %" PRIu64
          " missed\n", label, total / NCOARSE, missed);
}

static void
part_races (void)
{
  const char *env = getenv ("RAWTRACK_TEST_ROUNDS");
  int rounds = env ? atoi (env) : 4, r;
  struct log *log = mmap (NULL, sizeof *log, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  uint64_t s = (uint64_t) time (NULL);

  REQUIRE (log != MAP_FAILED);
  REQUIRE (setenv ("RAWTRACK_MAX_HOT", "8", 1) == 0);
  REQUIRE (setenv ("RAWTRACK_PREFETCH", "4", 1) == 0);

  /* A clean close: exact. */
  REQUIRE (setenv ("RAWTRACK_IDLE_MS", "0", 1) == 0);
  setup ();
  memset (log, 0, sizeof *log);
  run_writers (log, 2, 1500, true);
  verify (log, "threads, clean close", true);

  for (r = 0; r < rounds; r++) {
    char label[64];
    pid_t pid;
    int st;

    /* Cooling one victim at a time (the hot set is full), and every
     * other round idle cooling every millisecond as well. */
    REQUIRE (setenv ("RAWTRACK_IDLE_MS", r & 1 ? "4" : "0", 1) == 0);
    setup ();
    memset (log, 0, sizeof *log);
    pid = fork ();
    REQUIRE (pid != -1);
    if (pid == 0) {
      run_writers (log, (uint64_t) r + 3, MAX_OPS, false);
      _exit (0);
    }
    /* At a random moment once it writes: after 100..4000 writes. */
    {
      uint64_t want = 100 + rt_random (&s) % 3900, have = 0;
      int t, waited;

      for (waited = 0; have < want && waited < 20000; waited++) {
        usleep (1000);
        for (t = 0, have = 0; t < THREADS; t++)
          have += __atomic_load_n (&log->n[t], __ATOMIC_ACQUIRE);
      }
    }
    REQUIRE (kill (pid, SIGKILL) == 0);
    REQUIRE (waitpid (pid, &st, 0) == pid);
    snprintf (label, sizeof label, "threads, kill -9 round %d", r);
    verify (log, label, false);
  }
  munmap (log, sizeof *log);
}

int
main (void)
{
  const char *tmp = getenv ("TMPDIR");
  char cmd[600];

  snprintf (dir, sizeof dir, "%s/rawtrack-test-track-coarse-XXXXXX",
            tmp && *tmp && strlen (tmp) < 180 ? tmp : "/tmp");
  REQUIRE (mkdtemp (dir) != NULL);

  part_sequence ();
  part_races ();

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "test-track-coarse: could not remove %s\n", dir);
  return test_exit ("test-track-coarse");
}
