#!/usr/bin/env bash
# test-check-repair.sh: `rawtrack check` agrees with `qemu-img check` on
# every image layout QEMU can make, and `rawtrack check -r all` repairs
# injected damage so that qemu-img accepts the image and the guest data
# is unchanged.  (test-check.sh covers the basic leak / L2-refcount /
# COPIED cases and the command line; this covers the layouts and the
# harder damage.)
#
# 1. Layouts: every refcount width (1..64 bits), cluster sizes 512 B to
#    2 MiB, v2 images, extended L2, internal snapshots, compressed
#    clusters, persistent bitmaps, in-use bitmaps, external data files.
#    rawtrack check --json must exit like qemu-img check and agree on
#    every counter (check_agrees); -r all on a clean image writes nothing.
# 2. Damage (inject.py below, on qcow2-patch.py's Image class):
#      leak               refcount > references
#      low                refcount of an in-use data cluster one too low
#      l2-copied          COPIED cleared on an L2 entry
#      l1-copied          COPIED cleared on an L1 entry
#      rb-stored-2        a refcount block's stored refcount set to 2
#      rb-shared          an L2 entry pointing at a refcount block
#      twice              one data cluster referenced by two L2 entries
#      zero-unaligned     a preallocated zero cluster at an unaligned offset
#                         (also in an L2 table shared with a snapshot)
#      reftable-past-eof  a refcount table entry past the end of the file
#      reftable-unaligned a refcount table entry not cluster-aligned
#      uncovered          the first refcount table entry cleared
#      l2-unaligned       an L2 table offset not cluster-aligned (not
#                         repairable: where the real table is, is lost)
#    The damaged image must be judged as qemu-img judges it; then
#    `rawtrack check -r all` must exit 0 wherever `qemu-img check -r all`
#    succeeds, qemu-img check must then find nothing, and the guest data
#    must equal the image before the damage (or, for damage that changes
#    what the guest reads, the damaged image before the repair).
# 3. Repair policy: nothing is freed when a table cannot be followed; an
#    L2 table that doubles as guest data is never rewritten;
#    -r leaks never writes a broken refcount structure; the dirty and
#    corrupt bits are cleared by a successful repair only; the data file
#    is never written; a host offset that differs from the guest offset
#    in a data-file image is a corruption for rawtrack (QEMU marks such
#    an image corrupt when it reads it, though qemu-img check is silent);
#    the repair output is qemu-img's, line for line.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" --version

cd "$tmpdir"

MiB=$((1024 * 1024))
patch="$interop_dir/qcow2-patch.py"

# ---------------------------------------------------------------------------
# Helpers.

# inject.py KIND IMAGE: apply one kind of damage (listed at the top) with
# qcow2-patch.py's Image class.  Prints "same" when the guest still reads
# what it read before, "data" when the damage changed that, "lost" when
# it cannot be repaired; exits 3 when KIND does not apply to IMAGE.
# inject.py host IMAGE GUEST_CLUSTER: the host offset of a guest cluster.
# inject.py refcount IMAGE OFFSET: the refcount of the cluster at OFFSET.
cat >inject.py <<'PYEOF'
import importlib.util, os, struct, sys

spec = importlib.util.spec_from_file_location(
    "qcow2_patch", os.path.join(sys.argv[1], "qcow2-patch.py"))
qp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qp)

OFF = 0x00FFFFFFFFFFFE00
COPIED, COMPRESSED = 1 << 63, 1 << 62
kind, path = sys.argv[2], sys.argv[3]
img = qp.Image(path, writable=kind not in ("host", "refcount"))
cs = img.cs


def na():
    sys.exit(3)


def peek(off):
    return struct.unpack(">Q", img.pread(off, 8))[0]


def poke(off, v):
    img.pwrite(off, struct.pack(">Q", v & (2**64 - 1)))


def l2e(g):
    try:
        return img.l2_entry_offset(g)
    except SystemExit:
        na()


def first_normal():
    """Guest cluster index of the first allocated, uncompressed entry."""
    for g in range(64):
        e = peek(l2e(g))
        if e & OFF and not e & COMPRESSED:
            return g, e
    na()


def done(how):
    img.f.close()
    print(how)
    sys.exit(0)


if kind == "host":
    print(peek(l2e(int(sys.argv[4]))) & OFF)
    sys.exit(0)
