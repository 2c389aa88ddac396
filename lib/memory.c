/* rawtrack - the single allocation path of librawtrack.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: every heap allocation made by lib/.  Each wrapper records an
 * ENOMEM error on failure, and tests can make the n-th allocation fail
 * (rt_alloc_fail_after) to prove that every failure path is handled.
 * Locking: the fail-after counter is atomic; tests use it single-threaded.
 */
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "internal.h"

static unsigned long fail_countdown;

void
rt_alloc_fail_after (unsigned long n)
{
  __atomic_store_n (&fail_countdown, n, __ATOMIC_SEQ_CST);
}

unsigned long
rt_alloc_fail_pending (void)
{
  return __atomic_load_n (&fail_countdown, __ATOMIC_SEQ_CST);
}

static int
injected_failure (void)
{
  unsigned long n = __atomic_load_n (&fail_countdown, __ATOMIC_SEQ_CST);

  if (n == 0)
    return 0;
  if (__atomic_sub_fetch (&fail_countdown, 1, __ATOMIC_SEQ_CST) == 0)
    return 1;
  return 0;
}

static void *
oom (size_t n)
{
  rt_set_error (ENOMEM, "out of memory allocating %zu bytes", n);
  return NULL;
}

void *
rt_realloc_quiet (void *p, size_t n)
{
  if (injected_failure ()) {
    errno = ENOMEM;
    return NULL;
  }
  p = realloc (p, n ? n : 1);
  if (!p)
    errno = ENOMEM;
  return p;
}

void *
rt_malloc (size_t n)
{
  void *p;

  if (injected_failure () || !(p = malloc (n ? n : 1)))
    return oom (n);
  return p;
}

void *
rt_calloc (size_t nmemb, size_t size)
{
  void *p;

  if (injected_failure () || !(p = calloc (nmemb ? nmemb : 1, size ? size : 1)))
    return oom (nmemb * size);
  return p;
}

void *
rt_realloc (void *old, size_t n)
{
  void *p;

  if (injected_failure () || !(p = realloc (old, n ? n : 1)))
    return oom (n);
  return p;
}

char *
rt_strdup (const char *s)
{
  return rt_strndup (s, strlen (s));
}

char *
rt_strndup (const char *s, size_t n)
{
  char *p = rt_malloc (n + 1);

  if (p) {
    memcpy (p, s, n);
    p[n] = '\0';
  }
  return p;
}
