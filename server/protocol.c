/* rawtrack - NBD server: the transmission phase.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: reading and validating requests, executing them on the image,
 * and every reply format: simple replies, structured chunks and extended
 * chunks (nbd-facts.md §2).  Also the one errno -> NBD error mapping
 * (nbd_errno).
 *
 * Reading (proto_recv_request, under conn->read_lock):
 *  1. the header (28 bytes, or 32 with extended headers); a bad magic
 *     ends the connection at once: framing is lost;
 *  2. the payload, always read in full before anything else so framing
 *     is kept (WRITE data into the worker's buffer; payloads of other
 *     commands are read and thrown away); a payload above NBD_MAX_PAYLOAD
 *     gets an EINVAL reply and then the connection is closed;
 *  3. validation: unknown commands and flags, ranges, read-only export,
 *     missing contexts.  A failed check becomes req->error and the
 *     connection goes on.
 *
 * Replying (proto_handle_request, no lock but write_lock while sending):
 * each reply, with all its chunks, is built as one iovec and sent whole
 * under conn->write_lock, so replies of different requests never
 * interleave.  Chunks carry DONE on the last one only, and an error
 * chunk always carries DONE.
 *
 *   negotiated     READ                       no-data success  errors
 *   nothing        simple + data              simple           simple
 *   structured     OFFSET_DATA/OFFSET_HOLE    simple           ERROR chunk
 *   extended       the same, extended form    NONE chunk       ERROR chunk
 *
 * Durability: FLUSH is rawtrack_image_flush, which makes everything the
 * image has completed durable whichever connection wrote it; FUA is
 * passed to the library per write.  Hence CAN_MULTI_CONN (serve.c).
 *
 * Zero copy (raw external data files, the usual rawtrack image): a WRITE
 * payload of 64 KiB or more goes from the socket to the data file with
 * splice(2) while it is read (rawtrack_image_write_target: tracking
 * first, and only when it needs no wait, since the read lock is held):
 * one copy instead of two.  With --sendfile, READ data goes from the data
 * file to the socket with sendfile(2) (rawtrack_image_read_source): a
 * third of the server's CPU, but then the client copies straight from
 * the page cache, cold, which made a client on the same machine slower
 * (fio 1 MiB reads: 0.7x), so it is off unless asked for.  Anything else
 * takes the buffered path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <pthread.h>
#include <time.h>

#include "server.h"
#include "nbd-protocol.h"
#include "byteorder.h"

/* Reads shorter than this are sent as a single data chunk without asking
 * for holes: a hole chunk saves nothing on the wire at that size. */
#define READ_SPARSE_MIN      (64u * 1024)
/* Holes shorter than this inside a read are sent as data. */
#define READ_HOLE_MIN        4096u
/* Chunks per sparse read at most; the rest goes out as one data chunk. */
#define READ_MAX_SEGMENTS    64
/* WRITE payloads at least this large go straight from the socket to the
 * data file with splice(2) when the library allows (recv_write_direct);
 * smaller ones are not worth two extra system calls. */
#define WRITE_DIRECT_MIN     (64u * 1024)
/* Extents per context in one BLOCK_STATUS reply (qemu's limit). */
#define MAX_EXTENTS          131072

uint32_t
nbd_errno (int err, bool fast_zero)
{
  switch (err) {
  case 0:
    return NBD_SUCCESS;
  case EPERM:
  case EROFS:
    return NBD_EPERM;
  case EIO:
  case RAWTRACK_ECORRUPT:
    return NBD_EIO;
  case ENOMEM:
    return NBD_ENOMEM;
#ifdef EDQUOT
  case EDQUOT:
#endif
  case EFBIG:
  case ENOSPC:
    return NBD_ENOSPC;
#ifdef ESHUTDOWN
  case ESHUTDOWN:
    return NBD_ESHUTDOWN;
#endif
  case EOVERFLOW:
    return NBD_EOVERFLOW;
  case ENOTSUP:
#if defined (EOPNOTSUPP) && EOPNOTSUPP != ENOTSUP
  case EOPNOTSUPP:
#endif
    /* Only a FAST_ZERO request may fail with ENOTSUP. */
    return fast_zero ? NBD_ENOTSUP : NBD_EINVAL;
  case EINVAL:
  default:
    return NBD_EINVAL;
  }
}

