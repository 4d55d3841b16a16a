"""weightkit's benchmark: synthetic LLaMA families, each job against its copy limit and a naive
whole-model baseline, in subprocesses with a cold page cache.

    python benchmarks/run.py [--sizes 0.3B,1.1B,3B] [--jobs recover,merge-lora,convert,verify]
                             [--repeat N] [--dir DIR] [--keep] [--baseline-max 1.1B]

For each size, with a fixed seed (synthetic.py): raw fp16 + fp32 diff, a LoRA adapter r=16 on
q/k/v/o/gate/up/down, and a raw Meta checkpoint in 2 model-parallel shards. Then, each in its own
subprocess after dropping the page cache: `weightkit recover` (fp32 out) against a naive baseline
(transformers loads both models whole, adds, save_pretrained); `weightkit merge-lora` against
peft's merge_and_unload; `weightkit convert` against the transformers converter's approach (all
shards loaded whole); `weightkit verify` against serial md5sum. Prints a markdown table with wall
time, peak RSS and the ratio to the copy limit (reading the inputs cold + writing the output).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_convert
import bench_merge_lora
import torch
from measure import copy_limit, drop_caches, folder_bytes, measure
from synthetic import SHAPES, write_model

NAIVE_RECOVER = """
import sys, torch
from transformers import AutoModelForCausalLM
raw = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
diff = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32)
with torch.no_grad():
    for (name, p), d in zip(raw.state_dict().items(), diff.state_dict().values()):
        p.add_(d)
