/* rawtrack - NBD server: one connection, its socket I/O and worker pool.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct connection from accept to close: the handshake call, the
 * worker threads of the transmission phase, the socket receive and send
 * primitives, the connection status, and the server's log helpers.
 *
 * Worker pool (nbdkit's model, server/connections.c there):
 *
 *   worker:  lock read_lock
 *              status != running?  -> unlock, exit
 *              proto_recv_request (header + payload)
 *            unlock read_lock
 *            proto_handle_request (library call; reply under write_lock)
 *
 * So up to srv->threads requests are in flight per connection, replies go
 * out in completion order, and a slow request never blocks the reading of
 * the next ones.  Back-pressure is natural: when every worker is busy,
 * nobody reads the socket.
 *
 * Locks: read_lock -> write_lock -> status_lock (server.h).  status only
 * goes down: 1 running -> 0 closing (DISC, EOF, server shutdown; requests
 * already read still complete and are answered) -> -1 failed (no more
 * replies are attempted).
 *
 * Receiving: every receive first tries a non-blocking recv; only when the
 * socket is empty does it poll the socket together with the server's quit
 * fd (and the handshake deadline), so a busy connection costs one system
 * call per read and a shutdown still wakes every idle reader at once.
 * A payload (bytes that follow a header already read) is read with one
 * blocking MSG_WAITALL recv instead; the socket's 1 s receive timeout
 * sends such a reader back to the poll now and then, so a client that
 * stalls mid-payload cannot delay a shutdown by more than that.
 *
 * Sending uses MSG_NOSIGNAL: a vanished client is an EPIPE, not a signal.
 * With --sendfile, read data that the library says lies unchanged in the
 * data file goes out with sendfile(2) (conn_send_parts): from the page
 * cache to the socket with no copy through this process.  SIGPIPE is
 * ignored by serve.c, since sendfile has no NOSIGNAL.  WRITE payloads may
 * go from the socket to the data file with splice(2)
 * (conn_splice_payload) through the worker's pipe.
 *
 * Invariant: the fd is closed only after every worker has been joined.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <sys/time.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "server.h"

bool nbd_verbose;
bool nbd_quiet;

static void
vlog (const char *level, const char *fmt, va_list ap)
{
  char buf[1024];

  vsnprintf (buf, sizeof buf, fmt, ap);
  /* One fprintf per line, so that lines of concurrent threads do not mix. */
  fprintf (stderr, "rawtrack serve: %s%s\n", level, buf);
}

void
nbd_debug (const char *fmt, ...)
{
  va_list ap;

  if (!nbd_verbose || nbd_quiet)
    return;
  va_start (ap, fmt);
  vlog ("debug: ", fmt, ap);
  va_end (ap);
}

void
nbd_error (const char *fmt, ...)
{
  va_list ap;

  if (nbd_quiet)
    return;
  va_start (ap, fmt);
  vlog ("", fmt, ap);
  va_end (ap);
}

static void
lock (pthread_mutex_t *m)
{
  if (pthread_mutex_lock (m) != 0)
    abort ();
}

static void
unlock (pthread_mutex_t *m)
{
  if (pthread_mutex_unlock (m) != 0)
    abort ();
}

int
conn_get_status (struct connection *c)
{
  int s;

  lock (&c->status_lock);
  s = c->status;
  unlock (&c->status_lock);
  return s;
}

void
conn_set_status (struct connection *c, int status)
{
  lock (&c->status_lock);
  if (status < c->status)
    c->status = status;
  unlock (&c->status_lock);
}

static int64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Wait until the socket is readable.  CONN_OK, CONN_QUIT or CONN_ERROR
 * (deadline passed, poll failure). */
int
conn_wait_readable (struct connection *c)
{
  struct pollfd fds[2];
  int timeout, r;

  for (;;) {
    timeout = -1;
    if (c->deadline_ns) {
      int64_t left = c->deadline_ns - now_ns ();

      if (left <= 0) {
        errno = ETIMEDOUT;
        return CONN_ERROR;
      }
      timeout = (int) ((left + 999999) / 1000000);
    }
    fds[0].fd = c->fd;
    fds[0].events = POLLIN;
    fds[0].revents = 0;
    fds[1].fd = c->srv->quit_fd;
    fds[1].events = POLLIN;
    fds[1].revents = 0;
    r = poll (fds, c->srv->quit_fd >= 0 ? 2 : 1, timeout);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return CONN_ERROR;
    }
    if (r > 0 && fds[1].revents)
      return CONN_QUIT;
    if (r > 0 && fds[0].revents)
      return CONN_OK;
  }
}

/* Read exactly n bytes.  whole: the bytes are known to be coming (a
 * payload after its header), so block in recv with MSG_WAITALL - one
 * system call for a whole write payload - rather than polling; the
 * socket's receive timeout (conn_handle) still brings us back to
 * wait_readable now and then to notice a shutdown. */
