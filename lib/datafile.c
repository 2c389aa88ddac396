/* rawtrack - external data file names: policy and resolution.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: turning the data-file name stored in an image (extension "DATA")
 * into a path we open.  No I/O beyond stat, no locking.
 *
 * Policy (see docs/rawtrack.md, "Data file names"):
 *  - An NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://) names a
 *    remote data file (io/io-nbd.c).  image.c follows a stored one only
 *    when the caller allows it (RAWTRACK_OPEN_ALLOW_REMOTE or
 *    RAWTRACK_ALLOW_REMOTE=1): an image from elsewhere must not make us
 *    connect to hosts or sockets of its choosing.  A URI the user gives
 *    (--data-file, attach) is allowed by that act.
 *  - Otherwise the stored string is a plain local path.  Names that look like QEMU
 *    json: or protocol: names are refused: since CVE-2024-4467 QEMU takes
 *    them literally, and opening them would let a hostile image point us
 *    at something other than a file.  The caller may always override the
 *    name (--data-file).
 *  - An absolute name is used as is.
 *  - A relative name is resolved against the directory of the image first
 *    (so the image opens from any working directory), then against the
 *    current directory (QEMU's rule), and the first that exists wins.
 */
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <errno.h>

#include "internal.h"

bool
datafile_remote_allowed (unsigned open_flags)
{
  const char *env = getenv ("RAWTRACK_ALLOW_REMOTE");

  return (open_flags & RAWTRACK_OPEN_ALLOW_REMOTE) || (env && strcmp (env, "1") == 0);
}

bool
datafile_name_is_special (const char *name)
{
  const char *p;

  if (strncmp (name, "json:", 5) == 0)
    return true;
  /* "proto:..." where proto is [A-Za-z0-9+.-]+ before any '/'. */
  for (p = name; *p && *p != '/'; p++) {
    if (*p == ':')
      return p > name;
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '+' || *p == '.' || *p == '-' ||
          *p == '_'))
      return false;
  }
  return false;
}

char *
datafile_join (const char *image_path, const char *name)
{
  const char *slash;
  char *joined;
  size_t dirlen;

  if (name[0] == '/' || !image_path || !(slash = strrchr (image_path, '/')))
    return rt_strdup (name);
  dirlen = (size_t) (slash - image_path) + 1;
  joined = rt_malloc (dirlen + strlen (name) + 1);
  if (joined) {
    memcpy (joined, image_path, dirlen);
    strcpy (joined + dirlen, name);
  }
  return joined;
}

char *
datafile_resolve (const char *image_path, const char *stored)
{
  char *joined;
  struct stat st;

  if (stored[0] == '\0') {
    rt_set_error (EINVAL, "the image names an empty data file; "
                  "give one with --data-file");
    return NULL;
  }
  if (datafile_name_is_special (stored)) {
    rt_set_error (EINVAL, "refusing data file name '%s': not a plain path "
                  "(json: and protocol: names are never opened); give the "
                  "file with --data-file", stored);
    return NULL;
  }
  joined = datafile_join (image_path, stored);
  if (!joined || strcmp (joined, stored) == 0)
    return joined;
  /* Relative: the image's directory if it is there, else QEMU's rule. */
  if (stat (joined, &st) == 0 || stat (stored, &st) != 0)
    return joined;
  free (joined);
  return rt_strdup (stored);
}
