/* rawtrack - NBD server private declarations.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One section per .c file in server/.  The server exports one image or
 * several, and the point-in-time exports of their live-backup views:
 *
 *   cli/cmd-serve.c `rawtrack serve` (in the command, not here): options,
 *                   the exports, --pidfile, --run captive mode
 *        |
 *   sockets.c       listening sockets: Unix, TCP, socket activation
 *   accept-loop.c   signals, accept loop (one thread per connection),
 *                   the drain at shutdown
 *   control.c       the control socket (--control): its threads, framing
 *   control-cmd.c   query, checkpoint, backup-begin, backup-end
 *   registry.c      where clients find the server of an image
 *        |
 *   connection.c    struct connection: socket I/O, the worker pool
 *        |
 *   handshake.c     fixed newstyle option negotiation, STARTTLS
 *   exports.c       the table of exports by name
 *   tls.c           GnuTLS credentials and sessions (--tls)
 *   protocol.c      transmission: requests, replies, errno mapping
 *   meta-context.c  base:allocation, qemu:allocation-depth,
 *                   qemu:dirty-bitmap:NAME (names, queries, extents)
 *   view.c          point-in-time views: copy-before-write, the
 *                   fleecing store, reads as of the checkpoint
 *        |
 *   librawtrack     rawtrack_image_* (thread-safe on one handle)
 *
 * Built as a static library (server/meson.build) that the command and
 * the NBD fuzz target (tests/fuzz/fuzz-nbd.c) link.
 *
 * Threads: the accept loop runs in the main thread; each connection runs
 * in its own thread, which negotiates and then becomes one of the
 * connection's workers.  Every worker loops: take the read lock, read one
 * request (header and payload), drop the read lock, execute the request,
 * take the write lock, send the whole reply, drop it (nbdkit's model).
 *
 * Lock order (a thread may take a later lock while holding an earlier one,
 * never the reverse):  conn->read_lock  ->  disk->gate  ->  view_disk->rw
 * ->  conn->write_lock  ->  conn->status_lock.  Library calls are made
 * holding none of the connection's locks, except that a reply to an
 * oversize WRITE is sent by the reader (read -> write) and a spliced
 * WRITE payload is read under read_lock and the gate.  The control
 * socket takes the gates of a group (exclusive, in the order of the
 * served disks) and nothing of the connections'.
 */
#ifndef RAWTRACK_SERVER_H
#define RAWTRACK_SERVER_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "rawtrack/rawtrack.h"
#include "vector.h"

/* ---- a served image (cli/cmd-serve.c builds them) ------------------------ */
struct view_disk;

/* One image, shared by its export and the point-in-time exports of its
 * views.  gate: every guest write (WRITE, WRITE_ZEROES, TRIM, including
 * the copy-before-write it needs and a spliced payload) holds it shared;
 * a checkpoint and the end of a view hold it exclusive, so they happen
 * between guest writes, at one instant for every disk of a group.
 * views: the views that need old data saved before a write (view.c);
 * changed only with gate held exclusive, read with it shared. */
struct nbd_disk {
  struct rawtrack_image *img;
  char *path;                      /* absolute */
  dev_t dev;                       /* the image file's identity (query, */
  ino_t ino;                       /* the registry) */
  pthread_rwlock_t gate;
  struct view_disk *views;         /* linked through view_disk->next_on_disk */
};

/* ---- the export (built by serve.c or the fuzzer, read-only afterwards) -- */
struct nbd_export {
  struct rawtrack_image *img;      /* shared by every connection */
  const char *name;                /* export name; "" also selects it */
  const char *description;         /* NULL: none */
  uint64_t size;                   /* virtual size */
  bool readonly;                   /* NBD_FLAG_READ_ONLY, writes -> EPERM */
  bool all_local;                  /* every cluster is mapped (raw external
                                    * data): allocation depth 1 everywhere */
  uint16_t eflags;                 /* transmission flags without SEND_DF */
  uint32_t min_block, pref_block, max_block;  /* NBD_INFO_BLOCK_SIZE */
  char **bitmaps;                  /* exported bitmap names */
  size_t nr_bitmaps;
  struct nbd_disk *disk;           /* NULL (the fuzzer): no gate, no views */
  struct view_disk *view;          /* a point-in-time export: reads come
                                    * from the view (view.c) */
};

