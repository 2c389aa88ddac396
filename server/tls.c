/* rawtrack - NBD server: TLS (STARTTLS) through GnuTLS.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the server's TLS credentials (struct tls_config: X.509 files laid
 * out as QEMU's tls-creds-x509 and nbdkit do, or an nbdkit/psktool PSK
 * file), the per-connection GnuTLS session, its transport functions and
 * the record-layer receive and send that connection.c uses once a
 * connection has switched to TLS.
 *
 * Credentials are loaded once by serve.c before the first connection and
 * are read-only afterwards (GnuTLS credentials may be shared by sessions
 * of many threads).
 *
 * A session is made by the handshake thread when the client sends
 * NBD_OPT_STARTTLS and lives until conn_handle closes the socket.  In the
 * transmission phase one thread receives (under conn->read_lock) while
 * another sends (under conn->write_lock): GnuTLS allows one receiver and
 * one sender on a session at a time, which is exactly what those locks
 * give.  Nothing else touches the session concurrently.
 *
 * Transport: the pull function reads with MSG_DONTWAIT, so a receive that
 * would block comes back as GNUTLS_E_AGAIN and the caller polls the socket
 * together with the server's quit fd and the handshake deadline (as the
 * plain path does).  The push function sends with MSG_NOSIGNAL and blocks.
 *
 * There is no downgrade: a failed TLS handshake ends the connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "server.h"

struct tls_config {
  gnutls_certificate_credentials_t x509;   /* NULL with PSK */
  gnutls_psk_server_credentials_t psk;     /* NULL with X.509 */
  bool verify_peer;
  char dir[4096];
};

static int
file_readable (const char *dir, const char *name, char *out, size_t len)
{
  struct stat st;

  if ((size_t) snprintf (out, len, "%s/%s", dir, name) >= len)
    return -1;
  return stat (out, &st) == 0 && S_ISREG (st.st_mode) ? 0 : -1;
}

struct tls_config *
tls_config_new (const char *certdir, const char *pskfile, bool verify_peer,
                char *err, size_t errlen)
{
  struct tls_config *t = calloc (1, sizeof *t);
  char ca[4200], crl[4200], cert[4200], key[4200];
  int r;

  if (!t) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  t->verify_peer = verify_peer;
  if (pskfile) {
    struct stat st;

    if (stat (pskfile, &st) == -1 || !S_ISREG (st.st_mode)) {
      snprintf (err, errlen, "--tls-psk %s: %s", pskfile,
                errno ? strerror (errno) : "not a regular file");
      goto fail;
    }
    r = gnutls_psk_allocate_server_credentials (&t->psk);
    if (r >= 0)
      r = gnutls_psk_set_server_credentials_file (t->psk, pskfile);
    if (r < 0) {
      snprintf (err, errlen, "--tls-psk %s: %s", pskfile,
                gnutls_strerror (r));
      goto fail;
    }
    return t;
  }

  snprintf (t->dir, sizeof t->dir, "%s", certdir);
  if (file_readable (certdir, "server-cert.pem", cert, sizeof cert) == -1 ||
      file_readable (certdir, "server-key.pem", key, sizeof key) == -1) {
    snprintf (err, errlen, "--tls-certificates %s: server-cert.pem and "
              "server-key.pem must be there", certdir);
    goto fail;
  }
  r = gnutls_certificate_allocate_credentials (&t->x509);
  if (r < 0) {
    snprintf (err, errlen, "GnuTLS: %s", gnutls_strerror (r));
    goto fail;
  }
  if (file_readable (certdir, "ca-cert.pem", ca, sizeof ca) == 0) {
    r = gnutls_certificate_set_x509_trust_file (t->x509, ca,
                                                GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      snprintf (err, errlen, "%s: %s", ca, gnutls_strerror (r));
      goto fail;
    }
  }
  else if (verify_peer) {
    snprintf (err, errlen, "--tls-verify-peer needs %s/ca-cert.pem to "
              "check client certificates against", certdir);
    goto fail;
  }
  if (file_readable (certdir, "ca-crl.pem", crl, sizeof crl) == 0) {
    r = gnutls_certificate_set_x509_crl_file (t->x509, crl,
                                              GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      snprintf (err, errlen, "%s: %s", crl, gnutls_strerror (r));
      goto fail;
    }
  }
  r = gnutls_certificate_set_x509_key_file (t->x509, cert, key,
                                            GNUTLS_X509_FMT_PEM);
  if (r < 0) {
    snprintf (err, errlen, "%s, %s: %s", cert, key, gnutls_strerror (r));
    goto fail;
  }
  return t;

 fail:
  tls_config_free (t);
  return NULL;
}

void
tls_config_free (struct tls_config *t)
{
  if (!t)
    return;
  if (t->x509)
    gnutls_certificate_free_credentials (t->x509);
  if (t->psk)
    gnutls_psk_free_server_credentials (t->psk);
  free (t);
}

static ssize_t
pull (gnutls_transport_ptr_t p, void *buf, size_t n)
{
  struct connection *c = p;
  ssize_t r;

  do
    r = recv (c->fd, buf, n, MSG_DONTWAIT);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    gnutls_transport_set_errno (c->tls, errno);
  return r;
}

static ssize_t
push (gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
  struct connection *c = p;
  struct msghdr msg;
  ssize_t r;

  memset (&msg, 0, sizeof msg);
  msg.msg_iov = (struct iovec *) iov;
  msg.msg_iovlen = (size_t) iovcnt;
  do
    r = sendmsg (c->fd, &msg, MSG_NOSIGNAL);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    gnutls_transport_set_errno (c->tls, errno);
  return r;
}

