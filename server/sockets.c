/* rawtrack - the NBD server's listening sockets.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct nbd_listeners, the sockets a server accepts on - a Unix
 * socket (a stale socket at the path is replaced, a live one - a server
 * answers - is refused; at exit the path is removed only while it is
 * still the socket bound here, by device and inode), TCP on loopback or on
 * explicitly named addresses, or the sockets inherited through systemd
 * socket activation (LISTEN_PID/LISTEN_FDS, from fd 3).  Every socket is
 * close-on-exec.  Nothing here prints: a failure returns -1 with the
 * reason in ls->err, for the caller to report.
 *
 * Locking: none; the listeners belong to the thread that made them (the
 * accept loop only polls and accepts on them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>
#include <netdb.h>
#include <limits.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include "server.h"

static int seterr (struct nbd_listeners *ls, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static int
seterr (struct nbd_listeners *ls, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (ls->err, sizeof ls->err, fmt, ap);
  va_end (ap);
  return -1;
}

void
nbd_listeners_init (struct nbd_listeners *ls)
{
  memset (ls, 0, sizeof *ls);
  snprintf (ls->uri_host, sizeof ls->uri_host, "localhost");
}

void
nbd_listeners_close (struct nbd_listeners *ls)
{
  size_t i;

  for (i = 0; i < ls->n; i++)
    close (ls->l[i].fd);
  ls->n = 0;
}

int
nbd_parse_uint (const char *s, unsigned min, unsigned max, unsigned *out)
{
  char *end;
  unsigned long v;

  errno = 0;
  v = strtoul (s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
    return -1;
  *out = (unsigned) v;
  return 0;
}

bool
nbd_looks_like_address (const char *s)
{
  struct in_addr a;
  char host[64];
  const char *colon = strrchr (s, ':');
  size_t n = colon ? (size_t) (colon - s) : strlen (s);

  if (s[0] == '[' || s[0] == ':' || strcmp (s, "localhost") == 0 ||
      strncmp (s, "localhost:", 10) == 0)
    return true;
  if (n >= sizeof host)
    return false;
  memcpy (host, s, n);
  host[n] = '\0';
  return inet_pton (AF_INET, host, &a) == 1;
}

/* Split ADDR[:PORT] / [V6][:PORT] / :PORT.  host is "" for loopback. */
static int
split_address (const char *s, char *host, size_t hlen, char *port, size_t plen)
{
  const char *p;
  size_t n;

  snprintf (port, plen, "%s", NBD_DEFAULT_PORT);
  host[0] = '\0';
  if (!s || !*s)
    return 0;
  if (s[0] == '[') {
    p = strchr (s, ']');
    if (!p)
      return -1;
    n = (size_t) (p - s - 1);
    if (n >= hlen)
      return -1;
    memcpy (host, s + 1, n);
    host[n] = '\0';
    p++;
    if (*p == ':')
      snprintf (port, plen, "%s", p + 1);
    else if (*p)
      return -1;
    return 0;
  }
  p = strrchr (s, ':');
  if (p && strchr (s, ':') != p)
    p = NULL;                      /* a bare IPv6 address: no port */
  n = p ? (size_t) (p - s) : strlen (s);
  if (n >= hlen)
    return -1;
  memcpy (host, s, n);
  host[n] = '\0';
  if (p)
    snprintf (port, plen, "%s", p + 1);
  return port[0] ? 0 : -1;
}

int
nbd_listen_tcp (struct nbd_listeners *ls, const char *addr)
{
  char host[256], port[32];
  struct addrinfo hints, *res, *ai;
  int r;

  if (split_address (addr, host, sizeof host, port, sizeof port) == -1)
    return seterr (ls, "invalid --listen address '%s'", addr);
  memset (&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  if (strcmp (host, "*") == 0) {
    hints.ai_flags |= AI_PASSIVE;
    host[0] = '\0';
    r = getaddrinfo (NULL, port, &hints, &res);
  }
  else {
    if (host[0] == '\0')
      hints.ai_flags &= ~AI_ADDRCONFIG;
    /* No host: getaddrinfo gives the loopback addresses. */
    r = getaddrinfo (host[0] ? host : NULL, port, &hints, &res);
  }
  if (r != 0)
    return seterr (ls, "--listen %s: %s", addr ? addr : "", gai_strerror (r));

  for (ai = res; ai && ls->n < NBD_MAX_LISTENERS; ai = ai->ai_next) {
    int fd = socket (ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                     ai->ai_protocol);
    int one = 1;

    if (fd == -1)
      continue;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    /* Every address on the same port: the first one bound picks it
     * when PORT is 0. */
    if (ls->tcp_port && ai->ai_family == AF_INET6)
      ((struct sockaddr_in6 *) ai->ai_addr)->sin6_port = htons (ls->tcp_port);
    else if (ls->tcp_port && ai->ai_family == AF_INET)
      ((struct sockaddr_in *) ai->ai_addr)->sin_port = htons (ls->tcp_port);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1 ||
        listen (fd, SOMAXCONN) == -1) {
      int e = errno;

      close (fd);
      if (e == EADDRNOTAVAIL || e == EAFNOSUPPORT)
        continue;
      freeaddrinfo (res);
      return seterr (ls, "--listen %s: %s", addr ? addr : "", strerror (e));
    }
    if (ls->tcp_port == 0) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      char h[INET6_ADDRSTRLEN];

      getsockname (fd, (struct sockaddr *) &ss, &sl);
      if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &ss;

        ls->tcp_port = ntohs (s6->sin6_port);
        inet_ntop (AF_INET6, &s6->sin6_addr, h, sizeof h);
        snprintf (ls->uri_host, sizeof ls->uri_host, "[%s]", h);
      }
      else {
        struct sockaddr_in *s4 = (struct sockaddr_in *) &ss;

        ls->tcp_port = ntohs (s4->sin_port);
        inet_ntop (AF_INET, &s4->sin_addr, h, sizeof h);
        snprintf (ls->uri_host, sizeof ls->uri_host, "%s", h);
      }
    }
    ls->l[ls->n].fd = fd;
    ls->l[ls->n].tcp = true;
    ls->n++;
  }
  freeaddrinfo (res);
  if (ls->n == 0)
    return seterr (ls, "--listen %s: no address to listen on",
                   addr ? addr : "");
  return 0;
}

