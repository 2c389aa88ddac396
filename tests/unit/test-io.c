/* rawtrack - unit test for the file and memory I/O backends.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The same contract checks (rawtrack-io.h) run on a memory backend and on a
 * regular file in $TMPDIR (or /tmp); then each backend's own behaviour:
 * open errors, read-only, O_DIRECT, real holes for the file; max_size,
 * bounded growth and allocation failure for memory.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/stat.h>

#include "internal.h"
#include "rawtrack/rawtrack-io.h"
#include "test.h"

static char tmpdir[4096];

static void
cleanup_tmpdir (void)
{
  char cmd[4200];

  if (tmpdir[0]) {
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system (cmd) != 0)
      fprintf (stderr, "test-io: could not remove %s\n", tmpdir);
  }
}

static void
make_tmpdir (void)
{
  const char *t = getenv ("TMPDIR");

  snprintf (tmpdir, sizeof tmpdir, "%s/test-io.XXXXXX",
            t && *t ? t : "/tmp");
  REQUIRE (mkdtemp (tmpdir) != NULL);
  atexit (cleanup_tmpdir);
}

static void
tmp_path (char *buf, size_t len, const char *name)
{
  snprintf (buf, len, "%s/%s", tmpdir, name);
}

static bool
all_equal (const uint8_t *p, uint64_t len, uint8_t v)
{
  uint64_t i;

  for (i = 0; i < len; i++)
    if (p[i] != v)
      return false;
  return true;
}

/* Read [offset, offset + len) and check it is all v. */
static void
expect_bytes (struct rawtrack_io *io, uint64_t offset, uint64_t len, uint8_t v)
{
  uint8_t *buf = malloc (len);

  REQUIRE (buf != NULL);
  memset (buf, v ^ 0xff, len);
  REQUIRE (rawtrack_io_pread (io, buf, len, offset) == 0);
  REQUIRE (all_equal (buf, len, v));
  free (buf);
}

static void
write_bytes (struct rawtrack_io *io, uint64_t offset, uint64_t len, uint8_t v,
             unsigned flags)
{
  uint8_t *buf = malloc (len);

  REQUIRE (buf != NULL);
  memset (buf, v, len);
  REQUIRE (rawtrack_io_pwrite (io, buf, len, offset, flags) == 0);
  free (buf);
}

static uint64_t
size_of (struct rawtrack_io *io)
{
  int64_t s = rawtrack_io_get_size (io);

  REQUIRE (s >= 0);
  return (uint64_t) s;
}

/* Walk [0, end) with extent and check the answers are well formed and
 * that every hole reads as zeros.  Returns the number of hole bytes. */
static uint64_t
check_extents (struct rawtrack_io *io, uint64_t end)
{
  uint64_t pos = 0, holes = 0;

  while (pos < end) {
    int is_data = -1;
    int64_t n = rawtrack_io_extent (io, pos, end - pos, &is_data);

    REQUIRE (n > 0 && (uint64_t) n <= end - pos);
    REQUIRE (is_data == 0 || is_data == 1);
    if (!is_data) {
      expect_bytes (io, pos, (uint64_t) n, 0);
      holes += (uint64_t) n;
    }
    pos += (uint64_t) n;
  }
  return holes;
}

