/* rawtrack - `rawtrack backup restore`: the chain map and the restore.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: opening a backup's chain (each file alone through librawtrack,
 * which does not follow backing files), the map "which backup holds each
 * cluster" (bk_chain_map), and writing a restore.
 *
 * The map walks the chain top-down once: a run the top holds is taken
 * from it; a run it does not hold is looked up one layer down, and so on;
 * past a layer's end (a disk that grew) everything below reads as zeros,
 * as in QEMU.  So every cluster is read once, from the newest backup that
 * holds it, and written once - no replay of the chain.
 *
 * Targets:
 *   new raw file      created exclusively, sized, only data written:
 *                     holes and zero clusters stay sparse;
 *   NAME.qcow2 (new)  a raw NAME.raw as above wrapped in a new container
 *                     (rawtrack attach, relative data file name);
 *   existing raw file or block device (--force): data written, zero runs
 *                     zeroed (punched or BLKZEROOUT), size set;
 *   the source disk's container (--force): a rollback.  Only what may
 *                     differ is rewritten - the union of the live
 *                     checkpoint bitmaps of this repository (changed since
 *                     the latest backup) and every cluster the backups
 *                     after the restored one hold, and the zero runs of
 *                     the disk under which the chain holds data (zeros no
 *                     bitmap saw: a disk shrunk and grown back) - through
 *                     tracked writes,
 *                     so the next backup records the rollback.  Without a
 *                     checkpoint of the latest backup the whole disk is
 *                     rewritten.
 *
 * Locking: the copy threads share the chain handles (librawtrack handles
 * are thread-safe) and the target backend; a mutex hands out the runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/stat.h>

#include "backup.h"
#include "arith.h"

#define CHUNK (4u << 20)
#define THREADS 2

int
bk_chain_open (struct bk_repo *r, struct bk_manifest *top, struct bk_chain *c)
{
  size_t i;

  memset (c, 0, sizeof *c);
  c->m = bk_repo_chain (r, top, &c->n);
  if (!c->m)
    return -1;
  c->img = calloc (c->n, sizeof *c->img);
  for (i = 0; i < c->n; i++) {
    char *p = bk_path (r, c->m[i]->file);

    c->img[i] = rawtrack_image_open (p, 0, NULL);
    if (!c->img[i]) {
      fail_lib ("cannot open the backup '%s'", p);
      free (p);
      bk_chain_close (c);
      return -1;
    }
    free (p);
  }
  c->vsize = rawtrack_image_virtual_size (c->img[c->n - 1]);
  return 0;
}

void
bk_chain_close (struct bk_chain *c)
{
  size_t i;

  for (i = 0; c->img && i < c->n; i++)
    rawtrack_image_close (c->img[i]);
  free (c->img);
  free (c->m);
  memset (c, 0, sizeof *c);
}

static int
map_layer (struct bk_chain *c, int layer, uint64_t off, uint64_t len,
           bk_map_fn fn, void *opaque)
{
  while (len) {
    struct rawtrack_image *img;
    uint64_t lsize;
    unsigned st;
    int64_t n;

    if (layer < 0)
      return fn (opaque, off, len, -1, true);
    img = c->img[layer];
    lsize = rawtrack_image_virtual_size (img);
    if (off >= lsize)
      return fn (opaque, off, len, -1, true);
    n = rawtrack_image_block_status (img, off, MIN (len, lsize - off), &st);
    if (n <= 0)
      return fail_lib ("reading the map of '%s'", c->m[layer]->file), -1;
    if (st & RAWTRACK_STATUS_ALLOCATED) {
      if (fn (opaque, off, (uint64_t) n, layer,
              (st & RAWTRACK_STATUS_ZERO) != 0) == -1)
        return -1;
    }
    else if (map_layer (c, layer - 1, off, (uint64_t) n, fn, opaque) == -1)
      return -1;
    off += (uint64_t) n;
    len -= (uint64_t) n;
  }
  return 0;
}

int
bk_chain_map (struct bk_chain *c, uint64_t off, uint64_t len, bk_map_fn fn,
              void *opaque)
{
  return map_layer (c, (int) c->n - 1, off, len, fn, opaque);
}

/* ---- zeros the tracking never saw ------------------------------------------ */

