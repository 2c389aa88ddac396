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

#endif
