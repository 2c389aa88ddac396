/* rawtrack - `rawtrack backup create` of a served disk, through its server.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the client side of a live backup (docs/control.md): finding the
 * `rawtrack serve` that holds an image (--control PATH, or the registry,
 * registry.c), the image's export and checkpoint bitmaps as the server
 * reports them (`query`), the checkpoint and its point-in-time view
 * (`checkpoint`, `backup-begin`), the end of a view (`backup-end`) and
 * the recovery of views left by a client that died (stale views).
 *
 * What a live backup does, and the one place it differs from an offline
 * one (backup-create.c has the planning and the copy; both share them):
 * the rotation [1] is the server's `checkpoint` request - the same
 * rawtrack_bitmap_rotate, taken at one instant with respect to guest
 * writes together with a copy-before-write view of the disk - and the
 * data is read from the view's PIT export over NBD (backup-source.c)
 * instead of from the image.  [4] (dropping the frozen bitmaps) is
 * `backup-end success`; any failure after [1] is `backup-end failure`,
 * which merges the frozen bitmaps into the new checkpoint: nothing lost.
 *
 * Crash rules.  Client killed after [1]: the server still holds the view.
 * The next run holds the repository lock, so any view whose checkpoint is
 * one of this repository's bitmaps is stale; it is ended with failure
 * first (its frozen bitmaps merge into its checkpoint bitmap, which then
 * covers every change since the latest backup: bk_live_stale_successor).
 * Server killed: no view survives; the image holds the frozen bitmaps
 * (disabled) and the new one (enabled), the state the planner recovers
 * from as offline.
 *
 * Locking: none; one connection, used by the main thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>

#include "backup.h"
#include "control.h"

struct stale {
  char *checkpoint;
  char **frozen;               /* this export's frozen bitmaps */
  size_t nfrozen;
};

struct bk_live {
  struct ctl *c;
  char *control;
  struct stale *stale;         /* views ended by bk_live_end_stale */
  size_t nstale;
};

static char *
xstrdup (const char *s)
{
  char *p = strdup (s ? s : "");

  if (!p) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  return p;
}

int
bk_live_open (const char *image, const char *control, struct bk_live **out)
{
  struct reg_entry e = { 0 };
  struct bk_live *l;
  int f;

  *out = NULL;
  if (!control) {
    f = reg_lookup (image, &e);
    if (f <= 0)
      return f;
    control = e.control;
  }
  l = calloc (1, sizeof *l);
  if (!l) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  l->control = xstrdup (control);
  reg_entry_free (&e);
  l->c = ctl_connect (l->control, false);
  if (!l->c) {
    bk_live_close (l);
    return -1;
  }
  *out = l;
  return 1;
}

void
bk_live_close (struct bk_live *l)
{
  size_t i, k;

  if (!l)
    return;
  ctl_close (l->c);
  for (i = 0; i < l->nstale; i++) {
    free (l->stale[i].checkpoint);
    for (k = 0; k < l->stale[i].nfrozen; k++)
      free (l->stale[i].frozen[k]);
    free (l->stale[i].frozen);
  }
  free (l->stale);
  free (l->control);
  free (l);
}

const char *
bk_live_control (struct bk_live *l)
{
  return l->control;
}

/* The export object of query's result that serves image (dev/ino). */
static const struct jv *
find_export (const struct jv *q, const char *image, const struct stat *st)
{
  const struct jv *ex = jv_arr (q, "exports");
  size_t i;

  for (i = 0; ex && i < ex->n; i++)
    if (jv_uint (ex->items[i], "dev") == (uint64_t) st->st_dev &&
        jv_uint (ex->items[i], "ino") == (uint64_t) st->st_ino &&
        jv_str (ex->items[i], "name"))
      return ex->items[i];
  return NULL;
}