/* The contract of rawtrack-io.h on an empty, writable backend. */
static void
test_contract (struct rawtrack_io *io)
{
  uint8_t buf[300];
  uint32_t min, pref, max;
  uint64_t size;
  int is_data;
  int r;

  REQUIRE (size_of (io) == 0);
  REQUIRE (rawtrack_io_caps (io) & RAWTRACK_IO_CAN_WRITE);

  /* Reads past the end are zeros and succeed. */
  expect_bytes (io, 0, 100, 0);
  expect_bytes (io, UINT64_C (1) << 40, 100, 0);

  /* A write extends; a read straddling the end is zero-filled. */
  write_bytes (io, 100, 1000, 0x11, 0);
  REQUIRE (size_of (io) == 1100);
  expect_bytes (io, 0, 100, 0);
  expect_bytes (io, 100, 1000, 0x11);
  memset (buf, 0xee, sizeof buf);
  REQUIRE (rawtrack_io_pread (io, buf, 300, 1000) == 0);
  REQUIRE (all_equal (buf, 100, 0x11) && all_equal (buf + 100, 200, 0));

  /* An empty write changes nothing. */
  REQUIRE (rawtrack_io_pwrite (io, buf, 0, 5000, 0) == 0);
  REQUIRE (size_of (io) == 1100);

  /* Zero inside, then zero reaching past the end: extends like a write. */
  REQUIRE (rawtrack_io_zero (io, 100, 200, 0) == 0);
  expect_bytes (io, 100, 100, 0x11);
  expect_bytes (io, 200, 100, 0);
  expect_bytes (io, 300, 800, 0x11);
  REQUIRE (rawtrack_io_zero (io, 1000, 1050, 0) == 0);
  REQUIRE (size_of (io) == 2050);
  expect_bytes (io, 300, 750, 0x11);
  expect_bytes (io, 1050, 1000, 0);

  /* MAY_TRIM zeros: inside, and past the end of the file. */
  write_bytes (io, 8192, 65536, 0x5a, 0);
  REQUIRE (size_of (io) == 8192 + 65536);
  REQUIRE (rawtrack_io_zero (io, 16384, 16384, RAWTRACK_IO_MAY_TRIM) == 0);
  expect_bytes (io, 8192, 8192, 0x5a);
  expect_bytes (io, 16384, 16384, 0);
  expect_bytes (io, 32768, 8192, 0x5a);
  REQUIRE (rawtrack_io_zero (io, 10000, 70000, RAWTRACK_IO_MAY_TRIM) == 0);
  REQUIRE (size_of (io) == 80000);
  expect_bytes (io, 32768, 70000 - 32768, 0x5a);
  expect_bytes (io, 70000, 10000, 0);
  REQUIRE (rawtrack_io_zero (io, 5, 79000, RAWTRACK_IO_MAY_TRIM) == 0);
  REQUIRE (size_of (io) == 80000);

  /* FAST_ZERO either works or says ENOTSUP; with FUA it is durable. */
  r = rawtrack_io_zero (io, 4096, 40960,
                        RAWTRACK_IO_FAST_ZERO | RAWTRACK_IO_FUA);
  if (r == 0)
    expect_bytes (io, 40960, 4096, 0);
  else
    REQUIRE (errno == ENOTSUP);
  write_bytes (io, 40960, 4096, 0x5a, RAWTRACK_IO_FUA);

  /* Trim: the range reads as zeros or as before; never extends. */
  r = rawtrack_io_trim (io, 8192, 36864);
  if (r == 0) {
    uint8_t *p = malloc (8192);
    int i;

    REQUIRE (p != NULL);
    REQUIRE (rawtrack_io_pread (io, p, 8192, 36864) == 0);
    for (i = 0; i < 8192; i++)
      REQUIRE (p[i] == 0 || p[i] == 0x5a);
    free (p);
  }
  else
    REQUIRE (errno == ENOTSUP);
  REQUIRE (rawtrack_io_trim (io, 100000, 79000) == 0 || errno == ENOTSUP);
  REQUIRE (size_of (io) == 80000);
  REQUIRE (rawtrack_io_trim (io, 0, 0) == 0);
  write_bytes (io, 36864, 8192, 0x5a, 0);

  /* Extents are well formed and holes read as zeros; known data is data
   * and past the end is a hole (for backends that track extents). */
  check_extents (io, 90000);
  REQUIRE (rawtrack_io_extent (io, 8192, 512, &is_data) > 0 && is_data == 1);
  if (rawtrack_io_caps (io) & RAWTRACK_IO_CAN_EXTENTS) {
    REQUIRE (rawtrack_io_extent (io, 80000, 1000, &is_data) == 1000);
    REQUIRE (is_data == 0);
  }
  REQUIRE_ERR (rawtrack_io_extent (io, 0, 0, &is_data), EINVAL);

  /* Truncate: shrink, then grow; the regrown part reads as zeros. */
  REQUIRE (rawtrack_io_caps (io) & RAWTRACK_IO_CAN_TRUNCATE);
  REQUIRE (rawtrack_io_truncate (io, 9000) == 0);
  REQUIRE (size_of (io) == 9000);
  REQUIRE (rawtrack_io_truncate (io, 20000) == 0);
  REQUIRE (size_of (io) == 20000);
  expect_bytes (io, 8192, 808, 0x5a);
  expect_bytes (io, 9000, 11000, 0);

  /* Offsets that wrap or that no file can reach are EINVAL. */
  REQUIRE_ERR (rawtrack_io_pread (io, buf, 100, UINT64_MAX - 10), EINVAL);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 100, UINT64_MAX - 10, 0), EINVAL);
  REQUIRE_ERR (rawtrack_io_zero (io, UINT64_MAX, 2, 0), EINVAL);
  REQUIRE_ERR (rawtrack_io_trim (io, 100, UINT64_MAX - 10), EINVAL);
  REQUIRE_ERR (rawtrack_io_extent (io, UINT64_MAX - 10, 100, &is_data), EINVAL);
  size = size_of (io);
  REQUIRE (size == 20000);

  REQUIRE (rawtrack_io_flush (io) == 0);

  REQUIRE (io->ops->block_size (io, &min, &pref, &max) == 0);
  REQUIRE (min >= 1 && pref >= min && max >= pref);
}

