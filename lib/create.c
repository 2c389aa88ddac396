/* rawtrack - creating images: `create` and `attach`.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: laying out a new qcow2 file in one pass, and the two public ways
 * to ask for one: a new empty image, and a metadata container around an
 * existing raw disk.
 *
 * Layout (cluster indexes): 0 header, then the refcount table, the
 * refcount blocks, the L1 table and - for raw external data - every L2
 * table, each L2 entry mapping guest cluster g to data-file offset g
 * (COPIED set: refcount 1 is implicit for data-file clusters).  The
 * refcount blocks count exactly the clusters of this layout.
 *
 * Crash and failure rules:
 *  - The image is written to a temporary file beside the target, flushed,
 *    and renamed into place (RENAME_NOREPLACE unless forced), so a failed
 *    or interrupted create leaves no image and never a half-written one.
 *  - attach opens the raw file read-only and only asks for its size: the
 *    raw data is never written.  The raw file and the target are refused
 *    when they are the same file.
 *
 * Locking: none; the new image is private until renamed into place.
 */
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <limits.h>
#include <sys/stat.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

struct layout_params {
  uint64_t size;            /* virtual size, multiple of 512 */
  uint32_t cluster_bits;
  uint32_t refcount_order;
  uint32_t version;
  const char *data_file;    /* stored name, or NULL */
  bool data_raw;            /* set autoclear bit 1 and map every cluster */
};

#define WRITE_CHUNK (8u * 1024 * 1024)

static int
check_cluster_size (uint32_t cs, uint32_t *bits)
{
  if (!is_power_of_2 (cs) || cs < 512 || cs > 2 * 1024 * 1024)
    return set_error (EINVAL, "invalid cluster size %" PRIu32 ": it must be "
                      "a power of two from 512 bytes to 2 MiB", cs);
  *bits = (uint32_t) log2_u64 (cs);
  return 0;
}

/* Refuse, before anything is written, a cluster size whose cluster 0
 * could not hold rawtrack's tracking log beside the header, the data file
 * name, a bitmaps extension and the data file record (track-log.c): every
 * tracked write would fail later.  v2 images hold no bitmaps. */
static int
check_track_room (const struct layout_params *p, const char *what)
{
  struct qcow2_header h;
  size_t cs = (size_t) 1 << p->cluster_bits, other;
  int64_t room;

  if (p->version < 3)
    return 0;
  memset (&h, 0, sizeof h);
  h.version = p->version;
  h.cluster_bits = p->cluster_bits;
  if (p->data_file) {
    h.incompat |= QCOW2_INCOMPAT_DATA_FILE;
    h.data_file = (char *) p->data_file;
  }
  room = track_log_room (&h, cs, true, &other);
  if (room == -1)
    return -1;
  if (room < TRACK_LOG_MIN)
    return track_log_no_room (&h, cs, other, what);
  return 0;
}

