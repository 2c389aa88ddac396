/* rawtrack - a small streaming JSON writer for --output=json.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: struct json, which writes one JSON value to a FILE as the calls
 * arrive; nothing is buffered beyond stdio.
 * Locking: none; a writer belongs to one thread.
 *
 * Output matches QEMU's JSON printer (qobject/qjson.c) so that our output
 * can be compared with qemu-img --output=json:
 *   pretty   every member on its own line, indented 4 spaces per level;
 *            the closing bracket on its own line, also for an empty
 *            container ("[\n    ]");
 *   compact  {"a": 1, "b": [1, 2]}  (", " and ": " separators).
 *   strings  ", \, \b \f \n \r \t escaped by name; other control
 *            characters, DEL and every non-ASCII character as \uXXXX
 *            (UTF-16 surrogate pairs above U+FFFF); bytes that are not
 *            valid UTF-8 become \uFFFD.  The output is pure ASCII.
 *
 * Invariants: keys are given inside objects and only there (asserted);
 * containers nest at most MAX_DEPTH deep; json_end is called at depth 0.
 * Write errors are left in the FILE for the caller's ferror/fclose.
 */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <inttypes.h>
#include <string.h>
#include <math.h>
#include <assert.h>

#include "json.h"

#define MAX_DEPTH 32

struct json {
  FILE *fp;
  bool pretty;
  unsigned depth;                 /* open containers */
  char kind[MAX_DEPTH];           /* '{' or '[' for each open container */
  bool empty[MAX_DEPTH];          /* nothing written in it yet */
};

/* Caller frees with json_end.  NULL if out of memory. */
struct json *
json_new (FILE *fp, bool pretty)
{
  struct json *j = calloc (1, sizeof *j);

  if (j == NULL)
    return NULL;
  j->fp = fp;
  j->pretty = pretty;
  return j;
}

void
json_end (struct json *j)
{
  if (j == NULL)
    return;
  assert (j->depth == 0);
  fputc ('\n', j->fp);
  free (j);
}

static void
newline (struct json *j, unsigned level)
{
  unsigned i;

  if (!j->pretty)
    return;
  fputc ('\n', j->fp);
  for (i = 0; i < level; i++)
    fputs ("    ", j->fp);
}

/* Decode one UTF-8 character at s (strict: no overlong forms, no
 * surrogates, nothing above U+10FFFF).  Returns its length, or 0 if the
 * bytes are not valid UTF-8. */
static size_t
utf8_decode (const unsigned char *s, uint32_t *cp)
{
  uint32_t c = s[0], min;
  size_t n, i;

  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  else if (c >= 0xc2 && c <= 0xdf) {
    n = 2; c &= 0x1f; min = 0x80;
  }
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3; c &= 0x0f; min = 0x800;
  }
  else if (c >= 0xf0 && c <= 0xf4) {
    n = 4; c &= 0x07; min = 0x10000;
  }
  else
    return 0;

  /* A NUL terminator is not a continuation byte, so this stops at the
   * end of the string. */
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = c << 6 | (s[i] & 0x3f);
  }
  if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
    return 0;
  *cp = c;
  return n;
}

static void
write_string (struct json *j, const char *str)
{
  const unsigned char *s = (const unsigned char *) str;
  FILE *fp = j->fp;

  fputc ('"', fp);
  while (*s) {
    uint32_t cp;
    size_t n = utf8_decode (s, &cp);

    if (n == 0) {
      cp = 0xfffd;
      n = 1;
    }
    s += n;

    switch (cp) {
    case '"':  fputs ("\\\"", fp); break;
    case '\\': fputs ("\\\\", fp); break;
    case '\b': fputs ("\\b", fp); break;
    case '\f': fputs ("\\f", fp); break;
    case '\n': fputs ("\\n", fp); break;
    case '\r': fputs ("\\r", fp); break;
    case '\t': fputs ("\\t", fp); break;
    default:
      if (cp >= 0x20 && cp < 0x7f)
        fputc ((int) cp, fp);
      else if (cp < 0x10000)
        fprintf (fp, "\\u%04X", (unsigned) cp);
      else {
        cp -= 0x10000;
        fprintf (fp, "\\u%04X\\u%04X", (unsigned) (0xd800 | cp >> 10),
                 (unsigned) (0xdc00 | (cp & 0x3ff)));
      }
    }
  }
  fputc ('"', fp);
}

/* Everything that goes before a value: separator, indentation, key. */
static void
begin_value (struct json *j, const char *key)
{
  if (j->depth == 0) {
    assert (key == NULL);
    return;
  }
  if (j->kind[j->depth - 1] == '{')
    assert (key != NULL);
  else
    assert (key == NULL);

  if (!j->empty[j->depth - 1])
    fputs (j->pretty ? "," : ", ", j->fp);
  j->empty[j->depth - 1] = false;
  newline (j, j->depth);
  if (key) {
    write_string (j, key);
    fputs (": ", j->fp);
  }
}

static void
open_container (struct json *j, const char *key, char kind)
{
  begin_value (j, key);
  assert (j->depth < MAX_DEPTH);
  fputc (kind, j->fp);
  j->kind[j->depth] = kind;
  j->empty[j->depth] = true;
  j->depth++;
}

static void
close_container (struct json *j, char kind)
{
  assert (j->depth > 0 && j->kind[j->depth - 1] == kind);
  j->depth--;
  newline (j, j->depth);
  fputc (kind == '{' ? '}' : ']', j->fp);
}

void
json_object_begin (struct json *j, const char *key)
{
  open_container (j, key, '{');
}

void
json_object_end (struct json *j)
{
  close_container (j, '{');
}

void
json_array_begin (struct json *j, const char *key)
{
  open_container (j, key, '[');
}

void
json_array_end (struct json *j)
{
  close_container (j, '[');
}

/* value NULL is written as null. */
void
json_string (struct json *j, const char *key, const char *value)
{
  begin_value (j, key);
  if (value)
    write_string (j, value);
  else
    fputs ("null", j->fp);
}

void
json_uint (struct json *j, const char *key, uint64_t value)
{
  begin_value (j, key);
  fprintf (j->fp, "%" PRIu64, value);
}

void
json_int (struct json *j, const char *key, int64_t value)
{
  begin_value (j, key);
  fprintf (j->fp, "%" PRId64, value);
}

void
json_bool (struct json *j, const char *key, bool value)
{
  begin_value (j, key);
  fputs (value ? "true" : "false", j->fp);
}

/* The shortest of %.15g, %.16g, %.17g that reads back as the same value.
 * JSON has no NaN or infinity: those are written as null.  Assumes the C
 * locale's decimal point. */
void
json_double (struct json *j, const char *key, double value)
{
  char buf[32];
  int prec;

  begin_value (j, key);
  if (!isfinite (value)) {
    fputs ("null", j->fp);
    return;
  }
  for (prec = 15; prec < 17; prec++) {
    snprintf (buf, sizeof buf, "%.*g", prec, value);
    if (strtod (buf, NULL) == value)
      break;
  }
  if (prec == 17)
    snprintf (buf, sizeof buf, "%.17g", value);
  fputs (buf, j->fp);
}

void
json_null (struct json *j, const char *key)
{
  begin_value (j, key);
  fputs ("null", j->fp);
}
