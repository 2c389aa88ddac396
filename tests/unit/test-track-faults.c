/* rawtrack - fault and allocation-failure injection in tracking.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every step of starting tracking (the first write after open), of a
 * group commit (a write into a cold extent while the hot set is full, so
 * that the commit cools too) and of the close that cools everything, is
 * made to fail in turn:
 *   io-once    the n-th write, flush, zero or truncate of the image file
 *              fails with EIO, once;
 *   io-stuck   it fails, and so does every later one (a dead device:
 *              what reached the file is what a crash would leave);
 *   alloc      the n-th allocation fails (rt_alloc_fail_after; the close
 *              allocates nothing today, so there it may find no step).
 * n runs from 1 until the step completes without reaching the fault.
 * After each run, on the bytes the image and data file hold:
 *   - the image opens, rawtrack_image_check finds no corruption (leaks
 *     are allowed), no bitmap is in use;
 *   - THE INVARIANT: every 512-byte sector that differs from before the
 *     run is dirty in every enabled bitmap, and the disabled one is clean;
 *   - after a one-time fault the library recovers: a later write into a
 *     cold extent succeeds, the close succeeds, and then the bitmaps are
 *     exact - nothing dirty outside the granules of the writes tried.
 * The committer thread is off (RAWTRACK_PREFETCH=0, RAWTRACK_IDLE_MS=0),
 * so that the n-th allocation or I/O is the same one in every run.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "arith.h"
#include "io/io-shims.h"
#include "rawtrack/rawtrack-bitmap.h"

#define VSIZE   (4u * 1024 * 1024)
#define SECTORS (VSIZE / 512)
#define EXT     (64u * 1024)           /* RAWTRACK_EXTENT_BITS=16 */

enum { P_START, P_COMMIT, P_CLOSE, NPHASE };
enum { K_IO_ONCE, K_IO_STUCK, K_ALLOC, NKIND };
static const char *const pname[] = { "start", "commit", "close" };
static const char *const kname[] = { "io-once", "io-stuck", "alloc" };

static uint8_t *data0, *meta0;
static uint64_t meta0_len;
static int failures;

struct tried { uint64_t off[16], len[16]; int n; };

#define FAIL(...)                                                       \
  do {                                                                  \
    fprintf (stderr, "%s/%s n=%" PRIu64 ": ", pname[phase], kname[kind], \
             n);                                                        \
    fprintf (stderr, __VA_ARGS__);                                      \
    fputc ('\n', stderr);                                               \
    failures++;                                                         \
  } while (0)

static void
setup (void)
{
  struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_image *img;
  const void *p;
  uint64_t i;

  data0 = malloc (VSIZE);
  assert (data0 && meta);
  for (i = 0; i < VSIZE; i++)
    data0[i] = (uint8_t) (i * 7 + (i >> 9));
  assert (rawtrack_attach_io (meta, VSIZE, "disk.raw", 65536) == 0);
  p = rawtrack_io_mem_data (meta, &meta0_len);
  img = rawtrack_image_open_io (rawtrack_io_mem_new (p, meta0_len, 0),
                                rawtrack_io_mem_new (data0, VSIZE, 0),
                                RAWTRACK_OPEN_RDWR);
  rawtrack_io_close (meta);
  assert (img);
  assert (rawtrack_bitmap_add (img, "g64k", 65536, 0) == 0);
  assert (rawtrack_bitmap_add (img, "g512", 512, 0) == 0);
  assert (rawtrack_bitmap_add (img, "off", 4096,
                               RAWTRACK_BITMAP_ADD_DISABLED) == 0);
  p = rawtrack_io_mem_data (img->file, &meta0_len);
  meta0 = malloc (meta0_len);
  assert (meta0);
  memcpy (meta0, p, meta0_len);
  assert (rawtrack_image_close (img) == 0);
}

