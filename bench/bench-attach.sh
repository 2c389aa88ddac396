#!/usr/bin/env bash
# rawtrack - benchmark: `rawtrack attach` and opening the result, against
# QEMU's route for wrapping an existing raw file without wiping it: create
# over a throw-away data file with data_file_raw=on, then amend data_file to
# the real one (qemu-img create over the real file would truncate it).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: bench/bench-attach.sh [RAWTRACK]
#   RAWTRACK   the rawtrack binary ($1, else $RAWTRACK, else build/cli/rawtrack)
#
# Environment (all optional):
#   SIZES="1G 1T 16T"       virtual sizes (sparse raw files)
#   CLUSTERS="64K 512K 2M"  cluster sizes
#   REPS=3                  timed attach runs; the median is reported
#   OPEN_REPS=7             timed runs of each open and I/O test (median;
#                           the minimum is in the JSON too)
#   SLOW_S=20               a run slower than this is not repeated
#   QEMU_MAX_S=240          give up on one qemu-img create after this long
#                           (16 TiB at 64 KiB takes 2-3 min when the machine
#                           is quiet); reported as ">N"
#   IO=1                    0 skips the I/O and bitmap-granularity section
#   IO_SIZES="1T 16T"       disk sizes for the random-read test
#   RANDOM_READS=10000      4 KiB reads per random-read run
#   OUT=bench/out/attach.json
#   TMPDIR                  work directory parent (default /tmp)
#
# What is measured, per size and cluster size (see bench/README.md):
#   attach     wall time of `rawtrack attach RAW IMG` vs the sum of
#              `qemu-img create -o data_file=TMP,data_file_raw=on` and
#              `qemu-img amend -o data_file=RAW` (both flush before exit)
#   metadata   allocated bytes (du -B1) and file length (stat) of each image
#   info       `rawtrack info` vs `qemu-img info`: metadata-only open
#   open+read  `rawtrack cat` vs `qemu-io -r`: open for I/O (data file too)
#              and read the last 4 KiB of the disk (loads the last L2 table)
#   check      `qemu-img check` of rawtrack's image: QEMU walking all of the
#              metadata (also the correctness check)
#   RSS        peak resident set size (/usr/bin/time -f %M) of attach
# and, for cluster size only (rawtrack's images, see the I/O section below):
#   sequential reads of 1 GiB of data, random 4 KiB reads over 1 and 16 TiB
#   through QEMU's L2 cache, and QEMU's default bitmap granularity.
# Opens are timed with the image and raw file evicted from the page cache
# (sync FILE; dd iflag=nocache count=0 - per file, no root needed) and with
# the binaries warm, so they measure reading the image, not loading
# libraries.
#
# Raw files that the work filesystem cannot hold (ext4 stops at 16 TiB - 4
# KiB) go to /dev/shm when it is tmpfs: they are sparse and never written,
# so they cost no memory.  Images always stay in the work directory.

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
RT=${1:-${RAWTRACK:-$top/build/cli/rawtrack}}
SIZES=${SIZES:-"1G 1T 16T"}
CLUSTERS=${CLUSTERS:-"64K 512K 2M"}
REPS=${REPS:-3}
OPEN_REPS=${OPEN_REPS:-7}
SLOW_S=${SLOW_S:-20}
QEMU_MAX_S=${QEMU_MAX_S:-240}
IO=${IO:-1}
OUT=${OUT:-$here/out/attach.json}
MARGIN=$((2 * 1024 * 1024 * 1024))      # disk left free, whatever we write

die () { echo "bench-attach: $*" >&2; exit 1; }
note () { echo "# $*"; }

[[ -x $RT ]] || die "rawtrack binary '$RT' not found (build first, or pass its path)"
RT=$(cd "$(dirname "$RT")" && pwd)/$(basename "$RT")
for p in qemu-img qemu-io numfmt du stat dd sync; do
  command -v "$p" >/dev/null || die "$p is required"
