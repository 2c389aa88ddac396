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
 * Sending uses MSG_NOSIGNAL: a vanished client is an EPIPE, not a signal.
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
static int
wait_readable (struct connection *c)
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

int
conn_recv (struct connection *c, void *buf, size_t n)
{
  uint8_t *p = buf;
  size_t got = 0;

  while (got < n) {
    ssize_t r = recv (c->fd, p + got, n - got, MSG_DONTWAIT);

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
      int w = wait_readable (c);

      if (w != CONN_OK)
        return w;
      continue;
    }
    return CONN_ERROR;
  }
  return CONN_OK;
}

int
conn_skip (struct connection *c, uint64_t n)
{
  char buf[65536];

  while (n > 0) {
    size_t k = n < sizeof buf ? (size_t) n : sizeof buf;
    int r = conn_recv (c, buf, k);

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

int
conn_sendv (struct connection *c, struct iovec *iov, int iovcnt)
{
  while (iovcnt > 0) {
    struct msghdr msg;
    ssize_t r;
    int cnt = iovcnt < IOV_MAX ? iovcnt : IOV_MAX;

    memset (&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t) cnt;
    r = sendmsg (c->fd, &msg, MSG_NOSIGNAL);
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
conn_send (struct connection *c, const void *buf, size_t n)
{
  struct iovec iov = { .iov_base = (void *) buf, .iov_len = n };

  return conn_sendv (c, &iov, 1);
}

/* One worker: read a request, run it, repeat. */
static void *
worker (void *arg)
{
  struct connection *c = arg;
  struct worker_buf wb = { NULL, 0 };
  struct request req;

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
  free (wb.data);
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
  close (fd);
  free (c.meta);
  pthread_mutex_destroy (&c.read_lock);
  pthread_mutex_destroy (&c.write_lock);
  pthread_mutex_destroy (&c.status_lock);
}