static int
mark (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  uint8_t *sector = opaque;
  uint64_t s;

  if (dirty)
    for (s = start / 512; s < DIV_ROUND_UP (start + length, 512); s++)
      sector[s] = 1;
  return 0;
}

static int
write_at (struct rawtrack_image *img, struct tried *t, uint64_t off,
          uint64_t len, int fill)
{
  static uint8_t buf[65536];

  assert (len <= sizeof buf && t->n < 16);
  memset (buf, fill, len);
  t->off[t->n] = off;
  t->len[t->n++] = len;
  return rawtrack_image_pwrite (img, buf, len, off, 0);
}

/* Verify the bytes left behind; exact: also nothing dirty outside the
 * granules of the writes tried. */
static void
verify (int phase, int kind, uint64_t n, const uint8_t *meta, uint64_t mlen,
        const uint8_t *data, const struct tried *t, bool exact)
{
  struct rawtrack_check_result res = { .struct_size = sizeof res };
  struct rawtrack_image *img;
  uint8_t *dirty = calloc (SECTORS, 1);
  int i, cnt;

  assert (dirty);
  img = rawtrack_image_open_io (rawtrack_io_mem_new (meta, mlen, 0),
                                rawtrack_io_mem_new (data, VSIZE, 0),
                                RAWTRACK_OPEN_CHECK);
  if (!img) {
    FAIL ("the image does not open: %s", rawtrack_get_error ());
    free (dirty);
    return;
  }
  if (rawtrack_image_check (img, 0, &res, NULL, NULL) == -1 ||
      res.corruptions || res.check_errors)
    FAIL ("check: %" PRIu64 " corruptions, %" PRIu64 " check errors (%s)",
          res.corruptions, res.check_errors, rawtrack_get_error ());
  cnt = rawtrack_image_bitmap_count (img);
  for (i = 0; i < cnt; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint32_t g = strcmp (name, "g64k") == 0 ? 65536
                 : strcmp (name, "g512") == 0 ? 512 : 4096;
    uint64_t s;

    if (rawtrack_image_bitmap_flags (img, i) & RAWTRACK_BITMAP_IN_USE) {
      FAIL ("bitmap %s is in use", name);
      continue;
    }
    memset (dirty, 0, SECTORS);
    if (rawtrack_bitmap_extents (img, name, 0, VSIZE, mark, dirty) == -1) {
      FAIL ("bitmap %s unreadable: %s", name, rawtrack_get_error ());
      continue;
    }
    for (s = 0; s < SECTORS; s++) {
      bool changed = memcmp (data + s * 512, data0 + s * 512, 512) != 0;
      bool tried = false;
      int k;

      for (k = 0; k < t->n && !tried; k++)
        tried = s * 512 < ROUND_UP (t->off[k] + t->len[k], g) &&
                s * 512 + 512 > ROUND_DOWN (t->off[k], g);
      if (strcmp (name, "off") == 0) {
        if (dirty[s]) {
          FAIL ("the disabled bitmap is dirty at sector %" PRIu64, s);
          break;
        }
        continue;
      }
      if (changed && !dirty[s]) {
        FAIL ("sector %" PRIu64 " changed but is clean in %s", s, name);
        break;
      }
      if (exact && dirty[s] && !tried) {
        FAIL ("after a clean close %s is dirty at sector %" PRIu64
              ", which no write touched", name, s);
        break;
      }
    }
  }
  rawtrack_image_close (img);
  free (dirty);
}

