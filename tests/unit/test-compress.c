/* rawtrack - unit test for lib/qcow2-compress.c.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Round-trips clusters compressed the way QEMU writes them (raw deflate
 * with a 4 KiB window, zstd frames), padded to a sector boundary, then
 * checks that truncated, corrupt, short and overlong streams fail cleanly,
 * and decodes compressed L2 descriptors against hand-computed values.
 * Every buffer handed to the decoder is allocated at its exact size so
 * that ASan catches any read or write past it.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>

#include <zlib.h>
#include <zstd.h>

#include "internal.h"
#include "random.h"

#define DEFLATE 0
#define ZSTD 1

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t
rng (void)
{
  return rt_random (&rng_state);
}

static void *
xmalloc (size_t n)
{
  void *p = malloc (n ? n : 1);

  assert (p != NULL);
  return p;
}

enum pattern { ZEROS, TEXT, RANDOM, HALF, NR_PATTERNS };

static void
fill (uint8_t *buf, size_t len, enum pattern p)
{
  static const char text[] = "rawtrack compressed cluster test line ";
  size_t i;

  for (i = 0; i < len; i++) {
    switch (p) {
    case ZEROS: buf[i] = 0; break;
    case TEXT: buf[i] = (uint8_t) text[i % (sizeof text - 1)]; break;
    case RANDOM: buf[i] = (uint8_t) rng (); break;
    case HALF: buf[i] = i < len / 2 ? (uint8_t) rng () : 0; break;
    default: abort ();
    }
  }
}

/* Raw deflate as QEMU's qcow2_zlib_compress does it. */
static size_t
deflate_raw (const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
             int level)
{
  z_stream strm = { 0 };
  int r;

  r = deflateInit2 (&strm, level, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
  assert (r == Z_OK);
  strm.next_in = (Bytef *) src;
  strm.avail_in = (uInt) len;
  strm.next_out = dst;
  strm.avail_out = (uInt) cap;
  r = deflate (&strm, Z_FINISH);
  assert (r == Z_STREAM_END);
  deflateEnd (&strm);
  return strm.total_out;
}

static size_t
compress_to (int type, const uint8_t *src, size_t len, uint8_t *dst,
             size_t cap)
{
  size_t n;

  if (type == DEFLATE)
    return deflate_raw (src, len, dst, cap, Z_DEFAULT_COMPRESSION);
  n = ZSTD_compress (dst, cap, src, len, 3);
  assert (!ZSTD_isError (n));
  return n;
}

static size_t
bound (int type, size_t len)
{
  /* Generous for both: stored deflate blocks cost 5 bytes per block. */
  return len + len / 8 + 1024 + (type == ZSTD ? ZSTD_compressBound (len) : 0);
}

/* Copy n bytes of data into an exactly-sized buffer padded with pad_byte
 * up to a multiple of 512, as the stored length would be. */
static uint8_t *
padded (const uint8_t *data, size_t n, int pad_byte, size_t *len)
{
  size_t total = (n + 511) / 512 * 512;
  uint8_t *p = xmalloc (total);

  memcpy (p, data, n);
  memset (p + n, pad_byte, total - n);
  *len = total;
  return p;
}

/* Decompress and expect failure with the given errno. */
static void
expect_fail (int type, const void *src, size_t src_len, size_t dst_len,
             int errnum)
{
  uint8_t *dst = xmalloc (dst_len);
  const char *msg;

  rt_clear_error ();
  assert (qcow2_decompress (type, src, src_len, dst, dst_len) == -1);
  msg = rawtrack_get_error ();
  assert (msg != NULL);
  assert (strstr (msg, "compressed cluster") != NULL);
  assert (rawtrack_get_errno () == errnum);
  free (dst);
}

static void
expect_ok (int type, const void *src, size_t src_len, const uint8_t *want,
           size_t dst_len)
{
  uint8_t *dst = xmalloc (dst_len);

  memset (dst, 0xa5, dst_len);
  if (qcow2_decompress (type, src, src_len, dst, dst_len) != 0) {
    fprintf (stderr, "decompress failed: %s\n", rawtrack_get_error ());
    abort ();
  }
  assert (memcmp (dst, want, dst_len) == 0);
  free (dst);
}

static void
test_round_trip (void)
{
  static const size_t sizes[] = { 512, 4096, 65536, 2u << 20 };
  size_t si;
  int type, p;

  for (type = DEFLATE; type <= ZSTD; type++)
    for (si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
      for (p = 0; p < NR_PATTERNS; p++) {
        size_t cs = sizes[si], cap = bound (type, cs), n, len;
        uint8_t *data = xmalloc (cs), *c = xmalloc (cap), *stored;

        fill (data, cs, (enum pattern) p);
        n = compress_to (type, data, cs, c, cap);

        /* The exact stream, zero padding, garbage padding. */
        stored = xmalloc (n);
        memcpy (stored, c, n);
        expect_ok (type, stored, n, data, cs);
        free (stored);
        stored = padded (c, n, 0, &len);
        expect_ok (type, stored, len, data, cs);
        free (stored);
        stored = padded (c, n, 0xff, &len);
        expect_ok (type, stored, len, data, cs);
        free (stored);

        /* Cut short: the cluster cannot be filled. */
        stored = xmalloc (n / 2);
        memcpy (stored, c, n / 2);
        expect_fail (type, stored, n / 2, cs, RAWTRACK_ECORRUPT);
        free (stored);
        expect_fail (type, c, 0, cs, RAWTRACK_ECORRUPT);

        free (c);
        free (data);
      }
}

/* Other compression levels and the zstd streaming API QEMU uses. */
static void
test_encoder_variants (void)
{
  const size_t cs = 65536;
  uint8_t *data = xmalloc (cs), *c;
  size_t cap = ZSTD_compressBound (cs), n;
  int level;

  fill (data, cs, HALF);
  c = xmalloc (cap);

  for (level = 0; level <= 9; level++) {
    n = deflate_raw (data, cs, c, cap, level);
    expect_ok (DEFLATE, c, n, data, cs);
  }

  {
    ZSTD_CCtx *cctx = ZSTD_createCCtx ();
    ZSTD_inBuffer in = { data, cs, 0 };
    ZSTD_outBuffer out = { c, cap, 0 };
    size_t r;

    assert (cctx != NULL);
    /* With a checksum, the frame's last 4 bytes follow the last block. */
    r = ZSTD_CCtx_setParameter (cctx, ZSTD_c_checksumFlag, 1);
    assert (!ZSTD_isError (r));
    r = ZSTD_compressStream2 (cctx, &out, &in, ZSTD_e_end);
    assert (r == 0);
    expect_ok (ZSTD, c, out.pos, data, cs);
    ZSTD_freeCCtx (cctx);
  }

  free (c);
  free (data);
}

/* A cluster split over several zstd frames decodes frame after frame. */
static void
test_zstd_multi_frame (void)
{
  const size_t cs = 65536, part = cs / 4;
  uint8_t *data = xmalloc (cs), *c, *stored;
  size_t cap = 4 * ZSTD_compressBound (part), n = 0, len, i;

  fill (data, cs, TEXT);
  memset (data + part, 0x11, part);
  c = xmalloc (cap);
  for (i = 0; i < 4; i++)
    n += compress_to (ZSTD, data + i * part, part, c + n, cap - n);

  stored = padded (c, n, 0, &len);
  expect_ok (ZSTD, stored, len, data, cs);
  free (stored);

  /* Three frames only: the fourth is "read" from the zero padding, which
   * is not a frame. */
  n = 0;
  for (i = 0; i < 3; i++)
    n += compress_to (ZSTD, data + i * part, part, c + n, cap - n);
  stored = padded (c, n, 0, &len);
  expect_fail (ZSTD, stored, len, cs, RAWTRACK_ECORRUPT);
  free (stored);
  stored = xmalloc (n);
  memcpy (stored, c, n);
  expect_fail (ZSTD, stored, n, cs, RAWTRACK_ECORRUPT);
  free (stored);

  free (c);
  free (data);
}

/* A stream for less than a cluster fails; a stream for more than a
 * cluster is accepted for deflate and refused for zstd, as in QEMU. */
static void
test_wrong_length (void)
{
  const size_t cs = 4096;
  uint8_t *data = xmalloc (2 * cs), *c, *stored;
  size_t cap = bound (ZSTD, 2 * cs) + bound (DEFLATE, 2 * cs), n, len;
  int type;

  fill (data, 2 * cs, TEXT);
  c = xmalloc (cap);
  for (type = DEFLATE; type <= ZSTD; type++) {
    n = compress_to (type, data, cs - 1, c, cap);
    stored = padded (c, n, 0, &len);
    expect_fail (type, stored, len, cs, RAWTRACK_ECORRUPT);
    free (stored);

    n = compress_to (type, data, cs + 1, c, cap);
    stored = padded (c, n, 0, &len);
    if (type == DEFLATE)
      expect_ok (type, stored, len, data, cs);
    else
      expect_fail (type, stored, len, cs, RAWTRACK_ECORRUPT);
    free (stored);
  }
  free (c);
  free (data);
}

/* Handmade zstd frame: no content size, the given window, one raw block. */
static uint8_t *
zstd_raw_frame (const uint8_t *data, size_t n, unsigned window_log,
                size_t *len)
{
  uint8_t *f = xmalloc (4 + 2 + 3 + n);
  uint32_t bh = (uint32_t) n << 3 | 1;        /* last block, raw */

  assert (window_log >= 10 && n < (1u << 17));
  memcpy (f, "\x28\xb5\x2f\xfd", 4);          /* magic, little endian */
  f[4] = 0;                                    /* descriptor: no FCS */
  f[5] = (uint8_t) ((window_log - 10) << 3);  /* window: exponent only */
  f[6] = bh & 0xff;
  f[7] = (bh >> 8) & 0xff;
  f[8] = (bh >> 16) & 0xff;
  memcpy (f + 9, data, n);
  *len = 9 + n;
  return f;
}

static void
test_zstd_window_cap (void)
{
  const size_t cs = 4096;
  uint8_t *data = xmalloc (cs), *f;
  size_t len;

  fill (data, cs, RANDOM);
  f = zstd_raw_frame (data, cs, 20, &len);
  expect_ok (ZSTD, f, len, data, cs);
  free (f);
  f = zstd_raw_frame (data, cs, 23, &len);
  expect_ok (ZSTD, f, len, data, cs);
  free (f);
  /* Beyond the cap: refused before anything is allocated for it. */
  f = zstd_raw_frame (data, cs, 24, &len);
  expect_fail (ZSTD, f, len, cs, RAWTRACK_ECORRUPT);
  free (f);
  f = zstd_raw_frame (data, cs, 31, &len);
  expect_fail (ZSTD, f, len, cs, RAWTRACK_ECORRUPT);
  free (f);
  free (data);
}

static void
test_corrupt (void)
{
  const size_t cs = 65536;
  uint8_t *data = xmalloc (cs), *dst = xmalloc (cs), *c, *stored;
  /* BFINAL=1, BTYPE=3 (reserved): an invalid deflate block. */
  static const uint8_t bad_deflate[512] = { 0x07 };
  /* Not a zstd magic number. */
  static const uint8_t bad_zstd[512] = { 0x12, 0x34, 0x56, 0x78 };
  size_t cap = bound (ZSTD, cs) + bound (DEFLATE, cs), n, len;
  int type, i, k;

  expect_fail (DEFLATE, bad_deflate, sizeof bad_deflate, cs,
               RAWTRACK_ECORRUPT);
  expect_fail (ZSTD, bad_zstd, sizeof bad_zstd, cs, RAWTRACK_ECORRUPT);
  expect_fail (ZSTD, bad_zstd, 0, cs, RAWTRACK_ECORRUPT);

  /* Random damage: any result but a crash, and on failure an error. */
  fill (data, cs, HALF);
  c = xmalloc (cap);
  for (type = DEFLATE; type <= ZSTD; type++) {
    n = compress_to (type, data, cs, c, cap);
    for (i = 0; i < 300; i++) {
      stored = padded (c, n, 0, &len);
      for (k = 0; k < 1 + i % 4; k++)
        stored[rng () % n] ^= (uint8_t) (1 + rng () % 255);
      rt_clear_error ();
      if (qcow2_decompress (type, stored, len, dst, cs) == -1)
        assert (rawtrack_get_error () != NULL);
      free (stored);

      /* Random truncation.  The last few bytes of a deflate stream may
       * hold only the end-of-block code, so only a cut well before the
       * end must fail. */
      len = rng () % n;
      stored = xmalloc (len);
      memcpy (stored, c, len);
      if (qcow2_decompress (type, stored, len, dst, cs) == 0)
        assert (type == DEFLATE && len + 16 > n);
      free (stored);
    }
  }

  free (c);
  free (dst);
  free (data);
}

static void
test_unknown_type_and_oom (void)
{
  const size_t cs = 4096;
  uint8_t *data = xmalloc (cs), *c, *dst = xmalloc (cs);
  size_t cap = bound (DEFLATE, cs), n;
  unsigned long k;

  fill (data, cs, TEXT);
  c = xmalloc (cap);
  n = compress_to (DEFLATE, data, cs, c, cap);

  expect_fail (2, c, n, cs, ENOTSUP);
  expect_fail (-1, c, n, cs, ENOTSUP);

  /* zlib allocates through rt_malloc. */
  rt_alloc_fail_after (1);
  expect_fail (DEFLATE, c, n, cs, ENOMEM);
  rt_alloc_fail_after (0);
  expect_ok (DEFLATE, c, n, data, cs);

  /* Whichever allocation fails, the result is success or ENOMEM.  With a
   * shortened output zlib also allocates its window. */
  for (k = 1; k <= 4; k++) {
    rt_alloc_fail_after (k);
    rt_clear_error ();
    if (qcow2_decompress (DEFLATE, c, n, dst, cs / 2) == -1)
      assert (rawtrack_get_errno () == ENOMEM);
    rt_alloc_fail_after (0);
  }

  free (c);
  free (dst);
  free (data);
}

static void
check_desc (uint64_t l2e, uint32_t cluster_bits, uint64_t host,
            uint64_t len)
{
  uint64_t h = 1, l = 1;

  qcow2_compressed_desc (l2e, cluster_bits, &h, &l);
  if (h != host || l != len) {
    fprintf (stderr, "desc %#llx bits %u: got host %#llx len %llu, "
             "want %#llx %llu\n", (unsigned long long) l2e, cluster_bits,
             (unsigned long long) h, (unsigned long long) l,
             (unsigned long long) host, (unsigned long long) len);
    abort ();
  }
}

static void
test_desc (void)
{
  const uint64_t C = QCOW_OFLAG_COMPRESSED;
  uint32_t bits;
  int i;

  /* 64 KiB clusters: x = 54, 8 count bits (54..61). */
  check_desc (C | 3ull << 54 | 0x12345, 16, 0x12345, 4 * 512 - 0x145);
  check_desc (QCOW_OFLAG_COPIED | C | 3ull << 54 | 0x12345, 16,
              0x12345, 1723);
  check_desc (C | 0x10000, 16, 0x10000, 512);
  check_desc (C | 0xffull << 54 | 0x3fffffffffffffull, 16,
              0x3fffffffffffffull, 256 * 512 - 511);
  /* 512-byte clusters: x = 61, one count bit. */
  check_desc (C | 1ull << 61 | 0x1000, 9, 0x1000, 1024);
  check_desc (C | 0x1fffffffffffffffull, 9, 0x1fffffffffffffffull, 1);
  /* 4 KiB clusters: x = 58, 4 count bits. */
  check_desc (C | 0xfull << 58 | 0x200, 12, 0x200, 16 * 512);
  check_desc (C | 0x2ull << 58 | 0x7001ff, 12, 0x7001ff, 3 * 512 - 511);
  /* 2 MiB clusters: x = 49, 13 count bits. */
  check_desc (C | 0x1fffull << 49 | 0x1ffffffffffffull, 21,
              0x1ffffffffffffull, 8192 * 512 - 511);
  check_desc (C | 1ull << 49 | 0x40000000, 21, 0x40000000, 1024);

  /* Entries built the way QEMU builds them (qcow2_alloc_compressed_
   * cluster_offset) decode to a range that covers the data and ends in
   * the last sector it touches. */
  for (bits = QCOW2_MIN_CLUSTER_BITS; bits <= QCOW2_MAX_CLUSTER_BITS;
       bits++)
    for (i = 0; i < 1000; i++) {
      uint32_t x = 62 - (bits - 8);
      uint64_t off = rng () & ((1ull << 48) - 1);   /* < 2^x */
      uint64_t clen = 1 + rng () % (1ull << bits);
      uint64_t nb = ((off + clen - 1) >> 9) - (off >> 9);
      uint64_t h, l;

      qcow2_compressed_desc (C | nb << x | off, bits, &h, &l);
      assert (h == off);
      assert (l >= clen && l - clen < 512);
      assert ((h + l) % 512 == 0);
    }
}

int
main (void)
{
  test_desc ();
  test_round_trip ();
  test_encoder_variants ();
  test_zstd_multi_frame ();
  test_wrong_length ();
  test_zstd_window_cap ();
  test_corrupt ();
  test_unknown_type_and_oom ();
  printf ("test-compress: ok\n");
  return 0;
}
