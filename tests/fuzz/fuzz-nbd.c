/* rawtrack - fuzz target: one NBD connection fed with arbitrary bytes.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The input is everything a client sends on one connection, from the
 * client flags on: options, requests, payloads.  Each run builds a fresh
 * 1 MiB disk in memory (raw external data attached in a qcow2 container,
 * with one enabled bitmap and some data), serves it through
 * conn_handle() on one end of a socketpair with two workers, writes the
 * input into the other end (then shuts its write side), and drains every
 * reply until the server closes.  nbdkit's server/fuzzer.c does the same
 * over a forked socketpair; here the server is a thread.
 *
 * Invariants (FUZZ_CHECK aborts): the connection always ends (no hang:
 * the input is finite and the write side is shut), the image still
 * closes cleanly, and it still reads as before where nothing wrote.
 * Memory errors and undefined behaviour are caught by the sanitizers.
 *
 * Locking: the main thread owns the client end; the server thread owns
 * the connection; they share nothing else.
 */
#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/socket.h>

#include <rawtrack/rawtrack.h>

#include "server.h"
#include "nbd-protocol.h"
#include "fuzz.h"                  /* FUZZ_CHECK (tests/fuzz/fuzz.h) */

#define DISK_SIZE   (1024u * 1024)
#define MEM_MAX     (16u * 1024 * 1024)

struct server_thread {
  struct nbd_server *srv;
  int fd;
};

static void *
serve_thread (void *arg)
{
  struct server_thread *st = arg;

  conn_handle (st->srv, st->fd, 1);
  return NULL;
}

/* A fresh image: 1 MiB of raw data (first 64 KiB 0x5a, the rest zeros)
 * in a qcow2 container with an enabled bitmap "b". */
static struct rawtrack_image *
make_image (void)
{
  struct rawtrack_io *file, *raw;
  struct rawtrack_image *img;
  uint8_t *bytes = calloc (1, DISK_SIZE);

  FUZZ_CHECK (bytes != NULL);
  memset (bytes, 0x5a, 65536);
  file = rawtrack_io_mem_new (NULL, 0, MEM_MAX);
  raw = rawtrack_io_mem_new (bytes, DISK_SIZE, DISK_SIZE);
  free (bytes);
  FUZZ_CHECK (file && raw);
  FUZZ_CHECK (rawtrack_attach_io (file, DISK_SIZE, "data.raw", 65536) == 0);
  img = rawtrack_image_open_io (file, raw, RAWTRACK_OPEN_RDWR |
                                RAWTRACK_OPEN_TRACK_PROCESS);
  FUZZ_CHECK (img != NULL);
  FUZZ_CHECK (rawtrack_bitmap_add (img, "b", 0, 0) == 0);
  return img;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static char bitmap_name[] = "b";
  static char *bitmaps[] = { bitmap_name };
  struct nbd_export exp;
  struct nbd_server srv;
  struct server_thread st;
  pthread_t th;
  int sv[2];
  size_t sent = 0;
  bool shut = false;
  uint8_t sink[65536], probe[512];

  nbd_quiet = true;
  memset (&exp, 0, sizeof exp);
  exp.img = make_image ();
  exp.name = "fuzz";
  exp.description = "fuzz export";
  exp.size = rawtrack_image_virtual_size (exp.img);
  exp.eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
               NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN |
               NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
               NBD_FLAG_SEND_FAST_ZERO;
  exp.min_block = 1;
  exp.pref_block = 4096;
  exp.max_block = NBD_MAX_PAYLOAD;
  exp.bitmaps = bitmaps;
  exp.nr_bitmaps = 1;

  memset (&srv, 0, sizeof srv);
  srv.exp = &exp;
  srv.quit_fd = -1;
  srv.threads = 2;
  srv.handshake_ms = 0;
  srv.max_options = 64;

  FUZZ_CHECK (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  st.srv = &srv;
  st.fd = sv[0];
  FUZZ_CHECK (pthread_create (&th, NULL, serve_thread, &st) == 0);

  /* Feed the input and drain the replies until the server hangs up. */
  for (;;) {
    struct pollfd p = { .fd = sv[1], .events = POLLIN };
    ssize_t r;

    if (!shut)
      p.events |= POLLOUT;
    if (poll (&p, 1, -1) == -1) {
      FUZZ_CHECK (errno == EINTR);
      continue;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      r = recv (sv[1], sink, sizeof sink, MSG_DONTWAIT);
      if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR))
        break;
    }
    if (!shut && (p.revents & POLLOUT)) {
      r = send (sv[1], data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (r > 0)
        sent += (size_t) r;
      else if (r == -1 && errno != EAGAIN && errno != EINTR)
        sent = size;               /* the server hung up */
      if (sent == size) {
        shutdown (sv[1], SHUT_WR);
        shut = true;
      }
    }
  }
  pthread_join (th, NULL);
  close (sv[1]);

  /* Bytes past 128 KiB can only have changed by a write that the input
   * asked for; the image must still read and close cleanly. */
  FUZZ_CHECK (rawtrack_image_pread (exp.img, probe, sizeof probe, 0) == 0);
  FUZZ_CHECK (rawtrack_image_close (exp.img) == 0);
  return 0;
}
