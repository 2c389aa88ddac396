/* rawtrack - the image handle: open, close, information.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct rawtrack_image's life cycle (open, close) and the getters.
 * Guest reads are guest-read.c's, writes and flush guest-io.c's, the
 * header write-back qcow2-header.c's.
 *
 * Locking: img->lock is taken by every public entry point that touches
 * metadata; the internal qcow2_* functions expect it held.
 * Between processes: a read-write open by path holds QEMU's image locks
 * on both files until close (image_lock_file).
 *
 * Open sequence (each step validates what it reads, nothing is trusted):
 *   0. on a read-write open, take the image file's locks (before anything
 *      could be written);
 *   1. read cluster 0 and parse the header (qcow2-header.c);
 *   2. refuse what we cannot handle safely: encryption, unknown
 *      incompatible features, the corrupt bit or dirty refcounts on a
 *      writable open (unless RAWTRACK_OPEN_CHECK), raw external data
 *      without a data file;
 *   3. read the L1 table (bounded by QEMU's 32 MiB limit) and the
 *      refcount table (8 MiB limit);
 *   4. read the bitmap directory when autoclear bit 0 vouches for it;
 *   5. open the external data file (unless RAWTRACK_OPEN_NO_DATA_FILE),
 *      and lock it too on a read-write open;
 *   6. on a writable open, clear autoclear bits we do not implement (the
 *      rule every qcow2 writer must follow) and write the header.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>

#include "internal.h"
#include "bitmap.h"
#include "byteorder.h"
#include "arith.h"
#include "config.h"
#include "cleanup.h"

RAWTRACK_API const char *
rawtrack_version (void)
{
  return RAWTRACK_VERSION;
}

static void
image_free (struct rawtrack_image *img)
{
  int i;

  if (!img)
    return;
  for (i = 0; i < L2_CACHE_SLOTS; i++)
    free (img->l2_cache[i].entries);
  qcow2_refcount_free (img);
  bitmap_count_cache_free (img);
  bitmap_dir_free (&img->bitmaps);
  for (i = 0; i < (int) img->retired_names.len; i++)
    free (img->retired_names.ptr[i]);
  name_list_reset (&img->retired_names);
  free (img->l1);
  free (img->normal_map);
  qcow2_header_free (&img->h);
  backing_close (img);
  rawtrack_io_close (img->file);
  rawtrack_io_close (img->data);
  free (img->path);
  pthread_mutex_destroy (&img->lock);
  pthread_mutex_destroy (&img->track_init_lock);
  pthread_rwlock_destroy (&img->free_lock);
  pthread_rwlock_destroy (&img->guest_gate);
  free (img);
}

static int
load_bitmap_directory (struct rawtrack_image *img, uint64_t file_size)
{
  struct qcow2_header *h = &img->h;
  CLEANUP_FREE uint8_t *buf = NULL;

  if (!h->has_bitmaps_ext || h->version < 3 ||
      !(h->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
    return 0;     /* absent, or not vouched for: QEMU ignores it too */

  if (h->nb_bitmaps == 0 || h->nb_bitmaps > BME_MAX_BITMAPS)
    return set_corrupt ("bitmaps extension: %" PRIu32 " bitmaps (must be "
                        "1..65535)", h->nb_bitmaps);
  if (h->bitmap_dir_size == 0 || h->bitmap_dir_size > BME_MAX_DIR_SIZE)
    return set_corrupt ("bitmaps extension: directory size %" PRIu64
                        " is out of range", h->bitmap_dir_size);
  if (!IS_ALIGNED (h->bitmap_dir_offset, img->cluster_size) ||
      h->bitmap_dir_offset == 0)
    return set_corrupt ("bitmaps extension: directory offset 0x%" PRIx64
                        " is not cluster-aligned", h->bitmap_dir_offset);
  if (h->bitmap_dir_offset >= file_size + img->cluster_size ||
      h->bitmap_dir_size > file_size + img->cluster_size -
                           h->bitmap_dir_offset)
    return set_corrupt ("bitmap directory at offset %" PRIu64 " (%" PRIu64
                        " bytes) is past the end of the image file (%"
                        PRIu64 " bytes)", h->bitmap_dir_offset,
                        h->bitmap_dir_size, file_size);

  buf = rt_malloc (h->bitmap_dir_size);
  if (!buf)
    return -1;
  if (io_read (img->file, buf, h->bitmap_dir_size, h->bitmap_dir_offset,
               "bitmap directory") == -1 ||
      bitmap_dir_parse (buf, h->bitmap_dir_size, h->nb_bitmaps,
                        img->virtual_size, img->cluster_size,
                        h->bitmap_dir_offset, &img->bitmaps) == -1)
    return -1;
  img->bitmaps_trusted = true;
  return 0;
}

