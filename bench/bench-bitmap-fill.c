/* rawtrack - bench helper: give a bitmap half-dirty bits in scattered runs.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Usage: bench-bitmap-fill IMAGE NAME [AVG-RUN-GRANULES] [SEED]
 *
 * There is no guest write path in the bitmap benchmark, so this stores the
 * bits directly through the internal API (bitmap_replace_bits: new data,
 * table and directory, one header switch).  Runs of dirty and clean
 * granules alternate, each 1 .. 2*AVG-1 granules long (default AVG 256),
 * so about half the bits are set.  Built by meson (bench/meson.build)
 * against the internal library; run by bench/bench-bitmap.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <inttypes.h>
#include <pthread.h>

#include "internal.h"
#include "bitmap.h"

int
main (int argc, char **argv)
{
  struct rawtrack_image *img;
  struct bitmap_mem *bm;
  uint64_t avg = 256, seed = 1, g, pos = 0, size, n;
  bool on = false;
  int i, r;

  if (argc < 3) {
    fprintf (stderr, "usage: %s IMAGE NAME [AVG-RUN-GRANULES] [SEED]\n",
             argv[0]);
    return 1;
  }
  if (argc > 3)
    avg = strtoull (argv[3], NULL, 0);
  if (argc > 4)
    seed = strtoull (argv[4], NULL, 0);
  img = rawtrack_image_open (argv[1], RAWTRACK_OPEN_RDWR |
                             RAWTRACK_OPEN_NO_DATA_FILE, NULL);
  if (!img || (i = rawtrack_bitmap_find (img, argv[2])) < 0) {
    fprintf (stderr, "%s\n", rawtrack_get_error ());
    return 1;
  }
  g = rawtrack_image_bitmap_granularity (img, i);
  size = rawtrack_image_virtual_size (img);
  bm = bitmap_mem_new (size, (uint32_t) g);
  if (!bm) {
    fprintf (stderr, "%s\n", rawtrack_get_error ());
    return 1;
  }
  srand48 ((long) seed);
  while (pos < size) {
    n = 1 + (uint64_t) (drand48 () * (double) (2 * avg - 1));
    if (on)
      bitmap_mem_set (bm, pos, n * g);
    pos += n * g;
    on = !on;
  }
  pthread_mutex_lock (&img->lock);
  r = bitmap_replace_bits (img, argv[2], bm);
  pthread_mutex_unlock (&img->lock);
  if (r == -1)
    fprintf (stderr, "%s\n", rawtrack_get_error ());
  printf ("%s: %" PRIu64 " of %" PRIu64 " bits dirty\n", argv[2],
          bitmap_mem_count (bm), bitmap_mem_nbits (bm));
  bitmap_mem_free (bm);
  if (rawtrack_image_close (img) == -1)
    r = -1;
  return r == 0 ? 0 : 1;
}