static int
recv_all (struct connection *c, void *buf, size_t n, bool whole)
{
  uint8_t *p = buf;
  size_t got = 0;
  int flags = whole && !c->deadline_ns ? MSG_WAITALL : MSG_DONTWAIT;

  while (got < n) {
    ssize_t r = c->tls ? tls_recv (c, p + got, n - got)
                       : recv (c->fd, p + got, n - got, flags);

    if (r > 0) {
      got += (size_t) r;
      continue;
    }
    if (r == 0) {
      if (got == 0)
        return CONN_EOF;
      errno = ECONNRESET;
      return CONN_ERROR;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int w = conn_wait_readable (c);

      if (w != CONN_OK)
        return w;
      continue;
    }
    return CONN_ERROR;
  }
  return CONN_OK;
}

int
conn_recv (struct connection *c, void *buf, size_t n)
{
  return recv_all (c, buf, n, false);
}

int
conn_recv_payload (struct connection *c, void *buf, size_t n)
{
  return recv_all (c, buf, n, true);
}

int
conn_skip (struct connection *c, uint64_t n)
{
  char buf[65536];

  while (n > 0) {
    size_t k = n < sizeof buf ? (size_t) n : sizeof buf;
    int r = conn_recv_payload (c, buf, k);

    if (r == CONN_EOF) {
      errno = ECONNRESET;
      return CONN_ERROR;
    }
    if (r != CONN_OK)
      return r;
    n -= k;
  }
  return CONN_OK;
}

static int
sendv_flags (struct connection *c, struct iovec *iov, int iovcnt, int flags)
{
  if (c->tls)
    return tls_sendv (c, iov, iovcnt);
  while (iovcnt > 0) {
    struct msghdr msg;
    ssize_t r;
    int cnt = iovcnt < IOV_MAX ? iovcnt : IOV_MAX;

    memset (&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t) cnt;
    r = sendmsg (c->fd, &msg, MSG_NOSIGNAL | flags);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    /* Skip what went out. */
    while (iovcnt > 0 && (size_t) r >= iov->iov_len) {
      r -= (ssize_t) iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *) iov->iov_base + r;
      iov->iov_len -= (size_t) r;
    }
  }
  return 0;
}

int
conn_sendv (struct connection *c, struct iovec *iov, int iovcnt)
{
  return sendv_flags (c, iov, iovcnt, 0);
}

int
conn_send (struct connection *c, const void *buf, size_t n)
{
  struct iovec iov = { .iov_base = (void *) buf, .iov_len = n };

  return conn_sendv (c, &iov, 1);
}

static const char zeros[65536];

/* len bytes of fd from foff; past the end of the file, zeros. */
static int
send_file (struct connection *c, int fd, uint64_t foff, size_t len)
{
  while (len > 0) {
    off_t o = (off_t) foff;
    size_t k = len < (1u << 30) ? len : (1u << 30);
    ssize_t r = sendfile (c->fd, fd, &o, k);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {                  /* end of file */
      while (len > 0) {
        size_t z = len < sizeof zeros ? len : sizeof zeros;

        if (conn_send (c, zeros, z) == -1)
          return -1;
        len -= z;
      }
      return 0;
    }
    foff += (uint64_t) r;
    len -= (size_t) r;
  }
  return 0;
}

int
conn_send_parts (struct connection *c, const struct send_part *p, int n)
{
  struct iovec iov[64];
  int i = 0;

  while (i < n) {
    int k = 0;

    if (p[i].fd >= 0) {
      if (send_file (c, p[i].fd, p[i].foff, p[i].len) == -1)
        return -1;
      i++;
      continue;
    }
    /* Gather the run of memory parts into one sendmsg. */
    while (i < n && p[i].fd < 0 && k < 64) {
      iov[k].iov_base = (void *) p[i].buf;
      iov[k].iov_len = p[i].len;
      k++;
      i++;
    }
    /* MSG_MORE: on TCP, the chunk header waits for the file data. */
    if (sendv_flags (c, iov, k, i < n ? MSG_MORE : 0) == -1)
      return -1;
  }
  return 0;
}

void
worker_buf_free (struct worker_buf *wb)
{
  if (wb->data)
    munmap (wb->data, wb->cap);   /* protocol.c: ensure_buf */
  wb->data = NULL;
  wb->cap = 0;
  if (wb->pipe[0] >= 0) {
    close (wb->pipe[0]);
    close (wb->pipe[1]);
  }
  wb->pipe[0] = wb->pipe[1] = -1;
  wb->pipe_cap = 0;
}

/* The worker's pipe, made on first use, as large as allowed up to 1 MiB
 * so that a 1 MiB payload moves in one pair of splices. */
