/* rawtrack - I/O backend: a data file behind an NBD server (libnbd).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct io_nbd - one or more libnbd connections to one export
 * named by an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix:// only),
 * a dispatcher thread per connection, the mapping of the backend ops to
 * NBD commands, request timeouts and reconnection.
 *
 * Requests: every op is issued with libnbd's asynchronous calls; a large
 * read or write is cut at the server's maximum request size and all
 * pieces are sent before the first is waited for; pwrite_batch sends
 * every buffer, then waits.  The caller waits on a per-request waiter
 * until libnbd retires each command (the completion callback records the
 * error, the free callback - which libnbd calls exactly once, also when a
 * call fails or the handle is closed - counts it done).
 *
 * Two ways to share connections between the caller's threads:
 *
 * Pool (the server offers NBD_FLAG_CAN_MULTI_CONN): up to
 * RAWTRACK_NBD_CONNECTIONS (default 8) connections; a caller takes a free
 * one for itself (pool_lock/pool_cv), issues its command(s) and drives
 * the handle itself - poll, nbd_aio_notify_read/write - until they are
 * retired, then gives the connection back.  No other thread is involved:
 * one request costs its system calls and the one wakeup when the reply
 * arrives (a dispatcher thread costs two more wakeups and the handle
 * lock's contention, which made a request through `serve` cost several
 * times the CPU of the same request to the storage server directly).
 * Requests in flight = connections in use.  One FLUSH on any connection
 * covers the acknowledged writes of all of them (the multi-conn promise),
 * as needed for durability.
 *
 * Shared (no multi-conn: one connection): any number of threads issue on
 * the one handle (libnbd serialises only the issuing) and sleep on their
 * waiter; a dispatcher thread polls the libnbd socket (direction from
 * nbd_aio_get_direction) and an eventfd and calls
 * nbd_aio_notify_read/write.  libnbd sends a new request from the
 * issuing thread when it can; only when part of it is left to send
 * (direction includes WRITE) is the dispatcher poked to wait for POLLOUT
 * - a ready handle always wants to read, so replies need no poke.
 * Completion callbacks run there, under libnbd's handle lock, and touch
 * only the waiter.
 *
 * Durability (the crash-safety invariant, end to end): the tracking code
 * (lib/track.c) makes the bitmap bits durable in the local image file
 * before it lets guest-io.c call pwrite here, so no NBD WRITE is sent
 * before its bits are on stable storage.  Here: flush sends NBD_CMD_FLUSH
 * (after every write it covers was acknowledged: ops wait for their
 * replies); RAWTRACK_IO_FUA maps to NBD_CMD_FLAG_FUA when the server
 * offers it, else to WRITE then FLUSH.  A server that offers no FLUSH
 * (no write cache) makes flush a no-op, as QEMU's NBD client does.
 *
 * Faults: a request that gets no reply within RAWTRACK_NBD_TIMEOUT
 * seconds (default 60; 0: wait forever) shuts the connection's socket
 * down, which makes libnbd fail every request in flight on it; those
 * callers get ETIMEDOUT, the others on that connection EIO.  Requests in
 * flight when a server goes away fail with EIO (whether such a write
 * reached the disk is unknown, as for a local EIO; its bitmap bits were
 * set before it was sent).  The next request on a dead connection
 * reconnects once (bounded by the same timeout); if that fails the
 * request fails with EIO at once.  So a restarted server is picked up
 * again without restarting `rawtrack serve`.
 *
 * Locking: conn->lock (a rwlock) is held shared while a command is
 * issued on conn->h and exclusively while the handle is replaced; it is
 * never held while waiting for a reply.  pool_lock protects the busy
 * flags of the pool; a connection taken from the pool belongs to its
 * taker alone until given back (conn->lock is then uncontended).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <libnbd.h>

#include "internal.h"
#include "arith.h"

#define MAX_CONN 16
#define DEFAULT_TIMEOUT_S 60
#define MAX_REQUEST (32u << 20)         /* the usual NBD limit */
#define ZERO_CHUNK (1u << 30)           /* compact headers: 32-bit lengths */

struct io_nbd;

struct nbd_conn {
  struct io_nbd *nb;
  pthread_rwlock_t lock;                /* see the note above */
  struct nbd_handle *h;                 /* NULL: not connected */
  int wake;                             /* eventfd: poke the dispatcher */
  pthread_t thread;
  bool running;                         /* dispatcher started, not joined */
  atomic_bool stop;                     /* dispatcher: exit */
  atomic_bool dead;                     /* the handle died: reconnect */
  bool busy;                            /* pool: taken (pool_lock) */
};

struct io_nbd {
  struct rawtrack_io io;                /* first */
  char *uri;
  bool writable;
  bool allow_local;                     /* URI may name local files */
  char *tls_certificates, *tls_psk_file;
  unsigned timeout_ms;
  uint64_t size;
  uint32_t min_block, pref_block, max_req;
  bool can_flush, can_fua, can_zero, can_fast_zero, can_trim, have_alloc;
  unsigned nconn;
  atomic_uint next;
  bool pool;                            /* see the note: pool or shared */
  pthread_mutex_t pool_lock;
  pthread_cond_t pool_cv;
  struct nbd_conn conn[MAX_CONN];
};

