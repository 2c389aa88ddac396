/* rawtrack - one pseudo-random generator for tests and benchmarks.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * SplitMix64 (Steele, Lea and Flood): fast, every 64-bit state is a valid
 * seed (0 included), and one call is one step, so a test that prints its
 * seed can be replayed.  Not for anything that needs secrecy.
 *
 * Locking: none; the state is the caller's (one per thread).
 */
#ifndef RAWTRACK_RANDOM_H
#define RAWTRACK_RANDOM_H

#include <stdint.h>

static inline uint64_t
rt_random (uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

#endif /* RAWTRACK_RANDOM_H */
