/* rawtrack - `rawtrack io`: scripted guest I/O in the spirit of qemu-io.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Commands run in order, from -c options, or one per line from -f FILE or
 * standard input.  Each completed command prints one line (qemu-io's
 * wording) and the line is flushed only after the operation returned, so a
 * test that reads the output knows exactly which writes completed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <inttypes.h>
#include <errno.h>

#include "cli.h"

#define MAX_IO (64u * 1024 * 1024)

static void
help (void)
{
  printf ("Usage: %s io IMAGE [-c CMD]... [-f FILE] [--track safe|process|lazy]\n"
          "                 [--data-file PATH] [--allow-device] [--read-only]\n"
          "                 [--allow-remote] [--tls-certificates DIR | --tls-psk FILE]\n"
          "\n"
          "Run guest I/O commands against IMAGE through rawtrack's tracked I/O\n"
          "path: every write, write-zeroes and discard marks every enabled\n"
          "bitmap.  Commands come from each -c in order, else one per line\n"
          "from FILE (-f) or standard input.  Sizes take k, M, G, T suffixes.\n"
          "\n"
          "Commands:\n"
          "  write [-P BYTE] [-z] [-u] OFFSET LENGTH\n"
          "        write LENGTH bytes of BYTE (default 0xcd), or zeroes (-z;\n"
          "        -u also allows punching holes)\n"
          "  read [-P BYTE] OFFSET LENGTH\n"
          "        read, and with -P verify every byte equals BYTE\n"
          "  discard OFFSET LENGTH\n"
          "  flush\n"
          "\n"
          "After each command a line like qemu-io's is printed once the\n"
          "operation has completed, e.g. 'wrote 4096/4096 bytes at offset\n"
          "1048576'.\n"
          "\n"
          "Options:\n"
          "  -c, --cmd CMD       run CMD (repeatable)\n"
          "  -f, --file FILE     read commands from FILE ('-': stdin)\n"
          "  --track MODE        tracking: safe (default; survives kill -9 and\n"
          "                      power loss), process (survives kill -9 only),\n"
          "                      lazy (QEMU's: in-use while open); the same\n"
          "                      option as `serve --track`.  --mode MODE is\n"
          "                      accepted as an older spelling\n"
          "  --read-only         open read-only (reads only)\n"
          "  --data-file PATH    use PATH as the external data file\n"
          "  --allow-device      the data file may be a block device named by the\n"
          "                      image (without this only --data-file can name one)\n"
          REMOTE_HELP
          "  -h, --help          this help\n"
          "\n"
          "Exit status: 0 if every command succeeded, 1 otherwise (processing\n"
          "stops at the first failure).\n",
          progname);
}

static int
parse_pattern (const char *s, int *out)
{
  char *end;
  long v;

  errno = 0;
  v = strtol (s, &end, 0);
  if (errno || *end || v < 0 || v > 255)
    return -1;
  *out = (int) v;
  return 0;
}

/* Split line into at most max words (in place). */
static int
split (char *line, char **argv, int max)
{
  int n = 0;
  char *p = line;

  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
      *p++ = '\0';
    if (!*p)
      break;
    if (n == max)
      return -1;
    argv[n++] = p;
    while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
      p++;
  }
  return n;
}

static int
offlen (const char *cmd, char **w, int n, uint64_t *off, uint64_t *len)
{
  const char *err;

  if (n != 2)
    return fail ("%s: expected OFFSET LENGTH", cmd);
  if (parse_size (w[0], off, &err) == -1)
    return fail ("%s: OFFSET '%s': %s", cmd, w[0], err);
  if (parse_size (w[1], len, &err) == -1)
    return fail ("%s: LENGTH '%s': %s", cmd, w[1], err);
  return 0;
}

