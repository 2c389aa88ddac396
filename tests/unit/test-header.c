/* rawtrack - unit test: qcow2 header parse and serialise.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Round trips (v2, v3, unknown extensions in order, extra header fields,
 * backing names), QEMU's extension order on write, and one rejection per
 * rule the parser enforces, each checked for the field it must name.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "internal.h"
#include "byteorder.h"
#include "test.h"

#define CS 65536

static uint8_t buf[CS], buf2[CS];

static void
base_v3 (struct qcow2_header *h)
{
  memset (h, 0, sizeof *h);
  h->version = 3;
  h->cluster_bits = 16;
  h->size = 1 << 30;
  h->l1_size = 2;
  h->l1_table_offset = 3 * CS;
  h->refcount_table_offset = CS;
  h->refcount_table_clusters = 1;
  h->refcount_order = 4;
}

/* Parse must fail, and the message must mention `needle`. */
static void
expect_reject (const uint8_t *b, size_t len, const char *needle, int err)
{
  struct qcow2_header h;
  const char *msg;

  if (qcow2_header_parse (b, len, &h) == 0) {
    fprintf (stderr, "accepted a header that should mention '%s'\n", needle);
    test_failures++;
    qcow2_header_free (&h);
    return;
  }
  msg = rawtrack_get_error ();
  if (!msg || !strstr (msg, needle)) {
    fprintf (stderr, "message '%s' does not mention '%s'\n",
             msg ? msg : "(null)", needle);
    test_failures++;
  }
  if (err && rawtrack_get_errno () != err) {
    fprintf (stderr, "errno %d for '%s', expected %d\n",
             rawtrack_get_errno (), needle, err);
    test_failures++;
  }
}