/* ---- concurrent writers ------------------------------------------------ */

struct worker {
  struct rawtrack_io *io;
  int id;
};

#define WORKERS 4
#define WORKER_CHUNK 4096
#define WORKER_ROUNDS 64

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  uint8_t buf[WORKER_CHUNK], back[WORKER_CHUNK];
  int i;

  for (i = 0; i < WORKER_ROUNDS; i++) {
    uint64_t off = ((uint64_t) i * WORKERS + (uint64_t) w->id) * WORKER_CHUNK;

    memset (buf, w->id * 16 + (i & 15) + 1, sizeof buf);
    REQUIRE (rawtrack_io_pwrite (w->io, buf, sizeof buf, off, 0) == 0);
    REQUIRE (rawtrack_io_pread (w->io, back, sizeof back, off) == 0);
    REQUIRE (memcmp (buf, back, sizeof buf) == 0);
  }
  return NULL;
}

static void
test_threads (struct rawtrack_io *io)
{
  struct worker w[WORKERS];
  pthread_t t[WORKERS];
  int i;

  for (i = 0; i < WORKERS; i++) {
    w[i].io = io;
    w[i].id = i;
    REQUIRE (pthread_create (&t[i], NULL, worker_main, &w[i]) == 0);
  }
  for (i = 0; i < WORKERS; i++)
    REQUIRE (pthread_join (t[i], NULL) == 0);
  REQUIRE (size_of (io) == (uint64_t) WORKERS * WORKER_ROUNDS * WORKER_CHUNK);
}

/* ---- batched writes ---------------------------------------------------- */

#define BATCH_N      300                  /* more than one AIO round */
#define BATCH_STRIDE 65536
#define BATCH_BIG    (3u << 20)           /* more than one bounce buffer */
#define BATCH_END    ((uint64_t) BATCH_N * BATCH_STRIDE + BATCH_BIG)

/* rawtrack_io_pwrite_batch on any backend: scattered ranges land exactly,
 * their neighbours stay as they were (written just before, so a file
 * backend has them dirty in its page cache while the batch goes direct),
 * unaligned batches and empty ones work, a bad range fails cleanly. */
