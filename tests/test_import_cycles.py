"Data flows one way: no two modules of the package import each other, directly or through a cycle (static, from the AST)."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'medvision'


def _module(f: Path) -> str:
    return '.'.join(('medvision',) + f.relative_to(PKG).with_suffix('').parts).removesuffix('.__init__')


def _imports(f: Path) -> set:
    "The medvision modules `f` imports (relative imports resolved; `from pkg import mod` counts as importing `pkg.mod`)."
    here = _module(f).split('.')
    base = here if f.name == '__init__.py' else here[:-1]
    deps = set()
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ''
            if n.level: mod = '.'.join(base[:len(base) - n.level + 1] + ([mod] if mod else []))
            if mod.split('.')[0] == 'medvision': deps |= {mod} | {f"{mod}.{a.name}" for a in n.names}
        elif isinstance(n, ast.Import): deps |= {a.name for a in n.names if a.name.split('.')[0] == 'medvision'}
    return deps


def import_graph() -> dict:
    "module → the package modules it imports (`medvision.all`, the re-exporting facade, is left out)."
    files = {_module(f): f for f in PKG.rglob('*.py')}
    mods = set(files) - {'medvision.all', 'medvision'}
    return {m: {d for d in _imports(files[m]) if d in mods and d != m} for m in mods}


def find_cycles(graph: dict) -> list:
    "Every cycle found by a depth-first walk, as a list of modules ending where it started."
    state, stack, cycles = {}, [], []
    def walk(u):
        state[u] = 'open'; stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 'open': cycles.append(stack[stack.index(v):] + [v])
            elif v not in state: walk(v)
        stack.pop(); state[u] = 'done'
    for u in sorted(graph):
        if u not in state: walk(u)
    return cycles


def test_find_cycles_sees_a_cycle():
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == [['a', 'b', 'c', 'a']]
    assert find_cycles({'a': {'b'}, 'b': set()}) == []


def test_the_package_has_no_import_cycle():
    g = import_graph()
    assert 'medvision.cli' in g and 'medvision.report' in g['medvision.cli']   # the graph is really read
    cycles = find_cycles(g)
    assert not cycles, 'import cycles: ' + '; '.join(' -> '.join(c) for c in cycles)
