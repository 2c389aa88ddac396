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

int
remote_option (int c, const char *arg, unsigned *flags)
{
  static const char *certs, *psk;

  switch (c) {
  case OPT_ALLOW_REMOTE:
    *flags |= RAWTRACK_OPEN_ALLOW_REMOTE;
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
