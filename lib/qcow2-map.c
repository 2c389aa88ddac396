/* rawtrack - guest to host mapping: L1, the L2 cache, entry classification.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: reading L2 tables through a small LRU cache and classifying L1/L2
 * entries exactly as QEMU does (qcow2_get_cluster_type / subcluster type):
 *
 *   1. bit 62 set                          -> COMPRESSED
 *   2. standard L2 and bit 0 set           -> ZERO (plain or allocated)
 *   3. offset 0 and not (data file and COPIED) -> UNALLOCATED
 *   4. otherwise                           -> NORMAL
 *
 * With extended L2 every cluster has 32 subclusters; bit i of the bitmap
 * word says "allocated", bit 32+i "reads as zeros" (both set is corrupt).
 *
 * Every entry is validated before use: reserved bits, alignment, and with an
 * external data file the identity rule (host offset == guest offset) and
 * "no compressed clusters".  A violation is reported as corruption naming
 * the table and its offset; nothing asserts on disk content.
 *
 * Locking: callers hold img->lock.
 */
#include <string.h>
#include <stdlib.h>
#include <inttypes.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "arith.h"

void
qcow2_l2_cache_drop (struct rawtrack_image *img)
{
  int i;

  for (i = 0; i < L2_CACHE_SLOTS; i++)
    img->l2_cache[i].offset = 0;
}

uint64_t *
qcow2_l2_get (struct rawtrack_image *img, uint64_t l1_index, bool *absent)
{
  uint64_t e, off;
  struct l2_slot *victim = &img->l2_cache[0];
  uint32_t words = img->cluster_size / 8, i;

  *absent = false;
  if (l1_index >= img->l1_size) {
    *absent = true;
    return NULL;
  }
  e = img->l1[l1_index];
  if (e & L1E_RESERVED_MASK) {
    rt_set_error (RAWTRACK_ECORRUPT, "L1 entry %" PRIu64 " (at offset %"
                  PRIu64 ") has reserved bits set: 0x%016" PRIx64, l1_index,
                  img->h.l1_table_offset + l1_index * 8, e);
    return NULL;
  }
  off = e & L1E_OFFSET_MASK;
  if (off == 0) {
    *absent = true;
    return NULL;
  }
  if (!IS_ALIGNED (off, img->cluster_size)) {
    rt_set_error (RAWTRACK_ECORRUPT, "L2 table offset 0x%" PRIx64 " (L1 "
                  "entry %" PRIu64 ") is not cluster-aligned", off, l1_index);
    return NULL;
  }
  for (i = 0; i < L2_CACHE_SLOTS; i++) {
    if (img->l2_cache[i].offset == off) {
      img->l2_cache[i].lru = ++img->l2_clock;
      return img->l2_cache[i].entries;
    }
    if (img->l2_cache[i].lru < victim->lru)
      victim = &img->l2_cache[i];
  }
  if (!victim->entries &&
      !(victim->entries = rt_malloc (img->cluster_size)))
    return NULL;
  victim->offset = 0;
  if (io_read (img->file, victim->entries, img->cluster_size, off,
               "L2 table") == -1)
    return NULL;
  for (i = 0; i < words; i++)
    victim->entries[i] = be64_load (&victim->entries[i]);
  victim->offset = off;
  victim->lru = ++img->l2_clock;
  return victim->entries;
}

/* Classify one (sub)cluster.  guest is the guest offset of the cluster
 * start; sc the subcluster index (extended L2 only). */
static int
classify (struct rawtrack_image *img, uint64_t e, uint64_t bm, uint64_t guest,
          unsigned sc, uint64_t l2_off, uint64_t idx,
          enum qcow2_ctype *type, uint64_t *host)
{
  const bool df = img->data != NULL ||
                  (img->h.incompat & QCOW2_INCOMPAT_DATA_FILE);
  uint64_t off;