/* A disk shrunk and grown back (qemu-img resize) between two backups, or
 * a hole punched behind rawtrack's back, reads as zeros where no bitmap
 * marks a change, while the chain still holds the old data there.  The
 * source's zero runs are cheap to list (holes, zero clusters).  A whole
 * cluster of such a run that the chain holds as data differs for sure
 * (a backup stores an all-zero cluster as a zero cluster); the partial
 * clusters at the two ends of a run where that happened are read from
 * the chain and compared.  Partial clusters elsewhere are not read: a
 * cluster that holds a few written blocks among holes is the common case
 * and its zeros are in the chain as well. */
struct stale {
  struct bk_chain *c;
  struct bk_range **v;
  size_t *n;
  bool check;                  /* read the chain's bytes: partial clusters */
  bool found;
  int err;
};

static int
stale_cb (void *opaque, uint64_t off, uint64_t len, int layer, bool zero)
{
  struct stale *st = opaque;

  if (layer < 0 || zero)
    return 0;
  if (st->check) {
    static const uint8_t z[BK_CLUSTER];
    uint8_t *buf = malloc (len);
    bool same;

    if (!buf || rawtrack_image_pread (st->c->img[layer], buf, len, off) == -1) {
      free (buf);
      return fail_lib ("reading '%s' at offset %" PRIu64,
                       st->c->m[layer]->file, off), -1;
    }
    same = memcmp (buf, z, len) == 0;  /* len <= BK_CLUSTER */
    free (buf);
    if (same)
      return 0;
  }
  bk_ranges_add (st->v, st->n, off, len);
  st->found = true;
  return 0;
}

int
bk_chain_stale_zeros (struct bk_chain *c, uint64_t size,
                      bk_status_fn status, void *opaque,
                      struct bk_range **v, size_t *n)
{
  struct stale st = { .c = c, .v = v, .n = n };
  uint64_t off = 0;

  size = MIN (size, c->vsize);
  while (off < size) {
    bool zero;
    int64_t r = status (opaque, off, size - off, &zero);
    uint64_t a = off, b = off + (uint64_t) (r > 0 ? r : 0);
    uint64_t wa = ROUND_UP (a, (uint64_t) BK_CLUSTER);
    uint64_t wb = b == size ? b : ROUND_DOWN (b, (uint64_t) BK_CLUSTER);

    if (r <= 0)
      return -1;
    off = b;
    if (!zero || wb <= wa)
      continue;
    st.check = false;
    st.found = false;
    if (bk_chain_map (c, wa, wb - wa, stale_cb, &st) == -1)
      return -1;
    if (!st.found)
      continue;
    /* The ends of the run: compared byte for byte. */
    st.check = true;
    if (a < wa && bk_chain_map (c, a, wa - a, stale_cb, &st) == -1)
      return -1;
    if (wb < b && bk_chain_map (c, wb, b - wb, stale_cb, &st) == -1)
      return -1;
  }
  return 0;
}

/* ---- the copy -------------------------------------------------------------- */

struct run {
  uint64_t off, len;
  int layer;                   /* -1: zeros */
  bool zero;
};

struct job {
  struct bk_chain *c;
  struct run *runs;
  size_t n, cap, next;
  struct rawtrack_io *out;     /* raw target, or */
  struct rawtrack_image *img;  /* a container target (tracked writes) */
  bool sparse;                 /* new target: skip zeros */
  bool failed;
  uint64_t data, zeroed, done, total;
  struct bk_progress *prog;
  pthread_mutex_t lock;
};

static void
job_add (struct job *j, uint64_t off, uint64_t len, int layer, bool zero)
{
  bool z = layer < 0 || zero;

  /* Merge with the previous run of the same kind. */
  if (j->n && j->runs[j->n - 1].off + j->runs[j->n - 1].len == off &&
      (j->runs[j->n - 1].layer < 0 || j->runs[j->n - 1].zero) == z &&
      (z || j->runs[j->n - 1].layer == layer)) {
    j->runs[j->n - 1].len += len;
    return;
  }
  if (j->n == j->cap) {
    j->cap = j->cap ? j->cap * 2 : 256;
    j->runs = realloc (j->runs, j->cap * sizeof *j->runs);
    if (!j->runs) {
      fprintf (stderr, "%s: out of memory\n", progname);
      exit (1);
    }
  }
  j->runs[j->n].off = off;
  j->runs[j->n].len = len;
  j->runs[j->n].layer = z ? -1 : layer;
  j->runs[j->n].zero = z;
  j->n++;
}

static int
map_cb (void *opaque, uint64_t off, uint64_t len, int layer, bool zero)
{
  job_add (opaque, off, len, layer, zero);
  return 0;
}

