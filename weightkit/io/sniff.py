"""What a downloaded file holds instead of weights (or JSON), told from its first bytes.

A failed download (an expired signed URL, a login page, a 404) leaves an HTML or XML page or a
JSON error body under the checkpoint's name, and a clone made without git-lfs leaves a small
pointer file. Both weight readers call `not_weights` when a file is not their format (and the
readers of JSON inputs call `what_it_is`), so the user is told what the file is rather than that
its header is garbled.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from weightkit.errors import InputError

SAFETENSORS = "a safetensors file"
TORCH_ZIP = "a PyTorch zip checkpoint"
JSON_FILE = "a JSON file"
DOWNLOAD_AGAIN = "The file is damaged; download it again."
TRUNCATED_HINT = "Download the file again (weightkit verify can tell which files are damaged)."

_HEAD = 1024  # bytes looked at
_SHOWN = 60  # characters of the file's start quoted in a message
_FAILED_DOWNLOAD = (
    "a failed download (an expired or wrong link, a login page, a missing file) "
    "saves the server's reply under the file's name"
)
_DOWNLOAD_AGAIN = "Download the file again (with a fresh link if the old one has expired)."
_PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format starts with PROTO 2..5
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def not_weights(path: Path, expected: str, problem: str) -> InputError:
    """The error for `path`, which is not `expected` (SAFETENSORS or TORCH_ZIP): what it holds
    instead if its first bytes show it (see `what_it_is`), else `problem` and those bytes."""
    found = what_it_is(path, expected)
    if found is not None:
        return found
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    return InputError(f"{path}: {problem} (the file starts with {_quote(head)})", DOWNLOAD_AGAIN)


def what_it_is(path: Path, expected: str) -> InputError | None:
    """The error naming what `path`, which cannot be read as `expected` (SAFETENSORS, TORCH_ZIP,
    JSON_FILE), holds instead when its first bytes show it: an empty file, an HTML or XML page,
    JSON text, other text, a Git LFS pointer, a legacy torch pickle, compressed data, the other
    weights format. None when they show nothing in particular."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    found = _what(head, expected)
    if found is None:
        return None
    what, why, hint = found
    return InputError(f"{path}: {what}, not {expected}" + (f": {why}" if why else ""), hint)


def _what(head: bytes, expected: str) -> tuple[str, str, str] | None:
    """(what the file is, why it is there, what to do) when its start shows it; else None."""
    text = head.lstrip().lower()
    if not head:
        return "an empty file (0 bytes)", "", _DOWNLOAD_AGAIN
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return (
            "a Git LFS pointer file",
            "the repository was cloned without git-lfs, so the weights were never downloaded",
            "Run `git lfs install` and `git lfs pull` in the clone, or download the file again.",
        )
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        title = re.search(rb"<title[^>]*>([^<]*)</title>", head, re.IGNORECASE)
        shown = f"titled {_quote(title.group(1))}" if title else _quote(head)
        return f"an HTML page ({shown})", _FAILED_DOWNLOAD, _DOWNLOAD_AGAIN
    if text.startswith(b"<?xml"):  # quoted after its declaration: the error code shows
        return (
            f"an XML document ({_quote(head.split(b'?>', 1)[-1])})",
            _FAILED_DOWNLOAD,
            _DOWNLOAD_AGAIN,
        )
    if text.startswith((b"{", b"[")):  # in a JSON file: one that is damaged, not replaced
        if expected == JSON_FILE:
            return None
        return f"JSON text ({_quote(head)})", _FAILED_DOWNLOAD, _DOWNLOAD_AGAIN
    if _is_text(head):
        return f"a text file ({_quote(head)})", _FAILED_DOWNLOAD, _DOWNLOAD_AGAIN
    if len(head) > 1 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return (
            "a legacy torch checkpoint (a bare pickle, as torch<1.6 saved them)",
            "weightkit will not unpickle it, as unpickling can run code",
            "Re-save it as a zip checkpoint with torch>=1.6 "
            "(torch.save(torch.load(path, weights_only=True), path)), or get a safetensors "
            "copy.",
        )
    for magic, name in _COMPRESSED.items():
        if head.startswith(magic):
            return (
                f"{name}-compressed data",
                "",
                f"Decompress it ({name} -d), or download the file again.",
            )
    if expected != TORCH_ZIP and head.startswith(b"PK\x03\x04"):
        return (
            "a zip archive (a PyTorch checkpoint?)",
            "",
            "If it is a PyTorch checkpoint, rename it to end in .bin; otherwise download "
            "the file again.",
        )
    if expected != SAFETENSORS and _looks_like_safetensors(head):
        return "a safetensors file", "", "Rename it to end in .safetensors."
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # perhaps only a character cut at the end of `head`
        text = head[:-3].decode("utf-8", errors="replace")
    return all(c.isprintable() or c in "\t\n\r" for c in text) and "\ufffd" not in text


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100_000_000 and head[8:9] == b"{"


def _quote(head: bytes) -> str:
    """The start of the file, short and in quotes: printable ASCII as is, other bytes escaped;
    text has its runs of white space shown as one space."""
    if _is_text(head):
        head = re.sub(rb"\s+", b" ", head.strip())
    shown = ""
    for b in head:
        if len(shown) >= _SHOWN:
            return f"'{shown}...'"
        shown += chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}"
    return f"'{shown}'"
