"""Pairing two checkpoints from their listings: a lossless diff's reader is one side, and every
mismatch is one message naming the tensor, both shapes or dtypes, and both files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightkit.errors import InputError
from weightkit.io.lossless_diff import LosslessDiffReader
from weightkit.io.reader import open_checkpoint
from weightkit.ops.diff import diff
from weightkit.ops.pairing import Listed, pair_checkpoints
from weightkit.sources.source import Source


def test_a_lossless_diff_reader_is_paired_by_its_listing(model_pair, tmp_path):
    # the reader is no Source (its tensors are compressed payloads, it has no nodes): pairing
    # declares what it reads of each side, which the reader has, instead of Source
    raw, tuned = model_pair("llama", torch.float16, extra_vocab=1)
    diff(raw, tuned, tmp_path / "diff", lossless=True)
    packed = LosslessDiffReader(tmp_path / "diff")
    assert isinstance(packed, Listed) and not isinstance(packed, Source)
    pairing = pair_checkpoints(open_checkpoint(raw), packed, "diff")
    assert [p.name for p in pairing.pairs] == list(packed.infos)
    assert {p.name: p.extra_rows for p in pairing.pairs if p.extra_rows} == {
        "model.embed_tokens.weight": 1,
        "lm_head.weight": 1,
    }
    assert pairing.notes() == [
        "lm_head.weight: vocabulary extended from 128 to 129 rows; the 1 new rows are the "
        "diff's own.",
        "model.embed_tokens.weight: vocabulary extended from 128 to 129 rows; the 1 new rows "
        "are the diff's own.",
    ]


def _save(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize(
    "tuned_tensors, message, hint",
    [
        (
            {"a": torch.zeros(2, 3), "b": torch.zeros(2)},
            "tensor 'b' is in the tuned model ({tuned}/model.safetensors) but not in the raw model "
            "({raw})",
            "Check that `raw` is the base model this tuned model was made against.",
        ),
        (
            {"a": torch.zeros(3, 2)},
            "tensor 'a': shape [3, 2] in the tuned model ({tuned}/model.safetensors) does not fit "
            "shape [2, 3] in the raw model ({raw}/model.safetensors)",
            "The tuned model was made against a different base model; check `raw`.",
        ),
    ],
    ids=["extra-tensor", "other-shape"],
)
def test_a_mismatch_is_refused_naming_the_parameter(tmp_path, tuned_tensors, message, hint):
    raw = _save(tmp_path / "raw", {"a": torch.zeros(2, 3)})
    tuned = _save(tmp_path / "tuned", tuned_tensors)
    with pytest.raises(InputError) as e:
        pair_checkpoints(open_checkpoint(raw), open_checkpoint(tuned), "tuned model")
    assert (e.value.message, e.value.hint) == (message.format(raw=raw, tuned=tuned), hint)