static const char *
command_name (uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ: return "READ";
  case NBD_CMD_WRITE: return "WRITE";
  case NBD_CMD_DISC: return "DISC";
  case NBD_CMD_FLUSH: return "FLUSH";
  case NBD_CMD_TRIM: return "TRIM";
  case NBD_CMD_CACHE: return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  default: return "unknown";
  }
}

/* ---- replies ----------------------------------------------------------- */

/* Room for the largest header plus a small fixed payload. */
#define HDR_MAX (NBD_EXTENDED_REPLY_SIZE + 16)

/* Build a chunk header for req into b; returns its size. */
static size_t
chunk_header (const struct connection *c, uint8_t *b,
              const struct request *req, uint16_t flags, uint16_t type,
              uint64_t len)
{
  if (c->extended) {
    be32_store (b, NBD_EXTENDED_REPLY_MAGIC);
    be16_store (b + 4, flags);
    be16_store (b + 6, type);
    be64_store (b + 8, req->cookie);
    be64_store (b + 16, req->offset);
    be64_store (b + 24, len);
    return NBD_EXTENDED_REPLY_SIZE;
  }
  be32_store (b, NBD_STRUCTURED_REPLY_MAGIC);
  be16_store (b + 4, flags);
  be16_store (b + 6, type);
  be64_store (b + 8, req->cookie);
  be32_store (b + 16, (uint32_t) len);
  return NBD_STRUCTURED_REPLY_SIZE;
}

static size_t
simple_header (uint8_t *b, const struct request *req, uint32_t error)
{
  be32_store (b, NBD_SIMPLE_REPLY_MAGIC);
  be32_store (b + 4, error);
  be64_store (b + 8, req->cookie);
  return NBD_SIMPLE_REPLY_SIZE;
}

/* Send iov as one reply under the write lock. */
static int
send_locked (struct connection *c, struct iovec *iov, int n)
{
  int r;

  if (pthread_mutex_lock (&c->write_lock) != 0)
    abort ();
  r = conn_sendv (c, iov, n);
  if (pthread_mutex_unlock (&c->write_lock) != 0)
    abort ();
  return r;
}

/* Success without data. */
static int
send_ok (struct connection *c, const struct request *req)
{
  uint8_t b[HDR_MAX];
  struct iovec iov;

  if (c->extended)
    iov.iov_len = chunk_header (c, b, req, NBD_REPLY_FLAG_DONE,
                                NBD_REPLY_TYPE_NONE, 0);
  else
    iov.iov_len = simple_header (b, req, 0);
  iov.iov_base = b;
  return send_locked (c, &iov, 1);
}

/* Failure: err is an errno; msg (may be NULL) goes into the error chunk. */
static int
send_error (struct connection *c, const struct request *req, int err,
            const char *msg)
{
  uint8_t b[HDR_MAX + 6];
  struct iovec iov[2];
  uint32_t nerr = nbd_errno (err, (req->flags & NBD_CMD_FLAG_FAST_ZERO) != 0);
  size_t mlen = msg ? strlen (msg) : 0, h;

  if (nerr == 0)
    nerr = NBD_EIO;
  nbd_debug ("connection %u: %s at %" PRIu64 " (%" PRIu64 " bytes): "
             "error %u%s%s", c->id, command_name (req->type), req->offset,
             req->count, nerr, msg ? ": " : "", msg ? msg : "");
  if (!c->structured && !c->extended) {
    iov[0].iov_base = b;
    iov[0].iov_len = simple_header (b, req, nerr);
    return send_locked (c, iov, 1);
  }
  /* Keep the chunk well under qemu's 1000-byte payload limit. */
  if (mlen > 512)
    mlen = 512;
  h = chunk_header (c, b, req, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
                    6 + mlen);
  be32_store (b + h, nerr);
  be16_store (b + h + 4, (uint16_t) mlen);
  iov[0].iov_base = b;
  iov[0].iov_len = h + 6;
  iov[1].iov_base = (void *) msg;
  iov[1].iov_len = mlen;
  return send_locked (c, iov, mlen ? 2 : 1);
}

/* The library's message for the last error, or a fallback. */
static const char *
lib_message (void)
{
  const char *m = rawtrack_get_error ();

  return m ? m : "operation failed";
}

static int
lib_errno (void)
{
  int e = rawtrack_get_errno ();

  return e ? e : EIO;
}

