/* rawtrack - unit test for cli/util.c and common/json.c.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * parse_size and parse_track_mode against tables of good and bad inputs,
 * human_size against the strings qemu-img prints, and the JSON writer's
 * exact output in pretty and compact mode (captured with open_memstream).
 */
#undef NDEBUG
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "cli.h"

static int failures;

static void
good_size (const char *s, uint64_t want)
{
  uint64_t v = 12345;
  const char *err = NULL;

  if (parse_size (s, &v, &err) != 0) {
    fprintf (stderr, "parse_size \"%s\": unexpected error: %s\n", s, err);
    failures++;
  }
  else if (v != want) {
    fprintf (stderr, "parse_size \"%s\": got %llu, want %llu\n", s,
             (unsigned long long) v, (unsigned long long) want);
    failures++;
  }
}

static void
bad_size (const char *s, const char *want_err)
{
  uint64_t v = 0;
  const char *err = NULL;

  if (parse_size (s, &v, &err) != -1) {
    fprintf (stderr, "parse_size \"%s\": accepted as %llu\n", s,
             (unsigned long long) v);
    failures++;
  }
  else if (err == NULL || strcmp (err, want_err) != 0) {
    fprintf (stderr, "parse_size \"%s\": error \"%s\", want \"%s\"\n", s,
             err ? err : "(null)", want_err);
    failures++;
  }
}

static void
test_parse_size (void)
{
  const uint64_t K = 1024, M = K * K, G = M * K, T = G * K, P = T * K,
    E = P * K;

  good_size ("0", 0);
  good_size ("512", 512);
  good_size ("007", 7);
  good_size ("512b", 512);
  good_size ("512B", 512);
  good_size ("64k", 64 * K);
  good_size ("64K", 64 * K);
  good_size ("64KiB", 64 * K);
  good_size ("64KB", 64 * K);
  good_size ("2M", 2 * M);
  good_size ("2m", 2 * M);
  good_size ("2MiB", 2 * M);
  good_size ("1G", G);
  good_size ("1g", G);
  good_size ("1GiB", G);
  good_size ("3T", 3 * T);
  good_size ("1P", P);
  good_size ("1E", E);
  good_size ("1e", E);
  good_size ("1.5G", G + G / 2);
  good_size ("1.25k", 1280);
  good_size ("0.5k", 512);
  good_size ("0.5KiB", 512);
  good_size (".5k", 512);
  good_size ("1.k", K);
  good_size ("1.0", 1);
  good_size ("1.000", 1);
  good_size ("2.000b", 2);
  good_size ("0.0009765625k", 1);
  good_size ("15.5E", 15 * E + E / 2);
  /* 2^-60 has 60 digits after the point. */
  good_size ("0.000000000000000000867361737988403547205962240695953369140625E",
             1);
  good_size ("0.0000000000000000008673617379884035472059622406959533691406250"
             "000E", 1);
  good_size ("18446744073709551615", UINT64_MAX);
  good_size ("17179869183G", 17179869183ull * G);
  good_size ("0x10", 16);
  good_size ("0XfF", 255);
  good_size ("0x1b", 27);
  good_size ("0xffffffffffffffff", UINT64_MAX);
  good_size ("  64k", 64 * K);

  bad_size ("", "empty size");
  bad_size ("   ", "empty size");
  bad_size ("-1", "negative size");
  bad_size ("-0", "negative size");
  bad_size (" -5k", "negative size");
  bad_size ("abc", "not a number");
  bad_size ("k", "not a number");
  bad_size (".", "not a number");
  bad_size (".k", "not a number");
  bad_size ("+1", "not a number");
  bad_size ("0x", "not a number");
  bad_size ("0xg", "not a number");
  bad_size ("0x10 ", "not a number");
  bad_size ("12x", "unknown suffix");
  bad_size ("1kk", "unknown suffix");
  bad_size ("1KiBx", "unknown suffix");
  bad_size ("1kib", "unknown suffix");
  bad_size ("1Kb", "unknown suffix");
  bad_size ("512bB", "unknown suffix");
  bad_size ("512biB", "unknown suffix");
  bad_size ("1 k", "unknown suffix");
  bad_size ("64k ", "unknown suffix");
  bad_size ("1.5.5k", "unknown suffix");
  bad_size ("1.5", "not a whole number of bytes");
  bad_size ("1.5b", "not a whole number of bytes");
  bad_size ("0.1k", "not a whole number of bytes");
  bad_size ("1.0001G", "not a whole number of bytes");
  bad_size ("0.0000000000000000008673617379884035472059622406959533691406251E",
            "not a whole number of bytes");
  bad_size ("18446744073709551616", "too large");
  bad_size ("99999999999999999999999", "too large");
  bad_size ("16E", "too large");
  bad_size ("17179869184G", "too large");
  bad_size ("16.5E", "too large");
  bad_size ("0x10000000000000000", "too large");
  bad_size ("0x10k", "a hexadecimal size cannot have a fraction or suffix");
  bad_size ("0x1.5", "a hexadecimal size cannot have a fraction or suffix");
}

