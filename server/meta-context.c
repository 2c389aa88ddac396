/* rawtrack - NBD server: metadata contexts and their extents.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the table of contexts an export offers, the query rules of
 * NBD_OPT_LIST/SET_META_CONTEXT, and the extents NBD_CMD_BLOCK_STATUS
 * reports for each context:
 *
 *   index        name                          flags
 *   0            base:allocation               NBD_STATE_HOLE | NBD_STATE_ZERO
 *                                              from rawtrack_image_block_status
 *   1            qemu:allocation-depth         0 unallocated, 1 local
 *   2 + i        qemu:dirty-bitmap:<name i>    NBD_STATE_DIRTY (1) = dirty,
 *                                              from rawtrack_bitmap_extents
 *
 * The index doubles as the context id a connection hands out in SET (ids
 * are per connection and opaque to clients; qemu numbers the same way).
 *
 * Queries (nbd-facts.md §3.1, §3.3): LIST accepts the wildcards "base:",
 * "qemu:" and "qemu:dirty-bitmap:" as well as full names; SET accepts
 * full names only.  Anything else, including unknown namespaces and
 * strings without a colon, matches nothing (silently, as the spec asks).
 *
 * Dirty bitmaps are read through the library on every request, so a
 * BLOCK_STATUS sees the bits as they are at that moment, including the
 * writes this server has just made.
 *
 * Locking: none here.  Every function reads the export (immutable once
 * serving) and calls the thread-safe library.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>

#include "server.h"
#include "nbd-protocol.h"

#define BASE_ALLOCATION   "base:allocation"
#define ALLOCATION_DEPTH  "qemu:allocation-depth"
#define BITMAP_PREFIX     "qemu:dirty-bitmap:"

size_t
meta_count (const struct nbd_export *exp)
{
  return META_FIRST_BITMAP + exp->nr_bitmaps;
}

size_t
meta_name (const struct nbd_export *exp, uint32_t i, char *buf, size_t len)
{
  int n;

  if (i == META_BASE_ALLOCATION)
    n = snprintf (buf, len, "%s", BASE_ALLOCATION);
  else if (i == META_ALLOCATION_DEPTH)
    n = snprintf (buf, len, "%s", ALLOCATION_DEPTH);
  else
    n = snprintf (buf, len, "%s%s", BITMAP_PREFIX,
                  exp->bitmaps[i - META_FIRST_BITMAP]);
  if (n < 0)
    n = 0;
  if ((size_t) n >= len)
    n = (int) len - 1;
  return (size_t) n;
}

static bool
is (const char *q, size_t len, const char *s)
{
  return len == strlen (s) && memcmp (q, s, len) == 0;
}

int
meta_match (const struct nbd_export *exp, const char *q, size_t len,
            bool list, int (*fn) (void *opaque, uint32_t index), void *opaque)
{
  size_t plen = strlen (BITMAP_PREFIX), i;
  int r;

  if (is (q, len, BASE_ALLOCATION) || (list && is (q, len, "base:")))
    return fn (opaque, META_BASE_ALLOCATION);
  if (is (q, len, ALLOCATION_DEPTH))
    return fn (opaque, META_ALLOCATION_DEPTH);
  if (list && (is (q, len, "qemu:") || is (q, len, BITMAP_PREFIX))) {
    if (is (q, len, "qemu:") && (r = fn (opaque, META_ALLOCATION_DEPTH)) != 0)
      return r;
    for (i = 0; i < exp->nr_bitmaps; i++)
      if ((r = fn (opaque, (uint32_t) (META_FIRST_BITMAP + i))) != 0)
        return r;
    return 0;
  }
  if (len > plen && memcmp (q, BITMAP_PREFIX, plen) == 0) {
    for (i = 0; i < exp->nr_bitmaps; i++)
      if (is (q + plen, len - plen, exp->bitmaps[i]))
        return fn (opaque, (uint32_t) (META_FIRST_BITMAP + i));
  }
  return 0;
}

/* ---- extent lists --------------------------------------------------- */

void
extent_list_reset (struct extent_list *l)
{
  l->ext.len = 0;
}

void
extent_list_free (struct extent_list *l)
{
  extents_reset (&l->ext);
}

/* Append [.., +length) with flags, merging with an equal neighbour.
 * 0 appended, 1 the list is full (max reached), -1 ENOMEM. */
static int
append (struct extent_list *l, size_t max, uint64_t length, uint32_t flags)
{
  struct extent e = { length, flags };

  if (l->ext.len > 0 && l->ext.ptr[l->ext.len - 1].flags == flags) {
    l->ext.ptr[l->ext.len - 1].length += length;
    l->end += length;
    return 0;
  }
  if (l->ext.len >= max)
    return 1;
  if (extents_append (&l->ext, e) == -1) {
    errno = ENOMEM;
    return -1;
  }
  l->end += length;
  return 0;
}

