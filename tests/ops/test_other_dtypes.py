"""Tensors that are not plain floats in real checkpoints, through merge-lora, diff, recover and
verify: integers (U16/U32/U64 included), bool, complex and packed fp4 pass through and round-trip
bit for bit; 8-bit floats pass through, are widened for arithmetic and rounded into explicitly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dtype_samples import BITWISE_DTYPES, INTEGER_DTYPES, OTHER_DTYPES, byte_values, sample
from safetensors.torch import load_file, save_file

from weightkit.cli import _run
from weightkit.errors import InputError
from weightkit.manifest import TARGET_MANIFEST_NAME
from weightkit.ops.diff import diff
from weightkit.ops.merge_lora import merge_lora
from weightkit.ops.recover import recover
from weightkit.ops.verify import verify
from weightkit.options import WriteOptions

WEIGHT = "model.layers.0.mlp.up_proj.weight"
NORM = "model.norm.weight"
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def save(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two fp16 weights and one tensor of every other dtype."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        WEIGHT: torch.randn(16, 8, generator=gen).half(),
        NORM: torch.randn(8, generator=gen).half(),
    }
    for i, (name, dtype) in enumerate(OTHER_DTYPES.items()):
        state[f"extra.{name}"] = sample(dtype, (4, 6), seed * 100 + i)
    return state


def wrapping_difference(raw: torch.Tensor, tuned: torch.Tensor) -> bytes:
    """tuned - raw of the bit patterns modulo 2**bits, computed here with numpy (XOR for bool)."""
    if raw.dtype == torch.bool:
        return byte_values(raw ^ tuned)
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[raw.dtype.itemsize]
    a = np.frombuffer(byte_values(raw), dtype=width)
    b = np.frombuffer(byte_values(tuned), dtype=width)
    return (b - a).tobytes()


@pytest.fixture
def pair(tmp_path):
    """raw/ and tuned/: the weights moved a little; of the other tensors, every second one
    changed (new random bits), the rest equal."""
    raw = base_state()
    tuned = dict(raw)
    tuned[WEIGHT] = (raw[WEIGHT].float() * 1.01).half()
    for i, name in enumerate(n for n in raw if n.startswith("extra.")):
        if i % 2:
            tuned[name] = sample(raw[name].dtype, tuple(raw[name].shape), 1000 + i)
    return save(tmp_path / "raw", raw), save(tmp_path / "tuned", tuned), raw, tuned


def test_diff_stores_the_wrapping_difference_and_recover_gives_every_bit_back(pair, tmp_path):
    raw_dir, tuned_dir, raw, tuned = pair
    diff(raw_dir, tuned_dir, tmp_path / "diff")
    stored = load_file(tmp_path / "diff" / "model.safetensors")  # safetensors' own reader
    for name in (n for n in raw if n.startswith("extra.") and n[6:] in BITWISE_DTYPES):
        assert stored[name].dtype == raw[name].dtype, name
        assert byte_values(stored[name]) == wrapping_difference(raw[name], tuned[name]), name
        if torch.equal(raw[name].view(torch.uint8), tuned[name].view(torch.uint8)):
            assert set(byte_values(stored[name])) == {0}, name  # unchanged: a diff of zeros
    r = recover(raw_dir, tmp_path / "diff", tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(got) == sorted(tuned)
    assert all(
        got[n].dtype == tuned[n].dtype and byte_values(got[n]) == byte_values(tuned[n])
        for n in tuned
    )
    assert r.checked == r.tensors == len(tuned) and r.within_rounding == []


def test_bool_true_to_false_comes_back_false(tmp_path):
    """int64 arithmetic made True + True = True: a flag the fine-tune cleared came back set."""
    raw = save(tmp_path / "raw", {"mask": torch.tensor([True, True, False, False])})
    tuned = save(tmp_path / "tuned", {"mask": torch.tensor([False, True, True, False])})
    diff(raw, tuned, tmp_path / "diff")
    assert load_file(tmp_path / "diff" / "model.safetensors")["mask"].tolist() == [
        True,
        False,
        True,
        False,
    ]
    recover(raw, tmp_path / "diff", tmp_path / "out")
    assert load_file(tmp_path / "out" / "model.safetensors")["mask"].tolist() == [
        False,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_diff_of_zeros_leaves_them_unchanged_in_either_format(tmp_path, fmt):
    """A published diff without a target manifest: zeros for what the fine-tune did not change."""
    raw = base_state()
    raw_dir = save(tmp_path / "raw", raw)
    zeros = {
        n: torch.zeros_like(t, dtype=torch.float32 if t.dtype == torch.float16 else None)
        if not t.dtype.is_floating_point or t.dtype == torch.float16
        else torch.zeros_like(t.view(torch.uint8)).view(t.dtype)
        for n, t in raw.items()
    }
    save(tmp_path / "diff", zeros)
    recover(raw_dir, tmp_path / "diff", tmp_path / "out", options=WriteOptions(format=fmt))
    out = tmp_path / "out"
    got = (
        load_file(out / "model.safetensors")
        if fmt == "safetensors"
        else torch.load(out / "pytorch_model.bin", weights_only=True)
    )
    for name in (n for n in raw if n.startswith("extra.") and n[6:] in INTEGER_DTYPES):
        assert got[name].dtype == raw[name].dtype, name
        assert byte_values(got[name]) == byte_values(raw[name]), name
    assert torch.equal(got[WEIGHT], raw[WEIGHT].float())  # fp16 + fp32 diff: fp32


def test_verify_hashes_every_dtype_and_names_a_damaged_u64(pair, tmp_path):
    raw_dir, tuned_dir, raw, tuned = pair
    diff(raw_dir, tuned_dir, tmp_path / "diff")
    recover(raw_dir, tmp_path / "diff", tmp_path / "out")
    report = verify(tmp_path / "out")
    assert report.ok and len(report.rows) == len(tuned)
    manifest = json.loads((tmp_path / "out" / "weightkit.manifest.json").read_text())
    assert {manifest["tensors"][f"extra.{n}"]["dtype"] for n in OTHER_DTYPES} == set(OTHER_DTYPES)
    assert manifest["tensors"]["extra.F4"]["shape"] == [4, 6]  # torch's shape: bytes of two
    path = tmp_path / "out" / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    begin = json.loads(data[8:header])["extra.U64"]["data_offsets"][0]
    data[header + begin + 5] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(tmp_path / "out")
    assert [(r.name, r.verdict) for r in report.rows if r.verdict != "ok"] == [
        ("extra.U64", "MISMATCH")
    ]


# --- merge-lora --------------------------------------------------------------------------------


def write_adapter(folder: Path, target: str, rows: int, cols: int) -> Path:
    gen = torch.Generator().manual_seed(7)
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": [target]})
    )
    prefix = f"base_model.model.model.layers.0.mlp.{target}"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.randn(2, cols, generator=gen),
            f"{prefix}.lora_B.weight": torch.randn(rows, 2, generator=gen),
        },
        folder / "adapter_model.safetensors",
    )
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_merge_lora_passes_every_other_dtype_through(tmp_path, fmt):
    base = base_state()
    base_dir = save(tmp_path / "base", base)
    adapter = write_adapter(tmp_path / "adapter", "up_proj", 16, 8)
    # --dtype converts the plain floats; the quantized and integer tensors keep their dtype
    merge_lora(base_dir, adapter, tmp_path / "out", dtype="fp32", options=WriteOptions(format=fmt))
    out = tmp_path / "out"
    got = (
        load_file(out / "model.safetensors")
        if fmt == "safetensors"
        else torch.load(out / "pytorch_model.bin", weights_only=True)
    )
    for name in (n for n in base if n.startswith("extra.")):
        assert got[name].dtype == base[name].dtype, name
        assert byte_values(got[name]) == byte_values(base[name]), name
    assert got[NORM].dtype == torch.float32 and torch.equal(got[NORM], base[NORM].float())
    lora = load_file(adapter / "adapter_model.safetensors")
    a, b = (lora[f"base_model.model.model.layers.0.mlp.up_proj.lora_{x}.weight"] for x in "AB")
    assert torch.equal(got[WEIGHT], (b @ a).mul_(2.0) + base[WEIGHT].float())


def test_merge_lora_refuses_to_change_an_fp8_weight(tmp_path):
    base = {WEIGHT: torch.randn(16, 8).to(E4M3), NORM: torch.randn(8).half()}
    base_dir = save(tmp_path / "base", base)
    adapter = write_adapter(tmp_path / "adapter", "up_proj", 16, 8)
    with pytest.raises(InputError) as e:
        merge_lora(base_dir, adapter, tmp_path / "out")
    assert str(e.value) == (
        f"base tensor {WEIGHT!r} ({base_dir / 'model.safetensors'}) is float8_e4m3fn; a LoRA "
        "adapter can only change fp32, fp16, bf16 or fp64 weights\nQuantized weights (8-bit "
        "floats, integers) come with scales a merge would have to apply first: merge into an "
        "unquantized (bf16 or fp16) copy of the base model."
    )
    assert not (tmp_path / "out").exists()


# --- 8-bit floats in diff and recover ----------------------------------------------------------


def fp8_pair(tmp_path: Path, dtype: torch.dtype) -> tuple[Path, Path, dict, dict]:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(16, 8, generator=gen) * 4
    raw = {
        WEIGHT: w.to(dtype),
        NORM: torch.randn(8, generator=gen).half(),
        "extra.scale": torch.rand(16, generator=gen),
    }
    tuned = dict(raw, **{WEIGHT: (w * 1.1).to(dtype)})
    return save(tmp_path / "raw", raw), save(tmp_path / "tuned", tuned), raw, tuned


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_fp8_raw_plus_a_float_diff_is_widened_and_rounded_once(tmp_path, dtype):
    raw_dir, _, raw, _ = fp8_pair(tmp_path, dtype)
    gen = torch.Generator().manual_seed(4)
    d32 = torch.randn(16, 8, generator=gen) * 0.1
    for diff_dtype, want_dtype in ((torch.float32, torch.float32), (torch.float16, torch.float16)):
        folder = tmp_path / f"diff-{diff_dtype}"
        save(
            folder,
            {WEIGHT: d32.to(diff_dtype), NORM: torch.zeros(8), "extra.scale": torch.zeros(16)},
        )
        recover(raw_dir, folder, tmp_path / f"out-{diff_dtype}")
        got = load_file(tmp_path / f"out-{diff_dtype}" / "model.safetensors")[WEIGHT]
        want = (raw[WEIGHT].float() + d32.to(diff_dtype).float()).to(want_dtype)
        assert got.dtype == want_dtype and byte_values(got) == byte_values(want)


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("diff_dtype", ["fp32", "bf16"])
def test_fp8_fine_tune_round_trips_through_a_diff(tmp_path, dtype, diff_dtype):
    raw_dir, tuned_dir, _, tuned = fp8_pair(tmp_path, dtype)
    diff(raw_dir, tuned_dir, tmp_path / "diff", dtype=diff_dtype)
    target = json.loads((tmp_path / "diff" / TARGET_MANIFEST_NAME).read_text())["tensors"]
    assert target[WEIGHT]["dtype"] == {E4M3: "F8_E4M3", E5M2: "F8_E5M2"}[dtype]
    r = recover(raw_dir, tmp_path / "diff", tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert got[WEIGHT].dtype == dtype and byte_values(got[WEIGHT]) == byte_values(tuned[WEIGHT])
    assert r.checked == 3


def test_recover_into_fp8_refuses_a_result_beyond_its_range(tmp_path):
    raw_dir, tuned_dir, _, _ = fp8_pair(tmp_path, E4M3)
    diff(raw_dir, tuned_dir, tmp_path / "diff")
    stored = load_file(tmp_path / "diff" / "model.safetensors")
    stored[WEIGHT][0, :3] = 1000.0  # torch alone would write 448 for each
    save_file(stored, tmp_path / "diff" / "model.safetensors")
    code = _run(
        [
            "recover",
            "--raw",
            str(raw_dir),
            "--diff",
            str(tmp_path / "diff"),
            "--out",
            str(tmp_path / "out"),
        ],
        debug=False,
    )
    assert code == 1
    with pytest.raises(
        InputError,
        match=f"^tensor {WEIGHT!r}: 3 value\\(s\\) of the result lie "
        "beyond the range of F8_E4M3 \\(largest 448\\)",
    ):
        recover(raw_dir, tmp_path / "diff", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.weightkit-partial").exists()


def test_nan_of_an_fp8_raw_passes_through_new_ones_are_refused(tmp_path):
    raw = {WEIGHT: torch.tensor([[1.0, 57344.0]]).to(E5M2)}
    raw[WEIGHT].view(torch.uint8)[0, 0] = 0x7F  # NaN
    raw_dir = save(tmp_path / "raw", raw)
    save(tmp_path / "diff", {WEIGHT: torch.tensor([[0.5, 0.5]], dtype=torch.float16)})
    recover(raw_dir, tmp_path / "diff", tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")[WEIGHT]
    assert got.dtype == torch.float16 and torch.isnan(got[0, 0]) and got[0, 1] == 57344.0
    save(tmp_path / "diff", {WEIGHT: torch.tensor([[0.5, 65504.0]], dtype=torch.float16)})
    raw[WEIGHT].view(torch.uint8)[0, 0] = 0x3C  # 1.0
    save(raw_dir, raw)
    with pytest.raises(InputError, match="the result has 1 NaN/Inf value"):
        recover(raw_dir, tmp_path / "diff", tmp_path / "out2")


def test_untouched_fp8_and_its_scales_pass_merge_lora_byte_for_byte(tmp_path):
    base = {WEIGHT: torch.randn(16, 8).half(), NORM: torch.randn(8).half()}
    base["model.layers.0.mlp.down_proj.weight"] = (torch.randn(8, 16) * 50).to(E4M3)
    base["model.layers.0.mlp.down_proj.weight_scale_inv"] = torch.rand(1, 1)
    base_dir = save(tmp_path / "base", base)
    adapter = write_adapter(tmp_path / "adapter", "up_proj", 16, 8)
    merge_lora(base_dir, adapter, tmp_path / "out", dtype="bf16")
    got = load_file(tmp_path / "out" / "model.safetensors")
    fp8 = "model.layers.0.mlp.down_proj.weight"
    assert got[fp8].dtype == E4M3 and byte_values(got[fp8]) == byte_values(base[fp8])


@pytest.mark.parametrize("command", ["recover", "merge-lora", "verify"])
def test_a_dtype_torch_cannot_hold_is_one_message_naming_file_tensor_and_dtype(
    tmp_path, capsys, command
):
    """F6_E2M3 is a safetensors dtype no torch has: not "a garbled header"."""
    base = save(tmp_path / "base", {WEIGHT: torch.ones(16, 8, dtype=torch.float16)})
    path = base / "model.safetensors"
    header = json.dumps(
        {
            WEIGHT: {"dtype": "F16", "shape": [16, 8], "data_offsets": [0, 256]},
            "extra.fp6": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [256, 259]},
        }
    ).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 259)
    save(tmp_path / "diff", {WEIGHT: torch.zeros(16, 8)})
    adapter = write_adapter(tmp_path / "adapter", "up_proj", 16, 8)
    args = {
        "recover": ["--raw", str(base), "--diff", str(tmp_path / "diff")],
        "merge-lora": ["--base", str(base), "--lora", str(adapter)],
        "verify": [],
    }[command]
    (base / "weightkit.manifest.json").write_text(
        json.dumps(  # verify's tensor manifest
            {
                "format": "weightkit.manifest",
                "version": 1,
                "tensors": {WEIGHT: {"dtype": "F16", "shape": [16, 8], "sha256": "0" * 64}},
            }
        )
    )
    out = ["--out", str(tmp_path / "out")] if command != "verify" else [str(base)]
    code = _run(["--quiet", command, *args, *out], debug=False)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "Traceback" not in err
    assert err == (
        f"Error: {path}: tensor 'extra.fp6' is stored as F6_E2M3, a dtype of the "
        f"safetensors format that torch {torch.__version__} cannot hold Upgrade torch "
        "if a newer one has this dtype, or have the tensor saved in another dtype by "
        "the tool that made it."
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_dtype_no_output_can_hold_is_refused_before_anything_is_written(tmp_path, dry_run):
    """A .bin may hold torch dtypes safetensors has none for (complex128): refused up front,
    dry run included, rather than halfway through the run."""
    base = tmp_path / "base"
    base.mkdir()
    torch.save(
        {
            WEIGHT: torch.ones(16, 8, dtype=torch.float16),
            "freqs": torch.ones(4, dtype=torch.complex128),
        },
        base / "pytorch_model.bin",
    )
    adapter = write_adapter(tmp_path / "adapter", "up_proj", 16, 8)
    with pytest.raises(InputError) as e:
        merge_lora(base, adapter, tmp_path / "out", options=WriteOptions(dry_run=dry_run))
    assert str(e.value) == (
        "tensor 'freqs' is torch.complex128, which weightkit cannot write: it is not a "
        "safetensors dtype, and weightkit's outputs and tensor manifests are named in those\n"
        "Convert that tensor to another dtype with torch first."
    )
    assert sorted(tmp_path.iterdir()) == [adapter, base]  # no output, no partial folder


def meta_folder(folder: Path, to: torch.dtype | None) -> Path:
    """A one-shard raw Meta LLaMA-2 checkpoint, its matrices converted `to` (None: bf16)."""
    from weightkit.ops.llama_params import parse_params

    params = {
        "dim": 64,
        "n_layers": 1,
        "n_heads": 4,
        "multiple_of": 32,
        "norm_eps": 1e-5,
        "vocab_size": 128,
    }
    dim, inter = 64, parse_params(params).intermediate_size
    gen = torch.Generator().manual_seed(5)
    shapes = {
        "tok_embeddings.weight": (128, dim),
        "norm.weight": (dim,),
        "output.weight": (128, dim),
        "layers.0.attention_norm.weight": (dim,),
        "layers.0.ffn_norm.weight": (dim,),
        "layers.0.feed_forward.w1.weight": (inter, dim),
        "layers.0.feed_forward.w2.weight": (dim, inter),
        "layers.0.feed_forward.w3.weight": (inter, dim),
        **{f"layers.0.attention.{w}.weight": (dim, dim) for w in ("wq", "wk", "wv", "wo")},
    }
    state = {n: torch.randn(s, generator=gen).bfloat16() for n, s in shapes.items()}
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(params))
    torch.save(
        {n: t.to(to) if to is not None and t.dim() == 2 else t for n, t in state.items()},
        folder / "consolidated.00.pth",
    )
    return folder


def test_convert_carries_fp8_shards_byte_for_byte_and_dtype_leaves_them(tmp_path):
    from weightkit.ops.convert_llama import convert_llama

    for name, to in (("bf16", None), ("fp8", E4M3)):
        convert_llama(meta_folder(tmp_path / name, to), tmp_path / f"out-{name}", dtype="fp32")
    got = load_file(tmp_path / "out-fp8" / "model.safetensors")
    ref = load_file(tmp_path / "out-bf16" / "model.safetensors")  # fp32 (--dtype)
    assert sorted(got) == sorted(ref)
    for name, want in ref.items():
        want = want.to(E4M3) if want.dim() == 2 else want  # --dtype: plain floats only
        assert got[name].dtype == want.dtype and byte_values(got[name]) == byte_values(want), name