/* One run; returns whether the armed fault fired. */
static bool
run (int phase, int kind, uint64_t n)
{
  struct rawtrack_io *im = rawtrack_io_mem_new (meta0, meta0_len, 0);
  struct rawtrack_io *dm = rawtrack_io_mem_new (data0, VSIZE, 0);
  struct rawtrack_io *fi = io_fault_new (im, false);
  struct rawtrack_io *fd = io_fault_new (dm, false);   /* never armed */
  struct rawtrack_io *fp = io_fault_new (fi, false);   /* the image's own */
  struct rawtrack_image *img;
  struct tried t = { .n = 0 };
  const uint8_t *meta, *data;
  uint64_t mlen, dlen;
  bool fired, closed = false, stuck = kind == K_IO_STUCK;
  int k;

  assert (im && dm && fi && fd && fp);
  img = rawtrack_image_open_io (fp, fd, RAWTRACK_OPEN_RDWR);
  assert (img);
  if (phase != P_START) {
    /* Tracking on, and a full hot set (4 extents), every bit synced. */
    for (k = 0; k < 4; k++)
      assert (write_at (img, &t, (uint64_t) (2 * k) * EXT + 4096, 8192,
                        0x10 + k) == 0);
  }
  if (kind == K_ALLOC)
    rt_alloc_fail_after (n);
  else
    io_fault_set (fi, IO_OP_WRITE | IO_OP_FLUSH | IO_OP_ZERO |
                  IO_OP_TRUNCATE, n, EIO, stuck);
  if (phase == P_CLOSE) {
    closed = rawtrack_image_close (img) == 0;
    img = NULL;
  }
  else {
    /* Into a cold extent: a commit that cools one (P_COMMIT), and a
     * write spanning two extents. */
    (void) write_at (img, &t, 20 * EXT + 512, 4096, 0x21);
    (void) write_at (img, &t, 63 * EXT - 1024, 3000, 0x22);
  }
  fired = kind == K_ALLOC ? rt_alloc_fail_pending () == 0 : io_fault_fired (fi);
  rt_alloc_fail_after (0);
  if (!stuck) {
    io_fault_set (fi, 0, 0, 0, false);
    if (img) {
      /* Recovery: tracking works again once the fault is gone. */
      if (write_at (img, &t, 40 * EXT + 65536, 4096, 0x31) == -1)
        FAIL ("a write after the fault failed: %s", rawtrack_get_error ());
      closed = rawtrack_image_close (img) == 0;
      if (!closed)
        FAIL ("close after the fault failed: %s", rawtrack_get_error ());
      img = NULL;
    }
  }
  else if (img)
    rawtrack_image_close (img);      /* fails: the device is dead */
  meta = rawtrack_io_mem_data (im, &mlen);
  data = rawtrack_io_mem_data (dm, &dlen);
  verify (phase, kind, n, meta, mlen, data, &t, closed);
  rawtrack_io_close (fi);
  rawtrack_io_close (im);
  rawtrack_io_close (dm);
  return fired;
}

int
main (void)
{
  setvbuf (stdout, NULL, _IOLBF, 0);
  int phase, kind;
  uint64_t runs = 0;

  setenv ("RAWTRACK_EXTENT_BITS", "16", 1);
  setenv ("RAWTRACK_MAX_HOT", "4", 1);
  setenv ("RAWTRACK_PREFETCH", "0", 1);
  setenv ("RAWTRACK_IDLE_MS", "0", 1);
  setenv ("RAWTRACK_NO_AIO", "1", 1);
  setup ();
  for (phase = 0; phase < NPHASE; phase++)
    for (kind = 0; kind < NKIND; kind++) {
      uint64_t n;

      for (n = 1; n < 100000 && failures < 10; n++) {
        runs++;
        if (!run (phase, kind, n))
          break;
      }
      fflush (stderr);
      printf ("%s/%s: a fault at each of %" PRIu64 " steps\n", pname[phase],
              kname[kind], n - 1);
      if (n - 1 == 0 && !(phase == P_CLOSE && kind == K_ALLOC)) {
        fprintf (stderr, "%s/%s: no fault was ever injected: the test "
                 "exercises nothing\n", pname[phase], kname[kind]);
        failures++;
      }
    }
  if (failures) {
    fprintf (stderr, "test-track-faults: %d failures\n", failures);
    return 1;
  }
  printf ("test-track-faults: %" PRIu64 " runs passed\n", runs);
  return 0;
}
