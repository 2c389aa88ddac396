/* rawtrack - backing chains: opening them and reading through them.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: img->backing, the image (qcow2) or file (raw) that supplies the
 * guest data of clusters the image does not allocate, as QEMU reads it.
 *
 * Rules (QEMU's, with the hostile-image limits of the data file):
 *  - The name comes from the header.  json: and protocol: names are
 *    refused (datafile_name_is_special, as for data files); a relative
 *    name is relative to the directory of the image naming it (QEMU's
 *    bdrv_get_full_backing_filename), never to the current directory.
 *  - The format is the backing format extension's, "qcow2" or "raw";
 *    without one the file is probed (qcow2 magic, else raw), as QEMU
 *    does.  Any other format is refused (ENOTSUP).
 *  - Every layer is opened read-only, with the open rules of the top
 *    (rawtrack_io_file_open: no FIFOs, devices or pseudo file systems; a
 *    block device only with RAWTRACK_OPEN_ALLOW_DEVICE); a qcow2 layer's
 *    own data file and backing file are followed the same way.
 *  - At most BACKING_MAX_DEPTH layers below the top, and no file twice
 *    (st_dev, st_ino of every layer): a loop is refused at open.
 *  - A layer shorter than the layer above reads as zeros past its end.
 *
 * Not supported: writing (guest-io.c refuses writes to images with a
 * backing file; serve exports them read-only), backing chains of images
 * opened with rawtrack_image_open_io (no path to resolve names against),
 * formats other than qcow2 and raw.
 *
 * Locking: the chain is built at open and never changes; reads take each
 * layer's own lock (rawtrack_image_pread), none here.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "arith.h"

#define QCOW2_MAGIC_BYTES "QFI\xfb"

struct backing {
  struct rawtrack_image *img;      /* a qcow2 layer, or NULL */
  struct rawtrack_io *raw;         /* a raw layer, or NULL */
  uint64_t size;                   /* bytes it supplies */
  char *path;                      /* as opened (messages) */
};

static int
io_identity (struct rawtrack_io *io, struct chain_id *id)
{
  struct stat st;
  int fd = rawtrack_io_raw_fd (io);

  if (fd < 0 || fstat (fd, &st) == -1)
    return -1;
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  return 0;
}

static bool
seen (const struct chain_id *chain, uint64_t dev, uint64_t ino)
{
  for (; chain; chain = chain->next)
    if ((chain->dev || chain->ino) && chain->dev == dev && chain->ino == ino)
      return true;
  return false;
}

/* Is the file at io a qcow2 image? */
static int
probe_qcow2 (struct rawtrack_io *io, bool *is_qcow2)
{
  char magic[4] = { 0 };
  int64_t size = rawtrack_io_get_size (io);

  *is_qcow2 = false;
  if (size < 0)
    return set_error (errno, "size: %s", strerror (errno));
  if (size >= 4 && rawtrack_io_pread (io, magic, 4, 0) == -1)
    return -1;
  *is_qcow2 = memcmp (magic, QCOW2_MAGIC_BYTES, 4) == 0;
  return 0;
}

