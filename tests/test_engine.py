"""How the pipeline cuts a job into row pieces."""

from __future__ import annotations

import torch

from weightkit.engine import Job, identity
from weightkit.io.tensor_info import TensorInfo
from weightkit.options import WriteOptions


def job(shape: tuple[int, ...], rows: bool = True, multiple: int = 1) -> Job:
    t = torch.zeros(shape)
    return Job(
        TensorInfo("w", torch.float32, shape),
        lambda: (t,),
        identity,
        load_rows=(lambda a, b: (t[a:b],)) if rows else None,
        row_multiple=multiple,
    )


def test_pieces_hold_at_most_the_limit_and_cover_every_row():
    pieces = job((10, 4)).pieces(48)  # rows of 16 bytes: 3 to a piece
    assert [p.rows for p in pieces] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [p.nbytes for p in pieces] == [48, 48, 48, 16]
    assert [p.shape for p in pieces] == [(3, 4), (3, 4), (3, 4), (1, 4)]
    assert [(p.first, p.last) for p in pieces] == [
        (True, False),
        (False, False),
        (False, False),
        (False, True),
    ]


def test_pieces_keep_row_multiples_whole_even_beyond_the_limit():
    assert [p.rows for p in job((10, 4), multiple=4).pieces(48)] == [(0, 4), (4, 8), (8, 10)]
    assert [p.rows for p in job((12, 4), multiple=2).pieces(100)] == [(0, 6), (6, 12)]


def test_small_scalar_and_whole_only_jobs_are_one_piece():
    for j, limit in ((job((10, 4)), 160), (job(()), 1), (job((10, 4), rows=False), 16)):
        (piece,) = j.pieces(limit)
        assert piece.rows is None and piece.shape == j.out.shape and piece.first and piece.last


def test_the_finite_check_finds_inf_and_nan_in_any_block(monkeypatch):
    from weightkit import engine

    monkeypatch.setattr(engine, "_CHECK_BLOCK", 100)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.linspace(-3e4, 3e4, 1000).to(dtype).reshape(10, 100)
        assert engine._all_finite_fast(x)
        for bad in (float("inf"), float("-inf"), float("nan")):
            y = x.clone()
            y[2, 50] = bad  # the third block
            assert not engine._all_finite_fast(y), (dtype, bad)


