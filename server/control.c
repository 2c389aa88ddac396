/* rawtrack - NBD server: the control socket (docs/control.md).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the control socket's listener (mode 0600: only the owner may
 * connect), its accept thread, one thread per connected client (at most
 * MAX_CLIENTS), and the framing: one JSON object per line, at most
 * MAX_LINE bytes; a longer line is answered with an error and skipped up
 * to its newline, the connection goes on.  What a request does is
 * control-cmd.c's.
 *
 * Locking: ctl->lock serialises requests (one runs at a time, whatever
 * the client) and protects nr_clients; stop_pipe wakes every thread at
 * shutdown; control_stop waits until every client thread has gone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "server.h"

#define MAX_LINE    (64 * 1024)
#define MAX_CLIENTS 16

struct control {
  struct nbd_listeners ls;         /* the one Unix socket */
  char *path;
  int stop_pipe[2];
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t gone;             /* a client thread ended */
  unsigned nr_clients;
  struct control_state *st;
};

struct client {
  struct control *ctl;
  int fd;
};

static int
send_all (int fd, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t r = send (fd, p, n, MSG_NOSIGNAL);

    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    n -= (size_t) r;
  }
  return 0;
}

static void
answer (struct client *cl, const char *line, size_t len)
{
  char *resp;
  int r;

  pthread_mutex_lock (&cl->ctl->lock);
  resp = control_dispatch (cl->ctl->st, line, len);
  pthread_mutex_unlock (&cl->ctl->lock);
  if (!resp)
    return;
  r = send_all (cl->fd, resp, strlen (resp));
  free (resp);
  if (r == -1)
    shutdown (cl->fd, SHUT_RDWR);
}

static void *
client_thread (void *arg)
{
  struct client *cl = arg;
  struct control *ctl = cl->ctl;
  char *buf = malloc (MAX_LINE + 1);
  size_t have = 0;
  bool skipping = false;           /* inside an overlong line */

  while (buf) {
    struct pollfd p[2] = { { cl->fd, POLLIN, 0 },
                           { ctl->stop_pipe[0], POLLIN, 0 } };
    ssize_t r;
    char *nl;

    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p[1].revents)
      break;
    r = recv (cl->fd, buf + have, MAX_LINE - have, 0);
    if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
      break;
    if (r < 0)
      continue;
    have += (size_t) r;
    /* Every complete line. */
    while ((nl = memchr (buf, '\n', have)) != NULL) {
      size_t len = (size_t) (nl - buf);

      if (skipping)
        skipping = false;
      else
        answer (cl, buf, len);
      memmove (buf, nl + 1, have - len - 1);
      have -= len + 1;
    }
    if (have == MAX_LINE) {
      /* No newline in 64 KiB: refuse the line, drop it to its end. */
      if (!skipping) {
        static const char msg[] =
          "{\"id\": null, \"ok\": false, \"error\": \"request line longer "
          "than 65536 bytes\", \"errno\": \"EINVAL\"}\n";

        if (send_all (cl->fd, msg, sizeof msg - 1) == -1)
          break;
      }
      skipping = true;
      have = 0;
    }
  }
  free (buf);
  close (cl->fd);
  pthread_mutex_lock (&ctl->lock);
  ctl->nr_clients--;
  pthread_cond_broadcast (&ctl->gone);
  pthread_mutex_unlock (&ctl->lock);
  free (cl);
  return NULL;
}

