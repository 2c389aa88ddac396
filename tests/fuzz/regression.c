/* rawtrack - replay a fuzz corpus through one fuzz target.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Linked with exactly one target's LLVMFuzzerTestOneInput and compiled
 * without -fsanitize=fuzzer (any compiler), so that the checked-in corpus
 * runs in every ordinary test build, including the ASan/UBSan one (the
 * idea of zstd's tests/fuzz/regression_driver.c).
 *
 *   fuzz-TARGET-regression PATH...
 *
 * Each PATH is a file or a directory; a directory's regular files are run
 * in name order (hidden files and README* are skipped).  Every input is
 * copied into a buffer of exactly its size, so a read past its end is an
 * ASan error.  The name of each input is printed before it runs, so a
 * crash names its input.  Exit status: 0 when every input ran; a crash,
 * a failed invariant or a sanitizer report ends the process with an error;
 * 1 when a path cannot be read or no input was found at all.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <dirent.h>
#include <sys/stat.h>

#include <rawtrack/rawtrack.h>

#include "fuzz.h"

static unsigned long inputs;

static int
run_file (const char *path)
{
  FILE *fp;
  struct stat st;
  uint8_t *buf;
  size_t n;

  fp = fopen (path, "rb");
  if (!fp || fstat (fileno (fp), &st) == -1) {
    fprintf (stderr, "regression: %s: %s\n", path, strerror (errno));
    if (fp)
      fclose (fp);
    return -1;
  }
  n = (size_t) st.st_size;
  buf = malloc (n ? n : 1);
  if (!buf) {
    fprintf (stderr, "regression: %s: out of memory\n", path);
    fclose (fp);
    return -1;
  }
  if (n && fread (buf, 1, n, fp) != n) {
    fprintf (stderr, "regression: %s: short read\n", path);
    free (buf);
    fclose (fp);
    return -1;
  }
  fclose (fp);

  printf ("%s (%zu bytes)\n", path, n);
  fflush (stdout);
  /* Even an empty input gets a valid pointer, as libFuzzer gives. */
  LLVMFuzzerTestOneInput (buf, n);
  free (buf);
  inputs++;
  return 0;
}

static int
cmp_names (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

static int
run_dir (const char *dir)
{
  DIR *d = opendir (dir);
  struct dirent *de;
  char **names = NULL, **p;
  size_t nr = 0, alloc = 0, i;
  int r = 0;

  if (!d) {
    fprintf (stderr, "regression: %s: %s\n", dir, strerror (errno));
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    if (de->d_name[0] == '.' || strncmp (de->d_name, "README", 6) == 0)
      continue;
    if (nr == alloc) {
      alloc = alloc ? alloc * 2 : 64;
      p = realloc (names, alloc * sizeof *names);
      if (!p) {
        fprintf (stderr, "regression: out of memory\n");
        r = -1;
        break;
      }
      names = p;
    }
    names[nr] = malloc (strlen (dir) + strlen (de->d_name) + 2);
    if (!names[nr]) {
      fprintf (stderr, "regression: out of memory\n");
      r = -1;
      break;
    }
    sprintf (names[nr], "%s/%s", dir, de->d_name);
    nr++;
  }
  closedir (d);

  if (r == 0)
    qsort (names, nr, sizeof *names, cmp_names);
  for (i = 0; i < nr; i++) {
    struct stat st;

    if (r == 0 && stat (names[i], &st) == 0 && S_ISREG (st.st_mode) &&
        run_file (names[i]) == -1)
      r = -1;
    free (names[i]);
  }
  free (names);
  return r;
}

int
main (int argc, char *argv[])
{
  struct stat st;
  int i, r = 0;

  if (argc < 2) {
    fprintf (stderr, "usage: %s CORPUS-DIR|FILE...\n", argv[0]);
    return 1;
  }
  for (i = 1; i < argc && r == 0; i++) {
    if (stat (argv[i], &st) == -1) {
      fprintf (stderr, "regression: %s: %s\n", argv[i], strerror (errno));
      r = -1;
    }
    else if (S_ISDIR (st.st_mode))
      r = run_dir (argv[i]);
    else
      r = run_file (argv[i]);
  }
  if (r == 0 && inputs == 0) {
    fprintf (stderr, "regression: no inputs found\n");
    r = -1;
  }
  printf ("%lu inputs ran\n", inputs);
  return r == 0 ? 0 : 1;
}
