/* rawtrack - the backup repository: manifests, names, commit, recovery.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the layout of REPO and every rule about what in it is a backup.
 *
 *   REPO/rawtrack-backup.json   {"format": "rawtrack-backup-repo",
 *                                "version": 1, "uuid": "<16 hex>"}
 *   REPO/<id>.qcow2             a backup (qcow2 v3, backing = parent's file)
 *   REPO/<id>.json              its manifest: THE commit point
 *   REPO/NAME.partial           unfinished files: never backups
 *   REPO/prune.journal          an interrupted prune to finish
 *   REPO/.lock                  flock(2)ed by the one writer
 *
 * <id> is "<seq, 6+ digits>-<UTC time YYYYMMDDTHHMMSSZ>"; seq grows by one
 * per attempted run (failed runs leave gaps), so ids sort by age.
 *
 * On-disk invariants:
 *   1. A backup exists iff its manifest <id>.json exists; the manifest is
 *      written last (after the qcow2 file is synced and renamed into
 *      place) and itself as <id>.json.partial, synced, renamed, directory
 *      synced.  So a crash leaves either no backup or a complete one.
 *   2. A .qcow2 without a manifest is the leftover of an interrupted run
 *      and is removed by the next writer (recovery), as are *.partial.
 *   3. The checkpoint bitmaps an image source holds for this repository
 *      are named "rawtrack-backup-<uuid>-<seq>" (bk_checkpoint_name), so
 *      several repositories can back up one disk without confusion.
 *
 * Checksums: XXH3-128 (libxxhash).  A cluster's hash is XXH3-128 of its
 * guest bytes (up to the end of the disk); an extent's hash is XXH3-128
 * of its clusters' hashes in order; the backup's checksum is XXH3-128 of
 * (offset, length: 8 bytes big-endian each, hash) of every extent in
 * order.  They are over guest data, so they do not depend on how the
 * file stores it (compressed or not, after a prune, ...).
 *
 * Locking: the repository lock (flock on REPO/.lock) serialises writers
 * (create, prune); readers take none and rely on invariant 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/random.h>

#include <xxhash.h>

#include "backup.h"
#include "rawtrack/rawtrack-bitmap.h"

#define REPO_FILE "rawtrack-backup.json"

char *
bk_path (struct bk_repo *r, const char *name)
{
  char *p;

  if (asprintf (&p, "%s/%s", r->dir, name) < 0) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  return p;
}

void
bk_hex (const uint8_t *h, char *out)
{
  int i;

  for (i = 0; i < BK_HASH_LEN; i++)
    sprintf (out + 2 * i, "%02x", h[i]);
}

static int
unhex (const char *s, uint8_t *h)
{
  int i;

  if (!s || strlen (s) != 2 * BK_HASH_LEN)
    return -1;
  for (i = 0; i < BK_HASH_LEN; i++) {
    unsigned v;

    if (sscanf (s + 2 * i, "%2x", &v) != 1)
      return -1;
    h[i] = (uint8_t) v;
  }
  return 0;
}

void
bk_hash (const void *p, size_t n, uint8_t *out)
{
  XXH128_hash_t h = XXH3_128bits (p, n);
  XXH128_canonical_t c;

  XXH128_canonicalFromHash (&c, h);
  memcpy (out, c.digest, BK_HASH_LEN);
}

void
bk_checksum (const struct bk_manifest *m, uint8_t *out)
{
  XXH3_state_t *st = XXH3_createState ();
  XXH128_canonical_t c;
  size_t i;

  XXH3_128bits_reset (st);
  for (i = 0; i < m->n_ext; i++) {
    uint8_t b[16];
    int k;

    for (k = 0; k < 8; k++) {
      b[k] = (uint8_t) (m->ext[i].off >> (56 - 8 * k));
      b[8 + k] = (uint8_t) (m->ext[i].len >> (56 - 8 * k));
    }
    XXH3_128bits_update (st, b, 16);
    XXH3_128bits_update (st, m->ext[i].hash, BK_HASH_LEN);
  }
  XXH128_canonicalFromHash (&c, XXH3_128bits_digest (st));
  memcpy (out, c.digest, BK_HASH_LEN);
  XXH3_freeState (st);
}

static int
cmp_range (const void *a, const void *b)
{
  const struct bk_range *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

void
bk_ranges_sort (struct bk_range *v, size_t n)
{
  if (n)
    qsort (v, n, sizeof *v, cmp_range);
}

struct range_sink {
  struct bk_range **v;
  size_t *n;
};

static int
collect_dirty (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct range_sink *k = opaque;

  if (dirty)
    bk_ranges_add (k->v, k->n, start, length);
  return 0;
}

int
bk_checkpoint_changes (struct bk_repo *r, const struct bk_manifest *L,
                       struct rawtrack_image *img, uint64_t size,
                       struct bk_range **v, size_t *n, bool *have_l)
{
  struct range_sink k = { v, n };
  int nb = rawtrack_image_bitmap_count (img), bi;

  for (bi = 0; bi < nb; bi++) {
    const char *name = rawtrack_image_bitmap_name (img, bi);
    uint64_t seq;

    if (bk_checkpoint_seq (r, name, &seq) == -1 || seq < L->seq)
      continue;
    if (have_l && L->checkpoint && strcmp (L->checkpoint, name) == 0)
      *have_l = true;
    if (rawtrack_bitmap_extents (img, name, 0, size, collect_dirty, &k)
        == -1) {
      fail_lib ("reading the checkpoint '%s'", name);
      return -1;
    }
  }
  return 0;
}

void
bk_ranges_add (struct bk_range **v, size_t *n, uint64_t off, uint64_t len)
{
  if (len == 0)
    return;
  if (*n && (*v)[*n - 1].off + (*v)[*n - 1].len == off) {
    (*v)[*n - 1].len += len;
    return;
  }
  if ((*n & (*n - 1)) == 0 || *n == 0) {
    size_t cap = *n ? *n * 2 : 16;

    *v = realloc (*v, cap * sizeof **v);
    if (!*v) {
      fprintf (stderr, "%s: out of memory\n", progname);
      exit (1);
    }
  }
  (*v)[*n].off = off;
  (*v)[*n].len = len;
  (*n)++;
}

/* ---- test hooks ---------------------------------------------------------- */

