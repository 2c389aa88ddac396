/* rawtrack - overflow-checked arithmetic and rounding.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Sizes and offsets read from disk are hostile until proven otherwise:
 * every sum or product of them goes through the checked helpers.
 */
#ifndef RAWTRACK_ARITH_H
#define RAWTRACK_ARITH_H

#include <stdint.h>
#include <stdbool.h>

/* true on overflow */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow ((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow ((a), (b), (r))

/* n must be a power of two */
#define ROUND_UP(x, n)   (((x) + (n) - 1) & ~((__typeof__ (x)) (n) - 1))
#define ROUND_DOWN(x, n) ((x) & ~((__typeof__ (x)) (n) - 1))
#define IS_ALIGNED(x, n) (((x) & ((n) - 1)) == 0)
#define DIV_ROUND_UP(x, n) (((x) + (n) - 1) / (n))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline bool
is_power_of_2 (uint64_t v)
{
  return v && !(v & (v - 1));
}

static inline int
log2_u64 (uint64_t v)
{
  return 63 - __builtin_clzll (v);
}

#endif /* RAWTRACK_ARITH_H */
