/* rawtrack - `rawtrack backup ...`: incremental backup and restore.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: the backup subcommands' option parsing, help and `list`; the work
 * is in backup-*.c (see backup.h for which file owns what).
 *
 * Exit codes: 0 success; 1 usage or bad input (nothing done); 2 the source
 * could not be read; 3 the repository could not be written or read;
 * 4 verify found damage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <inttypes.h>
#include <errno.h>

#include "backup.h"
#include "bitmap-map.h"

static void
help_main (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup create SOURCE REPO [--full] [--json] [--connections N]\n"
"                               [--compress] [--bitmap NAME]\n"
"                               [--control PATH | --offline]\n"
"       %s backup restore REPO[:BACKUP] TARGET [--force] [--json]\n"
"       %s backup verify REPO [--source SOURCE] [--json]\n"
"       %s backup list REPO [--json] [--map [--width N] [--ascii] [--svg FILE]]\n"
"       %s backup prune REPO --keep N [--json]\n"
"       %s backup SUBCOMMAND --help\n"
"\n"
"Back up a disk by copying only what changed, restore it exactly, and\n"
"never lose a change to a crash or a failed run.\n"
"\n"
"Each backup in REPO is a standard qcow2 v3 file whose backing file is the\n"
"previous backup (by relative name), so qemu-img, qemu-nbd and QEMU read\n"
"any backup directly, plus a JSON manifest with checksums.\n"
"\n"
"Subcommands:\n"
"  create   back up SOURCE (an image or an NBD URI) into REPO\n"
"  restore  write the disk as it was at a backup into TARGET\n"
"  verify   check every backup's checksums and chain links\n"
"  list     the backups in REPO\n"
"  prune    fold the oldest backups into a full one, keeping N\n"
"\n"
"Exit status: 0 success, 1 bad usage or input, 2 the source failed,\n"
"3 the repository failed, 4 verify found damage.\n",
           progname, progname, progname, progname, progname, progname);
}

static void
help_create (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup create SOURCE REPO [--full] [--json] [--connections N]\n"
"                               [--compress] [--bitmap NAME]\n"
"                               [--control PATH | --offline]\n"
"\n"
"Back up SOURCE into the directory REPO (created if missing) and print the\n"
"new backup's name.  The first backup is full, each later one incremental:\n"
"a qcow2 file holding only the clusters that changed (zero clusters as zero\n"
"flags), whose backing file is the previous backup.\n"
"\n"
"SOURCE is an image rawtrack opens (a metadata container of a raw disk, or\n"
"a qcow2 image) or an NBD URI (nbd://HOST[:PORT]/EXPORT,\n"
"nbd+unix:///EXPORT?socket=PATH).\n"
"\n"
"Image sources: rawtrack owns the checkpoints, persistent bitmaps named\n"
"rawtrack-backup-<repository id>-<seq>.  A run creates the next checkpoint\n"
"and freezes the previous one in one crash-atomic step, copies what the\n"
"frozen one marks, and only once the backup is durable removes it.  A run\n"
"that fails or is killed at any point loses nothing: the next run copies\n"
"everything changed since the last backup that completed.\n"
"\n"
"Live backups: when a `rawtrack serve --control PATH` holds the image (it\n"
"records itself in $XDG_RUNTIME_DIR/rawtrack/, or /tmp/rawtrack-UID/; or\n"
"give its socket with --control PATH), the backup is taken through it\n"
"while the guest keeps writing: the server takes the checkpoint and, at\n"
"the same instant, a point-in-time view of the disk (it saves the old\n"
"data of what the guest overwrites meanwhile), and the backup reads that\n"
"view over NBD - the disk exactly as it was at the checkpoint.  The\n"
"repository, checkpoints and recovery are the same as offline: offline and\n"
"live backups of one disk continue one chain.  A failed live backup gives\n"
"its changes back to the next one; a run killed while its view exists is\n"
"cleaned up by the next run.  Without a server the image is opened\n"
"directly, and must not be open for writing elsewhere.\n"
"\n"
"NBD sources: the checkpoints are the caller's.  --bitmap NAME reads\n"
"qemu:dirty-bitmap:NAME (rawtrack serve, qemu-nbd -B NAME, a libvirt\n"
"pull-mode backup) and backs up what it marks over the latest backup;\n"
"without it the backup is full.\n"
"\n"
"If the disk grew, everything past the old end is copied; a shrunk disk\n"
"gives a smaller backup (QEMU reads it over a larger backing file).  A\n"
"disk cut and grown back between two backups reads zeros that no bitmap\n"
"marks: where the source reports zeros (holes) and the chain holds data,\n"
"the zeros are backed up too.  An NBD source whose size changed gets a\n"
"full backup (where it was cut cannot be seen); after a cut and regrowth\n"
"to the same size on a server that reports no holes, use --full.\n"
"\n"
"Options:\n"
"  --full             a full backup even when an incremental is possible\n"
"  --bitmap NAME      NBD: the dirty bitmap that marks what changed since\n"
"                     the latest backup in REPO\n"
"  --connections N    NBD: connections to open (multi-conn), two requests\n"
"                     in flight on each (default 4; 1 if the server does\n"
"                     not allow multi-conn)\n"
"  --compress         store clusters compressed with zstd (qcow2\n"
"                     compression type 1) when that saves space\n"
"  --control PATH     back up live through the server whose control\n"
"                     socket is PATH (default: the server the registry\n"
"                     names for the image, if any)\n"
"  --offline          never go through a server (the image must then be\n"
"                     free)\n"
"  --json             print a summary as JSON (id, type, mode: live,\n"
"                     offline or nbd, bytes read, written, zero and\n"
"                     skipped, seconds; live: the control socket, the\n"
"                     export and cbw-bytes, the old data the server saved\n"
"                     for the backup)\n"
"  --allow-remote     an image SOURCE may follow the NBD URI it names as\n"
"                     its data file\n"
"  --tls-certificates DIR, --tls-psk FILE\n"
"                     TLS credentials for an nbds:// SOURCE and for an\n"
"                     image SOURCE's nbds:// data file\n"
"  -h, --help         show this help\n"
"\n"
"A progress bar (bytes, rate, time left) is shown when standard error is\n"
"a terminal.  Exit status: 0 success, 1 bad usage or input, 2 the source\n"
"failed, 3 the repository failed.\n",
           progname);
}

static void
help_restore (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup restore REPO[:BACKUP] TARGET [--force] [--json]\n"
"\n"
"Write the disk as it was at BACKUP (the latest by default; a unique\n"
"prefix such as its sequence number is enough) into TARGET.  Each cluster\n"
"is read once, from the newest backup of the chain that holds it, and\n"
"written once; holes and zero clusters stay sparse in a new file.\n"
"\n"
"TARGET:\n"
"  a new file           a raw disk image\n"
"  a new NAME.qcow2     a new container: the raw disk NAME.raw and NAME.qcow2\n"
"                       around it (as rawtrack attach)\n"
"  an existing raw file or block device (--force): overwritten\n"
"  the backed-up disk's container (--force): rolled back - only what may\n"
"                       differ is rewritten (the extents its checkpoint\n"
"                       bitmaps mark as changed since the latest backup,\n"
"                       plus what the backups after BACKUP changed),\n"
"                       through tracked writes\n"
"\n"
"Options:\n"
"  --force      overwrite an existing TARGET\n"
"  --json       print a summary as JSON\n"
"  -h, --help   show this help\n"
"\n"
"A progress bar (bytes, rate, time left) is shown when standard error is\n"
"a terminal.  Exit status: 0 success, 1 bad usage or input (an existing\n"
"TARGET without --force, no such backup), 3 reading the repository (a\n"
"backup file of the chain missing or unreadable) or writing TARGET failed.\n",
           progname);
}

static void
help_verify (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup verify REPO [--source SOURCE [--bitmap NAME]] [--json]\n"
"\n"
"Check every backup in REPO: its manifest, its chain link (the backing\n"
"file and format are the parent's file and qcow2, sizes agree), the\n"
"qcow2 structure (as rawtrack check), that the file holds exactly the\n"
"clusters the manifest lists, and every extent's checksum and the\n"
"backup's checksum, re-reading all data.\n"
"\n"
"With --source SOURCE (the backed-up image), also re-read a random sample\n"
"of the clusters that the live checkpoint bitmaps call unchanged since the\n"
"latest backup (up to 4096 clusters; all of them on a small disk) and\n"
"compare them with the chain: a difference is a write that bypassed\n"
"tracking.  SOURCE may be an NBD URI (rawtrack serve, qemu-nbd -B, a\n"
"libvirt pull-mode export): then the unchanged clusters are those clean in\n"
"qemu:dirty-bitmap:NAME, NAME being --bitmap or else the bitmap the latest\n"
"backup was read with; the bitmap must mark every change since that\n"
"backup.\n"
"\n"
"Options:\n"
"  --source SOURCE   compare with the disk as described above\n"
"  --bitmap NAME     NBD SOURCE: its dirty bitmap (default: the latest\n"
"                    backup's checkpoint)\n"
"  --json            print the findings as JSON (per backup, the source's,\n"
"                    ok, checked-bytes, seconds)\n"
"  -h, --help        show this help\n"
"\n"
"A progress bar (bytes, rate, time left) is shown when standard error is\n"
"a terminal.  Exit status: 0 all good, 4 damage or a difference found,\n"
"1 when the check could not run (bad usage, an unusable SOURCE).\n",
           progname);
}

static void
help_list (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup list REPO [--json] [--map [--width N] [--ascii] [--svg FILE]]\n"
"\n"
"The backups in REPO, oldest first: id, type, parent, time, disk size,\n"
"bytes of data, bytes of the file.\n"
"\n"
"With --map, a picture of where each backup holds data instead, drawn as\n"
"`rawtrack bitmap map` draws a bitmap: the disk cut into N cells of\n"
"whole 64 KiB clusters, one strip a backup (oldest first), each cell\n"
"shaded by the share of it the backup stores data for (ranges a backup\n"
"records as zeros are not shaded).  A restore of backup B reads each\n"
"cell from the newest backup of B's chain that holds it.\n"
"\n"
"Options:\n"
"  --json         print a JSON array of objects (with --map: the cells'\n"
"                 held bytes per backup)\n"
"  --map          draw where each backup holds data\n"
"  -w, --width N  --map: at most N cells, 1 to %d (default: the\n"
"                 terminal's width, or $COLUMNS, or 80; --svg: %d)\n"
"  --ascii        --map: ASCII shades (also when the locale is not UTF-8)\n"
"  --svg FILE     --map: write the picture as SVG to FILE ('-': standard\n"
"                 output), one grid of %d cells a row per backup\n"
"  -h, --help     show this help\n",
           progname, MAP_MAX_CELLS, MAP_SVG_DEFAULT_CELLS, MAP_SVG_COLUMNS);
}

static void
help_prune (FILE *fp)
{
  fprintf (fp,
"Usage: %s backup prune REPO --keep N [--json]\n"
"\n"
"Keep at most N backups in the newest chain: the oldest ones are folded\n"
"into one full backup (the newest of them, rewritten as a full one), so\n"
"the data every kept backup shows is unchanged.  Crash-atomic: an\n"
"interrupted prune is finished by the next create or prune, and the\n"
"repository is readable at every instant.\n"
"\n"
"Options:\n"
"  --keep N     backups to keep (at least 1)\n"
"  --json       print a summary as JSON (full, removed, kept, data-bytes,\n"
"               zero-bytes, written-bytes, seconds)\n"
"  -h, --help   show this help\n"
"\n"
"A progress bar (bytes, rate, time left) is shown when standard error is\n"
"a terminal.  Exit status: 0 success (also when there is nothing to\n"
"prune), 1 bad usage or input, 3 the repository failed.\n",
           progname);
}

enum { OPT_FULL = 256, OPT_JSON, OPT_CONN, OPT_COMPRESS, OPT_BITMAP,
       OPT_FORCE, OPT_SOURCE, OPT_KEEP, OPT_CONTROL, OPT_OFFLINE, OPT_MAP,
       OPT_ASCII, OPT_SVG };

static const struct option long_opts[] = {
  { "full", no_argument, NULL, OPT_FULL },
  { "json", no_argument, NULL, OPT_JSON },
  { "connections", required_argument, NULL, OPT_CONN },
  { "compress", no_argument, NULL, OPT_COMPRESS },
  { "bitmap", required_argument, NULL, OPT_BITMAP },
  { "force", no_argument, NULL, OPT_FORCE },
  { "source", required_argument, NULL, OPT_SOURCE },
  { "keep", required_argument, NULL, OPT_KEEP },
  { "control", required_argument, NULL, OPT_CONTROL },
  { "offline", no_argument, NULL, OPT_OFFLINE },
  { "map", no_argument, NULL, OPT_MAP },
  { "width", required_argument, NULL, 'w' },
  { "ascii", no_argument, NULL, OPT_ASCII },
  { "svg", required_argument, NULL, OPT_SVG },
  REMOTE_LONG_OPTS,
  { "help", no_argument, NULL, 'h' },
  { NULL, 0, NULL, 0 },
};

/* map_layers' walk over one backup: its data extents. */
static int
walk_backup (void *opaque, map_add_fn add, void *acc)
{
  const struct bk_manifest *m = opaque;
  size_t i;

  for (i = 0; i < m->n_ext; i++)
    if (add (acc, m->ext[i].off, m->ext[i].len, 1) == -1)
      return -1;
  return 0;
}

