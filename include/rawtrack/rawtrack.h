/* rawtrack - changed-block tracking for disk images
 * Copyright (C) 2026 the rawtrack authors.  SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * librawtrack public API: qcow2 images (v2/v3) used as metadata containers
 * for raw disks (external data file, "raw external data"), with persistent
 * dirty bitmaps.
 *
 * Conventions
 *  - Handles are opaque.  Every constructor has a destructor that accepts
 *    NULL.
 *  - Functions return -1 (or NULL) on error.  The message and errno of the
 *    last error on the calling thread are read with rawtrack_get_error and
 *    rawtrack_get_errno; the string stays valid until the next librawtrack
 *    call on the same thread.
 *  - Errno meanings: EINVAL bad argument; ENOTSUP unknown incompatible
 *    feature, unsupported option, or a backend without the method needed
 *    (a backend without flush cannot make anything durable: flush, FUA
 *    writes and crash-safe tracking fail with ENOTSUP); EROFS image
 *    opened read-only; ERANGE request too large; EEXIST target exists;
 *    ENOENT missing file; EBUSY another program (or handle) holds the
 *    image's locks, or a bitmap operation while this handle tracks guest
 *    writes; EPERM a data file refused (a device or pseudo file system);
 *    ENOMEM out of memory; RAWTRACK_ECORRUPT image metadata is corrupt
 *    (the message names the structure and the byte offset); EIO/ENOSPC
 *    passed through from the backend.  Lists per function group are in
 *    rawtrack-bitmap.h and rawtrack-io.h.
 *  - Thread model: one image handle may be used from many threads; metadata
 *    is serialised by one lock per image.  That includes the getters:
 *    rawtrack_image_bitmap_* may run while another thread adds or removes
 *    bitmaps (an index may then name a different bitmap, or none: NULL/0).
 */
#ifndef RAWTRACK_H
#define RAWTRACK_H

#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <rawtrack/rawtrack-io.h>
#include <rawtrack/rawtrack-bitmap.h>
#include <rawtrack/rawtrack-writer.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RAWTRACK_ECORRUPT EUCLEAN

/* ---- errors ---------------------------------------------------------- */
/* Last error message on this thread, or NULL.  Static until the next call. */
RAWTRACK_API const char *rawtrack_get_error (void);
/* errno of the last error on this thread, or 0. */
RAWTRACK_API int rawtrack_get_errno (void);

RAWTRACK_API const char *rawtrack_version (void);

/* ---- opening ---------------------------------------------------------- */
struct rawtrack_image;

#define RAWTRACK_OPEN_RDWR          0x1u  /* open read-write */
#define RAWTRACK_OPEN_NO_DATA_FILE  0x2u  /* metadata only; do not open the
                                           * external data file (info) */
#define RAWTRACK_OPEN_CHECK         0x4u  /* tolerate what check reports:
                                           * corrupt bit, dirty bit */
#define RAWTRACK_OPEN_ALLOW_DEVICE  0x100u /* open a block device named
                                           * by the image itself (without
                                           * it, only a data_file argument
                                           * may name a block device) */
#define RAWTRACK_OPEN_NO_BACKING    0x200u /* do not open the backing chain
                                           * (its clusters read as zeros) */
#define RAWTRACK_OPEN_NO_LOCK       0x40u /* with RDWR: do not take QEMU's
                                           * image locks (see below) */
#define RAWTRACK_OPEN_ALLOW_REMOTE  0x400u /* follow an NBD URI stored in
                                            * the image as its data file */

