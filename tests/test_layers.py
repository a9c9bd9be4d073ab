"""The package's layers: every import points down the stack, and no private name crosses modules.

The order (lowest first) is the README's layout: a module may import its own sub-package and
any sub-package below it, never one above. `pacbayes/__init__.py` (lazy public names) sits on
top and is imported by nothing inside the package.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pacbayes"
LAYERS = ("core", "bounds", "data", "models", "losses", "lora", "shift", "posterior",
          "certificate", "training", "pipeline", "study", "select", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _modules():
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _layer(dotted: str) -> str | None:
  parts = dotted.split(".")
  return parts[1] if len(parts) > 1 else None


def _imports(path: pathlib.Path):
  """(line, imported module, names) for every absolute pacbayes import of a file."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module == "pacbayes" or node.module.startswith("pacbayes.")):
      yield node.lineno, node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name == "pacbayes" or a.name.startswith("pacbayes."):
          yield node.lineno, a.name, []


MODULES = list(_modules())


def test_every_module_sits_in_a_known_layer():
  unknown = sorted({_layer(m) for m, _ in MODULES if _layer(m) and _layer(m) not in RANK})
  assert not unknown, f"sub-packages missing from LAYERS: {unknown}"


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(module, path):
  own = _layer(module)
  if own is None:
    return  # pacbayes/__init__.py: the lazy public names, on top of everything
  bad = []
  for line, target, names in _imports(path):
    if target == "pacbayes":
      target_layers = [n for n in names if n in RANK]
      bad += [f"{path.name}:{line} imports the package root ({names})"] if len(
          target_layers) < len(names) else []
    else:
      target_layers = [_layer(target)]
    bad += [f"{path.name}:{line} imports {target} (layer {t} above {own})"
            for t in target_layers if RANK[t] > RANK[own]]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_no_private_name_crosses_modules(module, path):
  bad = [f"{path.name}:{line} imports {name} from {target}"
         for line, target, names in _imports(path) if target != module
         for name in names if name.startswith("_")]
  assert not bad, "\n".join(bad)


@pytest.mark.slow  # a subprocess
def test_importing_the_package_changes_no_jax_flag():
  import subprocess
  import sys
  out = subprocess.run(
      [sys.executable, "-c", "import pacbayes, jax; from pacbayes import certify, mc_risk; "
       "print(jax.config.jax_enable_x64)"], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------- size limits

MAX_PARAMETERS = 10  # of a public function or method (self / cls, *args and **kwargs not counted)
MAX_LINES = 500  # of a module


def _public_functions(tree: ast.Module):
  """(qualified name, node, is_method) of every public function and method of public classes."""
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
      yield node.name, node, False
    elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
      for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
            item.name.startswith("_")):
          yield f"{node.name}.{item.name}", item, True


def _num_parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> int:
  args = node.args
  named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
  static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
  if is_method and not static and named and named[0].arg in ("self", "cls"):
    named = named[1:]
  return len(named)


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_public_functions_take_at_most_ten_parameters(module, path):
  tree = ast.parse(path.read_text(), str(path))
  bad = [f"{path.name}:{node.lineno} {name} takes {n} parameters"
         for name, node, is_method in _public_functions(tree)
         if (n := _num_parameters(node, is_method)) > MAX_PARAMETERS]
  assert not bad, ("group related keywords into a frozen options dataclass:\n"
                   + "\n".join(bad))


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_modules_are_at_most_500_lines(module, path):
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_LINES, (f"{path.relative_to(ROOT.parent)} has {lines} lines (at most "
                              f"{MAX_LINES}): move a topic to a module of its own")