#define HEAD_READ (64u * 1024)

/* Does everything cluster 0 describes (extensions up to the end marker,
 * the backing file name) lie inside the first len bytes? */
static bool
header_fits (const uint8_t *buf, size_t len)
{
  uint64_t off, bfo = be64_load (buf + 8);
  uint32_t bfs = be32_load (buf + 16);

  if (bfo && bfo + bfs > len)
    return false;
  off = be32_load (buf + 4) == 2 ? QCOW2_V2_HEADER_LEN : be32_load (buf + 100);
  while (off + 8 <= len) {
    uint32_t type = be32_load (buf + off), elen = be32_load (buf + off + 4);

    if (type == QCOW2_EXT_END)
      return true;
    off += 8 + ROUND_UP ((uint64_t) elen, 8);
  }
  return false;
}

static int
image_setup (struct rawtrack_image *img)
{
  struct qcow2_header *h = &img->h;
  uint8_t first[QCOW2_V3_HEADER_LEN];
  CLEANUP_FREE uint8_t *c0 = NULL;
  int64_t fsize;
  uint64_t cs, need_l1, l2_span_bits, i, c0len;

  fsize = io_op_get_size (img->file);
  if (fsize == -1)
    return set_error (errno, "cannot get the size of the image file: %s",
                      strerror (errno));
  if (fsize < QCOW2_V2_HEADER_LEN)
    return set_error (EINVAL, "not a qcow2 image: the file is only %" PRId64
                      " bytes", fsize);
  if (io_read (img->file, first, sizeof first, 0, "image header") == -1)
    return -1;
  if (be32_load (first) != QCOW2_MAGIC)
    return set_error (EINVAL, "not a qcow2 image: bad magic 0x%08x at "
                      "offset 0", be32_load (first));
  {
    uint32_t bits = be32_load (first + 20);
    if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS)
      return set_corrupt ("cluster_bits %" PRIu32 " at offset 20 is out of "
                          "range (9..21: 512 B to 2 MiB)", bits);
    cs = 1ull << bits;
  }
  /* Cluster 0 holds the header, the extensions and the backing name; read
   * the first 64 KiB, and the rest of a larger cluster only when the
   * extensions or the name reach past that. */
  c0len = MIN (MIN (cs, (uint64_t) fsize), HEAD_READ);
  c0 = rt_malloc (cs);
  if (!c0)
    return -1;
  if (io_read (img->file, c0, c0len, 0, "cluster 0") == -1)
    return -1;
  if (c0len < MIN (cs, (uint64_t) fsize) && !header_fits (c0, c0len)) {
    c0len = MIN (cs, (uint64_t) fsize);
    if (io_read (img->file, c0, c0len, 0, "cluster 0") == -1)
      return -1;
  }
  if (qcow2_header_parse (c0, c0len, h) == -1)
    return -1;

  img->cluster_size = (uint32_t) cs;
  img->virtual_size = ROUND_DOWN (h->size, 512);
  img->ext_l2 = (h->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
  img->l2_entry_size = img->ext_l2 ? 16 : 8;
  img->l2_entries = (uint32_t) (cs / img->l2_entry_size);
  img->subcluster_bits = img->ext_l2 ? h->cluster_bits - 5 : h->cluster_bits;
  img->l1_size = h->l1_size;

  if (h->crypt_method != 0)
    return set_error (ENOTSUP, "encrypted images (crypt_method %" PRIu32
                      " at offset 32) are not supported", h->crypt_method);
  if (img->writable && !(img->flags & RAWTRACK_OPEN_CHECK)) {
    if (h->incompat & QCOW2_INCOMPAT_CORRUPT)
      return set_error (EROFS, "the image is marked corrupt (incompatible "
                        "bit 1); it can only be opened read-only, or "
                        "repaired with 'rawtrack check --repair'");
    if (h->incompat & QCOW2_INCOMPAT_DIRTY)
      return set_error (EROFS, "the image has dirty refcounts (lazy "
                        "refcounts after a crash); repair it with "
                        "'rawtrack check --repair' or 'qemu-img check -r "
                        "all' first");
  }
  if ((h->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) &&
      !(h->incompat & QCOW2_INCOMPAT_DATA_FILE) &&
      !(img->flags & (RAWTRACK_OPEN_NO_DATA_FILE | RAWTRACK_OPEN_CHECK)))
    return set_corrupt ("raw external data (autoclear bit 1) is set but the "
                        "image has no external data file");
  if (h->refcount_table_clusters == 0 && !(img->flags & RAWTRACK_OPEN_CHECK))
    return set_corrupt ("the image has no refcount table (offset 56 is 0)");

  /* L1: QEMU requires it to cover the virtual size. */
  l2_span_bits = h->cluster_bits + (63 - __builtin_clzll (img->l2_entries));
  /* Not DIV_ROUND_UP: that wraps for sizes near 2^64 (found by fuzzing). */
  need_l1 = (img->virtual_size >> l2_span_bits) +
            ((img->virtual_size & ((1ull << l2_span_bits) - 1)) != 0);
  if (h->l1_size < need_l1)
    return set_corrupt ("L1 table is too small: %" PRIu32 " entries (offset "
                        "36), the virtual size needs %" PRIu64, h->l1_size,
                        need_l1);
  if (h->l1_size) {
    if (h->l1_table_offset == 0 ||
        h->l1_table_offset >= (uint64_t) fsize + cs)
      return set_corrupt ("L1 table offset 0x%" PRIx64 " (offset 40) is "
                          "outside the image file (%" PRId64 " bytes)",
                          h->l1_table_offset, fsize);
    img->l1 = rt_malloc ((size_t) h->l1_size * 8);
    if (!img->l1 ||
        io_read (img->file, img->l1, (uint64_t) h->l1_size * 8,
                 h->l1_table_offset, "L1 table") == -1)
      return -1;
    for (i = 0; i < h->l1_size; i++)
      img->l1[i] = be64_load (&img->l1[i]);
  }

  if (h->refcount_table_clusters &&
      h->refcount_table_offset >= (uint64_t) fsize + cs)
    return set_corrupt ("refcount table offset 0x%" PRIx64 " (offset 48) is "
                        "outside the image file (%" PRId64 " bytes)",
                        h->refcount_table_offset, fsize);
  if (qcow2_refcount_init (img) == -1)
    return -1;
  if ((img->flags & RAWTRACK_OPEN_CHECK) && qcow2_refcount_load (img) == -1)
    return -1;
  if (load_bitmap_directory (img, (uint64_t) fsize) == -1)
    return -1;

  if (img->writable &&
      ((h->autoclear & ~QCOW2_AUTOCLEAR_KNOWN) ||
       (h->has_bitmaps_ext && !img->bitmaps_trusted))) {
    /* Unknown autoclear bits are cleared by every writer; an untrusted
     * bitmaps extension is dropped, as QEMU does (its clusters leak). */
    h->autoclear &= QCOW2_AUTOCLEAR_KNOWN;
    if (!img->bitmaps_trusted) {
      h->has_bitmaps_ext = false;
      h->nb_bitmaps = 0;
      h->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    }
    if (qcow2_write_header (img, true) == -1)
      return -1;
  }
  return 0;
}

