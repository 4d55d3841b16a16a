"""How the pipeline cuts a job into row pieces."""

from __future__ import annotations

import torch

from weightkit.io.writer import PlannedTensor
from weightkit.pipeline import Job, identity


def job(shape: tuple[int, ...], rows: bool = True, multiple: int = 1) -> Job:
    t = torch.zeros(shape)
    return Job(PlannedTensor("w", torch.float32, shape), lambda: (t,), identity,
               load_rows=(lambda a, b: (t[a:b],)) if rows else None, row_multiple=multiple)


def test_pieces_hold_at_most_the_limit_and_cover_every_row():
    pieces = job((10, 4)).pieces(48)  # rows of 16 bytes: 3 to a piece
    assert [p.rows for p in pieces] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [p.nbytes for p in pieces] == [48, 48, 48, 16]
    assert [p.shape for p in pieces] == [(3, 4), (3, 4), (3, 4), (1, 4)]
    assert [(p.first, p.last) for p in pieces] == [(True, False), (False, False),
                                                  (False, False), (False, True)]


def test_pieces_keep_row_multiples_whole_even_beyond_the_limit():
    assert [p.rows for p in job((10, 4), multiple=4).pieces(48)] == [(0, 4), (4, 8), (8, 10)]
    assert [p.rows for p in job((12, 4), multiple=2).pieces(100)] == [(0, 6), (6, 12)]


def test_small_scalar_and_whole_only_jobs_are_one_piece():
    for j, limit in ((job((10, 4)), 160), (job(()), 1), (job((10, 4), rows=False), 16)):
        (piece,) = j.pieces(limit)
        assert piece.rows is None and piece.shape == j.out.shape and piece.first and piece.last


def test_the_finite_check_finds_inf_and_nan_in_any_block(monkeypatch):
    from weightkit import pipeline

    monkeypatch.setattr(pipeline, "_CHECK_BLOCK", 100)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.linspace(-3e4, 3e4, 1000).to(dtype).reshape(10, 100)
        assert pipeline._all_finite_fast(x)
        for bad in (float("inf"), float("-inf"), float("nan")):
            y = x.clone()
            y[2, 50] = bad  # the third block
            assert not pipeline._all_finite_fast(y), (dtype, bad)


def test_the_finite_check_reads_the_bits_of_small_floats():
    import pytest

    from weightkit import pipeline
    from weightkit.errors import InputError

    finite = (torch.ones(4),)
    for dtype, nan in ((torch.float8_e4m3fn, 0xFF), (torch.float8_e5m2, 0x7C),
                       (torch.float8_e4m3fnuz, 0x80), (torch.float8_e8m0fnu, 0xFF)):
        x = torch.tensor([1.0, 2.0, 0.5, 4.0]).to(dtype)
        pipeline._refuse_new_non_finite("w", x, finite)  # finite: passes
        x.view(torch.uint8)[2] = nan
        with pytest.raises(InputError, match="the result has 1 NaN/Inf value"):
            pipeline._refuse_new_non_finite("w", x, finite)
        pipeline._refuse_new_non_finite("w", x, (x.clone(),))  # the input had it already
    packed = torch.full((4,), 0xFF, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    assert pipeline._all_finite_fast(packed)  # E2M1 has no NaN or Inf
    pipeline._refuse_new_non_finite("w", packed, finite)