void
bk_step (const char *name)
{
  const char *k = getenv ("RAWTRACK_BACKUP_KILL_AT");
  const char *st = getenv ("RAWTRACK_BACKUP_STOP_AT");

  if (k && strcmp (k, name) == 0) {
    fflush (NULL);
    kill (getpid (), SIGKILL);
  }
  if (st && strcmp (st, name) == 0) {
    fflush (NULL);
    kill (getpid (), SIGSTOP);         /* the test continues us */
  }
}

int
bk_step_fail (const char *name)
{
  const char *f = getenv ("RAWTRACK_BACKUP_FAIL_AT");

  bk_step (name);
  if (f && strcmp (f, name) == 0) {
    fprintf (stderr, "%s: injected I/O failure at step %s\n", progname, name);
    errno = EIO;
    return -1;
  }
  return 0;
}

/* ---- manifests ------------------------------------------------------------ */

void
bk_manifest_free (struct bk_manifest *m)
{
  if (!m)
    return;
  free (m->id);
  free (m->file);
  free (m->parent);
  free (m->time);
  free (m->source_kind);
  free (m->source);
  free (m->checkpoint);
  free (m->repo);
  free (m->compression);
  free (m->ext);
  free (m->zero);
  free (m->folded);
  free (m);
}

int
bk_manifest_write (const struct bk_manifest *m, const char *path)
{
  FILE *fp = fopen (path, "wx");
  struct json *j;
  char hex[2 * BK_HASH_LEN + 1];
  size_t i;
  int r = 0;

  if (!fp) {
    fprintf (stderr, "%s: cannot create '%s': %m\n", progname, path);
    return -1;
  }
  j = json_new (fp, true);
  json_object_begin (j, NULL);
  json_string (j, "format", "rawtrack-backup-manifest");
  json_uint (j, "version", 1);
  json_string (j, "id", m->id);
  json_uint (j, "seq", m->seq);
  json_string (j, "file", m->file);
  if (m->parent)
    json_string (j, "parent", m->parent);
  else
    json_null (j, "parent");
  json_string (j, "type", m->parent ? "incremental" : "full");
  json_string (j, "time", m->time);
  json_int (j, "unix-time", m->unix_time);
  json_uint (j, "virtual-size", m->vsize);
  json_uint (j, "cluster-size", m->cluster_size);
  json_object_begin (j, "source");
  json_string (j, "kind", m->source_kind);
  json_string (j, "identity", m->source);
  json_object_end (j);
  if (m->checkpoint)
    json_string (j, "checkpoint", m->checkpoint);
  else
    json_null (j, "checkpoint");
  json_string (j, "repository", m->repo);
  json_string (j, "compression", m->compression ? m->compression : "none");
  if (m->folded)
    json_string (j, "folded", m->folded);
  json_uint (j, "data-bytes", m->data_bytes);
  json_uint (j, "zero-bytes", m->zero_bytes);
  json_uint (j, "file-bytes", m->file_bytes);
  json_uint (j, "read-bytes", m->read_bytes);
  json_double (j, "seconds", m->seconds);
  json_string (j, "hash", "xxh3-128");
  bk_hex (m->checksum, hex);
  json_string (j, "checksum", hex);
  json_array_begin (j, "extents");
  for (i = 0; i < m->n_ext; i++) {
    json_object_begin (j, NULL);
    json_uint (j, "offset", m->ext[i].off);
    json_uint (j, "length", m->ext[i].len);
    bk_hex (m->ext[i].hash, hex);
    json_string (j, "hash", hex);
    json_object_end (j);
  }
  json_array_end (j);
  json_array_begin (j, "zero");
  for (i = 0; i < m->n_zero; i++) {
    json_array_begin (j, NULL);
    json_uint (j, NULL, m->zero[i].off);
    json_uint (j, NULL, m->zero[i].len);
    json_array_end (j);
  }
  json_array_end (j);
  json_object_end (j);
  json_end (j);
  if (fflush (fp) != 0 || fsync (fileno (fp)) != 0 || ferror (fp) ||
      bk_step_fail ("manifest-sync") == -1) {
    fprintf (stderr, "%s: writing '%s': %m\n", progname, path);
    r = -1;
  }
  if (fclose (fp) != 0 && r == 0) {
    fprintf (stderr, "%s: writing '%s': %m\n", progname, path);
    r = -1;
  }
  return r;
}