raw.save_pretrained(sys.argv[3])
"""
WK = [sys.executable, "-m", "weightkit", "--quiet"]


def row(
    job: str, tool: str, size: str, m: dict, limit: float | None, ratios: list[float] | None = None
) -> str:
    if not limit:
        return f"| {job} | {size} | {tool} | {m['seconds']:.1f} | {m['rss_gb']:.2f} | — | — |"
    ratio = f"{m['seconds'] / limit:.2f}×"
    if ratios and len(ratios) > 1:
        ratio = f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
    return (
        f"| {job} | {size} | {tool} | {m['seconds']:.1f} | {m['rss_gb']:.2f} | "
        f"{limit:.1f} | {ratio} |"
    )


def against_copy_limit(
    cmd: list[str], inputs: list[Path], out_bytes: int, work: Path, out: Path, repeat: int
) -> tuple[dict, float, list[float]]:
    """Run `cmd` `repeat` times, each right after timing the copy limit (the disk's speed
    drifts, so each run is paired with a limit measured next to it). Returns the median run
    (with the largest peak RSS of all), the median limit and each pair's ratio."""
    runs, limits = [], []
    for _ in range(repeat):
        limits.append(copy_limit(inputs, out_bytes, work))
        drop_caches()
        runs.append(measure(cmd))
        shutil.rmtree(out)
    median = sorted(runs, key=lambda m: m["seconds"])[len(runs) // 2]
    median = {**median, "rss_gb": max(m["rss_gb"] for m in runs)}
    return (
        median,
        statistics.median(limits),
        [m["seconds"] / limit for m, limit in zip(runs, limits, strict=True)],
    )


def bench_job(
    job: str,
    size: str,
    cmd: list[str],
    inputs: list[Path],
    out_bytes: int,
    work: Path,
    out: Path,
    repeat: int,
    baseline: tuple[str, list[str]] | None,
) -> list[str]:
    """weightkit's rows against the copy limit, then the baseline's (tool, command) once."""
    m, limit, ratios = against_copy_limit(cmd, inputs, out_bytes, work, out, repeat)
    rows = [row(job, "weightkit", size, m, limit, ratios)]
    if baseline is not None:
        tool, baseline_cmd = baseline
        drop_caches()
        rows.append(row(job, tool, size, measure(baseline_cmd), limit))
        shutil.rmtree(out)
    return rows


def bench_recover(work: Path, size: str, baseline: bool, repeat: int) -> list[str]:
    raw, diff, out = work / "raw", work / "diff", work / "out"
    cmd = [
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
    naive = (
        "naive (transformers, whole models)",
        [sys.executable, "-c", NAIVE_RECOVER, str(raw), str(diff), str(out)],
    )
    return bench_job(
        "recover fp32 diff",
        size,
        cmd,
        [raw, diff],
        folder_bytes(diff),
        work,
        out,
        repeat,
        naive if baseline else None,
    )


def bench_merge_lora_job(work: Path, size: str, baseline: bool, repeat: int) -> list[str]:
    base, adapter, out = work / "raw", work / "adapter", work / "out"
    if not adapter.is_dir():
        bench_merge_lora.write_adapter(adapter, size, rank=16, seed=2)
    cmd = [
        *WK,
        "merge-lora",
        "--base",
        str(base),
        "--lora",
        str(adapter),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    peft = (
        "peft merge_and_unload + save",
        [sys.executable, "-c", bench_merge_lora._PEFT_MERGE, str(base), str(adapter), str(out)],
    )
    return bench_job(
        "merge-lora r=16, 7 modules",
        size,
        cmd,
        [base, adapter],
        folder_bytes(base),
        work,
        out,
        repeat,
        peft if baseline else None,
    )


NAIVE_CONVERT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_convert
bench_convert.naive_convert(Path(sys.argv[2]), Path(sys.argv[3]))
"""


def bench_convert_job(work: Path, size: str, baseline: bool, repeat: int) -> list[str]:
    hidden, _, layers, heads, _, vocab = SHAPES[size]
    meta, out = work / "meta", work / "out"
    if not meta.is_dir():
        meta.mkdir()
        bench_convert.make_raw(meta, hidden, layers, heads, 2, vocab, "fp16")
    cmd = [*WK, "convert", "--input-dir", str(meta), "--out", str(out)]
    naive = (
        "naive (all shards loaded, as transformers does)",
        [sys.executable, "-c", NAIVE_CONVERT, str(Path(__file__).parent), str(meta), str(out)],
    )
    return bench_job(
        "convert raw → HF",
        size,
        cmd,
        [meta],
        folder_bytes(meta),
        work,
        out,
        repeat,
        naive if baseline else None,
    )


def bench_verify(work: Path, size: str) -> list[str]:
    raw = work / "raw"
    files = sorted(p.name for p in raw.iterdir() if p.suffix == ".safetensors")
    manifest = subprocess.run(
        ["md5sum", *files], cwd=raw, capture_output=True, text=True, check=True
    ).stdout
    (work / "raw.md5").write_text(manifest)
    drop_caches()
    md5 = measure(["sh", "-c", f"cd {raw} && md5sum -c --quiet {work / 'raw.md5'}"])
    drop_caches()
    wk = measure([*WK, "verify", str(raw), "--manifest", str(work / "raw.md5"), "--jobs", "2"])
    return [
        row("verify md5", "md5sum (serial)", size, md5, None),
        row(
            "verify md5",
            f"weightkit --jobs 2 ({md5['seconds'] / wk['seconds']:.2f}× md5sum)",
            size,
            wk,
            None,
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.3B,1.1B", help=f"from {', '.join(SHAPES)}")
    ap.add_argument("--jobs", default="recover,merge-lora,convert,verify")
    ap.add_argument("--dir", type=Path, default=None, help="where the families are made")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each weightkit job, each paired with its own copy-limit "
        "timing; the table shows the median and the range of the ratios",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the families in DIR/SIZE and reuse them on the next run (they "
        "take minutes to make; same seeds, same bytes)",
    )
    ap.add_argument(
        "--baseline-max",
        default="1.1B",
        help="largest size to run the whole-model baseline on (it needs the RAM)",
    )
    args = ap.parse_args()
    jobs = args.jobs.split(",")
    sizes = args.sizes.split(",")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{platform.python_version()}, torch {torch.__version__}; "
        f"page cache dropped: {'yes' if drop_caches() else 'no (not permitted)'}\n"
    )
    print("| job | size | tool | wall s | peak RSS GiB | copy limit s | × copy limit |")
    print("|---|---|---|---|---|---|---|")
    if args.keep and args.dir is None:
        ap.error("--keep needs --dir")
    for size in sizes:
        work = (
            args.dir / size
            if args.keep
            else Path(tempfile.mkdtemp(prefix=f"wk-bench-{size}-", dir=args.dir))
        )
        try:
            if not (work / ".complete").is_file():
                write_model(work / "raw", size, torch.float16, seed=0)
                write_model(work / "diff", size, torch.float32, seed=1, scale=1e-4)
                (work / ".complete").write_text("raw and diff written\n")
            baseline = list(SHAPES).index(size) <= list(SHAPES).index(args.baseline_max)
            if "recover" in jobs:
                print("\n".join(bench_recover(work, size, baseline, args.repeat)), flush=True)
            if "merge-lora" in jobs:
                print(
                    "\n".join(bench_merge_lora_job(work, size, baseline, args.repeat)), flush=True
                )
            if "convert" in jobs:
                print("\n".join(bench_convert_job(work, size, baseline, args.repeat)), flush=True)
            if "verify" in jobs:
                print("\n".join(bench_verify(work, size)), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