RAWTRACK_API struct rawtrack_image *
rawtrack_image_open_io (struct rawtrack_io *file, struct rawtrack_io *data,
                        unsigned flags)
{
  struct rawtrack_image *img;

  rt_clear_error ();
  if (!file) {
    rawtrack_io_close (data);
    rt_set_error (EINVAL, "no image backend");
    return NULL;
  }
  img = rt_calloc (1, sizeof *img);
  if (!img) {
    rawtrack_io_close (file);
    rawtrack_io_close (data);
    return NULL;
  }
  pthread_mutex_init (&img->lock, NULL);
  pthread_mutex_init (&img->track_init_lock, NULL);
  pthread_rwlock_init (&img->free_lock, NULL);
  {
    pthread_rwlockattr_t a;

    /* A bitmap change must not wait behind a steady stream of writes. */
    pthread_rwlockattr_init (&a);
    pthread_rwlockattr_setkind_np (&a,
                                   PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init (&img->guest_gate, &a);
    pthread_rwlockattr_destroy (&a);
  }
  img->file = file;
  img->data = data;
  img->flags = flags;
  img->writable = (flags & RAWTRACK_OPEN_RDWR) != 0;
  if (image_setup (img) == -1)
    goto fail;
  if ((img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) &&
      (img->h.autoclear & QCOW2_AUTOCLEAR_DATA_RAW)) {
    img->nr_clusters = DIV_ROUND_UP (img->virtual_size, img->cluster_size);
    img->normal_map = rt_calloc (DIV_ROUND_UP (img->nr_clusters, 64) + 1, 8);
    if (!img->normal_map)
      goto fail;
  }
  if (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) {
    if (!data && !(flags & RAWTRACK_OPEN_NO_DATA_FILE)) {
      rt_set_error (EINVAL, "the image has an external data file but none "
                    "was given");
      goto fail;
    }
  }
  else if (data) {
    rt_set_error (EINVAL, "a data file was given, but the image has no "
                  "external data file (incompatible bit 2 is clear)");
    goto fail;
  }
  return img;

 fail:
  image_free (img);
  return NULL;
}

/* Image locking, QEMU's way (lib/io/io-file-lock.c): a writer holds
 * consistent read, write and resize on both files and denies write and
 * resize on both - what a VM writing such an image holds and denies - so
 * neither writes while the other has the image open, and nothing else
 * (qemu-io -f raw, qemu-img convert -n, qemu-nbd -f raw) writes the raw
 * disk behind the tracking.  (QEMU's data child shares what its user
 * shares, less resize: a guest device without share-rw shares no write,
 * so a VM denies write on the data file - bytes 201 and 203 - while
 * qemu-io and qemu-nbd, which share write at the top, hold only 203.)  Read-only opens take and test nothing (as
 * qemu-img -U does): rawtrack's readers never modify, and they work while
 * a VM runs.  RAWTRACK_OPEN_NO_LOCK or RAWTRACK_NO_LOCK=1 turn it off
 * (QEMU's locking=off), for file systems whose locks misbehave. */
#define WRITER_PERM (RAWTRACK_IO_PERM_READ | RAWTRACK_IO_PERM_WRITE | \
                     RAWTRACK_IO_PERM_RESIZE)