static void
test_batch (struct rawtrack_io *io)
{
  struct rawtrack_io_vec v[BATCH_N + 1];
  uint8_t *small = malloc (BATCH_N * 512), *big = malloc (BATCH_BIG);
  uint8_t odd[1000];
  uint64_t i;

  REQUIRE (small != NULL && big != NULL);
  write_bytes (io, 0, BATCH_END, 0x11, 0);
  for (i = 0; i < BATCH_N; i++) {
    memset (small + i * 512, (int) (i % 250) + 1, 512);
    v[i].buf = small + i * 512;
    v[i].count = 512;
    v[i].offset = i * BATCH_STRIDE + 512 * (i % 8);
  }
  memset (big, 0xee, BATCH_BIG);
  v[BATCH_N].buf = big;
  v[BATCH_N].count = BATCH_BIG;
  v[BATCH_N].offset = (uint64_t) BATCH_N * BATCH_STRIDE;
  REQUIRE (rawtrack_io_pwrite_batch (io, v, BATCH_N + 1) == 0);
  for (i = 0; i < BATCH_N; i++) {
    uint64_t off = v[i].offset;

    expect_bytes (io, off, 512, (uint8_t) (i % 250 + 1));
    expect_bytes (io, off - 512 * (i % 8), 512 * (i % 8), 0x11);
    expect_bytes (io, off + 512, (i + 1) * BATCH_STRIDE - off - 512, 0x11);
  }
  expect_bytes (io, v[BATCH_N].offset, BATCH_BIG, 0xee);

  /* Unaligned offsets and lengths take another way to the same result. */
  memset (odd, 0x99, sizeof odd);
  v[0] = (struct rawtrack_io_vec) { odd, 100, 7 };
  v[1] = (struct rawtrack_io_vec) { odd, 1000, 70001 };
  v[2] = (struct rawtrack_io_vec) { odd, 0, 4096 };
  REQUIRE (rawtrack_io_pwrite_batch (io, v, 3) == 0);
  expect_bytes (io, 0, 7, 0x01);          /* v[0] of the first batch */
  expect_bytes (io, 7, 100, 0x99);
  expect_bytes (io, 107, 512 - 107, 0x01);
  expect_bytes (io, 70001, 1000, 0x99);
  expect_bytes (io, 71001, 1, 0x11);
  REQUIRE (rawtrack_io_pwrite_batch (io, v, 0) == 0);

  /* A range past what an offset can hold fails the batch with EINVAL. */
  v[1] = (struct rawtrack_io_vec) { odd, 100, UINT64_MAX - 10 };
  REQUIRE_ERR (rawtrack_io_pwrite_batch (io, v, 2), EINVAL);
  REQUIRE (rawtrack_io_flush (io) == 0);
  free (small);
  free (big);
}

/* ---- memory backend ---------------------------------------------------- */