static void *
accept_thread (void *arg)
{
  struct control *ctl = arg;
  struct accept_pause pause = { .what = "control socket" };

  for (;;) {
    /* Out of descriptors: the listener is left alone for the pause. */
    struct pollfd p[2] = { { pause.wait_ms ? -1 : ctl->ls.l[0].fd, POLLIN,
                             0 },
                           { ctl->stop_pipe[0], POLLIN, 0 } };
    struct client *cl;
    pthread_t th;
    int fd, r;

    r = poll (p, 2, pause.wait_ms ? (int) pause.wait_ms : -1);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbd_error ("control socket: poll: %s", strerror (errno));
      return NULL;
    }
    if (p[1].revents)
      return NULL;
    fd = nbd_accept (ctl->ls.l[0].fd, &pause);
    if (fd == -1)
      continue;
    pthread_mutex_lock (&ctl->lock);
    if (ctl->nr_clients >= MAX_CLIENTS) {
      static const char msg[] =
        "{\"id\": null, \"ok\": false, \"error\": \"too many control "
        "connections (16)\", \"errno\": \"EBUSY\"}\n";

      pthread_mutex_unlock (&ctl->lock);
      send_all (fd, msg, sizeof msg - 1);
      close (fd);
      continue;
    }
    cl = malloc (sizeof *cl);
    if (cl) {
      cl->ctl = ctl;
      cl->fd = fd;
    }
    if (!cl || pthread_create (&th, NULL, client_thread, cl) != 0) {
      pthread_mutex_unlock (&ctl->lock);
      free (cl);
      close (fd);
      continue;
    }
    pthread_detach (th);
    ctl->nr_clients++;
    pthread_mutex_unlock (&ctl->lock);
  }
}

struct control *
control_start (struct nbd_server *srv, const char *path,
               struct nbd_disk **disks, size_t nr_disks,
               struct fleece_config *fc, const char *uri_prefix,
               const char *uri_suffix, char *err, size_t errlen)
{
  struct control *ctl = calloc (1, sizeof *ctl);
  mode_t old;
  int r;

  if (!ctl || !(ctl->path = strdup (path))) {
    free (ctl);
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  ctl->stop_pipe[0] = ctl->stop_pipe[1] = -1;
  nbd_listeners_init (&ctl->ls);
  /* Mode 0600 from the start: no moment when others may connect. */
  old = umask (0077);
  r = nbd_listen_unix (&ctl->ls, path);
  umask (old);
  if (r != 0) {
    snprintf (err, errlen, "--control: %s", ctl->ls.err);
    goto fail;
  }
  if (chmod (path, 0600) == -1) {
    snprintf (err, errlen, "--control %s: chmod: %s", path, strerror (errno));
    goto fail;
  }
  ctl->st = control_state_new (srv, disks, nr_disks, fc, uri_prefix,
                               uri_suffix);
  if (!ctl->st || pipe2 (ctl->stop_pipe, O_CLOEXEC) == -1) {
    snprintf (err, errlen, "--control: out of memory");
    goto fail;
  }
  pthread_mutex_init (&ctl->lock, NULL);
  pthread_cond_init (&ctl->gone, NULL);
  if (pthread_create (&ctl->thread, NULL, accept_thread, ctl) != 0) {
    snprintf (err, errlen, "--control: cannot start a thread");
    pthread_mutex_destroy (&ctl->lock);
    pthread_cond_destroy (&ctl->gone);
    goto fail;
  }
  return ctl;

 fail:
  if (ctl->ls.n) {
    nbd_listeners_close (&ctl->ls);
    nbd_unlink_unix (&ctl->ls, path);
  }
  if (ctl->st)
    control_state_free (ctl->st);
  if (ctl->stop_pipe[0] >= 0) {
    close (ctl->stop_pipe[0]);
    close (ctl->stop_pipe[1]);
  }
  free (ctl->path);
  free (ctl);
  return NULL;
}

void
control_stop (struct control *ctl)
{
  if (!ctl)
    return;
  if (write (ctl->stop_pipe[1], "x", 1) != 1)
    nbd_error ("control socket: cannot wake its threads");
  pthread_join (ctl->thread, NULL);
  pthread_mutex_lock (&ctl->lock);
  while (ctl->nr_clients > 0)
    pthread_cond_wait (&ctl->gone, &ctl->lock);
  pthread_mutex_unlock (&ctl->lock);
  nbd_listeners_close (&ctl->ls);
  nbd_unlink_unix (&ctl->ls, ctl->path);
  control_state_free (ctl->st);
  close (ctl->stop_pipe[0]);
  close (ctl->stop_pipe[1]);
  pthread_mutex_destroy (&ctl->lock);
  pthread_cond_destroy (&ctl->gone);
  free (ctl->path);
  free (ctl);
}
