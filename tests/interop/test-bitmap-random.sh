#!/usr/bin/env bash
# test-bitmap-random.sh: `rawtrack bitmap` and `qemu-img bitmap` side by
# side on random operation sequences.
#
# For each seed: two copies of one image (random size and cluster size).
# The same random sequence of bitmap operations - add (any granularity
# 512 B .. 2 GiB or the default, enabled or disabled), remove, clear,
# enable, disable, merge within the image and from a third image, and
# operations that must fail (missing or duplicate names) - is applied with
# qemu-img bitmap to copy Q and with rawtrack bitmap to copy R; qemu-io
# writes, zero writes and discards in between dirty both copies alike.
# Both tools must succeed or fail together, and at the end (and halfway)
# the copies must hold identical bitmaps: the same qemu-img info bitmap
# list, and for every bitmap the same nbdinfo --map over qemu-nbd -B (and
# rawtrack's own dump must agree with it; one qemu-nbd per image exports
# all of its bitmaps at once).  qemu-img check stays clean.
#
# RAWTRACK_RANDOM_SEEDS (default 16) and RAWTRACK_RANDOM_OPS (default 18)
# size the run; the default stays well under three minutes.
set -euo pipefail
source "${SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/functions.sh"

requires qemu-img --version
requires qemu-img bitmap --help
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires python3 --version
nbdinfo --help 2>&1 | grep -q -- '--map' || skip "nbdinfo has no --map"

cd "$tmpdir"

python3 - "${RAWTRACK_RANDOM_SEEDS:-16}" "${RAWTRACK_RANDOM_OPS:-18}" <<'EOF'
import json, os, random, signal, subprocess, sys, time

RAWTRACK = os.environ["RAWTRACK"]
seeds, nops = int(sys.argv[1]), int(sys.argv[2])
MiB = 1 << 20