static void
test_mem (void)
{
  static const char hello[] = "hello, world";
  struct rawtrack_io *io;
  const uint8_t *data;
  uint64_t size;
  uint8_t buf[64];
  int is_data;

  io = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (io != NULL);
  REQUIRE (strcmp (io->ops->name, "mem") == 0);
  test_contract (io);
  rawtrack_io_close (io);

  /* Initial content is copied; the buffer is visible. */
  io = rawtrack_io_mem_new (hello, sizeof hello, 0);
  REQUIRE (io != NULL);
  data = rawtrack_io_mem_data (io, &size);
  REQUIRE (data != NULL && data != (const uint8_t *) hello);
  REQUIRE (size == sizeof hello && memcmp (data, hello, size) == 0);
  REQUIRE (rawtrack_io_pread (io, buf, sizeof hello, 0) == 0);
  REQUIRE (memcmp (buf, hello, sizeof hello) == 0);
  /* No overflow and below no size: reads as zeros, not EINVAL. */
  memset (buf, 1, sizeof buf);
  REQUIRE (rawtrack_io_pread (io, buf, sizeof buf, UINT64_C (1) << 62) == 0);
  REQUIRE (all_equal (buf, sizeof buf, 0));
  rawtrack_io_close (io);

  /* NULL data: zeros. */
  io = rawtrack_io_mem_new (NULL, 4096, 0);
  REQUIRE (io != NULL && size_of (io) == 4096);
  expect_bytes (io, 0, 4096, 0);
  rawtrack_io_close (io);

  /* max_size bounds every way of growing; failures change nothing. */
  io = rawtrack_io_mem_new (NULL, 0, 8192);
  REQUIRE (io != NULL);
  write_bytes (io, 8000, 192, 0x33, 0);
  REQUIRE (size_of (io) == 8192);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 2, 8191, 0), ENOSPC);
  REQUIRE_ERR (rawtrack_io_zero (io, 1, 8192, 0), ENOSPC);
  REQUIRE_ERR (rawtrack_io_truncate (io, 8193), ENOSPC);
  REQUIRE (size_of (io) == 8192);
  expect_bytes (io, 8000, 192, 0x33);
  REQUIRE (rawtrack_io_truncate (io, 0) == 0);
  REQUIRE (rawtrack_io_truncate (io, 8192) == 0);
  expect_bytes (io, 0, 8192, 0);
  rawtrack_io_close (io);

  /* The default bound (1 GiB) is checked before allocating anything. */
  io = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (io != NULL);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 1, UINT64_C (1) << 30, 0), ENOSPC);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 1, UINT64_MAX - 1, 0), ENOSPC);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 2, UINT64_MAX, 0), EINVAL);
  REQUIRE_ERR (rawtrack_io_zero (io, UINT64_C (1) << 40, 0, 0), ENOSPC);
  REQUIRE_ERR (rawtrack_io_truncate (io, UINT64_MAX), ENOSPC);
  REQUIRE (size_of (io) == 0);

  /* Allocation failure while growing: ENOMEM, nothing changed. */
  rt_alloc_fail_after (1);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 10, 1 << 20, 0), ENOMEM);
  rt_alloc_fail_after (0);
  REQUIRE (size_of (io) == 0);
  write_bytes (io, 1 << 20, 10, 0x44, 0);
  REQUIRE (size_of (io) == (1 << 20) + 10);
  expect_bytes (io, 0, 1 << 20, 0);
  rawtrack_io_close (io);

  /* Extents at sector granularity: zero sectors are holes. */
  io = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (io != NULL);
  write_bytes (io, 0, 512, 0x55, 0);
  write_bytes (io, 2048, 1, 0x55, 0);
  write_bytes (io, 4095, 1, 0x55, 0);
  REQUIRE (rawtrack_io_extent (io, 0, 10000, &is_data) == 512 && is_data);
  REQUIRE (rawtrack_io_extent (io, 100, 10000, &is_data) == 412 && is_data);
  REQUIRE (rawtrack_io_extent (io, 512, 10000, &is_data) == 1536 && !is_data);
  REQUIRE (rawtrack_io_extent (io, 2048, 10000, &is_data) == 512 && is_data);
  REQUIRE (rawtrack_io_extent (io, 2560, 10000, &is_data) == 1024 && !is_data);
  REQUIRE (rawtrack_io_extent (io, 3584, 10000, &is_data) == 512 && is_data);
  REQUIRE (rawtrack_io_extent (io, 4096, 10000, &is_data) == 10000 && !is_data);
  REQUIRE (rawtrack_io_extent (io, 0, 100, &is_data) == 100 && is_data);
  REQUIRE (rawtrack_io_extent (io, 600, 100, &is_data) == 100 && !is_data);
  REQUIRE (rawtrack_io_trim (io, 512, 0) == 0);
  REQUIRE (rawtrack_io_extent (io, 0, 10000, &is_data) == 2048 && !is_data);
  REQUIRE (check_extents (io, 4096) == 4096 - 1024);
  rawtrack_io_close (io);

  /* Constructor errors. */
  REQUIRE (rawtrack_io_mem_new (NULL, 8193, 8192) == NULL);
  REQUIRE (rawtrack_get_errno () == EINVAL);

  io = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (io != NULL);
  test_threads (io);
  rawtrack_io_close (io);

  io = rawtrack_io_mem_new (NULL, 0, 0);
  REQUIRE (io != NULL);
  test_batch (io);
  rawtrack_io_close (io);

  rawtrack_io_close (NULL);
}

/* ---- file backend ------------------------------------------------------ */

static void
test_file_open_errors (void)
{
  char path[4200];
  struct rawtrack_io *io;

  tmp_path (path, sizeof path, "missing");
  REQUIRE (rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY) == NULL);
  REQUIRE (rawtrack_get_errno () == ENOENT);
  REQUIRE (strstr (rawtrack_get_error (), path) != NULL);

  tmp_path (path, sizeof path, "exists");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                              RAWTRACK_IO_EXCL);
  REQUIRE (io != NULL);
  rawtrack_io_close (io);
  REQUIRE (rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                                RAWTRACK_IO_EXCL) == NULL);
  REQUIRE (rawtrack_get_errno () == EEXIST);
  REQUIRE (strstr (rawtrack_get_error (), path) != NULL);
  /* CREATE without RDWR, EXCL without CREATE, unknown bits. */
  REQUIRE (rawtrack_io_file_open (path, RAWTRACK_IO_CREATE) == NULL);
  REQUIRE (rawtrack_get_errno () == EINVAL);
  REQUIRE (rawtrack_io_file_open (path, RAWTRACK_IO_EXCL) == NULL);
  REQUIRE (rawtrack_get_errno () == EINVAL);
  REQUIRE (rawtrack_io_file_open (path, 0x1000) == NULL);
  REQUIRE (rawtrack_get_errno () == EINVAL);

  REQUIRE (rawtrack_io_file_open (tmpdir, RAWTRACK_IO_RDONLY) == NULL);
  REQUIRE (rawtrack_get_errno () == EISDIR);
  if (access ("/dev/null", R_OK) == 0) {
    REQUIRE (rawtrack_io_file_open ("/dev/null", RAWTRACK_IO_RDONLY) == NULL);
    REQUIRE (rawtrack_get_errno () == EINVAL);
  }
}

