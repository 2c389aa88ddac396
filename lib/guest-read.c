/* rawtrack - guest reads and the raw one-to-one mapping.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the read side of the guest I/O path (rawtrack_image_pread,
 * rawtrack_image_read_source) and img->normal_map, the record of guest
 * clusters known to map one to one into a raw external data file, with
 * its check (normal_map_covers) and raw_run, the prefix of a range that
 * lies one to one in the data file.  The write path (guest-io.c) uses the
 * same map; one request's flow goes one way down:
 *
 *   guest-io.c (writes) -> guest-read.c (map, reads) -> qcow2-map.c,
 *   qcow2-compress.c -> struct rawtrack_io
 *
 * Locking: the mapping is resolved under img->lock; data-file reads
 * happen outside it.  normal_map bits are set with atomic OR and read
 * with atomic loads: a set bit stays true while the image is open
 * (nothing in rawtrack unmaps a cluster of a raw external data image), so
 * reads and writes of known clusters skip the metadata lock entirely.
 * No on-disk state is written here.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "arith.h"

bool
normal_map_covers (struct rawtrack_image *img, uint64_t offset, uint64_t len)
{
  uint64_t c, last;

  if (!img->normal_map || len == 0)
    return false;
  last = (offset + len - 1) >> img->h.cluster_bits;
  for (c = offset >> img->h.cluster_bits; c <= last; c++)
    if (!(__atomic_load_n (&img->normal_map[c / 64], __ATOMIC_ACQUIRE) &
          (1ull << (c % 64))))
      return false;
  return true;
}

void
normal_map_note (struct rawtrack_image *img, uint64_t offset, uint64_t len)
{
  uint64_t c, last;

  if (!img->normal_map || len == 0)
    return;
  last = (offset + len - 1) >> img->h.cluster_bits;
  for (c = offset >> img->h.cluster_bits; c <= last; c++)
    __atomic_fetch_or (&img->normal_map[c / 64], 1ull << (c % 64),
                       __ATOMIC_RELEASE);
}

/* Clear the error; EINVAL for a read range outside the disk. */
static int
read_range (struct rawtrack_image *img, uint64_t count, uint64_t offset)
{
  rt_clear_error ();
  if (offset > img->virtual_size || count > img->virtual_size - offset)
    return set_error (EINVAL, "read of %" PRIu64 " bytes at offset %" PRIu64
                      " is past the end of the disk (%" PRIu64 " bytes)",
                      count, offset, img->virtual_size);
  return 0;
}

RAWTRACK_API int
rawtrack_image_pread (struct rawtrack_image *img, void *buf, uint64_t count,
                      uint64_t offset)
{
  uint8_t *p = buf;

  if (read_range (img, count, offset) == -1)
    return -1;
  if (img->data && normal_map_covers (img, offset, count))
    return io_read (img->data, p, count, offset, "data file");
  while (count > 0) {
    struct qcow2_extent ext;
    int r;

    pthread_mutex_lock (&img->lock);
    r = qcow2_map (img, offset, count, &ext);
    if (r == 0 && ext.type == QCOW2_NORMAL)
      normal_map_note (img, offset, ext.bytes);
    if (r == 0 && ext.type == QCOW2_COMPRESSED)
      r = qcow2_read_compressed (img, ext.l2_entry, offset, p, ext.bytes);
    pthread_mutex_unlock (&img->lock);
    if (r == -1)
      return -1;

    switch (ext.type) {
    case QCOW2_UNALLOCATED:
      if (backing_read (img, p, ext.bytes, offset) == -1)
        return -1;
      break;
    case QCOW2_ZERO:
      memset (p, 0, ext.bytes);
      break;
    case QCOW2_NORMAL:
      if (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE) {
        if (!img->data)
          return set_error (EINVAL, "the data file is not open");
        r = io_read (img->data, p, ext.bytes, ext.host, "data file");
      }
      else
        r = io_read (img->file, p, ext.bytes, ext.host, "data cluster");
      if (r == -1)
        return -1;
      break;
    case QCOW2_COMPRESSED:
      break;
    }
    p += ext.bytes;
    offset += ext.bytes;
    count -= ext.bytes;
  }
  return 0;
}

/* Only clusters of a raw external data file qualify: their mapping is
 * the identity (validated by qcow2_map) and never changes while the image
 * is open (guest-io.c), which is what normal_map records.  The range is
 * inside the disk. */
int64_t
raw_run (struct rawtrack_image *img, uint64_t offset, uint64_t count,
         int *fd)
{
  uint64_t run = 0, end = offset + count;

  if (count == 0 || !img->data || !img->normal_map)
    return 0;
  *fd = rawtrack_io_raw_fd (img->data);
  if (*fd < 0)
    return 0;
  /* From normal_map where it knows, else from the L2 tables (noting what
   * they say for next time). */
  while (offset + run < end) {
    uint64_t pos = offset + run;
    uint64_t step = MIN ((pos | (img->cluster_size - 1)) + 1, end) - pos;
    struct qcow2_extent ext;
    int r;

    if (normal_map_covers (img, pos, step)) {
      run += step;
      continue;
    }
    pthread_mutex_lock (&img->lock);
    r = qcow2_map (img, pos, end - pos, &ext);
    if (r == 0 && ext.type == QCOW2_NORMAL)
      normal_map_note (img, pos, ext.bytes);
    pthread_mutex_unlock (&img->lock);
    if (r == -1)
      return -1;
    if (ext.type != QCOW2_NORMAL)
      break;
    run += MIN (ext.bytes, end - pos);
  }
  return (int64_t) run;
}

RAWTRACK_API int64_t
rawtrack_image_read_source (struct rawtrack_image *img, uint64_t offset,
                            uint64_t count, int *fd, uint64_t *file_offset)
{
  int64_t run;

  if (read_range (img, count, offset) == -1)
    return -1;
  run = raw_run (img, offset, count, fd);
  if (run > 0)
    *file_offset = offset;
  return run;
}
