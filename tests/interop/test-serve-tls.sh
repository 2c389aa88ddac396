#!/usr/bin/env bash
# test-serve-tls.sh: `rawtrack serve --tls` with real TLS clients.
#
#  - X.509 (certificates made here with GnuTLS certtool): nbdinfo and
#    nbdcopy over nbds+unix:// and nbds:// (TCP, host name checked) with
#    tls-certificates=, qemu-img and qemu-io with --object tls-creds-x509;
#    tracked writes through TLS appear in the dirty bitmap;
#  - PSK (psktool): nbdinfo with tls-psk-file=, qemu-img with
#    tls-creds-psk;
#  - --tls-verify-peer: a client with a certificate of the CA gets in, one
#    without is refused;
#  - refused: a plain client when TLS is required, a client trusting
#    another CA, a wrong PSK, an unknown PSK user, and a raw client that
#    skips STARTTLS (every option ERR_TLS_REQD, EXPORT_NAME disconnects,
#    a STARTTLS with a payload ERR_INVALID, no plaintext after STARTTLS);
#  - --tls=on: plain and TLS clients both get in;
#  - bad TLS options and credentials are refused with a clear message.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires certtool --version
requires psktool --help
requires nbdinfo --version
requires nbdcopy --version
requires qemu-img --version
requires qemu-io --version
requires python3 --version

cd "$tmpdir"
sock="$tmpdir/tls.sock"

# mkpki DIR: a CA and a server and a client certificate signed by it.
mkpki ()
{
  local d="$1"
  mkdir -p "$d"
  certtool --generate-privkey --key-type=ecdsa --outfile "$d/ca-key.pem" 2>/dev/null
  printf 'cn = "%s test CA"\nca\ncert_signing_key\nexpiration_days = 30\n' "$d" >"$d/ca.info"
  certtool --generate-self-signed --load-privkey "$d/ca-key.pem" \
    --template "$d/ca.info" --outfile "$d/ca-cert.pem" 2>/dev/null
  certtool --generate-privkey --key-type=ecdsa --outfile "$d/server-key.pem" 2>/dev/null
  printf 'organization = "rawtrack test"\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n' >"$d/server.info"
  certtool --generate-certificate --load-ca-certificate "$d/ca-cert.pem" \
    --load-ca-privkey "$d/ca-key.pem" --load-privkey "$d/server-key.pem" \
    --template "$d/server.info" --outfile "$d/server-cert.pem" 2>/dev/null
  certtool --generate-privkey --key-type=ecdsa --outfile "$d/client-key.pem" 2>/dev/null
  printf 'organization = "rawtrack test"\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n' >"$d/client.info"
  certtool --generate-certificate --load-ca-certificate "$d/ca-cert.pem" \
    --load-ca-privkey "$d/ca-key.pem" --load-privkey "$d/client-key.pem" \
    --template "$d/client.info" --outfile "$d/client-cert.pem" 2>/dev/null
  [ -s "$d/client-cert.pem" ] || hard_error "certtool failed to make $d"
}
mkpki "$tmpdir/pki"
mkpki "$tmpdir/other"
# A client directory with the CA only (no client certificate).
mkdir -p "$tmpdir/caonly"
cp "$tmpdir/pki/ca-cert.pem" "$tmpdir/caonly/"
psktool -u alice -p "$tmpdir/keys.psk" >/dev/null 2>&1
psktool -u alice -p "$tmpdir/wrong.psk" >/dev/null 2>&1
psktool -u mallory -p "$tmpdir/mallory.psk" >/dev/null 2>&1
mkdir -p "$tmpdir/qpsk"
cp "$tmpdir/keys.psk" "$tmpdir/qpsk/keys.psk"

truncate -s 64M disk.raw
expect_ok "$RAWTRACK" attach disk.raw disk.qcow2
expect_ok "$RAWTRACK" bitmap add disk.qcow2 b1
head -c 4M /dev/urandom >src.raw

# start_server ARGS...: serve disk.qcow2 on $sock in the background.
start_server ()
{
  rm -f "$sock" server.pid
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" --pidfile server.pid \
    "$@" 2>>server.log &
  spid=$!
  cleanup_fn kill "$spid"
  # The pid file is written once the socket listens.
  wait_until 120 "serve $* did not start" \
    eval "[ -s server.pid ] || ! kill -0 $spid"
  [ -s server.pid ] || die "serve $* exited early"
}

stop_server ()
{
  kill "$spid"
  wait "$spid" || die "serve did not exit cleanly"
}

x509="tls-certificates=$tmpdir/pki"
u="nbds+unix:///?socket=$sock"

