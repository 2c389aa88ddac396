/* rawtrack - benchmark: the I/O of one bitmap commit, pattern by pattern.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A crash-safe commit writes one block per enabled bitmap and flushes
 * before the writes waiting for it may go on (lib/track.c).  In qcow2
 * every bitmap has clusters of its own, so with 64 bitmaps the blocks lie
 * a cluster apart.  This times that I/O and the alternatives one could
 * think of, through the library's file backend (the tracker's own path:
 * rawtrack_io_pwrite_batch, then rawtrack_io_flush), on a scratch file in
 * DIR, every pattern once per round, rounds interleaved, median and
 * quartiles per pattern.  It answers "could a commit of 64 bitmaps cost
 * less on this machine, and by laying the blocks out how?".
 *
 * Usage: bench-commit-io [DIR [ROUNDS]]          (/tmp 40)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <inttypes.h>
#include <unistd.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-io.h"

#define CLUSTER   (2u << 20)           /* attach's default cluster size */
#define BLOCK     4096u
#define NBLOCKS   64
#define FILE_SIZE ((uint64_t) (NBLOCKS + 2) * CLUSTER)
#define MAX_ROUNDS 200

struct pattern {
  const char *name;
  int n;                               /* blocks */
  uint64_t stride;                     /* bytes between blocks; 0: one write */
  int log;                             /* plus a 512-byte write in block 0 */
};

static const struct pattern pat[] = {
  { "1 block + flush (1 bitmap)", 1, CLUSTER, 1 },
  { "64 blocks 2 MiB apart + flush (64 bitmaps)", NBLOCKS, CLUSTER, 1 },
  { "64 blocks 2 MiB apart, log in the batch", NBLOCKS, CLUSTER, 2 },
  { "64 blocks 64 KiB apart + flush", NBLOCKS, 65536, 1 },
  { "64 blocks 8 KiB apart + flush", NBLOCKS, 8192, 1 },
  { "64 blocks as one 256 KiB write + flush", NBLOCKS, 0, 1 },
  { "16 blocks 2 MiB apart + flush", 16, CLUSTER, 1 },
  { "flush alone", 0, 0, 0 },
};
#define NPAT ((int) (sizeof pat / sizeof pat[0]))

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

static void
die (const char *what)
{
  fprintf (stderr, "bench-commit-io: %s: %s\n", what,
           rawtrack_get_error () ? rawtrack_get_error () : "failed");
  exit (1);
}

/* One commit's I/O in pattern p, with fresh bytes (fill). */
static void
run (struct rawtrack_io *io, const struct pattern *p, uint8_t *buf, int fill)
{
  struct rawtrack_io_vec v[NBLOCKS + 1];
  size_t n = 0;
  int i;

  memset (buf, fill, (size_t) NBLOCKS * BLOCK);
  if (p->n > 0 && p->stride == 0)
    v[n++] = (struct rawtrack_io_vec) { buf, (uint64_t) p->n * BLOCK,
                                        CLUSTER };
  else
    for (i = 0; i < p->n; i++)
      v[n++] = (struct rawtrack_io_vec) { buf + (size_t) i * BLOCK, BLOCK,
                                          CLUSTER + i * p->stride };
  if (p->log == 2)                     /* the log's block, in the batch */
    v[n++] = (struct rawtrack_io_vec) { buf, BLOCK, 0 };
  if (n && rawtrack_io_pwrite_batch (io, v, n) == -1)
    die ("write");
  if (p->log == 1 && rawtrack_io_pwrite (io, buf, 512, 512, 0) == -1)
    die ("log write");
  if (rawtrack_io_flush (io) == -1)
    die ("flush");
}

int
main (int argc, char **argv)
{
  const char *dir = argc > 1 ? argv[1] : "/tmp";
  int rounds = argc > 2 ? atoi (argv[2]) : 40, r, k;
  static double t[NPAT][MAX_ROUNDS];
  struct rawtrack_io *io;
  char path[512];
  uint8_t *buf;
  uint64_t off;

  if (rounds < 4 || rounds > MAX_ROUNDS) {
    fprintf (stderr, "bench-commit-io: ROUNDS must be 4..%d\n", MAX_ROUNDS);
    return 1;
  }
  snprintf (path, sizeof path, "%s/bench-commit-io.tmp", dir);
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  if (!io)
    die (path);
  if (posix_memalign ((void **) &buf, BLOCK, (size_t) CLUSTER) != 0) {
    fprintf (stderr, "bench-commit-io: out of memory\n");
    return 1;
  }
  /* Written through, so that no pattern pays for block allocation. */
  memset (buf, 0x5a, CLUSTER);
  for (off = 0; off < FILE_SIZE; off += CLUSTER)
    if (rawtrack_io_pwrite (io, buf, CLUSTER, off, 0) == -1)
      die ("filling the file");
  if (rawtrack_io_flush (io) == -1)
    die ("flush");

  for (r = 0; r < rounds; r++)
    for (k = 0; k < NPAT; k++) {
      double t0 = now ();

      run (io, &pat[k], buf, r * NPAT + k);
      t[k][r] = (now () - t0) * 1e3;
    }

  printf ("one commit's I/O on %s, %d rounds, patterns interleaved\n\n",
          dir, rounds);
  printf ("%-44s  %8s  %8s  %8s  %7s\n", "pattern", "median", "p25", "p75",
          "vs 1");
  qsort (t[0], (size_t) rounds, sizeof (double), cmp_double);
  for (k = 0; k < NPAT; k++) {
    if (k > 0)
      qsort (t[k], (size_t) rounds, sizeof (double), cmp_double);
    printf ("%-44s  %5.2f ms  %5.2f ms  %5.2f ms  %6.1fx\n", pat[k].name,
            t[k][rounds / 2], t[k][rounds / 4], t[k][3 * rounds / 4],
            t[k][rounds / 2] / t[0][rounds / 2]);
  }
  rawtrack_io_close (io);
  unlink (path);
  free (buf);
  return 0;
}