static char *
dupstr (const struct jv *v)
{
  char *s;

  if (!v || v->t != JV_STR)
    return NULL;
  s = strdup (v->s);
  if (!s) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  return s;
}

static bool
get_u64 (const struct jv *o, const char *key, uint64_t *out)
{
  const struct jv *v = jv_get (o, key);

  if (!v || v->t != JV_NUM || !v->integer || v->neg)
    return false;
  *out = v->u;
  return true;
}

struct bk_manifest *
bk_manifest_load (const char *path, char *err, size_t errlen)
{
  struct bk_manifest *m = NULL;
  struct jv *root = NULL;
  const struct jv *v, *src;
  char *text = NULL, jerr[200];
  size_t len = 0, i;
  FILE *fp = fopen (path, "r");
  uint64_t u;

  if (!fp) {
    snprintf (err, errlen, "cannot open: %m");
    return NULL;
  }
  {
    size_t cap = 65536, got;

    text = malloc (cap);
    while (text && (got = fread (text + len, 1, cap - len, fp)) > 0) {
      len += got;
      if (len == cap)
        text = realloc (text, cap *= 2);
    }
  }
  fclose (fp);
  if (!text) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  root = jv_parse (text, len, jerr, sizeof jerr);
  free (text);
  if (!root) {
    snprintf (err, errlen, "not valid JSON: %s", jerr);
    return NULL;
  }
  m = calloc (1, sizeof *m);
  v = jv_get (root, "format");
  if (!v || v->t != JV_STR || strcmp (v->s, "rawtrack-backup-manifest")) {
    snprintf (err, errlen, "not a rawtrack backup manifest (no \"format\": "
              "\"rawtrack-backup-manifest\")");
    goto bad;
  }
  if (!get_u64 (root, "version", &u) || u != 1) {
    snprintf (err, errlen, "unsupported manifest version");
    goto bad;
  }
  m->id = dupstr (jv_get (root, "id"));
  m->file = dupstr (jv_get (root, "file"));
  m->parent = dupstr (jv_get (root, "parent"));
  m->time = dupstr (jv_get (root, "time"));
  m->checkpoint = dupstr (jv_get (root, "checkpoint"));
  m->repo = dupstr (jv_get (root, "repository"));
  m->compression = dupstr (jv_get (root, "compression"));
  m->folded = dupstr (jv_get (root, "folded"));
  src = jv_get (root, "source");
  m->source_kind = dupstr (jv_get (src, "kind"));
  m->source = dupstr (jv_get (src, "identity"));
  if (!m->id || !m->file || !m->time || !m->repo || !m->source_kind ||
      !m->source || !get_u64 (root, "seq", &m->seq) ||
      !get_u64 (root, "virtual-size", &m->vsize) ||
      !get_u64 (root, "cluster-size", &u) ||
      !get_u64 (root, "data-bytes", &m->data_bytes) ||
      !get_u64 (root, "zero-bytes", &m->zero_bytes)) {
    snprintf (err, errlen, "a required field is missing or has the wrong "
              "type (id, file, time, repository, source, seq, "
              "virtual-size, cluster-size, data-bytes, zero-bytes)");
    goto bad;
  }
  m->cluster_size = (uint32_t) u;
  if (u != BK_CLUSTER || strchr (m->file, '/') || strchr (m->id, '/') ||
      (m->parent && strchr (m->parent, '/'))) {
    snprintf (err, errlen, "bad cluster size or a file name with '/'");
    goto bad;
  }
  get_u64 (root, "file-bytes", &m->file_bytes);
  get_u64 (root, "read-bytes", &m->read_bytes);
  v = jv_get (root, "unix-time");
  if (v && v->t == JV_NUM)
    m->unix_time = v->i;
  v = jv_get (root, "seconds");
  if (v && v->t == JV_NUM)
    m->seconds = v->d;
  v = jv_get (root, "checksum");
  if (!v || v->t != JV_STR || unhex (v->s, m->checksum) == -1) {
    snprintf (err, errlen, "bad or missing \"checksum\"");
    goto bad;
  }
  v = jv_get (root, "extents");
  if (!v || v->t != JV_ARR) {
    snprintf (err, errlen, "missing \"extents\"");
    goto bad;
  }
  m->ext = calloc (v->n + 1, sizeof *m->ext);
  m->n_ext = v->n;
  for (i = 0; i < v->n; i++) {
    const struct jv *e = v->items[i];
    const struct jv *h = jv_get (e, "hash");

    if (!get_u64 (e, "offset", &m->ext[i].off) ||
        !get_u64 (e, "length", &m->ext[i].len) ||
        !h || h->t != JV_STR || unhex (h->s, m->ext[i].hash) == -1 ||
        m->ext[i].len == 0 || m->ext[i].off % BK_CLUSTER ||
        m->ext[i].off >= m->vsize || m->ext[i].len > m->vsize - m->ext[i].off ||
        (i && m->ext[i].off < m->ext[i - 1].off + m->ext[i - 1].len)) {
      snprintf (err, errlen, "extent %zu is malformed or out of order", i);
      goto bad;
    }
  }
  v = jv_get (root, "zero");
  if (v && v->t == JV_ARR) {
    m->zero = calloc (v->n + 1, sizeof *m->zero);
    m->n_zero = v->n;
    for (i = 0; i < v->n; i++) {
      const struct jv *e = v->items[i];

      if (e->t != JV_ARR || e->n != 2 || e->items[0]->t != JV_NUM ||
          e->items[1]->t != JV_NUM) {
        snprintf (err, errlen, "zero range %zu is malformed", i);
        goto bad;
      }
      m->zero[i].off = e->items[0]->u;
      m->zero[i].len = e->items[1]->u;
    }
  }
  jv_free (root);
  return m;

 bad:
  jv_free (root);
  bk_manifest_free (m);
  return NULL;
}

