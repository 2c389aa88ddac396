/* rawtrack - client of the control socket of `rawtrack serve`.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct ctl, one connection to a control socket (docs/control.md):
 * a request is one JSON object on one line, written with json.c; its
 * response is one line read back and parsed with json-parse.c.  Requests
 * are sent one at a time and carry an increasing integer "id"; a response
 * whose id is not the request's is a protocol error.
 *
 * Every wait is bounded (RAWTRACK_CONTROL_TIMEOUT seconds, default 120)
 * so that a server that stops answering gives an error, never a hang; a
 * response line is bounded too (RESPONSE_MAX).  A transport error closes
 * the connection: later requests fail at once with the same message.
 *
 * Locking: none; a connection belongs to one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdarg.h>
#include <unistd.h>
#include <poll.h>
#include <inttypes.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "control.h"

#define RESPONSE_MAX (16u << 20)

struct ctl {
  int fd;
  char *path;
  uint64_t next_id;
  char *buf;                   /* bytes read, not yet consumed */
  size_t len, cap;
  char err[512];
  char errno_name[32];
  int timeout_ms;
};

static void
set_err (struct ctl *c, const char *errno_name, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static void
set_err (struct ctl *c, const char *errno_name, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (c->err, sizeof c->err, fmt, ap);
  va_end (ap);
  snprintf (c->errno_name, sizeof c->errno_name, "%s", errno_name);
}

struct ctl *
ctl_connect (const char *path, bool quiet)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  struct ctl *c;
  const char *t = getenv ("RAWTRACK_CONTROL_TIMEOUT");
  int fd, e;

  if (strlen (path) >= sizeof sun.sun_path) {
    if (!quiet)
      fprintf (stderr, "%s: control socket path '%s' is too long (at most "
               "%zu bytes)\n", progname, path, sizeof sun.sun_path - 1);
    errno = ENAMETOOLONG;
    return NULL;
  }
  memcpy (sun.sun_path, path, strlen (path) + 1);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || connect (fd, (struct sockaddr *) &sun, sizeof sun) == -1) {
    e = errno;
    if (!quiet)
      fprintf (stderr, "%s: cannot connect to the control socket '%s': %s%s\n",
               progname, path, strerror (e),
               e == ECONNREFUSED ? " (no server is running there)" :
               e == EACCES ? " (it belongs to another user: only the owner "
               "of a server may control it)" : "");
    if (fd != -1)
      close (fd);
    errno = e;
    return NULL;
  }
  c = calloc (1, sizeof *c);
  if (!c || !(c->path = strdup (path))) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  c->fd = fd;
  c->next_id = 1;
  c->timeout_ms = 120 * 1000;
  if (t && atoi (t) > 0)
    c->timeout_ms = atoi (t) * 1000;
  return c;
}

void
ctl_close (struct ctl *c)
{
  if (!c)
    return;
  if (c->fd != -1)
    close (c->fd);
  free (c->path);
  free (c->buf);
  free (c);
}

const char *
ctl_path (struct ctl *c)
{
  return c->path;
}

const char *
ctl_error (struct ctl *c)
{
  return c->err;
}

const char *
ctl_errno (struct ctl *c)
{
  return c->errno_name;
}

static void
broken (struct ctl *c)
{
  if (c->fd != -1)
    close (c->fd);
  c->fd = -1;
}

static int
send_all (struct ctl *c, const char *p, size_t n)
{
  while (n) {
    ssize_t r = send (c->fd, p, n, MSG_NOSIGNAL);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      set_err (c, "", "writing to the control socket '%s': %s", c->path,
               strerror (errno));
      return -1;
    }
    p += r;
    n -= (size_t) r;
  }
  return 0;
}

/* Read up to the next newline: the line (NUL-terminated, in c->buf) and
 * its length in *n; the caller consumes it with consume (). */
