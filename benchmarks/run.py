"""weightkit's benchmark: synthetic LLaMA families, each job against its copy limit and a naive
whole-model baseline, in subprocesses with a cold page cache.

    python benchmarks/run.py [--sizes 0.3B,1.1B,3B] [--jobs recover,verify] [--dir DIR]
                             [--baseline-max 1.1B]

For each size: raw fp16 + fp32 diff (synthetic.py, fixed seed); `weightkit recover` (fp32 out)
and the naive baseline written here (transformers loads both models whole, adds, save_pretrained);
`weightkit verify` of the raw folder against serial md5sum. Prints a markdown table with wall
time, peak RSS and the ratio to the copy limit (reading the inputs cold + writing the output).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


def row(job: str, tool: str, size: str, m: dict, limit: float | None) -> str:
    ratio = f"{m['seconds'] / limit:.2f}×" if limit else "—"
    return (f"| {job} | {size} | {tool} | {m['seconds']:.1f} | {m['rss_gb']:.2f} | "
            f"{limit:.1f} | {ratio} |" if limit else
            f"| {job} | {size} | {tool} | {m['seconds']:.1f} | {m['rss_gb']:.2f} | — | — |")


def bench_recover(work: Path, size: str, baseline: bool) -> list[str]:
    raw, diff, out = work / "raw", work / "diff", work / "out"
    rows = []
    limit = copy_limit([raw, diff], folder_bytes(diff), work)
    drop_caches()
    m = measure([*WK, "recover", "--raw", str(raw), "--diff", str(diff), "--out", str(out),
                 "--device", "cpu"])
    rows.append(row("recover fp32 diff", "weightkit", size, m, limit))
    shutil.rmtree(out)
    if baseline:
        drop_caches()
        m = measure([sys.executable, "-c", NAIVE_RECOVER, str(raw), str(diff), str(out)])
        rows.append(row("recover fp32 diff", "naive (transformers, whole models)", size, m, limit))
        shutil.rmtree(out)
    return rows


def bench_verify(work: Path, size: str) -> list[str]:
    raw = work / "raw"
    files = sorted(p.name for p in raw.iterdir() if p.suffix == ".safetensors")
    manifest = subprocess.run(["md5sum", *files], cwd=raw, capture_output=True, text=True,
                              check=True).stdout
    (work / "raw.md5").write_text(manifest)
    drop_caches()
    md5 = measure(["sh", "-c", f"cd {raw} && md5sum -c --quiet {work / 'raw.md5'}"])
    drop_caches()
    wk = measure([*WK, "verify", str(raw), "--manifest", str(work / "raw.md5"), "--jobs", "2"])
    return [row("verify md5", "md5sum (serial)", size, md5, None),
            row("verify md5", f"weightkit --jobs 2 ({md5['seconds'] / wk['seconds']:.2f}× md5sum)",
                size, wk, None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.3B,1.1B", help=f"from {', '.join(SHAPES)}")
    ap.add_argument("--jobs", default="recover,verify")
    ap.add_argument("--dir", type=Path, default=None, help="where the families are made")
    ap.add_argument("--baseline-max", default="1.1B",
                    help="largest size to run the whole-model baseline on (it needs the RAM)")
    args = ap.parse_args()
    jobs = args.jobs.split(",")
    sizes = args.sizes.split(",")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{platform.python_version()}, torch {torch.__version__}; "
          f"page cache dropped: {'yes' if drop_caches() else 'no (not permitted)'}\n")
    print("| job | size | tool | wall s | peak RSS GiB | copy limit s | × copy limit |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"wk-bench-{size}-", dir=args.dir))
        try:
            write_model(work / "raw", size, torch.float16, seed=0)
            write_model(work / "diff", size, torch.float32, seed=1, scale=1e-4)
            rows = []
            if "recover" in jobs:
                baseline = list(SHAPES).index(size) <= list(SHAPES).index(args.baseline_max)
                rows += bench_recover(work, size, baseline)
            if "verify" in jobs:
                rows += bench_verify(work, size)
            print("\n".join(rows), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