/* Process-wide TLS credentials for URIs that do not name their own
 * (rawtrack_nbd_set_tls). */
static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static char *tls_certs_default, *tls_psk_default;

/* ---- waiting for replies ------------------------------------------------ */
struct waiter {
  pthread_mutex_t m;
  pthread_cond_t cv;
  unsigned pending;
  int err;
};

/* One command's bookkeeping, alive until libnbd calls free_cb. */
struct cmd {
  struct waiter *w;
  bool called;
  /* block status: the first extent */
  uint64_t ext_len;
  uint32_t ext_flags;
  bool have_ext;
};

static void
waiter_init (struct waiter *w)
{
  pthread_mutex_init (&w->m, NULL);
  pthread_cond_init (&w->cv, NULL);
  w->pending = 0;
  w->err = 0;
}

static void
waiter_destroy (struct waiter *w)
{
  pthread_mutex_destroy (&w->m);
  pthread_cond_destroy (&w->cv);
}

static int
complete_cb (void *opaque, int *error)
{
  struct cmd *c = opaque;

  c->called = true;
  if (*error) {
    pthread_mutex_lock (&c->w->m);
    if (!c->w->err)
      c->w->err = *error;
    pthread_mutex_unlock (&c->w->m);
  }
  return 1;                              /* retire the command */
}

static void
free_cb (void *opaque)
{
  struct cmd *c = opaque;
  struct waiter *w = c->w;

  pthread_mutex_lock (&w->m);
  if (!c->called && !w->err)
    w->err = ENOTCONN;                  /* never ran: the handle went */
  w->pending--;
  pthread_cond_broadcast (&w->cv);
  pthread_mutex_unlock (&w->m);
}

static int
extent_cb (void *opaque, const char *ctx, uint64_t offset, uint32_t *e,
           size_t n, int *error)
{
  struct cmd *c = opaque;

  if (strcmp (ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0 && n >= 2 &&
      !c->have_ext) {
    c->ext_len = e[0];
    c->ext_flags = e[1];
    c->have_ext = true;
  }
  return 0;
}

/* ---- connections ---------------------------------------------------------- */
static void *
dispatcher (void *arg)
{
  struct nbd_conn *c = arg;
  struct nbd_handle *h = c->h;

  while (!atomic_load (&c->stop)) {
    struct pollfd p[2];
    unsigned dir;
    int fd, r;

    if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h))
      break;
    fd = nbd_aio_get_fd (h);
    dir = nbd_aio_get_direction (h);
    if (fd < 0)
      break;
    p[0].fd = fd;
    p[0].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                  ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
    p[0].revents = 0;
    p[1].fd = c->wake;
    p[1].events = POLLIN;
    p[1].revents = 0;
    r = poll (p, 2, -1);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p[1].revents) {
      uint64_t v;

      if (read (c->wake, &v, sizeof v) == -1) {
        /* EAGAIN: another poke consumed it */
      }
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
      nbd_aio_notify_read (h);
    else if (p[0].revents & POLLOUT)
      nbd_aio_notify_write (h);
  }
  if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h))
    atomic_store (&c->dead, true);
  return NULL;
}

static int64_t
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One step of driving h in this thread (no dispatcher running): poll
 * its socket for up to timeout ms (-1: no limit) in the direction libnbd
 * wants, then tell libnbd what happened.  -1 with errno ENOTCONN when the
 * handle has no socket, or with poll's errno; 0 when nothing happened
 * (timeout, EINTR); 1 after a notification, whose result (0, or -1 when
 * libnbd failed: see nbd_get_errno) goes to *notified if not NULL. */
static int
poll_notify (struct nbd_handle *h, int timeout, int *notified)
{
  struct pollfd p = { .fd = nbd_aio_get_fd (h) };
  unsigned dir;
  int r;

  if (p.fd < 0) {
    errno = ENOTCONN;
    return -1;
  }
  dir = nbd_aio_get_direction (h);
  p.events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
             ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
  r = poll (&p, 1, timeout);
  if (r == -1)
    return errno == EINTR ? 0 : -1;
  if (r == 0)
    return 0;
  if (p.revents & (POLLIN | POLLHUP | POLLERR))
    r = nbd_aio_notify_read (h);
  else if (p.revents & POLLOUT)
    r = nbd_aio_notify_write (h);
  else
    r = 0;
  if (notified)
    *notified = r;
  return 1;
}

/* Drive the handle (no dispatcher running) until it is ready, dead or
 * the deadline passes.  0 or -1 with errno. */
