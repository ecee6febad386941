"""The package's layout (DESIGN.md): no import cycle, and stages named only by their methods."""

import ast
import os
import re

from gwtn_jax.methods import registry

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gwtn_jax')


def _modules():
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, '.')
        out[module.removesuffix('.__init__')] = path
  return out


def _imports(path, modules):
  """The package modules `path` imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in modules else node.module)
  return found


def test_no_import_cycle_counting_imports_inside_functions():
  modules = _modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  done, path = set(), []

  def visit(m):
    if m in path:
      raise AssertionError('import cycle: ' + ' -> '.join(path[path.index(m):] + [m]))
    if m in done:
      return
    path.append(m)
    for n in sorted(graph[m]):
      visit(n)
    path.pop()
    done.add(m)

  for m in sorted(graph):
    visit(m)


def test_stage_names_appear_only_in_their_method_file_and_config_section():
  # Outside gwtn_jax/methods/, a stage may be named only by its config section (schema.py).
  # Names that are neither plain words nor also a report row (thin_kd is both).
  rows = {s.report for s in registry.stages().values()}
  names = [n for n in registry.names() if '_' in n and n not in rows]
  assert 'lit_finetune' in names and 'dan_adjoined' in names
  for module, path in _modules().items():
    if module.startswith('gwtn_jax.methods') or module == 'gwtn_jax.config.schema':
      continue
    text = open(path).read()
    for name in names:
      assert not re.search(rf"\b{name}\b", text), f'{module} names the stage {name!r}'


def test_every_stage_is_declared_by_one_method_file():
  owners = {}
  for module, path in _modules().items():
    if module.startswith('gwtn_jax.methods.'):
      for match in re.finditer(r"registry\.stage\(name='(\w+)'", open(path).read()):
        owners.setdefault(match.group(1), []).append(module)
  assert set(owners) == set(registry.names())
  assert all(len(files) == 1 for files in owners.values()), owners
