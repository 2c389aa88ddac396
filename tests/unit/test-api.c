/* rawtrack - unit test: the public API's promises.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *  - rawtrack_io_* functions that fail set the thread's message (naming
 *    the backend, the operation and the range) as well as errno; one that
 *    succeeds leaves no message behind.
 *  - rawtrack_io_flush on a backend without a flush method fails with
 *    ENOTSUP, and so does every promise of durability built on it:
 *    rawtrack_image_flush, and the first tracked guest write (crash-safe
 *    tracking refuses, with a message that says why).  The same backend
 *    with a flush method is the negative control.
 *  - Bitmap names handed out by rawtrack_image_bitmap_name stay valid
 *    while bitmap operations replace the directory (checked byte for byte
 *    after the operations; MALLOC_PERTURB_ would garble freed names), and
 *    the directory getters run against a thread doing bitmap operations
 *    (the sanitizer builds see any race or use after free).
 * Everything runs on memory backends.
 */
#include <stdint.h>
#include <stdbool.h>
#include <pthread.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-io.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "test.h"

#define DISK (4u << 20)

/* ---- a backend over a memory backend, with or without flush ---------- */

struct wrap {
  struct rawtrack_io io;           /* first */
  struct rawtrack_io *inner;       /* not owned */
  bool fail;                       /* pread/pwrite fail with EIO */
};

static int
w_pread (struct rawtrack_io *io, void *buf, uint64_t count, uint64_t offset)
{
  struct wrap *w = (struct wrap *) io;

  if (w->fail) {
    errno = EIO;
    return -1;
  }
  return w->inner->ops->pread (w->inner, buf, count, offset);
}

static int
w_pwrite (struct rawtrack_io *io, const void *buf, uint64_t count,
          uint64_t offset, unsigned flags)
{
  struct wrap *w = (struct wrap *) io;

  if (w->fail) {
    errno = EIO;
    return -1;
  }
  return w->inner->ops->pwrite (w->inner, buf, count, offset, flags);
}

static int
w_flush (struct rawtrack_io *io)
{
  struct wrap *w = (struct wrap *) io;

  return w->inner->ops->flush (w->inner);
}

static int64_t
w_get_size (struct rawtrack_io *io)
{
  struct wrap *w = (struct wrap *) io;

  return w->inner->ops->get_size (w->inner);
}

static int
w_truncate (struct rawtrack_io *io, uint64_t size)
{
  struct wrap *w = (struct wrap *) io;

  return w->inner->ops->truncate (w->inner, size);
}

static void
w_close (struct rawtrack_io *io)
{
  free (io);
}

static const struct rawtrack_io_ops with_flush = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "wrap",
  .pread = w_pread, .pwrite = w_pwrite, .flush = w_flush,
  .get_size = w_get_size, .truncate = w_truncate, .close = w_close,
};

static const struct rawtrack_io_ops without_flush = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "noflush",
  .pread = w_pread, .pwrite = w_pwrite,
  .get_size = w_get_size, .truncate = w_truncate, .close = w_close,
};

static struct rawtrack_io *
wrap (struct rawtrack_io *inner, bool flush)
{
  struct wrap *w = calloc (1, sizeof *w);

  REQUIRE (w != NULL);
  w->io.ops = flush ? &with_flush : &without_flush;
  w->inner = inner;
  return &w->io;
}

static bool
error_has (const char *what)
{
  const char *e = rawtrack_get_error ();

  return e && strstr (e, what);
}

/* ---- io functions set the message ------------------------------------- */

static void
test_io_messages (void)
{
  struct rawtrack_io *mem = rawtrack_io_mem_new (NULL, 65536, 0);
  struct rawtrack_io *w;
  uint8_t buf[4096];

  REQUIRE (mem);
  w = wrap (mem, true);
  CHECK (rawtrack_io_pread (w, buf, sizeof buf, 8192) == 0);
  CHECK (rawtrack_get_error () == NULL);          /* control: no message */
  ((struct wrap *) w)->fail = true;
  errno = 0;
  CHECK (rawtrack_io_pread (w, buf, sizeof buf, 8192) == -1);
  CHECK (errno == EIO && rawtrack_get_errno () == EIO);
  CHECK (error_has ("wrap backend") && error_has ("read of 4096 bytes at "
                                                  "offset 8192"));
  CHECK (rawtrack_io_pwrite (w, buf, 512, 1024, 0) == -1 &&
         rawtrack_get_errno () == EIO &&
         error_has ("write of 512 bytes at offset 1024"));
  /* Backends without the method: errno and a message. */
  CHECK (rawtrack_io_zero (w, 512, 0, 0) == -1 && errno == ENOTSUP &&
         error_has ("write zeroes"));
  CHECK (rawtrack_io_trim (w, 512, 0) == -1 && errno == ENOTSUP &&
         error_has ("trim"));
  ((struct wrap *) w)->fail = false;
  CHECK (rawtrack_io_pwrite (w, buf, 512, 1024, 0) == 0 &&
         rawtrack_get_error () == NULL);
  rawtrack_io_close (w);
  rawtrack_io_close (mem);
}

/* ---- flush ------------------------------------------------------------ */

