/* rawtrack - NBD server: fixed newstyle handshake.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the greeting, the client flags and the option loop up to the
 * first byte of the transmission phase, and with it the negotiated state
 * of struct connection (no_zeroes, structured, extended, eflags, meta).
 *
 * Runs in the connection's own thread before any worker exists: no locks.
 * The whole handshake is bounded by c->deadline_ns (conn_recv enforces
 * it) and by srv->max_options, so a client that dawdles or floods cannot
 * pin the thread.
 *
 * Rules kept here (nbd-facts.md §1):
 *  - only fixed newstyle; a client flag we did not offer ends the
 *    connection;
 *  - every option payload is read in full before it is answered, so
 *    framing is never lost; payloads above MAX_OPTION_LEN end the
 *    connection (no legitimate option is that large);
 *  - unknown options get ERR_UNSUP, malformed ones ERR_INVALID, an
 *    unknown export ERR_UNKNOWN (EXPORT_NAME: disconnect, it cannot
 *    report errors);
 *  - SET_META_CONTEXT replaces the selection even when it fails; it needs
 *    structured replies (or extended headers) first;
 *  - the export answers to its name and to the empty name;
 *  - STARTTLS (nbd-facts.md §6.1): with --tls=off it is refused with
 *    ERR_POLICY; otherwise ACK, then the TLS handshake on the same socket
 *    (a failure ends the connection: no downgrade), after which every
 *    option is encrypted and the state negotiated before it (structured
 *    replies, extended headers, meta contexts) is forgotten.  A second
 *    STARTTLS gets ERR_INVALID.  With --tls=require, before TLS every
 *    option but STARTTLS and ABORT gets ERR_TLS_REQD (after its payload
 *    was read) and EXPORT_NAME, which cannot carry an error, ends the
 *    connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <errno.h>

#include "server.h"
#include "nbd-protocol.h"
#include "byteorder.h"
#include "cleanup.h"
#include "vector.h"

#define MAX_OPTION_LEN (1u << 20)

/* Send an option reply header plus payload (payload may be NULL). */
static int
send_reply (struct connection *c, uint32_t option, uint32_t type,
            const void *payload, size_t len)
{
  uint8_t hdr[NBD_REP_HEADER_SIZE];
  struct iovec iov[2];

  be64_store (hdr, NBD_REP_MAGIC);
  be32_store (hdr + 8, option);
  be32_store (hdr + 12, type);
  be32_store (hdr + 16, (uint32_t) len);
  iov[0].iov_base = hdr;
  iov[0].iov_len = sizeof hdr;
  iov[1].iov_base = (void *) payload;
  iov[1].iov_len = len;
  if (conn_sendv (c, iov, len ? 2 : 1) == -1) {
    nbd_debug ("connection %u: sending an option reply: %s", c->id,
               strerror (errno));
    return -1;
  }
  return 0;
}

/* An error reply with a short message (names in it are cut at 80 bytes,
 * as qemu does). */
static int
send_error (struct connection *c, uint32_t option, uint32_t type,
            const char *fmt, ...) __attribute__ ((format (printf, 4, 5)));
static int
send_error (struct connection *c, uint32_t option, uint32_t type,
            const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (n < 0)
    n = 0;
  if ((size_t) n >= sizeof msg)
    n = sizeof msg - 1;
  nbd_debug ("connection %u: option %u: %s", c->id, option, msg);
  return send_reply (c, option, type, msg, (size_t) n);
}

/* Make the export name (len bytes) the connection's; false if there is
 * none of that name.  Switching exports drops the metadata contexts
 * chosen for the other one. */
static bool
export_matches (struct connection *c, const uint8_t *name, size_t len)
{
  struct nbd_export *e = export_get (c->srv, (const char *) name, len);

  if (!e)
    return false;
  if (e != c->exp) {
    free (c->meta);
    c->meta = NULL;
    c->nr_meta = 0;
  }
  export_put (c->exp);
  c->exp = e;
  return true;
}

