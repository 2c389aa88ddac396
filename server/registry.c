/* rawtrack - NBD server: the registry of running servers.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the entries by which `rawtrack backup create IMAGE` finds the
 * server that holds IMAGE (docs/control.md, "The registry"): one file
 * DEV-INO.json per served image in $XDG_RUNTIME_DIR/rawtrack/ (else
 * /tmp/rawtrack-UID/), a directory of mode 0700 that must be ours and
 * writable by nobody else - anything else is refused, since a client
 * trusts what it finds there.
 *
 * On-disk rules: an entry is written to a temporary name and renamed
 * over (a reader never sees half of one); removed at a clean exit only if
 * it is still the one we wrote (same inode).  After a crash the entry
 * stays; its pid is dead or its socket refuses, and clients treat it as
 * stale; the next serve of the image replaces it.
 * Locking: none; the main thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>

#include "server.h"
#include "json.h"

/* The directory, created if needed and checked. */
static int
registry_dir (char *buf, size_t len, char *err, size_t errlen)
{
  const char *xdg = getenv ("XDG_RUNTIME_DIR");
  struct stat st;

  if (xdg && xdg[0] == '/')
    snprintf (buf, len, "%s/rawtrack", xdg);
  else
    snprintf (buf, len, "/tmp/rawtrack-%lu", (unsigned long) getuid ());
  if (mkdir (buf, 0700) == -1 && errno != EEXIST) {
    snprintf (err, errlen, "registry %s: %s", buf, strerror (errno));
    return -1;
  }
  if (lstat (buf, &st) == -1) {
    snprintf (err, errlen, "registry %s: %s", buf, strerror (errno));
    return -1;
  }
  if (!S_ISDIR (st.st_mode) || st.st_uid != getuid () ||
      (st.st_mode & 022)) {
    snprintf (err, errlen, "registry %s is not a directory of ours that "
              "only we may write: not used", buf);
    return -1;
  }
  return 0;
}

int
registry_add (const struct nbd_disk *disk, const char *export,
              const char *control, const char *nbd_uri,
              struct registry_entry *ent, char *err, size_t errlen)
{
  char dir[4000], tmp[4300];
  struct json *j;
  struct stat st;
  FILE *fp;

  ent->path[0] = '\0';
  if (registry_dir (dir, sizeof dir, err, errlen) == -1)
    return -1;
  snprintf (ent->path, sizeof ent->path, "%.4000s/%lu-%lu.json", dir,
            (unsigned long) disk->dev, (unsigned long) disk->ino);
  snprintf (tmp, sizeof tmp, "%.4200s.tmp%ld", ent->path, (long) getpid ());
  fp = fopen (tmp, "w");
  if (!fp) {
    snprintf (err, errlen, "registry entry %s: %s", tmp, strerror (errno));
    ent->path[0] = '\0';
    return -1;
  }
  j = json_new (fp, false);
  json_object_begin (j, NULL);
  json_string (j, "control", control);
  json_uint (j, "pid", (uint64_t) getpid ());
  json_string (j, "image", disk->path);
  json_string (j, "export", export);
  json_uint (j, "dev", (uint64_t) disk->dev);
  json_uint (j, "ino", (uint64_t) disk->ino);
  if (nbd_uri)
    json_string (j, "nbd", nbd_uri);
  json_object_end (j);
  json_end (j);
  if (fclose (fp) != 0 || stat (tmp, &st) == -1 ||
      rename (tmp, ent->path) == -1) {
    snprintf (err, errlen, "registry entry %s: %s", ent->path,
              strerror (errno));
    unlink (tmp);
    ent->path[0] = '\0';
    return -1;
  }
  ent->ino = st.st_ino;
  return 0;
}

void
registry_remove (struct registry_entry *ent)
{
  struct stat st;

  if (ent->path[0] && stat (ent->path, &st) == 0 && st.st_ino == ent->ino)
    unlink (ent->path);
  ent->path[0] = '\0';
}
