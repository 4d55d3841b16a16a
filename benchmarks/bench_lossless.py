"""Lossless diff against the fp32 and fp16 diffs: size, diff and recover time, exactness.

    python benchmarks/bench_lossless.py [--size 1.1B] [--dtypes fp16,bf16] [--scales 1e-3,1e-2]
                                        [--level 1] [--dir DIR]

Per dtype, a synthetic LLaMA-shaped raw model (synthetic.py, fixed seed); per scale, a "fine-tune"
of it: every weight moved by N(0, 1) x scale x its magnitude, rounded to the dtype. Prints two
markdown tables: bits per parameter of the encoding choices (XOR or subtraction, zigzag, byte
planes, zstd level) on layer 0's tensors, and for the whole model each diff kind made with
`weightkit diff` and recovered with `weightkit recover` (CPU), each command timed in a subprocess
(measure.py: wall time, peak RSS; page cache dropped first when permitted), the recovered model
compared bit for bit with the tuned one. Results: docs/lossless-diff.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import zstandard
from measure import drop_caches, measure
from safetensors.torch import load_file, save_file
from synthetic import SHAPES, write_model

from weightkit.dtypes import bit_patterns, parse_dtype
from weightkit.io.reader import open_checkpoint
from weightkit.ops.lossless import _to_planes, _zigzag

WK = [sys.executable, "-m", "weightkit", "--quiet"]
# the encoding choices, measured on these tensors of each family (layer 0)
SAMPLE = ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight")
VARIANTS = {  # name -> (integer difference, zigzag, byte planes)
    "xor": ("xor", False, False),
    "xor + planes": ("xor", False, True),
    "sub": ("sub", False, False),
    "sub + planes": ("sub", False, True),
    "sub + zigzag": ("sub", True, False),
    "sub + zigzag + planes (chosen)": ("sub", True, True),
}
LEVELS = (1, 3, 9, 19)
KINDS = {"fp32": ["--dtype", "fp32"], "fp16": ["--dtype", "fp16"], "lossless": ["--lossless"]}
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def write_tuned(raw: Path, out: Path, scale: float, seed: int) -> None:
    """raw's shards, every tensor moved by about `scale` of each weight's magnitude."""
    gen = torch.Generator().manual_seed(seed)
    out.mkdir()
    for f in sorted(raw.iterdir()):
        if f.suffix != ".safetensors":
            shutil.copyfile(f, out / f.name)
            continue
        shard = load_file(f)
        for name, w in shard.items():
            wide = w.float()
            shard[name] = (wide + torch.randn(w.shape, generator=gen) * wide.abs() * scale).to(
                w.dtype
            )
        save_file(shard, out / f.name, metadata={"format": "pt"})


def differing(a: Path, b: Path) -> str:
    """Whether two checkpoints hold the same bit patterns, and if not, how they differ."""
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    tensors = bits = values = 0
    for name in cb.names():
        x, y = ca.read(name), cb.read(name)
        if x.dtype != y.dtype:
            return f"no: {name} is {x.dtype}, not {y.dtype}"
        n = int((x.view(_BITS[x.element_size()]) != y.view(_BITS[y.element_size()])).sum())
        tensors += n > 0
        bits += n
        values += int((x.float() != y.float()).sum())  # -0.0 == 0.0 as numbers
    if not bits:
        return "yes"
    zeros = bits - values
    return f"no: {bits:,} values in {tensors} tensors" + (
        f" ({zeros:,} of them 0.0 vs -0.0)" if zeros else ""
    )


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def bench_case(work: Path, dtype: str, scale: float, level: int, params: int) -> list[str]:
    raw, tuned = work / f"raw-{dtype}", work / "tuned"
    rows = []
    for kind, opts in KINDS.items():
        diff, out = work / f"diff-{kind}", work / "out"
        if kind == "lossless":
            opts = [*opts, "--level", str(level)]
        drop_caches()
        made = measure(
            [
                *WK,
                "diff",
                "--raw",
                str(raw),
                "--tuned",
                str(tuned),
                "--out",
                str(diff),
                "--device",
                "cpu",
                *opts,
            ]
        )
        drop_caches()
        back = measure(
            [
                *WK,
                "recover",
                "--raw",
                str(raw),
                "--diff",
                str(diff),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        size = weight_bytes(diff)
        exact = differing(out, tuned)
        rows.append(
            f"| {dtype} | {scale:g} | {kind} | {size / 1e9:.3f} | "
            f"{8 * size / params:.2f} | {made['seconds']:.1f} | {back['seconds']:.1f} | "
            f"{max(made['rss_gb'], back['rss_gb']):.2f} | {exact} |"
        )
        shutil.rmtree(diff)
        shutil.rmtree(out)
    return rows


def variant_bits(raw: torch.Tensor, tuned: torch.Tensor, variant: tuple, level: int) -> float:
    """Bits per parameter of one encoding variant at one zstd level."""
    op, zigzag, planes = variant
    r, t = bit_patterns(raw), bit_patterns(tuned)
    d = t - r if op == "sub" else t ^ r  # unsigned: subtraction wraps
    d = _zigzag(d) if zigzag else d
    data = _to_planes(d) if planes else d
    return 8 * len(zstandard.ZstdCompressor(level=level).compress(data)) / d.size


def bench_choices(work: Path, dtype: str, scale: float) -> list[str]:
    raw, tuned = open_checkpoint(work / f"raw-{dtype}"), open_checkpoint(work / "tuned")
    pairs = [(raw.read(f"model.layers.0.{n}"), tuned.read(f"model.layers.0.{n}")) for n in SAMPLE]
    params = sum(r.numel() for r, _ in pairs)
    rows = []
    for name, variant in VARIANTS.items():
        levels = LEVELS if name.endswith("(chosen)") else LEVELS[:2]
        cells = []
        for level in LEVELS:
            if level not in levels:
                cells.append("")
                continue
            total = sum(variant_bits(r, t, variant, level) * r.numel() for r, t in pairs)
            cells.append(f"{total / params:.2f}")
        rows.append(f"| {dtype} | {scale:g} | {name} | {' | '.join(cells)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1.1B", help=f"one of {', '.join(SHAPES)}")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--scales", default="1e-3,1e-2")
    ap.add_argument("--level", type=int, default=1, help="zstd level of the lossless diff")
    ap.add_argument("--dir", type=Path, default=None, help="where the models are made")
    args = ap.parse_args()
    cold = drop_caches()
    print(
        f"{args.size} family, {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, zstandard {zstandard.__version__}; page cache dropped "
        f"before each command: {'yes' if cold else 'no (not permitted)'}\n"
    )
    choices, results = [], []
    work = Path(tempfile.mkdtemp(prefix="wk-bench-lossless-", dir=args.dir))
    try:
        for dtype in args.dtypes.split(","):
            total = write_model(work / f"raw-{dtype}", args.size, parse_dtype(dtype), seed=0)
            params = total // parse_dtype(dtype).itemsize
            for scale in (float(s) for s in args.scales.split(",")):
                write_tuned(work / f"raw-{dtype}", work / "tuned", scale, seed=1)
                choices += bench_choices(work, dtype, scale)
                results += bench_case(work, dtype, scale, args.level, params)
                print(
                    f"{dtype} {scale:g} done:", *results[-3:], sep="\n", file=sys.stderr, flush=True
                )
                shutil.rmtree(work / "tuned")
            shutil.rmtree(work / f"raw-{dtype}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "Encoding choices, bits per parameter (zstd level in the header), on layer 0's "
        f"{', '.join(SAMPLE)}:\n"
    )
    print(f"| dtype | change | encoding | {' | '.join(f'level {n}' for n in LEVELS)} |")
    print("|---|---|---|" + "---|" * len(LEVELS))
    print("\n".join(choices))
    print("\nWhole model, each diff made and recovered by weightkit:\n")
    print(
        "| dtype | change | diff | size GB | bits/param | diff s | recover s | peak RSS GiB "
        "| recovered bit-exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(results))
    print(
        f"\nSizes are of the weight files (the folders add config and manifests, a few kB); "
        f"lossless at zstd level {args.level}."
    )


if __name__ == "__main__":
    main()
