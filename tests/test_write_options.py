"""WriteOptions: checked when made, with the exact message; a dry run refuses what the run
refuses, since both take the same options object."""

from __future__ import annotations

import pytest

from weightkit.errors import InputError
from weightkit.options import WriteOptions, parse_size

EXAMPLE = "examples/tiny-llama"


def test_parse_size_follows_huggingface_units():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("2GiB") == 2**31
    assert parse_size("500MB") == 500_000_000
    assert parse_size("100kB") == 100_000
    assert WriteOptions(max_shard_size="60kB").shard_bytes == 60_000
    assert WriteOptions().shard_bytes == 5_000_000_000


@pytest.mark.parametrize(
    ("fields", "message", "hint"),
    [
        (
            {"max_shard_size": "lots"},
            "cannot read `max_shard_size` 'lots' as a size",
            "Write it like 5GB, 500MB or 2GiB.",
        ),
        (
            {"max_shard_size": "0MB"},
            "`max_shard_size` must be positive, not '0MB'",
            "Write it like 5GB, 500MB or 2GiB.",
        ),
        ({"format": "gguf"}, "unknown `format` 'gguf'", "Use one of: safetensors, bin."),
        ({"device": "tpu"}, "unknown `device` 'tpu'", "Use one of: auto, cpu, cuda."),
    ],
    ids=["size", "zero-size", "format", "device"],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_bad_options_are_refused_when_made(fields, message, hint, dry_run):
    with pytest.raises(InputError) as e:
        WriteOptions(dry_run=dry_run, **fields)
    assert (e.value.message, e.value.hint) == (message, hint)


def test_replace_checks_again():
    options = WriteOptions(max_shard_size="1GB")
    assert options.replace(device="cpu") == WriteOptions(max_shard_size=10**9, device="cpu")
    with pytest.raises(InputError, match="unknown `device` 'gpu'"):
        options.replace(device="gpu")
