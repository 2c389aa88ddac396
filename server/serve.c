/* rawtrack - `rawtrack serve`: export an image over NBD.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the command line, the export (struct nbd_export built from the
 * opened image), the listening sockets (a Unix socket, loopback or
 * explicitly requested TCP addresses, or sockets inherited through
 * systemd socket activation), the accept loop with one detached thread
 * per connection, signals, --pidfile and --run captive mode, and the
 * orderly shutdown:
 *
 *   SIGINT/SIGTERM, or the --run command exits
 *     -> stop accepting, close and unlink the listening sockets
 *     -> make the quit fd readable: idle readers and handshakes stop,
 *        requests already read complete and are answered
 *     -> wait until every connection thread has finished
 *     -> rawtrack_image_close (writes back tracking state, flushes)
 *     -> exit 0 (or the --run command's status; 1 if closing failed)
 *
 * Locking: nconn_lock protects nconn (live connection threads) and
 * nconn_cond signals its decrements.  Signals are turned into bytes on a
 * self-pipe by an async-signal-safe handler; everything else happens in
 * the main thread's poll loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>
#include <netdb.h>
#include <limits.h>
#include <inttypes.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#include "cli.h"
#include "server.h"
#include "nbd-protocol.h"

#define MAX_LISTENERS 16
#define DEFAULT_PORT "10809"

struct listener {
  int fd;
  bool tcp;
};

static int sig_pipe[2] = { -1, -1 };
static pthread_mutex_t nconn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t nconn_cond = PTHREAD_COND_INITIALIZER;
static unsigned nconn;

static void
help (void)
{
  printf ("Usage: %s serve IMAGE [--socket PATH | --listen[=ADDR[:PORT]]]\n"
          "                      [--export NAME] [--description TEXT] [--read-only]\n"
          "                      [--bitmap NAME]... [--connections N] [--threads N]\n"
          "                      [--pidfile FILE] [--run CMD] [--data-file PATH]\n"
          "                      [--tls=off|on|require (--tls-certificates DIR |\n"
          "                       --tls-psk FILE) [--tls-verify-peer]]\n"
          "\n"
          "Export IMAGE (qcow2, usually a metadata container around a raw disk) over\n"
          "the NBD protocol, with its persistent dirty bitmaps, to NBD clients such as\n"
          "qemu-img, qemu-io, nbdinfo, nbdcopy, fio and backup tools.  The server runs\n"
          "in the foreground until SIGINT or SIGTERM, then lets the requests in flight\n"
          "finish, flushes, closes the image cleanly and exits 0.\n"
          "\n"
          "Writes through the export are tracked: every enabled bitmap records them,\n"
          "crash-safely, exactly as other librawtrack writers do.\n"
          "\n"
          "Where to listen (one is required, unless --run or socket activation):\n"
          "  -s, --socket PATH       a Unix domain socket (a stale socket at PATH is\n"
          "                          replaced; it is removed at exit)\n"
          "  -l, --listen[=ADDR[:PORT]]\n"
          "                          TCP.  Without ADDR: loopback only (127.0.0.1 and\n"
          "                          ::1); PORT defaults to 10809.  Other addresses\n"
          "                          (0.0.0.0, ::, a host name, [v6]:port) are used\n"
          "                          only when given explicitly.  NBD has no\n"
          "                          authentication: do not expose it carelessly.\n"
          "  Socket activation: when started with LISTEN_PID/LISTEN_FDS (systemd,\n"
          "  `nbdinfo -- [ rawtrack serve IMAGE ]`), the inherited sockets are used.\n"
          "\n"
          "The export:\n"
          "  -e, --export NAME       export name (default \"\"); the export also\n"
          "                          answers to the empty name\n"
          "  -D, --description TEXT  description shown by `nbdinfo --list`\n"
          "  -r, --read-only         open the image read-only; writes fail with EPERM\n"
          "  -B, --bitmap NAME       offer only these bitmaps as\n"
          "                          qemu:dirty-bitmap:NAME (repeatable; default:\n"
          "                          every consistent bitmap of the image)\n"
          "      --data-file PATH    the external data file (overrides the name\n"
          "                          stored in the image)\n"
          "      --track MODE        write tracking: safe (default; survives power\n"
          "                          loss), process (survives process crashes) or\n"
          "                          lazy (QEMU's scheme)\n"
          "\n"
          "  Metadata contexts offered: base:allocation, qemu:allocation-depth and\n"
          "  qemu:dirty-bitmap:NAME for each exported bitmap.  A bitmap context shows\n"
          "  the bitmap's current bits, including writes made through this server.\n"
          "\n"
          "TLS (GnuTLS; clients start it with NBD_OPT_STARTTLS):\n"
          "      --tls=off|on|require\n"
          "                          off (default): STARTTLS is refused.  on: clients\n"
          "                          may use TLS or not.  require: a client must start\n"
          "                          TLS before anything else (other options get\n"
          "                          NBD_REP_ERR_TLS_REQD).  Use require whenever\n"
          "                          TLS matters: with on, a man in the middle can\n"
          "                          strip it.  on and require need credentials:\n"
          "      --tls-certificates DIR\n"
          "                          X.509 files in DIR, laid out as for QEMU's\n"
          "                          tls-creds-x509 and nbdkit: server-cert.pem,\n"
          "                          server-key.pem, ca-cert.pem (needed with\n"
          "                          --tls-verify-peer), optional ca-crl.pem\n"
          "      --tls-psk FILE      pre-shared keys instead: `username:hexkey` lines\n"
          "                          (nbdkit's format, as `psktool -u NAME -p FILE`\n"
          "                          writes it)\n"
          "      --tls-verify-peer   X.509 only: require a client certificate signed\n"
          "                          by ca-cert.pem (clients put client-cert.pem and\n"
          "                          client-key.pem in their certificate directory)\n"
          "  With TLS, --sendfile and zero-copy writes are not used for TLS\n"
          "  connections.  Clients: nbdinfo 'nbds+unix:///?socket=S&tls-certificates=\n"
          "  DIR', nbdinfo 'nbds://alice@HOST/?tls-psk-file=FILE', qemu-img\n"
          "  --object tls-creds-x509,id=t0,endpoint=client,dir=DIR and tls-creds=t0.\n"
          "\n"
          "Server:\n"
          "  -c, --connections N     at most N clients at once (default 16); more are\n"
          "                          closed at once\n"
          "  -t, --threads N         requests in flight per connection (default: 4 per\n"
          "                          CPU, at least 4, at most 16)\n"
          "      --sendfile          send read data with sendfile(2): less CPU in the\n"
          "                          server, but clients on the same machine copy from\n"
          "                          the page cache themselves and may go slower; for\n"
          "                          remote (TCP) clients\n"
          "      --handshake-timeout S\n"
          "                          drop clients that have not finished negotiating\n"
          "                          after S seconds (default 10, 0: never)\n"
          "  -P, --pidfile FILE      write the process id to FILE once ready\n"
          "      --run CMD           captive mode: once ready, run CMD with /bin/sh -c;\n"
          "                          in its environment $uri is the NBD URI, $nbd the\n"
          "                          qemu-style address, $unixsocket the socket path\n"
          "                          (or $port), $exportname the name.  Without\n"
          "                          --socket/--listen a private socket is made.  The\n"
          "                          server stops when CMD exits and exits with CMD's\n"
          "                          status (128+N if killed by signal N).\n"
          "  -v, --verbose           debug messages on stderr\n"
          "  -h, --help              this help\n"
          "\n"
          "Protocol: fixed newstyle handshake with structured replies, extended\n"
          "headers, LIST/INFO/GO, meta contexts; READ (sparse replies), WRITE,\n"
          "FLUSH, TRIM, WRITE_ZEROES (FAST_ZERO), CACHE, BLOCK_STATUS; multi-conn.\n"
          "\n"
          "Examples:\n"
          "  %s serve disk.qcow2 --socket /tmp/nbd.sock --read-only --bitmap b1\n"
          "  nbdinfo --map=qemu:dirty-bitmap:b1 'nbd+unix:///?socket=/tmp/nbd.sock'\n"
          "  %s serve disk.qcow2 --run 'nbdcopy \"$uri\" backup.raw'\n"
          "\n"
          "Exit status: 0 after a clean shutdown; the command's status with --run;\n"
          "1 on errors (bad options, the image cannot be opened or closed cleanly).\n",
          progname, progname, progname);
}

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

static int
parse_uint (const char *s, unsigned min, unsigned max, unsigned *out)
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

static bool
looks_like_address (const char *s)
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

  snprintf (port, plen, "%s", DEFAULT_PORT);
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

static int
listen_tcp (const char *addr, struct listener *ls, size_t *nls,
            char *uri_host, size_t uhlen, unsigned *bound_port)
{
  char host[256], port[32];
  struct addrinfo hints, *res, *ai;
  int r;

  if (split_address (addr, host, sizeof host, port, sizeof port) == -1)
    return fail ("invalid --listen address '%s'", addr);
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
    return fail ("--listen %s: %s", addr ? addr : "", gai_strerror (r));

  for (ai = res; ai && *nls < MAX_LISTENERS; ai = ai->ai_next) {
    int fd = socket (ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                     ai->ai_protocol);
    int one = 1;

    if (fd == -1)
      continue;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (*bound_port && ai->ai_family == AF_INET6)
      ((struct sockaddr_in6 *) ai->ai_addr)->sin6_port = htons (*bound_port);
    else if (*bound_port && ai->ai_family == AF_INET)
      ((struct sockaddr_in *) ai->ai_addr)->sin_port = htons (*bound_port);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1 ||
        listen (fd, SOMAXCONN) == -1) {
      int e = errno;

      close (fd);
      if (e == EADDRNOTAVAIL || e == EAFNOSUPPORT)
        continue;
      freeaddrinfo (res);
      return fail ("--listen %s: %s", addr ? addr : "", strerror (e));
    }
    if (*bound_port == 0) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      char h[INET6_ADDRSTRLEN];

      getsockname (fd, (struct sockaddr *) &ss, &sl);
      if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &ss;

        *bound_port = ntohs (s6->sin6_port);
        inet_ntop (AF_INET6, &s6->sin6_addr, h, sizeof h);
        snprintf (uri_host, uhlen, "[%s]", h);
      }
      else {
        struct sockaddr_in *s4 = (struct sockaddr_in *) &ss;

        *bound_port = ntohs (s4->sin_port);
        inet_ntop (AF_INET, &s4->sin_addr, h, sizeof h);
        snprintf (uri_host, uhlen, "%s", h);
      }
    }
    ls[*nls].fd = fd;
    ls[*nls].tcp = true;
    (*nls)++;
  }
  freeaddrinfo (res);
  if (*nls == 0)
    return fail ("--listen %s: no address to listen on", addr ? addr : "");
  return 0;
}

static int
listen_unix (const char *path, struct listener *ls, size_t *nls)
{
  struct sockaddr_un sun;
  struct stat st;
  int fd;

  memset (&sun, 0, sizeof sun);
  sun.sun_family = AF_UNIX;
  if (strlen (path) >= sizeof sun.sun_path)
    return fail ("socket path too long: %s", path);
  strcpy (sun.sun_path, path);
  if (lstat (path, &st) == 0) {
    if (!S_ISSOCK (st.st_mode))
      return fail ("%s exists and is not a socket", path);
    unlink (path);
  }
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return fail ("socket: %s", strerror (errno));
  if (bind (fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
      listen (fd, SOMAXCONN) == -1) {
    int e = errno;

    close (fd);
    return fail ("%s: %s", path, strerror (e));
  }
  ls[*nls].fd = fd;
  ls[*nls].tcp = false;
  (*nls)++;
  return 0;
}

/* systemd socket activation: LISTEN_PID is us, LISTEN_FDS sockets from 3.
 * Returns the number of sockets taken (0: not activated). */
