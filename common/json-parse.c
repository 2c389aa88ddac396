/* rawtrack - a small JSON reader (backup manifests).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Owns: parsing one JSON text into a tree (struct jv) and looking things
 * up in it.  Integers without a fraction or exponent are kept exactly as
 * uint64_t/int64_t (offsets need all 64 bits); other numbers as double.
 * Depth is limited (64) and every error names the byte offset, so that a
 * damaged manifest gives a clear message, never a crash.
 * Locking: none; trees are private to their caller.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <errno.h>

#include "json.h"

#define MAX_DEPTH 64

struct parser {
  const char *s, *p, *end;
  char err[200];
};

static void
perr (struct parser *ps, const char *what)
{
  if (!ps->err[0])
    snprintf (ps->err, sizeof ps->err, "%s at byte %td", what, ps->p - ps->s);
}

static void
ws (struct parser *ps)
{
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' ||
                             *ps->p == '\r' || *ps->p == '\t'))
    ps->p++;
}

static void *
xcalloc (size_t n, size_t m)
{
  void *p = calloc (n ? n : 1, m);

  if (!p) {
    fprintf (stderr, "rawtrack: out of memory\n");
    exit (1);
  }
  return p;
}

static char *
parse_string (struct parser *ps)
{
  size_t cap = 16, n = 0;
  char *out;

  if (ps->p >= ps->end || *ps->p != '"') {
    perr (ps, "expected a string");
    return NULL;
  }
  ps->p++;
  out = xcalloc (cap, 1);
  while (ps->p < ps->end && *ps->p != '"') {
    char c = *ps->p++;

    if ((unsigned char) c < 0x20) {
      perr (ps, "control character in a string");
      free (out);
      return NULL;
    }
    if (c == '\\') {
      if (ps->p >= ps->end)
        break;
      c = *ps->p++;
      switch (c) {
      case 'n': c = '\n'; break;
      case 't': c = '\t'; break;
      case 'r': c = '\r'; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case '"': case '\\': case '/': break;
      case 'u': {
        unsigned v = 0;
        int i;

        for (i = 0; i < 4; i++) {
          char h = ps->p < ps->end ? *ps->p++ : 0;

          v <<= 4;
          if (h >= '0' && h <= '9') v |= (unsigned) (h - '0');
          else if (h >= 'a' && h <= 'f') v |= (unsigned) (h - 'a' + 10);
          else if (h >= 'A' && h <= 'F') v |= (unsigned) (h - 'A' + 10);
          else {
            perr (ps, "bad \\u escape");
            free (out);
            return NULL;
          }
        }
        if (v == 0 || v > 0x7f) {
          perr (ps, "unsupported \\u escape (only ASCII)");
          free (out);
          return NULL;
        }
        c = (char) v;
        break;
      }
      default:
        perr (ps, "bad escape");
        free (out);
        return NULL;
      }
    }
    if (n + 2 > cap) {
      cap *= 2;
      out = realloc (out, cap);
      if (!out) {
        fprintf (stderr, "rawtrack: out of memory\n");
        exit (1);
      }
    }
    out[n++] = c;
  }
  if (ps->p >= ps->end) {
    perr (ps, "unterminated string");
    free (out);
    return NULL;
  }
  ps->p++;
  out[n] = 0;
  return out;
}

static struct jv *parse_value (struct parser *ps, int depth);

static int
push (struct jv *v, struct jv *item, char *key)
{
  if (v->n % 16 == 0) {
    v->items = realloc (v->items, (v->n + 16) * sizeof *v->items);
    if (v->t == JV_OBJ)
      v->keys = realloc (v->keys, (v->n + 16) * sizeof *v->keys);
    if (!v->items || (v->t == JV_OBJ && !v->keys)) {
      fprintf (stderr, "rawtrack: out of memory\n");
      exit (1);
    }
  }
  v->items[v->n] = item;
  if (v->t == JV_OBJ)
    v->keys[v->n] = key;
  v->n++;
  return 0;
}

static struct jv *
parse_value (struct parser *ps, int depth)
{
  struct jv *v;

  ws (ps);
  if (depth > MAX_DEPTH) {
    perr (ps, "nested too deeply");
    return NULL;
  }
  if (ps->p >= ps->end) {
    perr (ps, "unexpected end");
    return NULL;
  }
  v = xcalloc (1, sizeof *v);
  switch (*ps->p) {
  case '{':
  case '[': {
    char close = *ps->p == '{' ? '}' : ']';

    v->t = *ps->p == '{' ? JV_OBJ : JV_ARR;
    ps->p++;
    ws (ps);
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return v;
    }
    for (;;) {
      char *key = NULL;
      struct jv *item;

      ws (ps);
      if (v->t == JV_OBJ) {
        if (!(key = parse_string (ps)))
          goto err;
        ws (ps);
        if (ps->p >= ps->end || *ps->p != ':') {
          free (key);
          perr (ps, "expected ':'");
          goto err;
        }
        ps->p++;
      }
      item = parse_value (ps, depth + 1);
      if (!item) {
        free (key);
        goto err;
      }
      push (v, item, key);
      ws (ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return v;
      }
      perr (ps, "expected ',' or a closing bracket");
      goto err;
    }
  }
  case '"':
    v->t = JV_STR;
    if (!(v->s = parse_string (ps)))
      goto err;
    return v;
  case 't':
  case 'f':
  case 'n': {
    static const char *const words[] = { "true", "false", "null" };
    int i;

    for (i = 0; i < 3; i++) {
      size_t l = strlen (words[i]);

      if ((size_t) (ps->end - ps->p) >= l && memcmp (ps->p, words[i], l) == 0) {
        ps->p += l;
        v->t = i == 2 ? JV_NULL : JV_BOOL;
        v->b = i == 0;
        return v;
      }
    }
    perr (ps, "unknown word");
    goto err;
  }
  default: {
    const char *q = ps->p;
    char buf[64];
    size_t l;
    char *e;

    while (q < ps->end && strchr ("+-0123456789.eE", *q))
      q++;
    l = (size_t) (q - ps->p);
    if (l == 0 || l >= sizeof buf) {
      perr (ps, "expected a value");
      goto err;
    }
    memcpy (buf, ps->p, l);
    buf[l] = 0;
    v->t = JV_NUM;
    errno = 0;
    if (!strpbrk (buf, ".eE")) {
      if (buf[0] == '-') {
        v->i = strtoll (buf, &e, 10);
        v->u = (uint64_t) v->i;
        v->neg = true;
      }
      else
        v->u = strtoull (buf, &e, 10), v->i = (int64_t) v->u;
      v->d = buf[0] == '-' ? (double) v->i : (double) v->u;
      v->integer = true;
    }
    else
      v->d = strtod (buf, &e);
    if (*e || errno) {
      perr (ps, "bad number");
      goto err;
    }
    ps->p = q;
    return v;
  }
  }
 err:
  jv_free (v);
  return NULL;
}

struct jv *
jv_parse (const char *text, size_t len, char *err, size_t errlen)
{
  struct parser ps = { .s = text, .p = text, .end = text + len };
  struct jv *v = parse_value (&ps, 0);

  if (v) {
    ws (&ps);
    if (ps.p != ps.end) {
      perr (&ps, "trailing characters");
      jv_free (v);
      v = NULL;
    }
  }
  if (!v)
    snprintf (err, errlen, "%s", ps.err);
  return v;
}

void
jv_free (struct jv *v)
{
  size_t i;

  if (!v)
    return;
  for (i = 0; i < v->n; i++) {
    jv_free (v->items[i]);
    if (v->keys)
      free (v->keys[i]);
  }
  free (v->items);
  free (v->keys);
  free (v->s);
  free (v);
}

const struct jv *
jv_get (const struct jv *v, const char *key)
{
  size_t i;

  if (!v || v->t != JV_OBJ)
    return NULL;
  for (i = 0; i < v->n; i++)
    if (strcmp (v->keys[i], key) == 0)
      return v->items[i];
  return NULL;
}
