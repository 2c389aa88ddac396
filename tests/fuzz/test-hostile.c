/* rawtrack - hostile images through the public API.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   test-hostile CORPUS-IMAGE-DIR
 *
 * Every hand-made image of the fuzz corpus (hostile-* damaged, hand-*
 * valid; made by make-corpus.sh and corpus-tool.py) is opened over memory
 * backends, and the outcome listed in the table below is asserted:
 *
 *   OPEN_FAILS  a read-only open fails; the message contains `what` (the
 *               structure) and a number (its offset or the bad value),
 *               and errno is not ENOMEM (nothing huge was attempted)
 *   READ_FAILS  it opens, and reading the disk fails with `what`
 *   OPENS       it opens and the whole disk reads
 *   RW_FAILS    it opens read-only; a writable open without
 *               RAWTRACK_OPEN_CHECK fails with `what`
 *   EITHER      reference loops and overlaps: opening and reading may
 *               succeed or fail (finding them is check's job)
 *
 * Whatever the outcome, every image then goes through a check-mode open
 * and rawtrack_image_check, and a writable check-mode open with
 * RAWTRACK_CHECK_REPAIR_ALL, close, reopen and check: none of that may
 * crash, and every failure must leave a message.
 *
 * "No huge allocation" is enforced with RLIMIT_AS = 1 GiB (the library
 * caps metadata at 32 MiB L1 + 8 MiB refcount table + 64 MiB bitmap
 * directory), except under ASan, TSan and MSan, which reserve terabytes of
 * address space for their shadow memory.
 *
 * The table and the hostile-* files must match: a file missing from the
 * table, or a table entry without a file, fails the test.
 *
 * Two images are built here instead (too big for the corpus): 65535
 * bitmaps with unique names, and the same with one duplicate; each open
 * must take well under 5 s of CPU (the duplicate check was quadratic).
 */
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>
#include <dirent.h>
#include <time.h>
#include <sys/resource.h>

#include <rawtrack/rawtrack.h>

#include "borrow-io.h"

