#!/usr/bin/env python3
"""Fails if two modules of a crate import each other, directly or through others.

For every crate root of the workspace (src/lib.rs, src/main.rs), reads the module tree, collects
what each module refers to with `crate::…` and `super::…` paths (use trees expanded), and resolves
each path to the module that defines it: an item re-exported by the root (`pub use m::Item`) counts
as module `m`'s. The root's `mod` declarations and `pub use` re-exports are the crate's table of
contents, not dependencies; test modules (`#[cfg(test)]`) may import anything. Prints the module
graph with --print; exits 1 and names the cycle if there is one.
"""
import re
import sys
from pathlib import Path

MOD_DECL = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', re.M)


def strip_noise(src):
    """Removes comments, string and char literals, and #[cfg(test)] items."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith('//', i):
            j = src.find('\n', i)
            i = n if j < 0 else j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2)
            i = n if j < 0 else j + 2
        elif src[i] == '"' or src.startswith('r"', i) or src.startswith('r#', i):
            m = re.match(r'r(#*)"', src[i:])
            if m:
                end = '"' + m.group(1)
                j = src.find(end, i + len(m.group(0)))
                i = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and src[j] != '"':
                    j += 2 if src[j] == '\\' else 1
                i = j + 1
            out.append('""')
        elif src[i] == "'" and re.match(r"'(\\.|[^\\'])'", src[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", src[i:]).group(0))
        else:
            out.append(src[i])
            i += 1
    text = ''.join(out)
    # Drop `#[cfg(test)]` items: the attribute, then one item up to its closing brace or `;`.
    while True:
        m = re.search(r'#\[cfg\(test\)\]', text)
        if not m:
            return text
        j = m.end()
        while j < len(text) and text[j] not in '{;':
            j += 1
        if j < len(text) and text[j] == '{':
            depth = 0
            while j < len(text):
                depth += {'{': 1, '}': -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
        text = text[:m.start()] + text[j + 1:]


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r'\s+', '', tree)
    m = re.match(r'^(.*?)\{(.*)\}$', tree)
    if not m:
        return [re.sub(r'as\w+$', '', tree)]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
            continue
        depth += {'{': 1, '}': -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p2 for p in parts if p for p2 in expand_use(prefix + p)]


def modules_of(root_file):
    """{module path: file}; the root is ''."""
    mods, todo = {'': root_file}, [('', root_file)]
    while todo:
        path, file = todo.pop()
        text = strip_noise(file.read_text())
        base = file.parent if file.name in ('lib.rs', 'main.rs', 'mod.rs') else file.with_suffix('')
        for name in MOD_DECL.findall(text):
            for cand in (base / f'{name}.rs', base / name / 'mod.rs'):
                if cand.exists():
                    child = f'{path}::{name}' if path else name
                    mods[child] = cand
                    todo.append((child, cand))
                    break
    return mods


def graph(root_file):
    mods = modules_of(root_file)
    texts = {m: strip_noise(f.read_text()) for m, f in mods.items()}
    # Items the root re-exports: name -> module they come from.
    reexports = {}
    for m in re.finditer(r'pub\s+use\s+([^;]+);', texts['']):
        for path in expand_use(m.group(1)):
            segs = [s for s in path.split('::') if s not in ('crate', 'self')]
            if len(segs) >= 2 and segs[0] in mods:
                reexports[segs[-1]] = longest_module(segs[:-1], mods)
    edges = {m: set() for m in mods}
    for mod, text in texts.items():
        if mod == '':
            # The table of contents is not a dependency.
            text = re.sub(r'pub\s+use\s+[^;]+;', '', text)
            text = MOD_DECL.sub('', text)
        paths = []
        for m in re.finditer(r'\buse\s+([^;]+);', text):
            paths += expand_use(m.group(1))
        paths += re.findall(r'\b((?:crate|super)(?:::\w+)+)', text)
        if mod == '':
            # The root names its own modules without `crate::`.
            paths += [p for p in re.findall(r'(?<![\w:])(\w+(?:::\w+)+)', text) if p.split('::')[0] in mods]
        for path in paths:
            segs = path.split('::')
            if segs[0] == 'crate':
                segs = segs[1:]
            elif segs[0] == 'super':
                here = mod.split('::') if mod else []
                while segs and segs[0] == 'super':
                    here, segs = here[:-1], segs[1:]
                segs = here + segs
            elif mod == '' and segs[0] in mods:
                pass  # the root names its own modules without `crate::`
            else:
                continue
            segs = [s for s in segs if s != 'self']
            if not segs:
                continue
            target = longest_module(segs, mods)
            if target == '' and segs[0] in reexports:
                target = reexports[segs[0]]
            if target != mod and not (mod and target and mod.startswith(target + '::')):
                edges[mod].add(target)
    return edges


def longest_module(segs, mods):
    for k in range(len(segs), 0, -1):
        cand = '::'.join(segs[:k])
        if cand in mods:
            return cand
    return ''


def cycle(edges):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def main():
    top = Path(__file__).resolve().parent.parent
    show = '--print' in sys.argv
    failed = False
    roots = sorted(p for p in top.glob('*/src/lib.rs')) + sorted(top.glob('*/src/main.rs'))
    for root in roots:
        edges = graph(root)
        name = f'{root.parent.parent.name}/{root.name}'
        if show:
            print(name)
            for m in sorted(edges):
                print(f"  {m or '(root)'} -> {', '.join(sorted(t or '(root)' for t in edges[m])) or '-'}")
        found = cycle(edges)
        if found:
            failed = True
            print(f"{name}: modules import each other: {' -> '.join(m or '(root)' for m in found)}")
    if not failed:
        print(f'module imports: no cycle in {len(roots)} crate roots')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