/* Open an image file.  data_file overrides the name stored in the image
 * (NULL: use the stored name, resolved against the image's directory, then
 * the current directory; names that are not plain paths - json: or
 * protocol: prefixes - are refused).  Returns NULL on error.
 * The data file must be a regular file, or a block device named by the
 * data_file argument (or, with RAWTRACK_OPEN_ALLOW_DEVICE, by the image);
 * FIFOs, sockets, character devices and files on pseudo file systems
 * (procfs, sysfs, ...) are refused without being opened for I/O (see
 * rawtrack_io_file_open).
 * Remote data files: data_file may be an NBD URI (nbd://, nbds://,
 * nbd+unix://, nbds+unix://; see rawtrack_io_nbd_open).  An NBD URI stored
 * in the image is followed only with RAWTRACK_OPEN_ALLOW_REMOTE or
 * RAWTRACK_ALLOW_REMOTE=1 in the environment - an image from elsewhere
 * must not make us connect anywhere - and is refused otherwise with a
 * message naming it; no other protocol is ever followed.
 * A read-write open takes QEMU's image locks on the image and the data
 * file, and fails with EBUSY while another program (QEMU, or another
 * read-write rawtrack handle) has either open in a conflicting way; they
 * go at close.  Read-only opens take none. */
RAWTRACK_API struct rawtrack_image *rawtrack_image_open (const char *path,
                                                         unsigned flags,
                                                         const char *data_file);

/* Open over backends.  The image takes ownership of both backends (also on
 * failure).  data may be NULL: then an image with an external data file
 * must be opened with RAWTRACK_OPEN_NO_DATA_FILE. */
RAWTRACK_API struct rawtrack_image *rawtrack_image_open_io (struct rawtrack_io *image,
                                                            struct rawtrack_io *data,
                                                            unsigned flags);

/* Write back everything and close.  Returns -1 if writeback failed (the
 * handle is freed anyway).  NULL-safe. */
RAWTRACK_API int rawtrack_image_close (struct rawtrack_image *img);

/* Make all metadata and data durable.  ENOTSUP when a backend has no
 * flush method (nothing can be made durable then). */
RAWTRACK_API int rawtrack_image_flush (struct rawtrack_image *img);

/* Writes that bypassed rawtrack.  A read-write open records the data
 * file's identity (device, inode, size, change time) in a private header
 * extension, and its clean close again; the next read-write open that
 * finds the file changed marks every bitmap in use (inconsistent, as QEMU
 * understands it).  This tells what is known (struct_size first; 0, or
 * -1 on a bad argument). */
#define RAWTRACK_CHANGE_REPLACED 0x1u   /* another file (device, inode) */
#define RAWTRACK_CHANGE_SIZE     0x2u
#define RAWTRACK_CHANGE_CTIME    0x4u   /* written, truncated or touched */
struct rawtrack_data_file_change {
  uint32_t struct_size;
  int recorded;          /* a trusted record exists */
  int64_t recorded_at;   /* when (Unix time) */
  int writer_open;       /* recorded by a writer that has not closed (or
                          * crashed): only a replaced file is detected */
  int marked;            /* a change was found; the bitmaps are in use */
  int64_t since;         /* when it was found (Unix time) */
  unsigned reason;       /* RAWTRACK_CHANGE_* found then */
  int pending;           /* the file differs now; the next read-write
                          * open will mark the bitmaps */
  unsigned pending_reason;
};
RAWTRACK_API int rawtrack_image_data_file_changed (struct rawtrack_image *img,
                                                   struct rawtrack_data_file_change *c);

/* Read guest data as QEMU reads it: zeros for zero clusters and holes,
 * and where the image does not allocate a cluster, the backing chain's
 * data.  rawtrack_image_open opens the chain (qcow2 and raw layers, names
 * relative to the naming image's directory, read-only, at most 32 deep,
 * loops refused; not with RAWTRACK_OPEN_NO_BACKING, NO_DATA_FILE or
 * CHECK, nor for images opened with rawtrack_image_open_io): without it
 * those clusters read as zeros.  Images with a backing file cannot be
 * written. */
RAWTRACK_API int rawtrack_image_pread (struct rawtrack_image *img, void *buf,
                                       uint64_t count, uint64_t offset);

