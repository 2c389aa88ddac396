/* rawtrack - the control socket of `rawtrack serve`, client side, and the
 * registry of running servers (docs/control.md).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   control-client.c   connecting, one JSON request/response per line
 *   registry.c         where a running server that holds an image is found
 */
#ifndef RAWTRACK_CONTROL_H
#define RAWTRACK_CONTROL_H

#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>

#include "cli.h"

/* ---- control-client.c ---------------------------------------------------- */
struct ctl;
/* Connect to the control socket at path.  NULL with a message printed
 * (quiet: no message; errno says why). */
struct ctl *ctl_connect (const char *path, bool quiet);
void ctl_close (struct ctl *c);
const char *ctl_path (struct ctl *c);
/* Writes a request's arguments (members of the request object). */
typedef void (*ctl_args_fn) (struct json *j, void *opaque);
/* Send {"id": N, "command": command, ...args} and wait for its response.
 * The response object when it says "ok": true; NULL otherwise, with the
 * server's error (or the transport's) printed unless quiet, and kept for
 * ctl_error / ctl_errno.  A transport failure closes the connection
 * (later requests fail at once). */
struct jv *ctl_request (struct ctl *c, const char *command, ctl_args_fn args,
                        void *opaque, bool quiet);
/* The last failed request's message and errno name ("EINVAL"; "" when the
 * failure was the transport's). */
const char *ctl_error (struct ctl *c);
const char *ctl_errno (struct ctl *c);

/* Small accessors over a parsed response (NULL/0/false when absent or of
 * another type). */
const char *jv_str (const struct jv *v, const char *key);
uint64_t jv_uint (const struct jv *v, const char *key);
bool jv_bool (const struct jv *v, const char *key, bool dflt);
const struct jv *jv_arr (const struct jv *v, const char *key);

/* ---- registry.c ------------------------------------------------------------ */
/* One registry entry: a running server's control socket for one image. */
struct reg_entry {
  char *control;               /* control socket path */
  long pid;
  char *image;                 /* absolute path of the image */
  char *export_name;
  char *nbd;                   /* URI of the server's NBD socket, or NULL */
};
void reg_entry_free (struct reg_entry *e);
/* The registry directory: $XDG_RUNTIME_DIR/rawtrack, or /tmp/rawtrack-UID
 * (as server/registry.c); create=true makes it (mode 0700).  It must be a
 * directory owned by us and not writable by others.  NULL with a message
 * unless quiet. */
char *reg_dir (bool create, bool quiet);
/* The entry file of the image file with this st_dev/st_ino. */
char *reg_entry_path (const char *dir, dev_t dev, ino_t ino);
/* Look up the server holding image: 1 with *e filled (the entry's pid is
 * alive and its control socket answers connect), 0 when there is none (a
 * stale entry is removed), -1 on error (message printed). */
int reg_lookup (const char *image, struct reg_entry *e);

#endif /* RAWTRACK_CONTROL_H */
