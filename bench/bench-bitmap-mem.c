/* rawtrack - micro-benchmark for the in-memory dirty bitmap.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A 16 TiB disk at 64 KiB granularity (2^28 bits, 32 MiB of words), half
 * dirty in scattered runs, timed for the whole-bitmap operations the
 * library performs (merge, count, dirty-area iteration, clear_all, stream
 * store/load per 64 KiB cluster) and for the per-write ones (set, get).
 * Built by meson: build/bench/bench-bitmap-mem.
 *
 * Single-threaded; prints one line per operation.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "bitmap-mem.h"
#include "random.h"

#define DISK_SIZE   (UINT64_C (16) << 40)
#define GRAN        65536u
#define CLUSTER     65536u
#define REPEAT      5

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint64_t
rnd (void)
{
  return rt_random (&rng);
}

static double
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void
die (const char *what)
{
  fprintf (stderr, "bench-bitmap-mem: %s: %s\n", what,
           rawtrack_get_error () ? rawtrack_get_error () : "failed");
  exit (EXIT_FAILURE);
}

/* Alternate dirty and clean runs of 1..2*avg granules: half dirty. */
static void
scatter (struct bitmap_mem *bm, uint64_t avg_run)
{
  uint64_t pos = 0, size = bitmap_mem_size (bm);

  while (pos < size) {
    uint64_t dirty = (1 + rnd () % (2 * avg_run)) * GRAN;
    uint64_t clean = (1 + rnd () % (2 * avg_run)) * GRAN;

    bitmap_mem_set (bm, pos, dirty);
    pos += dirty + clean;
  }
}

static void
report (const char *name, double ns, uint64_t ops, const char *unit)
{
  printf ("%-34s %12.1f ns/%s  (%" PRIu64 " %s%s, %.2f ms total)\n",
          name, ns / ops, unit, ops, unit, ops == 1 ? "" : "s", ns / 1e6);
}

int
main (void)
{
  struct bitmap_mem *a, *b, *c;
  uint64_t stream, clusters, i, areas = 0, dirty = 0, sink = 0;
  uint8_t *buf;
  double t, best;
  int r;

  a = bitmap_mem_new (DISK_SIZE, GRAN);
  b = bitmap_mem_new (DISK_SIZE, GRAN);
  c = bitmap_mem_new (DISK_SIZE, GRAN * 2);
  buf = malloc (CLUSTER);
  if (!a || !b || !c || !buf)
    die ("allocating");
  stream = bitmap_mem_stream_bytes (a);
  clusters = (stream + CLUSTER - 1) / CLUSTER;
  printf ("disk 16 TiB, granularity 64 KiB: %" PRIu64 " bits, %" PRIu64
          " stream bytes, %" PRIu64 " clusters of 64 KiB\n",
          bitmap_mem_nbits (a), stream, clusters);

  scatter (a, 64);                 /* runs of ~64 granules (4 MiB) */
  scatter (b, 4);                  /* runs of ~4 granules: many short */
  scatter (c, 16);
  printf ("a: %" PRIu64 " dirty bits, b: %" PRIu64 ", c (128 KiB): %" PRIu64
          "\n", bitmap_mem_count (a), bitmap_mem_count (b),
          bitmap_mem_count (c));

  /* count */
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    t = now_ns ();
    sink += bitmap_mem_count (a);
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("count (whole bitmap)", best, 1, "pass");

  /* iterate dirty areas, both run-length profiles */
  for (r = 0; r < 2; r++) {
    struct bitmap_mem *bm = r ? b : a;
    uint64_t pos = 0, s, l;

    areas = dirty = 0;
    t = now_ns ();
    while (bitmap_mem_next_dirty_area (bm, pos, UINT64_MAX, &s, &l)) {
      areas++;
      dirty += l;
      pos = s + l;
    }
    t = now_ns () - t;
    report (r ? "next_dirty_area (runs ~4 gran)"
              : "next_dirty_area (runs ~64 gran)", t, areas, "area");
    report ("  same, whole pass", t, 1, "pass");
    sink += dirty;
  }

  /* merge, same and different granularity */
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    t = now_ns ();
    if (bitmap_mem_merge (a, b) == -1)
      die ("merge");
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("merge, equal granularity", best, 1, "pass");
  t = now_ns ();
  if (bitmap_mem_merge (b, c) == -1)
    die ("merge");
  t = now_ns () - t;
  report ("merge, src 128 KiB -> dst 64 KiB", t, 1, "pass");
  t = now_ns ();
  if (bitmap_mem_merge (c, b) == -1)
    die ("merge");
  t = now_ns () - t;
  report ("merge, src 64 KiB -> dst 128 KiB", t, 1, "pass");

  /* store / load / range state, one bitmap cluster at a time */
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    t = now_ns ();
    for (i = 0; i < clusters; i++) {
      bitmap_mem_store (b, i * CLUSTER, CLUSTER, buf);
      sink += buf[i & (CLUSTER - 1)];
    }
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("store 64 KiB cluster", best, clusters, "cluster");
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    t = now_ns ();
    for (i = 0; i < clusters; i++)
      sink += (uint64_t) (bitmap_mem_stream_range_state (b, i * CLUSTER,
                                                         CLUSTER) + 1);
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("stream_range_state 64 KiB", best, clusters, "cluster");
  memset (buf, 0x5a, CLUSTER);
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    t = now_ns ();
    for (i = 0; i < clusters; i++)
      bitmap_mem_load (a, i * CLUSTER, CLUSTER, buf);
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("load 64 KiB cluster", best, clusters, "cluster");

  /* clear_all */
  best = 1e30;
  for (r = 0; r < REPEAT; r++) {
    bitmap_mem_set_all (a);
    t = now_ns ();
    bitmap_mem_clear_all (a);
    t = now_ns () - t;
    best = t < best ? t : best;
  }
  report ("clear_all", best, 1, "pass");

  /* worst case for the writer's check: every cluster all clean */
  t = now_ns ();
  for (i = 0; i < clusters; i++)
    sink += (uint64_t) (bitmap_mem_stream_range_state (a, i * CLUSTER,
                                                       CLUSTER) + 1);
  t = now_ns () - t;
  report ("stream_range_state, clean cluster", t, clusters, "cluster");

  /* per-write paths: 4 KiB .. 1 MiB writes at random offsets */
  {
    const uint64_t n = 10000000;
    uint64_t *offs = malloc (n * sizeof *offs);

    if (!offs)
      die ("allocating offsets");
    for (i = 0; i < n; i++)
      offs[i] = (rnd () % DISK_SIZE) & ~UINT64_C (4095);
    t = now_ns ();
    for (i = 0; i < n; i++)
      bitmap_mem_set (a, offs[i], 4096u << (i & 7));
    t = now_ns () - t;
    report ("set 4K..512K at random offsets", t, n, "op");
    t = now_ns ();
    for (i = 0; i < n; i++)
      sink += bitmap_mem_get (b, offs[i]);
    t = now_ns () - t;
    report ("get at random offsets", t, n, "op");
    t = now_ns ();
    for (i = 0; i < n; i++)
      sink += (uint64_t) bitmap_mem_next_dirty (b, offs[i],
                                                offs[i] + (1 << 24));
    t = now_ns () - t;
    report ("next_dirty within 16 MiB", t, n, "op");
    free (offs);
  }

  printf ("(checksum %" PRIu64 ")\n", sink);
  free (buf);
  bitmap_mem_free (a);
  bitmap_mem_free (b);
  bitmap_mem_free (c);
  return 0;
}
