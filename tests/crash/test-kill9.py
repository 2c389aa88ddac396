#!/usr/bin/env python3
# rawtrack - crash test: kill -9 of `rawtrack io` at random moments.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A sparse raw disk of 4 GiB (RAWTRACK_KILL_SIZE_GIB), far larger than the
# hot set (64 extents of 1 MiB: 64 MiB), wrapped by `rawtrack attach`,
# carries three bitmaps (64 KiB and 512 B granularity, enabled; one
# disabled).  The workload writes only in 96 zones of 1 MiB scattered over
# the disk (half of them straddle two extents): more extents than the hot
# set holds, so it cools all the time, and what is written stays small.
# Each round clears the bitmaps, runs `rawtrack io` on a random workload of
# writes, write zeroes, discards and flushes in the zones, and kills it
# with SIGKILL at a random moment; every other round the idle cooling runs
# every few ms (RAWTRACK_IDLE_MS), racing with the writers.  Then, without
# any rawtrack step in between:
#   - every write, zero and discard that `rawtrack io` reported done is
#     dirty in every enabled bitmap (read with `rawtrack bitmap dump`, and
#     every few rounds through QEMU: qemu-nbd -B + nbdinfo --map, which
#     must agree with rawtrack extent for extent);
#   - the operation in flight at the kill too, as far as it landed: every
#     512-byte sector of the zones that differs from the round's start is
#     dirty in every enabled bitmap;
#   - THE BOUND: each bitmap reports at most 64 MiB (docs/tracking.md)
#     outside the granules of the operations done or in flight;
#   - no bitmap is in use (qemu-img info), the disabled one stays clean;
#   - qemu-img check finds nothing worse than leaks;
#   - the raw file holds exactly what the reported operations wrote (the
#     one operation in flight at the kill, and discards, may be either).
# With --nbd the writes go through `rawtrack serve` (qemu-io as the NBD
# client) and the server is the process killed: every request the server
# acknowledged must be dirty and on disk.
# With --remote (implies --nbd) the raw disk is behind `nbdkit file` and
# the container names it by NBD URI (issue 16): the same promises hold end
# to end through rawtrack's libnbd backend; QEMU gets the data file as
# --image-opts data-file.driver=nbd (it never follows a stored URI).
# --mode process runs the same rounds in process mode (also kill -9 safe);
# --mode lazy is the NEGATIVE CONTROL: QEMU's scheme leaves the bitmaps in
# use after a kill, which this test must report as a failure (the suite
# runs it as an expected failure).  Exit status: 0 passed, 1 a check
# failed, 99 the test itself broke.
# Rounds: RAWTRACK_KILL_ROUNDS (default 20; 12 with --nbd or --mode
# process, 8 with --remote; 3 with --mode lazy: enough for the suite, each
# round a fresh random workload and kill point; soak runs set more, e.g.
# 300); RAWTRACK_KILL_SEED picks the workload.
import json
import re
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

RAWTRACK = os.environ.get("RAWTRACK", "build/cli/rawtrack")
# --nbd: write through `rawtrack serve` with qemu-io as the NBD client and
# kill -9 the server instead.
REMOTE = "--remote" in sys.argv[1:]
NBD = "--nbd" in sys.argv[1:] or REMOTE
MODE = "safe"
if "--mode" in sys.argv[1:]:
    MODE = sys.argv[sys.argv.index("--mode") + 1]
    assert MODE in ("safe", "process", "lazy"), MODE
DONE_RE = re.compile(r"^(wrote|discard) \d+/\d+ bytes at offset \d+")
ROUNDS = int(os.environ.get("RAWTRACK_KILL_ROUNDS",
                            "3" if MODE == "lazy" else
                            "8" if REMOTE else
                            "12" if NBD or MODE != "safe" else "20"))
MiB = 1024 * 1024
SIZE = int(os.environ.get("RAWTRACK_KILL_SIZE_GIB", "4")) * 1024 * MiB
ZONES = 96
ZONE = MiB
# The documented over-report bound: 64 hot extents of 1 MiB.
BOUND = int(os.environ.get("RAWTRACK_KILL_BOUND_MIB", "64")) * MiB


def need(*cmd):
    if shutil.which(cmd[0]) is None:
        print(f"SKIP: test-kill9: requires {cmd[0]}")
        sys.exit(77)


def run(*args, ok=(0,)):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit(f"FAIL: {' '.join(args)} exited {p.returncode}:\n"
                 f"{p.stdout}{p.stderr}")
    return p.stdout


def dump(img, name):
    return json.loads(run(RAWTRACK, "bitmap", "dump", "--json", img, name))


