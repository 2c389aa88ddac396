/* rawtrack - NBD server: the control socket's commands (docs/control.md).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: query, checkpoint, backup-begin and backup-end; the list of
 * checkpoints taken through this server that have not ended (struct
 * ckpt), each with its views (view.c) and its point-in-time exports.
 *
 * Locking: control.c calls control_dispatch with its lock held, so one
 * request runs at a time and the checkpoint list needs no lock of its
 * own.  A checkpoint and the detaching of views take the gate of every
 * disk of the group exclusive, in the order of st->disks (no other
 * thread takes two gates).
 *
 * Ordering and crash rules:
 *  - checkpoint: gates of the whole group -> rawtrack_bitmap_rotate on
 *    each disk (one crash-atomic directory update each: a crash between
 *    two disks leaves some rotated, some not; both states lose nothing)
 *    -> the views read the frozen bits and are linked -> gates released.
 *    A failure rotates back the disks already done (NEW removed, the
 *    frozen ones enabled again if they were).
 *  - backup-end failure: merge each frozen bitmap into NEW, and only
 *    once that succeeded remove it: a crash in between leaves the bits
 *    twice, never nowhere.
 *  - The server keeps no state on disk: after a crash the frozen bitmaps
 *    (disabled) and NEW (enabled) are all that is left, and a client
 *    names them in its next checkpoint's freeze list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <stdarg.h>
#include <unistd.h>
#include <inttypes.h>

#include "server.h"
#include "json.h"

struct ckpt_disk {
  struct nbd_disk *disk;
  struct nbd_export *exp;          /* the served export of the disk */
  char **frozen;                   /* NULL-terminated */
  size_t nr_frozen;
  bool *was_enabled;               /* per frozen bitmap, for a rollback */
  struct view_disk *vd;            /* NULL without a view */
  bool published;
};

struct ckpt {
  struct ckpt *next;
  char *name;
  time_t created;
  bool view, full;
  size_t n;
  struct ckpt_disk *d;
};

struct control_state {
  struct nbd_server *srv;
  size_t nr_disks;
  struct nbd_disk **disks;
  struct nbd_export **exps;        /* the served export of each disk */
  struct fleece_config *fc;
  char *uri_prefix, *uri_suffix;
  struct ckpt *ckpts;
};

/* A failed request: an errno and a message. */
struct cerr {
  int err;
  char msg[1024];
};

