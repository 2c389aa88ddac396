#!/usr/bin/env bash
# test-remote.sh: containers whose data file is behind an NBD server
# (issue 16), for three servers: `nbdkit memory`, `nbdkit file` and
# `qemu-nbd -f raw`.  For each:
#  - attach URI IMAGE records the URI; info shows it; qemu-img check and
#    qemu-io (with data-file.driver=nbd) agree with the image;
#  - io, cat, check and serve refuse the stored URI without
#    --allow-remote (naming it), and work with it, with
#    RAWTRACK_ALLOW_REMOTE=1, and with --data-file URI;
#  - through serve: nbdcopy in and out, fio with verify, qemu-io; the
#    bitmap marks exactly the writes; what the backing file holds (file,
#    qemu-nbd) is what was written.
# Then: TLS to the data file's server (X.509 and PSK); other protocols
# and URIs in hostile headers refused; faults: a server that is not
# there, that fails requests, that stalls (RAWTRACK_NBD_TIMEOUT), and
# that restarts while serve stays up (requests in flight fail, later ones
# reconnect; tracking state intact).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires nbdkit --version
requires nbdkit memory --dump-plugin
requires nbdkit file --dump-plugin
requires qemu-nbd --version
requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires python3 --version

cd "$tmpdir"
MiB=$((1024 * 1024))
rsock="$tmpdir/remote.sock"
ruri="nbd+unix:///?socket=$rsock"

# remote_start KIND: export a 64 MiB disk on $rsock.
remote_start ()
{
  rm -f "$rsock" remote.pid
  case "$1" in
    memory) nbdkit -U "$rsock" -P "$tmpdir/remote.pid" memory 64M ;;
    file)   truncate -s 64M backing.raw
            nbdkit -U "$rsock" -P "$tmpdir/remote.pid" file backing.raw ;;
    qemu)   truncate -s 64M backing.raw
            qemu-nbd --fork --pid-file="$tmpdir/remote.pid" -f raw -t \
              --cache=none --aio=native -k "$rsock" backing.raw 2>/dev/null ||
            qemu-nbd --fork --pid-file="$tmpdir/remote.pid" -f raw -t \
              -k "$rsock" backing.raw ;;
    *) hard_error "remote_start $1" ;;
  esac
  # (Both daemonize once they listen: this only guards against a hang.)
  wait_until 120 "remote server $1 did not start" \
    eval '[ -s remote.pid ] && [ -S "$rsock" ]'
  rpid="$(cat remote.pid)"
  cleanup_fn kill "$rpid"
}

remote_stop ()
{
  kill "-${1:-TERM}" "$rpid" 2>/dev/null || true
  wait_gone "$rpid" "remote server did not stop"
}

qopts ()
{
  echo "driver=qcow2,file.filename=$1,data-file.driver=nbd,data-file.server.type=unix,data-file.server.path=$rsock"
}

head -c $((8 * MiB)) /dev/urandom >src.raw