if kind == "refcount":
    print(img.get_refcount(int(sys.argv[4]) // cs))
    sys.exit(0)

rt, l1 = img.rt_offset, img.l1_offset
if kind == "leak":
    end = (img.file_size() + cs - 1) // cs
    if img.refblock_offset(end):
        os.truncate(path, (end + 1) * cs)
        img.set_refcount(end, 1)
    elif img.refcount_bits >= 2:
        img.set_refcount(0, img.get_refcount(0) + 1)
    else:
        na()
    done("same")
if kind == "low":
    host = first_normal()[1] & OFF
    img.set_refcount(host // cs, img.get_refcount(host // cs) - 1)
    done("same")
if kind == "l2-copied":
    e = peek(l2e(1))
    if not e & COPIED:
        na()
    poke(l2e(1), e & ~COPIED)
    done("same")
if kind == "l1-copied":
    e = peek(l1)
    if not e & COPIED:
        na()
    poke(l1, e & ~COPIED)
    done("same")
if kind == "rb-stored-2":
    if img.refcount_bits < 2:
        na()
    img.set_refcount(peek(rt) // cs, 2)
    done("same")
if kind == "rb-shared":
    poke(l2e(1), COPIED | peek(rt))
    done("data")
if kind == "twice":
    g, e = first_normal()
    poke(l2e(g + 1), e)
    done("data")
if kind == "zero-unaligned":
    if img.version < 3 or img.extended_l2 or cs < 1024:
        na()
    host = first_normal()[1] & OFF
    if peek(l2e(20)) != 0:
        na()
    poke(l2e(20), COPIED | (host + 512) | 1)
    done("same")
if kind == "reftable-past-eof":
    off = rt + img.rt_clusters * cs - 8
    if peek(off):
        na()
    # A little past the end (qemu-img -r all grows the file up to it).
    poke(off, ((img.file_size() + cs - 1) // cs + 16) * cs)
    done("same")
if kind == "reftable-unaligned":
    if cs < 1024:
        na()
    poke(rt, peek(rt) + cs // 2)
    done("same")
if kind == "uncovered":
    poke(rt, 0)
    done("same")
if kind == "l2-unaligned":
    e = peek(l1)
    if cs < 1024 or not e & OFF:
        na()
    poke(l1, e + cs // 2)
    done("lost")
if kind == "l2-as-data":
    poke(l2e(1), COPIED | (peek(l1) & OFF))
    done("data")
if kind == "df-compressed":
    poke(l2e(40), COMPRESSED | 4096)
    done("same")
if kind == "df-identity":
    poke(l2e(1), peek(l2e(1)) + 2 * cs)
    done("data")
sys.exit("inject.py: unknown kind " + kind)
PYEOF

# damage KIND IMAGE: run inject.py; status 1 when KIND does not apply.
damage ()
{
  local st=0
  "$PYTHON" inject.py "$interop_dir" "$1" "$2" || st=$?
  case "$st" in
    0) ;;
    3) return 1 ;;
    *) hard_error "inject.py $1 $2: exit $st" ;;
  esac
}

# meta IMAGE EXPR: a value from qcow2-patch.py's dump (python over `j`).
meta ()
{
  "$PYTHON" "$patch" dump "$1" >meta.json || die "dump $1"
  json_get meta.json "$2"
}

# fixed IMAGE-JSON: "LEAKS-FIXED CORRUPTIONS-FIXED" of a check JSON.
fixed ()
{
  "$PYTHON" -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j.get("leaks-fixed", 0), j.get("corruptions-fixed", 0))' "$1"
}

# qemu_status IMAGE [ARGS...]: print qemu-img check's exit status.
qemu_status ()
{
  local img="$1" st=0; shift
  qemu-img check "$@" "$img" >/dev/null 2>&1 || st=$?
  echo "$st"
}

# populate IMAGE: data in several places, some of it partial clusters.
populate ()
{
  expect_ok qemu-io -f qcow2 -c 'write -P 0x11 0 200k' \
    -c "write -P 0x22 $((3 * MiB)) 64k" \
    -c "write -P 0x33 $((5 * MiB + 512)) 4k" \
    -c "write -P 0x44 $((7 * MiB)) 512" "$1"
}

# clean_ok IMAGE: rawtrack and qemu-img agree that IMAGE is clean, and
# -r all on it writes nothing.
clean_ok ()
{
  local img="$1"
  check_agrees "$img"
  assert_eq 0 "$check_status" "check of $img"
  cp "$img" clean-copy.qcow2
  expect_exit 0 "$RAWTRACK" check -r all clean-copy.qcow2
  cmp -s "$img" clean-copy.qcow2 || die "-r all on clean $img changed it"
  rm -f clean-copy.qcow2
}

# ---------------------------------------------------------------------------
# 1. Layouts.

layouts=()

# Every refcount width, at two cluster sizes.
for bits in 1 2 4 8 16 32 64; do
  for cs in 4096 65536; do
    img="w$bits-$cs.qcow2"
    qemu-img create -q -f qcow2 -o "refcount_bits=$bits,cluster_size=$cs" \
      "$img" $((8 * MiB))
    populate "$img"
    layouts+=("$img")
  done
done

# Every cluster size.
for cs in 512 1024 2048 8192 16384 32768 131072 262144 524288 1048576 \
          2097152; do
  img="cs$cs.qcow2"
  qemu-img create -q -f qcow2 -o "cluster_size=$cs" "$img" $((8 * MiB))
  populate "$img"
  layouts+=("$img")
done

# v2 images.
for cs in 512 65536; do
  img="v2-$cs.qcow2"
  qemu-img create -q -f qcow2 -o "compat=0.10,cluster_size=$cs" "$img" \
    $((8 * MiB))
  populate "$img"
  layouts+=("$img")
done

# Extended L2 (subclusters, a zeroed range), lazy refcounts.
qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 $((8 * MiB))
populate ext.qcow2
expect_ok qemu-io -f qcow2 -c "write -z $((6 * MiB)) 8k" ext.qcow2
layouts+=(ext.qcow2)
qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 $((8 * MiB))
populate lazy.qcow2
layouts+=(lazy.qcow2)

# Internal snapshots: clusters shared two and three ways, snapshot L1s.
snaps=()
for opts in "cluster_size=65536" "compat=0.10,cluster_size=4096" \
            "refcount_bits=2,cluster_size=4096"; do
  img="snap${#snaps[@]}.qcow2"
  qemu-img create -q -f qcow2 -o "$opts" "$img" $((8 * MiB))
  populate "$img"
  expect_ok qemu-img snapshot -c s1 "$img"
  expect_ok qemu-io -f qcow2 -c 'write -P 0x55 64k 64k' \
    -c "write -P 0x66 $((4 * MiB)) 128k" "$img"
  expect_ok qemu-img snapshot -c s2 "$img"
  expect_ok qemu-io -f qcow2 -c 'write -P 0x77 0 4k' "$img"
  snaps+=("$img")
  layouts+=("$img")
done
# A snapshot and nothing after it: every L2 table is shared.
cp w16-65536.qcow2 shared.qcow2
expect_ok qemu-img snapshot -c s1 shared.qcow2
layouts+=(shared.qcow2)

# Compressed clusters, partly overwritten afterwards.
for cs in 512 65536 2097152; do
  qemu-img create -q -f qcow2 -o "cluster_size=$cs" src.qcow2 $((8 * MiB))
  populate src.qcow2
  img="comp$cs.qcow2"
  expect_ok qemu-img convert -c -O qcow2 -o "cluster_size=$cs" src.qcow2 "$img"
  expect_ok qemu-io -f qcow2 -c 'write -P 0x88 4k 4k' "$img"
  rm -f src.qcow2
  layouts+=("$img")
done

# Persistent bitmaps with data, two granularities, one disabled.
for cs in 4096 65536; do
  img="bm$cs.qcow2"
  qemu-img create -q -f qcow2 -o "cluster_size=$cs" "$img" $((8 * MiB))
  expect_ok qemu-img bitmap --add "$img" b0
  expect_ok qemu-img bitmap --add -g 512 "$img" b1
  populate "$img"
  expect_ok qemu-img bitmap --add --disable "$img" b2
  layouts+=("$img")
done

# External data files (raw and not raw).
qemu-img create -q -f qcow2 -o "data_file=$tmpdir/df.data" df.qcow2 $((8 * MiB))
populate df.qcow2
layouts+=(df.qcow2)
qemu-img create -q -f qcow2 \
  -o "data_file=$tmpdir/dfr.data,data_file_raw=on,cluster_size=4096" \
  dfr.qcow2 $((8 * MiB))
populate dfr.qcow2
layouts+=(dfr.qcow2)

# (clean_ok's check_agrees runs qemu-img check and wants exit 0: no
# separate qcheck.)
for img in "${layouts[@]}"; do
  clean_ok "$img"
done

# The fixtures really have what they are meant to have.
cp snap0.qcow2 probe.qcow2
off="$("$PYTHON" inject.py "$interop_dir" host probe.qcow2 3)"
assert_eq 3 "$("$PYTHON" inject.py "$interop_dir" refcount probe.qcow2 "$off")" \
  "refcount of a cluster shared by two snapshots"
qemu-img check --output=json comp65536.qcow2 >probe.json || true
[ "$(json_get probe.json 'j.get("compressed-clusters", 0)')" -gt 0 ] ||
  die "comp65536.qcow2 has no compressed clusters"
rm -f probe.qcow2 probe.json

# In-use bitmaps are reported, not counted as errors (like qemu-img).
cp bm65536.qcow2 inuse.qcow2
"$PYTHON" "$patch" set-bitmap-flags inuse.qcow2 b1 0x1
check_agrees inuse.qcow2
assert_eq 0 "$check_status" "check of an image with an in-use bitmap"
"$RAWTRACK" check inuse.qcow2 2>inuse.err >/dev/null ||
  die "check of inuse.qcow2 failed"
grep -q "bitmap 'b1' is in use" inuse.err ||
  { cat inuse.err >&2; die "in-use bitmap not reported"; }
if grep -q "bitmap 'b0'" inuse.err; then
  die "a consistent bitmap was reported as in use"
fi
rm -f inuse.qcow2 inuse.err

# ---------------------------------------------------------------------------
# 2. Damage.

# try_damage KIND IMAGE: damage a copy of IMAGE, compare the verdicts,
# repair it, and judge the result.
try_damage ()
{
  local kind="$1" img="$2" how st=0 lf cf
  local bad="d-$kind.qcow2" fix="d-$kind-fix.qcow2"
  local ref="d-$kind-ref.qcow2" qfix="d-$kind-qfix.qcow2"

  cp "$img" "$bad"
  if ! how="$(damage "$kind" "$bad")"; then
    rm -f "$bad"
    return 0
  fi
  echo "$progname: $kind on $img" >&2
  # What rawtrack says about the damage is what qemu-img says.
  check_agrees "$bad"
  case "$kind" in
    leak|rb-stored-2)
      [ "$check_status" -ne 0 ] || die "$kind on $img not reported" ;;
    l1-copied|l2-copied|reftable-unaligned) ;;   # exit 1 or 2, as QEMU
    *)
      [ "$check_status" -eq 2 ] ||
        die "$kind on $img: exit $check_status, not a corruption" ;;
  esac

  # Reference data: before the damage, or the damaged image itself when
  # the damage changed what the guest reads.
  if [ "$how" = data ]; then cp "$bad" "$ref"; else cp "$img" "$ref"; fi

  cp "$bad" "$fix"
  "$RAWTRACK" check -r all "$fix" --json >fix.json 2>fix.err || st=$?
  if _crashed "$st"; then
    cat fix.err >&2
    die "rawtrack check -r all crashed on $kind on $img (exit $st)"
  fi
  read -r lf cf < <(fixed fix.json)
  if [ "$how" = lost ]; then
    # Not repairable, and nothing may be freed; both tools must still
    # agree about what is left.
    [ "$st" -eq 2 ] || { cat fix.err >&2; die "$kind on $img: -r all exit $st"; }
    [ "$lf" -eq 0 ] || die "$kind on $img: clusters freed although a table is lost"
    check_agrees "$fix"
  elif [ "$st" -eq 0 ]; then
    [ $((lf + cf)) -ge 1 ] || die "$kind on $img: repair reported nothing fixed"
    check_agrees "$fix"
    assert_eq 0 "$check_status" "qemu-img check after -r all of $kind on $img"
    expect_ok qemu-img compare -q -f qcow2 -F qcow2 "$ref" "$fix"
    # A second repair has nothing to do and writes nothing.
    cp "$fix" "$fix.2"
    expect_exit 0 "$RAWTRACK" check -r all "$fix.2"
    cmp -s "$fix" "$fix.2" || die "$kind on $img: a second -r all wrote"
    rm -f "$fix.2"
  elif cp "$bad" "$qfix" && [ "$(qemu_status "$qfix" -r all)" -eq 0 ]; then
    cat fix.err fix.json >&2
    die "$kind on $img: qemu-img -r all repairs it, rawtrack -r all exit $st"
  else
    # Neither can repair it (e.g. a 1-bit refcount that would need 2):
    # the verdicts on what is left must still agree.
    check_agrees "$fix"
  fi
  rm -f "$bad" "$fix" "$ref" "$qfix" fix.json fix.err
}

all_kinds="leak low l2-copied l1-copied rb-stored-2 rb-shared twice \
zero-unaligned reftable-past-eof reftable-unaligned uncovered l2-unaligned"
some_kinds="leak low twice uncovered"

for img in w16-65536.qcow2 w1-4096.qcow2 w64-4096.qcow2 cs512.qcow2 \
           v2-65536.qcow2 ext.qcow2 snap0.qcow2 comp65536.qcow2 \
           bm4096.qcow2; do
  for kind in $all_kinds; do
    try_damage "$kind" "$img"
  done
done
for img in w2-4096.qcow2 w4-65536.qcow2 w8-4096.qcow2 w32-4096.qcow2 \
           cs2097152.qcow2 v2-512.qcow2 snap1.qcow2 snap2.qcow2 \
           comp512.qcow2 bm65536.qcow2; do
  for kind in $some_kinds; do
    try_damage "$kind" "$img"
  done
done
# In a shared L2 table (seen from two L1 tables) the zero fix is made once.
for kind in zero-unaligned low l2-copied; do
  try_damage "$kind" shared.qcow2
done

# Bitmaps survive a rebuild: their clusters keep their refcounts, and
# qemu-img still lists them and can use them.
cp bm65536.qcow2 bmr.qcow2
damage uncovered bmr.qcow2 >/dev/null
expect_ok "$RAWTRACK" check -r all bmr.qcow2
qcheck bmr.qcow2
qemu-img info --output=json bm65536.qcow2 >i1.json
qemu-img info --output=json bmr.qcow2 >i2.json
assert_eq "$(json_get i1.json 'j["format-specific"]["data"]["bitmaps"]')" \
          "$(json_get i2.json 'j["format-specific"]["data"]["bitmaps"]')" \
          "bitmaps after a rebuild"
expect_ok qemu-img bitmap --merge b0 bmr.qcow2 b1
qcheck bmr.qcow2
rm -f bmr.qcow2 i1.json i2.json

# A cluster shared with a snapshot whose refcount dropped by one: the
# repair raises it back, and the snapshot can still be applied.
cp snap0.qcow2 snaplow.qcow2
off="$("$PYTHON" inject.py "$interop_dir" host snaplow.qcow2 3)"
"$PYTHON" "$patch" set-refcount snaplow.qcow2 $((off / 65536)) 2
check_agrees snaplow.qcow2
assert_eq 2 "$check_status" "shared cluster with a refcount too low"
expect_ok "$RAWTRACK" check -r all snaplow.qcow2
qcheck snaplow.qcow2
assert_eq 3 "$("$PYTHON" inject.py "$interop_dir" refcount snaplow.qcow2 "$off")" \
  "refcount after the repair"
expect_ok qemu-img compare -q snap0.qcow2 snaplow.qcow2
expect_ok qemu-img snapshot -a s1 snaplow.qcow2
qcheck snaplow.qcow2
rm -f snaplow.qcow2

# ---------------------------------------------------------------------------
# 3. Repair policy.

# Data-file images: leak, COPIED, rebuilds, a compressed entry, and the
# identity rule.  The data file is never written.
for img in df.qcow2 dfr.qcow2; do
  data="${img%.qcow2}.data"
  md5="$(md5of "$data")"
  for kind in leak l2-copied l1-copied reftable-past-eof uncovered; do
    try_damage "$kind" "$img"
  done

  cp "$img" dfc.qcow2
  damage df-compressed dfc.qcow2 >/dev/null
  check_agrees dfc.qcow2
  assert_eq 2 "$check_status" "compressed cluster in a data-file image"
  rm -f dfc.qcow2

  # qemu-img check is silent; rawtrack reports it and cannot repair it.
  cp "$img" dfm.qcow2
  damage df-identity dfm.qcow2 >/dev/null
  assert_eq 0 "$(qemu_status dfm.qcow2)" "qemu-img check, identity violation"
  expect_exit 2 "$RAWTRACK" check dfm.qcow2
  "$RAWTRACK" check dfm.qcow2 2>dfm.err >/dev/null || true
  grep -q "must be mapped one to one" dfm.err ||
    { cat dfm.err >&2; die "identity violation not explained"; }
  expect_exit 2 "$RAWTRACK" check -r all dfm.qcow2
  rm -f dfm.qcow2 dfm.err
  assert_eq "$md5" "$(md5of "$data")" "$data after the repairs"
done

# A lost L2 table: neither -r leaks nor -r all frees anything.
cp w16-65536.qcow2 lost.qcow2
damage l2-unaligned lost.qcow2 >/dev/null
damage leak lost.qcow2 >/dev/null
cp lost.qcow2 lost-before.qcow2
expect_exit 2 "$RAWTRACK" check -r leaks lost.qcow2
expect_exit 2 "$RAWTRACK" check -r all lost.qcow2
cmp -s lost.qcow2 lost-before.qcow2 || die "repair with a lost table wrote"
rm -f lost.qcow2 lost-before.qcow2

# An L2 table that is also a guest data cluster: its refcount is raised
# and the L1 COPIED flag fixed, but the table (the guest's data) is not
# rewritten.  (qemu-img -r all clears COPIED in it, changing the data.)
cp w16-65536.qcow2 l2d.qcow2
damage l2-as-data l2d.qcow2 >/dev/null
check_agrees l2d.qcow2
assert_eq 2 "$check_status" "an L2 table used as data"
cp l2d.qcow2 l2d-before.qcow2
expect_exit 2 "$RAWTRACK" check -r all l2d.qcow2
expect_ok qemu-img compare -q l2d-before.qcow2 l2d.qcow2
check_agrees l2d.qcow2
rm -f l2d.qcow2 l2d-before.qcow2

# -r leaks on a structure that needs a rebuild writes nothing; -r all
# rebuilds it.
cp w16-65536.qcow2 rl.qcow2
damage uncovered rl.qcow2 >/dev/null
cp rl.qcow2 rl-before.qcow2
expect_exit 2 "$RAWTRACK" check -r leaks rl.qcow2
cmp -s rl.qcow2 rl-before.qcow2 || die "-r leaks wrote a broken structure"
expect_exit 0 "$RAWTRACK" check -r all rl.qcow2
qcheck rl.qcow2
rm -f rl.qcow2 rl-before.qcow2

# The dirty and corrupt bits are cleared by a successful repair, not by a
# plain check, and not while errors remain.
cp lazy.qcow2 flags.qcow2
"$PYTHON" "$patch" set-incompat flags.qcow2 0x3
damage leak flags.qcow2 >/dev/null
expect_exit 3 "$RAWTRACK" check flags.qcow2
assert_eq 3 "$(meta flags.qcow2 'j["incompat"]')" "flags after a plain check"
cp flags.qcow2 flags-bad.qcow2
damage l2-unaligned flags-bad.qcow2 >/dev/null
expect_exit 2 "$RAWTRACK" check -r all flags-bad.qcow2
assert_eq 3 "$(meta flags-bad.qcow2 'j["incompat"]')" "flags with errors left"
expect_exit 0 "$RAWTRACK" check -r leaks flags.qcow2
assert_eq 0 "$(meta flags.qcow2 'j["incompat"]')" "flags after the repair"
qcheck flags.qcow2
rm -f flags.qcow2 flags-bad.qcow2

# The repair output is qemu-img's, line for line (stdout).
for kind in leak l2-copied; do
  cp w16-65536.qcow2 out.qcow2
  damage "$kind" out.qcow2 >/dev/null
  cp out.qcow2 outq.qcow2
  "$RAWTRACK" check -r all out.qcow2 >out-r.txt 2>/dev/null ||
    die "rawtrack check -r all ($kind) failed"
  qemu-img check -r all outq.qcow2 >out-q.txt 2>/dev/null ||
    die "qemu-img check -r all ($kind) failed"
  diff out-q.txt out-r.txt >&2 || die "repair output differs from qemu-img's"
done
rm -f out.qcow2 outq.qcow2 out-r.txt out-q.txt

echo "$progname: OK"