/* ---- receiving --------------------------------------------------------- */

/* The worker's buffer, at least n bytes (old contents are not kept).  It
 * is mapped by us - 128 KiB for small requests, else in 2 MiB steps with
 * MADV_HUGEPAGE - rather than taken from malloc: malloc serves large
 * sizes with a plain mmap per buffer, and 1 MiB reads through such
 * buffers ran at half the speed (bench-nbd: every first connection of a
 * process). */
static int
ensure_buf (struct worker_buf *wb, size_t n)
{
  const size_t step = n <= (128u << 10) ? 128u << 10 : 2u << 20;
  size_t cap;
  void *p;

  if (n <= wb->cap)
    return 0;
  cap = (n + step - 1) / step * step;
  p = mmap (NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
            -1, 0);
  if (p == MAP_FAILED)
    return -1;
#ifdef MADV_HUGEPAGE
  madvise (p, cap, MADV_HUGEPAGE);
#endif
  if (wb->data)
    munmap (wb->data, wb->cap);
  wb->data = p;
  wb->cap = cap;
  return 0;
}

/* The flags each command accepts.  FUA is accepted everywhere because we
 * advertise SEND_FUA. */
static uint16_t
allowed_flags (const struct connection *c, uint16_t type)
{
  uint16_t f = NBD_CMD_FLAG_FUA;

  switch (type) {
  case NBD_CMD_READ:
    if (c->structured || c->extended)
      f |= NBD_CMD_FLAG_DF;
    break;
  case NBD_CMD_WRITE:
    if (c->extended)
      f |= NBD_CMD_FLAG_PAYLOAD_LEN;
    break;
  case NBD_CMD_WRITE_ZEROES:
    f |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    break;
  case NBD_CMD_BLOCK_STATUS:
    f |= NBD_CMD_FLAG_REQ_ONE;
    break;
  }
  return f;
}

/* Semantic checks; returns an errno or 0. */
static int
validate (const struct connection *c, const struct request *req,
          bool stray_payload)
{
  const struct nbd_export *exp = c->exp;
  bool write = false;

  switch (req->type) {
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    write = true;
    break;
  case NBD_CMD_READ:
  case NBD_CMD_FLUSH:
  case NBD_CMD_CACHE:
  case NBD_CMD_BLOCK_STATUS:
    break;
  default:
    return EINVAL;
  }
  if (stray_payload)
    return EINVAL;
  if (req->flags & ~allowed_flags (c, req->type))
    return EINVAL;
  if (write && exp->readonly)
    return EPERM;
  if (req->type == NBD_CMD_FLUSH)
    return 0;                      /* offset and length are ignored */
  if (req->offset > exp->size || req->count > exp->size - req->offset)
    return (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES)
           ? ENOSPC : EINVAL;
  if (req->type == NBD_CMD_READ && req->count > NBD_MAX_PAYLOAD)
    return EINVAL;
  if (req->type == NBD_CMD_BLOCK_STATUS &&
      ((!c->structured && !c->extended) || c->nr_meta == 0 ||
       req->count == 0))
    return EINVAL;
  return 0;
}

/* A WRITE whose bytes can go from the socket to the data file without
 * passing through memory: the library has done the tracking (without
 * waiting for a bitmap commit: the read lock is held here) and named the
 * file.  Returns a CONN_* code when it took the payload (req->direct, and
 * req->error if the file write failed), NOT_DIRECT when the caller must
 * read the payload into memory as usual. */
#define NOT_DIRECT (-2)
static int
recv_write_direct (struct connection *c, struct request *req,
                   struct worker_buf *wb)
{
  unsigned fl = (req->flags & NBD_CMD_FLAG_FUA) ? RAWTRACK_WRITE_FUA : 0;
  uint64_t foff;
  int64_t n;
  int fd, r, werr;

  struct nbd_disk *disk = c->exp->disk;