int
bk_live_export (struct bk_live *l, const char *image, struct bk_repo *r,
                char **export_name, uint64_t *size, struct bk_ckpts *ck)
{
  struct jv *q;
  const struct jv *e, *bm;
  struct stat st;
  size_t i;

  if (stat (image, &st) == -1) {
    fprintf (stderr, "%s: '%s': %m\n", progname, image);
    return -1;
  }
  q = ctl_request (l->c, "query", NULL, NULL, false);
  if (!q)
    return -1;
  e = find_export (q, image, &st);
  if (!e) {
    fprintf (stderr, "%s: the server at '%s' does not serve '%s' (no export "
             "of that file in its query)\n", progname, l->control, image);
    jv_free (q);
    return -1;
  }
  if (jv_bool (e, "read_only", false)) {
    fprintf (stderr, "%s: the server at '%s' serves '%s' read-only: it "
             "cannot take checkpoints of it\n", progname, l->control, image);
    jv_free (q);
    return -1;
  }
  *export_name = xstrdup (jv_str (e, "name"));
  *size = jv_uint (e, "size");
  bm = jv_arr (e, "bitmaps");
  for (i = 0; bm && i < bm->n; i++) {
    const char *name = jv_str (bm->items[i], "name");
    uint64_t seq;

    if (!name || bk_checkpoint_seq (r, name, &seq) == -1)
      continue;
    bk_ckpts_add (ck, name, seq,
                  (jv_bool (bm->items[i], "enabled", false) ?
                   RAWTRACK_BITMAP_AUTO : 0) |
                  (jv_bool (bm->items[i], "in_use", false) ?
                   RAWTRACK_BITMAP_IN_USE : 0));
  }
  jv_free (q);
  return 0;
}

struct end_args {
  const char *checkpoint;
  bool success;
};

static void
end_args (struct json *j, void *opaque)
{
  struct end_args *a = opaque;

  json_string (j, "checkpoint", a->checkpoint);
  json_string (j, "result", a->success ? "success" : "failure");
}

int
bk_live_end (struct bk_live *l, const char *checkpoint, bool success)
{
  struct end_args a = { checkpoint, success };
  struct jv *v = ctl_request (l->c, "backup-end", end_args, &a, true);

  if (!v) {
    fprintf (stderr, "%s: %s the live backup '%s': %s\n", progname,
             success ? "completing" : "abandoning", checkpoint,
             ctl_error (l->c));
    return -1;
  }
  jv_free (v);
  return 0;
}

int
bk_live_end_stale (struct bk_live *l, struct bk_repo *r,
                   const char *export_name)
{
  struct jv *q = ctl_request (l->c, "query", NULL, NULL, false);
  const struct jv *views;
  size_t i, k;
  int ret = 0;

  if (!q)
    return -1;
  views = jv_arr (q, "views");
  for (i = 0; views && i < views->n; i++) {
    const struct jv *v = views->items[i];
    const char *name = jv_str (v, "checkpoint");
    const struct jv *fz = jv_get (v, "frozen");
    const struct jv *mine = fz ? jv_arr (fz, export_name) : NULL;
    struct stale *s;
    uint64_t seq;

    if (!name || bk_checkpoint_seq (r, name, &seq) == -1)
      continue;
    fprintf (stderr, "%s: ending the live backup '%s' that a killed run "
             "left on the server (state %s): its changes go to the next "
             "backup\n", progname, name,
             jv_str (v, "state") ? jv_str (v, "state") : "?");
    if (bk_live_end (l, name, false) == -1) {
      ret = -1;
      break;
    }
    l->stale = realloc (l->stale, (l->nstale + 1) * sizeof *l->stale);
    s = &l->stale[l->nstale++];
    s->checkpoint = xstrdup (name);
    s->nfrozen = 0;
    s->frozen = calloc (mine ? mine->n + 1 : 1, sizeof *s->frozen);
    for (k = 0; mine && k < mine->n; k++)
      if (mine->items[k]->t == JV_STR)
        s->frozen[s->nfrozen++] = xstrdup (mine->items[k]->s);
  }
  jv_free (q);
  return ret == -1 ? -1 : (int) l->nstale;
}

const char *
bk_live_stale_successor (struct bk_live *l, const char *bitmap)
{
  size_t i, k;

  for (i = 0; l && bitmap && i < l->nstale; i++)
    for (k = 0; k < l->stale[i].nfrozen; k++)
      if (strcmp (l->stale[i].frozen[k], bitmap) == 0)
        return l->stale[i].checkpoint;
  return NULL;
}

struct ckpt_args {
  const char *name, *export_name;
  const char *const *freeze;
  bool full;
};

