"""diff -> recover round trips, KnowLM's layout, vocabulary extension and refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import file_bytes, save_bin_shards, tensors
from safetensors.torch import load_file

from weightkit import engine
from weightkit.errors import ChecksumError, InputError
from weightkit.io.reader import open_checkpoint
from weightkit.ops.diff import diff
from weightkit.ops.recover import recover
from weightkit.options import WriteOptions


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [("llama", torch.float16), ("qwen2", torch.bfloat16), ("qwen2-moe", torch.bfloat16)],
)
def test_fp32_diff_round_trip_is_bit_exact(model_pair, tmp_path, kind, dtype):
    raw, tuned = model_pair(kind, dtype)
    d = diff(raw, tuned, tmp_path / "diff")
    assert {e.dtype for e in d.manifest.entries.values()} == {"F32"}
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    assert_same_tensors(tensors(tmp_path / "out"), tensors(tuned))
    assert r.checked == r.tensors == len(open_checkpoint(tuned))
    assert r.within_rounding == []
    assert (tmp_path / "out" / "config.json").read_text() == (tuned / "config.json").read_text()


def test_recovered_model_loads_in_transformers(model_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    raw, tuned = model_pair("qwen2", torch.bfloat16)
    diff(raw, tuned, tmp_path / "diff")
    recover(raw, tmp_path / "diff", tmp_path / "out", options=WriteOptions(max_shard_size="100kB"))
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    want = AutoModelForCausalLM.from_pretrained(tuned).state_dict()
    assert_same_tensors(got, want)
    assert got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ints = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}
    return (a.view(ints[a.dtype]).long() - b.view(ints[b.dtype]).long()).abs()


@pytest.mark.parametrize("diff_dtype", ["fp16", "bf16"])
def test_half_precision_diff_of_half_precision_model_is_exact(model_pair, tmp_path, diff_dtype):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff", dtype=diff_dtype)
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    assert_same_tensors(tensors(tmp_path / "out"), tensors(tuned))
    assert r.within_rounding == []


@pytest.mark.parametrize(("diff_dtype", "wrong_elements"), [("fp16", 89078), ("bf16", 89564)])
def test_half_precision_diff_of_fp32_model_is_within_one_rounding(
    model_pair, tmp_path, diff_dtype, wrong_elements
):
    """fp16 raw + fp32 tuned (KnowLM's case): the only error is rounding the diff once."""
    raw, tuned = model_pair("llama", torch.float16, tuned_dtype=torch.float32)
    diff(raw, tuned, tmp_path / "diff", dtype=diff_dtype)
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    got, want, base = tensors(tmp_path / "out"), tensors(tuned), tensors(raw)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[diff_dtype]
    wrong = 0
    for n in want:
        once = base[n].float() + (want[n] - base[n].float()).to(half).float()
        assert got[n].dtype == torch.float32 and torch.equal(got[n], once), n
        wrong += int((got[n] != want[n]).sum())
    assert wrong == wrong_elements  # of 90432
    assert len(r.within_rounding) == r.checked == len(want)


def test_knowlm_layout_fp32_bin_diff(model_pair, tmp_path):
    """KnowLM publishes fp32 .bin shards with an index and no manifest; raw is fp16."""
    raw, _ = model_pair("llama", torch.float16)
    raw_state = tensors(raw)
    gen = torch.Generator().manual_seed(7)
    tuned = {
        n: t.float() + torch.randn(t.shape, generator=gen) * t.float().abs() * 1e-2
        for n, t in raw_state.items()
    }
    save_bin_shards({n: tuned[n] - raw_state[n].float() for n in tuned}, tmp_path / "diff", 3)
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    assert r.checked == 0 and {e.dtype for e in r.manifest.entries.values()} == {"F32"}
    assert_same_tensors(tensors(tmp_path / "out"), tuned)
    r16 = recover(raw, tmp_path / "diff", tmp_path / "out16", fp16=True)
    assert {e.dtype for e in r16.manifest.entries.values()} == {"F16"}


def test_bin_and_safetensors_inputs_give_identical_bytes(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    raw_bin = tmp_path / "raw-bin"
    save_bin_shards(tensors(raw), raw_bin, 2)
    recover(raw, tmp_path / "diff", tmp_path / "a")
    recover(raw_bin, tmp_path / "diff", tmp_path / "b")
    assert (
        file_hashes(tmp_path / "a")["model.safetensors"]
        == file_hashes(tmp_path / "b")["model.safetensors"]
    )


def test_output_is_deterministic_and_bin_format_loads(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    for name in ("a", "b"):
        recover(
            raw,
            tmp_path / "diff",
            tmp_path / name,
            options=WriteOptions(format="bin", max_shard_size="150kB"),
        )
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a").glob("*.bin"))
    assert files == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    loaded = {}
    for f in files:
        loaded.update(torch.load(tmp_path / "a" / f, weights_only=True, mmap=True))
    assert_same_tensors(loaded, tensors(tuned))


def test_vocab_extended_diff(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    d = diff(raw, tuned, tmp_path / "diff")
    assert any("vocabulary extended from 128 to 129 rows" in n for n in d.notes)
    stored = load_file(tmp_path / "diff" / "model.safetensors")
    want = tensors(tuned)
    assert torch.equal(stored["lm_head.weight"][128:], want["lm_head.weight"][128:].float())
    r = recover(raw, tmp_path / "diff", tmp_path / "out")
    assert (
        "model.embed_tokens.weight: vocabulary extended from 128 to 129 rows; the 1 new "
        "rows are the diff's own." in r.notes
    )
    assert_same_tensors(tensors(tmp_path / "out"), want)


def test_shape_mismatch_names_tensor_shapes_and_files(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    state = tensors(raw)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64, dtype=torch.float16)
    bad_raw = tmp_path / "bad-raw"
    save_bin_shards(state, bad_raw, 1)
    with pytest.raises(InputError) as e:
        recover(bad_raw, tmp_path / "diff", tmp_path / "out")
    assert str(e.value).startswith(
        "tensor 'model.layers.0.mlp.up_proj.weight': shape [128, 64] in the diff "
        f"({tmp_path / 'diff' / 'model.safetensors'}) does not fit shape [100, 64] in the raw "
        f"model ({bad_raw / 'pytorch_model-00001-of-00001.bin'})"
    )
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []


def test_missing_key_is_refused_before_writing(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    state = tensors(raw)
    del state["model.norm.weight"]
    save_bin_shards(state, tmp_path / "short-raw", 1)
    with pytest.raises(InputError) as e:
        recover(tmp_path / "short-raw", tmp_path / "diff", tmp_path / "out")
    assert str(e.value).startswith(
        "tensor 'model.norm.weight' is in the diff "
        f"({tmp_path / 'diff' / 'model.safetensors'}) but not in the raw model"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (
            lambda raw, tuned, out: recover(raw, tuned, out, fp16=True, dtype="bf16"),
            "`fp16` writes fp16 and `dtype` bf16 asks for bf16: give one of them",
        ),
        (
            lambda raw, tuned, out: diff(raw, tuned, out, lossless=True, dtype="fp16"),
            "`lossless` stores its own format: drop `dtype` and `format`.",
        ),
        (
            lambda raw, tuned, out: diff(
                raw, tuned, out, lossless=True, options=WriteOptions(format="bin")
            ),
            "`lossless` stores its own format: drop `dtype` and `format`.",
        ),
        (
            lambda raw, tuned, out: diff(raw, tuned, out, level=5),
            "`level` applies to `lossless` diffs only.",
        ),
    ],
    ids=["fp16-and-bf16", "lossless-and-dtype", "lossless-and-format", "level-of-plain-diff"],
)
def test_contradicting_options_are_refused(model_pair, tmp_path, run, message):
    raw, tuned = model_pair("llama", torch.float16)
    with pytest.raises(InputError) as e:
        run(raw, tuned, tmp_path / "out")
    assert (e.value.message, e.value.exit_code) == (message, 2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_lossless_diff_level_is_checked_by_a_dry_run_too(model_pair, tmp_path, dry_run):
    raw, tuned = model_pair("llama", torch.float16)
    with pytest.raises(InputError) as e:
        diff(
            raw,
            tuned,
            tmp_path / "out",
            lossless=True,
            level=23,
            options=WriteOptions(dry_run=dry_run),
        )
    assert (e.value.message, e.value.hint) == (
        "zstd level 23 is out of range",
        "Use `level` 1..19.",
    )
    assert not (tmp_path / "out").exists()


def test_wrong_base_model_fails_the_manifest_check(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    state = tensors(raw)
    state["model.norm.weight"] = state["model.norm.weight"] + 1
    save_bin_shards(state, tmp_path / "other-raw", 1)
    with pytest.raises(ChecksumError, match="tensor 'model.norm.weight' in .* has sha256"):
        recover(tmp_path / "other-raw", tmp_path / "diff", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_tensors_streamed_in_pieces_give_the_same_bytes(
    model_pair, tmp_path, small_pieces, monkeypatch, fmt
):
    """Row pieces (here of 700 bytes) read .bin and safetensors inputs and write either format
    byte for byte as whole tensors do, also across the rows a vocabulary extension added."""
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    diff(raw, tuned, tmp_path / "diff")
    raw_bin = tmp_path / "raw-bin"
    save_bin_shards(tensors(raw), raw_bin, 2)
    small_pieces.clear()
    recover(raw_bin, tmp_path / "diff", tmp_path / "pieces", options=WriteOptions(format=fmt))
    embed = [rows for name, rows in small_pieces if name == "model.embed_tokens.weight"]
    # fp16 rows of 128 bytes: 5 to a piece; the last piece holds raw's last 3 rows and the new one
    assert embed == [(a, min(a + 5, 129)) for a in range(0, 129, 5)]
    # 2 layers x 7 matrices, the embeddings and lm_head; the norms fit in one piece
    assert len({name for name, _ in small_pieces}) == 16
    monkeypatch.setattr(engine, "_PIECE", 2**40)
    recover(raw_bin, tmp_path / "diff", tmp_path / "whole", options=WriteOptions(format=fmt))
    assert file_bytes(tmp_path / "pieces") == file_bytes(tmp_path / "whole")


def test_diff_in_pieces_gives_the_same_diff_and_target_manifest(
    model_pair, tmp_path, small_pieces, monkeypatch
):
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1, tuned_dtype=torch.float32)
    diff(raw, tuned, tmp_path / "pieces", dtype="fp16")
    assert ("lm_head.weight", (125, 129)) in small_pieces  # fp16 rows: 5 to a piece
    monkeypatch.setattr(engine, "_PIECE", 2**40)
    diff(raw, tuned, tmp_path / "whole", dtype="fp16")
    pieces = file_bytes(tmp_path / "pieces")
    assert pieces == file_bytes(tmp_path / "whole")
    # an fp16 diff of an fp32 model: entries say what recovery will give instead
    assert b'"recovers_to"' in pieces["weightkit.target-manifest.json"]
