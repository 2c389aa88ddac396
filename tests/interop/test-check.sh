#!/usr/bin/env bash
# test-check.sh: `rawtrack check` finds what `qemu-img check` finds, and its
# repairs leave images that `qemu-img check` accepts.
#
# Damage is made with qcow2-patch.py on images from qemu-img and from
# `rawtrack attach`:
#  - a leaked cluster (refcount > references)       exit 3 from both;
#  - the refcount of an L2 table set to 0           exit 2 from both;
#  - COPIED cleared on an L2 entry of a data-file image: exit 2 from both;
#  - the dirty bit on a lazy-refcounts image, a missing data file, a file
#    that is not qcow2.
# JSON outputs are compared key by key (compare-check.py).  Then
# `rawtrack check -r leaks`, `-r all` and `--repair` must leave the image
# clean for qemu-img check, with the guest data unchanged (qemu-img compare
# against a pristine copy) and the raw data file untouched.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" --version

cd "$tmpdir"

MiB=$((1024 * 1024))
patch="$interop_dir/qcow2-patch.py"

# repaired_ok DAMAGED PRISTINE KIND REPAIR-ARGS...: repair a copy of
# DAMAGED with rawtrack, then judge it.  KIND is leaks or corruptions: the
# JSON of the repair run must report at least one of them fixed.
repaired_ok ()
{
  local damaged="$1" pristine="$2" kind="$3"; shift 3
  local copy="$damaged.fix.qcow2" st=0
  cp "$damaged" "$copy"
  "$RAWTRACK" check "$copy" --json "$@" >repair.json || st=$?
  if [ "$st" -ne 0 ]; then
    cat repair.json >&2
    die "rawtrack check $* on $damaged: exit $st (expected 0 after repair)"
  fi
  "$PYTHON" - repair.json "$kind" <<'EOF' || { cat repair.json >&2; die "repair JSON of $damaged ($*)"; }
import json, sys
j = json.load(open(sys.argv[1]))
kind = sys.argv[2]
for k in ("filename", "format", "check-errors"):
    assert k in j, f"missing {k}"
assert j.get(kind + "-fixed", 0) >= 1, f"no {kind}-fixed reported"
assert j.get("corruptions", 0) == 0 and j.get("leaks", 0) == 0, \
    "errors remain after repair"
EOF
  qcheck "$copy"
  check_agrees "$copy"
  assert_eq 0 "$check_status" "rawtrack check after repair of $damaged"
  expect_ok qemu-img compare -f qcow2 -F qcow2 "$pristine" "$copy"
  # A second repair has nothing to do.
  expect_exit 0 "$RAWTRACK" check "$copy" "$@"
  rm -f "$copy" repair.json
}

# damage_all PRISTINE [full]: run the leak and L2-refcount cases on copies
# of PRISTINE (which must have at least one L2 table).  Each damage is
# repaired with one spelling of repair; with `full`, with every spelling
# (-r leaks, -r all, --repair).
damage_all ()
{
  local img="$1" base="${1%.qcow2}" full="${2:-}"

  check_agrees "$img"
  assert_eq 0 "$check_status" "check of pristine $img"

  # Leak.
  cp "$img" "$base-leak.qcow2"
  "$PYTHON" "$patch" make-leak "$base-leak.qcow2" >/dev/null
  check_agrees "$base-leak.qcow2"
  assert_eq 3 "$check_status" "check of leaked $img"
  repaired_ok "$base-leak.qcow2" "$img" leaks -r leaks
  if [ -n "$full" ]; then
    repaired_ok "$base-leak.qcow2" "$img" leaks -r all
    repaired_ok "$base-leak.qcow2" "$img" leaks --repair
  fi
  rm -f "$base-leak.qcow2"

  # Refcount of an L2 table zeroed: the L2 is in use but unaccounted for.
  cp "$img" "$base-l2.qcow2"
  "$PYTHON" "$patch" zero-l2-refcount "$base-l2.qcow2" >/dev/null
  check_agrees "$base-l2.qcow2"
  assert_eq 2 "$check_status" "check of corrupted $img"
  # -r leaks cannot fix a corruption: it must not claim success.
  cp "$base-l2.qcow2" "$base-l2b.qcow2"
  _run "$RAWTRACK" check "$base-l2b.qcow2" -r leaks
  case "$_status" in
    1|2) ;;
    *) die "rawtrack check -r leaks on a corruption: exit $_status (want 1 or 2)" ;;
  esac
  rm -f "$base-l2b.qcow2"
  repaired_ok "$base-l2.qcow2" "$img" corruptions -r all
  if [ -n "$full" ]; then
    repaired_ok "$base-l2.qcow2" "$img" corruptions --repair
  fi
  rm -f "$base-l2.qcow2"
}

# ---------------------------------------------------------------------------
# 1. qemu-made images, several layouts.