static size_t
listen_activated (struct listener *ls)
{
  const char *spid = getenv ("LISTEN_PID"), *sfds = getenv ("LISTEN_FDS");
  unsigned pid, nfds, i;
  size_t n = 0;

  if (!spid || !sfds || parse_uint (spid, 1, UINT_MAX, &pid) == -1 ||
      parse_uint (sfds, 1, MAX_LISTENERS, &nfds) == -1 ||
      (pid_t) pid != getpid ())
    return 0;
  for (i = 0; i < nfds; i++) {
    int fd = 3 + (int) i, type = 0, dom = 0;
    socklen_t sl = sizeof type;

    fcntl (fd, F_SETFD, FD_CLOEXEC);
    getsockopt (fd, SOL_SOCKET, SO_TYPE, &type, &sl);
    sl = sizeof dom;
    getsockopt (fd, SOL_SOCKET, SO_DOMAIN, &dom, &sl);
    ls[n].fd = fd;
    ls[n].tcp = dom == AF_INET || dom == AF_INET6;
    n++;
  }
  unsetenv ("LISTEN_PID");
  unsetenv ("LISTEN_FDS");
  unsetenv ("LISTEN_FDNAMES");
  return n;
}

/* Percent-encode s for a URI path or query value. */
static void
uri_encode (const char *s, char *out, size_t len)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t j = 0;

  for (; *s && j + 4 < len; s++) {
    unsigned char ch = (unsigned char) *s;

    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr ("-._~/", ch))
      out[j++] = (char) ch;
    else {
      out[j++] = '%';
      out[j++] = hex[ch >> 4];
      out[j++] = hex[ch & 15];
    }
  }
  out[j] = '\0';
}