/* A metadata container around DISK bytes of raw data, with bitmap "b". */
static struct rawtrack_io *
make_image (struct rawtrack_io **data)
{
  struct rawtrack_io *meta = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_image *img;

  REQUIRE (meta);
  REQUIRE (rawtrack_attach_io (meta, DISK, "disk.raw", 65536) == 0);
  *data = rawtrack_io_mem_new (NULL, DISK, 0);
  REQUIRE (*data);
  img = rawtrack_image_open_io (wrap (meta, true), wrap (*data, true),
                                RAWTRACK_OPEN_RDWR);
  REQUIRE (img);
  REQUIRE (rawtrack_bitmap_add (img, "b", 0, 0) == 0);
  REQUIRE (rawtrack_image_close (img) == 0);
  return meta;
}

static void
test_flush (void)
{
  struct rawtrack_io *mem = rawtrack_io_mem_new (NULL, 4096, 0);
  struct rawtrack_io *w, *meta, *data;
  struct rawtrack_image *img;
  uint8_t buf[4096];
  bool flush;

  REQUIRE (mem);
  w = wrap (mem, false);
  errno = 0;
  CHECK (rawtrack_io_flush (w) == -1 && errno == ENOTSUP &&
         rawtrack_get_errno () == ENOTSUP && error_has ("no flush method"));
  rawtrack_io_close (w);
  w = wrap (mem, true);                          /* control */
  CHECK (rawtrack_io_flush (w) == 0 && rawtrack_get_error () == NULL);
  rawtrack_io_close (w);
  rawtrack_io_close (mem);

  /* An image whose file cannot be flushed: no durability is promised. */
  memset (buf, 0x5a, sizeof buf);
  for (flush = false; ; flush = true) {
    meta = make_image (&data);
    img = rawtrack_image_open_io (wrap (meta, flush), wrap (data, true),
                                  RAWTRACK_OPEN_RDWR);
    REQUIRE (img);
    if (!flush) {
      CHECK (rawtrack_image_flush (img) == -1 &&
             rawtrack_get_errno () == ENOTSUP);
      CHECK (rawtrack_image_pwrite (img, buf, sizeof buf, 65536, 0) == -1);
      CHECK (rawtrack_get_errno () == ENOTSUP && error_has ("crash-safe") &&
             error_has ("noflush"));
      rawtrack_image_close (img);
    }
    else {
      CHECK (rawtrack_image_flush (img) == 0);
      CHECK (rawtrack_image_pwrite (img, buf, sizeof buf, 65536, 0) == 0);
      CHECK (rawtrack_image_close (img) == 0);
    }
    rawtrack_io_close (meta);
    rawtrack_io_close (data);
    if (flush)
      break;
  }
}

/* ---- bitmap getters against bitmap operations ------------------------- */

struct getters {
  struct rawtrack_image *img;
  bool stop;                       /* atomic: set by main, read by reader */
  unsigned bad;
};

static void *
reader (void *arg)
{
  struct getters *g = arg;

  while (!__atomic_load_n (&g->stop, __ATOMIC_ACQUIRE)) {
    int n = rawtrack_image_bitmap_count (g->img), i;

    for (i = 0; i < n + 1; i++) {
      const char *name = rawtrack_image_bitmap_name (g->img, i);
      uint64_t gran = rawtrack_image_bitmap_granularity (g->img, i);

      (void) rawtrack_image_bitmap_flags (g->img, i);
      if (name && (name[0] != 'b' || strlen (name) > 8))
        g->bad++;
      if (name && gran != 0 && (gran & (gran - 1)))
        g->bad++;
    }
  }
  return NULL;
}

static void
test_getters (void)
{
  struct rawtrack_io *meta, *data;
  struct rawtrack_image *img;
  struct getters g = { 0 };
  const char *lent;
  char copy[16], name[16];
  pthread_t th;
  int k;

  meta = make_image (&data);
  img = rawtrack_image_open_io (wrap (meta, true), wrap (data, true),
                                RAWTRACK_OPEN_RDWR);
  REQUIRE (img);

  /* A name handed out survives the operations that replace the
   * directory it came from. */
  lent = rawtrack_image_bitmap_name (img, 0);
  REQUIRE (lent && strcmp (lent, "b") == 0);
  snprintf (copy, sizeof copy, "%s", lent);
  CHECK (rawtrack_bitmap_add (img, "b1", 0, 0) == 0);
  CHECK (rawtrack_bitmap_disable (img, "b") == 0);
  CHECK (rawtrack_bitmap_remove (img, "b1") == 0);
  CHECK (strcmp (lent, copy) == 0);

  /* Getters on one thread, directory changes on another. */
  g.img = img;
  REQUIRE (pthread_create (&th, NULL, reader, &g) == 0);
  for (k = 0; k < 60; k++) {
    snprintf (name, sizeof name, "b%d", k % 7);
    if (rawtrack_bitmap_find (img, name) >= 0)
      CHECK (rawtrack_bitmap_remove (img, name) == 0);
    else
      CHECK (rawtrack_bitmap_add (img, name, 0, 0) == 0);
  }
  __atomic_store_n (&g.stop, true, __ATOMIC_RELEASE);
  pthread_join (th, NULL);
  CHECK (g.bad == 0);
  CHECK (rawtrack_image_close (img) == 0);
  rawtrack_io_close (meta);
  rawtrack_io_close (data);
}

int
main (void)
{
  test_io_messages ();
  test_flush ();
  test_getters ();
  return test_exit ("test-api");
}
