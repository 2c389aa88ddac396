#!/usr/bin/env bash
# Build rawtrack three times and run the test suites in each build.
#
# Usage: ./scripts/test-all.sh          (from anywhere; works in the source root)
#
#   build-test  buildtype=debugoptimized, werror=true: every test
#   build-asan  buildtype=debug, b_sanitize=address,undefined, b_lundef=false
#   build-tsan  buildtype=debugoptimized, b_sanitize=thread: suite 'tsan'
#               (the tests with threads); skipped, and counted as one skip,
#               where the compiler's ThreadSanitizer cannot run a program
#
# Existing build directories are reconfigured (or wiped and set up again if
# that fails).  After `meson test` in each, the results are read back from
# meson-logs/testlog*.json and summarised:
#   OK, EXPECTEDFAIL                       -> passed
#   FAIL, TIMEOUT, ERROR, UNEXPECTEDPASS   -> failed
#   SKIP                                   -> skipped
# A build that fails to configure or compile counts as one failure.  The last
# line of output is always `N passed, N failed, N skipped` over all builds.
# Exit status: non-zero if anything failed or if no test ran at all.
#
# Environment:
#   RAWTRACK_TEST_SETUP   meson test setup to use (default: `full` when the
#                         project defines one, else meson's default)
#   RAWTRACK_BUILDS       space-separated subset of "test asan tsan" (default
#                         all three)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
srcdir="$PWD"

total_pass=0
total_fail=0
total_skip=0
summary=()

# Pick the test setup that runs every suite.
setup="${RAWTRACK_TEST_SETUP:-}"
if [ -z "$setup" ] &&
   grep -rqs --include=meson.build -E "add_test_setup\(\s*'full'" "$srcdir"; then
  setup=full
fi
setup_args=()
if [ -n "$setup" ]; then
  setup_args=(--setup "$setup")
fi

# configure DIR OPTIONS...: set up or reconfigure a build directory.
configure ()
{
  local dir="$1"; shift
  if [ -f "$dir/meson-private/coredata.dat" ]; then
    if meson setup --reconfigure "$dir" "$@" >"$dir.setup.log" 2>&1; then
      rm -f "$dir.setup.log"; return 0
    fi
    echo "test-all: reconfigure of $dir failed; wiping it" >&2
    if meson setup --wipe "$dir" "$@" >"$dir.setup.log" 2>&1; then
      rm -f "$dir.setup.log"; return 0
    fi
  else
    rm -rf "$dir"
    if meson setup "$dir" "$@" >"$dir.setup.log" 2>&1; then
      rm -f "$dir.setup.log"; return 0
    fi
  fi
  cat "$dir.setup.log" >&2
  rm -f "$dir.setup.log"
  return 1
}

# count DIR: read the test log of DIR, print failures and skips, add to
# the totals.
count ()
{
  local dir="$1" log out
  log="$(ls -t "$dir"/meson-logs/testlog*.json 2>/dev/null | head -n 1)"
  if [ -z "$log" ]; then
    echo "test-all: $dir: no test log (meson test did not run?)" >&2
    total_fail=$((total_fail + 1))
    summary+=("$dir: no test log: counted as 1 failure")
    return
  fi
  out="$(python3 - "$dir" "$log" <<'EOF'
import json, sys
d, path = sys.argv[1], sys.argv[2]
passed = failed = skipped = 0
lines = []
with open(path, errors="replace") as f:
    for raw in f:
        raw = raw.strip()
        if not raw:
            continue
        try:
            t = json.loads(raw)
        except ValueError:
            continue
        name = t.get("name", "?")
        res = t.get("result", "?")
        if res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
            text = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
            why = [l.strip() for l in text.splitlines() if "SKIP" in l]
            lines.append(f"SKIP {d}: {name}" +
                         (": " + " | ".join(why[:3]) if why else ""))
        else:
            failed += 1
            lines.append(f"FAIL {d}: {name} ({res}, "
                         f"exit {t.get('returncode', '?')}, "
                         f"{t.get('duration', 0):.1f}s)")
for l in lines:
    print("  " + l)
print(f"{passed} {failed} {skipped}")
EOF
)" || {
    echo "test-all: $dir: cannot parse $log" >&2
    total_fail=$((total_fail + 1))
    return
  }
  local counts="${out##*$'\n'}" details=""
  if [ "$counts" != "$out" ]; then
    details="${out%$'\n'*}"
  fi
  local p f s
  read -r p f s <<<"$counts"
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  total_skip=$((total_skip + s))
  summary+=("$dir: $p passed, $f failed, $s skipped")
  if [ -n "$details" ]; then
    summary+=("$details")
  fi
}

