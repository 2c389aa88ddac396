/* rawtrack - `rawtrack backup verify` and `rawtrack backup prune`.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: checking a repository (manifests, chain links, qcow2 structure,
 * allocation against the manifest, every checksum), comparing a sample of
 * the disk with the chain (--source), and pruning with its journal.
 *
 * Prune, crash-atomically.  Let T be the oldest backup to keep in the
 * newest chain.  T's file is rewritten as a full backup with the same
 * guest content (every cluster of the chain at T, zero runs as zero
 * flags, so that it reads the same whether or not a reader still follows
 * the old parent link; zstd-compressed if any backup folded into it
 * was):
 *   [1] T.qcow2.partial and T.json.partial written and synced
 *   [2] prune.journal {"target": T, "remove": [older ids]} written as a
 *       partial, synced, renamed, directory synced      <- commit point
 *   [3] apply: rename both partials over T's files; remove the older
 *       backups' manifests, then their files; sync the directory
 *   [4] remove the journal, sync the directory
 * A crash before [2] leaves partials that recovery deletes (the old chain
 * is intact); from [2] on, recovery (bk_prune_recover, run by every
 * create and prune) repeats [3] and [4], which are idempotent.  T's
 * content is the same before and after, so every kept backup reads the
 * same data at every instant.
 *
 * Locking: prune takes the repository lock (bk_repo_open); verify reads.
 */
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "backup.h"
#include "arith.h"

#define JOURNAL "prune.journal"
#define SAMPLE_MAX 4096

/* ---- findings --------------------------------------------------------------- */

struct findings {
  char **msg;
  size_t n;
};

