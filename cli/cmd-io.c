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
#include <sys/stat.h>

#include "cli.h"
#include "cleanup.h"
#include "vector.h"

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
          "A command that does not parse runs nothing: the -c commands, and a\n"
          "command FILE that is a regular file, are all parsed before the first\n"
          "one runs; commands from a pipe or a terminal are parsed one line at\n"
          "a time, and a malformed line stops there.\n"
          "\n"
          "Exit status: 0 if every command succeeded and its line was printed,\n"
          "1 otherwise (processing stops at the first failure).\n",
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

/* One parsed command.  Everything is checked here, before any command
 * runs: a script with a malformed line does nothing at all. */
enum io_op { OP_NONE, OP_READ, OP_WRITE, OP_ZERO, OP_DISCARD, OP_FLUSH };

struct io_cmd {
  enum io_op op;
  int pattern;                  /* -P BYTE, or -1 */
  bool unmap;                   /* write -z -u */
  uint64_t off, len;
};

/* Parse one command; where names its origin for messages ("-c 2",
 * "FILE:7").  Returns 0 (cmd->op OP_NONE for a blank line or comment), or
 * -1 after printing what is wrong. */
static int
parse_cmd (const char *where, const char *text, struct io_cmd *cmd)
{
  char *line, *w[16];
  const char *err, *name;
  int n, i, r = -1;
  bool zero = false;

  *cmd = (struct io_cmd) { .op = OP_NONE, .pattern = -1 };
  if (!(line = strdup (text))) {
    fail ("out of memory");
    return -1;
  }
  n = split (line, w, 16);
  if (n < 0) {
    fail ("%s: too many words in command", where);
    goto out;
  }
  if (n == 0 || w[0][0] == '#') {
    r = 0;
    goto out;
  }
  name = w[0];
  if (strcmp (name, "flush") == 0) {
    if (n != 1)
      fail ("%s: flush takes no arguments", where);
    else {
      cmd->op = OP_FLUSH;
      r = 0;
    }
    goto out;
  }
  if (strcmp (name, "write") == 0)
    cmd->op = OP_WRITE;
  else if (strcmp (name, "read") == 0)
    cmd->op = OP_READ;
  else if (strcmp (name, "discard") == 0)
    cmd->op = OP_DISCARD;
  else {
    fail ("%s: unknown command '%s' (write, read, discard, flush)",
          where, name);
    goto out;
  }
  for (i = 1; i < n && w[i][0] == '-' && w[i][1]; i++) {
    if (strcmp (w[i], "-P") == 0 && i + 1 < n && cmd->op != OP_DISCARD) {
      if (parse_pattern (w[++i], &cmd->pattern) == -1) {
        fail ("%s: %s: bad pattern '%s' (0..255)", where, name, w[i]);
        goto out;
      }
    }
    else if (strcmp (w[i], "-z") == 0 && cmd->op == OP_WRITE)
      zero = true;
    else if (strcmp (w[i], "-u") == 0 && cmd->op == OP_WRITE)
      cmd->unmap = true;
    else {
      fail ("%s: %s: unknown option '%s'", where, name, w[i]);
      goto out;
    }
  }
  if (n - i != 2) {
    fail ("%s: %s: expected OFFSET LENGTH", where, name);
    goto out;
  }
  if (parse_size (w[i], &cmd->off, &err) == -1) {
    fail ("%s: %s: OFFSET '%s': %s", where, name, w[i], err);
    goto out;
  }
  if (parse_size (w[i + 1], &cmd->len, &err) == -1) {
    fail ("%s: %s: LENGTH '%s': %s", where, name, w[i + 1], err);
    goto out;
  }
  if (zero && cmd->pattern >= 0) {
    fail ("%s: write: -z and -P cannot be combined", where);
    goto out;
  }
  if (cmd->unmap && !zero) {
    fail ("%s: write: -u needs -z", where);
    goto out;
  }
  if (zero)
    cmd->op = OP_ZERO;
  if (cmd->len > MAX_IO && (cmd->op == OP_READ || cmd->op == OP_WRITE)) {
    fail ("%s: %s: length %" PRIu64 " is larger than the %u-byte limit",
          where, name, cmd->len, MAX_IO);
    goto out;
  }
  r = 0;
 out:
  free (line);
  return r;
}

/* Run one parsed command and print its line.  Returns 0 or 1 (failed,
 * said on stderr). */
