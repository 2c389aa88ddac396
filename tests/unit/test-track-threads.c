/* rawtrack - unit test: tracked writes from many threads at once.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The library promises that guest writes may come from many threads at
 * once (the NBD server drives it from every connection) and that a clean
 * close leaves every enabled bitmap EXACT: set for every granule some
 * write, write-zeroes or discard touched, clean everywhere else.  Under
 * concurrency that depends on the lock-free fast path, the group commit
 * with several waiters, prefetching by the committer thread and, above
 * all, cooling racing with writers (the per-extent sequence numbers of
 * lib/track.c): a write that slipped past a cooling without its bit in
 * the cooled snapshot would be missing after close.
 *
 * Here: a raw file attached in $TMPDIR, bitmaps at 512 B, 4 KiB and
 * 64 KiB granularity plus a disabled one, small extents and a small hot
 * set (RAWTRACK_EXTENT_BITS=18, RAWTRACK_MAX_HOT=16: 256 KiB extents,
 * 4 MiB hot at most, so extents are cooled all the time), 8 threads of
 * mixed writes (scattered small ones, sequential streams, zeroes,
 * discards, the odd FUA write and flush), each mode in turn (safe,
 * process, lazy).  After close the bitmaps must equal exactly the
 * granules touched, and the disabled one must be clean.  The ThreadSanitizer
 * build runs this too.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "test.h"

#define DISK      (64u << 20)
#define THREADS   8
#define OPS       300
#define MAX_LEN   (1u << 20)
#define SECTOR    512u

static const struct { const char *name; uint64_t gran; } bm[] = {
  { "g512", 512 }, { "g4k", 4096 }, { "g64k", 65536 },
};
#define NBM ((int) (sizeof bm / sizeof bm[0]))

struct range { uint64_t off, len; };

struct worker {
  struct rawtrack_image *img;
  uint64_t seed;
  struct range done[OPS];
  int n;
};

static char dir[256];
static char raw[300], image[300];


static void *
work (void *arg)
{
  struct worker *w = arg;
  static __thread uint8_t buf[MAX_LEN];
  uint64_t s = w->seed, stream = 0;
  int i;

  memset (buf, (int) w->seed, sizeof buf);
  for (i = 0; i < OPS; i++) {
    uint64_t kind = rt_random (&s) % 20, off, len;
    int r;

    if (kind < 9) {                    /* scattered, 512 B .. 64 KiB */
      len = (1 + rt_random (&s) % 128) * SECTOR;
      off = rt_random (&s) % ((DISK - len) / SECTOR) * SECTOR;
    }
    else if (kind < 15) {              /* a stream of 1 MiB writes */
      if (stream == 0 || stream + MAX_LEN > DISK)
        stream = rt_random (&s) % (DISK / MAX_LEN) * MAX_LEN;
      off = stream;
      len = MAX_LEN;
      stream += MAX_LEN;
    }
    else {                             /* zeroes, discards, flushes */
      len = (1 + rt_random (&s) % 64) * 4096;
      off = rt_random (&s) % ((DISK - len) / 4096) * 4096;
    }
    if (kind < 16)
      r = rawtrack_image_pwrite (w->img, buf, len, off,
                                 kind == 0 ? RAWTRACK_WRITE_FUA : 0);
    else if (kind < 18)
      r = rawtrack_image_zero (w->img, len, off,
                               kind == 17 ? RAWTRACK_ZERO_MAY_TRIM : 0);
    else if (kind < 19)
      r = rawtrack_image_trim (w->img, len, off, 0);
    else {
      REQUIRE (rawtrack_image_flush (w->img) == 0);
      continue;
    }
    REQUIRE (r == 0);
    w->done[w->n++] = (struct range) { off, len };
  }
  return NULL;
}

/* Collects a bitmap's dirty granules into a flag per granule. */
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

