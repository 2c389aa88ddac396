/* rawtrack - `rawtrack create`: a new empty image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
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
  printf ("Usage: %s create IMAGE SIZE [--cluster-size N] [--compat 0.10|1.1]\n"
          "                 [--refcount-bits N] [--data-file PATH [--data-file-raw]]\n"
          "                 [--force]\n"
          "\n"
          "Create a new, empty qcow2 image of SIZE bytes (suffixes k, M, G, T;\n"
          "rounded up to a multiple of 512).\n"
          "\n"
          "  --cluster-size N   512 bytes to 2 MiB, a power of two (default 64k)\n"
          "  --compat V         0.10 (qcow2 v2) or 1.1 (v3, default)\n"
          "  --refcount-bits N  1, 2, 4, 8, 16 (default), 32 or 64\n"
          "  --data-file PATH   keep guest data in a new external data file PATH\n"
          "                     (created, sized to SIZE; a relative PATH is taken\n"
          "                     relative to IMAGE's directory and stored as given)\n"
          "  --data-file-raw    the data file is itself a valid raw image (every\n"
          "                     cluster mapped one to one)\n"
          "  --force            replace IMAGE (and the data file) if they exist\n"
          "  -h, --help         this help\n"
          "\n"
          "Nothing is left behind on failure.  Exit status: 0 success, 1 error.\n",
          progname);
}

int
cmd_create (int argc, char **argv)
{
  static const struct option opts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "compat", required_argument, NULL, 'C' },
    { "refcount-bits", required_argument, NULL, 'r' },
    { "data-file", required_argument, NULL, 'd' },
    { "data-file-raw", no_argument, NULL, 'R' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_create_opts o = { .struct_size = sizeof o };
  const char *err;
  uint64_t v;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hf", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      if (parse_size (optarg, &v, &err) == -1)
        return usage_error ("create", "--cluster-size '%s': %s", optarg, err);
      if (v == 0 || v > UINT32_MAX)
        return usage_error ("create", "--cluster-size '%s' is out of range "
                            "(512 to 2M, a power of two)", optarg);
      o.cluster_size = (uint32_t) v;
      break;
    case 'C':
      if (strcmp (optarg, "0.10") == 0 || strcmp (optarg, "v2") == 0)
        o.compat = 2;
      else if (strcmp (optarg, "1.1") == 0 || strcmp (optarg, "v3") == 0)
        o.compat = 3;
      else
        return usage_error ("create", "--compat must be 0.10 or 1.1");
      break;
    case 'r':
      if (parse_size (optarg, &v, &err) == -1 || v == 0 || v > 64)
        return usage_error ("create", "--refcount-bits '%s' is not one of 1, "
                            "2, 4, 8, 16, 32, 64", optarg);
      o.refcount_bits = (int) v;
      break;
    case 'd': o.data_file = optarg; break;
    case 'R': o.data_file_raw = 1; break;
    case 'f': o.force = 1; break;
    case 'h': help (); return 0;
    default: return usage_error ("create", "invalid option or missing argument: '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind != 2)
    return usage_error ("create", "expected IMAGE and SIZE");
  if (parse_size (argv[optind + 1], &o.size, &err) == -1)
    return usage_error ("create", "SIZE '%s': %s", argv[optind + 1], err);
  if (o.data_file_raw && !o.data_file)
    return usage_error ("create", "--data-file-raw needs --data-file");

  if (rawtrack_image_create (argv[optind], &o) == -1)
    return fail_lib ("cannot create %s", argv[optind]);
  return 0;
}
