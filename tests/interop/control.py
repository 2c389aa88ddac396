#!/usr/bin/env python3
# rawtrack tests: send requests to a `rawtrack serve --control` socket.
#
#   control.py SOCKET REQUEST...   each REQUEST a JSON object (one line);
#                                  prints each response line; exits 0 if
#                                  every response has "ok": true, else 1
#   control.py --raw SOCKET BYTES  send BYTES as they are (may span lines,
#                                  be malformed or huge) and print the
#                                  response lines that come back within
#                                  a second of the last one
import json
import socket
import sys


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def read_line(f):
    line = f.readline()
    if not line:
        raise SystemExit("control.py: the server closed the connection")
    return line.decode()


def main():
    args = sys.argv[1:]
    if args and args[0] == "--raw":
        s = connect(args[1])
        s.sendall(args[2].encode().decode("unicode_escape").encode("latin-1"))
        s.settimeout(2.0)
        buf = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except socket.timeout:
            pass
        sys.stdout.write(buf.decode())
        return 0
    s = connect(args[0])
    f = s.makefile("rb")
    ok = True
    for req in args[1:]:
        s.sendall(req.encode() + b"\n")
        line = read_line(f)
        sys.stdout.write(line)
        if not json.loads(line).get("ok"):
            ok = False
    return 0 if ok else 1


sys.exit(main())
