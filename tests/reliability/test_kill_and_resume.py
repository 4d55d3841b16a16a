"""kill -9 at random byte offsets, then rerun: the final files are byte-identical to an
uninterrupted run, and no finished-looking output exists before completion."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_recover_killed_at_random_points_resumes_to_identical_bytes(tmp_path, fmt):
    raw, diff = make_pair(tmp_path)
    common = ["--quiet", "recover", "--raw", str(raw), "--diff", str(diff),
              "--max-shard-size", "3MB", "--format", fmt, "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "weightkit", *common, "--out", str(tmp_path / "ref")],
                   check=True)
    want = hashes(tmp_path / "ref")
    total = sum(p.stat().st_size for p in (tmp_path / "ref").iterdir())
    out = tmp_path / "out"
    partial = tmp_path / ".out.weightkit-partial"
    rng = random.Random(f"recover-{fmt}")
    offsets = sorted(rng.randrange(0, total) for _ in range(KILLS_PER_COMMAND))
    killed = 0
    for offset in offsets:
        killed += run_and_kill_at([*common, "--out", str(out)], partial, offset)
        assert not out.exists(), f"finished-looking output after a kill at byte {offset}"
    assert killed >= KILLS_PER_COMMAND - 2  # a few may land after the last byte
    subprocess.run([sys.executable, "-m", "weightkit", *common, "--out", str(out)], check=True)
    assert hashes(out) == want
    assert not partial.exists()