static void
run_mode (unsigned mode, const char *label)
{
  struct worker *w = calloc (THREADS, sizeof *w);
  pthread_t th[THREADS];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1,
                                    .cluster_size = 65536 };
  struct rawtrack_image *img;
  uint64_t bytes;
  int t, k;

  REQUIRE (w != NULL);
  REQUIRE (rawtrack_attach (raw, image, &o) == 0);
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR, NULL);
  REQUIRE (img != NULL);
  for (k = 0; k < NBM; k++)
    REQUIRE (rawtrack_bitmap_add (img, bm[k].name, bm[k].gran, 0) == 0);
  REQUIRE (rawtrack_bitmap_add (img, "off", 4096,
                              RAWTRACK_BITMAP_ADD_DISABLED) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);

  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR | mode, NULL);
  REQUIRE (img != NULL);
  for (t = 0; t < THREADS; t++) {
    w[t].img = img;
    w[t].seed = 1000 * (mode + 1) + (uint64_t) t;
    REQUIRE (pthread_create (&th[t], NULL, work, &w[t]) == 0);
  }
  for (t = 0; t < THREADS; t++)
    REQUIRE (pthread_join (th[t], NULL) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);

  img = rawtrack_image_open (image, 0, NULL);
  REQUIRE (img != NULL);
  for (k = 0; k < NBM; k++) {
    uint64_t gran = bm[k].gran, ng = DISK / gran, g, diff = 0;
    uint8_t *want = calloc (ng, 1), *got = calloc (ng, 1);
    struct collect c = { got, gran };
    int i;

    REQUIRE (want && got);
    for (t = 0; t < THREADS; t++)
      for (i = 0; i < w[t].n; i++)
        for (g = w[t].done[i].off / gran;
             g <= (w[t].done[i].off + w[t].done[i].len - 1) / gran; g++)
          want[g] = 1;
    REQUIRE (rawtrack_bitmap_extents (img, bm[k].name, 0, DISK, collect_fn,
                                    &c) == 0);
    for (g = 0; g < ng; g++)
      if (want[g] != got[g]) {
        if (diff++ < 5)
          fprintf (stderr, "test-track-threads: %s: %s granule %" PRIu64
                   " (offset %" PRIu64 ") is %s, should be %s\n", label,
                   bm[k].name, g, g * gran, got[g] ? "dirty" : "clean",
                   want[g] ? "dirty" : "clean");
      }
    REQUIRE (diff == 0);
    free (want);
    free (got);
  }
  REQUIRE (rawtrack_bitmap_dirty_bytes (img, "off", &bytes) == 0);
  REQUIRE (bytes == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
  free (w);
  printf ("test-track-threads: %s: %d threads x %d operations, %d bitmaps "
          "exact after close\n", label, THREADS, OPS, NBM);
}

int
main (void)
{
  const char *tmp = getenv ("TMPDIR");
  char cmd[600];
  int fd;

  snprintf (dir, sizeof dir, "%s/rawtrack-test-track-threads-XXXXXX",
            tmp && *tmp && strlen (tmp) < 180 ? tmp : "/tmp");
  REQUIRE (mkdtemp (dir) != NULL);
  snprintf (raw, sizeof raw, "%s/disk.raw", dir);
  snprintf (image, sizeof image, "%s/disk.qcow2", dir);
  fd = open (raw, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  REQUIRE (fd != -1 && ftruncate (fd, DISK) == 0 && close (fd) == 0);

  /* 256 KiB extents, at most 16 hot: cooling races with the writers. */
  REQUIRE (setenv ("RAWTRACK_EXTENT_BITS", "18", 1) == 0);
  REQUIRE (setenv ("RAWTRACK_MAX_HOT", "16", 1) == 0);
  run_mode (0, "safe");
  run_mode (RAWTRACK_OPEN_TRACK_PROCESS, "process");
  run_mode (RAWTRACK_OPEN_TRACK_LAZY, "lazy");

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "test-track-threads: could not remove %s\n", dir);
  return 0;
}