int
bk_fsync_dir (struct bk_repo *r)
{
  if (fsync (r->dirfd) == -1 || bk_step_fail ("dir-sync") == -1) {
    fprintf (stderr, "%s: syncing the directory '%s': %m\n", progname,
             r->dir);
    return -1;
  }
  return 0;
}

int
bk_manifest_commit (struct bk_repo *r, const struct bk_manifest *m,
                    const char *name)
{
  char *final = bk_path (r, name), *part;
  int ret = -1;

  if (asprintf (&part, "%s.partial", final) < 0)
    exit (1);
  unlink (part);
  if (bk_manifest_write (m, part) == -1) {
    unlink (part);
    goto out;
  }
  bk_step ("manifest-rename");
  if (rename (part, final) == -1) {
    fprintf (stderr, "%s: renaming '%s': %m\n", progname, part);
    goto out;
  }
  ret = bk_fsync_dir (r);
 out:
  free (part);
  free (final);
  return ret;
}

/* ---- names ---------------------------------------------------------------- */

char *
bk_checkpoint_name (struct bk_repo *r, uint64_t seq)
{
  char *s;

  if (asprintf (&s, "rawtrack-backup-%s-%06" PRIu64, r->uuid, seq) < 0)
    exit (1);
  return s;
}

int
bk_checkpoint_seq (struct bk_repo *r, const char *name, uint64_t *seq)
{
  char prefix[64];
  size_t l;
  char *e;

  snprintf (prefix, sizeof prefix, "rawtrack-backup-%s-", r->uuid);
  l = strlen (prefix);
  if (strncmp (name, prefix, l) != 0 || !name[l])
    return -1;
  errno = 0;
  *seq = strtoull (name + l, &e, 10);
  return *e || errno ? -1 : 0;
}

