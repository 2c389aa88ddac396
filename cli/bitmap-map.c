/* rawtrack - `rawtrack bitmap map`: a picture of where a disk is dirty.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: slicing a disk into cells, adding up each cell's dirty bytes from
 * the bitmap's dirty extents, and drawing the cells: a terminal strip
 * (Unicode block shades, or ASCII), an SVG grid, or JSON fractions.
 * cmd-bitmap.c parses the options and opens the image; this file only
 * reads through rawtrack_bitmap_extents and prints.
 *
 * Cost: one pass over the bitmap's dirty extents (the library walks its
 * words a 64-bit word at a time and skips clean runs), plus one step per
 * cell an extent touches.  Nothing here is per bit or per byte of the
 * disk, so a 15 TiB disk costs what `bitmap dump` costs.
 *
 * Slicing: the slice (cell) size is a whole number of granules, at least
 * size / cells, so no granule straddles two cells; the last cell may be
 * shorter (it ends at the disk's end).  A cell's fraction is its dirty
 * bytes over its own length.
 *
 * Shades (terminal): clean ' ', up to 1/3 dirty '░', up to 2/3 '▒', less
 * than all '▓', all dirty '█'; ASCII ' ', '.', 'o', 'O', '#'.  Any dirty
 * byte shows: a 64 KiB write in a 240 GiB cell is a '░', not a blank.
 *
 * Locking: none of its own; the library locks the image while it copies
 * the bits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <errno.h>
#include <locale.h>
#include <langinfo.h>
#include <unistd.h>
#include <sys/ioctl.h>

#include "cli.h"
#include "bitmap-map.h"

/* The terminal strip: label "%10s |" before, "|" after. */
#define STRIP_MARGIN 13

struct slices {
  uint64_t size;                   /* virtual disk size */
  uint64_t slice;                  /* bytes per cell (a multiple of g) */
  uint64_t n;                      /* cells */
  uint64_t *dirty;                 /* dirty bytes per cell */
  uint64_t total;                  /* dirty bytes in all */
  uint64_t extents;                /* dirty extents seen */
};

static uint64_t
cell_len (const struct slices *s, uint64_t i)
{
  uint64_t start = i * s->slice;

  return s->size - start < s->slice ? s->size - start : s->slice;
}

static double
fraction (const struct slices *s, uint64_t i)
{
  uint64_t len = cell_len (s, i);

  return len ? (double) s->dirty[i] / (double) len : 0;
}

/* rawtrack_bitmap_extents callback: add a dirty extent to the cells it
 * touches. */
static int
add_extent (void *opaque, uint64_t start, uint64_t length, int dirty)
{
  struct slices *s = opaque;

  if (!dirty)
    return 0;
  s->extents++;
  s->total += length;
  while (length > 0) {
    uint64_t i = start / s->slice;
    uint64_t end = (i + 1) * s->slice, n;

    if (i >= s->n)
      break;                       /* cannot happen: extents are clipped */
    n = end - start < length ? end - start : length;
    s->dirty[i] += n;
    start += n;
    length -= n;
  }
  return 0;
}

/* Terminal columns: the tty's, else $COLUMNS, else 80. */
static unsigned
terminal_columns (void)
{
  struct winsize ws;
  const char *c = getenv ("COLUMNS");

  if (isatty (STDOUT_FILENO) && ioctl (STDOUT_FILENO, TIOCGWINSZ, &ws) == 0
      && ws.ws_col > 0)
    return ws.ws_col;
  if (c && atoi (c) > 0)
    return (unsigned) atoi (c);
  return 80;
}

static bool
locale_is_utf8 (void)
{
  const char *cs;

  if (!setlocale (LC_CTYPE, ""))
    return false;
  cs = nl_langinfo (CODESET);
  return cs && (strcmp (cs, "UTF-8") == 0 || strcmp (cs, "utf8") == 0);
}

/* 0 clean, 1 up to 1/3, 2 up to 2/3, 3 less than all, 4 all dirty. */
static int
shade (const struct slices *s, uint64_t i)
{
  uint64_t d = s->dirty[i], len = cell_len (s, i);

  if (d == 0)
    return 0;
  if (d >= len)
    return 4;
  if (d * 3 <= len)
    return 1;
  if (d * 3 <= len * 2)
    return 2;
  return 3;
}

static const char *const shades_utf8[5] = {
  " ", "\u2591", "\u2592", "\u2593", "\u2588"
};
static const char *const shades_ascii[5] = { " ", ".", "o", "O", "#" };