for kind in memory file qemu; do
  echo "$progname: --- data file on $kind" >&2
  rm -f img.qcow2 backing.raw
  remote_start "$kind"
  expect_ok "$RAWTRACK" attach "$ruri" img.qcow2
  "$RAWTRACK" info --json img.qcow2 >info.json
  grep -q "\"data-file\": \"$ruri\"" info.json || die "info: URI not recorded"
  expect_ok "$RAWTRACK" bitmap add img.qcow2 b1

  # The stored URI is followed only when allowed.
  for cmd in "io img.qcow2 -c read_0_512" "cat img.qcow2 --length 512" \
             "check img.qcow2" "serve img.qcow2 --run true"; do
    read -r -a args <<<"$cmd"
    args=("${args[@]/read_0_512/read 0 512}")
    "$RAWTRACK" "${args[@]}" >/dev/null 2>err.txt && die "$cmd followed the URI"
    grep -qF "remote data file '$ruri'" err.txt ||
      die "$cmd: the refusal does not name the URI: $(cat err.txt)"
    grep -q -- "--allow-remote" err.txt || die "$cmd: no hint"
  done
  expect_ok "$RAWTRACK" io --allow-remote img.qcow2 -c 'write -P 0x11 0 64k'
  RAWTRACK_ALLOW_REMOTE=1 expect_ok "$RAWTRACK" io img.qcow2 -c 'read -P 0x11 0 64k'
  expect_ok "$RAWTRACK" io --data-file "$ruri" img.qcow2 -c 'read -P 0x11 0 64k'
  expect_ok "$RAWTRACK" check --allow-remote img.qcow2
  # One request larger than the largest NBD request (32 MiB): cut in
  # pieces sent together.
  expect_ok "$RAWTRACK" io --allow-remote img.qcow2 -c 'write -P 0x12 16M 40M' \
    -c 'read -P 0x12 16M 40M' -c 'write -P 0x11 0 64k'
  [ "$("$RAWTRACK" cat --allow-remote img.qcow2 --length 4 | od -An -tx1 | tr -d ' ')" = 11111111 ] ||
    die "cat over NBD"

  # Block status passes through: serve's base:allocation shows the holes
  # the data file's server reports (the disk is sparse but for the
  # writes above), merged the same way.
  nbdinfo --map --json "$ruri" >remote-map.json
  # shellcheck disable=SC2016
  expect_ok "$RAWTRACK" serve img.qcow2 --allow-remote --run '
    nbdinfo --map --json "$uri" >served-map.json'
  python3 - remote-map.json served-map.json <<'EOF' || die "$kind: block status not passed through"
import json, sys
def holes(path):
    out = []
    for e in json.load(open(path)):
        hole = bool(e["type"] & 1)
        end = e["offset"] + e["length"]
        if out and out[-1][2] == hole and out[-1][1] == e["offset"]:
            out[-1][1] = end
        else:
            out.append([e["offset"], end, hole])
    return out
r, s = holes(sys.argv[1]), holes(sys.argv[2])
if r != s or not any(h for _, _, h in s):
    sys.exit("remote %s\nserved %s" % (r, s))
EOF

  # Through serve: nbdcopy, qemu-io, fio with verify.
  expect_ok "$RAWTRACK" bitmap clear img.qcow2 b1
  # shellcheck disable=SC2016
  expect_ok "$RAWTRACK" serve img.qcow2 --allow-remote --run '
    set -e
    nbdcopy --flush --connections=4 src.raw "$uri"
    nbdcopy "$uri" back.raw
    qemu-io -f raw "$uri" -c "write -P 0x22 40M 1M" -c "write -z 44M 1M" \
      -c "discard 46M 1M" -c flush -c "read -P 0x22 40M 1M" \
      -c "read -P 0 44M 1M" >/dev/null'
  cmp -n $((8 * MiB)) src.raw back.raw || die "$kind: nbdcopy read back differs"
  "$RAWTRACK" bitmap dump --json img.qcow2 b1 >dump.json
  python3 - dump.json <<'EOF' || die "$kind: bitmap does not match the writes"
import json, sys
MiB = 1 << 20
d = [(e["start"], e["start"] + e["length"]) for e in json.load(open(sys.argv[1])) if e["dirty"]]
want = [(0, 8 * MiB), (40 * MiB, 41 * MiB), (44 * MiB, 45 * MiB), (46 * MiB, 47 * MiB)]
assert d == want, d
EOF
  if fio --enghelp=nbd >/dev/null 2>&1; then
    # shellcheck disable=SC2016
    expect_ok "$RAWTRACK" serve img.qcow2 --allow-remote --run '
      fio --name=verify --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
        --offset=16M --size=16M --iodepth=16 --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --output=fio.out
      fio --name=seq --ioengine=nbd --uri="$uri" --rw=write --bs=1M \
        --offset=32M --size=8M --iodepth=8 --verify=md5 --do_verify=1 \
        --verify_fatal=1 --output=fio2.out'
    grep -q "err= 0" fio.out || { cat fio.out >&2; die "$kind: fio verify"; }
    grep -q "err= 0" fio2.out || { cat fio2.out >&2; die "$kind: fio 1M verify"; }
  fi
  # QEMU sees the same, given the data file explicitly.
  expect_ok qemu-img check --image-opts "$(qopts img.qcow2)"
  expect_ok qemu-io -r --image-opts "$(qopts img.qcow2)" \
    -c 'read -P 0x22 40M 1M' -c 'read -P 0 44M 1M'
  cmp -n $((8 * MiB)) src.raw <(nbdcopy "$ruri" - ) ||
    die "$kind: the server holds other data"
  if [ "$kind" != memory ]; then
    cmp -n $((8 * MiB)) src.raw backing.raw || die "$kind: backing file differs"
  fi
  expect_ok "$RAWTRACK" check --allow-remote img.qcow2
  remote_stop
