/* rawtrack - what a backup reads: an image, or an NBD export (libnbd).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct bk_source, the one interface the copy pipeline reads
 * through (size, identity, allocation status, parallel reads) and, for
 * NBD, the dirty extents of `qemu:dirty-bitmap:NAME`.  Checkpoint
 * bitmaps of an image source are managed by backup-create.c through
 * bk_source_image.
 *
 * Image: one read-write handle (bitmap operations need it; no guest write
 * is made through it, so no bitmap is marked in use), read from many
 * threads (librawtrack handles are thread-safe).  Allocation comes from
 * rawtrack_image_block_status: unallocated, zero clusters and holes of a
 * raw data file read as zeros and are never read.
 *
 * NBD: `connections` handles (multi-conn: refused by a server that does
 * not advertise it for more than one connection, as nbdcopy does), each
 * owned by one reading thread that keeps up to 16 requests of 256 KiB in
 * flight on it (nbd_aio_pread; only that thread polls the handle).
 * base:allocation gives zeros; dirty bitmap contexts are requested only
 * when asked for: the --bitmap of an NBD source, or the frozen bitmaps of
 * a point-in-time export of `rawtrack serve` (a live backup,
 * backup-live.c).
 *
 * Locking: none of its own; libnbd and librawtrack lock their handles.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <limits.h>

#include <libnbd.h>

#include "backup.h"
#include "arith.h"

/* One reading thread per connection, owning it (no two threads poll one
 * handle); each read keeps NBD_PIECES requests in flight. */
#define NBD_THREADS_PER_CONN 1
#define NBD_PIECE (256u << 10)
#define NBD_PIECES 16
#define NBD_MAX_STATUS (1u << 30)

struct bk_source {
  struct rawtrack_image *img;
  struct nbd_handle **nbd;
  int nconn;
  char *identity;
  char **ctx;                  /* "qemu:dirty-bitmap:NAME"... */
  size_t nctx;
  uint64_t size;
};

static bool
is_uri (const char *s)
{
  return strncmp (s, "nbd://", 6) == 0 || strncmp (s, "nbds://", 7) == 0 ||
    strncmp (s, "nbd+unix://", 11) == 0 || strncmp (s, "nbds+unix://", 12) == 0 ||
    strncmp (s, "nbd+vsock://", 12) == 0 || strncmp (s, "nbds+vsock://", 13) == 0;
}

