"""Options that contradict each other are refused as usage errors (exit code 2, one message,
nothing written), and a --dry-run refuses everything the real run would refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weightkit.cli import _run

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-llama"
RAW, DIFF, TUNED = (str(EXAMPLE / n) for n in ("raw", "diff", "tuned"))


def usage_error(command: str, message: str) -> str:
    return (
        f"Usage: weightkit {command} [OPTIONS]{' PATH' if command == 'verify' else ''}"
        f"{' REPO_OR_RELEASE' if command == 'download' else ''}\n"
        f"Try 'weightkit {command} --help' for help.\n\nError: {message}\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["recover", "--raw", RAW, "--diff", DIFF, "--fp16", "--dtype", "bf16"],
            "--fp16 writes fp16 and --dtype bf16 asks for bf16: give one of them",
        ),
        (
            ["recover", "--raw", RAW, "--diff", DIFF, "--dtype", "fp32", "--fp16", "--dry-run"],
            "--fp16 writes fp16 and --dtype fp32 asks for fp32: give one of them",
        ),
        (
            ["download", "org/model", "--only-lora", "--only-base"],
            "--only-lora and --only-base exclude each other",
        ),
        (
            ["download", "zhixi-13b", "--only-lora", "--fp16"],
            "release zhixi-13b has no fp16 LoRA; use --only-lora or --fp16",
        ),
        (
            ["download", "org/model", "--fp16"],
            "--fp16 picks the fp16 diff of a release; org/model is a repo\n"
            "Give a release name from the catalog, or the fp16 repo itself.",
        ),
    ],
    ids=[
        "recover-fp16-bf16",
        "recover-fp16-fp32-dry-run",
        "download-lora-base",
        "download-release-lora-fp16",
        "download-repo-fp16",
    ],
)
def test_contradicting_options_are_a_usage_error(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run([*args, "--out", str(out)], debug=False) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", usage_error(args[0], message))
    assert list(tmp_path.iterdir()) == []


def test_verify_with_two_sources_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "sums.md5").write_text("")
    assert (
        _run(
            ["verify", RAW, "--manifest", str(tmp_path / "sums.md5"), "--known", "zhixi-13b-diff"],
            debug=False,
        )
        == 2
    )
    assert capsys.readouterr().err == usage_error("verify", "give --manifest or --known, not both")


def test_fp16_with_fp16_is_no_conflict(tmp_path, capsys):
    assert (
        _run(
            [
                "recover",
                "--raw",
                RAW,
                "--diff",
                DIFF,
                "--out",
                str(tmp_path / "out"),
                "--fp16",
                "--dtype",
                "fp16",
                "--dry-run",
            ],
            debug=False,
        )
        == 0
    )
    assert "recover (dry run): inputs check out; 21 tensors" in capsys.readouterr().err


# --- a dry run refuses what the real run refuses -------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[str]]:
    """The input options of every command that writes a checkpoint, on tiny models."""
    from ops.lora_models import build_base, make_adapter
    from ops.meta_checkpoints import build_raw

    from weightkit.ops.diff import diff

    root = tmp_path_factory.mktemp("inputs")
    diff(RAW, TUNED, root / "lossless", lossless=True)
    base = build_base("llama", torch.float16, root / "base")
    adapter = make_adapter(base, root / "lora", torch.float16, target_modules=["q_proj"])
    meta = build_raw(root / "meta", "llama2")
    return {
        "recover": ["recover", "--raw", RAW, "--diff", DIFF],
        "recover-lossless": ["recover", "--raw", RAW, "--diff", str(root / "lossless")],
        "diff": ["diff", "--raw", RAW, "--tuned", TUNED],
        "diff-lossless": ["diff", "--raw", RAW, "--tuned", TUNED, "--lossless"],
        "merge-lora": ["merge-lora", "--base", str(base), "--lora", str(adapter)],
        "convert": ["convert", "--input-dir", str(meta.input_dir), "--model-size", meta.model_size],
    }


def _shard_size(tmp: Path) -> tuple[list[str], Path, str]:
    return (
        ["--max-shard-size", "lots"],
        tmp / "out",
        "Error: cannot read --max-shard-size 'lots' as a size\nWrite it like 5GB, 500MB or 2GiB.\n",
    )


def _out_inside_a_file(tmp: Path) -> tuple[list[str], Path, str]:
    (tmp / "file").write_text("not a folder")
    out = tmp / "file" / "out"
    return (
        [],
        out,
        f"Error: cannot make the folder {out}: {tmp / 'file'} is a file\n"
        "Choose an --out that is a folder or can become one.\n",
    )


def _out_exists(tmp: Path) -> tuple[list[str], Path, str]:
    (tmp / "out").mkdir()
    return (
        [],
        tmp / "out",
        f"Error: output {tmp / 'out'} already exists\nPass --overwrite to replace it.\n",
    )


@pytest.mark.parametrize(
    "problem",
    [_shard_size, _out_inside_a_file, _out_exists],
    ids=["shard-size", "out-inside-a-file", "out-exists"],
)
@pytest.mark.parametrize(
    "command", ["recover", "recover-lossless", "diff", "diff-lossless", "merge-lora", "convert"]
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_dry_run_refuses_what_the_run_refuses(inputs, command, problem, dry_run, tmp_path, capsys):
    extra, out, message = problem(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    args = [*inputs[command], "--out", str(out), *extra, *(["--dry-run"] if dry_run else [])]
    assert _run(args, debug=False) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", ["recover", "diff", "merge-lora"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_dry_run_refuses_cuda_without_a_gpu(
    inputs, command, dry_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [
        *inputs[command],
        "--out",
        str(tmp_path / "out"),
        "--device",
        "cuda",
        *(["--dry-run"] if dry_run else []),
    ]
    assert _run(args, debug=False) == 1
    assert capsys.readouterr().err == (
        "Error: --device cuda was asked for, but no CUDA device is available\n"
        "Use --device cpu or auto: the output bytes are the same.\n"
    )
    assert list(tmp_path.iterdir()) == []