static void *
copier (void *arg)
{
  struct job *j = arg;
  uint8_t *buf = malloc (CHUNK);

  for (;;) {
    struct run r;
    int e = 0;

    pthread_mutex_lock (&j->lock);
    if (j->failed || j->next >= j->n) {
      pthread_mutex_unlock (&j->lock);
      break;
    }
    r = j->runs[j->next];
    /* Hand out at most CHUNK of a data run at a time. */
    if (!r.zero && r.len > CHUNK) {
      r.len = CHUNK;
      j->runs[j->next].off += CHUNK;
      j->runs[j->next].len -= CHUNK;
    }
    else
      j->next++;
    pthread_mutex_unlock (&j->lock);

    if (r.zero) {
      if (!j->sparse) {
        if (j->img)
          e = rawtrack_image_zero (j->img, r.len, r.off, 0);
        else
          e = rawtrack_io_zero (j->out, r.len, r.off, RAWTRACK_ZERO_MAY_TRIM);
        if (e == -1)
          fail_lib ("zeroing the target at offset %" PRIu64, r.off);
      }
    }
    else {
      e = rawtrack_image_pread (j->c->img[r.layer], buf, r.len, r.off);
      if (e == -1)
        fail_lib ("reading '%s' at offset %" PRIu64, j->c->m[r.layer]->file,
                  r.off);
      else {
        e = j->img ? rawtrack_image_pwrite (j->img, buf, r.len, r.off, 0)
                   : rawtrack_io_pwrite (j->out, buf, r.len, r.off, 0);
        if (e == -1)
          fail_lib ("writing the target at offset %" PRIu64, r.off);
      }
    }
    pthread_mutex_lock (&j->lock);
    if (e == -1)
      j->failed = true;
    else if (r.zero)
      j->zeroed += r.len;
    else
      j->data += r.len;
    j->done += r.len;
    bk_progress_update (j->prog, j->done);
    pthread_mutex_unlock (&j->lock);
  }
  free (buf);
  return NULL;
}

static int
run_job (struct job *j)
{
  pthread_t th[THREADS];
  size_t i;
  int k;

  for (i = 0; i < j->n; i++)
    j->total += j->runs[i].len;
  j->prog = bk_progress_new ("restore", j->total);
  pthread_mutex_init (&j->lock, NULL);
  for (k = 0; k < THREADS; k++)
    if (pthread_create (&th[k], NULL, copier, j) != 0) {
      fprintf (stderr, "%s: cannot start a thread\n", progname);
      exit (1);
    }
  for (k = 0; k < THREADS; k++)
    pthread_join (th[k], NULL);
  bk_progress_end (j->prog);
  return j->failed ? -1 : 0;
}

/* ---- rollback onto the source ------------------------------------------------ */

/* The ranges of img that may differ from backup b: NULL/0 with *all set
 * when that cannot be known. */
static int64_t
image_status (void *opaque, uint64_t off, uint64_t count, bool *zero)
{
  unsigned st;
  int64_t n = rawtrack_image_block_status (opaque, off, count, &st);

  if (n <= 0)
    return fail_lib ("block status of the target at offset %" PRIu64, off),
      -1;
  *zero = (st & (RAWTRACK_STATUS_ZERO | RAWTRACK_STATUS_HOLE)) != 0;
  return n;
}

static int
rollback_ranges (struct bk_repo *r, struct bk_manifest *b,
                 struct bk_chain *c, struct rawtrack_image *img,
                 struct bk_range **v, size_t *n, bool *all)
{
  struct bk_manifest *L = bk_repo_find (r, NULL);
  struct bk_manifest **chain;
  size_t nc, i, k;
  int nb = rawtrack_image_bitmap_count (img), bi;
  bool in_chain = false, have_L = false;

