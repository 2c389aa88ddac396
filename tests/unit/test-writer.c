/* rawtrack - unit test for lib/qcow2-writer.c (rawtrack_writer_*).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Writes images of random cluster kinds (data runs across L2 slots, zero
 * clusters, zstd and deflate compressed clusters, unallocated clusters, a
 * partial last cluster) over a backing image also made by the writer, and
 * checks that rawtrack reads back exactly the expected disk, and - when
 * qemu-img is installed - that `qemu-img check` is clean on every image
 * and `qemu-img compare` of the overlay (through its backing file) equals
 * the expected raw disk.  Also: misuse is refused (order, alignment), a
 * 4 TiB sparse image costs next to nothing, and an I/O error mid-way
 * fails cleanly.
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <fcntl.h>

#include "internal.h"
#include "io/io-shims.h"
#include "arith.h"
#include "random.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t
rng (void)
{
  return rt_random (&rng_state);
}

static char dir[] = "/tmp/rawtrack-test-writer.XXXXXX";
static int have_qemu;

static char *
path_in (const char *name)
{
  static char buf[4][512];
  static int k;

  k = (k + 1) % 4;
  snprintf (buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

static void
qemu_check (const char *name)
{
  char cmd[1024];

  if (!have_qemu)
    return;
  snprintf (cmd, sizeof cmd, "qemu-img check -q %s", path_in (name));
  if (system (cmd) != 0) {
    fprintf (stderr, "qemu-img check failed on %s\n", name);
    abort ();
  }
}

static void
qemu_compare (const char *image, const char *raw)
{
  char cmd[1024];

  if (!have_qemu)
    return;
  snprintf (cmd, sizeof cmd, "qemu-img compare -q -f qcow2 -F raw %s %s",
            path_in (image), path_in (raw));
  if (system (cmd) != 0) {
    fprintf (stderr, "qemu-img compare %s %s: differ\n", image, raw);
    abort ();
  }
}

static void
write_raw (const char *name, const uint8_t *buf, uint64_t size)
{
  int fd = open (path_in (name), O_WRONLY | O_CREAT | O_TRUNC, 0644);

  assert (fd >= 0);
  assert (pwrite (fd, buf, size, 0) == (ssize_t) size);
  close (fd);
}

static void
fill_cluster (uint8_t *p, size_t n, int kind)
{
  size_t i;

  if (kind == 0)                 /* random: incompressible */
    for (i = 0; i < n; i++)
      p[i] = (uint8_t) rng ();
  else                           /* compressible */
    for (i = 0; i < n; i++)
      p[i] = (uint8_t) ((i / 64) ^ kind);
}

/* Our own read of image name, through its backing chain or (flags
 * RAWTRACK_OPEN_NO_BACKING) not: compare with expect. */
static void
read_back (const char *name, const uint8_t *expect, uint64_t size,
           unsigned flags)
{
  struct rawtrack_image *img = rawtrack_image_open (path_in (name), flags,
                                                    NULL);
  uint8_t *buf = malloc (size);

  assert (img);
  assert (rawtrack_image_virtual_size (img) == size);
  assert (rawtrack_image_pread (img, buf, size, 0) == 0);
  assert (memcmp (buf, expect, size) == 0);
  free (buf);
  assert (rawtrack_image_close (img) == 0);
}