/* Sanitizers that reserve terabytes of address space for shadow memory. */
#if defined (__SANITIZE_ADDRESS__) || defined (__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined (__has_feature)
#if __has_feature (address_sanitizer) || __has_feature (thread_sanitizer) \
    || __has_feature (memory_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

#define MEM_MAX  (64u * 1024 * 1024)
#define CHUNK    (1024u * 1024)
#define AS_LIMIT (1024ull * 1024 * 1024)

enum expect { OPEN_FAILS, READ_FAILS, OPENS, RW_FAILS, EITHER };

struct hostile_case {
  const char *file;
  enum expect expect;
  const char *what;            /* substring of the message */
  int bitmaps;                 /* OPENS: bitmaps listed; -1: any */
};

#define ANY -1

static const struct hostile_case cases[] = {
  /* valid images patched by hand */
  { "hand-c2m-header-only", OPENS, NULL, 0 },
  { "hand-v2-bitmaps-ext", OPENS, NULL, 0 },        /* v2: never trusted */
  { "hand-v3-bitmap-in-use", OPENS, NULL, 3 },
  { "hand-v3-bitmaps-not-trusted", OPENS, NULL, 0 },
  { "hand-v3-custom-feature-table", OPENS, NULL, 0 },
  { "hand-v3-extra-fields", OPENS, NULL, 0 },
  { "hand-v3-header-104", OPENS, NULL, 0 },
  { "hand-v3-unknown-compat-autoclear", OPENS, NULL, 0 },
  { "hand-v3-unknown-exts", OPENS, NULL, 0 },

  /* header */
  { "hostile-empty", OPEN_FAILS, "qcow2", ANY },
  { "hostile-trunc-71", OPEN_FAILS, "qcow2", ANY },
  { "hostile-trunc-v3-100", OPEN_FAILS, "header", ANY },
  { "hostile-version-4", OPEN_FAILS, "version", ANY },
  { "hostile-cluster-bits-8", OPEN_FAILS, "cluster_bits", ANY },
  { "hostile-cluster-bits-22", OPEN_FAILS, "cluster_bits", ANY },
  { "hostile-cluster-bits-255", OPEN_FAILS, "cluster_bits", ANY },
  { "hostile-header-length-103", OPEN_FAILS, "header_length", ANY },
  { "hostile-header-length-past-cluster", OPEN_FAILS, "header_length", ANY },
  { "hostile-header-length-unaligned", OPENS, NULL, 0 },
  { "hostile-backing-offset-past-cluster", OPEN_FAILS,
    "backing_file_offset", ANY },
  { "hostile-backing-name-1024", OPEN_FAILS, "backing file name", ANY },
  { "hostile-backing-name-nul", OPEN_FAILS, "backing file name", ANY },
  { "hostile-backing-name-crosses-cluster", OPEN_FAILS, "backing file name",
    ANY },
  { "hostile-refcount-order-7", OPEN_FAILS, "refcount_order", ANY },
  { "hostile-compression-type-2", OPEN_FAILS, "compression type", ANY },
  { "hostile-compression-bit-missing", OPEN_FAILS, "compression type", ANY },
  { "hostile-compression-bit-without-type", OPEN_FAILS, "compression type",
    ANY },
  { "hostile-extl2-small-cluster", OPEN_FAILS, "extended L2", ANY },
  { "hostile-incompat-unknown", OPEN_FAILS, "incompatible feature bit 40",
    ANY },
  /* the image's own feature table names the bit */
  { "hostile-incompat-unknown-named", OPEN_FAILS, "NNNNNNNNNNNNNNNN", ANY },
  { "hostile-crypt-method-1", OPEN_FAILS, "encrypt", ANY },
  { "hostile-crypt-method-2", OPEN_FAILS, "encrypt", ANY },
  { "hostile-raw-without-data-file", OPEN_FAILS, "raw external data", ANY },
  { "hostile-corrupt-bit", RW_FAILS, "corrupt", ANY },
  { "hostile-dirty-bit", RW_FAILS, "dirty", ANY },
  /* QEMU: "Image is too big" / "File too large" */
  { "hostile-size-max", OPEN_FAILS, "L1", ANY },
  { "hostile-size-2-63", OPEN_FAILS, "L1", ANY },

  /* snapshots (the table is check's business) */
  { "hostile-snapshots-too-many", OPEN_FAILS, "snapshots", ANY },
  { "hostile-snapshots-misaligned", OPEN_FAILS, "snapshot table", ANY },
  { "hostile-snapshots-garbage", EITHER, NULL, ANY },
  { "hostile-snapshots-past-eof", EITHER, NULL, ANY },
  { "hostile-snapshots-at-header", EITHER, NULL, ANY },
  { "hostile-snapshots-bad-entry", EITHER, NULL, ANY },

  /* header extensions */
  { "hostile-ext-len-huge", OPEN_FAILS, "header extension", ANY },
  { "hostile-ext-len-past-cluster", OPEN_FAILS, "header extension", ANY },
  { "hostile-ext-bitmaps-len-23", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-ext-fde-len-8", OPEN_FAILS, "encryption header extension",
    ANY },
  { "hostile-ext-backing-format-16", OPEN_FAILS, "backing format", ANY },
  { "hostile-ext-duplicate", OPEN_FAILS, "duplicate header extension", ANY },
  { "hostile-ext-data-file-nul", OPEN_FAILS, "data file name", ANY },
  { "hostile-ext-no-end-marker", OPENS, NULL, 0 },
  { "hostile-ext-too-many", OPEN_FAILS, "header extensions", ANY },

  /* L1 */
  { "hostile-l1-past-eof", OPEN_FAILS, "L1 table offset", ANY },
  { "hostile-l1-misaligned", OPEN_FAILS, "L1 table offset", ANY },
  { "hostile-l1-size-over-limit", OPEN_FAILS, "L1 table size", ANY },
  { "hostile-l1-size-max-u32", OPEN_FAILS, "L1 table size", ANY },
  { "hostile-l1-size-limit", OPENS, NULL, 0 },      /* 32 MiB of L1 */
  { "hostile-l1-too-small", OPEN_FAILS, "L1 table is too small", ANY },
  { "hostile-l1-at-zero", OPEN_FAILS, "L1 table offset", ANY },
  { "hostile-l1-entry-reserved", READ_FAILS, "L1 entry", ANY },
  { "hostile-l1-entry-misaligned", READ_FAILS, "L2 table offset", ANY },
  { "hostile-l1-entry-low-bits", READ_FAILS, "L1 entry", ANY },
  { "hostile-l1-entry-past-eof", OPENS, NULL, 0 },
  { "hostile-l1-entry-points-to-l1", EITHER, NULL, ANY },
  { "hostile-l1-entry-points-to-reftable", EITHER, NULL, ANY },
  { "hostile-l1-entries-share-l2", EITHER, NULL, ANY },
  { "hostile-l1-overlaps-reftable", EITHER, NULL, ANY },

  /* L2 */
  { "hostile-l2-points-to-itself", EITHER, NULL, ANY },
  { "hostile-l2-points-to-l1", EITHER, NULL, ANY },
  { "hostile-l2-points-to-refblock", EITHER, NULL, ANY },
  { "hostile-l2-all-point-to-itself", EITHER, NULL, ANY },
  { "hostile-l2-entries-share-cluster", EITHER, NULL, ANY },
  { "hostile-l2-entry-reserved", READ_FAILS, "reserved bits", ANY },
  { "hostile-l2-host-misaligned", READ_FAILS, "not cluster-aligned", ANY },
  { "hostile-l2-host-past-eof", OPENS, NULL, 0 },
  /* QEMU: "Zero cluster entry found in pre-v3 image" */
  { "hostile-l2-zero-flag-v2", READ_FAILS, "zero flag in a version 2 image",
    ANY },
  { "hostile-compressed-garbage-zlib", READ_FAILS, "compressed cluster",
    ANY },
  { "hostile-compressed-garbage-zstd", READ_FAILS, "compressed cluster",
    ANY },
  { "hostile-compressed-max-length", READ_FAILS, "compressed cluster", ANY },
  { "hostile-compressed-past-eof", READ_FAILS, "compressed cluster", ANY },
  { "hostile-compressed-truncated", READ_FAILS, "compressed cluster", ANY },
  { "hostile-compressed-zlib-damaged", READ_FAILS, "compressed cluster",
    ANY },
  { "hostile-compressed-zstd-bad-frame", READ_FAILS, "compressed cluster",
    ANY },
  { "hostile-extl2-alloc-and-zero", READ_FAILS, "both allocated and zero",
    ANY },
  { "hostile-extl2-compressed-with-bitmap", READ_FAILS, "subcluster bitmap",
    ANY },
  { "hostile-extl2-zero-flag", READ_FAILS, "zero flag", ANY },
  { "hostile-extl2-alloc-no-offset", READ_FAILS, "without a host offset",
    ANY },

  /* external data file */
  { "hostile-datafile-not-identity", READ_FAILS, "does not match the guest",
    ANY },
  { "hostile-datafile-compressed", READ_FAILS, "external data file", ANY },
  { "hostile-datafile-name-without-bit", OPENS, NULL, 0 },
  { "hostile-datafile-bit-without-name", OPENS, NULL, 0 },
  { "hostile-datafile-with-snapshot", EITHER, NULL, ANY },

  /* refcounts (reads never look at them) */
  { "hostile-reftable-past-eof", OPEN_FAILS, "refcount table offset", ANY },
  { "hostile-reftable-misaligned", OPEN_FAILS, "refcount table offset",
    ANY },
  { "hostile-reftable-clusters-max-u32", OPEN_FAILS, "refcount table", ANY },
  { "hostile-reftable-clusters-limit", OPENS, NULL, 0 },  /* 8 MiB */
  { "hostile-reftable-clusters-over-limit", OPEN_FAILS, "refcount table",
    ANY },
  { "hostile-reftable-clusters-zero", OPEN_FAILS, "refcount table", ANY },
  { "hostile-refblock-reserved-bits", OPENS, NULL, 0 },
  { "hostile-refblock-is-reftable", OPENS, NULL, 0 },
  { "hostile-refblock-is-l1", OPENS, NULL, 0 },
  { "hostile-refblock-past-eof", OPENS, NULL, 0 },
  { "hostile-refblock-misaligned", OPENS, NULL, 0 },
  { "hostile-refblocks-shared", OPENS, NULL, 0 },
  { "hostile-refcounts-all-zero", OPENS, NULL, 0 },
  { "hostile-refcounts-all-max", OPENS, NULL, 0 },
  { "hostile-refcounts-rc1-alternate", OPENS, NULL, 0 },

  /* bitmap directory: QEMU refuses to open all of these */
  { "hostile-bitmap-duplicate-names", OPEN_FAILS, "duplicate bitmap name",
    ANY },
  { "hostile-bitmap-flags-reserved", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-table-offset-zero", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-table-misaligned", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-table-size-zero", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-table-size-huge", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-table-size-mismatch", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-granularity-8", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-granularity-32", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-name-size-zero", OPEN_FAILS, "bitmap directory entry",
    ANY },
  { "hostile-bitmap-name-size-1024", OPEN_FAILS, "bitmap directory entry",
    ANY },
  { "hostile-bitmap-name-nul", OPEN_FAILS, "bitmap directory entry", ANY },
  { "hostile-bitmap-extra-data", OPEN_FAILS, "bitmap directory entry", ANY },
  { "hostile-bitmap-type-2", OPEN_FAILS, "bitmap 'b0'", ANY },
  { "hostile-bitmap-nb-more", OPEN_FAILS, "bitmap directory", ANY },
  { "hostile-bitmap-nb-fewer", OPEN_FAILS, "bitmap directory", ANY },
  { "hostile-bitmap-nb-zero", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-nb-65536", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-misaligned", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-at-header", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-past-eof", OPEN_FAILS, "bitmap directory", ANY },
  { "hostile-bitmap-dir-size-zero", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-size-huge", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-size-long", OPEN_FAILS, "bitmap directory", ANY },
  { "hostile-bitmap-dir-size-short", OPEN_FAILS, "bitmap directory", ANY },
  { "hostile-bitmap-ext-reserved", OPEN_FAILS, "bitmaps extension", ANY },
  { "hostile-bitmap-dir-is-l1", OPEN_FAILS, "bitmap", ANY },
  { "hostile-bitmap-in-use-table-size-big", OPENS, NULL, 3 },
  /* bitmap tables: QEMU reads them at open, rawtrack on demand */
  { "hostile-bitmap-table-past-eof", EITHER, NULL, ANY },
  { "hostile-bitmap-table-entry-reserved", EITHER, NULL, ANY },
  { "hostile-bitmap-table-entry-self", EITHER, NULL, ANY },
  { "hostile-bitmap-table-entry-is-reftable", EITHER, NULL, ANY },
  { "hostile-bitmap-table-is-l1", EITHER, NULL, ANY },
  { "hostile-bitmap-tables-shared", EITHER, NULL, ANY },
};

#define NR_CASES (sizeof cases / sizeof cases[0])

static const char *dir;
static unsigned failures;
static uint8_t chunk[CHUNK];

static void __attribute__ ((format (printf, 2, 3)))
bad (const struct hostile_case *c, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "FAIL %s: ", c->file);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  failures++;
}