int
nbd_listen_unix (struct nbd_listeners *ls, const char *path)
{
  struct sockaddr_un sun;
  struct stat st;
  int fd;

  if (ls->n >= NBD_MAX_LISTENERS)
    return seterr (ls, "too many listening sockets");
  memset (&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  if (strlen (path) >= sizeof sun.sun_path)
    return seterr (ls, "socket path too long: %s", path);
  strcpy (sun.sun_path, path);
  if (lstat (path, &st) == 0) {
    int probe, r, e;

    if (!S_ISSOCK (st.st_mode))
      return seterr (ls, "%s exists and is not a socket", path);
    /* Live or stale?  Only a refused connection (nobody listens) makes
     * it ours to replace; anything else - accepted, backlog full
     * (EAGAIN), no permission - leaves it to its owner. */
    probe = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe == -1)
      return seterr (ls, "socket: %s", strerror (errno));
    r = connect (probe, (struct sockaddr *) &sun, sizeof sun);
    e = errno;
    close (probe);
    if (r == 0 || (e != ECONNREFUSED && e != ENOENT))
      return seterr (ls, "%s is in use: %s (stop that server, or choose "
                     "another --socket)", path, r == 0
                     ? "a server answers on it" : strerror (e));
    unlink (path);
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return seterr (ls, "socket: %s", strerror (errno));
  if (bind (fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      listen (fd, SOMAXCONN) == -1) {
    int e = errno;

    close (fd);
    return seterr (ls, "%s: %s", path, strerror (e));
  }
  if (lstat (path, &st) == 0) {
    ls->have_unix_id = true;
    ls->unix_dev = st.st_dev;
    ls->unix_ino = st.st_ino;
  }
  ls->l[ls->n].fd = fd;
  ls->l[ls->n].tcp = false;
  ls->n++;
  return 0;
}

void
nbd_unlink_unix (const struct nbd_listeners *ls, const char *path)
{
  struct stat st;

  if (ls->have_unix_id && lstat (path, &st) == 0 && S_ISSOCK (st.st_mode) &&
      st.st_dev == ls->unix_dev && st.st_ino == ls->unix_ino)
    unlink (path);
}

size_t
nbd_listen_activated (struct nbd_listeners *ls)
{
  const char *spid = getenv ("LISTEN_PID"), *sfds = getenv ("LISTEN_FDS");
  unsigned pid, nfds, i;
  size_t n = 0;

  if (!spid || !sfds || nbd_parse_uint (spid, 1, UINT_MAX, &pid) == -1 ||
      nbd_parse_uint (sfds, 1, NBD_MAX_LISTENERS, &nfds) == -1 ||
      (pid_t) pid != getpid ())
    return 0;
  for (i = 0; i < nfds; i++) {
    int fd = 3 + (int) i, type = 0, dom = 0;
    socklen_t sl = sizeof type;

    fcntl (fd, F_SETFD, FD_CLOEXEC);
    getsockopt (fd, SOL_SOCKET, SO_TYPE, &type, &sl);
    sl = sizeof dom;
    getsockopt (fd, SOL_SOCKET, SO_DOMAIN, &dom, &sl);
    ls->l[n].fd = fd;
    ls->l[n].tcp = dom == AF_INET || dom == AF_INET6;
    n++;
  }
  ls->n = n;
  unsetenv ("LISTEN_PID");
  unsetenv ("LISTEN_FDS");
  unsetenv ("LISTEN_FDNAMES");
  return n;
}