done

# ---------------------------------------------------------------------------
# Never another protocol: stored json:, file:, http: names and URIs of
# other transports are refused, even with --allow-remote.
truncate -s 64M local.raw
expect_ok "$RAWTRACK" attach local.raw h.qcow2
# set_data_name IMAGE NAME: rewrite the DATA header extension.
set_data_name ()
{
  python3 - "$1" "$2" <<'EOF'
import struct, sys
path, name = sys.argv[1], sys.argv[2].encode()
f = open(path, "r+b")
h = f.read(4096)
hlen = struct.unpack(">I", h[100:104])[0]
pos, exts = hlen, []
while True:
    t, ln = struct.unpack(">II", h[pos:pos + 8])
    if t == 0:
        break
    exts.append((t, h[pos + 8:pos + 8 + ln]))
    pos += 8 + ((ln + 7) & ~7)
out = b""
for t, d in exts:
    if t == 0x44415441:
        d = name
    out += struct.pack(">II", t, len(d)) + d + bytes(-len(d) % 8)
out += bytes(8)
f.seek(hlen)
f.write(out)
EOF
}
for name in "json:{\"file.driver\":\"nbd\"}" "file:/etc/passwd" \
            "http://example.com/disk" "nbd+vsock:///x" "ssh://h/x"; do
  set_data_name h.qcow2 "$name"
  "$RAWTRACK" info h.qcow2 | grep -qF "data file: $name" ||
    die "could not store '$name'"
  "$RAWTRACK" io --allow-remote h.qcow2 -c 'read 0 512' >/dev/null 2>err.txt &&
    die "opened data file '$name'"
  grep -q "refusing data file name\|not a plain path\|No such file" err.txt ||
    die "'$name': unclear refusal: $(cat err.txt)"
done
# A protocol name given on the command line is refused too (no local
# file of that name is looked for either).
for name in "nbd+vsock:///x" "http://example.com/d" "json:{}"; do
  "$RAWTRACK" io --data-file "$name" h.qcow2 -c 'read 0 512' 2>err.txt &&
    die "--data-file $name opened"
  grep -q "only NBD URIs" err.txt || die "--data-file $name: $(cat err.txt)"
done

