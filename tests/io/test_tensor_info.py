"""The one tensor record: its element count, bytes and row pieces."""

from __future__ import annotations

import torch

from weightkit.io.tensor_info import TensorInfo, numel


def test_numel_and_nbytes():
    assert [numel(s) for s in ((), (0,), (3,), (2, 3, 4))] == [1, 0, 3, 24]
    t = TensorInfo("w", torch.bfloat16, (10, 4))
    assert (t.numel, t.nbytes, t.file) == (40, 80, None)


def test_row_ranges_keep_multiples_and_the_byte_bound():
    t = TensorInfo("w", torch.float32, (10, 4))  # 16 bytes a row
    assert t.row_ranges(48) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert t.row_ranges(48, multiple=2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert t.row_ranges(1, multiple=4) == [(0, 4), (4, 8), (8, 10)]  # at least `multiple` rows
