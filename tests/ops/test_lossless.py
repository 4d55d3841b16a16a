"""Lossless diffs: the arithmetic, bit-exact round trips, damage and dtype refusals, the CLI."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import file_bytes, tensors
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightkit.cli import _run
from weightkit.errors import ChecksumError, InputError
from weightkit.io.lossless_diff import LosslessDiffReader, LosslessDiffWriter
from weightkit.io.reader import open_checkpoint
from weightkit.ops.diff import diff
from weightkit.ops.lossless import decode, encode
from weightkit.ops.recover import recover
from weightkit.options import WriteOptions

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_BITS[t.element_size()])


def assert_bit_exact(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(bits(a[name]), bits(b[name])), name


# --- the arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.float8_e4m3fn,
        torch.int64,
        torch.uint8,
        torch.bool,
    ],
)
def test_decode_gives_back_every_bit_pattern(dtype):
    gen = torch.Generator().manual_seed(0)
    raw = (torch.randn(64, 8, generator=gen) * 3).to(dtype)
    tuned = (torch.randn(64, 8, generator=gen) * 3).to(dtype)
    if dtype.is_floating_point and dtype.itemsize > 1:  # values plain float sums get wrong
        raw[0, :4] = torch.tensor([0.0, -0.0, 1.0, float("inf")]).to(dtype)
        tuned[0, :4] = torch.tensor([-0.0, 0.0, float("nan"), float("-inf")]).to(dtype)
    back = decode(raw, encode(raw, tuned), tuple(tuned.shape))
    assert back.dtype == dtype and back.shape == tuned.shape
    assert torch.equal(bits(back), bits(tuned))


def test_small_changes_compress_to_a_few_bits_per_weight():
    gen = torch.Generator().manual_seed(0)
    raw = (torch.randn(512, 512, generator=gen) * 0.02).half()
    tuned = (raw.float() * (1 + 1e-3 * torch.randn(raw.shape, generator=gen))).half()
    payload = encode(raw, tuned)
    assert 8 * len(payload) / raw.numel() < 3.5  # an fp16 diff takes 16
    assert len(encode(raw, raw)) < 200  # nothing changed: next to nothing stored


def test_extra_vocabulary_rows_are_stored_as_themselves():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(10, 4, generator=gen).bfloat16()
    tuned = torch.cat([raw, torch.randn(3, 4, generator=gen).bfloat16()])
    payload = encode(raw, tuned)
    assert torch.equal(bits(decode(raw, payload, (13, 4))), bits(tuned))
    # the new rows do not depend on raw: decoding against another raw leaves them as they are
    other = decode(torch.zeros_like(raw), payload, (13, 4))
    assert torch.equal(bits(other[10:]), bits(tuned[10:]))


def test_encoding_is_deterministic_across_thread_counts(monkeypatch):
    import zstandard

    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(1 << 20, generator=gen).half()
    tuned = (raw.float() * 1.01).half()
    payloads = set()
    for threads in (1, 2, 4):
        real = zstandard.ZstdCompressor

        def fixed(*args, _threads=threads, _real=real, **kwargs):
            return _real(*args, **{**kwargs, "threads": _threads})

        monkeypatch.setattr(zstandard, "ZstdCompressor", fixed)
        payloads.add(encode(raw, tuned))
        monkeypatch.setattr(zstandard, "ZstdCompressor", real)
    assert len(payloads) == 1


# --- diff --lossless and recover -----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "dtype"), [("llama", torch.float16), ("qwen2", torch.bfloat16)])
def test_round_trip_is_bit_exact(model_pair, tmp_path, kind, dtype):
    raw, tuned = model_pair(kind, dtype)
    d = diff(raw, tuned, tmp_path / "diff", lossless=True)
    assert d.files == ["lossless-diff.safetensors"]
    assert sorted(p.name for p in (tmp_path / "diff").iterdir()) == [
        "config.json",
        "generation_config.json",
        "lossless-diff.safetensors",
        "weightkit.target-manifest.json",
    ]
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    want = tensors(tuned)
    assert_bit_exact(tensors(tmp_path / "out"), want)
    assert r.checked == r.tensors == len(want) and r.within_rounding == []
    assert (tmp_path / "out" / "config.json").read_text() == (tuned / "config.json").read_text()


def test_qwen2_tied_embeddings_load_in_transformers(model_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    raw, tuned = model_pair("qwen2", torch.bfloat16)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    recover(raw, tmp_path / "diff", tmp_path / "out")
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()
    assert_bit_exact(got, AutoModelForCausalLM.from_pretrained(tuned).state_dict())


def test_fp16_diff_loses_signed_zeros_the_lossless_diff_keeps(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16, scale=1e-3)
    state = load_file(raw / "model.safetensors")
    state["model.norm.weight"][:8] = -0.0  # a plain diff adds +0.0: -0.0 comes back as 0.0
    save_file(state, raw / "model.safetensors", metadata={"format": "pt"})
    tuned_state = load_file(tuned / "model.safetensors")
    tuned_state["model.norm.weight"][:8] = -0.0
    save_file(tuned_state, tuned / "model.safetensors", metadata={"format": "pt"})
    plain = diff(raw, tuned, tmp_path / "fp16", dtype="fp16")
    lossless = diff(raw, tuned, tmp_path / "lossless", lossless=True)
    assert lossless.bytes_written < plain.bytes_written / 2
    r = recover(raw, tmp_path / "fp16", tmp_path / "out16")
    assert "model.norm.weight" in r.within_rounding
    r = recover(raw, tmp_path / "lossless", tmp_path / "out")
    assert r.within_rounding == []
    assert_bit_exact(tensors(tmp_path / "out"), tensors(tuned))


def test_vocab_extended_round_trip(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    d = diff(raw, tuned, tmp_path / "diff", lossless=True)
    assert any("vocabulary extended from 128 to 129 rows" in n for n in d.notes)
    packed = LosslessDiffReader(tmp_path / "diff")
    assert packed.infos["lm_head.weight"].shape == (129, 64)
    assert packed.raw_shapes["lm_head.weight"] == (128, 64)
    recover(raw, tmp_path / "diff", tmp_path / "out")
    assert_bit_exact(tensors(tmp_path / "out"), tensors(tuned))


def test_sharded_diff_and_non_finite_values(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.bfloat16)
    state = load_file(tuned / "model.safetensors")
    state["model.norm.weight"][:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    save_file(state, tuned / "model.safetensors", metadata={"format": "pt"})
    d = diff(
        raw, tuned, tmp_path / "diff", lossless=True, options=WriteOptions(max_shard_size="60kB")
    )
    assert (
        len(d.files) > 1 and d.files[0] == f"lossless-diff-00001-of-{len(d.files):05d}.safetensors"
    )
    recover(raw, tmp_path / "diff", tmp_path / "out")
    assert_bit_exact(tensors(tmp_path / "out"), tensors(tuned))


def test_diff_is_deterministic(model_pair, tmp_path):
    raw, tuned = model_pair("qwen2", torch.bfloat16)
    files = []
    for name in ("a", "b"):
        diff(raw, tuned, tmp_path / name, lossless=True)
        files.append(
            hashlib.sha256((tmp_path / name / "lossless-diff.safetensors").read_bytes()).hexdigest()
        )
    assert files[0] == files[1]


def test_recover_dtype_converts_and_is_not_checked(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    r = recover(raw, tmp_path / "diff", tmp_path / "out", dtype="fp32")
    assert {e.dtype for e in r.manifest.entries.values()} == {"F32"} and r.checked == 0
    got, want = tensors(tmp_path / "out"), tensors(tuned)
    assert all(torch.equal(got[n], want[n].float()) for n in want)


# --- damage and refusals -------------------------------------------------------------------------


def frame_span(path: Path, name: str) -> tuple[int, int]:
    """Where tensor `name`'s zstd frame is in a lossless diff file: first byte, length."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        begin, end = json.loads(f.read(n))[name]["data_offsets"]
    return 8 + n + begin, end - begin


