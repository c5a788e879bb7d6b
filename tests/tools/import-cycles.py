#!/usr/bin/env python3
"""Module import graph of one crate's src/ directory, and its cycles.

Usage: import-cycles.py SRC_DIR... [--granularity file|top] [--edges]

`make lint` runs it over every crate of the workspace: the dependency graph of a crate's
modules is its architecture, and a cycle is two modules that cannot change apart.

Nodes are modules (one per file: lib.rs/main.rs is the root `crate`, a/b.rs or a/b/mod.rs is
`a::b`). An edge M -> N means M names something in N through a `crate::`, `super::`, `self::`
or child-module path. A path is resolved to the longest module prefix it names, so
`crate::Inputs` (an item of lib.rs) is an edge to `crate`. Test modules are left out: files
named tests.rs or under a tests/ directory, and inline `#[cfg(test)] mod tests { ... }` blocks.
With `--granularity top`, submodules are folded into their top-level module.
"""
import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3]  # strip .rs
    parts = rel.split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return ()
    return tuple(parts)


def strip(text):
    # Remove inline test modules (brace-matched), comments and string literals.
    out = text
    for m in reversed(list(re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", out))):
        depth, i = 0, m.end() - 1
        while i < len(out):
            if out[i] == "{":
                depth += 1
            elif out[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        out = out[: m.start()] + out[i + 1 :]
    out = re.sub(r"//[^\n]*", "", out)
    out = re.sub(r"/\*.*?\*/", "", out, flags=re.S)
    out = re.sub(r'r#*"(?:.|\n)*?"#*', '""', out)
    out = re.sub(r'"(?:\\.|[^"\\])*"', '""', out)
    return out


def expand(prefix, body):
    """Expands a `{a, b::{c, d}}` group into paths."""
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    paths = []
    for it in items:
        it = it.strip()
        if not it:
            continue
        m = re.match(r"([\w:]*?)::\{(.*)\}$", it, flags=re.S)
        if m:
            paths += expand(prefix + [p for p in m.group(1).split("::") if p], m.group(2))
        else:
            it = re.split(r"\s+as\s+", it)[0]
            paths.append(prefix + [p for p in it.split("::") if p])
    return paths


def paths_in(text):
    """Every path that starts with crate/super/self or a bare identifier in a `use`."""
    found = []
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::\{", text):
        # find matching brace
        start = m.end() - 1
        depth, i = 0, start
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        found += expand(m.group(1).split("::"), text[start + 1 : i])
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        found.append(m.group(1).split("::"))
    # Glob imports name the module itself (`use crate::*`, `use super::*`).
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::\*", text):
        found.append(m.group(1).split("::"))
    for m in re.finditer(r"\buse\s+(\w+)((?:::\w+)*)(::\{)?", text):
        head = m.group(1)
        if head in ("crate", "super", "self", "std", "core", "alloc"):
            continue
        found.append([head] + [p for p in m.group(2).split("::") if p])
    # Bare child-module paths in expressions (`mechanisms::compile_policy(..)`).
    for m in re.finditer(r"(?<![:\w])(\w+)::(\w+)", text):
        # `crate::a::b` is read whole above: its first two segments alone would name `a`
        # too, an edge to the parent of the module actually used.
        if m.group(1) not in ("crate", "super", "self"):
            found.append([m.group(1), m.group(2)])
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--") and a not in ("file", "top")]
    return max(check(src) for src in args)


def check(src):
    top = "--granularity" in sys.argv and sys.argv[sys.argv.index("--granularity") + 1] == "top"
    show_edges = "--edges" in sys.argv
    files = {}
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if d != "tests" and d != "bin"]
        for n in names:
            if n.endswith(".rs") and n != "tests.rs":
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    modules = set(files)
    edges = {m: set() for m in modules}
    for mod, path in files.items():
        text = strip(open(path, encoding="utf-8").read())
        children = {m[-1] for m in modules if len(m) == len(mod) + 1 and m[: len(mod)] == mod}
        for p in paths_in(text):
            if p[0] == "crate":
                base, rest = (), p[1:]
            elif p[0] == "super":
                base, rest = mod, p
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
            elif p[0] == "self":
                base, rest = mod, p[1:]
            elif p[0] in children:
                base, rest = mod, p
            else:
                continue
            target = base
            for seg in rest:
                if target + (seg,) in modules:
                    target = target + (seg,)
                else:
                    break
            if target != mod:
                edges[mod].add(target)

    def name(m):
        if top:
            m = m[:1]
        return "::".join(m) or "crate"

    graph = {}
    for m, ts in edges.items():
        a = name(m)
        graph.setdefault(a, set())
        for t in ts:
            b = name(t)
            if a != b:
                graph[a].add(b)
                graph.setdefault(b, set())
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    print(f"{src}: {len(graph)} modules, {sum(len(t) for t in graph.values())} import edges")
    if show_edges:
        for v in sorted(graph):
            print(f"  {v} -> {', '.join(sorted(graph[v])) or '(nothing)'}")
    cycles = [c for c in sccs if len(c) > 1]
    if not cycles:
        print("  no import cycle")
        return 0
    for c in cycles:
        print("  CYCLE among: " + ", ".join(c))
    return 1


if __name__ == "__main__":
    sys.exit(main())
