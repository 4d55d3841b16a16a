"""The source layer itself: nodes built from nodes, the rounding between steps, the check of a
model that is read and not written, and telling inputs apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import weightkit.hub.cache
from weightkit.engine import identity
from weightkit.errors import ChecksumError, InputError
from weightkit.io.reader import open_checkpoint
from weightkit.io.tensor_info import TensorInfo
from weightkit.manifest import Manifest, ManifestEntry
from weightkit.sources import Node, Source, View
from weightkit.sources.open import open_path, resolve
from weightkit.sources.source import StoredSource, checked, combine, retyped, stored_node


def stored(t: torch.Tensor, dtype: torch.dtype | None = None, multiple: int = 1) -> Node:
    """A tensor read as stored (in `dtype` if given: what a cast view like Meta's reports)."""
    node = stored_node(
        TensorInfo("w", dtype or t.dtype, tuple(t.shape)),
        lambda: t.clone(),
        lambda a, b: t[a:b].clone(),
    )
    node.row_multiple = multiple
    return node


def run(node: Node, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """What the pipeline writes for `node` (computed, then rounded to its dtype)."""
    loaded = node.load() if rows is None else node.load_rows(*rows)
    return node.compute(*loaded).to(node.out.dtype)


def test_a_checkpoint_is_read_as_a_source(tmp_path):
    save_file({"w": torch.ones(2, 2)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"hidden_size": 2}')
    ckpt = open_path(tmp_path)
    assert isinstance(ckpt, StoredSource) and isinstance(ckpt, Source)
    assert not isinstance(open_checkpoint(tmp_path), Source)  # a reader: the source layer's below
    assert (ckpt.label, ckpt.where("w"), ckpt.inputs, ckpt.notes, ckpt.expected) == (
        str(tmp_path),
        str(tmp_path / "model.safetensors"),
        [tmp_path],
        [],
        None,
    )
    assert torch.equal(run(ckpt.node("w")), torch.ones(2, 2))
    assert torch.equal(run(ckpt.node("w"), (1, 2)), torch.ones(1, 2))
    assert ckpt.config() == {"hidden_size": 2}
    out = tmp_path / "out"
    out.mkdir()
    assert [copy(out) for copy in ckpt.side_files()] == [[]]
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_combine_gives_compute_each_parts_value_in_order():
    a, b = torch.arange(12.0).reshape(6, 2), torch.full((6, 2), 0.5)
    out = TensorInfo("w", torch.float32, (6, 2))
    node = combine(
        out,
        [stored(a), stored(b)],
        lambda x, y: x * 10 + y,
        rows=lambda start, stop: [(start, stop), (start, stop)],
    )
    assert node.arity == 2
    assert torch.equal(run(node), a * 10 + b)
    assert torch.equal(run(node, (2, 5)), (a * 10 + b)[2:5])
    # a part that is computed whole makes the result whole; row multiples combine
    whole = stored(b)
    whole.load_rows = None
    assert (
        combine(out, [stored(a), whole], torch.add, rows=lambda s, e: [(s, e)] * 2).load_rows
        is None
    )
    assert combine(out, [stored(a, multiple=2), stored(b, multiple=3)], torch.add).row_multiple == 6


def test_each_step_rounds_to_its_own_dtype():
    """A step that writes fp16 from fp32 weights, read by one that writes bf16: the value is
    rounded to fp16 first, as the first command would have written it."""
    x = torch.tensor([1.0 + 2**-9, 3.14159265, 1e-6, 65519.0])
    step = stored(x, torch.float16)  # stored fp32, the step's dtype fp16 (convert --dtype fp16)
    got = run(retyped(step, TensorInfo("w", torch.bfloat16, (4,))))
    assert torch.equal(got, x.half().bfloat16())
    assert not torch.equal(got, x.bfloat16())  # one rounding would give other bits
    same = retyped(stored(x), TensorInfo("w", torch.float32, (4,)))
    assert same.compute is identity  # nothing to round: the stored tensor streams through


def test_a_checked_model_is_hashed_piece_by_piece_and_refused_on_a_mismatch():
    x = torch.arange(32.0).reshape(8, 4)
    expected = Manifest({"w": ManifestEntry.of(x)})
    entries = Manifest()
    node = checked(stored(x), expected, entries, "the recovered model")
    for rows in ((0, 3), (3, 6), (6, 8)):
        assert torch.equal(run(node, rows), x[rows[0] : rows[1]])
    assert entries.entries == expected.entries
    wrong = checked(stored(x + 1), expected, Manifest(), "the recovered model")
    with pytest.raises(ChecksumError, match="tensor 'w' in the recovered model has sha256"):
        run(wrong)


def test_a_checked_step_refuses_nan_it_made_before_its_hash():
    x = torch.full((4,), 6e4)
    node = combine(TensorInfo("w", torch.float16, (4,)), [stored(x), stored(x)], torch.add)
    with pytest.raises(InputError, match="the result has 4 NaN/Inf value"):
        run(checked(node, Manifest({"w": ManifestEntry.of(x.half())}), Manifest(), "it"))


class Doubled(View):
    """A view whose rows are computed a pair at a time (as q/k rows are, a head at a time)."""

    label = "doubled"
    notes: list[str] = []

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t
        self.infos = open_infos(t)

    def node(self, name: str) -> Node:
        def load_rows(a: int, b: int) -> tuple[torch.Tensor]:
            assert a % 2 == 0 and (b % 2 == 0 or b == self.t.shape[0]), (a, b)
            return (self.t[a:b].clone(),)

        return Node(
            TensorInfo(name, self.t.dtype, tuple(self.t.shape)),
            lambda: (self.t.clone(),),
            lambda x: x * 2,
            load_rows=load_rows,
            row_multiple=2,
        )


def open_infos(t: torch.Tensor) -> dict:
    return {"w": TensorInfo("w", t.dtype, tuple(t.shape), Path("nowhere"))}


def test_a_view_reads_any_rows_though_it_computes_whole_multiples():
    t = torch.arange(7.0)
    view = Doubled(t)
    assert torch.equal(view.read("w"), t * 2)
    for start, stop in ((0, 7), (1, 4), (3, 7), (5, 20)):
        assert torch.equal(view.read_rows("w", start, stop), (t * 2)[start:stop])


# ---------------------------------------------------------------- telling inputs apart


@pytest.mark.parametrize("spec", ["/no/such/model", "./gone", "a/b/c", "org/name@.."])
def test_a_missing_path_that_is_no_hub_id_is_one_message(spec, tmp_path, monkeypatch):
    """Told apart by weightkit.hub.cache.is_hub_spec: neither the Hub nor the cache is asked."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weightkit.hub.cache, "resolve_model", None)  # a call would fail
    with pytest.raises(InputError) as e:
        resolve(spec, role="raw")
    assert str(e.value) == (
        f"{spec}: no such file or folder\nGive an HF model folder, a raw Meta "
        "LLaMA folder (params.json and consolidated.*.pth) or a Hub repo id "
        "(org/name)."
    )
    assert not (tmp_path / "cache").exists()