static int
fail (struct cerr *e, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
static int
fail (struct cerr *e, int err, const char *fmt, ...)
{
  va_list ap;

  e->err = err;
  va_start (ap, fmt);
  vsnprintf (e->msg, sizeof e->msg, fmt, ap);
  va_end (ap);
  return -1;
}

static const char *
errno_name (int e)
{
  switch (e) {
  case EINVAL: return "EINVAL";
  case ENOENT: return "ENOENT";
  case EEXIST: return "EEXIST";
  case EBUSY: return "EBUSY";
  case ENOSPC: return "ENOSPC";
  case EROFS: return "EROFS";
  case ENOMEM: return "ENOMEM";
  case ERANGE: return "ERANGE";
  case ENOTSUP: return "ENOTSUP";
  case EPERM: return "EPERM";
  case EIO:
  default: return "EIO";
  }
}

/* ---- state ------------------------------------------------------------- */

struct control_state *
control_state_new (struct nbd_server *srv, struct nbd_disk **disks,
                   size_t nr_disks, struct fleece_config *fc,
                   const char *uri_prefix, const char *uri_suffix)
{
  struct control_state *st = calloc (1, sizeof *st);
  size_t i, k;

  if (!st)
    return NULL;
  st->srv = srv;
  st->nr_disks = nr_disks;
  st->disks = disks;
  st->fc = fc;
  st->exps = calloc (nr_disks ? nr_disks : 1, sizeof *st->exps);
  st->uri_prefix = uri_prefix ? strdup (uri_prefix) : NULL;
  st->uri_suffix = strdup (uri_suffix ? uri_suffix : "");
  if (!st->exps || !st->uri_suffix) {
    control_state_free (st);
    return NULL;
  }
  for (i = 0; i < nr_disks; i++)
    for (k = 0; k < srv->nr_exports; k++)
      if (srv->exports[k]->disk == disks[i])
        st->exps[i] = srv->exports[k];
  return st;
}

static void
gates_lock (struct ckpt *c)
{
  size_t i;

  for (i = 0; i < c->n; i++)
    pthread_rwlock_wrlock (&c->d[i].disk->gate);
}

static void
gates_unlock (struct ckpt *c)
{
  size_t i;

  for (i = c->n; i-- > 0; )
    pthread_rwlock_unlock (&c->d[i].disk->gate);
}

/* Withdraw the views of c: no more copy-before-write, no more reads.
 * Returns whether one of them had failed (reason into why). */
static bool
end_views (struct control_state *st, struct ckpt *c, char *why, size_t len)
{
  bool failed = false;
  size_t i;

  if (!c->view)
    return false;
  gates_lock (c);
  for (i = 0; i < c->n; i++)
    if (c->d[i].vd)
      view_disk_detach (c->d[i].vd);
  gates_unlock (c);
  for (i = 0; i < c->n; i++) {
    struct view_disk *vd = c->d[i].vd;
    char reason[256];
    uint64_t held;

    if (!vd)
      continue;
    if (c->d[i].published)
      export_remove (st->srv, view_disk_export (vd));
    if (view_disk_state (vd, &held, reason, sizeof reason) == VIEW_FAILED &&
        !failed) {
      failed = true;
      snprintf (why, len, "export '%s': %s", c->d[i].exp->name, reason);
    }
    view_disk_end (vd);
    view_disk_unref (vd);
    c->d[i].vd = NULL;
    c->d[i].published = false;
  }
  return failed;
}

static void
ckpt_free (struct ckpt *c)
{
  size_t i, k;

  if (!c)
    return;
  for (i = 0; i < c->n; i++) {
    for (k = 0; c->d[i].frozen && k < c->d[i].nr_frozen; k++)
      free (c->d[i].frozen[k]);
    free (c->d[i].frozen);
    free (c->d[i].was_enabled);
  }
  free (c->d);
  free (c->name);
  free (c);
}

void
control_state_free (struct control_state *st)
{
  if (!st)
    return;
  while (st->ckpts) {
    struct ckpt *c = st->ckpts;
    char why[300];

    st->ckpts = c->next;
    end_views (st, c, why, sizeof why);
    ckpt_free (c);
  }
  free (st->exps);
  free (st->uri_prefix);
  free (st->uri_suffix);
  free (st);
}

static struct ckpt *
find_ckpt (struct control_state *st, const char *name)
{
  struct ckpt *c;

  for (c = st->ckpts; c; c = c->next)
    if (strcmp (c->name, name) == 0)
      return c;
  return NULL;
}

static int
find_disk (struct control_state *st, const char *export)
{
  size_t i;

  for (i = 0; i < st->nr_disks; i++)
    if (st->exps[i] && strcmp (st->exps[i]->name, export) == 0)
      return (int) i;
  return -1;
}

/* ---- arguments --------------------------------------------------------- */

/* Every member of req must be one of allowed (NULL-terminated). */
static int
check_args (const struct jv *req, const char *cmd,
            const char *const *allowed, struct cerr *e)
{
  size_t i, k;

  for (i = 0; i < req->n; i++) {
    const char *key = req->keys[i];

    if (strcmp (key, "id") == 0 || strcmp (key, "command") == 0)
      continue;
    for (k = 0; allowed[k]; k++)
      if (strcmp (key, allowed[k]) == 0)
        break;
    if (!allowed[k])
      return fail (e, EINVAL, "%s: unknown argument '%s'", cmd, key);
  }
  return 0;
}

static int
get_string (const struct jv *req, const char *key, bool required,
            const char **out, struct cerr *e)
{
  const struct jv *v = jv_get (req, key);

  *out = NULL;
  if (!v) {
    if (required)
      return fail (e, EINVAL, "'%s' is required", key);
    return 0;
  }
  if (v->t != JV_STR || !v->s[0] || strlen (v->s) > 1023)
    return fail (e, EINVAL, "'%s' must be a string of 1 to 1023 bytes", key);
  *out = v->s;
  return 0;
}

static int
get_bool (const struct jv *req, const char *key, bool dflt, bool *out,
          struct cerr *e)
{
  const struct jv *v = jv_get (req, key);

  *out = dflt;
  if (!v)
    return 0;
  if (v->t != JV_BOOL)
    return fail (e, EINVAL, "'%s' must be true or false", key);
  *out = v->b;
  return 0;
}

/* An array of strings (each 1..1023 bytes). */
static int
check_names (const struct jv *v, const char *what, struct cerr *e)
{
  size_t i;

  if (v->t != JV_ARR)
    return fail (e, EINVAL, "'%s' must be an array of names", what);
  for (i = 0; i < v->n; i++)
    if (v->items[i]->t != JV_STR || !v->items[i]->s[0] ||
        strlen (v->items[i]->s) > 1023)
      return fail (e, EINVAL, "'%s': item %zu is not a name", what, i);
  return 0;
}

/* ---- JSON output ------------------------------------------------------- */

/* Any parsed value, as it came (the echoed id). */
static void
write_jv (struct json *j, const char *key, const struct jv *v)
{
  size_t i;

  switch (v->t) {
  case JV_NULL: json_null (j, key); break;
  case JV_BOOL: json_bool (j, key, v->b); break;
  case JV_STR: json_string (j, key, v->s); break;
  case JV_NUM:
    if (v->integer && v->neg)
      json_int (j, key, v->i);
    else if (v->integer)
      json_uint (j, key, v->u);
    else
      json_double (j, key, v->d);
    break;
  case JV_ARR:
    json_array_begin (j, key);
    for (i = 0; i < v->n; i++)
      write_jv (j, NULL, v->items[i]);
    json_array_end (j);
    break;
  case JV_OBJ:
    json_object_begin (j, key);
    for (i = 0; i < v->n; i++)
      write_jv (j, v->keys[i], v->items[i]);
    json_object_end (j);
    break;
  }
}

/* A response being written: a memory stream. */
struct out {
  FILE *fp;
  char *buf;
  size_t len;
  struct json *j;
};

static int
out_begin (struct out *o, const struct jv *id, bool ok)
{
  o->buf = NULL;
  o->fp = open_memstream (&o->buf, &o->len);
  if (!o->fp)
    return -1;
  o->j = json_new (o->fp, false);
  json_object_begin (o->j, NULL);
  if (id)
    write_jv (o->j, "id", id);
  else
    json_null (o->j, "id");
  json_bool (o->j, "ok", ok);
  return 0;
}

static char *
out_end (struct out *o)
{
  json_object_end (o->j);
  json_end (o->j);
  if (fclose (o->fp) != 0) {
    free (o->buf);
    return NULL;
  }
  return o->buf;
}

static void
out_discard (struct out *o)
{
  json_object_end (o->j);
  json_end (o->j);
  fclose (o->fp);
  free (o->buf);
}

static char *
error_response (const struct jv *id, const struct cerr *e)
{
  struct out o;

  if (out_begin (&o, id, false) == -1)
    return NULL;
  json_string (o.j, "error", e->msg);
  json_string (o.j, "errno", errno_name (e->err));
  return out_end (&o);
}

/* ---- query ------------------------------------------------------------- */

/* "exports" and "frozen" of a checkpoint, as query and checkpoint answer
 * them (docs/control.md). */
static void
json_ckpt_disks (struct json *j, const struct ckpt *c)
{
  size_t i, k;

  json_array_begin (j, "exports");
  for (i = 0; i < c->n; i++)
    json_string (j, NULL, c->d[i].exp->name);
  json_array_end (j);
  json_object_begin (j, "frozen");
  for (i = 0; i < c->n; i++) {
    json_array_begin (j, c->d[i].exp->name);
    for (k = 0; k < c->d[i].nr_frozen; k++)
      json_string (j, NULL, c->d[i].frozen[k]);
    json_array_end (j);
  }
  json_object_end (j);
}

static const char *
view_state_name (struct ckpt *c, uint64_t *held, char *reason, size_t len)
{
  const char *s = c->view ? "active" : "none";
  size_t i;

  *held = 0;
  reason[0] = '\0';
  for (i = 0; i < c->n && c->view; i++) {
    uint64_t h;
    char r[256];

    if (!c->d[i].vd)
      continue;
    if (view_disk_state (c->d[i].vd, &h, r, sizeof r) == VIEW_FAILED) {
      if (!reason[0])
        snprintf (reason, len, "export '%s': %s", c->d[i].exp->name, r);
      s = "failed";
    }
    else if (c->d[i].published && strcmp (s, "failed") != 0)
      s = "published";
    *held += h;
  }
  return s;
}

static int
cmd_query (struct control_state *st, const struct jv *req, struct json *j,
           struct cerr *e)
{
  static const char *const allowed[] = { NULL };
  struct ckpt *c;
  size_t i;

  if (check_args (req, "query", allowed, e) == -1)
    return -1;
  json_uint (j, "pid", (uint64_t) getpid ());
  json_string (j, "version", rawtrack_version ());
  json_array_begin (j, "exports");
  for (i = 0; i < st->nr_disks; i++) {
    struct nbd_export *x = st->exps[i];
    struct rawtrack_image *img = st->disks[i]->img;
    int n = rawtrack_image_bitmap_count (img), b;

    if (!x)
      continue;
    json_object_begin (j, NULL);
    json_string (j, "name", x->name);
    json_string (j, "image", st->disks[i]->path);
    json_uint (j, "dev", (uint64_t) st->disks[i]->dev);
    json_uint (j, "ino", (uint64_t) st->disks[i]->ino);
    json_uint (j, "size", x->size);
    json_bool (j, "read_only", x->readonly);
    json_array_begin (j, "bitmaps");
    for (b = 0; b < n; b++) {
      uint32_t fl = rawtrack_image_bitmap_flags (img, b);

      json_object_begin (j, NULL);
      json_string (j, "name", rawtrack_image_bitmap_name (img, b));
      json_bool (j, "enabled", (fl & RAWTRACK_BITMAP_AUTO) != 0);
      json_uint (j, "granularity", rawtrack_image_bitmap_granularity (img, b));
      json_bool (j, "in_use", (fl & RAWTRACK_BITMAP_IN_USE) != 0);
      json_object_end (j);
    }
    json_array_end (j);
    json_object_end (j);
  }
  json_array_end (j);
  json_array_begin (j, "views");
  for (c = st->ckpts; c; c = c->next) {
    char reason[300];
    uint64_t held;
    const char *s = view_state_name (c, &held, reason, sizeof reason);

    json_object_begin (j, NULL);
    json_string (j, "checkpoint", c->name);
    json_string (j, "state", s);
    if (reason[0])
      json_string (j, "reason", reason);
    json_ckpt_disks (j, c);
    json_bool (j, "full", c->full);
    json_uint (j, "cbw_bytes", held);
    {
      uint64_t total = 0;

      for (i = 0; i < c->n && c->view; i++)
        if (c->d[i].vd)
          total += view_disk_saved_total (c->d[i].vd);
      json_uint (j, "cbw_saved", total);
    }
    json_uint (j, "created", (uint64_t) c->created);
    json_array_begin (j, "published");
    for (i = 0; i < c->n; i++)
      if (c->d[i].published)
        json_string (j, NULL, view_disk_export (c->d[i].vd)->name);
    json_array_end (j);
    json_object_end (j);
  }
  json_array_end (j);
  json_uint (j, "cbw_bytes", __atomic_load_n (&st->fc->held,
                                              __ATOMIC_RELAXED));
  json_uint (j, "cbw_limit", st->fc->limit);
  json_string (j, "fleece", st->fc->memory ? "memory" : "file");
  return 0;
}

/* ---- checkpoint -------------------------------------------------------- */

/* Undo the rotation of the first n disks of c. */
static void
rotate_back (struct ckpt *c, size_t n)
{
  size_t i, k;

  for (i = 0; i < n; i++) {
    struct rawtrack_image *img = c->d[i].disk->img;

    if (rawtrack_bitmap_remove (img, c->name) == -1)
      nbd_error ("checkpoint %s: undoing it on %s: %s", c->name,
                 c->d[i].exp->name, rawtrack_get_error ());
    for (k = 0; k < c->d[i].nr_frozen; k++)
      if (c->d[i].was_enabled[k] &&
          rawtrack_bitmap_enable (img, c->d[i].frozen[k]) == -1)
        nbd_error ("checkpoint %s: enabling %s on %s again: %s", c->name,
                   c->d[i].frozen[k], c->d[i].exp->name,
                   rawtrack_get_error ());
  }
}

/* The freeze list of disk i: from an array (every disk) or an object
 * (per export name). */
static int
set_frozen (struct ckpt_disk *d, const struct jv *freeze, struct cerr *e)
{
  const struct jv *list = NULL;
  struct rawtrack_image *img = d->disk->img;
  size_t k, m;

  if (freeze && freeze->t == JV_ARR)
    list = freeze;
  else if (freeze)
    list = jv_get (freeze, d->exp->name);
  d->nr_frozen = list ? list->n : 0;
  d->frozen = calloc (d->nr_frozen + 1, sizeof (char *));
  d->was_enabled = calloc (d->nr_frozen + 1, sizeof (bool));
  if (!d->frozen || !d->was_enabled)
    return fail (e, ENOMEM, "out of memory");
  for (k = 0; k < d->nr_frozen; k++) {
    const char *name = list->items[k]->s;
    int b = rawtrack_bitmap_find (img, name);
    uint32_t fl;

    for (m = 0; m < k; m++)
      if (strcmp (d->frozen[m], name) == 0)
        return fail (e, EINVAL, "freeze: bitmap %s is named twice", name);
    if (b < 0)
      return fail (e, ENOENT, "freeze: export %s has no bitmap %s",
                   d->exp->name, name);
    fl = rawtrack_image_bitmap_flags (img, b);
    if (fl & RAWTRACK_BITMAP_IN_USE)
      return fail (e, EINVAL, "freeze: bitmap %s of export %s is "
                   "inconsistent (in use): it cannot be backed up",
                   name, d->exp->name);
    d->was_enabled[k] = (fl & RAWTRACK_BITMAP_AUTO) != 0;
    if (!(d->frozen[k] = strdup (name)))
      return fail (e, ENOMEM, "out of memory");
  }
  return 0;
}

static int
cmd_checkpoint (struct control_state *st, const struct jv *req,
                struct json *j, struct cerr *e)
{
  static const char *const allowed[] = { "new", "freeze", "exports",
                                         "granularity", "view", "full",
                                         NULL };
  const struct jv *exports = jv_get (req, "exports");
  const struct jv *freeze = jv_get (req, "freeze");
  const struct jv *gv = jv_get (req, "granularity");
  const char *name;
  uint64_t gran = 0;
  struct ckpt *c = NULL;
  bool any_frozen = false;
  struct timespec t0, t1;
  size_t i, k;
  char err[512];

  if (check_args (req, "checkpoint", allowed, e) == -1 ||
      get_string (req, "new", true, &name, e) == -1)
    return -1;
  if (find_ckpt (st, name))
    return fail (e, EEXIST, "checkpoint %s exists (end it with backup-end "
                 "first)", name);
  if (gv) {
    if (gv->t != JV_NUM || !gv->integer || gv->neg)
      return fail (e, EINVAL, "'granularity' must be a number of bytes");
    gran = gv->u;
  }
  if (exports && check_names (exports, "exports", e) == -1)
    return -1;
  if (freeze && freeze->t == JV_ARR) {
    if (check_names (freeze, "freeze", e) == -1)
      return -1;
  }
  else if (freeze && freeze->t == JV_OBJ) {
    for (i = 0; i < freeze->n; i++) {
      if (find_disk (st, freeze->keys[i]) < 0)
        return fail (e, ENOENT, "freeze: no export %s", freeze->keys[i]);
      if (check_names (freeze->items[i], "freeze", e) == -1)
        return -1;
    }
  }
  else if (freeze)
    return fail (e, EINVAL, "'freeze' must be an array of bitmap names or "
                 "an object {\"EXPORT\": [names]}");

  c = calloc (1, sizeof *c);
  if (!c || !(c->name = strdup (name)) ||
      !(c->d = calloc (st->nr_disks ? st->nr_disks : 1, sizeof *c->d))) {
    ckpt_free (c);
    return fail (e, ENOMEM, "out of memory");
  }
  c->created = time (NULL);
  /* The group, in the order of st->disks (the order gates are taken). */
  for (i = 0; i < st->nr_disks; i++) {
    bool in = false;

    if (!st->exps[i])
      continue;
    if (!exports)
      in = !st->exps[i]->readonly;
    else
      for (k = 0; k < exports->n; k++)
        in |= strcmp (exports->items[k]->s, st->exps[i]->name) == 0;
    if (!in)
      continue;
    if (st->exps[i]->readonly) {
      fail (e, EROFS, "export %s is read-only: there are no guest writes "
            "to checkpoint", st->exps[i]->name);
      goto err;
    }
    c->d[c->n].disk = st->disks[i];
    c->d[c->n].exp = st->exps[i];
    c->n++;
  }
  for (k = 0; exports && k < exports->n; k++)
    if (find_disk (st, exports->items[k]->s) < 0) {
      fail (e, ENOENT, "no export %s", exports->items[k]->s);
      goto err;
    }
  if (c->n == 0) {
    fail (e, EINVAL, "no writable export to checkpoint");
    goto err;
  }
  for (i = 0; i < c->n; i++) {
    if (rawtrack_bitmap_find (c->d[i].disk->img, name) >= 0) {
      fail (e, EEXIST, "export %s already has a bitmap %s", c->d[i].exp->name,
            name);
      goto err;
    }
    if (set_frozen (&c->d[i], freeze, e) == -1)
      goto err;
    any_frozen |= c->d[i].nr_frozen > 0;
  }
  if (get_bool (req, "view", true, &c->view, e) == -1 ||
      get_bool (req, "full", !any_frozen, &c->full, e) == -1)
    goto err;

  /* The instant: no guest write in flight on any disk of the group. */
  clock_gettime (CLOCK_MONOTONIC, &t0);
  gates_lock (c);
  for (i = 0; i < c->n; i++)
    if (rawtrack_bitmap_rotate (c->d[i].disk->img, name, gran,
                                (const char *const *) c->d[i].frozen) == -1) {
      fail (e, rawtrack_get_errno () ? rawtrack_get_errno () : EIO,
            "export %s: %s", c->d[i].exp->name, rawtrack_get_error ());
      rotate_back (c, i);
      gates_unlock (c);
      goto err;
    }
  for (i = 0; c->view && i < c->n; i++) {
    /* A disk of the group with nothing frozen is backed up in full. */
    c->d[i].vd = view_disk_new (c->d[i].disk, st->fc, name,
                                c->d[i].exp->name, c->d[i].frozen,
                                c->d[i].nr_frozen,
                                c->full || c->d[i].nr_frozen == 0,
                                err, sizeof err);
    if (!c->d[i].vd) {
      fail (e, EIO, "export %s: %s", c->d[i].exp->name, err);
      for (k = 0; k < i; k++) {
        view_disk_unref (c->d[k].vd);
        c->d[k].vd = NULL;
      }
      rotate_back (c, c->n);
      gates_unlock (c);
      goto err;
    }
  }
  for (i = 0; c->view && i < c->n; i++)
    view_disk_attach (c->d[i].vd);
  gates_unlock (c);
  clock_gettime (CLOCK_MONOTONIC, &t1);

  c->next = st->ckpts;
  st->ckpts = c;
  json_string (j, "checkpoint", name);
  json_ckpt_disks (j, c);
  json_bool (j, "view", c->view);
  json_bool (j, "full", c->full);
  /* How long guest writes waited (from asking for the gates). */
  json_double (j, "hold_ms", (double) (t1.tv_sec - t0.tv_sec) * 1e3 +
               (double) (t1.tv_nsec - t0.tv_nsec) / 1e6);
  return 0;

 err:
  ckpt_free (c);
  return -1;
}

/* ---- backup-begin ------------------------------------------------------ */

/* name as a URI path segment: unreserved characters and '@' as they are,
 * the rest percent-encoded. */
static void
uri_escape (FILE *fp, const char *s)
{
  for (; *s; s++) {
    unsigned char ch = (unsigned char) *s;

    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr ("-._~@", ch))
      fputc (ch, fp);
    else
      fprintf (fp, "%%%02X", ch);
  }
}

