/* rawtrack - `rawtrack backup create`: checkpoints and the copy pipeline.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: deciding full or incremental, the checkpoint rotation of an image
 * source, the copy pipeline, the commit of a backup, progress and the
 * --json summary.
 *
 * Checkpoints of an image source (bitmaps "rawtrack-backup-<repo>-<seq>",
 * backup-repo.c).  Let L be the repository's latest backup and K_L the
 * bitmap its run created (its manifest's "checkpoint"):
 *
 *   [1] rotate: ONE crash-atomic directory update (rawtrack_bitmap_rotate)
 *       adds the enabled bitmap C_new and disables every enabled bitmap
 *       of this repository with seq >= L's (K_L, and those left by runs
 *       that failed after their own rotate).  No write is ever unrecorded:
 *       before the switch the old ones record it, after it C_new does.
 *   [2] copy what the union of those frozen bitmaps marks (all of them
 *       say "changed since L started"); a full backup copies everything.
 *   [3] commit the backup (file synced and renamed, manifest synced and
 *       renamed, directory synced): from here it is L.
 *   [4] remove the frozen bitmaps.
 *
 *   killed/failed before [1]: nothing changed.
 *   between [1] and [3]: L is still the latest; the next run sees K_L
 *     frozen and C_new enabled, freezes C_new too and copies the union:
 *     every change since L is covered, nothing is lost.  (The partial
 *     files are removed by recovery, backup-repo.c.)
 *   between [3] and [4]: the next run sees bitmaps older than its L and
 *     removes them; C_new (= K_L) is the one to copy from.
 *
 * Live (the image held by `rawtrack serve --control`, backup-live.c): the
 * same plan (plan_checkpoints); [1] is the server's `checkpoint`, taken
 * at one instant with a copy-before-write view of the disk, and the
 * frozen bitmaps and the data are read from that view's point-in-time
 * NBD export; [4] is `backup-end success`, and a failure after [1] is
 * `backup-end failure` (the frozen bitmaps merge into C_new).  Bitmaps
 * older than L are frozen with the others (the server removes them at
 * [4]) but not copied.
 *
 * An incremental needs K_L present and consistent; otherwise the run is
 * full and says why.  NBD sources: the checkpoints are the caller's;
 * --bitmap NAME makes an incremental over the latest backup.  A disk that
 * grew (qemu-img resize resizes the bitmaps with it) also gets everything
 * past the old end copied; one that shrank gives a smaller backup over a
 * larger parent, which QEMU reads clipped to the smaller size.  A disk
 * shrunk and grown back between two backups reads zeros where its
 * bitmaps (cut and regrown clean) mark nothing and the chain holds old
 * data: every incremental also backs up, as zeros, the source's zero runs
 * (holes, zero clusters) under which the chain holds data
 * (add_stale_zeros).  An NBD source whose size changed gets a full
 * backup: where it was cut cannot be seen.
 *
 * Pipeline: the work is cut into units (up to 2 MiB of clusters to read,
 * or a run of zero clusters never read).  bk_source_parallel threads take
 * units in order, read them, and per cluster detect zeros, hash and (with
 * --compress) compress with zstd; the main thread writes units strictly
 * in order through the sequential qcow2 writer.  At most WINDOW units are
 * in flight, bounding memory to WINDOW * 2 MiB (x2 with --compress).
 *
 * Locking: the pipeline's mutex protects the unit states and counters;
 * unit buffers belong to one thread at a time (worker, then writer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "backup.h"
#include "arith.h"

#define UNIT_BYTES (2u << 20)
#define WINDOW_PER_THREAD 4

/* ---- progress ----------------------------------------------------------- */

struct bk_progress {
  const char *what;
  uint64_t total;
  double start, last;
  bool tty;
};

double
bk_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

struct bk_progress *
bk_progress_new (const char *what, uint64_t total)
{
  struct bk_progress *p = calloc (1, sizeof *p);

  p->what = what;
  p->total = total;
  p->start = p->last = bk_now ();
  p->tty = isatty (2) && !getenv ("RAWTRACK_NO_PROGRESS");
  return p;
}

void
bk_progress_update (struct bk_progress *p, uint64_t done)
{
  double now = bk_now (), rate, left;
  char a[32], b[32], c[32];
  int pct;

  /* The first call draws the bar at once, then at most 5 times a second. */
  if (!p->tty || (p->last != p->start && now - p->last < 0.2))
    return;
  p->last = now;
  rate = done / MAX (now - p->start, 1e-3);
  left = rate > 0 ? (p->total - MIN (done, p->total)) / rate : 0;
  pct = p->total ? (int) (100.0 * done / p->total) : 100;
  human_size (done, a, sizeof a);
  human_size (p->total, b, sizeof b);
  human_size ((uint64_t) rate, c, sizeof c);
  fprintf (stderr, "\r%s: [%-30.*s] %3d%% %s of %s, %s/s, %d:%02d left  ",
           p->what, pct * 30 / 100, "##############################", pct,
           a, b, c, (int) left / 60, (int) left % 60);
}

