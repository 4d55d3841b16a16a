"""Shard planning, exact safetensors bytes, .bin files torch can load, atomic output folders."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from weightkit.errors import OutputError
from weightkit.io.output import OutputFolder
from weightkit.io.tensor_info import TensorInfo
from weightkit.io.writer import ShardWriter, plan_shards


def plan_of(state):
    return [TensorInfo(n, t.dtype, tuple(t.shape)) for n, t in state.items()]


STATE = {
    "b": torch.arange(6, dtype=torch.float16).reshape(2, 3),
    "a": torch.tensor([1.5, -2.0], dtype=torch.float32),
}


def test_plan_shards_is_greedy_in_order():
    plan = [TensorInfo(str(i), torch.float32, (n,)) for i, n in enumerate([10, 10, 15, 5, 30])]
    shards = plan_shards(plan, 80)
    assert [[t.name for t in s] for s in shards] == [["0", "1"], ["2", "3"], ["4"]]


def test_single_safetensors_file_bytes(tmp_path):
    w = ShardWriter(tmp_path, plan_of(STATE))
    for n, t in STATE.items():
        w.write(n, t)
    assert [p.name for p in w.close()] == ["model.safetensors"]
    data = (tmp_path / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert header == {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    assert n % 8 == 0
    assert data[8 + n :] == STATE["b"].numpy().tobytes() + STATE["a"].numpy().tobytes()
    loaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], STATE[k]) for k in STATE)


def test_sharded_bin_with_index(tmp_path):
    w = ShardWriter(tmp_path, plan_of(STATE), fmt="bin", max_shard_size=12)
    for n, t in STATE.items():
        w.write(n, t)
    names = [p.name for p in w.close()]
    assert names == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]
    index = json.loads((tmp_path / "pytorch_model.bin.index.json").read_text())
    assert index == {
        "metadata": {"total_size": 20},
        "weight_map": {
            "a": "pytorch_model-00002-of-00002.bin",
            "b": "pytorch_model-00001-of-00002.bin",
        },
    }
    b = torch.load(tmp_path / names[0], weights_only=True, mmap=True)["b"]
    assert b.dtype == torch.float16 and torch.equal(b, STATE["b"])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_tensor_written_in_row_pieces_gives_the_same_file(tmp_path, fmt):
    w = ShardWriter(tmp_path / "pieces", plan_of(STATE), fmt=fmt)
    (tmp_path / "pieces").mkdir()
    b = STATE["b"]
    w.write("b", b[:1], (0, 1))
    w.write("b", b[1:], (1, 2))
    w.write("a", STATE["a"])
    w.close()
    (tmp_path / "whole").mkdir()
    w = ShardWriter(tmp_path / "whole", plan_of(STATE), fmt=fmt)
    for n, t in STATE.items():
        w.write(n, t)
    w.close()
    (name,) = [p.name for p in (tmp_path / "whole").iterdir()]
    assert (tmp_path / "pieces" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_pieces_out_of_order_are_refused(tmp_path):
    w = ShardWriter(tmp_path, plan_of(STATE))
    w.write("b", STATE["b"][:1], (0, 1))
    with pytest.raises(
        RuntimeError,
        match=r"writer got a \(2,\) torch.float32, planned b "
        r"\(2, 3\) torch.float16 from row 1",
    ):
        w.write("a", STATE["a"])
    with pytest.raises(
        RuntimeError,
        match=r"writer got b rows 0..1 \(1, 3\) torch.float16, "
        r"planned b \(2, 3\) torch.float16 from row 1",
    ):
        w.write("b", STATE["b"][1:], (0, 1))


def test_output_folder_appears_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), OutputFolder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with OutputFolder(out) as tmp:
        (tmp / "x").write_text("done")
    assert (out / "x").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_refusals(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        OutputFolder(tmp_path / "in")
    with pytest.raises(OutputError, match="overlaps the input"):
        OutputFolder(tmp_path / "in" / "sub", inputs=[tmp_path / "in"])
    with pytest.raises(OutputError, match="not enough disk space"):
        OutputFolder(tmp_path / "big", needed_bytes=10**18)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_every_safetensors_dtype_is_written_and_read_back_bit_for_bit(tmp_path, fmt):
    """U16/U32/U64, the 8-bit floats, packed fp4, complex: safetensors and torch.load read what
    weightkit wrote, and weightkit reads what safetensors wrote, with the same bytes."""
    from dtype_samples import OTHER_DTYPES, byte_values, sample
    from safetensors.torch import save_file

    from weightkit.io.reader import open_checkpoint

    state = {f"t.{name}": sample(d, (3, 4), i) for i, (name, d) in enumerate(OTHER_DTYPES.items())}
    w = ShardWriter(tmp_path, plan_of(state), fmt=fmt)
    for n, t in state.items():
        w.write(n, t)
    (path,) = w.close()
    if fmt == "safetensors":
        (n,) = struct.unpack("<Q", path.read_bytes()[:8])
        header = json.loads(path.read_bytes()[8 : 8 + n])
        assert {k: e["dtype"] for k, e in header.items() if k != "__metadata__"} == {
            f"t.{name}": name for name in OTHER_DTYPES
        }
        assert header["t.F4"]["shape"] == [3, 8]  # the format counts 4-bit values
        others = load_file(path)
    else:
        others = torch.load(path, weights_only=True)
        save_file(state, tmp_path / "by-safetensors.safetensors")
        ours = open_checkpoint(tmp_path / "by-safetensors.safetensors")
        assert all(
            ours.info(n).dtype == t.dtype
            and ours.info(n).shape == t.shape
            and byte_values(ours.read(n)) == byte_values(t)
            for n, t in state.items()
        )
    ckpt = open_checkpoint(path)
    for n, t in state.items():
        assert others[n].dtype == t.dtype and others[n].shape == t.shape, n
        assert byte_values(others[n]) == byte_values(t) == byte_values(ckpt.read(n)), n