/* A printable copy of a client string for messages, cut at 80 bytes. */
static void
sanitize (const uint8_t *s, size_t len, char *out, size_t outlen)
{
  size_t i, j = 0;

  for (i = 0; i < len && i < 80 && j + 1 < outlen; i++)
    out[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? (char) s[i] : '?';
  out[j] = '\0';
}

static int
send_info_export (struct connection *c, uint32_t option)
{
  uint8_t b[12];

  be16_store (b, NBD_INFO_EXPORT);
  be64_store (b + 2, c->exp->size);
  be16_store (b + 10, c->eflags);
  return send_reply (c, option, NBD_REP_INFO, b, sizeof b);
}

static int
send_info_string (struct connection *c, uint32_t option, uint16_t type,
                  const char *s)
{
  size_t len = strlen (s);
  uint8_t *b = malloc (2 + len);
  int r;

  if (!b)
    return -1;
  be16_store (b, type);
  memcpy (b + 2, s, len);
  r = send_reply (c, option, NBD_REP_INFO, b, 2 + len);
  free (b);
  return r;
}

static int
send_info_block_size (struct connection *c, uint32_t option)
{
  uint8_t b[14];

  be16_store (b, NBD_INFO_BLOCK_SIZE);
  be32_store (b + 2, c->exp->min_block);
  be32_store (b + 6, c->exp->pref_block);
  be32_store (b + 10, c->exp->max_block);
  return send_reply (c, option, NBD_REP_INFO, b, sizeof b);
}

/* The transmission flags for this connection. */
static uint16_t
transmission_flags (const struct connection *c)
{
  uint16_t f = c->exp->eflags;

  if (c->structured || c->extended)
    f |= NBD_FLAG_SEND_DF;
  return f;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Returns 1 when GO succeeded, 0 to go on
 * negotiating, -1 to close. */
static int
opt_info_go (struct connection *c, uint32_t option, const uint8_t *p,
             uint32_t len)
{
  uint32_t namelen, i;
  uint16_t nreq;
  bool want_name = false, want_desc = false;
  char shown[96];

  if (len < 6)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "option too short") == -1 ? -1 : 0;
  namelen = be32_load (p);
  if (namelen > len - 6)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "inconsistent lengths in option") == -1 ? -1 : 0;
  nreq = be16_load (p + 4 + namelen);
  if ((uint64_t) len != 6 + (uint64_t) namelen + 2 * (uint64_t) nreq)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "inconsistent lengths in option") == -1 ? -1 : 0;
  if (namelen > NBD_MAX_STRING)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name too long") == -1 ? -1 : 0;
  for (i = 0; i < nreq; i++) {
    uint16_t t = be16_load (p + 6 + namelen + 2 * i);

    if (t == NBD_INFO_NAME)
      want_name = true;
    else if (t == NBD_INFO_DESCRIPTION)
      want_desc = true;
    /* EXPORT and BLOCK_SIZE are always sent; others are ignored. */
  }
  if (!export_matches (c, p + 4, namelen)) {
    sanitize (p + 4, namelen, shown, sizeof shown);
    return send_error (c, option, NBD_REP_ERR_UNKNOWN,
                       "export '%s' not present", shown) == -1 ? -1 : 0;
  }

  c->eflags = transmission_flags (c);
  if (want_name &&
      send_info_string (c, option, NBD_INFO_NAME, c->exp->name) == -1)
    return -1;
  if (want_desc && c->exp->description &&
      send_info_string (c, option, NBD_INFO_DESCRIPTION,
                        c->exp->description) == -1)
    return -1;
  if (send_info_block_size (c, option) == -1 ||
      send_info_export (c, option) == -1 ||
      send_reply (c, option, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  return option == NBD_OPT_GO ? 1 : 0;
}

/* NBD_OPT_EXPORT_NAME: no error can be reported; an unknown name closes
 * the connection.  1 on success, -1 to close. */
static int
opt_export_name (struct connection *c, const uint8_t *p, uint32_t len)
{
  uint8_t b[NBD_EXPORT_NAME_REPLY_SIZE + NBD_EXPORT_NAME_PADDING];
  size_t n = NBD_EXPORT_NAME_REPLY_SIZE;
  char shown[96];

  if (c->extended) {
    nbd_error ("connection %u: EXPORT_NAME after extended headers", c->id);
    return -1;
  }
  if (len > NBD_MAX_STRING || !export_matches (c, p, len)) {
    sanitize (p, len, shown, sizeof shown);
    nbd_error ("connection %u: unknown export '%s'", c->id, shown);
    return -1;
  }
  c->eflags = transmission_flags (c);
  memset (b, 0, sizeof b);
  be64_store (b, c->exp->size);
  be16_store (b + 8, c->eflags);
  if (!c->no_zeroes)
    n += NBD_EXPORT_NAME_PADDING;
  if (conn_send (c, b, n) == -1)
    return -1;
  return 1;
}

DEFINE_VECTOR_TYPE (byte_list, uint8_t, realloc)

/* One NBD_REP_SERVER reply per export: built under the table lock,
 * sent after it. */
struct list_buf {
  struct byte_list *b;
  bool failed;
};

static void
list_one (void *opaque, struct nbd_export *exp)
{
  struct list_buf *l = opaque;
  const char *desc = exp->description ? exp->description : "";
  size_t nl = strlen (exp->name), dl = strlen (desc), need = 8 + nl + dl;

  uint8_t *p;

  if (l->failed)
    return;
  if (byte_list_reserve (l->b, need) == -1) {
    l->failed = true;
    return;
  }
  /* Record: total length, name length, name, description. */
  p = l->b->ptr + l->b->len;
  be32_store (p, (uint32_t) (4 + nl + dl));
  be32_store (p + 4, (uint32_t) nl);
  memcpy (p + 8, exp->name, nl);
  memcpy (p + 8 + nl, desc, dl);
  l->b->len += need;
}

static int
opt_list (struct connection *c, uint32_t option, uint32_t len)
{
  CLEANUP_VECTOR (byte_list) struct byte_list b = { 0 };
  struct list_buf l = { &b, false };
  size_t pos;
  int r = 0;

  if (len != 0)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "NBD_OPT_LIST takes no payload") == -1 ? -1 : 0;
  if (c->srv->nr_exports == 0)
    list_one (&l, c->srv->exp);
  else
    export_each (c->srv, list_one, &l);
  if (l.failed)
    return -1;
  for (pos = 0; r == 0 && pos < b.len; ) {
    uint32_t rl = be32_load (b.ptr + pos);

    r = send_reply (c, option, NBD_REP_SERVER, b.ptr + pos + 4, rl);
    pos += 4 + rl;
  }
  if (r == -1)
    return -1;
  return send_reply (c, option, NBD_REP_ACK, NULL, 0);
}

