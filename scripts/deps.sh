#!/usr/bin/env bash
# Install every Debian package needed to build and test rawtrack.
#
# Usage: ./scripts/deps.sh
#
# Idempotent and fast on a warm machine: when dpkg already lists every
# package as installed, nothing else runs.  Otherwise it runs `apt-get
# update` once and installs the missing packages non-interactively.  Output
# is kept quiet and shown in full only if something fails.  Uses sudo only
# when not running as root.
set -euo pipefail

packages=(
  # build
  meson ninja-build pkg-config gcc clang libclang-rt-14-dev
  zlib1g-dev libzstd-dev libnbd-dev libgnutls28-dev libxxhash-dev
  # interop peers and test tools
  qemu-utils libnbd-bin nbdkit fio python3 jq gnutls-bin
  coreutils diffutils mount util-linux
  # the installed package (tests/package): man pages rendered with man -l,
  # the bash completion's pkg-config file, systemd-analyze verify and
  # systemd-socket-activate for the serve units
  man-db groff-base bash-completion systemd
)

missing=()
for p in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  if [ "$status" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "deps: not root and sudo is not available; install as root:" >&2
    echo "  apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

log="$(mktemp "${TMPDIR:-/tmp}/rawtrack-deps.XXXXXX")"
trap 'rm -f "$log"' EXIT

run ()
{
  if ! "$@" >>"$log" 2>&1; then
    echo "deps: FAILED: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"

# Double-check, so a silently skipped package fails here and not later.
for p in "${missing[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
  if [ "$status" != "install ok installed" ]; then
    echo "deps: package $p is still not installed" >&2
    cat "$log" >&2
    exit 1
  fi
done
echo "deps: done"
