/* rawtrack - `rawtrack check`: check (and repair) an image's metadata.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the command line and the output of rawtrack_image_check.  Output
 * and exit status are qemu-img check's, byte for byte where the two share
 * a line, so scripts can switch between them:
 *   - one line per finding on stderr, as the library reports it;
 *   - the summary on stdout (human), or qemu-img's JSON object with its
 *     key order and with zero-valued optional counters left out;
 *   - exit 0 clean (or fully repaired), 1 the check could not run or had
 *     internal errors, 2 corruptions remain, 3 only leaks remain.
 * The external data file is opened, as qemu-img check does: an image
 * whose data file cannot be opened cannot be checked (exit 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <inttypes.h>

#include "cli.h"

static void
help (void)
{
  printf ("Usage: %s check IMAGE [-r leaks|all | --repair[=leaks|all]]\n"
          "                [--json | --output=human|json] [--data-file PATH] [-q]\n"
          "                [--allow-device] [--allow-remote]\n"
          "                [--tls-certificates DIR | --tls-psk FILE]\n"
          "\n"
          "Check the qcow2 metadata of IMAGE for consistency, and optionally\n"
          "repair it.  The check recomputes the reference count of every\n"
          "cluster of the image file from the structures that use it (header,\n"
          "L1 and L2 tables, data and compressed clusters, snapshots, the\n"
          "refcount table and blocks, the bitmap directory, bitmap tables and\n"
          "bitmap data) and compares it with the stored refcounts.  It also\n"
          "validates table entries (reserved bits, alignment, offsets past the\n"
          "end of the file), the COPIED flags, extended L2 subcluster bitmaps\n"
          "and the external data file rules.  Results match 'qemu-img check'.\n"
          "\n"
          "A cluster whose stored refcount is higher than its number of\n"
          "references is leaked: it wastes space but does no harm.  A lower\n"
          "refcount, or any invalid entry, is an error: data may be corrupted,\n"
          "or further writes may corrupt it.  Bitmaps marked in use (left\n"
          "inconsistent by a crash) are reported but are not errors; remove them\n"
          "with 'qemu-img bitmap --remove'.\n"
          "\n"
          "Options:\n"
          "  -r leaks          repair leaked clusters only\n"
          "  -r all            repair leaks and every error that can be fixed\n"
          "                    safely: refcounts are raised or lowered to the\n"
          "                    number of references, COPIED flags corrected, and\n"
          "                    the refcount table and blocks rebuilt at the end of\n"
          "                    the file when they are themselves broken\n"
          "  --repair[=MODE]   the same as -r MODE (MODE defaults to all)\n"
          "  --json, --output=json\n"
          "                    print the result as qemu-img check --output=json\n"
          "                    does; --output=human is the default\n"
          "  --data-file PATH  use PATH as the external data file instead of the\n"
          "                    name stored in the image\n"
          "  --allow-device    the data file may be a block device named by the\n"
          "                    image (without this only --data-file can name one)\n"
          REMOTE_HELP
          "  -f qcow2          accepted for compatibility with qemu-img\n"
          "  -q, --quiet       print nothing on stdout (findings still go to\n"
          "                    stderr)\n"
          "  -h, --help        this help\n"
          "\n"
          "A repair is written in a crash-safe order: refcount increases are made\n"
          "durable before decreases, a rebuilt refcount structure before the\n"
          "header points to it, and COPIED flags after the refcounts.  The image\n"
          "is then checked again ('Double checking the fixed image now...'), and\n"
          "the dirty and corrupt header flags are cleared when no error remains.\n"
          "The image is opened read-write only with -r; the data file is never\n"
          "written.\n"
          "\n"
          "Exit status:\n"
          "  0  no errors (or all of them repaired)\n"
          "  1  the check could not run: the image or its data file cannot be\n"
          "     opened, a table cannot be read, or a repair write failed\n"
          "  2  errors (corruptions) remain\n"
          "  3  only leaked clusters remain\n",
          progname);
}

/* Findings go to stderr, one per line, as qemu-img prints them. */
static void
report (void *opaque, int level, const char *message)
{
  (void) opaque;
  (void) level;
  fprintf (stderr, "%s\n", message);
}

