"""Library text names parameters; the command line shows its own flags there, and with --json
an error is one JSON object with the same exit code."""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightkit.cli import _run, cli
from weightkit.cli.errors import flag_text

EXAMPLE = Path(__file__).parents[2] / "examples" / "tiny-llama"


def command(name: str) -> click.Command:
    found = cli.get_command(click.Context(cli), name)
    assert found is not None
    return found


def test_parameters_become_the_commands_flags() -> None:
    text = (
        "`fp16` writes fp16 and `dtype` bf16 asks for bf16; choose another `out`, a smaller "
        "`max_shard_size`, or drop `dry_run`"
    )
    assert flag_text(text, command("recover")) == (
        "--fp16 writes fp16 and --dtype bf16 asks for bf16; choose another --out, a smaller "
        "--max-shard-size, or drop --dry-run"
    )


def test_an_inverted_flag_and_an_argument() -> None:
    assert flag_text("`verify` skipped; `input_dir` read", command("convert")) == (
        "--no-verify skipped; --input-dir read"
    )
    assert flag_text("`path` is a folder; `jobs` 2", command("verify")) == (
        "PATH is a folder; --jobs 2"
    )


def test_a_parameter_the_command_lacks_reads_as_a_word() -> None:
    assert flag_text("`lossless` here, `device` there", command("convert")) == (
        "lossless here, device there"
    )
    assert flag_text("`out` and `x_y`", None) == "out and x_y"


def test_json_error_is_one_object_with_the_same_exit_code(tmp_path: Path, capsys) -> None:
    args = [
        "recover",
        "--raw",
        "/nonexistent",
        "--diff",
        "/nonexistent",
        "--out",
        str(tmp_path / "x"),
    ]
    assert _run(args, debug=False) == 1
    human = capsys.readouterr()
    assert _run([*args, "--json"], debug=False) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out) == {
        "error": "/nonexistent: no such file or folder",
        "hint": "Give an HF model folder, a raw Meta LLaMA folder (params.json and "
        "consolidated.*.pth) or a Hub repo id (org/name).",
    }
    assert human.err == "Error: /nonexistent: no such file or folder\n" + (
        json.loads(captured.out)["hint"] + "\n"
    )


def test_json_usage_errors(tmp_path: Path, capsys) -> None:
    assert _run(["verify", "--json"], debug=False) == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": "Missing argument 'PATH'.",
        "hint": None,
    }
    (tmp_path / "sums.md5").write_text("")
    assert (
        _run(
            [
                "verify",
                str(tmp_path),
                "--manifest",
                str(tmp_path / "sums.md5"),
                "--known",
                "zhixi-13b-diff",
                "--json",
            ],
            debug=False,
        )
        == 2
    )
    assert json.loads(capsys.readouterr().out) == {
        "error": "give --manifest or --known, not both",
        "hint": None,
    }


def test_a_bad_option_value_names_the_flag(tmp_path: Path, capsys) -> None:
    args = [
        "recover",
        "--raw",
        str(EXAMPLE / "raw"),
        "--diff",
        str(EXAMPLE / "diff"),
        "--out",
        str(tmp_path / "out"),
        "--max-shard-size",
        "lots",
    ]
    assert _run([*args, "--dry-run"], debug=False) == 1
    assert capsys.readouterr().err == (
        "Error: cannot read --max-shard-size 'lots' as a size\nWrite it like 5GB, 500MB or 2GiB.\n"
    )
    assert _run([*args, "--json"], debug=False) == 1
    assert json.loads(capsys.readouterr().out) == {
        "error": "cannot read --max-shard-size 'lots' as a size",
        "hint": "Write it like 5GB, 500MB or 2GiB.",
    }
    assert list(tmp_path.iterdir()) == []