void
bk_progress_clear (struct bk_progress *p)
{
  if (p && p->tty && p->last != p->start) {
    fprintf (stderr, "\r\033[K");
    fflush (stderr);
  }
}

void
bk_progress_end (struct bk_progress *p)
{
  if (p && p->tty && p->last != p->start)
    fprintf (stderr, "\r\033[K");
  free (p);
}

/* ---- the pipeline --------------------------------------------------------- */

enum { C_DATA, C_ZERO, C_COMP };

struct unit {
  uint64_t off, len;
  bool zero;                   /* a zero run: not read */
  int state;                   /* 0 waiting, 1 taken, 2 done */
  uint8_t *buf;
  uint8_t *cbuf;               /* compressed clusters at i * cs */
  uint32_t *clen;
  uint8_t *kind;               /* per cluster: C_* */
  uint8_t (*hash)[BK_HASH_LEN];
};

struct pipe {
  struct bk_source *src;
  struct unit *u;
  size_t n, next, written;
  size_t window;
  uint8_t **slot_buf, **slot_cbuf;  /* window reusable unit buffers */
  bool compress;
  bool failed;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int nthreads;
  int tid_next;
};

static bool
all_zero (const uint8_t *p, size_t n)
{
  static const uint8_t z[4096];

  while (n >= sizeof z) {
    if (memcmp (p, z, sizeof z) != 0)
      return false;
    p += sizeof z;
    n -= sizeof z;
  }
  return memcmp (p, z, n) == 0;
}

static int
work (struct pipe *pp, struct unit *u, int tid)
{
  uint64_t nc = DIV_ROUND_UP (u->len, BK_CLUSTER), i;

  size_t slot = (size_t) (u - pp->u) % pp->window;

  /* Unit k uses buffer slot k % window: unit k - window, its previous
   * user, is written before unit k may be taken.  Reused, not malloc'd
   * per unit: fresh 2 MiB blocks came from mmap and every read into
   * them page-faulted and zeroed - a third of a full backup's time. */
  if (!pp->slot_buf[slot])
    pp->slot_buf[slot] = malloc (UNIT_BYTES);
  if (pp->compress && !pp->slot_cbuf[slot])
    pp->slot_cbuf[slot] = malloc (UNIT_BYTES);
  u->buf = pp->slot_buf[slot];
  u->kind = calloc (nc, 1);
  u->hash = calloc (nc, BK_HASH_LEN);
  if (pp->compress) {
    u->cbuf = pp->slot_cbuf[slot];
    u->clen = calloc (nc, sizeof *u->clen);
  }
  if (!u->buf || !u->kind || !u->hash || (pp->compress && (!u->cbuf || !u->clen))) {
    fprintf (stderr, "%s: out of memory\n", progname);
    return -1;
  }
  if (bk_step_fail ("read") == -1 ||
      bk_source_pread (pp->src, tid, u->buf, u->len, u->off) == -1)
    return -1;
  for (i = 0; i < nc; i++) {
    uint8_t *p = u->buf + i * BK_CLUSTER;
    size_t n = MIN (BK_CLUSTER, u->len - i * BK_CLUSTER);

    if (all_zero (p, n)) {
      u->kind[i] = C_ZERO;
      continue;
    }
    bk_hash (p, n, u->hash[i]);
    if (pp->compress) {
      int64_t c = rawtrack_compress_cluster (RAWTRACK_COMPRESS_ZSTD, p, n,
                                             BK_CLUSTER,
                                             u->cbuf + i * BK_CLUSTER);

      if (c < 0) {
        fail_lib ("compressing");
        return -1;
      }
      if (c > 0 && (uint64_t) c + 512 < n) {
        u->kind[i] = C_COMP;
        u->clen[i] = (uint32_t) c;
      }
    }
  }
  return 0;
}

static void *
worker (void *arg)
{
  struct pipe *pp = arg;
  int tid;

  pthread_mutex_lock (&pp->lock);
  tid = pp->tid_next++;
  for (;;) {
    struct unit *u;
    size_t i;
    int r;

    while (!pp->failed && pp->next < pp->n &&
           pp->next >= pp->written + pp->window)
      pthread_cond_wait (&pp->cond, &pp->lock);
    if (pp->failed || pp->next >= pp->n)
      break;
    i = pp->next++;
    u = &pp->u[i];
    if (u->zero) {
      u->state = 2;
      pthread_cond_broadcast (&pp->cond);
      continue;
    }
    u->state = 1;
    pthread_mutex_unlock (&pp->lock);
    r = work (pp, u, tid);
    pthread_mutex_lock (&pp->lock);
    if (r == -1)
      pp->failed = true;
    else
      u->state = 2;
    pthread_cond_broadcast (&pp->cond);
  }
  pthread_mutex_unlock (&pp->lock);
  return NULL;
}

/* ---- planning --------------------------------------------------------------- */