bool
worker_buf_pipe (struct worker_buf *wb)
{
  int sz;

  if (wb->pipe_cap)
    return true;
  if (wb->no_pipe || pipe2 (wb->pipe, O_CLOEXEC) == -1) {
    wb->no_pipe = true;
    return false;
  }
  fcntl (wb->pipe[0], F_SETPIPE_SZ, 1 << 20);
  sz = fcntl (wb->pipe[0], F_GETPIPE_SZ);
  wb->pipe_cap = sz > 0 ? (size_t) sz : 65536;
  return true;
}

int
conn_splice_payload (struct connection *c, struct worker_buf *wb, int fd,
                     uint64_t foff, uint64_t n, int *werr)
{
  loff_t o = (loff_t) foff;
  char scrap[4096];

  *werr = 0;
  while (n > 0) {
    size_t want = n < wb->pipe_cap ? (size_t) n : wb->pipe_cap;
    ssize_t k = splice (c->fd, NULL, wb->pipe[1], NULL, want, SPLICE_F_MOVE);

    if (k == 0) {
      errno = ECONNRESET;
      return CONN_ERROR;
    }
    if (k < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int w = conn_wait_readable (c);     /* receive timeout: shutdown? */

        if (w != CONN_OK)
          return w;
        continue;
      }
      return CONN_ERROR;
    }
    n -= (uint64_t) k;
    /* Empty the pipe: into the file, or after a write error, away. */
    while (k > 0) {
      ssize_t w;

      if (*werr == 0) {
        w = splice (wb->pipe[0], NULL, fd, &o, (size_t) k, SPLICE_F_MOVE);
        if (w < 0 && errno == EINTR)
          continue;
        if (w <= 0) {
          *werr = w < 0 ? errno : EIO;
          continue;
        }
      }
      else {
        w = read (wb->pipe[0], scrap, (size_t) k < sizeof scrap
                                       ? (size_t) k : sizeof scrap);
        if (w < 0 && errno == EINTR)
          continue;
        if (w <= 0)
          return CONN_ERROR;       /* a pipe we cannot read: give up */
      }
      k -= w;
    }
  }
  return CONN_OK;
}

/* One worker: read a request, run it, repeat. */
static void *
worker (void *arg)
{
  struct connection *c = arg;
  struct worker_buf wb = WORKER_BUF_INIT;
  struct request req;

  wb.no_pipe = c->srv->no_pipes;
  for (;;) {
    int r;

    lock (&c->read_lock);
    if (conn_get_status (c) < 1) {
      unlock (&c->read_lock);
      break;
    }
    r = proto_recv_request (c, &req, &wb);
    if (r != CONN_OK) {
      if (r == CONN_ERROR) {
        if (errno != ECONNRESET && errno != EPROTO)
          nbd_error ("connection %u: %s", c->id,
                     errno == ETIMEDOUT ? "timed out" : strerror (errno));
        conn_set_status (c, -1);
      }
      else
        conn_set_status (c, 0);
      unlock (&c->read_lock);
      break;
    }
    unlock (&c->read_lock);

    if (proto_handle_request (c, &req, &wb) == -1) {
      nbd_debug ("connection %u: cannot send a reply: %s", c->id,
                 strerror (errno));
      conn_set_status (c, -1);
      break;
    }
  }
  worker_buf_free (&wb);
  return NULL;
}

void
conn_handle (struct nbd_server *srv, int fd, unsigned id)
{
  struct connection c;
  pthread_t *th = NULL;
  unsigned i, started = 0;

  memset (&c, 0, sizeof c);
  c.srv = srv;
  c.exp = srv->exp;
  c.fd = fd;
  c.id = id;
  c.status = 1;
  pthread_mutex_init (&c.read_lock, NULL);
  pthread_mutex_init (&c.write_lock, NULL);
  pthread_mutex_init (&c.status_lock, NULL);

  nbd_debug ("connection %u: open", id);
  if (srv->handshake_ms)
    c.deadline_ns = now_ns () + (int64_t) srv->handshake_ms * 1000000;
  if (handshake_run (&c) == -1)
    goto out;
  c.deadline_ns = 0;
  {
    /* Payload reads block (recv_all); wake up every second to look at the
     * quit fd, so that a client stalling mid-payload cannot hold up a
     * shutdown. */
    struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };

    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }

  if (srv->threads > 1) {
    th = calloc (srv->threads - 1, sizeof *th);
    for (i = 0; th && i < srv->threads - 1; i++) {
      if (pthread_create (&th[i], NULL, worker, &c) != 0) {
        nbd_error ("connection %u: cannot start a worker thread", id);
        break;
      }
      started++;
    }
  }
  worker (&c);
  for (i = 0; i < started; i++)
    pthread_join (th[i], NULL);
  free (th);

 out:
  nbd_debug ("connection %u: closed", id);
  tls_close (&c);
  close (fd);
  free (c.meta);
  export_put (c.exp);
  pthread_mutex_destroy (&c.read_lock);
  pthread_mutex_destroy (&c.write_lock);
  pthread_mutex_destroy (&c.status_lock);
}
