/* rawtrack - fuzz target: open, inspect, read, check and repair an image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The input is a whole qcow2 file.  It goes into a memory backend (growth
 * capped at 64 MiB, so no write the image content asks for can exhaust
 * memory); when the header sets incompatible bit 2, a second memory
 * backend holding the same bytes serves as the external data file.
 *
 * Pass 1, read-only, on fresh copies:
 *   a. flags 0: every getter, the bitmap list, the whole disk read in at
 *      most 64 reads of at most 1 MiB (spread over the disk when it is
 *      bigger: virtual_size is never allocated), edge reads, and a check
 *      that reading a range at once equals reading it in two pieces;
 *   b. RAWTRACK_OPEN_CHECK: getters, rawtrack_image_check without repair;
 *   c. RAWTRACK_OPEN_CHECK | RAWTRACK_OPEN_NO_DATA_FILE without a data
 *      backend: getters, a few reads, check;
 *   d. the wrong data backend (one given to an image without a data file,
 *      or none to an image with one): the open must fail.
 * Pass 2, read-write, when b opened: RAWTRACK_OPEN_RDWR | CHECK, check
 * with RAWTRACK_CHECK_REPAIR_ALL, close, reopen the repaired bytes and
 * repair again.  The image sits behind a "borrow" backend whose close
 * leaves the memory backend alive (borrow-io.c), so the second open sees
 * exactly what the first close left.
 *
 * Under libFuzzer, inputs with huge tables get only the plain open (see
 * light_mode).
 *
 * Invariants checked (FUZZ_CHECK aborts): every failure leaves a message
 * and an errno; getters return values in their documented ranges; reads
 * past the end fail; split reads agree; a check without repair fixes
 * nothing; after a repair whose double check came out clean, the check
 * after reopening finds nothing either.
 */
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>

#include <rawtrack/rawtrack.h>

#include "borrow-io.h"
#include "fuzz.h"

#define MEM_MAX   (64u * 1024 * 1024)   /* growth cap of every backend */
#define CHUNK     (1024u * 1024)        /* largest single read */
#define MAX_READS 64u                   /* reads of the full pass */
#define FEW_READS 4u                    /* reads of the other opens */
#define SPLIT_LEN (64u * 1024)          /* range of the split-read check */
#define SPLIT_AT  1000u                 /* deliberately unaligned */

static uint8_t readbuf[CHUNK];
static uint8_t splitbuf[SPLIT_LEN];
static volatile size_t sink;            /* keeps string reads alive */

/* ---- helpers ----------------------------------------------------------- */

/* A failed call must leave a message and an errno behind. */
static void
check_failure_reported (void)
{
  const char *msg = rawtrack_get_error ();

  FUZZ_CHECK (msg != NULL);
  FUZZ_CHECK (msg[0] != '\0');
  FUZZ_CHECK (rawtrack_get_errno () != 0);
}

static void
consume (const char *s)
{
  if (s)
    sink += strlen (s);
}

/* Under libFuzzer (RAWTRACK_LIBFUZZER, set by meson.build), inputs with
 * huge tables - QEMU's limits allow a 32 MiB L1 and an 8 MiB refcount
 * table, nearly all of it zeros past EOF - cost seconds per open with the
 * sanitizers and crowd out everything else, so they get the plain open
 * only.  The regression replay runs them in full (the corpus keeps
 * hostile-l1-size-limit and hostile-reftable-clusters-limit). */
static bool
light_mode (const uint8_t *data, size_t size)
{
#ifdef RAWTRACK_LIBFUZZER
  uint32_t l1_size, rt_clusters, bits;

  if (size < 60)
    return false;
  l1_size = (uint32_t) data[36] << 24 | data[37] << 16 | data[38] << 8 |
            data[39];
  rt_clusters = (uint32_t) data[56] << 24 | data[57] << 16 |
                data[58] << 8 | data[59];
  bits = data[23] & 31;
  return l1_size > 65536 || (uint64_t) rt_clusters << bits > 1024 * 1024;
#else
  return false;
#endif
}