static int
cmd_backup_begin (struct control_state *st, const struct jv *req,
                  struct json *j, struct cerr *e)
{
  static const char *const allowed[] = { "checkpoint", "read_once", NULL };
  const char *name;
  struct ckpt *c;
  bool read_once;
  size_t i, k;

  if (check_args (req, "backup-begin", allowed, e) == -1 ||
      get_string (req, "checkpoint", true, &name, e) == -1 ||
      get_bool (req, "read_once", false, &read_once, e) == -1)
    return -1;
  c = find_ckpt (st, name);
  if (!c)
    return fail (e, ENOENT, "no checkpoint %s on this server", name);
  if (!c->view)
    return fail (e, EINVAL, "checkpoint %s was taken without a view "
                 "(\"view\": false): there is nothing to publish", name);
  for (i = 0; i < c->n; i++) {
    char reason[256];
    uint64_t held;

    if (view_disk_state (c->d[i].vd, &held, reason, sizeof reason) !=
        VIEW_ACTIVE)
      return fail (e, EIO, "the view of export %s at %s failed: %s "
                   "(end it with backup-end; its bitmaps merge back)",
                   c->d[i].exp->name, name, reason);
  }
  for (i = 0; i < c->n; i++) {
    if (read_once)
      view_disk_set_read_once (c->d[i].vd);
    if (c->d[i].published)
      continue;
    if (export_add (st->srv, view_disk_export (c->d[i].vd)) == -1)
      return fail (e, errno, "publishing %s: %s",
                   view_disk_export (c->d[i].vd)->name, strerror (errno));
    c->d[i].published = true;
  }
  json_string (j, "checkpoint", name);
  json_array_begin (j, "exports");
  for (i = 0; i < c->n; i++) {
    struct nbd_export *x = view_disk_export (c->d[i].vd);

    json_object_begin (j, NULL);
    json_string (j, "name", x->name);
    json_string (j, "export", c->d[i].exp->name);
    if (st->uri_prefix) {
      char *uri = NULL;
      size_t len;
      FILE *fp = open_memstream (&uri, &len);

      if (fp) {
        fputs (st->uri_prefix, fp);
        uri_escape (fp, x->name);
        fputs (st->uri_suffix, fp);
        if (fclose (fp) == 0)
          json_string (j, "uri", uri);
      }
      free (uri);
    }
    json_uint (j, "size", x->size);
    json_array_begin (j, "bitmaps");
    for (k = 0; k < c->d[i].nr_frozen; k++)
      json_string (j, NULL, c->d[i].frozen[k]);
    json_array_end (j);
    json_bool (j, "full", c->full || c->d[i].nr_frozen == 0);
    json_object_end (j);
  }
  json_array_end (j);
  return 0;
}