def dirty_ranges(extents):
    return [(e["start"], e["start"] + e["length"]) for e in extents
            if e["dirty"]]


def covered(ranges, lo, hi):
    # ranges are sorted and disjoint
    for s, e in ranges:
        if e <= lo:
            continue
        if s > lo:
            return False
        lo = e
        if lo >= hi:
            return True
    return lo >= hi


def through_nbd(img, script, env, target, rng, tmp):
    """Serve img with `rawtrack serve`, write through it with qemu-io over
    NBD, and kill -9 the SERVER once `target` writes were acknowledged.
    Returns qemu-io's result lines ('wrote'/'discard'): each one is a
    request the server acknowledged, i.e. completed."""
    sock = os.path.join(tmp, "nbd.sock")
    pidfile = os.path.join(tmp, "nbd.pid")
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    srv = subprocess.Popen([RAWTRACK, "serve", img, "--socket", sock,
                            "--track", MODE, "--pidfile", pidfile] +
                           (["--allow-remote"] if REMOTE else []),
                           env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    # Wait for the pid file, written once the socket listens (the socket
    # file alone exists between bind and listen: qemu-io could be refused
    # and the round would test nothing).  No short bound: a loaded machine.
    deadline = time.monotonic() + 120
    while not (os.path.exists(pidfile) and os.path.getsize(pidfile) > 0):
        if srv.poll() is not None:
            sys.exit(f"FAIL: rawtrack serve exited {srv.returncode} at start")
        if time.monotonic() > deadline:
            srv.kill()
            sys.exit("FAIL: rawtrack serve did not start within 120 s")
        time.sleep(0.01)
    q = subprocess.Popen(["qemu-io", "-f", "raw",
                          f"nbd+unix:///?socket={sock}"],
                         stdin=open(script), stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    done = []
    while len(done) < target:
        line = q.stdout.readline()
        if not line:
            break
        line = line.replace("qemu-io> ", "")   # the interactive prompt
        if DONE_RE.match(line):
            done.append(line)
    time.sleep(rng.random() * 0.003)
    srv.send_signal(signal.SIGKILL)
    srv.wait()
    # The rest through the same buffered reader: communicate(timeout=...)
    # reads the pipe's fd directly and would lose lines that readline()
    # had already buffered - under load that dropped completed writes and
    # misaligned the replay.  qemu-io exits once every remaining command
    # has failed; a timer kills it if it does not.
    killer = threading.Timer(20, q.kill)
    killer.start()
    rest = q.stdout.read()
    killer.cancel()
    q.wait()
    done += [l for l in rest.replace("qemu-io> ", "").splitlines(True)
             if DONE_RE.match(l)]
    for f in (sock, pidfile):
        if os.path.exists(f):
            os.unlink(f)
    return done


def workload(rng, zones, n):
    cmds = []
    for _ in range(n):
        k = rng.random()
        z = rng.choice(zones)
        off = z + rng.randrange(0, ZONE // 512) * 512
        if rng.random() < 0.2:
            off += rng.randrange(512)
        ln = rng.choice([512, 4096, 65536, 1 << 20, rng.randrange(1, 300000)])
        ln = min(ln, z + ZONE - off)
        if ln <= 0:
            continue
        if k < 0.7:
            cmds.append(f"write -P {rng.randrange(1, 256)} {off} {ln}")
        elif k < 0.8:
            cmds.append(f"write -z {off} {ln}")
        elif k < 0.9:
            cmds.append(f"discard {off} {ln}")
        else:
            cmds.append("flush")
    return cmds


class Shadow:
    """What the zones of the raw file should hold; a bytearray per zone."""

    def __init__(self, zones):
        self.z = {z: bytearray(ZONE) for z in zones}

    def _parts(self, lo, hi):
        for z, buf in self.z.items():
            a, b = max(lo, z), min(hi, z + ZONE)
            if a < b:
                yield buf, a - z, b - z, a - lo

    def set(self, lo, data):
        for buf, a, b, k in self._parts(lo, lo + len(data)):
            buf[a:b] = data[k:k + b - a]

    def get(self, lo, hi):
        out = bytearray(hi - lo)
        for buf, a, b, k in self._parts(lo, hi):
            out[k:k + b - a] = buf[a:b]
        return bytes(out)

    def copy(self):
        s = Shadow([])
        s.z = {z: bytearray(b) for z, b in self.z.items()}
        return s


def read_zones(raw, zones):
    out = {}
    with open(raw, "rb") as f:
        for z in zones:
            f.seek(z)
            out[z] = f.read(ZONE)
    return out


def granules(ops, g):
    """Sorted, merged ranges of the granules of g bytes that ops touch."""
    rs = sorted((lo // g * g, -(-hi // g) * g) for lo, hi in ops)
    merged = []
    for lo, hi in rs:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def outside(ranges, allowed):
    """Bytes of the sorted ranges not in the sorted allowed ranges."""
    total, j = 0, 0
    for lo, hi in ranges:
        while j < len(allowed) and allowed[j][1] <= lo:
            j += 1
        k = j
        while k < len(allowed) and allowed[k][0] < hi and lo < hi:
            if allowed[k][0] > lo:
                total += allowed[k][0] - lo
            lo = max(lo, allowed[k][1])
            k += 1
        if hi > lo:
            total += hi - lo
    return total


def main():
    need("qemu-img")
    need("qemu-nbd")
    need("nbdinfo")
    if NBD:
        need("qemu-io")
    if REMOTE:
        need("nbdkit")
    seed = int(os.environ.get("RAWTRACK_KILL_SEED", "1"))
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="rawtrack-kill9-")
    nbdkit = None
    try:
        raw = os.path.join(tmp, "disk.raw")
        img = os.path.join(tmp, "disk.qcow2")
        # Sparse: only the zones hold data.
        zones = sorted(m * MiB + rng.choice((0, MiB // 2)) for m in
                       rng.sample(range(SIZE // MiB - 1), ZONES))
        shadow = Shadow(zones)
        with open(raw, "wb") as f:
            f.truncate(SIZE)
            for z in zones:
                data = rng.randbytes(ZONE)
                f.seek(z)
                f.write(data)
                shadow.set(z, data)
        qimg = ["-f", "qcow2", img]
        if REMOTE:
            rsock = os.path.join(tmp, "remote.sock")
            rpid = os.path.join(tmp, "nbdkit.pid")
            nbdkit = subprocess.Popen(["nbdkit", "-f", "-U", rsock,
                                       "-P", rpid, "file", raw],
                                      stderr=subprocess.DEVNULL)
            # nbdkit writes its pid file once it listens; the socket file
            # exists before.  A generous bound: a loaded machine.
            deadline = time.monotonic() + 120
            while not (os.path.exists(rpid) and os.path.getsize(rpid) > 0):
                if nbdkit.poll() is not None or time.monotonic() > deadline:
                    sys.exit("FAIL: nbdkit did not start")
                time.sleep(0.01)
            run(RAWTRACK, "attach", "--cluster-size", "64k",
                f"nbd+unix:///?socket={rsock}", img)
            qimg = ["--image-opts",
                    f"driver=qcow2,file.filename={img},data-file.driver=nbd,"
                    f"data-file.server.type=unix,data-file.server.path={rsock}"]
        else:
            run(RAWTRACK, "attach", "--cluster-size", "64k", raw, img)
        run(RAWTRACK, "bitmap", "add", img, "b64k", "--granularity", "64k")
        run(RAWTRACK, "bitmap", "add", img, "b512", "--granularity", "512")
        run(RAWTRACK, "bitmap", "add", img, "off", "--disabled")
        killed_mid = 0
        worst = {"b64k": 0, "b512": 0}
        for rnd in range(ROUNDS):
            # Every other round the idle cooling runs every few ms, racing
            # with the writers; else at its default (1 s: rarely here).
            env = dict(os.environ)
            if rnd % 2:
                env["RAWTRACK_IDLE_MS"] = str(rng.choice((4, 20, 100)))
            for b in ("b64k", "b512"):
                run(RAWTRACK, "bitmap", "clear", img, b)
            start = shadow.copy()
            cmds = workload(rng, zones, 150)
            script = os.path.join(tmp, "cmds")
            with open(script, "w") as f:
                f.write("\n".join(cmds) + "\n")
            target = rng.randrange(0, len(cmds))
            if NBD:
                done = through_nbd(img, script, env, target, rng, tmp)
            else:
                p = subprocess.Popen([RAWTRACK, "io", img, "-f", script,
                                      "--mode", MODE],
                                     stdout=subprocess.PIPE, env=env,
                                     text=True)
                done = []
                while len(done) < target:
                    line = p.stdout.readline()
                    if not line:
                        break
                    done.append(line)
                time.sleep(rng.random() * 0.003)
                p.send_signal(signal.SIGKILL)
                rest, _ = p.communicate()
                done += rest.splitlines(keepends=True)
                p.wait()
            # Replay what was reported on the shadow; find the op in flight.
            unknown = []
            i = 0
            for c in cmds:
                if c == "flush":
                    continue
                w = c.split()
                off, ln = int(w[-2]), int(w[-1])
                if i < len(done):
                    line = done[i]
                    i += 1
                    assert f"at offset {off}" in line, (c, line)
                    if w[0] == "discard":
                        unknown.append((off, off + ln))
                    elif "-z" in w:
                        shadow.set(off, bytes(ln))
                    else:
                        shadow.set(off, bytes([int(w[2])]) * ln)
                    continue
                unknown.append((off, off + ln))      # in flight at the kill
                inflight = (off, off + ln)
                killed_mid += 1
                break
            else:
                inflight = None
            reported_ops = []
            i = 0
            for c in cmds:
                if c == "flush":
                    continue
                if i >= len(done):
                    break
                w = c.split()
                reported_ops.append((int(w[-2]), int(w[-2]) + int(w[-1])))
                i += 1
            # 0. QEMU view: consistent flags (lazy mode fails here).
            info = json.loads(run("qemu-img", "info", "--output=json", *qimg))
            for bm in info["format-specific"]["data"].get("bitmaps", []):
                if "in-use" in bm["flags"]:
                    sys.exit(f"FAIL round {rnd}: bitmap {bm['name']} in use "
                             f"(inconsistent) after the kill")
            # 1. bitmaps cover every reported op, and every sector that
            # changed (the op in flight as far as it landed); the bound.
            disk = read_zones(raw, zones)
            changed = []
            for z in zones:
                before = start.z[z]
                if disk[z] == before:
                    continue
                for k in range(0, ZONE, 512):
                    if disk[z][k:k + 512] != before[k:k + 512]:
                        changed.append((z + k, z + k + 512))
            for b, g in (("b64k", 65536), ("b512", 512)):
                rngs = dirty_ranges(dump(img, b))
                for lo, hi in reported_ops:
                    if not covered(rngs, lo, hi):
                        sys.exit(f"FAIL round {rnd}: {b} does not cover "
                                 f"reported op [{lo},{hi})")
                for lo, hi in changed:
                    if not covered(rngs, lo, hi):
                        sys.exit(f"FAIL round {rnd}: sector {lo} changed on "
                                 f"disk but is clean in {b} (op in flight: "
                                 f"{inflight})")
                ops = reported_ops + ([inflight] if inflight else [])
                over = outside(rngs, granules(ops, g))
                worst[b] = max(worst[b], over)
                if over > BOUND:
                    sys.exit(f"FAIL round {rnd}: {b} reports {over / MiB:.1f} "
                             f"MiB outside what was written, past the bound "
                             f"of {BOUND // MiB} MiB")
            if dirty_ranges(dump(img, "off")):
                sys.exit(f"FAIL round {rnd}: disabled bitmap is dirty")
            # 2. QEMU view: check, and the same bits.
            run("qemu-img", "check", *qimg, ok=(0, 3))
            if rnd % 6 == 0:
                for b in ("b64k", "b512"):
                    q = json.loads(run("nbdinfo", f"--map=qemu:dirty-bitmap:{b}",
                                       "--json", "--", "[", "qemu-nbd", "-r",
                                       "-B", b, *qimg, "]"))
                    qd = [(e["offset"], e["offset"] + e["length"]) for e in q
                          if e["type"] & 1]
                    rd = dirty_ranges(dump(img, b))
                    if qd != rd:
                        sys.exit(f"FAIL round {rnd}: QEMU and rawtrack "
                                 f"disagree on {b}:\n{qd[:5]}\n{rd[:5]}")
            # 3. data: what was reported is there.
            for lo, hi in unknown:
                for z in zones:
                    a, b = max(lo, z), min(hi, z + ZONE)
                    if a < b:
                        shadow.set(a, disk[z][a - z:b - z])
            for z in zones:
                if disk[z] != shadow.z[z]:
                    first = z + next(k for k in range(ZONE)
                                     if disk[z][k] != shadow.z[z][k])
                    ops = [c for c in cmds if c != "flush" and
                           int(c.split()[-2]) <= first <
                           int(c.split()[-2]) + int(c.split()[-1])]
                    sys.exit(f"FAIL round {rnd}: raw file differs from what "
                             f"was reported at byte {first}; {len(done)} "
                             f"done; ops there: {ops[:4]}")
        print(f"test-kill9{' (remote)' if REMOTE else ' (nbd)' if NBD else ''}"
              f" ({MODE}): {ROUNDS} kills "
              f"({killed_mid} mid-operation) on a {SIZE >> 30} GiB disk "
              f"passed; worst over-report outside what was written: "
              + ", ".join(f"{b} {v / MiB:.2f} MiB" for b, v in worst.items())
              + f" (bound {BOUND // MiB} MiB)")
    finally:
        if nbdkit:
            nbdkit.terminate()
            nbdkit.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.exit(99)             # the test broke: not a detected failure
