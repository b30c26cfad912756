#!/usr/bin/env python3
"""The engine's module import graph, from every `crate::…` path in engine/src.

Prints the edges between the crate's top-level modules (writer, engine, cluster, …) and every
cycle among them (strongly connected components). With --no-cycle-through MODULE (repeatable),
exits 1 when a named module is part of a cycle: issue 23 asked that no cycle run through the
writer, and CI keeps it so.

Usage: .ci/modgraph.py [--src engine/src] [--no-cycle-through writer] [--edges]
"""
import argparse
import os
import re
import sys

PATH = re.compile(r"\bcrate::((?:[A-Za-z_][A-Za-z0-9_]*::)*\{?)")


def modules(src):
    """Every module of the crate by path (`writer::batch`) → its file."""
    mods = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]):
                rel = []
            mods["::".join(rel)] = os.path.join(root, name)
    return mods


def strip_comments(text):
    # Doc comments name modules in prose and links; only code counts.
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    # Unit tests may reach anywhere: the graph is about what the code depends on.
    return text.split("#[cfg(test)]", 1)[0]


IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def expand(rest):
    """The paths a `use` tree or an inline path starting at `rest` names (prefix-relative)."""
    out, path = [], []
    i = 0
    while True:
        m = re.match(IDENT, rest[i:])
        if m:
            path.append(m.group(0))
            i += m.end()
            if rest.startswith("::", i):
                i += 2
                continue
            out.append(path)
            return out
        if rest.startswith("{", i):
            depth, j = 0, i
            for j in range(i, len(rest)):
                depth += rest[j] == "{"
                depth -= rest[j] == "}"
                if depth == 0:
                    break
            inner, level, token = rest[i + 1:j], 0, ""
            for ch in inner + ",":
                if ch == "{":
                    level += 1
                elif ch == "}":
                    level -= 1
                elif ch == "," and level == 0:
                    token = token.strip()
                    if token:
                        out.extend(path + sub for sub in expand(token))
                    token = ""
                    continue
                token += ch
            return out
        out.append(path)
        return out


def resolve(mods, path):
    """The longest module `path` starts with."""
    for n in range(len(path), -1, -1):
        key = "::".join(path[:n])
        if key in mods:
            return key
    return ""


def ignored(a, b):
    """Whether `a` naming `b` is left out: a module naming itself or one of its ancestors (a
    child uses its parent's items as a matter of course; a parent naming a child — a call, a
    re-export — is an edge like any other)."""
    return a == b or a.startswith(b + "::") or b == ""


def graph(src):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for owner, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = strip_comments(f.read())
        here = owner.split("::") if owner else []
        for m in re.finditer(r"\b(crate|super|self)::", text):
            kind = m.group(1)
            if m.start() > 1 and text[m.start() - 2 : m.start()] == "::":
                continue  # `super::super::`: the first `super` was counted
            rest = text[m.end():]
            base = [] if kind == "crate" else (here[:-1] if kind == "super" else here)
            while rest.startswith("super::"):
                base, rest = base[:-1], rest[len("super::"):]
            for p in expand(rest):
                target = resolve(mods, base + p)
                if not ignored(owner, target):
                    edges[owner].add(target)
        # `use child::…` (a path relative to this module, Rust 2018).
        for m in re.finditer(r"\buse\s+(" + IDENT + r")::", text):
            child = here + [m.group(1)]
            if "::".join(child) not in mods or m.group(1) in ("crate", "super", "self", "std"):
                continue
            for p in expand(text[m.end():]):
                target = resolve(mods, child + p)
                if not ignored(owner, target):
                    edges[owner].add(target)
    return edges


def top(edges):
    """The same graph between top-level modules."""
    t = {}
    for a, bs in edges.items():
        ta = a.split("::")[0]
        t.setdefault(ta, set())
        for b in bs:
            tb = b.split("::")[0]
            t.setdefault(tb, set())
            if ta != tb:
                t[ta].add(tb)
    return t


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "engine", "src"))
    ap.add_argument("--no-cycle-through", action="append", default=[])
    ap.add_argument("--edges", action="store_true", help="print every edge")
    args = ap.parse_args()
    edges = graph(args.src)
    if args.edges:
        for m in sorted(edges):
            print(f"{m} -> {', '.join(sorted(edges[m])) or '(nothing)'}")
    cycles = sccs(edges)
    for c in cycles:
        print("cycle among modules: " + ", ".join(c))
    if not cycles:
        print("no cycles among the engine's modules")
    for c in sccs(top(edges)):
        print("cycle among top-level modules (a child of one using a child of another): " + ", ".join(c))
    bad = [m for m in args.no_cycle_through if any(x == m or x.startswith(m + "::") for c in cycles for x in c)]
    if bad:
        print(f"FAIL: {', '.join(bad)} must not be part of a module cycle", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