/* One base + overlay round with cluster size cs and compression type ct. */
static void
round_trip (uint32_t cs, int ct, uint64_t size)
{
  struct rawtrack_writer_opts o = { .struct_size = sizeof o, .size = size,
                                    .cluster_size = cs,
                                    .compression_type = ct };
  uint64_t nc = (size + cs - 1) / cs, c;
  uint8_t *base = calloc (1, size), *top = calloc (1, size);
  uint8_t *own = calloc (1, size), *z = malloc (cs);
  struct rawtrack_writer *w;
  char bname[64], tname[64], braw[64], traw[64];

  snprintf (bname, sizeof bname, "base-%u-%d.qcow2", cs, ct);
  snprintf (tname, sizeof tname, "top-%u-%d.qcow2", cs, ct);
  snprintf (braw, sizeof braw, "base-%u-%d.raw", cs, ct);
  snprintf (traw, sizeof traw, "top-%u-%d.raw", cs, ct);

  /* Base: every other cluster data, some compressed. */
  w = rawtrack_writer_new (path_in (bname), &o);
  assert (w);
  for (c = 0; c < nc; c++) {
    uint64_t off = c * cs, n = size - off < cs ? size - off : cs;
    int64_t clen;

    if (rng () % 3 == 0)
      continue;
    fill_cluster (base + off, n, (int) (rng () % 4));
    clen = rawtrack_compress_cluster (ct, base + off, n, cs, z);
    assert (clen >= 0);
    if (clen > 0 && rng () % 2)
      assert (rawtrack_writer_compressed (w, off, z, (size_t) clen) == 0);
    else
      assert (rawtrack_writer_data (w, off, base + off, n) == 0);
  }
  assert (rawtrack_writer_finish (w) == 0);
  rawtrack_writer_free (w);
  write_raw (braw, base, size);
  qemu_check (bname);
  qemu_compare (bname, braw);
  read_back (bname, base, size, 0);

  /* Top: runs of data (multi-cluster writes crossing L2 slots), zeros,
   * compressed, and untouched clusters that read from the base. */
  o.backing_file = bname;
  o.backing_format = "qcow2";
  memcpy (top, base, size);
  w = rawtrack_writer_new (path_in (tname), &o);
  assert (w);
  for (c = 0; c < nc; ) {
    uint64_t off = c * cs, run = 1 + rng () % 700, n, i;
    int kind = (int) (rng () % 4);

    if (run > nc - c)
      run = nc - c;
    n = (c + run == nc) ? size - off : run * cs;
    if (kind == 0) {             /* unallocated: base shows through */
    }
    else if (kind == 1) {        /* data run */
      for (i = 0; i < run; i++)
        fill_cluster (top + off + i * cs,
                      (i + 1 == run) ? n - i * cs : cs, (int) (rng () % 3));
      memcpy (own + off, top + off, n);
      assert (rawtrack_writer_data (w, off, top + off, n) == 0);
    }
    else if (kind == 2) {        /* zero clusters */
      memset (top + off, 0, n);
      assert (rawtrack_writer_zero (w, off, n) == 0);
    }
    else {                       /* compressed, one by one */
      for (i = 0; i < run; i++) {
        uint64_t o2 = off + i * cs, m = (i + 1 == run) ? n - i * cs : cs;
        int64_t clen;

        fill_cluster (top + o2, m, 1 + (int) (rng () % 3));
        memcpy (own + o2, top + o2, m);
        clen = rawtrack_compress_cluster (ct, top + o2, m, cs, z);
        assert (clen > 0);
        assert (rawtrack_writer_compressed (w, o2, z, (size_t) clen) == 0);
      }
    }
    c += run;
  }
  /* Going backwards is refused, and the writer stays usable. */
  assert (rawtrack_writer_zero (w, 0, cs) == -1);
  assert (rawtrack_get_errno () == EINVAL);
  assert (rawtrack_writer_finish (w) == 0);
  assert (rawtrack_writer_finish (w) == -1);
  rawtrack_writer_free (w);
  write_raw (traw, top, size);
  qemu_check (tname);
  qemu_compare (tname, traw);
  {
    struct rawtrack_image *img = rawtrack_image_open (path_in (tname), 0,
                                                      NULL);
    assert (img);
    assert (strcmp (rawtrack_image_backing_file (img), bname) == 0);
    assert (strcmp (rawtrack_image_backing_format (img), "qcow2") == 0);
    assert (strcmp (rawtrack_image_compression_type (img),
                    ct ? "zstd" : "zlib") == 0);
    rawtrack_image_close (img);
  }
  /* Without the backing file: the top's own clusters, zeros elsewhere;
   * through it: what QEMU reads (qemu_compare above). */
  read_back (tname, own, size, RAWTRACK_OPEN_NO_BACKING);
  read_back (tname, top, size, 0);
  free (base);
  free (top);
  free (own);
  free (z);
}

/* Copy-on-write: a top with cluster size tcs over a base with 64 KiB
 * clusters (qcow2, or raw with braw), written in random byte ranges (any
 * alignment, gaps, runs across clusters) on a disk whose size is not a
 * multiple of either cluster size; the parts of each cluster not written
 * come from the base.  Via the backing file the writer opens itself, or
 * via opts.backing_read (cb). */
struct mem_backing {
  const uint8_t *data;
  uint64_t size;
  int calls;
};

static int
mem_backing_read (void *opaque, void *buf, uint64_t count, uint64_t offset)
{
  struct mem_backing *m = opaque;

  m->calls++;
  assert (offset + count <= m->size);
  memcpy (buf, m->data + offset, count);
  return 0;
}