static int
drive_until_ready (struct nbd_handle *h, unsigned timeout_ms)
{
  int64_t deadline = timeout_ms ? now_ms () + timeout_ms : 0;

  while (!nbd_aio_is_ready (h)) {
    int notified = 0, t = -1;

    if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h)) {
      errno = nbd_get_errno () ? nbd_get_errno () : ECONNREFUSED;
      return -1;
    }
    if (deadline) {
      int64_t left = deadline - now_ms ();

      if (left <= 0) {
        errno = ETIMEDOUT;
        return -1;
      }
      t = (int) left;
    }
    if (poll_notify (h, t, &notified) == -1 || notified == -1)
      return -1;
  }
  return 0;
}

/* A new handle connected to the URI, or NULL with a message in err. */
static struct nbd_handle *
connect_one (struct io_nbd *nb, char *err, size_t errlen)
{
  struct nbd_handle *h = nbd_create ();
  const char *certs, *psk;

  if (!h) {
    snprintf (err, errlen, "%s", nbd_get_error ());
    return NULL;
  }
  /* The URI decides TLS (nbds: required); only TCP and Unix sockets. */
  nbd_set_uri_allow_transports (h, LIBNBD_ALLOW_TRANSPORT_TCP |
                                   LIBNBD_ALLOW_TRANSPORT_UNIX);
  nbd_set_uri_allow_local_file (h, nb->allow_local);
  nbd_set_handle_name (h, "rawtrack");
  pthread_mutex_lock (&tls_lock);
  certs = nb->tls_certificates;
  psk = nb->tls_psk_file;
  if (certs)
    nbd_set_tls_certificates (h, certs);
  if (psk)
    nbd_set_tls_psk_file (h, psk);
  pthread_mutex_unlock (&tls_lock);
  nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION);
  if (nbd_aio_connect_uri (h, nb->uri) == -1) {
    snprintf (err, errlen, "%s", nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  if (drive_until_ready (h, nb->timeout_ms) == -1) {
    const char *m = nbd_get_error ();

    if (errno == ETIMEDOUT)
      snprintf (err, errlen, "no answer from the server within %u s",
                nb->timeout_ms / 1000);
    else
      snprintf (err, errlen, "%s", m && *m ? m : strerror (errno));
    nbd_close (h);
    return NULL;
  }
  return h;
}

static int
conn_start (struct nbd_conn *c, struct nbd_handle *h)
{
  c->h = h;
  atomic_store (&c->stop, false);
  atomic_store (&c->dead, false);
  if (c->nb->pool)
    return 0;                           /* its takers drive it */
  if (pthread_create (&c->thread, NULL, dispatcher, c) != 0) {
    c->h = NULL;
    errno = EAGAIN;
    return -1;
  }
  c->running = true;
  return 0;
}

static void
poke (struct nbd_conn *c)
{
  uint64_t one = 1;

  if (write (c->wake, &one, sizeof one) == -1) {
    /* counter full: a wakeup is pending anyway */
  }
}

/* Stop the dispatcher, disconnect politely (bounded), close the handle.
 * Caller holds c->lock exclusively (or is the only user). */
static void
conn_stop (struct nbd_conn *c, bool polite)
{
  if (c->running) {
    atomic_store (&c->stop, true);
    poke (c);
    pthread_join (c->thread, NULL);
    c->running = false;
  }
  if (c->h) {
    if (polite && nbd_aio_is_ready (c->h) &&
        nbd_aio_disconnect (c->h, 0) == 0) {
      int64_t deadline = now_ms () + 2000;

      while (!nbd_aio_is_closed (c->h) && !nbd_aio_is_dead (c->h) &&
             now_ms () < deadline)
        if (poll_notify (c->h, 100, NULL) == -1 && errno == ENOTCONN)
          break;                        /* no socket; poll errors retry */
    }
    nbd_close (c->h);
    c->h = NULL;
  }
}

/* Reconnect a dead connection (one attempt).  0 or -1 with errno. */
static int
conn_revive (struct nbd_conn *c)
{
  struct nbd_handle *h;
  char err[512];
  int r = 0;

  pthread_rwlock_wrlock (&c->lock);
  if (c->h && !atomic_load (&c->dead) && !nbd_aio_is_dead (c->h) &&
      !nbd_aio_is_closed (c->h))
    goto out;                           /* someone else did it */
  conn_stop (c, false);
  h = connect_one (c->nb, err, sizeof err);
  if (!h || conn_start (c, h) == -1) {
    if (h)
      nbd_close (h);
    errno = EIO;
    r = -1;
  }
 out:
  pthread_rwlock_unlock (&c->lock);
  return r;
}

/* After a failure: if the handle died, mark the connection for revival
 * (the dispatcher does too, but may not have run yet). */
static void
note_dead (struct nbd_conn *c)
{
  pthread_rwlock_rdlock (&c->lock);
  if (c->h && (nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h)))
    atomic_store (&c->dead, true);
  pthread_rwlock_unlock (&c->lock);
}

static void release (struct io_nbd *nb, struct nbd_conn *c);

/* Pool mode: an idle connection has no dispatcher watching it, so a
 * server that went away is noticed here, before a command is sent: an
 * idle ready handle has nothing to read, so a readable socket means EOF
 * (or junk), which libnbd turns into a dead handle.  One poll(2) with no
 * wait. */