static int
cmp_range (const void *a, const void *b)
{
  const struct bk_range *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

/* Round every range out to clusters (clipped to size), sort, merge. */
static void
normalise (struct bk_range **v, size_t *n, uint64_t size)
{
  struct bk_range *out = NULL;
  size_t k = 0, i;

  for (i = 0; i < *n; i++) {
    uint64_t s = ROUND_DOWN ((*v)[i].off, (uint64_t) BK_CLUSTER);
    uint64_t e = MIN (ROUND_UP ((*v)[i].off + (*v)[i].len,
                                (uint64_t) BK_CLUSTER), size);

    (*v)[i].off = s;
    (*v)[i].len = e > s ? e - s : 0;
  }
  if (*n)
    qsort (*v, *n, sizeof **v, cmp_range);
  for (i = 0; i < *n; i++) {
    if (!(*v)[i].len)
      continue;
    if (k && out[k - 1].off + out[k - 1].len >= (*v)[i].off) {
      uint64_t e = MAX (out[k - 1].off + out[k - 1].len,
                        (*v)[i].off + (*v)[i].len);

      out[k - 1].len = e - out[k - 1].off;
      continue;
    }
    bk_ranges_add (&out, &k, (*v)[i].off, (*v)[i].len);
  }
  free (*v);
  *v = out;
  *n = k;
}

static void
add_unit (struct pipe *pp, size_t *cap, uint64_t off, uint64_t len, bool zero)
{
  while (len) {
    uint64_t n = zero ? len : MIN (len, (uint64_t) UNIT_BYTES);

    if (pp->n == *cap) {
      *cap = *cap ? *cap * 2 : 256;
      pp->u = realloc (pp->u, *cap * sizeof *pp->u);
      if (!pp->u) {
        fprintf (stderr, "%s: out of memory\n", progname);
        exit (1);
      }
    }
    memset (&pp->u[pp->n], 0, sizeof pp->u[pp->n]);
    pp->u[pp->n].off = off;
    pp->u[pp->n].len = n;
    pp->u[pp->n].zero = zero;
    pp->n++;
    off += n;
    len -= n;
  }
}

/* Units for the ranges: zero runs (whole clusters only) and data. */
static int
plan (struct pipe *pp, struct bk_range *v, size_t n, uint64_t size)
{
  size_t cap = 0, i;

  for (i = 0; i < n; i++) {
    uint64_t pos = v[i].off, end = v[i].off + v[i].len, at = pos;

    while (at < end) {
      bool zero;
      int64_t r = bk_source_status (pp->src, at, end - at, &zero);

      if (r <= 0)
        return -1;
      if (zero) {
        uint64_t zs = ROUND_UP (at, (uint64_t) BK_CLUSTER);
        uint64_t ze = at + (uint64_t) r;

        ze = ze == size ? ze : ROUND_DOWN (ze, (uint64_t) BK_CLUSTER);
        if (ze > zs) {
          if (zs > pos)
            add_unit (pp, &cap, pos, zs - pos, false);
          add_unit (pp, &cap, zs, ze - zs, true);
          pos = ze;
        }
      }
      at += (uint64_t) r;
    }
    if (end > pos)
      add_unit (pp, &cap, pos, end - pos, false);
  }
  return 0;
}

/* ---- running the copy ------------------------------------------------------- */

struct copy_result {
  uint64_t read, data, zero, skipped;
};

static int
copy (struct pipe *pp, struct rawtrack_writer *w, struct bk_manifest *m,
      bool full, uint64_t total, struct copy_result *res)
{
  struct bk_ext_builder eb = { .m = m, .st = XXH3_createState () };
  struct bk_progress *prog = bk_progress_new ("backup", total);
  pthread_t *th;
  uint64_t done = 0;
  int i, r = -1;
  size_t k;

  pp->nthreads = bk_source_parallel (pp->src);
  pp->window = (size_t) pp->nthreads * WINDOW_PER_THREAD;
  pp->slot_buf = calloc (pp->window, sizeof *pp->slot_buf);
  pp->slot_cbuf = calloc (pp->window, sizeof *pp->slot_cbuf);
  if (!pp->slot_buf || !pp->slot_cbuf) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  th = calloc ((size_t) pp->nthreads, sizeof *th);
  for (i = 0; i < pp->nthreads; i++)
    if (pthread_create (&th[i], NULL, worker, pp) != 0) {
      fprintf (stderr, "%s: cannot start a thread\n", progname);
      exit (1);
    }

  for (k = 0; k < pp->n; k++) {
    struct unit *u = &pp->u[k];
    uint64_t nc, c;

    pthread_mutex_lock (&pp->lock);
    while (u->state != 2 && !pp->failed)
      pthread_cond_wait (&pp->cond, &pp->lock);
    pthread_mutex_unlock (&pp->lock);
    if (u->state != 2)
      goto out;

    if (u->zero) {
      bk_ext_close (&eb);
      res->zero += u->len;
      bk_ranges_add (&m->zero, &m->n_zero, u->off, u->len);
      if (!full && rawtrack_writer_zero (w, u->off, u->len) == -1) {
        fail_lib ("writing the backup");
        goto out;
      }
    }
    else {
      nc = DIV_ROUND_UP (u->len, BK_CLUSTER);
      res->read += u->len;
      for (c = 0; c < nc; ) {
        uint64_t off = u->off + c * BK_CLUSTER;
        uint64_t n = MIN (BK_CLUSTER, u->len - c * BK_CLUSTER);

        if (u->kind[c] == C_ZERO) {
          bk_ext_close (&eb);
          res->zero += n;
          bk_ranges_add (&m->zero, &m->n_zero, off, n);
          if (!full && rawtrack_writer_zero (w, off, n) == -1) {
            fail_lib ("writing the backup");
            goto out;
          }
          c++;
        }
        else if (u->kind[c] == C_COMP) {
          bk_ext_add (&eb, off, n, u->hash[c]);
          res->data += n;
          if (rawtrack_writer_compressed (w, off, u->cbuf + c * BK_CLUSTER,
                                          u->clen[c]) == -1) {
            fail_lib ("writing the backup");
            goto out;
          }
          c++;
        }
        else {
          uint64_t e = c, bytes = 0;

          while (e < nc && u->kind[e] == C_DATA) {
            uint64_t nn = MIN (BK_CLUSTER, u->len - e * BK_CLUSTER);

            bk_ext_add (&eb, u->off + e * BK_CLUSTER, nn, u->hash[e]);
            bytes += nn;
            e++;
          }
          res->data += bytes;
          if (rawtrack_writer_data (w, off, u->buf + c * BK_CLUSTER,
                                    bytes) == -1) {
            fail_lib ("writing the backup");
            goto out;
          }
          c = e;
        }
      }
    }
    done += u->len;
    bk_progress_update (prog, done);
    free (u->clen);
    free (u->kind);
    free (u->hash);
    u->buf = u->cbuf = NULL;
    u->clen = NULL;
    u->kind = NULL;
    u->hash = NULL;
    pthread_mutex_lock (&pp->lock);
    pp->written = k + 1;
    pthread_cond_broadcast (&pp->cond);
    pthread_mutex_unlock (&pp->lock);
  }
  bk_ext_close (&eb);
  r = 0;

 out:
  pthread_mutex_lock (&pp->lock);
  if (r == -1)
    pp->failed = true;
  pthread_cond_broadcast (&pp->cond);
  pthread_mutex_unlock (&pp->lock);
  for (i = 0; i < pp->nthreads; i++)
    pthread_join (th[i], NULL);
  for (k = 0; k < pp->n; k++) {
    free (pp->u[k].clen);
    free (pp->u[k].kind);
    free (pp->u[k].hash);
  }
  for (k = 0; k < pp->window; k++) {
    free (pp->slot_buf[k]);
    free (pp->slot_cbuf[k]);
  }
  free (pp->slot_buf);
  free (pp->slot_cbuf);
  free (th);
  bk_progress_end (prog);
  XXH3_freeState (eb.st);
  return r;
}

/* ---- checkpoints of an image source ------------------------------------------ */

void
bk_ckpts_add (struct bk_ckpts *c, const char *name, uint64_t seq,
              uint32_t flags)
{
  c->v = realloc (c->v, (c->n + 1) * sizeof *c->v);
  if (!c->v || !(c->v[c->n].name = strdup (name))) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  c->v[c->n].seq = seq;
  c->v[c->n].flags = flags;
  c->n++;
}

void
bk_ckpts_free (struct bk_ckpts *c)
{
  size_t i;

  for (i = 0; i < c->n; i++)
    free (c->v[i].name);
  free (c->v);
  c->v = NULL;
  c->n = 0;
}

static void
ckpts_load (struct bk_repo *r, struct rawtrack_image *img, struct bk_ckpts *c)
{
  int i, n = rawtrack_image_bitmap_count (img);

  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint64_t seq;

    if (bk_checkpoint_seq (r, name, &seq) == -1)
      continue;
    bk_ckpts_add (c, name, seq, rawtrack_image_bitmap_flags (img, i));
  }
}