static void
check_human (uint64_t bytes, const char *want)
{
  char buf[64];

  memset (buf, 'x', sizeof buf);
  human_size (bytes, buf, sizeof buf);
  if (strcmp (buf, want) != 0) {
    fprintf (stderr, "human_size %llu: got \"%s\", want \"%s\"\n",
             (unsigned long long) bytes, buf, want);
    failures++;
  }
}

static void
test_human_size (void)
{
  const uint64_t K = 1024, M = K * K, G = M * K, T = G * K, E = T * K * K;
  char small[4];

  check_human (0, "0 B");
  check_human (1, "1 B");
  check_human (512, "512 B");
  check_human (999, "999 B");
  check_human (1000, "0.977 KiB");
  check_human (1023, "0.999 KiB");
  check_human (K, "1 KiB");
  check_human (1536, "1.5 KiB");
  check_human (64 * K, "64 KiB");
  check_human (1023487, "999 KiB");
  check_human (1023488, "0.976 MiB");       /* QEMU: "1e+03 KiB" */
  check_human (1000 * K, "0.977 MiB");
  check_human (100 * M, "100 MiB");
  check_human (G, "1 GiB");
  check_human (G + G / 2, "1.5 GiB");
  check_human (10000000000ull, "9.31 GiB");
  check_human (16 * T, "16 TiB");
  check_human (E, "1 EiB");
  check_human (UINT64_MAX, "16 EiB");

  human_size (64 * K, small, sizeof small);
  assert (strcmp (small, "64 ") == 0);
}

/* Run fn on a fresh writer and compare everything it printed. */
static void
check_json (bool pretty, void (*fn) (struct json *), const char *want)
{
  char *out = NULL;
  size_t len = 0;
  FILE *fp = open_memstream (&out, &len);
  struct json *j;

  assert (fp != NULL);
  j = json_new (fp, pretty);
  assert (j != NULL);
  fn (j);
  json_end (j);
  assert (fclose (fp) == 0);
  if (strcmp (out, want) != 0) {
    fprintf (stderr, "json (%s):\n--- got\n%s--- want\n%s---\n",
             pretty ? "pretty" : "compact", out, want);
    failures++;
  }
  free (out);
}

static void
doc_info (struct json *j)
{
  json_object_begin (j, NULL);
  json_string (j, "filename",
               "a\"b\\c/\n\t\r\b\f\x01\x1f\x7f"
               "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"   /* é € U+1F600 */
               "\xff\xc0\x80\xed\xa0\x80|\xe2\x82");    /* invalid UTF-8 */
  json_uint (j, "virtual-size", 1073741824);
  json_uint (j, "max", UINT64_MAX);
  json_int (j, "neg", INT64_MIN);
  json_bool (j, "dirty-flag", false);
  json_bool (j, "t", true);
  json_double (j, "ratio", 0.5);
  json_null (j, "nothing");
  json_string (j, "null-string", NULL);
  json_object_begin (j, "format-specific");
  json_string (j, "type", "qcow2");
  json_object_begin (j, "data");
  json_array_begin (j, "bitmaps");
  json_object_begin (j, NULL);
  json_array_begin (j, "flags");
  json_string (j, NULL, "in-use");
  json_string (j, NULL, "auto");
  json_array_end (j);
  json_string (j, "name", "b0");
  json_uint (j, "granularity", 65536);
  json_object_end (j);
  json_object_begin (j, NULL);
  json_object_end (j);
  json_array_end (j);
  json_array_begin (j, "empty");
  json_array_end (j);
  json_object_begin (j, "empty-object");
  json_object_end (j);
  json_object_end (j);
  json_object_end (j);
  json_object_end (j);
}

static const char info_str[] =
  "\"a\\\"b\\\\c/\\n\\t\\r\\b\\f\\u0001\\u001F\\u007F"
  "\\u00E9\\u20AC\\uD83D\\uDE00"
  "\\uFFFD\\uFFFD\\uFFFD\\uFFFD\\uFFFD\\uFFFD|\\uFFFD\\uFFFD\"";