/* ---- guest writes (tracked) ------------------------------------------- *
 * Need RAWTRACK_OPEN_RDWR.  Every write, write-zeroes and discard marks
 * every enabled (auto) bitmap before the data can reach storage, so that
 * the on-disk bitmaps always cover every change (see docs/tracking.md).
 * Tracking modes, chosen at open:
 *   default                      crash-safe against kill -9 and power loss
 *   RAWTRACK_OPEN_TRACK_PROCESS  crash-safe against process crashes only
 *                                (bitmap updates are not synced)
 *   RAWTRACK_OPEN_TRACK_LAZY     QEMU's scheme: bitmaps marked in-use while
 *                                open, written at close; a crash leaves
 *                                them inconsistent
 * Safe to call from many threads at once. */
#define RAWTRACK_OPEN_TRACK_PROCESS 0x10u
#define RAWTRACK_OPEN_TRACK_LAZY    0x20u

#define RAWTRACK_WRITE_FUA      0x1u   /* durable (data and bits) on return */
#define RAWTRACK_ZERO_MAY_TRIM  0x2u   /* zero: may punch holes */
#define RAWTRACK_ZERO_FAST      0x4u   /* zero: fail with ENOTSUP if slow */

RAWTRACK_API int rawtrack_image_pwrite (struct rawtrack_image *img,
                                        const void *buf, uint64_t count,
                                        uint64_t offset, unsigned flags);
RAWTRACK_API int rawtrack_image_zero (struct rawtrack_image *img,
                                      uint64_t count, uint64_t offset,
                                      unsigned flags);
/* Discard: afterwards the range reads as zeros or as before. */
RAWTRACK_API int rawtrack_image_trim (struct rawtrack_image *img,
                                      uint64_t count, uint64_t offset,
                                      unsigned flags);

/* Zero-copy reads.  When the guest range [offset, offset + count) begins
 * with a run whose bytes are stored unchanged, one to one, in an open file
 * (a raw external data file), returns the run's length (> 0, at most
 * count) and sets *fd and *file_offset, so that the caller can move the
 * bytes with sendfile(2) or splice(2) instead of reading them.  Such a run
 * keeps its place until the image is closed (writes change its bytes in
 * place); the fd belongs to the image: do not close it.  A file shorter
 * than the disk reads as zeros past its end, which the caller supplies.
 * Returns 0 when the range must go through rawtrack_image_pread (clusters
 * inside a qcow2 file, zero or unmapped clusters, memory backends), -1 on
 * a bad range or a corrupt mapping. */
RAWTRACK_API int64_t rawtrack_image_read_source (struct rawtrack_image *img,
                                                 uint64_t offset,
                                                 uint64_t count, int *fd,
                                                 uint64_t *file_offset);

/* Zero-copy writes, the counterpart of rawtrack_image_read_source, for a
 * caller that moves the bytes itself (splice(2) from a socket, say).
 * rawtrack_image_write_target prepares a guest write of [offset, offset +
 * count): when the whole range lies one to one in an open file AND every
 * tracked bitmap already covers it or can without waiting for I/O (the
 * crash-safe mode's rule: the bits are durable before the data may be),
 * it does the tracking, returns count and sets *fd and *file_offset.  The
 * caller then writes exactly those bytes there and calls
 * rawtrack_image_write_done with the same range and flags
 * (RAWTRACK_WRITE_FUA: the data and its bits are made durable), whether
 * or not its write succeeded; write_done fails with EINVAL for a range
 * outside the disk.  It never blocks on a bitmap commit; it returns 0 instead
 * (nothing done: use rawtrack_image_pwrite, which waits), and -1 on
 * errors (range, read-only image, corrupt mapping). */
RAWTRACK_API int64_t rawtrack_image_write_target (struct rawtrack_image *img,
                                                  uint64_t offset,
                                                  uint64_t count,
                                                  unsigned flags, int *fd,
                                                  uint64_t *file_offset);
RAWTRACK_API int rawtrack_image_write_done (struct rawtrack_image *img,
                                            uint64_t offset, uint64_t count,
                                            unsigned flags);