/* ---- the server (shared by every connection) ----------------------------- */
/* --tls: off (STARTTLS refused), on (offered), require (nothing but
 * STARTTLS and ABORT before it). */
enum tls_mode { TLS_OFF = 0, TLS_ON, TLS_REQUIRE };
struct tls_config;

struct nbd_server {
  struct nbd_export *exp;          /* the default export (the empty name
                                    * when exports is empty: the fuzzer) */
  /* Every export by name: the served images', then the point-in-time
   * exports the control socket publishes (exports.c).  exports_lock
   * protects the table; a connection holds a reference to a
   * point-in-time export's view (view_disk_ref) while it uses it. */
  pthread_mutex_t exports_lock;
  struct nbd_export **exports;
  size_t nr_exports;
  int quit_fd;                     /* readable once the server shuts down */
  unsigned threads;                /* workers per connection (>= 1) */
  bool sendfile;                   /* READ data with sendfile(2) */
  unsigned handshake_ms;           /* whole-handshake limit; 0: none */
  unsigned max_options;            /* options per handshake */
  enum tls_mode tls_mode;
  struct tls_config *tls;          /* credentials; NULL with TLS_OFF */
  unsigned max_conn;               /* connections at once (accept loop) */
  bool no_pipes;                   /* too few descriptors for a splice
                                    * pipe per worker (fd-budget.c) */
};

/* ---- exports.c ---------------------------------------------------------- */
/* The export a client names (len bytes, not NUL-terminated; "" is the
 * default), with a reference taken on a point-in-time export's view; NULL
 * if there is none of that name.  Release with export_put. */
struct nbd_export *export_get (struct nbd_server *srv, const char *name,
                               size_t len);
void export_put (struct nbd_export *exp);
/* Add or withdraw an export (the caller keeps it alive; a withdrawn one
 * is still used by the connections that hold it).  0 or -1 (ENOMEM,
 * EEXIST). */
int export_add (struct nbd_server *srv, struct nbd_export *exp);
void export_remove (struct nbd_server *srv, struct nbd_export *exp);
/* Call fn for every export, under the table lock (fn must not block). */
void export_each (struct nbd_server *srv,
                  void (*fn) (void *opaque, struct nbd_export *exp),
                  void *opaque);

/* ---- view.c: point-in-time views, copy-before-write, the fleecing store -- */
/* The unit of copy-before-write: old data is saved per chunk of 4 KiB,
 * or larger on disks so big that 4 KiB chunks would be more than
 * VIEW_MAX_CHUNKS (the per-chunk bits cost 4 x 16 MiB there). */
#define VIEW_CHUNK_MIN_SHIFT 12
#define VIEW_MAX_CHUNKS (1ull << 27)

enum view_state { VIEW_ACTIVE, VIEW_FAILED, VIEW_ENDED };

/* Shared by every view: where saved data goes and how much may be held. */
struct fleece_config {
  bool memory;                     /* memfd instead of a file */
  const char *dir;                 /* NULL: beside each image */
  uint64_t limit;                  /* bytes of old data, all views */
  uint64_t held;                   /* now (atomic) */
};

/* A new view of disk at this instant, for the checkpoint name: full (every
 * chunk is served) or only the chunks the frozen bitmaps mark (read here:
 * call with disk->gate held exclusive, after the rotation).  Not yet
 * linked to the disk.  NULL with a message in err. */
struct view_disk *view_disk_new (struct nbd_disk *disk,
                                 struct fleece_config *fc,
                                 const char *checkpoint, const char *export,
                                 char *const *frozen, size_t nr_frozen,
                                 bool full, char *err, size_t errlen);
/* Link it into / out of disk->views (disk->gate held exclusive). */
void view_disk_attach (struct view_disk *vd);
void view_disk_detach (struct view_disk *vd);
/* End it: readers get EIO from now on, the saved data is dropped. */
void view_disk_end (struct view_disk *vd);
void view_disk_ref (struct view_disk *vd);
void view_disk_unref (struct view_disk *vd);
/* Copy-before-write for a guest write of [offset, offset + count): every
 * view of the disk saves the chunks it still has to serve.  Call with
 * disk->gate held shared, before the write.  Never fails: a view that
 * cannot save (limit, I/O error) turns failed instead. */