  if (req->count < WRITE_DIRECT_MIN || c->tls || !worker_buf_pipe (wb))
    return NOT_DIRECT;
  /* The gate from the copy-before-write until the payload is in the file
   * (spliced synchronously): no checkpoint falls in between. */
  if (disk)
    pthread_rwlock_rdlock (&disk->gate);
  disk_before_write (disk, req->offset, req->count);
  n = rawtrack_image_write_target (c->exp->img, req->offset, req->count, fl,
                                   &fd, &foff);
  if (n <= 0) {
    if (disk)
      pthread_rwlock_unlock (&disk->gate);
    if (n == 0)
      return NOT_DIRECT;
    req->error = lib_errno ();
    return conn_skip (c, req->count);
  }
  r = conn_splice_payload (c, wb, fd, foff, req->count, &werr);
  if (disk)
    pthread_rwlock_unlock (&disk->gate);
  req->direct = true;
  req->error = werr;
  return r;
}

int
proto_recv_request (struct connection *c, struct request *req,
                    struct worker_buf *wb)
{
  uint8_t h[NBD_EXTENDED_REQUEST_SIZE];
  size_t hs = c->extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
  uint32_t magic = c->extended ? NBD_EXTENDED_REQUEST_MAGIC
                               : NBD_REQUEST_MAGIC;
  uint64_t payload = 0;
  int r;

  r = conn_recv (c, h, hs);
  if (r != CONN_OK)
    return r;
  if (be32_load (h) != magic) {
    nbd_error ("connection %u: bad request magic 0x%08x, disconnecting",
               c->id, be32_load (h));
    errno = EPROTO;
    return CONN_ERROR;
  }
  memset (req, 0, sizeof *req);
  req->flags = be16_load (h + 4);
  req->type = be16_load (h + 6);
  req->cookie = be64_load (h + 8);
  req->offset = be64_load (h + 16);
  req->count = c->extended ? be64_load (h + 24) : be32_load (h + 24);

  if (req->type == NBD_CMD_DISC) {
    nbd_debug ("connection %u: DISC", c->id);
    return CONN_EOF;
  }

  if (c->extended) {
    if ((req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) || req->type == NBD_CMD_WRITE)
      payload = req->count;
  }
  else if (req->type == NBD_CMD_WRITE)
    payload = req->count;

  if (payload > NBD_MAX_PAYLOAD) {
    nbd_error ("connection %u: %s payload of %" PRIu64 " bytes exceeds the "
               "maximum, disconnecting", c->id, command_name (req->type),
               payload);
    send_error (c, req, EINVAL, "payload too large");
    errno = EPROTO;
    return CONN_ERROR;
  }

  if (payload > 0) {
    req->error = validate (c, req, req->type != NBD_CMD_WRITE);
    if (req->error == 0 && req->type == NBD_CMD_WRITE) {
      r = recv_write_direct (c, req, wb);
      if (r != NOT_DIRECT) {
        if (r == CONN_EOF) {
          errno = ECONNRESET;
          r = CONN_ERROR;
        }
        return r;
      }
    }
    if (req->error == 0) {
      if (ensure_buf (wb, (size_t) payload) == -1) {
        req->error = ENOMEM;
        r = conn_skip (c, payload);
      }
      else
        r = conn_recv_payload (c, wb->data, (size_t) payload);
    }
    else
      r = conn_skip (c, payload);
    if (r != CONN_OK) {
      if (r == CONN_EOF) {
        errno = ECONNRESET;
        r = CONN_ERROR;
      }
      return r;
    }
    return CONN_OK;
  }
  req->error = validate (c, req, false);
  return CONN_OK;
}

/* ---- READ -------------------------------------------------------------- */

struct segment {
  uint64_t offset;                 /* absolute */
  uint64_t length;
  bool hole;                       /* reads as zeros */
};

/* Split [offset, offset+count) into data and hole segments.  Returns the
 * number of segments (>= 1); on a block status failure everything is one
 * data segment. */
static size_t
read_segments (struct connection *c, uint64_t offset, uint64_t count,
               struct segment *seg)
{
  uint64_t pos = offset, end = offset + count;
  size_t n = 0;

  while (pos < end) {
    unsigned st = 0;
    int64_t len;
    bool hole;

    if (n == READ_MAX_SEGMENTS - 1) {
      len = (int64_t) (end - pos);
      hole = false;
    }
    else if (c->exp->view) {
      /* A point-in-time export: its map as of the checkpoint. */
      bool zero;

      len = view_disk_status (c->exp->view, pos, end - pos, &zero);
      hole = zero && (uint64_t) len >= READ_HOLE_MIN;
    }
    else {
      len = rawtrack_image_block_status (c->exp->img, pos, end - pos, &st);
      if (len <= 0) {
        seg[0].offset = offset;
        seg[0].length = count;
        seg[0].hole = false;
        return 1;
      }
      if ((uint64_t) len > end - pos)
        len = (int64_t) (end - pos);
      hole = (st & RAWTRACK_STATUS_ZERO) && (uint64_t) len >= READ_HOLE_MIN;
    }
    if (n > 0 && seg[n - 1].hole == hole)
      seg[n - 1].length += (uint64_t) len;
    else {
      seg[n].offset = pos;
      seg[n].length = (uint64_t) len;
      seg[n].hole = hole;
      n++;
    }
    pos += (uint64_t) len;
  }
  return n;
}