/* Block status: the length (> 0) of the run starting at offset, at most
 * count, that has one status, or -1.  *status gets RAWTRACK_STATUS_*:
 * HOLE - no storage is allocated for it; ZERO - it reads as zeros.  For a
 * raw external data file the data file's own holes are reported. */
#define RAWTRACK_STATUS_HOLE  0x1u
#define RAWTRACK_STATUS_ZERO  0x2u
/* ALLOCATED - the qcow2 layer maps it (data, zero or compressed cluster):
 * it does not fall through to a backing file (qemu:allocation-depth 1). */
#define RAWTRACK_STATUS_ALLOCATED 0x4u
/* BACKING - a layer of the backing chain supplies it (data, or zeros where
 * ZERO is set too): qemu:allocation-depth 2 (or more). */
#define RAWTRACK_STATUS_BACKING 0x8u
RAWTRACK_API int64_t rawtrack_image_block_status (struct rawtrack_image *img,
                                                  uint64_t offset,
                                                  uint64_t count,
                                                  unsigned *status);

/* ---- information ------------------------------------------------------ */
RAWTRACK_API uint64_t rawtrack_image_virtual_size (struct rawtrack_image *img);
RAWTRACK_API uint32_t rawtrack_image_cluster_size (struct rawtrack_image *img);
RAWTRACK_API int rawtrack_image_version (struct rawtrack_image *img); /* 2 or 3 */
RAWTRACK_API int rawtrack_image_refcount_bits (struct rawtrack_image *img);
/* Stored data file name, or NULL.  Owned by the handle. */
RAWTRACK_API const char *rawtrack_image_data_file (struct rawtrack_image *img);
/* 1 if the image has an external data file (incompatible bit 2). */
RAWTRACK_API int rawtrack_image_has_data_file (struct rawtrack_image *img);
/* 1 if "raw external data" (autoclear bit 1) is set. */
RAWTRACK_API int rawtrack_image_data_file_raw (struct rawtrack_image *img);
RAWTRACK_API int rawtrack_image_is_dirty (struct rawtrack_image *img);
RAWTRACK_API int rawtrack_image_is_corrupt (struct rawtrack_image *img);
RAWTRACK_API int rawtrack_image_extended_l2 (struct rawtrack_image *img);
RAWTRACK_API int rawtrack_image_lazy_refcounts (struct rawtrack_image *img);
/* "zlib" or "zstd" (static). */
RAWTRACK_API const char *rawtrack_image_compression_type (struct rawtrack_image *img);
/* Backing file name and format, or NULL.  Owned by the handle. */
RAWTRACK_API const char *rawtrack_image_backing_file (struct rawtrack_image *img);
RAWTRACK_API const char *rawtrack_image_backing_format (struct rawtrack_image *img);
/* Bytes the image file occupies on its storage (allocated), or -1. */
RAWTRACK_API int64_t rawtrack_image_file_size (struct rawtrack_image *img);
RAWTRACK_API uint64_t rawtrack_image_incompatible_features (struct rawtrack_image *img);
RAWTRACK_API uint64_t rawtrack_image_compatible_features (struct rawtrack_image *img);
RAWTRACK_API uint64_t rawtrack_image_autoclear_features (struct rawtrack_image *img);

/* Bitmaps as listed in the directory (no bitmap data is read). */
#define RAWTRACK_BITMAP_IN_USE  0x1u
#define RAWTRACK_BITMAP_AUTO    0x2u
RAWTRACK_API int rawtrack_image_bitmap_count (struct rawtrack_image *img);
/* i-th bitmap's name, or NULL.  Owned by the handle: valid until close,
 * even after bitmap operations replace the directory. */
RAWTRACK_API const char *rawtrack_image_bitmap_name (struct rawtrack_image *img, int i);
RAWTRACK_API uint64_t rawtrack_image_bitmap_granularity (struct rawtrack_image *img, int i);
RAWTRACK_API uint32_t rawtrack_image_bitmap_flags (struct rawtrack_image *img, int i);