void disk_before_write (struct nbd_disk *disk, uint64_t offset,
                        uint64_t count);
/* Read from the view as of its checkpoint.  0, or -1 with errno (EIO for
 * a failed or ended view). */
int view_disk_read (struct view_disk *vd, void *buf, uint64_t count,
                    uint64_t offset);
/* backup-begin's "read_once": the view has one reader, which reads each
 * chunk once; guest writes to the chunks it has read are not saved any
 * more, their saved data is dropped, and reading them again fails. */
void view_disk_set_read_once (struct view_disk *vd);
/* base:allocation of the view: the length of the run at offset (at most
 * count) and whether it reads as zeros (a full view: no data there at the
 * checkpoint; an incremental view reports data everywhere). */
int64_t view_disk_status (struct view_disk *vd, uint64_t offset,
                          uint64_t count, bool *zero);
/* For query: state, bytes of old data held, the reason of a failure. */
enum view_state view_disk_state (struct view_disk *vd, uint64_t *held,
                                 char *reason, size_t len);
/* Bytes of old data saved since the view started (what it holds now plus
 * what a read-once reader has already taken). */
uint64_t view_disk_saved_total (struct view_disk *vd);
/* The point-in-time export of the view (name EXPORT@CHECKPOINT). */
struct nbd_export *view_disk_export (struct view_disk *vd);

/* ---- control.c: the control socket (docs/control.md) --------------------- */
struct control;
/* Listen at path (mode 0600; a live socket there is refused, a stale one
 * replaced) and serve requests in a thread of its own.  A point-in-time
 * export's URI is uri_prefix + name + uri_suffix (uri_prefix NULL: none).
 * NULL with a message in err. */
struct control *control_start (struct nbd_server *srv, const char *path,
                               struct nbd_disk **disks, size_t nr_disks,
                               struct fleece_config *fc,
                               const char *uri_prefix,
                               const char *uri_suffix,
                               char *err, size_t errlen);
/* Stop: no request runs after this returns; the socket is removed; every
 * view is ended (its frozen bitmaps stay as they are: as after a crash). */
void control_stop (struct control *ctl);

/* control-cmd.c: one request line -> one response line (malloc'd, ending
 * in a newline).  Called with the control lock held. */
struct control_state;
char *control_dispatch (struct control_state *st, const char *line,
                        size_t len);
struct control_state *control_state_new (struct nbd_server *srv,
                                         struct nbd_disk **disks,
                                         size_t nr_disks,
                                         struct fleece_config *fc,
                                         const char *uri_prefix,
                                         const char *uri_suffix);
/* Ends and frees every view (bitmaps left as they are). */
void control_state_free (struct control_state *st);

/* ---- registry.c: where clients find the server of an image ------------- */
struct registry_entry {
  char path[4200];                 /* "" when there is none */
  ino_t ino;                       /* the file we wrote */
};
/* Record that this process serves disk as export, controlled at control
 * (absolute), NBD at nbd_uri (NULL: none).  -1 with a message in err. */
int registry_add (const struct nbd_disk *disk, const char *export,
                  const char *control, const char *nbd_uri,
                  struct registry_entry *ent, char *err, size_t errlen);
/* Remove it if it is still ours. */
void registry_remove (struct registry_entry *ent);

/* ---- sockets.c ---------------------------------------------------------- */
#define NBD_MAX_LISTENERS 16
#define NBD_DEFAULT_PORT "10809"

struct nbd_listener {
  int fd;
  bool tcp;                        /* TCP_NODELAY on accepted sockets */
};

struct nbd_listeners {
  struct nbd_listener l[NBD_MAX_LISTENERS];
  size_t n;
  char uri_host[64];               /* TCP: the first bound address, for
                                    * URIs ("localhost" until then) */
  unsigned tcp_port;               /* TCP: the bound port (0: none yet) */
  bool have_unix_id;               /* the Unix socket bound at... */
  dev_t unix_dev;                  /* ...this device and inode: what */
  ino_t unix_ino;                  /* nbd_unlink_unix may remove */
  char err[512];                   /* why the last call failed */
};