static void
cow (uint32_t tcs, bool braw, bool cb)
{
  const uint64_t size = (5u << 20) + 1536;
  struct rawtrack_writer_opts o = { .struct_size = sizeof o, .size = size,
                                    .compression_type = 1 };
  uint8_t *base = malloc (size), *top, *own;
  struct mem_backing mb = { .size = size };
  struct rawtrack_writer *w;
  uint64_t off, c;
  char bname[64], tname[64], traw[64];
  int nwrites = 0;

  snprintf (bname, sizeof bname, "cow-base-%u-%d.%s", tcs, cb,
            braw ? "raw" : "qcow2");
  snprintf (tname, sizeof tname, "cow-top-%u-%d-%d.qcow2", tcs, braw, cb);
  snprintf (traw, sizeof traw, "cow-top-%u-%d-%d.raw", tcs, braw, cb);
  fill_cluster (base, size, 0);
  if (braw)
    write_raw (bname, base, size);
  else {
    w = rawtrack_writer_new (path_in (bname), &o);
    assert (w);
    assert (rawtrack_writer_data (w, 0, base, size) == 0);
    assert (rawtrack_writer_finish (w) == 0);
    rawtrack_writer_free (w);
  }
  top = malloc (size);
  own = calloc (1, size);
  memcpy (top, base, size);

  o.cluster_size = tcs;
  o.backing_file = bname;
  o.backing_format = braw ? "raw" : "qcow2";
  if (cb) {
    mb.data = base;
    o.backing_read = mem_backing_read;
    o.backing_opaque = &mb;
  }
  w = rawtrack_writer_new (path_in (tname), &o);
  assert (w);
  for (off = rng () % 3000; off < size; ) {
    uint64_t len = 1 + rng () % (rng () % 4 == 0 ? 3 * tcs : 700);

    if (len > size - off)
      len = size - off;
    fill_cluster (top + off, len, 0);
    assert (rawtrack_writer_pwrite (w, off, top + off, len) == 0);
    nwrites++;
    off += len + (rng () % 2 ? rng () % (2 * tcs) : 0);
  }
  /* Backwards, or into the settled part of the pending cluster: refused. */
  assert (rawtrack_writer_pwrite (w, 0, top, 1) == -1);
  assert (rawtrack_get_errno () == EINVAL);
  assert (rawtrack_writer_finish (w) == 0);
  rawtrack_writer_free (w);
  assert (nwrites >= 20);          /* ~45 expected with 128 KiB clusters */
  if (cb)
    assert (mb.calls > 0);

  /* Own clusters hold the base's bytes around the writes. */
  for (c = 0; c < size; c += tcs)
    if (memcmp (top + c, base + c, MIN (tcs, size - c)) != 0)
      memcpy (own + c, top + c, MIN (tcs, size - c));
  write_raw (traw, top, size);
  qemu_check (tname);
  qemu_compare (tname, traw);
  read_back (tname, top, size, 0);
  read_back (tname, own, size, RAWTRACK_OPEN_NO_BACKING);
  free (base);
  free (top);
  free (own);
}

/* Copy-on-write needs a way to read the backing chain. */
static void
cow_misuse (void)
{
  struct rawtrack_writer_opts o = { .struct_size = sizeof o,
                                    .size = 1 << 20,
                                    .backing_file = "nowhere.qcow2" };
  struct rawtrack_io *io = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_writer *w;
  uint8_t buf[4096] = { 1 };

  /* No directory to find the backing file in. */
  w = rawtrack_writer_new_io (io, &o);
  assert (w);
  assert (rawtrack_writer_pwrite (w, 0, buf, 512) == 0);
  assert (rawtrack_writer_pwrite (w, 65536, buf, 512) == -1);
  assert (rawtrack_get_errno () == ENOTSUP);
  assert (strstr (rawtrack_get_error (), "nowhere.qcow2"));
  assert (rawtrack_writer_finish (w) == -1);
  rawtrack_writer_free (w);
  rawtrack_io_close (io);
  /* A missing backing file: named in the error. */
  w = rawtrack_writer_new (path_in ("cow-missing.qcow2"), &o);
  assert (w);
  assert (rawtrack_writer_pwrite (w, 0, buf, 512) == 0);
  assert (rawtrack_writer_finish (w) == -1);
  assert (strstr (rawtrack_get_error (), "nowhere.qcow2"));
  rawtrack_writer_free (w);
  /* Without a backing file, the rest of a cluster is zeros. */
  o.backing_file = NULL;
  io = rawtrack_io_mem_new (NULL, 0, 0);
  w = rawtrack_writer_new_io (io, &o);
  assert (rawtrack_writer_pwrite (w, 700, buf, 100) == 0);
  assert (rawtrack_writer_pwrite (w, 700, buf, 100) == -1);   /* again */
  assert (rawtrack_writer_zero (w, 0, 65536) == -1);          /* same cluster */
  assert (rawtrack_writer_zero (w, 65536, 65536) == 0);
  assert (rawtrack_writer_finish (w) == 0);
  rawtrack_writer_free (w);
  rawtrack_io_close (io);
}

