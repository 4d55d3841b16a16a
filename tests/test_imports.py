"""No module of weightkit may use a submodule it does not import itself.

`import importlib` then `importlib.util` works only while something else has loaded
importlib.util first (the editable install's import hook does); a plain `pip install .` crashed on
every command. Each module's `X.sub` uses are checked in a bare interpreter (`python -S`: no
site hooks) that runs only that module's own imports of X.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import weightkit

PACKAGE = Path(weightkit.__file__).parent

# runs in the bare interpreter: exec the imports, then walk each chain while it names a module
_CHECK = """
import json, sys, types
imports, chains = json.loads(sys.argv[1])
space = {}
for statement in imports:
    exec(statement, space)
missing = []
for chain in chains:
    obj = space[chain[0]]
    for i, attr in enumerate(chain[1:], 1):
        if not isinstance(obj, types.ModuleType):
            break
        if not hasattr(obj, attr):
            missing.append(".".join(chain[:i + 1]))
            break
        obj = getattr(obj, attr)
print(json.dumps(missing))
"""


def _chain(node: ast.Attribute) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def module_uses(tree: ast.Module) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Name bound by a plain `import X...` -> (the file's import statements of X's package,
    the attribute chains used on that name)."""
    roots: dict[str, str] = {}  # bound name -> top-level package
    statements: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                roots[alias.asname or root] = root
        if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "level", 0) == 0:
            for alias in node.names:
                name = alias.name if isinstance(node, ast.Import) else node.module
                statements.setdefault(name.split(".")[0], []).append(ast.unparse(node))
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    uses: dict[str, tuple[list[str], list[list[str]]]] = {}
    for node in ast.walk(tree):
        whole = isinstance(node, ast.Attribute) and id(node) not in inner
        chain = _chain(node) if whole else None
        if chain and chain[0] in roots:
            entry = uses.setdefault(chain[0], (statements[roots[chain[0]]], []))
            if chain not in entry[1]:
                entry[1].append(chain)
    return uses


def test_finds_a_submodule_used_without_its_import():
    uses = module_uses(ast.parse("import importlib\nimportlib.util.find_spec('x')\n"))
    assert uses == {"importlib": (["import importlib"], [["importlib", "util", "find_spec"]])}
    assert _missing(*uses["importlib"]) == ["importlib.util"]
    fixed = module_uses(ast.parse("import importlib.util\nimportlib.util.find_spec('x')\n"))
    assert _missing(*fixed["importlib"]) == []


def _missing(imports: list[str], chains: list[list[str]]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", _CHECK, json.dumps([imports, chains])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout)


def test_every_module_imports_the_submodules_it_uses():
    groups: dict[tuple[str, ...], list[list[str]]] = {}  # the same imports are checked once
    users: dict[str, set[str]] = {}  # chain -> the files using it
    for path in sorted(PACKAGE.rglob("*.py")):
        for imports, chains in module_uses(ast.parse(path.read_text())).values():
            for chain in chains:
                groups.setdefault(tuple(sorted(set(imports))), []).append(chain)
                users.setdefault(".".join(chain), set()).add(str(path.relative_to(PACKAGE)))
    with ThreadPoolExecutor(8) as pool:  # a fresh interpreter per group, several at once
        found = [
            name
            for names in pool.map(lambda k: _missing(list(k), groups[k]), groups)
            for name in names
        ]
    missing = sorted(
        f"{name} in {file}"
        for name in set(found)
        for chain, files in users.items()
        if f"{chain}.".startswith(f"{name}.")
        for file in files
    )
    assert missing == []


def test_benchmarks_import_what_weightkit_has() -> None:
    """Benchmarks are not run by the suite; what they take from weightkit must still exist
    (bench_lossless.py once imported a helper that had moved)."""
    import importlib

    missing = []
    for path in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightkit"):
                module = importlib.import_module(node.module)
                missing += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if not hasattr(module, a.name)
                ]
    assert missing == []
