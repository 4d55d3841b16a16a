"""The options a family of commands shares, as one object that travels whole.

`WriteOptions` is how recover, diff, merge-lora and convert write their checkpoint; `HubOptions`
is how download, push and a Hub model input talk to the Hub. Each is checked when it is made
(a wrong size, format or device fails there, before any work, in a dry run as in the real run),
and the command line builds its flags from the same fields (weightkit.cli.options), so a
choice list or a default is written once.

Messages name parameters in backquotes (`max_shard_size`); the command line shows its flags
there instead (weightkit.cli.errors).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from weightkit.errors import InputError

# Choice lists, written once: the flags' choices and the library's checks both read these.
FORMATS = ("safetensors", "bin")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16")  # of a written model; auto: the command's own rule
DIFF_DTYPES = ("fp32", "fp16", "bf16")  # of a stored diff

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", re.IGNORECASE)
_SCALE = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def parse_size(text: str | int, what: str = "max_shard_size") -> int:
    """'5GB' -> 5_000_000_000, '2GiB' -> 2**31, as huggingface_hub reads them."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = _SIZE.fullmatch(str(text))
        if not m:
            raise InputError(
                f"cannot read `{what}` {text!r} as a size", "Write it like 5GB, 500MB or 2GiB."
            )
        size = int(float(m.group(1)) * _SCALE[m.group(2).upper().rstrip("B")])
    if size <= 0:
        raise InputError(
            f"`{what}` must be positive, not {text!r}", "Write it like 5GB, 500MB or 2GiB."
        )
    return size


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown `{what}` {value!r}", f"Use one of: {', '.join(choices)}.")
    return value


def show_progress(progress: bool | None) -> bool:
    """None (the default): progress bars only where a person watches (stderr is a terminal),
    never in a pipe or in a program that calls the library."""
    return sys.stderr.isatty() if progress is None else progress


@dataclass(frozen=True)
class WriteOptions:
    """How a command writes a checkpoint folder.

    format: "safetensors" or "bin". max_shard_size: the largest output file, as a number of
    bytes or text ("5GB", "2GiB"); kept as bytes. overwrite: replace an existing output folder.
    device: where the arithmetic runs ("auto": CUDA when present; the bytes are the same).
    dry_run: check every input and report the needs; write nothing. progress: show a progress
    bar on stderr (None: only on a terminal).
    """

    format: str = field(
        default="safetensors", metadata={"help": "Output file format.", "choices": FORMATS}
    )
    max_shard_size: int | str = field(
        default="5GB",
        metadata={"help": "Largest output shard, e.g. 5GB, 500MB, 2GiB.", "metavar": "SIZE"},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace OUT if it already exists."})
    device: str = field(
        default="auto",
        metadata={
            "help": "Where the arithmetic runs; auto uses CUDA when present. Output bytes are the "
            "same.",
            "choices": DEVICES,
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Check inputs and report disk and memory needs from headers; write nothing."
        },
    )
    progress: bool | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        check_choice(self.format, FORMATS, "format")
        check_choice(self.device, DEVICES, "device")
        object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))

    @property
    def shard_bytes(self) -> int:
        """`max_shard_size` in bytes (it is parsed when the options are made)."""
        assert isinstance(self.max_shard_size, int)
        return self.max_shard_size

    @property
    def show_progress(self) -> bool:
        return show_progress(self.progress)

    def replace(self, **changes: Any) -> WriteOptions:
        """A copy with `changes` (checked again: dataclasses.replace runs __post_init__)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HubOptions:
    """How to talk to the Hub: the endpoint (None: HF_ENDPOINT or https://huggingface.co), the
    token (None: HF_TOKEN or the one `huggingface-cli login` saved), files fetched at once, and
    progress bars as in WriteOptions."""

    endpoint: str | None = field(
        default=None,
        metadata={
            "help": "Hub endpoint (a mirror); default: HF_ENDPOINT or https://huggingface.co.",
            "metavar": "URL",
        },
    )
    token: str | None = field(default=None, metadata={"cli": False})
    jobs: int = field(
        default=4, metadata={"help": "Files downloaded at once.", "range": (1, 64), "short": "-j"}
    )
    progress: bool | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise InputError(
                f"`endpoint` {self.endpoint!r} is not an http(s) URL",
                "Give it like https://hf-mirror.com.",
            )
        if (
            isinstance(self.jobs, bool)
            or not isinstance(self.jobs, int)
            or not 1 <= self.jobs <= 64
        ):
            raise InputError(f"`jobs` must be 1..64, not {self.jobs!r}")

    @property
    def show_progress(self) -> bool:
        return show_progress(self.progress)