/* `backup list --map`: one layer a backup, over the largest disk size. */
static int
list_map (struct bk_repo *r, const char *dir, struct map_options *mo)
{
  struct map_layer *l = calloc (r->n ? r->n : 1, sizeof *l);
  char **names = calloc (r->n ? r->n : 1, sizeof *names);
  char what[600];
  uint64_t size = 0;
  size_t i;
  int st = BK_EXIT_OK;

  if (!l || !names) {
    free (l);
    free (names);
    fail ("out of memory");
    return BK_EXIT_ERROR;
  }
  for (i = 0; i < r->n; i++)
    if (r->b[i]->vsize > size)
      size = r->b[i]->vsize;
  for (i = 0; i < r->n && st == BK_EXIT_OK; i++) {
    const struct bk_manifest *m = r->b[i];
    size_t k;

    /* Extents past a smaller disk's end cannot be; clip anyway. */
    for (k = 0; k < m->n_ext; k++)
      if (m->ext[k].off >= size || m->ext[k].len > size - m->ext[k].off) {
        fail ("%s: backup %s lists data past the end of the disk", dir,
              m->id);
        st = BK_EXIT_REPO;
      }
    if (asprintf (&names[i], "%s (%s)", m->id,
                  m->parent ? "incremental" : "full") == -1) {
      names[i] = NULL;
      fail ("out of memory");
      st = BK_EXIT_ERROR;
      break;
    }
    l[i].name = names[i];
    l[i].walk = walk_backup;
    l[i].opaque = r->b[i];
  }
  snprintf (what, sizeof what, "backups in %s", dir);
  if (st == BK_EXIT_OK && map_layers (what, size, BK_CLUSTER, l, r->n, mo))
    st = BK_EXIT_ERROR;
  for (i = 0; i < r->n; i++)
    free (names[i]);
  free (names);
  free (l);
  return st;
}

