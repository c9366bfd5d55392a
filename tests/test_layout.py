"""The package layout: imports flow one way (paced_jax/__init__.py's LAYERS), with no cycles."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import paced_jax

PACKAGE = pathlib.Path(paced_jax.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "data" not in p.parts}


def _unit(module: str) -> str:
  """The layout unit of a module: its subpackage, or the top-level module itself."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
  unit = _unit(module)
  for i, names in enumerate(paced_jax.LAYERS):
    if unit in names:
      return i
  raise AssertionError(f"{module}: its unit {unit!r} is in no layer of paced_jax.LAYERS")


def _imports(module: str) -> set[str]:
  """paced_jax modules a module imports anywhere in its body (function-level imports included)."""
  path = MODULES[module]
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      targets = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in MODULES:
        t = t.rpartition(".")[0]
      if t and t != module and t != "paced_jax":
        found.add(t)
  return found


def test_every_module_sits_in_a_layer():
  for module in MODULES:
    if module != "paced_jax":
      _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "paced_jax"))
def test_imports_flow_down(module):
  for target in _imports(module):
    if _unit(target) == _unit(module) and _unit(module):
      continue  # inside one subpackage: only cycles are refused (below)
    # Units of one layer may import each other (the cycle test below keeps that one-way).
    assert _layer(target) <= _layer(module), (
        f"{module} imports {target}: {_unit(target) or target} is above {_unit(module) or module} "
        f"in paced_jax.LAYERS")


def test_no_import_cycles():
  graph = {m: _imports(m) - {m} for m in MODULES}
  state: dict[str, int] = {}

  def visit(m, path):
    state[m] = 1
    for t in sorted(graph[m]):
      if t.startswith(m + "."):
        continue  # a package's __init__ is not a dependency of its own modules
      if state.get(t) == 1:
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
      if not state.get(t):
        visit(t, path + [t])
    state[m] = 2

  for m in sorted(graph):
    if not state.get(m):
      visit(m, [m])


@pytest.mark.parametrize("layer", range(len(paced_jax.LAYERS)))
def test_each_layer_imports_alone(layer):
  """Importing every module of a layer in a fresh process loads nothing from a layer above it."""
  mine = sorted(m for m in MODULES if m != "paced_jax" and _layer(m) == layer and "tools" not in m.split("."))
  if not mine:
    pytest.skip("a layer of tools only (absl mains parse flags on import)")
  code = ("import importlib, json, sys\n"
          f"for m in {mine!r}: importlib.import_module(m)\n"
          "print(json.dumps(sorted(m for m in sys.modules if m.startswith('paced_jax.'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  loaded = json.loads(out.stdout.strip().splitlines()[-1])
  above = [m for m in loaded if m in MODULES and _layer(m) > layer]
  assert not above, f"importing layer {paced_jax.LAYERS[layer]} loaded {above}"
