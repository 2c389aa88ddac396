/* rawtrack - NBD server: file descriptors, budgeted and run out of.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the descriptor budget checked once at start (nbd_fd_budget) and
 * the accept that survives running out of descriptors (nbd_accept).
 *
 * Budget.  What a server holds once it serves (counted at the call, in
 * /proc/self/fd: images, data files, libnbd connections of a remote data
 * file, listeners, the control socket), plus per NBD connection its
 * socket and, per worker, a pipe (two descriptors) for splicing WRITE
 * payloads, plus a reserve for what comes and goes (control clients,
 * fleecing files, a connection accepted only to be closed as one too
 * many, a libnbd reconnection).  If the soft RLIMIT_NOFILE is lower the
 * soft limit is raised, up to the hard one.  If the sockets alone do not
 * fit the server refuses to start, naming both numbers; if the pipes do
 * not fit, they are not used (payloads are copied instead).
 *
 * Running out anyway (another program lowered the limit with prlimit, the
 * system table is full, fleecing opened files): accept(2) fails with
 * EMFILE/ENFILE/ENOBUFS/ENOMEM while the pending connection stays
 * queued, so polling the listener again would return at once - a loop at
 * full CPU writing a log line per turn.  nbd_accept instead logs once per
 * episode, and tells the caller to leave the listener alone for a pause
 * that doubles from 10 ms up to 500 ms; the queued clients wait in the
 * backlog.  The first accept that works again ends the episode (one more
 * line, with how many attempts failed); a new episode within a minute of
 * the last message is counted, not logged, so a server that runs out
 * each time a client leaves writes two lines a minute, not two a client.
 *
 * Locking: none; a struct accept_pause belongs to one accepting thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <dirent.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "server.h"

#define PAUSE_MIN_MS 10
#define PAUSE_MAX_MS 500
#define LOG_EVERY_S 60

/* Descriptors open in this process now; 0 if that cannot be known. */
static unsigned long
fds_open (void)
{
  DIR *d = opendir ("/proc/self/fd");
  struct dirent *e;
  unsigned long n = 0;

  if (!d)
    return 0;
  while ((e = readdir (d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir (d);
  return n > 0 ? n - 1 : 0;         /* not the directory's own */
}

int
nbd_fd_budget (unsigned max_conn, unsigned threads, unsigned reserve,
               bool *pipes, char *err, size_t errlen)
{
  struct rlimit rl;
  unsigned long open_now = fds_open ();
  unsigned long sockets = open_now + reserve + max_conn;
  unsigned long full = sockets + 2ul * max_conn * threads;

  *pipes = true;
  if (getrlimit (RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur == RLIM_INFINITY ||
      rl.rlim_cur >= full)
    return 0;
  if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
    struct rlimit want = rl;

    want.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < full
                    ? rl.rlim_max : full;
    if (setrlimit (RLIMIT_NOFILE, &want) == 0) {
      nbd_debug ("file descriptor limit raised from %lu to %lu",
                 (unsigned long) rl.rlim_cur, (unsigned long) want.rlim_cur);
      rl = want;
    }
  }
  if (rl.rlim_cur >= full)
    return 0;
  if (rl.rlim_cur < sockets) {
    snprintf (err, errlen, "--connections %u needs about %lu file "
              "descriptors (%lu open now, one per connection, %u in "
              "reserve), but the limit is %lu (hard limit %lu): raise it "
              "(ulimit -n) or lower --connections", max_conn, sockets,
              open_now, reserve, (unsigned long) rl.rlim_cur,
              rl.rlim_max == RLIM_INFINITY ? (unsigned long) rl.rlim_cur
                                           : (unsigned long) rl.rlim_max);
    errno = EMFILE;
    return -1;
  }
  *pipes = false;
  nbd_error ("file descriptor limit %lu (hard %lu) is below the %lu that "
             "--connections %u with --threads %u needs for a splice pipe "
             "per worker: WRITE payloads are copied instead",
             (unsigned long) rl.rlim_cur,
             rl.rlim_max == RLIM_INFINITY ? (unsigned long) rl.rlim_cur
                                          : (unsigned long) rl.rlim_max,
             full, max_conn, threads);
  return 0;
}

int
nbd_accept (int lfd, struct accept_pause *p)
{
  int fd = accept4 (lfd, NULL, NULL, SOCK_CLOEXEC);
  struct timespec now;

  p->wait_ms = 0;
  if (fd >= 0) {
    if (p->logged) {
      nbd_error ("%s: accepting connections again (%lu attempts failed "
                 "while out of descriptors)", p->what, p->failed);
      p->logged = false;
      p->failed = 0;
    }
    p->next_ms = 0;
    return fd;
  }
  if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
      errno != ENOMEM) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      nbd_error ("%s: accept: %s", p->what, strerror (errno));
    return -1;
  }
  /* One message per episode, and one episode's worth per minute: a
   * server that keeps running out as fast as clients free descriptors
   * says so once, then counts. */
  p->failed++;
  clock_gettime (CLOCK_MONOTONIC, &now);
  if (!p->logged && (p->logged_at == 0 ||
                     now.tv_sec - p->logged_at >= LOG_EVERY_S)) {
    nbd_error ("%s: accept: %s: new clients wait until descriptors are "
               "freed (raise the limit: ulimit -n, or lower --connections)",
               p->what, strerror (errno));
    p->logged = true;
    p->logged_at = now.tv_sec > 0 ? now.tv_sec : 1;
  }
  p->next_ms = p->next_ms == 0 ? PAUSE_MIN_MS
               : p->next_ms * 2 > PAUSE_MAX_MS ? PAUSE_MAX_MS
               : p->next_ms * 2;
  p->wait_ms = p->next_ms;
  return -1;
}