/* Write the whole image described by p to an empty backend. */
static int
write_layout (struct rawtrack_io *io, const struct layout_params *p)
{
  const uint64_t cs = 1ull << p->cluster_bits;
  const uint32_t refbits = 1u << p->refcount_order;
  const uint64_t E = cs * 8 / refbits;
  const uint64_t l2_entries = cs / 8;
  uint64_t nclusters = DIV_ROUND_UP (p->size, cs);
  uint64_t l1_size = DIV_ROUND_UP (nclusters, l2_entries);
  uint64_t l1c = MAX (1, DIV_ROUND_UP (l1_size * 8, cs));
  uint64_t l2c = p->data_raw ? l1_size : 0;
  uint64_t rt = 1, rb = 1, total, i, j, off;
  uint64_t rt_off, rb_off, l1_off, l2_off, used;
  struct qcow2_header h;
  CLEANUP_FREE uint8_t *buf = NULL;

  if (l1_size * 8 > QCOW2_MAX_L1_BYTES)
    return set_error (EFBIG, "a %" PRIu64 "-byte disk needs an L1 table of %"
                      PRIu64 " entries, more than QEMU accepts with %" PRIu64
                      "-byte clusters; use a larger cluster size",
                      p->size, l1_size, cs);
  for (;;) {
    uint64_t rb2, rt2;

    total = 1 + rt + rb + l1c + l2c;
    rb2 = DIV_ROUND_UP (total, E);
    rt2 = DIV_ROUND_UP (rb2 * 8, cs);
    if (rb2 == rb && rt2 == rt)
      break;
    rb = rb2;
    rt = rt2;
  }
  if (rt * cs > QCOW2_MAX_REFTABLE_BYTES)
    return set_error (EFBIG, "the refcount table would exceed 8 MiB; use a "
                      "larger cluster size or refcount width");
  rt_off = cs;
  rb_off = rt_off + rt * cs;
  l1_off = rb_off + rb * cs;
  l2_off = l1_off + l1c * cs;

  buf = rt_calloc (1, MAX (cs, WRITE_CHUNK));
  if (!buf)
    return -1;

  /* Header. */
  memset (&h, 0, sizeof h);
  h.version = p->version;
  h.cluster_bits = p->cluster_bits;
  h.size = p->size;
  h.l1_size = (uint32_t) l1_size;
  h.l1_table_offset = l1_off;
  h.refcount_table_offset = rt_off;
  h.refcount_table_clusters = (uint32_t) rt;
  h.refcount_order = p->refcount_order;
  if (p->data_file) {
    h.incompat |= QCOW2_INCOMPAT_DATA_FILE;
    h.data_file = (char *) p->data_file;
  }
  if (p->data_raw)
    h.autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
  if (qcow2_header_serialize (&h, buf, cs) == -1)
    return -1;
  for (used = cs; used > 0 && buf[used - 1] == 0; used--)
    ;
  if (io_write (io, buf, ROUND_UP (used, 512), 0, "image header") == -1)
    return -1;

  /* Refcount table. */
  memset (buf, 0, rt * cs > WRITE_CHUNK ? WRITE_CHUNK : rt * cs);
  for (off = 0, i = 0; i < rb; ) {
    uint64_t n = MIN (rb - i, WRITE_CHUNK / 8);

    for (j = 0; j < n; j++)
      be64_store (buf + j * 8, rb_off + (i + j) * cs);
    if (io_write (io, buf, n * 8, rt_off + off, "refcount table") == -1)
      return -1;
    off += n * 8;
    i += n;
  }

  /* Refcount blocks: clusters [0, total) have refcount 1. */
  for (i = 0; i < rb; i++) {
    uint64_t n = MIN (E, total - i * E);

    memset (buf, 0, cs);
    for (j = 0; j < n; j++)
      refblock_set (buf, j, refbits, 1);
    used = ROUND_UP (DIV_ROUND_UP (n * refbits, 8), 512);
    if (io_write (io, buf, MIN (used, cs), rb_off + i * cs,
                  "refcount block") == -1)
      return -1;
  }

  /* L1 table; the rest of its last cluster stays a hole (zeros). */
  for (i = 0; p->data_raw && i < l1_size; ) {
    uint64_t n = MIN (l1_size - i, WRITE_CHUNK / 8);

    for (j = 0; j < n; j++)
      be64_store (buf + j * 8, QCOW_OFLAG_COPIED | (l2_off + (i + j) * cs));
    if (io_write (io, buf, n * 8, l1_off + i * 8, "L1 table") == -1)
      return -1;
    i += n;
  }

  /* L2 tables: identity mapping of every guest cluster.  The tables are
   * contiguous, so entry g of the disk is at l2_off + g * 8; entries past
   * the end of the disk stay holes. */
  for (i = 0; i < (l2c ? nclusters : 0); ) {
    uint64_t n = MIN (nclusters - i, WRITE_CHUNK / 8);

    for (j = 0; j < n; j++) {
      uint64_t g = i + j;
      be64_store (buf + j * 8, QCOW_OFLAG_COPIED | (g * cs));
    }
    if (io_write (io, buf, n * 8, l2_off + i * 8, "L2 table") == -1)
      return -1;
    i += n;
  }
  /* Every structure lies inside the file, unwritten parts as holes. */
  if (io_op_truncate (io, total * cs) == -1 &&
      errno != ENOTSUP) {
    return set_error (errno, "cannot size the new image: %s",
                      strerror (errno));
  }
  return io_flush (io, "new image");
}

/* Create path's temporary sibling, run fn over it, then rename it into
 * place.  The sibling is removed on any failure. */
