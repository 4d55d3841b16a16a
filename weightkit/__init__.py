"""weightkit: streaming, bit-exact tools for LLM checkpoints.

The functions below are the library behind each CLI command. They are imported lazily so that
`import weightkit` (and `weightkit --help`) stays fast and does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "diff": "weightkit.ops.diff",
    "recover": "weightkit.ops.recover",
    "merge_lora": "weightkit.ops.merge_lora",
    "convert_llama": "weightkit.ops.convert_llama",
    "verify": "weightkit.ops.verify",
    "write_checksums": "weightkit.ops.verify",
    "download": "weightkit.hub.download",
    "push": "weightkit.hub.push",
    "open_checkpoint": "weightkit.io.reader",
    "open_source": "weightkit.sources.open",
    "resolve_model": "weightkit.hub.cache",
    "WeightkitError": "weightkit.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'weightkit' has no attribute {name!r}")
