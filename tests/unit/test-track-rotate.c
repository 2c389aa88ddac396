/* rawtrack - unit test: checkpoints (rawtrack_bitmap_rotate) while guest
 * writes are tracked through the same handle.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The live backup of `rawtrack serve` rotates bitmaps while the guest
 * writes.  The promise (rawtrack-bitmap.h): a write completed before the
 * rotate returned is in the old set of enabled bitmaps, a write started
 * after it returned is in the new set, and none is lost.  A tracker that
 * kept its stale set of bitmaps would put later writes in the frozen
 * bitmap and none in the new one.
 *
 * Here: THREADS writers, each write 4 KiB into its own fresh 64 KiB
 * granule (so that every granule's bit is one write's), while the main
 * thread rotates c0 -> c1 -> ... -> cN, each freezing the previous one.
 * A write remembers the epoch (rotations returned) before it started and
 * after it returned: [s, e].  After close it must be dirty in at least one
 * of c_s .. c_{e+1}, and clean in every other bitmap.  In each mode (safe,
 * process, lazy).
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <stdbool.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "test.h"

#define GRAN      65536u
#define THREADS   4
#define OPS       300
#define ROTATIONS 8
#define DISK      ((uint64_t) GRAN * THREADS * OPS)

struct op { uint64_t granule; int s, e; };

struct worker {
  struct rawtrack_image *img;
  int id;
  struct op done[OPS];
};

static int epoch;                  /* rotations returned (atomic) */
static char dir[256], raw[300], image[300];

static void *
work (void *arg)
{
  struct worker *w = arg;
  uint8_t buf[4096];
  int i;

  memset (buf, 0x5a, sizeof buf);
  for (i = 0; i < OPS; i++) {
    /* Interleaved granules: thread t owns t, t + THREADS, ... */
    uint64_t g = (uint64_t) i * THREADS + (uint64_t) w->id;

    w->done[i].granule = g;
    w->done[i].s = __atomic_load_n (&epoch, __ATOMIC_ACQUIRE);
    REQUIRE (rawtrack_image_pwrite (w->img, buf, sizeof buf, g * GRAN,
                                    0) == 0);
    w->done[i].e = __atomic_load_n (&epoch, __ATOMIC_ACQUIRE);
    if (i % 64 == 0)
      usleep (200);
  }
  return NULL;
}

static int
collect_fn (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  uint8_t *flags = opaque;
  uint64_t g;

  if (dirty)
    for (g = start / GRAN; g < (start + length + GRAN - 1) / GRAN; g++)
      flags[g] = 1;
  return 0;
}

static void
run_mode (unsigned mode, const char *label)
{
  static struct worker w[THREADS];
  pthread_t th[THREADS];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o, .force = 1,
                                    .cluster_size = 65536 };
  struct rawtrack_image *img;
  uint8_t *bits[ROTATIONS + 1];
  uint64_t ng = DISK / GRAN;
  char name[16], prev[16];
  int t, k, i, bad = 0;

  REQUIRE (rawtrack_attach (raw, image, &o) == 0);
  img = rawtrack_image_open (image, RAWTRACK_OPEN_RDWR | mode, NULL);
  REQUIRE (img != NULL);
  REQUIRE (rawtrack_bitmap_add (img, "c0", GRAN, 0) == 0);
  __atomic_store_n (&epoch, 0, __ATOMIC_RELEASE);
  for (t = 0; t < THREADS; t++) {
    w[t].img = img;
    w[t].id = t;
    REQUIRE (pthread_create (&th[t], NULL, work, &w[t]) == 0);
  }
  for (k = 1; k <= ROTATIONS; k++) {
    const char *freeze[2] = { prev, NULL };

    usleep (3000);
    snprintf (prev, sizeof prev, "c%d", k - 1);
    snprintf (name, sizeof name, "c%d", k);
    REQUIRE (rawtrack_bitmap_rotate (img, name, GRAN, freeze) == 0);
    __atomic_store_n (&epoch, k, __ATOMIC_RELEASE);
  }
  for (t = 0; t < THREADS; t++)
    REQUIRE (pthread_join (th[t], NULL) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);

  img = rawtrack_image_open (image, 0, NULL);
  REQUIRE (img != NULL);
  for (k = 0; k <= ROTATIONS; k++) {
    bits[k] = calloc (ng, 1);
    REQUIRE (bits[k] != NULL);
    snprintf (name, sizeof name, "c%d", k);
    REQUIRE (rawtrack_bitmap_extents (img, name, 0, DISK, collect_fn,
                                      bits[k]) == 0);
    /* Only the last one is still enabled. */
    i = rawtrack_bitmap_find (img, name);
    REQUIRE (i >= 0);
    CHECK (((rawtrack_image_bitmap_flags (img, i) &
             RAWTRACK_BITMAP_AUTO) != 0) == (k == ROTATIONS));
  }
  REQUIRE (rawtrack_image_close (img) == 0);

  for (t = 0; t < THREADS; t++)
    for (i = 0; i < OPS; i++) {
      const struct op *p = &w[t].done[i];
      int hi = p->e + 1 > ROTATIONS ? ROTATIONS : p->e + 1, in = 0;

      for (k = 0; k <= ROTATIONS; k++) {
        bool dirty = bits[k][p->granule] != 0;

        if (k >= p->s && k <= hi)
          in |= dirty;
        else if (dirty && bad++ < 5)
          fprintf (stderr, "test-track-rotate: %s: the write to granule %"
                   PRIu64 " (epochs %d..%d) is in c%d\n", label, p->granule,
                   p->s, p->e, k);
      }
      if (!in && bad++ < 5)
        fprintf (stderr, "test-track-rotate: %s: the write to granule %"
                 PRIu64 " (epochs %d..%d) is in no bitmap c%d..c%d: lost\n",
                 label, p->granule, p->s, p->e, p->s, hi);
    }
  for (k = 0; k <= ROTATIONS; k++)
    free (bits[k]);
  REQUIRE (bad == 0);
  printf ("test-track-rotate: %s: %d threads x %d writes, %d rotations: "
          "every write in its epoch's bitmap\n", label, THREADS, OPS,
          ROTATIONS);
}

int
main (void)
{
  const char *tmp = getenv ("TMPDIR");
  char cmd[600];
  int fd;

  snprintf (dir, sizeof dir, "%s/rawtrack-test-track-rotate-XXXXXX",
            tmp && *tmp && strlen (tmp) < 180 ? tmp : "/tmp");
  REQUIRE (mkdtemp (dir) != NULL);
  snprintf (raw, sizeof raw, "%s/disk.raw", dir);
  snprintf (image, sizeof image, "%s/disk.qcow2", dir);
  fd = open (raw, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  REQUIRE (fd != -1 && ftruncate (fd, (off_t) DISK) == 0 && close (fd) == 0);

  run_mode (0, "safe");
  run_mode (RAWTRACK_OPEN_TRACK_PROCESS, "process");
  run_mode (RAWTRACK_OPEN_TRACK_LAZY, "lazy");

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "test-track-rotate: could not remove %s\n", dir);
  return test_exit ("test-track-rotate");
}