  *all = true;
  chain = bk_repo_chain (r, L, &nc);
  if (!chain)
    return -1;
  for (i = 0; i < nc; i++)
    if (chain[i] == b)
      in_chain = true;
  for (bi = 0; bi < nb; bi++) {
    const char *name = rawtrack_image_bitmap_name (img, bi);
    uint64_t seq;

    if (bk_checkpoint_seq (r, name, &seq) == -1 || seq < L->seq)
      continue;
    if (rawtrack_image_bitmap_flags (img, bi) & RAWTRACK_BITMAP_IN_USE) {
      free (chain);
      return 0;
    }
    if (L->checkpoint && strcmp (name, L->checkpoint) == 0)
      have_L = true;
  }
  if (!in_chain || !have_L || L->vsize != b->vsize ||
      rawtrack_image_virtual_size (img) != b->vsize) {
    fprintf (stderr, "%s: the changes since backup %s cannot be told from "
             "the disk's checkpoints: rewriting the whole disk\n", progname,
             b->id);
    free (chain);
    return 0;
  }
  /* Changed since L: the live checkpoints. */
  if (bk_checkpoint_changes (r, L, img, b->vsize, v, n, NULL) == -1) {
    free (chain);
    return -1;
  }
  /* Changed by the backups after b: what they hold. */
  for (i = 0; i < nc; i++)
    if (chain[i] == b)
      break;
  for (k = i + 1; k < nc; k++) {
    for (size_t e = 0; e < chain[k]->n_ext; e++)
      bk_ranges_add (v, n, chain[k]->ext[e].off, chain[k]->ext[e].len);
    for (size_t z = 0; z < chain[k]->n_zero; z++)
      bk_ranges_add (v, n, chain[k]->zero[z].off, chain[k]->zero[z].len);
  }
  free (chain);
  /* Zeros no checkpoint saw (the disk shrunk and grown back since L, a
   * hole punched behind rawtrack's back) where b holds data. */
  if (bk_chain_stale_zeros (c, b->vsize, image_status, img, v, n) == -1)
    return -1;
  /* Sort and merge. */
  bk_ranges_sort (*v, *n);
  for (i = 0, k = 0; i < *n; i++) {
    if (k && (*v)[k - 1].off + (*v)[k - 1].len >= (*v)[i].off) {
      uint64_t e = MAX ((*v)[k - 1].off + (*v)[k - 1].len,
                        (*v)[i].off + (*v)[i].len);
      (*v)[k - 1].len = e - (*v)[k - 1].off;
    }
    else
      (*v)[k++] = (*v)[i];
  }
  *n = k;
  *all = false;
  return 0;
}

/* ---- restore ------------------------------------------------------------------ */

static bool
is_qcow2 (const char *path)
{
  uint8_t magic[4];
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  bool r;

  if (fd == -1)
    return false;
  r = pread (fd, magic, 4, 0) == 4 && memcmp (magic, "QFI\xfb", 4) == 0;
  close (fd);
  return r;
}

