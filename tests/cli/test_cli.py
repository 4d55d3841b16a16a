"""The command line: one clear message and a non-zero exit on failure, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from weightkit.cli import _run
from weightkit.ops.diff import diff

# what torch sees on a machine without a GPU, wherever the tests run
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weightkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_command_and_does_not_import_torch():
    code = (
        "import sys\nfrom weightkit.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")
    for name in ("diff", "recover"):
        assert f"  {name} " in out.stdout


def test_help_runs_in_a_bare_interpreter():
    """As the console script of a plain `pip install .` runs it: no site hook (the editable
    install's imports importlib.util) has loaded anything first."""
    code = (
        "import sys\nprint('importlib.util' in sys.modules)\nfrom weightkit.cli import main\n"
        "main(['--help'])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env
    )
    if out.stdout.startswith("True"):
        pytest.skip("this Python loads importlib.util at start; .ci/run's installed run checks")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.startswith("False\nUsage: weightkit [OPTIONS] COMMAND [ARGS]...")


def test_missing_input_is_one_message(tmp_path):
    """Inputs are plain strings (a Hub repo id is not a path): one that is neither says so."""
    r = run(
        "recover", "--raw", "/nonexistent", "--diff", "/nonexistent", "--out", str(tmp_path / "x")
    )
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "Error: /nonexistent: no such file or folder\n"
        "Give an HF model folder, a raw Meta LLaMA folder (params.json and "
        "consolidated.*.pth) or a Hub repo id (org/name).\n"
    )
    assert not (tmp_path / "x").exists()


def test_error_is_one_message_without_traceback(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    diff(raw, tuned, tmp_path / "diff")
    (tmp_path / "out").mkdir()
    r = run(
        "recover",
        "--raw",
        str(raw),
        "--diff",
        str(tmp_path / "diff"),
        "--out",
        str(tmp_path / "out"),
    )
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: output {tmp_path / 'out'} already exists\nPass --overwrite to replace it.\n"
    )
    assert r.stdout == ""
    debug = run(
        "--debug",
        "recover",
        "--raw",
        str(raw),
        "--diff",
        str(tmp_path / "diff"),
        "--out",
        str(tmp_path / "out"),
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_recover_quiet_prints_nothing_and_summary_otherwise(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    d = str(tmp_path / "diff")
    r = run("diff", "--raw", str(raw), "--tuned", str(tuned), "--out", d, "--quiet")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run("recover", "--raw", str(raw), "--diff", d, "--out", str(tmp_path / "out"))
    assert r.returncode == 0
    summary = " ".join(r.stderr.split())
    assert "recover: wrote 21 tensors, 180.86 kB (F16) in 1 file(s) to" in summary
    assert "Checked against the manifest of the tuned model: 21 tensors match exactly." in summary


def test_cuda_without_a_gpu_is_a_clear_error(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    r = run(
        "diff",
        "--raw",
        str(raw),
        "--tuned",
        str(tuned),
        "--out",
        str(tmp_path / "d"),
        "--device",
        "cuda",
        env=NO_GPU,
    )
    assert r.returncode == 1
    assert r.stderr.startswith(
        "Error: --device cuda was asked for, but no CUDA device is available\n"
        "Use --device cpu or auto: the output bytes are the same."
    )
    assert not (tmp_path / "d").exists()


def test_dry_run_checks_and_reports_but_writes_nothing(model_pair, tmp_path):
    raw, tuned = model_pair("llama", torch.float16)
    r = run(
        "diff",
        "--raw",
        str(raw),
        "--tuned",
        str(tuned),
        "--out",
        str(tmp_path / "d"),
        "--dry-run",
        env=NO_GPU,
    )
    assert r.returncode == 0
    text = " ".join(r.stderr.split())
    assert text.startswith(
        f"diff (dry run): inputs check out; 21 tensors, 361.73 kB to write to "
        f"{tmp_path / 'd'} (disk free: "
    )
    assert text.endswith(
        "Largest tensor: lm_head.weight (32.77 kB); memory needed "
        "beyond the program itself: at most 1.63 MB. Nothing was written."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-raw", "llama-tuned"]


def test_dry_run_on_a_gpu_reports_its_memory_too(model_pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU is touched
    monkeypatch.setattr("weightkit.device._started", lambda device: device)
    raw, tuned = model_pair("llama", torch.float16)
    assert (
        _run(
            [
                "diff",
                "--raw",
                str(raw),
                "--tuned",
                str(tuned),
                "--out",
                str(tmp_path / "d"),
                "--dry-run",
            ],
            debug=False,
        )
        == 0
    )
    assert " ".join(capsys.readouterr().err.split()).endswith(
        "at most 1.63 MB; GPU memory: at most 131.07 kB. Nothing was written."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-raw", "llama-tuned"]
