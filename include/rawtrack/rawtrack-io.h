/* rawtrack - changed-block tracking for disk images
 * Copyright (C) 2026 the rawtrack authors.  SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The I/O backend contract.
 *
 * Every byte librawtrack reads or writes goes through a struct rawtrack_io.
 * The qcow2 core holds two of them: the image (metadata) file and, when the
 * image has one, the external data file.  It never touches a file
 * descriptor itself, so the same core runs on regular files, block devices,
 * memory (tests, fuzzing) and, later, network stores.
 *
 * A backend embeds struct rawtrack_io as the FIRST member of its private
 * struct and points .ops at a static table.  The table starts with its own
 * size and only ever grows at the end: a method past struct_size, or a NULL
 * method, is "not implemented".
 *
 * Contract for every method:
 *  - Return 0 (or the documented non-negative value) on success, -1 on error
 *    with errno set.  Backends never print and never call rawtrack_set_error;
 *    the caller turns errno into a message that names the structure.
 *  - Errnos: EIO, ENOSPC, EROFS (write on a read-only backend), EINVAL (bad
 *    argument), ENOTSUP (operation not supported), ENOMEM, EBUSY (lock:
 *    held by another opener).
 *  - pread past the end of the backend: the bytes past the end read as zero
 *    and the call succeeds (the SQLite xRead rule).  A read that starts past
 *    the end is entirely zeros.  Callers that must know the size ask
 *    get_size.
 *  - pwrite past the end extends the backend (regular files, memory); a block
 *    device fails with ENOSPC.
 *  - Methods may be called from several threads at once for disjoint or
 *    overlapping ranges; a backend either supports that (pread/pwrite on a
 *    file descriptor do) or says so in its thread_model.
 *  - Data is durable only after a successful flush (or a write with
 *    RAWTRACK_IO_FUA).
 */
#ifndef RAWTRACK_IO_H
#define RAWTRACK_IO_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef RAWTRACK_API
#define RAWTRACK_API __attribute__ ((visibility ("default")))
#endif

struct rawtrack_io;

/* One write of a batch (see pwrite_batch). */
struct rawtrack_io_vec {
  const void *buf;
  uint64_t count;
  uint64_t offset;
};

/* Flags for pwrite and zero. */
#define RAWTRACK_IO_FUA        0x1u  /* durable when the call returns */
#define RAWTRACK_IO_MAY_TRIM   0x2u  /* zero: may punch a hole */
#define RAWTRACK_IO_FAST_ZERO  0x4u  /* zero: fail with ENOTSUP rather than write zeros slowly */

/* Capability bits returned by caps. */
#define RAWTRACK_IO_CAN_WRITE     0x01u
#define RAWTRACK_IO_CAN_ZERO      0x02u  /* zero is efficient (not emulated) */
#define RAWTRACK_IO_CAN_TRIM      0x04u
#define RAWTRACK_IO_CAN_FUA       0x08u  /* native FUA, not flush after write */
#define RAWTRACK_IO_IS_BLOCKDEV   0x10u
#define RAWTRACK_IO_CAN_EXTENTS   0x20u  /* next_data/next_hole work */
#define RAWTRACK_IO_CAN_TRUNCATE  0x40u

struct rawtrack_io_ops {
  uint32_t struct_size;  /* sizeof (struct rawtrack_io_ops) the backend was built with */
  const char *name;      /* "file", "mem", ... static */