static int
run_line (struct rawtrack_image *img, char *line, uint8_t **buf)
{
  char *w[16];
  int n = split (line, w, 16), pattern = -1, zero = 0, unmap = 0, i;
  uint64_t off, len;

  if (n < 0)
    return fail ("too many words in command");
  if (n == 0 || w[0][0] == '#')
    return 0;

  if (strcmp (w[0], "flush") == 0) {
    if (n != 1)
      return fail ("flush takes no arguments");
    if (rawtrack_image_flush (img) == -1)
      return fail_lib ("flush failed");
    return 0;
  }
  if (strcmp (w[0], "write") != 0 && strcmp (w[0], "read") != 0 &&
      strcmp (w[0], "discard") != 0)
    return fail ("unknown command '%s' (write, read, discard, flush)", w[0]);

  for (i = 1; i < n && w[i][0] == '-' && w[i][1]; i++) {
    if (strcmp (w[i], "-P") == 0 && i + 1 < n &&
        strcmp (w[0], "discard") != 0) {
      if (parse_pattern (w[++i], &pattern) == -1)
        return fail ("%s: bad pattern '%s' (0..255)", w[0], w[i]);
    }
    else if (strcmp (w[i], "-z") == 0 && strcmp (w[0], "write") == 0)
      zero = 1;
    else if (strcmp (w[i], "-u") == 0 && strcmp (w[0], "write") == 0)
      unmap = 1;
    else
      return fail ("%s: unknown option '%s'", w[0], w[i]);
  }
  if (offlen (w[0], w + i, n - i, &off, &len) == -1)
    return 1;
  if (len > MAX_IO && !(zero || strcmp (w[0], "discard") == 0))
    return fail ("%s: length %" PRIu64 " is larger than the %u-byte limit",
                 w[0], len, MAX_IO);
  if (zero && pattern >= 0)
    return fail ("write: -z and -P cannot be combined");

  if (strcmp (w[0], "discard") == 0) {
    if (rawtrack_image_trim (img, len, off, 0) == -1)
      return fail_lib ("discard failed");
    printf ("discard %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
  }
  else if (strcmp (w[0], "write") == 0) {
    if (zero) {
      if (rawtrack_image_zero (img, len, off,
                               unmap ? RAWTRACK_ZERO_MAY_TRIM : 0) == -1)
        return fail_lib ("write failed");
    }
    else {
      if (!*buf && !(*buf = malloc (MAX_IO)))
        return fail ("out of memory");
      memset (*buf, pattern >= 0 ? pattern : 0xcd, len);
      if (rawtrack_image_pwrite (img, *buf, len, off, 0) == -1)
        return fail_lib ("write failed");
    }
    printf ("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
  }
  else {
    uint64_t k;

    if (!*buf && !(*buf = malloc (MAX_IO)))
      return fail ("out of memory");
    if (rawtrack_image_pread (img, *buf, len, off) == -1)
      return fail_lib ("read failed");
    if (pattern >= 0)
      for (k = 0; k < len; k++)
        if ((*buf)[k] != pattern) {
          printf ("Pattern verification failed at offset %" PRIu64 ", %"
                  PRIu64 " bytes\n", off + k, len);
          fflush (stdout);
          return 1;
        }
    printf ("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
  }
  fflush (stdout);
  return 0;
}

int
cmd_io (int argc, char **argv)
{
  static const struct option opts[] = {
    { "cmd", required_argument, NULL, 'c' },
    { "file", required_argument, NULL, 'f' },
    { "track", required_argument, NULL, 'm' },
    { "mode", required_argument, NULL, 'm' },       /* the old spelling */
    { "read-only", no_argument, NULL, 'r' },
    { "data-file", required_argument, NULL, 'd' },
    { "allow-device", no_argument, NULL, 'A' },
    REMOTE_LONG_OPTS,
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_image *img;
  char **cmds = NULL, *line = NULL;
  const char *file = NULL, *data_file = NULL;
  unsigned flags = RAWTRACK_OPEN_RDWR;
  uint8_t *buf = NULL;
  size_t nr_cmds = 0, cap = 0, i;
  int c, r = 0;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hc:f:", opts, NULL)) != -1) {
    int rr = remote_option (c, optarg, &flags);

    if (rr == -1)
      return 1;
    if (rr == 1)
      continue;
    switch (c) {
    case 'c':
      if (nr_cmds == cap) {
        char **n;
        cap = cap ? cap * 2 : 8;
        n = realloc (cmds, cap * sizeof *n);
        if (!n) {
          free (cmds);
          return fail ("out of memory");
        }
        cmds = n;
      }
      cmds[nr_cmds++] = optarg;
      break;
    case 'f': file = optarg; break;
    case 'm':
      if (parse_track_mode (optarg, &flags) == -1) {
        free (cmds);
        return usage_error ("io", TRACK_MODE_ERROR);
      }
      break;
    case 'r': flags &= ~RAWTRACK_OPEN_RDWR; break;
    case 'd': data_file = optarg; break;
    case 'A': flags |= RAWTRACK_OPEN_ALLOW_DEVICE; break;
    case 'h': help (); free (cmds); return 0;
    default:
      free (cmds);
      return usage_error ("io", "invalid option or missing argument: '%s'",
                          argv[optind - 1]);
    }
  }
  if (argc - optind != 1) {
    free (cmds);
    return usage_error ("io", "expected exactly one IMAGE");
  }
  if (nr_cmds && file) {
    free (cmds);
    return usage_error ("io", "use -c or -f, not both");
  }

  img = rawtrack_image_open (argv[optind], flags, data_file);
  if (!img) {
    free (cmds);
    return fail_lib ("%s", argv[optind]);
  }
  if (nr_cmds) {
    for (i = 0; i < nr_cmds && r == 0; i++) {
      char *copy = strdup (cmds[i]);

      if (!copy) {
        r = fail ("out of memory");
        break;
      }
      r = run_line (img, copy, &buf);
      free (copy);
    }
  }
  else {
    FILE *fp = stdin;
    size_t n = 0;

    if (file && strcmp (file, "-") != 0 && !(fp = fopen (file, "r")))
      r = fail ("%s: %s", file, strerror (errno));
    while (r == 0 && getline (&line, &n, fp) != -1)
      r = run_line (img, line, &buf);
    if (fp && fp != stdin)
      fclose (fp);
  }
  if (rawtrack_image_close (img) == -1 && r == 0)
    r = fail_lib ("closing %s", argv[optind]);
  free (line);
  free (buf);
  free (cmds);
  return r ? 1 : 0;
}
