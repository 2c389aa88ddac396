/* rawtrack - unit test for common/vector.h and common/cleanup.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The growable array: appends keep order across growth, the capacity
 * doubles from 16, reserve refuses sizes that overflow (ENOMEM, nothing
 * changed), a failing realloc leaves the vector intact, remove_front
 * shifts, reset empties.  The cleanup attributes: a scoped lock is
 * released on every way out of its block (return, break, fall through),
 * CLEANUP_FREE and CLEANUP_VECTOR free on return (the ASan build's leak
 * checker fails the test if they do not).
 */
#include <stdint.h>
#include <stdbool.h>
#include <pthread.h>

#include "vector.h"
#include "cleanup.h"
#include "test.h"

DEFINE_VECTOR_TYPE (u64_vector, uint64_t, realloc)

static bool fail_realloc;

static void *
flaky_realloc (void *p, size_t n)
{
  if (fail_realloc) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc (p, n);
}

DEFINE_VECTOR_TYPE (flaky_vector, uint32_t, flaky_realloc)

static void
test_vector (void)
{
  struct u64_vector v = { 0 };
  struct flaky_vector f = { 0 };
  uint64_t i;

  for (i = 0; i < 1000; i++)
    REQUIRE (u64_vector_append (&v, i * 3) == 0);
  CHECK (v.len == 1000 && v.cap == 1024);
  for (i = 0; i < 1000; i++)
    CHECK (v.ptr[i] == i * 3);
  u64_vector_remove_front (&v, 10);
  CHECK (v.len == 990 && v.ptr[0] == 30 && v.ptr[989] == 2997);
  u64_vector_remove_front (&v, 5000);         /* more than there is */
  CHECK (v.len == 0);
  errno = 0;
  CHECK (u64_vector_reserve (&v, SIZE_MAX) == -1 && errno == ENOMEM);
  CHECK (u64_vector_reserve (&v, SIZE_MAX / 4) == -1 && errno == ENOMEM);
  CHECK (v.cap == 1024 && v.ptr != NULL);
  u64_vector_reset (&v);
  CHECK (v.ptr == NULL && v.len == 0 && v.cap == 0);

  REQUIRE (flaky_vector_append (&f, 7) == 0);
  CHECK (f.cap == 16);
  for (i = 1; i < 16; i++)
    REQUIRE (flaky_vector_append (&f, (uint32_t) i) == 0);
  fail_realloc = true;
  CHECK (flaky_vector_append (&f, 99) == -1);  /* must grow: fails */
  CHECK (f.len == 16 && f.cap == 16 && f.ptr[0] == 7 && f.ptr[15] == 15);
  fail_realloc = false;
  CHECK (flaky_vector_append (&f, 99) == 0 && f.cap == 32 &&
         f.ptr[16] == 99);
  flaky_vector_reset (&f);
}

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t m2 = PTHREAD_MUTEX_INITIALIZER;

/* Leaves its scopes in several ways; every lock must be free afterwards. */
static int
scoped (int how)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&m);
  CLEANUP_FREE char *p = malloc (100);
  CLEANUP_VECTOR (u64_vector) struct u64_vector v = { 0 };

  REQUIRE (p != NULL);
  REQUIRE (u64_vector_append (&v, 1) == 0);
  CHECK (pthread_mutex_trylock (&m) == EBUSY);   /* held here */
  if (how == 0)
    return 0;                                   /* early return */
  for (;;) {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&m2);
    CHECK (pthread_mutex_trylock (&m2) == EBUSY);
    break;                                      /* leave the block */
  }
  /* m2 is free again, m still held. */
  CHECK (pthread_mutex_trylock (&m2) == 0 && pthread_mutex_unlock (&m2) == 0);
  CHECK (pthread_mutex_trylock (&m) == EBUSY);
  return how;                                   /* fall out */
}

static void
test_cleanup (void)
{
  int how;

  for (how = 0; how < 2; how++) {
    CHECK (scoped (how) == how);
    CHECK (pthread_mutex_trylock (&m) == 0 && pthread_mutex_unlock (&m) == 0);
  }
}

int
main (void)
{
  test_vector ();
  test_cleanup ();
  return test_exit ("test-helpers");
}
