"""kill -9 at random byte offsets, then rerun: the final files are byte-identical to an
uninterrupted run, and no finished-looking output exists before completion."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

KILLS_PER_COMMAND = 7
LAYERS, ROWS, COLS = 24, 512, 512  # 1 MiB per fp32 tensor


def make_pair(tmp: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(3)
    raw, diff = tmp / "raw", tmp / "diff"
    raw.mkdir()
    diff.mkdir()
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(LAYERS)]
    save_file({n: torch.randn(ROWS, COLS, generator=gen).half() for n in names},
              raw / "model.safetensors")
    save_file({n: torch.randn(ROWS, COLS, generator=gen) * 1e-3 for n in names},
              diff / "model.safetensors")
    return raw, diff


def make_meta(tmp: Path) -> Path:
    """A raw Meta LLaMA-2-shaped checkpoint in 2 model-parallel shards (no tokenizer)."""
    dim, layers, inter, vocab = 512, 6, 1536, 2048
    gen = torch.Generator().manual_seed(5)
    folder = tmp / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(
        {"dim": dim, "n_layers": layers, "n_heads": 8, "n_kv_heads": 8, "multiple_of": 256,
         "norm_eps": 1e-5, "vocab_size": vocab}))
    for shard in range(2):
        state = {"tok_embeddings.weight": torch.randn(vocab, dim // 2, generator=gen),
                 "norm.weight": torch.ones(dim), "output.weight": torch.randn(vocab // 2, dim)}
        for i in range(layers):
            p = f"layers.{i}."
            for w in ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1",
                      "feed_forward.w3"):
                rows = dim // 2 if w.startswith("attention") else inter // 2
                state[p + w + ".weight"] = torch.randn(rows, dim, generator=gen)
            state[p + "attention.wo.weight"] = torch.randn(dim, dim // 2, generator=gen)
            state[p + "feed_forward.w2.weight"] = torch.randn(dim, inter // 2, generator=gen)
            state[p + "attention_norm.weight"] = torch.ones(dim)
            state[p + "ffn_norm.weight"] = torch.ones(dim)
        torch.save({k: v.half() for k, v in state.items()}, folder / f"consolidated.0{shard}.pth")
    return folder


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def partial_bytes(folder: Path) -> int:
    total = 0
    for p in folder.glob("*") if folder.exists() else []:
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # renamed under us
            pass
    return total


def run_and_kill_at(args: list[str], partial: Path, offset: int) -> bool:
    """Start the command, SIGKILL it once the partial output holds `offset` bytes.
    Returns False when it finished before that point."""
    proc = subprocess.Popen([sys.executable, "-m", "weightkit", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if partial_bytes(partial) >= offset:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def kill_and_resume(tmp_path: Path, common: list[str], seed: str) -> None:
    subprocess.run([sys.executable, "-m", "weightkit", *common, "--out", str(tmp_path / "ref")],
                   check=True)
    want = hashes(tmp_path / "ref")
    total = sum(p.stat().st_size for p in (tmp_path / "ref").iterdir())
    out = tmp_path / "out"
    partial = tmp_path / ".out.weightkit-partial"
    rng = random.Random(seed)
    offsets = sorted(rng.randrange(0, total) for _ in range(KILLS_PER_COMMAND))
    killed = 0
    for offset in offsets:
        killed += run_and_kill_at([*common, "--out", str(out)], partial, offset)
        if out.exists():  # the kill came after the final rename: the output must be complete
            assert hashes(out) == want, f"incomplete output after a kill at byte {offset}"
            shutil.rmtree(out)
    assert killed >= KILLS_PER_COMMAND - 2  # a few may land after the last byte
    subprocess.run([sys.executable, "-m", "weightkit", *common, "--out", str(out)], check=True)
    assert hashes(out) == want
    assert not partial.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_recover_killed_at_random_points_resumes_to_identical_bytes(tmp_path, fmt):
    raw, diff = make_pair(tmp_path)
    kill_and_resume(tmp_path, ["--quiet", "recover", "--raw", str(raw), "--diff", str(diff),
                               "--max-shard-size", "3MB", "--format", fmt, "--device", "cpu"],
                    f"recover-{fmt}")


def test_diff_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    """Also the target manifest: entries of tensors written before the kill come back from the
    journal, not from a rerun that skipped them."""
    raw, tuned = make_pair(tmp_path)  # an fp32 "tuned" model against an fp16 raw
    kill_and_resume(tmp_path, ["--quiet", "diff", "--raw", str(raw), "--tuned", str(tuned),
                               "--max-shard-size", "3MB", "--device", "cpu"], "diff")
    target = json.loads((tmp_path / "out" / "weightkit.target-manifest.json").read_text())
    assert len(target["tensors"]) == LAYERS


def test_convert_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    meta = make_meta(tmp_path)
    kill_and_resume(tmp_path, ["--quiet", "convert", "--input-dir", str(meta),
                               "--max-shard-size", "3MB"], "convert")


def test_merge_lora_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    raw, _ = make_pair(tmp_path)
    gen = torch.Generator().manual_seed(11)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["up_proj"]}))
    save_file({f"base_model.model.model.layers.{i}.mlp.up_proj.{part}.weight":
               torch.randn(shape, generator=gen)
               for i in range(LAYERS)
               for part, shape in (("lora_A", (8, COLS)), ("lora_B", (ROWS, 8)))},
              adapter / "adapter_model.safetensors")
    kill_and_resume(tmp_path, ["--quiet", "merge-lora", "--base", str(raw), "--lora",
                               str(adapter), "--max-shard-size", "2MB", "--dtype", "fp32"],
                    "merge-lora")


def test_diff_lossless_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    """The lossless diff's files, target manifest included, as for the other commands; and a
    rerun keeps the files a killed run finished instead of starting again."""
    raw, _ = make_pair(tmp_path)
    gen = torch.Generator().manual_seed(4)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    state = load_file(raw / "model.safetensors")
    save_file({n: (t.float() * (1 + 1e-2 * torch.randn(t.shape, generator=gen))).half()
               for n, t in state.items()}, tuned / "model.safetensors")
    args = ["diff", "--raw", str(raw), "--tuned", str(tuned), "--lossless",
            "--max-shard-size", "2MB"]  # 3 tensors a file, 8 files
    kill_and_resume(tmp_path, ["--quiet", *args], "diff-lossless")
    want = hashes(tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    partial = tmp_path / ".out.weightkit-partial"
    total = sum(p.stat().st_size for p in (tmp_path / "ref").iterdir())
    assert run_and_kill_at([*args, "--out", str(tmp_path / "out")], partial, total * 3 // 4)
    finished = [p for p in partial.glob("lossless-diff-*.safetensors")]
    assert finished  # and it resumes after them:
    rerun = subprocess.run([sys.executable, "-m", "weightkit", *args, "--out",
                            str(tmp_path / "out")], check=True, capture_output=True, text=True)
    assert re.search(r"Resumed a killed run: [1-8] of 8 shard\(s\) were already written and "
                     r"checked\.", " ".join(rerun.stderr.split()))
    assert hashes(tmp_path / "out") == want and not partial.exists()
