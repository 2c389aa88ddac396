/* rawtrack - NBD server: point-in-time views and copy-before-write.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct view_disk, one disk as it was at a checkpoint while the
 * guest keeps writing (docs/control.md), and its fleecing store.
 *
 * The disk is cut into VIEW_CHUNK chunks.  `needed` (fixed at the
 * checkpoint) marks the chunks the view has to serve: all of them for a
 * full view, else those that one of the frozen bitmaps marks.  `saved`
 * marks the chunks whose old data is in the store.  The store is a sparse
 * file (unlinked at once, so a crash leaves nothing) or a memfd, laid out
 * like the disk: chunk i at offset i * VIEW_CHUNK, so no map is needed and
 * what it holds is exactly the saved chunks.
 *
 * Copy-before-write (disk_before_write, under disk->gate shared, before
 * the guest write): for each view, the chunks of the write that are needed
 * and not saved are read from the image (their old data: no write to them
 * has happened since the checkpoint, since every such write comes here
 * first) and written to the store, then marked saved.
 *
 * Locking.  vd->save_lock (a mutex) serialises the savers: it covers
 * vd->buf, vd->held and the first failure's reason.  vd->rw guards the
 * store's fd: readers and savers hold it shared while they use it; only
 * dropping the store (the view failed or ended) takes it exclusive.  A
 * saver never waits for readers, so a guest write that must save waits
 * only for other saves, not for the point-in-time reads in flight.
 *
 * Why a reader needs no lock against savers: a guest write to a chunk
 * starts only after the chunk's `saved` bit is set (the saver sets it,
 * with release, after the old data is in the store).  A reader reads the
 * unsaved chunks from the image, then loads their bits again (acquire):
 * a bit still clear means no guest write to that chunk had started when
 * the image read returned, so what it read is the old data; a bit now set
 * means the chunk may have changed under the read, and it is read again
 * from the store, which holds the old data.  `saved` bits only go from 0
 * to 1, so a writer that finds every chunk of its range saved needs no
 * lock at all.  The state (active -> failed/ended) is atomic; a reader
 * checks it after reading, so it never returns data of a view that failed
 * meanwhile.
 * refs: the point-in-time export's connections and the control socket;
 * the last reference frees.  fleece_config.held is atomic.
 *
 * Crash rule: nothing here is persistent.  The frozen bitmaps (disabled,
 * in the image) are what a crash leaves; the store vanishes with the
 * process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <inttypes.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "server.h"
#include "nbd-protocol.h"
#include "arith.h"

/* Chunks copied with one read and one write at most (1 MiB). */
#define SAVE_RUN 16

struct view_disk {
  struct view_disk *next_on_disk;  /* disk->views (disk->gate) */
  struct nbd_disk *disk;
  struct fleece_config *fc;
  unsigned refs;                   /* atomic */
  pthread_rwlock_t rw;             /* the store's fd (see the note) */
  pthread_mutex_t save_lock;       /* savers: buf, held, reason */
  enum view_state state;           /* atomic */
  char reason[256];                /* why it failed (written once, before
                                      state turns failed) */
  int fd;                          /* the store; -1 once ended or failed */
  uint64_t nr_chunks;
  bool full;
  uint64_t *needed;                /* NULL when full */
  uint64_t *saved;                 /* atomic bits */
  uint64_t held;                   /* bytes in the store (atomic) */
  uint8_t *buf;                    /* SAVE_RUN chunks (save_lock) */
  unsigned test_read_delay_ms;     /* RAWTRACK_TEST_VIEW_READ_DELAY_MS */
  struct nbd_export exp;           /* EXPORT@CHECKPOINT */
  char *exp_name;
};

static bool
bit_get (const uint64_t *m, uint64_t i)
{
  return (__atomic_load_n (&m[i / 64], __ATOMIC_ACQUIRE) >> (i % 64)) & 1;
}

static void
bit_set_atomic (uint64_t *m, uint64_t i)
{
  __atomic_fetch_or (&m[i / 64], 1ull << (i % 64), __ATOMIC_RELEASE);
}

static bool
chunk_needed (const struct view_disk *vd, uint64_t i)
{
  return vd->full || ((vd->needed[i / 64] >> (i % 64)) & 1);
}

/* Mark the chunks an extent of a frozen bitmap covers. */
static int
mark_needed (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct view_disk *vd = opaque;
  uint64_t i;

  if (dirty && length)
    for (i = start / VIEW_CHUNK; i <= (start + length - 1) / VIEW_CHUNK; i++)
      vd->needed[i / 64] |= 1ull << (i % 64);
  return 0;
}

