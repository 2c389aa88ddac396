/* rawtrack - NBD server: the table of exports.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: finding the export a client names (the served images' and the
 * point-in-time exports the control socket publishes), and adding and
 * withdrawing exports while clients connect.
 *
 * Locking: srv->exports_lock protects srv->exports and nr_exports.  A
 * point-in-time export lives inside its view_disk, whose reference
 * export_get takes under the lock: a connection keeps using an export
 * withdrawn meanwhile (its reads then fail: the view has ended) and the
 * memory stays until its last reference goes.  The served images'
 * exports live as long as the server.
 */
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "server.h"

static bool
name_is (const struct nbd_export *exp, const char *name, size_t len)
{
  return strlen (exp->name) == len && memcmp (exp->name, name, len) == 0;
}

struct nbd_export *
export_get (struct nbd_server *srv, const char *name, size_t len)
{
  struct nbd_export *found = NULL;
  size_t i;

  if (srv->nr_exports == 0) {
    /* A server with one fixed export (the fuzzer). */
    if (len == 0 || name_is (srv->exp, name, len))
      return srv->exp;
    return NULL;
  }
  pthread_mutex_lock (&srv->exports_lock);
  for (i = 0; i < srv->nr_exports && !found; i++)
    if (name_is (srv->exports[i], name, len))
      found = srv->exports[i];
  if (!found && len == 0)
    found = srv->exp;
  if (found && found->view)
    view_disk_ref (found->view);
  pthread_mutex_unlock (&srv->exports_lock);
  return found;
}

void
export_put (struct nbd_export *exp)
{
  if (exp && exp->view)
    view_disk_unref (exp->view);
}

int
export_add (struct nbd_server *srv, struct nbd_export *exp)
{
  struct nbd_export **n;
  size_t i;
  int r = 0;

  pthread_mutex_lock (&srv->exports_lock);
  for (i = 0; i < srv->nr_exports; i++)
    if (strcmp (srv->exports[i]->name, exp->name) == 0) {
      r = EEXIST;
      goto out;
    }
  n = realloc (srv->exports, (srv->nr_exports + 1) * sizeof *n);
  if (!n) {
    r = ENOMEM;
    goto out;
  }
  srv->exports = n;
  srv->exports[srv->nr_exports++] = exp;
 out:
  pthread_mutex_unlock (&srv->exports_lock);
  if (r) {
    errno = r;
    return -1;
  }
  return 0;
}

void
export_remove (struct nbd_server *srv, struct nbd_export *exp)
{
  size_t i;

  pthread_mutex_lock (&srv->exports_lock);
  for (i = 0; i < srv->nr_exports; i++)
    if (srv->exports[i] == exp) {
      memmove (&srv->exports[i], &srv->exports[i + 1],
               (srv->nr_exports - i - 1) * sizeof *srv->exports);
      srv->nr_exports--;
      break;
    }
  pthread_mutex_unlock (&srv->exports_lock);
}

void
export_each (struct nbd_server *srv,
             void (*fn) (void *opaque, struct nbd_export *exp), void *opaque)
{
  size_t i;

  pthread_mutex_lock (&srv->exports_lock);
  for (i = 0; i < srv->nr_exports; i++)
    fn (opaque, srv->exports[i]);
  pthread_mutex_unlock (&srv->exports_lock);
}