/* ---- backup-end -------------------------------------------------------- */

static int
cmd_backup_end (struct control_state *st, const struct jv *req,
                struct json *j, struct cerr *e, bool *failed_view)
{
  static const char *const allowed[] = { "checkpoint", "result", NULL };
  const char *name, *result;
  struct ckpt *c, **pp;
  bool success, problems = false;
  char why[300] = "", first[600] = "";
  size_t i, k;

  if (check_args (req, "backup-end", allowed, e) == -1 ||
      get_string (req, "checkpoint", true, &name, e) == -1 ||
      get_string (req, "result", true, &result, e) == -1)
    return -1;
  if (strcmp (result, "success") == 0)
    success = true;
  else if (strcmp (result, "failure") == 0)
    success = false;
  else
    return fail (e, EINVAL, "'result' must be \"success\" or \"failure\"");
  c = find_ckpt (st, name);
  if (!c)
    return fail (e, ENOENT, "no checkpoint %s on this server (after a "
                 "restart of the server, name its frozen bitmaps in the "
                 "next checkpoint's freeze list)", name);
  for (pp = &st->ckpts; *pp != c; pp = &(*pp)->next)
    ;
  *pp = c->next;

  if (end_views (st, c, why, sizeof why) && success) {
    success = false;
    *failed_view = true;
  }
  /* The bitmaps: dropped on success, merged into NEW on failure. */
  json_string (j, "checkpoint", name);
  json_string (j, "result", success ? "success" : "failure");
  json_object_begin (j, success ? "removed" : "merged");
  for (i = 0; i < c->n; i++) {
    struct rawtrack_image *img = c->d[i].disk->img;

    json_array_begin (j, c->d[i].exp->name);
    for (k = 0; k < c->d[i].nr_frozen; k++) {
      const char *b = c->d[i].frozen[k];

      if (!success && rawtrack_bitmap_merge (img, b, name, NULL) == -1) {
        if (!problems)
          snprintf (first, sizeof first, "merging %s into %s on %s: %s "
                    "(%s is kept)", b, name, c->d[i].exp->name,
                    rawtrack_get_error (), b);
        problems = true;
        continue;
      }
      if (rawtrack_bitmap_remove (img, b) == -1) {
        if (!problems)
          snprintf (first, sizeof first, "removing %s from %s: %s", b,
                    c->d[i].exp->name, rawtrack_get_error ());
        problems = true;
        continue;
      }
      json_string (j, NULL, b);
    }
    json_array_end (j);
  }
  json_object_end (j);
  ckpt_free (c);
  if (problems)
    return fail (e, EIO, "checkpoint %s ended, but %s", name, first);
  if (*failed_view)
    return fail (e, EIO, "view %s failed: %s; its frozen bitmaps were "
                 "merged into %s", name, why, name);
  return 0;
}

