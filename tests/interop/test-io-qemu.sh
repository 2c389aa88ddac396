#!/usr/bin/env bash
# rawtrack - tracked writes interleaved with QEMU's: rawtrack io writes,
# qemu-io writes, rawtrack io writes again, for several rounds.  After every
# step the bitmaps must equal exactly the granules written since they were
# added (QEMU stores exact bits at close; rawtrack writes exact bits at a
# clean close), read both by rawtrack and by qemu-nbd + nbdinfo; the data
# must read back through QEMU; rawtrack's autoclear bit 63 must be set
# after rawtrack wrote and cleared after QEMU did (the mechanism by which
# rawtrack notices another writer).
set -euo pipefail
source "${SRCDIR:-$(dirname "$0")/../..}/tests/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires "$PYTHON" --version

cd "$tmpdir"
truncate -s 64M disk.raw
"$RAWTRACK" attach --cluster-size 64k disk.raw disk.qcow2 >/dev/null
"$RAWTRACK" bitmap add disk.qcow2 g64k --granularity 64k
"$RAWTRACK" bitmap add disk.qcow2 g4k --granularity 4k

"$PYTHON" - "$RAWTRACK" <<'EOF'
import json, random, subprocess, sys

R = sys.argv[1]
MiB = 1 << 20
rng = random.Random(7)
written = []          # (offset, length) of every write so far
expect = bytearray(64 * MiB)


def run(*a):
    p = subprocess.run(a, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(a)}: {p.stdout}{p.stderr}")
    return p.stdout


def autoclear():
    with open("disk.qcow2", "rb") as f:
        f.seek(88)
        return int.from_bytes(f.read(8), "big")


def expected(gran):
    s = set()
    for off, ln in written:
        s.update(range(off // gran, (off + ln - 1) // gran + 1))
    out, run_start, prev = [], None, None
    for g in sorted(s):
        if run_start is None:
            run_start = prev = g
        elif g == prev + 1:
            prev = g
        else:
            out.append([run_start * gran, (prev - run_start + 1) * gran])
            run_start = prev = g
    if run_start is not None:
        out.append([run_start * gran, (prev - run_start + 1) * gran])
    return out


def check(step):
    for name, gran in (("g64k", 65536), ("g4k", 4096)):
        want = expected(gran)
        got = [[int(x) for x in l.split()] for l in
               run(R, "bitmap", "dump", "disk.qcow2", name).splitlines()]
        if got != want:
            sys.exit(f"FAIL {step}: rawtrack {name}: {got[:4]} != {want[:4]}")
        m = json.loads(run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}",
                           "--json", "--", "[", "qemu-nbd", "-r", "-f",
                           "qcow2", "-B", name, "disk.qcow2", "]"))
        q = [[e["offset"], e["length"]] for e in m if e["type"] & 1]
        if q != want:
            sys.exit(f"FAIL {step}: qemu-nbd {name}: {q[:4]} != {want[:4]}")
    info = json.loads(run("qemu-img", "info", "--output=json", "disk.qcow2"))
    for b in info["format-specific"]["data"]["bitmaps"]:
        if b["flags"] != ["auto"]:
            sys.exit(f"FAIL {step}: bitmap {b['name']} flags {b['flags']}")
    run("qemu-img", "check", "disk.qcow2")
    raw = open("disk.raw", "rb").read()
    if raw != bytes(expect):
        sys.exit(f"FAIL {step}: the data file differs from what was written")


def writes(n):
    cmds = []
    for _ in range(n):
        off = rng.randrange(0, 64 * MiB - 300000) // 512 * 512
        ln = rng.choice([512, 4096, 65536, rng.randrange(1, 300000)])
        pat = rng.randrange(1, 256)
        cmds.append((off, ln, pat))
        written.append((off, ln))
        expect[off:off + ln] = bytes([pat]) * ln
    return cmds


for rnd in range(3):
    args = []
    for off, ln, pat in writes(20):
        args += ["-c", f"write -P {pat} {off} {ln}"]
    run(R, "io", "disk.qcow2", *args)
    if not autoclear() & (1 << 63):
        sys.exit(f"FAIL round {rnd}: rawtrack's autoclear bit is not set")
    check(f"round {rnd} after rawtrack")

    args = []
    for off, ln, pat in writes(20):
        args += ["-c", f"write -P {pat} {off} {ln}"]
    run("qemu-io", "-f", "qcow2", *args, "disk.qcow2")
    if autoclear() & (1 << 63):
        sys.exit(f"FAIL round {rnd}: QEMU did not clear rawtrack's bit")
    check(f"round {rnd} after qemu-io")
    print(f"round {rnd}: {len(written)} writes, bitmaps exact in rawtrack "
          "and QEMU")
EOF
echo "test-io-qemu: ok"
