#!/usr/bin/env bash
# test-serve-fds.sh: `serve` and file descriptors (issue #14 item 9).
#
#  1. --connections against RLIMIT_NOFILE at start: with a hard limit too
#     low for one socket per connection, serve refuses and names both
#     numbers; with a low soft limit under a higher hard one, the soft
#     limit is raised; with room for the sockets but not for a splice pipe
#     per worker, serve says so, serves, and a large write still works.
#  2. Descriptors run out while serving (the limit lowered under the
#     running server with prlimit, every descriptor taken by clients that
#     hold their connections): many clients at once must not make the
#     accept loop spin - its CPU time over the episode stays small and its
#     log has a bounded number of lines - and once the holding clients go,
#     the waiting clients and a new one are served.
#
# FDS_CLIENTS=N sets how many clients wait during the episode (default 24).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires nbdinfo --version
requires prlimit --version
requires "$PYTHON" -c 'import nbd'

cd "$tmpdir"
truncate -s 64M disk.raw
"$RAWTRACK" attach disk.raw disk.qcow2 >/dev/null
"$RAWTRACK" bitmap add disk.qcow2 b0
sock="$tmpdir/nbd.sock"
uri="nbd+unix:///?socket=$sock"
clients=${FDS_CLIENTS:-24}

# serve_bg NAME ARGS...: serve disk.qcow2 on $sock in the background, its
# stderr in NAME.err; sets pid once it answers.
serve_bg ()
{
  local name="$1"
  shift
  rm -f "$sock"
  "$RAWTRACK" serve disk.qcow2 --socket "$sock" "$@" 2>"$name.err" &
  pid=$!
  cleanup_fn kill "$pid"
  wait_until 120 "serve $name did not start" nbd_ready "$sock"
}

stop_serve ()
{
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# cpu_ticks PID: user + system time of PID, in clock ticks.
cpu_ticks ()
{
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# 1a. A hard limit below one descriptor per connection: refused at start.
st=0
(ulimit -n 40; exec "$RAWTRACK" serve disk.qcow2 --socket "$sock" \
   --connections 64) 2>refuse.err || st=$?
cat refuse.err >&2
assert_eq 1 "$st" "exit status of serve --connections 64 under ulimit -n 40"
grep -q -- "--connections 64 needs about [0-9]* file descriptors" refuse.err ||
  die "the refusal does not say how many descriptors are needed"
grep -q "the limit is 40 (hard limit 40)" refuse.err ||
  die "the refusal does not name the limits"

# 1b. A low soft limit under a high hard one is raised.
(ulimit -Sn 60; ulimit -Hn 4000; exec "$RAWTRACK" serve disk.qcow2 \
   --socket "$sock" --connections 64 --threads 4) 2>raise.err &
pid=$!
cleanup_fn kill "$pid"
wait_until 120 "serve under ulimit -Sn 60 did not start" nbd_ready "$sock"
soft=$(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits")
[ "$soft" -ge $((64 * 9)) ] ||
  die "soft descriptor limit $soft not raised for 64 connections x 4 workers"
assert_eq $((64 << 20)) "$(nbdinfo --size "$uri")" "size through the raised server"
stop_serve

# 1c. Room for the sockets, not for the pipes: said once, still served,
#     and a large (spliced-size) write lands.
(ulimit -n 120; exec "$RAWTRACK" serve disk.qcow2 --socket "$sock" \
   --connections 64 --threads 4) 2>nopipe.err &
pid=$!
cleanup_fn kill "$pid"
wait_until 120 "serve under ulimit -n 120 did not start" nbd_ready "$sock"
grep -q "is below the [0-9]* that --connections 64 with --threads 4 needs" \
  nopipe.err || die "serve does not say the pipes do not fit"
"$PYTHON" - "$uri" <<'EOF'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
buf = b"\x5a" * (1 << 20)
h.pwrite(buf, 8 << 20)
h.flush()
assert h.pread(1 << 20, 8 << 20) == buf, "large write not read back"
h.shutdown()
EOF
stop_serve
cmp -n $((1 << 20)) -i $((8 << 20)):0 disk.raw <(head -c $((1 << 20)) \
  /dev/zero | tr '\0' '\132') || die "the large write is not in the raw disk"

# 2. Descriptors run out while serving.
serve_bg episode -r --connections 64 --threads 1
# Three clients hold a connection each until release exists.
"$PYTHON" - "$uri" "$tmpdir/release" >holders.out <<'EOF' &
import nbd, os, sys, time
hs = []
for i in range(3):
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    hs.append(h)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
for h in hs:
    h.shutdown()
EOF
holders=$!
cleanup_fn kill "$holders"
wait_until 60 "the holding clients did not connect" grep -q ready holders.out
# Every descriptor the server has is taken: the limit is what is open.
nfds=$(ls "/proc/$pid/fd" | wc -l)
prlimit --pid "$pid" --nofile="$nfds:$nfds"
lines0=$(wc -l <episode.err)
t0=$(cpu_ticks "$pid")
cpids=()
for (( i = 0; i < clients; i++ )); do
  timeout 60 nbdinfo --size "$uri" >"client$i.out" 2>"client$i.err" &
  cpids+=("$!")
done
sleep 3
t1=$(cpu_ticks "$pid")
lines1=$(wc -l <episode.err)
echo "episode: $((t1 - t0)) ticks of serve CPU in 3 s, $((lines1 - lines0))" \
  "log lines, $clients clients waiting" >&2
[ $((t1 - t0)) -le 30 ] ||
  die "serve used $((t1 - t0)) clock ticks in 3 s while out of descriptors"
[ $((lines1 - lines0)) -le 4 ] ||
  die "serve logged $((lines1 - lines0)) lines while out of descriptors"
grep -q "new clients wait until descriptors are freed" episode.err ||
  die "serve did not log running out of descriptors"
kill -0 "$pid" || die "serve died out of descriptors"
# Holders go: every waiting client is served, then a new one.
touch release
wait "$holders" || die "the holding clients failed"
for (( i = 0; i < clients; i++ )); do
  wait "${cpids[$i]}" || die "waiting client $i was not served: $(cat "client$i.err")"
  assert_eq $((64 << 20)) "$(cat "client$i.out")" "size seen by client $i"
done
assert_eq $((64 << 20)) "$(timeout 60 nbdinfo --size "$uri")" \
  "size seen by a new client"
grep -q "accepting connections again" episode.err ||
  die "serve did not log the end of the episode"
cat episode.err >&2
# Running out again as each waiting client was served is not news.
[ "$(wc -l <episode.err)" -le 4 ] ||
  die "serve logged $(wc -l <episode.err) lines for one episode"
stop_serve