  /* Read count bytes at offset into buf; zero-fill past the end. */
  int (*pread) (struct rawtrack_io *io, void *buf, uint64_t count,
                uint64_t offset);
  /* Write count bytes.  flags: RAWTRACK_IO_FUA. */
  int (*pwrite) (struct rawtrack_io *io, const void *buf, uint64_t count,
                 uint64_t offset, unsigned flags);
  /* Make every completed write durable. */
  int (*flush) (struct rawtrack_io *io);
  /* Make the range read as zeros.  flags: MAY_TRIM, FAST_ZERO, FUA.  A
   * backend without an efficient method writes zeros (unless FAST_ZERO). */
  int (*zero) (struct rawtrack_io *io, uint64_t count, uint64_t offset,
               unsigned flags);
  /* Advisory discard: afterwards the contents of the range are unspecified
   * (zeros, the old data, or - on some block devices - anything). */
  int (*trim) (struct rawtrack_io *io, uint64_t count, uint64_t offset);
  /* Current size in bytes, or -1. */
  int64_t (*get_size) (struct rawtrack_io *io);
  /* Set the size (regular files and memory only; ENOTSUP elsewhere). */
  int (*truncate) (struct rawtrack_io *io, uint64_t size);
  /* Release everything; io is invalid afterwards.  Never fails. */
  void (*close) (struct rawtrack_io *io);
  /* RAWTRACK_IO_* capability bits. */
  unsigned (*caps) (struct rawtrack_io *io);
  /* Block size constraints: minimum, preferred, maximum (bytes). */
  int (*block_size) (struct rawtrack_io *io, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum);
  /* Sparseness: *is_data is set for the run starting at offset, and the
   * return value is the length of that run (> 0, at most count), or -1
   * (count 0 is EINVAL).
   * Backends without CAN_EXTENTS report everything as data. */
  int64_t (*extent) (struct rawtrack_io *io, uint64_t offset, uint64_t count,
                     int *is_data);
  /* Optional (added after the first release: check struct_size).  A file
   * descriptor whose byte k is the backend's byte k, for zero-copy
   * transfers (sendfile(2), splice(2)); it stays open until close.  Writes
   * made straight to it bypass the backend: flush afterwards for
   * durability.  -1 if there is none (memory, shims, O_DIRECT files, whose
   * I/O needs alignment). */
  int (*raw_fd) (struct rawtrack_io *io);
  /* Optional (added after raw_fd).  Write n buffers, each at its own
   * offset, as one batch: the backend may issue them together and in any
   * order, and returns once every one is written (0) or when one failed
   * (-1 with errno; any of them may have been written then).  Durability
   * is pwrite's: flush afterwards.  It exists for writes that must all be
   * on disk before the caller may go on (the dirty-bitmap sectors of a
   * commit): n scattered writes cost about one device round trip instead
   * of n.  Overlapping ranges in one batch are undefined.  Without it,
   * rawtrack_io_pwrite_batch writes them one by one with pwrite. */
  int (*pwrite_batch) (struct rawtrack_io *io,
                       const struct rawtrack_io_vec *v, size_t n);
  /* Optional (added after pwrite_batch).  Image locking as QEMU does it,
   * so that QEMU and rawtrack see each other: hold the permissions in
   * `perm` and deny those in `deny` (RAWTRACK_IO_PERM_*) to every other
   * opener, until close.  Fails with EBUSY, holding nothing, when another
   * opener denies one of perm or holds one of deny.  A file system
   * without the needed locks is not an error: nothing is held then.
   * Without this op rawtrack_io_lock does nothing. */
  int (*lock) (struct rawtrack_io *io, unsigned perm, unsigned deny);
};

/* Permissions for lock, with QEMU's numbering (BLK_PERM_*). */
#define RAWTRACK_IO_PERM_READ             0x1u  /* consistent read */
#define RAWTRACK_IO_PERM_WRITE            0x2u
#define RAWTRACK_IO_PERM_WRITE_UNCHANGED  0x4u
#define RAWTRACK_IO_PERM_RESIZE           0x8u

/* Base of every backend; embed as the first member. */
struct rawtrack_io {
  const struct rawtrack_io_ops *ops;
};

/* Open flags for rawtrack_io_file_open. */
#define RAWTRACK_IO_RDONLY  0x0u
#define RAWTRACK_IO_RDWR    0x1u
#define RAWTRACK_IO_CREATE  0x2u   /* create if missing (with RDWR) */
#define RAWTRACK_IO_EXCL    0x4u   /* with CREATE: fail if it exists */
#define RAWTRACK_IO_DIRECT  0x8u   /* O_DIRECT where supported */
#define RAWTRACK_IO_DSYNC   0x10u  /* O_DSYNC: every write is durable */
#define RAWTRACK_IO_NO_DEVICE 0x20u /* refuse block devices too (for names
                                     * that come from an untrusted image) */

/* A regular file or a block device (detected with fstat).  Returns NULL
 * and sets the rawtrack error on failure.  Caller closes with
 * rawtrack_io_close.
 * Refused, always, before anything is opened for I/O: FIFOs, sockets,
 * character devices and directories (opening a FIFO would block, opening
 * a device may have side effects), and any file on a pseudo file system
 * whose files are views of kernel or process state rather than stored
 * data (proc, sysfs, debugfs, tracefs, cgroup, securityfs, ... - the list
 * is in lib/io/io-file.c).  With RAWTRACK_IO_NO_DEVICE block devices are
 * refused as well. */
RAWTRACK_API struct rawtrack_io *rawtrack_io_file_open (const char *path,
                                                        unsigned flags);

/* A growable in-memory backend holding a copy of data[0..size) (data may be
 * NULL for zeros).  max_size bounds growth (0: 1 GiB).  Caller closes. */
