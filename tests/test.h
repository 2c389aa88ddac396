/* rawtrack - what every C test shares.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   CHECK (cond)    on failure print file:line, the condition, errno and
 *                   the library's last message, count it, go on
 *   REQUIRE (cond)  the same, then exit(1): for checks later code relies on
 *   CHECK_ERR (expr, err), REQUIRE_ERR (expr, err)
 *                   expr returns -1 with errno err
 *   test_exit (name)  the exit status: 1 after any failure, else prints
 *                   "name: ok" and 0
 *   rt_random (&state)  the one pseudo-random generator (common/random.h)
 *
 * Asserts stay on (NDEBUG undefined).  Exit 77 = skipped, as in meson.
 */
#ifndef RAWTRACK_TEST_H
#define RAWTRACK_TEST_H

#undef NDEBUG
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rawtrack/rawtrack.h"
#include "random.h"

static int test_failures;

#define TEST_REPORT_(cond)                                                \
  do {                                                                    \
    const char *test_err_ = rawtrack_get_error ();                        \
    fprintf (stderr, "%s:%d: check failed: %s (errno: %s; last error: "   \
             "%s)\n", __FILE__, __LINE__, cond, strerror (errno),         \
             test_err_ ? test_err_ : "none");                             \
  } while (0)

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      TEST_REPORT_ (#cond);                                               \
      test_failures++;                                                    \
    }                                                                     \
  } while (0)

#define REQUIRE(cond)                                                     \
  do {                                                                    \
    if (!(cond)) {                                                        \
      TEST_REPORT_ (#cond);                                               \
      exit (1);                                                           \
    }                                                                     \
  } while (0)

/* expr fails (-1) with errno err. */
#define CHECK_ERR(expr, err)                                              \
  do {                                                                    \
    errno = 0;                                                            \
    CHECK ((expr) == -1);                                                 \
    CHECK (errno == (err));                                               \
  } while (0)
#define REQUIRE_ERR(expr, err)                                            \
  do {                                                                    \
    errno = 0;                                                            \
    REQUIRE ((expr) == -1);                                               \
    REQUIRE (errno == (err));                                             \
  } while (0)

static inline __attribute__ ((__unused__)) int
test_exit (const char *name)
{
  if (test_failures) {
    fprintf (stderr, "%s: %d failures\n", name, test_failures);
    return 1;
  }
  printf ("%s: ok\n", name);
  return 0;
}

#endif /* RAWTRACK_TEST_H */
