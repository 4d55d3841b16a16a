"""The public API: every name in `weightkit.__all__` resolves to what the type checker sees."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import weightkit

INIT = Path(weightkit.__file__)


def static_imports() -> dict[str, str]:
    """name -> module, from the `if TYPE_CHECKING:` block of weightkit/__init__.py."""
    tree = ast.parse(INIT.read_text())
    block = next(
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_static_imports_are_the_lazy_table() -> None:
    assert static_imports() == weightkit._API
    assert weightkit.__all__ == ["__version__", *weightkit._API]  # written out for linters


def test_every_public_name_resolves_to_its_module() -> None:
    for name, module in weightkit._API.items():
        value = getattr(weightkit, name)
        assert value is getattr(importlib.import_module(module), name)
        assert value.__module__ == module, name  # defined there, not re-exported from elsewhere
    assert set(weightkit.__all__) <= set(dir(weightkit))


def test_errors_and_results_are_exported() -> None:
    assert issubclass(weightkit.OptionConflict, weightkit.InputError)
    assert issubclass(weightkit.HubError, weightkit.WeightkitError)
    for result in ("WriteResult", "VerifyReport", "ChecksumResult", "DownloadResult", "PushResult"):
        cls = getattr(weightkit, result)
        assert callable(cls.summary) and callable(cls.to_dict), result


def test_import_is_light() -> None:
    code = "import sys, weightkit; weightkit.WriteOptions; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False\n"


def test_unknown_name() -> None:
    try:
        weightkit.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert str(e) == "module 'weightkit' has no attribute 'no_such_thing'"
    else:
        raise AssertionError("no AttributeError")