static struct nbd_handle *
nbd_open (const char *uri, char *const *ctx, size_t nctx)
{
  struct nbd_handle *h = nbd_create ();
  size_t i;

  if (!h) {
    fprintf (stderr, "%s: libnbd: %s\n", progname, nbd_get_error ());
    return NULL;
  }
  remote_nbd_credentials (h);              /* --tls-certificates/--tls-psk */
  for (i = 0; i < nctx; i++)
    if (nbd_add_meta_context (h, ctx[i]) == -1)
      break;
  if (i < nctx ||
      nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_uri (h, uri) == -1) {
    fprintf (stderr, "%s: cannot connect to '%s': %s\n", progname, uri,
             nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  return h;
}

static struct bk_source *
open_nbd (struct bk_source *s, const char *spec, int connections,
          const char *const *bitmaps)
{
  size_t k;
  int i;
  int64_t size;

  for (k = 0; bitmaps && bitmaps[k]; k++)
    ;
  s->ctx = calloc (k + 1, sizeof *s->ctx);
  for (s->nctx = 0; s->nctx < k; s->nctx++)
    if (asprintf (&s->ctx[s->nctx], "qemu:dirty-bitmap:%s",
                  bitmaps[s->nctx]) < 0)
      exit (1);
  s->nconn = connections < 1 ? 1 : connections;
  s->nbd = calloc ((size_t) s->nconn, sizeof *s->nbd);
  s->nbd[0] = nbd_open (spec, s->ctx, s->nctx);
  if (!s->nbd[0])
    goto err;
  size = nbd_get_size (s->nbd[0]);
  if (size < 0) {
    fprintf (stderr, "%s: '%s': %s\n", progname, spec, nbd_get_error ());
    goto err;
  }
  s->size = (uint64_t) size;
  for (k = 0; k < s->nctx; k++)
    if (nbd_can_meta_context (s->nbd[0], s->ctx[k]) != 1) {
      fprintf (stderr, "%s: '%s' does not export the dirty bitmap '%s' "
               "(no meta context %s)\n", progname, spec, bitmaps[k],
               s->ctx[k]);
      goto err;
    }
  if (s->nconn > 1 && nbd_can_multi_conn (s->nbd[0]) != 1) {
    fprintf (stderr, "%s: '%s' does not allow multi-conn: using one "
             "connection\n", progname, spec);
    s->nconn = 1;
  }
  for (i = 1; i < s->nconn; i++)
    if (!(s->nbd[i] = nbd_open (spec, s->ctx, s->nctx)))
      goto err;
  s->identity = strdup (spec);
  return s;

 err:
  bk_source_close (s);
  return NULL;
}

struct bk_source *
bk_source_open_nbd (const char *uri, int connections,
                    const char *const *bitmaps)
{
  return open_nbd (calloc (1, sizeof (struct bk_source)), uri, connections,
                   bitmaps);
}

struct bk_source *
bk_source_open (const char *spec, bool image_rw, int connections,
                const char *bitmap)
{
  struct bk_source *s = calloc (1, sizeof *s);

  if (is_uri (spec)) {
    const char *bm[2] = { bitmap, NULL };

    return open_nbd (s, spec, connections, bm);
  }

  s->img = rawtrack_image_open (spec, (image_rw ? RAWTRACK_OPEN_RDWR : 0) |
                                remote_open_flags (), NULL);
  if (!s->img) {
    fail_lib ("cannot open the source image '%s'", spec);
    goto err;
  }
  s->size = rawtrack_image_virtual_size (s->img);
  {
    char *rp = realpath (spec, NULL);

    s->identity = rp ? rp : strdup (spec);
  }
  return s;

 err:
  bk_source_close (s);
  return NULL;
}

void
bk_source_close (struct bk_source *s)
{
  int i;

  if (!s)
    return;
  if (s->img && rawtrack_image_close (s->img) == -1)
    fail_lib ("closing the source image");
  for (i = 0; s->nbd && i < s->nconn; i++)
    if (s->nbd[i]) {
      nbd_shutdown (s->nbd[i], 0);
      nbd_close (s->nbd[i]);
    }
  free (s->nbd);
  free (s->identity);
  for (i = 0; s->ctx && i < (int) s->nctx; i++)
    free (s->ctx[i]);
  free (s->ctx);
  free (s);
}

bool
bk_source_is_image (struct bk_source *s)
{
  return s->img != NULL;
}

struct rawtrack_image *
bk_source_image (struct bk_source *s)
{
  return s->img;
}

uint64_t
bk_source_size (struct bk_source *s)
{
  return s->size;
}

const char *
bk_source_identity (struct bk_source *s)
{
  return s->identity;
}

int
bk_source_parallel (struct bk_source *s)
{
  return s->img ? 2 : s->nconn * NBD_THREADS_PER_CONN;
}

int
bk_source_pread (struct bk_source *s, int t, void *buf, uint64_t count,
                 uint64_t off)
{
  if (s->img) {
    if (rawtrack_image_pread (s->img, buf, count, off) == -1)
      return fail_lib ("reading the source at offset %" PRIu64, off), -1;
    return 0;
  }
  {
    struct nbd_handle *h = s->nbd[(t / NBD_THREADS_PER_CONN) % s->nconn];
    int64_t cookie[NBD_PIECES];
    uint64_t done = 0;

    /* Up to NBD_PIECES requests of NBD_PIECE bytes in flight at once, the
     * next batch once they are all in. */
    while (done < count) {
      uint64_t at = done;
      int np = 0, i, rc;

      for (; np < NBD_PIECES && done < count; np++) {
        uint64_t n = MIN (count - done, (uint64_t) NBD_PIECE);

        cookie[np] = nbd_aio_pread (h, (char *) buf + done, n, off + done,
                                    NBD_NULL_COMPLETION, 0);
        if (cookie[np] == -1)
          goto err;
        done += n;
      }
      for (i = 0; i < np; i++) {
        while ((rc = nbd_aio_command_completed (h, (uint64_t) cookie[i]))
               == 0)
          if (nbd_poll (h, -1) == -1)
            goto err;
        if (rc == -1) {
          /* Retire the rest before reporting. */
          char *e = strdup (nbd_get_error ());

          for (i++; i < np; i++)
            while (nbd_aio_command_completed (h, (uint64_t) cookie[i]) == 0 &&
                   nbd_poll (h, -1) != -1)
              ;
          fprintf (stderr, "%s: reading the NBD source at %" PRIu64 "+%"
                   PRIu64 ": %s\n", progname, off + at, done - at, e);
          free (e);
          return -1;
        }
      }
    }
    return 0;
   err:
    fprintf (stderr, "%s: reading the NBD source at offset %" PRIu64
             ": %s\n", progname, off + done, nbd_get_error ());
    return -1;
  }
}

struct status_cb {
  const char *want;
  uint64_t len;
  uint32_t flags;
  bool got;
  struct bk_range **v;
  size_t *n;
  uint64_t pos;                /* dirty walk */
};

static int
one_extent (void *opaque, const char *metacontext, uint64_t offset,
            uint32_t *entries, size_t nr_entries, int *error)
{
  struct status_cb *c = opaque;

  if (strcmp (metacontext, c->want) != 0 || nr_entries < 2)
    return 0;
  c->len = entries[0];
  c->flags = entries[1];
  c->got = true;
  return 0;
}

int64_t
bk_source_status (struct bk_source *s, uint64_t off, uint64_t count,
                  bool *zero)
{
  if (s->img) {
    unsigned st;
    int64_t n = rawtrack_image_block_status (s->img, off, count, &st);

    if (n <= 0)
      return fail_lib ("block status of the source at offset %" PRIu64, off),
        -1;
    *zero = (st & (RAWTRACK_STATUS_ZERO | RAWTRACK_STATUS_HOLE)) != 0;
    return n;
  }
  {
    struct status_cb c = { .want = LIBNBD_CONTEXT_BASE_ALLOCATION };
    nbd_extent_callback cb = { .callback = one_extent, .user_data = &c };
    uint64_t n = count < NBD_MAX_STATUS ? count : NBD_MAX_STATUS;

    if (nbd_block_status (s->nbd[0], n, off, cb, 0) == -1) {
      fprintf (stderr, "%s: block status of the NBD source at %" PRIu64
               ": %s\n", progname, off, nbd_get_error ());
      return -1;
    }
    if (!c.got || c.len == 0) {
      /* No usable answer: treat as data. */
      *zero = false;
      return (int64_t) n;
    }
    *zero = (c.flags & LIBNBD_STATE_ZERO) != 0;
    return (int64_t) (c.len < count ? c.len : count);
  }
}

static int
dirty_extents (void *opaque, const char *metacontext, uint64_t offset,
               uint32_t *entries, size_t nr_entries, int *error)
{
  struct status_cb *c = opaque;
  size_t i;

  if (strcmp (metacontext, c->want) != 0)
    return 0;
  c->got = true;
  for (i = 0; i + 1 < nr_entries; i += 2) {
    if (entries[i + 1] & 1)
      bk_ranges_add (c->v, c->n, c->pos, entries[i]);
    c->pos += entries[i];
  }
  return 0;
}

static int
source_dirty (struct bk_source *s, const char *ctx, struct bk_range **v,
              size_t *n)
{
  struct status_cb c = { .want = ctx, .v = v, .n = n };
  nbd_extent_callback cb = { .callback = dirty_extents, .user_data = &c };

  while (c.pos < s->size) {
    uint64_t start = c.pos, len = s->size - c.pos;

    if (len > NBD_MAX_STATUS)
      len = NBD_MAX_STATUS;
    c.got = false;
    if (nbd_block_status (s->nbd[0], len, start, cb, 0) == -1) {
      fprintf (stderr, "%s: reading the dirty bitmap at %" PRIu64 ": %s\n",
               progname, start, nbd_get_error ());
      return -1;
    }
    if (!c.got || c.pos == start) {
      fprintf (stderr, "%s: the server sent no extents of %s at %" PRIu64
               "\n", progname, ctx, start);
      return -1;
    }
    if (c.pos > s->size) {
      /* Clip the last extent to the disk. */
      if (*n && (*v)[*n - 1].off + (*v)[*n - 1].len > s->size)
        (*v)[*n - 1].len = s->size - (*v)[*n - 1].off;
      c.pos = s->size;
    }
  }
  return 0;
}

int
bk_source_dirty (struct bk_source *s, struct bk_range **v, size_t *n)
{
  if (!s->nbd || !s->nctx)
    return 0;
  return source_dirty (s, s->ctx[0], v, n);
}

int
bk_source_dirty_bitmap (struct bk_source *s, const char *bitmap,
                        struct bk_range **v, size_t *n)
{
  size_t k;

  for (k = 0; s->nbd && k < s->nctx; k++)
    if (strcmp (s->ctx[k] + strlen ("qemu:dirty-bitmap:"), bitmap) == 0)
      return source_dirty (s, s->ctx[k], v, n);
  fprintf (stderr, "%s: internal error: the dirty bitmap '%s' was not "
           "requested\n", progname, bitmap);
  return -1;
}
