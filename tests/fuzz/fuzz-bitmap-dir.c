/* rawtrack - fuzz target: bitmap_dir_parse and its round trip.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Input layout (all big-endian):
 *
 *   0   u32  nr         number of entries the header claims; only the
 *                       low 16 bits are used (the caller, image.c, refuses
 *                       anything above 65535 before parsing)
 *   4   u64  vsize      virtual size of the image
 *   12  u8[3]           unused
 *   15  u8   cbits      cluster size = 1 << (9 + cbits % 13)
 *   16  ...             the directory; dir_size is the rest of the input
 *
 * A directory that parses must serialise to exactly bitmap_dir_size bytes
 * (which equals dir_size, since parse insists the entries fill it), parse
 * again with the same parameters, and compare equal entry by entry; the
 * second serialisation must be byte-identical to the first.  The input
 * itself may differ from the serialisation only in the name padding,
 * which QEMU does not check on read.
 */
#include <stdint.h>
#include <stdbool.h>
#include <string.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "fuzz.h"

#define PREFIX 16

static void
compare (const struct bitmap_dir *a, const struct bitmap_dir *b)
{
  uint32_t i;

  FUZZ_CHECK (a->nr == b->nr);
  for (i = 0; i < a->nr; i++) {
    const struct bitmap_entry *x = &a->entries[i], *y = &b->entries[i];

    FUZZ_CHECK (x->table_offset == y->table_offset);
    FUZZ_CHECK (x->table_size == y->table_size);
    FUZZ_CHECK (x->flags == y->flags);
    FUZZ_CHECK (x->type == y->type);
    FUZZ_CHECK (x->granularity_bits == y->granularity_bits);
    FUZZ_CHECK (x->name_size == y->name_size);
    FUZZ_CHECK (strcmp (x->name, y->name) == 0);
  }
}

/* Properties every parsed entry has (the validation promised in
 * bitmap-dir.c). */
static void
validate (const struct bitmap_dir *dir, uint64_t vsize, uint32_t cs)
{
  uint32_t i;

  for (i = 0; i < dir->nr; i++) {
    const struct bitmap_entry *e = &dir->entries[i];

    FUZZ_CHECK (e->name != NULL);
    FUZZ_CHECK (e->name_size >= 1 && e->name_size <= BME_MAX_NAME);
    FUZZ_CHECK (strlen (e->name) == e->name_size);
    FUZZ_CHECK ((e->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO)) == 0);
    FUZZ_CHECK (e->type == 1);
    FUZZ_CHECK (e->granularity_bits >= BME_MIN_GRAN_BITS &&
                e->granularity_bits <= BME_MAX_GRAN_BITS);
    FUZZ_CHECK (e->table_offset != 0 && e->table_offset % cs == 0);
    FUZZ_CHECK (e->table_size >= 1 && e->table_size <= BME_MAX_TABLE_SIZE);
    FUZZ_CHECK ((uint64_t) e->table_size * cs <= BME_MAX_PHYS_SIZE);
    if (!(e->flags & BME_FLAG_IN_USE))
      FUZZ_CHECK (e->table_size ==
                  bitmap_table_size_for (vsize, e->granularity_bits, cs));
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct bitmap_dir dir, dir2;
  uint8_t *buf = NULL, *s1 = NULL, *s2 = NULL;
  uint64_t vsize, dir_size, ser_size;
  uint32_t nr, cs;

  if (size < PREFIX || size - PREFIX > BME_MAX_DIR_SIZE)
    return 0;
  nr = be32_load (data) & 0xffff;
  vsize = be64_load (data + 4);
  cs = 1u << (9 + data[15] % 13);
  dir_size = size - PREFIX;

  /* An exact-size copy, so that ASan sees any read past the directory. */
  buf = malloc (dir_size ? dir_size : 1);
  FUZZ_CHECK (buf != NULL);
  memcpy (buf, data + PREFIX, dir_size);

  if (bitmap_dir_parse (buf, dir_size, nr, vsize, cs, 65536, &dir) == -1) {
    FUZZ_CHECK (rawtrack_get_error () != NULL);
    FUZZ_CHECK (dir.entries == NULL && dir.nr == 0);
    goto out;
  }
  FUZZ_CHECK (dir.nr == nr);
  validate (&dir, vsize, cs);

  ser_size = bitmap_dir_size (&dir);
  FUZZ_CHECK (nr == 0 || ser_size == dir_size);
  s1 = calloc (1, ser_size ? ser_size : 1);
  s2 = calloc (1, ser_size ? ser_size : 1);
  FUZZ_CHECK (s1 && s2);
  bitmap_dir_serialize (&dir, s1);

  if (bitmap_dir_parse (s1, ser_size, nr, vsize, cs, 65536, &dir2) == -1) {
    fprintf (stderr, "re-parse failed: %s\n", rawtrack_get_error ());
    FUZZ_CHECK (!"a serialised directory parses");
  }
  compare (&dir, &dir2);
  FUZZ_CHECK (bitmap_dir_size (&dir2) == ser_size);
  bitmap_dir_serialize (&dir2, s2);
  FUZZ_CHECK (memcmp (s1, s2, ser_size) == 0);
  bitmap_dir_free (&dir2);
  bitmap_dir_free (&dir);

 out:
  free (buf);
  free (s1);
  free (s2);
  return 0;
}