void nbd_listeners_init (struct nbd_listeners *ls);
/* Close every listener (the caller unlinks a Unix socket's path). */
void nbd_listeners_close (struct nbd_listeners *ls);
/* Does s (the word after a bare --listen) look like ADDR[:PORT]? */
bool nbd_looks_like_address (const char *s);
/* A decimal unsigned in [min, max] into *out; -1 if s is not one. */
int nbd_parse_uint (const char *s, unsigned min, unsigned max,
                    unsigned *out);
/* Listen on the Unix socket path.  A socket already there is connected
 * to first: if a server answers, the call fails ("in use") and leaves it
 * alone; a stale one (connection refused) is replaced.  0, or -1 with
 * ls->err set. */
int nbd_listen_unix (struct nbd_listeners *ls, const char *path);
/* Remove path if it is still the socket nbd_listen_unix bound (same
 * device and inode): never another server's that replaced it. */
void nbd_unlink_unix (const struct nbd_listeners *ls, const char *path);
/* Listen on ADDR[:PORT] (NULL or "": loopback, port 10809; "*": every
 * address).  0, or -1 with ls->err set. */
int nbd_listen_tcp (struct nbd_listeners *ls, const char *addr);
/* Take the sockets of systemd socket activation if LISTEN_PID is this
 * process; returns how many (0: not activated). */
size_t nbd_listen_activated (struct nbd_listeners *ls);

/* ---- accept-loop.c ------------------------------------------------------ */
/* SIGPIPE ignored; SIGINT, SIGTERM, SIGHUP and SIGCHLD wake the accept
 * loop.  0, or -1 with errno. */
int nbd_signals_init (void);
/* Accept connections until a stop signal, or until the child *child (if
 * > 0) exits: then *child becomes -1 and *child_status its exit status
 * (128 + N if killed by signal N).  Call nbd_signals_init first. */
void nbd_accept_loop (struct nbd_server *srv, const struct nbd_listeners *ls,
                      pid_t *child, int *child_status);
/* Wake every connection (write to quit_wfd, the other end of
 * srv->quit_fd) and wait until every connection thread has finished. */
void nbd_drain (int quit_wfd);

/* ---- fd-budget.c: descriptors budgeted at start, and run out of ---------- */
/* Check (and raise, up to the hard limit) RLIMIT_NOFILE for max_conn
 * connections of threads workers each, with reserve more for what comes
 * and goes.  0: fine (*pipes false: too few for a splice pipe per
 * worker, do without); -1 with a message naming the numbers in err. */
int nbd_fd_budget (unsigned max_conn, unsigned threads, unsigned reserve,
                   bool *pipes, char *err, size_t errlen);
/* An accepting thread's state while descriptors are exhausted. */
struct accept_pause {
  const char *what;                /* for the log: "NBD", "control socket" */
  unsigned long failed;            /* accepts failed since the last
                                    * "accepting again" */
  bool logged;                     /* "out of descriptors" said, not yet
                                    * "accepting again" */
  long logged_at;                  /* CLOCK_MONOTONIC seconds of that
                                    * message; 0: never */
  unsigned next_ms;                /* the pause after the next failure */
  unsigned wait_ms;                /* set by nbd_accept: leave the listener
                                    * alone this long (0: poll it) */
};
/* accept4 (lfd, SOCK_CLOEXEC): a descriptor, or -1 (nothing to accept, or
 * out of descriptors: then p->wait_ms > 0, logged once per episode). */
int nbd_accept (int lfd, struct accept_pause *p);

/* Logging (connection.c).  nbd_verbose enables debug messages; nbd_quiet
 * silences errors too (the fuzzer). */
extern bool nbd_verbose;
extern bool nbd_quiet;
void nbd_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void nbd_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* ---- connection.c ------------------------------------------------------ */
/* Result of a receive. */
#define CONN_OK     0
#define CONN_EOF    1              /* the client closed (at a boundary) */
#define CONN_QUIT   2              /* the server is shutting down */
#define CONN_ERROR  (-1)           /* I/O error, timeout, short read */

struct connection {
  struct nbd_server *srv;
  struct nbd_export *exp;
  int fd;
  unsigned id;                     /* for log messages */

