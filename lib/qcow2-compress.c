/* rawtrack - qcow2 compressed clusters.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: decoding of the compressed-cluster L2 descriptor, decompression
 * of one stored cluster (deflate or zstd), and the guest read of a
 * compressed cluster (qcow2_read_compressed).  Writing compressed
 * clusters is not supported.
 * Locking: qcow2_decompress and qcow2_compressed_desc are pure; every call
 * builds its own decoder context, so they may run outside the image lock.
 * qcow2_read_compressed reads the image file: caller holds img->lock.
 *
 * Invariants, following QEMU (block/qcow2-threads.c, qcow2-cluster.c):
 *  1. The stored length is only known to 512-byte precision, so the input
 *     may carry padding or garbage after the compressed stream.  Bytes
 *     beyond the point where the cluster is full are never looked at.
 *  2. A cluster decompresses successfully iff exactly dst_len bytes come
 *     out.  Running out of input first, or a stream that ends early, is
 *     corruption.
 *  3. deflate is raw deflate (windowBits -12, no zlib header or checksum).
 *     zstd is one or more frames decoded with the streaming API until the
 *     cluster is full; the frame being decoded must end exactly there.
 *  4. Nothing is allocated from sizes read from the input: dst is the
 *     caller's, zlib's state is fixed-size, and the zstd window is capped
 *     (ZSTD_WINDOW_LOG_MAX) so a hostile frame header cannot ask for a big
 *     buffer.
 *
 * Error messages do not name an offset; the caller knows it and adds it
 * with rt_prefix_error.
 */
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <limits.h>
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <inttypes.h>

#include <zlib.h>
#include <zstd.h>

#include "internal.h"
#include "arith.h"
#include "cleanup.h"

/* qcow2 deflate window: 4 KiB, raw stream (negative = no zlib wrapper). */
#define DEFLATE_WINDOW_BITS (-12)

/* Largest zstd window we accept: 8 MiB, four times the largest cluster.
 * QEMU's compressor pledges the cluster size, so its frames use a window
 * no bigger than the cluster.  QEMU itself accepts up to zstd's default
 * limit (2^27); frames between the two are refused here. */
#define ZSTD_WINDOW_LOG_MAX 23

/* zlib allocates through our wrapper so tests can inject ENOMEM. */
static voidpf
zlib_alloc (voidpf opaque, uInt items, uInt size)
{
  size_t n;

  if (MUL_OVERFLOW ((size_t) items, (size_t) size, &n))
    return Z_NULL;
  return rt_malloc (n);
}

static void
zlib_free (voidpf opaque, voidpf p)
{
  free (p);
}

static int
inflate_cluster (const void *src, size_t src_len, void *dst, size_t dst_len)
{
  z_stream strm = { 0 };
  int zr, r;

  if (dst_len > UINT_MAX)
    return set_error (ERANGE, "compressed cluster: %zu bytes is too large "
                      "for deflate", dst_len);

  strm.zalloc = zlib_alloc;
  strm.zfree = zlib_free;
  strm.opaque = Z_NULL;
  strm.next_in = (Bytef *) src;
  /* Trailing bytes never matter (invariant 1), so clamping is safe. */
  strm.avail_in = src_len > UINT_MAX ? UINT_MAX : (uInt) src_len;
  strm.next_out = dst;
  strm.avail_out = (uInt) dst_len;

  zr = inflateInit2 (&strm, DEFLATE_WINDOW_BITS);
  if (zr == Z_MEM_ERROR) {
    rt_prefix_error ("compressed cluster: ");
    return -1;
  }
  if (zr != Z_OK)
    return set_error (EIO, "compressed cluster: inflateInit2: %s",
                      strm.msg ? strm.msg : zError (zr));

  zr = inflate (&strm, Z_FINISH);
  switch (zr) {
  case Z_STREAM_END:
  case Z_BUF_ERROR:
  case Z_OK:
    /* Z_BUF_ERROR with a full output is the normal case: the stream goes
     * on into the sector padding, or its end marker was not reached. */
    if (strm.avail_out == 0)
      r = 0;
    else if (zr == Z_STREAM_END)
      r = set_corrupt ("compressed cluster: deflate stream ends after %lu "
                       "of %zu bytes", strm.total_out, dst_len);
    else
      r = set_corrupt ("compressed cluster: deflate stream is truncated "
                       "(%lu of %zu bytes)", strm.total_out, dst_len);
    break;
  case Z_MEM_ERROR:
    rt_prefix_error ("compressed cluster: ");
    r = -1;
    break;
  default:                      /* Z_DATA_ERROR, Z_NEED_DICT, ... */
    r = set_corrupt ("compressed cluster: deflate stream is corrupt (%s)",
                     strm.msg ? strm.msg : zError (zr));
    break;
  }

  inflateEnd (&strm);
  return r;
}