static void add_finding (struct findings *f, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
add_finding (struct findings *f, const char *fmt, ...)
{
  va_list ap;
  char *s;

  va_start (ap, fmt);
  if (vasprintf (&s, fmt, ap) < 0)
    exit (1);
  va_end (ap);
  f->msg = realloc (f->msg, (f->n + 1) * sizeof *f->msg);
  f->msg[f->n++] = s;
}

static void
findings_free (struct findings *f)
{
  size_t i;

  for (i = 0; i < f->n; i++)
    free (f->msg[i]);
  free (f->msg);
  f->msg = NULL;
  f->n = 0;
}

/* The findings as the JSON array "problems" (j), or as lines on stdout
 * prefixed with "what: " (what may be NULL).  Returns how many. */
static size_t
report (const struct findings *f, struct json *j, const char *what)
{
  size_t k;

  if (j)
    json_array_begin (j, "problems");
  for (k = 0; k < f->n; k++) {
    if (j)
      json_string (j, NULL, f->msg[k]);
    else
      printf ("%s%s%s\n", what ? what : "", what ? ": " : "", f->msg[k]);
  }
  if (j)
    json_array_end (j);
  return f->n;
}

/* ---- verify one backup ------------------------------------------------------- */

static void
check_report (void *opaque, int level, const char *message)
{
  struct findings *f = opaque;

  if (level >= 1)
    add_finding (f, "qcow2 check: %s", message);
}

/* prog/done: the progress of the whole verify (bytes of extents re-read). */
static void
verify_one (struct bk_repo *r, struct bk_manifest *m, struct findings *f,
            struct bk_progress *prog, uint64_t *done)
{
  char *path = bk_path (r, m->file);
  struct rawtrack_image *img;
  struct rawtrack_check_result cr = { .struct_size = sizeof cr };
  struct bk_range *alloc = NULL;
  size_t nalloc = 0, i;
  uint64_t off;
  uint8_t *buf = NULL, sum[BK_HASH_LEN];
  XXH3_state_t *st = NULL;

  img = rawtrack_image_open (path, RAWTRACK_OPEN_CHECK, NULL);
  if (!img) {
    add_finding (f, "cannot open '%s': %s", path, rawtrack_get_error ());
    free (path);
    return;
  }
  if (rawtrack_image_version (img) != 3 ||
      rawtrack_image_cluster_size (img) != BK_CLUSTER)
    add_finding (f, "not a qcow2 v3 image with 64 KiB clusters");
  if (rawtrack_image_virtual_size (img) != m->vsize)
    add_finding (f, "virtual size %" PRIu64 ", the manifest says %" PRIu64,
                 rawtrack_image_virtual_size (img), m->vsize);
  /* Chain link. */
  {
    const char *bf = rawtrack_image_backing_file (img);
    const char *bfmt = rawtrack_image_backing_format (img);
    struct bk_manifest *p = m->parent ? bk_repo_find (r, m->parent) : NULL;

    if (m->parent && (!p || strcmp (p->id, m->parent) != 0))
      add_finding (f, "its parent '%s' is missing", m->parent);
    if (!m->parent && bf)
      add_finding (f, "a full backup with a backing file '%s'", bf);
    if (p && (!bf || strcmp (bf, p->file) != 0))
      add_finding (f, "backing file '%s', not the parent's file '%s'",
                   bf ? bf : "(none)", p->file);
    if (p && (!bfmt || strcmp (bfmt, "qcow2") != 0))
      add_finding (f, "backing format '%s', not qcow2",
                   bfmt ? bfmt : "(none)");
  }
  if (rawtrack_image_check (img, 0, &cr, check_report, f) == -1)
    add_finding (f, "qcow2 check could not run: %s", rawtrack_get_error ());
  else if (cr.corruptions || cr.leaks)
    add_finding (f, "qcow2 check: %" PRIu64 " corruptions, %" PRIu64
                 " leaks", cr.corruptions, cr.leaks);

  /* The data clusters the file holds are exactly the manifest's extents. */
  for (off = 0; off < m->vsize; ) {
    unsigned s;
    int64_t n = rawtrack_image_block_status (img, off, m->vsize - off, &s);

    if (n <= 0) {
      add_finding (f, "reading the map at %" PRIu64 ": %s", off,
                   rawtrack_get_error ());
      goto out;
    }
    if ((s & RAWTRACK_STATUS_ALLOCATED) && !(s & RAWTRACK_STATUS_ZERO))
      bk_ranges_add (&alloc, &nalloc, off, (uint64_t) n);
    off += (uint64_t) n;
  }
  {
    struct bk_range *want = NULL;
    size_t nwant = 0;

    for (i = 0; i < m->n_ext; i++)
      bk_ranges_add (&want, &nwant, m->ext[i].off, m->ext[i].len);
    if (nwant != nalloc ||
        (nwant && memcmp (want, alloc, nwant * sizeof *want) != 0))
      add_finding (f, "the file holds data clusters the manifest does not "
                   "list, or lacks some it lists (%zu runs vs %zu)", nalloc,
                   nwant);
    free (want);
  }

  /* Every extent's hash, and the checksum. */
  buf = malloc (BK_MAX_EXTENT);
  st = XXH3_createState ();
  for (i = 0; i < m->n_ext; i++) {
    struct bk_extent *e = &m->ext[i];
    XXH128_canonical_t c;
    uint64_t k;

    if (rawtrack_image_pread (img, buf, e->len, e->off) == -1) {
      add_finding (f, "extent %" PRIu64 "+%" PRIu64 " cannot be read: %s",
                   e->off, e->len, rawtrack_get_error ());
      continue;
    }
    XXH3_128bits_reset (st);
    for (k = 0; k < e->len; k += BK_CLUSTER) {
      uint8_t h[BK_HASH_LEN];

      bk_hash (buf + k, MIN (BK_CLUSTER, e->len - k), h);
      XXH3_128bits_update (st, h, BK_HASH_LEN);
    }
    XXH128_canonicalFromHash (&c, XXH3_128bits_digest (st));
    if (memcmp (c.digest, e->hash, BK_HASH_LEN) != 0)
      add_finding (f, "extent at offset %" PRIu64 " (%" PRIu64 " bytes): "
                   "checksum mismatch - the data is damaged", e->off, e->len);
    *done += e->len;
    bk_progress_update (prog, *done);
  }
  bk_checksum (m, sum);
  if (memcmp (sum, m->checksum, BK_HASH_LEN) != 0)
    add_finding (f, "the backup's checksum does not match its extents (the "
                 "manifest is damaged)");
 out:
  if (st)
    XXH3_freeState (st);
  free (buf);
  free (alloc);
  rawtrack_image_close (img);
  free (path);
}

/* ---- --source: sampled comparison ------------------------------------------- */

struct clean_set {
  struct bk_range *v;
  size_t n;
};

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

struct sample_cb {
  struct bk_chain *c;
  uint8_t *buf;
};

static int
read_chain (void *opaque, uint64_t off, uint64_t len, int layer, bool zero)
{
  struct sample_cb *s = opaque;

  if (layer < 0 || zero) {
    memset (s->buf, 0, len);
    return 0;
  }
  if (rawtrack_image_pread (s->c->img[layer], s->buf, len, off) == -1)
    return fail_lib ("reading '%s'", s->c->m[layer]->file), -1;
  return 0;
}

/* Read [off, off+len) of the chain into buf. */
static int
chain_read (struct bk_chain *c, uint8_t *buf, uint64_t off, uint64_t len)
{
  uint64_t pos = 0;

  while (pos < len) {
    /* One run at a time: map a cluster. */
    struct sample_cb s = { .c = c, .buf = buf + pos };
    uint64_t n = MIN (BK_CLUSTER, len - pos);

    if (bk_chain_map (c, off + pos, n, read_chain, &s) == -1)
      return -1;
    pos += n;
  }
  return 0;
}

static int
verify_source (struct bk_repo *r, const char *source, const char *bitmap,
               struct findings *f, uint64_t *sampled)
{
  struct bk_manifest *L = bk_repo_find (r, NULL);
  struct bk_source *src = NULL;
  struct rawtrack_image *img;
  struct bk_chain c = { 0 };
  struct bk_range *dirty = NULL;
  size_t nd = 0, i, k;
  uint64_t nclusters, nclean = 0, *pick = NULL, npick, *clean = NULL;
  uint8_t *a = malloc (BK_CLUSTER), *b = malloc (BK_CLUSTER);
  struct bk_progress *prog = NULL;
  bool have = false, user_bitmap;
  int ret = -1;

  *sampled = 0;
  if (!L) {
    fprintf (stderr, "%s: the repository is empty\n", progname);
    goto out0;
  }
  user_bitmap = bitmap != NULL;
  /* An NBD source: the clean clusters of its dirty bitmap (--bitmap, or
   * the one the latest backup was read with). */
  if (!bitmap && L->source_kind && strcmp (L->source_kind, "nbd") == 0)
    bitmap = L->checkpoint;
  src = bk_source_open (source, false, 1,
                      rawtrack_is_nbd_uri (source) ? bitmap : NULL);
  if (!src)
    goto out0;
  if (!bk_source_is_image (src) && !bitmap) {
    fprintf (stderr, "%s: the NBD source '%s' needs --bitmap NAME (the "
             "dirty bitmap marking every change since %s): the latest "
             "backup names none\n", progname, source, L->id);
    goto out;
  }
  if (bk_source_is_image (src) && user_bitmap) {
    fprintf (stderr, "%s: --bitmap is for NBD sources; an image source's "
             "checkpoints are rawtrack's own\n", progname);
    goto out;
  }
  if (bk_source_size (src) != L->vsize) {
    add_finding (f, "source: its size %" PRIu64 " is not the latest "
                 "backup's %" PRIu64, bk_source_size (src), L->vsize);
    ret = 0;
    goto out;
  }
  if (!bk_source_is_image (src)) {
    if (bk_source_dirty (src, &dirty, &nd) == -1)
      goto out;
    have = true;
  }
  img = bk_source_image (src);
  if (img &&
      bk_checkpoint_changes (r, L, img, L->vsize, &dirty, &nd, &have) == -1)
    goto out;
  if (!have) {
    fprintf (stderr, "%s: '%s' has no checkpoint of the latest backup %s: "
             "cannot tell what is unchanged\n", progname, source, L->id);
    goto out;
  }
  if (bk_chain_open (r, L, &c) == -1)
    goto out;
  bk_ranges_sort (dirty, nd);

  /* Clean clusters: not touched by any dirty range. */
  nclusters = DIV_ROUND_UP (L->vsize, BK_CLUSTER);
  clean = malloc (MIN (nclusters, (uint64_t) 16 << 20) * sizeof *clean);
  for (k = 0, i = 0; k < nclusters; k++) {
    uint64_t s = k * BK_CLUSTER, e = MIN (s + BK_CLUSTER, L->vsize);

    while (i < nd && dirty[i].off + dirty[i].len <= s)
      i++;
    if (i < nd && dirty[i].off < e)
      continue;
    if (nclean < ((uint64_t) 16 << 20))
      clean[nclean++] = k;
  }
  if (nclean <= SAMPLE_MAX) {
    pick = clean;
    npick = nclean;
    clean = NULL;
  }
  else {
    pick = malloc (SAMPLE_MAX * sizeof *pick);
    for (npick = 0; npick < SAMPLE_MAX; npick++) {
      uint64_t rnd;

      if (getrandom (&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint64_t) rand () * 2654435761u;
      pick[npick] = clean[rnd % nclean];
    }
    qsort (pick, npick, sizeof *pick, cmp_u64);
  }
  prog = bk_progress_new ("verify source", npick * (uint64_t) BK_CLUSTER);
  for (k = 0; k < npick; k++) {
    uint64_t off = pick[k] * BK_CLUSTER, n = MIN (BK_CLUSTER, L->vsize - off);

    bk_progress_update (prog, k * (uint64_t) BK_CLUSTER);
    if (k && pick[k] == pick[k - 1])
      continue;
    if (bk_source_pread (src, 0, a, n, off) == -1)
      goto out;
    if (chain_read (&c, b, off, n) == -1)
      goto out;
    (*sampled)++;
    if (memcmp (a, b, n) != 0)
      add_finding (f, "source: the cluster at offset %" PRIu64 " differs from "
                   "backup %s although no checkpoint marks it changed: a "
                   "write bypassed tracking", off, L->id);
  }
  ret = 0;
 out:
  bk_progress_end (prog);
  bk_chain_close (&c);
  bk_source_close (src);
 out0:
  free (dirty);
  free (clean);
  free (pick);
  free (a);
  free (b);
  return ret;
}

int
bk_verify (const char *dir, const char *source, const char *bitmap,
           bool json)
{
  struct bk_repo *r = bk_repo_open (dir, false, false);
  struct findings all = { 0 };
  struct json *j = NULL;
  struct bk_progress *prog;
  size_t i, bad = 0;
  uint64_t sampled = 0, total = 0, done = 0;
  double t0 = bk_now ();
  int ret = BK_EXIT_OK;
  char *jp;

  if (!r)
    return BK_EXIT_ERROR;
  jp = bk_path (r, JOURNAL);
  if (access (jp, F_OK) == 0)
    fprintf (stderr, "%s: note: a prune was interrupted; the next create or "
             "prune finishes it\n", progname);
  free (jp);
  if (json) {
    j = json_new (stdout, true);
    json_object_begin (j, NULL);
    json_array_begin (j, "backups");
  }
  for (i = 0; i < r->n; i++)
    for (size_t e = 0; e < r->b[i]->n_ext; e++)
      total += r->b[i]->ext[e].len;
  prog = bk_progress_new ("verify", total);
  for (i = 0; i < r->n; i++) {
    struct findings f = { 0 };

    verify_one (r, r->b[i], &f, prog, &done);
    bk_progress_clear (prog);
    if (f.n)
      bad++;
    if (json) {
      json_object_begin (j, NULL);
      json_string (j, "id", r->b[i]->id);
      json_bool (j, "ok", f.n == 0);
      report (&f, j, NULL);
      json_object_end (j);
    }
    else if (!report (&f, NULL, r->b[i]->id))
      printf ("%s: ok (%zu extents, %" PRIu64 " bytes of data)\n",
              r->b[i]->id, r->b[i]->n_ext, r->b[i]->data_bytes);
    findings_free (&f);
  }
  bk_progress_end (prog);
  if (json)
    json_array_end (j);
  if (source) {
    struct findings f = { 0 };

    if (verify_source (r, source, bitmap, &f, &sampled) == -1)
      ret = BK_EXIT_ERROR;
    if (f.n)
      bad++;
    if (json) {
      json_object_begin (j, "source");
      json_string (j, "source", source);
      json_uint (j, "sampled-clusters", sampled);
      report (&f, j, NULL);
      json_object_end (j);
    }
    else if (!report (&f, NULL, NULL) && ret == BK_EXIT_OK)
      printf ("source: ok (%" PRIu64 " unchanged clusters compared)\n",
              sampled);
    findings_free (&f);
  }
  if (json) {
    json_bool (j, "ok", bad == 0 && ret == BK_EXIT_OK);
    json_uint (j, "checked-bytes", done);
    json_double (j, "seconds", bk_now () - t0);
    json_object_end (j);
    json_end (j);
  }
  findings_free (&all);
  bk_repo_close (r);
  if (bad)
    return BK_EXIT_VERIFY;
  return ret;
}

/* ---- prune --------------------------------------------------------------------- */

static int
unlink_if (struct bk_repo *r, const char *name)
{
  if (unlinkat (r->dirfd, name, 0) == -1 && errno != ENOENT) {
    fprintf (stderr, "%s: cannot remove '%s/%s': %m\n", progname, r->dir, name);
    return -1;
  }
  return 0;
}

static int
rename_if (struct bk_repo *r, const char *from, const char *to)
{
  if (renameat (r->dirfd, from, r->dirfd, to) == -1 && errno != ENOENT) {
    fprintf (stderr, "%s: cannot rename '%s/%s': %m\n", progname, r->dir, from);
    return -1;
  }
  return 0;
}

/* Steps [3] and [4] from the journal; idempotent. */
int bk_prune_recover (struct bk_repo *r);

int
bk_prune_recover (struct bk_repo *r)
{
  char *jp = bk_path (r, JOURNAL), *text = NULL, err[200];
  struct jv *root = NULL;
  const struct jv *t, *rm;
  FILE *fp = fopen (jp, "r");
  size_t n = 0, i;
  int ret = -1;

  if (!fp) {
    free (jp);
    return errno == ENOENT ? 0 : -1;
  }
  text = calloc (1, 1 << 20);
  n = fread (text, 1, (1 << 20) - 1, fp);
  fclose (fp);
  root = jv_parse (text, n, err, sizeof err);
  t = jv_get (root, "target");
  rm = jv_get (root, "remove");
  if (!root || !t || t->t != JV_STR || !rm || rm->t != JV_ARR ||
      strchr (t->s, '/')) {
    fprintf (stderr, "%s: '%s' is damaged (%s); remove it by hand after "
             "checking the repository\n", progname, jp, root ? "fields" : err);
    goto out;
  }
  fprintf (stderr, "%s: finishing an interrupted prune\n", progname);
  {
    char *a, *b;

    if (asprintf (&a, "%s.qcow2.partial", t->s) < 0 ||
        asprintf (&b, "%s.qcow2", t->s) < 0)
      exit (1);
    bk_step ("prune-apply-rename");
    if (rename_if (r, a, b) == -1) {
      free (a);
      free (b);
      goto out;
    }
    free (a);
    free (b);
    if (asprintf (&a, "%s.json.partial", t->s) < 0 ||
        asprintf (&b, "%s.json", t->s) < 0)
      exit (1);
    if (rename_if (r, a, b) == -1) {
      free (a);
      free (b);
      goto out;
    }
    free (a);
    free (b);
  }
  if (bk_fsync_dir (r) == -1)
    goto out;
  for (i = 0; i < rm->n; i++) {
    char *name;

    if (rm->items[i]->t != JV_STR || strchr (rm->items[i]->s, '/'))
      continue;
    if (asprintf (&name, "%s.json", rm->items[i]->s) < 0)
      exit (1);
    bk_step ("prune-apply-delete");
    if (unlink_if (r, name) == -1) {
      free (name);
      goto out;
    }
    free (name);
  }
  for (i = 0; i < rm->n; i++) {
    char *name;

    if (rm->items[i]->t != JV_STR || strchr (rm->items[i]->s, '/'))
      continue;
    if (asprintf (&name, "%s.qcow2", rm->items[i]->s) < 0)
      exit (1);
    if (unlink_if (r, name) == -1) {
      free (name);
      goto out;
    }
    free (name);
  }
  if (bk_fsync_dir (r) == -1)
    goto out;
  bk_step ("prune-journal-drop");
  if (unlink_if (r, JOURNAL) == -1 || bk_fsync_dir (r) == -1)
    goto out;
  ret = 0;
 out:
  jv_free (root);
  free (text);
  free (jp);
  return ret;
}

struct fold {
  struct bk_chain *c;
  struct rawtrack_writer *w;
  struct bk_manifest *m;
  uint8_t *buf;
  uint8_t *cbuf;               /* compressed cluster (compress) */
  bool compress;               /* a folded backup was zstd-compressed */
  struct bk_ext_builder eb;    /* the manifest's extents */
  int err;
  struct bk_progress *prog;
};

static int
fold_run (void *opaque, uint64_t off, uint64_t len, int layer, bool zero)
{
  struct fold *fo = opaque;
  struct bk_manifest *m = fo->m;

  bk_progress_update (fo->prog, off);
  if (layer < 0 || zero) {
    bk_ext_close (&fo->eb);
    if (layer >= 0) {
      bk_ranges_add (&m->zero, &m->n_zero, off, len);
      m->zero_bytes += len;
      if (rawtrack_writer_zero (fo->w, off, len) == -1)
        return fail_lib ("writing the folded backup"), -1;
    }
    return 0;
  }
  while (len) {
    uint64_t n = MIN (len, (uint64_t) BK_CLUSTER);
    int64_t clen;
    uint8_t h[BK_HASH_LEN];

    if (rawtrack_image_pread (fo->c->img[layer], fo->buf, n, off) == -1)
      return fail_lib ("reading '%s'", fo->c->m[layer]->file), -1;
    clen = fo->compress ? rawtrack_compress_cluster (RAWTRACK_COMPRESS_ZSTD,
                                                     fo->buf, n, BK_CLUSTER,
                                                     fo->cbuf) : 0;
    if (clen < 0 ||
        (clen > 0 ? rawtrack_writer_compressed (fo->w, off, fo->cbuf,
                                                (size_t) clen)
         : rawtrack_writer_data (fo->w, off, fo->buf, n)) == -1)
      return fail_lib ("writing the folded backup"), -1;
    bk_hash (fo->buf, n, h);
    bk_ext_add (&fo->eb, off, n, h);
    m->data_bytes += n;
    off += n;
    len -= n;
  }
  return 0;
}

int
bk_prune (const char *dir, uint64_t keep, bool json)
{
  struct bk_repo *r = bk_repo_open (dir, false, true);
  struct bk_manifest *L, *T, **chain = NULL, *m = NULL;
  struct bk_chain c = { 0 };
  struct rawtrack_writer_opts wo = { .struct_size = sizeof wo };
  struct rawtrack_writer *w = NULL;
  struct fold fo = { 0 };
  size_t nc, i, nremove = 0;
  char *part = NULL, *mpart = NULL, *jtmp = NULL, *jfin = NULL;
  double t0 = bk_now ();
  int ret = BK_EXIT_REPO;
  FILE *fp;

  if (!r)
    return BK_EXIT_ERROR;
  L = bk_repo_find (r, NULL);
  if (!L) {
    fprintf (stderr, "%s: nothing to prune: '%s' is empty\n", progname, dir);
    bk_repo_close (r);
    return BK_EXIT_OK;
  }
  chain = bk_repo_chain (r, L, &nc);
  if (!chain)
    goto out;
  T = chain[nc > keep ? nc - keep : 0];
  for (i = 0; i < r->n; i++)
    if (r->b[i]->seq < T->seq)
      nremove++;
  if (nremove == 0) {
    if (!json)
      fprintf (stderr, "%s: nothing to prune: %zu backup%s, keeping %"
               PRIu64 "\n", progname, r->n, r->n == 1 ? "" : "s", keep);
    else {
      struct json *j = json_new (stdout, true);

      json_object_begin (j, NULL);
      json_null (j, "full");
      json_uint (j, "removed", 0);
      json_uint (j, "kept", r->n);
      json_double (j, "seconds", bk_now () - t0);
      json_object_end (j);
      json_end (j);
    }
    ret = BK_EXIT_OK;
    goto out;
  }

  /* [1] T as a full backup. */
  if (bk_chain_open (r, T, &c) == -1)
    goto out;
  m = calloc (1, sizeof *m);
  m->id = strdup (T->id);
  m->seq = T->seq;
  m->file = strdup (T->file);
  m->time = strdup (T->time);
  m->unix_time = T->unix_time;
  m->vsize = T->vsize;
  m->cluster_size = BK_CLUSTER;
  m->source_kind = strdup (T->source_kind);
  m->source = strdup (T->source);
  m->checkpoint = T->checkpoint ? strdup (T->checkpoint) : NULL;
  m->repo = strdup (r->uuid);
  /* Compressed if any backup folded into it was: a prune must not
   * inflate the repository. */
  for (i = 0; i < nc; i++) {
    if (chain[i]->compression && strcmp (chain[i]->compression, "zstd") == 0)
      fo.compress = true;
    if (chain[i] == T)
      break;
  }
  m->compression = strdup (fo.compress ? "zstd" : "none");
  if (asprintf (&m->folded, "%s..%s", chain[0]->id, T->id) < 0)
    exit (1);
  part = bk_path (r, T->file);
  part = realloc (part, strlen (part) + 9);
  strcat (part, ".partial");
  unlink (part);
  wo.size = T->vsize;
  wo.cluster_size = BK_CLUSTER;
  wo.compression_type = fo.compress ? RAWTRACK_COMPRESS_ZSTD : 0;
  w = rawtrack_writer_new (part, &wo);
  if (!w) {
    fail_lib ("cannot create '%s'", part);
    goto out;
  }
  fo.c = &c;
  fo.w = w;
  fo.m = m;
  fo.buf = malloc (BK_CLUSTER);
  fo.cbuf = malloc (BK_CLUSTER);
  fo.eb.m = m;
  fo.eb.st = XXH3_createState ();
  fo.prog = bk_progress_new ("prune", T->vsize);
  if (bk_chain_map (&c, 0, T->vsize, fold_run, &fo) == -1)
    goto out;
  bk_progress_update (fo.prog, T->vsize);
  bk_progress_end (fo.prog);
  fo.prog = NULL;
  bk_ext_close (&fo.eb);
  if (bk_step_fail ("prune-file") == -1 || rawtrack_writer_finish (w) == -1) {
    if (rawtrack_get_error ())
      fail_lib ("writing '%s'", part);
    goto out;
  }
  m->file_bytes = rawtrack_writer_file_bytes (w);
  bk_checksum (m, m->checksum);
  if (asprintf (&mpart, "%s/%s.json.partial", r->dir, T->id) < 0)
    exit (1);
  unlink (mpart);
  if (bk_manifest_write (m, mpart) == -1)
    goto out;

  /* [2] the journal. */
  jfin = bk_path (r, JOURNAL);
  if (asprintf (&jtmp, "%s.tmp", jfin) < 0)
    exit (1);
  fp = fopen (jtmp, "w");
  if (!fp)
    goto jfail;
  fprintf (fp, "{\n    \"target\": \"%s\",\n    \"remove\": [", T->id);
  for (i = 0, nremove = 0; i < r->n; i++)
    if (r->b[i]->seq < T->seq)
      fprintf (fp, "%s\n        \"%s\"", nremove++ ? "," : "", r->b[i]->id);
  fprintf (fp, "\n    ]\n}\n");
  if (fflush (fp) != 0 || fsync (fileno (fp)) != 0 || ferror (fp)) {
    fclose (fp);
    goto jfail;
  }
  fclose (fp);
  if (bk_step_fail ("prune-journal") == -1 || rename (jtmp, jfin) == -1)
    goto jfail;
  if (bk_fsync_dir (r) == -1)
    goto out;
  bk_step ("prune-committed");

  /* [3], [4] */
  rawtrack_writer_free (w);
  w = NULL;
  bk_chain_close (&c);
  if (bk_prune_recover (r) == -1)
    goto out;
  if (json) {
    struct json *j = json_new (stdout, true);

    json_object_begin (j, NULL);
    json_string (j, "full", T->id);
    json_uint (j, "removed", nremove);
    json_uint (j, "kept", r->n - nremove);
    json_uint (j, "virtual-size", m->vsize);
    json_uint (j, "data-bytes", m->data_bytes);
    json_uint (j, "zero-bytes", m->zero_bytes);
    json_uint (j, "written-bytes", m->file_bytes);
    json_double (j, "seconds", bk_now () - t0);
    json_object_end (j);
    json_end (j);
  }
  else
    fprintf (stderr, "%s: folded %zu backup%s into %s\n", progname, nremove,
             nremove == 1 ? "" : "s", T->id);
  ret = BK_EXIT_OK;
  goto out;

 jfail:
  fprintf (stderr, "%s: writing the prune journal '%s': %m\n", progname,
           jfin);
 out:
  if (ret != BK_EXIT_OK) {
    if (jtmp)
      unlink (jtmp);
    if (!jfin || access (jfin, F_OK) != 0) {
      if (part)
        unlink (part);
      if (mpart)
        unlink (mpart);
    }
  }
  rawtrack_writer_free (w);
  if (fo.eb.st)
    XXH3_freeState (fo.eb.st);
  free (fo.buf);
  free (fo.cbuf);
  bk_progress_end (fo.prog);
  bk_chain_close (&c);
  bk_manifest_free (m);
  free (chain);
  free (part);
  free (mpart);
  free (jtmp);
  free (jfin);
  bk_repo_close (r);
  return ret;
}
