/* rawtrack - `rawtrack serve`: export an image over NBD.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the command line (parse_options), the exports built from the
 * opened images (open_export: names, which bitmaps are offered), where to
 * listen (open_listeners, on server/sockets.c), --control with its
 * registry entries (server/control*.c, server/registry.c), --pidfile and
 * the --run captive mode; the accept loop and the drain are the server
 * library's (server/accept-loop.c).  The order of a run and of its
 * shutdown:
 *
 *   options -> listening sockets of socket activation -> open the images
 *     -> Unix/TCP listeners -> control socket -> registry entries
 *     -> signals -> pidfile -> --run -> accept loop
 *   SIGINT/SIGTERM, or the --run command exits
 *     -> stop accepting, close and unlink the listening sockets
 *     -> registry entries removed; control socket stopped (no request
 *        runs after; views ended, their frozen bitmaps left as they are)
 *     -> nbd_drain: idle readers and handshakes stop, requests already
 *        read complete and are answered, every connection thread ends
 *     -> rawtrack_image_close of each image (writes back tracking state,
 *        flushes)
 *     -> exit 0 (or the --run command's status; 1 if closing failed)
 *
 * Locking: none of its own; runs in the main thread.
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

static void
help (void)
{
  printf ("Usage: %s serve IMAGE... [--socket PATH | --listen[=ADDR[:PORT]]]\n"
          "                      [--export NAME] [--description TEXT] [--read-only]\n"
          "                      [--bitmap NAME]... [--connections N] [--threads N]\n"
          "                      [--pidfile FILE] [--run CMD] [--data-file PATH]\n"
          "                      [--allow-device] [--allow-remote]\n"
          "                      [--tls=off|on|require (--tls-certificates DIR |\n"
          "                       --tls-psk FILE) [--tls-verify-peer]]\n"
          "                      [--control PATH [--fleece-dir DIR | --fleece-memory]\n"
          "                       [--fleece-limit SIZE]]\n"
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
          "Several images (IMAGE or NAME=IMAGE each) are exported under their own\n"
          "names: NAME, or the file name without its directory and a .qcow2 suffix;\n"
          "the first also answers to the empty name.  With one image the name is\n"
          "--export's (default \"\").  Names must be unique and, with --control,\n"
          "must not contain '@'.\n"
          "\n"
          "Where to listen (one is required, unless --run or socket activation):\n"
          "  -s, --socket PATH       a Unix domain socket (a stale socket at PATH is\n"
          "                          replaced, one a server answers on is refused;\n"
          "                          at exit it is removed if it is still ours)\n"
          "  -l, --listen[=ADDR[:PORT]]\n"
          "                          TCP.  Without ADDR: loopback only (127.0.0.1 and\n"
          "                          ::1); PORT defaults to 10809.  Other addresses\n"
          "                          (0.0.0.0, ::, a host name, [v6]:port) are used\n"
          "                          only when given explicitly.  NBD has no\n"
          "                          authentication: do not expose it carelessly.\n"
          "  Socket activation: when started with LISTEN_PID/LISTEN_FDS (systemd,\n"
          "  `nbdinfo -- [ rawtrack serve IMAGE ]`), the inherited sockets are used.\n"
          "  The installed systemd units do this: rawtrack-serve@NAME.socket\n"
          "  listens on /run/rawtrack/NAME.sock and its first client starts\n"
          "  rawtrack-serve@NAME.service, which serves the image IMAGE= with the\n"
          "  options SERVE_OPTIONS= from /etc/rawtrack/NAME.conf.\n"
          "\n"
          "The export:\n"
          "  -e, --export NAME       export name (default \"\"); the export also\n"
          "                          answers to the empty name\n"
          "  -D, --description TEXT  description shown by `nbdinfo --list`\n"
          "  -r, --read-only         open the image read-only; writes fail with EPERM\n"
          "                          (images with a backing file are always\n"
          "                          exported read-only)\n"
          "  -B, --bitmap NAME       offer only these bitmaps as\n"
          "                          qemu:dirty-bitmap:NAME (repeatable; default:\n"
          "                          every consistent bitmap of the image)\n"
          "      --data-file PATH    the external data file (overrides the name\n"
          "                          stored in the image); may be an NBD URI\n"
          "      --allow-remote      follow an NBD URI stored in the image as its\n"
          "                          data file (refused otherwise)\n"
          "      --allow-device      the data file may be a block device named by\n"
          "                          the image (without this only --data-file can\n"
          "                          name one)\n"
          "      --track MODE        write tracking: safe (default; survives power\n"
          "                          loss), process (survives process crashes) or\n"
          "                          lazy (QEMU's scheme); as `io --track`.\n"
          "                          --mode MODE is the same\n"
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
          "  --tls-certificates and --tls-psk also serve as the client credentials\n"
          "  of an nbds:// data file (the same directory may hold client-cert.pem\n"
          "  and client-key.pem); for that alone they need no --tls.\n"
          "  With TLS, --sendfile and zero-copy writes are not used for TLS\n"
          "  connections.  Clients: nbdinfo 'nbds+unix:///?socket=S&tls-certificates=\n"
          "  DIR', nbdinfo 'nbds://alice@HOST/?tls-psk-file=FILE', qemu-img\n"
          "  --object tls-creds-x509,id=t0,endpoint=client,dir=DIR and tls-creds=t0.\n"
          "\n"
          "Live backups (docs/control.md):\n"
          "      --control PATH      a control socket at PATH, mode 0600: ONLY THE\n"
          "                          OWNER of the server process (and root) may use\n"
          "                          it, and anyone who can may take checkpoints and\n"
          "                          publish point-in-time exports.  One JSON request\n"
          "                          per line: query, checkpoint (freeze bitmaps and\n"
          "                          start a point-in-time view of the disks, at one\n"
          "                          instant for the whole group), backup-begin\n"
          "                          (publish the read-only export NAME@CHECKPOINT),\n"
          "                          backup-end (success drops the frozen bitmaps,\n"
          "                          failure merges them back).  The server records\n"
          "                          itself in $XDG_RUNTIME_DIR/rawtrack/ (else\n"
          "                          /tmp/rawtrack-UID/) so that `rawtrack backup\n"
          "                          create IMAGE` finds it.  A live server at PATH\n"
          "                          is never taken over.\n"
          "      --fleece-dir DIR    where copy-before-write keeps the old data of\n"
          "                          clusters the guest overwrites while a view\n"
          "                          exists (default: beside each image, as\n"
          "                          IMAGE.fleece-CHECKPOINT, unlinked at once)\n"
          "      --fleece-memory     keep that data in memory instead\n"
          "      --fleece-limit SIZE at most SIZE bytes of old data for all views\n"
          "                          (K, M, G, T suffixes, or N%% of the served disks'\n"
          "                          total size; default 25%%).  Over it a view\n"
          "                          fails (its export answers EIO, backup-end merges\n"
          "                          its bitmaps back); guest writes never fail.\n"
          "\n"
          "Server:\n"
          "  -c, --connections N     at most N clients at once (default 16); more are\n"
          "                          closed at once; the soft descriptor limit is\n"
          "                          raised to fit them, or serve refuses to start\n"
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
  CLEANUP_FREE char *uri = malloc (ulen);
  CLEANUP_FREE char *nbd = malloc (ulen);
  CLEANUP_FREE char *ename = malloc (3 * NBD_MAX_STRING + 8);
  CLEANUP_FREE char *spath = malloc (3 * PATH_MAX);
  char portstr[16];
  pid_t pid;

  if (!uri || !nbd || !ename || !spath) {
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
  return pid;
}

/* Choose the bitmaps to export. */
static int
choose_bitmaps (struct nbd_export *exp, const char *const *wanted,
                size_t nwanted)
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

