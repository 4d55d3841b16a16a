"""One pass from what the user has to what they want: every kind of input in every role, and the
fused chains (convert -> recover -> merge-lora) equal to the separate commands, file for file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import World, file_bytes, make_fused_inputs, run_role
from safetensors.torch import load_file, save_file

import weightkit.hub.cache
from weightkit.errors import ChecksumError, InputError
from weightkit.io.reader import open_checkpoint
from weightkit.ops.convert_llama import MetaView, convert_llama, open_meta
from weightkit.ops.diff import diff
from weightkit.ops.merge_lora import merge_lora
from weightkit.ops.recover import recover
from weightkit.options import WriteOptions
from weightkit.sources import Source
from weightkit.sources.open import open_source
from weightkit.sources.source import StoredSource

# ---------------------------------------------------------------- the raw Meta folder as a source


def test_a_raw_meta_folder_reads_as_its_converted_checkpoint(world):
    view, converted = (
        open_source(world.meta.folder, role="raw"),
        open_source(world.converted, role="raw"),
    )
    assert isinstance(view, MetaView) and isinstance(view, Source)
    assert isinstance(converted, StoredSource) and isinstance(converted, Source)
    assert view.names() == converted.names()
    for name in converted.names():
        assert (view.info(name).dtype, view.info(name).shape) == (
            converted.info(name).dtype,
            converted.info(name).shape,
        ), name
        assert torch.equal(view.read(name), converted.read(name)), name
    # rows of q/k-permuted, row-split tensors (also across a head), of column-split ones
    for name, rows in (
        ("model.layers.1.self_attn.k_proj.weight", (16, 32)),
        ("model.layers.1.self_attn.q_proj.weight", (5, 40)),
        ("model.layers.0.mlp.down_proj.weight", (16, 48)),
        ("model.embed_tokens.weight", (16, 48)),
    ):
        assert torch.equal(view.read_rows(name, *rows), converted.read_rows(name, *rows)), name
    assert view.config() == json.loads((world.converted / "config.json").read_text())
    assert view.inputs == [world.meta.folder, world.meta.tokenizer]
    assert view.notes[0] == "Detected LLaMA 2 (n_kv_heads)."
    assert view.notes[1].startswith("checklist.chk: the 3 listed file(s) match.")


def test_a_raw_meta_folder_in_a_dtype_is_convert_with_that_dtype(world, tmp_path):
    convert_llama(world.meta.folder, tmp_path / "fp16", dtype="fp16")
    want = open_checkpoint(tmp_path / "fp16")
    view = open_meta(world.meta.folder, dtype=torch.float16)
    for name in want.names():
        assert torch.equal(view.read(name), want.read(name)), name
    assert view.config() == json.loads((tmp_path / "fp16" / "config.json").read_text())


def test_a_meta_download_with_model_folders_names_them(world):
    with pytest.raises(InputError) as e:
        open_source(world.meta.input_dir, role="raw")
    assert str(e.value) == (
        f"{world.meta.input_dir}: a Meta LLaMA download holding 1 model folder(s) (llama-2-13b), "
        f"not a model itself\nGive the model's own folder, e.g. {world.meta.folder}."
    )


# ---------------------------------------------------------------- every kind in every role


# (role, kind) -> (what is given, the HF folder it stands for); a Hub repo id in each role is in
# tests/hub/test_sources.py, read from a real Hugging Face cache
KINDS = {
    ("raw", "meta"): ("meta", "converted"),
    ("diff", "meta"): ("meta_b", "converted_b"),
    ("tuned", "meta"): ("meta_b", "converted_b"),
    ("base", "meta"): ("meta", "converted"),
    ("lora", "weight file"): ("adapter file", "base_adapter"),
}


@pytest.mark.parametrize(("role", "kind"), KINDS)
def test_every_kind_of_input_in_every_role(world, tmp_path, monkeypatch, role, kind):
    def no_hub(*args, **kwargs):
        raise AssertionError("a path that exists is read as a path, not looked up on the Hub")

    monkeypatch.setattr(weightkit.hub.cache, "resolve_model", no_hub)
    given, stands_for = KINDS[role, kind]
    given = {
        "meta": world.meta.folder,
        "meta_b": world.meta_b.folder,
        "adapter file": world.base_adapter / "adapter_model.safetensors",
    }[given]
    run_role(world, role, getattr(world, stands_for), tmp_path / "want")
    run_role(world, role, given, tmp_path / "got")
    assert file_bytes(tmp_path / "got") == file_bytes(tmp_path / "want")


# ---------------------------------------------------------------- the fused chains


def separate(world: World, chain: str, out: Path, dtype: str, **kw) -> None:
    """The chain as separate commands, one after another, each with the same --dtype."""
    work = out.parent / f"{out.name}-steps"
    raw = world.converted
    if chain.startswith("convert"):
        convert_llama(world.meta.folder, work / "converted", dtype=dtype)
        raw = work / "converted"
    if chain == "convert+merge":
        merge_lora(raw, world.base_adapter, out, dtype=dtype, **kw)
        return
    if "merge" not in chain:
        recover(raw, world.diff, out, dtype=dtype, **kw)
        return
    recover(raw, world.diff, work / "recovered", dtype=dtype)
    merge_lora(work / "recovered", world.adapter, out, dtype=dtype, **kw)


def fused(world: World, chain: str, out: Path, dtype: str, **kw):
    raw = world.meta.folder if chain.startswith("convert") else world.converted
    if chain == "convert+merge":
        return merge_lora(raw, world.base_adapter, out, dtype=dtype, **kw)
    lora = world.adapter if chain.endswith("merge") else None
    return recover(raw, world.diff, out, lora=lora, dtype=dtype, **kw)


CHAINS = ["convert+recover", "recover+merge", "convert+recover+merge", "convert+merge"]


@pytest.mark.parametrize("dtype", ["auto", "fp16"])
@pytest.mark.parametrize("chain", CHAINS)
def test_fused_chain_equals_the_separate_commands(world, tmp_path, chain, dtype):
    """fp16 from bf16 weights: each step's rounding shows (convert rounds the raw weights,
    recover its sum, the merge its own), so only the same steps in the same order agree."""
    separate(world, chain, tmp_path / "want", dtype)
    result = fused(world, chain, tmp_path / "got", dtype)
    got = file_bytes(tmp_path / "got")
    assert got == file_bytes(tmp_path / "want")
    # config and tokenizer files came through: the diff's config, the raw model's tokenizer
    assert {"config.json", "tokenizer.json", "tokenizer.model", "weightkit.manifest.json"} <= set(
        got
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got", "want", "want-steps"]
    if "recover" in chain:  # the recovered tensors were checked, though never written
        assert result.checked == (0 if dtype == "fp16" else 21) and result.within_rounding == []


def test_fused_chain_in_row_pieces_and_bin_shards(world, tmp_path, small_pieces):
    """Pieces of 700 bytes: the q/k rows of the raw Meta view keep whole heads through the
    recover; the merged tensors are computed whole."""
    chain = "convert+recover+merge"
    separate(
        world,
        chain,
        tmp_path / "want",
        "auto",
        options=WriteOptions(format="bin", max_shard_size="100kB"),
    )
    small_pieces.clear()
    fused(
        world,
        chain,
        tmp_path / "got",
        "auto",
        options=WriteOptions(format="bin", max_shard_size="100kB"),
    )
    assert file_bytes(tmp_path / "got") == file_bytes(tmp_path / "want")
    k = [rows for name, rows in small_pieces if name == "model.layers.0.self_attn.k_proj.weight"]
    assert k == [(0, 16), (16, 32)]  # bf16 rows of 128 bytes, heads of 16 rows
    assert not any(name == "model.layers.0.self_attn.q_proj.weight" for name, _ in small_pieces)


def test_fused_summary_says_what_was_read_and_checked(world, tmp_path, capfd):
    result = recover(world.meta.folder, world.diff, tmp_path / "out", lora=world.adapter)
    assert capfd.readouterr() == ("", "")  # a Python call prints nothing
    text = result.summary()
    assert text.startswith("recover + merge-lora: wrote 21 tensors")
    assert "checklist.chk: the 3 listed file(s) match." in text
    assert (
        "Checked against the manifest of the tuned model (the recovered tensors, before the "
        "merge): 21 tensors match exactly."
    ) in text
    assert "Detected LLaMA 2 (n_kv_heads)." in text
    assert "Merged LoRA into 8 tensor(s); 13 streamed through unchanged." in text


def test_fused_dry_run_checks_everything_and_writes_nothing(world, tmp_path, capfd):
    before = sorted(p.name for p in world.meta.folder.iterdir())
    result = recover(
        world.meta.folder,
        world.diff,
        tmp_path / "out",
        lora=world.adapter,
        options=WriteOptions(dry_run=True),
    )
    assert capfd.readouterr() == ("", "")
    # Meta's checklist.chk is checked, as convert checks it
    assert "checklist.chk: the 3 listed file(s) match." in result.notes
    text = result.summary()
    assert text.startswith("recover + merge-lora (dry run): inputs check out; 21 tensors, ")
    assert f"to write to {tmp_path / 'out'} (disk free: " in text
    assert text.endswith("Nothing was written.")
    assert result.files == [] and list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in world.meta.folder.iterdir()) == before


# ---------------------------------------------------------------- bad inputs on a fused run


def test_adapter_that_does_not_fit_the_recovered_model(world, tmp_path):
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((world.adapter / "adapter_config.json").read_text())
    state = load_file(world.adapter / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    state[key] = torch.zeros(48, 4, dtype=torch.bfloat16)
    save_file(state, bad / "adapter_model.safetensors")
    with pytest.raises(InputError) as e:
        recover(world.meta.folder, world.diff, tmp_path / "out", lora=bad)
    assert str(e.value).startswith(
        f"adapter tensor {key!r} ({bad / 'adapter_model.safetensors'}) does not fit base tensor "
        "'model.layers.0.self_attn.v_proj.weight': lora_B @ lora_A gives a delta of shape "
        "[48, 64], the base model has [32, 64] (recovered from "
        f"{world.meta.folder} and {world.diff})"
    )
    assert list(tmp_path.iterdir()) == [bad]


def test_diff_that_does_not_fit_the_raw_meta_model(world, tmp_path):
    bad = tmp_path / "bad-diff"
    bad.mkdir()
    state = load_file(world.diff / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(InputError) as e:
        recover(world.meta.folder, bad, tmp_path / "out", lora=world.adapter)
    assert str(e.value).startswith(
        "tensor 'model.layers.1.mlp.up_proj.weight': shape [100, 64] in the diff "
        f"({bad / 'model.safetensors'}) does not fit shape [256, 64] in the raw model "
        f"({world.meta.folder})"
    )
    assert list(tmp_path.iterdir()) == [bad]


def test_a_wrong_raw_model_fails_the_recovered_check_before_the_merge(world, tmp_path):
    """The diff's target manifest proves the recovered tensors even when they are not written:
    the raw model of another seed gives other tensors, and the run stops naming the first."""
    with pytest.raises(ChecksumError) as e:
        recover(world.meta_b.folder, world.diff, tmp_path / "out", lora=world.adapter)
    first = open_checkpoint(world.diff).names()[0]  # the diff's order is the run's
    assert str(e.value).startswith(
        f"tensor {first!r} in the model recovered from {world.meta_b.folder} and {world.diff} "
        "has sha256 "
    )
    assert list(tmp_path.iterdir()) == []


def test_overflow_in_the_recover_step_is_the_message_recover_gives(world, tmp_path):
    """NaN/Inf from the recover's arithmetic is refused before the tensor's hash is checked, so
    the fused run stops as `recover` alone does, naming the tensor."""
    bad = tmp_path / "bad-diff"
    bad.mkdir()
    (bad / "weightkit.target-manifest.json").write_text(
        (world.diff / "weightkit.target-manifest.json").read_text()
    )
    state = load_file(world.diff / "model.safetensors")
    state["model.norm.weight"] = torch.full((64,), 3.4e38)  # rounds to inf in bf16
    save_file(state, bad / "model.safetensors")
    messages = []
    for lora in (None, world.adapter):
        with pytest.raises(InputError) as e:
            recover(world.converted, bad, tmp_path / "out", lora=lora)
        messages.append(str(e.value))
    assert (
        messages[0]
        == messages[1]
        == (
            "tensor 'model.norm.weight': the result has 64 NaN/Inf value(s) although its "
            "inputs are finite (overflow in torch.bfloat16?)\n"
            "Write a wider dtype (`dtype` fp32 or bf16), or check the adapter's scaling."
        )
    )


def test_lossless_diff_of_and_recovery_from_a_raw_meta_folder(world, tmp_path):
    diff(world.converted, world.tuned, tmp_path / "want-diff", lossless=True)
    diff(world.meta.folder, world.tuned, tmp_path / "diff", lossless=True)
    assert file_bytes(tmp_path / "diff") == file_bytes(tmp_path / "want-diff")
    recover(world.converted, tmp_path / "diff", tmp_path / "recovered")
    merge_lora(tmp_path / "recovered", world.adapter, tmp_path / "want")
    result = recover(world.meta.folder, tmp_path / "diff", tmp_path / "got", lora=world.adapter)
    assert file_bytes(tmp_path / "got") == file_bytes(tmp_path / "want")
    assert (result.checked, result.within_rounding) == (21, [])


# ---------------------------------------------------------------- bytes written


# The command runs as a child of this small wrapper: RUSAGE_CHILDREN then holds it alone.
WRITES = """
import json, resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock))
"""


def blocks_written(*cmd: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", WRITES, *cmd], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_a_fused_run_writes_its_output_once(tmp_path):
    """convert -> recover -> merge-lora of a 45 MB model: the blocks the command wrote to disk
    (ru_oublock, 512 bytes each, counted as pages are dirtied, so no cache flush is needed)
    stay within 1.5x of its output: no intermediate model anywhere (the separate commands
    write 3x)."""
    probe = (
        "import os, sys\nwith open(sys.argv[1], 'wb') as f:\n"
        "    f.write(b'x' * 2**24); os.fsync(f.fileno())"
    )
    assert blocks_written(sys.executable, "-c", probe, str(tmp_path / "probe")) >= 2**24 // 512
    (tmp_path / "probe").unlink()  # ru_oublock counts on this filesystem: 16 MiB, 32768 blocks
    meta, diff_dir, lora = make_fused_inputs(tmp_path)
    out = tmp_path / "out"
    written = 512 * blocks_written(
        sys.executable,
        "-m",
        "weightkit",
        "--quiet",
        "recover",
        "--raw",
        str(meta),
        "--diff",
        str(diff_dir),
        "--lora",
        str(lora),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    output = sum(p.stat().st_size for p in out.iterdir())
    assert output > 40 * 10**6
    assert written <= 1.5 * output, (written, output)
