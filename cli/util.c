/* rawtrack - size parsing and printing for the command-line tool.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: parse_size (command-line sizes, close to QEMU's qemu_strtosz),
 * parse_track_mode (the --track MODE of `io` and `serve`) and
 * human_size (QEMU's size_to_str, as printed by qemu-img info),
 * escape_text (names from an image, made safe for a terminal), and the
 * sentence and JSON object explaining a data file changed behind
 * rawtrack's back (data_file_change_text/json).
 * Locking: none; the functions are pure and reentrant.
 *
 * Accepted sizes:
 *   [ws] digits [. digits] [K|M|G|T|P|E [iB|B]]   (1024-based, any case)
 *   [ws] digits [. digits] b|B                    (bytes)
 *   [ws] 0x hexdigits                             (bytes, no suffix)
 * A fraction is allowed with any suffix as long as the result is a whole
 * number of bytes ("1.5G", "0.5k"; "1.5" and "0.1k" are refused).  QEMU
 * rounds such values instead; we refuse them so that a size on the command
 * line is always exactly the size used.  QEMU's suffixes are letters only,
 * "KiB" and "KB" are our additions.
 */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <time.h>
#include <inttypes.h>

#include "cli.h"

/* Longest significant fraction that can still give whole bytes: any
 * fraction f with f * 2^60 integral is k / 2^60, which has at most 60
 * digits after the point. */
#define MAX_FRACTION_DIGITS 60

