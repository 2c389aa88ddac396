/* rawtrack - unit test: image open, attach, create and the read path.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Runs on the memory backend (attach_io + open_io) and on temporary files
 * (attach, create, data file name resolution and refusals).
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <errno.h>

#include "internal.h"
#include "io/io-shims.h"
#include "test.h"

static char dir[] = "/tmp/rawtrack-test-image-XXXXXX";

static void
fill (uint8_t *p, size_t n, unsigned seed)
{
  size_t i;

  for (i = 0; i < n; i++)
    p[i] = (uint8_t) (seed * 31 + i * 7 + (i >> 9));
}

/* attach_io on memory: reads go to the data backend, one to one. */
static void
test_mem_attach (uint32_t cs)
{
  const size_t size = 3 * 1024 * 1024 + 512;
  uint8_t *raw = malloc (size), *got = malloc (size);
  struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_io *data;
  struct rawtrack_image *img;
  uint64_t msize;
  const void *mbuf;

  assert (raw && got && meta);
  fill (raw, size, cs);
  assert (rawtrack_attach_io (meta, size, "disk.raw", cs) == 0);
  mbuf = rawtrack_io_mem_data (meta, &msize);
  data = rawtrack_io_mem_new (raw, size, 0);
  img = rawtrack_image_open_io (rawtrack_io_mem_new (mbuf, msize, 0), data, 0);
  rawtrack_io_close (meta);
  CHECK (img != NULL);
  if (!img)
    goto out;
  CHECK (rawtrack_image_virtual_size (img) == size);
  CHECK (rawtrack_image_cluster_size (img) == cs);
  CHECK (rawtrack_image_has_data_file (img) && rawtrack_image_data_file_raw (img));
  CHECK (strcmp (rawtrack_image_data_file (img), "disk.raw") == 0);
  CHECK (rawtrack_image_pread (img, got, size, 0) == 0);
  CHECK (memcmp (raw, got, size) == 0);
  /* Unaligned pieces. */
  CHECK (rawtrack_image_pread (img, got, 1000, 12345) == 0);
  CHECK (memcmp (raw + 12345, got, 1000) == 0);
  /* Past the end is refused. */
  CHECK (rawtrack_image_pread (img, got, 2, size - 1) == -1);
  rawtrack_image_close (img);
 out:
  free (raw);
  free (got);
}

static void
test_refusals (void)
{
  char raw[300], image[300], other[300];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o };
  struct stat st;
  int fd;

  snprintf (raw, sizeof raw, "%s/r.raw", dir);
  snprintf (image, sizeof image, "%s/r.qcow2", dir);
  snprintf (other, sizeof other, "%s/odd.raw", dir);

  /* Missing raw file. */
  CHECK (rawtrack_attach (raw, image, NULL) == -1);
  CHECK (stat (image, &st) == -1);

  /* Size not a multiple of 512. */
  fd = open (other, O_CREAT | O_WRONLY, 0644);
  assert (fd >= 0 && ftruncate (fd, 1000) == 0);
  close (fd);
  CHECK (rawtrack_attach (other, image, NULL) == -1);
  CHECK (strstr (rawtrack_get_error (), "512") != NULL);
  CHECK (stat (image, &st) == -1);

  fd = open (raw, O_CREAT | O_WRONLY, 0644);
  assert (fd >= 0 && ftruncate (fd, 1 << 20) == 0);
  close (fd);
  /* Bad cluster size. */
  o.cluster_size = 3000;
  CHECK (rawtrack_attach (raw, image, &o) == -1);
  o.cluster_size = 4 * 1024 * 1024;
  CHECK (rawtrack_attach (raw, image, &o) == -1);
  o.cluster_size = 0;
  /* Raw and image the same file, even with force. */
  o.force = 1;
  CHECK (rawtrack_attach (raw, raw, &o) == -1);
  CHECK (stat (raw, &st) == 0 && st.st_size == 1 << 20);
  o.force = 0;
  /* Works once, refused the second time, allowed with force. */
  CHECK (rawtrack_attach (raw, image, &o) == 0);
  CHECK (rawtrack_attach (raw, image, &o) == -1);
  CHECK (rawtrack_get_errno () == EEXIST);
  o.force = 1;
  CHECK (rawtrack_attach (raw, image, &o) == 0);
  unlink (other);
}

