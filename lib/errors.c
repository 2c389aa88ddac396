/* rawtrack - thread-local last error.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the per-thread error message and errno returned by
 * rawtrack_get_error / rawtrack_get_errno.
 * Locking: none needed; the state is thread-local.  The message buffer is
 * fixed-size so that recording an error never allocates (it must work when
 * an allocation is what failed).
 * Lifetime: the string returned stays valid until the next librawtrack call
 * on the same thread that records or clears an error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>

#include "internal.h"

#define MSG_MAX 1024

static __thread char last_msg[MSG_MAX];
static __thread int last_errno;
static __thread int have_error;

int
rt_set_error (int errnum, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (last_msg, sizeof last_msg, fmt, ap);
  va_end (ap);
  last_errno = errnum;
  have_error = 1;
  errno = errnum;
  return -1;
}

void
rt_prefix_error (const char *fmt, ...)
{
  char prefix[MSG_MAX], old[MSG_MAX];
  size_t plen;
  va_list ap;
  int saved = errno;

  va_start (ap, fmt);
  vsnprintf (prefix, sizeof prefix, fmt, ap);
  va_end (ap);
  memcpy (old, last_msg, sizeof old);
  plen = strlen (prefix);
  if (plen >= sizeof last_msg)
    plen = sizeof last_msg - 1;
  memcpy (last_msg, prefix, plen);
  snprintf (last_msg + plen, sizeof last_msg - plen, "%.*s",
            (int) (sizeof last_msg - plen - 1), old);
  have_error = 1;
  errno = saved;
}

void
rt_clear_error (void)
{
  last_msg[0] = '\0';
  last_errno = 0;
  have_error = 0;
}

RAWTRACK_API const char *
rawtrack_get_error (void)
{
  return have_error ? last_msg : NULL;
}

RAWTRACK_API int
rawtrack_get_errno (void)
{
  return have_error ? last_errno : 0;
}