# ---------------------------------------------------------------------------
# 1. X.509, TLS required.
start_server --tls=require --tls-certificates "$tmpdir/pki"
expect_ok nbdinfo "$u&$x509"
nbdinfo --json "$u&$x509" >info.json
grep -q '"protocol": "newstyle-fixed"' info.json || die "nbdinfo: protocol"
grep -q '"TLS": true' info.json || die "nbdinfo did not report TLS"
# Tracked writes through TLS, then read back.
expect_ok nbdcopy --flush src.raw "$u&$x509"
expect_ok nbdcopy "$u&$x509" back.raw
cmp -n $((4 << 20)) src.raw back.raw || die "data read back over TLS differs"
nbdinfo --map=qemu:dirty-bitmap:b1 --json "$u&$x509" >map.json
python3 - map.json <<'EOF' || die "the bitmap does not show the TLS writes"
import json, sys
m = json.load(open(sys.argv[1]))
dirty = [e for e in m if e["type"] & 1]
assert dirty and dirty[0]["offset"] == 0 and dirty[0]["length"] >= 4 << 20, m
EOF
# QEMU's client with tls-creds-x509 (it checks the server certificate).
qobj="tls-creds-x509,id=tls0,endpoint=client,dir=$tmpdir/pki"
qopts="driver=nbd,server.type=unix,server.path=$sock,tls-creds=tls0,tls-hostname=localhost"
expect_ok qemu-img info --object "$qobj" --image-opts "$qopts"
expect_ok qemu-io --object "$qobj" --image-opts "$qopts" \
  -c 'write -P 0x5a 8M 1M' -c 'read -P 0x5a 8M 1M' -c flush
# qemu-img convert reads the whole disk through TLS.
expect_ok qemu-img convert --object "$qobj" --image-opts "$qopts" -O raw conv.raw
cmp -n $((4 << 20)) src.raw conv.raw || die "qemu-img convert over TLS differs"
# Refused: a plain client, a client trusting another CA (libnbd checks
# the server over TCP only: see part 2; QEMU checks it here).
expect_fail nbdinfo "nbd+unix:///?socket=$sock"
expect_fail qemu-img info --object "tls-creds-x509,id=tls0,endpoint=client,dir=$tmpdir/other" \
  --image-opts "$qopts"
expect_fail qemu-img info "nbd+unix:///?socket=$sock"
# A raw client that does not start TLS.
python3 - "$sock" <<'EOF' || die "raw client checks failed"
import socket, struct, sys
IHAVEOPT, REPMAGIC = 0x49484156454F5054, 0x0003e889045565a9
ERR_INVALID, ERR_TLS_REQD = (1 << 31) | 3, (1 << 31) | 5

def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    g = recv(s, 18)
    assert struct.unpack(">QQH", g)[2] == 3, "greeting"
    s.sendall(struct.pack(">I", 3))
    return s

def recv(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b

def opt(s, o, payload=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, o, len(payload)) + payload)
    m, ro, t, ln = struct.unpack(">QIII", recv(s, 20))
    assert m == REPMAGIC and ro == o, "reply header"
    recv(s, ln)
    return t

s = conn()
go = struct.pack(">I", 0) + struct.pack(">H", 0)
for o, p in ((8, b""), (11, b""), (3, b""), (6, go), (7, go), (99, b"xx"),
             (9, struct.pack(">II", 0, 0)), (10, struct.pack(">II", 0, 0))):
    t = opt(s, o, p)
    assert t == ERR_TLS_REQD, "option %d before TLS: reply 0x%x" % (o, t)
# STARTTLS with a payload is invalid; the connection goes on.
assert opt(s, 5, b"x") == ERR_INVALID, "STARTTLS with payload"
# EXPORT_NAME cannot report an error: the server hangs up.
s.sendall(struct.pack(">QII", IHAVEOPT, 1, 0))
try:
    d = s.recv(1)
    assert d == b"", "EXPORT_NAME before TLS was answered"
except ConnectionResetError:
    pass
s.close()

# After the ACK to STARTTLS only TLS is spoken: plaintext ends it.
s = conn()
assert opt(s, 5) == 1, "STARTTLS ACK"
s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(go)) + go)
try:
    d = s.recv(4096)
    # A TLS alert (content type 21) or nothing; never an option reply.
    assert d == b"" or d[0] == 21, "plaintext after STARTTLS: %r" % d[:8]
except ConnectionResetError:
    pass
s.close()
print("raw client: ok")
EOF
stop_server
# The raw client's plain attempts got no further than the handshake.
grep -q 'EXPORT_NAME without TLS' server.log || die "no log of the plain EXPORT_NAME"

