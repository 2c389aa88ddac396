#!/usr/bin/env bash
# docs/rawtrack.md is what scripts/gen-docs.sh makes from the built
# command's --help: help, reference and man pages have one source, and a
# changed --help without a regenerated reference fails here.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires "$PYTHON" --version
"$PYTHON" "$SRCDIR/scripts/gen-docs.py" "$RAWTRACK" markdown "$tmpdir/rawtrack.md" ||
  die "scripts/gen-docs.py failed"
if ! diff -u "$SRCDIR/docs/rawtrack.md" "$tmpdir/rawtrack.md" >"$tmpdir/diff"; then
  head -40 "$tmpdir/diff" >&2
  die "docs/rawtrack.md is out of date: run ./scripts/gen-docs.sh"
fi
echo "$progname: OK"
