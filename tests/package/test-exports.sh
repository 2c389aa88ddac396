#!/usr/bin/env bash
# librawtrack.so exports exactly the public API, under its SONAME.
#
# Three lists must agree: the functions the public headers declare
# (include/rawtrack/*.h, preprocessed), the version script
# (lib/librawtrack.syms) and the dynamic symbols the built library
# defines (nm -D --defined-only).  An internal symbol that leaks, or a
# public function that is missing or unversioned, fails the test.  The
# installed static twin must hold no test shim.
#
# Usage: test-exports.sh LIBRAWTRACK.so LIBRAWTRACK.a
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires nm --version
requires objdump --version
requires cc --version

so=${1:?usage: test-exports.sh LIB.so LIB.a}
ar_lib=${2:?usage: test-exports.sh LIB.so LIB.a}
[ -f "$so" ] || hard_error "$so: no such library"

# Function names the headers declare: every identifier rawtrack_* that is
# directly followed by '(' in the preprocessed headers (a function pointer
# typedef "(*rawtrack_x_fn) (" is not).
for h in "$SRCDIR"/include/rawtrack/*.h; do
  cc -E -P -I"$SRCDIR/include" "$h"
done | grep -oE '\brawtrack_[A-Za-z0-9_]+[[:space:]]*\(' |
  sed -E 's/[[:space:]]*\($//' | sort -u > "$tmpdir/headers"
[ -s "$tmpdir/headers" ] || hard_error "found no functions in the headers"

# The version script's global names.
sed -n '/global:/,/local:/p' "$SRCDIR/lib/librawtrack.syms" |
  grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' | tr -d ' ;' |
  sort > "$tmpdir/script"

# What the library really exports (defined, dynamic), version suffix
# stripped; the version node itself is an absolute symbol ('A').
nm -D --defined-only "$so" | awk '$2 != "A" { print $3 }' |
  sed 's/@.*//' | sort > "$tmpdir/exports"
# Every export carries the version node.
nm -D --defined-only "$so" | awk '$2 != "A" && $3 !~ /@@RAWTRACK_0\.1$/' \
  > "$tmpdir/unversioned"

echo "headers: $(wc -l < "$tmpdir/headers") functions;" \
     "version script: $(wc -l < "$tmpdir/script");" \
     "exported: $(wc -l < "$tmpdir/exports")"

bad=0
if ! diff -u "$tmpdir/headers" "$tmpdir/exports" > "$tmpdir/d1"; then
  echo "$progname: exports differ from the public headers" \
       "('-' declared but not exported, '+' exported but not public):" >&2
  cat "$tmpdir/d1" >&2
  bad=1
fi
if ! diff -u "$tmpdir/headers" "$tmpdir/script" > "$tmpdir/d2"; then
  echo "$progname: lib/librawtrack.syms differs from the public headers" \
       "('-' declared, missing in the script; '+' listed but not public):" >&2
  cat "$tmpdir/d2" >&2
  bad=1
fi
if [ -s "$tmpdir/unversioned" ]; then
  echo "$progname: exports without the RAWTRACK_0.1 version:" >&2
  cat "$tmpdir/unversioned" >&2
  bad=1
fi

soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
if [ "$soname" != "librawtrack.so.0" ]; then
  echo "$progname: SONAME is '$soname', expected librawtrack.so.0" >&2
  bad=1
fi

# The static twin: the library's objects and none of the test shims.
nm --defined-only "$ar_lib" | awk '{ print $3 }' > "$tmpdir/static"
if grep -qE '^io_(fault|crash)_' "$tmpdir/static"; then
  echo "$progname: $ar_lib contains test shims:" >&2
  grep -E '^io_(fault|crash)_' "$tmpdir/static" >&2
  bad=1
fi
if ! grep -qx rawtrack_image_open "$tmpdir/static"; then
  echo "$progname: $ar_lib lacks rawtrack_image_open" >&2
  bad=1
fi

[ "$bad" = 0 ] || die "the library's exports do not match its public API"
echo "$progname: OK (SONAME $soname)"