static int
collect_dirty (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct bk_range **vv = ((void **) opaque)[0];
  size_t *nn = ((void **) opaque)[1];

  if (dirty)
    bk_ranges_add (vv, nn, start, length);
  return 0;
}

/* The plan of an image source's checkpoints (offline or live): full or
 * incremental and why, the bitmaps to freeze, the new checkpoint's name
 * and the bitmaps whose union is what changed since L.  live: the server
 * rotates, and every consistent bitmap of the repository is frozen (a
 * disabled one too: the server then removes it at backup-end, as [4]
 * does offline); offline, bitmaps older than L were removed before. */
struct ck_plan {
  bool incremental;
  const char *why_full;
  const char **freeze;         /* NULL-terminated */
  const char **dirty;          /* NULL-terminated */
  char *newckpt;
};

static void
ck_plan_free (struct ck_plan *p)
{
  free (p->freeze);
  free (p->dirty);
  free (p->newckpt);
}

static void
plan_checkpoints (struct bk_repo *r, struct bk_manifest *L,
                  const struct bk_ckpts *ck, const char *identity,
                  uint64_t vsize, uint64_t maxseq, bool full,
                  struct bk_live *live, struct ck_plan *p)
{
  uint64_t Lseq = L ? L->seq : 0;
  bool have_KL = false, consistent = true;
  size_t i, nf = 0, nd = 0;