static const char *
last_error (void)
{
  const char *msg = rawtrack_get_error ();

  return msg ? msg : "";
}

/* A failure must leave a message and an errno, and not be ENOMEM. */
static void
check_reported (const struct hostile_case *c, const char *op)
{
  const char *msg = rawtrack_get_error ();

  if (!msg || !*msg)
    bad (c, "%s failed without a message", op);
  if (rawtrack_get_errno () == 0)
    bad (c, "%s failed with errno 0 (%s)", op, last_error ());
  if (rawtrack_get_errno () == ENOMEM)
    bad (c, "%s ran out of memory: %s", op, last_error ());
}

static uint8_t *
load (const char *name, size_t *size)
{
  char path[4096];
  FILE *fp;
  uint8_t *buf;
  long n;

  snprintf (path, sizeof path, "%s/%s", dir, name);
  fp = fopen (path, "rb");
  if (!fp)
    return NULL;
  if (fseek (fp, 0, SEEK_END) == -1 || (n = ftell (fp)) < 0 ||
      fseek (fp, 0, SEEK_SET) == -1) {
    fclose (fp);
    return NULL;
  }
  buf = malloc ((size_t) n + 1);
  if (!buf || fread (buf, 1, (size_t) n, fp) != (size_t) n) {
    fprintf (stderr, "test-hostile: cannot read %s\n", path);
    exit (99);
  }
  fclose (fp);
  *size = (size_t) n;
  return buf;
}