/* What the command line asks for. */
struct serve_options {
  struct string_vector images;     /* IMAGE or NAME=IMAGE arguments */
  const char *sock, *listen_addr, *exportname, *description;
  const char *control, *fleece_dir, *fleece_limit;
  bool fleece_memory;
  const char *pidfile, *run, *data_file;
  bool use_tcp, readonly, use_sendfile, tls_verify;
  const char *tls_certs, *tls_psk;
  enum tls_mode tls_mode;
  struct string_vector wanted;     /* --bitmap names */
  unsigned max_conn, threads, hs_timeout, track;
  unsigned allow_device;           /* 0 or RAWTRACK_OPEN_ALLOW_DEVICE */
  unsigned allow_remote;           /* 0 or RAWTRACK_OPEN_ALLOW_REMOTE */
  char sockbuf[PATH_MAX];          /* an absolute --socket */
  char ctlbuf[PATH_MAX];           /* an absolute --control */
  bool bound_unix;                 /* sock is ours to unlink at exit */
};

/* o's vectors freed. */
static void
options_reset (struct serve_options *o)
{
  string_vector_reset (&o->wanted);
  string_vector_reset (&o->images);
}

/* path made absolute into buf (PATH_MAX); -1 if it does not fit. */
static int
absolute (const char *path, char *buf)
{
  if (path[0] == '/')
    return snprintf (buf, PATH_MAX, "%s", path) < PATH_MAX ? 0 : -1;
  if (!getcwd (buf, PATH_MAX) ||
      strlen (buf) + 1 + strlen (path) >= PATH_MAX)
    return -1;
  strcat (buf, "/");
  strcat (buf, path);
  return 0;
}

