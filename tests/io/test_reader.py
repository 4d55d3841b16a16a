"""Checkpoint reading: layouts, lazy listing, and damaged or hostile files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import save_bin_shards
from safetensors.torch import save_file

from weightkit.errors import InputError
from weightkit.io.reader import open_checkpoint

STATE = {
    "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "b.weight": torch.arange(5, dtype=torch.float16),
    "c.weight": torch.ones(2, 3, dtype=torch.bfloat16),
}


def test_safetensors_and_bin_read_the_same_tensors(tmp_path):
    save_file(STATE, tmp_path / "model.safetensors")
    save_bin_shards(STATE, tmp_path / "bin", 2)
    for ckpt in (
        open_checkpoint(tmp_path / "model.safetensors"),
        open_checkpoint(tmp_path / "bin"),
    ):
        assert sorted(ckpt.names()) == sorted(STATE)
        assert ckpt.info("a.weight").shape == (3, 4)
        assert ckpt.info("c.weight").dtype == torch.bfloat16
        assert ckpt.total_bytes == 48 + 10 + 12
        for name, t in STATE.items():
            assert torch.equal(ckpt.read(name), t)


def test_folder_of_pt_files_is_found_and_read(tmp_path):
    torch.save({"a.weight": STATE["a.weight"]}, tmp_path / "part-1.pt")
    torch.save({"b.weight": STATE["b.weight"]}, tmp_path / "part-2.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    ckpt = open_checkpoint(tmp_path)
    assert [f.name for f in ckpt.files] == ["part-1.pt", "part-2.pt"]
    assert ckpt.names() == ["a.weight", "b.weight"]
    assert torch.equal(ckpt.read("b.weight"), STATE["b.weight"])


def test_folder_without_weights_names_every_suffix(tmp_path):
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(InputError) as e:
        open_checkpoint(tmp_path)
    assert e.value.message == (
        f"{tmp_path}: no weight files (*.safetensors, *.bin, *.pth, *.pt) in this folder"
    )


def test_bin_views_and_shared_storage_are_read_correctly(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"full": base, "row": base[2], "t": base.t()}, tmp_path / "x.bin")
    ckpt = open_checkpoint(tmp_path / "x.bin")
    assert torch.equal(ckpt.read("row"), base[2])
    assert torch.equal(ckpt.read("t"), base.t())


def test_read_rows_reads_only_those_rows(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"full": base, "row": base[2], "t": base.t()}, tmp_path / "x.bin")
    save_file({"full": base, "v": base[0].clone()}, tmp_path / "x.safetensors")
    for ckpt in (open_checkpoint(tmp_path / "x.bin"), open_checkpoint(tmp_path / "x.safetensors")):
        assert torch.equal(ckpt.read_rows("full", 1, 3), base[1:3])
        assert ckpt.read_rows("full", 4, 4).shape == (0, 6)
    bin_file = open_checkpoint(tmp_path / "x.bin")
    assert torch.equal(bin_file.read_rows("row", 2, 5), base[2, 2:5])  # a view into a storage
    assert torch.equal(bin_file.read_rows("t", 1, 4), base.t()[1:4])  # not row-major: cut


def test_manifest_entry_hashed_in_pieces_equals_the_whole_tensors(tmp_path):
    from weightkit.manifest import ManifestEntry

    save_file(STATE, tmp_path / "model.safetensors")
    save_bin_shards(STATE, tmp_path / "bin", 2)
    for ckpt in (
        open_checkpoint(tmp_path / "model.safetensors"),
        open_checkpoint(tmp_path / "bin"),
    ):
        for name, t in STATE.items():
            whole = ManifestEntry.of(t)
            assert ckpt.manifest_entry(name, piece_bytes=10) == whole  # rows of 16, 2, 6 bytes
            assert ckpt.manifest_entry(name) == whole


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(InputError) as e:
        open_checkpoint(tmp_path / "evil.bin")
    assert "refused to load: the pickle inside is not plain tensors" in str(e.value)
    assert "weightkit never executes pickled code" in str(e.value)
    assert not marker.exists()


def test_truncated_safetensors_names_the_tensor(tmp_path):
    save_file(STATE, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(InputError, match=r"file is truncated: tensor '.*' ends at byte"):
        open_checkpoint(tmp_path)


def test_garbled_safetensors_header(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"x" * 8)
    with pytest.raises(InputError, match="garbled safetensors header"):
        open_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError, match=r"garbled safetensors header \(says 1000000000000"):
        open_checkpoint(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    save_bin_shards(STATE, tmp_path, 2)
    os.remove(tmp_path / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(InputError) as e:
        open_checkpoint(tmp_path)
    assert str(e.value).startswith(
        f"{tmp_path / 'pytorch_model.bin.index.json'}: names shard "
        f"pytorch_model-00002-of-00002.bin which is not in {tmp_path}"
    )


def test_index_that_is_not_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(InputError, match="not a valid index file"):
        open_checkpoint(tmp_path)


def test_tensor_stored_twice(tmp_path):
    save_file({"x": torch.zeros(2)}, tmp_path / "a.safetensors")
    save_file({"x": torch.ones(2)}, tmp_path / "b.safetensors")
    with pytest.raises(
        InputError,
        match=r"tensor 'x' is stored twice \(a.safetensors and "
        r"b.safetensors\)",
    ):
        open_checkpoint(tmp_path)


def test_listing_reads_no_tensor_data(tmp_path, monkeypatch):
    save_file(STATE, tmp_path / "model.safetensors")
    reads = []
    real_open = open

    def counting_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith(".safetensors"):
            reads.append(Path(path))
        return f

    monkeypatch.setattr("builtins.open", counting_open)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.total_bytes == 70 and len(reads) == 1  # the header only
    json.dumps([str(i.shape) for i in ckpt.infos.values()])


@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2"])
def test_safetensors_dtype_torch_cannot_hold_is_named(tmp_path, dtype):
    header = json.dumps({"w": {"dtype": dtype, "shape": [4], "data_offsets": [0, 3]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 3)
    with pytest.raises(InputError) as e:
        open_checkpoint(tmp_path)
    assert str(e.value).startswith(
        f"{path}: tensor 'w' is stored as {dtype}, a dtype of the "
        f"safetensors format that torch {torch.__version__} cannot "
        "hold\n"
    )
