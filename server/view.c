/* rawtrack - NBD server: point-in-time views and copy-before-write.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct view_disk, one disk as it was at a checkpoint while the
 * guest keeps writing (docs/control.md), and its fleecing store.
 *
 * The disk is cut into chunks of vd->chunk bytes: 4 KiB, or the smallest
 * power of two that keeps the count under VIEW_MAX_CHUNKS (512 GiB and
 * less: 4 KiB; 16 TiB: 128 KiB), so a small guest write copies little.
 * Per-chunk bits, all fixed size and allocated with the view:
 *   needed  (fixed at the checkpoint) the chunks the view serves: for an
 *           incremental view those one of the frozen bitmaps marks; for a
 *           full view those holding data at the checkpoint (not a hole or
 *           zeros in the image: a full view reads the rest as zeros and
 *           reports it as a hole in base:allocation);
 *   claimed a saver owns the copy of the chunk (set once, never cleared);
 *   saved   its old data is in the store (set once, after the copy);
 *   done    (read-once views only, `"read_once": true` of backup-begin)
 *           a read of the export covered the whole chunk: its one reader
 *           has it, so guest writes no longer save it and its saved copy
 *           is dropped; a later read of it fails (EIO).
 * The store is a sparse file (unlinked at once, so a crash leaves nothing)
 * or a memfd, laid out like the disk: chunk i at offset i * chunk, so no
 * map is needed and what it holds is exactly the saved chunks.  It is
 * scratch: never synced.
 *
 * Copy-before-write (disk_before_write, under disk->gate shared, before
 * the guest write): for each view, every chunk of the write that is
 * needed, not saved and not done is claimed (an atomic fetch-or on its
 * claimed bit).  The chunks this writer claimed are read from the image
 * (their old data: no write to them has happened since the checkpoint,
 * since every such write comes here first and waits for the save) and
 * written to the store in runs of up to SAVE_RUN bytes, then marked
 * saved.  Then it waits for the chunks of its range that other writers
 * claimed (vd->wait_cond) until they are saved or the view failed.  So
 * writes to different chunks save in parallel, and a write waits only for
 * its own chunks; a writer first saves everything it claimed, then waits,
 * so no two writers wait for each other.
 *
 * Locking.  vd->rw guards the store's fd: readers and savers hold it
 * shared while they use it; only dropping the store (the view failed or
 * ended) takes it exclusive.  vd->wait_lock and vd->wait_cond only carry
 * the wake-ups of writers waiting for another's save (vd->waiters counts
 * them, so a saver with nobody waiting takes no lock).
 *
 * Why a reader needs no lock against savers: a guest write to a chunk
 * starts only after the chunk's `saved` bit is set (the saver sets it,
 * with release, after the old data is in the store) or its `done` bit is
 * set (after the one reader has returned its data).  A reader reads the
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

/* Bytes copied with one read and one write at most. */
#define SAVE_RUN (1u << 20)

struct view_disk {
  struct view_disk *next_on_disk;  /* disk->views (disk->gate) */
  struct nbd_disk *disk;
  struct fleece_config *fc;
  unsigned refs;                   /* atomic */
  pthread_rwlock_t rw;             /* the store's fd (see the note) */
  pthread_mutex_t wait_lock;       /* with wait_cond: wake-ups only */
  pthread_cond_t wait_cond;
  unsigned waiters;                /* writers waiting (atomic) */
  enum view_state state;           /* atomic */
  pthread_mutex_t reason_lock;     /* the first failure wins */
  char reason[256];                /* why it failed (written once, before
                                      state turns failed) */
  int fd;                          /* the store; -1 once ended or failed */
  unsigned shift;                  /* chunk = 1 << shift */
  uint64_t chunk;
  uint64_t nr_chunks;
  bool full;
  bool read_once;                  /* atomic; set by backup-begin */
  uint64_t *needed;                /* fixed at the checkpoint */
  uint64_t *claimed, *saved, *done;  /* atomic bits */
  uint64_t held;                   /* bytes in the store (atomic) */
  uint64_t saved_total;            /* bytes ever saved (atomic) */
  unsigned test_read_delay_ms;     /* RAWTRACK_TEST_VIEW_READ_DELAY_MS */
  struct nbd_export exp;           /* EXPORT@CHECKPOINT */
  char *exp_name;
};