# ---------------------------------------------------------------------------
# 2. TCP: nbds://localhost (the host name is checked against the
# certificate).
port=$((20000 + RANDOM % 20000))
rm -f server.pid
"$RAWTRACK" serve disk.qcow2 --listen "127.0.0.1:$port" --pidfile server.pid \
  --tls=require --tls-certificates "$tmpdir/pki" 2>>server.log &
spid=$!
cleanup_fn kill "$spid"
wait_until 120 "serve --listen did not start" test -s server.pid
expect_ok nbdcopy "nbds://localhost:$port/?$x509" back2.raw
cmp -n $((4 << 20)) src.raw back2.raw || die "TCP TLS read differs"
expect_ok qemu-img info --object "$qobj" \
  --image-opts "driver=nbd,server.type=inet,server.host=localhost,server.port=$port,tls-creds=tls0"
expect_fail nbdinfo "nbd://localhost:$port/"
expect_fail nbdinfo "nbds://localhost:$port/?tls-certificates=$tmpdir/other"
grep -q 'TLS handshake failed' server.log || die "no log of the refused handshake"
stop_server

# ---------------------------------------------------------------------------
# 3. Client certificates.
start_server --tls=require --tls-certificates "$tmpdir/pki" --tls-verify-peer
expect_ok nbdinfo "$u&$x509"
expect_fail nbdinfo "$u&tls-certificates=$tmpdir/caonly"
stop_server
# Without --tls-verify-peer a client without a certificate is fine.
start_server --tls=require --tls-certificates "$tmpdir/pki"
expect_ok nbdinfo "$u&tls-certificates=$tmpdir/caonly"
stop_server

# ---------------------------------------------------------------------------
# 4. PSK.
start_server --tls=require --tls-psk "$tmpdir/keys.psk"
pu="nbds+unix://alice@/?socket=$sock"
expect_ok nbdinfo "$pu&tls-psk-file=$tmpdir/keys.psk"
expect_ok nbdcopy "$pu&tls-psk-file=$tmpdir/keys.psk" back3.raw
cmp -n $((4 << 20)) src.raw back3.raw || die "PSK read differs"
expect_ok qemu-img info \
  --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qpsk,username=alice" \
  --image-opts "driver=nbd,server.type=unix,server.path=$sock,tls-creds=tls0"
expect_fail nbdinfo "$pu&tls-psk-file=$tmpdir/wrong.psk"
expect_fail nbdinfo "nbds+unix://mallory@/?socket=$sock&tls-psk-file=$tmpdir/mallory.psk"
expect_fail nbdinfo "nbd+unix:///?socket=$sock"
stop_server

# ---------------------------------------------------------------------------
# 5. --tls=on: both kinds of client.
start_server --tls=on --tls-certificates "$tmpdir/pki"
expect_ok nbdinfo "nbd+unix:///?socket=$sock"
expect_ok nbdinfo "$u&$x509"
nbdinfo --json "nbd+unix:///?socket=$sock" >plain.json
grep -q '"TLS": false' plain.json || die "plain client reported TLS"
stop_server
# --tls=off (the default) refuses STARTTLS: a TLS client cannot connect.
start_server
expect_fail nbdinfo "$u&$x509"
stop_server

# ---------------------------------------------------------------------------
# 6. Bad options.
expect_fail "$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=on
expect_fail "$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=maybe
expect_fail "$RAWTRACK" serve disk.qcow2 --socket "$sock" \
  --tls-certificates "$tmpdir/pki" --tls-verify-peer
# Credentials without --tls are for an nbds:// data file only: the
# export itself still refuses STARTTLS.
start_server --tls-certificates "$tmpdir/pki"
expect_fail nbdinfo "$u&$x509"
expect_ok nbdinfo "nbd+unix:///?socket=$sock"
stop_server
expect_fail "$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=on \
  --tls-psk keys.psk --tls-certificates pki
expect_fail "$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=on \
  --tls-psk keys.psk --tls-verify-peer
"$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=require \
  --tls-certificates "$tmpdir/nonexistent" 2>err.txt && die "missing dir accepted"
grep -q "nonexistent" err.txt || die "error does not name the directory: $(cat err.txt)"
mkdir -p badpki
echo junk >badpki/server-cert.pem
echo junk >badpki/server-key.pem
"$RAWTRACK" serve disk.qcow2 --socket "$sock" --tls=require \
  --tls-certificates badpki 2>err.txt && die "bad certificates accepted"
grep -q "server-cert.pem" err.txt || die "error does not name the file: $(cat err.txt)"

qcheck disk.qcow2
echo "$progname: ok"