/* Parse argv into *o.  0: go on; otherwise the exit status (1 on usage
 * errors, 0 after --help); o->wanted is reset then. */
static int
parse_options (int argc, char **argv, struct serve_options *o)
{
  enum { OPT_RUN = 256, OPT_DATA_FILE, OPT_ALLOW_DEVICE, OPT_TRACK, OPT_HANDSHAKE,
         OPT_SENDFILE, OPT_TLS, OPT_TLS_CERTS, OPT_TLS_PSK, OPT_TLS_VERIFY,
         OPT_ALLOW_REMOTE_DATA, OPT_CONTROL, OPT_FLEECE_DIR, OPT_FLEECE_MEMORY,
         OPT_FLEECE_LIMIT };
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
    { "allow-device", no_argument, NULL, OPT_ALLOW_DEVICE },
    { "allow-remote", no_argument, NULL, OPT_ALLOW_REMOTE_DATA },
    { "track", required_argument, NULL, OPT_TRACK },
    { "mode", required_argument, NULL, OPT_TRACK },  /* io's old spelling */
    { "sendfile", no_argument, NULL, OPT_SENDFILE },
    { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
    { "tls", required_argument, NULL, OPT_TLS },
    { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
    { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
    { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY },
    { "control", required_argument, NULL, OPT_CONTROL },
    { "fleece-dir", required_argument, NULL, OPT_FLEECE_DIR },
    { "fleece-memory", no_argument, NULL, OPT_FLEECE_MEMORY },
    { "fleece-limit", required_argument, NULL, OPT_FLEECE_LIMIT },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c, r;

  memset (o, 0, sizeof *o);
  o->exportname = "";
  o->max_conn = 16;
  o->hs_timeout = 10;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "s:l::e:D:rB:c:t:P:vh", opts,
                           NULL)) != -1) {
    switch (c) {
    case 's': o->sock = optarg; break;
    case 'l':
      o->use_tcp = true;
      o->listen_addr = optarg;
      if (!o->listen_addr && optind < argc &&
          nbd_looks_like_address (argv[optind]))
        o->listen_addr = argv[optind++];
      break;
    case 'e': o->exportname = optarg; break;
    case 'D': o->description = optarg; break;
    case 'r': o->readonly = true; break;
    case 'B': {
      if (string_vector_append (&o->wanted, optarg) == -1) {
        r = fail ("out of memory");
        goto err;
      }
      break;
    }
    case 'c':
      if (nbd_parse_uint (optarg, 1, 4096, &o->max_conn) == -1) {
        r = usage_error ("serve", "--connections must be 1..4096");
        goto err;
      }
      break;
    case 't':
      if (nbd_parse_uint (optarg, 1, 1024, &o->threads) == -1) {
        r = usage_error ("serve", "--threads must be 1..1024");
        goto err;
      }
      break;
    case 'P': o->pidfile = optarg; break;
    case OPT_RUN: o->run = optarg; break;
    case OPT_DATA_FILE: o->data_file = optarg; break;
    case OPT_ALLOW_DEVICE: o->allow_device = RAWTRACK_OPEN_ALLOW_DEVICE; break;
    case OPT_ALLOW_REMOTE_DATA:
      o->allow_remote = RAWTRACK_OPEN_ALLOW_REMOTE;
      break;
    case OPT_SENDFILE: o->use_sendfile = true; break;
    case OPT_TRACK:
      if (parse_track_mode (optarg, &o->track) == -1) {
        r = usage_error ("serve", TRACK_MODE_ERROR);
        goto err;
      }
      break;
    case OPT_HANDSHAKE:
      if (nbd_parse_uint (optarg, 0, 86400, &o->hs_timeout) == -1) {
        r = usage_error ("serve", "--handshake-timeout must be 0..86400");
        goto err;
      }
      break;
    case OPT_TLS:
      if (strcmp (optarg, "off") == 0) o->tls_mode = TLS_OFF;
      else if (strcmp (optarg, "on") == 0) o->tls_mode = TLS_ON;
      else if (strcmp (optarg, "require") == 0) o->tls_mode = TLS_REQUIRE;
      else {
        r = usage_error ("serve", "--tls must be off, on or require");
        goto err;
      }
      break;
    case OPT_TLS_CERTS: o->tls_certs = optarg; break;
    case OPT_TLS_PSK: o->tls_psk = optarg; break;
    case OPT_TLS_VERIFY: o->tls_verify = true; break;
    case OPT_CONTROL: o->control = optarg; break;
    case OPT_FLEECE_DIR: o->fleece_dir = optarg; break;
    case OPT_FLEECE_MEMORY: o->fleece_memory = true; break;
    case OPT_FLEECE_LIMIT: o->fleece_limit = optarg; break;
    case 'v': nbd_verbose = true; break;
    case 'h':
      help ();
      r = 0;
      goto err;
    default:
      r = usage_error ("serve", "invalid option or missing argument: '%s'",
                       argv[optind - 1]);
      goto err;
    }
  }
  r = 1;
  if (argc - optind < 1) {
    usage_error ("serve", "expected an IMAGE (or several)");
    goto err;
  }
  for (; optind < argc; optind++)
    if (string_vector_append (&o->images, argv[optind]) == -1) {
      fail ("out of memory");
      goto err;
    }
  if (o->images.len > 1 && (o->exportname[0] || o->data_file)) {
    usage_error ("serve", "--export and --data-file are for one IMAGE; "
                 "name several exports NAME=IMAGE");
    goto err;
  }
  if (!o->control && (o->fleece_dir || o->fleece_memory || o->fleece_limit)) {
    usage_error ("serve", "--fleece-dir, --fleece-memory and --fleece-limit "
                 "need --control PATH");
    goto err;
  }
  if (o->fleece_dir && o->fleece_memory) {
    usage_error ("serve", "--fleece-dir and --fleece-memory cannot be "
                 "combined");
    goto err;
  }
  if (o->control && absolute (o->control, o->ctlbuf) == -1) {
    fail ("cannot make the --control path absolute");
    goto err;
  }
  if (o->control)
    o->control = o->ctlbuf;
  if (o->sock && o->use_tcp) {
    usage_error ("serve", "--socket and --listen cannot be combined");
    goto err;
  }
  if (strlen (o->exportname) > NBD_MAX_STRING ||
      (o->description && strlen (o->description) > NBD_MAX_STRING)) {
    usage_error ("serve", "export name and description are limited "
                 "to %d bytes", NBD_MAX_STRING);
    goto err;
  }
  if (o->tls_mode != TLS_OFF && !o->tls_certs == !o->tls_psk) {
    usage_error ("serve", "--tls=%s needs exactly one of "
                 "--tls-certificates DIR and --tls-psk FILE",
                 o->tls_mode == TLS_ON ? "on" : "require");
    goto err;
  }
  if (o->tls_mode == TLS_OFF && o->tls_verify) {
    usage_error ("serve", "--tls-verify-peer given but --tls=on or "
                 "--tls=require is missing");
    goto err;
  }
  if (o->tls_verify && o->tls_psk) {
    usage_error ("serve", "--tls-verify-peer is for X.509 "
                 "certificates, not --tls-psk");
    goto err;
  }
  if (o->sock && o->sock[0] != '/') {
    /* Keep $uri usable from any directory. */
    if (!getcwd (o->sockbuf, sizeof o->sockbuf) ||
        strlen (o->sockbuf) + 1 + strlen (o->sock) >= sizeof o->sockbuf) {
      fail ("cannot make the socket path absolute");
      goto err;
    }
    strcat (o->sockbuf, "/");
    strcat (o->sockbuf, o->sock);
    o->sock = o->sockbuf;
  }
  return 0;

 err:
  options_reset (o);
  return r;
}