/* Fork and exec CMD with the URI variables set.  Returns the pid or -1. */
static pid_t
run_command (const char *cmd, const char *sock, const char *tcp_host,
             unsigned port, const char *exportname)
{
  size_t ulen = 3 * (PATH_MAX + NBD_MAX_STRING) + 64;
  char *uri = malloc (ulen), *nbd = malloc (ulen);
  char *ename = malloc (3 * NBD_MAX_STRING + 8), *spath = malloc (3 * PATH_MAX);
  char portstr[16];
  pid_t pid;

  if (!uri || !nbd || !ename || !spath) {
    free (uri);
    free (nbd);
    free (ename);
    free (spath);
    fail ("out of memory");
    return -1;
  }
  uri_encode (exportname, ename, 3 * NBD_MAX_STRING + 8);
  if (sock) {
    uri_encode (sock, spath, 3 * PATH_MAX);
    snprintf (uri, ulen, "nbd+unix:///%s?socket=%s", ename, spath);
    if (*exportname)
      snprintf (nbd, ulen, "nbd:unix:%s:exportname=%s", sock, exportname);
    else
      snprintf (nbd, ulen, "nbd:unix:%s", sock);
  }
  else {
    snprintf (uri, ulen, "nbd://%s:%u/%s", tcp_host, port, ename);
    if (*exportname)
      snprintf (nbd, ulen, "nbd:%s:%u:exportname=%s", tcp_host, port,
                exportname);
    else
      snprintf (nbd, ulen, "nbd:%s:%u", tcp_host, port);
  }
  snprintf (portstr, sizeof portstr, "%u", port);

  fflush (NULL);
  pid = fork ();
  if (pid == 0) {
    setenv ("uri", uri, 1);
    setenv ("nbd", nbd, 1);
    setenv ("exportname", exportname, 1);
    if (sock)
      setenv ("unixsocket", sock, 1);
    else
      setenv ("port", portstr, 1);
    signal (SIGPIPE, SIG_DFL);
    signal (SIGINT, SIG_DFL);
    signal (SIGTERM, SIG_DFL);
    signal (SIGCHLD, SIG_DFL);
    signal (SIGHUP, SIG_DFL);
    execl ("/bin/sh", "sh", "-c", cmd, (char *) NULL);
    _exit (127);
  }
  if (pid == -1)
    fail ("fork: %s", strerror (errno));
  free (uri);
  free (nbd);
  free (ename);
  free (spath);
  return pid;
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
accept_one (struct nbd_server *srv, const struct listener *l,
            unsigned max_conn, unsigned *next_id)
{
  struct conn_arg *a;
  pthread_attr_t attr;
  pthread_t th;
  int fd, one = 1;

  fd = accept4 (l->fd, NULL, NULL, SOCK_CLOEXEC);
  if (fd == -1) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      nbd_error ("accept: %s", strerror (errno));
    return;
  }
  if (l->tcp)
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_mutex_lock (&nconn_lock);
  if (nconn >= max_conn) {
    pthread_mutex_unlock (&nconn_lock);
    nbd_error ("too many connections (%u), closing a new one", max_conn);
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

/* Choose the bitmaps to export. */
static int
choose_bitmaps (struct nbd_export *exp, char **wanted, size_t nwanted)
{
  struct rawtrack_image *img = exp->img;
  int i, n = rawtrack_image_bitmap_count (img);
  size_t k;

  exp->bitmaps = calloc ((size_t) (n > 0 ? n : 1) + nwanted, sizeof (char *));
  if (!exp->bitmaps)
    return fail ("out of memory");
  if (nwanted) {
    for (k = 0; k < nwanted; k++) {
      size_t j;

      i = rawtrack_bitmap_find (img, wanted[k]);
      if (i < 0)
        return fail ("--bitmap %s: the image has no bitmap of that name",
                     wanted[k]);
      if (rawtrack_image_bitmap_flags (img, i) & RAWTRACK_BITMAP_IN_USE)
        return fail ("--bitmap %s: the bitmap is inconsistent (in-use): it "
                     "cannot be exported", wanted[k]);
      for (j = 0; j < exp->nr_bitmaps; j++)
        if (strcmp (exp->bitmaps[j], wanted[k]) == 0)
          break;
      if (j == exp->nr_bitmaps &&
          !(exp->bitmaps[exp->nr_bitmaps++] = strdup (wanted[k])))
        return fail ("out of memory");
    }
    return 0;
  }
  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);

    if (rawtrack_image_bitmap_flags (img, i) & RAWTRACK_BITMAP_IN_USE) {
      fprintf (stderr, "%s serve: warning: bitmap %s is inconsistent "
               "(in-use) and is not exported\n", progname, name);
      continue;
    }
    /* A copy: the handle's directory may be rewritten while serving. */
    if (!(exp->bitmaps[exp->nr_bitmaps++] = strdup (name)))
      return fail ("out of memory");
  }
  return 0;
}