/* A failed read_part: the errno of a point-in-time export's read, or the
 * library's error. */
static __thread int read_errno;

static int
send_read_error (struct connection *c, const struct request *req)
{
  int e = read_errno;

  read_errno = 0;
  if (e)
    return send_error (c, req, e, e == EIO && c->exp->view
                       ? "the point-in-time view failed or has ended"
                       : strerror (e));
  return send_error (c, req, lib_errno (), lib_message ());
}

/* Where the data of [offset, offset + len) comes from: the data file
 * itself (sendfile: the bytes go from the page cache to the socket
 * without a copy through this process) when the library says they are
 * stored there unchanged, else a read into buf.  Fills *part. */
static int
read_part (struct connection *c, uint8_t *buf, uint64_t offset, uint64_t len,
           struct send_part *part)
{
  struct rawtrack_image *img = c->exp->img;
  uint64_t foff;
  int fd;

  if (c->exp->view) {
    /* A point-in-time export: saved chunks from the fleecing store. */
    if (view_disk_read (c->exp->view, buf, len, offset) == -1) {
      read_errno = errno;
      return -1;
    }
    part->buf = buf;
    part->fd = -1;
    part->len = (size_t) len;
    return 0;
  }
  if (c->srv->sendfile && !c->tls &&
      rawtrack_image_read_source (img, offset, len, &fd, &foff) ==
      (int64_t) len) {
    part->buf = NULL;
    part->fd = fd;
    part->foff = foff;
  }
  else {
    if (rawtrack_image_pread (img, buf, len, offset) == -1)
      return -1;
    part->buf = buf;
    part->fd = -1;
  }
  part->len = (size_t) len;
  return 0;
}

static int
send_parts_locked (struct connection *c, const struct send_part *p, int n)
{
  int r;

  if (pthread_mutex_lock (&c->write_lock) != 0)
    abort ();
  r = conn_send_parts (c, p, n);
  if (pthread_mutex_unlock (&c->write_lock) != 0)
    abort ();
  return r;
}

static int
do_read (struct connection *c, const struct request *req,
         struct worker_buf *wb)
{
  struct segment seg[READ_MAX_SEGMENTS];
  uint8_t hdr[READ_MAX_SEGMENTS][HDR_MAX];
  struct send_part part[2 * READ_MAX_SEGMENTS];
  size_t nseg, i;
  int np = 0;

  if (req->count == 0) {
    /* Structured: a lone NONE chunk; simple: a header without data. */
    uint8_t b[HDR_MAX];
    struct iovec v = { b, 0 };

    if (c->structured || c->extended)
      v.iov_len = chunk_header (c, b, req, NBD_REPLY_FLAG_DONE,
                                NBD_REPLY_TYPE_NONE, 0);
    else
      v.iov_len = simple_header (b, req, 0);
    return send_locked (c, &v, 1);
  }
  if (ensure_buf (wb, (size_t) req->count) == -1)
    return send_error (c, req, ENOMEM, "out of memory");

  if (!c->structured && !c->extended) {
    if (read_part (c, wb->data, req->offset, req->count, &part[1]) == -1)
      return send_read_error (c, req);
    part[0].buf = hdr[0];
    part[0].len = simple_header (hdr[0], req, 0);
    part[0].fd = -1;
    return send_parts_locked (c, part, 2);
  }

  if ((req->flags & NBD_CMD_FLAG_DF) || req->count < READ_SPARSE_MIN) {
    seg[0].offset = req->offset;
    seg[0].length = req->count;
    seg[0].hole = false;
    nseg = 1;
  }
  else
    nseg = read_segments (c, req->offset, req->count, seg);