@pytest.mark.parametrize("where", ["middle", "checksum"])
def test_damaged_frame_is_caught_and_named(model_pair, tmp_path, where):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    name = "model.layers.1.mlp.down_proj.weight"
    path = tmp_path / "diff" / "lossless-diff.safetensors"
    start, length = frame_span(path, name)
    data = bytearray(path.read_bytes())
    data[start + (length // 2 if where == "middle" else length - 1)] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as e:
        recover(raw, tmp_path / "diff", tmp_path / "out")
    assert str(e.value).startswith(f"tensor {name!r} in {path}: the compressed data is damaged")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []


def test_intact_frame_of_other_values_is_caught_by_the_manifest(model_pair, tmp_path):
    """A well-formed frame that decodes to the wrong tensor: zstd is happy, the manifest not."""
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    name = "model.layers.0.self_attn.q_proj.weight"
    path = tmp_path / "diff" / "lossless-diff.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    stored = load_file(path)
    other = tensors(tuned)[name].clone()
    other[0, 0] += 1
    stored[name] = torch.frombuffer(bytearray(encode(tensors(raw)[name], other)), dtype=torch.uint8)
    save_file(stored, path, metadata=metadata)
    with pytest.raises(ChecksumError, match=f"tensor '{name}' in .* has sha256"):
        recover(raw, tmp_path / "diff", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dtype_mismatch_points_at_a_plain_diff(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16, tuned_dtype=torch.float32)
    with pytest.raises(InputError) as e:
        diff(raw, tuned, tmp_path / "diff", lossless=True)
    name = next(iter(open_checkpoint(tuned).infos))
    assert str(e.value) == (
        f"tensor {name!r} is fp16 in the raw model ({raw / 'model.safetensors'}) and fp32 in "
        f"the tuned model ({tuned / 'model.safetensors'})\n"
        "A lossless diff stores bit patterns, so both models need the same dtype per tensor. "
        "Use `dtype` fp32 instead of `lossless` (a plain fp32 diff)."
    )
    assert not (tmp_path / "diff").exists()


def test_recover_refuses_a_raw_model_of_another_dtype(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    bf16 = tmp_path / "raw-bf16"
    bf16.mkdir()
    save_file({n: t.bfloat16() for n, t in tensors(raw).items()}, bf16 / "model.safetensors")
    with pytest.raises(
        InputError, match="is bf16 in the raw model .* and fp16 in the lossless diff"
    ):
        recover(bf16, tmp_path / "diff", tmp_path / "out")


def test_recover_refuses_a_raw_model_of_another_vocabulary(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    with pytest.raises(
        InputError,
        match="tensor 'lm_head.weight' has shape \\[129, 64\\] in "
        "the raw model .* made against shape \\[128, 64\\]",
    ):
        recover(tuned, tmp_path / "diff", tmp_path / "out")


# --- command line --------------------------------------------------------------------------------


def test_cli_round_trip_and_option_checks(model_pair, tmp_path, capsys):
    raw, tuned = model_pair("qwen2", torch.bfloat16)
    d, out = str(tmp_path / "diff"), str(tmp_path / "out")
    assert (
        _run(
            [
                "diff",
                "--raw",
                str(raw),
                "--tuned",
                str(tuned),
                "--out",
                d,
                "--lossless",
                "--level",
                "3",
            ],
            debug=False,
        )
        == 0
    )
    summary = " ".join(capsys.readouterr().err.split())
    assert "diff --lossless: wrote 26 tensors (164.99 kB of BF16) as" in summary
    assert "Recovering from this diff gives all 26 tensors bit for bit" in summary
    assert _run(["recover", "--raw", str(raw), "--diff", d, "--out", out], debug=False) == 0
    assert "26 tensors match exactly" in " ".join(capsys.readouterr().err.split())
    for extra, message in (
        (["--lossless", "--dtype", "fp16"], "drop --dtype and --format"),
        (["--level", "5"], "--level applies to --lossless diffs only"),
    ):
        code = _run(
            [
                "diff",
                "--raw",
                str(raw),
                "--tuned",
                str(tuned),
                "--out",
                str(tmp_path / "x"),
                *extra,
            ],
            debug=False,
        )
        assert code == 2 and message in capsys.readouterr().err


def test_every_dtype_that_is_not_a_plain_float_round_trips(tmp_path):
    """U16/U32/U64, 8-bit floats, packed fp4, complex: their bit patterns, as for the others."""
    from dtype_samples import OTHER_DTYPES, byte_values, sample

    raw = {f"t.{n}": sample(d, (4, 6), i) for i, (n, d) in enumerate(OTHER_DTYPES.items())}
    tuned = {f"t.{n}": sample(d, (4, 6), 100 + i) for i, (n, d) in enumerate(OTHER_DTYPES.items())}
    for folder, state in (("raw", raw), ("tuned", tuned)):
        (tmp_path / folder).mkdir()
        save_file(state, tmp_path / folder / "model.safetensors")
    diff(tmp_path / "raw", tmp_path / "tuned", tmp_path / "diff", lossless=True)
    r = recover(tmp_path / "raw", tmp_path / "diff", tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert all(
        got[n].dtype == t.dtype and byte_values(got[n]) == byte_values(t) for n, t in tuned.items()
    )
    assert r.checked == len(tuned) and r.within_rounding == []


def test_an_interrupted_diff_resumes_after_its_finished_files(model_pair, tmp_path, monkeypatch):
    """Ctrl-C after the second finished file; the second is then damaged: the rerun keeps the
    first (checked by decoding it), writes the rest again and gives the same bytes."""
    raw, tuned = model_pair("llama", torch.float16)
    ref = diff(
        raw, tuned, tmp_path / "ref", lossless=True, options=WriteOptions(max_shard_size="60kB")
    )
    finished = []
    end_shard = LosslessDiffWriter._end_shard

    def interrupted(self):
        end_shard(self)
        finished.append(self.file_names[self._shard])
        if len(finished) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(LosslessDiffWriter, "_end_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diff(
            raw, tuned, tmp_path / "out", lossless=True, options=WriteOptions(max_shard_size="60kB")
        )
    monkeypatch.undo()
    partial = tmp_path / ".out.weightkit-partial"
    assert sorted(p.name for p in partial.glob("lossless-diff-*")) == finished
    name = next(iter(LosslessDiffReader(partial / finished[1]).infos))
    start, length = frame_span(partial / finished[1], name)
    data = bytearray((partial / finished[1]).read_bytes())
    data[start + length // 2] ^= 0x55
    (partial / finished[1]).write_bytes(bytes(data))
    d = diff(
        raw, tuned, tmp_path / "out", lossless=True, options=WriteOptions(max_shard_size="60kB")
    )
    assert d.notes[-1] == (
        f"Resumed a killed run: 1 of {len(ref.files)} shard(s) were already written and checked."
    )
    assert file_bytes(tmp_path / "out") == file_bytes(tmp_path / "ref")
    assert d.bytes_written == ref.bytes_written and not partial.exists()
