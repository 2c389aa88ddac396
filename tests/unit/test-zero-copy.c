/* rawtrack - unit test: the zero-copy entry points.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * rawtrack_image_read_source and rawtrack_image_write_target /
 * rawtrack_image_write_done, which `rawtrack serve` uses for sendfile and
 * splice:
 *  - on an attached raw disk they name the data file, one to one, and a
 *    direct write is tracked (dirty after reopening) and lands in place;
 *  - write_target never waits for a bitmap commit: a first write to a
 *    clean region is refused (0), and accepted once the region is hot;
 *  - everything else says 0 (standard qcow2, memory backends), and bad
 *    ranges and read-only images fail with the usual errors.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "rawtrack/rawtrack-io.h"
#include "test.h"

#define SIZE (8u * 1024 * 1024)

static char dir[] = "/tmp/rawtrack-test-zero-copy-XXXXXX";

struct span { uint64_t lo, hi; };

static int
collect (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct span *s = opaque;

  if (dirty) {
    if (s->hi == 0 || start < s->lo)
      s->lo = start;
    if (start + length > s->hi)
      s->hi = start + length;
  }
  return 0;
}

static void
test_attached (void)
{
  char raw[256], img_path[256];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o };
  struct rawtrack_image *img;
  static uint8_t buf[SIZE], got[256 * 1024];
  uint64_t foff = 1;
  struct span sp = { 0, 0 };
  int fd, dfd = -1, i;
  int64_t n;

  snprintf (raw, sizeof raw, "%s/disk.raw", dir);
  snprintf (img_path, sizeof img_path, "%s/disk.qcow2", dir);
  for (i = 0; i < (int) SIZE; i++)
    buf[i] = (uint8_t) (i * 7 + (i >> 12));
  fd = open (raw, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  assert (fd >= 0 && write (fd, buf, SIZE) == (ssize_t) SIZE);
  close (fd);
  o.cluster_size = 65536;
  CHECK (rawtrack_attach (raw, img_path, &o) == 0);
  img = rawtrack_image_open (img_path, RAWTRACK_OPEN_RDWR, NULL);
  assert (img);
  CHECK (rawtrack_bitmap_add (img, "b", 65536, 0) == 0);
  CHECK (rawtrack_image_close (img) == 0);

  /* Small extents, so that "hot" is a small, known region. */
  setenv ("RAWTRACK_EXTENT_BITS", "20", 1);
  img = rawtrack_image_open (img_path, RAWTRACK_OPEN_RDWR, NULL);
  assert (img);

  /* Reads: the whole disk lies in the data file at the same offsets. */
  n = rawtrack_image_read_source (img, 0, SIZE, &dfd, &foff);
  CHECK (n == (int64_t) SIZE && dfd >= 0 && foff == 0);
  n = rawtrack_image_read_source (img, 4096, 100000, &dfd, &foff);
  CHECK (n == 100000 && foff == 4096);
  CHECK (pread (dfd, got, 100000, (off_t) foff) == 100000 &&
         memcmp (got, buf + 4096, 100000) == 0);
  CHECK (rawtrack_image_read_source (img, SIZE - 512, 1024, &dfd,
                                     &foff) == -1 &&
         rawtrack_get_errno () == EINVAL);
  CHECK (rawtrack_image_read_source (img, 0, 0, &dfd, &foff) == 0);

  /* Writes: refused while the region is clean (it would need a commit),
   * accepted once a normal write has made its extent hot. */
  CHECK (rawtrack_image_write_target (img, 3u << 20, 65536, 0, &dfd,
                                      &foff) == 0);
  memset (got, 0xa5, sizeof got);
  CHECK (rawtrack_image_pwrite (img, got, 512, 3u << 20, 0) == 0);
  n = rawtrack_image_write_target (img, (3u << 20) + 65536, 131072,
                                   RAWTRACK_WRITE_FUA, &dfd, &foff);
  CHECK (n == 131072 && foff == (3u << 20) + 65536);
  if (n == 131072)
    CHECK (pwrite (dfd, got, 131072, (off_t) foff) == 131072);
  CHECK (rawtrack_image_write_done (img, (3u << 20) + 65536, 131072,
                                   RAWTRACK_WRITE_FUA) == 0);
  /* The completion names its range: one outside the disk is refused. */
  CHECK (rawtrack_image_write_done (img, SIZE - 512, 1024, 0) == -1 &&
         rawtrack_get_errno () == EINVAL &&
         strstr (rawtrack_get_error (), "past the end"));
  CHECK (rawtrack_image_write_target (img, SIZE, 1, 0, &dfd, &foff) == -1 &&
         rawtrack_get_errno () == EINVAL);
  CHECK (rawtrack_image_close (img) == 0);
  unsetenv ("RAWTRACK_EXTENT_BITS");

  /* The direct write is in the raw file and dirty in the bitmap. */
  fd = open (raw, O_RDONLY);
  assert (fd >= 0);
  CHECK (pread (fd, buf, 131072, (3 << 20) + 65536) == 131072 &&
         memcmp (buf, got, 131072) == 0);
  close (fd);
  img = rawtrack_image_open (img_path, 0, NULL);
  assert (img);
  CHECK (rawtrack_bitmap_extents (img, "b", 0, SIZE, collect, &sp) == 0);
  CHECK (sp.lo == 3u << 20 && sp.hi == (3u << 20) + 196608);
  /* Read-only: no writing, direct or not. */
  CHECK (rawtrack_image_write_target (img, 0, 65536, 0, &dfd, &foff) == -1 &&
         rawtrack_get_errno () == EROFS);
  CHECK (rawtrack_image_read_source (img, 0, 65536, &dfd, &foff) == 65536);
  CHECK (rawtrack_image_close (img) == 0);
  unlink (raw);
  unlink (img_path);
}

/* Write, then find no zero-copy source or target at the same place;
 * closes img. */
static void
expect_no_file_run (struct rawtrack_image *img)
{
  static uint8_t b[65536];
  uint64_t foff;
  int fd;

  CHECK (rawtrack_image_pwrite (img, b, sizeof b, 0, 0) == 0);
  CHECK (rawtrack_image_read_source (img, 0, 65536, &fd, &foff) == 0);
  CHECK (rawtrack_image_write_target (img, 0, 65536, 0, &fd, &foff) == 0);
  CHECK (rawtrack_image_close (img) == 0);
}

/* Standard qcow2 and memory backends: nothing is one to one in a file. */
static void
test_others (void)
{
  char path[256];
  struct rawtrack_create_opts co = { .struct_size = sizeof co,
                                     .size = SIZE };
  struct rawtrack_image *img;

  snprintf (path, sizeof path, "%s/plain.qcow2", dir);
  CHECK (rawtrack_image_create (path, &co) == 0);
  img = rawtrack_image_open (path, RAWTRACK_OPEN_RDWR, NULL);
  assert (img);
  expect_no_file_run (img);
  unlink (path);

  {
    struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0);
    struct rawtrack_io *data = rawtrack_io_mem_new (NULL, SIZE, 0);

    assert (meta && data);
    CHECK (rawtrack_attach_io (meta, SIZE, "disk.raw", 65536) == 0);
    img = rawtrack_image_open_io (meta, data, RAWTRACK_OPEN_RDWR);
    assert (img);
    expect_no_file_run (img);
  }
}

int
main (void)
{
  assert (mkdtemp (dir));
  test_attached ();
  test_others ();
  rmdir (dir);
  return test_exit ("test-zero-copy");
}
