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
from conftest import make_fused_inputs, make_meta
from safetensors.torch import load_file, save_file

KILLS_PER_COMMAND = 7
LAYERS, ROWS, COLS = 24, 512, 512  # 1 MiB per fp32 tensor


def make_pair(tmp: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(3)
    raw, diff = tmp / "raw", tmp / "diff"
    raw.mkdir()
    diff.mkdir()
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(LAYERS)]
    save_file(
        {n: torch.randn(ROWS, COLS, generator=gen).half() for n in names}, raw / "model.safetensors"
    )
    save_file(
        {n: torch.randn(ROWS, COLS, generator=gen) * 1e-3 for n in names},
        diff / "model.safetensors",
    )
    return raw, diff


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightkit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:
        if partial_bytes(partial) >= offset:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def kill_and_resume(tmp_path: Path, common: list[str], seed: str) -> str:
    """Returns what the final, resumed run printed to stderr."""
    subprocess.run(
        [sys.executable, "-m", "weightkit", *common, "--out", str(tmp_path / "ref")], check=True
    )
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
    final = subprocess.run(
        [sys.executable, "-m", "weightkit", *common, "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert hashes(out) == want
    assert not partial.exists()
    return " ".join(final.stderr.split())


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_recover_killed_at_random_points_resumes_to_identical_bytes(tmp_path, fmt):
    raw, diff = make_pair(tmp_path)
    kill_and_resume(
        tmp_path,
        [
            "--quiet",
            "recover",
            "--raw",
            str(raw),
            "--diff",
            str(diff),
            "--max-shard-size",
            "3MB",
            "--format",
            fmt,
            "--device",
            "cpu",
        ],
        f"recover-{fmt}",
    )


def test_diff_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    """Also the target manifest: entries of tensors written before the kill come back from the
    journal, not from a rerun that skipped them."""
    raw, tuned = make_pair(tmp_path)  # an fp32 "tuned" model against an fp16 raw
    kill_and_resume(
        tmp_path,
        [
            "--quiet",
            "diff",
            "--raw",
            str(raw),
            "--tuned",
            str(tuned),
            "--max-shard-size",
            "3MB",
            "--device",
            "cpu",
        ],
        "diff",
    )
    target = json.loads((tmp_path / "out" / "weightkit.target-manifest.json").read_text())
    assert len(target["tensors"]) == LAYERS


def test_convert_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    meta = make_meta(tmp_path)
    kill_and_resume(
        tmp_path,
        ["--quiet", "convert", "--input-dir", str(meta), "--max-shard-size", "3MB"],
        "convert",
    )


def test_merge_lora_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    raw, _ = make_pair(tmp_path)
    gen = torch.Generator().manual_seed(11)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["up_proj"]})
    )
    save_file(
        {
            f"base_model.model.model.layers.{i}.mlp.up_proj.{part}.weight": torch.randn(
                shape, generator=gen
            )
            for i in range(LAYERS)
            for part, shape in (("lora_A", (8, COLS)), ("lora_B", (ROWS, 8)))
        },
        adapter / "adapter_model.safetensors",
    )
    kill_and_resume(
        tmp_path,
        [
            "--quiet",
            "merge-lora",
            "--base",
            str(raw),
            "--lora",
            str(adapter),
            "--max-shard-size",
            "2MB",
            "--dtype",
            "fp32",
        ],
        "merge-lora",
    )


def test_fused_chain_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    """convert -> recover -> merge-lora in one run. The recovered tensors (checked against the
    diff's target manifest, never written) keep their entries in the journal: a resumed run
    reports all 57 checked."""
    meta, diff, lora = make_fused_inputs(tmp_path)
    common = [
        "recover",
        "--raw",
        str(meta),
        "--diff",
        str(diff),
        "--lora",
        str(lora),
        "--max-shard-size",
        "3MB",
        "--device",
        "cpu",
    ]
    checked = (
        "Checked against the manifest of the tuned model (the recovered tensors, before "
        "the merge): 57 tensors match exactly."
    )
    assert checked in kill_and_resume(tmp_path, common, "fused")
    out, partial = tmp_path / "out", tmp_path / ".out.weightkit-partial"
    shutil.rmtree(out)
    half = sum(p.stat().st_size for p in (tmp_path / "ref").iterdir()) // 2
    assert run_and_kill_at([*common, "--out", str(out)], partial, half)
    final = subprocess.run(
        [sys.executable, "-m", "weightkit", *common, "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    text = " ".join(final.stderr.split())
    assert "Resumed a killed run: " in text and checked in text
    assert hashes(out) == hashes(tmp_path / "ref")


def test_diff_lossless_killed_at_random_points_resumes_to_identical_bytes(tmp_path):
    """The lossless diff's files, target manifest included, as for the other commands; and a
    rerun keeps the files a killed run finished instead of starting again."""
    raw, _ = make_pair(tmp_path)
    gen = torch.Generator().manual_seed(4)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    state = load_file(raw / "model.safetensors")
    save_file(
        {
            n: (t.float() * (1 + 1e-2 * torch.randn(t.shape, generator=gen))).half()
            for n, t in state.items()
        },
        tuned / "model.safetensors",
    )
    args = [
        "diff",
        "--raw",
        str(raw),
        "--tuned",
        str(tuned),
        "--lossless",
        "--max-shard-size",
        "2MB",
    ]  # 3 tensors a file, 8 files
    kill_and_resume(tmp_path, ["--quiet", *args], "diff-lossless")
    want = hashes(tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    partial = tmp_path / ".out.weightkit-partial"
    total = sum(p.stat().st_size for p in (tmp_path / "ref").iterdir())
    assert run_and_kill_at([*args, "--out", str(tmp_path / "out")], partial, total * 3 // 4)
    finished = [p for p in partial.glob("lossless-diff-*.safetensors")]
    assert finished  # and it resumes after them:
    rerun = subprocess.run(
        [sys.executable, "-m", "weightkit", *args, "--out", str(tmp_path / "out")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert re.search(
        r"Resumed a killed run: [1-8] of 8 shard\(s\) were already written and "
        r"checked\.",
        " ".join(rerun.stderr.split()),
    )
    assert hashes(tmp_path / "out") == want and not partial.exists()
