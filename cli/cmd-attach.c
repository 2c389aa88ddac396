/* rawtrack - `rawtrack attach`: wrap an existing raw disk, untouched.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The raw file is opened read-only; the new image is written beside its
 * target and renamed into place, so a failure leaves nothing behind.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <limits.h>
#include <inttypes.h>

#include "cli.h"

static void
help (void)
{
  printf ("Usage: %s attach RAW IMAGE [--cluster-size N] [--relative] [--force]\n"
          "                 [--json] [--tls-certificates DIR | --tls-psk FILE]\n"
          "\n"
          "Create IMAGE, a qcow2 metadata container whose external data file is\n"
          "the existing raw file or block device RAW.  RAW is opened read-only\n"
          "and never written: it stays a valid raw image, and QEMU, qemu-nbd\n"
          "and rawtrack read the same bytes through IMAGE.  Every guest cluster\n"
          "is mapped one to one (\"raw external data\").\n"
          "\n"
          "RAW may be an NBD URI (nbd://HOST/EXPORT, nbds://..., nbd+unix:///\n"
          "EXPORT?socket=PATH, nbds+unix://...): the disk then stays on that\n"
          "server (Ceph RBD, a SAN LUN or object storage behind qemu-nbd or\n"
          "nbdkit), the URI is recorded as given, and the commands that open\n"
          "the data file follow it only with --allow-remote.\n"
          "\n"
          "  --cluster-size N  512 bytes to 2 MiB (default 2M: the smallest\n"
          "                    metadata and the fastest attach and open; see\n"
          "                    the README for the measurements).  Cluster 0\n"
          "                    must hold the header, RAW's path and\n"
          "                    rawtrack's tracking log: with 512-byte\n"
          "                    clusters RAW's absolute path may be about 170\n"
          "                    bytes, with 1 KiB about 680; a longer one is\n"
          "                    refused, saying so, before anything is written\n"
          "  --relative        record RAW relative to IMAGE's directory instead\n"
          "                    of as an absolute path\n"
          "  --force           replace IMAGE if it exists (never RAW)\n"
          "  --json            print what was created as JSON\n"
          "  --tls-certificates DIR, --tls-psk FILE\n"
          "                    TLS credentials when RAW is an nbds:// URI\n"
          "  -h, --help        this help\n"
          "\n"
          "Refused, with nothing written: IMAGE exists (without --force), RAW is\n"
          "missing, RAW's size is not a multiple of 512, RAW and IMAGE are the\n"
          "same file.  Exit status: 0 success, 1 error.\n",
          progname);
}

/* Path of target relative to the directory containing image (both made
 * absolute).  Caller frees. */
static char *
relative_to (const char *target, const char *image)
{
  char *t = realpath (target, NULL), *dir, *slash, *out = NULL;
  char *idir = strdup (image);
  size_t common = 0, i, ups = 0, len;

  if (!t || !idir)
    goto done;
  slash = strrchr (idir, '/');
  if (slash)
    *slash = '\0';
  dir = realpath (slash ? (*idir ? idir : "/") : ".", NULL);
  if (!dir)
    goto done;
  for (i = 0; dir[i] && dir[i] == t[i]; i++)
    if (dir[i] == '/')
      common = i;
  if (dir[i] == '\0' && t[i] == '/')
    common = i;
  else if (strcmp (dir, "/") == 0)
    common = 0;
  for (i = common; dir[i]; i++)
    if (dir[i] == '/' && !(i == 0 && strcmp (dir, "/") == 0))
      ups++;
  if (dir[common] == '\0' && common > 0)
    ups = 0;
  len = ups * 3 + strlen (t + common) + 1;
  out = malloc (len);
  if (out) {
    out[0] = '\0';
    for (i = 0; i < ups; i++)
      strcat (out, "../");
    strcat (out, t + common + 1);
  }
  free (dir);
 done:
  free (t);
  free (idir);
  return out;
}

int
cmd_attach (int argc, char **argv)
{
  static const struct option opts[] = {
    { "cluster-size", required_argument, NULL, 'c' },
    { "relative", no_argument, NULL, 'r' },
    { "force", no_argument, NULL, 'f' },
    { "json", no_argument, NULL, 'j' },
    REMOTE_LONG_OPTS,
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct rawtrack_attach_opts o = { .struct_size = sizeof o };
  struct rawtrack_image *img;
  const char *err, *raw, *image;
  char *rel = NULL;
  bool relative = false, json = false;
  unsigned dummy_flags = 0;  /* attach follows no stored name */
  uint64_t v;
  int c;

  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hf", opts, NULL)) != -1) {
    int rr = remote_option (c, optarg, &dummy_flags);

    if (rr == -1)
      return 1;
    if (rr == 1)
      continue;
    switch (c) {
    case 'c':
      if (parse_size (optarg, &v, &err) == -1)
        return usage_error ("attach", "--cluster-size '%s': %s", optarg, err);
      if (v > UINT32_MAX || v == 0)
        return usage_error ("attach", "--cluster-size '%s' is out of range",
                            optarg);
      o.cluster_size = (uint32_t) v;
      break;
    case 'r': relative = true; break;
    case 'f': o.force = 1; break;
    case 'j': json = true; break;
    case 'h': help (); return 0;
    default: return usage_error ("attach", "invalid option or missing argument: '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind != 2)
    return usage_error ("attach", "expected RAW and IMAGE");
  raw = argv[optind];
  image = argv[optind + 1];
  if (relative) {
    rel = relative_to (raw, image);
    if (!rel)
      return fail ("cannot make '%s' relative to '%s'", raw, image);
    o.stored_name = rel;
  }
  if (rawtrack_attach (raw, image, &o) == -1) {
    free (rel);
    return fail_lib ("cannot attach %s", raw);
  }
  free (rel);

  img = rawtrack_image_open (image, RAWTRACK_OPEN_NO_DATA_FILE, NULL);
  if (!img)
    return fail_lib ("%s was created but cannot be read back", image);
  if (json) {
    struct json *j = json_new (stdout, true);

    json_object_begin (j, NULL);
    json_string (j, "image", image);
    json_string (j, "data-file", rawtrack_image_data_file (img));
    json_uint (j, "virtual-size", rawtrack_image_virtual_size (img));
    json_uint (j, "cluster-size", rawtrack_image_cluster_size (img));
    if (rawtrack_image_file_size (img) >= 0)
      json_uint (j, "actual-size", (uint64_t) rawtrack_image_file_size (img));
    json_object_end (j);
    json_end (j);
  }
  else {
    char vs[64], as[64];

    human_size (rawtrack_image_virtual_size (img), vs, sizeof vs);
    human_size ((uint64_t) rawtrack_image_file_size (img), as, sizeof as);
    printf ("attached %s (%s) as %s: data file '%s', %" PRIu32
            "-byte clusters, %s of metadata\n", raw, vs, image,
            rawtrack_image_data_file (img), rawtrack_image_cluster_size (img),
            as);
  }
  rawtrack_image_close (img);
  return 0;
}