/* ---- dispatch ---------------------------------------------------------- */

char *
control_dispatch (struct control_state *st, const char *line, size_t len)
{
  const struct jv *id = NULL, *cmdv;
  struct jv *req;
  struct cerr e = { 0, "" };
  char perr[256];
  struct out o;
  size_t i;
  int r;
  bool failed_view = false;

  for (i = 0; i < len && strchr (" \t\r", line[i]); i++)
    ;
  if (i == len)
    return NULL;                   /* a blank line */
  req = jv_parse (line, len, perr, sizeof perr);
  if (!req) {
    fail (&e, EINVAL, "invalid JSON: %s", perr);
    return error_response (NULL, &e);
  }
  if (req->t != JV_OBJ) {
    fail (&e, EINVAL, "a request is a JSON object");
    goto error;
  }
  id = jv_get (req, "id");
  cmdv = jv_get (req, "command");
  if (!cmdv || cmdv->t != JV_STR) {
    fail (&e, EINVAL, "'command' (a string) is required");
    goto error;
  }
  if (out_begin (&o, id, true) == -1) {
    fail (&e, ENOMEM, "out of memory");
    goto error;
  }
  if (strcmp (cmdv->s, "query") == 0)
    r = cmd_query (st, req, o.j, &e);
  else if (strcmp (cmdv->s, "checkpoint") == 0)
    r = cmd_checkpoint (st, req, o.j, &e);
  else if (strcmp (cmdv->s, "backup-begin") == 0)
    r = cmd_backup_begin (st, req, o.j, &e);
  else if (strcmp (cmdv->s, "backup-end") == 0) {
    r = cmd_backup_end (st, req, o.j, &e, &failed_view);
  }
  else
    r = fail (&e, EINVAL, "unknown command '%.64s' (commands: query, "
              "checkpoint, backup-begin, backup-end)", cmdv->s);
  if (r == 0) {
    char *resp = out_end (&o);

    jv_free (req);
    return resp;
  }
  out_discard (&o);
  if (failed_view) {
    /* The view failed: still a failure response, with the result. */
    char *resp;

    if (out_begin (&o, id, false) == -1)
      goto error;
    json_string (o.j, "error", e.msg);
    json_string (o.j, "errno", errno_name (e.err));
    json_string (o.j, "result", "failure");
    resp = out_end (&o);
    jv_free (req);
    return resp;
  }

 error:
  {
    char *resp = error_response (id, &e);

    jv_free (req);
    return resp;
  }
}