static void
check_idle (struct nbd_conn *c)
{
  struct pollfd p = { .fd = nbd_aio_get_fd (c->h), .events = POLLIN };

  if (p.fd < 0 || nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h)) {
    atomic_store (&c->dead, true);
    return;
  }
  if (poll (&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
    nbd_aio_notify_read (c->h);
    if (!nbd_aio_is_ready (c->h))
      atomic_store (&c->dead, true);
  }
}

/* The connection for the next command(s): in pool mode a free one, taken
 * until release(); otherwise the next in turn.  A dead connection is
 * revived once first.  NULL with errno (and the connection given back)
 * when that fails. */
static struct nbd_conn *
acquire (struct io_nbd *nb)
{
  struct nbd_conn *c;

  if (!nb->pool)
    c = &nb->conn[atomic_fetch_add (&nb->next, 1) % nb->nconn];
  else {
    unsigned i, start = atomic_fetch_add (&nb->next, 1);

    pthread_mutex_lock (&nb->pool_lock);
    for (;;) {
      for (i = 0; i < nb->nconn; i++)
        if (!nb->conn[(start + i) % nb->nconn].busy)
          break;
      if (i < nb->nconn)
        break;
      pthread_cond_wait (&nb->pool_cv, &nb->pool_lock);
    }
    c = &nb->conn[(start + i) % nb->nconn];
    c->busy = true;
    pthread_mutex_unlock (&nb->pool_lock);
  }
  if (nb->pool && c->h)
    check_idle (c);
  if (atomic_load (&c->dead) && conn_revive (c) == -1) {
    int e = errno;

    release (nb, c);
    errno = e;
    return NULL;
  }
  return c;
}

static void
release (struct io_nbd *nb, struct nbd_conn *c)
{
  if (!nb->pool)
    return;
  pthread_mutex_lock (&nb->pool_lock);
  c->busy = false;
  pthread_cond_signal (&nb->pool_cv);
  pthread_mutex_unlock (&nb->pool_lock);
}

/* ---- issuing -------------------------------------------------------------- */
enum op { OP_READ, OP_WRITE, OP_FLUSH, OP_ZERO, OP_TRIM, OP_STATUS };

/* Issue one command on c (holding c->lock shared).  The waiter's pending
 * count is raised first; libnbd's free callback lowers it, also when the
 * call fails. */
static int
issue (struct nbd_conn *c, enum op op, void *buf, uint64_t count,
       uint64_t offset, uint32_t flags, struct cmd *cmd)
{
  nbd_completion_callback done = { .callback = complete_cb,
                                   .user_data = cmd, .free = free_cb };
  int64_t r = -1;

  pthread_mutex_lock (&cmd->w->m);
  cmd->w->pending++;
  pthread_mutex_unlock (&cmd->w->m);
  if (!c->h) {
    /* Not connected: count it done, with the error. */
    cmd->called = false;
    free_cb (cmd);
    return -1;
  }
  switch (op) {
  case OP_READ:
    r = nbd_aio_pread (c->h, buf, count, offset, done, 0);
    break;
  case OP_WRITE:
    r = nbd_aio_pwrite (c->h, buf, count, offset, done, flags);
    break;
  case OP_FLUSH:
    r = nbd_aio_flush (c->h, done, 0);
    break;
  case OP_ZERO:
    r = nbd_aio_zero (c->h, count, offset, done, flags);
    break;
  case OP_TRIM:
    r = nbd_aio_trim (c->h, count, offset, done, flags);
    break;
  case OP_STATUS: {
    nbd_extent_callback ext = { .callback = extent_cb, .user_data = cmd };

    r = nbd_aio_block_status (c->h, count, offset, ext, done,
                              LIBNBD_CMD_FLAG_REQ_ONE);
    break;
  }
  }
  if (r != -1 && !c->nb->pool &&
      (nbd_aio_get_direction (c->h) & LIBNBD_AIO_DIRECTION_WRITE))
    poke (c);                  /* the request is not all sent: POLLOUT */
  if (r == -1) {
    /* libnbd has called free_cb already (the callback was not run);
     * keep libnbd's reason (EINVAL, ENOTCONN, ...). */
    int e = nbd_get_errno ();

    pthread_mutex_lock (&cmd->w->m);
    cmd->w->err = e ? e : ENOTCONN;
    pthread_mutex_unlock (&cmd->w->m);
    return -1;
  }
  return 0;
}

/* Wait until every command of w is retired or the timeout passes; on a
 * timeout shut the connections' sockets down (libnbd then fails what is
 * in flight) and still wait for the retirements, since they may write
 * into caller memory until then. */