RAWTRACK_API struct rawtrack_io *rawtrack_io_mem_new (const void *data,
                                                      uint64_t size,
                                                      uint64_t max_size);
/* The memory backend's buffer and size (owned by the backend). */
RAWTRACK_API const void *rawtrack_io_mem_data (struct rawtrack_io *io,
                                               uint64_t *size);

/* A data file behind an NBD server, named by an NBD URI: nbd://HOST[:PORT]/
 * EXPORT, nbds://... (TLS required), nbd+unix:///EXPORT?socket=PATH,
 * nbds+unix://...; no other scheme or transport.  TLS credentials come
 * from the URI (tls-certificates=DIR, tls-psk-file=FILE, user@ for PSK)
 * or from rawtrack_nbd_set_tls.  Many requests in flight, several
 * connections when the server allows multi-conn, fixed size (writes past
 * the end: ENOSPC), FUA and flush sent through.  Environment:
 * RAWTRACK_NBD_TIMEOUT (seconds a request may wait for its reply,
 * default 60, 0: forever), RAWTRACK_NBD_CONNECTIONS (connections used
 * when the server offers multi-conn, default 8: each carries one caller's
 * request at a time, so this bounds the requests in flight).
 * flags: RAWTRACK_IO_RDONLY or RAWTRACK_IO_RDWR.  NULL and the rawtrack
 * error on failure (naming the URI and the server's answer). */
RAWTRACK_API struct rawtrack_io *rawtrack_io_nbd_open (const char *uri,
                                                       unsigned flags);
/* 1 if name starts with one of the four NBD URI schemes above, else 0. */
RAWTRACK_API int rawtrack_is_nbd_uri (const char *name);
/* Process-wide TLS credentials for NBD data files opened afterwards
 * (nbds:// URIs): an X.509 directory (ca-cert.pem, and client-cert.pem
 * plus client-key.pem when the server checks clients) and/or a PSK file
 * (username:hexkey lines; the user is the URI's user@).  NULL: libnbd's
 * defaults.  0 or -1. */
RAWTRACK_API int rawtrack_nbd_set_tls (const char *certificates,
                                       const char *psk_file);

/* Wrappers that check struct_size and NULL methods, for callers of a
 * backend.  Like every rawtrack_* function, one that fails returns -1 (or
 * NULL) with errno AND the thread's message set (rawtrack_get_error:
 * backend, operation, range); one that succeeds clears the message.
 * A missing method is ENOTSUP (pwrite: EROFS) - flush too: a backend
 * without flush cannot make anything durable, and saying so is what keeps
 * crash-safe tracking honest.  extent without a method reports data;
 * lock without a method holds nothing and succeeds.  Backends themselves
 * report only through their return value and errno (above). */
RAWTRACK_API int rawtrack_io_pread (struct rawtrack_io *io, void *buf,
                                    uint64_t count, uint64_t offset);
RAWTRACK_API int rawtrack_io_pwrite (struct rawtrack_io *io, const void *buf,
                                     uint64_t count, uint64_t offset,
                                     unsigned flags);
RAWTRACK_API int rawtrack_io_flush (struct rawtrack_io *io);
RAWTRACK_API int rawtrack_io_zero (struct rawtrack_io *io, uint64_t count,
                                   uint64_t offset, unsigned flags);
RAWTRACK_API int rawtrack_io_trim (struct rawtrack_io *io, uint64_t count,
                                   uint64_t offset);
RAWTRACK_API int64_t rawtrack_io_get_size (struct rawtrack_io *io);
RAWTRACK_API int rawtrack_io_truncate (struct rawtrack_io *io, uint64_t size);
RAWTRACK_API unsigned rawtrack_io_caps (struct rawtrack_io *io);
RAWTRACK_API int64_t rawtrack_io_extent (struct rawtrack_io *io,
                                         uint64_t offset, uint64_t count,
                                         int *is_data);
/* The backend's pwrite_batch, or pwrite for each in turn without one. */
RAWTRACK_API int rawtrack_io_pwrite_batch (struct rawtrack_io *io,
                                           const struct rawtrack_io_vec *v,
                                           size_t n);
/* The backend's raw_fd, or -1 when it has none. */
RAWTRACK_API int rawtrack_io_raw_fd (struct rawtrack_io *io);
/* The backend's lock, or 0 (nothing held) when it has none. */
RAWTRACK_API int rawtrack_io_lock (struct rawtrack_io *io, unsigned perm,
                                   unsigned deny);
/* NULL-safe. */
RAWTRACK_API void rawtrack_io_close (struct rawtrack_io *io);

#ifdef __cplusplus
}
#endif

#endif /* RAWTRACK_IO_H */