  pthread_mutex_t read_lock;       /* one reader of the socket at a time */
  pthread_mutex_t write_lock;      /* one reply (all its chunks) at a time */
  pthread_mutex_t status_lock;     /* protects status */
  int status;                      /* 1 running, 0 closing, -1 failed */

  /* Negotiated state; written only by the handshake (one thread), then
   * read-only. */
  bool no_zeroes;                  /* client set C_NO_ZEROES */
  bool structured;                 /* structured replies */
  bool extended;                   /* extended headers (implies structured) */
  uint16_t eflags;                 /* transmission flags sent in GO */
  uint32_t *meta;                  /* selected contexts (meta-context.c
                                    * indexes); the index is also the id */
  size_t nr_meta;
  int64_t deadline_ns;             /* CLOCK_MONOTONIC; 0: none */
  /* After STARTTLS every byte goes through this GnuTLS session (tls.c);
   * sendfile and splice are not used then. */
  struct gnutls_session_int *tls;
};

/* Serve one accepted socket to the end: negotiate, then run the worker
 * pool.  Closes fd.  Runs in the calling thread (plus srv->threads - 1
 * workers it starts). */
void conn_handle (struct nbd_server *srv, int fd, unsigned id);

struct worker_buf;

/* Read exactly n bytes.  CONN_EOF only if the client closed before the
 * first byte; CONN_QUIT if the server shut down while waiting; errors and
 * deadline overrun give CONN_ERROR. */
int conn_recv (struct connection *c, void *buf, size_t n);
/* The same for bytes known to follow (a payload): blocks in the kernel
 * instead of polling, with the same results. */
int conn_recv_payload (struct connection *c, void *buf, size_t n);
/* Read and discard n bytes. */
int conn_skip (struct connection *c, uint64_t n);
/* Move an n-byte payload from the socket into file fd at foff through
 * wb's pipe, which the caller made (worker_buf_pipe) - splice: no copy
 * through this process.  A failure of the
 * file write sets *werr and the rest of the payload is read and thrown
 * away, so framing is kept; the return value is about the socket only,
 * as conn_recv's. */
int conn_splice_payload (struct connection *c, struct worker_buf *wb,
                         int fd, uint64_t foff, uint64_t n, int *werr);
/* Send everything (MSG_NOSIGNAL).  The caller holds write_lock during
 * transmission.  0 or -1. */
int conn_send (struct connection *c, const void *buf, size_t n);
int conn_sendv (struct connection *c, struct iovec *iov, int iovcnt);

/* One piece of a reply: memory (fd < 0) or len bytes of file fd from
 * foff, sent with sendfile(2) (zeros past the file's end). */
struct send_part {
  const void *buf;
  size_t len;
  int fd;
  uint64_t foff;
};
/* Send the parts in order (caller holds write_lock).  0 or -1; a failure
 * after the first byte leaves the stream unframed: close the connection. */
int conn_send_parts (struct connection *c, const struct send_part *p,
                     int n);

/* Wait until the socket is readable: CONN_OK, CONN_QUIT, or CONN_ERROR
 * (the deadline passed: ETIMEDOUT). */
int conn_wait_readable (struct connection *c);

int conn_get_status (struct connection *c);
/* Lower the status (never raise it): 0 to close after the requests in
 * flight, -1 on a fatal error. */
void conn_set_status (struct connection *c, int status);

/* ---- handshake.c ------------------------------------------------------- */
/* Greeting and option haggling.  0: enter transmission; -1: close (the
 * reason is logged). */
int handshake_run (struct connection *c);

/* ---- tls.c -------------------------------------------------------------- */
/* Load the credentials: certdir (ca-cert.pem, server-cert.pem,
 * server-key.pem, optional ca-crl.pem) or pskfile (username:hexkey
 * lines).  verify_peer: require a client certificate signed by the CA.
 * NULL with a message in err on failure. */
struct tls_config *tls_config_new (const char *certdir, const char *pskfile,
                                   bool verify_peer, char *err,
                                   size_t errlen);
void tls_config_free (struct tls_config *t);
/* Run the server side of the TLS handshake on c->fd (after the ACK to
 * STARTTLS), bounded by c->deadline_ns.  Sets c->tls (also on failure:
 * tls_close frees it).  0 or -1 (logged). */
