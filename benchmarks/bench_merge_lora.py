"""`weightkit merge-lora` against peft's merge_and_unload(), time and peak memory.

    python benchmarks/bench_merge_lora.py [--size 0.3B] [--rank 16] [--repeat 1] [--dir DIR]

Builds a random LLaMA-shaped fp16 model (benchmarks/synthetic.py, fixed seed) and a LoRA adapter
on q/k/v/o/gate/up/down written directly in peft's layout (adapter_config.json +
adapter_model.safetensors, fp32 as peft saves it), then runs, each in its own subprocess:

    weightkit merge-lora --base BASE --lora ADAPTER --out OUT
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)
        .merge_and_unload().save_pretrained(OUT)

Wall and CPU time include Python start-up and imports (best of --repeat); peak RSS is the
child's ru_maxrss (largest of the runs). Both outputs are then compared tensor by tensor. Prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from measure import measure
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import SHAPES, tensor_shapes, write_model

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_PEFT_MERGE = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
"""


def write_adapter(folder: Path, size: str, rank: int, seed: int) -> int:
    """A LoRA adapter in peft's layout on every TARGETS module; returns its tensor bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in tensor_shapes(size).items():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        out_features, in_features = shape
        prefix = f"base_model.model.{module}"
        state[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=gen) * 0.01
        state[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=gen) * 0.01
    save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": list(TARGETS),
        "base_model_name_or_path": None,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return sum(t.nbytes for t in state.values())


def best(cmd: list[str], out: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        subprocess.run(["rm", "-rf", str(out)], check=True)
        runs.append(measure(cmd))
    return {
        "seconds": min(r["seconds"] for r in runs),
        "cpu": min(r["cpu"] for r in runs),
        "rss_kb": max(r["rss_kb"] for r in runs),
    }


def compare_outputs(a: Path, b: Path) -> tuple[int, int]:
    """(tensors bit-identical, tensors in total), reading one tensor at a time."""

    def index(folder: Path) -> dict[str, Path]:
        where = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                where.update({k: f for k in st.keys()})
        return where

    ia, ib = index(a), index(b)
    same = 0
    for name in sorted(set(ia) | set(ib)):
        if name in ia and name in ib:
            with safe_open(ia[name], "pt") as fa, safe_open(ib[name], "pt") as fb:
                same += torch.equal(fa.get_tensor(name), fb.get_tensor(name))
    return same, len(set(ia) | set(ib))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SHAPES, default="0.3B")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp folder")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-merge-lora-", dir=args.dir) as tmp:
        root = Path(tmp)
        base_bytes = write_model(root / "base", args.size, torch.float16, seed=0)
        adapter_bytes = write_adapter(root / "adapter", args.size, args.rank, seed=1)
        params = sum(torch.Size(s).numel() for s in tensor_shapes(args.size).values())
        inputs = [str(root / "base"), str(root / "adapter")]
        ours = best(
            [
                sys.executable,
                "-m",
                "weightkit",
                "-q",
                "merge-lora",
                "--base",
                inputs[0],
                "--lora",
                inputs[1],
                "--out",
                str(root / "weightkit"),
            ],
            root / "weightkit",
            args.repeat,
        )
        peft = best(
            [sys.executable, "-c", _PEFT_MERGE, *inputs, str(root / "peft")],
            root / "peft",
            args.repeat,
        )
        same, total = compare_outputs(root / "weightkit", root / "peft")

    print(
        f"Synthetic LLaMA {args.size} ({params / 1e9:.2f}B parameters, fp16, "
        f"{base_bytes / 1e6:.0f} MB), LoRA r={args.rank} on {', '.join(TARGETS)} "
        f"({adapter_bytes / 1e6:.0f} MB fp32); {os.cpu_count()} CPU cores, "
        f"{'best' if args.repeat > 1 else 'one'} of {args.repeat} run(s), CPU only.\n"
    )
    print("| merge | wall time | CPU time (user+sys) | peak RSS |")
    print("|---|---:|---:|---:|")
    for label, r in (
        ("`weightkit merge-lora`", ours),
        ("peft `merge_and_unload()` + `save_pretrained()`", peft),
    ):
        print(
            f"| {label} | {r['seconds']:.1f} s | {r['cpu']:.1f} s | {r['rss_kb'] / 1024:.0f} MiB |"
        )
    print(f"\nOutputs: {same} of {total} tensors bit-identical.")


if __name__ == "__main__":
    main()
