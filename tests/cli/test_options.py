"""Options that contradict each other are refused as usage errors (exit code 2, one message,
nothing written), and a --dry-run refuses everything the real run would refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightkit.cli import _run

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-llama"
RAW, DIFF, TUNED = (str(EXAMPLE / n) for n in ("raw", "diff", "tuned"))


def usage_error(command: str, message: str) -> str:
    return (f"Usage: weightkit {command} [OPTIONS]{' PATH' if command == 'verify' else ''}"
            f"{' REPO_OR_RELEASE' if command == 'download' else ''}\n"
            f"Try 'weightkit {command} --help' for help.\n\nError: {message}\n")


@pytest.mark.parametrize(("args", "message"), [
    (["recover", "--raw", RAW, "--diff", DIFF, "--fp16", "--dtype", "bf16"],
     "--fp16 writes fp16 and --dtype bf16 asks for bf16: give one of them"),
    (["recover", "--raw", RAW, "--diff", DIFF, "--dtype", "fp32", "--fp16", "--dry-run"],
     "--fp16 writes fp16 and --dtype fp32 asks for fp32: give one of them"),
    (["download", "org/model", "--only-lora", "--only-base"],
     "--only-lora and --only-base exclude each other"),
    (["download", "zhixi-13b", "--only-lora", "--fp16"],
     "release zhixi-13b has no fp16 LoRA; use --only-lora or --fp16"),
    (["download", "org/model", "--fp16"],
     "--fp16 picks the fp16 diff of a release; org/model is a repo\n"
     "Give a release name from the catalog, or the fp16 repo itself."),
], ids=["recover-fp16-bf16", "recover-fp16-fp32-dry-run", "download-lora-base",
        "download-release-lora-fp16", "download-repo-fp16"])
def test_contradicting_options_are_a_usage_error(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run([*args, "--out", str(out)], debug=False) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", usage_error(args[0], message))
    assert list(tmp_path.iterdir()) == []


def test_verify_with_two_sources_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "sums.md5").write_text("")
    assert _run(["verify", RAW, "--manifest", str(tmp_path / "sums.md5"),
                 "--known", "zhixi-13b-diff"], debug=False) == 2
    assert capsys.readouterr().err == usage_error("verify",
                                                  "give --manifest or --known, not both")


def test_fp16_with_fp16_is_no_conflict(tmp_path, capsys):
    assert _run(["recover", "--raw", RAW, "--diff", DIFF, "--out", str(tmp_path / "out"),
                 "--fp16", "--dtype", "fp16", "--dry-run"], debug=False) == 0
    assert "recover (dry run): inputs check out; 21 tensors" in capsys.readouterr().err