/* GnuTLS error -> errno for the connection's log and status. */
static int
tls_errno (int r)
{
  switch (r) {
  case GNUTLS_E_PUSH_ERROR:
  case GNUTLS_E_PULL_ERROR:
  case GNUTLS_E_PREMATURE_TERMINATION:
    return ECONNRESET;
  default:
    return EPROTO;
  }
}

int
tls_handshake (struct connection *c)
{
  const struct tls_config *t = c->srv->tls;
  gnutls_session_t s;
  int r;

  r = gnutls_init (&s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (r < 0) {
    nbd_error ("connection %u: TLS: %s", c->id, gnutls_strerror (r));
    return -1;
  }
  c->tls = s;
  if (t->psk) {
    r = gnutls_priority_set_direct (s, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK",
                                    NULL);
    if (r >= 0)
      r = gnutls_credentials_set (s, GNUTLS_CRD_PSK, t->psk);
  }
  else {
    r = gnutls_set_default_priority (s);
    if (r >= 0)
      r = gnutls_credentials_set (s, GNUTLS_CRD_CERTIFICATE, t->x509);
    if (r >= 0 && t->verify_peer) {
      gnutls_certificate_server_set_request (s, GNUTLS_CERT_REQUIRE);
      /* Check the chain against ca-cert.pem during the handshake. */
      gnutls_session_set_verify_cert (s, NULL, 0);
    }
    else if (r >= 0)
      gnutls_certificate_server_set_request (s, GNUTLS_CERT_IGNORE);
  }
  if (r < 0) {
    nbd_error ("connection %u: TLS: %s", c->id, gnutls_strerror (r));
    return -1;
  }
  gnutls_transport_set_ptr (s, c);
  gnutls_transport_set_pull_function (s, pull);
  gnutls_transport_set_vec_push_function (s, push);

  for (;;) {
    r = gnutls_handshake (s);
    if (r == GNUTLS_E_SUCCESS)
      break;
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      int w = conn_wait_readable (c);

      if (w != CONN_OK) {
        if (w == CONN_ERROR && errno == ETIMEDOUT)
          nbd_error ("connection %u: TLS handshake timed out", c->id);
        return -1;
      }
      continue;
    }
    if (!gnutls_error_is_fatal (r))
      continue;
    if (r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PREMATURE_TERMINATION ||
        r == GNUTLS_E_PUSH_ERROR) {
      nbd_error ("connection %u: TLS handshake failed: the client hung up "
                 "(did it refuse our certificate or key?)", c->id);
      return -1;
    }
    nbd_error ("connection %u: TLS handshake failed: %s", c->id,
               gnutls_strerror (r));
    return -1;
  }
  if (nbd_verbose) {
    char *d = gnutls_session_get_desc (s);
    const char *user = t->psk ? gnutls_psk_server_get_username (s) : NULL;

    nbd_debug ("connection %u: TLS%s%s%s: %s", c->id, user ? " (PSK user " : "",
               user ? user : "", user ? ")" : "", d ? d : "?");
    gnutls_free (d);
  }
  return 0;
}

ssize_t
tls_recv (struct connection *c, void *buf, size_t n)
{
  for (;;) {
    ssize_t r = gnutls_record_recv (c->tls, buf, n);

    if (r >= 0)
      return r;
    if (r == GNUTLS_E_AGAIN) {
      errno = EAGAIN;
      return -1;
    }
    if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_REHANDSHAKE ||
        !gnutls_error_is_fatal ((int) r))
      continue;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return 0;                    /* the client closed without bye */
    nbd_debug ("connection %u: TLS receive: %s", c->id,
               gnutls_strerror ((int) r));
    errno = tls_errno ((int) r);
    return -1;
  }
}

static int
send_all (struct connection *c, const uint8_t *p, size_t n)
{
  while (n > 0) {
    ssize_t r = gnutls_record_send (c->tls, p, n);

    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      /* Only after a partial record: call again with no data. */
      r = gnutls_record_send (c->tls, NULL, 0);
      if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
        continue;
    }
    if (r < 0) {
      errno = tls_errno ((int) r);
      return -1;
    }
    p += r;
    n -= (size_t) r;
  }
  return 0;
}

int
tls_sendv (struct connection *c, const struct iovec *iov, int iovcnt)
{
  size_t total = 0;
  int i;
  bool cork;

  for (i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  /* Small replies (headers and short payloads) go out as one record;
   * large ones are not copied into the cork buffer. */
  cork = iovcnt > 1 && total <= 65536;
  if (cork)
    gnutls_record_cork (c->tls);
  for (i = 0; i < iovcnt; i++)
    if (iov[i].iov_len &&
        send_all (c, iov[i].iov_base, iov[i].iov_len) == -1)
      return -1;
  if (cork) {
    int r;

    do
      r = gnutls_record_uncork (c->tls, GNUTLS_RECORD_WAIT);
    while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
    if (r < 0) {
      errno = tls_errno (r);
      return -1;
    }
  }
  return 0;
}

void
tls_close (struct connection *c)
{
  if (!c->tls)
    return;
  /* Best effort: tell the client, do not wait for its answer. */
  gnutls_bye (c->tls, GNUTLS_SHUT_WR);
  gnutls_deinit (c->tls);
  c->tls = NULL;
}