static void
print_human (const struct rawtrack_check_result *r)
{
  if (!(r->corruptions || r->leaks || r->check_errors))
    printf ("No errors were found on the image.\n");
  else {
    if (r->corruptions)
      printf ("\n%" PRIu64 " errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may "
              "corrupt it.\n", r->corruptions);
    if (r->leaks)
      printf ("\n%" PRIu64 " leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.\n",
              r->leaks);
    if (r->check_errors)
      printf ("\n%" PRIu64 " internal errors have occurred during the "
              "check.\n", r->check_errors);
  }
  if (r->total_clusters && r->allocated_clusters)
    printf ("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
            "%0.2f%% compressed clusters\n", r->allocated_clusters,
            r->total_clusters,
            r->allocated_clusters * 100.0 / r->total_clusters,
            r->fragmented_clusters * 100.0 / r->allocated_clusters,
            r->compressed_clusters * 100.0 / r->allocated_clusters);
  if (r->image_end_offset)
    printf ("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* A counter qemu-img prints only when it is not zero. */
static void
opt_uint (struct json *j, const char *key, uint64_t v)
{
  if (v)
    json_uint (j, key, v);
}

/* Keys in the order qemu-img's QDict yields them. */
static void
print_json (const struct rawtrack_check_result *r, const char *filename)
{
  struct json *j = json_new (stdout, true);

  if (!j)
    return;
  json_object_begin (j, NULL);
  opt_uint (j, "image-end-offset", r->image_end_offset);
  opt_uint (j, "compressed-clusters", r->compressed_clusters);
  opt_uint (j, "total-clusters", r->total_clusters);
  opt_uint (j, "corruptions", r->corruptions);
  opt_uint (j, "corruptions-fixed", r->corruptions_fixed);
  json_uint (j, "check-errors", r->check_errors);
  opt_uint (j, "leaks", r->leaks);
  opt_uint (j, "leaks-fixed", r->leaks_fixed);
  opt_uint (j, "allocated-clusters", r->allocated_clusters);
  json_string (j, "filename", filename);
  json_string (j, "format", "qcow2");
  opt_uint (j, "fragmented-clusters", r->fragmented_clusters);
  json_object_end (j);
  json_end (j);
}

static int
parse_mode (const char *s, unsigned *repair)
{
  if (strcmp (s, "leaks") == 0)
    *repair = RAWTRACK_CHECK_REPAIR_LEAKS;
  else if (strcmp (s, "all") == 0)
    *repair = RAWTRACK_CHECK_REPAIR_ALL;
  else
    return -1;
  return 0;
}

int
cmd_check (int argc, char **argv)
{
  static const struct option opts[] = {
    { "repair", optional_argument, NULL, 'R' },
    { "json", no_argument, NULL, 'j' },
    { "output", required_argument, NULL, 'o' },
    { "data-file", required_argument, NULL, 'd' },
    { "allow-device", no_argument, NULL, 'A' },
    REMOTE_LONG_OPTS,
    { "format", required_argument, NULL, 'f' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_check_result res;
  struct rawtrack_image *img;
  const char *data_file = NULL, *filename;
  unsigned repair = 0, allow = 0;
  bool json = false, quiet = false;
  char why[512];
  int c, st;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "r:f:qh", opts, NULL)) != -1) {
    int rr = remote_option (c, optarg, &allow);

    if (rr == -1)
      return 1;
    if (rr == 1)
      continue;
    switch (c) {
    case 'r':
      if (parse_mode (optarg, &repair) == -1)
        return usage_error ("check", "-r must be 'leaks' or 'all', not '%s'",
                            optarg);
      break;
    case 'R':
      if (!optarg)
        repair = RAWTRACK_CHECK_REPAIR_ALL;
      else if (parse_mode (optarg, &repair) == -1)
        return usage_error ("check", "--repair must be 'leaks' or 'all', "
                            "not '%s'", optarg);
      break;
    case 'j': json = true; break;
    case 'o':
      if (strcmp (optarg, "json") == 0) json = true;
      else if (strcmp (optarg, "human") == 0) json = false;
      else return usage_error ("check", "--output must be 'json' or 'human'");
      break;
    case 'd': data_file = optarg; break;
    case 'A': allow |= RAWTRACK_OPEN_ALLOW_DEVICE; break;
    case 'f':
      if (strcmp (optarg, "qcow2") != 0)
        return usage_error ("check", "only the qcow2 format is supported, "
                            "not '%s'", optarg);
      break;
    case 'q': quiet = true; break;
    case 'h': help (); return 0;
    default:
      return usage_error ("check", "invalid option or missing argument: '%s'",
                          argv[optind - 1]);
    }
  }
  if (argc - optind != 1)
    return usage_error ("check", "expected exactly one IMAGE");
  filename = argv[optind];

  img = rawtrack_image_open (filename, RAWTRACK_OPEN_CHECK | allow |
                             (repair ? RAWTRACK_OPEN_RDWR : 0), data_file);
  if (!img)
    return fail_lib ("%s", filename);

  memset (&res, 0, sizeof res);
  res.struct_size = sizeof res;
  if (rawtrack_image_check (img, repair, &res, report, NULL) == -1) {
    st = fail_lib ("%s: check failed", filename);
    rawtrack_image_close (img);
    return st;
  }
  if (!quiet && !json && data_file_change_text (img, why, sizeof why))
    printf ("Note: %s\n\n", why);
  if (rawtrack_image_close (img) == -1)
    res.check_errors++;

  if (!quiet) {
    if ((res.corruptions_fixed || res.leaks_fixed) && !json)
      printf ("The following inconsistencies were found and repaired:\n\n"
              "    %" PRIu64 " leaked clusters\n"
              "    %" PRIu64 " corruptions\n\n"
              "Double checking the fixed image now...\n",
              res.leaks_fixed, res.corruptions_fixed);
    if (json)
      print_json (&res, filename);
    else
      print_human (&res);
  }
  if (fflush (stdout) == EOF || ferror (stdout))
    return fail ("writing to standard output failed");

  if (res.check_errors)
    return fail ("%s: check failed: %" PRIu64 " internal errors", filename,
                 res.check_errors);
  if (res.corruptions)
    return 2;
  if (res.leaks)
    return 3;
  return 0;
}