def test_the_finite_check_reads_the_bits_of_small_floats():
    import pytest

    from weightkit import engine
    from weightkit.errors import InputError

    finite = (torch.ones(4),)
    for dtype, nan in (
        (torch.float8_e4m3fn, 0xFF),
        (torch.float8_e5m2, 0x7C),
        (torch.float8_e4m3fnuz, 0x80),
        (torch.float8_e8m0fnu, 0xFF),
    ):
        x = torch.tensor([1.0, 2.0, 0.5, 4.0]).to(dtype)
        engine.refuse_new_non_finite("w", x, finite)  # finite: passes
        x.view(torch.uint8)[2] = nan
        with pytest.raises(InputError, match="the result has 1 NaN/Inf value"):
            engine.refuse_new_non_finite("w", x, finite)
        engine.refuse_new_non_finite("w", x, (x.clone(),))  # the input had it already
    packed = torch.full((4,), 0xFF, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    assert engine._all_finite_fast(packed)  # E2M1 has no NaN or Inf
    engine.refuse_new_non_finite("w", packed, finite)


NAN16 = {"payload": 0x7E01, "negative": -0x0200, "signalling": 0x7D00}  # 0xFE00 as int16


def test_nans_in_computed_results_are_canonical(tmp_path):
    """NaN signs and payloads differ between CPUs (inf - inf gives 0xFFC00000 here) and GPUs
    (canonical NaNs): every NaN a job computes is written as 0x7E00, so a diff made on one
    device recovers with the same bytes on the other."""
    from safetensors.torch import save_file

    from weightkit.ops.recover import recover

    raw = torch.tensor([1.0, 2.0, 3.0, float("inf"), 0.5], dtype=torch.float16)
    raw[:3] = torch.tensor(list(NAN16.values()), dtype=torch.int16).view(torch.float16)
    diff = torch.tensor([0.25, 0.25, 0.25, float("-inf"), 0.25])
    for name, t in (("raw", raw), ("diff", diff)):
        (tmp_path / name).mkdir()
        save_file({"w": t.reshape(5, 1)}, tmp_path / name / "model.safetensors")
    recover(
        tmp_path / "raw",
        tmp_path / "diff",
        tmp_path / "out",
        dtype="fp16",
        options=WriteOptions(device="cpu"),
    )
    from conftest import tensors

    got = tensors(tmp_path / "out")["w"].view(-1)
    assert got.view(torch.int16).tolist() == [0x7E00] * 4 + [0x3A00]  # 0.5 + 0.25 = 0.75


def test_a_diff_of_nans_recovers_to_what_it_predicts(model_pair, tmp_path):
    """The diff's target manifest predicts the canonical NaNs recover writes, so recovering a
    tuned model whose NaN is negative is accepted as within rounding, not refused."""
    from conftest import tensors
    from safetensors.torch import load_file, save_file

    from weightkit.ops.diff import diff
    from weightkit.ops.recover import recover

    raw, tuned = model_pair("llama", torch.float16)
    state = load_file(tuned / "model.safetensors")
    name = "model.norm.weight"
    state[name][:1] = torch.tensor([NAN16["negative"]], dtype=torch.int16).view(torch.float16)
    save_file(state, tuned / "model.safetensors", metadata={"format": "pt"})
    diff(raw, tuned, tmp_path / "diff", options=WriteOptions(device="cpu"))
    r = recover(raw, tmp_path / "diff", tmp_path / "out", options=WriteOptions(device="cpu"))
    assert r.within_rounding == [name] and r.checked == r.tensors
    got = tensors(tmp_path / "out")[name]
    assert got.view(torch.int16)[0].item() == 0x7E00
    assert torch.equal(got[1:], state[name][1:])


def run_on(device: torch.device, jobs: list[Job], folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from weightkit.engine import run_jobs
    from weightkit.io.writer import ShardWriter

    folder.mkdir()
    writer = ShardWriter(folder, [j.out for j in jobs])
    run_jobs(jobs, writer, device)
    writer.close()
    return load_file(folder / "model.safetensors")


def double(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return x * 2


def test_data_movement_and_cpu_only_jobs_never_touch_the_device(tmp_path):
    """On the meta device any real work would fail: identity jobs (convert, merge-lora's
    untouched tensors) and cpu_only jobs (merges) run on the CPU whatever the device is."""
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    jobs = [
        Job(TensorInfo("copied", torch.float32, (4, 3)), lambda: (t.clone(),), identity),
        Job(TensorInfo("cast", torch.float16, (4, 3)), lambda: (t.clone(),), identity),
        Job(
            TensorInfo("merged", torch.float32, (4, 3)),
            lambda: (t.clone(),),
            lambda x: x + 1,
            cpu_only=True,
        ),
    ]
    meta = torch.device("meta")
    assert [j.uses(meta) for j in jobs] == [False, False, False]
    got = run_on(meta, jobs, tmp_path / "out")
    assert torch.equal(got["copied"], t) and torch.equal(got["cast"], t.half())
    assert torch.equal(got["merged"], t + 1)


def test_a_piece_that_does_not_fit_the_device_runs_on_the_cpu(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    job = Job(TensorInfo("w", torch.float16, (4, 3)), lambda: (t.clone(),), double)
    assert job.uses(torch.device("meta"))
    got = run_on(torch.device("meta"), [job], tmp_path / "out")
    assert torch.equal(got["w"], (t * 2).half())


def test_a_cast_keeps_the_direct_casts_bits_also_for_nans(tmp_path):
    """Copied tensors are not canonicalised: a cast (convert --dtype) of a tensor holding NaNs
    takes torch's direct cast, as before; without NaNs, the faster path through fp32."""
    x = torch.linspace(-2, 2, 3 * 2**16).half().reshape(-1, 64)
    y = x.clone()
    y.view(-1)[:3] = torch.tensor(list(NAN16.values()), dtype=torch.int16).view(torch.float16)
    jobs = [
        Job(TensorInfo(n, torch.bfloat16, tuple(t.shape)), lambda t=t: (t.clone(),), identity)
        for n, t in (("finite", x), ("nans", y))
    ]
    got = run_on(torch.device("cpu"), jobs, tmp_path / "out")
    for name, t in (("finite", x), ("nans", y)):
        assert torch.equal(got[name].view(torch.int16), t.to(torch.bfloat16).view(torch.int16))