/* State of one LIST/SET_META_CONTEXT walk. */
struct meta_walk {
  struct connection *c;
  uint32_t option;
  bool set;
  uint32_t *sel;                   /* SET: selected indexes */
  size_t nr_sel;
  bool *seen;                      /* one per context: already replied */
};

static int
meta_reply (void *opaque, uint32_t index)
{
  struct meta_walk *w = opaque;
  char name[NBD_MAX_STRING + 64];
  uint8_t *b;
  size_t n;
  int r;

  if (w->seen[index])
    return 0;
  w->seen[index] = true;
  n = meta_name (w->c->exp, index, name, sizeof name);
  b = malloc (4 + n);
  if (!b)
    return -1;
  /* Ids in LIST replies are 0; SET uses the index as the id. */
  be32_store (b, w->set ? index : 0);
  memcpy (b + 4, name, n);
  r = send_reply (w->c, w->option, NBD_REP_META_CONTEXT, b, 4 + n);
  free (b);
  if (r == -1)
    return -1;
  if (w->set)
    w->sel[w->nr_sel++] = index;
  return 0;
}

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT:
 *   u32 export name length, name, u32 query count, count x (u32 len, query). */
static int
opt_meta (struct connection *c, uint32_t option, const uint8_t *p,
          uint32_t len)
{
  bool set = option == NBD_OPT_SET_META_CONTEXT;
  struct meta_walk w;
  uint32_t namelen, nq, i, pos, ql;
  size_t n;
  char shown[96];
  int r = 0;

  if (set) {
    /* The selection is replaced even when the option fails. */
    free (c->meta);
    c->meta = NULL;
    c->nr_meta = 0;
    if (!c->structured && !c->extended)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "structured replies have not been negotiated")
             == -1 ? -1 : 0;
  }
  if (len < 8)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "option too short") == -1 ? -1 : 0;
  namelen = be32_load (p);
  if (namelen > len - 8)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "inconsistent lengths in option") == -1 ? -1 : 0;
  if (namelen > NBD_MAX_STRING)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "export name too long") == -1 ? -1 : 0;
  nq = be32_load (p + 4 + namelen);
  pos = 8 + namelen;
  /* Validate every query before answering any. */
  for (i = 0; i < nq; i++) {
    if (len - pos < 4)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "inconsistent lengths in option") == -1 ? -1 : 0;
    ql = be32_load (p + pos);
    pos += 4;
    if (ql > len - pos)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "inconsistent lengths in option") == -1 ? -1 : 0;
    if (ql > NBD_MAX_STRING)
      return send_error (c, option, NBD_REP_ERR_INVALID,
                         "query too long") == -1 ? -1 : 0;
    pos += ql;
  }
  if (pos != len)
    return send_error (c, option, NBD_REP_ERR_INVALID,
                       "inconsistent lengths in option") == -1 ? -1 : 0;
  if (!export_matches (c, p + 4, namelen)) {
    sanitize (p + 4, namelen, shown, sizeof shown);
    return send_error (c, option, NBD_REP_ERR_UNKNOWN,
                       "export '%s' not present", shown) == -1 ? -1 : 0;
  }

  n = meta_count (c->exp);
  memset (&w, 0, sizeof w);
  w.c = c;
  w.option = option;
  w.set = set;
  w.seen = calloc (n, sizeof *w.seen);
  w.sel = set ? calloc (n, sizeof *w.sel) : NULL;
  if (!w.seen || (set && !w.sel)) {
    free (w.seen);
    free (w.sel);
    return -1;
  }
  if (nq == 0 && !set) {
    /* LIST with no queries: everything. */
    for (i = 0; r == 0 && i < n; i++)
      r = meta_reply (&w, i);
  }
  pos = 8 + namelen;
  for (i = 0; r == 0 && i < nq; i++) {
    ql = be32_load (p + pos);
    pos += 4;
    r = meta_match (c->exp, (const char *) p + pos, ql, !set, meta_reply, &w);
    pos += ql;
  }
  free (w.seen);
  if (r == 0)
    r = send_reply (c, option, NBD_REP_ACK, NULL, 0);
  if (r == 0 && set) {
    c->meta = w.sel;
    c->nr_meta = w.nr_sel;
  }
  else
    free (w.sel);
  return r;
}