static bool
bit_get (const uint64_t *m, uint64_t i)
{
  return (__atomic_load_n (&m[i / 64], __ATOMIC_ACQUIRE) >> (i % 64)) & 1;
}

/* Set bit i; true if this call set it (it was clear). */
static bool
bit_set_atomic (uint64_t *m, uint64_t i)
{
  uint64_t b = 1ull << (i % 64);

  /* Sequentially consistent: a saver sets `saved` then loads
   * vd->waiters; a waiter adds itself then loads `saved` (wake_waiters). */
  return !(__atomic_fetch_or (&m[i / 64], b, __ATOMIC_SEQ_CST) & b);
}

static bool
chunk_needed (const struct view_disk *vd, uint64_t i)
{
  return (vd->needed[i / 64] >> (i % 64)) & 1;
}

/* Does a guest write to chunk i still have to save it? */
static bool
chunk_pending (const struct view_disk *vd, uint64_t i)
{
  return chunk_needed (vd, i) && !bit_get (vd->saved, i) &&
    !bit_get (vd->done, i);
}

/* Mark the chunks of [start, start + length) needed. */
static void
mark_range (struct view_disk *vd, uint64_t start, uint64_t length)
{
  uint64_t i;

  if (length)
    for (i = start >> vd->shift; i <= (start + length - 1) >> vd->shift; i++)
      vd->needed[i / 64] |= 1ull << (i % 64);
}

/* An extent of a frozen bitmap. */
static int
mark_needed (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  if (dirty)
    mark_range (opaque, start, length);
  return 0;
}

/* A full view: the chunks holding data at the checkpoint (block status of
 * the image; what reads as zeros is not needed).  0 or -1. */