  for (i = 0; i < ck->n; i++) {
    if (L && ck->v[i].seq < Lseq)
      continue;                /* its backup completed: only to remove */
    if (L && ck->v[i].seq == Lseq && L->checkpoint &&
        strcmp (L->checkpoint, ck->v[i].name) == 0)
      have_KL = true;
    if (ck->v[i].flags & RAWTRACK_BITMAP_IN_USE)
      consistent = false;
  }
  /* A live run that ended a stale view merged K_L into that view's
   * checkpoint, which now covers every change since L. */
  if (!have_KL && L && bk_live_stale_successor (live, L->checkpoint))
    for (i = 0; i < ck->n; i++)
      if (strcmp (ck->v[i].name,
                  bk_live_stale_successor (live, L->checkpoint)) == 0 &&
          ck->v[i].seq > Lseq) {
        have_KL = true;
        fprintf (stderr, "%s: the checkpoint of the latest backup was "
                 "merged into '%s' when its stale view ended\n", progname,
                 ck->v[i].name);
      }

  p->incremental = false;
  if (full)
    p->why_full = NULL;
  else if (!L)
    p->why_full = "the repository is empty";
  else if (strcmp (L->source, identity) != 0)
    p->why_full = "the latest backup is of another source";
  else if (!have_KL)
    p->why_full = "the source has no checkpoint bitmap of the latest backup";
  else if (!consistent)
    p->why_full = "a checkpoint bitmap is inconsistent (in use)";
  else
    p->incremental = true;
  if (p->incremental && L->vsize != vsize)
    fprintf (stderr, "%s: the disk %s from %" PRIu64 " to %" PRIu64
             " bytes since %s%s\n", progname,
             vsize > L->vsize ? "grew" : "shrank", L->vsize, vsize, L->id,
             vsize > L->vsize ? ": everything past the old end is copied"
             : "");

  p->freeze = calloc (ck->n + 1, sizeof *p->freeze);
  p->dirty = calloc (ck->n + 1, sizeof *p->dirty);
  if (!p->freeze || !p->dirty) {
    fprintf (stderr, "%s: out of memory\n", progname);
    exit (1);
  }
  for (i = 0; i < ck->n; i++) {
    if (ck->v[i].flags & RAWTRACK_BITMAP_IN_USE)
      continue;
    if (live || (ck->v[i].flags & RAWTRACK_BITMAP_AUTO))
      p->freeze[nf++] = ck->v[i].name;
    if (p->incremental && !(L && ck->v[i].seq < Lseq))
      p->dirty[nd++] = ck->v[i].name;
  }
  p->newckpt = bk_checkpoint_name (r, maxseq + 1);
}

/* ---- create -------------------------------------------------------------------- */

static int64_t
source_status (void *opaque, uint64_t off, uint64_t count, bool *zero)
{
  return bk_source_status (opaque, off, count, zero);
}

/* Zeros no bitmap marks but the chain of L holds data under (a disk
 * shrunk and grown back since L, a hole punched behind rawtrack's back)
 * are changes too: added to the ranges (plan() turns them into zero
 * clusters without reading them).  -1 with a message printed. */
static int
add_stale_zeros (struct bk_repo *r, struct bk_manifest *L,
                 struct bk_source *s, uint64_t vsize, struct bk_range **v,
                 size_t *n)
{
  struct bk_chain c;
  size_t before = *n, i;
  uint64_t bytes = 0;
  int ret;

  if (bk_chain_open (r, L, &c) == -1)
    return -1;
  ret = bk_chain_stale_zeros (&c, MIN (vsize, L->vsize), source_status, s,
                              v, n);
  bk_chain_close (&c);
  for (i = before; i < *n; i++)
    bytes += (*v)[i].len;
  if (ret == 0 && bytes)
    fprintf (stderr, "%s: %" PRIu64 " bytes read as zeros where backup %s "
             "holds data and no checkpoint marks a change (a disk shrunk "
             "and grown back?): backed up as zeros\n", progname, bytes,
             L->id);
  return ret;
}

