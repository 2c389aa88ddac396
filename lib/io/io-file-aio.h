/* rawtrack - batched direct writes for the file backend (private).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * See io-file-aio.c.  Used by io-file.c only.
 */
#ifndef RAWTRACK_IO_FILE_AIO_H
#define RAWTRACK_IO_FILE_AIO_H

#include <stdbool.h>
#include <stddef.h>

#include "rawtrack/rawtrack-io.h"

struct file_aio;

/* A batch writer for fd (the backend's own descriptor, which it keeps).
 * direct: fd is already O_DIRECT; dsync: every write must be durable
 * (O_DSYNC); align: the O_DIRECT unit (offsets and lengths).  Returns NULL
 * with errno when the kernel offers nothing better than one pwrite per
 * range (no O_DIRECT on this filesystem, no Linux AIO, no /proc). */
struct file_aio *file_aio_new (int fd, bool direct, bool dsync,
                               uint32_t align);

/* Write every range of the batch.  0: all written; -1 with errno: one
 * failed; 1: the batch cannot go this way (unaligned, or the kernel
 * refused direct I/O here), nothing is known to be written and the caller
 * must write it another way.  Thread-safe (one batch at a time). */
int file_aio_write (struct file_aio *a, const struct rawtrack_io_vec *v,
                    size_t n);

/* NULL-safe; waits for nothing (file_aio_write returns only when its
 * batch is complete). */
void file_aio_free (struct file_aio *a);

#endif /* RAWTRACK_IO_FILE_AIO_H */