populate ()
{
  expect_ok qemu-io -f qcow2 -c 'write -P 0x11 0 200k' \
    -c "write -P 0x22 $((3 * MiB)) 64k" -c "write -P 0x33 $((7 * MiB)) 512" "$1"
}

for opts in "cluster_size=65536" "cluster_size=512" "cluster_size=2M" \
            "refcount_bits=1,cluster_size=4096" "refcount_bits=64,cluster_size=4096" \
            "compat=0.10" "extended_l2=on" "lazy_refcounts=on"; do
  img="q-${opts//[=,]/-}.qcow2"
  qemu-img create -q -f qcow2 -o "$opts" "$img" $((8 * MiB))
  populate "$img"
  qcheck "$img"
  if [ "$opts" = cluster_size=65536 ]; then
    damage_all "$img" full
  else
    damage_all "$img"
  fi
  rm -f "$img"
done

# qemu-made data-file-raw image: damage, and COPIED cleared.
qemu-img create -q -f qcow2 -o "data_file=$tmpdir/qdf.data,data_file_raw=on" \
  qdf.qcow2 $((8 * MiB))
populate qdf.qcow2
qcheck qdf.qcow2
qdf_md5="$(md5of qdf.data)"
damage_all qdf.qcow2 full
cp qdf.qcow2 qdf-copied.qcow2
"$PYTHON" "$patch" clear-copied qdf-copied.qcow2 3
check_agrees qdf-copied.qcow2
assert_eq 2 "$check_status" "check of COPIED-cleared qdf"
repaired_ok qdf-copied.qcow2 qdf.qcow2 corruptions -r all
assert_eq "$qdf_md5" "$(md5of qdf.data)" "data file after repairs"
rm -f qdf*.qcow2 qdf.data

# ---------------------------------------------------------------------------
# 2. Images made by rawtrack attach.

"$PYTHON" - att.raw <<'EOF'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(12):
        f.write(bytes([0x40 + i]) * (1 << 20))
EOF
att_md5="$(md5of att.raw)"
for cs in 512 65536 $((2 * MiB)); do
  img="att$cs.qcow2"
  expect_ok "$RAWTRACK" attach att.raw "$img" --cluster-size "$cs"
  qcheck "$img"
  if [ "$cs" = 65536 ]; then damage_all "$img" full; else damage_all "$img"; fi
  cp "$img" "att$cs-copied.qcow2"
  "$PYTHON" "$patch" clear-copied "att$cs-copied.qcow2" 1
  check_agrees "att$cs-copied.qcow2"
  assert_eq 2 "$check_status" "check of COPIED-cleared $img"
  repaired_ok "att$cs-copied.qcow2" "$img" corruptions --repair
  rm -f "$img" "att$cs-copied.qcow2"
done
assert_eq "$att_md5" "$(md5of att.raw)" "att.raw after all repairs"

# ---------------------------------------------------------------------------
# 3. Flags, unreadable inputs.

# The dirty bit alone (refcounts actually correct): QEMU reports the image
# clean.
qemu-img create -q -f qcow2 -o lazy_refcounts=on dirty.qcow2 $((8 * MiB))
populate dirty.qcow2
"$PYTHON" "$patch" set-incompat dirty.qcow2 0x1
qemu-img info --output=json dirty.qcow2 >info.json
assert_eq true "$(json_get info.json 'j["dirty-flag"]')" "fixture dirty flag"
info_agrees dirty.qcow2
check_agrees dirty.qcow2
# A dirty image with a leak.
"$PYTHON" "$patch" make-leak dirty.qcow2 >/dev/null
check_agrees dirty.qcow2
rm -f dirty.qcow2

# Missing data file: check cannot run (1) unless --data-file is given.
expect_ok "$RAWTRACK" attach att.raw gone.qcow2
mv att.raw att-moved.raw
qst=0; qemu-img check gone.qcow2 >/dev/null 2>&1 || qst=$?
assert_eq 1 "$qst" "qemu-img check with a missing data file"
expect_exit 1 "$RAWTRACK" check gone.qcow2
expect_exit 1 "$RAWTRACK" check gone.qcow2 --json
expect_exit 0 "$RAWTRACK" check gone.qcow2 --data-file att-moved.raw
info_agrees gone.qcow2
mv att-moved.raw att.raw
rm -f gone.qcow2

# Not an image at all.
head -c 65536 /dev/urandom >junk.qcow2
expect_exit 1 "$RAWTRACK" check junk.qcow2
expect_exit 1 "$RAWTRACK" check junk.qcow2 -r all
: >empty.qcow2
expect_exit 1 "$RAWTRACK" check empty.qcow2
expect_exit 1 "$RAWTRACK" check does-not-exist.qcow2
assert_absent does-not-exist.qcow2

# Bad -r argument.
qemu-img create -q -f qcow2 ok.qcow2 1M
expect_exit 1 "$RAWTRACK" check ok.qcow2 -r bogus

echo "$progname: OK"