  *host = 0;
  if (e & QCOW_OFLAG_COMPRESSED) {
    if (df)
      return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                          ": compressed cluster in an image with an external "
                          "data file", l2_off, idx);
    if (img->ext_l2 && bm != 0)
      return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                          ": compressed cluster with a subcluster bitmap",
                          l2_off, idx);
    *type = QCOW2_COMPRESSED;
    return 0;
  }
  if (e & L2E_RESERVED_MASK & ~(img->ext_l2 ? 0 : QCOW_OFLAG_ZERO))
    return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                        " has reserved bits set: 0x%016" PRIx64, l2_off, idx,
                        e);
  if (img->ext_l2 && (e & QCOW_OFLAG_ZERO))
    return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                        ": zero flag is reserved with extended L2", l2_off,
                        idx);
  off = e & L2E_OFFSET_MASK;

  if (img->ext_l2) {
    bool alloc = bm & (1ull << sc), zero = bm & (1ull << (32 + sc));

    if (alloc && zero)
      return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                          ": subcluster %u is both allocated and zero",
                          l2_off, idx, sc);
    if (zero) {
      *type = QCOW2_ZERO;
      return 0;
    }
    if (!alloc) {
      *type = QCOW2_UNALLOCATED;
      return 0;
    }
    if (off == 0 && !(df && (e & QCOW_OFLAG_COPIED)))
      return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                          ": allocated subcluster without a host offset",
                          l2_off, idx);
  }
  else {
    if (e & QCOW_OFLAG_ZERO) {
      if (img->h.version < 3)   /* QEMU: EIO, and marks the image corrupt */
        return set_corrupt ("L2 table at offset %" PRIu64 ", entry %"
                            PRIu64 ": zero flag in a version 2 image",
                            l2_off, idx);
      *type = QCOW2_ZERO;
      return 0;
    }
    if (off == 0 && !(df && (e & QCOW_OFLAG_COPIED))) {
      *type = QCOW2_UNALLOCATED;
      return 0;
    }
  }
  if (!IS_ALIGNED (off, img->cluster_size))
    return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                        ": host offset 0x%" PRIx64 " is not cluster-aligned",
                        l2_off, idx, off);
  if (df && off != guest)
    return set_corrupt ("L2 table at offset %" PRIu64 ", entry %" PRIu64
                        ": data file offset 0x%" PRIx64 " does not match the "
                        "guest offset 0x%" PRIx64 " (external data files map "
                        "one to one)", l2_off, idx, off, guest);
  *type = QCOW2_NORMAL;
  *host = off + ((uint64_t) sc << img->subcluster_bits);
  return 0;
}

int
qcow2_map (struct rawtrack_image *img, uint64_t offset, uint64_t len,
           struct qcow2_extent *ext)
{
  const uint32_t cb = img->h.cluster_bits;
  const uint64_t cs = img->cluster_size;
  const uint64_t l2_span = (uint64_t) img->l2_entries << cb;
  const uint64_t unit = img->ext_l2 ? 1ull << img->subcluster_bits : cs;
  uint64_t l1_index, idx, pos, end, *l2, l2_off;
  bool absent;

  memset (ext, 0, sizeof *ext);
  if (offset >= img->virtual_size || len == 0)
    return set_error (EINVAL, "mapping %" PRIu64 "+%" PRIu64 " outside the "
                      "disk (%" PRIu64 " bytes)", offset, len,
                      img->virtual_size);
  if (len > img->virtual_size - offset)
    len = img->virtual_size - offset;

  l1_index = offset / l2_span;
  end = MIN (offset + len, (l1_index + 1) * l2_span);
  l2 = qcow2_l2_get (img, l1_index, &absent);
  if (!l2 && !absent)
    return -1;
  if (absent) {
    ext->type = QCOW2_UNALLOCATED;
    ext->bytes = end - offset;
    return 0;
  }
  l2_off = img->l1[l1_index] & L1E_OFFSET_MASK;

  pos = offset;
  while (pos < end) {
    uint64_t guest_cluster = ROUND_DOWN (pos, cs);
    unsigned sc = img->ext_l2 ? (unsigned) ((pos - guest_cluster) >>
                                            img->subcluster_bits) : 0;
    uint64_t e, bm = 0, host, unit_end;
    enum qcow2_ctype type = QCOW2_UNALLOCATED;

    idx = (pos >> cb) & (img->l2_entries - 1);
    if (img->ext_l2) {
      e = l2[idx * 2];
      bm = l2[idx * 2 + 1];
    }
    else
      e = l2[idx];
    if (classify (img, e, bm, guest_cluster, sc, l2_off, idx, &type,
                  &host) == -1)
      return -1;
    if (type == QCOW2_COMPRESSED) {
      /* One cluster at a time: the caller decompresses it whole. */
      if (pos != offset)
        break;
      ext->type = type;
      ext->l2_entry = e;
      ext->bytes = MIN (end, guest_cluster + cs) - pos;
      return 0;
    }
    if (pos == offset) {
      ext->type = type;
      ext->host = host + (pos - ROUND_DOWN (pos, unit));
      ext->l2_entry = e;
    }
    else if (type != ext->type ||
             (type == QCOW2_NORMAL &&
              (host != ext->host + (ROUND_DOWN (pos, unit) - offset) ||
               (e & QCOW_OFLAG_COPIED) !=
               (ext->l2_entry & QCOW_OFLAG_COPIED))))
      break;
    unit_end = MIN (ROUND_DOWN (pos, unit) + unit, end);
    pos = unit_end;
  }
  ext->bytes = pos - offset;
  return 0;
}