static void
test_data_file_names (void)
{
  char raw[300], image[300], sub[300], cwd[1024];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o };
  struct rawtrack_image *img;
  uint8_t b[512];
  int fd;

  snprintf (sub, sizeof sub, "%s/sub", dir);
  mkdir (sub, 0755);
  snprintf (raw, sizeof raw, "%s/sub/d.raw", dir);
  snprintf (image, sizeof image, "%s/sub/d.qcow2", dir);
  fd = open (raw, O_CREAT | O_WRONLY, 0644);
  assert (fd >= 0);
  memset (b, 0x5a, sizeof b);
  assert (pwrite (fd, b, sizeof b, 0) == (ssize_t) sizeof b);
  assert (ftruncate (fd, 65536) == 0);
  close (fd);

  /* Relative name: resolved against the image directory, whatever the
   * current directory. */
  o.stored_name = "d.raw";
  CHECK (rawtrack_attach (raw, image, &o) == 0);
  assert (getcwd (cwd, sizeof cwd));
  assert (chdir ("/") == 0);
  img = rawtrack_image_open (image, 0, NULL);
  CHECK (img != NULL);
  if (img) {
    memset (b, 0, sizeof b);
    CHECK (rawtrack_image_pread (img, b, 512, 0) == 0 && b[0] == 0x5a &&
           b[511] == 0x5a);
    rawtrack_image_close (img);
  }
  assert (chdir (cwd) == 0);

  /* json: and protocol names are never opened, but info still works. */
  o.stored_name = "json:{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}";
  o.force = 1;
  CHECK (rawtrack_attach (raw, image, &o) == 0);
  img = rawtrack_image_open (image, 0, NULL);
  CHECK (img == NULL && strstr (rawtrack_get_error (), "not a plain path"));
  img = rawtrack_image_open (image, RAWTRACK_OPEN_NO_DATA_FILE, NULL);
  CHECK (img != NULL);
  rawtrack_image_close (img);
  /* ... and an explicit override is honoured. */
  img = rawtrack_image_open (image, 0, raw);
  CHECK (img != NULL);
  rawtrack_image_close (img);
  o.stored_name = "nbd://evil/export";
  CHECK (rawtrack_attach (raw, image, &o) == 0);
  CHECK (rawtrack_image_open (image, 0, NULL) == NULL);

  /* --data-file on an image without one is an error. */
  unlink (image);
  {
    struct rawtrack_create_opts c = { .struct_size = sizeof c,
                                      .size = 1 << 20 };
    CHECK (rawtrack_image_create (image, &c) == 0);
    CHECK (rawtrack_image_open (image, 0, raw) == NULL);
  }
  unlink (image);
  unlink (raw);
  rmdir (sub);
}

static void
test_create_variants (void)
{
  struct rawtrack_create_opts c = { .struct_size = sizeof c };
  struct rawtrack_image *img;
  char image[300], data[300];
  uint8_t b[4096];
  struct stat st;

  snprintf (image, sizeof image, "%s/c.qcow2", dir);
  snprintf (data, sizeof data, "%s/c.data", dir);
  c.size = 1000000;                     /* rounded up to 512 */
  c.compat = 2;
  CHECK (rawtrack_image_create (image, &c) == 0);
  img = rawtrack_image_open (image, 0, NULL);
  CHECK (img && rawtrack_image_version (img) == 2 &&
         rawtrack_image_virtual_size (img) == 1000448);
  if (img) {
    memset (b, 1, sizeof b);
    CHECK (rawtrack_image_pread (img, b, sizeof b, 0) == 0 && b[0] == 0 &&
           b[4095] == 0);
  }
  rawtrack_image_close (img);
  /* v2 with a data file or other refcount widths: refused. */
  c.refcount_bits = 8;
  CHECK (rawtrack_image_create (image, &c) == -1);
  c.refcount_bits = 0;
  c.data_file = "c.data";
  c.force = 1;
  CHECK (rawtrack_image_create (image, &c) == -1);
  /* v3 with a new data file: created beside the image, sized. */
  c.compat = 3;
  c.force = 0;
  unlink (image);
  CHECK (rawtrack_image_create (image, &c) == 0);
  CHECK (stat (data, &st) == 0 && st.st_size == 1000448);
  /* Without force, neither the image nor the data file is replaced. */
  CHECK (rawtrack_image_create (image, &c) == -1);
  unlink (image);
  CHECK (rawtrack_image_create (image, &c) == -1);   /* data file exists */
  CHECK (stat (image, &st) == -1);
  unlink (data);
}

