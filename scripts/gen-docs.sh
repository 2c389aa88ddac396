#!/usr/bin/env bash
# Regenerate docs/rawtrack.md, the command reference, from the --help text
# of every command and subcommand, so the two never disagree.  The man
# pages and the bash completion come from the same --help through the
# same script (scripts/gen-docs.py), at build time (data/meson.build).
# Usage: ./scripts/gen-docs.sh [RAWTRACK]   (default build/cli/rawtrack)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-build/cli/rawtrack}
py=python3
if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; fi
"$py" scripts/gen-docs.py "$R" markdown docs/rawtrack.md
echo "wrote docs/rawtrack.md"
