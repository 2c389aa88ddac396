/* rawtrack - unit test: refcount encoding and cluster allocation.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * 1. refblock_get/set for every width against QEMU's packing (the byte
 *    patterns of a fresh image's first refcount block).
 * 2. For every refcount width, on 512-byte clusters (so that refcount
 *    blocks and the refcount table fill up quickly): allocate thousands of
 *    clusters in runs of varying length, free some, close; then every
 *    allocated cluster must read back with refcount 1, every freed one 0,
 *    and - when qemu-img is installed - `qemu-img check` must find exactly
 *    the allocated clusters leaked (nothing references them) and no
 *    corruption: the grown refcount structures are valid for QEMU.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <inttypes.h>

#include "internal.h"
#include "test.h"

static void
test_packing (void)
{
  static const struct { uint32_t bits; uint8_t expect[8]; size_t n; } t[] = {
    { 1, { 0x0f }, 1 },
    { 2, { 0x55 }, 1 },
    { 4, { 0x11, 0x11 }, 2 },
    { 8, { 1, 1, 1, 1 }, 4 },
    { 16, { 0, 1, 0, 1, 0, 1, 0, 1 }, 8 },
  };
  uint8_t block[64];
  size_t i;
  uint64_t j;
  uint32_t bits;

  for (i = 0; i < sizeof t / sizeof t[0]; i++) {
    memset (block, 0, sizeof block);
    for (j = 0; j < 4; j++)
      refblock_set (block, j, t[i].bits, 1);
    CHECK (memcmp (block, t[i].expect, t[i].n) == 0);
  }
  memset (block, 0, sizeof block);
  refblock_set (block, 0, 64, 1);
  CHECK (block[7] == 1 && block[0] == 0);

  /* Neighbours are untouched and maximum values round-trip. */
  for (bits = 1; bits <= 64; bits *= 2) {
    uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;

    memset (block, 0xff, sizeof block);
    refblock_set (block, 5, bits, 0);
    CHECK (refblock_get (block, 5, bits) == 0);
    CHECK (refblock_get (block, 4, bits) == max);
    CHECK (refblock_get (block, 6, bits) == max);
    refblock_set (block, 5, bits, max);
    CHECK (refblock_get (block, 5, bits) == max);
  }
}

static int
qemu_img_leaks (const char *path, long *leaks, long *corruptions)
{
  char cmd[512], line[256];
  FILE *fp;

  *leaks = *corruptions = 0;
  if (system ("qemu-img --version >/dev/null 2>&1") != 0)
    return -1;
  snprintf (cmd, sizeof cmd, "qemu-img check --output=json '%s' 2>/dev/null",
            path);
  fp = popen (cmd, "r");
  if (!fp)
    return -1;
  while (fgets (line, sizeof line, fp)) {
    sscanf (line, " \"leaks\": %ld", leaks);
    sscanf (line, " \"corruptions\": %ld", corruptions);
  }
  pclose (fp);
  return 0;
}

static void
test_alloc (const char *dir, int bits, uint32_t cs)
{
  struct rawtrack_create_opts o = { .struct_size = sizeof o };
  struct rawtrack_image *img;
  char path[256];
  uint64_t *offs, n = 0, i, v, live = 0;
  uint64_t lens[2000];
  uint32_t start_clusters;
  long leaks, corruptions;

  snprintf (path, sizeof path, "%.200s/alloc-%d-%u.qcow2", dir, bits, cs);
  o.size = 64 << 20;
  o.cluster_size = cs;
  o.refcount_bits = bits;
  assert (rawtrack_image_create (path, &o) == 0);
  img = rawtrack_image_open (path, RAWTRACK_OPEN_RDWR, NULL);
  assert (img);
  start_clusters = img->h.refcount_table_clusters;
  offs = calloc (2000, sizeof *offs);
  assert (offs);

  srand (bits * 1000 + cs);
  for (i = 0; i < 2000; i++) {
    int64_t off;

    lens[i] = 1 + (uint64_t) (rand () % 24);
    off = qcow2_alloc_clusters (img, lens[i]);
    if (off < 0)
      fprintf (stderr, "alloc failed: %s\n", rawtrack_get_error ());
    assert (off > 0);
    CHECK (off % cs == 0);
    offs[n++] = (uint64_t) off;
    /* Free every third run again. */
    if (i % 3 == 2) {
      assert (qcow2_free_clusters (img, offs[i - 1], lens[i - 1]) == 0);
      offs[i - 1] = 0;
    }
  }
  for (i = 0; i < n; i++) {
    uint64_t c;

    if (!offs[i])
      continue;
    for (c = 0; c < lens[i]; c++) {
      assert (qcow2_refcount_get (img, offs[i] / cs + c, &v) == 0);
      CHECK (v == 1);
      live++;
    }
  }
  /* With wide refcounts a block covers few clusters, so the table must
   * have grown (and been moved) on the way. */
  if (bits >= 32)
    CHECK (img->h.refcount_table_clusters > start_clusters);
  /* Make the file cover every allocated cluster, as data written there
   * would: qemu-img counts leaks only inside the file. */
  {
    uint64_t max_end = 0;

    for (i = 0; i < n; i++)
      if (offs[i] && offs[i] + lens[i] * cs > max_end)
        max_end = offs[i] + lens[i] * cs;
    if ((int64_t) max_end > rawtrack_io_get_size (img->file))
      assert (rawtrack_io_truncate (img->file, max_end) == 0);
  }
  assert (rawtrack_image_close (img) == 0);

  /* Reopen: the refcounts are on disk. */
  img = rawtrack_image_open (path, 0, NULL);
  assert (img);
  for (i = 0; i < n; i++)
    if (offs[i]) {
      assert (qcow2_refcount_get (img, offs[i] / cs, &v) == 0);
      CHECK (v == 1);
    }
  rawtrack_image_close (img);

  if (qemu_img_leaks (path, &leaks, &corruptions) == 0) {
    if ((uint64_t) leaks != live || corruptions != 0) {
      fprintf (stderr, "%s: qemu-img check found %ld leaks (expected %"
               PRIu64 ") and %ld corruptions\n", path, leaks, live,
               corruptions);
      test_failures++;
    }
  }
  free (offs);
  unlink (path);
}

int
main (void)
{
  char dir[] = "/tmp/rawtrack-test-refcount-XXXXXX";
  int bits;

  test_packing ();
  assert (mkdtemp (dir));
  for (bits = 1; bits <= 64; bits *= 2)
    test_alloc (dir, bits, 512);
  test_alloc (dir, 16, 4096);
  test_alloc (dir, 16, 65536);
  rmdir (dir);
  return test_exit ("test-refcount");
}
