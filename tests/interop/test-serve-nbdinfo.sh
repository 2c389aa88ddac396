#!/usr/bin/env bash
# test-serve-nbdinfo.sh: `rawtrack serve` offers the same export, contexts
# and extents as `qemu-nbd -A -B NAME...` on the same image.
#
#  - nbdinfo --list --json: size, contexts, flags, block sizes, name and
#    description;
#  - nbdinfo --map --json for base:allocation, qemu:allocation-depth and
#    every qemu:dirty-bitmap:NAME, on a standard qcow2 image, an attached
#    sparse raw disk and an image qemu-img created with data_file_raw
#    (for external data files only the ZERO bit of base:allocation is
#    compared: librawtrack reports the data file's own holes as holes,
#    qemu reports them as allocated zeros);
#  - qemu-img map with x-dirty-bitmap (qemu's REQ_ONE walk) agrees;
#  - qemu-img compare over NBD against the image;
#  - captive modes: --run and `nbdinfo -- [ rawtrack serve ... ]` (socket
#    activation), export names (NAME and "" both work, others do not);
#  - --bitmap restricts the bitmap contexts; unknown bitmaps are refused;
#  - the dirty bitmap context shows writes made through the server at once.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires python3 --version
requires qemu-img bitmap --help

cd "$tmpdir"
MiB=$((1024 * 1024))
cmpmap="$interop_dir/nbd-compare-map.py"

# qemu_serve IMAGE SOCK ARGS...: start qemu-nbd (read-only, allocation
# depth) in the background; stopped at exit.
qemu_serve ()
{
  local img="$1" sock="$2"; shift 2
  rm -f "$sock" qemu-nbd.pid
  qemu-nbd --fork --pid-file="$tmpdir/qemu-nbd.pid" -t -r -f qcow2 -A \
    -k "$sock" "$@" "$img" || die "qemu-nbd $img failed"
  qpid="$(cat qemu-nbd.pid)"
  cleanup_fn kill "$qpid"
}

qemu_stop ()
{
  kill "$qpid" 2>/dev/null || true
  wait_gone "$qpid" "qemu-nbd did not exit"
}

# bitmaps IMAGE: the bitmap names of IMAGE, one per line.
bitmaps ()
{
  qemu-img info -f qcow2 --output=json "$1" >bm-info.json
  python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
for b in j.get("format-specific", {}).get("data", {}).get("bitmaps", []):
    print(b["name"])' bm-info.json
}

# compare_image IMAGE ZERO_ONLY: every context, ours vs qemu-nbd's.
compare_image ()
{
  local img="$1" zero_only="$2" size ctx b mask
  local qsock="$tmpdir/q.sock" bargs=() ctxs=(base:allocation qemu:allocation-depth)
  size="$(qemu-img info -f qcow2 --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')"
  while read -r b; do
    [ -n "$b" ] || continue
    bargs+=(-B "$b")
    ctxs+=("qemu:dirty-bitmap:$b")
  done < <(bitmaps "$img")

  # qemu-nbd first, then rawtrack, never both on one image at once.
  qemu_serve "$img" "$qsock" "${bargs[@]}"
  nbdinfo --list --json "nbd+unix:///?socket=$qsock" >list-q.json
  for ctx in "${ctxs[@]}"; do
    nbdinfo --map="$ctx" --json "nbd+unix:///?socket=$qsock" >"map-q-${ctx//[:\/]/_}.json"
    if [[ "$ctx" == qemu:dirty-bitmap:* ]]; then
      qemu-img map --output=json --image-opts \
        "driver=nbd,server.type=unix,server.path=$qsock,x-dirty-bitmap=$ctx" \
        >"xmap-q-${ctx//[:\/]/_}.json"
    fi
  done
  qemu_stop

  # shellcheck disable=SC2016
  expect_ok "$RAWTRACK" serve -r "$img" --run '
    set -e
    nbdinfo --list --json "$uri" >list-r.json
    for ctx in '"${ctxs[*]}"'; do
      f=$(echo "$ctx" | tr ":/" "__")
      nbdinfo --map="$ctx" --json "$uri" >"map-r-$f.json"
      case "$ctx" in qemu:dirty-bitmap:*)
        qemu-img map --output=json --image-opts \
          "driver=nbd,server.type=unix,server.path=$unixsocket,x-dirty-bitmap=$ctx" \
          >"xmap-r-$f.json" ;;
      esac
    done
    qemu-img compare -f qcow2 -F raw "'"$img"'" "$uri"
  '

  python3 - list-r.json list-q.json <<'EOF' || die "nbdinfo --list differs for $img"
