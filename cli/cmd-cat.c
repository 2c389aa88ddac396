/* rawtrack - `rawtrack cat`: the guest-visible disk on standard output.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <unistd.h>
#include <errno.h>
#include <inttypes.h>

#include "cli.h"

#define CHUNK (4u * 1024 * 1024)

static void
help (void)
{
  printf ("Usage: %s cat IMAGE [--offset O] [--length L] [--data-file PATH]\n"
          "                    [--allow-device] [--allow-remote]\n"
          "                    [--tls-certificates DIR | --tls-psk FILE]\n"
          "\n"
          "Write the disk as the guest sees it to standard output: data from\n"
          "the external data file (or the image's own clusters), zeros for\n"
          "holes and zero clusters, compressed clusters decompressed, and the\n"
          "backing chain's data where the image has no cluster (qcow2 and raw\n"
          "backing files, as QEMU reads them).\n"
          "\n"
          "  --offset O        start at byte O (suffixes k, M, G, T)\n"
          "  --length L        write L bytes (default: to the end)\n"
          "  --data-file PATH  use PATH as the external data file\n"
          "  --allow-device    the data file may be a block device named by the\n"
          "                    image (without this only --data-file can name one)\n"
          REMOTE_HELP
          "  -h, --help        this help\n",
          progname);
}

int
cmd_cat (int argc, char **argv)
{
  static const struct option opts[] = {
    { "offset", required_argument, NULL, 'o' },
    { "length", required_argument, NULL, 'l' },
    { "data-file", required_argument, NULL, 'd' },
    { "allow-device", no_argument, NULL, 'A' },
    REMOTE_LONG_OPTS,
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_image *img;
  const char *data_file = NULL, *err;
  uint64_t offset = 0, length = 0, size;
  bool have_length = false;
  char *buf;
  unsigned flags = 0;
  int c, r = 0;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", opts, NULL)) != -1) {
    int rr = remote_option (c, optarg, &flags);

    if (rr == -1)
      return 1;
    if (rr == 1)
      continue;
    switch (c) {
    case 'o':
      if (parse_size (optarg, &offset, &err) == -1)
        return usage_error ("cat", "--offset '%s': %s", optarg, err);
      break;
    case 'l':
      if (parse_size (optarg, &length, &err) == -1)
        return usage_error ("cat", "--length '%s': %s", optarg, err);
      have_length = true;
      break;
    case 'd': data_file = optarg; break;
    case 'A': flags |= RAWTRACK_OPEN_ALLOW_DEVICE; break;
    case 'h': help (); return 0;
    default: return usage_error ("cat", "invalid option or missing argument: '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind != 1)
    return usage_error ("cat", "expected exactly one IMAGE");

  img = rawtrack_image_open (argv[optind], flags, data_file);
  if (!img)
    return fail_lib ("%s", argv[optind]);
  size = rawtrack_image_virtual_size (img);
  if (offset > size) {
    rawtrack_image_close (img);
    return fail ("--offset %" PRIu64 " is past the end of the disk (%" PRIu64
                 " bytes)", offset, size);
  }
  if (!have_length || length > size - offset)
    length = size - offset;
  buf = malloc (CHUNK);
  if (!buf) {
    rawtrack_image_close (img);
    return fail ("out of memory");
  }
  while (length > 0) {
    uint64_t n = length < CHUNK ? length : CHUNK;
    size_t done = 0;

    if (rawtrack_image_pread (img, buf, n, offset) == -1) {
      r = fail_lib ("%s: reading offset %" PRIu64, argv[optind], offset);
      break;
    }
    while (done < n) {
      ssize_t w = write (STDOUT_FILENO, buf + done, n - done);
      if (w < 0) {
        if (errno == EINTR)
          continue;
        r = fail ("writing to standard output: %s", strerror (errno));
        goto out;
      }
      done += (size_t) w;
    }
    offset += n;
    length -= n;
  }
 out:
  free (buf);
  rawtrack_image_close (img);
  return r;
}