static void
test_file_readonly (void)
{
  char path[4200];
  struct rawtrack_io *io;
  uint8_t buf[16] = { 0 };

  tmp_path (path, sizeof path, "ro");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  REQUIRE (io != NULL);
  write_bytes (io, 0, 4096, 0x77, 0);
  rawtrack_io_close (io);

  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);
  REQUIRE (io != NULL);
  REQUIRE (!(rawtrack_io_caps (io) & (RAWTRACK_IO_CAN_WRITE |
                                    RAWTRACK_IO_CAN_ZERO |
                                    RAWTRACK_IO_CAN_TRIM |
                                    RAWTRACK_IO_CAN_TRUNCATE)));
  expect_bytes (io, 0, 4096, 0x77);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, sizeof buf, 0, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_pwrite (io, buf, 0, 0, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_zero (io, 100, 0, RAWTRACK_IO_MAY_TRIM), EROFS);
  REQUIRE_ERR (rawtrack_io_trim (io, 4096, 0), EROFS);
  REQUIRE_ERR (rawtrack_io_truncate (io, 0), EROFS);
  REQUIRE (rawtrack_io_flush (io) == 0);
  REQUIRE (size_of (io) == 4096);
  expect_bytes (io, 0, 4096, 0x77);
  rawtrack_io_close (io);
}

/* Real holes, when the filesystem under $TMPDIR has them. */
static void
test_file_holes (void)
{
  char path[4200];
  struct rawtrack_io *io;
  const uint64_t size = 4 << 20;
  bool fs_has_holes;
  off_t h;
  int fd, is_data;
  uint64_t holes;

  tmp_path (path, sizeof path, "sparse");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  REQUIRE (io != NULL);
  write_bytes (io, 0, 65536, 0x99, 0);
  write_bytes (io, size - 65536, 65536, 0x99, 0);
  REQUIRE (rawtrack_io_flush (io) == 0);

  /* Ask the kernel directly whether this filesystem reports holes. */
  fd = open (path, O_RDONLY | O_CLOEXEC);
  REQUIRE (fd >= 0);
  h = lseek (fd, 0, SEEK_HOLE);
  fs_has_holes = h >= 0 && (uint64_t) h < size;
  close (fd);

  holes = check_extents (io, size + 4096);
  REQUIRE (rawtrack_io_extent (io, 0, size, &is_data) > 0 && is_data == 1);
  if (fs_has_holes) {
    REQUIRE (rawtrack_io_caps (io) & RAWTRACK_IO_CAN_EXTENTS);
    REQUIRE (holes >= size - 2 * 65536);
    REQUIRE (rawtrack_io_extent (io, 1 << 20, 4096, &is_data) == 4096);
    REQUIRE (is_data == 0);
  }

  /* A punched hole shows up too. */
  if (rawtrack_io_trim (io, 65536, 0) == 0 && fs_has_holes) {
    REQUIRE (rawtrack_io_extent (io, 0, 4096, &is_data) == 4096);
    REQUIRE (is_data == 0);
    expect_bytes (io, 0, 65536, 0);
  }
  rawtrack_io_close (io);
}

