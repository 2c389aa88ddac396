/* rawtrack - `rawtrack info`: what an image holds.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The JSON output uses qemu-img info --output=json's field names, shape
 * and order for every field the two share, so scripts can switch between
 * them.  Like qemu-img (since CVE-2024-4467) info never opens the data
 * file: it reads metadata only.
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
  printf ("Usage: %s info IMAGE [--json]\n"
          "\n"
          "Show an image's virtual size, cluster size, format version, external\n"
          "data file, refcount width, dirty and corrupt flags, extended L2 and\n"
          "its persistent bitmaps (name, granularity, flags).  The data file is\n"
          "not opened.\n"
          "\n"
          "  --json, --output=json   machine-readable output (qemu-img info's\n"
          "                          field names and shape)\n"
          "  -h, --help              this help\n"
          "\n"
          "Exit status: 0 on success, 1 if the image cannot be read.\n",
          progname);
}

static void
print_json (struct rawtrack_image *img, const char *filename)
{
  struct json *j = json_new (stdout, true);
  const char *bf = rawtrack_image_backing_file (img);
  const char *bfmt = rawtrack_image_backing_format (img);
  int64_t asize = rawtrack_image_file_size (img);
  int v3 = rawtrack_image_version (img) >= 3;
  int i, n = rawtrack_image_bitmap_count (img);

  json_object_begin (j, NULL);
  if (bfmt)
    json_string (j, "backing-filename-format", bfmt);
  json_uint (j, "virtual-size", rawtrack_image_virtual_size (img));
  json_string (j, "filename", filename);
  json_uint (j, "cluster-size", rawtrack_image_cluster_size (img));
  json_string (j, "format", "qcow2");
  if (asize >= 0)
    json_uint (j, "actual-size", (uint64_t) asize);
  json_object_begin (j, "format-specific");
  json_string (j, "type", "qcow2");
  json_object_begin (j, "data");
  json_string (j, "compat", v3 ? "1.1" : "0.10");
  json_string (j, "compression-type", rawtrack_image_compression_type (img));
  if (v3) {
    json_bool (j, "lazy-refcounts", rawtrack_image_lazy_refcounts (img));
    if (n > 0) {
      json_array_begin (j, "bitmaps");
      for (i = 0; i < n; i++) {
        uint32_t fl = rawtrack_image_bitmap_flags (img, i);

        json_object_begin (j, NULL);
        json_array_begin (j, "flags");
        if (fl & RAWTRACK_BITMAP_IN_USE)
          json_string (j, NULL, "in-use");
        if (fl & RAWTRACK_BITMAP_AUTO)
          json_string (j, NULL, "auto");
        json_array_end (j);
        json_string (j, "name", rawtrack_image_bitmap_name (img, i));
        json_uint (j, "granularity", rawtrack_image_bitmap_granularity (img, i));
        json_object_end (j);
      }
      json_array_end (j);
    }
  }
  json_uint (j, "refcount-bits", (uint64_t) rawtrack_image_refcount_bits (img));
  if (v3) {
    if (rawtrack_image_data_file (img))
      json_string (j, "data-file", rawtrack_image_data_file (img));
    if (rawtrack_image_has_data_file (img))
      json_bool (j, "data-file-raw", rawtrack_image_data_file_raw (img));
    json_bool (j, "corrupt", rawtrack_image_is_corrupt (img));
    json_bool (j, "extended-l2", rawtrack_image_extended_l2 (img));
  }
  json_object_end (j);
  json_object_end (j);
  if (bf) {
    json_string (j, "full-backing-filename", bf);
    json_string (j, "backing-filename", bf);
  }
  json_bool (j, "dirty-flag", rawtrack_image_is_dirty (img));
  data_file_change_json (j, img);
  json_object_end (j);
  json_end (j);
}

static const char *
yesno (int v)
{
  return v ? "true" : "false";
}

static void
print_human (struct rawtrack_image *img, const char *filename)
{
  char buf[64];
  int64_t asize = rawtrack_image_file_size (img);
  int v3 = rawtrack_image_version (img) >= 3;
  int i, n = rawtrack_image_bitmap_count (img);

  printf ("image: ");
  put_text (filename);
  putchar ('\n');
  printf ("file format: qcow2\n");
  human_size (rawtrack_image_virtual_size (img), buf, sizeof buf);
  printf ("virtual size: %s (%" PRIu64 " bytes)\n", buf,
          rawtrack_image_virtual_size (img));
  if (asize >= 0) {
    human_size ((uint64_t) asize, buf, sizeof buf);
    printf ("disk size: %s\n", buf);
  }
  printf ("cluster_size: %" PRIu32 "\n", rawtrack_image_cluster_size (img));
  if (rawtrack_image_backing_file (img)) {
    printf ("backing file: ");
    put_text (rawtrack_image_backing_file (img));
    putchar ('\n');
    if (rawtrack_image_backing_format (img)) {
      printf ("backing file format: ");
      put_text (rawtrack_image_backing_format (img));
      putchar ('\n');
    }
  }
  printf ("Format specific information:\n");
  printf ("    compat: %s\n", v3 ? "1.1" : "0.10");
  printf ("    compression type: %s\n", rawtrack_image_compression_type (img));
  if (v3) {
    printf ("    lazy refcounts: %s\n", yesno (rawtrack_image_lazy_refcounts (img)));
    if (n > 0) {
      printf ("    bitmaps:\n");
      for (i = 0; i < n; i++) {
        uint32_t fl = rawtrack_image_bitmap_flags (img, i);
        int k = 0;

        printf ("        [%d]:\n", i);
        printf ("            flags:\n");
        if (fl & RAWTRACK_BITMAP_IN_USE)
          printf ("                [%d]: in-use\n", k++);
        if (fl & RAWTRACK_BITMAP_AUTO)
          printf ("                [%d]: auto\n", k++);
        printf ("            name: ");
        put_text (rawtrack_image_bitmap_name (img, i));
        putchar ('\n');
        printf ("            granularity: %" PRIu64 "\n",
                rawtrack_image_bitmap_granularity (img, i));
      }
    }
  }
  printf ("    refcount bits: %d\n", rawtrack_image_refcount_bits (img));
  if (v3) {
    if (rawtrack_image_data_file (img)) {
      printf ("    data file: ");
      put_text (rawtrack_image_data_file (img));
      putchar ('\n');
    }
    if (rawtrack_image_has_data_file (img))
      printf ("    data file raw: %s\n", yesno (rawtrack_image_data_file_raw (img)));
    {
      char why[512];

      if (data_file_change_text (img, why, sizeof why))
        printf ("    data file changed: %s\n", why);
    }
    printf ("    corrupt: %s\n", yesno (rawtrack_image_is_corrupt (img)));
    printf ("    extended l2: %s\n", yesno (rawtrack_image_extended_l2 (img)));
  }
}

int
cmd_info (int argc, char **argv)
{
  static const struct option opts[] = {
    { "json", no_argument, NULL, 'j' },
    { "output", required_argument, NULL, 'o' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_image *img;
  bool json = false;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j': json = true; break;
    case 'o':
      if (strcmp (optarg, "json") == 0) json = true;
      else if (strcmp (optarg, "human") == 0) json = false;
      else return usage_error ("info", "--output must be 'json' or 'human'");
      break;
    case 'h': help (); return 0;
    default: return usage_error ("info", "invalid option or missing argument: '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind != 1)
    return usage_error ("info", "expected exactly one IMAGE");

  img = rawtrack_image_open (argv[optind], RAWTRACK_OPEN_NO_DATA_FILE, NULL);
  if (!img)
    return fail_lib ("%s", argv[optind]);
  if (json)
    print_json (img, argv[optind]);
  else
    print_human (img, argv[optind]);
  rawtrack_image_close (img);
  return 0;
}
