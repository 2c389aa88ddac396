/* rawtrack - benchmark: the cost of crash-safe dirty tracking.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * On one raw file (1 GiB by default) wrapped by attach, in one run:
 *   untracked   the same write path with no bitmap
 *   safe-1      crash-safe tracking (kill -9 and power loss), 1 bitmap
 *   safe-64     the same with 64 enabled bitmaps
 *   process-1   safe against kill -9 only (no syncs), 1 bitmap
 *   lazy-1      QEMU's scheme (in use while open), 1 bitmap
 * for two workloads - random 4 KiB writes from 16 threads, sequential
 * 1 MiB writes - each in two phases: first touch (every bitmap clean)
 * and steady state (reopened, every bitmap already dirty).  Prints MB/s
 * and each as a ratio to untracked (median of the repetitions).
 *
 * Usage: bench-track [DIR [SIZE_MIB [REPS]]]
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

static uint64_t disk_size;
static char raw[512], image[512];

struct job {
  struct rawtrack_image *img;
  int random;
  uint64_t seed, ops, done;
  int failed;
};

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *
worker (void *arg)
{
  struct job *j = arg;
  static __thread char buf[1 << 20];
  uint64_t i, s = j->seed;

  memset (buf, (int) j->seed, sizeof buf);
  for (i = 0; i < j->ops; i++) {
    uint64_t off, len;

    if (j->random) {
      s ^= s << 13; s ^= s >> 7; s ^= s << 17;
      off = (s % (disk_size / 4096)) * 4096;
      len = 4096;
    }
    else {
      off = (i << 20) % disk_size;
      len = 1 << 20;
    }
    if (rawtrack_image_pwrite (j->img, buf, len, off, 0) == -1) {
      fprintf (stderr, "write: %s\n", rawtrack_get_error ());
      j->failed = 1;
      break;
    }
    j->done += len;
  }
  return NULL;
}

static void
die (const char *what)
{
  fprintf (stderr, "bench-track: %s: %s\n", what,
           rawtrack_get_error () ? rawtrack_get_error () : "failed");
  exit (1);
}

/* A fresh container with n enabled bitmaps. */
static void
make_image (int n)
{
  struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1 };
  struct rawtrack_image *img;
  char name[32];
  int i;

  if (rawtrack_attach (raw, image, &o) == -1)
    die ("attach");
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR, NULL);
  if (!img)
    die ("open");
  for (i = 0; i < n; i++) {
    snprintf (name, sizeof name, "b%d", i);
    if (rawtrack_bitmap_add (img, name, 65536, 0) == -1)
      die ("bitmap add");
  }
  if (rawtrack_image_close (img) == -1)
    die ("close");
}

/* Bytes per second of one workload on one open. */
static double
measure (unsigned mode, int random)
{
  struct rawtrack_image *img;
  struct job jobs[THREADS];
  pthread_t th[THREADS];
  int nthreads = random ? THREADS : 1, i;
  uint64_t total = 0;
  double t0, t1;
  char b[4096];

  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR | mode, NULL);
  if (!img)
    die ("open");
  /* Start tracking outside the timed part (a one-time cost per open),
   * with a write to the disk's last 4 KiB: away from where the
   * sequential stream starts, so its first extent is still clean. */
  if (rawtrack_image_pread (img, b, sizeof b, disk_size - sizeof b) == -1 ||
      rawtrack_image_pwrite (img, b, sizeof b, disk_size - sizeof b, 0) == -1)
    die ("warm-up write");
  /* No writeback of earlier runs may be in flight while we measure. */
  sync ();
  t0 = now ();
  for (i = 0; i < nthreads; i++) {
    jobs[i].img = img;
    jobs[i].random = random;
    jobs[i].seed = 0x9e3779b97f4a7c15ull * (i + 1);
    jobs[i].ops = random ? disk_size / 4096 / 4 / nthreads : disk_size >> 20;
    jobs[i].done = 0;
    jobs[i].failed = 0;
    pthread_create (&th[i], NULL, worker, &jobs[i]);
  }
  for (i = 0; i < nthreads; i++) {
    pthread_join (th[i], NULL);
    if (jobs[i].failed)
      exit (1);
    total += jobs[i].done;
  }
  t1 = now ();
  if (rawtrack_image_close (img) == -1)
    die ("close");
  return total / (t1 - t0);
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

int
main (int argc, char **argv)
{
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  int reps = argc > 3 ? atoi (argv[3]) : 5;
  static const struct {
    const char *name;
    int bitmaps;
    unsigned mode;
  } cfg[] = {
    { "untracked", 0, 0 },
    { "safe-1", 1, 0 },
    { "safe-64", 64, 0 },
    { "process-1", 1, RAWTRACK_OPEN_TRACK_PROCESS },
    { "lazy-1", 1, RAWTRACK_OPEN_TRACK_LAZY },
  };
  const int ncfg = sizeof cfg / sizeof cfg[0];
  double res[8][2][2];          /* cfg, workload, phase */
  static char buf[1 << 20];
  int c, w, r, fd;
  uint64_t off;

  disk_size = (uint64_t) (argc > 2 ? atoi (argv[2]) : 1024) << 20;
  snprintf (raw, sizeof raw, "%s/bench-track.raw", dir);
  snprintf (image, sizeof image, "%s/bench-track.qcow2", dir);

  /* A fully written raw file, so block allocation is not measured. */
  fd = open (raw, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd == -1) {
    perror (raw);
    return 1;
  }
  memset (buf, 0x5a, sizeof buf);
  for (off = 0; off < disk_size; off += sizeof buf)
    if (pwrite (fd, buf, sizeof buf, (off_t) off) != (ssize_t) sizeof buf) {
      perror ("pwrite");
      return 1;
    }
  fsync (fd);
  close (fd);

  printf ("disk %" PRIu64 " MiB, %d repetitions, median; ratio = MB/s "
          "divided by untracked\n\n", disk_size >> 20, reps);
  /* Round robin over the configurations, so that whatever else the
   * machine does spreads evenly over all of them; medians at the end. */
  {
    static double first[8][2][16], steady[8][2][16];

    if (reps > 16)
      reps = 16;
    for (r = 0; r < reps; r++)
      for (c = 0; c < ncfg; c++)
        for (w = 0; w < 2; w++) {
          make_image (cfg[c].bitmaps);
          first[c][w][r] = measure (cfg[c].mode, w == 0);
          steady[c][w][r] = measure (cfg[c].mode, w == 0);
        }
    for (c = 0; c < ncfg; c++)
      for (w = 0; w < 2; w++) {
        qsort (first[c][w], reps, sizeof (double), cmp_double);
        qsort (steady[c][w], reps, sizeof (double), cmp_double);
        res[c][w][0] = first[c][w][reps / 2];
        res[c][w][1] = steady[c][w][reps / 2];
      }
  }

  printf ("%-10s  %-26s  %-26s  %-26s  %-26s\n", "", "random 4k x16: first",
          "random 4k x16: steady", "seq 1M: first", "seq 1M: steady");
  for (c = 0; c < ncfg; c++) {
    printf ("%-10s", cfg[c].name);
    for (w = 0; w < 2; w++)
      for (r = 0; r < 2; r++)
        printf ("  %8.0f MB/s  ratio %5.3f", res[c][w][r] / 1e6,
                res[c][w][r] / res[0][w][r]);
    printf ("\n");
  }
  unlink (raw);
  unlink (image);
  return 0;
}