  for (i = 0; i < nseg; i++) {
    uint8_t *p = (uint8_t *) wb->data + (seg[i].offset - req->offset);
    uint16_t flags = i == nseg - 1 ? NBD_REPLY_FLAG_DONE : 0;
    size_t h;

    if (seg[i].hole) {
      h = chunk_header (c, hdr[i], req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      be64_store (hdr[i] + h, seg[i].offset);
      be32_store (hdr[i] + h + 8, (uint32_t) seg[i].length);
      part[np].buf = hdr[i];
      part[np].fd = -1;
      part[np++].len = h + 12;
      continue;
    }
    h = chunk_header (c, hdr[i], req, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                      8 + seg[i].length);
    be64_store (hdr[i] + h, seg[i].offset);
    part[np].buf = hdr[i];
    part[np].fd = -1;
    part[np++].len = h + 8;
    if (read_part (c, p, seg[i].offset, seg[i].length, &part[np++]) == -1)
      return send_read_error (c, req);
  }
  return send_parts_locked (c, part, np);
}

/* ---- BLOCK_STATUS ------------------------------------------------------ */

static int
do_block_status (struct connection *c, const struct request *req)
{
  size_t n = c->nr_meta, i, j, max;
  struct extent_list *lists;
  struct iovec *iov = NULL;
  uint8_t *bufs = NULL, *p;
  uint64_t end, count = req->count;
  size_t total = 0;
  int r = -1;

  max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : MAX_EXTENTS;
  lists = calloc (n, sizeof *lists);
  if (!lists)
    return send_error (c, req, ENOMEM, "out of memory");

  end = req->offset + count;
  for (i = 0; i < n; i++) {
    if (meta_extents (c->exp, c->meta[i], req->offset, count, max,
                      &lists[i]) == -1) {
      r = send_error (c, req, errno, "block status failed");
      goto out;
    }
    if (lists[i].end < end)
      end = lists[i].end;
  }
  /* Every context covers exactly [offset, end), as qemu does. */
  for (i = 0; i < n; i++) {
    extent_list_truncate (&lists[i], req->offset, end);
    total += HDR_MAX + 8 + lists[i].ext.len * 16;
  }

  bufs = malloc (total);
  iov = calloc (n, sizeof *iov);
  if (!bufs || !iov) {
    r = send_error (c, req, ENOMEM, "out of memory");
    goto out;
  }
  p = bufs;
  for (i = 0; i < n; i++) {
    uint16_t flags = i == n - 1 ? NBD_REPLY_FLAG_DONE : 0;
    size_t h, len;
    uint8_t *q;

    if (c->extended) {
      len = 8 + lists[i].ext.len * 16;
      h = chunk_header (c, p, req, flags, NBD_REPLY_TYPE_BLOCK_STATUS_EXT,
                        len);
      be32_store (p + h, c->meta[i]);
      be32_store (p + h + 4, (uint32_t) lists[i].ext.len);
      q = p + h + 8;
      for (j = 0; j < lists[i].ext.len; j++, q += 16) {
        be64_store (q, lists[i].ext.ptr[j].length);
        be64_store (q + 8, lists[i].ext.ptr[j].flags);
      }
    }
    else {
      len = 4 + lists[i].ext.len * 8;
      h = chunk_header (c, p, req, flags, NBD_REPLY_TYPE_BLOCK_STATUS, len);
      be32_store (p + h, c->meta[i]);
      q = p + h + 4;
      for (j = 0; j < lists[i].ext.len; j++, q += 8) {
        be32_store (q, (uint32_t) lists[i].ext.ptr[j].length);
        be32_store (q + 4, lists[i].ext.ptr[j].flags);
      }
    }
    iov[i].iov_base = p;
    iov[i].iov_len = h + len;
    p += h + len;
  }
  r = send_locked (c, iov, (int) n);

 out:
  for (i = 0; i < n; i++)
    extent_list_free (&lists[i]);
  free (lists);
  free (iov);
  free (bufs);
  return r;
}

/* ---- dispatch ---------------------------------------------------------- */

/* A request the library failed (the server's trouble, not the client's
 * mistake: those are refused before, with req->error): the client gets
 * the error, and the operator a log line - at most one a second, with
 * the number left unsaid, so that a client retrying in a loop cannot
 * flood the log. */
static void
log_failure (struct connection *c, const struct request *req)
{
  static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  static time_t last;
  static uint64_t unsaid;
  time_t now = time (NULL);
  uint64_t n;

  pthread_mutex_lock (&m);
  if (now == last) {
    unsaid++;
    pthread_mutex_unlock (&m);
    return;
  }
  last = now;
  n = unsaid;
  unsaid = 0;
  pthread_mutex_unlock (&m);
  if (n)
    nbd_error ("connection %u: %s at %" PRIu64 " (%" PRIu64 " bytes) "
               "failed: %s (and %" PRIu64 " more failed requests not "
               "logged)", c->id, command_name (req->type), req->offset,
               req->count, lib_message (), n);
  else
    nbd_error ("connection %u: %s at %" PRIu64 " (%" PRIu64 " bytes) "
               "failed: %s", c->id, command_name (req->type), req->offset,
               req->count, lib_message ());
}

/* WRITE, TRIM, WRITE_ZEROES on the image: 0 or -1 (the library's error). */
static int
do_write (struct connection *c, const struct request *req,
          struct worker_buf *wb)
{
  struct rawtrack_image *img = c->exp->img;
  unsigned fl = (req->flags & NBD_CMD_FLAG_FUA) ? RAWTRACK_WRITE_FUA : 0;
  int r = 0;