int tls_handshake (struct connection *c);
/* Receive up to n bytes: > 0, 0 at end of stream, -1 with errno (EAGAIN:
 * nothing there yet, poll and call again). */
ssize_t tls_recv (struct connection *c, void *buf, size_t n);
/* Send everything.  0 or -1 with errno. */
int tls_sendv (struct connection *c, const struct iovec *iov, int iovcnt);
/* Close notify (best effort) and free the session.  NULL-safe. */
void tls_close (struct connection *c);

/* ---- protocol.c -------------------------------------------------------- */
struct request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t count;                  /* effect length (payload length for
                                    * WRITE) */
  int error;                       /* errno found while validating (then
                                    * the request is not executed) */
  bool direct;                     /* WRITE: the payload went straight to
                                    * the data file while it was read
                                    * (error: how that write failed) */
};

/* Per-worker scratch memory. */
struct worker_buf {
  void *data;
  size_t cap;
  int pipe[2];                     /* for splice(2) of WRITE payloads */
  size_t pipe_cap;                 /* its capacity; 0: not made yet */
  bool no_pipe;                    /* pipes failed: never try again */
};
#define WORKER_BUF_INIT { NULL, 0, { -1, -1 }, 0, false }
void worker_buf_free (struct worker_buf *wb);
/* Make wb's pipe if needed; false if pipes cannot be had. */
bool worker_buf_pipe (struct worker_buf *wb);

/* Read one request (caller holds read_lock).  CONN_OK: *req is ready and
 * a WRITE payload is in wb->data; otherwise the connection is to end
 * (CONN_EOF after NBD_CMD_DISC or a clean close). */
int proto_recv_request (struct connection *c, struct request *req,
                        struct worker_buf *wb);
/* Execute a request and send its reply (takes write_lock).  -1 if the
 * reply could not be sent. */
int proto_handle_request (struct connection *c, const struct request *req,
                          struct worker_buf *wb);
/* The one errno -> NBD error mapping.  fast_zero: the request carried
 * NBD_CMD_FLAG_FAST_ZERO (the only case where ENOTSUP may be returned). */
uint32_t nbd_errno (int err, bool fast_zero);

/* ---- meta-context.c ---------------------------------------------------- */
/* Contexts of an export: 0 base:allocation, 1 qemu:allocation-depth,
 * 2 + i qemu:dirty-bitmap:<bitmaps[i]>. */
#define META_BASE_ALLOCATION   0u
#define META_ALLOCATION_DEPTH  1u
#define META_FIRST_BITMAP      2u

size_t meta_count (const struct nbd_export *exp);
/* Context i's full name into buf (NUL-terminated); returns its length. */
size_t meta_name (const struct nbd_export *exp, uint32_t i, char *buf,
                  size_t len);
/* The contexts a query names: for LIST (wildcard prefixes allowed) or
 * SET (exact names only).  fn is called once per match in index order;
 * a nonzero return stops the walk and is returned. */
int meta_match (const struct nbd_export *exp, const char *query,
                size_t len, bool list,
                int (*fn) (void *opaque, uint32_t index), void *opaque);

/* One extent of a block status reply. */
struct extent {
  uint64_t length;
  uint32_t flags;
};

DEFINE_VECTOR_TYPE (extents, struct extent, realloc)

struct extent_list {
  struct extents ext;              /* ext.ptr[0 .. ext.len-1] */
  uint64_t end;                    /* offset just past the last extent */
};

/* Extents of context index over [offset, offset + count) (inside the
 * export, count > 0), at most max extents (max >= 1), consecutive,
 * nonzero, merged when neighbours have the same flags.  The list may
 * end before offset + count.  -1 with errno on failure. */
int meta_extents (struct nbd_export *exp, uint32_t index, uint64_t offset,
                  uint64_t count, size_t max, struct extent_list *out);
/* Cut the list so that it ends at end (> the list's offset). */
void extent_list_truncate (struct extent_list *l, uint64_t start,
                           uint64_t end);
void extent_list_reset (struct extent_list *l);
void extent_list_free (struct extent_list *l);

#endif /* RAWTRACK_SERVER_H */