static int
zstd_cluster (const void *src, size_t src_len, void *dst, size_t dst_len)
{
  ZSTD_DCtx *dctx;
  ZSTD_inBuffer in = { .src = src, .size = src_len, .pos = 0 };
  ZSTD_outBuffer out = { .dst = dst, .size = dst_len, .pos = 0 };
  size_t zr = 0;
  int r = 0;

  dctx = ZSTD_createDCtx ();
  if (dctx == NULL)
    return set_error (ENOMEM, "compressed cluster: out of memory "
                      "creating zstd context");
  zr = ZSTD_DCtx_setParameter (dctx, ZSTD_d_windowLogMax,
                               ZSTD_WINDOW_LOG_MAX);
  if (ZSTD_isError (zr)) {
    r = set_error (EIO, "compressed cluster: zstd: %s",
                   ZSTD_getErrorName (zr));
    goto out;
  }

  /* Frames follow one another; a return of 0 means a frame was completely
   * decoded and flushed, and the next call starts the next frame. */
  zr = 0;
  while (out.pos < out.size) {
    size_t in_pos = in.pos, out_pos = out.pos;

    zr = ZSTD_decompressStream (dctx, &out, &in);
    if (ZSTD_isError (zr)) {
      r = set_corrupt ("compressed cluster: zstd data is corrupt (%s)",
                       ZSTD_getErrorName (zr));
      goto out;
    }
    /* No progress: the input ran out (or the decoder is stuck waiting for
     * more) before the cluster was full. */
    if (in.pos == in_pos && out.pos == out_pos) {
      r = set_corrupt ("compressed cluster: zstd data is truncated "
                       "(%zu of %zu bytes)", out.pos, dst_len);
      goto out;
    }
  }

  /* The cluster is full, but the frame still has data or its epilogue
   * unread: it decompresses to more than one cluster. */
  if (zr != 0)
    r = set_corrupt ("compressed cluster: zstd frame does not end at the "
                     "end of the cluster");

 out:
  ZSTD_freeDCtx (dctx);
  return r;
}

int
qcow2_decompress (int type, const void *src, size_t src_len, void *dst,
                  size_t dst_len)
{
  switch (type) {
  case 0:
    return inflate_cluster (src, src_len, dst, dst_len);
  case 1:
    return zstd_cluster (src, src_len, dst, dst_len);
  default:
    return set_error (ENOTSUP, "compressed cluster: unknown compression "
                      "type %d", type);
  }
}

/* Layout of a compressed L2 entry (x = 62 - (cluster_bits - 8)):
 *
 *   63   62   61 ........... x   x-1 .............. 0
 *   0    1    additional sectors  host byte offset
 *
 * The stored data starts at the byte offset and runs to the end of the
 * last of (count + 1) 512-byte sectors counted from the sector that
 * holds the offset. */
void
qcow2_compressed_desc (uint64_t l2e, uint32_t cluster_bits,
                       uint64_t *host, uint64_t *len)
{
  uint32_t x, count_bits;
  uint64_t nb_sectors;

  assert (cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
          cluster_bits <= QCOW2_MAX_CLUSTER_BITS);

  x = 62 - (cluster_bits - 8);
  count_bits = 62 - x;

  *host = l2e & ((UINT64_C (1) << x) - 1);
  nb_sectors = ((l2e >> x) & ((UINT64_C (1) << count_bits) - 1)) + 1;
  *len = nb_sectors * 512 - (*host & 511);
}

/* Read one compressed cluster and copy the part [pos, pos+n) of it. */
int
qcow2_read_compressed (struct rawtrack_image *img, uint64_t l2e, uint64_t pos,
                       uint8_t *buf, uint64_t n)
{
  uint64_t host, clen, cs = img->cluster_size;
  CLEANUP_FREE uint8_t *src = NULL;
  CLEANUP_FREE uint8_t *dst = NULL;

  qcow2_compressed_desc (l2e, img->h.cluster_bits, &host, &clen);
  if (clen > 2 * cs + 512)
    return set_corrupt ("compressed cluster at offset %" PRIu64 " claims %"
                        PRIu64 " bytes", host, clen);
  src = rt_malloc (clen);
  dst = rt_malloc (cs);
  if (!src || !dst)
    return -1;
  if (io_read (img->file, src, clen, host, "compressed cluster") == -1 ||
      qcow2_decompress (img->h.compression_type, src, clen, dst, cs) == -1) {
    rt_prefix_error ("compressed cluster at offset %" PRIu64 ": ", host);
    return -1;
  }
  memcpy (buf, dst + (pos & (cs - 1)), n);
  return 0;
}