/* ---- creating --------------------------------------------------------- */
struct rawtrack_create_opts {
  uint32_t struct_size;        /* sizeof (struct rawtrack_create_opts) */
  uint64_t size;               /* virtual size; rounded up to 512 */
  uint32_t cluster_size;       /* 0: the default (65536) */
  int compat;                  /* 2 (0.10) or 3 (1.1, default when 0) */
  int refcount_bits;           /* 0: 16 */
  const char *data_file;       /* name to store for an external data file, or NULL */
  int data_file_raw;           /* set "raw external data" (needs data_file) */
  int force;                   /* overwrite an existing image file */
};

/* Create a new empty image at path.  With data_file, the data file is
 * created (it must not exist unless force) and sized to the virtual
 * size; with data_file_raw, every guest cluster is mapped (identity). */
RAWTRACK_API int rawtrack_image_create (const char *path,
                                        const struct rawtrack_create_opts *opts);

struct rawtrack_attach_opts {
  uint32_t struct_size;        /* sizeof (struct rawtrack_attach_opts) */
  uint32_t cluster_size;       /* 0: RAWTRACK_ATTACH_DEFAULT_CLUSTER_SIZE */
  int force;                   /* overwrite an existing image file */
  const char *stored_name;     /* data file name to record; NULL: the
                                * absolute path of the raw file */
};
#define RAWTRACK_ATTACH_DEFAULT_CLUSTER_SIZE (2u * 1024 * 1024)

/* Wrap an existing raw file or block device in a new qcow2 metadata
 * container (external data file, raw external data, identity mapping).
 * The raw file is opened read-only and never written. */
RAWTRACK_API int rawtrack_attach (const char *raw_path, const char *image_path,
                                  const struct rawtrack_attach_opts *opts);
/* The same over backends: the image backend must be empty and writable;
 * the raw backend is only asked for its size.  Ownership stays with the
 * caller.  name is the data file name to store. */
RAWTRACK_API int rawtrack_attach_io (struct rawtrack_io *image,
                                     uint64_t raw_size, const char *name,
                                     uint32_t cluster_size);

/* ---- checking --------------------------------------------------------- */
struct rawtrack_check_result {
  uint32_t struct_size;        /* sizeof (struct rawtrack_check_result) */
  uint64_t corruptions;        /* errors that remain (after any repair) */
  uint64_t leaks;              /* leaked clusters that remain */
  uint64_t corruptions_fixed;
  uint64_t leaks_fixed;
  uint64_t check_errors;       /* internal errors: the check is incomplete */
  uint64_t total_clusters;     /* guest clusters */
  uint64_t allocated_clusters; /* allocated guest clusters */
  uint64_t fragmented_clusters;
  uint64_t compressed_clusters;
  uint64_t image_end_offset;
  uint64_t bitmaps_in_use;     /* inconsistent (in-use) bitmaps seen */
};

#define RAWTRACK_CHECK_REPAIR_LEAKS  0x1u
#define RAWTRACK_CHECK_REPAIR_ALL    0x3u  /* leaks and safely fixable errors */

/* Called for each finding.  level: 0 info, 1 leak, 2 error. */
typedef void (*rawtrack_check_report_fn) (void *opaque, int level,
                                          const char *message);

/* Check (and with repair flags, fix) the image.  Open with
 * RAWTRACK_OPEN_CHECK (| RAWTRACK_OPEN_RDWR to repair).  Returns 0 when the
 * check ran (res says what it found), -1 when it could not run. */
RAWTRACK_API int rawtrack_image_check (struct rawtrack_image *img,
                                       unsigned repair,
                                       struct rawtrack_check_result *res,
                                       rawtrack_check_report_fn report,
                                       void *opaque);

#ifdef __cplusplus
}
#endif

#endif /* RAWTRACK_H */
