/* rawtrack - the command's options for remote (NBD) data files.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: --allow-remote, --tls-certificates and --tls-psk of the commands
 * that open a data file (cli.h: REMOTE_LONG_OPTS).  Credentials go to the
 * library's process-wide setting (rawtrack_nbd_set_tls) as they are
 * parsed.  Single-threaded (option parsing).
 */
#include "cli.h"
#include "rawtrack/rawtrack-io.h"
#include <libnbd.h>

static const char *certs, *psk;
static unsigned allow;

int
remote_option (int c, const char *arg, unsigned *flags)
{
  switch (c) {
  case OPT_ALLOW_REMOTE:
    *flags |= RAWTRACK_OPEN_ALLOW_REMOTE;
    allow = RAWTRACK_OPEN_ALLOW_REMOTE;
    return 1;
  case OPT_REMOTE_TLS_CERTS:
    certs = arg;
    break;
  case OPT_REMOTE_TLS_PSK:
    psk = arg;
    break;
  default:
    return 0;
  }
  if (rawtrack_nbd_set_tls (certs, psk) == -1) {
    fail_lib ("TLS credentials");
    return -1;
  }
  return 1;
}

unsigned
remote_open_flags (void)
{
  return allow;
}

void
remote_nbd_credentials (struct nbd_handle *h)
{
  if (certs)
    nbd_set_tls_certificates (h, certs);
  if (psk)
    nbd_set_tls_psk_file (h, psk);
}
