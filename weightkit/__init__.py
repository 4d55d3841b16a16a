"""weightkit: streaming, bit-exact tools for LLM checkpoints.

Every command is a function here that returns a result and prints nothing (progress bars show
on a terminal only, unless asked for with `progress=`):

    import weightkit

    result = weightkit.recover("llama-13b-hf", "zhixi-13b-diff", "zhixi-13b",
                               options=weightkit.WriteOptions(max_shard_size="2GB"))
    print(result.summary(), result.to_dict())

Names are imported when first used, so `import weightkit` (and `weightkit --help`) does not
load torch; type checkers and IDEs read the imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from weightkit.checksums import VerifyReport
    from weightkit.errors import (
        ChecksumError,
        InputError,
        OptionConflict,
        OutputError,
        WeightkitError,
    )
    from weightkit.hub.cache import CachedModel, resolve_model
    from weightkit.hub.client import HubError
    from weightkit.hub.download import DownloadResult, download
    from weightkit.hub.push import PushResult, push
    from weightkit.io.reader import Checkpoint, open_checkpoint
    from weightkit.manifest import Manifest, ManifestEntry
    from weightkit.ops.convert_llama import convert_llama
    from weightkit.ops.diff import diff
    from weightkit.ops.merge_lora import merge_lora
    from weightkit.ops.recover import recover
    from weightkit.ops.verify import ChecksumResult, verify, write_checksums
    from weightkit.options import HubOptions, WriteOptions
    from weightkit.results import WriteResult
    from weightkit.sources.open import open_source
    from weightkit.sources.source import Source

# public name -> the module that defines it
_API = {
    # commands
    "recover": "weightkit.ops.recover",
    "diff": "weightkit.ops.diff",
    "merge_lora": "weightkit.ops.merge_lora",
    "convert_llama": "weightkit.ops.convert_llama",
    "verify": "weightkit.ops.verify",
    "write_checksums": "weightkit.ops.verify",
    "download": "weightkit.hub.download",
    "push": "weightkit.hub.push",
    # inputs
    "open_source": "weightkit.sources.open",
    "open_checkpoint": "weightkit.io.reader",
    "resolve_model": "weightkit.hub.cache",
    "Source": "weightkit.sources.source",
    "Checkpoint": "weightkit.io.reader",
    # options
    "WriteOptions": "weightkit.options",
    "HubOptions": "weightkit.options",
    # results
    "WriteResult": "weightkit.results",
    "VerifyReport": "weightkit.checksums",
    "ChecksumResult": "weightkit.ops.verify",
    "DownloadResult": "weightkit.hub.download",
    "PushResult": "weightkit.hub.push",
    "CachedModel": "weightkit.hub.cache",
    "Manifest": "weightkit.manifest",
    "ManifestEntry": "weightkit.manifest",
    # errors
    "WeightkitError": "weightkit.errors",
    "InputError": "weightkit.errors",
    "OptionConflict": "weightkit.errors",
    "ChecksumError": "weightkit.errors",
    "OutputError": "weightkit.errors",
    "HubError": "weightkit.hub.client",
}

__all__ = [
    "__version__",
    "recover",
    "diff",
    "merge_lora",
    "convert_llama",
    "verify",
    "write_checksums",
    "download",
    "push",
    "open_source",
    "open_checkpoint",
    "resolve_model",
    "Source",
    "Checkpoint",
    "WriteOptions",
    "HubOptions",
    "WriteResult",
    "VerifyReport",
    "ChecksumResult",
    "DownloadResult",
    "PushResult",
    "CachedModel",
    "Manifest",
    "ManifestEntry",
    "WeightkitError",
    "InputError",
    "OptionConflict",
    "ChecksumError",
    "OutputError",
    "HubError",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'weightkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