static int
mark_allocated (struct view_disk *vd, uint64_t size)
{
  uint64_t pos = 0;

  while (pos < size) {
    unsigned st = 0;
    int64_t len = rawtrack_image_block_status (vd->disk->img, pos,
                                               size - pos, &st);

    if (len <= 0)
      return -1;
    if (!(st & RAWTRACK_STATUS_ZERO))
      mark_range (vd, pos, (uint64_t) len);
    pos += (uint64_t) len;
  }
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
  pthread_mutex_init (&vd->wait_lock, NULL);
  pthread_cond_init (&vd->wait_cond, NULL);
  pthread_mutex_init (&vd->reason_lock, NULL);
  {
    /* Test hook (tests/interop/test-serve-live.sh part 8): wait this long
     * between finding chunks unsaved and reading them from the image, so
     * that a guest write can save and overwrite them meanwhile. */
    const char *d = getenv ("RAWTRACK_TEST_VIEW_READ_DELAY_MS");

    vd->test_read_delay_ms = d ? (unsigned) strtoul (d, NULL, 10) % 60000 : 0;
  }
  vd->shift = VIEW_CHUNK_MIN_SHIFT;
  while (((size - 1) >> vd->shift) >= VIEW_MAX_CHUNKS)
    vd->shift++;
  vd->chunk = 1ull << vd->shift;
  vd->nr_chunks = (size + vd->chunk - 1) >> vd->shift;
  words = (size_t) ((vd->nr_chunks + 63) / 64) + 1;
  vd->needed = calloc (words, sizeof (uint64_t));
  vd->claimed = calloc (words, sizeof (uint64_t));
  vd->saved = calloc (words, sizeof (uint64_t));
  vd->done = calloc (words, sizeof (uint64_t));
  if (!vd->needed || !vd->claimed || !vd->saved || !vd->done)
    goto nomem;
  if (full) {
    if (size && mark_allocated (vd, size) == -1) {
      snprintf (err, errlen, "block status: %s", rawtrack_get_error ());
      goto fail;
    }
  }
  else
    for (k = 0; k < nr_frozen; k++)
      if (rawtrack_bitmap_extents (disk->img, frozen[k], 0, size,
                                   mark_needed, vd) == -1) {
        snprintf (err, errlen, "bitmap %s: %s", frozen[k],
                  rawtrack_get_error ());
        goto fail;
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
  free (vd->claimed);
  free (vd->saved);
  free (vd->done);
  pthread_rwlock_destroy (&vd->rw);
  pthread_mutex_destroy (&vd->wait_lock);
  pthread_cond_destroy (&vd->wait_cond);
  pthread_mutex_destroy (&vd->reason_lock);
  free (vd);
}

/* Wake the writers waiting for a save (or for the view to fail). */
static void
wake_waiters (struct view_disk *vd)
{
  if (__atomic_load_n (&vd->waiters, __ATOMIC_SEQ_CST) == 0)
    return;
  pthread_mutex_lock (&vd->wait_lock);
  pthread_cond_broadcast (&vd->wait_cond);
  pthread_mutex_unlock (&vd->wait_lock);
}

/* The view cannot go on: record why (the first reason wins) and turn it
 * failed; the caller drops the store once it has let go of vd->rw. */
static void
fail_view (struct view_disk *vd, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
fail_view (struct view_disk *vd, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&vd->reason_lock);
  if (__atomic_load_n (&vd->state, __ATOMIC_ACQUIRE) == VIEW_ACTIVE) {
    va_start (ap, fmt);
    vsnprintf (vd->reason, sizeof vd->reason, fmt, ap);
    va_end (ap);
    nbd_error ("point-in-time export %s failed: %s", vd->exp_name,
               vd->reason);
    __atomic_store_n (&vd->state, VIEW_FAILED, __ATOMIC_SEQ_CST);
  }
  pthread_mutex_unlock (&vd->reason_lock);
  wake_waiters (vd);
}

static bool
view_active (struct view_disk *vd)
{
  return __atomic_load_n (&vd->state, __ATOMIC_ACQUIRE) == VIEW_ACTIVE;
}

/* Does [first, last] hold a chunk a guest write must save first? */
static bool
has_work (const struct view_disk *vd, uint64_t first, uint64_t last)
{
  uint64_t i;

  for (i = first; i <= last; i++)
    if (chunk_pending (vd, i))
      return true;
  return false;
}

/* Copy chunks [i, k) (claimed by this caller) to the store.  vd->rw held
 * shared.  0, or -1 once the view failed. */
static int
save_run (struct view_disk *vd, uint64_t i, uint64_t k, uint8_t **buf)
{
  uint64_t off = i << vd->shift, size = vd->exp.size;
  uint64_t len = (k << vd->shift) > size ? size - off : (k - i) << vd->shift;
  uint64_t held;
  ssize_t w;

  held = __atomic_add_fetch (&vd->fc->held, len, __ATOMIC_RELAXED);
  __atomic_add_fetch (&vd->held, len, __ATOMIC_RELAXED);
  if (held > vd->fc->limit) {
    fail_view (vd, "the fleecing store would exceed its limit of %" PRIu64
               " bytes (--fleece-limit)", vd->fc->limit);
    return -1;
  }
  if (!*buf) {
    *buf = malloc (SAVE_RUN);
    if (!*buf) {
      fail_view (vd, "out of memory saving the old data at offset %" PRIu64,
                 off);
      return -1;
    }
  }
  if (rawtrack_image_pread (vd->disk->img, *buf, len, off) == -1) {
    fail_view (vd, "reading the old data at offset %" PRIu64 ": %s", off,
               rawtrack_get_error ());
    return -1;
  }
  w = pwrite (vd->fd, *buf, len, (off_t) off);
  if (w != (ssize_t) len) {
    fail_view (vd, "writing the fleecing store at offset %" PRIu64 ": %s",
               off, w < 0 ? strerror (errno) : "short write");
    return -1;
  }
  __atomic_add_fetch (&vd->saved_total, len, __ATOMIC_RELAXED);
  for (; i < k; i++)
    bit_set_atomic (vd->saved, i);
  wake_waiters (vd);
  return 0;
}

/* Save what [first, last] still needs: claim, copy the own claims, wait
 * for the others'. */
static void
save_range (struct view_disk *vd, uint64_t first, uint64_t last)
{
  uint64_t run_chunks = SAVE_RUN >> vd->shift, i, k;
  uint8_t *buf = NULL;
  bool failed = false, others = false;

  if (run_chunks == 0)
    run_chunks = 1;
  pthread_rwlock_rdlock (&vd->rw);
  for (i = first; i <= last && view_active (vd); i = k) {
    k = i + 1;
    if (!chunk_pending (vd, i))
      continue;
    if (!bit_set_atomic (vd->claimed, i)) {
      others = true;               /* another writer saves it */
      continue;
    }
    /* The run of chunks this writer claims from here. */
    while (k <= last && k - i < run_chunks && chunk_pending (vd, k) &&
           bit_set_atomic (vd->claimed, k))
      k++;
    if (save_run (vd, i, k, &buf) == -1) {
      failed = true;
      break;
    }
  }
  pthread_rwlock_unlock (&vd->rw);
  free (buf);
  if (failed) {
    /* The readers in flight see the state and fail; then the store goes. */
    pthread_rwlock_wrlock (&vd->rw);
    drop_store (vd);
    pthread_rwlock_unlock (&vd->rw);
    return;
  }
  if (!others)
    return;
  /* Wait for the chunks other writers claimed. */
  __atomic_add_fetch (&vd->waiters, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_lock (&vd->wait_lock);
  for (i = first; i <= last && view_active (vd);)
    if (chunk_pending (vd, i))
      pthread_cond_wait (&vd->wait_cond, &vd->wait_lock);
    else
      i++;
  pthread_mutex_unlock (&vd->wait_lock);
  __atomic_sub_fetch (&vd->waiters, 1, __ATOMIC_SEQ_CST);
}

void
disk_before_write (struct nbd_disk *disk, uint64_t offset, uint64_t count)
{
  struct view_disk *vd;

  if (!disk || !disk->views || count == 0)
    return;
  for (vd = disk->views; vd; vd = vd->next_on_disk) {
    uint64_t first = offset >> vd->shift;
    uint64_t last = (offset + count - 1) >> vd->shift;

    if (last >= vd->nr_chunks)
      last = vd->nr_chunks - 1;
    if (first > last || !view_active (vd) || !has_work (vd, first, last))
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

/* Where chunk i is read from. */
enum source { SRC_IMAGE, SRC_STORE, SRC_ZERO };

static enum source
chunk_source (const struct view_disk *vd, uint64_t i)
{
  if (bit_get (vd->saved, i))
    return SRC_STORE;
  if (vd->full && !chunk_needed (vd, i))
    return SRC_ZERO;
  return SRC_IMAGE;
}

/* A read-once view: [offset, offset + count) has been returned to its
 * reader; mark the chunks it covered whole done and give back the store
 * space of the saved ones (vd->rw held shared). */
static void
mark_done (struct view_disk *vd, uint64_t offset, uint64_t count)
{
  uint64_t i = (offset + vd->chunk - 1) >> vd->shift;
  uint64_t end = (offset + count) >> vd->shift;  /* exclusive */

  if (offset + count == vd->exp.size)
    end = vd->nr_chunks;           /* the last, short chunk */
  for (; i < end; i++) {
    uint64_t off, len;

    if (!bit_set_atomic (vd->done, i) || !bit_get (vd->saved, i) ||
        vd->fd < 0)
      continue;
    off = i << vd->shift;
    len = MIN (vd->chunk, vd->exp.size - off);
    if (fallocate (vd->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                   (off_t) off, (off_t) len) == 0) {
      __atomic_fetch_sub (&vd->held, len, __ATOMIC_RELAXED);
      __atomic_fetch_sub (&vd->fc->held, len, __ATOMIC_RELAXED);
    }
  }
}

int
view_disk_read (struct view_disk *vd, void *buf, uint64_t count,
                uint64_t offset)
{
  uint8_t *p = buf;
  uint64_t pos = offset, end = offset + count, c;
  bool once = __atomic_load_n (&vd->read_once, __ATOMIC_ACQUIRE);
  int err = 0;

  pthread_rwlock_rdlock (&vd->rw);
  if (once && count)
    for (c = offset >> vd->shift; c <= (end - 1) >> vd->shift; c++)
      if (bit_get (vd->done, c)) {
        nbd_error ("point-in-time export %s: offset %" PRIu64 " read "
                   "again, but the view is read-once (its one reader has "
                   "had it)", vd->exp_name, c << vd->shift);
        err = EIO;
        goto out;
      }
  while (pos < end && view_active (vd)) {
    uint64_t i = pos >> vd->shift;
    enum source src = chunk_source (vd, i);
    uint64_t run_end = (i + 1) << vd->shift;

    /* The run of chunks with the same source. */
    while (run_end < end && chunk_source (vd, run_end >> vd->shift) == src)
      run_end += vd->chunk;
    if (run_end > end)
      run_end = end;
    if (src != SRC_STORE && vd->test_read_delay_ms)
      usleep (vd->test_read_delay_ms * 1000u);    /* test hook */
    if (src == SRC_STORE)
      err = store_read (vd, p, run_end - pos, pos);
    else if (src == SRC_ZERO)
      memset (p, 0, run_end - pos);
    else if (rawtrack_image_pread (vd->disk->img, p, run_end - pos, pos) == -1)
      err = rawtrack_get_errno () ? rawtrack_get_errno () : EIO;
    if (!err && src == SRC_IMAGE)
      /* Chunks saved while the image was read may have been overwritten
       * under the read: their old data is in the store (see the note). */
      for (c = pos >> vd->shift; !err && (c << vd->shift) < run_end; c++)
        if (bit_get (vd->saved, c)) {
          uint64_t lo = MAX (pos, c << vd->shift);
          uint64_t hi = MIN (run_end, (c + 1) << vd->shift);

          err = store_read (vd, p + (lo - pos), hi - lo, lo);
        }
    if (err)
      break;
    p += run_end - pos;
    pos = run_end;
  }
  if (!err && !view_active (vd))
    err = EIO;
  if (!err && once)
    mark_done (vd, offset, count);
 out:
  pthread_rwlock_unlock (&vd->rw);
  if (err) {
    errno = err;
    return -1;
  }
  return 0;
}

void
view_disk_set_read_once (struct view_disk *vd)
{
  __atomic_store_n (&vd->read_once, true, __ATOMIC_RELEASE);
}

int64_t
view_disk_status (struct view_disk *vd, uint64_t offset, uint64_t count,
                  bool *zero)
{
  uint64_t i = offset >> vd->shift, end = offset + count, run_end;
  bool z;

  if (!vd->full) {
    *zero = false;                 /* see docs/control.md: data everywhere */
    return (int64_t) count;
  }
  z = !chunk_needed (vd, i);
  run_end = (i + 1) << vd->shift;
  while (run_end < end && !chunk_needed (vd, run_end >> vd->shift) == z)
    run_end += vd->chunk;
  *zero = z;
  return (int64_t) (MIN (run_end, end) - offset);
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

uint64_t
view_disk_saved_total (struct view_disk *vd)
{
  return __atomic_load_n (&vd->saved_total, __ATOMIC_RELAXED);
}

struct nbd_export *
view_disk_export (struct view_disk *vd)
{
  return &vd->exp;
}