int
cmd_serve (int argc, char **argv)
{
  enum { OPT_RUN = 256, OPT_DATA_FILE, OPT_TRACK, OPT_HANDSHAKE,
         OPT_SENDFILE, OPT_TLS, OPT_TLS_CERTS, OPT_TLS_PSK, OPT_TLS_VERIFY };
  static const struct option opts[] = {
    { "socket", required_argument, NULL, 's' },
    { "listen", optional_argument, NULL, 'l' },
    { "export", required_argument, NULL, 'e' },
    { "export-name", required_argument, NULL, 'e' },
    { "description", required_argument, NULL, 'D' },
    { "read-only", no_argument, NULL, 'r' },
    { "readonly", no_argument, NULL, 'r' },
    { "bitmap", required_argument, NULL, 'B' },
    { "connections", required_argument, NULL, 'c' },
    { "threads", required_argument, NULL, 't' },
    { "pidfile", required_argument, NULL, 'P' },
    { "run", required_argument, NULL, OPT_RUN },
    { "data-file", required_argument, NULL, OPT_DATA_FILE },
    { "track", required_argument, NULL, OPT_TRACK },
    { "sendfile", no_argument, NULL, OPT_SENDFILE },
    { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
    { "tls", required_argument, NULL, OPT_TLS },
    { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *sock = NULL, *listen_addr = NULL, *exportname = "";
  const char *description = NULL, *pidfile = NULL, *run = NULL;
  const char *data_file = NULL;
  bool use_tcp = false, readonly = false, made_sock = false;
  char **wanted = NULL;
  size_t nwanted = 0, nls = 0, i;
  unsigned max_conn = 16, threads = 0, hs_timeout = 10, track = 0;
  bool use_sendfile = false, tls_verify = false;
  const char *tls_certs = NULL, *tls_psk = NULL;
  enum tls_mode tls_mode = TLS_OFF;
  struct tls_config *tls = NULL;
  unsigned next_id = 0, tcp_port = 0;
  char tmpdir[] = "/tmp/rawtrack-serve.XXXXXX", sockbuf[PATH_MAX];
  char uri_host[INET6_ADDRSTRLEN + 8] = "localhost";
  struct listener ls[MAX_LISTENERS];
  struct nbd_export exp;
  struct nbd_server srv;
  int quit_pipe[2] = { -1, -1 };
  struct sigaction sa;
  pid_t run_pid = -1;
  int status = 0, c;
  bool quit = false;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "s:l::e:D:rB:c:t:P:vh", opts,
                           NULL)) != -1) {
    switch (c) {
    case 's': sock = optarg; break;
    case 'l':
      use_tcp = true;
      listen_addr = optarg;
      if (!listen_addr && optind < argc && looks_like_address (argv[optind]))
        listen_addr = argv[optind++];
      break;
    case 'e': exportname = optarg; break;
    case 'D': description = optarg; break;
    case 'r': readonly = true; break;
    case 'B': {
      char **w = realloc (wanted, (nwanted + 1) * sizeof *w);

      if (!w)
        return fail ("out of memory");
      wanted = w;
      wanted[nwanted++] = optarg;
      break;
    }
    case 'c':
      if (parse_uint (optarg, 1, 4096, &max_conn) == -1)
        return usage_error ("serve", "--connections must be 1..4096");
      break;
    case 't':
      if (parse_uint (optarg, 1, 1024, &threads) == -1)
        return usage_error ("serve", "--threads must be 1..1024");
      break;
    case 'P': pidfile = optarg; break;
    case OPT_RUN: run = optarg; break;
    case OPT_DATA_FILE: data_file = optarg; break;
    case OPT_SENDFILE: use_sendfile = true; break;
    case OPT_TRACK:
      if (strcmp (optarg, "safe") == 0) track = 0;
      else if (strcmp (optarg, "process") == 0) track = RAWTRACK_OPEN_TRACK_PROCESS;
      else if (strcmp (optarg, "lazy") == 0) track = RAWTRACK_OPEN_TRACK_LAZY;
      else return usage_error ("serve", "--track must be safe, process or lazy");
      break;
    case OPT_HANDSHAKE:
      if (parse_uint (optarg, 0, 86400, &hs_timeout) == -1)
        return usage_error ("serve", "--handshake-timeout must be 0..86400");
      break;
    case OPT_TLS:
      if (strcmp (optarg, "off") == 0) tls_mode = TLS_OFF;
      else if (strcmp (optarg, "on") == 0) tls_mode = TLS_ON;
      else if (strcmp (optarg, "require") == 0) tls_mode = TLS_REQUIRE;
      else {
        free (wanted);
        return usage_error ("serve", "--tls must be off, on or require");
      }
      break;
    case OPT_TLS_CERTS: tls_certs = optarg; break;
    case OPT_TLS_PSK: tls_psk = optarg; break;
    case OPT_TLS_VERIFY: tls_verify = true; break;
    case 'v': nbd_verbose = true; break;
    case 'h': help (); free (wanted); return 0;
    default:
      free (wanted);
      return usage_error ("serve", "invalid option or missing argument: '%s'",
                          argv[optind - 1]);
    }
  }
  if (argc - optind != 1) {
    free (wanted);
    return usage_error ("serve", "expected exactly one IMAGE");
  }
  if (sock && use_tcp) {
    free (wanted);
    return usage_error ("serve", "--socket and --listen cannot be combined");
  }
  if (strlen (exportname) > NBD_MAX_STRING ||
      (description && strlen (description) > NBD_MAX_STRING)) {
    free (wanted);
    return usage_error ("serve", "export name and description are limited "
                        "to %d bytes", NBD_MAX_STRING);
  }
  if (tls_mode != TLS_OFF && !tls_certs == !tls_psk) {
    free (wanted);
    return usage_error ("serve", "--tls=%s needs exactly one of "
                        "--tls-certificates DIR and --tls-psk FILE",
                        tls_mode == TLS_ON ? "on" : "require");
  }
  if (tls_mode == TLS_OFF && (tls_certs || tls_psk || tls_verify)) {
    free (wanted);
    return usage_error ("serve", "TLS credentials given but --tls=on or "
                        "--tls=require is missing");
  }
  if (tls_verify && tls_psk) {
    free (wanted);
    return usage_error ("serve", "--tls-verify-peer is for X.509 "
                        "certificates, not --tls-psk");
  }
  if (sock && sock[0] != '/') {
    /* Keep $uri usable from any directory. */
    if (!getcwd (sockbuf, sizeof sockbuf) ||
        strlen (sockbuf) + 1 + strlen (sock) >= sizeof sockbuf) {
      free (wanted);
      return fail ("cannot make the socket path absolute");
    }
    strcat (sockbuf, "/");
    strcat (sockbuf, sock);
    sock = sockbuf;
  }

  /* Listening sockets first: activation needs nothing else. */
  nls = listen_activated (ls);
  if (nls > 0 && run) {
    free (wanted);
    return usage_error ("serve", "--run cannot be used with socket "
                        "activation");
  }
  if (nls > 0 && (sock || use_tcp)) {
    free (wanted);
    return usage_error ("serve", "--socket/--listen cannot be used with "
                        "socket activation");
  }
  if (nls == 0 && !sock && !use_tcp && !run) {
    free (wanted);
    return usage_error ("serve", "say where to listen: --socket PATH or "
                        "--listen[=ADDR[:PORT]]");
  }

  if (tls_mode != TLS_OFF) {
    char err[8400];

    tls = tls_config_new (tls_certs, tls_psk, tls_verify, err, sizeof err);
    if (!tls) {
      free (wanted);
      return fail ("%s", err);
    }
  }
  memset (&exp, 0, sizeof exp);
  exp.img = rawtrack_image_open (argv[optind],
                                 (readonly ? 0 : RAWTRACK_OPEN_RDWR) | track,
                                 data_file);
  if (!exp.img) {
    free (wanted);
    tls_config_free (tls);
    return fail_lib ("%s", argv[optind]);
  }
  exp.name = exportname;
  exp.description = description;
  exp.size = rawtrack_image_virtual_size (exp.img);
  exp.readonly = readonly;
  exp.all_local = rawtrack_image_data_file_raw (exp.img) != 0;
  exp.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
               NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN;
  if (readonly)
    exp.eflags |= NBD_FLAG_READ_ONLY;
  else
    exp.eflags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                  NBD_FLAG_SEND_FAST_ZERO;
  exp.min_block = 1;
  exp.pref_block = 4096;
  exp.max_block = NBD_MAX_PAYLOAD;
  if (choose_bitmaps (&exp, wanted, nwanted) != 0) {
    status = 1;
    goto out_image;
  }

  if (nls == 0 && sock && listen_unix (sock, ls, &nls) != 0) {
    status = 1;
    goto out_image;
  }
  if (nls == 0 && use_tcp &&
      listen_tcp (listen_addr, ls, &nls, uri_host, sizeof uri_host,
                  &tcp_port) != 0) {
    status = 1;
    goto out_listen;
  }
  if (nls == 0 && run) {
    if (!mkdtemp (tmpdir)) {
      status = fail ("mkdtemp: %s", strerror (errno));
      goto out_image;
    }
    snprintf (sockbuf, sizeof sockbuf, "%s/nbd.sock", tmpdir);
    sock = sockbuf;
    made_sock = true;
    if (listen_unix (sock, ls, &nls) != 0) {
      status = 1;
      goto out_listen;
    }
  }

  /* Signals: SIGPIPE ignored (sends use MSG_NOSIGNAL anyway), the others
   * become bytes on the self-pipe. */
  if (pipe2 (sig_pipe, O_CLOEXEC | O_NONBLOCK) == -1 ||
      pipe2 (quit_pipe, O_CLOEXEC) == -1) {
    status = fail ("pipe: %s", strerror (errno));
    goto out_listen;
  }
  signal (SIGPIPE, SIG_IGN);
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  sigaction (SIGCHLD, &sa, NULL);

  memset (&srv, 0, sizeof srv);
  srv.exp = &exp;
  srv.quit_fd = quit_pipe[0];
  if (threads == 0) {
    /* Measured (bench/bench-nbd.sh): past a few workers per CPU they
     * only contend for the socket; 16 is nbdkit's fixed number. */
    long ncpu = sysconf (_SC_NPROCESSORS_ONLN);

    threads = ncpu <= 0 || ncpu >= 4 ? 16 : 4 * (unsigned) ncpu;
  }
  srv.threads = threads;
  srv.sendfile = use_sendfile;
  srv.handshake_ms = hs_timeout * 1000;
  srv.tls_mode = tls_mode;
  srv.tls = tls;
  srv.max_options = 64;

  if (pidfile) {
    FILE *fp = fopen (pidfile, "w");

    if (!fp || fprintf (fp, "%ld\n", (long) getpid ()) < 0 ||
        fclose (fp) != 0) {
      status = fail ("--pidfile %s: %s", pidfile, strerror (errno));
      goto out_listen;
    }
  }
  nbd_debug ("serving %s (%" PRIu64 " bytes, %zu bitmaps) on %zu socket(s)",
             argv[optind], exp.size, exp.nr_bitmaps, nls);
  if (run) {
    run_pid = run_command (run, sock, uri_host, tcp_port, exportname);
    if (run_pid == -1) {
      status = 1;
      goto out_listen;
    }
  }

  /* The accept loop. */
  while (!quit) {
    struct pollfd pfd[MAX_LISTENERS + 1];
    int r;

    for (i = 0; i < nls; i++) {
      pfd[i].fd = ls[i].fd;
      pfd[i].events = POLLIN;
      pfd[i].revents = 0;
    }
    pfd[nls].fd = sig_pipe[0];
    pfd[nls].events = POLLIN;
    pfd[nls].revents = 0;
    r = poll (pfd, nls + 1, -1);
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

          if (run_pid > 0 && waitpid (run_pid, &st, WNOHANG) == run_pid) {
            status = WIFEXITED (st) ? WEXITSTATUS (st)
                                    : 128 + WTERMSIG (st);
            run_pid = -1;
            nbd_debug ("--run command exited with status %d", status);
            quit = true;
          }
        }
        else {
          nbd_debug ("signal %d: shutting down", sigs[j]);
          quit = true;
        }
      }
    }
    for (i = 0; !quit && i < nls; i++)
      if (pfd[i].revents & POLLIN)
        accept_one (&srv, &ls[i], max_conn, &next_id);
  }

  /* Shutdown: no new connections, wake every reader, wait for them. */
  for (i = 0; i < nls; i++)
    close (ls[i].fd);
  nls = 0;
  if (sock)
    unlink (sock);
  if (write (quit_pipe[1], "q", 1) != 1)
    nbd_error ("cannot signal the connections to stop");
  pthread_mutex_lock (&nconn_lock);
  while (nconn > 0)
    pthread_cond_wait (&nconn_cond, &nconn_lock);
  pthread_mutex_unlock (&nconn_lock);
  if (run_pid > 0) {
    int st;

    /* We were told to stop while the command still runs. */
    kill (run_pid, SIGTERM);
    if (waitpid (run_pid, &st, 0) == run_pid)
      status = WIFEXITED (st) ? WEXITSTATUS (st) : 128 + WTERMSIG (st);
  }

 out_listen:
  for (i = 0; i < nls; i++)
    close (ls[i].fd);
  if (sock)
    unlink (sock);
  if (made_sock)
    rmdir (tmpdir);
  if (pidfile)
    unlink (pidfile);
 out_image:
  if (rawtrack_image_close (exp.img) == -1) {
    fail_lib ("closing %s", argv[optind]);
    if (status == 0)
      status = 1;
  }
  for (i = 0; i < exp.nr_bitmaps; i++)
    free (exp.bitmaps[i]);
  free (exp.bitmaps);
  free (wanted);
  if (quit_pipe[0] >= 0) {
    close (quit_pipe[0]);
    close (quit_pipe[1]);
  }
  tls_config_free (tls);
  return status;
}
