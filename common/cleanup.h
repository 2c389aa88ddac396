/* rawtrack - cleanup attributes: frees and unlocks on every exit path.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * In the style of nbdkit's cleanup.h (GCC and Clang's
 * __attribute__ ((cleanup))):
 *
 *   CLEANUP_FREE char *buf = malloc (n);
 *       buf is freed when it goes out of scope, on every return path.
 *       Set it to NULL to hand the memory on.
 *   CLEANUP_CLOSE int fd = open (...);
 *       fd is closed (if not -1) when it goes out of scope.  Set it to -1
 *       to keep it open.
 *   CLEANUP_FCLOSE FILE *f = fopen (...);
 *       the same for a stdio stream (a NULL stream is left alone).  Only
 *       where a failed fclose cannot matter (read streams, error paths):
 *       a stream whose write must be checked is closed by hand.
 *   ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&img->lock);
 *       locks the mutex now and unlocks it when the enclosing block is
 *       left, however it is left.  (Lock errors abort: they mean a bug.)
 *
 * A goto into the scope of a cleanup variable is a compile error, which
 * keeps the old `goto out` style and this one apart.
 */
#ifndef RAWTRACK_CLEANUP_H
#define RAWTRACK_CLEANUP_H

#include <stdlib.h>
#include <stdio.h>
#include <unistd.h>
#include <errno.h>
#include <pthread.h>

static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

/* close and fclose keep errno: the cleanup runs after the error is set. */
static inline void
cleanup_close (int *fd)
{
  if (*fd >= 0) {
    int e = errno;

    close (*fd);
    errno = e;
  }
}
#define CLEANUP_CLOSE __attribute__ ((cleanup (cleanup_close)))

static inline void
cleanup_fclose (FILE **f)
{
  if (*f) {
    int e = errno;

    fclose (*f);
    errno = e;
  }
}
#define CLEANUP_FCLOSE __attribute__ ((cleanup (cleanup_fclose)))

static inline void
cleanup_mutex_unlock (pthread_mutex_t **m)
{
  if (*m && pthread_mutex_unlock (*m) != 0)
    abort ();
}
#define CLEANUP_MUTEX_UNLOCK __attribute__ ((cleanup (cleanup_mutex_unlock)))

#define CLEANUP_CONCAT_(a, b) a##b
#define CLEANUP_CONCAT(a, b) CLEANUP_CONCAT_ (a, b)
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                             \
  CLEANUP_MUTEX_UNLOCK pthread_mutex_t *CLEANUP_CONCAT (scoped_lock_,     \
                                                        __LINE__) =       \
    (mutex);                                                              \
  do {                                                                    \
    if (pthread_mutex_lock (CLEANUP_CONCAT (scoped_lock_, __LINE__)) != 0) \
      abort ();                                                           \
  } while (0)

#endif /* RAWTRACK_CLEANUP_H */
