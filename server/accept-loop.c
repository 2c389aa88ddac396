/* rawtrack - the NBD server's accept loop.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: signal handling for a serving process, the loop that accepts
 * connections on the listeners (one detached thread per connection, at
 * most srv->max_conn at once; more are closed at once), and the drain
 * that waits for the connection threads at shutdown:
 *
 *   SIGINT/SIGTERM/SIGHUP, or the captive child exits
 *     -> nbd_accept_loop returns (the caller closes the listeners)
 *     -> nbd_drain: make the quit fd readable, so idle readers and
 *        handshakes stop while requests already read complete and are
 *        answered; wait until every connection thread has finished
 *
 * Locking: nconn_lock protects nconn (live connection threads) and
 * nconn_cond signals its decrements.  Signals are turned into bytes on a
 * self-pipe by an async-signal-safe handler; everything else happens in
 * the calling thread's poll loop.  Out of descriptors, the listeners
 * are left alone for a growing pause (fd-budget.c), never spun on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "server.h"

static int sig_pipe[2] = { -1, -1 };
static pthread_mutex_t nconn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t nconn_cond = PTHREAD_COND_INITIALIZER;
static unsigned nconn;

static void
on_signal (int sig)
{
  int saved = errno;
  char b = (char) sig;

  if (write (sig_pipe[1], &b, 1) == -1) {
    /* The pipe is full: a wakeup is pending anyway. */
  }
  errno = saved;
}

int
nbd_signals_init (void)
{
  struct sigaction sa;

  /* SIGPIPE ignored (sends use MSG_NOSIGNAL anyway), the others become
   * bytes on the self-pipe. */
  if (sig_pipe[0] == -1 && pipe2 (sig_pipe, O_CLOEXEC | O_NONBLOCK) == -1)
    return -1;
  signal (SIGPIPE, SIG_IGN);
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  sigaction (SIGCHLD, &sa, NULL);
  return 0;
}

struct conn_arg {
  struct nbd_server *srv;
  int fd;
  unsigned id;
};

static void *
conn_thread (void *arg)
{
  struct conn_arg *a = arg;

  conn_handle (a->srv, a->fd, a->id);
  free (a);
  pthread_mutex_lock (&nconn_lock);
  nconn--;
  pthread_cond_broadcast (&nconn_cond);
  pthread_mutex_unlock (&nconn_lock);
  return NULL;
}

static void
accept_one (struct nbd_server *srv, const struct nbd_listener *l,
            unsigned *next_id, struct accept_pause *pause)
{
  struct conn_arg *a;
  pthread_attr_t attr;
  pthread_t th;
  int fd, one = 1;

  fd = nbd_accept (l->fd, pause);
  if (fd == -1)
    return;
  if (l->tcp)
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_mutex_lock (&nconn_lock);
  if (nconn >= srv->max_conn) {
    pthread_mutex_unlock (&nconn_lock);
    nbd_error ("too many connections (%u), closing a new one",
               srv->max_conn);
    close (fd);
    return;
  }
  nconn++;
  pthread_mutex_unlock (&nconn_lock);

  a = malloc (sizeof *a);
  if (a) {
    a->srv = srv;
    a->fd = fd;
    a->id = ++*next_id;
    pthread_attr_init (&attr);
    pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create (&th, &attr, conn_thread, a) == 0) {
      pthread_attr_destroy (&attr);
      return;
    }
    pthread_attr_destroy (&attr);
    free (a);
  }
  nbd_error ("cannot start a connection thread");
  close (fd);
  pthread_mutex_lock (&nconn_lock);
  nconn--;
  pthread_mutex_unlock (&nconn_lock);
}

void
nbd_accept_loop (struct nbd_server *srv, const struct nbd_listeners *ls,
                 pid_t *child, int *child_status)
{
  unsigned next_id = 0;
  bool quit = false;
  size_t i, nls = ls->n;
  struct accept_pause pause = { .what = "NBD" };

  while (!quit) {
    struct pollfd pfd[NBD_MAX_LISTENERS + 1];
    int r;

    /* Out of descriptors (fd-budget.c): the listeners are left alone
     * (negative fds are ignored by poll) for the pause, then tried. */
    for (i = 0; i < nls; i++) {
      pfd[i].fd = pause.wait_ms ? -1 : ls->l[i].fd;
      pfd[i].events = POLLIN;
      pfd[i].revents = 0;
    }
    pfd[nls].fd = sig_pipe[0];
    pfd[nls].events = POLLIN;
    pfd[nls].revents = 0;
    r = poll (pfd, nls + 1, pause.wait_ms ? (int) pause.wait_ms : -1);
    if (r == 0) {
      /* The pause is over: try every listener once more. */
      pause.wait_ms = 0;
      for (i = 0; i < nls && !pause.wait_ms; i++)
        accept_one (srv, &ls->l[i], &next_id, &pause);
      continue;
    }
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbd_error ("poll: %s", strerror (errno));
      break;
    }
    if (pfd[nls].revents) {
      char sigs[16];
      ssize_t k = read (sig_pipe[0], sigs, sizeof sigs), j;

      for (j = 0; j < k; j++) {
        if (sigs[j] == SIGCHLD) {
          int st;

          if (*child > 0 && waitpid (*child, &st, WNOHANG) == *child) {
            *child_status = WIFEXITED (st) ? WEXITSTATUS (st)
                                           : 128 + WTERMSIG (st);
            *child = -1;
            nbd_debug ("--run command exited with status %d",
                       *child_status);
            quit = true;
          }
        }
        else {
          nbd_debug ("signal %d: shutting down", sigs[j]);
          quit = true;
        }
      }
    }
    for (i = 0; !quit && !pause.wait_ms && i < nls; i++)
      if (pfd[i].revents & POLLIN)
        accept_one (srv, &ls->l[i], &next_id, &pause);
  }
}

void
nbd_drain (int quit_wfd)
{
  if (write (quit_wfd, "q", 1) != 1)
    nbd_error ("cannot signal the connections to stop");
  pthread_mutex_lock (&nconn_lock);
  while (nconn > 0)
    pthread_cond_wait (&nconn_cond, &nconn_lock);
  pthread_mutex_unlock (&nconn_lock);
}