static const char *
option_name (uint32_t o)
{
  switch (o) {
  case NBD_OPT_EXPORT_NAME: return "EXPORT_NAME";
  case NBD_OPT_ABORT: return "ABORT";
  case NBD_OPT_LIST: return "LIST";
  case NBD_OPT_STARTTLS: return "STARTTLS";
  case NBD_OPT_INFO: return "INFO";
  case NBD_OPT_GO: return "GO";
  case NBD_OPT_STRUCTURED_REPLY: return "STRUCTURED_REPLY";
  case NBD_OPT_LIST_META_CONTEXT: return "LIST_META_CONTEXT";
  case NBD_OPT_SET_META_CONTEXT: return "SET_META_CONTEXT";
  case NBD_OPT_EXTENDED_HEADERS: return "EXTENDED_HEADERS";
  default: return "unknown";
  }
}

/* Why a receive ended the handshake, for the log. */
static int
recv_failed (struct connection *c, int r, const char *what)
{
  if (r == CONN_EOF)
    nbd_debug ("connection %u: client closed during %s", c->id, what);
  else if (r == CONN_QUIT)
    nbd_debug ("connection %u: server shutting down during %s", c->id, what);
  else if (errno == ETIMEDOUT)
    nbd_error ("connection %u: handshake timed out", c->id);
  else
    nbd_debug ("connection %u: reading %s: %s", c->id, what,
               strerror (errno));
  return -1;
}

