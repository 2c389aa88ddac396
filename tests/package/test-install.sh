#!/usr/bin/env bash
# `meson install` into a DESTDIR gives a usable package:
#  - the program, librawtrack.so.0 (versioned, SONAME) and librawtrack.a,
#    the headers and rawtrack.pc;
#  - a small C program built against the installed copy with
#    `pkg-config --cflags --libs rawtrack` (PKG_CONFIG_SYSROOT_DIR into the
#    DESTDIR) runs (LD_LIBRARY_PATH) and reads an image qemu-img made,
#    linked against the installed shared library; and statically, against
#    librawtrack.a with `pkg-config --static`;
#  - a man page per command `rawtrack --help` lists, each rendered by
#    `man -l` without warnings and naming every option of the help;
#  - the bash completion completes commands, subcommands, options and
#    option values;
#  - the systemd units pass `systemd-analyze verify`, and the service's own
#    ExecStart, run under systemd-socket-activate on the socket unit's
#    path, serves the image to nbdinfo (real socket activation).
# Paths come from meson (tests/package/meson.build).
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"
requires meson --version
requires pkg-config --version
requires cc --version
requires qemu-img --version
requires "$PYTHON" --version
: "${PREFIX:?}" "${BINDIR:?}" "${LIBDIR:?}" "${INCLUDEDIR:?}" "${MANDIR:?}"
: "${COMPLETIONS_DIR:?}" "${UNIT_DIR:?}"
cd "$tmpdir"
# meson points LD_LIBRARY_PATH at the build tree; the installed copy must
# be found without it.
unset LD_LIBRARY_PATH

root="$tmpdir/root"
meson install -C "$BUILDDIR" --destdir "$root" --no-rebuild --quiet \
  >install.log 2>&1 || { cat install.log >&2; die "meson install failed"; }

# ---- files in place ------------------------------------------------------
for f in "$BINDIR/rawtrack" "$LIBDIR/librawtrack.so.0.1.0" \
         "$LIBDIR/librawtrack.a" "$LIBDIR/pkgconfig/rawtrack.pc" \
         "$INCLUDEDIR/rawtrack/rawtrack.h" \
         "$INCLUDEDIR/rawtrack/rawtrack-io.h" \
         "$INCLUDEDIR/rawtrack/rawtrack-bitmap.h" \
         "$COMPLETIONS_DIR/rawtrack" \
         "$UNIT_DIR/rawtrack-serve@.service" \
         "$UNIT_DIR/rawtrack-serve@.socket" \
         "$MANDIR/man1/rawtrack.1"; do
  [ -f "$root$f" ] || die "not installed: $f"
done
assert_eq librawtrack.so.0.1.0 "$(readlink "$root$LIBDIR/librawtrack.so.0")" \
  "librawtrack.so.0 link"
assert_eq librawtrack.so.0 "$(readlink "$root$LIBDIR/librawtrack.so")" \
  "librawtrack.so link"
# Never the test shims, never the internal libraries.
# (Outputs are captured before grep: with pipefail, grep -q closing the
# pipe early would fail the pipeline.)
internal=$(find "$root" -name '*shims*' -o -name '*internal*' -o -name '*core*')
[ -z "$internal" ] || die "internal libraries were installed: $internal"
"$root$BINDIR/rawtrack" --version >/dev/null || die "installed rawtrack does not run"

# ---- a program built against the installed library -----------------------
cat >prog.c <<'C'
#include <stdio.h>
#include <inttypes.h>
#include <rawtrack/rawtrack.h>
#include <rawtrack/rawtrack-bitmap.h>

int
main (int argc, char **argv)
{
  struct rawtrack_image *img;
  uint64_t dirty;
  int i;

  if (argc != 2)
    return 2;
  img = rawtrack_image_open (argv[1], RAWTRACK_OPEN_NO_DATA_FILE, NULL);
  if (!img) {
    fprintf (stderr, "open: %s\n", rawtrack_get_error ());
    return 1;
  }
  printf ("version %s size %" PRIu64 "\n", rawtrack_version (),
          rawtrack_image_virtual_size (img));
  for (i = 0; i < rawtrack_image_bitmap_count (img); i++) {
    const char *name = rawtrack_image_bitmap_name (img, i);
    if (rawtrack_bitmap_dirty_bytes (img, name, &dirty) == -1) {
      fprintf (stderr, "%s: %s\n", name, rawtrack_get_error ());
      return 1;
    }
    printf ("bitmap %s dirty %" PRIu64 "\n", name, dirty);
  }
  return rawtrack_image_close (img) == 0 ? 0 : 1;
}
C
qemu-img create -q -f qcow2 d.qcow2 64M
qemu-img bitmap --add d.qcow2 b1
qemu-io -f qcow2 -c 'write 1M 128k' d.qcow2 >/dev/null
cat >want.txt <<'W'
version 0.1.0 size 67108864
bitmap b1 dirty 131072
W

