#!/usr/bin/env python3
# nbd-hostile.py SOCKET [--readonly] [--bitmap NAME]
#
# A raw NBD protocol client for tests: drives `rawtrack serve` through
# well-formed and malformed handshakes and requests, checks each answer
# against the protocol, and checks after every hostile case that a good
# connection opened at the start still works.  Exit 0 if every check
# passed; the first failure raises.
import os
import random
import socket
import struct
import sys
import time

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003e889045565a9
REQ_MAGIC = 0x25609513
EXT_REQ_MAGIC = 0x21e41c71
SIMPLE = 0x67446698
STRUCT = 0x668e33ef
EXT = 0x6e8a278c

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_SR = 6, 7, 8
OPT_LIST_META, OPT_SET_META, OPT_EXT = 9, 10, 11
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID = ERR | 1, ERR | 2, ERR | 3
ERR_UNKNOWN, ERR_EXT_HEADER_REQD = ERR | 6, ERR | 10

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_CACHE, CMD_ZERO, CMD_BS = 5, 6, 7
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO, F_PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT, T_ERROR = 0, 1, 2, 5, 6, 0x8001
EPERM, EINVAL, ENOSPC, ENOTSUP = 1, 22, 28, 95

SOCK = sys.argv[1]
READONLY = "--readonly" in sys.argv
BITMAP = sys.argv[sys.argv.index("--bitmap") + 1] if "--bitmap" in sys.argv else None
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


class Closed(Exception):
    pass