import json, sys
r = json.load(open(sys.argv[1]))["exports"][0]
q = json.load(open(sys.argv[2]))["exports"][0]
for k in ("export-size", "is_read_only", "can_flush", "can_fua", "can_cache",
          "can_df", "block_size_minimum", "block_size_preferred",
          "block_size_maximum"):
    assert r[k] == q[k], (k, r[k], q[k])
assert sorted(r["contexts"]) == sorted(q["contexts"]), (r["contexts"], q["contexts"])
assert r["can_multi_conn"] is True
EOF
  for ctx in "${ctxs[@]}"; do
    f="${ctx//[:\/]/_}"
    mask=0xffffffff
    if [ "$ctx" = base:allocation ] && [ "$zero_only" = yes ]; then
      mask=2
    fi
    python3 "$cmpmap" --mask "$mask" --size "$size" "map-r-$f.json" "map-q-$f.json" ||
      die "$img: nbdinfo --map=$ctx differs from qemu-nbd"
    if [[ "$ctx" == qemu:dirty-bitmap:* ]]; then
      assert_same_file "xmap-r-$f.json" "xmap-q-$f.json"
    fi
  done
  echo "$progname: $img: ${#ctxs[@]} contexts agree with qemu-nbd" >&2
}

# ---------------------------------------------------------------------------
# 1. A standard qcow2 image (64 KiB clusters, cluster-aligned writes), an
#    enabled and a disabled bitmap and one with a fine granularity.
qemu-img create -q -f qcow2 std.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' std.qcow2 >/dev/null
qemu-img bitmap --add std.qcow2 bm0
qemu-img bitmap --add --disable std.qcow2 bmoff
qemu-img bitmap --add -g 4096 std.qcow2 fine
qemu-io -f qcow2 -c 'write -P 0xbb 4M 64k' -c 'write -z 8M 1M' \
  -c 'write -P 0xcc 63M 64k' -c 'write -P 0xdd 20M 4k' \
  -c 'write -P 0xee 33M 1M' std.qcow2 >/dev/null
qemu-img bitmap --disable std.qcow2 fine
# (The rest of the cluster at 20M is written too: qemu reports the image
# file's own holes inside a data cluster as zero, librawtrack does not
# look inside allocated clusters of the image file.)
qemu-io -f qcow2 -c 'write -P 0x11 40M 128k' -c 'write -P 0xde 20484k 60k' \
  std.qcow2 >/dev/null
compare_image std.qcow2 no

# 2. An attached sparse raw disk (raw external data), bitmaps dirtied by
#    qemu-io through the qcow2 layer.
truncate -s 64M disk.raw
write_pattern disk.raw 0 $MiB 0x21
write_pattern disk.raw $((10 * MiB)) 65536 0x22
write_pattern disk.raw $((64 * MiB - 4096)) 4096 0x23
expect_ok "$RAWTRACK" attach disk.raw att.qcow2 --cluster-size 65536
qemu-img bitmap --add att.qcow2 b1
qemu-img bitmap --add -g 65536 att.qcow2 b2
qemu-io -f qcow2 -c 'write -P 0x33 20M 128k' -c 'write -z 30M 1M' \
  -c 'write -P 0x34 50M 512' att.qcow2 >/dev/null
compare_image att.qcow2 yes

# 3. qemu-img create with data_file_raw=on.
qemu-img create -q -f qcow2 -o data_file=dfr.raw,data_file_raw=on dfr.qcow2 32M
qemu-img bitmap --add dfr.qcow2 live
qemu-io -f qcow2 -c 'write -P 0x55 1M 2M' -c 'write -P 0x56 31M 1M' dfr.qcow2 >/dev/null
compare_image dfr.qcow2 yes