#define IMAGE_DENY  (RAWTRACK_IO_PERM_WRITE | RAWTRACK_IO_PERM_RESIZE)
#define DATA_DENY   (RAWTRACK_IO_PERM_WRITE | RAWTRACK_IO_PERM_RESIZE)

int
image_lock_file (struct rawtrack_io *io, unsigned flags, bool data,
                 const char *path)
{
  const char *env = getenv ("RAWTRACK_NO_LOCK");

  if (!(flags & RAWTRACK_OPEN_RDWR) || (flags & RAWTRACK_OPEN_NO_LOCK) ||
      (env && atoi (env) > 0))
    return 0;
  if (io_op_lock (io, WRITER_PERM, data ? DATA_DENY : IMAGE_DENY) == -1) {
    if (errno == EBUSY)
      set_error (EBUSY, "another program has the file open in a way that "
                 "conflicts with writing it (QEMU's image lock: is a VM, "
                 "qemu-nbd or another rawtrack using it?)");
    else
      set_error (errno, "locking the file: %s", strerror (errno));
    if (path)                          /* (else the caller names it) */
      rt_prefix_error ("%s%s: ", data ? "data file " : "", path);
    return -1;
  }
  return 0;
}

/* Whether two backends are the same file (device and inode). */
static bool
same_file (struct rawtrack_io *a, struct rawtrack_io *b)
{
  int fa = rawtrack_io_raw_fd (a), fb = rawtrack_io_raw_fd (b);
  struct stat sa, sb;

  return fa >= 0 && fb >= 0 && fstat (fa, &sa) == 0 && fstat (fb, &sb) == 0 &&
         sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

RAWTRACK_API struct rawtrack_image *
rawtrack_image_open (const char *path, unsigned flags, const char *data_file)
{
  return image_open_chain (path, flags, data_file, NULL, 0);
}

struct rawtrack_image *
image_open_chain (const char *path, unsigned flags, const char *data_file,
                  const struct chain_id *chain, unsigned depth)
{
  struct rawtrack_io *file;
  struct rawtrack_image *img;
  struct chain_id self = { 0 };
  unsigned ioflags = (flags & RAWTRACK_OPEN_RDWR) ? RAWTRACK_IO_RDWR
                                                   : RAWTRACK_IO_RDONLY;
  CLEANUP_FREE char *dpath = NULL;

  rt_clear_error ();
  if (!path) {
    rt_set_error (EINVAL, "no image path");
    return NULL;
  }
  file = rawtrack_io_file_open (path, ioflags);
  if (!file)
    return NULL;
  /* Before open_io, which may already write (autoclear bits). */
  if (image_lock_file (file, flags, false, NULL) == -1) {
    rawtrack_io_close (file);
    return NULL;
  }
  img = rawtrack_image_open_io (file, NULL,
                                flags | RAWTRACK_OPEN_NO_DATA_FILE);
  if (!img)
    return NULL;
  img->flags = flags;
  if (!(img->path = rt_strdup (path)))
    goto fail;

  if ((img->h.autoclear & QCOW2_AUTOCLEAR_DATA_RAW) &&
      !(img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) &&
      !(flags & (RAWTRACK_OPEN_NO_DATA_FILE | RAWTRACK_OPEN_CHECK))) {
    rt_set_error (RAWTRACK_ECORRUPT, "raw external data (autoclear bit 1) is "
                  "set but the image has no external data file");
    goto fail;
  }
  if (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) {
    if (!(flags & RAWTRACK_OPEN_NO_DATA_FILE) || data_file) {
      bool remote = false;

      if (data_file) {
        remote = rawtrack_is_nbd_uri (data_file);   /* typed: allowed */
        if (!remote && datafile_name_is_special (data_file) &&
            access (data_file, F_OK) != 0) {
          rt_set_error (EINVAL, "data file '%s': only NBD URIs (nbd://, "
                        "nbds://, nbd+unix://, nbds+unix://) and local "
                        "paths are opened", data_file);
          goto fail;
        }
        dpath = rt_strdup (data_file);
      }
      else if (img->h.data_file && rawtrack_is_nbd_uri (img->h.data_file)) {
        if (!datafile_remote_allowed (flags)) {
          rt_set_error (EPERM, "the image names a remote data file '%s': "
                        "rawtrack connects to it only when allowed "
                        "(--allow-remote, or RAWTRACK_ALLOW_REMOTE=1), or "
                        "give the data file with --data-file",
                        img->h.data_file);
          goto fail;
        }
        dpath = rt_strdup (img->h.data_file);
        remote = true;
      }
      else if (img->h.data_file)
        dpath = datafile_resolve (path, img->h.data_file);
      else {
        rt_set_error (EINVAL, "the image has an external data file but does "
                      "not name it; give it with --data-file");
        goto fail;
      }
      if (!dpath)
        goto fail;
      /* A block device is taken only from the caller, never from the
       * (untrusted) image alone. */
      img->data = remote ? io_nbd_open (dpath, ioflags, true)
                         : rawtrack_io_file_open (dpath, ioflags |
                                                  (data_file ||
                                                   (flags & RAWTRACK_OPEN_ALLOW_DEVICE)
                                                   ? 0 : RAWTRACK_IO_NO_DEVICE));
      if (!img->data) {
        rt_prefix_error ("cannot open the data file: ");
        goto fail;
      }
      /* Before the lock, whose conflict with our own image lock would
       * blame "another program". */
      if (same_file (img->file, img->data)) {
        if (data_file)
          rt_set_error (EINVAL, "the data file given, %s, is the image file "
                        "itself: a qcow2 file cannot be its own raw disk",
                        data_file);
        else
          rt_set_error (EINVAL, "the image names itself as its data file "
                        "('%s'): a qcow2 file cannot be its own raw disk; "
                        "give the raw disk with --data-file",
                        img->h.data_file);
        goto fail;
      }
      if (image_lock_file (img->data, flags, true, dpath) == -1)
        goto fail;
    }
  }
  else if (data_file) {
    rt_set_error (EINVAL, "--data-file given, but the image has no external "
                  "data file");
    goto fail;
  }
  /* Writes that bypassed rawtrack: compare and renew the data file's
   * recorded identity (datafile-id.c), before any guest write. */
  if (img->writable && img->data && dataid_open (img) == -1)
    goto fail;
  /* The backing chain, for reading (backing.c); the top layer starts the
   * list of files seen. */
  if (img->h.backing_file &&
      !(flags & (RAWTRACK_OPEN_NO_BACKING | RAWTRACK_OPEN_NO_DATA_FILE |
                 RAWTRACK_OPEN_CHECK))) {
    if (!chain) {
      struct stat st;
      int fd = rawtrack_io_raw_fd (img->file);

      if (fd >= 0 && fstat (fd, &st) == 0) {
        self.dev = st.st_dev;
        self.ino = st.st_ino;
      }
      chain = &self;
    }
    if (backing_open (img, path, flags, chain, depth) == -1)
      goto fail;
  }
  return img;

 fail:
  image_free (img);
  return NULL;
}

RAWTRACK_API int
rawtrack_image_close (struct rawtrack_image *img)
{
  char first[1024];
  int r = 0, first_errno = 0;
  bool stop_failed = false;

  if (!img)
    return 0;
  rt_clear_error ();
  /* The flush clears the error state as every call does: a track_stop
   * failure is kept across it (and reported, as the first failure, even
   * when the flush fails too). */
  if (img->track && track_stop (img) == -1) {
    r = -1;
    stop_failed = true;
    first_errno = rawtrack_get_errno () ? rawtrack_get_errno () : EIO;
    snprintf (first, sizeof first, "%s",
              rawtrack_get_error () ? rawtrack_get_error ()
                                    : "stopping tracking failed");
  }
  if (img->writable && rawtrack_image_flush (img) == -1)
    r = -1;
  /* A clean close records the data file as it is now (datafile-id.c). */
  if (r == 0 && img->writable && img->data && dataid_close (img) == -1)
    r = -1;
  image_free (img);
  if (stop_failed)
    rt_set_error (first_errno, "%s", first);
  return r;
}

/* ---- information ---------------------------------------------------- */

RAWTRACK_API uint64_t
rawtrack_image_virtual_size (struct rawtrack_image *img)
{
  return img->virtual_size;
}

RAWTRACK_API uint32_t
rawtrack_image_cluster_size (struct rawtrack_image *img)
{
  return img->cluster_size;
}

RAWTRACK_API int
rawtrack_image_version (struct rawtrack_image *img)
{
  return (int) img->h.version;
}

RAWTRACK_API int
rawtrack_image_refcount_bits (struct rawtrack_image *img)
{
  return 1 << img->h.refcount_order;
}

RAWTRACK_API const char *
rawtrack_image_data_file (struct rawtrack_image *img)
{
  return (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) ? img->h.data_file
                                                      : NULL;
}

RAWTRACK_API int
rawtrack_image_has_data_file (struct rawtrack_image *img)
{
  return (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

RAWTRACK_API int
rawtrack_image_data_file_raw (struct rawtrack_image *img)
{
  return (img->h.autoclear & QCOW2_AUTOCLEAR_DATA_RAW) != 0;
}

RAWTRACK_API int
rawtrack_image_is_dirty (struct rawtrack_image *img)
{
  return (img->h.incompat & QCOW2_INCOMPAT_DIRTY) != 0;
}

RAWTRACK_API int
rawtrack_image_is_corrupt (struct rawtrack_image *img)
{
  return (img->h.incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
}

RAWTRACK_API int
rawtrack_image_extended_l2 (struct rawtrack_image *img)
{
  return img->ext_l2;
}

RAWTRACK_API int
rawtrack_image_lazy_refcounts (struct rawtrack_image *img)
{
  return (img->h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
}

RAWTRACK_API const char *
rawtrack_image_compression_type (struct rawtrack_image *img)
{
  return img->h.compression_type == 1 ? "zstd" : "zlib";
}

RAWTRACK_API const char *
rawtrack_image_backing_file (struct rawtrack_image *img)
{
  return img->h.backing_file;
}

RAWTRACK_API const char *
rawtrack_image_backing_format (struct rawtrack_image *img)
{
  return img->h.backing_file ? img->h.backing_format : NULL;
}

RAWTRACK_API int64_t
rawtrack_image_file_size (struct rawtrack_image *img)
{
  struct stat st;

  if (img->path && stat (img->path, &st) == 0 && S_ISREG (st.st_mode))
    return (int64_t) st.st_blocks * 512;
  return io_op_get_size (img->file);
}

RAWTRACK_API uint64_t
rawtrack_image_incompatible_features (struct rawtrack_image *img)
{
  return img->h.incompat;
}

RAWTRACK_API uint64_t
rawtrack_image_compatible_features (struct rawtrack_image *img)
{
  return img->h.compat;
}

RAWTRACK_API uint64_t
rawtrack_image_autoclear_features (struct rawtrack_image *img)
{
  return img->h.autoclear;
}

/* The directory getters take img->lock: a bitmap operation on another
 * thread may replace the directory meanwhile.  A name handed out stays
 * valid until close (bitmap-update.c keeps lent names). */
RAWTRACK_API int
rawtrack_image_bitmap_count (struct rawtrack_image *img)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);

  return (int) img->bitmaps.nr;
}

RAWTRACK_API const char *
rawtrack_image_bitmap_name (struct rawtrack_image *img, int i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);

  if (i < 0 || (uint32_t) i >= img->bitmaps.nr)
    return NULL;
  img->bitmaps.entries[i].lent = true;
  return img->bitmaps.entries[i].name;
}

RAWTRACK_API uint64_t
rawtrack_image_bitmap_granularity (struct rawtrack_image *img, int i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);

  if (i < 0 || (uint32_t) i >= img->bitmaps.nr)
    return 0;
  return 1ull << img->bitmaps.entries[i].granularity_bits;
}

RAWTRACK_API uint32_t
rawtrack_image_bitmap_flags (struct rawtrack_image *img, int i)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);

  if (i < 0 || (uint32_t) i >= img->bitmaps.nr)
    return 0;
  return img->bitmaps.entries[i].flags;
}
