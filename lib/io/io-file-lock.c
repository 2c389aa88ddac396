/* rawtrack - QEMU-compatible image locks for the file backend.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the lock bytes QEMU's file driver (block/file-posix.c) uses to
 * keep two programs from writing one image, so that a QEMU that has the
 * image open refuses rawtrack's writers and the other way round.
 *
 * THE PROTOCOL (as observed with QEMU 7.2 in /proc/locks)
 *   Open file description (OFD) locks, all shared (F_RDLCK), one byte
 *   each, per permission bit i (1 consistent read, 2 write, 4 write
 *   unchanged, 8 resize):
 *     byte 100 + i   held while the opener HAS permission i
 *     byte 200 + i   held while the opener DENIES permission i to others
 *   An opener first takes its bytes, then tests, with F_OFD_GETLK for an
 *   exclusive lock, every byte 200 + i for the permissions it has and
 *   every byte 100 + i for those it denies: a lock there held by another
 *   description is a conflict, and it drops what it took.  Two openers
 *   racing may both fail; neither can succeed over the other.
 *   QEMU writing a qcow2 image with a data file holds read, write and
 *   resize on both files and denies write and resize on the qcow2 file,
 *   resize on the data file; read-only it holds read and denies the same.
 *
 * Locks belong to the open file description: they go when the last
 * descriptor of it is closed, by close or by the death of the process
 * (kill -9 leaves nothing behind).  A second open of the same file in the
 * same process is another description and conflicts like any opener.
 *
 * Where the kernel or the file system has no OFD locks (EINVAL, ENOLCK,
 * EOPNOTSUPP) nothing is held and nothing is refused: QEMU then has none
 * either (its fallback, process-associated locks, would be dropped by
 * any close of the file in this process, so it is not imitated).
 *
 * Errors go back through errno only (EBUSY: a conflict), as for every
 * backend method; image_lock_file (image.c) words the message.
 *
 * Locking (threads): none; called once per backend, at open.
 */
#include <stdbool.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "internal.h"
#include "io-file-lock.h"

#define PERM_BASE    100
#define DENY_BASE    200
#define NPERM        4

/* 0 done, 1 no OFD locks here, -1 other error (errno). */
static int
set_byte (int fd, off_t off, short type)
{
  struct flock fl = {
    .l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
  };

  if (fcntl (fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  if (errno == EINVAL || errno == ENOLCK || errno == EOPNOTSUPP)
    return 1;
  return -1;
}

/* 1 if another open file description holds byte off. */
static int
byte_taken (int fd, off_t off)
{
  struct flock fl = {
    .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1,
  };

  if (fcntl (fd, F_OFD_GETLK, &fl) == -1)
    return -1;
  return fl.l_type != F_UNLCK;
}

static void
unlock_all (int fd)
{
  int i;

  for (i = 0; i < NPERM; i++) {
    (void) set_byte (fd, PERM_BASE + i, F_UNLCK);
    (void) set_byte (fd, DENY_BASE + i, F_UNLCK);
  }
}

int
file_lock_fd (int fd, unsigned perm, unsigned deny)
{
  int i, d, r, saved;

  for (i = 0; i < NPERM; i++) {
    r = 0;
    if (perm & (1u << i))
      r = set_byte (fd, PERM_BASE + i, F_RDLCK);
    if (r == 0 && (deny & (1u << i)))
      r = set_byte (fd, DENY_BASE + i, F_RDLCK);
    if (r == 1) {                       /* no OFD locks: hold nothing */
      unlock_all (fd);
      return 0;
    }
    if (r == -1)
      goto error;
  }
  /* Per permission, QEMU's order: is what we hold denied, is what we
   * deny held? */
  for (i = 0; i < NPERM; i++)
    for (d = 0; d < 2; d++) {
      if (!((d ? deny : perm) & (1u << i)))
        continue;
      r = byte_taken (fd, (d ? PERM_BASE : DENY_BASE) + i);
      if (r == 0)
        continue;
      if (r == -1)
        goto error;
      unlock_all (fd);
      errno = EBUSY;
      return -1;
    }
  return 0;

 error:
  saved = errno;
  unlock_all (fd);
  errno = saved;
  return -1;
}
