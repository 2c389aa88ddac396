/* rawtrack - benchmark: the cost of crash-safe dirty tracking.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * On one raw file (1 GiB by default), wrapped by attach once per
 * configuration (each its own qcow2 container around the same raw file):
 *   untracked   the same write path with no bitmap
 *   safe-1      crash-safe tracking (kill -9 and power loss), 1 bitmap
 *   safe-64     the same with 64 enabled bitmaps
 *   process-1   safe against kill -9 only (no syncs), 1 bitmap
 *   lazy-1      QEMU's scheme (in use while open), 1 bitmap
 *   untracked'  untracked again: its ratio to the first is the noise
 *               floor of the machine (an A/A test); differences smaller
 *               than its distance from 1.000 are not measured
 * for two workloads - random 4 KiB writes from 16 threads (a quarter of
 * the disk's blocks), sequential 1 MiB writes (the whole disk) - each in
 * two phases: first touch (every bitmap clean) and steady state
 * (reopened, the same writes again, STEADY_PASSES times over: every bit
 * they need already set; the repeats only make the slices long enough
 * for the machine's noise to average out).
 * A last row, "64 vs 1", is safe-64's ratio minus safe-1's in points,
 * taken within each run (the two ran side by side) and then the median:
 * a paired difference, steadier than the difference of two medians.
 *
 * INTERLEAVING.  A shared 2-vCPU VM drifts by 10-20% from one second to
 * the next, more than the effects measured here.  So every phase is cut
 * into slices of the disk (24 by default, whole MiB each, so a few MiB
 * at the end may go unused), and slice by slice every configuration
 * writes its slice in turn, in an order that changes per slice and is
 * balanced over every 6 slices (see order()), each timed on its own; a
 * configuration's figure is its bytes over the sum of its times.  Drift
 * then hits every configuration alike.  First
 * touch stays first touch: each configuration tracks in its own
 * container, so slice i is clean in its bitmaps when it gets there.
 * The whole run is repeated REPS times; medians are printed.
 *
 * DURABLE WRITES.  By default a slice's writes end in the page cache,
 * so a 1 GiB sequential pass takes well under a second and one commit of
 * 64 bitmaps (a few ms here) shows.  With FLUSH=1 in the environment
 * every slice ends with rawtrack_image_flush, inside its timed part: the
 * figures then include getting the data to the disk, which any writer
 * that wants its data kept pays.
 *
 * Usage: [FLUSH=1] bench-track [DIR [SIZE_MIB [REPS [SLICES]]]]
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
#include "random.h"

#define THREADS 16
#define STEADY_PASSES 4            /* see run_phase's callers */
#define MAX_REPS 16
#define MAX_SLICES 64

static uint64_t disk_size;

/* Bytes per slice: whole MiB, so a few MiB at the disk's end may go
 * unused. */
static uint64_t
slice_size (int slices)
{
  return (disk_size / (uint64_t) slices) & ~((uint64_t) (1 << 20) - 1);
}
static int durable;                /* FLUSH=1: see the usage note */
static char raw[512];

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
  { "untracked'", 0, 0 },
};
#define NCFG ((int) (sizeof cfg / sizeof cfg[0]))
#define SAFE1  1                   /* indexes in cfg[] */
#define SAFE64 2