void
extent_list_truncate (struct extent_list *l, uint64_t start, uint64_t end)
{
  uint64_t pos = start;
  size_t i;

  for (i = 0; i < l->ext.len; i++) {
    if (pos + l->ext.ptr[i].length >= end) {
      l->ext.ptr[i].length = end - pos;
      l->ext.len = i + 1;
      break;
    }
    pos += l->ext.ptr[i].length;
  }
  l->end = end;
}

/* Walk the image's block status; map gives the flags of a status. */
static int
status_extents (struct nbd_export *exp, uint64_t offset, uint64_t count,
                size_t max, struct extent_list *out,
                uint32_t (*map) (unsigned status))
{
  uint64_t pos = offset, end = offset + count;

  while (pos < end) {
    unsigned st = 0;
    int64_t n = rawtrack_image_block_status (exp->img, pos, end - pos, &st);
    int r;

    if (n <= 0) {
      int e = rawtrack_get_errno ();

      nbd_error ("block status at %" PRIu64 ": %s", pos,
                 rawtrack_get_error () ? rawtrack_get_error () : "failed");
      errno = e ? e : EIO;
      return -1;
    }
    if ((uint64_t) n > end - pos)
      n = (int64_t) (end - pos);
    r = append (out, max, (uint64_t) n, map (st));
    if (r == -1)
      return -1;
    if (r == 1)
      break;
    pos += (uint64_t) n;
  }
  return 0;
}

static uint32_t
map_allocation (unsigned st)
{
  return ((st & RAWTRACK_STATUS_HOLE) ? NBD_STATE_HOLE : 0) |
         ((st & RAWTRACK_STATUS_ZERO) ? NBD_STATE_ZERO : 0);
}

/* Allocation depth: 1 where the qcow2 layer maps the range (data, zero
 * or compressed clusters), 0 where it would fall through to a backing
 * file.  Without RAWTRACK_STATUS_ALLOCATED (older library), an extent
 * that is both a hole and zero counts as unallocated: exact except for
 * zero clusters without a host cluster, and images with raw external data
 * are then reported local throughout (all_local). */
static uint32_t
map_depth (unsigned st)
{
#ifdef RAWTRACK_STATUS_ALLOCATED
#ifdef RAWTRACK_STATUS_BACKING
  if (st & RAWTRACK_STATUS_BACKING)
    return 2;                      /* (deeper layers are not told apart) */
#endif
  return (st & RAWTRACK_STATUS_ALLOCATED) ? 1 : 0;
#else
  unsigned both = RAWTRACK_STATUS_HOLE | RAWTRACK_STATUS_ZERO;

  return (st & both) == both ? 0 : 1;
#endif
}

struct bitmap_walk {
  struct extent_list *out;
  size_t max;
  int error;
};

static int
bitmap_extent (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct bitmap_walk *w = opaque;
  int r;

  if (length == 0)
    return 0;
  r = append (w->out, w->max, length, dirty ? NBD_STATE_DIRTY : 0);
  if (r == -1) {
    w->error = errno;
    return -1;
  }
  return r;                        /* 1: full, stop */
}

int
meta_extents (struct nbd_export *exp, uint32_t index, uint64_t offset,
              uint64_t count, size_t max, struct extent_list *out)
{
  out->ext.len = 0;
  out->end = offset;
  if (exp->view && index == META_ALLOCATION_DEPTH)
    /* A point-in-time export: all of it local. */
    return append (out, max, count, 1) == -1 ? -1 : 0;
  if (exp->view && index == META_BASE_ALLOCATION) {
    /* The view's map as of its checkpoint (the image's current map says
     * nothing about it): holes where a full view had no data. */
    uint64_t pos = offset, end = offset + count;

    while (pos < end) {
      bool zero;
      int64_t n = view_disk_status (exp->view, pos, end - pos, &zero);
      int r = append (out, max, (uint64_t) n,
                      zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0);

      if (r == -1)
        return -1;
      if (r == 1)
        break;
      pos += (uint64_t) n;
    }
    return 0;
  }
  switch (index) {
  case META_BASE_ALLOCATION:
    return status_extents (exp, offset, count, max, out, map_allocation);
  case META_ALLOCATION_DEPTH:
#ifndef RAWTRACK_STATUS_ALLOCATED
    if (exp->all_local)
      return append (out, max, count, 1) == -1 ? -1 : 0;
#endif
    return status_extents (exp, offset, count, max, out, map_depth);
  default: {
    struct bitmap_walk w = { out, max, 0 };
    const char *name = exp->bitmaps[index - META_FIRST_BITMAP];

    if (rawtrack_bitmap_extents (exp->img, name, offset, count,
                                 bitmap_extent, &w) == -1) {
      int e = w.error ? w.error : rawtrack_get_errno ();

      nbd_error ("bitmap %s: %s", name,
                 rawtrack_get_error () ? rawtrack_get_error () : "failed");
      errno = e ? e : EIO;
      return -1;
    }
    if (out->ext.len == 0) {
      /* Cannot happen for a range inside the disk; never report nothing. */
      errno = EIO;
      return -1;
    }
    return 0;
  }
  }
}