  switch (req->type) {
  case NBD_CMD_WRITE:
    if (req->count)
      r = rawtrack_image_pwrite (img, wb->data, req->count, req->offset, fl);
    break;
  case NBD_CMD_TRIM:
    if (req->count)
      r = rawtrack_image_trim (img, req->count, req->offset, fl);
    /* A discard is a hint: "not supported here" is not an error. */
    if (r == -1 && (rawtrack_get_errno () == ENOTSUP ||
                    rawtrack_get_errno () == EOPNOTSUPP))
      r = 0;
    break;
  case NBD_CMD_WRITE_ZEROES:
    if (!(req->flags & NBD_CMD_FLAG_NO_HOLE))
      fl |= RAWTRACK_ZERO_MAY_TRIM;
    if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
      fl |= RAWTRACK_ZERO_FAST;
    if (req->count)
      r = rawtrack_image_zero (img, req->count, req->offset, fl);
    break;
  }
  return r;
}

int
proto_handle_request (struct connection *c, const struct request *req,
                      struct worker_buf *wb)
{
  struct rawtrack_image *img = c->exp->img;
  int r = 0;

  if (req->direct) {
    /* The payload is in the data file already (recv_write_direct). */
    r = rawtrack_image_write_done (img, req->offset, req->count,
                                   req->error == 0 &&
                                   (req->flags & NBD_CMD_FLAG_FUA)
                                   ? RAWTRACK_WRITE_FUA : 0);
    if (req->error)
      return send_error (c, req, req->error, strerror (req->error));
    if (r == -1) {
      log_failure (c, req);
      return send_error (c, req, lib_errno (), lib_message ());
    }
    return send_ok (c, req);
  }
  if (req->error)
    return send_error (c, req, req->error, strerror (req->error));

  if (c->exp->disk && (req->type == NBD_CMD_WRITE ||
                       req->type == NBD_CMD_TRIM ||
                       req->type == NBD_CMD_WRITE_ZEROES) && req->count) {
    /* Old data saved for the views first, under the gate (view.c). */
    pthread_rwlock_rdlock (&c->exp->disk->gate);
    disk_before_write (c->exp->disk, req->offset, req->count);
    r = do_write (c, req, wb);
    pthread_rwlock_unlock (&c->exp->disk->gate);
    if (r == -1) {
      log_failure (c, req);
      return send_error (c, req, lib_errno (), lib_message ());
    }
    return send_ok (c, req);
  }

  switch (req->type) {
  case NBD_CMD_READ:
    return do_read (c, req, wb);

  case NBD_CMD_BLOCK_STATUS:
    return do_block_status (c, req);

  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    r = do_write (c, req, wb);
    break;

  case NBD_CMD_FLUSH:
    r = rawtrack_image_flush (img);
    break;

  case NBD_CMD_CACHE:
    /* A prefetch hint; the page cache does this job already. */
    break;

  default:
    return send_error (c, req, EINVAL, "unknown command");
  }
  if (r == -1) {
    log_failure (c, req);
    return send_error (c, req, lib_errno (), lib_message ());
  }
  return send_ok (c, req);
}