/* The export name of image argument arg (IMAGE or NAME=IMAGE) and the
 * image path: NAME=IMAGE only when arg itself is not a file.  *name is
 * malloc'd. */
static int
split_image_arg (const struct serve_options *o, const char *arg,
                 char **name, const char **image)
{
  const char *eq = strchr (arg, '=');

  *image = arg;
  if (eq && eq > arg && access (arg, F_OK) == -1) {
    *name = strndup (arg, (size_t) (eq - arg));
    *image = eq + 1;
  }
  else if (o->images.len == 1)
    *name = strdup (o->exportname);
  else {
    const char *slash = strrchr (arg, '/');
    const char *base = slash ? slash + 1 : arg;
    size_t len = strlen (base);

    if (len > 6 && strcmp (base + len - 6, ".qcow2") == 0)
      len -= 6;
    *name = strndup (base, len);
  }
  if (!*name)
    return fail ("out of memory");
  if (strlen (*name) > NBD_MAX_STRING)
    return fail ("export name %s is longer than %d bytes", *name,
                 NBD_MAX_STRING);
  if (o->control && strchr (*name, '@'))
    return fail ("export name '%s': names may not contain '@' with "
                 "--control (NAME@CHECKPOINT names point-in-time exports)",
                 *name);
  return 0;
}

