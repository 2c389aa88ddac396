/* rawtrack - shared declarations of the fuzz targets.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every target defines LLVMFuzzerTestOneInput.  It is linked either with
 * libFuzzer (clang -fsanitize=fuzzer, -Dfuzzing=true) or with
 * regression.c, which replays a corpus directory in the normal test run.
 *
 * FUZZ_CHECK states a property the library must keep for any input.  It
 * is not assert: it stays on with NDEBUG, and it prints the expression and
 * the library's last error before aborting, so that a libFuzzer crash
 * report says which invariant broke.
 */
#ifndef RAWTRACK_FUZZ_H
#define RAWTRACK_FUZZ_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      const char *fuzz_err_ = rawtrack_get_error ();                    \
      fprintf (stderr, "%s:%d: fuzz invariant failed: %s\n"             \
               "  last rawtrack error: %s\n", __FILE__, __LINE__,       \
               #cond, fuzz_err_ ? fuzz_err_ : "(none)");                \
      abort ();                                                         \
    }                                                                   \
  } while (0)

#endif /* RAWTRACK_FUZZ_H */