static bool
header_wants_data_file (const uint8_t *data, size_t size)
{
  /* version 3 (big-endian at 4) and incompatible bit 2 (byte 79). */
  return size >= 80 && data[4] == 0 && data[5] == 0 && data[6] == 0 &&
         data[7] == 3 && (data[79] & 0x04);
}

static struct rawtrack_io *
mem_copy (const uint8_t *data, size_t size)
{
  struct rawtrack_io *io = rawtrack_io_mem_new (data, size, MEM_MAX);

  FUZZ_CHECK (io != NULL);
  return io;
}

/* Open a copy of the input; data backend only when with_data. */
static struct rawtrack_image *
open_copy (const uint8_t *data, size_t size, bool with_data, unsigned flags)
{
  struct rawtrack_io *df = with_data ? mem_copy (data, size) : NULL;
  struct rawtrack_image *img;

  img = rawtrack_image_open_io (mem_copy (data, size), df, flags);
  if (!img)
    check_failure_reported ();
  return img;
}

static bool
is_pow2 (uint64_t v)
{
  return v && !(v & (v - 1));
}

/* Every getter, with the ranges the API documents. */
static void
inspect (struct rawtrack_image *img)
{
  const char *ct;
  int v, rb, n, i, j;
  uint32_t cs;

  v = rawtrack_image_version (img);
  FUZZ_CHECK (v == 2 || v == 3);
  cs = rawtrack_image_cluster_size (img);
  FUZZ_CHECK (is_pow2 (cs) && cs >= 512 && cs <= 2u * 1024 * 1024);
  rb = rawtrack_image_refcount_bits (img);
  FUZZ_CHECK (rb >= 1 && rb <= 64 && is_pow2 ((uint64_t) rb));
  FUZZ_CHECK (rawtrack_image_virtual_size (img) % 512 == 0);
  ct = rawtrack_image_compression_type (img);
  FUZZ_CHECK (ct != NULL &&
              (strcmp (ct, "zlib") == 0 || strcmp (ct, "zstd") == 0));

  consume (rawtrack_image_data_file (img));
  consume (rawtrack_image_backing_file (img));
  consume (rawtrack_image_backing_format (img));
  if (!rawtrack_image_has_data_file (img))
    FUZZ_CHECK (rawtrack_image_data_file (img) == NULL);
  FUZZ_CHECK (rawtrack_image_has_data_file (img) ==
              !!(rawtrack_image_incompatible_features (img) & 0x4));
  FUZZ_CHECK (rawtrack_image_extended_l2 (img) ==
              !!(rawtrack_image_incompatible_features (img) & 0x10));
  sink += (size_t) rawtrack_image_data_file_raw (img);
  sink += (size_t) rawtrack_image_is_dirty (img);
  sink += (size_t) rawtrack_image_is_corrupt (img);
  sink += (size_t) rawtrack_image_lazy_refcounts (img);
  sink += (size_t) rawtrack_image_file_size (img);
  sink += (size_t) rawtrack_image_compatible_features (img);
  sink += (size_t) rawtrack_image_autoclear_features (img);

  n = rawtrack_image_bitmap_count (img);
  FUZZ_CHECK (n >= 0 && n <= 65535);
  FUZZ_CHECK (rawtrack_image_bitmap_name (img, -1) == NULL);
  FUZZ_CHECK (rawtrack_image_bitmap_name (img, n) == NULL);
  FUZZ_CHECK (rawtrack_image_bitmap_granularity (img, n) == 0);
  FUZZ_CHECK (rawtrack_image_bitmap_flags (img, -1) == 0);
  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint64_t g = rawtrack_image_bitmap_granularity (img, i);
    uint32_t f = rawtrack_image_bitmap_flags (img, i);

    FUZZ_CHECK (name != NULL && name[0] != '\0' && strlen (name) <= 1023);
    FUZZ_CHECK (is_pow2 (g) && g >= 512 && g <= (1ull << 31));
    FUZZ_CHECK ((f & ~(RAWTRACK_BITMAP_IN_USE | RAWTRACK_BITMAP_AUTO)) == 0);
    /* Names are unique (QEMU refuses duplicates); quadratic, so only
     * for short lists. */
    for (j = 0; n <= 64 && j < i; j++)
      FUZZ_CHECK (strcmp (rawtrack_image_bitmap_name (img, j), name) != 0);
    /* Loading the bits walks the bitmap table and its data clusters. */
    if (i < 4) {
      uint64_t bytes;

      if (rawtrack_bitmap_dirty_bytes (img, name, &bytes) == 0)
        FUZZ_CHECK (bytes <= ((rawtrack_image_virtual_size (img) + g - 1) /
                              g) * g);
    }
  }
}

