/* rawtrack - writing a qcow2 image front to back (backup files).
 * Copyright (C) 2026 the rawtrack authors.  SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Included by rawtrack.h; do not include it directly.
 *
 * A sequential writer makes one new qcow2 v3 image in a single pass:
 * guest clusters are handed over in increasing guest order, each as data,
 * as an already-compressed cluster, or as a zero cluster (zero flag); a
 * guest cluster never handed over stays unallocated (reads from the
 * backing file, or zeros without one).  Data and L2 tables go to the file
 * as they come; rawtrack_writer_finish lays out the L1 table, the refcount
 * table and blocks after them, writes the header last and syncs.  Every
 * image passes `qemu-img check` and reads identically through QEMU.
 *
 * rawtrack_writer_data, _compressed and _zero take whole clusters: the
 * caller supplies every byte of each cluster it hands over.  The last
 * cluster of a disk whose size is not a multiple of the cluster size is
 * given with only the bytes up to the end of the disk.
 *
 * rawtrack_writer_pwrite takes any byte range (still in increasing guest
 * order, never overlapping an earlier one).  A cluster written only in
 * part is completed copy-on-write, as QEMU does: the bytes not written
 * are read from the backing chain (opts.backing_read, or else the
 * backing file itself, opened read-only beside the image; zeros for an
 * image without a backing file) when the writer moves past the cluster.
 *
 * Memory: one L2 table plus two bytes per host cluster written (refcounts).
 * Locking: a writer belongs to one thread at a time.
 */
#ifndef RAWTRACK_WRITER_H_PUBLIC
#define RAWTRACK_WRITER_H_PUBLIC

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct rawtrack_io;
struct rawtrack_writer;

#define RAWTRACK_COMPRESS_NONE  (-1)
#define RAWTRACK_COMPRESS_ZLIB  0     /* qcow2 compression type 0, deflate */
#define RAWTRACK_COMPRESS_ZSTD  1     /* qcow2 compression type 1 */

struct rawtrack_writer_opts {
  uint32_t struct_size;        /* sizeof (struct rawtrack_writer_opts) */
  uint64_t size;               /* virtual size; multiple of 512 */
  uint32_t cluster_size;       /* 0: 65536 */
  const char *backing_file;    /* stored as is (a relative name), or NULL */
  const char *backing_format;  /* "qcow2", ... (needs backing_file) */
  int compression_type;        /* header field: ZLIB (0) or ZSTD (1) */
  /* Copy-on-write source for rawtrack_writer_pwrite (optional): reads
   * count bytes of the backing chain's guest data at offset into buf, 0
   * or -1.  NULL: the writer opens backing_file (a relative name is
   * relative to the new image's directory; needs rawtrack_writer_new).
   * Structs of callers built before this field (struct_size smaller)
   * read it as NULL. */
  int (*backing_read) (void *opaque, void *buf, uint64_t count,
                       uint64_t offset);
  void *backing_opaque;
};

/* Start an image on an empty, writable backend (ownership stays with the
 * caller) or on a new file (created exclusively; the writer owns it). */
RAWTRACK_API struct rawtrack_writer *rawtrack_writer_new_io (struct rawtrack_io *io,
                                                             const struct rawtrack_writer_opts *opts);
RAWTRACK_API struct rawtrack_writer *rawtrack_writer_new (const char *path,
                                                          const struct rawtrack_writer_opts *opts);

/* Store count bytes of guest data at guest offset (cluster-aligned, above
 * every cluster handed over so far); count is a multiple of the cluster
 * size, or reaches exactly the end of the disk. */
RAWTRACK_API int rawtrack_writer_data (struct rawtrack_writer *w,
                                       uint64_t offset, const void *buf,
                                       uint64_t count);
/* Store count bytes of guest data at any guest offset at or above the
 * end of everything handed over so far (count > 0, within the disk).
 * Whole clusters go straight out as data; a cluster written in part is
 * completed from the backing chain (copy-on-write) once a later call, or
 * finish, moves past it. */
RAWTRACK_API int rawtrack_writer_pwrite (struct rawtrack_writer *w,
                                         uint64_t offset, const void *buf,
                                         uint64_t count);
/* Store one cluster already compressed with the header's compression type
 * (rawtrack_compress_cluster), len bytes, less than the cluster size. */
RAWTRACK_API int rawtrack_writer_compressed (struct rawtrack_writer *w,
                                             uint64_t offset, const void *buf,
                                             size_t len);
/* Mark [offset, offset + count) as zero clusters (same rules as data). */
RAWTRACK_API int rawtrack_writer_zero (struct rawtrack_writer *w,
                                       uint64_t offset, uint64_t count);
/* Lay out the metadata, write the header, sync.  After this (or an error)
 * only rawtrack_writer_free may be called. */
RAWTRACK_API int rawtrack_writer_finish (struct rawtrack_writer *w);
/* Bytes of the image file so far. */
RAWTRACK_API uint64_t rawtrack_writer_file_bytes (struct rawtrack_writer *w);
/* NULL-safe; closes a file the writer opened (an unfinished image is left
 * for the caller to remove). */
RAWTRACK_API void rawtrack_writer_free (struct rawtrack_writer *w);

/* Compress one cluster (len bytes: the cluster size, or less for the last
 * cluster of a disk, then compressed as if zero-padded) the way QEMU does
 * for the type (ZLIB raw deflate, ZSTD one frame).  Returns the compressed
 * length (< cluster_size) or 0 when it does not pay (store it plainly),
 * -1 on error.  dst holds at least cluster_size bytes. */
RAWTRACK_API int64_t rawtrack_compress_cluster (int type, const void *src,
                                                size_t len,
                                                size_t cluster_size,
                                                void *dst);

#ifdef __cplusplus
}
#endif

#endif /* RAWTRACK_WRITER_H_PUBLIC */
