#!/usr/bin/env python3
"""Fails when modules of src/ import each other in a cycle.

Each file is a module (src/actors/room.rs is actors::room, src/streams/mod.rs
is redis); `crate::a::b` and `super::b` paths name the modules a file uses.
Prints the edges of every cycle found (Tarjan's strongly connected
components) and exits 1, or prints the module count and exits 0.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, "::")
            if module.endswith("::mod"):
                module = module[: -len("::mod")]
            if module in ("lib", "main"):
                continue
            with open(path) as f:
                found[module] = f.read()
    return found


def edges(found):
    graph = defaultdict(set)
    for module, text in found.items():
        parent = module.rsplit("::", 1)[0] if "::" in module else None
        for first, second in re.findall(r"\bcrate::([a-z_0-9]+)(?:::([a-z_0-9]+))?", text):
            nested = f"{first}::{second}"
            target = nested if second and nested in found else first
            if target in found and target != module:
                graph[module].add(target)
        for name in re.findall(r"\bsuper::([a-z_0-9]+)", text):
            target = f"{parent}::{name}" if parent else name
            if target in found and target != module:
                graph[module].add(target)
    return graph


def cycles(nodes, graph):
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    found = modules()
    graph = edges(found)
    bad = cycles(sorted(found), graph)
    for component in bad:
        members = set(component)
        links = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in members]
        print("module cycle: " + "; ".join(links))
    if bad:
        sys.exit(1)
    print(f"no module cycles among {len(found)} modules of src/")


if __name__ == "__main__":
    main()
