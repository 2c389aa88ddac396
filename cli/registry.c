/* rawtrack - the registry of running servers: finding the one that holds
 * an image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: reading the registry (docs/control.md; serve writes it,
 * server/registry.c).  A `rawtrack serve --control PATH` records, for
 * every image it serves, a file <st_dev>-<st_ino>.json in
 *
 *   $XDG_RUNTIME_DIR/rawtrack/   (or /tmp/rawtrack-<uid>/ without it)
 *
 * holding {"control": PATH, "pid": N, "image": ABSPATH, "export": NAME,
 * "nbd": URI or null, "dev": N, "ino": N}, so that `rawtrack backup
 * create IMAGE REPO` finds the server from the image alone (keyed by the
 * file's identity, not its name: any path to the image finds it).
 *
 * Invariants: the directory is ours (owner = our uid) and nobody else may
 * write in it (group/other write refused), and an entry is trusted only
 * as far as its pid is alive and its control socket answers (the socket
 * itself is 0600); the caller then confirms with `query` that the server
 * holds the image (dev/ino).  An entry is written whole by its server (a
 * temporary file renamed over it) and removed at a clean exit; one left
 * by a crash is stale (pid dead, or nothing listening there) and the
 * first lookup removes it, unless a new server replaced it meanwhile (the
 * file's inode is compared before unlinking).
 *
 * Locking: none.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>

#include "control.h"

#define ENTRY_MAX 65536

void
reg_entry_free (struct reg_entry *e)
{
  if (!e)
    return;
  free (e->control);
  free (e->image);
  free (e->export_name);
  free (e->nbd);
  memset (e, 0, sizeof *e);
}

char *
reg_dir (bool create, bool quiet)
{
  const char *xdg = getenv ("XDG_RUNTIME_DIR");
  struct stat st;
  char *dir;

  if (xdg && xdg[0] == '/') {
    if (asprintf (&dir, "%s/rawtrack", xdg) < 0)
      exit (1);
  }
  else if (asprintf (&dir, "/tmp/rawtrack-%u", (unsigned) getuid ()) < 0)
    exit (1);
  if (create && mkdir (dir, 0700) == -1 && errno != EEXIST) {
    if (!quiet)
      fprintf (stderr, "%s: cannot create the server registry '%s': %m\n",
               progname, dir);
    free (dir);
    return NULL;
  }
  if (lstat (dir, &st) == -1) {
    if (!quiet && errno != ENOENT)
      fprintf (stderr, "%s: the server registry '%s': %m\n", progname, dir);
    free (dir);
    return NULL;
  }
  if (!S_ISDIR (st.st_mode) || st.st_uid != getuid () ||
      (st.st_mode & 022)) {
    if (!quiet)
      fprintf (stderr, "%s: the server registry '%s' is not a directory "
               "owned by this user and closed to others: ignored (remove "
               "it)\n", progname, dir);
    free (dir);
    return NULL;
  }
  return dir;
}

char *
reg_entry_path (const char *dir, dev_t dev, ino_t ino)
{
  char *p;

  if (asprintf (&p, "%s/%" PRIu64 "-%" PRIu64 ".json", dir, (uint64_t) dev,
                (uint64_t) ino) < 0)
    exit (1);
  return p;
}

/* Read and parse an entry file; NULL when unreadable or malformed. */
static struct jv *
load (const char *path, struct stat *st)
{
  char buf[ENTRY_MAX], err[200];
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  ssize_t n;

  if (fd == -1)
    return NULL;
  if (fstat (fd, st) == -1 || !S_ISREG (st->st_mode) ||
      st->st_uid != getuid ()) {
    close (fd);
    return NULL;
  }
  n = read (fd, buf, sizeof buf);
  close (fd);
  if (n <= 0 || (size_t) n == sizeof buf)
    return NULL;
  return jv_parse (buf, (size_t) n, err, sizeof err);
}

static void
unlink_if_same (const char *path, const struct stat *was)
{
  struct stat now;

  if (lstat (path, &now) == 0 && now.st_ino == was->st_ino &&
      now.st_dev == was->st_dev)
    unlink (path);
}

int
reg_lookup (const char *image, struct reg_entry *e)
{
  struct stat st, est;
  char *dir, *path;
  struct jv *v;
  const struct jv *pid;
  struct ctl *c;
  int ret = 0;

  memset (e, 0, sizeof *e);
  if (stat (image, &st) == -1)
    return 0;                  /* the caller's open reports it */
  dir = reg_dir (false, true);
  if (!dir)
    return 0;
  path = reg_entry_path (dir, st.st_dev, st.st_ino);
  v = load (path, &est);
  if (!v) {
    if (access (path, F_OK) == 0)
      fprintf (stderr, "%s: warning: ignoring the unreadable registry entry "
               "'%s'\n", progname, path);
    goto out;
  }
  pid = jv_get (v, "pid");
  if (!jv_str (v, "control") || !pid || pid->t != JV_NUM || !pid->integer ||
      pid->i <= 0 || pid->i > INT_MAX) {
    fprintf (stderr, "%s: warning: the registry entry '%s' is malformed: "
             "removed\n", progname, path);
    unlink_if_same (path, &est);
    goto out;
  }
  if (kill ((pid_t) pid->i, 0) == -1 && errno == ESRCH) {
    unlink_if_same (path, &est);       /* its server died */
    goto out;
  }
  c = ctl_connect (jv_str (v, "control"), true);
  if (!c) {
    if (errno == ECONNREFUSED || errno == ENOENT)
      unlink_if_same (path, &est);     /* nothing listens there any more */
    else
      fprintf (stderr, "%s: warning: the server recorded for '%s' (pid %"
               PRId64 ") does not answer on '%s': %m\n", progname, image,
               pid->i, jv_str (v, "control"));
    goto out;
  }
  ctl_close (c);
  e->control = strdup (jv_str (v, "control"));
  e->pid = (long) pid->i;
  e->image = jv_str (v, "image") ? strdup (jv_str (v, "image")) : NULL;
  e->export_name = jv_str (v, "export") ? strdup (jv_str (v, "export")) : NULL;
  e->nbd = jv_str (v, "nbd") ? strdup (jv_str (v, "nbd")) : NULL;
  ret = 1;
 out:
  jv_free (v);
  free (path);
  free (dir);
  return ret;
}
