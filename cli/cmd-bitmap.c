/* rawtrack - `rawtrack bitmap ...`: manage and read persistent dirty bitmaps.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the bitmap subcommands (add, remove, clear, enable, disable, merge,
 * list, dump, map), their option parsing, help and output formats (map's
 * drawing is bitmap-map.c's).  Every
 * change goes through the library's crash-atomic operations
 * (lib/bitmap-ops.c); this file only opens, calls and prints.
 *
 * The data file is never opened (bitmaps live in the qcow2 file).  Images
 * are opened read-write only by the subcommands that change bitmaps.
 *
 * Output formats:
 *   list        a table (or --json: an array of objects); counting the
 *               dirty bytes reads each bitmap's bits, inconsistent
 *               (in-use) bitmaps are listed without counts
 *   dump        dirty extents, "START LENGTH" one per line (--all: every
 *               extent, "START LENGTH dirty|clean"); --json: an array of
 *               {"start", "length", "dirty"} covering the range, shaped
 *               like `qemu-img map --output=json`
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <errno.h>

#include "cli.h"
#include "bitmap-map.h"

static void
help_main (FILE *fp)
{
  fprintf (fp,
"Usage: %s bitmap add IMAGE NAME [--granularity BYTES] [--disabled]\n"
"       %s bitmap remove IMAGE NAME\n"
"       %s bitmap clear IMAGE NAME\n"
"       %s bitmap enable IMAGE NAME\n"
"       %s bitmap disable IMAGE NAME\n"
"       %s bitmap merge IMAGE SOURCE TARGET [--source-image OTHER]\n"
"       %s bitmap list IMAGE [--json]\n"
"       %s bitmap dump IMAGE NAME [--json] [--all] [--offset O] [--length L]\n"
"       %s bitmap map IMAGE NAME [--width N] [--ascii] [--json] [--svg FILE]\n"
"       %s bitmap SUBCOMMAND --help\n"
"\n"
"Manage the persistent dirty bitmaps of a qcow2 (version 3) image, the\n"
"bitmaps QEMU reads and writes (qemu-img bitmap, block-dirty-bitmap-*).\n"
"A bitmap has one bit per GRANULARITY bytes of the virtual disk; a set\n"
"(dirty) bit means the granule may have changed since the bitmap was\n"
"added or last cleared.\n"
"\n"
"Subcommands:\n"
"  add      create an empty bitmap, enabled (auto) unless --disabled\n"
"  remove   delete a bitmap and free its clusters\n"
"  clear    mark every bit clean\n"
"  enable   set the auto flag: writers record guest writes in it\n"
"  disable  clear the auto flag: the bitmap is frozen\n"
"  merge    TARGET |= SOURCE (SOURCE may come from another image)\n"
"  list     names, granularities, flags and dirty byte counts\n"
"  dump     the dirty extents of a bitmap\n"
"  map      draw where the disk is dirty (terminal strip, SVG, JSON)\n"
"\n"
"Every change is crash-atomic: it is written to new clusters and switched\n"
"in by one header update, so a crash leaves the old or the new bitmaps\n"
"(and at worst leaked clusters, which 'qemu-img check -r leaks' frees).\n"
"rawtrack does not set the in-use flag while it changes bitmaps.  A bitmap\n"
"marked in-use on disk (its writer crashed) is inconsistent: it can only\n"
"be removed.\n"
"\n"
"The external data file, if any, is never opened.\n"
"\n"
"Exit status: 0 on success, 1 on any error (the message says why).\n",
           progname, progname, progname, progname, progname, progname,
           progname, progname, progname, progname);
}

static void
help_sub (const char *sub)
{
  if (strcmp (sub, "add") == 0)
    printf ("Usage: %s bitmap add IMAGE NAME [--granularity BYTES] "
            "[--disabled]\n"
            "\n"
            "Add an empty persistent bitmap called NAME to IMAGE.  It is\n"
            "enabled (auto: writers record guest writes in it) unless\n"
            "--disabled is given.  No bitmap data is written: the new bitmap\n"
            "table holds only all-clean entries.\n"
            "\n"
            "  -g, --granularity BYTES  bytes per bit: a power of two from 512\n"
            "                           to 2G (suffixes k, M, G).  Default: the\n"
            "                           cluster size clamped to [4k, 64k], as\n"
            "                           QEMU does\n"
            "  --disabled, --disable    create it disabled\n"
            "  -h, --help               this help\n"
            "\n"
            "Fails if NAME exists (\"Bitmap already exists\"), is empty or\n"
            "longer than 1023 bytes, if the image already has 65535 bitmaps,\n"
            "if the bitmap would need more than 512 MiB (use a larger\n"
            "granularity), or if the image is qcow2 version 2.\n", progname);
  else if (strcmp (sub, "remove") == 0)
    printf ("Usage: %s bitmap remove IMAGE NAME\n"
            "\n"
            "Remove the bitmap NAME and free its clusters.  This is the only\n"
            "operation allowed on an inconsistent (in-use) bitmap.\n"
            "\n"
            "  -h, --help   this help\n", progname);
  else if (strcmp (sub, "clear") == 0)
    printf ("Usage: %s bitmap clear IMAGE NAME\n"
            "\n"
            "Mark every bit of NAME clean (as after a full backup).  The old\n"
            "data clusters are freed; no data is read.\n"
            "\n"
            "  -h, --help   this help\n", progname);
  else if (strcmp (sub, "enable") == 0 || strcmp (sub, "disable") == 0)
    printf ("Usage: %s bitmap enable IMAGE NAME\n"
            "       %s bitmap disable IMAGE NAME\n"
            "\n"
            "Set (enable) or clear (disable) the auto flag of NAME.  Writers\n"
            "such as QEMU record guest writes only in enabled bitmaps; a\n"
            "disabled bitmap keeps its bits unchanged.  Doing it twice is not\n"
            "an error.  Only the bitmap directory is rewritten.\n"
            "\n"
            "  -h, --help   this help\n", progname, progname);
  else if (strcmp (sub, "merge") == 0)
    printf ("Usage: %s bitmap merge IMAGE SOURCE TARGET [--source-image OTHER]\n"
            "\n"
            "Merge the bitmap SOURCE into the bitmap TARGET of IMAGE: every\n"
            "granule dirty in SOURCE becomes dirty in TARGET (TARGET |= SOURCE).\n"
            "The granularities may differ: a dirty SOURCE granule dirties every\n"
            "TARGET granule it touches.  TARGET may be disabled.  Neither may be\n"
            "inconsistent.\n"
            "\n"
            "  -b, --source-image OTHER  read SOURCE from the image OTHER (opened\n"
            "                            read-only), whose virtual size must equal\n"
            "                            IMAGE's (\"Bitmaps are of different\n"
            "                            sizes\" otherwise)\n"
            "  -h, --help                this help\n", progname);
  else if (strcmp (sub, "list") == 0)
    printf ("Usage: %s bitmap list IMAGE [--json]\n"
            "\n"
            "List the bitmaps of IMAGE in directory order: name, granularity,\n"
            "flags (in-use, auto), dirty bytes (dirty granules times the\n"
            "granularity, as QEMU counts) and the percentage of the virtual\n"
            "disk they cover.  Counting reads each bitmap's bits; inconsistent\n"
            "(in-use) bitmaps are listed without counts.\n"
            "\n"
            "  --json, --output=json  an array of objects with the keys name,\n"
            "                         granularity, flags, and (consistent\n"
            "                         bitmaps only) dirty-bytes, dirty-percent\n"
            "  -h, --help             this help\n", progname);
  else if (strcmp (sub, "dump") == 0)
    printf ("Usage: %s bitmap dump IMAGE NAME [--json] [--all] [--offset O] "
            "[--length L]\n"
            "\n"
            "Print the extents of the bitmap NAME over [O, O+L) (default: the\n"
            "whole disk, clipped to its virtual size).  Adjacent granules of\n"
            "the same state are merged; a dirty granule that crosses the ends\n"
            "of the range is cut at them.\n"
            "\n"
            "Text output: one dirty extent per line, \"START LENGTH\" in bytes.\n"
            "With --all, every extent: \"START LENGTH dirty\" or \"... clean\".\n"
            "\n"
            "JSON output: an array of {\"start\": N, \"length\": N, \"dirty\": BOOL}\n"
            "alternating clean and dirty and covering the range exactly, one\n"
            "object per line, like qemu-img map --output=json; it lists the\n"
            "same extents as nbdinfo --map=qemu:dirty-bitmap:NAME on a\n"
            "qemu-nbd -B NAME export of the image.\n"
            "\n"
            "  --json, --output=json   JSON output\n"
            "  -a, --all               text output: clean extents too\n"
            "  -o, --offset O          start of the range (suffixes k, M, G, T)\n"
            "  -l, --length L          length of the range\n"
            "  -h, --help              this help\n", progname);
  else if (strcmp (sub, "map") == 0)
    printf ("Usage: %s bitmap map IMAGE NAME [--width N] [--ascii] [--json]\n"
            "                          [--svg FILE]\n"
            "\n"
            "Draw where the bitmap NAME says the disk is dirty.  The disk is\n"
            "cut into N slices (cells) of equal size, a whole number of\n"
            "granules each (the last one may be shorter), and each cell is\n"
            "shaded by the share of its bytes that are dirty:\n"
            "\n"
            "  ' ' clean, '\u2591' up to 1/3, '\u2592' up to 2/3, '\u2593' more,"
            " '\u2588' all\n"
            "  (ASCII: ' ', '.', 'o', 'O', '#')\n"
            "\n"
            "Any dirty byte shows: one 64 KiB write in a 200 GiB cell is a\n"
            "light shade, not a blank.  The strip is wrapped at the terminal\n"
            "width, each row labelled with the offset it starts at; a line\n"
            "above gives the disk size, the cell size and the dirty bytes.\n"
            "The cost is that of 'bitmap dump': one walk over the dirty\n"
            "extents, however large the disk.\n"
            "\n"
            "  -w, --width N           at most N cells, 1 to 1000000 (default:\n"
            "                          the terminal's width, or $COLUMNS, or\n"
            "                          80, less the labels; %d with --svg).\n"
            "                          Cells are whole granules, so there may\n"
            "                          be fewer\n"
            "  --ascii                 ASCII shades (also when the locale is\n"
            "                          not UTF-8)\n"
            "  --json, --output=json   print, instead of the strip, an object\n"
            "                          with image, bitmap, virtual-size,\n"
            "                          granularity, slice-size, dirty-bytes,\n"
            "                          dirty-extents and slices: an array of\n"
            "                          {start, length, dirty-bytes,\n"
            "                          dirty-fraction}, one per cell\n"
            "  --svg FILE              write an SVG picture to FILE ('-':\n"
            "                          standard output) instead of the strip:\n"
            "                          a grid of %d cells a row, shaded from\n"
            "                          pale (a little dirty) to dark red (all\n"
            "                          dirty), offsets on both axes, a title,\n"
            "                          a legend and a tooltip per cell\n"
            "  -h, --help              this help\n"
            "\n"
            "Exit status: 0 on success, 1 on any error.\n", progname,
            MAP_SVG_DEFAULT_CELLS, MAP_SVG_COLUMNS);
  else
    help_main (stdout);
}

/* Do paths a and b name the same file? */
static bool
same_file (const char *a, const char *b)
{
  struct stat sa, sb;

  if (strcmp (a, b) == 0)
    return true;
  return stat (a, &sa) == 0 && stat (b, &sb) == 0 &&
         sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int
finish_stdout (void)
{
  if (fflush (stdout) == EOF || ferror (stdout))
    return fail ("error writing to standard output");
  return 0;
}

/* ---- list ------------------------------------------------------------- */

static void
flags_text (uint32_t fl, char *buf, size_t len)
{
  snprintf (buf, len, "%s%s%s", (fl & RAWTRACK_BITMAP_IN_USE) ? "in-use" : "",
            (fl & RAWTRACK_BITMAP_IN_USE) && (fl & RAWTRACK_BITMAP_AUTO) ? ","
            : "", (fl & RAWTRACK_BITMAP_AUTO) ? "auto" : "");
  if (!*buf)
    snprintf (buf, len, "-");
}

static double
percent (uint64_t dirty, uint64_t size)
{
  if (size == 0)
    return 0;
  if (dirty > size)
    dirty = size;
  return 100.0 * (double) dirty / (double) size;
}

static int
do_list (struct rawtrack_image *img, bool json)
{
  int i, n = rawtrack_image_bitmap_count (img), r = 0;
  uint64_t size = rawtrack_image_virtual_size (img);
  struct json *j = NULL;

  if (json) {
    j = json_new (stdout, true);
    json_array_begin (j, NULL);
  }
  else if (n > 0)
    printf ("%-24s %12s  %-12s %16s %8s\n", "NAME", "GRANULARITY", "FLAGS",
            "DIRTY-BYTES", "PERCENT");
  for (i = 0; i < n; i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    uint32_t fl = rawtrack_image_bitmap_flags (img, i);
    uint64_t g = rawtrack_image_bitmap_granularity (img, i), dirty = 0;
    bool counted = false;

    if (!(fl & RAWTRACK_BITMAP_IN_USE)) {
      if (rawtrack_bitmap_dirty_bytes (img, name, &dirty) == -1)
        r = fail_lib ("bitmap '%s'", name);
      else
        counted = true;
    }
    if (json) {
      json_object_begin (j, NULL);
      json_string (j, "name", name);
      json_uint (j, "granularity", g);
      json_array_begin (j, "flags");
      if (fl & RAWTRACK_BITMAP_IN_USE)
        json_string (j, NULL, "in-use");
      if (fl & RAWTRACK_BITMAP_AUTO)
        json_string (j, NULL, "auto");
      json_array_end (j);
      if (counted) {
        json_uint (j, "dirty-bytes", dirty);
        json_double (j, "dirty-percent", percent (dirty, size));
      }
      json_object_end (j);
    }
    else {
      char fb[32], *shown = escape_text (name);

      if (!shown)
        return fail ("out of memory");
      flags_text (fl, fb, sizeof fb);
      if (counted)
        printf ("%-24s %12" PRIu64 "  %-12s %16" PRIu64 " %7.2f%%\n", shown,
                g, fb, dirty, percent (dirty, size));
      else
        printf ("%-24s %12" PRIu64 "  %-12s %16s %8s\n", shown, g, fb,
                (fl & RAWTRACK_BITMAP_IN_USE) ? "inconsistent" : "-", "-");
      free (shown);
    }
  }
  if (json) {
    json_array_end (j);
    json_end (j);
  }
  else {
    char why[512];

    if (data_file_change_text (img, why, sizeof why))
      printf ("note: %s\n", why);
  }
  return r;
}

/* ---- dump ------------------------------------------------------------- */

struct dump {
  bool json, all;
  uint64_t n;                      /* extents printed */
};

static int
dump_extent (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct dump *d = opaque;

  if (d->json)
    printf ("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
            ", \"dirty\": %s}", d->n ? ",\n" : "[", start, length,
            dirty ? "true" : "false");
  else if (d->all)
    printf ("%" PRIu64 " %" PRIu64 " %s\n", start, length,
            dirty ? "dirty" : "clean");
  else if (dirty)
    printf ("%" PRIu64 " %" PRIu64 "\n", start, length);
  else
    return 0;
  d->n++;
  return ferror (stdout) ? -1 : 0;
}

/* ---- the command ------------------------------------------------------ */

enum sub { ADD, REMOVE, CLEAR, ENABLE, DISABLE, MERGE, LIST, DUMP, MAP };

static const struct {
  const char *name;
  enum sub sub;
  int nargs;                       /* positional arguments after the sub */
} subs[] = {
  { "add", ADD, 2 }, { "remove", REMOVE, 2 }, { "clear", CLEAR, 2 },
  { "enable", ENABLE, 2 }, { "disable", DISABLE, 2 }, { "merge", MERGE, 3 },
  { "list", LIST, 1 }, { "dump", DUMP, 2 }, { "map", MAP, 2 },
};

int
cmd_bitmap (int argc, char **argv)
{
  static const struct option opts[] = {
    { "granularity", required_argument, NULL, 'g' },
    { "disabled", no_argument, NULL, 'D' },
    { "disable", no_argument, NULL, 'D' },
    { "source-image", required_argument, NULL, 'b' },
    { "json", no_argument, NULL, 'j' },
    { "output", required_argument, NULL, 'O' },
    { "all", no_argument, NULL, 'a' },
    { "offset", required_argument, NULL, 'o' },
    { "length", required_argument, NULL, 'l' },
    { "width", required_argument, NULL, 'w' },
    { "ascii", no_argument, NULL, 'A' },
    { "svg", required_argument, NULL, 'S' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *subname, *err, *source_image = NULL, *image, *name = NULL;
  struct rawtrack_image *img = NULL, *simg = NULL;
  uint64_t granularity = 0, offset = 0, length = UINT64_MAX;
  bool disabled = false, json = false, all = false;
  bool have_g = false, have_b = false, have_range = false;
  struct map_options mo = { 0 };
  bool have_map = false;
  char ctx[64];
  size_t k;
  enum sub sub;
  int c, r = 0, nargs;

  if (argc < 2)
    return usage_error ("bitmap", "expected a subcommand (add, remove, "
                        "clear, enable, disable, merge, list, dump, map)");
  subname = argv[1];
  if (strcmp (subname, "--help") == 0 || strcmp (subname, "-h") == 0 ||
      strcmp (subname, "help") == 0) {
    help_main (stdout);
    return 0;
  }
  for (k = 0; k < sizeof subs / sizeof subs[0]; k++)
    if (strcmp (subs[k].name, subname) == 0)
      break;
  if (k == sizeof subs / sizeof subs[0])
    return usage_error ("bitmap", "unknown subcommand '%s'", subname);
  sub = subs[k].sub;
  nargs = subs[k].nargs;
  snprintf (ctx, sizeof ctx, "bitmap %s", subname);

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc - 1, argv + 1, "g:b:ao:l:w:h", opts, NULL))
         != -1) {
    switch (c) {
    case 'g':
      if (parse_size (optarg, &granularity, &err) == -1)
        return usage_error (ctx, "--granularity '%s': %s", optarg, err);
      have_g = true;
      break;
    case 'D': disabled = true; break;
    case 'b': source_image = optarg; have_b = true; break;
    case 'j': json = true; break;
    case 'O':
      if (strcmp (optarg, "json") == 0) json = true;
      else if (strcmp (optarg, "human") == 0) json = false;
      else return usage_error (ctx, "--output must be 'json' or 'human'");
      break;
    case 'a': all = true; break;
    case 'o':
      if (parse_size (optarg, &offset, &err) == -1)
        return usage_error (ctx, "--offset '%s': %s", optarg, err);
      have_range = true;
      break;
    case 'l':
      if (parse_size (optarg, &length, &err) == -1)
        return usage_error (ctx, "--length '%s': %s", optarg, err);
      have_range = true;
      break;
    case 'w': {
      char *end;

      errno = 0;
      mo.cells = strtoull (optarg, &end, 10);
      if (errno || end == optarg || *end || optarg[0] == '-' || mo.cells == 0
          || mo.cells > MAP_MAX_CELLS)
        return usage_error (ctx, "--width '%s': expected a number of cells "
                            "from 1 to %d", optarg, MAP_MAX_CELLS);
      have_map = true;
      break;
    }
    case 'A': mo.ascii = true; have_map = true; break;
    case 'S': mo.svg = optarg; have_map = true; break;
    case 'h': help_sub (subname); return 0;
    default:
      return usage_error (ctx, "invalid option or missing argument: '%s'",
                          argv[optind]);
    }
  }
  if ((have_g || disabled) && sub != ADD)
    return usage_error (ctx, "--granularity and --disabled are only valid "
                        "with 'add'");
  if (have_g && granularity == 0)
    return usage_error (ctx, "--granularity must not be 0");
  if (have_b && sub != MERGE)
    return usage_error (ctx, "--source-image is only valid with 'merge'");
  if (json && sub != LIST && sub != DUMP && sub != MAP)
    return usage_error (ctx, "--json is only valid with 'list', 'dump' and "
                        "'map'");
  if (have_map && sub != MAP)
    return usage_error (ctx, "--width, --ascii and --svg are only valid with "
                        "'map'");
  if (json && mo.svg && strcmp (mo.svg, "-") == 0)
    return usage_error (ctx, "--json and --svg - would both write to "
                        "standard output");
  if ((all || have_range) && sub != DUMP)
    return usage_error (ctx, "--all, --offset and --length are only valid "
                        "with 'dump'");
  if (argc - 1 - optind != nargs)
    return usage_error (ctx, "expected %s", nargs == 1 ? "IMAGE"
                        : nargs == 2 ? "IMAGE NAME"
                        : "IMAGE SOURCE TARGET");
  image = argv[1 + optind];
  if (nargs >= 2)
    name = argv[2 + optind];

  img = rawtrack_image_open (image, RAWTRACK_OPEN_NO_DATA_FILE |
                             (sub == LIST || sub == DUMP || sub == MAP
                              ? 0 : RAWTRACK_OPEN_RDWR), NULL);
  if (!img)
    return fail_lib ("%s", image);

  switch (sub) {
  case ADD:
    if (rawtrack_bitmap_add (img, name, granularity,
                             disabled ? RAWTRACK_BITMAP_ADD_DISABLED : 0) == -1)
      r = fail_lib ("%s: cannot add bitmap '%s'", image, name);
    break;
  case REMOVE:
    if (rawtrack_bitmap_remove (img, name) == -1)
      r = fail_lib ("%s: cannot remove bitmap '%s'", image, name);
    break;
  case CLEAR:
    if (rawtrack_bitmap_clear (img, name) == -1)
      r = fail_lib ("%s: cannot clear bitmap '%s'", image, name);
    break;
  case ENABLE:
    if (rawtrack_bitmap_enable (img, name) == -1)
      r = fail_lib ("%s: cannot enable bitmap '%s'", image, name);
    break;
  case DISABLE:
    if (rawtrack_bitmap_disable (img, name) == -1)
      r = fail_lib ("%s: cannot disable bitmap '%s'", image, name);
    break;
  case MERGE: {
    const char *target = argv[3 + optind];

    if (source_image && !same_file (source_image, image)) {
      simg = rawtrack_image_open (source_image, RAWTRACK_OPEN_NO_DATA_FILE,
                                  NULL);
      if (!simg) {
        r = fail_lib ("%s", source_image);
        break;
      }
    }
    if (rawtrack_bitmap_merge (img, name, target, simg) == -1)
      r = fail_lib ("%s: cannot merge bitmap '%s' into '%s'", image, name,
                    target);
    break;
  }
  case LIST:
    r = do_list (img, json);
    if (r == 0)
      r = finish_stdout ();
    break;
  case DUMP: {
    static char obuf[1 << 20];
    struct dump d = { .json = json, .all = all, .n = 0 };

    setvbuf (stdout, obuf, _IOFBF, sizeof obuf);
    if (rawtrack_bitmap_extents (img, name, offset, length, dump_extent,
                                 &d) == -1) {
      fflush (stdout);
      r = fail_lib ("%s: cannot read bitmap '%s'", image, name);
      break;
    }
    if (json)
      printf (d.n ? "]\n" : "[]\n");
    r = finish_stdout ();
    break;
  }
  case MAP: {
    int i = rawtrack_bitmap_find (img, name);

    if (i < 0) {
      r = fail ("%s: no bitmap '%s'", image, name);
      break;
    }
    mo.image = image;
    mo.name = name;
    mo.granularity = rawtrack_image_bitmap_granularity (img, i);
    mo.json = json;
    r = bitmap_map (img, &mo);
    break;
  }
  }

  rawtrack_image_close (simg);
  if (rawtrack_image_close (img) == -1 && r == 0)
    r = fail_lib ("%s: closing the image", image);
  return r;
}