static void
test_file_flags (void)
{
  char path[4200];
  struct rawtrack_io *io;
  uint32_t min, pref, max;
  void *buf;

  tmp_path (path, sizeof path, "dsync");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                              RAWTRACK_IO_DSYNC);
  REQUIRE (io != NULL);
  REQUIRE (rawtrack_io_caps (io) & RAWTRACK_IO_CAN_FUA);
  write_bytes (io, 0, 512, 0x12, RAWTRACK_IO_FUA);
  expect_bytes (io, 0, 512, 0x12);
  rawtrack_io_close (io);

  /* O_DIRECT: not every filesystem has it (tmpfs refuses with EINVAL). */
  tmp_path (path, sizeof path, "direct");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                              RAWTRACK_IO_DIRECT);
  if (io == NULL) {
    REQUIRE (rawtrack_get_errno () == EINVAL);
    return;
  }
  REQUIRE (io->ops->block_size (io, &min, &pref, &max) == 0);
  REQUIRE (min >= 512 && pref >= min);
  REQUIRE (posix_memalign (&buf, 4096, 3 * min) == 0);
  memset (buf, 0x21, 2 * min);
  REQUIRE (rawtrack_io_pwrite (io, buf, 2 * min, 0, RAWTRACK_IO_FUA) == 0);
  /* A punch past the end extends with an aligned write. */
  REQUIRE (rawtrack_io_zero (io, min, 2 * min, RAWTRACK_IO_MAY_TRIM) == 0);
  REQUIRE (size_of (io) == 3 * min);
  /* Reading across the end zero-fills without an unaligned retry. */
  memset (buf, 0xee, 3 * min);
  REQUIRE (rawtrack_io_pread (io, buf, 3 * min, min) == 0);
  REQUIRE (all_equal (buf, min, 0x21));
  REQUIRE (all_equal ((uint8_t *) buf + min, 2 * min, 0));
  free (buf);
  rawtrack_io_close (io);
}

/* How many of this process's descriptors are open on path. */
static int
fds_on (const char *path)
{
  char link[64], target[4200];
  int fd, n = 0;

  for (fd = 0; fd < 1024; fd++) {
    ssize_t len;

    snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
    len = readlink (link, target, sizeof target - 1);
    if (len <= 0)
      continue;
    target[len] = '\0';
    n += strcmp (target, path) == 0;
  }
  return n;
}

/* The file backend's batch: direct I/O through a second descriptor when
 * the filesystem allows O_DIRECT (one more descriptor on the file shows
 * it engaged), the buffered fallback with RAWTRACK_NO_AIO, on an O_DIRECT
 * backend, and nothing at all on a read-only one. */
static void
test_file_batch (void)
{
  char path[4200], real[4200];
  struct rawtrack_io *io;
  struct rawtrack_io_vec v[2];
  uint8_t buf[512];
  bool direct_ok;
  int fd;

  tmp_path (path, sizeof path, "batch");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  REQUIRE (io != NULL);
  REQUIRE (realpath (path, real) != NULL);
  fd = open (path, O_RDWR | O_DIRECT);
  direct_ok = fd != -1;
  if (fd != -1)
    close (fd);
  REQUIRE (fds_on (real) == 1);
  test_batch (io);
  REQUIRE (fds_on (real) == (direct_ok ? 2 : 1));
  rawtrack_io_close (io);
  REQUIRE (fds_on (real) == 0);
  if (!direct_ok)
    fprintf (stderr, "test-io: O_DIRECT unsupported under %s: batched "
             "writes tested on their buffered path only\n", tmpdir);

  /* Told not to: the same results, no second descriptor. */
  REQUIRE (setenv ("RAWTRACK_NO_AIO", "1", 1) == 0);
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR);
  REQUIRE (io != NULL);
  test_batch (io);
  REQUIRE (fds_on (real) == 1);
  rawtrack_io_close (io);
  REQUIRE (unsetenv ("RAWTRACK_NO_AIO") == 0);

  /* A backend opened O_DIRECT batches on its own descriptor, in units of
   * its minimum block size (its writes must be aligned like any other:
   * a 512-byte write from a stack buffer failed there, now and then). */
  if (direct_ok) {
    uint32_t min, pref, max;
    uint8_t *dbuf;

    io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_DIRECT);
    REQUIRE (io != NULL);
    REQUIRE (io->ops->block_size (io, &min, &pref, &max) == 0);
    REQUIRE (min >= 512 && min <= 65536);
    REQUIRE (posix_memalign ((void **) &dbuf, min, min) == 0);
    memset (dbuf, 0x42, min);
    v[0] = (struct rawtrack_io_vec) { dbuf, min, 1 << 20 };
    v[1] = (struct rawtrack_io_vec) { dbuf, min, 2 << 20 };
    REQUIRE (rawtrack_io_pwrite_batch (io, v, 2) == 0);
    REQUIRE (fds_on (real) == 1);
    rawtrack_io_close (io);
    free (dbuf);
    io = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);
    REQUIRE (io != NULL);
    expect_bytes (io, 1 << 20, min, 0x42);
    expect_bytes (io, 2 << 20, min, 0x42);
    expect_bytes (io, (2 << 20) - 512, 512, 0x11);
    rawtrack_io_close (io);
  }

  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);
  REQUIRE (io != NULL);
  v[0] = (struct rawtrack_io_vec) { buf, 512, 0 };
  v[1] = (struct rawtrack_io_vec) { buf, 512, 8192 };
  REQUIRE_ERR (rawtrack_io_pwrite_batch (io, v, 2), EROFS);
  REQUIRE (fds_on (real) == 1);
  expect_bytes (io, 8192, 4096, 0x11);
  rawtrack_io_close (io);
}