# ---------------------------------------------------------------------------
# TLS to the data file's server.
if certtool --version >/dev/null 2>&1 && psktool --help >/dev/null 2>&1; then
  mkdir -p pki
  certtool --generate-privkey --key-type=ecdsa --outfile pki/ca-key.pem 2>/dev/null
  printf 'cn = test CA\nca\ncert_signing_key\nexpiration_days = 30\n' >pki/ca.info
  certtool --generate-self-signed --load-privkey pki/ca-key.pem \
    --template pki/ca.info --outfile pki/ca-cert.pem 2>/dev/null
  certtool --generate-privkey --key-type=ecdsa --outfile pki/server-key.pem 2>/dev/null
  printf 'cn = localhost\ndns_name = localhost\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n' >pki/server.info
  certtool --generate-certificate --load-ca-certificate pki/ca-cert.pem \
    --load-ca-privkey pki/ca-key.pem --load-privkey pki/server-key.pem \
    --template pki/server.info --outfile pki/server-cert.pem 2>/dev/null
  rm -f "$rsock" remote.pid
  nbdkit -U "$rsock" -P "$tmpdir/remote.pid" --tls=require \
    --tls-certificates "$tmpdir/pki" memory 64M
  wait_until 120 "nbdkit did not start" test -s remote.pid
  rpid="$(cat remote.pid)"
  cleanup_fn kill "$rpid"
  turi="nbds+unix:///?socket=$rsock"
  rm -f t.qcow2
  expect_fail "$RAWTRACK" attach "nbd+unix:///?socket=$rsock" t.qcow2
  expect_ok "$RAWTRACK" attach --tls-certificates "$tmpdir/pki" "$turi" t.qcow2
  expect_ok "$RAWTRACK" bitmap add t.qcow2 b1
  # shellcheck disable=SC2016
  expect_ok "$RAWTRACK" serve t.qcow2 --allow-remote \
    --tls-certificates "$tmpdir/pki" --run '
    nbdcopy --flush src.raw "$uri" && nbdcopy "$uri" tback.raw'
  cmp -n $((8 * MiB)) src.raw tback.raw || die "TLS data file: data differs"
  # backup: an image source whose data file is the nbds:// URI (needs
  # --allow-remote), and the nbds:// URI itself as an NBD source.
  "$RAWTRACK" backup create t.qcow2 repo1 >/dev/null 2>err.txt &&
    die "backup followed the stored URI"
  grep -qF "remote data file" err.txt || die "backup refusal: $(cat err.txt)"
  expect_ok "$RAWTRACK" backup create --allow-remote \
    --tls-certificates "$tmpdir/pki" t.qcow2 repo1
  expect_ok "$RAWTRACK" backup restore repo1 restored1.raw
  cmp -n $((8 * MiB)) src.raw restored1.raw || die "backup of the image differs"
  expect_ok "$RAWTRACK" backup create --tls-certificates "$tmpdir/pki" \
    "$turi" repo2
  expect_ok "$RAWTRACK" backup restore repo2 restored2.raw
  cmp -n $((8 * MiB)) src.raw restored2.raw || die "backup of the URI differs"
  expect_fail "$RAWTRACK" backup create "$turi&tls-certificates=$tmpdir/none" repo3
  # The URI's own tls-certificates= works when typed.
  expect_ok "$RAWTRACK" io --data-file "$turi&tls-certificates=$tmpdir/pki" \
    t.qcow2 -c 'read 0 64k'
  remote_stop
  # PSK.
  psktool -u alice -p keys.psk >/dev/null 2>&1
  rm -f "$rsock" remote.pid
  nbdkit -U "$rsock" -P "$tmpdir/remote.pid" --tls=require \
    --tls-psk "$tmpdir/keys.psk" memory 64M
  wait_until 120 "nbdkit did not start" test -s remote.pid
  rpid="$(cat remote.pid)"
  cleanup_fn kill "$rpid"
  rm -f p.qcow2
  expect_ok "$RAWTRACK" attach --tls-psk "$tmpdir/keys.psk" \
    "nbds+unix://alice@/?socket=$rsock" p.qcow2
  expect_ok "$RAWTRACK" io --allow-remote --tls-psk "$tmpdir/keys.psk" \
    p.qcow2 -c 'write -P 0x33 0 1M' -c 'read -P 0x33 0 1M'
  psktool -u alice -p wrong.psk >/dev/null 2>&1
  expect_fail "$RAWTRACK" io --allow-remote --tls-psk "$tmpdir/wrong.psk" \
    p.qcow2 -c 'read 0 512'
  remote_stop
else
  echo "$progname: no certtool/psktool: TLS part skipped" >&2
fi

# ---------------------------------------------------------------------------
# Faults.
truncate -s 64M backing.raw
rm -f f.qcow2
remote_start file
expect_ok "$RAWTRACK" attach "$ruri" f.qcow2
expect_ok "$RAWTRACK" bitmap add f.qcow2 b1
remote_stop
# Not there: a clear error naming the URI, nothing changed.
"$RAWTRACK" io --allow-remote f.qcow2 -c 'write 0 512' 2>err.txt &&
  die "wrote with the server gone"
