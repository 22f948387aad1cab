"""Package layout: the import graph between mvm_jax modules has no cycle.

Every `import mvm_jax.x` and `from mvm_jax.x import y` in every module counts, at module level and inside
functions alike: a function-local import hides a cycle from Python's import machinery, not from the
reader. `from mvm_jax.x import y` is an edge to module `mvm_jax.x.y` when that file exists, else to
`mvm_jax.x`; a package's `__init__.py` is the package module itself.
"""

import ast
import pathlib

PACKAGE = 'mvm_jax'
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root=ROOT):
  """{module name: path} for every .py file of the package under `root`."""
  modules = {}
  for path in sorted(root.rglob('*.py')):
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    modules['.'.join(parts)] = path
  return modules


def _resolve_relative(module, is_package, level, name):
  """The absolute module name of a `from <level dots><name> import ...` in `module`."""
  base = module.split('.') if is_package else module.split('.')[:-1]
  if level > 1:
    base = base[: -(level - 1)]
  return '.'.join(base + ([name] if name else []))


def imported_modules(module, path, modules):
  """The package modules that `module` (at `path`) imports anywhere in its source."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == '__init__.py'
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = _resolve_relative(module, is_package, node.level, base)
      targets = [
        f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names
      ]
    else:
      continue
    for target in targets:
      # `import mvm_jax.a.b` binds the package chain; the edge is to the deepest existing module.
      while target and target not in modules:
        target = target.rpartition('.')[0]
      if target and target != module and (target == PACKAGE or target.startswith(PACKAGE + '.')):
        found.add(target)
  return found


def import_graph(root=ROOT):
  """{module: sorted modules it imports} over the package under `root`."""
  modules = module_files(root)
  return {name: sorted(imported_modules(name, path, modules)) for name, path in modules.items()}


def find_cycle(graph):
  """One import cycle as a list of modules [a, b, ..., a], or None when the graph is acyclic."""
  state = {}  # module -> 'active' (on the DFS stack) or 'done'
  stack = []

  def visit(node):
    state[node] = 'active'
    stack.append(node)
    for nxt in graph.get(node, ()):
      if state.get(nxt) == 'active':
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_reports_the_path():
  assert find_cycle({'a': ['b'], 'b': ['c'], 'c': []}) is None
  assert find_cycle({'a': ['b'], 'b': ['c'], 'c': ['a']}) == ['a', 'b', 'c', 'a']


def test_import_graph_resolves_names(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('from mvm_jax.sub.leaf import f\n')
  (pkg / 'sub' / 'leaf.py').write_text('def f():\n  from mvm_jax import other\n')
  (pkg / 'other.py').write_text('from mvm_jax.sub import leaf, g\nimport numpy\n')
  graph = import_graph(pkg)
  assert graph == {
    'mvm_jax': [],
    'mvm_jax.sub': ['mvm_jax.sub.leaf'],
    'mvm_jax.sub.leaf': ['mvm_jax.other'],
    'mvm_jax.other': ['mvm_jax.sub', 'mvm_jax.sub.leaf'],
  }
  assert find_cycle(graph) == ['mvm_jax.other', 'mvm_jax.sub', 'mvm_jax.sub.leaf', 'mvm_jax.other']


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 50, sorted(graph)
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)
