"""A weight file that holds something else (the HTML page of an expired download link, a Git LFS
pointer, a legacy pickle, a JSON error body) is named as such by every command that reads weights:
recover, merge-lora (base and adapter), convert and verify. One message, exit code 1, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from test_bad_inputs import NAMES, fingerprint, run

from weightkit.cli import _run

HTML = (
    b"<!DOCTYPE html>\n<html>\n  <head><title>403 Forbidden</title></head>\n"
    b"  <body><h1>403 Forbidden</h1>Request has expired</body>\n</html>\n"
)
FAILED_DOWNLOAD = (
    ": a failed download (an expired or wrong link, a login page, a missing file) "
    "saves the server's reply under the file's name Download the file again (with "
    "a fresh link if the old one has expired)."
)
HTML_SAYS = "an HTML page (titled '403 Forbidden'), not {expected}" + FAILED_DOWNLOAD
S3_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>"
)
XML_SAYS = (
    "an XML document ('<Error><Code>AccessDenied</Code><Message>Request has "
    "expired...'), not {expected}" + FAILED_DOWNLOAD
)
LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\noid sha256:"
    + b"ab" * 32
    + b"\nsize 26953594576\n"
)
LFS_SAYS = (
    "a Git LFS pointer file, not {expected}: the repository was cloned without git-lfs, "
    "so the weights were never downloaded Run `git lfs install` and `git lfs pull` in "
    "the clone, or download the file again."
)
SAFETENSORS, TORCH_ZIP = "a safetensors file", "a PyTorch zip checkpoint"


def state() -> dict[str, torch.Tensor]:
    return {NAMES[0]: torch.ones(4, 4, dtype=torch.float16), NAMES[1]: torch.ones(4)}


def model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    save_file(state(), folder / "model.safetensors")
    return folder


def test_recover_names_an_html_page_saved_as_the_raw_model(capsys, tmp_path):
    raw, diff = model(tmp_path / "raw"), model(tmp_path / "diff")
    (raw / "model.safetensors").write_bytes(HTML)
    before = fingerprint(raw, diff)
    code, err = run(
        capsys, "recover", "--raw", str(raw), "--diff", str(diff), "--out", str(tmp_path / "out")
    )
    assert (code, err) == (
        1,
        f"Error: {raw / 'model.safetensors'}: " + HTML_SAYS.format(expected=SAFETENSORS),
    )
    assert fingerprint(raw, diff) == before and not (tmp_path / "out").exists()


def test_recover_names_a_git_lfs_pointer_as_the_diff(capsys, tmp_path):
    raw, diff = model(tmp_path / "raw"), tmp_path / "diff"
    diff.mkdir()
    (diff / "pytorch_model.bin").write_bytes(LFS_POINTER)
    code, err = run(
        capsys, "recover", "--raw", str(raw), "--diff", str(diff), "--out", str(tmp_path / "out")
    )
    assert (code, err) == (
        1,
        f"Error: {diff / 'pytorch_model.bin'}: " + LFS_SAYS.format(expected=TORCH_ZIP),
    )
    assert not (tmp_path / "out").exists()


def adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["up_proj"]})
    )
    return folder


def merge_lora(capsys, base: Path, lora: Path, out: Path) -> tuple[int, str]:
    return run(capsys, "merge-lora", "--base", str(base), "--lora", str(lora), "--out", str(out))


def test_merge_lora_names_an_html_page_saved_as_the_base(capsys, tmp_path):
    base, lora = model(tmp_path / "base"), adapter(tmp_path / "lora")
    (base / "model.safetensors").write_bytes(HTML)
    save_file({}, lora / "adapter_model.safetensors")
    code, err = merge_lora(capsys, base, lora, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {base / 'model.safetensors'}: " + HTML_SAYS.format(expected=SAFETENSORS),
    )
    assert not (tmp_path / "out").exists()


def test_merge_lora_names_an_html_page_and_a_legacy_pickle_as_the_adapter(capsys, tmp_path):
    base, lora = model(tmp_path / "base"), adapter(tmp_path / "lora")
    (lora / "adapter_model.safetensors").write_bytes(HTML)
    code, err = merge_lora(capsys, base, lora, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {lora / 'adapter_model.safetensors'}: " + HTML_SAYS.format(expected=SAFETENSORS),
    )
    (lora / "adapter_model.safetensors").unlink()
    torch.save(
        {"base_model.model.up_proj.lora_A.weight": torch.ones(2, 4)},
        lora / "adapter_model.bin",
        _use_new_zipfile_serialization=False,
    )
    code, err = merge_lora(capsys, base, lora, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {lora / 'adapter_model.bin'}: a legacy torch checkpoint "
        "(a bare pickle, as torch<1.6 saved them), not a PyTorch zip "
        "checkpoint: weightkit will not unpickle it, as unpickling can run "
        "code Re-save it as a zip checkpoint with torch>=1.6 (torch.save("
        "torch.load(path, weights_only=True), path)), or get a safetensors "
        "copy.",
    )
    assert not (tmp_path / "out").exists()


def test_convert_names_the_xml_error_of_an_expired_meta_link(capsys, tmp_path):
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    (folder / "params.json").write_text(
        json.dumps(
            {
                "dim": 64,
                "multiple_of": 64,
                "n_heads": 4,
                "n_layers": 2,
                "norm_eps": 1e-05,
                "vocab_size": -1,
            }
        )
    )
    (folder / "consolidated.00.pth").write_bytes(S3_ERROR)
    code, err = run(capsys, "convert", "--input-dir", str(folder), "--out", str(tmp_path / "out"))
    assert (code, err) == (
        1,
        f"Error: {folder / 'consolidated.00.pth'}: " + XML_SAYS.format(expected=TORCH_ZIP),
    )
    assert not (tmp_path / "out").exists()


def test_verify_against_a_tensor_manifest_names_a_json_error_body(capsys, tmp_path):
    raw, diff = model(tmp_path / "raw"), model(tmp_path / "diff")
    out = tmp_path / "out"
    assert (
        _run(
            ["--quiet", "recover", "--raw", str(raw), "--diff", str(diff), "--out", str(out)],
            debug=False,
        )
        == 0
    )
    assert (out / "weightkit.manifest.json").is_file()
    (out / "model.safetensors").write_bytes(
        b'{"error":"Repository Not Found for url: https://huggingface.co/api/models/x/y."}'
    )
    code, err = run(capsys, "verify", str(out))
    assert (code, err) == (
        1,
        f'Error: {out / "model.safetensors"}: JSON text (\'{{"error":'
        "\"Repository Not Found for url: https://huggingface....'), not a "
        "safetensors file" + FAILED_DOWNLOAD,
    )


def test_json_inputs_that_are_error_pages_are_named(capsys, tmp_path):
    """Meta's expired links turn params.json into the same error page as the weights, and it is
    read first; an adapter_config.json fetched from a wrong URL is an HTML page."""
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    (folder / "params.json").write_bytes(S3_ERROR)
    (folder / "consolidated.00.pth").write_bytes(S3_ERROR)
    code, err = run(capsys, "convert", "--input-dir", str(folder), "--out", str(tmp_path / "out"))
    assert (code, err) == (
        1,
        f"Error: {folder / 'params.json'}: " + XML_SAYS.format(expected="a JSON file"),
    )
    base, lora = model(tmp_path / "base"), tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_bytes(HTML)
    code, err = merge_lora(capsys, base, lora, tmp_path / "out")
    assert (code, err) == (
        1,
        f"Error: {lora / 'adapter_config.json'}: " + HTML_SAYS.format(expected="a JSON file"),
    )
    assert not (tmp_path / "out").exists()