# run_build DIR [VAR=VALUE...] [MESON-TEST-ARGS...] -- MESON-SETUP-OPTIONS...
run_build ()
{
  local dir="$1"; shift
  local test_args=() test_env=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    case "$1" in
      [A-Z_]*=*) test_env+=("$1") ;;
      *) test_args+=("$1") ;;
    esac
    shift
  done
  shift
  echo "=== $dir: configure ($*)"
  if ! configure "$dir" "$@"; then
    echo "test-all: $dir: configure FAILED" >&2
    total_fail=$((total_fail + 1))
    summary+=("$dir: configure failed: counted as 1 failure")
    return
  fi
  echo "=== $dir: build"
  if ! ninja -C "$dir"; then
    echo "test-all: $dir: build FAILED" >&2
    total_fail=$((total_fail + 1))
    summary+=("$dir: build failed: counted as 1 failure")
    return
  fi
  echo "=== $dir: test ${setup_args[*]}"
  rm -f "$dir"/meson-logs/testlog*.json
  env ${test_env[@]+"${test_env[@]}"} \
    meson test -C "$dir" --print-errorlogs --num-processes 2 \
    "${setup_args[@]}" ${test_args[@]+"${test_args[@]}"} || true
  count "$dir"
}

# tsan_works: can this compiler build and run a ThreadSanitizer program?
# (Some kernels' address-space layouts make older runtimes abort at start.)
tsan_works ()
{
  local t
  t="$(mktemp -d)" || return 1
  printf 'int main (void) { return 0; }\n' > "$t/t.c"
  "${CC:-cc}" -fsanitize=thread "$t/t.c" -o "$t/t" >"$t/log" 2>&1 &&
    "$t/t" >>"$t/log" 2>&1
  local st=$?
  [ "$st" -eq 0 ] || sed 's/^/  /' "$t/log" >&2
  rm -rf "$t"
  return "$st"
}

start=$SECONDS
for b in ${RAWTRACK_BUILDS:-test asan tsan}; do
  case "$b" in
    test)
      # Everything, at full size.
      run_build build-test -- --buildtype=debugoptimized -Dwerror=true ;;
    asan)
      # ASan+UBSan: unit tests, the fuzz corpora and hostile inputs, the
      # crash loops and the interop tests of suite 'asan'.  The crash
      # loops run with few rounds: this build is there to catch memory
      # errors on their paths (open after a crash, the tracked writes,
      # the recovery), which a few rounds reach; the many random rounds
      # that hunt for rare orderings run in build-test.  Their negative
      # controls (suite 'control') test the tests: build-test only.
      run_build build-asan \
        RAWTRACK_CRASH_SEEDS="${RAWTRACK_CRASH_SEEDS:-20}" \
        RAWTRACK_CRASH_EXHAUSTIVE="${RAWTRACK_CRASH_EXHAUSTIVE:-1}" \
        RAWTRACK_KILL_ROUNDS="${RAWTRACK_KILL_ROUNDS:-4}" \
        RAWTRACK_CRASH_THREAD_SEEDS="${RAWTRACK_CRASH_THREAD_SEEDS:-10}" \
        RAWTRACK_BOUND_ROUNDS="${RAWTRACK_BOUND_ROUNDS:-1}" \
        --suite unit --suite fuzz --suite crash --suite asan \
        --no-suite control \
        -- --buildtype=debug \
        -Db_sanitize=address,undefined -Db_lundef=false ;;
    tsan)
      # ThreadSanitizer over the tests with threads (suite 'tsan'): the
      # tracker under concurrent writers, the I/O backends, the server.
      # Any report fails the test (exit 66).  -Wno-tsan: it warns that it
      # does not model fences, which the tracker's fast path uses.
      if tsan_works; then
        run_build build-tsan \
          TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1" \
          --suite tsan \
          -- --buildtype=debugoptimized -Db_sanitize=thread -Dc_args=-Wno-tsan
      else
        echo "SKIP build-tsan: ${CC:-cc} cannot run a -fsanitize=thread" \
             "program here (see above)" >&2
        total_skip=$((total_skip + 1))
        summary+=("build-tsan: skipped: ThreadSanitizer cannot run here")
      fi ;;
    *)
      echo "test-all: unknown build '$b'" >&2
      total_fail=$((total_fail + 1)) ;;
  esac
done

echo
echo "=== summary ($((SECONDS - start))s)"
for l in "${summary[@]}"; do
  echo "$l"
done
status=0
if [ "$total_fail" -ne 0 ]; then
  status=1
elif [ $((total_pass + total_skip)) -eq 0 ] || [ "$total_pass" -eq 0 ]; then
  echo "test-all: no test ran" >&2
  status=1
fi
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
exit "$status"
