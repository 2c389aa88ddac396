/* rawtrack - the command-line tool: command table and shared helpers.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: dispatch of `rawtrack CMD ...`, `help`, `--version`, and the error
 * printing helpers every command uses.  Exit status: 0 success, 1 error
 * (check and other commands document their own codes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <errno.h>

#include "cli.h"
#include "config.h"

const char *progname = "rawtrack";

static int cmd_help (int argc, char **argv);

static const struct command commands[] = {
  { "attach", "wrap an existing raw disk in a qcow2 metadata container", cmd_attach },
  { "create", "create a new empty image", cmd_create },
  { "info",   "show what an image holds", cmd_info },
  { "check",  "check (and repair) an image's metadata", cmd_check },
  { "cat",    "write the guest-visible disk contents to standard output", cmd_cat },
  { "io",     "run guest reads and tracked writes (like qemu-io)", cmd_io },
  { "bitmap", "manage and read persistent dirty bitmaps", cmd_bitmap },
  { "serve",  "export an image and its dirty bitmaps over NBD", cmd_serve },
  { "backup", "incremental backup and restore: create, restore, verify, list, prune", cmd_backup },
  { "help",   "show this help, or a command's help", cmd_help },
};
#define NR_COMMANDS (sizeof commands / sizeof commands[0])

static void vreport (const char *fmt, va_list ap, const char *lib)
  __attribute__ ((format (printf, 1, 0)));

static void
vreport (const char *fmt, va_list ap, const char *lib)
{
  fprintf (stderr, "%s: ", progname);
  vfprintf (stderr, fmt, ap);
  if (lib)
    fprintf (stderr, ": %s", lib);
  fputc ('\n', stderr);
}

int
fail (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vreport (fmt, ap, NULL);
  va_end (ap);
  return 1;
}

int
fail_lib (const char *fmt, ...)
{
  const char *e = rawtrack_get_error ();
  va_list ap;

  va_start (ap, fmt);
  vreport (fmt, ap, e ? e : "unknown error");
  va_end (ap);
  return 1;
}

int
usage_error (const char *cmd, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vreport (fmt, ap, NULL);
  va_end (ap);
  fprintf (stderr, "Try '%s %s --help'.\n", progname, cmd);
  return 1;
}

static void
usage (FILE *fp)
{
  size_t i;

  fprintf (fp,
           "Usage: %s COMMAND [ARGS...]\n"
           "       %s COMMAND --help\n"
           "       %s --version\n"
           "\n"
           "Changed-block tracking for disk images: qcow2 metadata containers\n"
           "around raw disks, with persistent dirty bitmaps QEMU can read.\n"
           "\n"
           "Commands:\n", progname, progname, progname);
  for (i = 0; i < NR_COMMANDS; i++)
    fprintf (fp, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf (fp,
           "\n"
           "Commands that write an image (io, bitmap add/remove/..., check -r,\n"
           "serve without --read-only) take QEMU's image locks on it and on\n"
           "its data file: they refuse to start while QEMU or another rawtrack\n"
           "has the image open for writing (or qemu-img reads it without -U),\n"
           "and QEMU refuses to open it while they run.  Reading commands take\n"
           "no lock.  RAWTRACK_NO_LOCK=1 in the environment turns locking off.\n"
           "\n"
           "A data file must be a regular file or a block device; one named only\n"
           "by the image (not by --data-file) may not be a block device unless\n"
           "--allow-device is given.  FIFOs, sockets, character devices and files\n"
           "on pseudo file systems (/proc, /sys, ...) are always refused.\n"
           "\nSee 'man rawtrack' or docs/rawtrack.md for details.\n");
}

static const struct command *
find_command (const char *name)
{
  size_t i;

  for (i = 0; i < NR_COMMANDS; i++)
    if (strcmp (commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

static int
cmd_help (int argc, char **argv)
{
  const struct command *c;
  char *args[] = { NULL, (char *) "--help", NULL };

  if (argc < 2 || strcmp (argv[1], "--help") == 0 ||
      strcmp (argv[1], "-h") == 0) {
    usage (stdout);
    return 0;
  }
  c = find_command (argv[1]);
  if (!c)
    return fail ("unknown command '%s'; see '%s help'", argv[1], progname);
  if (c->run == cmd_help) {
    usage (stdout);
    return 0;
  }
  args[0] = argv[1];
  return c->run (2, args);
}

/* Whatever a command printed must have reached standard output: a full
 * disk or a closed pipe turns success into failure, said on stderr (as
 * GNU tools' close_stdout does). */
static int
finish_stdout (int status)
{
  errno = 0;
  if ((fflush (stdout) == EOF || ferror (stdout)) && status == 0) {
    /* (A failed command has said why already.) */
    if (errno)
      fail ("writing standard output: %s", strerror (errno));
    else
      fail ("writing standard output failed");
    return 1;
  }
  return status;
}

int
main (int argc, char **argv)
{
  const struct command *c;

  if (argc < 2) {
    usage (stderr);
    return 1;
  }
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0) {
    usage (stdout);
    return finish_stdout (0);
  }
  if (strcmp (argv[1], "--version") == 0 || strcmp (argv[1], "-V") == 0) {
    printf ("rawtrack %s (library %s)\n", RAWTRACK_VERSION, rawtrack_version ());
    return finish_stdout (0);
  }
  c = find_command (argv[1]);
  if (!c)
    return fail ("unknown command '%s'; see '%s help'", argv[1], progname);
  return finish_stdout (c->run (argc - 1, argv + 1));
}