static void
test_json_doc (void)
{
  char want[2048];

  snprintf (want, sizeof want,
            "{\n"
            "    \"filename\": %s,\n"
            "    \"virtual-size\": 1073741824,\n"
            "    \"max\": 18446744073709551615,\n"
            "    \"neg\": -9223372036854775808,\n"
            "    \"dirty-flag\": false,\n"
            "    \"t\": true,\n"
            "    \"ratio\": 0.5,\n"
            "    \"nothing\": null,\n"
            "    \"null-string\": null,\n"
            "    \"format-specific\": {\n"
            "        \"type\": \"qcow2\",\n"
            "        \"data\": {\n"
            "            \"bitmaps\": [\n"
            "                {\n"
            "                    \"flags\": [\n"
            "                        \"in-use\",\n"
            "                        \"auto\"\n"
            "                    ],\n"
            "                    \"name\": \"b0\",\n"
            "                    \"granularity\": 65536\n"
            "                },\n"
            "                {\n"
            "                }\n"
            "            ],\n"
            "            \"empty\": [\n"
            "            ],\n"
            "            \"empty-object\": {\n"
            "            }\n"
            "        }\n"
            "    }\n"
            "}\n", info_str);
  check_json (true, doc_info, want);

  snprintf (want, sizeof want,
            "{\"filename\": %s, \"virtual-size\": 1073741824, "
            "\"max\": 18446744073709551615, "
            "\"neg\": -9223372036854775808, \"dirty-flag\": false, "
            "\"t\": true, \"ratio\": 0.5, \"nothing\": null, "
            "\"null-string\": null, "
            "\"format-specific\": {\"type\": \"qcow2\", \"data\": "
            "{\"bitmaps\": [{\"flags\": [\"in-use\", \"auto\"], "
            "\"name\": \"b0\", \"granularity\": 65536}, {}], "
            "\"empty\": [], \"empty-object\": {}}}}\n", info_str);
  check_json (false, doc_info, want);
}

static void
doc_doubles (struct json *j)
{
  json_array_begin (j, NULL);
  json_double (j, NULL, 0.1);
  json_double (j, NULL, 1.0 / 3);
  json_double (j, NULL, 2.0);
  json_double (j, NULL, -0.0);
  json_double (j, NULL, 1e300);
  json_double (j, NULL, 123456789012345678901.0);
  json_double (j, NULL, 0.1 + 0.2);
  json_double (j, NULL, NAN);
  json_double (j, NULL, INFINITY);
  json_double (j, NULL, -INFINITY);
  json_array_end (j);
}

static void
doc_scalar (struct json *j)
{
  json_uint (j, NULL, 42);
}

static void
doc_empty_array (struct json *j)
{
  json_array_begin (j, NULL);
  json_array_end (j);
}

static void
doc_nested_arrays (struct json *j)
{
  json_array_begin (j, NULL);
  json_array_begin (j, NULL);
  json_int (j, NULL, 1);
  json_array_end (j);
  json_array_begin (j, NULL);
  json_array_end (j);
  json_array_end (j);
}

static void
test_json_misc (void)
{
  check_json (false, doc_doubles,
              "[0.1, 0.3333333333333333, 2, -0, 1e+300, "
              "1.2345678901234568e+20, 0.30000000000000004, "
              "null, null, null]\n");
  check_json (true, doc_scalar, "42\n");
  check_json (false, doc_scalar, "42\n");
  check_json (true, doc_empty_array, "[\n]\n");
  check_json (false, doc_empty_array, "[]\n");
  check_json (true, doc_nested_arrays,
              "[\n"
              "    [\n"
              "        1\n"
              "    ],\n"
              "    [\n"
              "    ]\n"
              "]\n");
  check_json (false, doc_nested_arrays, "[[1], []]\n");
  json_end (NULL);
}

/* parse_track_mode: the one parser of `io --track` and `serve --track`. */
static void
test_track_mode (void)
{
  static const struct { const char *s; unsigned want; } good[] = {
    { "safe", 0 },
    { "process", RAWTRACK_OPEN_TRACK_PROCESS },
    { "lazy", RAWTRACK_OPEN_TRACK_LAZY },
  };
  static const char *const bad[] = { "", "Safe", "lazy ", "fast", "0" };
  const unsigned other = RAWTRACK_OPEN_RDWR;
  size_t i, j;

  for (i = 0; i < sizeof good / sizeof good[0]; i++)
    for (j = 0; j < sizeof good / sizeof good[0]; j++) {
      /* From any earlier mode: the new one replaces it, other bits stay. */
      unsigned flags = other | good[j].want;

      if (parse_track_mode (good[i].s, &flags) != 0 ||
          flags != (other | good[i].want)) {
        fprintf (stderr, "parse_track_mode \"%s\" after \"%s\": "
                 "flags 0x%x, want 0x%x\n", good[i].s, good[j].s, flags,
                 other | good[i].want);
        failures++;
      }
    }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    unsigned flags = other | RAWTRACK_OPEN_TRACK_LAZY;

    if (parse_track_mode (bad[i], &flags) != -1 ||
        flags != (other | RAWTRACK_OPEN_TRACK_LAZY)) {
      fprintf (stderr, "parse_track_mode \"%s\": accepted or changed the "
               "flags (0x%x)\n", bad[i], flags);
      failures++;
    }
  }
}

int
main (void)
{
  test_parse_size ();
  test_track_mode ();
  test_human_size ();
  test_json_doc ();
  test_json_misc ();
  if (failures) {
    fprintf (stderr, "test-cli-util: %d failures\n", failures);
    return 1;
  }
  printf ("test-cli-util: ok\n");
  return 0;
}