int
backing_open (struct rawtrack_image *img, const char *path, unsigned flags,
              const struct chain_id *chain, unsigned depth)
{
  const char *name = img->h.backing_file, *fmt = img->h.backing_format;
  struct backing *b;
  CLEANUP_IO_CLOSE struct rawtrack_io *io = NULL;
  struct chain_id id = { 0 };
  unsigned ioflags = RAWTRACK_IO_RDONLY |
    ((flags & RAWTRACK_OPEN_ALLOW_DEVICE) ? 0 : RAWTRACK_IO_NO_DEVICE);
  bool is_qcow2;
  int64_t size;

  if (!name)
    return 0;
  if (depth >= BACKING_MAX_DEPTH)
    return set_error (ELOOP, "backing file '%s': the chain is deeper than "
                      "%u images", name, BACKING_MAX_DEPTH);
  if (name[0] == '\0' || datafile_name_is_special (name))
    return set_error (EINVAL, "refusing backing file name '%s': not a plain "
                      "path (json: and protocol: names are never opened)",
                      name);
  if (fmt && strcmp (fmt, "qcow2") != 0 && strcmp (fmt, "raw") != 0)
    return set_error (ENOTSUP, "backing file '%s': format '%s' is not "
                      "supported (only qcow2 and raw)", name, fmt);
  b = rt_calloc (1, sizeof *b);
  if (!b)
    return -1;
  b->path = datafile_join (path, name);
  if (!b->path)
    goto fail;
  io = rawtrack_io_file_open (b->path, ioflags);
  if (!io) {
    rt_prefix_error ("cannot open the backing file: ");
    goto fail;
  }
  if (io_identity (io, &id) == 0 && seen (chain, id.dev, id.ino)) {
    set_error (ELOOP, "backing file '%s': the chain loops (the file is "
               "already in it)", b->path);
    goto fail;
  }
  if (fmt)
    is_qcow2 = strcmp (fmt, "qcow2") == 0;
  else if (probe_qcow2 (io, &is_qcow2) == -1) {
    rt_prefix_error ("backing file '%s': ", b->path);
    goto fail;
  }
  if (is_qcow2) {
    id.next = chain;
    rawtrack_io_close (io);        /* reopened by the image open below */
    io = NULL;
    b->img = image_open_chain (b->path, flags & RAWTRACK_OPEN_ALLOW_DEVICE,
                               NULL, &id, depth + 1);
    if (!b->img) {
      rt_prefix_error ("backing file '%s': ", b->path);
      goto fail;
    }
    b->size = rawtrack_image_virtual_size (b->img);
  }
  else {
    size = rawtrack_io_get_size (io);
    if (size < 0) {
      set_error (errno, "backing file '%s': size: %s", b->path,
                 strerror (errno));
      goto fail;
    }
    b->raw = io;
    io = NULL;
    b->size = (uint64_t) size;
  }
  img->backing = b;
  return 0;

 fail:
  free (b->path);
  free (b);
  return -1;
}

void
backing_close (struct rawtrack_image *img)
{
  struct backing *b = img->backing;

  if (!b)
    return;
  rawtrack_image_close (b->img);
  rawtrack_io_close (b->raw);
  free (b->path);
  free (b);
  img->backing = NULL;
}

int
backing_read (struct rawtrack_image *img, uint8_t *buf, uint64_t count,
              uint64_t offset)
{
  struct backing *b = img->backing;
  uint64_t n = 0;
  int r = 0;

  if (b && offset < b->size) {
    n = MIN (count, b->size - offset);
    r = b->img ? rawtrack_image_pread (b->img, buf, n, offset)
               : rawtrack_io_pread (b->raw, buf, n, offset);
    if (r == -1) {
      rt_prefix_error ("backing file '%s': ", b->path);
      return -1;
    }
  }
  memset (buf + n, 0, count - n);
  return 0;
}

int64_t
backing_status (struct rawtrack_image *img, uint64_t offset, uint64_t count,
                unsigned *status)
{
  struct backing *b = img->backing;
  int64_t n;

  *status = RAWTRACK_STATUS_HOLE | RAWTRACK_STATUS_ZERO;
  if (!b || offset >= b->size)
    return (int64_t) count;
  count = MIN (count, b->size - offset);
  if (b->raw) {
    *status = RAWTRACK_STATUS_BACKING;
    return (int64_t) count;
  }
  n = rawtrack_image_block_status (b->img, offset, count, status);
  if (n < 0)
    return -1;
  /* Supplied by a layer below: data (or zeros) that is not the top's. */
  if (*status & RAWTRACK_STATUS_ALLOCATED)
    *status = (*status & ~RAWTRACK_STATUS_ALLOCATED) | RAWTRACK_STATUS_BACKING;
  return n;
}