export PKG_CONFIG_PATH="$root$LIBDIR/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$root"
flags=$(pkg-config --cflags --libs rawtrack) ||
  die "pkg-config --cflags --libs rawtrack failed"
echo "pkg-config: $flags" >&2
case "$flags" in
  *"-I$root$INCLUDEDIR"*"-L$root$LIBDIR"*|*"-L$root$LIBDIR"*"-I$root$INCLUDEDIR"*) ;;
  *) die "pkg-config flags do not point into the DESTDIR: $flags" ;;
esac
# shellcheck disable=SC2086
cc -Wall -Werror -o prog prog.c $flags || die "building against the installed library failed"
LD_LIBRARY_PATH="$root$LIBDIR" ./prog d.qcow2 >got.txt || die "prog failed"
assert_same_file want.txt got.txt
# It uses the installed librawtrack.so.0, not another copy.
deps=$(LD_LIBRARY_PATH="$root$LIBDIR" ldd ./prog)
grep -qF "librawtrack.so.0 => $root$LIBDIR/librawtrack.so.0" <<<"$deps" ||
  die "prog is not linked against the installed librawtrack.so.0: $deps"
# Statically: librawtrack.a plus pkg-config --static's private libraries.
sflags=$(pkg-config --cflags --static --libs-only-other --libs-only-l rawtrack | sed 's/-lrawtrack//')
# shellcheck disable=SC2086
cc -Wall -Werror -o prog-static prog.c -I"$root$INCLUDEDIR" \
  "$root$LIBDIR/librawtrack.a" $sflags || die "static link against librawtrack.a failed"
deps=$(ldd ./prog-static)
if grep -q librawtrack <<<"$deps"; then
  die "prog-static still needs librawtrack.so: $deps"
fi
./prog-static d.qcow2 >got.txt || die "prog-static failed"
assert_same_file want.txt got.txt

# ---- man pages -----------------------------------------------------------
if command -v man >/dev/null; then
  cmds=$("$RAWTRACK" --help | sed -n '/^Commands:/,/^$/p' | awk 'NF > 1 && $1 != "help" { print $1 }')
  [ -n "$cmds" ] || hard_error "no commands in rawtrack --help"
  for page in rawtrack $(printf 'rawtrack-%s\n' $cmds); do
    f="$root$MANDIR/man1/$page.1"
    [ -f "$f" ] || die "no man page $page(1)"
    MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$f" >"$page.txt" 2>"$page.err" ||
      die "man -l $page.1 failed: $(cat "$page.err")"
    [ ! -s "$page.err" ] || die "man -l $page.1 warns: $(cat "$page.err")"
    grep -q "^NAME" "$page.txt" && grep -q "^SYNOPSIS" "$page.txt" ||
      die "$page(1) lacks NAME or SYNOPSIS"
  done
  # Every long option of every help is in its page (one source).
  for c in $cmds; do
    helps=$("$RAWTRACK" "$c" --help)
    for s in $("$RAWTRACK" "$c" --help | sed -n '/^Subcommands:/,/^$/p' | awk 'NF > 1 { print $1 }'); do
      helps+=$'\n'$("$RAWTRACK" "$c" "$s" --help)
    done
    for o in $(grep -oE '^ {1,8}-[^ ].*' <<<"$helps" | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u); do
      grep -qF -- "$o" "rawtrack-$c.txt" ||
        die "rawtrack-$c(1) does not mention $o from its --help"
    done
  done
  grep -q "BITMAP MAP" rawtrack-bitmap.txt || die "rawtrack-bitmap(1) lacks 'bitmap map'"
else
  echo "$progname: man not installed: man pages not rendered" >&2
fi