static void
wait_all (struct io_nbd *nb, struct waiter *w, struct nbd_conn **used,
          size_t nused)
{
  struct timespec ts;
  bool timed_out = false;
  size_t i;

  clock_gettime (CLOCK_REALTIME, &ts);
  ts.tv_sec += nb->timeout_ms / 1000;
  pthread_mutex_lock (&w->m);
  while (w->pending > 0) {
    if (nb->timeout_ms == 0 || timed_out)
      pthread_cond_wait (&w->cv, &w->m);
    else if (pthread_cond_timedwait (&w->cv, &w->m, &ts) == ETIMEDOUT &&
             w->pending > 0) {
      timed_out = true;
      w->err = ETIMEDOUT;
      pthread_mutex_unlock (&w->m);
      for (i = 0; i < nused; i++) {
        pthread_rwlock_rdlock (&used[i]->lock);
        if (used[i]->h && nbd_aio_get_fd (used[i]->h) >= 0)
          shutdown (nbd_aio_get_fd (used[i]->h), SHUT_RDWR);
        pthread_rwlock_unlock (&used[i]->lock);
        poke (used[i]);
      }
      pthread_mutex_lock (&w->m);
    }
  }
  pthread_mutex_unlock (&w->m);
}

/* Pool mode: drive c's handle in this thread until every command of w is
 * retired.  After the timeout the socket is shut down (libnbd then fails
 * what is in flight) and the handle driven until it has retired them all,
 * since they may write into caller memory until then. */
static void
drive (struct io_nbd *nb, struct waiter *w, struct nbd_conn *c)
{
  int64_t deadline = nb->timeout_ms ? now_ms () + nb->timeout_ms : 0;
  struct nbd_handle *h = c->h;

  while (w->pending > 0 && h) {
    int fd, t = -1;

    if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h))
      break;                            /* libnbd retired everything */
    fd = nbd_aio_get_fd (h);
    if (fd < 0)
      break;
    if (deadline) {
      int64_t left = deadline - now_ms ();

      if (left <= 0) {
        pthread_mutex_lock (&w->m);
        w->err = ETIMEDOUT;
        pthread_mutex_unlock (&w->m);
        shutdown (fd, SHUT_RDWR);
        deadline = 0;                   /* now just wait for the failure */
        continue;
      }
      t = (int) left;
    }
    /* A failed notification: the dead check above decides. */
    if (poll_notify (h, t, NULL) == -1)
      break;
  }
  if (w->pending > 0) {
    /* The handle is gone with commands unretired: cannot happen with
     * libnbd's guarantees; fail them rather than wait forever. */
    pthread_mutex_lock (&w->m);
    if (!w->err)
      w->err = EIO;
    pthread_mutex_unlock (&w->m);
  }
}

/* Wait for the commands of w issued on c, in either mode. */
static void
finish (struct io_nbd *nb, struct waiter *w, struct nbd_conn *c)
{
  if (nb->pool)
    drive (nb, w, c);
  else
    wait_all (nb, w, &c, 1);
}

/* errno for the caller from a waiter's NBD error. */
static int
result (struct waiter *w)
{
  if (w->err == 0)
    return 0;
  switch (w->err) {
  case ENOTCONN: case ECONNRESET: case EPIPE: case ESHUTDOWN:
  case ECONNREFUSED: case ECONNABORTED:
    errno = EIO;                        /* the connection failed */
    break;
  default:
    errno = w->err;
  }
  return -1;
}

/* Run one command (or a run of pieces of one range) to completion.  A
 * dead connection is revived once before the command is sent. */
static int
run (struct io_nbd *nb, enum op op, uint8_t *buf, uint64_t count,
     uint64_t offset, uint32_t flags, uint64_t piece, struct cmd *status)
{
  struct nbd_conn *c;
  struct waiter w;
  struct cmd one, *cmds = &one;
  size_t n = 1, i;
  int r;

  if (op == OP_READ || op == OP_WRITE || op == OP_ZERO || op == OP_TRIM)
    n = count ? (size_t) ((count + piece - 1) / piece) : 1;
  if (n > 1 && !(cmds = calloc (n, sizeof *cmds))) {
    errno = ENOMEM;
    return -1;
  }
  if (!(c = acquire (nb))) {
    if (cmds != &one)
      free (cmds);
    return -1;
  }
  if (status)
    cmds = status;
  waiter_init (&w);
  pthread_rwlock_rdlock (&c->lock);
  for (i = 0; i < n; i++) {
    uint64_t o = i * piece, len = n == 1 ? count : MIN (piece, count - o);

    memset (&cmds[i], 0, sizeof cmds[i]);
    cmds[i].w = &w;
    if (issue (c, op, buf ? buf + o : NULL, len, offset + o, flags,
               &cmds[i]) == -1)
      break;
  }
  pthread_rwlock_unlock (&c->lock);
  finish (nb, &w, c);
  r = result (&w);
  if (r == -1)
    note_dead (c);
  release (nb, c);
  waiter_destroy (&w);
  if (cmds != &one && cmds != status)
    free (cmds);
  return r;
}

