/* rawtrack - a growable array (typed vector), after nbdkit's vector.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * DEFINE_VECTOR_TYPE (name, type, realloc_fn) defines
 *
 *   struct name { type *ptr; size_t len, cap; };
 *       A zeroed struct is an empty vector.  ptr[0 .. len-1] are the
 *       elements; ptr may move whenever the vector grows.
 *   int name_reserve (struct name *v, size_t n)
 *       Room for n more elements: 0, or -1 (realloc_fn failed, or the
 *       size overflows: errno ENOMEM).  The capacity doubles, from 16.
 *   int name_append (struct name *v, type elem)
 *   void name_remove_front (struct name *v, size_t n)   drop ptr[0..n-1]
 *   void name_reset (struct name *v)                    free, empty
 *
 * CLEANUP_VECTOR (name) struct name v = { 0 };  resets v on every exit
 * from its scope (cleanup.h's style).
 *
 * realloc_fn is realloc in the command and the server, rt_realloc in the
 * library (which sets the library's error message and lets tests inject
 * allocation failures).
 *
 * Locking: none; a vector belongs to whoever protects the struct it is
 * in.
 */
#ifndef RAWTRACK_VECTOR_H
#define RAWTRACK_VECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

/* Make room for n more elements of size elem beyond len. */
static inline int
vector_reserve_generic (void **ptr, size_t *cap, size_t len, size_t n,
                        size_t elem, void *(*realloc_fn) (void *, size_t))
{
  size_t want, newcap;
  void *p;

  if (n <= *cap - len)
    return 0;
  if (n > SIZE_MAX - len) {
    errno = ENOMEM;
    return -1;
  }
  want = len + n;
  newcap = *cap ? *cap : 16;
  while (newcap < want)
    newcap = newcap > SIZE_MAX / 2 ? want : newcap * 2;
  if (newcap > SIZE_MAX / elem) {
    errno = ENOMEM;
    return -1;
  }
  p = realloc_fn (*ptr, newcap * elem);
  if (!p)
    return -1;
  *ptr = p;
  *cap = newcap;
  return 0;
}

#define DEFINE_VECTOR_TYPE(name, type, realloc_fn)                          \
  struct name {                                                             \
    type *ptr;                                                              \
    size_t len, cap;                                                        \
  };                                                                        \
                                                                            \
  static inline __attribute__ ((__unused__)) int                           \
  name##_reserve (struct name *v, size_t n)                                 \
  {                                                                         \
    void *p = v->ptr;                                                       \
    int r = vector_reserve_generic (&p, &v->cap, v->len, n, sizeof (type),  \
                                    realloc_fn);                            \
    v->ptr = p;                                                             \
    return r;                                                               \
  }                                                                         \
                                                                            \
  static inline __attribute__ ((__unused__)) int                           \
  name##_append (struct name *v, type elem)                                 \
  {                                                                         \
    if (name##_reserve (v, 1) == -1)                                        \
      return -1;                                                            \
    v->ptr[v->len++] = elem;                                                \
    return 0;                                                               \
  }                                                                         \
                                                                            \
  static inline __attribute__ ((__unused__)) void                          \
  name##_remove_front (struct name *v, size_t n)                            \
  {                                                                         \
    if (n > v->len)                                                         \
      n = v->len;                                                           \
    if (n)                                                                  \
      memmove (v->ptr, v->ptr + n, (v->len - n) * sizeof (type));          \
    v->len -= n;                                                            \
  }                                                                         \
                                                                            \
  static inline __attribute__ ((__unused__)) void                          \
  name##_reset (struct name *v)                                             \
  {                                                                         \
    free (v->ptr);                                                          \
    v->ptr = NULL;                                                          \
    v->len = v->cap = 0;                                                    \
  }                                                                         \
                                                                            \
  static inline __attribute__ ((__unused__)) void                          \
  name##_cleanup (struct name *v)                                           \
  {                                                                         \
    name##_reset (v);                                                       \
  }

#define CLEANUP_VECTOR(name) __attribute__ ((cleanup (name##_cleanup)))

#endif /* RAWTRACK_VECTOR_H */