/* QEMU's image locks (io-file-lock.c): conflicts between two open file
 * descriptions of one file, in both directions (held against denied,
 * denied against held), a failed attempt holding nothing, close releasing
 * everything, and the memory backend having nothing to lock. */
#define W (RAWTRACK_IO_PERM_READ | RAWTRACK_IO_PERM_WRITE |             \
           RAWTRACK_IO_PERM_RESIZE)
#define W_DENY (RAWTRACK_IO_PERM_WRITE | RAWTRACK_IO_PERM_RESIZE)

static void
test_file_lock (void)
{
  char path[4200];
  struct rawtrack_io *a, *b, *c, *m;

  tmp_path (path, sizeof path, "lock");
  a = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  b = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);
  c = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR);
  REQUIRE (a && b && c);

  REQUIRE (rawtrack_io_lock (a, W, W_DENY) == 0);
  /* a denies write: b may not have it. */
  REQUIRE_ERR (rawtrack_io_lock (b, W, W_DENY), EBUSY);
  REQUIRE (strstr (rawtrack_get_error (), "QEMU's image lock") != NULL);
  /* a holds write: b may not deny it (QEMU's locking reader). */
  REQUIRE_ERR (rawtrack_io_lock (b, RAWTRACK_IO_PERM_READ, W_DENY), EBUSY);
  /* What a holds and denies leaves b a plain reader, sharing all. */
  REQUIRE (rawtrack_io_lock (b, RAWTRACK_IO_PERM_READ, 0) == 0);
  /* Holding nothing after a failure: c fails on a alone. */
  REQUIRE_ERR (rawtrack_io_lock (c, W, W_DENY), EBUSY);
  rawtrack_io_close (a);
  /* a gone, b (a reader sharing everything) does not stand in c's way,
   * and b's failed attempts left no denial behind. */
  REQUIRE (rawtrack_io_lock (c, W, W_DENY) == 0);
  /* Now c denies what b's next attempt asks for. */
  REQUIRE_ERR (rawtrack_io_lock (b, RAWTRACK_IO_PERM_WRITE, 0), EBUSY);
  rawtrack_io_close (b);
  rawtrack_io_close (c);

  /* Everything closed: anyone may lock again. */
  a = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR);
  REQUIRE (a != NULL);
  REQUIRE (rawtrack_io_lock (a, W, W_DENY) == 0);
  rawtrack_io_close (a);

  m = rawtrack_io_mem_new (NULL, 4096, 0);
  REQUIRE (m != NULL);
  REQUIRE (rawtrack_io_lock (m, W, W_DENY) == 0);
  rawtrack_io_close (m);
}

static void
test_file (void)
{
  char path[4200];
  struct rawtrack_io *io;

  tmp_path (path, sizeof path, "contract");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  REQUIRE (io != NULL);
  REQUIRE (strcmp (io->ops->name, "file") == 0);
  REQUIRE (!(rawtrack_io_caps (io) & RAWTRACK_IO_IS_BLOCKDEV));
  REQUIRE (rawtrack_io_mem_data (io, NULL) == NULL);
  test_contract (io);
  rawtrack_io_close (io);

  /* What the backend wrote is in the file. */
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);
  REQUIRE (io != NULL);
  REQUIRE (size_of (io) == 20000);
  expect_bytes (io, 8192, 808, 0x5a);
  rawtrack_io_close (io);

  tmp_path (path, sizeof path, "threads");
  io = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE);
  REQUIRE (io != NULL);
  test_threads (io);
  rawtrack_io_close (io);

  test_file_open_errors ();
  test_file_readonly ();
  test_file_holes ();
  test_file_flags ();
  test_file_batch ();
  test_file_lock ();
}

int
main (void)
{
  make_tmpdir ();
  test_mem ();
  test_file ();
  return 0;
}