static void
test_round_trip (void)
{
  struct qcow2_header h, p;
  uint8_t extra[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
  uint8_t u1[3] = { 0xaa, 0xbb, 0xcc }, u2[9] = { 9, 8, 7, 6, 5, 4, 3, 2, 1 };
  struct qcow2_ext unk[2] = {
    { 0x11111111, sizeof u1, u1 }, { 0x22222222, sizeof u2, u2 },
  };

  base_v3 (&h);
  h.incompat = QCOW2_INCOMPAT_DATA_FILE;
  h.compat = 0x80;                 /* an unknown compatible bit survives */
  h.autoclear = QCOW2_AUTOCLEAR_DATA_RAW;
  h.data_file = (char *) "disk.raw";
  h.extra_fields = extra;
  h.extra_len = sizeof extra;
  h.unknown.ptr = unk;
  h.unknown.len = h.unknown.cap = 2;
  h.has_bitmaps_ext = true;
  h.nb_bitmaps = 1;
  h.bitmap_dir_size = 32;
  h.bitmap_dir_offset = 4 * CS;
  h.autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
  assert (qcow2_header_serialize (&h, buf, CS) == 0);

  /* QEMU's order: data file, feature table, bitmaps, unknown, end. */
  CHECK (be32_load (buf + 100) == 120);
  CHECK (be32_load (buf + 120) == QCOW2_EXT_DATA_FILE);
  CHECK (be32_load (buf + 136) == QCOW2_EXT_FEATURES);
  CHECK (be32_load (buf + 140) == 8 * 48);
  CHECK (be32_load (buf + 144 + 384) == QCOW2_EXT_BITMAPS);
  CHECK (be32_load (buf + 144 + 384 + 32) == 0x11111111);

  assert (qcow2_header_parse (buf, CS, &p) == 0);
  CHECK (p.version == 3 && p.size == h.size && p.l1_size == 2);
  CHECK (p.incompat == h.incompat && p.compat == 0x80);
  CHECK (p.autoclear == h.autoclear);
  CHECK (p.header_length == 120 && p.extra_len == 8);
  CHECK (memcmp (p.extra_fields, extra, 8) == 0);
  CHECK (p.data_file && strcmp (p.data_file, "disk.raw") == 0);
  CHECK (p.has_bitmaps_ext && p.nb_bitmaps == 1 &&
         p.bitmap_dir_offset == 4 * CS && p.bitmap_dir_size == 32);
  CHECK (p.unknown.len == 2 && p.unknown.ptr[0].type == 0x11111111 &&
         p.unknown.ptr[1].type == 0x22222222 && p.unknown.ptr[1].len == 9 &&
         memcmp (p.unknown.ptr[1].data, u2, 9) == 0);
  CHECK (strcmp (qcow2_feature_name (&p, 2, 1), "raw external data") == 0);

  /* Serialising what was parsed gives the same bytes. */
  assert (qcow2_header_serialize (&p, buf2, CS) == 0);
  CHECK (memcmp (buf, buf2, CS) == 0);
  qcow2_header_free (&p);
}

static void
test_v2_backing (void)
{
  struct qcow2_header h, p;

  base_v3 (&h);
  h.version = 2;
  h.backing_file = (char *) "base.qcow2";
  h.backing_format = (char *) "qcow2";
  assert (qcow2_header_serialize (&h, buf, CS) == 0);
  CHECK (be64_load (buf + 8) != 0);
  assert (qcow2_header_parse (buf, CS, &p) == 0);
  CHECK (p.version == 2 && p.header_length == 72 && p.refcount_order == 4);
  CHECK (strcmp (p.backing_file, "base.qcow2") == 0);
  CHECK (strcmp (p.backing_format, "qcow2") == 0);
  qcow2_header_free (&p);

  /* No feature table for 4 KiB clusters, as QEMU. */
  base_v3 (&h);
  h.cluster_bits = 12;
  assert (qcow2_header_serialize (&h, buf, 4096) == 0);
  CHECK (be32_load (buf + 112) == QCOW2_EXT_END);
}

static void
put_ext (uint8_t *b, size_t off, uint32_t type, uint32_t len)
{
  be32_store (b + off, type);
  be32_store (b + off + 4, len);
}

static void
test_rejects (void)
{
  struct qcow2_header h;

  base_v3 (&h);
  assert (qcow2_header_serialize (&h, buf, CS) == 0);

#define MUTATE(stmt, needle, err) do {          \
    memcpy (buf2, buf, CS);                     \
    stmt;                                       \
    expect_reject (buf2, CS, needle, err);      \
  } while (0)

  MUTATE (be32_store (buf2, 0x12345678), "magic", EINVAL);
  MUTATE (be32_store (buf2 + 4, 4), "version", ENOTSUP);
  MUTATE (be32_store (buf2 + 20, 8), "cluster_bits", RAWTRACK_ECORRUPT);
  MUTATE (be32_store (buf2 + 20, 22), "cluster_bits", RAWTRACK_ECORRUPT);
  MUTATE (be32_store (buf2 + 100, 100), "header_length", RAWTRACK_ECORRUPT);
  MUTATE (be32_store (buf2 + 100, CS + 8), "header_length", 0);
  MUTATE (be64_store (buf2 + 72, 1ull << 40), "incompatible feature bit 40",
          ENOTSUP);
  MUTATE (be32_store (buf2 + 96, 7), "refcount_order", 0);
  MUTATE (buf2[104] = 1, "compression type", 0);
  MUTATE (be32_store (buf2 + 36, 5000000), "L1 table size", 0);
  MUTATE (be64_store (buf2 + 40, 12345), "L1 table offset", 0);
  MUTATE (be64_store (buf2 + 48, 512), "refcount table offset", 0);
  MUTATE (be32_store (buf2 + 56, 200), "refcount table", 0);
  MUTATE (be32_store (buf2 + 60, 70000), "snapshots", 0);
  MUTATE ((be64_store (buf2 + 72, QCOW2_INCOMPAT_EXTL2),
           be32_store (buf2 + 20, 12)), "extended L2", 0);
  /* Extensions: too long, backing format > 15, bitmaps length. */
  MUTATE (put_ext (buf2, 112, 0x12345678, CS), "too large", 0);
  MUTATE (put_ext (buf2, 112, QCOW2_EXT_BACKING_FMT, 16), "backing format", 0);
  MUTATE (put_ext (buf2, 112, QCOW2_EXT_BITMAPS, 23), "bitmaps extension", 0);
  MUTATE (put_ext (buf2, 112, QCOW2_EXT_FDE, 8), "encryption", 0);
  MUTATE ((put_ext (buf2, 112, QCOW2_EXT_DATA_FILE, 2),
           memcpy (buf2 + 120, "ab", 2),
           put_ext (buf2, 128, QCOW2_EXT_DATA_FILE, 2),
           memcpy (buf2 + 136, "cd", 2)), "duplicate", 0);
  MUTATE ((put_ext (buf2, 112, QCOW2_EXT_DATA_FILE, 3),
           memcpy (buf2 + 120, "a\0b", 3)), "NUL", 0);
  MUTATE ((be64_store (buf2 + 8, 2 * CS), be32_store (buf2 + 16, 4)),
          "backing_file_offset", 0);
  MUTATE ((be64_store (buf2 + 8, CS - 2), be32_store (buf2 + 16, 4)),
          "backing file name", 0);

  /* The unknown-feature message uses the image's own feature table. */
  memcpy (buf2, buf, CS);
  memset (buf2 + 112, 0, CS - 112);
  be64_store (buf2 + 72, 1ull << 9);
  put_ext (buf2, 112, QCOW2_EXT_FEATURES, 48);
  buf2[120] = 0;
  buf2[121] = 9;
  memcpy (buf2 + 122, "frobnication", 12);
  expect_reject (buf2, CS, "frobnication", ENOTSUP);

  /* Short buffers. */
  expect_reject (buf, 40, "only 40 bytes", EINVAL);
  expect_reject (buf, 80, "truncated", 0);
#undef MUTATE
}