/* Open the image and describe the export.  0, or 1 after reporting. */
static int
open_export (const struct serve_options *o, const char *image,
             const char *name, struct nbd_export *exp)
{
  bool readonly = o->readonly;

  memset (exp, 0, sizeof *exp);
  /* The same credentials for an nbds:// data file. */
  if ((o->tls_certs || o->tls_psk) &&
      rawtrack_nbd_set_tls (o->tls_certs, o->tls_psk) == -1)
    return fail_lib ("TLS credentials");
  exp->img = rawtrack_image_open (image,
                                  (readonly ? 0 : RAWTRACK_OPEN_RDWR) |
                                  o->track | o->allow_device |
                                  o->allow_remote, o->data_file);
  if (!exp->img)
    return fail_lib ("%s", image);
  /* rawtrack cannot write images with a backing file: export them
   * read-only rather than writable with every write failing. */
  if (!readonly && rawtrack_image_backing_file (exp->img)) {
    if (!nbd_quiet)
      fprintf (stderr, "rawtrack serve: %s has a backing file ('%s'), "
               "which rawtrack cannot write to: exporting it read-only\n",
               image, rawtrack_image_backing_file (exp->img));
    rawtrack_image_close (exp->img);
    readonly = true;
    exp->img = rawtrack_image_open (image, o->track | o->allow_device |
                                    o->allow_remote, o->data_file);
    if (!exp->img)
      return fail_lib ("%s", image);
  }
  {
    char why[512];

    if (data_file_change_text (exp->img, why, sizeof why))
      fprintf (stderr, "rawtrack serve: warning: %s: %s\n", image, why);
  }
  exp->name = name;
  exp->description = o->description;
  exp->size = rawtrack_image_virtual_size (exp->img);
  exp->readonly = readonly;
  exp->all_local = rawtrack_image_data_file_raw (exp->img) != 0;
  exp->eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE |
                NBD_FLAG_CAN_MULTI_CONN;
  if (readonly)
    exp->eflags |= NBD_FLAG_READ_ONLY;
  else
    exp->eflags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                   NBD_FLAG_SEND_FAST_ZERO;
  exp->min_block = 1;
  exp->pref_block = 4096;
  exp->max_block = NBD_MAX_PAYLOAD;
  return choose_bitmaps (exp, o->wanted.ptr, o->wanted.len) != 0;
}

static void
close_export (struct nbd_export *exp)
{
  size_t i;

  for (i = 0; i < exp->nr_bitmaps; i++)
    free (exp->bitmaps[i]);
  free (exp->bitmaps);
  exp->bitmaps = NULL;
  exp->nr_bitmaps = 0;
}

/* The image's identity and gate for the views (struct nbd_disk). */
static int
init_disk (const char *image, struct nbd_export *exp, struct nbd_disk *d)
{
  pthread_rwlockattr_t a;
  struct stat st;

  memset (d, 0, sizeof *d);
  d->img = exp->img;
  d->path = realpath (image, NULL);
  if (!d->path || stat (d->path, &st) == -1)
    return fail ("%s: %s", image, strerror (errno));
  d->dev = st.st_dev;
  d->ino = st.st_ino;
  /* A checkpoint must not wait behind a steady stream of writes. */
  pthread_rwlockattr_init (&a);
  pthread_rwlockattr_setkind_np (&a,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&d->gate, &a);
  pthread_rwlockattr_destroy (&a);
  exp->disk = d;
  return 0;
}