done
have_time=
[[ -x /usr/bin/time ]] && have_time=1

W=$(mktemp -d "${TMPDIR:-/tmp}/rawtrack-bench.XXXXXX")
SHM=
cleanup () {
  rm -rf "$W"
  [[ -n $SHM ]] && rm -rf "$SHM"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$(dirname "$OUT")"

bytes () { numfmt --from=iec "${1^^}"; }
human () { numfmt --to=iec-i --suffix=B --round=nearest --format=%.1f "$1"; }
avail () {
  local a
  a=$(df -B1 --output=avail "$W" | tail -1) || die "df failed on $W"
  echo $(( a ))
}

# Results of the last `timed`: elapsed and CPU (user + system) microseconds,
# peak RSS in KiB and exit status.  A failing CMD is fatal unless
# TIMED_MAY_FAIL is set.
T_US=0
CPU_US=0
RSS_KB=0
T_RC=0
TIMED_MAY_FAIL=
# timed CMD...: run CMD with stdout discarded and set the results above.
timed () {
  local t0 t1 rc=0 u=0 sy=0
  RSS_KB=0; CPU_US=0
  t0=$EPOCHREALTIME
  if [[ -n $have_time ]]; then
    /usr/bin/time -f '%M %U %S' -o "$W/rss" "$@" >/dev/null 2>"$W/err" || rc=$?
  else
    "$@" >/dev/null 2>"$W/err" || rc=$?
  fi
  t1=$EPOCHREALTIME
  T_US=$(( 10#${t1/./} - 10#${t0/./} ))
  T_RC=$rc
  if (( rc != 0 )) && [[ -z $TIMED_MAY_FAIL ]]; then
    cat "$W/err" >&2
    die "failed (exit $rc): $*"
  fi
  if [[ -n $have_time ]]; then
    read -r RSS_KB u sy < <(tail -1 "$W/rss") || true
    CPU_US=$(awk -v u="$u" -v s="$sy" 'BEGIN { printf "%d", (u + s) * 1e6 }')
  fi
  return 0
}

median () { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 }
  END { print (NR % 2) ? a[(NR + 1) / 2] : int ((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
max () { printf '%s\n' "$@" | sort -n | tail -1; }
minv () { printf '%s\n' "$@" | sort -n | head -1; }
# or_null V FN [ARGS]: FN V ARGS, or "null" when V is empty (a qemu-img run
# that gave up); or_gt is the same for the tables, printing "-".
or_null () { if [[ -n $1 ]]; then "$2" "$1" "${@:3}"; else echo null; fi; }
or_gt () { if [[ -n $1 ]]; then "$2" "$1" "${@:3}"; else echo -; fi; }
tratio () { local r; r=$(ratio "$@"); echo "${r/null/-}"; }
kib2m () { echo "$(( $1 / 1024 ))M"; }
seclist () { local t o=; for t in "$@"; do o+="$(sec "$t"), "; done; echo "${o%, }"; }
# us → seconds / milliseconds with 3 / 1 decimals; ratio a/b to 2 decimals.
sec () { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }
msec () { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1e3 }'; }
ratio () { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "null" }'; }

# Drop FILEs from the page cache (and nothing else).
evict () {
  sync "$@"
  local f
  for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done
}
warm_binaries () {
  "$RT" --version >/dev/null
  qemu-img --version >/dev/null
  qemu-io --version >/dev/null
}

# Set RAWDIR to a directory able to hold a sparse raw file of $1 bytes, or
# fail.  (Not for $(...): it may create $SHM, which cleanup must know.)
RAWDIR=
rawdir_for () {
  local size=$1
  RAWDIR=
  if truncate -s "$size" "$W/probe" 2>/dev/null; then
    rm -f "$W/probe"; RAWDIR=$W; return 0
  fi
  rm -f "$W/probe"
  if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then
    [[ -n $SHM ]] || SHM=$(mktemp -d /dev/shm/rawtrack-bench.XXXXXX)
    if truncate -s "$size" "$SHM/probe" 2>/dev/null; then
      rm -f "$SHM/probe"; RAWDIR=$SHM; return 0
    fi
    rm -f "$SHM/probe"
  fi
  return 1
}

# Metadata bytes for SIZE at CS (L2 tables + refcounts + a few clusters),
# an upper estimate used only to decide whether a case fits on the disk.
meta_estimate () {
  local size=$1 cs=$2
  echo $(( size / cs * 8 * 105 / 100 + 16 * cs ))
}

# Reference data for the 1 GiB case: a raw file with random contents, so
# that qemu-img compare checks real data and the I/O section reads it.
RAW1G=$W/random-1G.raw
make_raw1g () {
  if [[ ! -f $RAW1G ]]; then
    note "writing 1 GiB of random data for the 1 GiB case and the I/O tests"
    head -c 1G /dev/urandom >"$RAW1G"
  fi
}

nproc_=$(nproc)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
qver=$(qemu-img --version | awk 'NR == 1 { print $3 }')
rver=$("$RT" --version | awk 'NR == 1 { print $2 }')
fs=$(df --output=fstype "$W" | tail -1 | tr -d ' ')
note "rawtrack $rver, qemu-img $qver, $nproc_ CPUs ($cpu), work dir $W ($fs)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
note "load average at start: $load_start"
note "opens: image and raw evicted from the page cache before each run; binaries warm"
note "attach: median of $REPS runs (1 run when a run takes over ${SLOW_S}s); opens and I/O: median of $OPEN_REPS"
echo

rows=()          # JSON objects, one per case
atable=()        # printed lines: attach
otable=()        # printed lines: cold opens
wtable=()        # printed lines: warm opens

for sz in $SIZES; do
  size=$(bytes "$sz")
  if [[ $size -eq $((1024 * 1024 * 1024)) ]]; then
    make_raw1g
    raw=$RAW1G
    rawdir=$W
  else
    if ! rawdir_for "$size"; then
      note "skip $sz: no filesystem here holds a $sz sparse file"
      continue
    fi
    rawdir=$RAWDIR
    raw=$rawdir/disk-$sz.raw
    truncate -s "$size" "$raw"
  fi
  [[ $rawdir == "$W" ]] || note "$sz: raw files in $rawdir (the work filesystem cannot hold $sz)"

  for c in $CLUSTERS; do
    cs=$(bytes "$c")
    need=$(( 2 * $(meta_estimate "$size" "$cs") ))
    free=$(avail)
    if (( need + MARGIN > free )); then
      note "skip $sz at $c: needs ~$(human "$need") of metadata (two images), only $(human "$free") free"
      continue
    fi
    rimg=$W/rt-$sz-$c.qcow2
    qimg=$W/qemu-$sz-$c.qcow2
    tmpraw=$rawdir/qemu-tmp-$sz.raw
    last=$(( size - 4096 ))

    # --- attach: rawtrack and qemu-img interleaved, median of REPS ----------
    rt_t=(); rt_c=(); rt_rss=(); q_t=(); q_c=(); q_create=(); q_amend=(); q_rss=()
    q_timeout=0
    qlimit=()
    if (( QEMU_MAX_S > 0 )) && command -v timeout >/dev/null; then
      qlimit=(timeout "$QEMU_MAX_S")
    fi
    for ((i = 1; i <= REPS; i++)); do
      rm -f "$rimg"; sync
      timed "$RT" attach "$raw" "$rimg" --cluster-size "$cs"
      rt_t+=("$T_US"); rt_c+=("$CPU_US"); rt_rss+=("$RSS_KB")
      one=$T_US

      rm -f "$qimg" "$tmpraw"; sync
      TIMED_MAY_FAIL=1
      timed "${qlimit[@]}" qemu-img create -q -f qcow2 \
        -o "data_file=$tmpraw,data_file_raw=on,cluster_size=$cs" "$qimg" "$size"
      TIMED_MAY_FAIL=
      if (( T_RC == 124 && ${#qlimit[@]} )); then
        note "$sz at $c: qemu-img create gave up after ${QEMU_MAX_S}s (QEMU_MAX_S)"
        q_timeout=1
        rm -f "$qimg" "$tmpraw"
        break
      elif (( T_RC != 0 )); then
        cat "$W/err" >&2
        die "qemu-img create failed for $sz at $c"
      fi
      a=$T_US; ac=$CPU_US; ra=$RSS_KB
      timed qemu-img amend -o "data_file=$raw" "$qimg"
      q_create+=("$a"); q_amend+=("$T_US")
      q_t+=($(( a + T_US ))); q_c+=($(( ac + CPU_US ))); q_rss+=("$(max "$ra" "$RSS_KB")")
      rm -f "$tmpraw"
      if (( one > SLOW_S * 1000000 || a + T_US > SLOW_S * 1000000 )); then
        break
      fi
    done
    n_att=${#rt_t[@]}
    rt_att=$(median "${rt_t[@]}"); rt_cpu=$(median "${rt_c[@]}")
    r_du=$(du -B1 "$rimg" | cut -f1); r_len=$(stat -c %s "$rimg")
    if (( q_timeout )); then
      q_att=; q_cpu=; q_du=; q_len=; q_cr=; q_am=; q_rs=
    else
      q_att=$(median "${q_t[@]}"); q_cpu=$(median "${q_c[@]}")
      q_cr=$(median "${q_create[@]}"); q_am=$(median "${q_amend[@]}")
      q_rs=$(median "${q_rss[@]}")
      q_du=$(du -B1 "$qimg" | cut -f1); q_len=$(stat -c %s "$qimg")
    fi

    # --- correctness -------------------------------------------------------
    evict "$rimg"
    timed qemu-img check -q "$rimg"
    chk=$T_US
    if [[ $size -eq $((1024 * 1024 * 1024)) ]]; then
      qemu-img compare -q "$rimg" "$raw" || die "$rimg differs from $raw"
      if [[ -f $qimg ]]; then
        qemu-img compare -q "$rimg" "$qimg" || die "$rimg differs from $qimg"
      fi
      "$RT" cat "$rimg" | cmp -s - "$raw" || die "rawtrack cat $rimg differs from $raw"
    fi
    rm -f "$qimg"      # only rawtrack's image is opened below

    # --- opens: cold image, warm binaries ------------------------------------
    ri=(); qi=(); rc=(); qc=()
    for ((i = 1; i <= OPEN_REPS; i++)); do
      warm_binaries
      evict "$rimg" "$raw"; timed "$RT" info "$rimg"; ri+=("$T_US"); ri_rss=$RSS_KB
      evict "$rimg" "$raw"; timed qemu-img info "$rimg"; qi+=("$T_US"); qi_rss=$RSS_KB
      evict "$rimg" "$raw"
      timed "$RT" cat "$rimg" --offset "$last" --length 4096; rc+=("$T_US"); rc_rss=$RSS_KB
      evict "$rimg" "$raw"
      timed qemu-io -r -c "read -q $last 4k" "$rimg"; qc+=("$T_US"); qc_rss=$RSS_KB
    done
    rt_info=$(median "${ri[@]}"); q_info=$(median "${qi[@]}")
    rt_cat=$(median "${rc[@]}"); q_io=$(median "${qc[@]}")
    m_rt_info=$(minv "${ri[@]}"); m_q_info=$(minv "${qi[@]}")
    m_rt_cat=$(minv "${rc[@]}"); m_q_io=$(minv "${qc[@]}")
    # The same, warm: the image and raw file stay in the page cache.
    ri=(); qi=(); rc=(); qc=()
    for ((i = 1; i <= OPEN_REPS; i++)); do
      timed "$RT" info "$rimg"; ri+=("$T_US")
      timed qemu-img info "$rimg"; qi+=("$T_US")
      timed "$RT" cat "$rimg" --offset "$last" --length 4096; rc+=("$T_US")
      timed qemu-io -r -c "read -q $last 4k" "$rimg"; qc+=("$T_US")
    done
    w_rt_info=$(median "${ri[@]}"); w_q_info=$(median "${qi[@]}")
    w_rt_cat=$(median "${rc[@]}"); w_q_io=$(median "${qc[@]}")
    mw_rt_info=$(minv "${ri[@]}"); mw_q_info=$(minv "${qi[@]}")
    mw_rt_cat=$(minv "${rc[@]}"); mw_q_io=$(minv "${qc[@]}")
    rm -f "$rimg"

    # --- one row per table, one JSON object ----------------------------------
    atable+=("$(printf '%-4s %-5s %8s %8s %6s  %7s %7s %5s  %9s %9s  %9s %9s  %5s %5s' \
      "$sz" "$c" "$(sec "$rt_att")" "$(if [[ -n $q_att ]]; then sec "$q_att"; else echo ">$QEMU_MAX_S"; fi)" \
      "$(or_gt "$q_att" tratio "$rt_att")" \
      "$(sec "$rt_cpu")" "$(or_gt "$q_cpu" sec)" "$(or_gt "$q_cpu" tratio "$rt_cpu")" \
      "$(human "$r_du")" "$(or_gt "$q_du" human)" "$(human "$r_len")" "$(or_gt "$q_len" human)" \
      "$(kib2m "$(median "${rt_rss[@]}")")" "$(or_gt "$q_rs" kib2m)")")
    otable+=("$(printf '%-4s %-5s  %7s %7s %5s  %7s %7s %5s  %8s' "$sz" "$c" \
      "$(msec "$rt_info")" "$(msec "$q_info")" "$(tratio "$q_info" "$rt_info")" \
      "$(msec "$rt_cat")" "$(msec "$q_io")" "$(tratio "$q_io" "$rt_cat")" "$(sec "$chk")")")
    wtable+=("$(printf '%-4s %-5s  %7s %7s %5s  %7s %7s %5s' "$sz" "$c" \
      "$(msec "$w_rt_info")" "$(msec "$w_q_info")" "$(tratio "$w_q_info" "$w_rt_info")" \
      "$(msec "$w_rt_cat")" "$(msec "$w_q_io")" "$(tratio "$w_q_io" "$w_rt_cat")")")
    echo "attach ${atable[-1]}"
    echo "open   ${otable[-1]}"
    rows+=("$(cat <<EOF
    { "virtual_size": $size, "cluster_size": $cs, "attach_runs": $n_att, "open_runs": $OPEN_REPS,
      "rawtrack": { "attach_s": $(sec "$rt_att"), "attach_runs_s": [$(seclist "${rt_t[@]}")],
                    "attach_cpu_s": $(sec "$rt_cpu"),
                    "allocated_bytes": $r_du, "file_bytes": $r_len,
                    "attach_peak_rss_kib": $(median "${rt_rss[@]}"),
                    "info_ms": $(msec "$rt_info"), "info_peak_rss_kib": $ri_rss,
                    "open_read_ms": $(msec "$rt_cat"), "open_read_peak_rss_kib": $rc_rss,
                    "info_warm_ms": $(msec "$w_rt_info"), "open_read_warm_ms": $(msec "$w_rt_cat"),
                    "min": { "info_ms": $(msec "$m_rt_info"), "open_read_ms": $(msec "$m_rt_cat"),
                             "info_warm_ms": $(msec "$mw_rt_info"), "open_read_warm_ms": $(msec "$mw_rt_cat") } },
      "qemu": { "timed_out": $(if (( q_timeout )); then echo true; else echo false; fi),
                "create_amend_s": $(or_null "$q_att" sec), "create_s": $(or_null "$q_cr" sec),
                "amend_s": $(or_null "$q_am" sec), "runs_s": [$(seclist "${q_t[@]}")],
                "create_amend_cpu_s": $(or_null "$q_cpu" sec),
                "allocated_bytes": $(or_null "$q_du" echo), "file_bytes": $(or_null "$q_len" echo),
                "create_amend_peak_rss_kib": $(or_null "$q_rs" echo),
                "info_ms": $(msec "$q_info"), "info_peak_rss_kib": $qi_rss,
                "qemu_io_open_read_ms": $(msec "$q_io"), "qemu_io_peak_rss_kib": $qc_rss,
                "info_warm_ms": $(msec "$w_q_info"), "qemu_io_open_read_warm_ms": $(msec "$w_q_io"),
                "min": { "info_ms": $(msec "$m_q_info"), "qemu_io_open_read_ms": $(msec "$m_q_io"),
                         "info_warm_ms": $(msec "$mw_q_info"), "qemu_io_open_read_warm_ms": $(msec "$mw_q_io") },
                "check_rawtrack_image_s": $(sec "$chk") },
      "ratio_attach": $(or_null "$q_att" ratio "$rt_att"),
      "ratio_attach_cpu": $(or_null "$q_cpu" ratio "$rt_cpu"),
      "ratio_info": $(ratio "$q_info" "$rt_info"),
      "ratio_open_read": $(ratio "$q_io" "$rt_cat"),
      "ratio_info_warm": $(ratio "$w_q_info" "$w_rt_info"),
      "ratio_open_read_warm": $(ratio "$w_q_io" "$w_rt_cat") }
EOF
)")
  done
  if [[ $raw != "$RAW1G" ]]; then rm -f "$raw"; fi
done

# --- I/O through the container, and bitmap granularity ----------------------
# Cluster size changes nothing on the data path of raw external data (every
# cluster is mapped one to one and nothing is ever allocated), so what is
# left to measure is the cost of the mapping itself:
#  - sequential: 1 GiB of random data read through the container with
#    `qemu-img bench` (64 KiB requests, depth 16) and `rawtrack cat`, page
#    cache warm, so the mapping cost is not hidden behind the disk;
#  - random: RANDOM_READS 4 KiB reads at uniformly random offsets of a 1 TiB
#    and a 16 TiB disk through `qemu-io`, QEMU's default L2 cache (32 MiB
#    on Linux, filled in 4 KiB slices): timed with the image evicted from
#    the page cache ("cold") and warm, and the metadata reads QEMU issues
#    counted with strace.  The raw files are sparse, so the data reads cost
#    next to nothing and the difference is the L2 lookups.
# And the default granularity `qemu-img bitmap --add` picks at each size.
io_rows=()
rnd_rows=()
io_table=()
rnd_table=()
base_seq=
RANDOM_READS=${RANDOM_READS:-10000}
IO_SIZES=${IO_SIZES:-"1T 16T"}
have_strace=
command -v strace >/dev/null && have_strace=1
mibs () { awk -v u="$1" 'BEGIN { printf "%.0f", 1024 / (u / 1e6) }'; }
if [[ $IO != 0 ]]; then
  make_raw1g
  raw1g=$RAW1G
  cat "$raw1g" >/dev/null                      # warm: measure the mapping, not the disk
  bench_seq () {  # FMT FILE -> T_US of 16384 sequential 64 KiB reads, depth 16
    timed qemu-img bench -f "$1" -c 16384 -s 64K -d 16 "$2"
  }
  bench_seq raw "$raw1g"                       # warm-up run, not counted
  s=(); for ((i = 1; i <= OPEN_REPS; i++)); do bench_seq raw "$raw1g"; s+=("$T_US"); done
  base_seq=$(median "${s[@]}")
  for c in $CLUSTERS; do
    cs=$(bytes "$c")
    img=$W/io-$c.qcow2
    "$RT" attach "$raw1g" "$img" --cluster-size "$cs" >/dev/null
    bench_seq qcow2 "$img"                     # warm-up run, not counted
    s=(); k=()
    for ((i = 1; i <= OPEN_REPS; i++)); do
      bench_seq qcow2 "$img"; s+=("$T_US")
      timed "$RT" cat "$img"; k+=("$T_US")
    done
    seq=$(median "${s[@]}"); cat_=$(median "${k[@]}")
    seq_best=$(minv "${s[@]}"); cat_best=$(minv "${k[@]}")
    # Default bitmap granularity QEMU picks for this cluster size.
    qemu-img bitmap --add "$img" bench-granularity
    gran=$(qemu-img info --output=json "$img" |
           awk -F': ' '/"granularity"/ { gsub(/[^0-9]/, "", $2); print $2; exit }')
    rm -f "$img"
    io_table+=("$(printf '%-6s %10s %10s %10s %10s  %s' "$c" "$(mibs "$seq")" \
      "$(mibs "$seq_best")" "$(mibs "$cat_")" "$(mibs "$cat_best")" "$(human "$gran")")")
    echo "seq    ${io_table[-1]}"
    io_rows+=("    { \"cluster_size\": $cs, \"seq_read_1g_s\": $(sec "$seq"), \"seq_read_mib_s\": $(mibs "$seq"), \"seq_read_best_mib_s\": $(mibs "$seq_best"), \"rawtrack_cat_1g_s\": $(sec "$cat_"), \"rawtrack_cat_mib_s\": $(mibs "$cat_"), \"rawtrack_cat_best_mib_s\": $(mibs "$cat_best"), \"default_bitmap_granularity\": ${gran:-null} }")
  done

  for sz in $IO_SIZES; do
    size=$(bytes "$sz")
    if ! rawdir_for "$size"; then
      note "random reads: skip $sz: no filesystem here holds a $sz sparse file"
      continue
    fi
    rraw=$RAWDIR/io-$sz.raw
    truncate -s "$size" "$rraw"
    cmds=$W/random-$sz.cmds
    awk -v n="$RANDOM_READS" -v s="$size" 'BEGIN { srand (42); b = s / 4096
      for (i = 0; i < n; i++) printf "read -q %.0f 4k\n", int (rand () * b) * 4096 }' >"$cmds"
    s=()
    for ((i = 1; i <= REPS; i++)); do
      timed qemu-io -r -f raw "$rraw" <"$cmds"; s+=("$T_US")
    done
    rbase=$(median "${s[@]}")
    for c in $CLUSTERS; do
      cs=$(bytes "$c")
      need=$(meta_estimate "$size" "$cs")
      free=$(avail)
      if (( need + MARGIN > free )); then
        note "random reads: skip $sz at $c: needs ~$(human "$need"), only $(human "$free") free"
        continue
      fi
      img=$W/io-$sz-$c.qcow2
      "$RT" attach "$rraw" "$img" --cluster-size "$cs" >/dev/null
      s=(); k=()
      for ((i = 1; i <= REPS; i++)); do
        evict "$img"
        timed qemu-io -r -f qcow2 "$img" <"$cmds"; s+=("$T_US")
        timed qemu-io -r -f qcow2 "$img" <"$cmds"; k+=("$T_US")
      done
      cold=$(median "${s[@]}"); warm=$(median "${k[@]}")
      mreads=null; mbytes=null
      if [[ -n $have_strace ]]; then
        rm -f "$W"/strace.*
        strace -ff -y -e trace=pread64,preadv,preadv2 -o "$W/strace" \
          qemu-io -r -f qcow2 "$img" <"$cmds" >/dev/null 2>&1
        base=$(basename "$img")
        mreads=$(cat "$W"/strace.* | grep -c "$base>" || true)
        mbytes=$(cat "$W"/strace.* | grep "$base>" | grep -o '= [0-9]*$' |
                 awk '{ s += $2 } END { printf "%.0f", s }')
        rm -f "$W"/strace.*
      fi
      rm -f "$img"
      rnd_table+=("$(printf '%-4s %-6s %9s %9s %9s  %8s %9s' "$sz" "$c" \
        "$(msec "$cold")" "$(msec "$warm")" "$(msec "$rbase")" \
        "$mreads" "$( [[ $mbytes == null ]] && echo - || human "$mbytes")")")
      echo "random ${rnd_table[-1]}"
      rnd_rows+=("    { \"virtual_size\": $size, \"cluster_size\": $cs, \"reads\": $RANDOM_READS, \"cold_ms\": $(msec "$cold"), \"warm_ms\": $(msec "$warm"), \"raw_file_ms\": $(msec "$rbase"), \"metadata_reads\": $mreads, \"metadata_bytes\": $mbytes }")
    done
    rm -f "$rraw"
  done
fi

# --- report -----------------------------------------------------------------
echo
echo "== attach: seconds (median of up to $REPS runs), metadata written, peak RSS"
echo "   ratio = qemu / rawtrack: > 1 means rawtrack is faster"
printf '%-4s %-5s %8s %8s %6s  %7s %7s %5s  %9s %9s  %9s %9s  %5s %5s\n' \
  size cs "rt s" "qemu s" ratio "rt cpu" "q cpu" ratio "rt du" "qemu du" \
  "rt len" "qemu len" "rtRSS" "qRSS"
printf '%s\n' "${atable[@]}"
echo
echo "== open, image not in the page cache (ms, median of $OPEN_REPS runs)"
printf '%-4s %-5s  %7s %7s %5s  %7s %7s %5s  %8s\n' size cs "rt info" "q info" ratio \
  "rt cat" "qemu-io" ratio "check s"
printf '%s\n' "${otable[@]}"
echo
echo "== open, warm page cache (ms, median of $OPEN_REPS runs)"
printf '%-4s %-5s  %7s %7s %5s  %7s %7s %5s\n' size cs "rt info" "q info" ratio \
  "rt cat" "qemu-io" ratio
printf '%s\n' "${wtable[@]}"
if [[ $IO != 0 ]]; then
  echo
  echo "== sequential read of 1 GiB through rawtrack's container, MiB/s (median, best of $OPEN_REPS)"
  echo "   raw file itself: $(mibs "$base_seq") MiB/s; bitmap gran = qemu-img bitmap --add default"
  printf '%-6s %10s %10s %10s %10s  %s\n' cs "qemu med" "qemu best" "cat med" "cat best" "bitmap gran"
  printf '%s\n' "${io_table[@]}"
  echo
  echo "== $RANDOM_READS random 4 KiB reads through qemu-io (ms, median of $REPS), QEMU's default L2 cache"
  printf '%-4s %-6s %9s %9s %9s  %8s %9s\n' size cs cold warm "raw file" "md reads" "md bytes"
  printf '%s\n' "${rnd_table[@]}"
fi

join_rows () { local IFS=$'\n'; local s; s=$(printf '%s,\n' "$@"); printf '%s' "${s%,}"; }
{
  cat <<EOF
{
  "tool": "bench/bench-attach.sh",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "rawtrack_version": "$rver",
  "qemu_version": "$qver",
  "cpus": $nproc_,
  "cpu": "$cpu",
  "work_fs": "$fs",
  "load_average_start": "$load_start",
  "load_average_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "reps": $REPS,
  "open_reps": $OPEN_REPS,
  "open_cache": "image and raw evicted per file before each open; binaries warm",
  "attach": [
$(join_rows "${rows[@]}")
  ],
  "io_sequential_1g": [
$( ((${#io_rows[@]})) && join_rows "${io_rows[@]}")
  ],
  "io_sequential_1g_raw_file_s": $( [[ -n ${base_seq:-} ]] && sec "$base_seq" || echo null),
  "io_random_4k": [
$( ((${#rnd_rows[@]})) && join_rows "${rnd_rows[@]}")
  ]
}
EOF
} >"$OUT"
echo
note "results written to $OUT"