/* The store: a memfd, or a file in dir (default: beside the image)
 * unlinked at once. */
static int
open_store (struct view_disk *vd, const char *checkpoint, char *err,
            size_t errlen)
{
  struct fleece_config *fc = vd->fc;
  char path[4096];
  const char *base, *slash;
  int fd;

  if (fc->memory) {
    fd = memfd_create ("rawtrack-fleece", MFD_CLOEXEC);
    if (fd == -1)
      snprintf (err, errlen, "memfd_create: %s", strerror (errno));
    return fd;
  }
  slash = strrchr (vd->disk->path, '/');
  base = slash ? slash + 1 : vd->disk->path;
  if (fc->dir)
    snprintf (path, sizeof path, "%s/%s.fleece-%s", fc->dir, base,
              checkpoint);
  else
    snprintf (path, sizeof path, "%.*s%s.fleece-%s",
              slash ? (int) (slash - vd->disk->path + 1) : 0,
              vd->disk->path, base, checkpoint);
  /* Checkpoint names may hold '/': keep them inside the directory. */
  {
    char *p = strstr (path, ".fleece-") + strlen (".fleece-");

    for (; *p; p++)
      if (*p == '/')
        *p = '_';
  }
  fd = open (path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1) {
    snprintf (err, errlen, "fleecing file %s: %s", path, strerror (errno));
    return -1;
  }
  unlink (path);
  return fd;
}

