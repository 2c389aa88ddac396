/* rawtrack - command-line tool private declarations.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef RAWTRACK_CLI_H
#define RAWTRACK_CLI_H

#include <stdio.h>
#include <stdint.h>
#include <stdbool.h>

#include "rawtrack/rawtrack.h"
#include "vector.h"
#include "cleanup.h"

/* Lists of command-line words (pointers into argv). */
DEFINE_VECTOR_TYPE (string_vector, const char *, realloc)

extern const char *progname;  /* "rawtrack" */

/* One subcommand: run returns the process exit status. */
struct command {
  const char *name;
  const char *summary;         /* one line for `rawtrack help` */
  int (*run) (int argc, char **argv);
};

/* Print "rawtrack: <msg>\n" to stderr; returns 1 (for `return fail (...)`). */
int fail (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* fail() with the library's last error appended: "<msg>: <lib error>". */
int fail_lib (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* Usage error: message plus "Try 'rawtrack CMD --help'." Returns 1. */
int usage_error (const char *cmd, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* ---- util.c ----------------------------------------------------------- */
/* Parse a size: decimal digits with an optional suffix k/K, M, G, T, P, E
 * (powers of 1024), optionally followed by "iB" or "B"; or plain bytes with
 * "b"/"B".  "0x" hex accepted without suffix.  Returns 0, or -1 with *err
 * set to a static string saying what is wrong. */
int parse_size (const char *s, uint64_t *out, const char **err);
/* The tracking mode, as `io` and `serve` take it (--track MODE): "safe"
 * (0: crash-safe, the default), "process" (RAWTRACK_OPEN_TRACK_PROCESS) or
 * "lazy" (RAWTRACK_OPEN_TRACK_LAZY).  Replaces the tracking bits of
 * *flags and returns 0, or returns -1 and leaves *flags alone. */
int parse_track_mode (const char *s, unsigned *flags);
#define TRACK_MODE_ERROR "--track must be safe, process or lazy"
/* Format bytes in human form like qemu-img ("64 KiB", "1 GiB", "1.5 MiB"). */
void human_size (uint64_t bytes, char *buf, size_t len);
/* A malloc'd copy of str safe to print on a terminal (names from an image
 * may hold anything): control characters (C0, DEL, C1), backslash and
 * bytes that are not UTF-8 become C escapes as `ls -b` prints them -
 * \n \t \r \\ and \ooo (ESC is \033); printable UTF-8 is kept.  NULL
 * when out of memory. */
char *escape_text (const char *str);
/* escape_text (str) on stdout ("?" when out of memory). */
void put_text (const char *str);

/* Remote (NBD) data files: the options every command that opens a data
 * file takes.  Put REMOTE_LONG_OPTS in the option table, hand every
 * getopt result to remote_option first, and REMOTE_HELP in --help. */
enum { OPT_ALLOW_REMOTE = 0x1000, OPT_REMOTE_TLS_CERTS, OPT_REMOTE_TLS_PSK };
#define REMOTE_LONG_OPTS \
  { "allow-remote", no_argument, NULL, OPT_ALLOW_REMOTE }, \
  { "tls-certificates", required_argument, NULL, OPT_REMOTE_TLS_CERTS }, \
  { "tls-psk", required_argument, NULL, OPT_REMOTE_TLS_PSK }
#define REMOTE_HELP \
  "  --allow-remote    follow an NBD URI stored in the image as its data\n" \
  "                    file (refused otherwise: an image from elsewhere\n" \
  "                    must not make rawtrack connect anywhere); a URI\n" \
  "                    given with --data-file needs no permission\n" \
  "  --tls-certificates DIR, --tls-psk FILE\n" \
  "                    TLS credentials for an nbds:// data file: DIR holds\n" \
  "                    ca-cert.pem (and client-cert.pem, client-key.pem if\n" \
  "                    the server checks clients); FILE username:hexkey\n" \
  "                    lines, the user from the URI (nbds://USER@host/)\n"
/* 1 if c was a remote option (handled: flags gets
 * RAWTRACK_OPEN_ALLOW_REMOTE, credentials go to rawtrack_nbd_set_tls),
 * 0 if not, -1 on error (reported). */
int remote_option (int c, const char *arg, unsigned *flags);
/* RAWTRACK_OPEN_ALLOW_REMOTE once --allow-remote was seen, else 0. */
unsigned remote_open_flags (void);
/* Apply --tls-certificates / --tls-psk to a libnbd handle of the command's
 * own (backup's NBD sources). */
struct nbd_handle;
void remote_nbd_credentials (struct nbd_handle *h);

#include "json.h"           /* common/: the JSON writer and reader */

/* Writes that bypassed rawtrack (rawtrack_image_data_file_changed): a
 * sentence saying what is known into buf (returns 1), or 0 when nothing
 * is; and the same as the JSON object "rawtrack-data-file-changed". */
int data_file_change_text (struct rawtrack_image *img, char *buf, size_t len);
void data_file_change_json (struct json *j, struct rawtrack_image *img);

/* ---- commands ---------------------------------------------------------- */
int cmd_attach (int argc, char **argv);
int cmd_create (int argc, char **argv);
int cmd_info (int argc, char **argv);
int cmd_check (int argc, char **argv);
int cmd_cat (int argc, char **argv);
int cmd_serve (int argc, char **argv);
int cmd_io (int argc, char **argv);
int cmd_bitmap (int argc, char **argv);
int cmd_backup (int argc, char **argv);    /* cmd-backup.c */

#endif /* RAWTRACK_CLI_H */