static int
write_new_file (const char *path, bool force,
                int (*fn) (struct rawtrack_io *io, void *opaque),
                void *opaque)
{
  size_t len = strlen (path);
  CLEANUP_FREE char *tmp = rt_malloc (len + 16);
  struct rawtrack_io *io = NULL;
  struct stat st;
  int fd;

  if (!tmp)
    return -1;
  if (!force && lstat (path, &st) == 0)
    return set_error (EEXIST, "'%s' already exists (use --force to replace "
                      "it)", path);
  /* Replacing an image that a VM (or rawtrack) has open would leave it
   * writing a deleted file while the new one is taken for its image. */
  if (force && stat (path, &st) == 0 && S_ISREG (st.st_mode)) {
    struct rawtrack_io *old = rawtrack_io_file_open (path, RAWTRACK_IO_RDONLY);

    if (old) {
      int busy = image_lock_file (old, RAWTRACK_OPEN_RDWR, false, path);

      rawtrack_io_close (old);
      if (busy == -1) {
        rt_prefix_error ("not replaced: ");
        return -1;
      }
    }
  }
  snprintf (tmp, len + 16, "%s.tmp-XXXXXX", path);
  fd = mkstemp (tmp);
  if (fd == -1)
    return set_error (errno, "cannot create a temporary file beside '%s': "
                      "%s", path, strerror (errno));
  {
    mode_t mask = umask (0);     /* mkstemp makes 0600; use 0666 & ~umask */
    umask (mask);
    if (fchmod (fd, 0666 & ~mask) == -1) { /* not fatal */ }
  }
  close (fd);
  io = rawtrack_io_file_open (tmp, RAWTRACK_IO_RDWR);
  if (!io)
    goto out;
  if (fn (io, opaque) == -1)
    goto out;
  rawtrack_io_close (io);
  io = NULL;
  if (force) {
    if (rename (tmp, path) == -1) {
      set_error (errno, "cannot rename the new image to '%s': %s", path,
                 strerror (errno));
      goto out;
    }
  }
  else if (renameat2 (AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == -1) {
    if (errno == EEXIST)
      set_error (EEXIST, "'%s' already exists (use --force to replace it)",
                 path);
    else if (errno != EINVAL && errno != ENOSYS)
      set_error (errno, "cannot rename the new image to '%s': %s", path,
                 strerror (errno));
    else if (link (tmp, path) == 0) {   /* no RENAME_NOREPLACE here */
      unlink (tmp);
      return 0;
    }
    else
      set_error (errno, "cannot create '%s': %s", path, strerror (errno));
    goto out;
  }
  return 0;

 out:
  rawtrack_io_close (io);
  unlink (tmp);
  return -1;
}

static int
layout_cb (struct rawtrack_io *io, void *opaque)
{
  return write_layout (io, opaque);
}

RAWTRACK_API int
rawtrack_attach_io (struct rawtrack_io *image, uint64_t raw_size,
                    const char *name, uint32_t cluster_size)
{
  struct layout_params p = {
    .size = raw_size, .refcount_order = 4, .version = 3,
    .data_file = name, .data_raw = true,
  };

  rt_clear_error ();
  if (!name || !*name)
    return set_error (EINVAL, "a data file name is required");
  if (raw_size == 0 || raw_size % 512)
    return set_error (EINVAL, "the raw disk size %" PRIu64 " is not a "
                      "positive multiple of 512 bytes", raw_size);
  if (check_cluster_size (cluster_size ? cluster_size
                          : RAWTRACK_ATTACH_DEFAULT_CLUSTER_SIZE,
                          &p.cluster_bits) == -1)
    return -1;
  if (check_track_room (&p, "refusing to attach") == -1)
    return -1;
  return write_layout (image, &p);
}

RAWTRACK_API int
rawtrack_attach (const char *raw_path, const char *image_path,
                 const struct rawtrack_attach_opts *opts)
{
  struct rawtrack_attach_opts o = { .struct_size = sizeof o };
  struct layout_params p = {
    .refcount_order = 4, .version = 3, .data_raw = true,
  };
  CLEANUP_IO_CLOSE struct rawtrack_io *raw = NULL;
  struct stat rst, ist;
  CLEANUP_FREE char *abs = NULL;
  int64_t size;
  bool remote;

  rt_clear_error ();
  if (opts)
    memcpy (&o, opts, MIN (sizeof o, opts->struct_size));
  if (!raw_path || !image_path)
    return set_error (EINVAL, "attach needs a raw file and an image path");
  if (check_cluster_size (o.cluster_size ? o.cluster_size
                          : RAWTRACK_ATTACH_DEFAULT_CLUSTER_SIZE,
                          &p.cluster_bits) == -1)
    return -1;

  /* An NBD URI (typed by the user): the disk is on a server; the URI is
   * recorded as given. */
  remote = rawtrack_is_nbd_uri (raw_path);
  raw = remote ? io_nbd_open (raw_path, RAWTRACK_IO_RDONLY, true)
               : rawtrack_io_file_open (raw_path, RAWTRACK_IO_RDONLY);
  if (!raw)
    return -1;
  size = io_op_get_size (raw);
  if (size == -1)
    return set_error (errno, "cannot get the size of '%s': %s", raw_path,
                      strerror (errno));
  if (size == 0 || size % 512)
    return set_error (EINVAL, "'%s' is %" PRId64 " bytes, not a positive "
                      "multiple of 512: a disk image must be made of whole "
                      "sectors", raw_path, size);
  if (!remote && stat (raw_path, &rst) == 0 && stat (image_path, &ist) == 0 &&
      rst.st_dev == ist.st_dev && rst.st_ino == ist.st_ino)
    return set_error (EINVAL, "'%s' and '%s' are the same file: refusing "
                      "to overwrite the raw disk", raw_path, image_path);
  if (o.stored_name)
    p.data_file = o.stored_name;
  else if (remote)
    p.data_file = raw_path;
  else {
    abs = realpath (raw_path, NULL);
    if (!abs)
      return set_error (errno, "cannot resolve '%s': %s", raw_path,
                        strerror (errno));
    p.data_file = abs;
  }
  p.size = (uint64_t) size;
  if (check_track_room (&p, "refusing to attach") == -1)
    return -1;
  return write_new_file (image_path, o.force != 0, layout_cb, &p);
}

RAWTRACK_API int
rawtrack_image_create (const char *path,
                       const struct rawtrack_create_opts *opts)
{
  struct rawtrack_create_opts o = { .struct_size = sizeof o };
  struct layout_params p = { .refcount_order = 4, .version = 3 };
  CLEANUP_IO_CLOSE struct rawtrack_io *data = NULL;
  CLEANUP_FREE char *dpath = NULL;

  rt_clear_error ();
  if (opts)
    memcpy (&o, opts, MIN (sizeof o, opts->struct_size));
  if (!path)
    return set_error (EINVAL, "no image path");
  if (check_cluster_size (o.cluster_size ? o.cluster_size : 65536,
                          &p.cluster_bits) == -1)
    return -1;
  if (o.compat != 0 && o.compat != 2 && o.compat != 3)
    return set_error (EINVAL, "compat must be 0.10 (v2) or 1.1 (v3)");
  p.version = o.compat == 2 ? 2 : 3;
  if (o.refcount_bits) {
    if (!is_power_of_2 ((uint64_t) o.refcount_bits) || o.refcount_bits > 64)
      return set_error (EINVAL, "refcount width %d is not one of 1, 2, 4, "
                        "8, 16, 32, 64", o.refcount_bits);
    p.refcount_order = (uint32_t) log2_u64 ((uint64_t) o.refcount_bits);
  }
  if (p.version == 2 && p.refcount_order != 4)
    return set_error (EINVAL, "compat 0.10 images only support 16-bit "
                      "refcounts");
  if (o.size > (1ull << 63) - 512)
    return set_error (EFBIG, "size %" PRIu64 " is too large", o.size);
  p.size = ROUND_UP (o.size, 512);
  if (o.data_file_raw && !o.data_file)
    return set_error (EINVAL, "data-file-raw needs a data file");
  if (o.data_file) {
    if (p.version == 2)
      return set_error (EINVAL, "external data files need compat 1.1 (v3)");
    if (rawtrack_is_nbd_uri (o.data_file))
      return set_error (EINVAL, "data file '%s' is an NBD URI: create makes "
                        "a new local data file; to wrap a disk on an NBD "
                        "server use attach URI IMAGE", o.data_file);
    if (datafile_name_is_special (o.data_file))
      return set_error (EINVAL, "data file name '%s' is not a plain path",
                        o.data_file);
    p.data_file = o.data_file;
    p.data_raw = o.data_file_raw != 0;
  }
  if (check_track_room (&p, "refusing to create the image") == -1)
    return -1;
  if (o.data_file) {

    dpath = datafile_join (path, o.data_file);
    if (!dpath)
      return -1;
    if (!o.force && access (path, F_OK) == 0)
      return set_error (EEXIST, "'%s' already exists (use --force to "
                        "replace it)", path);
    data = rawtrack_io_file_open (dpath, RAWTRACK_IO_RDWR | RAWTRACK_IO_CREATE |
                                  (o.force ? 0 : RAWTRACK_IO_EXCL));
    if (!data)
      return -1;
    /* --force truncates it: never under a program that has it open. */
    if (image_lock_file (data, RAWTRACK_OPEN_RDWR, true, dpath) == -1)
      return -1;
    if (io_op_truncate (data, p.size) == -1 &&
        !(rawtrack_io_caps (data) & RAWTRACK_IO_IS_BLOCKDEV)) {
      set_error (errno, "cannot size the data file '%s': %s", dpath,
                 strerror (errno));
      goto out_unlink;
    }
    if (io_flush (data, "data file") == -1)
      goto out_unlink;
  }
  if (write_new_file (path, o.force != 0, layout_cb, &p) == 0)
    return 0;
  if (!data)
    return -1;

 out_unlink:
  /* The data file this call made goes too (with --force it may have been
   * there before: it stays). */
  if (!o.force)
    unlink (dpath);
  return -1;
}