/* log2 of the multiplier for a suffix letter, or -1. */
static int
suffix_shift (char c)
{
  switch (c) {
  case 'b': case 'B': return 0;
  case 'k': case 'K': return 10;
  case 'm': case 'M': return 20;
  case 'g': case 'G': return 30;
  case 't': case 'T': return 40;
  case 'p': case 'P': return 50;
  case 'e': case 'E': return 60;
  default: return -1;
  }
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int
parse_hex (const char *p, uint64_t *out, const char **err)
{
  uint64_t v = 0;
  const char *start = p;
  int d;

  while ((d = hexval (*p)) >= 0) {
    if (v > UINT64_MAX >> 4) {
      *err = "too large";
      return -1;
    }
    v = v << 4 | (uint64_t) d;
    p++;
  }
  if (p == start) {
    *err = "not a number";
    return -1;
  }
  if (*p == '.' || suffix_shift (*p) >= 0) {
    *err = "a hexadecimal size cannot have a fraction or suffix";
    return -1;
  }
  if (*p != '\0') {
    *err = "not a number";
    return -1;
  }
  *out = v;
  return 0;
}

/* Multiply the decimal fraction 0.d[0]d[1]...d[n-1] by 2^shift exactly.
 * Returns the integer part of the product and sets *whole when nothing is
 * left after the point.  d is used as scratch. */
static uint64_t
scale_fraction (unsigned char *d, size_t n, int shift, bool *whole)
{
  uint64_t intpart = 0;
  size_t i;
  int s;

  for (s = 0; s < shift; s++) {
    unsigned carry = 0;

    for (i = n; i-- > 0;) {
      unsigned v = d[i] * 2u + carry;

      d[i] = v % 10;
      carry = v / 10;
    }
    intpart = intpart * 2 + carry;
  }
  *whole = true;
  for (i = 0; i < n; i++)
    if (d[i] != 0)
      *whole = false;
  return intpart;
}

int
parse_size (const char *s, uint64_t *out, const char **err)
{
  unsigned char frac[MAX_FRACTION_DIGITS];
  size_t nfrac = 0, ndigits = 0;
  const char *p = s;
  uint64_t v = 0, fpart, total;
  bool whole = true, frac_too_long = false;
  int shift;

  while (isspace ((unsigned char) *p))
    p++;
  if (*p == '\0') {
    *err = "empty size";
    return -1;
  }
  if (*p == '-') {
    *err = "negative size";
    return -1;
  }
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
    return parse_hex (p + 2, out, err);

  /* Integer part. */
  for (; isdigit ((unsigned char) *p); p++, ndigits++) {
    unsigned d = (unsigned) (*p - '0');

    if (v > (UINT64_MAX - d) / 10) {
      *err = "too large";
      return -1;
    }
    v = v * 10 + d;
  }

  /* Fraction: keep the digits, trailing zeros excluded. */
  if (*p == '.') {
    size_t zeros = 0;

    for (p++; isdigit ((unsigned char) *p); p++, ndigits++) {
      if (*p == '0') {
        zeros++;
        continue;
      }
      /* A nonzero digit: the zeros before it are significant. */
      for (; zeros > 0; zeros--) {
        if (nfrac < MAX_FRACTION_DIGITS)
          frac[nfrac++] = 0;
        else
          frac_too_long = true;
      }
      if (nfrac < MAX_FRACTION_DIGITS)
        frac[nfrac++] = (unsigned char) (*p - '0');
      else
        frac_too_long = true;
    }
  }
  if (ndigits == 0) {
    *err = "not a number";
    return -1;
  }

  /* Suffix. */
  shift = 0;
  if (*p != '\0') {
    shift = suffix_shift (*p);
    if (shift < 0) {
      *err = "unknown suffix";
      return -1;
    }
    p++;
    if (shift > 0) {
      if (strcmp (p, "iB") == 0)
        p += 2;
      else if (strcmp (p, "B") == 0)
        p++;
    }
    if (*p != '\0') {
      *err = "unknown suffix";
      return -1;
    }
  }

  if (frac_too_long) {
    *err = "not a whole number of bytes";
    return -1;
  }
  fpart = scale_fraction (frac, nfrac, shift, &whole);
  if (!whole) {
    *err = "not a whole number of bytes";
    return -1;
  }

  if (shift > 0 && v > UINT64_MAX >> shift) {
    *err = "too large";
    return -1;
  }
  total = v << shift;
  if (total > UINT64_MAX - fpart) {
    *err = "too large";
    return -1;
  }
  *out = total + fpart;
  return 0;
}

int
parse_track_mode (const char *s, unsigned *flags)
{
  unsigned mode;

  if (strcmp (s, "safe") == 0)
    mode = 0;
  else if (strcmp (s, "process") == 0)
    mode = RAWTRACK_OPEN_TRACK_PROCESS;
  else if (strcmp (s, "lazy") == 0)
    mode = RAWTRACK_OPEN_TRACK_LAZY;
  else
    return -1;
  *flags = (*flags & ~(unsigned) (RAWTRACK_OPEN_TRACK_PROCESS |
                                  RAWTRACK_OPEN_TRACK_LAZY)) | mode;
  return 0;
}

/* As QEMU's size_to_str: below 1000 bytes print bytes, otherwise use the
 * largest binary unit in which the value is at least 1000/1024, so that
 * "%.3g" does not need an exponent.  One difference: QEMU prints values
 * from 999.5 up to 1000 of a unit as "1e+03"; we move those to the next
 * unit ("0.976 MiB"). */
void
human_size (uint64_t bytes, char *buf, size_t len)
{
  static const char *const units[] = {
    "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"
  };
  char tmp[32];
  unsigned i = 0;

  /* Unit i is used from 1000 * 1024^(i-1) bytes. */
  while (i < 6 && bytes >= UINT64_C (1000) << (10 * i))
    i++;

  for (;;) {
    double v = (double) bytes / (double) (UINT64_C (1) << (10 * i));

    snprintf (tmp, sizeof tmp, "%.3g %sB", v, units[i]);
    if (i == 6 || strchr (tmp, 'e') == NULL)
      break;
    i++;
  }
  snprintf (buf, len, "%s", tmp);
}

/* Length of the valid UTF-8 sequence of a printable non-ASCII character
 * at s, or 0 (invalid, overlong, surrogate, or a C1 control). */
static size_t
utf8_printable (const unsigned char *s)
{
  uint32_t c;
  size_t n, i;

  if (s[0] >= 0xc2 && s[0] <= 0xdf) { n = 2; c = s[0] & 0x1f; }
  else if (s[0] >= 0xe0 && s[0] <= 0xef) { n = 3; c = s[0] & 0x0f; }
  else if (s[0] >= 0xf0 && s[0] <= 0xf4) { n = 4; c = s[0] & 0x07; }
  else
    return 0;
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = c << 6 | (s[i] & 0x3f);
  }
  if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) ||
      (c >= 0xd800 && c <= 0xdfff) || c < 0xa0)
    return 0;
  return n;
}