struct job {
  struct rawtrack_image *img;
  int random, passes;
  uint64_t seed, start, len, ops, done;
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
  for (i = 0; i < j->ops * (uint64_t) j->passes; i++) {
    uint64_t off, len;

    if (i % j->ops == 0)
      s = j->seed;                 /* every pass writes the same blocks */

    if (j->random) {
      off = j->start + (rt_random (&s) % (j->len / 4096)) * 4096;
      len = 4096;
    }
    else {
      off = j->start + ((i % j->ops) << 20);
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

static void
image_path (char *buf, size_t n, const char *dir, int c)
{
  snprintf (buf, n, "%s/bench-track-%d.qcow2", dir, c);
}

/* A fresh container for configuration c with its enabled bitmaps. */
static void
make_image (const char *path, int c)
{
  struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1 };
  struct rawtrack_image *img;
  char name[32];
  int i;

  if (rawtrack_attach (raw, path, &o) == -1)
    die ("attach");
  img = rawtrack_image_open (path, RAWTRACK_OPEN_RDWR | RAWTRACK_OPEN_NO_LOCK,
                             NULL);
  if (!img)
    die ("open");
  for (i = 0; i < cfg[c].bitmaps; i++) {
    snprintf (name, sizeof name, "b%d", i);
    if (rawtrack_bitmap_add (img, name, 65536, 0) == -1)
      die ("bitmap add");
  }
  if (rawtrack_image_close (img) == -1)
    die ("close");
}

/* Open configuration c's image and start tracking outside the timed
 * part.  Every configuration's container wraps the same raw file and all
 * are open at once, which QEMU's image locks forbid (two writers of one
 * data file): the benchmark writes through one at a time, so it opens
 * them with RAWTRACK_OPEN_NO_LOCK.  Tracking starts here (a one-time
 * cost per open), with a write to the disk's last 4 KiB: away from where
 * the slices start, which stay clean. */
static struct rawtrack_image *
open_image (const char *path, int c)
{
  struct rawtrack_image *img;
  char b[4096];

  img = rawtrack_image_open (path, RAWTRACK_OPEN_RDWR | RAWTRACK_OPEN_NO_LOCK |
                             cfg[c].mode, NULL);
  if (!img)
    die ("open");
  if (rawtrack_image_pread (img, b, sizeof b, disk_size - sizeof b) == -1 ||
      rawtrack_image_pwrite (img, b, sizeof b, disk_size - sizeof b, 0) == -1)
    die ("warm-up write");
  return img;
}

/* Write one slice through img; returns the seconds it took. */
static double
run_slice (struct rawtrack_image *img, int random, int passes,
           uint64_t start, uint64_t len, uint64_t seed, uint64_t *bytes)
{
  struct job jobs[THREADS];
  pthread_t th[THREADS];
  int nthreads = random ? THREADS : 1, i;
  double t0, t1;

  for (i = 0; i < nthreads; i++) {
    jobs[i].img = img;
    jobs[i].random = random;
    jobs[i].passes = passes;
    jobs[i].seed = seed * 0x9e3779b97f4a7c15ull + (uint64_t) i + 1;
    jobs[i].start = start;
    jobs[i].len = len;
    jobs[i].ops = random ? len / 4096 / 4 / nthreads : len >> 20;
    jobs[i].done = 0;
    jobs[i].failed = 0;
  }
  t0 = now ();
  for (i = 0; i < nthreads; i++)
    pthread_create (&th[i], NULL, worker, &jobs[i]);
  for (i = 0; i < nthreads; i++) {
    pthread_join (th[i], NULL);
    if (jobs[i].failed)
      exit (1);
    *bytes += jobs[i].done;
  }
  if (durable && rawtrack_image_flush (img) == -1)
    die ("flush");
  t1 = now ();
  return t1 - t0;
}

/* Which configuration writes k-th in slice s: row s mod NCFG of a
 * Williams Latin square (NCFG is even).  Over every NCFG slices each
 * configuration writes once in each position and follows each other
 * configuration once.  Both matter here: writing a slice first costs a
 * few percent more than writing it later (measured: +3% sequential, +8%
 * random at first touch), and the plain rotation used before (config c
 * always after c - 1, 16 slices) gave four configurations one first slot
 * more than the other two: a bias of about half a point by itself. */
static int
order (int s, int k)
{
  int base = k == 0 ? 0 : (k & 1) ? (k + 1) / 2 : NCFG - k / 2;

  return (base + s) % NCFG;
}

/* One phase of one workload for every configuration, slice by slice.
 * mbps[c] gets bytes per second.  Both phases write the same blocks (the
 * same seeds), so in the steady phase every write lands in granules the
 * first phase dirtied: "already dirty" exactly. */
static void
run_phase (struct rawtrack_image **img, int random, int passes, int slices,
           double *mbps, double (*per_slice)[NCFG])
{
  double t[NCFG] = { 0 };
  uint64_t bytes[NCFG] = { 0 };
  uint64_t slice = slice_size (slices);
  int s, k;

  for (s = 0; s < slices; s++)
    for (k = 0; k < NCFG; k++) {
      int c = order (s, k);

      double dt = run_slice (img[c], random, passes, (uint64_t) s * slice,
                             slice, (uint64_t) s * 131, &bytes[c]);

      t[c] += dt;
      if (per_slice)
        per_slice[s][c] = dt;
    }
  for (k = 0; k < NCFG; k++)
    mbps[k] = bytes[k] / t[k];
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

/* The price of one commit nothing can hide, 1 bitmap against 64: the
 * latency of a 4 KiB write into a clean granule of a cold extent (the
 * first extent; open_image's warm-up made only the disk's end hot),
 * which waits for its bits to be durable in every bitmap.  Each sample
 * reopens both images (a clean close leaves no extent hot) and writes a
 * granule no earlier sample dirtied; the two alternate in order.
 * ms[0] and ms[1] get the medians for safe-1 and safe-64. */
#define COMMIT_SAMPLES 15

static void
commit_latency (char path[][512], double ms[2])
{
  static const int which[2] = { SAFE1, SAFE64 };
  double d[2][COMMIT_SAMPLES];
  char b[4096];
  int i, k;

  memset (b, 0x33, sizeof b);
  for (i = 0; i < COMMIT_SAMPLES; i++)
    for (k = 0; k < 2; k++) {
      int j = (i & 1) ? 1 - k : k, c = which[j];
      struct rawtrack_image *img = open_image (path[c], c);
      double t0;

      sync ();
      t0 = now ();
      if (rawtrack_image_pwrite (img, b, sizeof b,
                                 (uint64_t) (i + 1) * 65536, 0) == -1)
        die ("write");
      d[j][i] = (now () - t0) * 1e3;
      if (rawtrack_image_close (img) == -1)
        die ("close");
    }
  for (k = 0; k < 2; k++) {
    qsort (d[k], COMMIT_SAMPLES, sizeof (double), cmp_double);
    ms[k] = d[k][COMMIT_SAMPLES / 2];
  }
}

int
main (int argc, char **argv)
{
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  int reps = argc > 3 ? atoi (argv[3]) : 3;
  int slices = argc > 4 ? atoi (argv[4]) : 4 * NCFG;
  static double res[NCFG][2][2][MAX_REPS];     /* cfg, workload, phase */
  static double steady[2][MAX_REPS][MAX_SLICES][NCFG];   /* slice times */
  double pair[2][2];
  static char buf[1 << 20];
  char path[NCFG][512];
  struct rawtrack_image *img[NCFG];
  int c, w, r, fd;
  uint64_t off;

  disk_size = (uint64_t) (argc > 2 ? atoi (argv[2]) : 1024) << 20;
  durable = getenv ("FLUSH") && atoi (getenv ("FLUSH")) > 0;
  if (reps < 1 || reps > MAX_REPS || slices < 1 || slices > MAX_SLICES ||
      disk_size / (uint64_t) slices < (16u << 20)) {
    fprintf (stderr, "bench-track: REPS must be 1..%d, SLICES 1..%d and "
             "every slice at least 16 MiB\n", MAX_REPS, MAX_SLICES);
    return 1;
  }
  snprintf (raw, sizeof raw, "%s/bench-track.raw", dir);
  for (c = 0; c < NCFG; c++)
    image_path (path[c], sizeof path[c], dir, c);

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

  printf ("disk %" PRIu64 " MiB in %d slices, every configuration in turn "
          "per slice; median of %d runs; ratio = MB/s divided by "
          "untracked%s\n\n", disk_size >> 20, slices, reps,
          durable ? "; every slice flushed (FLUSH=1)" : "");
  for (r = 0; r < reps; r++)
    for (w = 0; w < 2; w++) {
      double mbps[NCFG];

      for (c = 0; c < NCFG; c++) {
        make_image (path[c], c);
        img[c] = open_image (path[c], c);
      }
      /* No writeback of earlier runs may be in flight while we measure. */
      sync ();
      run_phase (img, w == 0, 1, slices, mbps, NULL);
      for (c = 0; c < NCFG; c++)
        res[c][w][0][r] = mbps[c];
      /* Steady state: reopened, so the bitmaps on disk are all dirty. */
      for (c = 0; c < NCFG; c++) {
        if (rawtrack_image_close (img[c]) == -1)
          die ("close");
        img[c] = open_image (path[c], c);
      }
      sync ();
      run_phase (img, w == 0, STEADY_PASSES, slices, mbps,
                 steady[w][r]);
      for (c = 0; c < NCFG; c++) {
        res[c][w][1][r] = mbps[c];
        if (rawtrack_image_close (img[c]) == -1)
          die ("close");
      }
    }

  printf ("%-10s  %-26s  %-26s  %-26s  %-26s\n", "", "random 4k x16: first",
          "random 4k x16: steady", "seq 1M: first", "seq 1M: steady");
  /* Paired: safe-64's ratio minus safe-1's within each run (they ran
   * slice by slice side by side), median over the runs - before the
   * per-configuration sort below breaks the pairing. */
  for (w = 0; w < 2; w++)
    for (r = 0; r < 2; r++) {
      double d[MAX_REPS];
      int i;

      for (i = 0; i < reps; i++)
        d[i] = (res[SAFE64][w][r][i] - res[SAFE1][w][r][i]) / res[0][w][r][i];
      qsort (d, (size_t) reps, sizeof (double), cmp_double);
      pair[w][r] = d[reps / 2];
    }
  for (c = 0; c < NCFG; c++)
    for (w = 0; w < 2; w++)
      for (r = 0; r < 2; r++)
        qsort (res[c][w][r], (size_t) reps, sizeof (double), cmp_double);
  for (c = 0; c < NCFG; c++) {
    printf ("%-10s", cfg[c].name);
    for (w = 0; w < 2; w++)
      for (r = 0; r < 2; r++) {
        double v = res[c][w][r][reps / 2], base = res[0][w][r][reps / 2];

        printf ("  %8.0f MB/s  ratio %5.3f", v / 1e6, v / base);
      }
    printf ("\n");
  }
  printf ("%-10s", "64 vs 1");
  for (w = 0; w < 2; w++)
    for (r = 0; r < 2; r++)
      printf ("  %+8.1f points (paired)  ", pair[w][r] * 100);
  printf ("\n");

  /* Steady state does no I/O for tracking (every bit is on disk), so it
   * costs every slice alike, and a median over slices may stand in for
   * the sum: it shrugs off the slice that a stalled vCPU made twice as
   * slow, which a sum of 24 slices cannot (first touch, whose cost sits
   * in a few slices by nature, keeps the sums). */
  printf ("\nSteady state slice by slice: median over %d slices x %d runs "
          "of untracked's time over the configuration's on the same slice"
          "\n%-10s  %-16s  %-16s\n", slices, reps, "", "random 4k x16",
          "seq 1M");
  for (c = 1; c <= NCFG; c++) {
    static double v[MAX_REPS * MAX_SLICES];

    printf ("%-10s", c < NCFG ? cfg[c].name : "64 vs 1");
    for (w = 0; w < 2; w++) {
      int n = 0, i, sl;

      for (i = 0; i < reps; i++)
        for (sl = 0; sl < slices; sl++) {
          const double *t = steady[w][i][sl];

          v[n++] = c < NCFG ? t[0] / t[c]
                            : (t[0] / t[SAFE64] - t[0] / t[SAFE1]) * 100;
        }
      qsort (v, (size_t) n, sizeof (double), cmp_double);
      if (c < NCFG)
        printf ("  ratio %5.3f     ", v[n / 2]);
      else
        printf ("  %+5.1f points    ", v[n / 2]);
    }
    printf ("\n");
  }

  /* Sequential first touch must wait for one commit (its stream's
   * first): that commit's extra cost with 64 bitmaps, over the length of
   * the pass, is the least `64 vs 1` can be there. */
  if (disk_size >= (512u << 20)) {
    double ms[2], pass;

    make_image (path[SAFE1], SAFE1);
    make_image (path[SAFE64], SAFE64);
    commit_latency (path, ms);
    pass = slice_size (slices) * slices / res[0][1][0][reps / 2] * 1e3;
    printf ("\nA write that waits for a commit (median of %d): %.2f ms with "
            "1 bitmap, %.2f ms with 64.\nThe sequential first-touch pass "
            "(%.0f ms untracked) waits for one: a floor of %+.1f points for "
            "its `64 vs 1`.\n", COMMIT_SAMPLES, ms[0], ms[1], pass,
            -(ms[1] - ms[0]) / pass * 100);
  }
  unlink (raw);
  for (c = 0; c < NCFG; c++)
    unlink (path[c]);
  return 0;
}
