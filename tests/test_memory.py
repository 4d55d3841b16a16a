"""Peak memory does not grow with the model: recover on two sizes, measured in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROWS, COLS = 1024, 1024  # every tensor: 2 MiB in fp16, 4 MiB in fp32

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
MEASURE = """
import json, sys
import torch, weightkit.ops.recover as r  # imports first: their memory is not the job's
from weightkit.options import WriteOptions
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
r.recover(sys.argv[1], sys.argv[2], sys.argv[3], options=WriteOptions(device="cpu"))
print(json.dumps({"base_kb": base, "peak_kb": hwm()}))
"""


def make_model(folder: Path, layers: int, dtype: torch.dtype, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    state = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(ROWS, COLS, generator=gen).to(dtype)
        for i in range(layers)
    }
    folder.mkdir()
    # two shards, like a real sharded checkpoint
    names = list(state)
    save_file({n: state[n] for n in names[: layers // 2]}, folder / "a.safetensors")
    save_file({n: state[n] for n in names[layers // 2 :]}, folder / "b.safetensors")
    return sum(t.numel() * t.element_size() for t in state.values())


def peak_rss(tmp: Path, layers: int) -> dict:
    raw, diff = tmp / f"raw{layers}", tmp / f"diff{layers}"
    size = make_model(raw, layers, torch.float16, 0) + make_model(diff, layers, torch.float32, 1)
    args = [sys.executable, "-c", MEASURE, str(raw), str(diff), str(tmp / f"out{layers}")]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["input_mb"] = size / 2**20
    return result


def test_recover_peak_rss_is_flat_in_model_size(tmp_path):
    small, large = peak_rss(tmp_path, 8), peak_rss(tmp_path, 64)
    assert large["input_mb"] - small["input_mb"] == 56 * 6  # 336 MiB more to read
    growth_mb = (large["peak_kb"] - small["peak_kb"]) / 1024
    job_mb = (large["peak_kb"] - large["base_kb"]) / 1024
    # a whole-model loader would grow by >= 336 MiB; streaming varies only with how full
    # the read-ahead and write-behind queues happen to get (measured: 36 vs 52 MiB)
    assert growth_mb < 24, (small, large)
    # largest tensor is 4 MiB in fp32: the working set stays under 16 tensors' worth
    assert job_mb < 64, (small, large)


def test_a_tensor_larger_than_the_budget_streams_in_pieces(tmp_path):
    """One 16384x4096 tensor: 128 MiB in fp16, 256 MiB as the fp32 diff and the output. Held
    whole, the job would need at least 384 MiB; in row pieces it needs the in-flight budget."""
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(16384, 4096, generator=gen)
    raw, diff, out = tmp_path / "raw", tmp_path / "diff", tmp_path / "out"
    raw.mkdir()
    diff.mkdir()
    save_file({"lm_head.weight": big.half()}, raw / "model.safetensors")
    save_file({"lm_head.weight": big.mul_(1e-3)}, diff / "model.safetensors")
    del big
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(raw), str(diff), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    job_mb = (result["peak_kb"] - result["base_kb"]) / 1024
    assert job_mb < 256, result  # less than the output tensor alone (measured: 167-191)