# ---------------------------------------------------------------------------
# 4. Captive modes and names.
nbdinfo --list --json -- [ "$RAWTRACK" serve -r att.qcow2 -e vda -D "test export" ] >act.json ||
  die "socket activation (nbdinfo -- [ ... ]) failed"
assert_eq vda "$(json_get act.json 'j["exports"][0]["export-name"]')" "export name"
assert_eq "test export" "$(json_get act.json 'j["exports"][0]["description"]')" "description"

# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve -r att.qcow2 -e vda --run '
  set -e
  case "$uri" in nbd+unix:///vda\?socket=/*) ;; *) echo "bad uri $uri"; exit 1;; esac
  nbdinfo --size "$uri" >/dev/null
  nbdinfo --size "nbd+unix:///?socket=$unixsocket" >/dev/null
  if nbdinfo --size "nbd+unix:///other?socket=$unixsocket" 2>/dev/null; then
    echo "unknown export accepted"; exit 1
  fi
  qemu-io -r -f raw -c "read -P 0x21 0 1M" "$nbd" >/dev/null
'

# --run exit status and TCP on loopback.
expect_exit 3 "$RAWTRACK" serve -r att.qcow2 --run 'exit 3'
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve -r att.qcow2 --listen=127.0.0.1:0 --run '
  case "$uri" in nbd://127.0.0.1:*) ;; *) echo "bad uri $uri"; exit 1;; esac
  nbdinfo --size "$uri"'

# --bitmap restricts; unknown bitmaps are refused.
nbdinfo --list --json -- [ "$RAWTRACK" serve -r att.qcow2 --bitmap b2 ] >only.json
python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["exports"][0]["contexts"]
assert sorted(c) == ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b2"], c
' only.json || die "--bitmap b2 did not restrict the contexts"
expect_exit 1 "$RAWTRACK" serve -r att.qcow2 --bitmap nope --run true
expect_exit 1 "$RAWTRACK" serve att.qcow2
expect_exit 1 "$RAWTRACK" serve missing.qcow2 --run true

# ---------------------------------------------------------------------------
# 5. Live bitmaps: writes through the server show up in the bitmap context
#    at once, exactly (granularity-rounded), and stay after close.
cp att.qcow2 live.qcow2
cp disk.raw live.raw
# shellcheck disable=SC2016
expect_ok "$RAWTRACK" serve live.qcow2 --data-file live.raw --run '
  set -e
  nbdinfo --map=qemu:dirty-bitmap:b1 --json "$uri" >live-before.json
  qemu-io -f raw -c "write -P 0x44 40M 64k" -c "write -z 41M 1M" -c "write -P 0x45 60M 512" "$uri" >/dev/null
  nbdinfo --map=qemu:dirty-bitmap:b1 --json "$uri" >live-after.json
'
python3 - live-before.json live-after.json <<'EOF' || die "live bitmap did not show the writes"
import json, sys
def dirty(p):
    return [(e["offset"], e["length"]) for e in json.load(open(p)) if e["type"] == 1]
before, after = dirty(sys.argv[1]), dirty(sys.argv[2])
MiB = 1 << 20
want = sorted(before + [(40 * MiB, 65536), (41 * MiB, MiB), (60 * MiB, 65536)])
# merge adjacent
m = []
for o, l in want:
    if m and m[-1][0] + m[-1][1] == o:
        m[-1] = (m[-1][0], m[-1][1] + l)
    else:
        m.append((o, l))
assert after == m, (after, m)
EOF
qcheck live.qcow2
qemu-img info -f qcow2 --output=json live.qcow2 >/dev/null
# After close, qemu-nbd -B sees the same bits.
qemu_serve live.qcow2 "$tmpdir/q2.sock" -B b1
nbdinfo --map=qemu:dirty-bitmap:b1 --json "nbd+unix:///?socket=$tmpdir/q2.sock" >live-q.json
qemu_stop
python3 "$cmpmap" live-after.json live-q.json || die "bitmap after close differs"

echo "$progname: OK"