static void
one_read (struct rawtrack_image *img, uint8_t *buf, uint64_t count,
          uint64_t offset)
{
  if (rawtrack_image_pread (img, buf, count, offset) == -1)
    check_failure_reported ();
}

/* Read the disk: all of it in CHUNK pieces when that takes at most
 * max_reads reads, otherwise max_reads chunks spread evenly, the last
 * one ending at the end of the disk. */
static void
read_disk (struct rawtrack_image *img, unsigned max_reads)
{
  uint64_t vsize = rawtrack_image_virtual_size (img);
  uint64_t off, n, stride;
  unsigned i;

  if (vsize <= (uint64_t) max_reads * CHUNK) {
    for (off = 0; off < vsize; off += n) {
      n = vsize - off < CHUNK ? vsize - off : CHUNK;
      one_read (img, readbuf, n, off);
    }
  }
  else {
    stride = vsize / max_reads;
    for (i = 0; i < max_reads; i++) {
      off = (uint64_t) i * stride;
      if (i == max_reads - 1)
        off = vsize - CHUNK;
      off &= ~(uint64_t) 511;
      one_read (img, readbuf, CHUNK, off);
    }
  }

  /* Edges: the last byte, an unaligned run across a sector boundary,
   * nothing at the end, and reads that must fail. */
  if (vsize > 0)
    one_read (img, readbuf, 1, vsize - 1);
  if (vsize >= 1024)
    one_read (img, readbuf, 3, 511);
  FUZZ_CHECK (rawtrack_image_pread (img, readbuf, 0, vsize) == 0);
  FUZZ_CHECK (rawtrack_image_pread (img, readbuf, 1, vsize) == -1);
  check_failure_reported ();
  FUZZ_CHECK (rawtrack_image_pread (img, readbuf, 2, UINT64_MAX) == -1);
  FUZZ_CHECK (rawtrack_image_pread (img, readbuf, UINT64_MAX, 1) == -1);
}

/* The first SPLIT_LEN bytes read at once must equal the same bytes read
 * in two unaligned pieces. */
static void
read_split (struct rawtrack_image *img)
{
  uint64_t vsize = rawtrack_image_virtual_size (img);
  uint64_t n = vsize < SPLIT_LEN ? vsize : SPLIT_LEN;

  if (n <= SPLIT_AT)
    return;
  if (rawtrack_image_pread (img, readbuf, n, 0) == -1 ||
      rawtrack_image_pread (img, splitbuf, SPLIT_AT, 0) == -1 ||
      rawtrack_image_pread (img, splitbuf + SPLIT_AT, n - SPLIT_AT,
                            SPLIT_AT) == -1)
    return;
  FUZZ_CHECK (memcmp (readbuf, splitbuf, n) == 0);
}

static void
report (void *opaque, int level, const char *message)
{
  unsigned *count = opaque;

  FUZZ_CHECK (level >= 0 && level <= 2);
  FUZZ_CHECK (message != NULL);
  consume (message);
  (*count)++;
}

/* Run check; returns true when it ran. */
static bool
run_check (struct rawtrack_image *img, unsigned repair,
           struct rawtrack_check_result *res)
{
  unsigned reports = 0;