struct view_disk *
view_disk_new (struct nbd_disk *disk, struct fleece_config *fc,
               const char *checkpoint, const char *export,
               char *const *frozen, size_t nr_frozen, bool full, char *err,
               size_t errlen)
{
  uint64_t size = rawtrack_image_virtual_size (disk->img);
  struct view_disk *vd = calloc (1, sizeof *vd);
  size_t words, k;

  if (!vd)
    goto nomem;
  vd->disk = disk;
  vd->fc = fc;
  vd->refs = 1;
  vd->fd = -1;
  vd->full = full;
  {
    pthread_rwlockattr_t a;

    /* A guest write waiting to save must not starve behind readers. */
    pthread_rwlockattr_init (&a);
    pthread_rwlockattr_setkind_np (&a,
                                   PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init (&vd->rw, &a);
    pthread_rwlockattr_destroy (&a);
  }
  pthread_mutex_init (&vd->save_lock, NULL);
  {
    /* Test hook (tests/interop/test-serve-live.sh part 8): wait this long
     * between finding chunks unsaved and reading them from the image, so
     * that a guest write can save and overwrite them meanwhile. */
    const char *d = getenv ("RAWTRACK_TEST_VIEW_READ_DELAY_MS");

    vd->test_read_delay_ms = d ? (unsigned) strtoul (d, NULL, 10) % 60000 : 0;
  }
  vd->nr_chunks = (size + VIEW_CHUNK - 1) / VIEW_CHUNK;
  words = (size_t) ((vd->nr_chunks + 63) / 64) + 1;
  vd->saved = calloc (words, sizeof (uint64_t));
  vd->buf = malloc (SAVE_RUN * VIEW_CHUNK);
  if (!vd->saved || !vd->buf)
    goto nomem;
  if (!full) {
    vd->needed = calloc (words, sizeof (uint64_t));
    if (!vd->needed)
      goto nomem;
    for (k = 0; k < nr_frozen; k++)
      if (rawtrack_bitmap_extents (disk->img, frozen[k], 0, size,
                                   mark_needed, vd) == -1) {
        snprintf (err, errlen, "bitmap %s: %s", frozen[k],
                  rawtrack_get_error ());
        goto fail;
      }
  }
  vd->fd = open_store (vd, checkpoint, err, errlen);
  if (vd->fd == -1)
    goto fail;

  if (asprintf (&vd->exp_name, "%s@%s", export, checkpoint) == -1) {
    vd->exp_name = NULL;
    goto nomem;
  }
  vd->exp.img = disk->img;
  vd->exp.name = vd->exp_name;
  vd->exp.description = NULL;
  vd->exp.size = size;
  vd->exp.readonly = true;
  vd->exp.all_local = true;
  vd->exp.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                   NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN |
                   NBD_FLAG_READ_ONLY;
  vd->exp.min_block = 1;
  vd->exp.pref_block = 4096;
  vd->exp.max_block = NBD_MAX_PAYLOAD;
  vd->exp.disk = NULL;             /* never written: no gate */
  vd->exp.view = vd;
  vd->exp.bitmaps = calloc (nr_frozen + 1, sizeof (char *));
  if (!vd->exp.bitmaps)
    goto nomem;
  for (k = 0; k < nr_frozen; k++) {
    vd->exp.bitmaps[k] = strdup (frozen[k]);
    if (!vd->exp.bitmaps[k])
      goto nomem;
    vd->exp.nr_bitmaps++;
  }
  return vd;

 nomem:
  snprintf (err, errlen, "out of memory");
 fail:
  if (vd)
    view_disk_unref (vd);
  return NULL;
}

void
view_disk_attach (struct view_disk *vd)
{
  vd->next_on_disk = vd->disk->views;
  vd->disk->views = vd;
}

void
view_disk_detach (struct view_disk *vd)
{
  struct view_disk **p;

  for (p = &vd->disk->views; *p; p = &(*p)->next_on_disk)
    if (*p == vd) {
      *p = vd->next_on_disk;
      vd->next_on_disk = NULL;
      return;
    }
}

/* Drop the store (vd->rw held exclusive). */
static void
drop_store (struct view_disk *vd)
{
  if (vd->fd >= 0)
    close (vd->fd);
  vd->fd = -1;
  __atomic_fetch_sub (&vd->fc->held,
                      __atomic_exchange_n (&vd->held, 0, __ATOMIC_RELAXED),
                      __ATOMIC_RELAXED);
}

void
view_disk_end (struct view_disk *vd)
{
  pthread_rwlock_wrlock (&vd->rw);
  __atomic_store_n (&vd->state, VIEW_ENDED, __ATOMIC_RELEASE);
  drop_store (vd);
  pthread_rwlock_unlock (&vd->rw);
}

void
view_disk_ref (struct view_disk *vd)
{
  __atomic_fetch_add (&vd->refs, 1, __ATOMIC_RELAXED);
}

void
view_disk_unref (struct view_disk *vd)
{
  size_t k;

  if (__atomic_sub_fetch (&vd->refs, 1, __ATOMIC_ACQ_REL) != 0)
    return;
  if (vd->fd >= 0) {
    close (vd->fd);
    __atomic_fetch_sub (&vd->fc->held, vd->held, __ATOMIC_RELAXED);
  }
  for (k = 0; k < vd->exp.nr_bitmaps; k++)
    free (vd->exp.bitmaps[k]);
  free (vd->exp.bitmaps);
  free (vd->exp_name);
  free (vd->needed);
  free (vd->saved);
  free (vd->buf);
  pthread_rwlock_destroy (&vd->rw);
  pthread_mutex_destroy (&vd->save_lock);
  free (vd);
}

/* The view cannot go on (vd->save_lock held, the view active): record
 * why and turn it failed; the caller drops the store once it has let go
 * of vd->rw. */
static void
fail_view (struct view_disk *vd, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
fail_view (struct view_disk *vd, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (vd->reason, sizeof vd->reason, fmt, ap);
  va_end (ap);
  nbd_error ("point-in-time export %s failed: %s", vd->exp_name, vd->reason);
  __atomic_store_n (&vd->state, VIEW_FAILED, __ATOMIC_RELEASE);
}

static bool
view_active (struct view_disk *vd)
{
  return __atomic_load_n (&vd->state, __ATOMIC_ACQUIRE) == VIEW_ACTIVE;
}

/* Does [first, last] hold a chunk that is needed and not saved? */
static bool
has_work (const struct view_disk *vd, uint64_t first, uint64_t last)
{
  uint64_t i;

  for (i = first; i <= last; i++)
    if (chunk_needed (vd, i) && !bit_get (vd->saved, i))
      return true;
  return false;
}

static void
save_range (struct view_disk *vd, uint64_t first, uint64_t last)
{
  uint64_t i, k, size = vd->exp.size;
  bool failed = false;

  pthread_mutex_lock (&vd->save_lock);
  pthread_rwlock_rdlock (&vd->rw);
  for (i = first; i <= last && view_active (vd); i = k) {
    uint64_t off = i * VIEW_CHUNK, len;
    uint64_t held;
    ssize_t w;

    k = i + 1;
    if (!chunk_needed (vd, i) || bit_get (vd->saved, i))
      continue;
    /* The run of chunks to save that starts here. */
    while (k <= last && k - i < SAVE_RUN && chunk_needed (vd, k) &&
           !bit_get (vd->saved, k))
      k++;
    len = k * VIEW_CHUNK > size ? size - off : (k - i) * VIEW_CHUNK;
    held = __atomic_add_fetch (&vd->fc->held, len, __ATOMIC_RELAXED);
    __atomic_add_fetch (&vd->held, len, __ATOMIC_RELAXED);
    if (held > vd->fc->limit) {
      fail_view (vd, "the fleecing store would exceed its limit of %"
                 PRIu64 " bytes (--fleece-limit)", vd->fc->limit);
      failed = true;
      break;
    }
    if (rawtrack_image_pread (vd->disk->img, vd->buf, len, off) == -1) {
      fail_view (vd, "reading the old data at offset %" PRIu64 ": %s", off,
                 rawtrack_get_error ());
      failed = true;
      break;
    }
    w = pwrite (vd->fd, vd->buf, len, (off_t) off);
    if (w != (ssize_t) len) {
      fail_view (vd, "writing the fleecing store at offset %" PRIu64 ": %s",
                 off, w < 0 ? strerror (errno) : "short write");
      failed = true;
      break;
    }
    for (; i < k; i++)
      bit_set_atomic (vd->saved, i);
  }
  pthread_rwlock_unlock (&vd->rw);
  pthread_mutex_unlock (&vd->save_lock);
  if (failed) {
    /* The readers in flight see the state and fail; then the store goes. */
    pthread_rwlock_wrlock (&vd->rw);
    drop_store (vd);
    pthread_rwlock_unlock (&vd->rw);
  }
}

void
disk_before_write (struct nbd_disk *disk, uint64_t offset, uint64_t count)
{
  struct view_disk *vd;
  uint64_t first, last;

  if (!disk || !disk->views || count == 0)
    return;
  first = offset / VIEW_CHUNK;
  last = (offset + count - 1) / VIEW_CHUNK;
  for (vd = disk->views; vd; vd = vd->next_on_disk) {
    if (last >= vd->nr_chunks)
      last = vd->nr_chunks - 1;
    if (__atomic_load_n (&vd->state, __ATOMIC_ACQUIRE) != VIEW_ACTIVE ||
        !has_work (vd, first, last))
      continue;
    save_range (vd, first, last);
  }
}

/* Read from the store (vd->rw held shared): 0 or an errno. */
static int
store_read (struct view_disk *vd, uint8_t *p, uint64_t n, uint64_t offset)
{
  uint64_t done = 0;

  if (vd->fd < 0)
    return EIO;
  while (done < n) {
    ssize_t r = pread (vd->fd, p + done, n - done, (off_t) (offset + done));

    if (r <= 0)
      return r < 0 ? errno : EIO;
    done += (uint64_t) r;
  }
  return 0;
}

int
view_disk_read (struct view_disk *vd, void *buf, uint64_t count,
                uint64_t offset)
{
  uint8_t *p = buf;
  uint64_t pos = offset, end = offset + count;
  int err = 0;

  pthread_rwlock_rdlock (&vd->rw);
  while (pos < end && view_active (vd)) {
    uint64_t i = pos / VIEW_CHUNK;
    bool saved = bit_get (vd->saved, i);
    uint64_t run_end = (i + 1) * VIEW_CHUNK;

    /* The run of chunks with the same source. */
    while (run_end < end && bit_get (vd->saved, run_end / VIEW_CHUNK) == saved)
      run_end += VIEW_CHUNK;
    if (run_end > end)
      run_end = end;
    if (!saved && vd->test_read_delay_ms)
      usleep (vd->test_read_delay_ms * 1000u);    /* test hook */
    if (saved)
      err = store_read (vd, p, run_end - pos, pos);
    else if (rawtrack_image_pread (vd->disk->img, p, run_end - pos, pos) == -1)
      err = rawtrack_get_errno () ? rawtrack_get_errno () : EIO;
    else {
      /* Chunks saved while the image was read may have been overwritten
       * under the read: their old data is in the store (see the note). */
      uint64_t c;

      for (c = pos / VIEW_CHUNK; !err && c * VIEW_CHUNK < run_end; c++)
        if (bit_get (vd->saved, c)) {
          uint64_t lo = MAX (pos, c * VIEW_CHUNK);
          uint64_t hi = MIN (run_end, (c + 1) * VIEW_CHUNK);

          err = store_read (vd, p + (lo - pos), hi - lo, lo);
        }
    }
    if (err)
      break;
    p += run_end - pos;
    pos = run_end;
  }
  if (!err && !view_active (vd))
    err = EIO;
  pthread_rwlock_unlock (&vd->rw);
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

enum view_state
view_disk_state (struct view_disk *vd, uint64_t *held, char *reason,
                 size_t len)
{
  enum view_state s;

  s = __atomic_load_n (&vd->state, __ATOMIC_ACQUIRE);
  *held = __atomic_load_n (&vd->held, __ATOMIC_RELAXED);
  if (reason)
    snprintf (reason, len, "%s", s == VIEW_FAILED ? vd->reason : "");
  return s;
}

struct nbd_export *
view_disk_export (struct view_disk *vd)
{
  return &vd->exp;
}
