"""Every command's function prints nothing and returns what it did: `summary()` is the text the
command line prints, `to_dict()` the same as JSON-able values, exact for the tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lora_models import build_base, make_adapter
from meta_checkpoints import build_raw
from safetensors import safe_open

from weightkit.cli import _run
from weightkit.ops.convert_llama import convert_llama
from weightkit.ops.diff import diff
from weightkit.ops.merge_lora import merge_lora
from weightkit.ops.recover import recover
from weightkit.options import WriteOptions


def stored(folder: Path) -> tuple[int, int, list[str]]:
    """(tensors, their bytes, their dtypes) in a folder's safetensors files, read by safetensors."""
    count, nbytes, dtypes = 0, 0, set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = st.get_tensor(name)
                count += 1
                nbytes += t.numel() * t.element_size()
                dtypes.add(
                    {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype]
                )
    return count, nbytes, sorted(dtypes)


def round_trip(d: dict) -> dict:
    """The dict as --json prints it, read back: only plain JSON values survive unchanged."""
    back = json.loads(json.dumps(d))
    assert back == d
    return back


def test_python_calls_print_nothing_and_return_exact_results(model_pair, tmp_path, capfd):
    raw, tuned = model_pair("llama", torch.float16)
    base = build_base("llama", torch.float16, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "lora", torch.float16, target_modules=["q_proj"])
    meta = build_raw(tmp_path / "meta", "llama2")
    capfd.readouterr()  # what building the inputs printed (transformers' save bars)
    made = diff(raw, tuned, tmp_path / "diff")
    result = recover(raw, tmp_path / "diff", tmp_path / "out")
    merged = merge_lora(base, adapter, tmp_path / "merged")
    converted = convert_llama(meta.input_dir, tmp_path / "converted", model_size=meta.model_size)
    assert capfd.readouterr() == ("", "")  # no bar, no summary, no note

    tensors, nbytes, dtypes = stored(tmp_path / "out")
    assert (tensors, nbytes, dtypes) == (21, 180_864, ["F16"])
    d = round_trip(result.to_dict())
    assert d == {
        "command": "recover",
        "out": str(tmp_path / "out"),
        "format": "safetensors",
        "dry_run": False,
        "files": ["model.safetensors"],
        "tensors": 21,
        "bytes": nbytes,
        "tensor_bytes": nbytes,
        "seconds": result.seconds,
        "dtypes": ["F16"],
        "checked": {
            "against": "the tuned model",
            "tensors": 21,
            "exact": 21,
            "within_rounding": [],
            "not_checked": 0,
        },
        "notes": result.notes,
    }
    assert made.to_dict()["checked"] == {} and made.to_dict()["dtypes"] == ["F32"]
    assert made.to_dict()["notes"] == [
        "Recovering from this diff gives all 21 tensors bit for bit."
    ]
    assert (made.tensors, made.bytes_written) == (21, stored(tmp_path / "diff")[1])
    for r, folder in ((merged, tmp_path / "merged"), (converted, tmp_path / "converted")):
        d = round_trip(r.to_dict())
        tensors, nbytes, dtypes = stored(folder)
        assert (d["tensors"], d["bytes"], d["dtypes"], d["files"]) == (
            tensors,
            nbytes,
            dtypes,
            ["model.safetensors"],
        )
    assert merged.to_dict()["notes"][0] == (
        "Merged LoRA into 2 tensor(s); 19 streamed through unchanged."
    )
    assert converted.to_dict()["notes"][:2] == [
        "Detected LLaMA 2 (n_kv_heads).",
        "checklist.chk: the 3 listed file(s) match.",
    ]


def test_a_dry_run_returns_its_needs(model_pair, tmp_path, capfd):
    raw, tuned = model_pair("llama", torch.float16)
    capfd.readouterr()
    result = diff(raw, tuned, tmp_path / "d", options=WriteOptions(dry_run=True, device="cpu"))
    assert capfd.readouterr() == ("", "")
    d = round_trip(result.to_dict())
    needs = d.pop("needs")
    assert needs == {
        "bytes": 361_728,
        "disk_free": needs["disk_free"],
        "memory": 9 * 361_728 // 2,
        "gpu_memory": None,
        "largest_tensor": "lm_head.weight",
        "largest_tensor_bytes": 32_768,
    }
    assert d == {
        "command": "diff",
        "out": str(tmp_path / "d"),
        "format": "safetensors",
        "dry_run": True,
        "files": [],
        "tensors": 21,
        "bytes": 361_728,
        "tensor_bytes": 361_728,
        "seconds": 0.0,
        "dtypes": ["F32"],
        "checked": {},
        "notes": [],
    }
    assert result.summary() == (
        f"diff (dry run): inputs check out; 21 tensors, 361.73 kB to write to {tmp_path / 'd'} "
        f"(disk free: {result.summary().split('disk free: ')[1].split(')')[0]}). Largest "
        "tensor: lm_head.weight (32.77 kB); memory needed beyond the program itself: at most "
        "1.63 MB. Nothing was written."
    )
    assert not (tmp_path / "d").exists()


def test_lossless_diff_result(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    result = diff(raw, tuned, tmp_path / "diff", lossless=True)
    d = round_trip(result.to_dict())
    files = sorted(p.name for p in (tmp_path / "diff").glob("lossless-diff*"))
    assert (d["format"], d["files"], d["tensors"], d["dtypes"]) == (
        "lossless-diff",
        files,
        21,
        ["F16"],
    )
    assert d["bytes"] == sum((tmp_path / "diff" / f).stat().st_size for f in files)
    assert d["tensor_bytes"] == 180_864
    assert result.summary().startswith("diff --lossless: wrote 21 tensors (180.86 kB of F16) as ")


def _timeless(text: str) -> str:
    """The summary with its time and rate, which differ between two runs, blanked out."""
    return re.sub(r" in [0-9.]+ s \([0-9.]+ [kMG]?B/s\)", " in T (R)", " ".join(text.split()))


@pytest.mark.parametrize("command", ["recover", "diff", "merge-lora"])
def test_summary_is_what_the_command_line_prints(model_pair, tmp_path, capsys, command):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    base = build_base("llama", torch.float16, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "lora", torch.float16, target_modules=["q_proj"])
    args, call = {
        "recover": (
            ["--raw", str(raw), "--diff", str(tmp_path / "diff")],
            lambda out: recover(raw, tmp_path / "diff", out),
        ),
        "diff": (["--raw", str(raw), "--tuned", str(tuned)], lambda out: diff(raw, tuned, out)),
        "merge-lora": (
            ["--base", str(base), "--lora", str(adapter)],
            lambda out: merge_lora(base, adapter, out),
        ),
    }[command]
    capsys.readouterr()
    assert _run([command, *args, "--out", str(tmp_path / "cli")], debug=False) == 0
    printed = capsys.readouterr().err
    summary = call(tmp_path / "py").summary().replace(str(tmp_path / "py"), str(tmp_path / "cli"))
    # the bar's lines come first; the summary is the last thing printed
    assert _timeless(printed).endswith(_timeless(summary))
    assert summary.startswith(f"{command}: wrote 21 tensors, ")