static void
test_bitmap_dir (void)
{
  struct bitmap_dir d, p;
  struct bitmap_entry e[2];
  uint8_t dir[256];
  uint64_t size;

  memset (e, 0, sizeof e);
  e[0].table_offset = 5 * CS;
  e[0].table_size = 1;
  e[0].flags = BME_FLAG_AUTO;
  e[0].type = 1;
  e[0].granularity_bits = 16;
  e[0].name = (char *) "b0";
  e[0].name_size = 2;
  e[1] = e[0];
  e[1].name = (char *) "a-much-longer-name";
  e[1].name_size = 18;
  e[1].flags = BME_FLAG_IN_USE;
  e[1].table_size = 7;          /* in_use: size not checked */
  d.entries = e;
  d.nr = 2;
  size = bitmap_dir_size (&d);
  CHECK (size == 32 + 48);
  memset (dir, 0, sizeof dir);
  bitmap_dir_serialize (&d, dir);
  assert (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 4 * CS, &p) == 0);
  CHECK (p.nr == 2 && strcmp (p.entries[1].name, "a-much-longer-name") == 0);
  CHECK (p.entries[0].flags == BME_FLAG_AUTO);
  bitmap_dir_free (&p);
  CHECK (bitmap_table_size_for (1 << 30, 16, CS) == 1);
  CHECK (bitmap_table_size_for (16ull << 40, 16, CS) == 512);

  /* Rejections: count mismatch, reserved flag, type, granularity,
   * duplicate name, consistent bitmap with wrong table size. */
  CHECK (bitmap_dir_parse (dir, size, 3, 1 << 30, CS, 0, &p) == -1);
  CHECK (bitmap_dir_parse (dir, size, 1, 1 << 30, CS, 0, &p) == -1);
  dir[15] |= 4;
  CHECK (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 0, &p) == -1);
  CHECK (strstr (rawtrack_get_error (), "reserved flags") != NULL);
  dir[15] &= ~4;
  dir[16] = 2;
  CHECK (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 0, &p) == -1);
  dir[16] = 1;
  dir[17] = 8;
  CHECK (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 0, &p) == -1);
  CHECK (strstr (rawtrack_get_error (), "granularity") != NULL);
  dir[17] = 16;
  be32_store (dir + 8, 2);
  CHECK (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 0, &p) == -1);
  CHECK (strstr (rawtrack_get_error (), "table size") != NULL);
  be32_store (dir + 8, 1);
  e[1].name = (char *) "b0";
  e[1].name_size = 2;
  size = bitmap_dir_size (&d);
  bitmap_dir_serialize (&d, dir);
  CHECK (bitmap_dir_parse (dir, size, 2, 1 << 30, CS, 0, &p) == -1);
  CHECK (strstr (rawtrack_get_error (), "duplicate") != NULL);
}

int
main (void)
{
  test_round_trip ();
  test_v2_backing ();
  test_rejects ();
  test_bitmap_dir ();
  return test_exit ("test-header");
}