static void
misuse (void)
{
  struct rawtrack_writer_opts o = { .struct_size = sizeof o,
                                    .size = 1 << 20 };
  struct rawtrack_io *io = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_writer *w;
  uint8_t buf[65536] = { 1 };

  assert (io);
  o.size = 1000;
  assert (!rawtrack_writer_new_io (io, &o));
  o.size = 1 << 20;
  o.compression_type = 7;
  assert (!rawtrack_writer_new_io (io, &o));
  o.compression_type = 0;
  w = rawtrack_writer_new_io (io, &o);
  assert (w);
  assert (rawtrack_writer_data (w, 512, buf, 65536) == -1);   /* unaligned */
  assert (rawtrack_writer_data (w, 0, buf, 1000) == -1);      /* length */
  assert (rawtrack_writer_data (w, 1 << 20, buf, 65536) == -1); /* past end */
  assert (rawtrack_writer_data (w, 65536, buf, 65536) == 0);
  assert (rawtrack_writer_data (w, 65536, buf, 65536) == -1); /* again */
  assert (rawtrack_writer_compressed (w, 131072, buf, 65536) == -1);
  assert (rawtrack_writer_finish (w) == 0);
  rawtrack_writer_free (w);
  rawtrack_io_close (io);
  assert (access (path_in ("base-65536-1.qcow2"), F_OK) == 0);
  /* An existing file is never overwritten. */
  assert (!rawtrack_writer_new (path_in ("base-65536-1.qcow2"), &o));
  assert (rawtrack_get_errno () == EEXIST);
}

/* 4 TiB, a few clusters at far ends: small file, small memory, clean. */
static void
sparse_huge (void)
{
  struct rawtrack_writer_opts o = { .struct_size = sizeof o,
                                    .size = 4ull << 40 };
  struct rawtrack_writer *w = rawtrack_writer_new (path_in ("huge.qcow2"), &o);
  uint8_t *buf = malloc (65536), *rd = malloc (65536);
  struct rawtrack_image *img;
  int i;

  assert (w);
  memset (buf, 0x5a, 65536);
  for (i = 0; i < 16; i++)
    assert (rawtrack_writer_data (w, ((uint64_t) i << 38) + 65536 * 3, buf,
                                  65536) == 0);
  assert (rawtrack_writer_zero (w, (4ull << 40) - 65536, 65536) == 0);
  assert (rawtrack_writer_finish (w) == 0);
  assert (rawtrack_writer_file_bytes (w) < 8u << 20);
  rawtrack_writer_free (w);
  qemu_check ("huge.qcow2");
  img = rawtrack_image_open (path_in ("huge.qcow2"), 0, NULL);
  assert (img);
  assert (rawtrack_image_pread (img, rd, 65536, (7ull << 38) + 65536 * 3) == 0);
  assert (memcmp (rd, buf, 65536) == 0);
  rawtrack_image_close (img);
  free (buf);
  free (rd);
}

/* An I/O error while writing fails that call and every later one. */
static void
io_error (void)
{
  struct rawtrack_writer_opts o = { .struct_size = sizeof o,
                                    .size = 8 << 20 };
  struct rawtrack_io *mem = rawtrack_io_mem_new (NULL, 0, 0);
  struct rawtrack_io *io;
  struct rawtrack_writer *w;
  uint8_t buf[65536];
  int i, failed = 0;

  memset (buf, 3, sizeof buf);
  io = io_fault_new (mem, true);
  assert (io);
  io_fault_set (io, IO_OP_WRITE, 5, EIO, true);
  w = rawtrack_writer_new_io (io, &o);
  assert (w);
  for (i = 0; i < 100; i++)
    if (rawtrack_writer_data (w, (uint64_t) i * 65536, buf, 65536) == -1) {
      failed = 1;
      assert (rawtrack_get_errno () == EIO);
      break;
    }
  assert (failed);
  assert (rawtrack_writer_finish (w) == -1);
  rawtrack_writer_free (w);
  rawtrack_io_close (io);
}

int
main (void)
{
  assert (mkdtemp (dir));
  have_qemu = system ("qemu-img --version >/dev/null 2>&1") == 0;
  if (!have_qemu)
    fprintf (stderr, "test-writer: qemu-img not found: the qemu-img checks "
             "are skipped\n");
  round_trip (4096, 1, (10u << 20) + 512);
  round_trip (4096, 0, 6u << 20);
  round_trip (65536, 1, (40u << 20) + 4096);
  cow (4096, false, false);      /* smaller clusters than the base's */
  cow (65536, true, false);      /* raw base */
  cow (131072, false, true);     /* larger, through opts.backing_read */
  cow_misuse ();
  misuse ();
  sparse_huge ();
  io_error ();
  {
    char cmd[600];

    snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
    assert (system (cmd) == 0);
  }
  printf ("test-writer: ok\n");
  return 0;
}