static int
list (const char *dir, bool json, struct map_options *mo)
{
  struct bk_repo *r = bk_repo_open (dir, false, false);
  size_t i;

  if (!r)
    return BK_EXIT_ERROR;
  if (mo) {
    int st;

    mo->json = json;
    st = list_map (r, dir, mo);
    bk_repo_close (r);
    return st;
  }
  if (json) {
    struct json *j = json_new (stdout, true);

    json_array_begin (j, NULL);
    for (i = 0; i < r->n; i++) {
      struct bk_manifest *m = r->b[i];

      json_object_begin (j, NULL);
      json_string (j, "id", m->id);
      json_string (j, "file", m->file);
      json_string (j, "type", m->parent ? "incremental" : "full");
      if (m->parent)
        json_string (j, "parent", m->parent);
      else
        json_null (j, "parent");
      json_string (j, "time", m->time);
      json_uint (j, "virtual-size", m->vsize);
      json_uint (j, "data-bytes", m->data_bytes);
      json_uint (j, "zero-bytes", m->zero_bytes);
      json_uint (j, "file-bytes", m->file_bytes);
      json_string (j, "source", m->source);
      if (m->checkpoint)
        json_string (j, "checkpoint", m->checkpoint);
      else
        json_null (j, "checkpoint");
      json_string (j, "compression", m->compression ? m->compression : "none");
      json_object_end (j);
    }
    json_array_end (j);
    json_end (j);
  }
  else {
    printf ("%-24s %-11s %-24s %-20s %10s %10s %10s\n", "ID", "TYPE",
            "PARENT", "TIME", "SIZE", "DATA", "FILE");
    for (i = 0; i < r->n; i++) {
      struct bk_manifest *m = r->b[i];
      char a[32], b[32], c[32];

      human_size (m->vsize, a, sizeof a);
      human_size (m->data_bytes, b, sizeof b);
      human_size (m->file_bytes, c, sizeof c);
      printf ("%-24s %-11s %-24s %-20s %10s %10s %10s\n", m->id,
              m->parent ? "incremental" : "full", m->parent ? m->parent : "-",
              m->time, a, b, c);
    }
  }
  bk_repo_close (r);
  return BK_EXIT_OK;
}

