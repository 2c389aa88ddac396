/* rawtrack - benchmark and crash test: the over-report after kill -9.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Measures what docs/tracking.md bounds: how much more than was written
 * the bitmaps report after the tracking process is killed with SIGKILL
 * at a random moment.  On a sparse raw disk (8 GiB by default, wrapped
 * by attach, bitmaps of 64 KiB and 4 KiB granularity) a child process
 * runs one workload and tells the parent through a pipe, before and
 * after each write, what it writes; the parent kills it at a random
 * moment and then, with the child dead and no rawtrack step between:
 *   - no bitmap is in use (SAFE and PROCESS modes);
 *   - nothing is missed: every write reported done, and every 512-byte
 *     sector of the raw file that holds data (the disk starts as holes,
 *     every write is non-zero: the write in flight at the kill counts as
 *     soon as any of its data landed) is dirty in every bitmap;
 *   - the over-report: dirty bytes outside the granules of the writes
 *     done or in flight, and for a stream, dirty bytes past its end.
 * Workloads:
 *   random  4 KiB writes at RATE per second (200) over the whole disk
 *   seq     a stream of 1 MiB writes at 100 MiB/s from a random offset
 *   idle    200 random writes, then nothing for 2 to 3 s before the
 *           kill: by then every extent has been idle long enough to be
 *           cooled (1 s, looked at every 250 ms), so the bitmaps must be
 *           exact (an over-report of 0)
 * With --check the limits are asserted (random and seq: at most 64 MiB,
 * idle: 0) and the exit status says whether they held; --expect-fail
 * inverts it for a negative control (lazy mode, or the old 16 MiB-extent
 * policy) that must break them.
 *
 * Usage: bench-crash-bound [--check] [--expect-fail] [--mode safe|process|lazy]
 *          [--workload random|seq|idle|all] [--rounds N] [--size GIB]
 *          [--seed S] [DIR]
 * RAWTRACK_BOUND_ROUNDS, when set, overrides --rounds (longer runs of the
 * suite's tests; at most 64).  It links the library: no CLI needed.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "rawtrack/rawtrack.h"
#include "rawtrack/rawtrack-bitmap.h"
#include "random.h"

#define MiB (1024ull * 1024)
#define LIMIT (64 * MiB)                 /* the documented target */
#define RATE 200                         /* random writes per second */
#define SEQ_MIB_S 100                    /* stream speed */

enum { W_RANDOM, W_SEQ, W_IDLE };
static const char *const wname[] = { "random", "seq", "idle" };
static const char *const bm[] = { "b64k", "b4k" };
static const uint32_t bm_gran[] = { 65536, 4096 };
#define NBM 2

struct rec { uint64_t off, len; uint32_t done; uint32_t pad; };
struct range { uint64_t lo, hi; };
struct ranges { struct range *r; size_t n, cap; };

static uint64_t disk_size = 8ull << 30;
static unsigned open_mode;
static int failures;

