#!/usr/bin/env python3
# check-layers.py: hold lib/internal.h's layering diagram to the code.
#
# Reads the numbered diagram at the top of lib/internal.h ("a file calls
# only files on lower lines") and every lib/*.c, finds each call from one
# file to a non-static function defined in another, and fails when a call
# goes to a file on the same line or above, or when a lib/*.c file is
# missing from the diagram.  The leaves the diagram names (errors.c,
# memory.c, datafile.c) may be called from anywhere; a call upwards that
# the diagram names on an "up:" line is allowed.
import glob
import os
import re
import sys

src = os.environ.get("SRCDIR") or os.path.join(os.path.dirname(__file__),
                                               "..", "..")
lib = os.path.join(src, "lib")
text = open(os.path.join(lib, "internal.h")).read()
m = re.search(r"\* Layering:(.*?)\n \*\n \* One guest request", text, re.S)
if not m:
    sys.exit("check-layers: no layering diagram in lib/internal.h")
block = m.group(1)
leaves = set(re.findall(r"([a-z0-9-]+\.c)", block.split("\n *\n")[0]))
# Calls allowed upwards, each named in the diagram: "up: X -> A B".
allowed_up = set()
for um in re.finditer(r"up: ([a-z0-9-]+\.c) -> ((?:[a-z0-9-]+\.c\s*)+)", block):
    for to in um.group(2).split():
        allowed_up.add((um.group(1), to))
layer = {}
current = None
for line in block.split("\n *\n", 1)[1].split("\n *\n")[0].splitlines():
    lm = re.match(r"^ \*\s+(\d+)?\s+(.*)$", line)
    if not lm:
        continue
    if lm.group(1):
        current = int(lm.group(1))
    # the file names at the start of the line (before the description)
    files = re.match(r"((?:[a-z0-9-]+\.c\s*)*)", lm.group(2)).group(1)
    for f in files.split():
        layer[f] = current
if not layer:
    sys.exit("check-layers: could not read the diagram")

defs = {}
static = {}
sources = {}
for path in sorted(glob.glob(os.path.join(lib, "*.c"))):
    name = os.path.basename(path)
    s = open(path).read()
    sources[name] = s
    static[name] = set(re.findall(r"^static [^\n]*\n([a-z_0-9]+) \(", s,
                                  re.M))
    for fm in re.finditer(r"^([a-z_0-9]+) \(", s, re.M):
        if fm.group(1) not in static[name]:
            defs.setdefault(fm.group(1), name)

bad = []
for name in sources:
    if name not in layer and name not in leaves:
        bad.append(f"lib/{name} is not in the diagram of lib/internal.h")
for name, s in sources.items():
    if name in leaves or name not in layer:
        continue
    for call in sorted(set(re.findall(r"\b([a-z_0-9]+) ?\(", s))):
        to = defs.get(call)
        if (not to or to == name or call in static[name] or to in leaves or
                to not in layer):
            continue
        if layer[to] <= layer[name] and (name, to) not in allowed_up:
            bad.append(f"lib/{name} (line {layer[name]}) calls {call} of "
                       f"lib/{to} (line {layer[to]}): not below it")
for b in bad:
    print("check-layers:", b, file=sys.stderr)
if bad:
    sys.exit(1)
print(f"check-layers: {len(layer)} files on {len(set(layer.values()))} "
      f"lines, every call goes down")