static bool
wants_data_file (const uint8_t *data, size_t size)
{
  return size >= 80 && data[4] == 0 && data[5] == 0 && data[6] == 0 &&
         data[7] == 3 && (data[79] & 0x04);
}

static struct rawtrack_io *
mem (const uint8_t *data, size_t size)
{
  struct rawtrack_io *io = rawtrack_io_mem_new (data, size, MEM_MAX);

  if (!io) {
    fprintf (stderr, "test-hostile: rawtrack_io_mem_new: %s\n", last_error ());
    exit (99);
  }
  return io;
}

/* The data backend, when the image wants one: zeros. */
static struct rawtrack_io *
data_backend (bool df)
{
  return df ? mem (NULL, 0) : NULL;
}

/* Read the disk: all of it when it is at most 64 MiB, otherwise 16 1 MiB
 * chunks spread over it.  Returns 0, or -1 with *msg set (a copy). */
static int
read_disk (struct rawtrack_image *img, char *msg, size_t msglen)
{
  uint64_t vsize = rawtrack_image_virtual_size (img), off, n;
  unsigned i;

  if (vsize <= 64ull * CHUNK) {
    for (off = 0; off < vsize; off += n) {
      n = vsize - off < CHUNK ? vsize - off : CHUNK;
      if (rawtrack_image_pread (img, chunk, n, off) == -1)
        goto fail;
    }
  }
  else {
    for (i = 0; i < 16; i++) {
      off = (vsize / 16 * i) & ~(uint64_t) 511;
      n = vsize - off < CHUNK ? vsize - off : CHUNK;
      if (rawtrack_image_pread (img, chunk, n, off) == -1)
        goto fail;
    }
  }
  return 0;

 fail:
  snprintf (msg, msglen, "%s", last_error ());
  return -1;
}

