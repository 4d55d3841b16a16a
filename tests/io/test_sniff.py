"""A weight file that is not one: what its first bytes show it holds is what the error says."""

from __future__ import annotations

import gzip

import pytest
from fuzz_mutations import SAFETENSORS, TORCH, sample

from weightkit.errors import InputError
from weightkit.io.reader import open_checkpoint

FAILED_DOWNLOAD = (
    "a failed download (an expired or wrong link, a login page, a missing file) "
    "saves the server's reply under the file's name"
)
AGAIN = "Download the file again (with a fresh link if the old one has expired)."
DAMAGED = "The file is damaged; download it again."
NOT_ST, NOT_BIN = "not a safetensors file", "not a PyTorch zip checkpoint"


@pytest.mark.parametrize(
    ("name", "content", "message", "hint"),
    [
        ("m.bin", b"", f"an empty file (0 bytes), {NOT_BIN}", AGAIN),
        ("m.safetensors", b"", f"an empty file (0 bytes), {NOT_ST}", AGAIN),
        (
            "m.safetensors",
            b"\n  <html><body>Sign in\n\n to continue</body></html>",
            f"an HTML page ('<html><body>Sign in to continue</body></html>'), {NOT_ST}: "
            f"{FAILED_DOWNLOAD}",
            AGAIN,
        ),
        (
            "m.bin",
            b"Entry not found",
            f"a text file ('Entry not found'), {NOT_BIN}: {FAILED_DOWNLOAD}",
            AGAIN,
        ),
        (
            "m.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n",
            f"a Git LFS pointer file, {NOT_ST}: the repository was cloned without git-lfs, so the "
            "weights were never downloaded",
            "Run `git lfs install` and `git lfs pull` in the clone, or download the file again.",
        ),
        (
            "m.bin",
            gzip.compress(b"weights", mtime=0),
            f"gzip-compressed data, {NOT_BIN}",
            "Decompress it (gzip -d), or download the file again.",
        ),
        (
            "m.safetensors",
            sample(TORCH),
            f"a zip archive (a PyTorch checkpoint?), {NOT_ST}",
            "If it is a PyTorch checkpoint, rename it to end in .bin; otherwise download the file "
            "again.",
        ),
        (
            "m.bin",
            sample(SAFETENSORS),
            f"a safetensors file, {NOT_BIN}",
            "Rename it to end in .safetensors.",
        ),
        (
            "m.bin",
            b"\x00\x13garbage\\\xff",
            "not a PyTorch zip checkpoint (the file starts with '\\x00\\x13garbage\\x5c\\xff')",
            DAMAGED,
        ),
        (
            "m.bin",
            bytes(100),
            "not a PyTorch zip checkpoint (the file starts with '" + "\\x00" * 15 + "...')",
            DAMAGED,
        ),
        (
            "m.safetensors",
            b"\x00\x13garbage",
            "garbled safetensors header (says 7449343502047449856 header bytes, file has 9) "
            "(the file starts with '\\x00\\x13garbage')",
            DAMAGED,
        ),
    ],
)
def test_the_error_says_what_the_file_holds(tmp_path, name, content, message, hint):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as e:
        open_checkpoint(tmp_path / name)
    assert (e.value.message, e.value.hint) == (f"{tmp_path / name}: {message}", hint)