/* ---- the repository --------------------------------------------------------- */

static int
cmp_seq (const void *a, const void *b)
{
  const struct bk_manifest *x = *(struct bk_manifest *const *) a;
  const struct bk_manifest *y = *(struct bk_manifest *const *) b;

  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int
ends_with (const char *s, const char *suffix)
{
  size_t a = strlen (s), b = strlen (suffix);

  return a >= b && strcmp (s + a - b, suffix) == 0;
}

int bk_prune_recover (struct bk_repo *r);   /* backup-verify.c */

/* Remove what an interrupted create left: *.partial, and .qcow2 files
 * that no manifest names. */
static int
recover (struct bk_repo *r)
{
  DIR *d;
  struct dirent *de;
  int changed = 0;

  if (bk_prune_recover (r) == -1)
    return -1;
  d = opendir (r->dir);
  if (!d)
    return -1;
  while ((de = readdir (d))) {
    bool drop = ends_with (de->d_name, ".partial");

    if (!drop && ends_with (de->d_name, ".qcow2")) {
      size_t i;

      drop = true;
      for (i = 0; i < r->n; i++)
        if (strcmp (r->b[i]->file, de->d_name) == 0)
          drop = false;
    }
    if (drop) {
      fprintf (stderr, "%s: removing '%s', left by an interrupted run\n",
               progname, de->d_name);
      if (unlinkat (r->dirfd, de->d_name, 0) == -1) {
        fprintf (stderr, "%s: cannot remove '%s/%s': %m\n", progname, r->dir,
                 de->d_name);
        closedir (d);
        return -1;
      }
      changed = 1;
    }
  }
  closedir (d);
  return changed ? bk_fsync_dir (r) : 0;
}

static int
load_backups (struct bk_repo *r)
{
  DIR *d = opendir (r->dir);
  struct dirent *de;

  if (!d) {
    fprintf (stderr, "%s: cannot read the directory '%s': %m\n", progname,
             r->dir);
    return -1;
  }
  while ((de = readdir (d))) {
    char err[256], *p;
    struct bk_manifest *m;

    if (!ends_with (de->d_name, ".json") || strcmp (de->d_name, REPO_FILE) == 0)
      continue;
    p = bk_path (r, de->d_name);
    m = bk_manifest_load (p, err, sizeof err);
    if (!m) {
      fprintf (stderr, "%s: manifest '%s': %s\n", progname, p, err);
      free (p);
      closedir (d);
      return -1;
    }
    free (p);
    if (strcmp (m->repo, r->uuid) != 0) {
      fprintf (stderr, "%s: manifest '%s/%s' belongs to another repository "
               "(%s, this is %s)\n", progname, r->dir, de->d_name, m->repo,
               r->uuid);
      bk_manifest_free (m);
      closedir (d);
      return -1;
    }
    r->b = realloc (r->b, (r->n + 1) * sizeof *r->b);
    r->b[r->n++] = m;
  }
  closedir (d);
  if (r->n)
    qsort (r->b, r->n, sizeof *r->b, cmp_seq);
  return 0;
}

struct bk_repo *
bk_repo_open (const char *dir, bool create, bool lock)
{
  struct bk_repo *r = calloc (1, sizeof *r);
  char *rf, err[200], *text = NULL;
  struct jv *root = NULL;
  struct stat st;

  r->dir = strdup (dir);
  r->dirfd = -1;
  if (stat (dir, &st) == -1) {
    if (errno != ENOENT || !create) {
      fprintf (stderr, "%s: repository '%s': %m\n", progname, dir);
      goto err;
    }
    if (mkdir (dir, 0755) == -1) {
      fprintf (stderr, "%s: cannot create the repository directory '%s': "
               "%m\n", progname, dir);
      goto err;
    }
  }
  else if (!S_ISDIR (st.st_mode)) {
    fprintf (stderr, "%s: repository '%s' is not a directory\n", progname,
             dir);
    goto err;
  }
  r->dirfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (r->dirfd == -1) {
    fprintf (stderr, "%s: cannot open '%s': %m\n", progname, dir);
    goto err;
  }
  if (lock) {
    int fd = openat (r->dirfd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);

    if (fd == -1 || flock (fd, LOCK_EX | LOCK_NB) == -1) {
      fprintf (stderr, "%s: repository '%s' is in use by another rawtrack "
               "backup run (%m)\n", progname, dir);
      goto err;
    }
    /* Held until exit (the fd is never closed). */
  }
  rf = bk_path (r, REPO_FILE);
  {
    FILE *fp = fopen (rf, "r");

    if (fp) {
      size_t n;

      text = calloc (1, 4096);
      n = fread (text, 1, 4095, fp);
      fclose (fp);
      root = jv_parse (text, n, err, sizeof err);
      if (!root || !jv_get (root, "uuid") ||
          jv_get (root, "uuid")->t != JV_STR) {
        fprintf (stderr, "%s: '%s' is damaged: %s\n", progname, rf,
                 root ? "no uuid" : err);
        free (rf);
        goto err;
      }
      r->uuid = strdup (jv_get (root, "uuid")->s);
      if (strlen (r->uuid) != 16 || strspn (r->uuid, "0123456789abcdef") != 16) {
        fprintf (stderr, "%s: '%s' has a bad uuid\n", progname, rf);
        free (rf);
        goto err;
      }
    }
    else if (errno == ENOENT && create) {
      uint8_t rnd[8];
      char *part;
      FILE *out;
      int i;

      if (getrandom (rnd, sizeof rnd, 0) != sizeof rnd) {
        fprintf (stderr, "%s: getrandom: %m\n", progname);
        free (rf);
        goto err;
      }
      r->uuid = calloc (1, 17);
      for (i = 0; i < 8; i++)
        sprintf (r->uuid + 2 * i, "%02x", rnd[i]);
      if (asprintf (&part, "%s.partial", rf) < 0)
        exit (1);
      out = fopen (part, "w");
      if (!out || fprintf (out, "{\n    \"format\": \"rawtrack-backup-repo\",\n"
                           "    \"version\": 1,\n    \"uuid\": \"%s\"\n}\n",
                           r->uuid) < 0 || fflush (out) != 0 ||
          fsync (fileno (out)) != 0 || fclose (out) != 0 ||
          rename (part, rf) == -1 || fsync (r->dirfd) == -1) {
        fprintf (stderr, "%s: cannot create '%s': %m\n", progname, rf);
        free (part);
        free (rf);
        goto err;
      }
      free (part);
    }
    else {
      fprintf (stderr, "%s: '%s' is not a rawtrack backup repository (no %s)"
               "\n", progname, dir, REPO_FILE);
      free (rf);
      goto err;
    }
  }
  free (rf);
  jv_free (root);
  free (text);
  if (load_backups (r) == -1)
    goto err2;
  if (lock) {
    size_t i;

    if (recover (r) == -1)
      goto err2;
    /* Prune may have changed the manifests: load them again. */
    for (i = 0; i < r->n; i++)
      bk_manifest_free (r->b[i]);
    free (r->b);
    r->b = NULL;
    r->n = 0;
    if (load_backups (r) == -1)
      goto err2;
  }
  return r;

 err:
  jv_free (root);
  free (text);
 err2:
  bk_repo_close (r);
  return NULL;
}

void
bk_repo_close (struct bk_repo *r)
{
  size_t i;

  if (!r)
    return;
  for (i = 0; i < r->n; i++)
    bk_manifest_free (r->b[i]);
  free (r->b);
  if (r->dirfd >= 0)
    close (r->dirfd);
  free (r->dir);
  free (r->uuid);
  free (r);
}

struct bk_manifest *
bk_repo_find (struct bk_repo *r, const char *id)
{
  size_t i;

  if (!id || !*id)
    return r->n ? r->b[r->n - 1] : NULL;
  for (i = 0; i < r->n; i++)
    if (strcmp (r->b[i]->id, id) == 0)
      return r->b[i];
  /* A unique prefix (the sequence number) is enough. */
  {
    struct bk_manifest *hit = NULL;
    size_t l = strlen (id);

    for (i = 0; i < r->n; i++)
      if (strncmp (r->b[i]->id, id, l) == 0) {
        if (hit)
          return NULL;
        hit = r->b[i];
      }
    return hit;
  }
}

struct bk_manifest **
bk_repo_chain (struct bk_repo *r, struct bk_manifest *b, size_t *n)
{
  struct bk_manifest **v = NULL;
  size_t k = 0, i;

  while (b) {
    v = realloc (v, (k + 1) * sizeof *v);
    v[k++] = b;
    if (k > r->n) {
      fprintf (stderr, "%s: the chain of '%s' loops\n", progname, v[0]->id);
      free (v);
      return NULL;
    }
    if (!b->parent)
      break;
    {
      struct bk_manifest *p = NULL;

      for (i = 0; i < r->n; i++)
        if (strcmp (r->b[i]->id, b->parent) == 0)
          p = r->b[i];
      if (!p) {
        fprintf (stderr, "%s: backup '%s' needs its parent '%s', which is "
                 "not in '%s'\n", progname, b->id, b->parent, r->dir);
        free (v);
        return NULL;
      }
      b = p;
    }
  }
  /* Oldest first. */
  for (i = 0; i < k / 2; i++) {
    struct bk_manifest *t = v[i];

    v[i] = v[k - 1 - i];
    v[k - 1 - i] = t;
  }
  *n = k;
  return v;
}

/* ---- the manifest's extents ------------------------------------------------ */

void
bk_ext_close (struct bk_ext_builder *b)
{
  XXH128_canonical_t c;

  if (!b->open)
    return;
  XXH128_canonicalFromHash (&c, XXH3_128bits_digest (b->st));
  memcpy (b->m->ext[b->m->n_ext - 1].hash, c.digest, BK_HASH_LEN);
  b->open = false;
}

void
bk_ext_add (struct bk_ext_builder *b, uint64_t off, uint64_t len,
            const uint8_t *hash)
{
  struct bk_manifest *m = b->m;
  struct bk_extent *e = m->n_ext ? &m->ext[m->n_ext - 1] : NULL;

  if (!b->open || e->off + e->len != off || e->len + len > BK_MAX_EXTENT) {
    bk_ext_close (b);
    if (m->n_ext == b->cap) {
      b->cap = b->cap ? b->cap * 2 : 64;
      m->ext = realloc (m->ext, b->cap * sizeof *m->ext);
      if (!m->ext) {
        fprintf (stderr, "%s: out of memory\n", progname);
        exit (1);
      }
    }
    e = &m->ext[m->n_ext++];
    e->off = off;
    e->len = 0;
    XXH3_128bits_reset (b->st);
    b->open = true;
  }
  e->len += len;
  XXH3_128bits_update (b->st, hash, BK_HASH_LEN);
}