int
bk_restore (const char *spec, const char *target, bool force, bool json)
{
  char *repo = strdup (spec), *id = NULL, *colon, *rawname = NULL;
  struct bk_repo *r = NULL;
  struct bk_manifest *b;
  struct bk_chain c = { 0 };
  struct job j = { 0 };
  struct stat st;
  bool exists, container = false, rollback = false;
  double t0 = bk_now ();
  int ret = BK_EXIT_ERROR;
  size_t len = strlen (target);

  /* REPO[:BACKUP]: the last colon, unless REPO itself is a directory. */
  colon = strrchr (repo, ':');
  if (colon && stat (repo, &st) != 0) {
    *colon = 0;
    id = colon + 1;
  }
  j.c = &c;
  r = bk_repo_open (repo, false, false);
  if (!r)
    goto out;
  b = bk_repo_find (r, id);
  if (!b) {
    fprintf (stderr, "%s: no backup %s%s%s in '%s'%s\n", progname,
             id ? "'" : "", id ? id : "", id ? "'" : "", repo,
             id ? " (or the prefix is ambiguous)" : " (it is empty)");
    goto out;
  }
  if (bk_chain_open (r, b, &c) == -1) {
    ret = BK_EXIT_REPO;
    goto out;
  }

  exists = stat (target, &st) == 0;
  if (exists && !force) {
    fprintf (stderr, "%s: '%s' exists; use --force to overwrite it (a "
             "rawtrack container of the backed-up disk gets only what "
             "changed rewritten)\n", progname, target);
    goto out;
  }
  if (exists && S_ISREG (st.st_mode) && is_qcow2 (target)) {
    /* A container: roll back through tracked writes. */
    struct bk_range *v = NULL;
    size_t nv = 0, i;
    bool all;

    j.img = rawtrack_image_open (target, RAWTRACK_OPEN_RDWR, NULL);
    if (!j.img) {
      fail_lib ("cannot open '%s'", target);
      goto out;
    }
    if (rawtrack_image_virtual_size (j.img) != b->vsize) {
      fprintf (stderr, "%s: '%s' is %" PRIu64 " bytes, the backup %"
               PRIu64 "; restore into a new file instead\n", progname,
               target, rawtrack_image_virtual_size (j.img), b->vsize);
      goto out;
    }
    if (rollback_ranges (r, b, &c, j.img, &v, &nv, &all) == -1)
      goto out;
    if (all) {
      free (v);
      v = NULL;
      nv = 0;
      bk_ranges_add (&v, &nv, 0, b->vsize);
    }
    rollback = true;
    for (i = 0; i < nv; i++) {
      uint64_t e = MIN (v[i].off + v[i].len, b->vsize);

      if (v[i].off < e && bk_chain_map (&c, v[i].off, e - v[i].off, map_cb,
                                        &j) == -1) {
        free (v);
        ret = BK_EXIT_REPO;
        goto out;
      }
    }
    free (v);
  }
  else {
    const char *path = target;

    if (!exists && len > 6 && strcmp (target + len - 6, ".qcow2") == 0) {
      if (asprintf (&rawname, "%.*s.raw", (int) (len - 6), target) < 0)
        exit (1);
      if (access (rawname, F_OK) == 0) {
        fprintf (stderr, "%s: '%s' (the new container's data file) exists\n",
                 progname, rawname);
        goto out;
      }
      path = rawname;
      container = true;
    }
    j.out = rawtrack_io_file_open (path, RAWTRACK_IO_RDWR |
                                   (exists ? 0 : RAWTRACK_IO_CREATE |
                                    RAWTRACK_IO_EXCL));
    if (!j.out) {
      fail_lib ("cannot open the target '%s'", path);
      goto out;
    }
    if (!exists || S_ISREG (st.st_mode)) {
      if (rawtrack_io_truncate (j.out, exists ? 0 : b->vsize) == -1 ||
          (exists && rawtrack_io_truncate (j.out, b->vsize) == -1)) {
        fail_lib ("sizing '%s'", path);
        goto out;
      }
      j.sparse = true;         /* a fresh, all-zero file */
    }
    else {
      int64_t size = rawtrack_io_get_size (j.out);

      if (size < 0 || (uint64_t) size < b->vsize) {
        fprintf (stderr, "%s: '%s' is smaller (%" PRId64 " bytes) than the "
                 "disk (%" PRIu64 " bytes)\n", progname, path, size,
                 b->vsize);
        goto out;
      }
    }
    if (bk_chain_map (&c, 0, b->vsize, map_cb, &j) == -1) {
      ret = BK_EXIT_REPO;
      goto out;
    }
  }

  if (run_job (&j) == -1) {
    ret = BK_EXIT_REPO;
    goto out;
  }
  if (j.out && rawtrack_io_flush (j.out) == -1) {
    fail_lib ("syncing the target");
    ret = BK_EXIT_REPO;
    goto out;
  }
  if (j.img && rawtrack_image_flush (j.img) == -1) {
    fail_lib ("syncing the target");
    ret = BK_EXIT_REPO;
    goto out;
  }
  if (container) {
    struct rawtrack_attach_opts ao = { .struct_size = sizeof ao,
                                       .cluster_size = 0 };
    const char *base = strrchr (rawname, '/');

    rawtrack_io_close (j.out);
    j.out = NULL;
    ao.stored_name = base ? base + 1 : rawname;
    if (rawtrack_attach (rawname, target, &ao) == -1) {
      fail_lib ("cannot make the container '%s'", target);
      goto out;
    }
  }
  if (json) {
    struct json *js = json_new (stdout, true);

    json_object_begin (js, NULL);
    json_string (js, "backup", b->id);
    json_string (js, "target", target);
    json_string (js, "mode", rollback ? "rollback" : container ? "container"
                 : "raw");
    json_uint (js, "chain-length", c.n);
    json_uint (js, "virtual-size", b->vsize);
    json_uint (js, "written-bytes", j.data);
    json_uint (js, "zeroed-bytes", j.sparse ? 0 : j.zeroed);
    json_uint (js, "untouched-bytes", b->vsize - j.data -
               (j.sparse ? 0 : j.zeroed));
    json_double (js, "seconds", bk_now () - t0);
    json_object_end (js);
    json_end (js);
  }
  else
    fprintf (stderr, "%s: restored %s into '%s' (%" PRIu64 " bytes written"
             "%s)\n", progname, b->id, target, j.data + (j.sparse ? 0 : j.zeroed),
             rollback ? ", only what differed" : "");
  ret = BK_EXIT_OK;

 out:
  if (j.img && rawtrack_image_close (j.img) == -1 && ret == BK_EXIT_OK) {
    fail_lib ("closing '%s'", target);
    ret = BK_EXIT_ERROR;
  }
  rawtrack_io_close (j.out);
  free (j.runs);
  bk_chain_close (&c);
  bk_repo_close (r);
  free (repo);
  free (rawname);
  return ret;
}
