#!/usr/bin/env python3
"""Source checks that make STYLE.md and the layering rules checkable (make lint):

  wire       a Kafka topic or a "parley:" Redis key spelled out anywhere but include/parley/wire.h
             and libs/parley/wire.c (the one place the names live)
  banned     strcpy, strcat, sprintf, vsprintf, strtok, gets, atoi, atol, atoll (STYLE.md: no
             bounds, or no error report)
  length     a function other than main() over MAX_LINES lines (services, library, clients)
  cycles     an include cycle between the modules of one service (a module is foo.c + foo.h)

Prints every finding as path:line: message and exits 1 when there is any. Pure text
analysis: it reads the tracked C sources, compiles and runs nothing.
"""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIRS = ["include", "libs", "services", "clients", "tests/unit", "tests/fuzz"]
LENGTH_DIRS = ("include/", "libs/", "services/", "clients/")  # tests may run long
WIRE_HOME = {"include/parley/wire.h", "libs/parley/wire.c"}
MAX_LINES = 80
WIRE_RE = re.compile(r'"parley(\.messages|\.committed|:[a-z])')
BANNED_RE = re.compile(r"(?<![\w.>])(strcpy|strcat|sprintf|vsprintf|strtok|gets|atoi|atol|atoll)\s*\(")
FUNC_START_RE = re.compile(r"^([A-Za-z_][\w \*]*?[\s\*])?([A-Za-z_]\w*)\s*\(")


def sources():
    for d in DIRS:
        for base, _, files in os.walk(os.path.join(ROOT, d)):
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    yield os.path.relpath(os.path.join(base, f), ROOT)


def strip_comments(text):
    """Blanks comments but keeps line breaks and string literals, so line numbers hold."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while j < n and text[j] != q and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def check_wire(path, lines, report):
    if path in WIRE_HOME:
        return
    for no, line in enumerate(lines, 1):
        if WIRE_RE.search(line):
            report(path, no, "topic or Redis key spelled out: use parley/wire.h")


def check_banned(path, lines, report):
    for no, line in enumerate(lines, 1):
        code = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        m = BANNED_RE.search(code)
        if m:
            report(path, no, f"{m.group(1)}() is banned (STYLE.md): use snprintf, strtol, memcpy")


def functions(lines):
    """(name, first line, length) of every function whose body opens with '{' in column 0."""
    for i, line in enumerate(lines):
        if line.rstrip() != "{" or i == 0:
            continue
        # The signature ends on the line above; its name is on the first line of it.
        j = i - 1
        while j > 0 and not FUNC_START_RE.match(lines[j]) and lines[j].startswith((" ", "\t")):
            j -= 1
        m = FUNC_START_RE.match(lines[j])
        if not m or lines[j].lstrip().startswith(("struct", "typedef", "enum", "union", "static const", "const")) and "(" not in lines[j]:
            continue
        k = i + 1
        while k < len(lines) and lines[k].rstrip() != "}":
            k += 1
        yield m.group(2), j + 1, k - i - 1


def check_length(path, lines, report):
    if not path.endswith(".c") or not path.startswith(LENGTH_DIRS):
        return
    for name, first, n in functions(lines):
        if name != "main" and n > MAX_LINES:
            report(path, first, f"{name}() has {n} lines; at most {MAX_LINES} outside main()")


def check_cycles(paths, report):
    services = sorted({p.split("/")[1] for p in paths if p.startswith("services/")})
    for svc in services:
        files = [p for p in paths if p.startswith(f"services/{svc}/")]
        mods = {os.path.splitext(os.path.basename(p))[0] for p in files}
        graph = {m: set() for m in mods}
        for p in files:
            me = os.path.splitext(os.path.basename(p))[0]
            with open(os.path.join(ROOT, p)) as f:
                for inc in re.findall(r'^#include "([\w.]+)\.h"', f.read(), re.M):
                    if inc in mods and inc != me:
                        graph[me].add(inc)
        state = {}

        def visit(m, stack):
            state[m] = 1
            for n in sorted(graph[m]):
                if state.get(n) == 1:
                    cyc = stack[stack.index(n):] + [n] if n in stack else [m, n]
                    report(f"services/{svc}", 0, "include cycle: " + " -> ".join(cyc))
                elif n not in state:
                    visit(n, stack + [n])
            state[m] = 2

        for m in sorted(graph):
            if m not in state:
                visit(m, [m])


def main():
    findings = []

    def report(path, line, msg):
        findings.append(f"{path}:{line}: {msg}")

    paths = list(sources())
    for p in paths:
        with open(os.path.join(ROOT, p)) as f:
            lines = strip_comments(f.read()).split("\n")
        check_wire(p, lines, report)
        check_banned(p, lines, report)
        check_length(p, lines, report)
    check_cycles(paths, report)
    for f in findings:
        print(f)
    print(f"lint: {len(paths)} files, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