static int
run_cmd (struct rawtrack_image *img, const struct io_cmd *cmd, uint8_t **buf)
{
  uint64_t off = cmd->off, len = cmd->len, k;

  switch (cmd->op) {
  case OP_NONE:
    return 0;
  case OP_FLUSH:
    if (rawtrack_image_flush (img) == -1)
      return fail_lib ("flush failed");
    return 0;
  case OP_DISCARD:
    if (rawtrack_image_trim (img, len, off, 0) == -1)
      return fail_lib ("discard failed");
    printf ("discard %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
    break;
  case OP_ZERO:
    if (rawtrack_image_zero (img, len, off,
                             cmd->unmap ? RAWTRACK_ZERO_MAY_TRIM : 0) == -1)
      return fail_lib ("write failed");
    printf ("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
    break;
  case OP_WRITE:
    if (!*buf && !(*buf = malloc (MAX_IO)))
      return fail ("out of memory");
    memset (*buf, cmd->pattern >= 0 ? cmd->pattern : 0xcd, len);
    if (rawtrack_image_pwrite (img, *buf, len, off, 0) == -1)
      return fail_lib ("write failed");
    printf ("wrote %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
    break;
  case OP_READ:
    if (!*buf && !(*buf = malloc (MAX_IO)))
      return fail ("out of memory");
    if (rawtrack_image_pread (img, *buf, len, off) == -1)
      return fail_lib ("read failed");
    if (cmd->pattern >= 0)
      for (k = 0; k < len; k++)
        if ((*buf)[k] != cmd->pattern) {
          printf ("Pattern verification failed at offset %" PRIu64 ", %"
                  PRIu64 " bytes\n", off + k, len);
          fflush (stdout);
          return 1;
        }
    printf ("read %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n",
            len, len, off);
    break;
  }
  /* The line is the only report that the operation completed: one that
   * cannot be written is a failure, and nothing further runs. */
  if (fflush (stdout) == EOF || ferror (stdout))
    return fail ("writing standard output: %s", strerror (errno));
  return 0;
}

/* The parsed commands, in order. */
DEFINE_VECTOR_TYPE (cmd_list, struct io_cmd, realloc)

static int
cmd_list_add (struct cmd_list *l, const struct io_cmd *c)
{
  if (c->op == OP_NONE)
    return 0;
  if (cmd_list_append (l, *c) == -1)
    return fail ("out of memory"), -1;
  return 0;
}

/* Parse every line of fp into l.  Returns 0 or -1 (said). */
static int
parse_stream (FILE *fp, const char *name, struct cmd_list *l)
{
  char *line = NULL, where[64];
  size_t cap = 0;
  uintmax_t lineno = 0;
  struct io_cmd c;
  int r = 0;

  while (r == 0 && getline (&line, &cap, fp) != -1) {
    snprintf (where, sizeof where, "%.40s:%ju", name, ++lineno);
    if (parse_cmd (where, line, &c) == -1 || cmd_list_add (l, &c) == -1)
      r = -1;
  }
  if (r == 0 && ferror (fp))
    r = fail ("%s: %s", name, strerror (errno)) ? -1 : 0;
  free (line);
  return r;
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
  CLEANUP_VECTOR (cmd_list) struct cmd_list list = { 0 };
  CLEANUP_FREE uint8_t *buf = NULL;
  CLEANUP_FREE char *line = NULL;
  struct io_cmd cmd;
  struct stat st;
  const char *file = NULL, *data_file = NULL, *src;
  unsigned flags = RAWTRACK_OPEN_RDWR;
  FILE *fp = NULL;
  char where[32];
  size_t nr_c = 0, cap = 0, i;
  bool stream = false;
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
      snprintf (where, sizeof where, "-c %zu", ++nr_c);
      if (parse_cmd (where, optarg, &cmd) == -1 ||
          cmd_list_add (&list, &cmd) == -1)
        return 1;
      break;
    case 'f': file = optarg; break;
    case 'm':
      if (parse_track_mode (optarg, &flags) == -1)
        return usage_error ("io", TRACK_MODE_ERROR);
      break;
    case 'r': flags &= ~RAWTRACK_OPEN_RDWR; break;
    case 'd': data_file = optarg; break;
    case 'A': flags |= RAWTRACK_OPEN_ALLOW_DEVICE; break;
    case 'h': help (); return 0;
    default:
      return usage_error ("io", "invalid option or missing argument: '%s'",
                          argv[optind - 1]);
    }
  }
  if (argc - optind != 1)
    return usage_error ("io", "expected exactly one IMAGE");
  if (nr_c && file)
    return usage_error ("io", "use -c or -f, not both");

  /* Commands from a file: a regular one is parsed whole before anything
   * runs, like -c; a pipe or terminal line by line. */
  if (!nr_c) {
    src = file && strcmp (file, "-") != 0 ? file : "stdin";
    fp = strcmp (src, "stdin") == 0 ? stdin : fopen (file, "r");
    if (!fp)
      return fail ("%s: %s", file, strerror (errno));
    if (fstat (fileno (fp), &st) == 0 && S_ISREG (st.st_mode)) {
      r = parse_stream (fp, src, &list) == -1;
      if (fp != stdin)
        fclose (fp);
      fp = NULL;
      if (r)
        return 1;
    }
    else
      stream = true;
  }

  img = rawtrack_image_open (argv[optind], flags, data_file);
  if (!img) {
    if (fp && fp != stdin)
      fclose (fp);
    return fail_lib ("%s", argv[optind]);
  }
  {
    char why[512];

    if (data_file_change_text (img, why, sizeof why))
      fprintf (stderr, "%s: warning: %s: %s\n", progname, argv[optind], why);
  }
  for (i = 0; i < list.len && r == 0; i++)
    r = run_cmd (img, &list.ptr[i], &buf);
  if (stream) {
    uintmax_t lineno = 0;

    while (r == 0 && getline (&line, &cap, fp) != -1) {
      snprintf (where, sizeof where, "%.16s:%ju", src, ++lineno);
      r = parse_cmd (where, line, &cmd) == -1 || run_cmd (img, &cmd, &buf);
    }
    if (r == 0 && ferror (fp))
      r = fail ("%s: %s", src, strerror (errno));
    if (fp != stdin)
      fclose (fp);
  }
  if (rawtrack_image_close (img) == -1 && r == 0)
    r = fail_lib ("closing %s", argv[optind]);
  return r ? 1 : 0;
}
