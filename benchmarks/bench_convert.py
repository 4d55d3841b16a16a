"""`weightkit convert` against the transformers converter's approach, on a synthetic raw LLaMA 2.

    python benchmarks/bench_convert.py [--dim 1024] [--layers 18] [--shards 2] [--dtype fp16]
                                       [--repeat 1] [--dir DIR]

Writes a random LLaMA-2-shaped Meta checkpoint (consolidated.0N.pth + params.json, about 0.3B
parameters by default, fixed seed) into a temp folder, then runs in subprocesses, each timed end
to end (Python start-up included) with its own peak RSS (ru_maxrss from wait4):
- the naive baseline: what convert_llama_weights_to_hf.py does, minus its temporary copy: every
  shard loaded whole with torch.load, q/k/v/o and the MLP joined and permuted into one state dict
  in memory, written with safetensors.torch.save_file;
- `weightkit convert` (dtype auto, and --dtype bf16);
- `python -c "import torch, transformers"`, the floor every Python tool pays.
Both outputs are then compared tensor by tensor. Prints a markdown table.

This process never imports torch: Linux carries a parent's peak RSS over fork+exec into the
child's ru_maxrss, so the checkpoint is made and compared in subprocesses too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ["fp16", "bf16"]
REPO = Path(__file__).resolve().parent.parent  # `python -m weightkit` runs this tree's code


def make_raw(
    folder: Path, dim: int, layers: int, heads: int, shards: int, vocab: int, dtype_name: str
) -> int:
    """Meta's layout: every matrix cut over the shards as model-parallel training saved it."""
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    multiple_of = 256
    inter = multiple_of * ((int(8 * dim / 3) + multiple_of - 1) // multiple_of)
    params = {
        "dim": dim,
        "multiple_of": multiple_of,
        "n_heads": heads,
        "n_layers": layers,
        "norm_eps": 1e-05,
        "vocab_size": -1,
    }
    (folder / "params.json").write_text(json.dumps(params))
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * 0.02).to(dtype)

    count = 0
    for s in range(shards):
        state = {
            "tok_embeddings.weight": rand(vocab, dim // shards),
            "norm.weight": torch.ones(dim, dtype=dtype),
            "output.weight": rand(vocab // shards, dim),
        }
        for i in range(layers):
            p = f"layers.{i}."
            state |= {
                p + "attention.wq.weight": rand(dim // shards, dim),
                p + "attention.wk.weight": rand(dim // shards, dim),
                p + "attention.wv.weight": rand(dim // shards, dim),
                p + "attention.wo.weight": rand(dim, dim // shards),
                p + "feed_forward.w1.weight": rand(inter // shards, dim),
                p + "feed_forward.w2.weight": rand(dim, inter // shards),
                p + "feed_forward.w3.weight": rand(inter // shards, dim),
                p + "attention_norm.weight": torch.ones(dim, dtype=dtype),
                p + "ffn_norm.weight": torch.ones(dim, dtype=dtype),
            }
        torch.save(state, folder / f"consolidated.{s:02d}.pth")
        count += sum(t.numel() for n, t in state.items() if "norm" not in n or s == 0)
        del state
    return count


def naive_convert(raw: Path, out: Path) -> None:
    """The transformers converter's approach: everything in memory at once."""
    import torch
    from safetensors.torch import save_file

    params = json.loads((raw / "params.json").read_text())
    dim, heads, layers = params["dim"], params["n_heads"], params["n_layers"]
    loaded = [
        torch.load(f, map_location="cpu", weights_only=True)
        for f in sorted(raw.glob("consolidated.*.pth"))
    ]

    def permute(w: torch.Tensor) -> torch.Tensor:
        return w.view(heads, dim // heads // 2, 2, dim).transpose(1, 2).reshape(dim, dim)

    def cat(name: str, axis: int) -> torch.Tensor:
        return torch.cat([shard[name] for shard in loaded], dim=axis)

    state = {}
    for i in range(layers):
        p, hf = f"layers.{i}.", f"model.layers.{i}."
        state |= {
            hf + "self_attn.q_proj.weight": permute(cat(p + "attention.wq.weight", 0)),
            hf + "self_attn.k_proj.weight": permute(cat(p + "attention.wk.weight", 0)),
            hf + "self_attn.v_proj.weight": cat(p + "attention.wv.weight", 0),
            hf + "self_attn.o_proj.weight": cat(p + "attention.wo.weight", 1),
            hf + "mlp.gate_proj.weight": cat(p + "feed_forward.w1.weight", 0),
            hf + "mlp.down_proj.weight": cat(p + "feed_forward.w2.weight", 1),
            hf + "mlp.up_proj.weight": cat(p + "feed_forward.w3.weight", 0),
            hf + "input_layernorm.weight": loaded[0][p + "attention_norm.weight"].clone(),
            hf + "post_attention_layernorm.weight": loaded[0][p + "ffn_norm.weight"].clone(),
        }
    state |= {
        "model.embed_tokens.weight": cat("tok_embeddings.weight", 1),
        "model.norm.weight": loaded[0]["norm.weight"].clone(),
        "lm_head.weight": cat("output.weight", 0),
    }
    out.mkdir(parents=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


def _output(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def run(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return seconds, usage.ru_maxrss / 1024  # kB on Linux


def best(cmd: list[str], repeat: int, out: Path | None) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        if out is not None and out.exists():
            shutil.rmtree(out)
        runs.append(run(cmd))
    return min(r[0] for r in runs), min(r[1] for r in runs)


def same_tensors(a: Path, b: Path) -> bool:
    """Same names, dtypes and values, read one tensor at a time (both are one file here)."""
    import torch
    from safetensors import safe_open

    with (
        safe_open(a / "model.safetensors", "pt") as ours,
        safe_open(b / "model.safetensors", "pt") as theirs,
    ):
        if set(ours.keys()) != set(theirs.keys()):
            return False
        return all(torch.equal(ours.get_tensor(n), theirs.get_tensor(n)) for n in theirs.keys())


def benchmark(args: argparse.Namespace) -> None:
    """Make the raw checkpoint, time every command on it, print the table."""
    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.dir) as tmp:
        root = Path(tmp)
        raw = root / "raw"
        raw.mkdir()
        py = sys.executable
        shape = [
            "--dim",
            str(args.dim),
            "--layers",
            str(args.layers),
            "--heads",
            str(args.heads),
            "--shards",
            str(args.shards),
            "--vocab",
            str(args.vocab),
            "--dtype",
            args.dtype,
        ]
        params = int(_output([py, __file__, *shape, "--make", str(raw)]))
        size = sum(f.stat().st_size for f in raw.glob("*.pth"))
        rows = [
            (
                "python -c 'import torch, transformers' (floor)",
                best([py, "-c", "import torch, transformers"], args.repeat, None),
                "",
            ),
            (
                "naive: torch.load every shard, join, save_file",
                best(
                    [py, __file__, "--naive", str(raw), str(root / "naive")],
                    args.repeat,
                    root / "naive",
                ),
                args.dtype,
            ),
            (
                f"weightkit convert (dtype auto -> {args.dtype})",
                best(
                    [
                        py,
                        "-m",
                        "weightkit",
                        "-q",
                        "convert",
                        "--input-dir",
                        str(raw),
                        "--out",
                        str(root / "wk"),
                    ],
                    args.repeat,
                    root / "wk",
                ),
                args.dtype,
            ),
            (
                "weightkit convert --dtype bf16",
                best(
                    [
                        py,
                        "-m",
                        "weightkit",
                        "-q",
                        "convert",
                        "--input-dir",
                        str(raw),
                        "--out",
                        str(root / "wk-bf16"),
                        "--dtype",
                        "bf16",
                    ],
                    args.repeat,
                    root / "wk-bf16",
                ),
                "bf16",
            ),
        ]
        identical = _output([py, __file__, "--compare", str(root / "wk"), str(root / "naive")])

    print(
        f"Synthetic LLaMA-2-shaped raw checkpoint: {params / 1e9:.2f}B parameters, "
        f"{args.shards} MP shards, {args.dtype}, {size / 1e9:.2f} GB; dim {args.dim}, "
        f"{args.layers} layers; {os.cpu_count()} cores; best of {args.repeat}.\n"
    )
    print("| command | wall time | peak RSS | output dtype |")
    print("|---|---:|---:|---|")
    for name, (seconds, rss), dtype in rows:
        print(f"| {name} | {seconds:.1f} s | {rss:,.0f} MB | {dtype} |")
    print(f"\nweightkit's output equals the naive one tensor for tensor: {identical}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=DTYPES, default="fp16")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp folder")
    # the steps this script runs in subprocesses of its own
    ap.add_argument("--naive", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive:
        naive_convert(*args.naive)
    elif args.make:
        print(
            make_raw(
                args.make, args.dim, args.layers, args.heads, args.shards, args.vocab, args.dtype
            )
        )
    elif args.compare:
        print(same_tensors(*args.compare))
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