static char *
make_id (uint64_t seq, time_t t, char **iso)
{
  struct tm tm;
  char ts[32], *id;

  gmtime_r (&t, &tm);
  strftime (ts, sizeof ts, "%Y%m%dT%H%M%SZ", &tm);
  if (asprintf (&id, "%06" PRIu64 "-%s", seq, ts) < 0)
    exit (1);
  strftime (ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  *iso = strdup (ts);
  return id;
}

static bool
is_nbd_uri (const char *s)
{
  return strncmp (s, "nbd://", 6) == 0 || strncmp (s, "nbds://", 7) == 0 ||
    strncmp (s, "nbd+", 4) == 0 || strncmp (s, "nbds+", 5) == 0;
}

/* One backup of source into repo.  live: the server holding the image
 * source (a live backup), or NULL (offline, or an NBD source). */
static int
create (const char *source, const char *repo, const struct bk_create_opts *o,
        struct bk_live *live)
{
  struct bk_repo *r = NULL;
  struct bk_source *s = NULL;
  struct bk_manifest *L, *m = calloc (1, sizeof *m);
  struct bk_ckpts ck = { 0 };
  struct ck_plan cp = { 0 };
  struct bk_range *ranges = NULL;
  size_t nranges = 0, i;
  struct pipe pp = { .lock = PTHREAD_MUTEX_INITIALIZER,
                     .cond = PTHREAD_COND_INITIALIZER };
  struct rawtrack_writer *w = NULL;
  struct rawtrack_writer_opts wo = { .struct_size = sizeof wo };
  struct copy_result res = { 0 };
  char *part = NULL, *final = NULL, *newckpt = NULL, *mname = NULL;
  char *identity = NULL, *export_name = NULL, *pit_uri = NULL;
  const char *why_full = NULL;
  bool incremental = false, renamed = false, image_src, view = false;
  uint64_t vsize, maxseq = 0, total = 0;
  int64_t cbw = -1;
  double t0 = bk_now ();
  int ret = BK_EXIT_ERROR;

  r = bk_repo_open (repo, true, true);
  if (!r)
    goto out;
  L = bk_repo_find (r, NULL);
  if (live) {
    /* The server holds the image: its bitmaps come from `query`. */
    int ended;

    if (bk_live_export (live, source, r, &export_name, &vsize, &ck) == -1 ||
        (ended = bk_live_end_stale (live, r, export_name)) == -1) {
      ret = BK_EXIT_SOURCE;
      goto out;
    }
    if (ended > 0) {
      /* Ending the stale views changed the bitmaps: ask again. */
      free (export_name);
      export_name = NULL;
      bk_ckpts_free (&ck);
      if (bk_live_export (live, source, r, &export_name, &vsize, &ck) == -1) {
        ret = BK_EXIT_SOURCE;
        goto out;
      }
    }
    identity = realpath (source, NULL);
    if (!identity)
      identity = strdup (source);
    image_src = true;
  }
  else {
    s = bk_source_open (source, true, o->connections, o->bitmap);
    if (!s) {
      if (!is_nbd_uri (source) && rawtrack_get_error () &&
          strstr (rawtrack_get_error (), "lock"))
        fprintf (stderr, "%s: hint: '%s' is in use by another process; if "
                 "it is a `rawtrack serve`, give its control socket with "
                 "--control PATH (or restart it with --control) to back it "
                 "up live\n", progname, source);
      ret = BK_EXIT_SOURCE;
      goto out;
    }
    identity = strdup (bk_source_identity (s));
    vsize = bk_source_size (s);
    image_src = bk_source_is_image (s);
  }
  if (image_src && o->bitmap) {
    fprintf (stderr, "%s: --bitmap is for NBD sources; an image source's "
             "checkpoints are rawtrack's own\n", progname);
    goto out;
  }
  if (vsize == 0 || vsize % 512) {
    fprintf (stderr, "%s: the source's size %" PRIu64 " is not a non-zero "
             "multiple of 512\n", progname, vsize);
    goto out;
  }
  for (i = 0; i < r->n; i++)
    maxseq = MAX (maxseq, r->b[i]->seq);

  if (L && strcmp (L->source, identity) != 0 && image_src && !o->full) {
    fprintf (stderr, "%s: the latest backup in '%s' (%s) is of '%s', not "
             "'%s'; use one repository per disk (or --full to start a new "
             "chain here)\n", progname, repo, L->id, L->source, identity);
    goto out;
  }

  if (image_src) {
    struct rawtrack_image *img = live ? NULL : bk_source_image (s);

    if (!live) {
      ckpts_load (r, img, &ck);
      /* Bitmaps older than L: their backups completed; drop them.  (Live,
       * they are frozen with the others and removed by backup-end.) */
      for (i = 0; L && i < ck.n; i++)
        if (ck.v[i].seq < L->seq &&
            rawtrack_bitmap_remove (img, ck.v[i].name) == -1) {
          fail_lib ("removing the old checkpoint '%s'", ck.v[i].name);
          goto out;
        }
      bk_ckpts_free (&ck);
      ckpts_load (r, img, &ck);
    }
    for (i = 0; i < ck.n; i++)
      maxseq = MAX (maxseq, ck.v[i].seq);
    plan_checkpoints (r, L, &ck, identity, vsize, maxseq, o->full, live, &cp);
    why_full = cp.why_full;
    incremental = cp.incremental;
    newckpt = strdup (cp.newckpt);

    /* [1] the rotation: the server's (with its view), or ours. */
    if (live) {
      uint64_t pit_size = 0;

      if (bk_step_fail ("rotate") == -1) {
        ret = BK_EXIT_SOURCE;
        goto out;
      }
      /* A view that saves only the frozen bits serves an incremental; one
       * that also reads past the old end of a grown disk needs them all.
       * Once the view exists, a failure ends it. */
      if (bk_live_checkpoint (live, newckpt, export_name, cp.freeze,
                              !incremental || vsize > L->vsize, &view,
                              &pit_uri, &pit_size) == -1) {
        ret = BK_EXIT_SOURCE;
        goto out;
      }
      s = bk_source_open_nbd (pit_uri, o->connections, cp.dirty);
      if (!s) {
        ret = BK_EXIT_SOURCE;
        goto out;
      }
      if (bk_source_size (s) != vsize) {
        fprintf (stderr, "%s: the point-in-time export '%s' has %" PRIu64
                 " bytes, the disk %" PRIu64 "\n", progname, pit_uri,
                 bk_source_size (s), vsize);
        ret = BK_EXIT_SOURCE;
        goto out;
      }
    }
    else {
      if (bk_step_fail ("rotate") == -1 ||
          rawtrack_bitmap_rotate (img, newckpt, BK_CLUSTER, cp.freeze) == -1) {
        if (rawtrack_get_error ())
          fail_lib ("creating the checkpoint '%s'", newckpt);
        ret = BK_EXIT_SOURCE;
        goto out;
      }
      bk_step ("rotated");
    }

    /* [2] what changed: the union of the frozen bitmaps. */
    for (i = 0; cp.dirty[i]; i++) {
      void *arg[2] = { &ranges, &nranges };

      if (live ? bk_source_dirty_bitmap (s, cp.dirty[i], &ranges,
                                         &nranges) == -1
          : rawtrack_bitmap_extents (img, cp.dirty[i], 0, vsize,
                                     collect_dirty, arg) == -1) {
        if (!live)
          fail_lib ("reading the checkpoint '%s'", cp.dirty[i]);
        ret = BK_EXIT_SOURCE;
        goto out;
      }
    }
  }
  else {
    if (o->full)
      ;
    else if (!o->bitmap)
      why_full = L ? "no --bitmap for the NBD source" : NULL;
    else if (!L)
      why_full = "the repository is empty";
    else if (L->vsize != vsize)
      /* Only the size is visible: the disk may have been cut anywhere
       * below both sizes and grown back, and the caller's bitmap does not
       * mark what the cut zeroed. */
      why_full = "the disk's size changed since the latest backup and an "
        "NBD source cannot show where it may have been cut";
    else
      incremental = true;
    if (incremental) {
      if (bk_source_dirty (s, &ranges, &nranges) == -1) {
        ret = BK_EXIT_SOURCE;
        goto out;
      }
      if (strcmp (L->source, identity) != 0)
        fprintf (stderr, "%s: note: the latest backup was read from '%s'; "
                 "trusting --bitmap %s to cover every change since\n",
                 progname, L->source, o->bitmap);
    }
    if (o->bitmap)
      newckpt = strdup (o->bitmap);
  }
  if (why_full)
    fprintf (stderr, "%s: full backup: %s\n", progname, why_full);

  if (incremental) {
    if (vsize > L->vsize)
      bk_ranges_add (&ranges, &nranges, L->vsize, vsize - L->vsize);
    if (add_stale_zeros (r, L, s, vsize, &ranges, &nranges) == -1) {
      ret = BK_EXIT_REPO;
      goto out;
    }
  }
  else {
    free (ranges);
    ranges = NULL;
    nranges = 0;
    bk_ranges_add (&ranges, &nranges, 0, vsize);
  }
  normalise (&ranges, &nranges, vsize);
  for (i = 0; i < nranges; i++)
    total += ranges[i].len;

  /* The backup. */
  m->seq = maxseq + 1;
  m->unix_time = time (NULL);
  m->id = make_id (m->seq, (time_t) m->unix_time, &m->time);
  if (asprintf (&m->file, "%s.qcow2", m->id) < 0)
    exit (1);
  m->parent = incremental ? strdup (L->id) : NULL;
  m->vsize = vsize;
  m->cluster_size = BK_CLUSTER;
  m->source_kind = strdup (image_src ? "image" : "nbd");
  m->source = strdup (identity);
  m->checkpoint = newckpt ? strdup (newckpt) : NULL;
  m->repo = strdup (r->uuid);
  m->compression = strdup (o->compress ? "zstd" : "none");

  final = bk_path (r, m->file);
  if (asprintf (&part, "%s.partial", final) < 0)
    exit (1);
  wo.size = vsize;
  wo.cluster_size = BK_CLUSTER;
  wo.compression_type = o->compress ? RAWTRACK_COMPRESS_ZSTD : 0;
  if (incremental) {
    wo.backing_file = L->file;
    wo.backing_format = "qcow2";
  }
  w = rawtrack_writer_new (part, &wo);
  if (!w) {
    fail_lib ("cannot create the backup file");
    ret = BK_EXIT_REPO;
    goto out;
  }

  pp.src = s;
  pp.compress = o->compress;
  if (plan (&pp, ranges, nranges, vsize) == -1) {
    ret = BK_EXIT_SOURCE;
    goto out;
  }
  if (copy (&pp, w, m, !incremental, total, &res) == -1) {
    ret = pp.failed && !rawtrack_get_error () ? BK_EXIT_SOURCE : BK_EXIT_REPO;
    goto out;
  }
  if (live) {
    /* Every read is done: the view's work is over. */
    cbw = bk_live_cbw_bytes (live, newckpt);
    bk_source_close (s);
    s = NULL;
  }
  if (bk_step_fail ("file-sync") == -1 || rawtrack_writer_finish (w) == -1) {
    if (rawtrack_get_error ())
      fail_lib ("writing the backup file");
    ret = BK_EXIT_REPO;
    goto out;
  }
  m->file_bytes = rawtrack_writer_file_bytes (w);
  rawtrack_writer_free (w);
  w = NULL;
  m->data_bytes = res.data;
  m->zero_bytes = res.zero;
  m->read_bytes = res.read;
  bk_checksum (m, m->checksum);

  /* Commit: file in place, then the manifest (the commit point). */
  bk_step ("file-rename");
  if (rename (part, final) == -1) {
    fprintf (stderr, "%s: renaming '%s': %m\n", progname, part);
    ret = BK_EXIT_REPO;
    goto out;
  }
  renamed = true;
  m->seconds = bk_now () - t0;
  if (asprintf (&mname, "%s.json", m->id) < 0)
    exit (1);
  if (bk_fsync_dir (r) == -1 || bk_manifest_commit (r, m, mname) == -1) {
    ret = BK_EXIT_REPO;
    goto out;
  }
  bk_step ("committed");

  /* [4] Drop the frozen checkpoints: failures only leave them for next
   * time (live: the server merges them into the new checkpoint, whose
   * next backup then copies a little more). */
  if (live) {
    view = false;
    if (bk_step_fail ("drop-frozen") == -1 ||
        bk_live_end (live, newckpt, true) == -1)
      fprintf (stderr, "%s: warning: the backup %s is complete (every read "
               "of the point-in-time export succeeded); the next backup "
               "copies again what its frozen checkpoints marked\n", progname,
               m->id);
  }
  else if (image_src) {
    for (i = 0; i < ck.n; i++)
      if (bk_step_fail ("drop-frozen") == -1 ||
          rawtrack_bitmap_remove (bk_source_image (s), ck.v[i].name) == -1) {
        fprintf (stderr, "%s: warning: could not remove the old checkpoint "
                 "'%s' (the next backup will): %s\n", progname, ck.v[i].name,
                 rawtrack_get_error () ? rawtrack_get_error () : "failed");
        break;
      }
  }

  m->seconds = bk_now () - t0;
  if (o->json) {
    struct json *j = json_new (stdout, true);

    json_object_begin (j, NULL);
    json_string (j, "id", m->id);
    json_string (j, "file", final);
    json_string (j, "type", incremental ? "incremental" : "full");
    json_string (j, "mode", live ? "live" : image_src ? "offline" : "nbd");
    if (m->parent)
      json_string (j, "parent", m->parent);
    else
      json_null (j, "parent");
    if (m->checkpoint)
      json_string (j, "checkpoint", m->checkpoint);
    if (live) {
      json_string (j, "control", bk_live_control (live));
      json_string (j, "export", export_name);
      if (cbw >= 0)
        json_uint (j, "cbw-bytes", (uint64_t) cbw);
      else
        json_null (j, "cbw-bytes");
    }
    json_uint (j, "virtual-size", vsize);
    json_uint (j, "considered-bytes", total);
    json_uint (j, "read-bytes", res.read);
    json_uint (j, "data-bytes", res.data);
    json_uint (j, "zero-bytes", res.zero);
    json_uint (j, "skipped-bytes", vsize - total);
    json_uint (j, "written-bytes", m->file_bytes);
    json_double (j, "seconds", m->seconds);
    json_object_end (j);
    json_end (j);
  }
  else
    printf ("%s\n", m->id);
  ret = BK_EXIT_OK;

 out:
  if (w) {
    rawtrack_writer_free (w);
  }
  if (ret != BK_EXIT_OK && part) {
    unlink (part);
    if (renamed && final) {
      char *mp = bk_path (r, mname ? mname : "");

      if (access (mp, F_OK) != 0)
        unlink (final);
      free (mp);
    }
  }
  bk_source_close (s);
  if (view && ret != BK_EXIT_OK) {
    /* Nothing is lost: the frozen bitmaps go back into the new one. */
    if (bk_live_end (live, newckpt, false) == 0)
      fprintf (stderr, "%s: the live backup failed; its changes go to the "
               "next backup\n", progname);
  }
  free (pp.u);
  free (ranges);
  free (part);
  free (final);
  free (mname);
  free (newckpt);
  free (identity);
  free (export_name);
  free (pit_uri);
  ck_plan_free (&cp);
  bk_ckpts_free (&ck);
  bk_manifest_free (m);
  bk_repo_close (r);
  return ret;
}

int
bk_create (const char *source, const char *repo,
           const struct bk_create_opts *o)
{
  struct bk_live *live = NULL;
  int ret;

  if (is_nbd_uri (source)) {
    if (o->control) {
      fprintf (stderr, "%s: --control is for image sources (an NBD source is "
               "read as it is)\n", progname);
      return BK_EXIT_ERROR;
    }
  }
  else if (!o->offline && bk_live_open (source, o->control, &live) == -1)
    return BK_EXIT_SOURCE;
  ret = create (source, repo, o, live);
  bk_live_close (live);
  return ret;
}