# ---- bash completion -----------------------------------------------------
# complete WORDS...: the completions offered for the last word.
complete_words ()
{
  bash -c '
    source "$1"; shift
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
    _rawtrack
    [ ${#COMPREPLY[@]} -eq 0 ] || printf "%s\n" "${COMPREPLY[@]}"' _ "$root$COMPLETIONS_DIR/rawtrack" "$@" |
    LC_ALL=C sort | tr "\n" " "
}
expect_completion ()
{
  local want="$1"; shift
  local got
  got=$(complete_words "$@")
  [ "$got" = "$want" ] || die "completing '$*': expected '$want', got '$got'"
}
expect_completion "bitmap " rawtrack bi
expect_completion "cat check create " rawtrack c
expect_completion "map merge " rawtrack bitmap m
expect_completion "--svg " rawtrack bitmap map d.qcow2 --s
expect_completion "--width " rawtrack bitmap map --wi
expect_completion "--tls --tls-certificates --tls-psk --tls-verify-peer " rawtrack serve --tl
expect_completion "off on " rawtrack serve --tls o
expect_completion "--tls=off --tls=on --tls=require " rawtrack serve --tls=
expect_completion "--tls=require " rawtrack serve --tls=r
expect_completion "serve " rawtrack help se
expect_completion "d.qcow2 " rawtrack info d.q
expect_completion "want.txt " rawtrack bitmap map --svg wa
expect_completion "" rawtrack bitmap map --width ''

# ---- systemd units -------------------------------------------------------
svc="$root$UNIT_DIR/rawtrack-serve@.service"
sock="$root$UNIT_DIR/rawtrack-serve@.socket"
grep -q "^ExecStart=$BINDIR/rawtrack serve " "$svc" ||
  die "the service does not run $BINDIR/rawtrack: $(grep ExecStart "$svc")"
if command -v systemd-analyze >/dev/null; then
  # Verify copies whose paths point into the DESTDIR (the binary must
  # exist for verify).
  mkdir units
  sed "s|$BINDIR/rawtrack|$root$BINDIR/rawtrack|" "$svc" >"units/rawtrack-serve@.service"
  cp "$sock" units/
  ln -s "rawtrack-serve@.service" "units/rawtrack-serve@test.service"
  ln -s "rawtrack-serve@.socket" "units/rawtrack-serve@test.socket"
  SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
    units/rawtrack-serve@test.socket units/rawtrack-serve@test.service \
    >verify.txt 2>&1 || { cat verify.txt >&2; die "systemd-analyze verify failed"; }
  complaints=$(grep -v "Failed to .* /etc/rawtrack\|EnvironmentFile\|test.conf" verify.txt || true)
  if grep -qi "rawtrack-serve" <<<"$complaints"; then
    cat verify.txt >&2
    die "systemd-analyze verify complains about the units"
  fi
else
  echo "$progname: systemd-analyze not installed: units not verified" >&2
fi

if command -v systemd-socket-activate >/dev/null && command -v nbdinfo >/dev/null; then
  # The socket unit's path for the instance, moved into the tmpdir; the
  # service's ExecStart with its EnvironmentFile's variables.
  listen=$(sed -n 's/^ListenStream=//p' "$sock")
  [ "$listen" = "/run/rawtrack/%i.sock" ] || die "unexpected ListenStream=$listen"
  exec_start=$(sed -n 's/^ExecStart=//p' "$svc")
  IMAGE="$tmpdir/d.qcow2"
  SERVE_OPTIONS="--read-only --bitmap b1"
  cmd=${exec_start//"$BINDIR/rawtrack"/"$root$BINDIR/rawtrack"}
  cmd=${cmd//'${IMAGE}'/"$IMAGE"}
  cmd=${cmd//'$SERVE_OPTIONS'/"$SERVE_OPTIONS"}
  echo "socket activation: $cmd" >&2
  # shellcheck disable=SC2086
  systemd-socket-activate -l "$tmpdir/test.sock" $cmd >activate.log 2>&1 &
  act=$!
  cleanup_fn kill "$act"
  wait_until 120 "systemd-socket-activate made no socket" test -S test.sock
  nbdinfo --json "nbd+unix:///?socket=$tmpdir/test.sock" >info.json ||
    { cat activate.log >&2; die "nbdinfo through the socket-activated server failed"; }
  nbdinfo --map=qemu:dirty-bitmap:b1 "nbd+unix:///?socket=$tmpdir/test.sock" >map.txt ||
    die "nbdinfo --map through the socket-activated server failed"
  "$PYTHON" - info.json <<'PY' || die "nbdinfo saw the wrong export"
import json, sys
d = json.load(open(sys.argv[1]))
e = d["exports"][0]
assert e["export-size"] == 64 << 20, e["export-size"]
assert e["is_read_only"] is True, e
assert "qemu:dirty-bitmap:b1" in e["contexts"], e["contexts"]
PY
  grep -qE '^ +1048576 +131072 +1 +dirty' map.txt ||
    die "the dirty map through socket activation is wrong: $(cat map.txt)"
  kill "$act"; wait "$act" 2>/dev/null || true
else
  echo "$progname: systemd-socket-activate or nbdinfo missing: socket activation not run" >&2
fi
echo "$progname: OK"