static bool
has_number (const char *s)
{
  return strpbrk (s, "0123456789") != NULL;
}

static void
report_ignore (void *opaque, int level, const char *message)
{
  unsigned *n = opaque;

  if (message && level >= 1)
    (*n)++;
}

/* Check mode, read-only then writable with repair, close, reopen,
 * check again.  Only "no crash, every failure explained". */
static void
check_and_repair (const struct hostile_case *c, const uint8_t *data,
                  size_t size, bool df)
{
  const unsigned rw = RAWTRACK_OPEN_RDWR | RAWTRACK_OPEN_CHECK;
  struct rawtrack_check_result res;
  struct rawtrack_image *img;
  struct rawtrack_io *inner;
  unsigned findings = 0;
  char msg[1024];
  int pass;

  img = rawtrack_image_open_io (mem (data, size), data_backend (df),
                                RAWTRACK_OPEN_CHECK);
  if (!img) {
    check_reported (c, "check-mode open");
    return;
  }
  memset (&res, 0, sizeof res);
  res.struct_size = sizeof res;
  if (rawtrack_image_check (img, 0, &res, report_ignore, &findings) == -1)
    check_reported (c, "check");
  else
    printf ("  check: %llu corruptions, %llu leaks, %llu check errors\n",
            (unsigned long long) res.corruptions,
            (unsigned long long) res.leaks,
            (unsigned long long) res.check_errors);
  rawtrack_image_close (img);

  inner = mem (data, size);
  for (pass = 0; pass < 2; pass++) {
    img = rawtrack_image_open_io (borrow_io_new (inner), data_backend (df),
                                  rw);
    if (!img) {
      check_reported (c, pass ? "reopen after repair" : "writable open");
      break;
    }
    memset (&res, 0, sizeof res);
    res.struct_size = sizeof res;
    if (rawtrack_image_check (img, RAWTRACK_CHECK_REPAIR_ALL, &res,
                              report_ignore, &findings) == -1)
      check_reported (c, "repair");
    else
      printf ("  repair %d: %llu fixed, %llu corruptions and %llu leaks "
              "left\n", pass + 1,
              (unsigned long long) (res.corruptions_fixed + res.leaks_fixed),
              (unsigned long long) res.corruptions,
              (unsigned long long) res.leaks);
    read_disk (img, msg, sizeof msg);
    if (rawtrack_image_close (img) == -1)
      check_reported (c, "close after repair");
  }
  rawtrack_io_close (inner);
}