/* Issue #14 item 11: when stopping tracking fails at close and the flush
 * after it succeeds, close still says what failed ("closing IMAGE: unknown
 * error" before: the flush cleared the message). */
static void
test_close_error (void)
{
  const size_t size = 4 * 1024 * 1024;
  struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0), *f, *m;
  struct rawtrack_image *img;
  uint8_t buf[4096];
  uint64_t msize;
  const void *mbuf;
  int fired_any = 0, n, k;
  void *withbm;

  assert (meta);
  assert (rawtrack_attach_io (meta, size, "disk.raw", 65536) == 0);
  mbuf = rawtrack_io_mem_data (meta, &msize);
  m = rawtrack_io_mem_new (mbuf, msize, 0);
  img = rawtrack_image_open_io (m, NULL, RAWTRACK_OPEN_RDWR |
                                RAWTRACK_OPEN_NO_DATA_FILE);
  assert (img);
  assert (rawtrack_bitmap_add (img, "b", 0, 0) == 0);
  assert (rawtrack_image_flush (img) == 0);
  /* The image with its bitmap, for a fresh copy per round. */
  mbuf = rawtrack_io_mem_data (m, &msize);
  assert ((withbm = malloc (msize)));
  memcpy (withbm, mbuf, msize);
  mbuf = withbm;
  rawtrack_image_close (img);
  memset (buf, 0x5a, sizeof buf);
  /* Fail the n-th write or flush of the image file during close, once:
   * some n hits tracking's stop (in lazy mode it writes every bitmap at
   * close), and the flush after it succeeds. */
  for (k = 0; k < 3; k++)
    for (n = 1; n <= 256; n++) {
      static const unsigned modes[3] = { 0, RAWTRACK_OPEN_TRACK_PROCESS,
                                         RAWTRACK_OPEN_TRACK_LAZY };
      struct rawtrack_io *data = rawtrack_io_mem_new (NULL, size, 0);

      m = rawtrack_io_mem_new (mbuf, msize, 0);
      f = io_fault_new (m, true);
      assert (m && f && data);
      img = rawtrack_image_open_io (f, data, RAWTRACK_OPEN_RDWR | modes[k]);
      assert (img);
      CHECK (rawtrack_image_pwrite (img, buf, sizeof buf, 65536, 0) == 0);
      io_fault_set (f, IO_OP_WRITE | IO_OP_FLUSH, (uint64_t) n, EIO, false);
      if (rawtrack_image_close (img) == 0)
        break;                /* n is past every call of close */
      fired_any++;
      CHECK (rawtrack_get_error () != NULL);
      CHECK (rawtrack_get_errno () == EIO);
      if (!rawtrack_get_error ())
        fprintf (stderr, "close (mode %u) failed at call %d without a "
                 "message\n", modes[k], n);
    }
  CHECK (fired_any > 3);
  rawtrack_io_close (meta);
  free (withbm);
}

int
main (void)
{
  assert (mkdtemp (dir));
  test_mem_attach (512);
  test_mem_attach (65536);
  test_mem_attach (2 * 1024 * 1024);
  test_refusals ();
  test_data_file_names ();
  test_create_variants ();
  test_close_error ();
  {
    char cmd[400];
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system (cmd) != 0)
      fprintf (stderr, "warning: could not remove %s\n", dir);
  }
  return test_exit ("test-image");
}
