/* rawtrack - test-only I/O shims (fault and crash injection).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Not installed.  Both shims wrap another struct rawtrack_io ("inner") and
 * are built into the internal static library so that unit and crash tests
 * can drive the qcow2 core through them:
 *
 *   io-fault.c  fails the n-th matching call, once or from then on
 *               (SQLite test_vfs.c).
 *   io-crash.c  keeps writes in memory until flush and, on a simulated
 *               power loss, applies, drops or garbles each pending sector
 *               (SQLite test6.c).
 *
 * Both follow rawtrack-io.h: methods return -1 with errno set and never
 * record a rawtrack error.  The constructors record one and return NULL.
 */
#ifndef RAWTRACK_IO_SHIMS_H
#define RAWTRACK_IO_SHIMS_H

#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>

#include "rawtrack/rawtrack-io.h"

/* Operation classes, used as bit masks by both shims. */
#define IO_OP_READ      0x01u   /* pread */
#define IO_OP_WRITE     0x02u   /* pwrite */
#define IO_OP_FLUSH     0x04u   /* flush */
#define IO_OP_ZERO      0x08u   /* zero */
#define IO_OP_TRIM      0x10u   /* trim */
#define IO_OP_TRUNCATE  0x20u   /* truncate */
#define IO_OP_ALL       0x3fu

/* ---- io-fault.c -------------------------------------------------------- */
/* Wrap inner.  With own_inner, closing the shim closes inner (also when
 * this call fails).  Caller closes with rawtrack_io_close.  get_size, caps,
 * block_size and extent pass through and are never faulted. */
struct rawtrack_io *io_fault_new (struct rawtrack_io *inner, bool own_inner);
/* Arm a fault: the nth call (1 = the next one) from now whose class is in
 * ops_mask fails with err (0 means EIO) without reaching inner.  If
 * persistent, every later matching call fails too.  nth == 0 or an empty
 * mask disarms.  Also clears the "fired" flag. */
void io_fault_set (struct rawtrack_io *io, unsigned ops_mask, uint64_t nth,
                   int err, bool persistent);
/* Number of calls in ops_mask made since io_fault_new, faulted or not. */
uint64_t io_fault_count (struct rawtrack_io *io, unsigned ops_mask);
/* true once the fault armed by the last io_fault_set has been injected. */
bool io_fault_fired (struct rawtrack_io *io);

/* ---- io-crash.c -------------------------------------------------------- */
/* Wrap inner.  Writes, zeros, trims and truncates are kept in memory until
 * flush, which applies them to inner in order and flushes inner: what is in
 * inner is what survived power loss.  seed drives every random choice, so
 * a failing seed replays exactly.  own_inner as for io_fault_new.
 *
 * Simplifications, all on the safe side of a real disk:
 *  - a FUA write acts as write + flush (it makes older writes durable too);
 *  - a pending trim reads as zeros and is applied as zeros;
 *  - a truncate is a barrier for the crash reordering (see io-crash.c). */
struct rawtrack_io *io_crash_new (struct rawtrack_io *inner, bool own_inner,
                                  uint64_t seed);
/* Power loss now.  Each pending write is cut into sector units (512-byte
 * sectors clipped to the write, so partial sectors are units too); each
 * unit is independently applied, dropped or (garble mode) replaced by
 * random bytes, and the survivors reach inner in a random order.  inner is
 * then flushed.  Afterwards every method of io fails with EIO.  Returns 0,
 * or -1 with errno if inner failed while the survivors were written. */
int io_crash_crash (struct rawtrack_io *io);
/* Crash automatically when the nth call (1 = the next) from now whose class
 * is in ops_mask starts: that call is not applied and fails with EIO.
 * nth == 0 or an empty mask disarms. */
void io_crash_set_crash_at (struct rawtrack_io *io, unsigned ops_mask,
                            uint64_t nth);
/* Number of calls in ops_mask made since io_crash_new. */
uint64_t io_crash_count (struct rawtrack_io *io, unsigned ops_mask);
/* Garble mode (off by default): a crashed unit may also become garbage. */
void io_crash_set_garble (struct rawtrack_io *io, bool garble);
/* Bound on pending memory (data bytes plus a fixed cost per pending
 * operation); a write past it fails with ENOSPC.  0 restores the default,
 * IO_CRASH_DEFAULT_MAX_PENDING. */
#define IO_CRASH_DEFAULT_MAX_PENDING (UINT64_C (1) << 30)
void io_crash_set_max_pending (struct rawtrack_io *io, uint64_t max_bytes);
/* Pending operations not yet flushed, and whether io has crashed. */
uint64_t io_crash_pending (struct rawtrack_io *io);
bool io_crash_crashed (struct rawtrack_io *io);

/* ---- shared by the shims ----------------------------------------------- */
/* The block_size method has no public wrapper; this forwards it with the
 * same struct_size rule as io.c and reports 1 / 4096 / UINT32_MAX for a
 * backend without one. */
static inline int
io_shim_block_size (struct rawtrack_io *inner, uint32_t *minimum,
                    uint32_t *preferred, uint32_t *maximum)
{
  const struct rawtrack_io_ops *ops = inner->ops;

  if (ops->struct_size >= offsetof (struct rawtrack_io_ops, block_size) +
      sizeof ops->block_size && ops->block_size != NULL)
    return ops->block_size (inner, minimum, preferred, maximum);
  *minimum = 1;
  *preferred = 4096;
  *maximum = UINT32_MAX;
  return 0;
}

#endif /* RAWTRACK_IO_SHIMS_H */