/* ---- the ops -------------------------------------------------------------- */
static int
nbd_pread_op (struct rawtrack_io *io, void *buf, uint64_t count,
              uint64_t offset)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  uint64_t n;

  if (offset >= nb->size) {
    memset (buf, 0, count);
    return 0;
  }
  n = MIN (count, nb->size - offset);
  if (n < count)
    memset ((uint8_t *) buf + n, 0, count - n);
  if (n == 0)
    return 0;
  return run (nb, OP_READ, buf, n, offset, 0, nb->max_req, NULL);
}

static int
nbd_flush_op (struct rawtrack_io *io)
{
  struct io_nbd *nb = (struct io_nbd *) io;

  if (!nb->writable || !nb->can_flush)
    return 0;
  return run (nb, OP_FLUSH, NULL, 0, 0, 0, 1, NULL);
}

static int
check_range (struct io_nbd *nb, uint64_t count, uint64_t offset)
{
  if (!nb->writable) {
    errno = EROFS;
    return -1;
  }
  if (offset > nb->size || count > nb->size - offset) {
    errno = ENOSPC;                     /* fixed size, as a block device */
    return -1;
  }
  return 0;
}

static int
nbd_pwrite_op (struct rawtrack_io *io, const void *buf, uint64_t count,
               uint64_t offset, unsigned flags)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  bool fua = (flags & RAWTRACK_IO_FUA) != 0;

  if (check_range (nb, count, offset) == -1)
    return -1;
  if (count == 0)
    return fua ? nbd_flush_op (io) : 0;
  if (run (nb, OP_WRITE, (uint8_t *) buf, count, offset,
           fua && nb->can_fua ? LIBNBD_CMD_FLAG_FUA : 0, nb->max_req,
           NULL) == -1)
    return -1;
  return fua && !nb->can_fua ? nbd_flush_op (io) : 0;
}

static int
nbd_pwrite_batch_op (struct rawtrack_io *io, const struct rawtrack_io_vec *v,
                     size_t nv)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  struct nbd_conn *c;
  struct waiter w;
  struct cmd *cmds;
  size_t i;
  int r;

  for (i = 0; i < nv; i++) {
    if (check_range (nb, v[i].count, v[i].offset) == -1)
      return -1;
    if (v[i].count > nb->max_req) {
      /* Rare (bitmap sectors are small): one by one. */
      for (i = 0; i < nv; i++)
        if (nbd_pwrite_op (io, v[i].buf, v[i].count, v[i].offset, 0) == -1)
          return -1;
      return 0;
    }
  }
  if (nv == 0)
    return 0;
  if (!(cmds = calloc (nv, sizeof *cmds))) {
    errno = ENOMEM;
    return -1;
  }
  if (!(c = acquire (nb))) {
    free (cmds);
    return -1;
  }
  waiter_init (&w);
  pthread_rwlock_rdlock (&c->lock);
  for (i = 0; i < nv; i++) {
    cmds[i].w = &w;
    if (issue (c, OP_WRITE, (void *) v[i].buf, v[i].count, v[i].offset, 0,
               &cmds[i]) == -1)
      break;
  }
  pthread_rwlock_unlock (&c->lock);
  finish (nb, &w, c);
  r = result (&w);
  if (r == -1)
    note_dead (c);
  release (nb, c);
  waiter_destroy (&w);
  free (cmds);
  return r;
}

static int
write_zeros_slowly (struct io_nbd *nb, uint64_t count, uint64_t offset,
                    unsigned flags)
{
  size_t bl = (size_t) MIN (count, (uint64_t) (4u << 20));
  uint8_t *z = calloc (1, bl ? bl : 1);
  int r = 0;

  if (!z) {
    errno = ENOMEM;
    return -1;
  }
  while (r == 0 && count > 0) {
    uint64_t n = MIN (count, (uint64_t) bl);

    r = nbd_pwrite_op (&nb->io, z, n, offset, 0);
    offset += n;
    count -= n;
  }
  free (z);
  if (r == 0 && (flags & RAWTRACK_IO_FUA))
    r = nbd_flush_op (&nb->io);
  return r;
}

static int
nbd_zero_op (struct rawtrack_io *io, uint64_t count, uint64_t offset,
             unsigned flags)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  uint32_t f = 0;

  if (check_range (nb, count, offset) == -1)
    return -1;
  if (count == 0)
    return 0;
  if (!nb->can_zero || ((flags & RAWTRACK_IO_FAST_ZERO) && !nb->can_fast_zero)) {
    if (flags & RAWTRACK_IO_FAST_ZERO) {
      errno = ENOTSUP;
      return -1;
    }
    return write_zeros_slowly (nb, count, offset, flags);
  }
  if (!(flags & RAWTRACK_IO_MAY_TRIM))
    f |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (flags & RAWTRACK_IO_FAST_ZERO)
    f |= LIBNBD_CMD_FLAG_FAST_ZERO;
  if ((flags & RAWTRACK_IO_FUA) && nb->can_fua)
    f |= LIBNBD_CMD_FLAG_FUA;
  if (run (nb, OP_ZERO, NULL, count, offset, f, ZERO_CHUNK, NULL) == -1)
    return -1;
  return (flags & RAWTRACK_IO_FUA) && !nb->can_fua ? nbd_flush_op (io) : 0;
}