static void
die (const char *what)
{
  fprintf (stderr, "bench-crash-bound: %s: %s\n", what,
           rawtrack_get_error () ? rawtrack_get_error () : strerror (errno));
  exit (2);
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
ranges_add (struct ranges *v, uint64_t lo, uint64_t hi)
{
  if (v->n == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 256;
    v->r = realloc (v->r, v->cap * sizeof *v->r);
    if (!v->r)
      die ("realloc");
  }
  v->r[v->n].lo = lo;
  v->r[v->n].hi = hi;
  v->n++;
}

static int
range_cmp (const void *a, const void *b)
{
  const struct range *x = a, *y = b;

  return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Sort and merge in place. */
static void
ranges_norm (struct ranges *v)
{
  size_t i, n = 0;

  if (!v->n)
    return;
  qsort (v->r, v->n, sizeof *v->r, range_cmp);
  for (i = 1; i < v->n; i++)
    if (v->r[i].lo <= v->r[n].hi) {
      if (v->r[i].hi > v->r[n].hi)
        v->r[n].hi = v->r[i].hi;
    }
    else
      v->r[++n] = v->r[i];
  v->n = n + 1;
}

/* Bytes of a not in b (both normalised). */
static uint64_t
ranges_minus (const struct ranges *a, const struct ranges *b)
{
  uint64_t total = 0;
  size_t i, j = 0;

  for (i = 0; i < a->n; i++) {
    uint64_t lo = a->r[i].lo, hi = a->r[i].hi;

    while (j < b->n && b->r[j].hi <= lo)
      j++;
    for (size_t k = j; k < b->n && b->r[k].lo < hi && lo < hi; k++) {
      if (b->r[k].lo > lo)
        total += b->r[k].lo - lo;
      lo = b->r[k].hi > lo ? b->r[k].hi : lo;
    }
    if (hi > lo)
      total += hi - lo;
  }
  return total;
}

/* Is [lo, hi) inside the normalised ranges? */
static int
ranges_cover (const struct ranges *v, uint64_t lo, uint64_t hi)
{
  size_t a = 0, b = v->n;

  while (a < b) {                      /* first range with hi > lo */
    size_t m = (a + b) / 2;
    if (v->r[m].hi <= lo)
      a = m + 1;
    else
      b = m;
  }
  return a < v->n && v->r[a].lo <= lo && v->r[a].hi >= hi;
}

static int
collect (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  if (dirty)
    ranges_add (opaque, start, start + length);
  return 0;
}

static void
put (int fd, uint64_t off, uint64_t len, uint32_t done)
{
  struct rec r = { off, len, done, 0 };

  if (write (fd, &r, sizeof r) != (ssize_t) sizeof r)
    _exit (3);
}

static void
sleep_until (double t)
{
  double d = t - now ();

  if (d > 0) {
    struct timespec ts = { (time_t) d, (long) ((d - (time_t) d) * 1e9) };
    nanosleep (&ts, NULL);
  }
}

/* The child: write until killed. */
static void
child (const char *img_path, int w, uint64_t seed, int fd)
{
  struct rawtrack_image *img;
  static char buf[1 << 20];
  uint64_t s = seed, off;
  double next;
  long n = 0;

  img = rawtrack_image_open (img_path, RAWTRACK_OPEN_RDWR | open_mode, NULL);
  if (!img) {
    fprintf (stderr, "child: open: %s\n", rawtrack_get_error ());
    _exit (3);
  }
  memset (buf, 0x5a, sizeof buf);
  off = (rt_random (&s) % (disk_size / 2 / MiB)) * MiB;
  next = now ();
  for (;;) {
    uint64_t o, len;

    if (w == W_SEQ) {
      o = off;
      len = MiB;
      off += MiB;
      if (off >= disk_size)
        off = 0;
      next += 1.0 / SEQ_MIB_S;
    }
    else {
      o = (rt_random (&s) % (disk_size / 4096)) * 4096;
      len = 4096;
      next += 1.0 / RATE;
      if (w == W_IDLE && n == RATE) {
        put (fd, 0, 0, 2);             /* idle from now */
        for (;;)
          pause ();                    /* until killed */
      }
    }
    put (fd, o, len, 0);
    if (rawtrack_image_pwrite (img, buf, len, o, 0) == -1) {
      fprintf (stderr, "child: write: %s\n", rawtrack_get_error ());
      _exit (3);
    }
    put (fd, o, len, 1);
    n++;
    sleep_until (next);
  }
}

static void
fail (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
static void
fail (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  fputs ("  FAIL: ", stdout);
  vprintf (fmt, ap);
  putchar ('\n');
  va_end (ap);
  failures++;
}

/* Every sector of the raw file holding data must be dirty in v. */
static uint64_t
missed_sectors (const char *raw, const struct ranges *v)
{
  int fd = open (raw, O_RDONLY);
  static char buf[1 << 20];
  off_t pos = 0;
  uint64_t missed = 0;

  if (fd == -1)
    die (raw);
  for (;;) {
    off_t d = lseek (fd, pos, SEEK_DATA), h;

    if (d < 0)
      break;
    h = lseek (fd, d, SEEK_HOLE);
    if (h < 0)
      die ("SEEK_HOLE");
    for (pos = d; pos < h; ) {
      size_t want = (size_t) (h - pos < (off_t) sizeof buf ? h - pos
                                                            : (off_t) sizeof buf);
      ssize_t got = pread (fd, buf, want, pos);
      ssize_t k;

      if (got <= 0)
        die ("pread raw");
      for (k = 0; k < got; k += 512) {
        uint64_t sct = ((uint64_t) pos + (uint64_t) k) & ~511ull;
        ssize_t len = got - k < 512 ? got - k : 512, b;

        for (b = 0; b < len && !buf[k + b]; b++)
          ;
        if (b < len && !ranges_cover (v, sct, sct + 512))
          missed++;
      }
      pos += got;
    }
  }
  close (fd);
  return missed;
}

struct result { double kill_s; uint64_t ops, written, dirty, over, beyond; };

/* What the parent learns from the child's records. */
struct writes {
  struct ranges ops;                   /* the writes done */
  struct rec inflight;                 /* the write started, not done */
  int have_inflight;
  uint64_t ndone, stream_end;
};

/* Take one record from the child into w; true for "idle from now". */
static bool
take_record (struct writes *w, const struct rec *r)
{
  if (r->done == 2)
    return true;
  if (!r->done) {
    w->inflight = *r;
    w->have_inflight = 1;
    return false;
  }
  w->have_inflight = 0;
  ranges_add (&w->ops, r->off, r->off + r->len);
  w->ndone++;
  if (r->off + r->len > w->stream_end)
    w->stream_end = r->off + r->len;
  return false;
}

static void
one_round (const char *dir, int w, uint64_t seed, struct result res[NBM])
{
  char raw[600], img_path[600];
  struct rawtrack_attach_opts o = { .struct_size = sizeof o,
                                    .cluster_size = 65536, .force = 1 };
  struct rawtrack_image *img;
  struct ranges gr[NBM];
  struct writes log = { 0 };
  struct rec r;
  uint64_t s = seed * 7 + 3;
  double t_kill, t0;
  int p[2], fd, i, st;
  pid_t pid;
  size_t got = 0;
  char *rb = (char *) &r;

  snprintf (raw, sizeof raw, "%s/crash-bound.raw", dir);
  snprintf (img_path, sizeof img_path, "%s/crash-bound.qcow2", dir);
  unlink (raw);
  fd = open (raw, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd == -1 || ftruncate (fd, (off_t) disk_size) == -1)
    die (raw);
  close (fd);
  if (rawtrack_attach (raw, img_path, &o) == -1)
    die ("attach");
  img = rawtrack_image_open (img_path, RAWTRACK_OPEN_RDWR, NULL);
  if (!img)
    die ("open");
  for (i = 0; i < NBM; i++)
    if (rawtrack_bitmap_add (img, bm[i], bm_gran[i], 0) == -1)
      die ("bitmap add");
  if (rawtrack_image_close (img) == -1)
    die ("close");

  /* The kill: random, 0.3 to 3 s in (idle: 2 to 3 s after its last
   * write, which it tells; until then no kill). */
  t_kill = w == W_IDLE ? 1e9 : 0.3 + (double) (rt_random (&s) % 2700) / 1000;
  if (pipe (p) == -1)
    die ("pipe");
  fflush (stdout);
  pid = fork ();
  if (pid == -1)
    die ("fork");
  if (pid == 0) {
    close (p[0]);
    child (img_path, w, seed, p[1]);
    _exit (0);
  }
  close (p[1]);
  t0 = now ();
  for (;;) {
    double left = t0 + t_kill - now ();
    struct pollfd pf = { p[0], POLLIN, 0 };
    ssize_t n;

    if (left <= 0)
      break;
    if (poll (&pf, 1, (int) (left * 1000) + 1) <= 0)
      continue;
    n = read (p[0], rb + got, sizeof r - got);
    if (n <= 0)
      break;                           /* the child died by itself */
    got += (size_t) n;
    if (got < sizeof r)
      continue;
    got = 0;
    if (take_record (&log, &r))        /* idle from now: the kill moves */
      t_kill = now () - t0 + 2.0 + (double) (rt_random (&s) % 1000) / 1000;
  }
  kill (pid, SIGKILL);
  waitpid (pid, &st, 0);
  /* Records written before the kill are still in the pipe. */
  for (;;) {
    ssize_t n = read (p[0], rb + got, sizeof r - got);

    if (n <= 0)
      break;
    got += (size_t) n;
    if (got < sizeof r)
      continue;
    got = 0;
    take_record (&log, &r);
  }
  close (p[0]);
  if (!WIFSIGNALED (st))
    fail ("%s round %" PRIu64 ": the writer exited by itself (status %d)",
          wname[w], seed, st);
  if (log.have_inflight &&
      log.inflight.off + log.inflight.len > log.stream_end)
    log.stream_end = log.inflight.off + log.inflight.len;

  img = rawtrack_image_open (img_path, 0, NULL);
  if (!img)
    die ("reopening after the kill");
  for (i = 0; i < NBM; i++) {
    struct ranges dirty = { 0 };
    uint64_t g = bm_gran[i], k, missed;
    int idx;

    for (idx = 0; idx < rawtrack_image_bitmap_count (img); idx++)
      if (!strcmp (rawtrack_image_bitmap_name (img, idx), bm[i]))
        break;
    if (idx == rawtrack_image_bitmap_count (img) ||
        (rawtrack_image_bitmap_flags (img, idx) & RAWTRACK_BITMAP_IN_USE)) {
      fail ("%s round %" PRIu64 ": bitmap %s is in use (inconsistent)",
            wname[w], seed, bm[i]);
      continue;
    }
    if (rawtrack_bitmap_extents (img, bm[i], 0, disk_size, collect,
                                 &dirty) == -1)
      die ("bitmap extents");
    ranges_norm (&dirty);
    /* The granules written: every op done, and the one in flight. */
    memset (&gr[i], 0, sizeof gr[i]);
    for (k = 0; k < log.ops.n; k++)
      ranges_add (&gr[i], log.ops.r[k].lo / g * g,
                  (log.ops.r[k].hi + g - 1) / g * g);
    if (log.have_inflight)
      ranges_add (&gr[i], log.inflight.off / g * g,
                  (log.inflight.off + log.inflight.len + g - 1) / g * g);
    ranges_norm (&gr[i]);
    for (k = 0; k < log.ops.n; k++)
      if (!ranges_cover (&dirty, log.ops.r[k].lo, log.ops.r[k].hi)) {
        fail ("%s round %" PRIu64 ": %s misses the write done at "
              "[%" PRIu64 ", %" PRIu64 ")", wname[w], seed, bm[i],
              log.ops.r[k].lo, log.ops.r[k].hi);
        break;
      }
    missed = missed_sectors (raw, &dirty);
    if (missed)
      fail ("%s round %" PRIu64 ": %" PRIu64 " sectors hold data but are "
            "clean in %s (the write in flight: [%" PRIu64 ", +%" PRIu64 ")%s)",
            wname[w], seed, missed, bm[i], log.inflight.off,
            log.inflight.len, log.have_inflight ? "" : ", none");
    res[i].kill_s = t_kill;
    res[i].ops = log.ndone;
    res[i].dirty = 0;
    for (k = 0; k < dirty.n; k++)
      res[i].dirty += dirty.r[k].hi - dirty.r[k].lo;
    res[i].written = 0;
    for (k = 0; k < gr[i].n; k++)
      res[i].written += gr[i].r[k].hi - gr[i].r[k].lo;
    res[i].over = ranges_minus (&dirty, &gr[i]);
    res[i].beyond = 0;
    if (w == W_SEQ) {
      struct ranges head = { 0 };

      ranges_add (&head, 0, log.stream_end);
      res[i].beyond = ranges_minus (&dirty, &head);
      free (head.r);
    }
    free (dirty.r);
    free (gr[i].r);
  }
  rawtrack_image_close (img);
  free (log.ops.r);
  unlink (raw);
  unlink (img_path);
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return (x > y) - (x < y);
}

int
main (int argc, char **argv)
{
  const char *dir = "/tmp";
  int check = 0, expect_fail = 0, rounds = 5, wsel = -1, w, i, a;
  uint64_t seed = 1;
  const char *env = getenv ("RAWTRACK_BOUND_ROUNDS");

  for (a = 1; a < argc; a++) {
    if (!strcmp (argv[a], "--check"))
      check = 1;
    else if (!strcmp (argv[a], "--expect-fail"))
      expect_fail = check = 1;
    else if (!strcmp (argv[a], "--mode") && a + 1 < argc) {
      a++;
      open_mode = !strcmp (argv[a], "process") ? RAWTRACK_OPEN_TRACK_PROCESS
                  : !strcmp (argv[a], "lazy") ? RAWTRACK_OPEN_TRACK_LAZY : 0;
    }
    else if (!strcmp (argv[a], "--workload") && a + 1 < argc) {
      a++;
      for (w = 0; w < 3; w++)
        if (!strcmp (argv[a], wname[w]))
          wsel = w;
    }
    else if (!strcmp (argv[a], "--rounds") && a + 1 < argc)
      rounds = atoi (argv[++a]);
    else if (!strcmp (argv[a], "--size") && a + 1 < argc)
      disk_size = strtoull (argv[++a], NULL, 10) << 30;
    else if (!strcmp (argv[a], "--seed") && a + 1 < argc)
      seed = strtoull (argv[++a], NULL, 10);
    else if (argv[a][0] != '-')
      dir = argv[a];
    else {
      fprintf (stderr, "usage: bench-crash-bound [--check] [--expect-fail] "
               "[--mode safe|process|lazy] [--workload random|seq|idle] "
               "[--rounds N] [--size GIB] [--seed S] [DIR]\n");
      return 2;
    }
  }
  if (env)                             /* over --rounds: the suite's runs */
    rounds = atoi (env);
  if (rounds < 1 || disk_size < (1ull << 30))
    rounds = 1, disk_size = disk_size < (1ull << 30) ? 1ull << 30 : disk_size;

  printf ("disk %" PRIu64 " GiB (sparse), bitmaps of 64 KiB and 4 KiB "
          "granularity, %d round(s) per workload, kill -9 at a random "
          "moment; limit %llu MiB\n", disk_size >> 30, rounds, LIMIT / MiB);
  for (w = 0; w < 3; w++) {
    uint64_t over[NBM][64], beyond[NBM][64];
    int n = 0;

    if (wsel >= 0 && w != wsel)
      continue;
    for (i = 0; i < rounds && i < 64; i++) {
      struct result res[NBM];
      int k;

      memset (res, 0, sizeof res);
      one_round (dir, w, seed + (uint64_t) i, res);
      for (k = 0; k < NBM; k++) {
        printf ("%-6s round %2d  %-4s  killed at %.2f s  %5" PRIu64 " writes  "
                "written %7.2f MiB  dirty %8.2f MiB  over %7.2f MiB",
                wname[w], i, bm[k], res[k].kill_s, res[k].ops,
                res[k].written / (double) MiB, res[k].dirty / (double) MiB,
                res[k].over / (double) MiB);
        if (w == W_SEQ)
          printf ("  past its end %6.2f MiB", res[k].beyond / (double) MiB);
        putchar ('\n');
        over[k][n] = res[k].over;
        beyond[k][n] = res[k].beyond;
        if (check && w == W_RANDOM && res[k].over > LIMIT)
          fail ("random round %d: %s over-reports %.1f MiB (limit %llu)",
                i, bm[k], res[k].over / (double) MiB, LIMIT / MiB);
        if (check && w == W_SEQ && res[k].beyond > LIMIT)
          fail ("seq round %d: %s reports %.1f MiB past the stream's end "
                "(limit %llu)", i, bm[k], res[k].beyond / (double) MiB,
                LIMIT / MiB);
        if (check && w == W_IDLE && res[k].over > 0)
          fail ("idle round %d: %s over-reports %.2f MiB after 2 s "
                "without writes (must be exact)", i, bm[k],
                res[k].over / (double) MiB);
      }
      n++;
    }
    for (i = 0; i < NBM; i++) {
      qsort (over[i], (size_t) n, sizeof over[i][0], cmp_u64);
      qsort (beyond[i], (size_t) n, sizeof beyond[i][0], cmp_u64);
      printf ("%-6s %-4s over-report: median %.2f MiB, max %.2f MiB",
              wname[w], bm[i], over[i][n / 2] / (double) MiB,
              over[i][n - 1] / (double) MiB);
      if (w == W_SEQ)
        printf ("; past the end: median %.2f MiB, max %.2f MiB",
                beyond[i][n / 2] / (double) MiB,
                beyond[i][n - 1] / (double) MiB);
      putchar ('\n');
    }
  }
  if (expect_fail) {
    if (!failures) {
      printf ("bench-crash-bound: negative control: expected a failure, "
              "saw none - the check cannot detect one\n");
      return 1;
    }
    printf ("bench-crash-bound: negative control failed %d time(s), as it "
            "must\n", failures);
    return 0;
  }
  if (check && failures) {
    printf ("bench-crash-bound: %d failure(s)\n", failures);
    return 1;
  }
  return 0;
}