/* Listen where o says (socket activation was looked at before).  With
 * --run and nowhere to listen, a private socket in a new directory
 * *tmpdir (then *made_sock).  0, or 1 after reporting. */
static int
open_listeners (struct serve_options *o, struct nbd_listeners *ls,
                char *tmpdir, bool *made_sock)
{
  if (ls->n == 0 && o->sock) {
    if (nbd_listen_unix (ls, o->sock) != 0)
      return fail ("%s", ls->err);
    o->bound_unix = true;
  }
  if (ls->n == 0 && o->use_tcp && nbd_listen_tcp (ls, o->listen_addr) != 0)
    return fail ("%s", ls->err);
  if (ls->n == 0 && o->run) {
    if (!mkdtemp (tmpdir))
      return fail ("mkdtemp: %s", strerror (errno));
    snprintf (o->sockbuf, sizeof o->sockbuf, "%s/nbd.sock", tmpdir);
    o->sock = o->sockbuf;
    *made_sock = true;
    if (nbd_listen_unix (ls, o->sock) != 0)
      return fail ("%s", ls->err);
    o->bound_unix = true;
  }
  return 0;
}

/* The fleecing limit: --fleece-limit SIZE or N%, default 25% of the
 * disks' total size.  0, or 1 after reporting. */
static int
fleece_limit (const struct serve_options *o, const struct nbd_export *exps,
              size_t n, uint64_t *limit)
{
  uint64_t total = 0, pct = 25;
  const char *err;
  size_t i;

  for (i = 0; i < n; i++)
    total += exps[i].size;
  if (o->fleece_limit) {
    size_t len = strlen (o->fleece_limit);

    if (len > 1 && o->fleece_limit[len - 1] == '%') {
      char *end;

      errno = 0;
      pct = strtoull (o->fleece_limit, &end, 10);
      if (errno || end != o->fleece_limit + len - 1 || pct > 100)
        return usage_error ("serve", "--fleece-limit %s: a percentage is "
                            "0%% to 100%%", o->fleece_limit);
    }
    else {
      if (parse_size (o->fleece_limit, limit, &err) == -1)
        return usage_error ("serve", "--fleece-limit %s: %s",
                            o->fleece_limit, err);
      return 0;
    }
  }
  *limit = total / 100 * pct + total % 100 * pct / 100;
  return 0;
}

/* Where clients reach an export: prefix + escaped name + suffix. */
static void
uri_parts (const struct serve_options *o, const struct nbd_listeners *ls,
           char **prefix, char **suffix)
{
  *prefix = *suffix = NULL;
  if (o->sock) {
    CLEANUP_FREE char *spath = malloc (3 * PATH_MAX);

    if (spath) {
      uri_encode (o->sock, spath, 3 * PATH_MAX);
      if (asprintf (suffix, "?socket=%s", spath) == -1)
        *suffix = NULL;
      else if (!(*prefix = strdup ("nbd+unix:///"))) {
        free (*suffix);
        *suffix = NULL;
      }
    }
  }
  else if (ls->tcp_port &&
           asprintf (prefix, "nbd://%s:%u/", ls->uri_host, ls->tcp_port) != -1)
    *suffix = strdup ("");
}

