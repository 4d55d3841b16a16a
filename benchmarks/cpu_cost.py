"""Issue 14: weightkit's wall and CPU cost next to the copy limit, job by job.

    python benchmarks/cpu_cost.py --dir /tmp/engine --size 1.4B --repeat 3 [--jobs a,b] [--warm]

Makes (once, in DIR/SIZE, same seeds and bytes every time) a LLaMA-shaped family: raw fp16, an
fp32 diff (synthetic.py), the tuned fp16 model recovered from them, its fp16 diff
(`weightkit diff --dtype fp16`), a LoRA adapter r=16 on q/k/v/o/gate/up/down and a raw Meta
checkpoint in 2 model-parallel shards. Then, `--repeat` times, for each job: the copy limit in
both forms (measure.COPY_FORMS: read the inputs cold, write the output's bytes, flush), then the
weightkit command, each after dropping the page cache. Prints one markdown row per job: medians
of wall and CPU (user + sys) seconds, minor page faults against the bytes read / 4 KiB, peak
RSS, and each ratio to the copy limit as the median of the pairs (with their range).

Every output's tensor manifest is kept in DIR/SIZE/manifests/JOB.json the first time and
compared on every later run: the same manifest means the same bytes, tensor by tensor.
`--warm` skips the copy limits and the cache drops (steady CPU and fault figures while
changing the code). `--base DIR` runs every job also with the weightkit checked out in DIR
(`git archive COMMIT | tar -x -C DIR`), alternating with this one in each repeat, so that
before and after are measured side by side on a machine whose load moves; the base's rows come
first and its outputs set the manifests the others must match.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bench_convert
import bench_merge_lora
import torch
from measure import COPY_FORMS, copy_limit_run, drop_caches, folder_bytes, measure
from synthetic import SHAPES, write_model

WK = [sys.executable, "-m", "weightkit", "--quiet"]
MANIFEST = "weightkit.manifest.json"


@dataclass(frozen=True)
class Bench:
    name: str
    args: list[str]  # weightkit's arguments, with {w} for the family's folder and {out}
    inputs: list[str]  # folders (in the family) the job reads
    limit: float  # the target: wall and CPU at most this many times the copy limit's
    fastchat: bool = False  # args are FastChat apply_delta's, run with --fastchat's python


JOBS = [
    Bench(
        "recover fp32 diff -> fp16",
        [
            "recover",
            "--raw",
            "{w}/raw",
            "--diff",
            "{w}/diff32",
            "--out",
            "{out}",
            "--dtype",
            "fp16",
        ],
        ["raw", "diff32"],
        1.3,
    ),
    Bench(
        "recover fp16 diff -> fp16",
        ["recover", "--raw", "{w}/raw", "--diff", "{w}/diff16", "--out", "{out}"],
        ["raw", "diff16"],
        1.3,
    ),
    Bench(
        "recover fp32 diff -> fp32",
        ["recover", "--raw", "{w}/raw", "--diff", "{w}/diff32", "--out", "{out}"],
        ["raw", "diff32"],
        1.3,
    ),
    Bench(
        "diff fp16 -> fp32",
        ["diff", "--raw", "{w}/raw", "--tuned", "{w}/tuned", "--out", "{out}"],
        ["raw", "tuned"],
        1.3,
    ),
    Bench(
        "diff fp16 -> fp16",
        ["diff", "--raw", "{w}/raw", "--tuned", "{w}/tuned", "--out", "{out}", "--dtype", "fp16"],
        ["raw", "tuned"],
        1.3,
    ),
    Bench(
        "convert -> fp16", ["convert", "--input-dir", "{w}/meta", "--out", "{out}"], ["meta"], 1.3
    ),
    Bench(
        "convert -> bf16",
        ["convert", "--input-dir", "{w}/meta", "--out", "{out}", "--dtype", "bf16"],
        ["meta"],
        1.3,
    ),
    Bench(
        "merge-lora r=16 -> fp16",
        ["merge-lora", "--base", "{w}/raw", "--lora", "{w}/adapter", "--out", "{out}"],
        ["raw", "adapter"],
        2.0,
    ),
    # as FastChat's README runs it: whole models loaded in fp16, added in fp16, saved
    Bench(
        "FastChat apply_delta, fp16 diff",
        [
            "--base-model-path",
            "{w}/raw",
            "--delta-path",
            "{w}/diff16-fc",
            "--target-model-path",
            "{out}",
        ],
        ["raw", "diff16"],
        1.3,
        fastchat=True,
    ),
]


def make_family(work: Path, size: str) -> None:
    """raw, diff32, tuned, diff16, adapter, meta in `work`, each made once."""
    steps = [
        ("raw", lambda f: write_model(f, size, torch.float16, seed=0)),
        ("diff32", lambda f: write_model(f, size, torch.float32, seed=1, scale=1e-4)),
        (
            "tuned",
            lambda f: _wk(
                [
                    "recover",
                    "--raw",
                    work / "raw",
                    "--diff",
                    work / "diff32",
                    "--out",
                    f,
                    "--dtype",
                    "fp16",
                ]
            ),
        ),
        (
            "diff16",
            lambda f: _wk(
                [
                    "diff",
                    "--raw",
                    work / "raw",
                    "--tuned",
                    work / "tuned",
                    "--out",
                    f,
                    "--dtype",
                    "fp16",
                ]
            ),
        ),
        ("adapter", lambda f: bench_merge_lora.write_adapter(f, size, rank=16, seed=2)),
        ("meta", lambda f: _meta(f, size)),
    ]
    for name, make in steps:
        if not (work / name).is_dir():
            print(f"making {work / name}", file=sys.stderr, flush=True)
            make(work / name)


def _fastchat_tokenizer(diff: Path, folder: Path) -> None:
    """`diff` with a tiny slow tokenizer beside it: apply_delta loads and saves the delta's
    tokenizer (the synthetic family has none); the weights are links, not copies."""
    folder.mkdir(exist_ok=True)
    for f in diff.iterdir():
        if f.suffix in (".safetensors", ".json") and not f.name.startswith("weightkit"):
            if not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
    (folder / "vocab.json").write_text(json.dumps({"<|endoftext|>": 0, "a": 1, "b": 2}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    token = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "unk_token": token,
                "bos_token": token,
                "eos_token": token,
            }
        )
    )


def _wk(args: list) -> None:
    subprocess.run([*WK, *map(str, args), "--device", "cpu"], check=True)


def _meta(folder: Path, size: str) -> None:
    hidden, _, layers, heads, _, vocab = SHAPES[size]
    folder.mkdir(parents=True)
    bench_convert.make_raw(folder, hidden, layers, heads, 2, vocab, "fp16")


def run_job(
    b: Bench,
    work: Path,
    repeat: int,
    warm: bool,
    variants: dict[str, str | None],
    fastchat: str | None = None,
) -> list[str]:
    """Rows of `b` for each variant (label -> PYTHONPATH, None: as this process has it)."""
    out = work / "out"
    args = [a.format(w=work, out=out) for a in b.args]
    cmd = [*WK, *args]
    if b.fastchat:
        cmd = [fastchat, "-m", "fastchat.model.apply_delta", *args]
    elif b.name.startswith(("recover", "diff", "merge")):
        cmd += ["--device", "cpu"]
    inputs = [work / i for i in b.inputs]
    read = folder_bytes(*inputs)
    limits: dict[str, list[dict]] = {form: [] for form in COPY_FORMS}
    runs: dict[str, list[dict]] = {label: [] for label in variants}
    for i in range(repeat):
        if not warm:
            for form in COPY_FORMS:
                # the output's size is known after the first run; the inputs' until then
                limits[form].append(copy_limit_run(inputs, _out_bytes(work, b, read), work, form))
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for label in order:
            if out.exists():
                shutil.rmtree(out)
            if not warm:
                drop_caches()
            env = None if variants[label] is None else {**os.environ, "PYTHONPATH": variants[label]}
            runs[label].append(measure(cmd, env))
            if not b.fastchat:
                _check_manifest(work, b, out)
            (work / f".out-bytes-{_slug(b)}").write_text(str(folder_bytes(out)))
    shutil.rmtree(out)
    return [
        _row(b, runs[label], limits, read, label if len(variants) > 1 else "") for label in variants
    ]


def _out_bytes(work: Path, b: Bench, read: int) -> int:
    known = work / f".out-bytes-{_slug(b)}"
    return int(known.read_text()) if known.is_file() else read


def _slug(b: Bench) -> str:
    return "".join(c if c.isalnum() else "-" for c in b.name)


def _check_manifest(work: Path, b: Bench, out: Path) -> None:
    kept = work / "manifests" / f"{_slug(b)}.json"
    got = (out / MANIFEST).read_text()
    if not kept.is_file():
        kept.parent.mkdir(exist_ok=True)
        kept.write_text(got)
    elif json.loads(kept.read_text()) != json.loads(got):
        sys.exit(f"{b.name}: the output's manifest differs from {kept}: other bytes")


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _ratio(runs: list[dict], limits: list[dict], key: str) -> str:
    ratios = [r[key] / max(lim[key], 1e-9) for r, lim in zip(runs, limits, strict=True)]
    text = f"{statistics.median(ratios):.2f}×"
    return text + (f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else "")


def _row(b: Bench, runs: list[dict], limits: dict[str, list[dict]], read: int, label: str) -> str:
    faults = _med(runs, "minflt")
    cells = [
        f"{b.name} ({label})" if label else b.name,
        f"{_med(runs, 'seconds'):.1f}",
        f"{_med(runs, 'cpu'):.1f} ({_med(runs, 'user'):.1f} + {_med(runs, 'sys'):.1f})",
        f"{faults / 1e3:.0f} k ({100 * faults / (read / 4096):.1f} %)",
        f"{max(r['rss_gb'] for r in runs):.2f}",
    ]
    for form in COPY_FORMS:
        lim = limits[form]
        if not lim:
            cells += ["—", "—", "—"]
            continue
        cells += [
            f"{_med(lim, 'seconds'):.1f} / {_med(lim, 'cpu'):.1f}",
            _ratio(runs, lim, "seconds"),
            _ratio(runs, lim, "cpu"),
        ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| job | wall s | CPU s (user + sys) | minor faults (% of read / 4 KiB) | peak RSS GiB "
    + "".join(f"| {f}: wall / CPU s | × wall | × CPU " for f in COPY_FORMS)
    + "|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--size", default="1.4B", choices=SHAPES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", default="", help="comma-separated prefixes of job names")
    ap.add_argument("--warm", action="store_true", help="no copy limits, no cache drops")
    ap.add_argument(
        "--fastchat",
        default=None,
        help="the python of a venv with fschat installed: adds its apply_delta",
    )
    ap.add_argument(
        "--base", default=None, help="a folder with another weightkit checkout, run side by side"
    )
    args = ap.parse_args()
    work = args.dir / args.size
    make_family(work, args.size)
    wanted = [j for j in args.jobs.split(",") if j]
    jobs = [
        b
        for b in JOBS
        if (not wanted or any(b.name.startswith(w) for w in wanted))
        and (args.fastchat or not b.fastchat)
    ]
    if args.fastchat:
        _fastchat_tokenizer(work / "diff16", work / "diff16-fc")
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}; size {args.size}; page "
        f"cache dropped: {'no (--warm)' if args.warm else drop_caches()}\n"
    )
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    variants: dict[str, str | None] = {"this": None}
    if args.base:
        variants = {"base": str(Path(args.base).absolute()), "this": None}
    for b in jobs:
        print(
            "\n".join(
                run_job(
                    b,
                    work,
                    args.repeat,
                    args.warm,
                    {"this": None} if b.fastchat else variants,
                    args.fastchat,
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
