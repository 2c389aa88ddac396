/* rawtrack - QEMU-compatible image locks for the file backend (private).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * See io-file-lock.c.  Used by io-file.c only.
 */
#ifndef RAWTRACK_IO_FILE_LOCK_H
#define RAWTRACK_IO_FILE_LOCK_H

/* Hold perm and deny deny (RAWTRACK_IO_PERM_*) on the open file
 * description of fd.  0, or -1 with errno EBUSY and the rawtrack error
 * naming the conflicting permission (nothing held then), or -1 with
 * another errno for an unexpected fcntl failure. */
int file_lock_fd (int fd, unsigned perm, unsigned deny);

#endif /* RAWTRACK_IO_FILE_LOCK_H */