int
cmd_serve (int argc, char **argv)
{
  struct serve_options o;
  char tmpdir[] = "/tmp/rawtrack-serve.XXXXXX";
  bool made_sock = false, own_pidfile = false;
  struct nbd_listeners ls;
  struct nbd_export *exps = NULL;
  struct nbd_disk *disks = NULL, **disk_ptrs = NULL;
  struct registry_entry *reg = NULL;
  char **names = NULL;
  size_t n = 0, i, k;
  struct nbd_server srv;
  struct fleece_config fc;
  struct control *ctl = NULL;
  char *uri_prefix = NULL, *uri_suffix = NULL;
  int quit_pipe[2] = { -1, -1 };
  struct tls_config *tls = NULL;
  pid_t run_pid = -1;
  int status;

  status = parse_options (argc, argv, &o);
  if (status != 0 || o.images.len == 0)
    return status;

  /* Listening sockets first: activation needs nothing else. */
  nbd_listeners_init (&ls);
  nbd_listen_activated (&ls);
  if (ls.n > 0 && o.run)
    status = usage_error ("serve", "--run cannot be used with socket "
                          "activation");
  else if (ls.n > 0 && (o.sock || o.use_tcp))
    status = usage_error ("serve", "--socket/--listen cannot be used with "
                          "socket activation");
  else if (ls.n == 0 && !o.sock && !o.use_tcp && !o.run)
    status = usage_error ("serve", "say where to listen: --socket PATH or "
                          "--listen[=ADDR[:PORT]]");
  if (status != 0) {
    options_reset (&o);
    return status;
  }

  if (o.tls_mode != TLS_OFF) {
    char err[8400];

    tls = tls_config_new (o.tls_certs, o.tls_psk, o.tls_verify, err,
                          sizeof err);
    if (!tls) {
      options_reset (&o);
      return fail ("%s", err);
    }
  }

  memset (&srv, 0, sizeof srv);
  pthread_mutex_init (&srv.exports_lock, NULL);
  memset (&fc, 0, sizeof fc);
  exps = calloc (o.images.len, sizeof *exps);
  disks = calloc (o.images.len, sizeof *disks);
  disk_ptrs = calloc (o.images.len, sizeof *disk_ptrs);
  names = calloc (o.images.len, sizeof *names);
  reg = calloc (o.images.len, sizeof *reg);
  if (!exps || !disks || !disk_ptrs || !names || !reg) {
    status = fail ("out of memory");
    goto out_image;
  }
  for (n = 0; n < o.images.len; n++) {
    const char *image;
    struct stat st;

    if (split_image_arg (&o, o.images.ptr[n], &names[n], &image) != 0) {
      status = 1;
      n++;
      goto out_image;
    }
    /* The same image twice would only meet its own lock. */
    for (k = 0; k < n && stat (image, &st) == 0; k++)
      if (st.st_dev == disks[k].dev && st.st_ino == disks[k].ino) {
        status = fail ("%s is the same image as %s: each image can be "
                       "served once", image, disks[k].path);
        n++;
        goto out_image;
      }
    if (open_export (&o, image, names[n], &exps[n]) != 0 ||
        init_disk (image, &exps[n], &disks[n]) != 0) {
      status = 1;
      n++;                         /* exps[n] may hold an image: close it */
      goto out_image;
    }
    disk_ptrs[n] = &disks[n];
    for (k = 0; k < n; k++)
      if (strcmp (names[k], names[n]) == 0) {
        status = fail ("two exports are named '%s': name them NAME=IMAGE",
                       names[n]);
        n++;
        goto out_image;
      }
    if (export_add (&srv, &exps[n]) == -1) {
      status = fail ("out of memory");
      n++;
      goto out_image;
    }
  }
  srv.exp = &exps[0];
  if (o.control) {
    fc.memory = o.fleece_memory;
    fc.dir = o.fleece_dir;
    if (fleece_limit (&o, exps, n, &fc.limit) != 0) {
      status = 1;
      goto out_image;
    }
  }

  if (open_listeners (&o, &ls, tmpdir, &made_sock) != 0) {
    status = 1;
    goto out_listen;
  }
  if (o.control) {
    char err[1024];

    uri_parts (&o, &ls, &uri_prefix, &uri_suffix);
    ctl = control_start (&srv, o.control, disk_ptrs, n, &fc, uri_prefix,
                         uri_suffix, err, sizeof err);
    if (!ctl) {
      status = fail ("%s", err);
      goto out_listen;
    }
    for (i = 0; i < n; i++) {
      CLEANUP_FREE char *uri = NULL;
      char ename[3 * NBD_MAX_STRING + 8];

      uri_encode (names[i], ename, sizeof ename);
      if (uri_prefix &&
          asprintf (&uri, "%s%s%s", uri_prefix, ename, uri_suffix) == -1)
        uri = NULL;
      if (registry_add (&disks[i], names[i], o.control, uri, &reg[i], err,
                        sizeof err) == -1)
        fprintf (stderr, "%s serve: warning: %s; `backup create` will need "
                 "--control %s\n", progname, err, o.control);
    }
  }
  if (nbd_signals_init () == -1 || pipe2 (quit_pipe, O_CLOEXEC) == -1) {
    status = fail ("pipe: %s", strerror (errno));
    goto out_listen;
  }

  srv.quit_fd = quit_pipe[0];
  if (o.threads == 0) {
    /* Measured (bench/bench-nbd.sh): past a few workers per CPU they
     * only contend for the socket; 16 is nbdkit's fixed number. */
    long ncpu = sysconf (_SC_NPROCESSORS_ONLN);

    o.threads = ncpu <= 0 || ncpu >= 4 ? 16 : 4 * (unsigned) ncpu;
  }
  srv.threads = o.threads;
  srv.sendfile = o.use_sendfile;
  srv.handshake_ms = o.hs_timeout * 1000;
  srv.max_options = 64;
  srv.max_conn = o.max_conn;
  srv.tls_mode = o.tls_mode;
  srv.tls = tls;
  {
    char err[512];
    bool pipes;

    /* After the images, data files and listeners are open: they count.
     * The reserve: control clients and fleecing files, a connection
     * closed as one too many, a remote data file's reconnection. */
    if (nbd_fd_budget (o.max_conn, o.threads, o.control ? 48 : 16, &pipes,
                       err, sizeof err) == -1) {
      status = fail ("%s", err);
      goto out_listen;
    }
    srv.no_pipes = !pipes;
  }

  if (o.pidfile) {
    FILE *fp = fopen (o.pidfile, "w");

    /* Ours to remove from here on - not before: a serve refused at its
     * socket must leave another server's pid file alone. */
    own_pidfile = true;
    if (!fp || fprintf (fp, "%ld\n", (long) getpid ()) < 0 ||
        fclose (fp) != 0) {
      status = fail ("--pidfile %s: %s", o.pidfile, strerror (errno));
      goto out_listen;
    }
  }
  nbd_debug ("serving %zu image(s), the first %s (%" PRIu64 " bytes, %zu "
             "bitmaps), on %zu socket(s)", n, o.images.ptr[0], exps[0].size,
             exps[0].nr_bitmaps, ls.n);
  if (o.run) {
    run_pid = run_command (o.run, o.sock, ls.uri_host, ls.tcp_port,
                           names[0]);
    if (run_pid == -1) {
      status = 1;
      goto out_listen;
    }
  }

  nbd_accept_loop (&srv, &ls, &run_pid, &status);

  /* Shutdown: no new connections, no control requests, wake every
   * reader, wait for them. */
  nbd_listeners_close (&ls);
  if (o.bound_unix)
    nbd_unlink_unix (&ls, o.sock);
  for (i = 0; i < n; i++)
    registry_remove (&reg[i]);
  control_stop (ctl);
  ctl = NULL;
  nbd_drain (quit_pipe[1]);
  if (run_pid > 0) {
    int st;

    /* We were told to stop while the command still runs. */
    kill (run_pid, SIGTERM);
    if (waitpid (run_pid, &st, 0) == run_pid)
      status = WIFEXITED (st) ? WEXITSTATUS (st) : 128 + WTERMSIG (st);
  }

 out_listen:
  for (i = 0; i < n; i++)
    registry_remove (&reg[i]);
  control_stop (ctl);
  nbd_listeners_close (&ls);
  if (o.bound_unix)
    nbd_unlink_unix (&ls, o.sock);
  if (made_sock)
    rmdir (tmpdir);
  if (own_pidfile)
    unlink (o.pidfile);
 out_image:
  for (i = 0; i < n; i++) {
    if (exps[i].img && rawtrack_image_close (exps[i].img) == -1) {
      fail_lib ("closing %s", o.images.ptr[i]);
      if (status == 0)
        status = 1;
    }
    close_export (&exps[i]);
    if (exps[i].disk)
      pthread_rwlock_destroy (&disks[i].gate);
    free (disks[i].path);
    free (names[i]);
  }
  free (exps);
  free (disks);
  free (disk_ptrs);
  free (names);
  free (reg);
  free (srv.exports);
  pthread_mutex_destroy (&srv.exports_lock);
  free (uri_prefix);
  free (uri_suffix);
  options_reset (&o);
  if (quit_pipe[0] >= 0) {
    close (quit_pipe[0]);
    close (quit_pipe[1]);
  }
  tls_config_free (tls);
  return status;
}
