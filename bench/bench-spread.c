/* rawtrack - benchmark: random first touch spread over a big disk.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Random 4 KiB writes from 16 threads (queue depth 16), each to a 4 KiB
 * block never written before, spread uniformly over a sparse disk (1 TiB
 * by default): with 16 MiB extents and a hot set of 64, nearly every
 * write lands in a cold extent, so this measures what tracking costs when
 * writes do not fit the hot set (bench-track's 1 GiB disk always does).
 * Configurations, each its own container around the same raw file:
 *   untracked   no bitmap
 *   safe-1      crash-safe tracking, 1 bitmap at 64 KiB
 *   safe-16     the same with 16 bitmaps
 * Each is run without flushes and with a flush every 64 writes (the
 * writes of a batch of 64 go out 16 at a time, then one flush).  The
 * configurations take turns batch by batch (ROUNDS rounds of BATCHES
 * batches each, in a rotating order), so machine drift hits them alike;
 * a configuration's figure is its writes over the sum of its times, and
 * tracked figures are printed as a ratio to untracked.
 *
 * Usage: bench-spread [DIR [SIZE_GIB [WRITES]]]   (defaults /tmp 1024 4096)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <inttypes.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"

#define THREADS 16
#define BATCH 64
#define NCFG 3

static const struct { const char *name; int bitmaps; } cfg[NCFG] = {
  { "untracked", 0 }, { "safe-1", 1 }, { "safe-16", 16 },
};

static uint64_t disk_size;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void
die (const char *what)
{
  fprintf (stderr, "bench-spread: %s: %s\n", what,
           rawtrack_get_error () ? rawtrack_get_error () : "failed");
  exit (1);
}

static uint64_t
next_rand (void)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct job {
  struct rawtrack_image *img;
  const uint64_t *off;
  int n;
};

static void *
writer (void *arg)
{
  struct job *j = arg;
  char buf[4096];
  int i;

  memset (buf, 0x5a, sizeof buf);
  for (i = 0; i < j->n; i++)
    if (rawtrack_image_pwrite (j->img, buf, sizeof buf, j->off[i], 0) == -1)
      die ("pwrite");
  return NULL;
}

/* BATCH writes at off[] through img, THREADS at a time; then a flush if
 * asked.  Returns the seconds. */
static double
batch (struct rawtrack_image *img, const uint64_t *off, int flush)
{
  pthread_t th[THREADS];
  struct job jobs[THREADS];
  double t0 = now ();
  int i;

  for (i = 0; i < THREADS; i++) {
    jobs[i] = (struct job) { img, off + i * (BATCH / THREADS),
                             BATCH / THREADS };
    if (pthread_create (&th[i], NULL, writer, &jobs[i]) != 0)
      die ("pthread_create");
  }
  for (i = 0; i < THREADS; i++)
    pthread_join (th[i], NULL);
  if (flush && rawtrack_image_flush (img) == -1)
    die ("flush");
  return now () - t0;
}

int
main (int argc, char **argv)
{
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  uint64_t gib = argc > 2 ? strtoull (argv[2], NULL, 10) : 1024;
  int writes = argc > 3 ? atoi (argv[3]) : 4096, c, f, b, nb;
  char raw[512], path[NCFG][600], name[32];
  struct rawtrack_image *img[NCFG];
  double t[2][NCFG] = { { 0 } };
  int fd, k;

  disk_size = gib << 30;
  nb = writes / BATCH;
  snprintf (raw, sizeof raw, "%s/bench-spread.raw", dir);
  fd = open (raw, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd == -1 || ftruncate (fd, (off_t) disk_size) == -1) {
    perror (raw);
    return 1;
  }
  close (fd);
  for (c = 0; c < NCFG; c++) {
    struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1 };
    struct rawtrack_image *m;

    snprintf (path[c], sizeof path[c], "%s/bench-spread-%d.qcow2", dir, c);
    if (rawtrack_attach (raw, path[c], &o) == -1)
      die ("attach");
    m = rawtrack_image_open (path[c], RAWTRACK_OPEN_RDWR |
                             RAWTRACK_OPEN_NO_LOCK, NULL);
    if (!m)
      die ("open");
    for (k = 0; k < cfg[c].bitmaps; k++) {
      snprintf (name, sizeof name, "b%d", k);
      if (rawtrack_bitmap_add (m, name, 65536, 0) == -1)
        die ("bitmap add");
    }
    if (rawtrack_image_close (m) == -1)
      die ("close");
    img[c] = rawtrack_image_open (path[c], RAWTRACK_OPEN_RDWR |
                                  RAWTRACK_OPEN_NO_LOCK, NULL);
    if (!img[c])
      die ("open");
  }
  printf ("bench-spread: %d random 4 KiB first-touch writes per "
          "configuration and mode, qd %d, over %" PRIu64 " GiB\n",
          nb * BATCH, THREADS, gib);
  for (f = 0; f < 2; f++)
    for (b = 0; b < nb; b++)
      for (k = 0; k < NCFG; k++) {
        uint64_t off[BATCH];
        int i;

        c = (b + k) % NCFG;      /* rotating order */
        /* A fresh 4 KiB block every time (distinct 64 KiB granules). */
        for (i = 0; i < BATCH; i++)
          off[i] = (next_rand () % (disk_size >> 16)) << 16;
        t[f][c] += batch (img[c], off, f);
      }
  for (c = 0; c < NCFG; c++)
    if (rawtrack_image_close (img[c]) == -1)
      die ("close");
  printf ("%-10s %14s %8s %14s %8s\n", "config", "no flush w/s", "ratio",
          "flush/64 w/s", "ratio");
  for (c = 0; c < NCFG; c++)
    printf ("%-10s %14.0f %8.3f %14.0f %8.3f\n", cfg[c].name,
            nb * BATCH / t[0][c], t[0][0] / t[0][c],
            nb * BATCH / t[1][c], t[1][0] / t[1][c]);
  for (c = 0; c < NCFG; c++)
    unlink (path[c]);
  unlink (raw);
  return 0;
}