static int
nbd_trim_op (struct rawtrack_io *io, uint64_t count, uint64_t offset)
{
  struct io_nbd *nb = (struct io_nbd *) io;

  if (check_range (nb, count, offset) == -1)
    return -1;
  if (!nb->can_trim || count == 0)
    return 0;                           /* advisory */
  return run (nb, OP_TRIM, NULL, count, offset, 0, ZERO_CHUNK, NULL);
}

static int64_t
nbd_get_size_op (struct rawtrack_io *io)
{
  return (int64_t) ((struct io_nbd *) io)->size;
}

static unsigned
nbd_caps_op (struct rawtrack_io *io)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  unsigned c = RAWTRACK_IO_IS_BLOCKDEV;  /* fixed size, like a device */

  if (nb->writable)
    c |= RAWTRACK_IO_CAN_WRITE;
  if (nb->writable && nb->can_zero)
    c |= RAWTRACK_IO_CAN_ZERO;
  if (nb->writable && nb->can_trim)
    c |= RAWTRACK_IO_CAN_TRIM;
  if (nb->can_fua)
    c |= RAWTRACK_IO_CAN_FUA;
  if (nb->have_alloc)
    c |= RAWTRACK_IO_CAN_EXTENTS;
  return c;
}

static int
nbd_block_size_op (struct rawtrack_io *io, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  struct io_nbd *nb = (struct io_nbd *) io;

  *minimum = nb->min_block;
  *preferred = nb->pref_block;
  *maximum = nb->max_req;
  return 0;
}

static int64_t
nbd_extent_op (struct rawtrack_io *io, uint64_t offset, uint64_t count,
               int *is_data)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  struct cmd c;

  if (count == 0) {
    errno = EINVAL;
    return -1;
  }
  *is_data = 1;
  if (offset >= nb->size) {
    *is_data = 0;                       /* past the end reads as zeros */
    return (int64_t) count;
  }
  count = MIN (count, nb->size - offset);
  if (!nb->have_alloc)
    return (int64_t) count;
  memset (&c, 0, sizeof c);
  if (run (nb, OP_STATUS, NULL, MIN (count, (uint64_t) ZERO_CHUNK), offset,
           0, 1, &c) == -1)
    return -1;
  if (!c.have_ext || c.ext_len == 0)
    return (int64_t) count;
  /* A hole counts only when it also reads as zeros. */
  *is_data = !((c.ext_flags & LIBNBD_STATE_HOLE) &&
               (c.ext_flags & LIBNBD_STATE_ZERO));
  return (int64_t) MIN (c.ext_len, count);
}

static void
nbd_close_op (struct rawtrack_io *io)
{
  struct io_nbd *nb = (struct io_nbd *) io;
  unsigned i;

  for (i = 0; i < nb->nconn; i++) {
    struct nbd_conn *c = &nb->conn[i];

    conn_stop (c, true);
    if (c->wake >= 0)
      close (c->wake);
    pthread_rwlock_destroy (&c->lock);
  }
  pthread_mutex_destroy (&nb->pool_lock);
  pthread_cond_destroy (&nb->pool_cv);
  free (nb->uri);
  free (nb->tls_certificates);
  free (nb->tls_psk_file);
  free (nb);
}

static const struct rawtrack_io_ops nbd_ops = {
  .struct_size = sizeof (struct rawtrack_io_ops),
  .name = "nbd",
  .pread = nbd_pread_op,
  .pwrite = nbd_pwrite_op,
  .flush = nbd_flush_op,
  .zero = nbd_zero_op,
  .trim = nbd_trim_op,
  .get_size = nbd_get_size_op,
  .close = nbd_close_op,
  .caps = nbd_caps_op,
  .block_size = nbd_block_size_op,
  .extent = nbd_extent_op,
  .pwrite_batch = nbd_pwrite_batch_op,
};

/* ---- opening -------------------------------------------------------------- */
RAWTRACK_API int
rawtrack_is_nbd_uri (const char *name)
{
  static const char *const schemes[] = {
    "nbd://", "nbds://", "nbd+unix://", "nbds+unix://",
  };
  size_t i;

  if (!name)
    return 0;
  for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncmp (name, schemes[i], strlen (schemes[i])) == 0)
      return 1;
  return 0;
}

RAWTRACK_API int
rawtrack_nbd_set_tls (const char *certificates, const char *psk_file)
{
  char *c = certificates ? strdup (certificates) : NULL;
  char *p = psk_file ? strdup (psk_file) : NULL;

  if ((certificates && !c) || (psk_file && !p)) {
    free (c);
    free (p);
    rt_set_error (ENOMEM, "out of memory");
    return -1;
  }
  pthread_mutex_lock (&tls_lock);
  free (tls_certs_default);
  free (tls_psk_default);
  tls_certs_default = c;
  tls_psk_default = p;
  pthread_mutex_unlock (&tls_lock);
  return 0;
}