/* What a layer's bytes are: a bitmap's are dirty (else clean), a
 * backup's are held (else empty: an older layer or zeros). */
struct words {
  const char *none, *some;
};
static const struct words bitmap_words = { "clean", "dirty" };
static const struct words backup_words = { "empty", "held" };

static void
print_summary (FILE *fp, const struct map_options *o, const struct slices *s)
{
  char sz[32], sl[32], dt[32];

  human_size (s->size, sz, sizeof sz);
  human_size (s->slice, sl, sizeof sl);
  human_size (s->total, dt, sizeof dt);
  fprintf (fp, "%s, bitmap '%s': %s disk, %" PRIu64 " cells of %s, "
           "%s dirty (%" PRIu64 " bytes, %.4g%%)\n", o->image, o->name, sz,
           s->n, sl, dt, s->total,
           s->size ? 100.0 * (double) s->total / (double) s->size : 0.0);
}

static const char *const *
strip_shades (const struct map_options *o)
{
  return o->ascii || !locale_is_utf8 () ? shades_ascii : shades_utf8;
}

/* The cells of one layer, a terminal row at a time, offsets on the left. */
static void
strip_rows (const char *const *sh, const struct slices *s)
{
  unsigned cols = terminal_columns ();
  uint64_t per_row, i;

  per_row = cols > STRIP_MARGIN + 8 ? cols - STRIP_MARGIN : 8;
  for (i = 0; i < s->n; i++) {
    if (i % per_row == 0) {
      char lab[32];

      if (i)
        fputs ("|\n", stdout);
      human_size (i * s->slice, lab, sizeof lab);
      printf ("%10s |", i == 0 ? "0" : lab);
    }
    fputs (sh[shade (s, i)], stdout);
  }
  if (s->n)
    fputs ("|\n", stdout);
  {
    char end[32];

    human_size (s->size, end, sizeof end);
    printf ("%10s end\n", end);
  }
}

static void
strip_legend (const char *const *sh, const struct words *w)
{
  printf ("legend: '%s' %s  '%s' up to 1/3 %s  '%s' up to 2/3  "
          "'%s' more  '%s' all %s\n", sh[0], w->none, sh[1], w->some, sh[2],
          sh[3], sh[4], w->some);
}

static void
draw_strip (const struct map_options *o, const struct slices *s)
{
  const char *const *sh = strip_shades (o);

  print_summary (stdout, o, s);
  strip_rows (sh, s);
  strip_legend (sh, &bitmap_words);
}

/* "slices": each cell's offset, length, and its bytes (KEY-bytes and
 * KEY-fraction, KEY "dirty" or "held"). */
static void
json_slices (struct json *j, const struct slices *s, const char *key)
{
  char kb[32], kf[32];
  uint64_t i;

  snprintf (kb, sizeof kb, "%s-bytes", key);
  snprintf (kf, sizeof kf, "%s-fraction", key);
  json_array_begin (j, "slices");
  for (i = 0; i < s->n; i++) {
    json_object_begin (j, NULL);
    json_uint (j, "start", i * s->slice);
    json_uint (j, "length", cell_len (s, i));
    json_uint (j, kb, s->dirty[i]);
    json_double (j, kf, fraction (s, i));
    json_object_end (j);
  }
  json_array_end (j);
}

static void
draw_json (const struct map_options *o, const struct slices *s)
{
  struct json *j = json_new (stdout, true);

  json_object_begin (j, NULL);
  json_string (j, "image", o->image);
  json_string (j, "bitmap", o->name);
  json_uint (j, "virtual-size", s->size);
  json_uint (j, "granularity", o->granularity);
  json_uint (j, "slice-size", s->slice);
  json_uint (j, "dirty-bytes", s->total);
  json_uint (j, "dirty-extents", s->extents);
  json_slices (j, s, "dirty");
  json_object_end (j);
  json_end (j);
}

/* ---- SVG -------------------------------------------------------------- */

static void
xml_text (FILE *fp, const char *t)
{
  for (; *t; t++) {
    switch (*t) {
    case '<': fputs ("&lt;", fp); break;
    case '>': fputs ("&gt;", fp); break;
    case '&': fputs ("&amp;", fp); break;
    case '"': fputs ("&quot;", fp); break;
    case '\'': fputs ("&apos;", fp); break;
    default:
      /* Control characters are not allowed in XML 1.0. */
      if ((unsigned char) *t < 0x20 && *t != '\t' && *t != '\n')
        fputc ('?', fp);
      else
        fputc (*t, fp);
    }
  }
}