grep -qF "$ruri" err.txt || die "the error does not name the URI: $(cat err.txt)"
# Erroring: every request fails (nbdkit error filter); the client sees
# EIO, the tracking state stays consistent.
rm -f "$rsock" remote.pid
nbdkit -U "$rsock" -P "$tmpdir/remote.pid" --filter=error file backing.raw \
  error-pwrite-rate=100% error-pwrite=EIO
wait_until 120 "nbdkit did not start" test -s remote.pid
rpid="$(cat remote.pid)"
cleanup_fn kill "$rpid"
"$RAWTRACK" io --allow-remote f.qcow2 -c 'write -P 0x44 1M 64k' >out.txt 2>&1 &&
  die "a failing server's write succeeded"
grep -qi "input/output error" out.txt || die "no EIO: $(cat out.txt)"
# The write was tracked before it was sent.
"$RAWTRACK" bitmap dump f.qcow2 b1 | grep -q '^1048576 ' ||
  die "the failed write is not dirty"
remote_stop
# Stalling: replies delayed past RAWTRACK_NBD_TIMEOUT.
rm -f "$rsock" remote.pid
nbdkit -U "$rsock" -P "$tmpdir/remote.pid" --filter=delay file backing.raw \
  wdelay=30
wait_until 120 "nbdkit did not start" test -s remote.pid
rpid="$(cat remote.pid)"
cleanup_fn kill "$rpid"
start=$SECONDS
RAWTRACK_NBD_TIMEOUT=2 "$RAWTRACK" io --allow-remote f.qcow2 \
  -c 'write -P 0x55 2M 4k' >out.txt 2>&1 && die "a stalled write succeeded"
[ $((SECONDS - start)) -lt 20 ] || die "the stall was not cut short"
grep -qi "timed out" out.txt || die "no timeout message: $(cat out.txt)"
remote_stop KILL   # nbdkit waits for the delayed request otherwise

# Restart under a running serve: requests while the server is down fail
# cleanly, serve stays up, later requests reconnect.
remote_start file
sock="$tmpdir/serve.sock"
rm -f "$sock" serve.pid
"$RAWTRACK" serve f.qcow2 --allow-remote --socket "$sock" --pidfile serve.pid \
  2>serve.log &
spid=$!
cleanup_fn kill "$spid"
# The pid file: the socket file exists between bind and listen.
wait_until 120 "serve did not start" test -s serve.pid
suri="nbd+unix:///?socket=$sock"
expect_ok qemu-io -f raw "$suri" -c 'write -P 0x66 4M 64k'
remote_stop KILL   # (nbdkit would wait for serve's connections to close)
expect_fail qemu-io -f raw "$suri" -c 'write -P 0x67 5M 64k' -c 'read -P 0x67 5M 64k'
kill -0 "$spid" || die "serve died with its data file's server"
remote_start file
expect_ok qemu-io -f raw "$suri" -c 'write -P 0x68 6M 64k' -c 'read -P 0x68 6M 64k' \
  -c 'read -P 0x66 4M 64k'
kill "$spid"
wait "$spid" || die "serve did not exit cleanly after the reconnect"
"$RAWTRACK" bitmap dump --json f.qcow2 b1 >dump.json
python3 - dump.json <<'EOF' || die "bitmap lost writes across the restart"
import json, sys
MiB = 1 << 20
d = [(e["start"], e["start"] + e["length"]) for e in json.load(open(sys.argv[1])) if e["dirty"]]
def cov(lo, hi):
    return any(a <= lo and hi <= b for a, b in d)
for lo in (1 * MiB, 4 * MiB, 5 * MiB, 6 * MiB):
    assert cov(lo, lo + 65536), (lo, d)
EOF
cmp -n 65536 -i $((6 * MiB)):0 backing.raw <(head -c 65536 /dev/zero | tr '\0' '\150') ||
  die "the write after the reconnect is not on the disk"
expect_ok qemu-img check --image-opts "$(qopts f.qcow2)"
remote_stop

echo "$progname: ok"