  memset (res, 0, sizeof *res);
  res->struct_size = sizeof *res;
  if (rawtrack_image_check (img, repair, res, report, &reports) == -1) {
    check_failure_reported ();
    return false;
  }
  /* Counters follow qemu-img check: after a repair, corruptions and leaks
   * are what the double check still found, the _fixed ones what was
   * repaired.  Without repair nothing is fixed. */
  if (!repair)
    FUZZ_CHECK (res->corruptions_fixed == 0 && res->leaks_fixed == 0);
  return true;
}

static bool
clean (const struct rawtrack_check_result *res)
{
  return res->check_errors == 0 && res->corruptions == 0 && res->leaks == 0;
}

/* ---- the target ------------------------------------------------------- */

static void
pass_read_only (const uint8_t *data, size_t size, bool df, bool *check_ok)
{
  struct rawtrack_check_result res;
  struct rawtrack_image *img;

  /* a. plain */
  if ((img = open_copy (data, size, df, 0)) != NULL) {
    inspect (img);
    read_disk (img, MAX_READS);
    read_split (img);
    FUZZ_CHECK (rawtrack_image_close (img) == 0);
  }

  /* b. check mode */
  *check_ok = false;
  if ((img = open_copy (data, size, df, RAWTRACK_OPEN_CHECK)) != NULL) {
    *check_ok = true;
    inspect (img);
    run_check (img, 0, &res);
    read_disk (img, FEW_READS);
    FUZZ_CHECK (rawtrack_image_close (img) == 0);
  }

  /* c. metadata only */
  if ((img = open_copy (data, size, false,
                        RAWTRACK_OPEN_CHECK |
                        RAWTRACK_OPEN_NO_DATA_FILE)) != NULL) {
    inspect (img);
    read_disk (img, FEW_READS);
    run_check (img, 0, &res);
    FUZZ_CHECK (rawtrack_image_close (img) == 0);
  }

  /* d. the wrong data backend must be refused */
  img = open_copy (data, size, !df, 0);
  FUZZ_CHECK (img == NULL);
}

static void
pass_repair (const uint8_t *data, size_t size, bool df)
{
  const unsigned flags = RAWTRACK_OPEN_RDWR | RAWTRACK_OPEN_CHECK;
  struct rawtrack_io *inner = mem_copy (data, size);
  struct rawtrack_check_result res1, res2;
  struct rawtrack_image *img;
  bool ran1 = false;

  img = rawtrack_image_open_io (borrow_io_new (inner),
                                df ? mem_copy (data, size) : NULL, flags);
  if (!img) {
    check_failure_reported ();
    goto out;
  }
  inspect (img);
  ran1 = run_check (img, RAWTRACK_CHECK_REPAIR_ALL, &res1);
  read_disk (img, FEW_READS);
  if (rawtrack_image_close (img) == -1)
    check_failure_reported ();

  img = rawtrack_image_open_io (borrow_io_new (inner),
                                df ? mem_copy (data, size) : NULL, flags);
  if (!img) {
    check_failure_reported ();
    goto out;
  }
  inspect (img);
  if (run_check (img, RAWTRACK_CHECK_REPAIR_ALL, &res2) && ran1 &&
      clean (&res1) && res2.check_errors == 0) {
    /* A repair whose double check came out clean left a clean image:
     * nothing was lost on close and reopen. */
    FUZZ_CHECK (res2.corruptions == 0);
    FUZZ_CHECK (res2.leaks == 0);
    FUZZ_CHECK (res2.corruptions_fixed == 0 && res2.leaks_fixed == 0);
  }
  read_split (img);
  if (rawtrack_image_close (img) == -1)
    check_failure_reported ();

 out:
  rawtrack_io_close (inner);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  bool df, check_ok;

  if (size > MEM_MAX)
    return 0;
  df = header_wants_data_file (data, size);
  if (light_mode (data, size)) {
    struct rawtrack_image *img = open_copy (data, size, df, 0);

    if (img) {
      inspect (img);
      read_disk (img, FEW_READS);
      FUZZ_CHECK (rawtrack_image_close (img) == 0);
    }
    return 0;
  }
  pass_read_only (data, size, df, &check_ok);
  if (check_ok)
    pass_repair (data, size, df);
  return 0;
}