static void
run_case (const struct hostile_case *c)
{
  struct rawtrack_image *img;
  uint8_t *data;
  size_t size;
  bool df;
  char msg[1024];
  int r;

  data = load (c->file, &size);
  if (!data) {
    bad (c, "listed in the table but missing from %s", dir);
    return;
  }
  printf ("%s (%zu bytes)\n", c->file, size);
  fflush (stdout);
  df = wants_data_file (data, size);

  img = rawtrack_image_open_io (mem (data, size), data_backend (df), 0);
  if (!img) {
    snprintf (msg, sizeof msg, "%s", last_error ());
    printf ("  open: %s\n", msg);
    check_reported (c, "open");
    if (c->expect == OPEN_FAILS) {
      if (!strstr (msg, c->what))
        bad (c, "open failed, but the message does not name '%s': %s",
             c->what, msg);
      if (!has_number (msg))
        bad (c, "the message carries no offset or value: %s", msg);
    }
    else if (c->expect != EITHER)
      bad (c, "open failed: %s", msg);
  }
  else {
    if (c->expect == OPEN_FAILS)
      bad (c, "opened, but must fail naming '%s'", c->what);
    if (c->bitmaps != ANY && rawtrack_image_bitmap_count (img) != c->bitmaps)
      bad (c, "%d bitmaps listed, expected %d",
           rawtrack_image_bitmap_count (img), c->bitmaps);
    r = read_disk (img, msg, sizeof msg);
    if (r == -1) {
      printf ("  read: %s\n", msg);
      check_reported (c, "read");
    }
    if (c->expect == READ_FAILS) {
      if (r == 0)
        bad (c, "the disk read, but a read must fail naming '%s'", c->what);
      else if (!strstr (msg, c->what))
        bad (c, "read failed, but the message does not name '%s': %s",
             c->what, msg);
      else if (!has_number (msg))
        bad (c, "the message carries no offset or value: %s", msg);
    }
    else if ((c->expect == OPENS || c->expect == RW_FAILS) && r == -1)
      bad (c, "read failed: %s", msg);
    rawtrack_image_close (img);
  }

  if (c->expect == RW_FAILS) {
    img = rawtrack_image_open_io (mem (data, size), data_backend (df),
                                  RAWTRACK_OPEN_RDWR);
    if (img) {
      bad (c, "a writable open without check mode worked");
      rawtrack_image_close (img);
    }
    else if (!strstr (last_error (), c->what))
      bad (c, "writable open failed, but the message does not name '%s': "
           "%s", c->what, last_error ());
    else if (rawtrack_get_errno () != EROFS)
      bad (c, "writable open failed with errno %d, not EROFS",
           rawtrack_get_errno ());
  }

  check_and_repair (c, data, size, df);
  free (data);
}

static void
put_be (uint8_t *p, uint64_t v, int bytes)
{
  while (bytes-- > 0) {
    p[bytes] = (uint8_t) v;
    v >>= 8;
  }
}

static uint64_t
get_be (const uint8_t *p, int bytes)
{
  uint64_t v = 0;

  while (bytes-- > 0)
    v = (v << 8) | *p++;
  return v;
}

/* 65535 bitmaps (QEMU's maximum), in use so that their table sizes are
 * not checked: the open must take well under a second.  The duplicate
 * name check used to be pairwise, over 10 s of CPU.  With dup set, the
 * last name repeats the first and the open must fail. */
