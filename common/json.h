/* rawtrack - the one JSON writer (json.c) and reader (json-parse.c),
 * shared by the command (--json output, backup manifests) and the
 * server's control socket (server/control*.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef RAWTRACK_JSON_H
#define RAWTRACK_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- json.c: a small streaming JSON writer ---------------------------- */
struct json;
/* pretty: indent like qemu-img --output=json (4 spaces). */
struct json *json_new (FILE *fp, bool pretty);
/* Finish (prints a final newline) and free. */
void json_end (struct json *j);
void json_object_begin (struct json *j, const char *key);  /* key NULL in arrays/top */
void json_object_end (struct json *j);
void json_array_begin (struct json *j, const char *key);
void json_array_end (struct json *j);
void json_string (struct json *j, const char *key, const char *value);
void json_uint (struct json *j, const char *key, uint64_t value);
void json_int (struct json *j, const char *key, int64_t value);
void json_bool (struct json *j, const char *key, bool value);
void json_double (struct json *j, const char *key, double value);
void json_null (struct json *j, const char *key);

/* ---- json-parse.c: a small JSON reader -------------------------------- */
enum jv_type { JV_NULL, JV_BOOL, JV_NUM, JV_STR, JV_ARR, JV_OBJ };
struct jv {
  enum jv_type t;
  bool b;                      /* JV_BOOL */
  bool integer, neg;           /* JV_NUM: exact integer (u or i) */
  uint64_t u;
  int64_t i;
  double d;
  char *s;                     /* JV_STR */
  size_t n;                    /* JV_ARR, JV_OBJ: number of items */
  struct jv **items;
  char **keys;                 /* JV_OBJ */
};
/* Parse len bytes; NULL with a message naming the byte offset in err. */
struct jv *jv_parse (const char *text, size_t len, char *err, size_t errlen);
void jv_free (struct jv *v);
/* Member key of an object, or NULL. */
const struct jv *jv_get (const struct jv *v, const char *key);

#endif /* RAWTRACK_JSON_H */