def run(*args, ok=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if ok is True and p.returncode != 0:
        sys.stderr.write(p.stderr.decode())
        raise SystemExit("FAIL: %s: exit %d" % (" ".join(args), p.returncode))
    return p


def bitmaps(img):
    j = json.loads(run("qemu-img", "info", "-f", "qcow2", "--output=json",
                       img).stdout)
    return j["format-specific"]["data"].get("bitmaps", [])


def gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def nbd_maps(img, names):
    """nbdinfo --map of every bitmap in names, all through one read-only
    qemu-nbd exporting them together (-B repeated, --persistent): one
    QEMU start per image and comparison rather than one per bitmap."""
    maps = {}
    if not names:
        return maps
    sock = os.path.abspath(img + ".sock")
    pidf = os.path.abspath(img + ".pid")
    args = ["qemu-nbd", "-r", "-f", "qcow2", "-t", "-k", sock, "--fork",
            "--pid-file", pidf]
    for n in names:
        args += ["-B", n]
    run(*args, img)                     # returns once the server listens
    pid = int(open(pidf).read())
    try:
        for n in names:
            out = run("nbdinfo", "--map=qemu:dirty-bitmap:" + n, "--json",
                      "nbd+unix:///?socket=" + sock).stdout
            m = []
            for e in json.loads(out):
                d = e["type"] == 1
                if m and m[-1][2] == d:
                    m[-1][1] += e["length"]
                else:
                    m.append([e["offset"], e["length"], d])
            maps[n] = m
    finally:
        # Gone before the next step: it holds the image's lock.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not gone(pid):
            if time.monotonic() > deadline:
                raise SystemExit("FAIL: qemu-nbd %d did not stop" % pid)
            time.sleep(0.01)
        for f in (sock, pidf):
            if os.path.exists(f):
                os.unlink(f)
    return maps


def rt_map(img, name):
    out = run(RAWTRACK, "bitmap", "dump", img, name, "--json").stdout
    return [[e["start"], e["length"], e["dirty"]] for e in json.loads(out)]


def compare(q, r, where):
    run("qemu-img", "check", "-q", q)
    run("qemu-img", "check", "-q", r)
    bq, br = bitmaps(q), bitmaps(r)
    if bq != br:
        raise SystemExit("FAIL: %s: bitmap lists differ\n qemu-img: %s\n "
                         "rawtrack: %s" % (where, bq, br))
    names = [b["name"] for b in bq if "in-use" not in b["flags"]]
    allq, allr = nbd_maps(q, names), nbd_maps(r, names)
    for b in bq:
        if "in-use" in b["flags"]:
            continue
        mq, mr = allq[b["name"]], allr[b["name"]]
        if mq != mr:
            raise SystemExit("FAIL: %s: bitmap %s differs\n qemu-img: %s\n "
                             "rawtrack: %s" % (where, b["name"], mq[:10],
                                               mr[:10]))
        if rt_map(r, b["name"]) != mr:
            raise SystemExit("FAIL: %s: rawtrack dump of %s disagrees with "
                             "nbdinfo" % (where, b["name"]))
    return len(bq)


GRANS = [None, 512, 1024, 4096, 65536, 1 << 20, 1 << 31]
total_ops = 0
for seed in range(1, seeds + 1):
    rnd = random.Random(seed)
    cs = rnd.choice([512, 4096, 65536, 65536, 2 * MiB])
    size = rnd.randrange(1, 96) * MiB + rnd.choice([0, 0, 512 * rnd.randrange(1, 2048)])
    q, r, o = "q%d.qcow2" % seed, "r%d.qcow2" % seed, "o%d.qcow2" % seed
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        "cluster_size=%d" % cs, q, str(size))
    run("cp", q, r)
    # The third image, for merges from another file.
    run("qemu-img", "create", "-q", "-f", "qcow2", o, str(size))
    run("qemu-img", "bitmap", "--add", "-g", "2048", o, "other")
    run("qemu-io", "-f", "qcow2", "-c", "write %d 1" % rnd.randrange(size),
        "-c", "write %d 70000" % rnd.randrange(size - 70000), o)

    names = []
    for step in range(nops):
        total_ops += 1
        kind = rnd.choice(["add", "add", "add", "remove", "clear", "enable",
                           "disable", "merge", "merge", "merge-other",
                           "io", "io", "io", "bad"])
        if kind not in ("add", "io", "bad") and not names:
            kind = "add"
        if kind == "add":
            name = "b%d" % rnd.randrange(1000)
            if name in names:
                continue
            g = rnd.choice(GRANS)
            dis = rnd.random() < 0.3
            qa = ["qemu-img", "bitmap", "--add"]
            ra = [RAWTRACK, "bitmap", "add", r, name]
            if g:
                qa += ["-g", str(g)]
                ra += ["--granularity", str(g)]
            if dis:
                qa += ["--disable"]
                ra += ["--disabled"]
            pq, pr = run(*qa, q, name, ok=None), run(*ra, ok=None)
            if pq.returncode == 0:
                names.append(name)
        elif kind in ("remove", "clear", "enable", "disable"):
            name = rnd.choice(names)
            pq = run("qemu-img", "bitmap", "--" + kind, q, name, ok=None)
            pr = run(RAWTRACK, "bitmap", kind, r, name, ok=None)
            if kind == "remove" and pq.returncode == 0:
                names.remove(name)
        elif kind == "merge":
            src, dst = rnd.choice(names), rnd.choice(names)
            pq = run("qemu-img", "bitmap", "--merge", src, q, dst, ok=None)
            pr = run(RAWTRACK, "bitmap", "merge", r, src, dst, ok=None)
        elif kind == "merge-other":
            dst = rnd.choice(names)
            pq = run("qemu-img", "bitmap", "--merge", "other", "-b", o,
                     "-F", "qcow2", q, dst, ok=None)
            pr = run(RAWTRACK, "bitmap", "merge", r, "other", dst,
                     "--source-image", o, ok=None)
        elif kind == "bad":
            name = rnd.choice(names + ["missing"]) if names else "missing"
            op = rnd.choice(["add", "remove", "clear"])
            if op == "add" and name == "missing":
                name = ""
            if op != "add" and name in names:
                name = "missing"
            qop = "--" + op
            pq = run("qemu-img", "bitmap", qop, q, name, ok=None)
            pr = run(RAWTRACK, "bitmap", op, r, name, ok=None)
            if pq.returncode == 0:
                raise SystemExit("FAIL: seed %d: qemu-img bitmap %s %r "
                                 "succeeded" % (seed, qop, name))
        else:
            cmds = []
            for _ in range(rnd.randrange(1, 4)):
                off = rnd.randrange(size)
                ln = min(size - off, rnd.choice([1, 512, 4096, 100000, 3 * MiB]))
                op = rnd.choice(["write", "write", "write -z", "discard"])
                cmds += ["-c", "%s %d %d" % (op, off, ln)]
            run("qemu-io", "-f", "qcow2", *cmds, q)
            run("qemu-io", "-f", "qcow2", *cmds, r)
            continue
        if (pq.returncode == 0) != (pr.returncode == 0):
            sys.stderr.write("qemu-img: " + pq.stderr.decode())
            sys.stderr.write("rawtrack: " + pr.stderr.decode())
            raise SystemExit("FAIL: seed %d step %d (%s): qemu-img exit %d, "
                             "rawtrack exit %d" % (seed, step, kind,
                                                   pq.returncode,
                                                   pr.returncode))
        if step == nops // 2:
            compare(q, r, "seed %d halfway" % seed)
    n = compare(q, r, "seed %d" % seed)
    print("seed %d: cluster size %d, size %d, %d bitmaps: identical"
          % (seed, cs, size, n))
    for f in (q, r, o):
        os.unlink(f)
print("%d operations over %d seeds" % (total_ops, seeds))
EOF

echo "$progname: OK"
