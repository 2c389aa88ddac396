/* rawtrack - `rawtrack bitmap map` (cli/bitmap-map.c), called by
 * cmd-bitmap.c once it has parsed the options and opened the image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef RAWTRACK_CLI_BITMAP_MAP_H
#define RAWTRACK_CLI_BITMAP_MAP_H

#include <stdbool.h>
#include <stdint.h>

#include "rawtrack/rawtrack.h"

/* --svg's default cell count and its columns per row; --width's limit. */
#define MAP_SVG_DEFAULT_CELLS 1024
#define MAP_SVG_COLUMNS 64
#define MAP_MAX_CELLS 1000000

struct map_options {
  const char *image;               /* path, for messages and titles */
  const char *name;                /* the bitmap */
  uint64_t granularity;            /* the bitmap's */
  uint64_t cells;                  /* --width; 0: the default */
  bool ascii;                      /* --ascii: no Unicode shades */
  bool json;                       /* --json: fractions on stdout */
  const char *svg;                 /* --svg FILE ('-': stdout), or NULL */
};

/* Draw the map; returns the command's exit status (0 or 1, message
 * printed). */
int bitmap_map (struct rawtrack_image *img, const struct map_options *o);

/* The same pictures for anything that lies in extents on a disk: one
 * layer a row (`backup list --map`: where each backup of a chain holds
 * data).  walk calls add (acc, start, length, 1) for every extent the
 * layer holds, in any order, clipped to the disk; -1 (message printed)
 * stops. */
typedef int (*map_add_fn) (void *acc, uint64_t start, uint64_t length,
                           int held);
struct map_layer {
  const char *name;
  int (*walk) (void *opaque, map_add_fn add, void *acc);
  void *opaque;
};
/* o->cells, o->ascii, o->json and o->svg as for bitmap_map (o->image and
 * o->name unused); what titles the picture.  Returns the exit status. */
int map_layers (const char *what, uint64_t size, uint64_t granularity,
                const struct map_layer *l, size_t n,
                const struct map_options *o);

#endif