static void
many_bitmaps (bool dup)
{
  static const struct hostile_case c = { "(65535 bitmaps)", OPEN_FAILS,
                                         NULL, ANY };
  const uint32_t nr = 65535, esize = 32;
  struct rawtrack_image *img;
  uint8_t *base, *buf;
  size_t size, dir_off, total, off;
  clock_t t0;
  double secs;
  uint32_t i;

  base = load ("qemu-v3-c512-bitmaps", &size);
  if (!base) {
    bad (&c, "qemu-v3-c512-bitmaps is missing");
    return;
  }
  dir_off = (size + 511) & ~(size_t) 511;
  total = dir_off + (size_t) nr * esize;
  buf = calloc (1, total);
  if (!buf)
    exit (99);
  memcpy (buf, base, size);
  free (base);

  /* the bitmaps extension */
  for (off = get_be (buf + 100, 4); off + 8 <= 512;
       off += 8 + ((get_be (buf + off + 4, 4) + 7) & ~7u))
    if (get_be (buf + off, 4) == 0x23852875 || get_be (buf + off, 4) == 0)
      break;
  if (get_be (buf + off, 4) != 0x23852875) {
    bad (&c, "no bitmaps extension in qemu-v3-c512-bitmaps");
    free (buf);
    return;
  }
  put_be (buf + off + 8, nr, 4);
  put_be (buf + off + 16, (uint64_t) nr * esize, 8);
  put_be (buf + off + 24, dir_off, 8);

  for (i = 0; i < nr; i++) {
    uint8_t *e = buf + dir_off + (size_t) i * esize;

    put_be (e, 512, 8);                 /* table offset */
    put_be (e + 8, 1, 4);               /* table size */
    put_be (e + 12, 1, 4);              /* flags: in use */
    e[16] = 1;                          /* type */
    e[17] = 16;                         /* granularity bits */
    put_be (e + 18, 6, 2);              /* name size */
    snprintf ((char *) e + 24, 8, "b%05u", dup && i == nr - 1 ? 0 : i);
    e[30] = 0;
  }

  t0 = clock ();
  img = rawtrack_image_open_io (mem (buf, total), NULL, 0);
  secs = (double) (clock () - t0) / CLOCKS_PER_SEC;
  printf ("%s, %s: open took %.3f s of CPU\n", c.file,
          dup ? "one duplicate" : "unique names", secs);
  if (dup) {
    if (img)
      bad (&c, "opened with a duplicate name");
    else if (!strstr (last_error (), "duplicate bitmap name 'b00000'"))
      bad (&c, "wrong error: %s", last_error ());
  }
  else if (!img)
    bad (&c, "open failed: %s", last_error ());
  else if (rawtrack_image_bitmap_count (img) != (int) nr)
    bad (&c, "%d bitmaps listed", rawtrack_image_bitmap_count (img));
  if (secs > 5)
    bad (&c, "the open took %.1f s of CPU (quadratic?)", secs);
  rawtrack_image_close (img);
  free (buf);
}

/* Every hand-made file in the directory must be in the table. */
static void
check_table_complete (void)
{
  DIR *d = opendir (dir);
  struct dirent *de;
  size_t i;

  if (!d) {
    fprintf (stderr, "test-hostile: %s: %s\n", dir, strerror (errno));
    exit (99);
  }
  while ((de = readdir (d)) != NULL) {
    bool found = false;

    if (strncmp (de->d_name, "hostile-", 8) != 0 &&
        strncmp (de->d_name, "hand-", 5) != 0)
      continue;
    for (i = 0; i < NR_CASES && !found; i++)
      found = strcmp (cases[i].file, de->d_name) == 0;
    if (!found) {
      fprintf (stderr, "FAIL %s: not in the table of test-hostile.c\n",
               de->d_name);
      failures++;
    }
  }
  closedir (d);
}

int
main (int argc, char *argv[])
{
  size_t i;

  if (argc != 2) {
    fprintf (stderr, "usage: test-hostile CORPUS-IMAGE-DIR\n");
    return 99;
  }
  dir = argv[1];

#ifndef UNDER_SANITIZER
  {
    struct rlimit rl = { .rlim_cur = AS_LIMIT, .rlim_max = AS_LIMIT };

    if (setrlimit (RLIMIT_AS, &rl) == -1) {
      perror ("setrlimit");
      return 99;
    }
  }
#endif

  check_table_complete ();
  for (i = 0; i < NR_CASES; i++)
    run_case (&cases[i]);
  many_bitmaps (false);
  many_bitmaps (true);

  printf ("%zu hostile images, %u failures\n", NR_CASES, failures);
  return failures ? 1 : 0;
}