static unsigned
env_uint (const char *name, unsigned dflt, unsigned max)
{
  const char *s = getenv (name);
  char *end;
  unsigned long v;

  if (!s || !*s)
    return dflt;
  errno = 0;
  v = strtoul (s, &end, 10);
  if (errno || *end || v > max)
    return dflt;
  return (unsigned) v;
}

struct rawtrack_io *
io_nbd_open (const char *uri, unsigned flags, bool allow_local)
{
  struct io_nbd *nb;
  struct nbd_handle *h;
  char err[512];
  unsigned i, want;
  int64_t size, b;

  if (!rawtrack_is_nbd_uri (uri)) {
    rt_set_error (EINVAL, "'%s' is not an NBD URI (nbd://, nbds://, "
                  "nbd+unix://, nbds+unix://)", uri ? uri : "");
    return NULL;
  }
  nb = calloc (1, sizeof *nb);
  if (!nb || !(nb->uri = strdup (uri))) {
    free (nb);
    rt_set_error (ENOMEM, "out of memory");
    return NULL;
  }
  nb->io.ops = &nbd_ops;
  pthread_mutex_init (&nb->pool_lock, NULL);
  pthread_cond_init (&nb->pool_cv, NULL);
  nb->writable = (flags & RAWTRACK_IO_RDWR) != 0;
  nb->allow_local = allow_local;
  nb->timeout_ms = env_uint ("RAWTRACK_NBD_TIMEOUT", DEFAULT_TIMEOUT_S,
                             86400) * 1000;
  pthread_mutex_lock (&tls_lock);
  nb->tls_certificates = tls_certs_default ? strdup (tls_certs_default) : NULL;
  nb->tls_psk_file = tls_psk_default ? strdup (tls_psk_default) : NULL;
  pthread_mutex_unlock (&tls_lock);
  for (i = 0; i < MAX_CONN; i++) {
    nb->conn[i].nb = nb;
    nb->conn[i].wake = -1;
  }

  h = connect_one (nb, err, sizeof err);
  if (!h) {
    rt_set_error (EIO, "NBD data file %s: %s", uri, err);
    goto fail;
  }
  size = nbd_get_size (h);
  if (size < 0) {
    rt_set_error (EIO, "NBD data file %s: %s", uri, nbd_get_error ());
    nbd_close (h);
    goto fail;
  }
  nb->size = (uint64_t) size;
  if (nb->writable && nbd_is_read_only (h) == 1) {
    rt_set_error (EROFS, "NBD data file %s: the server exports it "
                  "read-only", uri);
    nbd_close (h);
    goto fail;
  }
  nb->can_flush = nbd_can_flush (h) == 1;
  nb->can_fua = nbd_can_fua (h) == 1;
  nb->can_zero = nbd_can_zero (h) == 1;
  nb->can_fast_zero = nbd_can_fast_zero (h) == 1;
  nb->can_trim = nbd_can_trim (h) == 1;
  nb->have_alloc = nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  b = nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM);
  nb->min_block = b > 0 ? (uint32_t) b : 1;
  b = nbd_get_block_size (h, LIBNBD_SIZE_PREFERRED);
  nb->pref_block = b > 0 ? (uint32_t) b : 4096;
  b = nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM);
  nb->max_req = b > 0 && b < MAX_REQUEST ? (uint32_t) b : MAX_REQUEST;
  if (nb->max_req < nb->min_block)
    nb->max_req = nb->min_block;

  want = 1;
  if (nbd_can_multi_conn (h) == 1)
    want = env_uint ("RAWTRACK_NBD_CONNECTIONS", 8, MAX_CONN);
  if (want == 0)
    want = 1;
  nb->pool = want > 1;
  for (i = 0; i < want; i++) {
    struct nbd_conn *c = &nb->conn[i];

    pthread_rwlock_init (&c->lock, NULL);
    nb->nconn = i + 1;
    c->wake = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake < 0) {
      rt_set_error (errno, "eventfd: %s", strerror (errno));
      if (i == 0)
        nbd_close (h);
      goto fail;
    }
    if (i > 0 && !(h = connect_one (nb, err, sizeof err))) {
      /* Fewer connections than offered still work. */
      close (c->wake);
      pthread_rwlock_destroy (&c->lock);
      nb->nconn = i;
      break;
    }
    if (conn_start (c, h) == -1) {
      rt_set_error (errno, "cannot start a thread");
      nbd_close (h);
      goto fail;
    }
  }
  if (nb->pool && nb->nconn == 1) {
    /* Only one connection could be made: share it (dispatcher). */
    nb->pool = false;
    if (conn_start (&nb->conn[0], nb->conn[0].h) == -1) {
      rt_set_error (errno, "cannot start a thread");
      goto fail;
    }
  }
  return &nb->io;

 fail:
  nbd_close_op (&nb->io);
  return NULL;
}

RAWTRACK_API struct rawtrack_io *
rawtrack_io_nbd_open (const char *uri, unsigned flags)
{
  rt_clear_error ();
  return io_nbd_open (uri, flags, true);
}
