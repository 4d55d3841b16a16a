"""The one GPU validation run: CPU and CUDA give the same bits, and what CUDA gains.

    PYTHONPATH=. python benchmarks/gpu_check.py --dir /tmp/gpu --out $OUT/gpu_check.md

Meant for a machine with a CUDA GPU, in at most 10 minutes; every figure is appended to --out
as soon as it is measured (a run cut short keeps what it had). Three parts:

1. Bits on edge values, per dtype: weightkit.kernels' widen + add/subtract + round, and the
   casts, on the CPU and on the GPU (subnormals, ±0, ties, overflow, ±inf, NaN payloads),
   compared bit for bit after NaN canonicalisation (what the pipeline writes).
2. End to end at ≈0.6 GB (the 0.3B synthetic family): diff (fp32 and fp16), recover (fp16 and
   fp32 out) and merge-lora (LoRA and DoRA) with --device cpu and --device cuda: every output
   file's sha256 must be equal.
3. recover fp32 diff -> fp16 at ≈1.1B, cold, CPU against CUDA, beside the copy limit (both
   forms) and the disk's cold read bandwidth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_merge_lora import write_adapter
from measure import COPY_FORMS, copy_limit_run, drop_caches, folder_bytes, input_files, measure
from safetensors.torch import load_file, save_file
from synthetic import write_model

from weightkit.kernels import canonicalize_nans, combine_into, round_into

WK = [sys.executable, "-m", "weightkit", "--quiet"]
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INTS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.failures = 0

    def line(self, text: str) -> None:
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.failures += not ok
        self.line(f"| {what} | {'same' if ok else 'DIFFERENT'} | {detail} |")


def edge_values(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    info = torch.finfo(dtype)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x *= torch.pow(2.0, torch.randint(-40, 40, (n,), generator=gen).double())
    special = torch.tensor(
        [
            0.0,
            -0.0,
            info.tiny,
            -info.tiny,
            info.tiny / 8,
            info.max,
            -info.max,
            float("inf"),
            float("-inf"),
            float("nan"),
            1 + 2**-11,
            1 + 3 * 2**-11,
            1 + 2**-8,
            65504.0,
            65520.0,
            -65520.0,
            2**-24,
            2**-25,
            2**-149,
        ],
        dtype=torch.float64,
    )
    x[: len(special)] = special
    t = x.to(dtype)
    ints = INTS[dtype]
    width = dtype.itemsize * 8
    exp = {torch.float16: 5, torch.bfloat16: 8, torch.float32: 8}[dtype]
    ones = ((1 << exp) - 1) << (width - 1 - exp)
    payloads = [ones | 1, ones | (1 << (width - 2 - exp)) | 3, ones | 1 | (1 << (width - 1))]
    t.view(ints)[len(special) : len(special) + 3] = torch.tensor(
        [p - (1 << width) if p >= 1 << (width - 1) else p for p in payloads], dtype=ints
    )
    return t


def bits(t: torch.Tensor) -> torch.Tensor:
    return canonicalize_nans(t.cpu().clone()).view(INTS[t.dtype])


def part1_bits(report: Report) -> None:
    report.line(
        "\n## 1. Edge values, CPU against CUDA\n\n| kernel | bits | values |\n|---|---|---|"
    )
    n = 1 << 20
    for a_dtype in FLOATS:
        for b_dtype in FLOATS:
            a, b = edge_values(a_dtype, n, 1), edge_values(b_dtype, n, 2)
            for out_dtype in FLOATS:
                for subtract in (False, True):
                    cpu = combine_into(
                        torch.empty(n, dtype=out_dtype), a, b, torch.float32, subtract
                    )
                    gpu = combine_into(
                        torch.empty(n, dtype=out_dtype, device="cuda"),
                        a.cuda(),
                        b.cuda(),
                        torch.float32,
                        subtract,
                    )
                    diff = int((bits(cpu) != bits(gpu)).sum())
                    op = "-" if subtract else "+"
                    report.check(
                        f"{a_dtype} {op} {b_dtype} -> {out_dtype}",
                        diff == 0,
                        f"{diff} of {n} differ",
                    )
            for out_dtype in FLOATS:
                cpu = round_into(torch.empty(n, dtype=out_dtype), a)
                gpu = a.cuda().to(out_dtype)
                diff = int((bits(cpu) != bits(gpu)).sum())
                report.check(f"cast {a_dtype} -> {out_dtype}", diff == 0, f"{diff} of {n} differ")


def sha_files(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def wk(*args: object) -> None:
    subprocess.run([*WK, *map(str, args)], check=True)


def part2_end_to_end(report: Report, work: Path) -> None:
    report.line(
        "\n## 2. End to end, --device cpu against --device cuda (0.3B family)\n\n"
        "| output | files | |\n|---|---|---|"
    )
    fam = work / "0.3B"
    if not (fam / ".complete").is_file():
        write_model(fam / "raw", "0.3B", torch.float16, seed=0)
        write_model(fam / "noise", "0.3B", torch.float32, seed=1, scale=1e-4)
        wk(
            "recover",
            "--raw",
            fam / "raw",
            "--diff",
            fam / "noise",
            "--out",
            fam / "tuned",
            "--dtype",
            "fp16",
            "--device",
            "cpu",
        )
        _nans_into(fam / "tuned")
        write_adapter(fam / "lora", "0.3B", rank=16, seed=2)
        _dora_from(fam / "lora", fam / "dora")
        (fam / ".complete").write_text("ok\n")
    jobs = {
        "diff fp32": ["diff", "--raw", fam / "raw", "--tuned", fam / "tuned"],
        "diff fp16": ["diff", "--raw", fam / "raw", "--tuned", fam / "tuned", "--dtype", "fp16"],
        "recover -> fp16": ["recover", "--raw", fam / "raw", "--diff", fam / "out-diff fp32-cpu"],
        "recover fp16 diff": ["recover", "--raw", fam / "raw", "--diff", fam / "out-diff fp16-cpu"],
        "recover -> fp32": [
            "recover",
            "--raw",
            fam / "raw",
            "--diff",
            fam / "out-diff fp32-cpu",
            "--dtype",
            "fp32",
        ],
        "merge-lora LoRA": ["merge-lora", "--base", fam / "raw", "--lora", fam / "lora"],
        "merge-lora DoRA": ["merge-lora", "--base", fam / "raw", "--lora", fam / "dora"],
    }
    for name, args in jobs.items():
        outs = {}
        for dev in ("cpu", "cuda"):
            out = fam / f"out-{name}-{dev}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            wk(*args, "--out", out, "--device", dev)
            outs[dev] = (sha_files(out), time.perf_counter() - start)
        same = outs["cpu"][0] == outs["cuda"][0]
        differ = [f for f in outs["cpu"][0] if outs["cpu"][0][f] != outs["cuda"][0].get(f)]
        report.check(
            name,
            same,
            f"cpu {outs['cpu'][1]:.1f} s, cuda {outs['cuda'][1]:.1f} s"
            + (f"; differ: {', '.join(differ)}" if differ else ""),
        )


def _nans_into(folder: Path) -> None:
    """NaNs of both signs and a payload NaN, ±inf and subnormals in one tuned tensor."""
    index = (
        json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        if (folder / "model.safetensors.index.json").is_file()
        else None
    )
    name = "model.norm.weight"
    file = folder / (index[name] if index else "model.safetensors")
    state = load_file(file)
    ints = torch.tensor([0x7E01, -0x0200, 0x7C00, -0x0400, 0x0001], dtype=torch.int16)
    state[name].view(-1)[:5] = ints.view(torch.float16)
    save_file(state, file, metadata={"format": "pt"})


def _dora_from(lora: Path, dora: Path) -> None:
    """The LoRA adapter with a DoRA magnitude per module (what peft saves with use_dora)."""
    dora.mkdir(exist_ok=True)
    state = load_file(lora / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(3)
    for key in [k for k in state if k.endswith("lora_B.weight")]:
        out = state[key].shape[0]
        module = key.removesuffix(".lora_B.weight")
        state[f"{module}.lora_magnitude_vector"] = 1 + 0.05 * torch.randn(out, generator=gen)
    save_file(state, dora / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((lora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))


def part3_throughput(report: Report, work: Path) -> None:
    report.line(
        "\n## 3. recover fp32 diff -> fp16 at 1.1B, cold\n\n"
        "| run | wall s | CPU s | read GB/s |\n|---|---|---|---|"
    )
    fam = work / "1.1B"
    if not (fam / ".complete").is_file():
        write_model(fam / "raw", "1.1B", torch.float16, seed=0)
        write_model(fam / "diff", "1.1B", torch.float32, seed=1, scale=1e-4)
        (fam / ".complete").write_text("ok\n")
    inputs = [fam / "raw", fam / "diff"]
    read = folder_bytes(*inputs)
    drop_caches()
    cat = measure(["sh", "-c", f"cat {' '.join(input_files(inputs))} > /dev/null"])
    report.line(
        f"| cold read of the inputs (cat) | {cat['seconds']:.1f} | {cat['cpu']:.1f} | "
        f"{read / cat['seconds'] / 1e9:.2f} |"
    )
    out_bytes = read // 3  # fp16 out: the raw model's size
    for form in COPY_FORMS:
        m = copy_limit_run(inputs, out_bytes, fam, form)
        report.line(
            f"| copy limit, {form} | {m['seconds']:.1f} | {m['cpu']:.1f} | "
            f"{read / m['seconds'] / 1e9:.2f} |"
        )
    for dev in ("cpu", "cuda", "cpu", "cuda"):
        out = fam / "out"
        shutil.rmtree(out, ignore_errors=True)
        drop_caches()
        m = measure(
            [
                *WK,
                "recover",
                "--raw",
                str(fam / "raw"),
                "--diff",
                str(fam / "diff"),
                "--out",
                str(out),
                "--dtype",
                "fp16",
                "--device",
                dev,
            ]
        )
        report.line(
            f"| weightkit --device {dev} | {m['seconds']:.1f} | {m['cpu']:.1f} | "
            f"{read / m['seconds'] / 1e9:.2f} |"
        )
    shutil.rmtree(fam / "out", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="where the families are made")
    ap.add_argument("--out", type=Path, required=True, help="the markdown report, appended to")
    ap.add_argument("--parts", default="1,2,3")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script compares the CPU with a GPU")
    report = Report(args.out)
    report.line(
        f"# gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    parts = args.parts.split(",")
    if "1" in parts:
        part1_bits(report)
    if "2" in parts:
        part2_end_to_end(report, args.dir)
    if "3" in parts:
        part3_throughput(report, args.dir)
    report.line(f"\n{report.failures} comparison(s) differ.")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
