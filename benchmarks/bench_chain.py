"""The fused chain against the separate commands: raw Meta LLaMA + diff + LoRA -> tuned model.

    python benchmarks/bench_chain.py [--size 1.1B-mha] [--dtype fp16] [--repeat 1] [--dir DIR]
                                     [--keep]

Makes, with fixed seeds (in DIR/SIZE, reused with --keep): a raw Meta LLaMA 2 checkpoint in 2
model-parallel shards (bench_convert.make_raw, fp16), an fp32 diff against its converted model
(synthetic.write_model: KnowLM's kind, no target manifest) and a LoRA adapter r=16 on
q/k/v/o/gate/up/down (bench_merge_lora.write_adapter). Then runs, each command in its own
subprocess right after dropping the page cache (measure.py), with the same --dtype:

    separate: weightkit convert, weightkit recover, weightkit merge-lora (two models in between)
    fused:    weightkit recover --raw META --diff DIFF --lora LORA

and prints wall time, CPU time (user + sys), bytes read from and written to the disk
(ru_inblock / ru_oublock) and peak RSS, per command and in total, and whether the two final
folders hold the same bytes. The machine may be shared: CPU time and bytes are what to compare,
wall time drifts with the neighbours.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import bench_convert
import bench_merge_lora
import torch
from measure import drop_caches, measure
from synthetic import SHAPES, tensor_shapes, write_model

WK = [sys.executable, "-m", "weightkit", "--quiet"]


def make_inputs(work: Path, size: str) -> None:
    hidden, _, layers, heads, kv, vocab = SHAPES[size]
    if kv != heads:
        sys.exit(f"{size}: make_raw writes LLaMA 1/2 without GQA; use a size with kv == heads")
    if (work / ".complete").is_file():
        return
    (work / "meta").mkdir(parents=True, exist_ok=True)
    bench_convert.make_raw(work / "meta", hidden, layers, heads, 2, vocab, "fp16")
    write_model(work / "diff", size, torch.float32, seed=1, scale=1e-4)
    bench_merge_lora.write_adapter(work / "lora", size, rank=16, seed=2)
    (work / ".complete").write_text("meta, diff and lora written\n")


def hashes(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        out[p.name] = digest.hexdigest()
    return out


def timed(cmd: list[str]) -> dict:
    drop_caches()
    return measure(cmd)


def separate(work: Path, dtype: str) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    steps = [
        (
            "convert",
            [
                *WK,
                "convert",
                "--input-dir",
                str(work / "meta"),
                "--out",
                str(work / "converted"),
                "--dtype",
                dtype,
            ],
        ),
        (
            "recover",
            [
                *WK,
                "recover",
                "--raw",
                str(work / "converted"),
                "--diff",
                str(work / "diff"),
                "--out",
                str(work / "recovered"),
                "--dtype",
                dtype,
                "--device",
                "cpu",
            ],
        ),
        (
            "merge-lora",
            [
                *WK,
                "merge-lora",
                "--base",
                str(work / "recovered"),
                "--lora",
                str(work / "lora"),
                "--out",
                str(work / "out-separate"),
                "--dtype",
                dtype,
                "--device",
                "cpu",
            ],
        ),
    ]
    rows = [(name, timed(cmd)) for name, cmd in steps]
    final = hashes(work / "out-separate")
    for folder in ("converted", "recovered", "out-separate"):
        shutil.rmtree(work / folder)
    return rows, final


def fused(work: Path, dtype: str) -> tuple[dict, dict[str, str]]:
    m = timed(
        [
            *WK,
            "recover",
            "--raw",
            str(work / "meta"),
            "--diff",
            str(work / "diff"),
            "--lora",
            str(work / "lora"),
            "--out",
            str(work / "out-fused"),
            "--dtype",
            dtype,
            "--device",
            "cpu",
        ]
    )
    final = hashes(work / "out-fused")
    shutil.rmtree(work / "out-fused")
    return m, final


def median(runs: list[dict]) -> dict:
    """The run of median wall time, with the median CPU time and the largest peak RSS."""
    m = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
    m["cpu"] = statistics.median(r["cpu"] for r in runs)
    m["rss_gb"] = max(r["rss_gb"] for r in runs)
    return m


def row(label: str, m: dict) -> str:
    return (
        f"| {label} | {m['seconds']:.1f} | {m['cpu']:.1f} | {m['read_bytes'] / 1e9:.2f} | "
        f"{m['write_bytes'] / 1e9:.2f} | {m['rss_gb']:.2f} |"
    )


def total(steps: list[dict]) -> dict:
    return {
        "seconds": sum(m["seconds"] for m in steps),
        "cpu": sum(m["cpu"] for m in steps),
        "read_bytes": sum(m["read_bytes"] for m in steps),
        "write_bytes": sum(m["write_bytes"] for m in steps),
        "rss_gb": max(m["rss_gb"] for m in steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SHAPES, default="1.1B-mha")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "auto"], default="fp16")
    ap.add_argument("--repeat", type=int, default=1, help="rounds, separate then fused each")
    ap.add_argument("--dir", type=Path, default=None, help="where the inputs are made")
    ap.add_argument("--keep", action="store_true", help="keep the inputs in DIR/SIZE for reuse")
    ap.add_argument(
        "--omp-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for every command: torch's idle intra-op threads spin "
        "between operations, which shows in CPU time as work",
    )
    args = ap.parse_args()
    if args.omp_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    if args.keep and args.dir is None:
        ap.error("--keep needs --dir")
    work = (
        args.dir / args.size
        if args.keep
        else Path(tempfile.mkdtemp(prefix=f"bench-chain-{args.size}-", dir=args.dir))
    )
    try:
        make_inputs(work, args.size)
        rounds_separate, rounds_fused, same = [], [], True
        for _ in range(args.repeat):
            steps, want = separate(work, args.dtype)
            rounds_separate.append(steps)
            m, got = fused(work, args.dtype)
            rounds_fused.append(m)
            same = same and got == want
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    params = sum(torch.Size(s).numel() for s in tensor_shapes(args.size).values())
    print(
        f"{args.size}: {params / 1e9:.2f}B parameters; raw Meta fp16 in 2 shards, fp32 diff, "
        f"LoRA r=16 on 7 modules; --dtype {args.dtype}; {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}; page cache "
        f"dropped before each command: {'yes' if drop_caches() else 'no'}; median of "
        f"{args.repeat} round(s).\n"
    )
    print("| run | wall s | CPU s (user+sys) | read GB | written GB | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = [median([r[i][1] for r in rounds_separate]) for i in range(3)]
    for (name, _), m in zip(rounds_separate[0], medians, strict=True):
        print(row(f"separate: `weightkit {name}`", m))
    print(row("**separate, all three**", total(medians)))
    print(
        row(
            "**fused: `weightkit recover --raw META --diff DIFF --lora LORA`**",
            median(rounds_fused),
        )
    )
    print(f"\nThe two final folders hold the same bytes (every file): {same}")


if __name__ == "__main__":
    main()