char *
escape_text (const char *str)
{
  const unsigned char *s = (const unsigned char *) str;
  char *out, *o;
  size_t n;

  /* At most 4 output bytes per input byte ("\ooo"). */
  if (!(out = o = malloc (4 * strlen (str) + 1)))
    return NULL;
  while (*s) {
    if (*s == '\\') {
      *o++ = '\\'; *o++ = '\\'; s++;
    }
    else if (*s >= 0x20 && *s < 0x7f)
      *o++ = (char) *s++;
    else if (*s == '\n' || *s == '\t' || *s == '\r') {
      *o++ = '\\';
      *o++ = *s == '\n' ? 'n' : *s == '\t' ? 't' : 'r';
      s++;
    }
    else if ((n = utf8_printable (s)) > 0) {
      memcpy (o, s, n);
      o += n;
      s += n;
    }
    else {
      o += sprintf (o, "\\%03o", (unsigned) *s);
      s++;
    }
  }
  *o = '\0';
  return out;
}

void
put_text (const char *str)
{
  char *e = escape_text (str);

  fputs (e ? e : "?", stdout);
  free (e);
}

/* ---- writes that bypassed rawtrack ------------------------------------ */

static void
reason_text (unsigned r, char *buf, size_t len)
{
  snprintf (buf, len, "%s%s%s%s%s",
            (r & RAWTRACK_CHANGE_REPLACED) ? "another file" : "",
            (r & RAWTRACK_CHANGE_REPLACED) && (r & ~1u) ? ", " : "",
            (r & RAWTRACK_CHANGE_SIZE) ? "size" : "",
            (r & RAWTRACK_CHANGE_SIZE) && (r & RAWTRACK_CHANGE_CTIME)
            ? ", " : "",
            (r & RAWTRACK_CHANGE_CTIME) ? "change time" : "");
}

static void
utc_text (int64_t t, char *buf, size_t len)
{
  time_t tt = (time_t) t;
  struct tm tm;

  if (gmtime_r (&tt, &tm))
    strftime (buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
  else
    snprintf (buf, len, "%" PRId64, t);
}

int
data_file_change_text (struct rawtrack_image *img, char *buf, size_t len)
{
  struct rawtrack_data_file_change c = { .struct_size = sizeof c };
  char why[64], when[64];

  if (rawtrack_image_data_file_changed (img, &c) == -1)
    return 0;
  if (c.marked) {
    reason_text (c.reason, why, sizeof why);
    utc_text (c.since, when, sizeof when);
    snprintf (buf, len, "the data file was changed while rawtrack was not "
              "tracking it (%s), found %s: every bitmap was marked in use "
              "(inconsistent); remove and re-add them - the next backup "
              "must be a full one", why, when);
    return 1;
  }
  if (c.pending) {
    reason_text (c.pending_reason, why, sizeof why);
    utc_text (c.recorded_at, when, sizeof when);
    snprintf (buf, len, "the data file changed since rawtrack recorded it "
              "at %s (%s): the next read-write open marks every bitmap in "
              "use (inconsistent)", when, why);
    return 1;
  }
  return 0;
}

void
data_file_change_json (struct json *j, struct rawtrack_image *img)
{
  struct rawtrack_data_file_change c = { .struct_size = sizeof c };
  unsigned r;

  if (rawtrack_image_data_file_changed (img, &c) == -1 ||
      (!c.marked && !c.pending))
    return;
  r = c.marked ? c.reason : c.pending_reason;
  json_object_begin (j, "rawtrack-data-file-changed");
  json_bool (j, "bitmaps-marked-in-use", c.marked != 0);
  if (c.marked)
    json_int (j, "since", c.since);
  else
    json_int (j, "recorded-at", c.recorded_at);
  json_array_begin (j, "reason");
  if (r & RAWTRACK_CHANGE_REPLACED)
    json_string (j, NULL, "replaced");
  if (r & RAWTRACK_CHANGE_SIZE)
    json_string (j, NULL, "size");
  if (r & RAWTRACK_CHANGE_CTIME)
    json_string (j, NULL, "change-time");
  json_array_end (j);
  json_object_end (j);
}