int
handshake_run (struct connection *c)
{
  uint8_t greet[NBD_GREETING_SIZE], hdr[NBD_OPT_HEADER_SIZE], cf[4];
  CLEANUP_FREE uint8_t *payload = NULL;
  uint32_t cflags;
  unsigned nopts;
  int r, result = -1;

  be64_store (greet, NBD_INIT_MAGIC);
  be64_store (greet + 8, NBD_OPTS_MAGIC);
  be16_store (greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (conn_send (c, greet, sizeof greet) == -1)
    return -1;
  if ((r = conn_recv (c, cf, sizeof cf)) != CONN_OK)
    return recv_failed (c, r, "the client flags");
  cflags = be32_load (cf);
  if (cflags & ~(uint32_t) (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
    nbd_error ("connection %u: unknown client flags 0x%x", c->id, cflags);
    return -1;
  }
  if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE))
    nbd_debug ("connection %u: client is not fixed newstyle", c->id);
  c->no_zeroes = (cflags & NBD_FLAG_C_NO_ZEROES) != 0;

  for (nopts = 0; ; nopts++) {
    uint32_t option, len;

    if (nopts >= c->srv->max_options) {
      nbd_error ("connection %u: too many options", c->id);
      goto out;
    }
    if ((r = conn_recv (c, hdr, sizeof hdr)) != CONN_OK) {
      recv_failed (c, r, "an option");
      goto out;
    }
    if (be64_load (hdr) != NBD_OPTS_MAGIC) {
      nbd_error ("connection %u: bad option magic", c->id);
      goto out;
    }
    option = be32_load (hdr + 8);
    len = be32_load (hdr + 12);
    if (len > MAX_OPTION_LEN) {
      nbd_error ("connection %u: option %u: payload of %u bytes is too large",
                 c->id, option, len);
      goto out;
    }
    free (payload);
    payload = malloc (len ? len : 1);
    if (!payload)
      goto out;
    if (len && (r = conn_recv (c, payload, len)) != CONN_OK) {
      recv_failed (c, r, "an option payload");
      goto out;
    }
    nbd_debug ("connection %u: option %s (%u), %u bytes", c->id,
               option_name (option), option, len);

    /* Only EXPORT_NAME is valid from a client that is not fixed newstyle;
     * we answer ERR_INVALID like nbdkit. */
    if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) &&
        option != NBD_OPT_EXPORT_NAME) {
      if (send_error (c, option, NBD_REP_ERR_INVALID,
                      "only NBD_OPT_EXPORT_NAME without fixed newstyle") == -1)
        goto out;
      continue;
    }

    if (c->srv->tls_mode == TLS_REQUIRE && !c->tls &&
        option != NBD_OPT_STARTTLS && option != NBD_OPT_ABORT) {
      if (option == NBD_OPT_EXPORT_NAME) {
        nbd_error ("connection %u: EXPORT_NAME without TLS, which is "
                   "required: disconnecting", c->id);
        goto out;
      }
      if (send_error (c, option, NBD_REP_ERR_TLS_REQD,
                      "TLS is required: send NBD_OPT_STARTTLS first") == -1)
        goto out;
      continue;
    }

    switch (option) {
    case NBD_OPT_EXPORT_NAME:
      if (opt_export_name (c, payload, len) == 1)
        result = 0;
      goto out;

    case NBD_OPT_ABORT:
      /* The client may not wait for the reply; ignore a send failure. */
      send_reply (c, option, NBD_REP_ACK, NULL, 0);
      goto out;

    case NBD_OPT_LIST:
      if (opt_list (c, option, len) == -1)
        goto out;
      break;

    case NBD_OPT_STARTTLS:
      if (c->srv->tls_mode == TLS_OFF)
        r = send_error (c, option, len ? NBD_REP_ERR_INVALID
                                       : NBD_REP_ERR_POLICY,
                        "TLS not configured");
      else if (len)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no payload");
      else if (c->tls)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "TLS already negotiated");
      else {
        if (send_reply (c, option, NBD_REP_ACK, NULL, 0) == -1 ||
            tls_handshake (c) == -1)
          goto out;
        /* Forget what was negotiated in the clear. */
        c->structured = c->extended = false;
        free (c->meta);
        c->meta = NULL;
        c->nr_meta = 0;
        r = 0;
      }
      if (r == -1)
        goto out;
      break;

    case NBD_OPT_INFO:
    case NBD_OPT_GO:
      r = opt_info_go (c, option, payload, len);
      if (r == -1)
        goto out;
      if (r == 1) {
        result = 0;
        goto out;
      }
      break;

    case NBD_OPT_STRUCTURED_REPLY:
      if (len != 0)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no payload");
      else if (c->extended)
        r = send_error (c, option, NBD_REP_ERR_EXT_HEADER_REQD,
                        "extended headers already negotiated");
      else if (c->structured)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "structured replies already negotiated");
      else {
        r = send_reply (c, option, NBD_REP_ACK, NULL, 0);
        c->structured = true;
      }
      if (r == -1)
        goto out;
      break;

    case NBD_OPT_EXTENDED_HEADERS:
      if (len != 0)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "NBD_OPT_EXTENDED_HEADERS takes no payload");
      else if (c->extended)
        r = send_error (c, option, NBD_REP_ERR_INVALID,
                        "extended headers already negotiated");
      else {
        r = send_reply (c, option, NBD_REP_ACK, NULL, 0);
        c->extended = true;
        c->structured = true;
      }
      if (r == -1)
        goto out;
      break;

    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      if (opt_meta (c, option, payload, len) == -1)
        goto out;
      break;

    default:
      if (send_error (c, option, NBD_REP_ERR_UNSUP,
                      "option %u not supported", option) == -1)
        goto out;
      break;
    }
  }

 out:
  if (result == 0)
    nbd_debug ("connection %u: negotiated: structured=%d extended=%d "
               "flags=0x%04x contexts=%zu", c->id, c->structured,
               c->extended, c->eflags, c->nr_meta);
  return result;
}
