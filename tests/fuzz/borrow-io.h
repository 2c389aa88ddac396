/* rawtrack - a backend that forwards to another one and never closes it.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * rawtrack_image_open_io takes ownership of its backends and closes them
 * with the image.  To close an image and reopen exactly the bytes it left
 * behind, give it borrow_io_new (inner) instead of inner: closing the
 * image frees only the wrapper, and inner stays with the caller.
 */
#ifndef RAWTRACK_BORROW_IO_H
#define RAWTRACK_BORROW_IO_H

#include <rawtrack/rawtrack-io.h>

/* Returns the wrapper (aborts if out of memory; this is test code). */
struct rawtrack_io *borrow_io_new (struct rawtrack_io *inner);

#endif /* RAWTRACK_BORROW_IO_H */