/* Fill of a cell: light grey when clean, else from a pale orange (a
 * single dirty granule) to a dark red (all dirty). */
static void
svg_fill (double f, char *buf, size_t len)
{
  static const int lo[3] = { 0xfd, 0xd4, 0x9e }, hi[3] = { 0x99, 0x00, 0x0d };
  int c[3], k;

  if (f <= 0) {
    snprintf (buf, len, "#ececec");
    return;
  }
  if (f > 1)
    f = 1;
  for (k = 0; k < 3; k++)
    c[k] = (int) (lo[k] + (hi[k] - lo[k]) * f + 0.5);
  snprintf (buf, len, "#%02x%02x%02x", c[0], c[1], c[2]);
}

/* The SVG page: a heading (title, subtitle) and one grid a layer, under
 * each other, each with its name above it when there are several (n > 1)
 * and offset axes; the legend below.  w says what a cell's share is of. */
struct svg_page {
  const char *title, *heading, *subtitle;
  const struct slices *s;          /* n layers over one slicing */
  const char *const *names;
  size_t n;
  const struct words *w;
};

static int
draw_svg_page (const char *path, const struct svg_page *pg)
{
  const int gap = 1, left = 96, right = 24, label = pg->n > 1 ? 22 : 0;
  const int layer_gap = 30;
  const struct slices *s0 = &pg->s[0];
  uint64_t cols = s0->n < MAP_SVG_COLUMNS ? s0->n : MAP_SVG_COLUMNS;
  uint64_t rows = cols ? (s0->n + cols - 1) / cols : 0, i;
  /* 12-pixel cells in a full row of 64; fewer cells get bigger ones. */
  int cell = cols ? (int) (832 / cols) - gap : 12;
  int gw, gh, width, height, top = 78, y0;
  char sl[32], fill[16];
  size_t k;
  FILE *fp;

  if (cell > 48)
    cell = 48;
  if (cell < 12)
    cell = 12;
  gw = (int) cols * (cell + gap);
  gh = (int) rows * (cell + gap);
  width = left + (gw > 620 ? gw : 620) + right;
  height = top + (int) pg->n * (label + gh) + (int) (pg->n - 1) * layer_gap
           + 70;
  fp = strcmp (path, "-") == 0 ? stdout : fopen (path, "w");
  if (!fp)
    return fail ("%s: %s", path, strerror (errno));
  human_size (s0->slice, sl, sizeof sl);

  fprintf (fp,
           "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
           "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
           "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n",
           width, height, width, height);
  fprintf (fp, "<title>");
  xml_text (fp, pg->title);
  fprintf (fp, "</title>\n"
           "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
  fprintf (fp, "<text x=\"%d\" y=\"24\" font-size=\"16\" "
           "font-weight=\"bold\">", left);
  xml_text (fp, pg->heading);
  fprintf (fp, "</text>\n<text x=\"%d\" y=\"44\" font-size=\"12\" "
           "fill=\"#333\">", left);
  xml_text (fp, pg->subtitle);
  fprintf (fp, "</text>\n");

  /* Column axis: offset within a row, every 8 columns. */
  fprintf (fp, "<g font-size=\"10\" fill=\"#555\">\n");
  for (i = 0; i < cols; i += 8) {
    char lab[32];

    human_size (i * s0->slice, lab, sizeof lab);
    fprintf (fp, "<text x=\"%d\" y=\"%d\">+%s</text>\n",
             left + (int) i * (cell + gap), top - 8, i ? lab : "0");
  }
  fprintf (fp, "</g>\n");

  for (k = 0; k < pg->n; k++) {
    const struct slices *s = &pg->s[k];

    y0 = top + (int) k * (label + gh + layer_gap) + label;
    if (label) {
      fprintf (fp, "<text x=\"%d\" y=\"%d\" font-size=\"12\" "
               "font-weight=\"bold\">", left, y0 - 8);
      xml_text (fp, pg->names[k]);
      fprintf (fp, "</text>\n");
    }
    /* Row axis: the byte offset each row starts at. */
    fprintf (fp, "<g font-size=\"10\" fill=\"#555\">\n");
    for (i = 0; i < rows; i++) {
      char lab[32];

      human_size (i * cols * s->slice, lab, sizeof lab);
      fprintf (fp, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
               left - 6, y0 + (int) i * (cell + gap) + cell / 2 + 4,
               i ? lab : "0");
    }
    fprintf (fp, "</g>\n<g>\n");
    for (i = 0; i < s->n; i++) {
      char a[32], b[32];
      double f = fraction (s, i);

      svg_fill (f, fill, sizeof fill);
      human_size (i * s->slice, a, sizeof a);
      human_size (i * s->slice + cell_len (s, i), b, sizeof b);
      fprintf (fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
               "fill=\"%s\"><title>%s - %s: %.4g%% %s</title></rect>\n",
               left + (int) (i % cols) * (cell + gap),
               y0 + (int) (i / cols) * (cell + gap), cell, cell, fill,
               i ? a : "0", b, 100.0 * f, pg->w->some);
    }
    fprintf (fp, "</g>\n");
  }

  /* Legend. */
  {
    static const double steps[] = { 0, 0.0001, 0.25, 0.5, 0.75, 1 };
    static const char *const labels[] = {
      NULL, "any", "25%", "50%", "75%", NULL
    };
    const int lc = 12;             /* legend squares */
    int y = top + (int) pg->n * (label + gh) + (int) (pg->n - 1) * layer_gap
            + 24;
    char all[32];

    snprintf (all, sizeof all, "all %s", pg->w->some);
    fprintf (fp, "<g font-size=\"11\" fill=\"#333\">\n");
    for (k = 0; k < sizeof steps / sizeof steps[0]; k++) {
      int x = left + (int) k * 70;

      svg_fill (steps[k], fill, sizeof fill);
      fprintf (fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
               "fill=\"%s\" stroke=\"#999\" stroke-width=\"0.5\"/>\n"
               "<text x=\"%d\" y=\"%d\">%s</text>\n",
               x, y, lc, lc, fill, x + lc + 4, y + lc - 2,
               k == 0 ? pg->w->none : labels[k] ? labels[k] : all);
    }
    fprintf (fp, "<text x=\"%d\" y=\"%d\" fill=\"#555\">each cell: %s of "
             "the disk, left to right, top to bottom; shade: %s share "
             "of the cell</text>\n</g>\n", left, y + lc + 22, sl,
             pg->w->some);
  }
  fprintf (fp, "</svg>\n");

  if (fp == stdout)
    return fflush (stdout) == EOF || ferror (stdout)
      ? fail ("error writing to standard output") : 0;
  if (ferror (fp) | (fclose (fp) == EOF))
    return fail ("%s: write error: %s", path, strerror (errno));
  return 0;
}

static int
draw_svg (const struct map_options *o, const struct slices *s)
{
  char title[512], heading[512], sub[256], sz[32], sl[32], dt[32];
  const char *names[1] = { o->name };
  struct svg_page pg = { title, heading, sub, s, names, 1, &bitmap_words };

  human_size (s->size, sz, sizeof sz);
  human_size (s->slice, sl, sizeof sl);
  human_size (s->total, dt, sizeof dt);
  snprintf (title, sizeof title, "dirty map of bitmap '%s' in %s", o->name,
            o->image);
  snprintf (heading, sizeof heading, "Bitmap '%s' of %s", o->name, o->image);
  snprintf (sub, sizeof sub, "%s disk, %" PRIu64 " cells of %s, %s dirty "
            "(%.4g%%)", sz, s->n, sl, dt,
            s->size ? 100.0 * (double) s->total / (double) s->size : 0.0);
  return draw_svg_page (o->svg, &pg);
}

/* ---- slicing ---------------------------------------------------------- */

/* Cut a disk of size bytes into o's number of cells (whole granules of
 * g); s->dirty zeroed.  -1 (said) when out of memory. */
static int
slice_disk (struct slices *s, uint64_t size, uint64_t g,
            const struct map_options *o)
{
  uint64_t want, granules;

  memset (s, 0, sizeof *s);
  s->size = size;
  want = o->cells ? o->cells
    : o->svg ? MAP_SVG_DEFAULT_CELLS
    : terminal_columns () > STRIP_MARGIN + 8 ? terminal_columns () - STRIP_MARGIN
    : 8;
  granules = g ? (s->size + g - 1) / g : 0;
  if (want > granules)
    want = granules;               /* a cell is at least one granule */
  if (want > 0) {
    s->slice = (s->size + want - 1) / want;
    s->slice = (s->slice + g - 1) / g * g;
    s->n = (s->size + s->slice - 1) / s->slice;
  }
  else
    s->slice = g;                  /* empty disk: no cells */
  s->dirty = calloc (s->n ? s->n : 1, sizeof *s->dirty);
  if (!s->dirty)
    return fail ("out of memory for %" PRIu64 " cells", s->n);
  return 0;
}

/* ---- the subcommands -------------------------------------------------- */

int
bitmap_map (struct rawtrack_image *img, const struct map_options *o)
{
  struct slices s;
  int r;

  if (slice_disk (&s, rawtrack_image_virtual_size (img), o->granularity, o)
      == -1)
    return 1;
  if (rawtrack_bitmap_extents (img, o->name, 0, s.size, add_extent, &s)
      == -1) {
    free (s.dirty);
    return fail_lib ("%s: cannot read bitmap '%s'", o->image, o->name);
  }

  r = o->svg ? draw_svg (o, &s) : 0;
  if (r == 0 && (o->json || !o->svg)) {
    if (o->json)
      draw_json (o, &s);
    else
      draw_strip (o, &s);
    r = fflush (stdout) == EOF || ferror (stdout)
      ? fail ("error writing to standard output") : 0;
  }
  free (s.dirty);
  return r;
}

/* The layers' pictures over one slicing: strip, JSON or SVG as o says. */
int
map_layers (const char *what, uint64_t size, uint64_t granularity,
            const struct map_layer *l, size_t n, const struct map_options *o)
{
  struct slices *s = calloc (n ? n : 1, sizeof *s);
  const char **names = calloc (n ? n : 1, sizeof *names);
  char sz[32], sl[32];
  size_t k, made = 0;
  int r = 0;

  if (!s || !names) {
    free (s);
    free (names);
    return fail ("out of memory");
  }
  for (k = 0; k < n && r == 0; k++) {
    r = slice_disk (&s[k], size, granularity, o);
    if (r == 0) {
      made++;
      names[k] = l[k].name;
      r = l[k].walk (l[k].opaque, add_extent, &s[k]) == -1;
    }
  }
  human_size (size, sz, sizeof sz);
  human_size (made ? s[0].slice : granularity, sl, sizeof sl);
  if (r == 0 && o->svg && n) {
    char title[512], sub[256];
    struct svg_page pg = { title, title, sub, s, names, n, &backup_words };

    snprintf (title, sizeof title, "%s", what);
    snprintf (sub, sizeof sub, "%zu layer%s over a %s disk, %" PRIu64
              " cells of %s each; shade: the share of a cell the layer "
              "holds", n, n == 1 ? "" : "s", sz, s[0].n, sl);
    r = draw_svg_page (o->svg, &pg) != 0;
  }
  if (r == 0 && o->json) {
    struct json *j = json_new (stdout, true);

    json_object_begin (j, NULL);
    json_string (j, "title", what);
    json_uint (j, "virtual-size", size);
    json_uint (j, "slice-size", made ? s[0].slice : granularity);
    json_array_begin (j, "layers");
    for (k = 0; k < n; k++) {
      json_object_begin (j, NULL);
      json_string (j, "name", l[k].name);
      json_uint (j, "held-bytes", s[k].total);
      json_uint (j, "held-extents", s[k].extents);
      json_slices (j, &s[k], "held");
      json_object_end (j);
    }
    json_array_end (j);
    json_object_end (j);
    json_end (j);
  }
  else if (r == 0 && !o->svg) {
    const char *const *sh = strip_shades (o);

    printf ("%s: %zu layer%s over a %s disk, %" PRIu64 " cells of %s\n",
            what, n, n == 1 ? "" : "s", sz, made ? s[0].n : 0, sl);
    for (k = 0; k < n; k++) {
      char h[32];

      human_size (s[k].total, h, sizeof h);
      printf ("%s: %s held (%" PRIu64 " bytes, %.4g%%)\n", l[k].name, h,
              s[k].total,
              size ? 100.0 * (double) s[k].total / (double) size : 0.0);
      strip_rows (sh, &s[k]);
    }
    strip_legend (sh, &backup_words);
  }
  if (r == 0 && (o->json || !o->svg))
    r = fflush (stdout) == EOF || ferror (stdout)
      ? fail ("error writing to standard output") : 0;
  for (k = 0; k < made; k++)
    free (s[k].dirty);
  free (s);
  free (names);
  return r ? 1 : 0;
}