static char *
read_line (struct ctl *c, size_t *n)
{
  for (;;) {
    char *nl = c->len ? memchr (c->buf, '\n', c->len) : NULL;
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
    ssize_t r;
    int pr;

    if (nl) {
      *nl = '\0';
      *n = (size_t) (nl - c->buf);
      return c->buf;
    }
    if (c->len >= RESPONSE_MAX) {
      set_err (c, "", "the control socket '%s' sent a line longer than "
               "%u bytes", c->path, RESPONSE_MAX);
      return NULL;
    }
    if (c->cap - c->len < 65536) {
      c->cap = c->cap ? c->cap * 2 : 65536 * 2;
      c->buf = realloc (c->buf, c->cap);
      if (!c->buf) {
        fprintf (stderr, "%s: out of memory\n", progname);
        exit (1);
      }
    }
    pr = poll (&pfd, 1, c->timeout_ms);
    if (pr == -1 && errno == EINTR)
      continue;
    if (pr == 0) {
      set_err (c, "", "the server at '%s' did not answer within %d s "
               "(RAWTRACK_CONTROL_TIMEOUT)", c->path, c->timeout_ms / 1000);
      return NULL;
    }
    r = pr == -1 ? -1 : recv (c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      set_err (c, "", "reading the control socket '%s': %s", c->path,
               r == 0 ? "the server closed the connection" : strerror (errno));
      return NULL;
    }
    c->len += (size_t) r;
  }
}

static void
consume (struct ctl *c, size_t n)
{
  memmove (c->buf, c->buf + n + 1, c->len - n - 1);
  c->len -= n + 1;
}

struct jv *
ctl_request (struct ctl *c, const char *command, ctl_args_fn args,
             void *opaque, bool quiet)
{
  char *req = NULL, *line, perr[200];
  size_t reqlen = 0, n;
  FILE *fp;
  struct json *j;
  struct jv *v = NULL;
  const struct jv *id, *ok;
  uint64_t myid = c->next_id++;

  if (c->fd == -1)
    goto fail;                 /* c->err still says why */
  fp = open_memstream (&req, &reqlen);
  if (!fp || !(j = json_new (fp, false))) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  json_object_begin (j, NULL);
  json_uint (j, "id", myid);
  json_string (j, "command", command);
  if (args)
    args (j, opaque);
  json_object_end (j);
  json_end (j);                /* the newline that ends the request */
  if (fclose (fp) != 0) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  if (send_all (c, req, reqlen) == -1)
    goto broken;
  line = read_line (c, &n);
  if (!line)
    goto broken;
  v = jv_parse (line, n, perr, sizeof perr);
  consume (c, n);
  if (!v || v->t != JV_OBJ) {
    set_err (c, "", "the control socket '%s' answered '%s' with %s%s",
             c->path, command, v ? "something that is not an object" :
             "malformed JSON: ", v ? "" : perr);
    goto broken;
  }
  id = jv_get (v, "id");
  if (!id || id->t != JV_NUM || !id->integer || id->neg || id->u != myid) {
    set_err (c, "", "the control socket '%s' answered request %" PRIu64
             " ('%s') with the id of another request", c->path, myid, command);
    goto broken;
  }
  ok = jv_get (v, "ok");
  if (!ok || ok->t != JV_BOOL) {
    set_err (c, "", "the control socket '%s' answered '%s' without \"ok\"",
             c->path, command);
    goto broken;
  }
  if (!ok->b) {
    const char *msg = jv_str (v, "error"), *en = jv_str (v, "errno");

    set_err (c, en ? en : "", "the server refused '%s': %s%s%s%s", command,
             msg ? msg : "(no message)", en ? " (" : "", en ? en : "",
             en ? ")" : "");
    jv_free (v);
    v = NULL;
    goto fail;
  }
  free (req);
  return v;

 broken:
  jv_free (v);
  v = NULL;
  broken (c);
 fail:
  free (req);
  if (!quiet)
    fprintf (stderr, "%s: %s\n", progname, c->err);
  return NULL;
}

const char *
jv_str (const struct jv *v, const char *key)
{
  const struct jv *m = jv_get (v, key);

  return m && m->t == JV_STR ? m->s : NULL;
}

uint64_t
jv_uint (const struct jv *v, const char *key)
{
  const struct jv *m = jv_get (v, key);

  return m && m->t == JV_NUM && m->integer && !m->neg ? m->u : 0;
}

bool
jv_bool (const struct jv *v, const char *key, bool dflt)
{
  const struct jv *m = jv_get (v, key);

  return m && m->t == JV_BOOL ? m->b : dflt;
}

const struct jv *
jv_arr (const struct jv *v, const char *key)
{
  const struct jv *m = jv_get (v, key);

  return m && m->t == JV_ARR ? m : NULL;
}