class Conn:
    def __init__(self, greet=True):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(60)
        self.s.connect(SOCK)
        self.sr = self.ext = False
        self.size = None
        if greet:
            g = self.recv(18)
            m, o, f = struct.unpack(">QQH", g)
            check(m == NBDMAGIC and o == IHAVEOPT and f == 3, "greeting")

    def send(self, b):
        self.s.sendall(b)

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            try:
                d = self.s.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError):
                d = b""
            if not d:
                raise Closed()
            buf += d
        return buf

    def closed(self, wait=60.0):
        """True if the server closes the connection (EOF) within wait s
        (generous: only a server that never closes waits it out)."""
        self.s.settimeout(wait)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.s.settimeout(60)

    def close(self):
        self.s.close()

    # -- handshake
    def flags(self, f=3):
        self.send(struct.pack(">I", f))

    def opt(self, o, payload=b""):
        self.send(struct.pack(">QII", IHAVEOPT, o, len(payload)) + payload)

    def reply(self):
        m, o, t, n = struct.unpack(">QIII", self.recv(20))
        check(m == REPMAGIC, "option reply magic")
        return o, t, self.recv(n)

    def replies(self, o):
        """Replies to option o up to the final one: (list, final type)."""
        out = []
        while True:
            ro, t, p = self.reply()
            check(ro == o, "option echoed")
            if t == REP_ACK or t & ERR:
                return out, t
            out.append((t, p))

    def go(self, name=b"", infos=(3,), o=OPT_GO):
        p = struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
        p += b"".join(struct.pack(">H", i) for i in infos)
        self.opt(o, p)
        rs, t = self.replies(o)
        if t == REP_ACK:
            for rt, rp in rs:
                if rt == REP_INFO and struct.unpack(">H", rp[:2])[0] == 0:
                    check(len(rp) == 12, "INFO_EXPORT length")
                    self.size, self.eflags = struct.unpack(">QH", rp[2:])
        return rs, t

    def meta(self, o, queries, name=b""):
        p = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
        for q in queries:
            p += struct.pack(">I", len(q)) + q
        self.opt(o, p)
        rs, t = self.replies(o)
        return [(struct.unpack(">I", rp[:4])[0], rp[4:].decode()) for _, rp in rs], t

    def setup(self, ext=False, contexts=(b"base:allocation",)):
        self.flags()
        if ext:
            self.opt(OPT_EXT)
            _, t = self.replies(OPT_EXT)
            check(t == REP_ACK, "EXTENDED_HEADERS acked")
            self.ext = self.sr = True
        else:
            self.opt(OPT_SR)
            _, t = self.replies(OPT_SR)
            check(t == REP_ACK, "STRUCTURED_REPLY acked")
            self.sr = True
        self.ctx = {}
        if contexts:
            rs, t = self.meta(OPT_SET_META, list(contexts))
            check(t == REP_ACK, "SET_META acked")
            self.ctx = {i: n for i, n in rs}
        _, t = self.go()
        check(t == REP_ACK, "GO acked")
        return self

    # -- transmission
    def req(self, typ, off, length, flags=0, cookie=1, data=b""):
        if self.ext:
            if data:
                flags |= F_PAYLOAD_LEN
                length = len(data)
            self.send(struct.pack(">IHHQQQ", EXT_REQ_MAGIC, flags, typ, cookie,
                                  off, length) + data)
        else:
            self.send(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie,
                                  off, length) + data)

    def chunk(self):
        """One reply unit: ('simple', err, cookie) or
        ('chunk', flags, type, cookie, payload)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return ("simple", err, cookie)
        if magic == STRUCT:
            check(not self.ext, "no compact chunks in extended mode")
            f, t, cookie, n = struct.unpack(">HHQI", self.recv(16))
            return ("chunk", f, t, cookie, self.recv(n))
        if magic == EXT:
            f, t, cookie, off, n = struct.unpack(">HHQQQ", self.recv(28))
            return ("chunk", f, t, cookie, self.recv(n))
        raise AssertionError("bad reply magic %x" % magic)

    def result(self, length_for_simple_read=None):
        """Whole reply of one request: (cookie, error, chunks)."""
        c = self.chunk()
        if c[0] == "simple":
            data = b""
            if c[1] == 0 and length_for_simple_read:
                data = self.recv(length_for_simple_read)
            return c[2], c[1], [("data", 0, data)] if data else []
        chunks, err = [], 0
        while True:
            _, f, t, cookie, p = c
            if t & 0x8000:
                e, n = struct.unpack(">IH", p[:6])
                err = e
                check(f & 1, "error chunk has DONE")
            chunks.append((t, p))
            if f & 1:
                return cookie, err, chunks
            c = self.chunk()
            check(c[0] == "chunk" and c[3] == cookie, "chunks of one reply")

    def read(self, off, length, flags=0, cookie=7):
        self.req(CMD_READ, off, length, flags, cookie)
        ck, err, chunks = self.result(length)
        check(ck == cookie, "cookie echoed")
        if err:
            return err, None, chunks
        buf = bytearray(length)
        for t, p in chunks:
            if t == "data":
                buf[:] = p
            elif t == T_DATA:
                o = struct.unpack(">Q", p[:8])[0] - off
                buf[o:o + len(p) - 8] = p[8:]
            elif t == T_HOLE:
                o, n = struct.unpack(">QI", p)
                check(n > 0, "hole length")
        return 0, bytes(buf), chunks

    def simple_cmd(self, typ, off, length, flags=0, cookie=9, data=b""):
        self.req(typ, off, length, flags, cookie, data)
        ck, err, chunks = self.result()
        check(ck == cookie, "cookie echoed")
        return err


def good_still_works(good):
    err, data, _ = good.read(0, 4096, cookie=random.randrange(1 << 63))
    check(err == 0 and len(data) == 4096, "good connection still works")


def expect_close(c, what):
    check(c.closed(), what + ": connection closed")
    c.close()


def hostile_handshakes(good):
    # Garbage instead of client flags (unknown bits).
    c = Conn()
    c.send(b"\xff\xff\xff\xff garbage")
    expect_close(c, "garbage client flags")
    # Bad option magic.
    c = Conn(); c.flags()
    c.send(struct.pack(">QII", 0x1234, OPT_GO, 0))
    expect_close(c, "bad option magic")
    # Huge option length.
    c = Conn(); c.flags()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFFF))
    expect_close(c, "huge option length")
    # Unknown option: ERR_UNSUP, negotiation goes on.
    c = Conn(); c.flags()
    c.opt(99, b"x" * 100)
    _, t = c.replies(99)
    check(t == ERR_UNSUP, "unknown option -> ERR_UNSUP")
    c.opt(OPT_STARTTLS)
    _, t = c.replies(OPT_STARTTLS)
    check(t == ERR_POLICY, "STARTTLS -> ERR_POLICY")
    c.opt(OPT_LIST, b"junk")
    _, t = c.replies(OPT_LIST)
    check(t == ERR_INVALID, "LIST with payload -> ERR_INVALID")
    c.opt(OPT_LIST)
    rs, t = c.replies(OPT_LIST)
    check(t == REP_ACK and len(rs) == 1 and rs[0][0] == REP_SERVER, "LIST")
    c.opt(OPT_SET_META, struct.pack(">II", 0, 0))
    _, t = c.replies(OPT_SET_META)
    check(t == ERR_INVALID, "SET_META before SR -> ERR_INVALID")
    # Malformed INFO/GO.
    c.opt(OPT_GO, struct.pack(">I", 100) + b"ab")
    _, t = c.replies(OPT_GO)
    check(t == ERR_INVALID, "GO with inconsistent lengths")
    c.opt(OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 5))
    _, t = c.replies(OPT_GO)
    check(t == ERR_INVALID, "GO with missing info requests")
    _, t = c.go(b"x" * 5000)
    check(t == ERR_INVALID, "GO with a 5000-byte name")
    _, t = c.go(b"nonexistent")
    check(t == ERR_UNKNOWN, "GO with an unknown export")
    rs, t = c.go(b"", (0, 1, 2, 3, 77), o=OPT_INFO)
    check(t == REP_ACK, "INFO")
    types = sorted(struct.unpack(">H", p[:2])[0] for _, p in rs)
    check(0 in types and 3 in types and 1 in types, "INFO replies %s" % types)
    c.opt(OPT_SR)
    check(c.replies(OPT_SR)[1] == REP_ACK, "SR")
    c.opt(OPT_SR)
    check(c.replies(OPT_SR)[1] == ERR_INVALID, "SR twice -> ERR_INVALID")
    # LIST_META queries.
    allc, t = c.meta(OPT_LIST_META, [])
    names = [n for _, n in allc]
    check(t == REP_ACK and "base:allocation" in names and
          "qemu:allocation-depth" in names, "LIST_META all: %s" % names)
    check(all(i == 0 for i, _ in allc), "LIST ids are 0")
    rs, _ = c.meta(OPT_LIST_META, [b"base:"])
    check([n for _, n in rs] == ["base:allocation"], "base: wildcard")
    rs, _ = c.meta(OPT_LIST_META, [b"qemu:dirty-bitmap:"])
    check(all(n.startswith("qemu:dirty-bitmap:") for _, n in rs) and
          len(rs) == len(names) - 2, "qemu:dirty-bitmap: wildcard")
    rs, _ = c.meta(OPT_LIST_META, [b"qemu:"])
    check(len(rs) == len(names) - 1, "qemu: wildcard")
    rs, _ = c.meta(OPT_LIST_META, [b"nope:x", b"nocolon", b"base:xyz", b""])
    check(rs == [], "unknown queries match nothing")
    rs, t = c.meta(OPT_LIST_META, [], name=b"other")
    check(t == ERR_UNKNOWN, "LIST_META unknown export")
    c.opt(OPT_SET_META, struct.pack(">II", 0, 1) + struct.pack(">I", 50) + b"base")
    _, t = c.replies(OPT_SET_META)
    check(t == ERR_INVALID, "SET_META truncated query")
    rs, t = c.meta(OPT_SET_META, [b"base:allocation", b"base:allocation", b"qemu:"])
    check(t == REP_ACK and [n for _, n in rs] == ["base:allocation"],
          "SET selects exact names once")
    c.opt(OPT_ABORT)
    c.closed()
    c.close()
    good_still_works(good)

    # Too many options.
    c = Conn(); c.flags()
    n = 0
    try:
        for n in range(200):
            c.opt(99)
            c.replies(99)
    except (Closed, BrokenPipeError, ConnectionResetError):
        pass
    check(n < 199, "option flood is cut off (after %d)" % n)
    c.close()
    # EXPORT_NAME: unknown -> closed; "" -> size + flags (+ zeroes).
    c = Conn(); c.flags()
    c.opt(OPT_EXPORT_NAME, b"unknown")
    expect_close(c, "EXPORT_NAME unknown")
    c = Conn(); c.flags(1)
    c.opt(OPT_EXPORT_NAME, b"")
    r = c.recv(134)
    check(struct.unpack(">Q", r[:8])[0] > 0 and r[10:] == b"\0" * 124,
          "EXPORT_NAME reply with zero padding")
    c.close()
    c = Conn(); c.flags(3)
    c.opt(OPT_EXPORT_NAME, b"")
    c.recv(10)
    c.req(CMD_READ, 0, 512, cookie=3)
    ck, err, ch = c.result(512)
    check(ck == 3 and err == 0 and len(ch[0][2]) == 512, "simple read after EXPORT_NAME")
    c.close()
    # Extended headers then EXPORT_NAME: not allowed.
    c = Conn(); c.flags()
    c.opt(OPT_EXT)
    check(c.replies(OPT_EXT)[1] == REP_ACK, "EXT")
    c.opt(OPT_SR)
    check(c.replies(OPT_SR)[1] == ERR_EXT_HEADER_REQD, "SR after EXT")
    c.opt(OPT_EXPORT_NAME, b"")
    expect_close(c, "EXPORT_NAME after extended headers")
    good_still_works(good)


def hostile_requests(good):
    # Bad request magic: disconnect.
    c = Conn().setup()
    c.send(struct.pack(">IHHQQI", 0xdeadbeef, 0, 0, 1, 0, 512))
    expect_close(c, "bad request magic")
    c = Conn().setup()
    size = c.size
    check(c.simple_cmd(99, 0, 0) == EINVAL, "unknown command -> EINVAL")
    check(c.simple_cmd(CMD_READ, 0, 512, flags=0x4000) == EINVAL, "unknown flag")
    check(c.read(size - 512, 1024)[0] == EINVAL, "read past the end")
    check(c.read(1 << 63, 512)[0] == EINVAL, "read at a huge offset")
    check(c.read(0, 64 << 20)[0] == EINVAL, "read above 32 MiB")
    err, data, ch = c.read(0, 0)
    check(err == 0 and ch == [(T_NONE, b"")], "zero-length read")
    check(c.simple_cmd(CMD_BS, 0, 0) == EINVAL, "block status length 0")
    check(c.simple_cmd(CMD_BS, size, 512) == EINVAL, "block status past the end")
    check(c.simple_cmd(CMD_CACHE, 0, 65536) == 0, "CACHE")
    check(c.simple_cmd(CMD_FLUSH, 0, 0) == 0, "FLUSH")
    check(c.simple_cmd(8, 0, 0) == EINVAL, "RESIZE refused")
    if READONLY:
        check(c.simple_cmd(CMD_WRITE, 0, 512, data=b"x" * 512) == EPERM,
              "write on a read-only export -> EPERM")
        check(c.simple_cmd(CMD_ZERO, 0, 512) == EPERM, "zero read-only")
        check(c.simple_cmd(CMD_TRIM, 0, 512) == EPERM, "trim read-only")
    else:
        check(c.simple_cmd(CMD_WRITE, size - 256, 512, data=b"y" * 512) == ENOSPC,
              "write past the end -> ENOSPC (payload drained)")
        e = c.simple_cmd(CMD_ZERO, 0, 65536, flags=F_FAST_ZERO)
        check(e in (0, ENOTSUP), "FAST_ZERO -> ok or ENOTSUP, got %d" % e)
    # REQ_ONE: exactly one extent per context, within the request.
    c.req(CMD_BS, 0, size, F_REQ_ONE, cookie=11)
    ck, err, ch = c.result()
    check(err == 0 and len(ch) == 1 and ch[0][0] == T_BS and
          len(ch[0][1]) == 12, "REQ_ONE: one extent")
    # Pipelining: many requests at once, replies matched by cookie.
    for i in range(64):
        c.req(CMD_READ, (i * 4096) % (size - 4096), 4096, cookie=1000 + i)
    seen = set()
    for i in range(64):
        ck, err, ch = c.result()
        check(err == 0, "pipelined read")
        seen.add(ck)
    check(seen == set(range(1000, 1064)), "all cookies answered")
    # DF: one chunk.
    err, data, ch = c.read(0, 1 << 20, F_DF)
    check(err == 0 and len(ch) == 1 and ch[0][0] == T_DATA, "DF: a single chunk")
    # DISC with a request in flight: the request is answered, then EOF.
    c.req(CMD_READ, 0, 65536, cookie=77)
    c.req(CMD_DISC, 0, 0)
    ck, err, _ = c.result()
    check(ck == 77 and err == 0, "request before DISC answered")
    expect_close(c, "after DISC")
    # Oversized WRITE payload: error, then disconnect.
    c = Conn().setup()
    c.req(CMD_WRITE, 0, 64 << 20)
    ck, err, _ = c.result()
    check(err == EINVAL, "oversized WRITE -> EINVAL")
    expect_close(c, "oversized WRITE")
    # Block status without contexts.
    c = Conn().setup(contexts=())
    check(c.simple_cmd(CMD_BS, 0, 4096) == EINVAL, "BLOCK_STATUS without contexts")
    c.close()
    # Simple replies without structured replies: BLOCK_STATUS refused.
    c = Conn(); c.flags()
    _, t = c.go()
    check(t == REP_ACK and not (c.eflags & 0x80), "no DF without SR")
    check(c.simple_cmd(CMD_BS, 0, 4096) == EINVAL, "BLOCK_STATUS without SR")
    c.req(CMD_READ, 0, 4096, cookie=5)
    ck, err, ch = c.result(4096)
    check(ck == 5 and err == 0, "simple read")
    c.close()
    good_still_works(good)


def extended(good):
    ctxs = [b"base:allocation", b"qemu:allocation-depth"]
    if BITMAP:
        ctxs.append(b"qemu:dirty-bitmap:" + BITMAP.encode())
    c = Conn().setup(ext=True, contexts=ctxs)
    check(len(c.ctx) == len(ctxs), "extended: contexts selected")
    err, data, ch = c.read(0, 1 << 20)
    check(err == 0 and all(t in (T_DATA, T_HOLE) for t, _ in ch), "extended READ")
    if not READONLY:
        pat = os.urandom(8192)
        check(c.simple_cmd(CMD_WRITE, 1 << 20, 0, data=pat) == 0, "extended WRITE")
        err, data, _ = c.read(1 << 20, 8192)
        check(data == pat, "extended read back")
        # A 64-bit effect length for zeroing would be refused only past the end.
        check(c.simple_cmd(CMD_ZERO, 1 << 20, 8192, F_NO_HOLE) == 0, "zero NO_HOLE")
        err, data, _ = c.read(1 << 20, 8192)
        check(data == b"\0" * 8192, "zeroed")
    c.req(CMD_FLUSH, 0, 0, cookie=44)
    ck, err, ch = c.result()
    check(ck == 44 and err == 0 and ch == [(T_NONE, b"")], "extended: NONE chunk")
    c.req(CMD_BS, 0, c.size, cookie=45)
    ck, err, ch = c.result()
    check(err == 0 and len(ch) == len(ctxs), "one chunk per context")
    ends = set()
    for t, p in ch:
        check(t == T_BS_EXT, "BLOCK_STATUS_EXT")
        cid, n = struct.unpack(">II", p[:8])
        check(cid in c.ctx and len(p) == 8 + 16 * n and n > 0, "ext descriptors")
        tot = 0
        for i in range(n):
            ln, fl = struct.unpack(">QQ", p[8 + 16 * i: 24 + 16 * i])
            check(ln > 0 and fl < (1 << 32), "extent")
            tot += ln
        ends.add(tot)
    check(len(ends) == 1, "contexts cover the same range")
    check(c.simple_cmd(CMD_READ, 0, 512, flags=F_PAYLOAD_LEN, data=b"z" * 16) == EINVAL,
          "payload on READ -> EINVAL (drained)")
    err, data, _ = c.read(0, 512)
    check(err == 0, "still in sync after a stray payload")
    c.send(struct.pack(">IHHQQQ", EXT_REQ_MAGIC, F_PAYLOAD_LEN, CMD_WRITE, 1, 0, 1 << 40))
    expect_close(c, "extended: huge payload")
    good_still_works(good)


def garbage(good, rounds):
    rnd = random.Random(42)
    for i in range(rounds):
        c = Conn(greet=(i % 3 != 0))
        try:
            if i % 3 == 1:
                c.flags()
                c.send(os.urandom(rnd.randrange(1, 400)))
            elif i % 3 == 2:
                c.flags()
                c.opt(OPT_SR); c.replies(OPT_SR)
                c.go()
                for _ in range(rnd.randrange(1, 8)):
                    typ = rnd.choice([0, 1, 3, 4, 5, 6, 7, 9, 200])
                    hdr = struct.pack(">IHHQQI", REQ_MAGIC, rnd.randrange(1 << 16),
                                      typ, rnd.randrange(1 << 64),
                                      rnd.choice([0, rnd.randrange(1 << 64)]),
                                      rnd.choice([0, 512, rnd.randrange(1 << 32)]))
                    c.send(hdr + os.urandom(rnd.randrange(0, 64)))
            else:
                c.send(os.urandom(rnd.randrange(1, 200)))
        except (Closed, BrokenPipeError, ConnectionResetError):
            pass
        c.close()
    good_still_works(good)


def main():
    good = Conn().setup()
    good_still_works(good)
    hostile_handshakes(good)
    hostile_requests(good)
    extended(good)
    garbage(good, 60)
    # The handshake timeout: a silent client is dropped.
    if "--timeout" in sys.argv:
        limit = float(sys.argv[sys.argv.index("--timeout") + 1])
        c = Conn()
        t0 = time.time()
        check(c.closed(wait=limit + 60), "silent client dropped")
        check(time.time() - t0 >= limit - 0.5, "not before the timeout")
        c.close()
    good_still_works(good)
    good.req(CMD_DISC, 0, 0)
    check(good.closed(), "good connection closed after DISC")
    print("nbd-hostile: %d checks passed" % checks)


if __name__ == "__main__":
    main()