int
cmd_backup (int argc, char **argv)
{
  struct bk_create_opts co = { .connections = 4 };
  const char *sub, *source = NULL;
  void (*help) (FILE *) = help_main;
  struct map_options mo = { 0 };
  bool force = false, json = false, have_keep = false, map = false;
  uint64_t keep = 0;
  int c, nargs;

  if (argc < 2 || strcmp (argv[1], "--help") == 0 ||
      strcmp (argv[1], "-h") == 0) {
    help_main (argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  sub = argv[1];
  if (strcmp (sub, "create") == 0) help = help_create, nargs = 2;
  else if (strcmp (sub, "restore") == 0) help = help_restore, nargs = 2;
  else if (strcmp (sub, "verify") == 0) help = help_verify, nargs = 1;
  else if (strcmp (sub, "list") == 0) help = help_list, nargs = 1;
  else if (strcmp (sub, "prune") == 0) help = help_prune, nargs = 1;
  else
    return usage_error ("backup", "unknown backup subcommand '%s'", sub);

  argc--;
  argv++;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "hw:", long_opts, NULL)) != -1) {
    const char *err;
    unsigned remote_flags = 0;
    int rr = remote_option (c, optarg, &remote_flags);

    if (rr == -1)
      return 1;
    if (rr == 1)
      continue;

    switch (c) {
    case 'h':
      help (stdout);
      return 0;
    case OPT_FULL: co.full = true; break;
    case OPT_JSON: co.json = json = true; break;
    case OPT_COMPRESS: co.compress = true; break;
    case OPT_BITMAP: co.bitmap = optarg; break;
    case OPT_FORCE: force = true; break;
    case OPT_SOURCE: source = optarg; break;
    case OPT_CONTROL: co.control = optarg; break;
    case OPT_OFFLINE: co.offline = true; break;
    case OPT_CONN: {
      char *e;
      long v = strtol (optarg, &e, 10);

      if (*e || v < 1 || v > 64)
        return usage_error ("backup", "--connections must be 1 to 64, not "
                            "'%s'", optarg);
      co.connections = (int) v;
      break;
    }
    case OPT_MAP: map = true; break;
    case OPT_ASCII: mo.ascii = true; break;
    case OPT_SVG: mo.svg = optarg; break;
    case 'w': {
      char *e;

      errno = 0;
      mo.cells = strtoull (optarg, &e, 10);
      if (errno || e == optarg || *e || optarg[0] == '-' || mo.cells == 0 ||
          mo.cells > MAP_MAX_CELLS)
        return usage_error ("backup", "--width '%s': expected a number of "
                            "cells, 1 to %d", optarg, MAP_MAX_CELLS);
      break;
    }
    case OPT_KEEP:
      if (parse_size (optarg, &keep, &err) == -1 || keep < 1 ||
          strspn (optarg, "0123456789") != strlen (optarg))
        return usage_error ("backup", "--keep must be a number of backups, "
                            "at least 1, not '%s'", optarg);
      have_keep = true;
      break;
    default:
      return usage_error ("backup", "unknown or incomplete option '%s'",
                          argv[optind - 1]);
    }
  }
  /* Options that do not belong to the subcommand. */
  if ((strcmp (sub, "create") != 0 &&
       (co.full || co.compress || co.connections != 4 ||
        co.control || co.offline)) ||
      (strcmp (sub, "create") != 0 && co.bitmap &&
       (strcmp (sub, "verify") != 0 || !source)) ||
      (strcmp (sub, "restore") != 0 && force) ||
      (strcmp (sub, "verify") != 0 && source) ||
      (strcmp (sub, "prune") != 0 && have_keep) ||
      (strcmp (sub, "list") != 0 && (map || mo.cells || mo.ascii || mo.svg)))
    return usage_error ("backup", "an option given does not apply to "
                        "'backup %s'", sub);
  if (co.control && co.offline)
    return usage_error ("backup", "--control and --offline exclude each "
                        "other");
  if (!map && (mo.cells || mo.ascii || mo.svg))
    return usage_error ("backup", "--width, --ascii and --svg draw the "
                        "picture of --map: give --map too");
  if (map && json && mo.svg && strcmp (mo.svg, "-") == 0)
    return usage_error ("backup", "--json and --svg - would both write to "
                        "standard output");
  if (argc - optind != nargs)
    return usage_error ("backup", "'backup %s' takes %d argument%s, %d "
                        "given", sub, nargs, nargs > 1 ? "s" : "",
                        argc - optind);
  if (strcmp (sub, "create") == 0)
    return bk_create (argv[optind], argv[optind + 1], &co);
  if (strcmp (sub, "restore") == 0)
    return bk_restore (argv[optind], argv[optind + 1], force, json);
  if (strcmp (sub, "list") == 0)
    return list (argv[optind], json, map ? &mo : NULL);
  if (strcmp (sub, "verify") == 0)
    return bk_verify (argv[optind], source, co.bitmap, json);
  if (!have_keep)
    return usage_error ("backup", "prune needs --keep N");
  return bk_prune (argv[optind], keep, json);
}