static void
ckpt_args (struct json *j, void *opaque)
{
  struct ckpt_args *a = opaque;
  size_t i;

  json_string (j, "new", a->name);
  json_array_begin (j, "freeze");
  for (i = 0; a->freeze && a->freeze[i]; i++)
    json_string (j, NULL, a->freeze[i]);
  json_array_end (j);
  if (a->export_name[0]) {     /* "": the only export, the default */
    json_array_begin (j, "exports");
    json_string (j, NULL, a->export_name);
    json_array_end (j);
  }
  json_uint (j, "granularity", BK_CLUSTER);
  json_bool (j, "view", true);
  json_bool (j, "full", a->full);
}

static void
begin_args (struct json *j, void *opaque)
{
  json_string (j, "checkpoint", opaque);
}

/* From now on this backup is the view's one reader and reads every chunk
 * of it once: guest writes to what it has read need not save the old
 * data (docs/control.md, "read_once"). */
static void
begin_once_args (struct json *j, void *opaque)
{
  json_string (j, "checkpoint", opaque);
  json_bool (j, "read_once", true);
}

int
bk_live_checkpoint (struct bk_live *l, const char *name,
                    const char *export_name, const char *const *freeze,
                    bool full, bool *started, char **uri, uint64_t *size)
{
  struct ckpt_args a = { name, export_name, freeze, full };
  struct jv *v;
  const struct jv *ex;
  size_t i;

  *uri = NULL;
  v = ctl_request (l->c, "checkpoint", ckpt_args, &a, true);
  /* Refused: nothing changed.  No answer at all: it may have been taken
   * (the next run ends the view it finds). */
  *started = v || !ctl_errno (l->c)[0];
  if (!v) {
    fprintf (stderr, "%s: the server at '%s' could not take the checkpoint "
             "'%s': %s\n", progname, l->control, name, ctl_error (l->c));
    return -1;
  }
  jv_free (v);
  bk_step ("rotated");

  v = ctl_request (l->c, "backup-begin", begin_args, (void *) name, true);
  if (!v) {
    fprintf (stderr, "%s: the server at '%s' could not publish the "
             "point-in-time export of '%s': %s\n", progname, l->control,
             name, ctl_error (l->c));
    return -1;
  }
  ex = jv_arr (v, "exports");
  for (i = 0; ex && i < ex->n; i++)
    if (jv_str (ex->items[i], "export") &&
        strcmp (jv_str (ex->items[i], "export"), export_name) == 0) {
      if (jv_str (ex->items[i], "uri"))
        *uri = xstrdup (jv_str (ex->items[i], "uri"));
      *size = jv_uint (ex->items[i], "size");
      break;
    }
  jv_free (v);
  bk_step ("published");
  /* (After the step: a test's peers read the export while stopped.) */
  v = ctl_request (l->c, "backup-begin", begin_once_args, (void *) name,
                   true);
  if (!v) {
    fprintf (stderr, "%s: the server at '%s' could not make the "
             "point-in-time export of '%s' read-once: %s\n", progname,
             l->control, name, ctl_error (l->c));
    return -1;
  }
  jv_free (v);
  if (!*uri) {
    fprintf (stderr, "%s: the server at '%s' gave no NBD URI for the "
             "point-in-time export of '%s' (it listens only on sockets it "
             "inherited or on a wildcard address: serve it with --socket)\n",
             progname, l->control, export_name);
    return -1;
  }
  return 0;
}

int64_t
bk_live_cbw_bytes (struct bk_live *l, const char *checkpoint)
{
  struct jv *q = ctl_request (l->c, "query", NULL, NULL, true);
  const struct jv *views;
  int64_t r = -1;
  size_t i;

  if (!q)
    return -1;
  views = jv_arr (q, "views");
  for (i = 0; views && i < views->n; i++)
    if (jv_str (views->items[i], "checkpoint") &&
        strcmp (jv_str (views->items[i], "checkpoint"), checkpoint) == 0)
      r = (int64_t) jv_uint (views->items[i],
                             jv_get (views->items[i], "cbw_saved")
                             ? "cbw_saved" : "cbw_bytes");
  jv_free (q);
  return r;
}
