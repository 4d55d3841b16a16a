"""`weightkit convert`: tiny raw Meta checkpoints back to the HF models they were cut from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import file_bytes
from meta_checkpoints import SENTENCE, build_raw, tiktoken_encoding
from safetensors.torch import load_file

from weightkit import engine
from weightkit.errors import ChecksumError, InputError
from weightkit.io.reader import Checkpoint
from weightkit.ops.convert_llama import convert_llama, from_hf_rotary, hf_name, to_hf_rotary
from weightkit.options import WriteOptions

# What transformers' convert_llama_weights_to_hf.py writes for each case's params.json (through
# the installed transformers' LlamaConfig): the arguments it passes, the rest LlamaConfig's
# defaults. One deliberate difference: it always writes "dtype": "float16" (it sets
# model.config.dtype = torch.float16 after loading in bf16); we write the weights' dtype.
COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "pad_token_id": None,
    "pretraining_tp": 1,
    "use_cache": True,
}
LLAMA3_SCALING = {
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3",
}
EXPECTED_CONFIG = {
    "llama1": {
        **COMMON,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float16",
        "intermediate_size": 192,
        "max_position_embeddings": 2048,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "vocab_size": 384,
    },
    "llama2": {
        **COMMON,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "bfloat16",
        "intermediate_size": 256,
        "max_position_embeddings": 4096,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "vocab_size": 384,
    },
    "llama3": {
        **COMMON,
        "bos_token_id": 320,
        "eos_token_id": 321,
        "dtype": "bfloat16",
        "intermediate_size": 256,
        "max_position_embeddings": 8192,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": False,
        "vocab_size": 576,
    },
    "llama3.1": {
        **COMMON,
        "bos_token_id": 320,
        "eos_token_id": 321,
        "dtype": "bfloat16",
        "intermediate_size": 256,
        "max_position_embeddings": 131072,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"factor": 8.0, **LLAMA3_SCALING},
        "tie_word_embeddings": False,
        "vocab_size": 576,
    },
    "llama3.2": {
        **COMMON,
        "bos_token_id": 320,
        "eos_token_id": 321,
        "dtype": "bfloat16",
        "intermediate_size": 256,
        "max_position_embeddings": 131072,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"factor": 32.0, **LLAMA3_SCALING},
        "tie_word_embeddings": True,
        "vocab_size": 576,
    },
}
# tiny models are too small for the dim-based 3.1/3.2 rule; a real 3.1 is detected (see
# test_llama_params), here it is named
VERSION_ARG = {"llama3.1": "3.1"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """raw(case) -> the tiny raw checkpoint, built once per module."""
    built = {}

    def get(name: str):
        if name not in built:
            built[name] = build_raw(tmp_path_factory.mktemp(name.replace(".", "_")), name)
        return built[name]

    return get


def convert(rc, out: Path, **kw):
    kw.setdefault("llama_version", VERSION_ARG.get(rc.name, "auto"))
    return convert_llama(rc.input_dir, out, model_size=rc.model_size, **kw)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("case", ["llama1", "llama2", "llama3", "llama3.1", "llama3.2"])
def test_reproduces_the_hf_model_bit_for_bit(raw, tmp_path, case):
    from transformers import AutoModelForCausalLM, LlamaConfig

    rc = raw(case)
    result = convert(rc, tmp_path / "out")
    got, want = tensors(tmp_path / "out"), tensors(rc.hf_dir)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype == rc.case.dtype, name
        assert torch.equal(got[name], want[name]), name
    assert result.tensors == len(want)

    # weightkit writes config.json itself, in the rope_theta/rope_scaling layout; the installed
    # transformers reads it into exactly the config its own converter would have saved
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "transformers_version" not in written and "rope_parameters" not in written
    LlamaConfig.from_pretrained(tmp_path / "out").save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    resaved.pop("transformers_version")
    assert resaved == EXPECTED_CONFIG[case]
    config = written
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert {
        k: generation[k]
        for k in ("do_sample", "temperature", "top_p", "bos_token_id", "eos_token_id")
    } == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.9,
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    }

    # loaded the same way (rotary tables rebuilt in fp32), the two must compute the same
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    original = AutoModelForCausalLM.from_pretrained(rc.hf_dir).eval()
    ids = torch.tensor([[5, 17, 99, 200, 3, 42]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


@pytest.mark.parametrize("case", ["llama1", "llama2"])
def test_sentencepiece_tokenizer_encodes_like_the_original(raw, tmp_path, case):
    import sentencepiece
    from transformers import AutoTokenizer

    rc = raw(case)
    convert(rc, tmp_path / "out")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(rc.tokenizer))
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok(SENTENCE).input_ids == [1] + sp.encode(SENTENCE)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (
        "<s>",
        1,
        "</s>",
        2,
    )
    assert len(tok) == 384
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == rc.tokenizer.read_bytes()


@pytest.mark.parametrize("case", ["llama3", "llama3.1", "llama3.2"])
def test_tiktoken_tokenizer_encodes_like_the_original(raw, tmp_path, case):
    from transformers import AutoTokenizer

    rc = raw(case)
    convert(rc, tmp_path / "out")
    enc = tiktoken_encoding(rc.tokenizer, rc.case.version)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok(SENTENCE).input_ids == [320] + enc.encode(SENTENCE)
    assert tok.decode(tok(SENTENCE, add_special_tokens=False).input_ids) == SENTENCE
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (
        "<|begin_of_text|>",
        320,
        "<|end_of_text|>",
        321,
    )
    assert len(tok) == 576
    assert tok.convert_tokens_to_ids("<|eot_id|>") == 329
    assert tok.convert_tokens_to_ids("<|start_header_id|>") == 326
    last = (
        "<|reserved_special_token_250|>" if case == "llama3" else "<|reserved_special_token_247|>"
    )
    assert tok.convert_tokens_to_ids(last) == 575
    special = "<|eot_id|>"
    assert tok(special, add_special_tokens=False).input_ids == [329]  # one token, not split
    assert not (tmp_path / "out" / "tokenizer.model").exists()


def test_instruct_uses_the_chat_stop_tokens(raw, tmp_path):
    from transformers import AutoTokenizer

    rc = raw("llama3.1")
    convert(rc, tmp_path / "out", instruct=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (320, [321, 328, 329])
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tok.eos_token, tok.eos_token_id) == ("<|eot_id|>", 329)
    assert tok.convert_tokens_to_ids("<|eom_id|>") == 328
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_bf16_is_the_original_cast_to_bf16(raw, tmp_path):
    rc = raw("llama1")  # fp16 weights, as LLaMA 1 shipped them
    convert(rc, tmp_path / "out", dtype="bf16")
    got, want = tensors(tmp_path / "out"), tensors(rc.hf_dir)
    for name, w in want.items():
        assert w.dtype == torch.float16
        assert got[name].dtype == torch.bfloat16
        assert torch.equal(got[name], w.to(torch.bfloat16)), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bin_output_in_several_shards_loads(raw, tmp_path):
    from transformers import AutoModelForCausalLM

    rc = raw("llama2")
    result = convert(
        rc, tmp_path / "out", options=WriteOptions(format="bin", max_shard_size="60KB")
    )
    assert len([f for f in result.files if f.endswith(".bin")]) > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    want = tensors(rc.hf_dir)
    for name, w in model.state_dict().items():
        assert torch.equal(w, want[name]), name


def test_each_piece_is_read_once(raw, tmp_path, monkeypatch):
    """The join reads each tensor from each shard once, replicated norms from shard 0 only."""
    reads: list[tuple[str, str]] = []
    original = Checkpoint.read

    def counting(self, name):
        reads.append((self.path.name, name))
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "read", counting)
    rc = raw("llama2")
    convert(rc, tmp_path / "out")
    assert len(reads) == len(set(reads))
    norms = {name for f, name in reads if "norm" in name}
    assert {f for f, name in reads if "norm" in name} == {"consolidated.00.pth"}
    assert len(norms) == 5
    shard1 = {name for f, name in reads if f == "consolidated.01.pth"}
    assert len(shard1) == 2 + 7 * 2  # embeddings, output, 7 matrices per layer


@pytest.mark.parametrize("case", ["llama1", "llama3", "llama3.2"])
def test_tensors_streamed_in_pieces_give_the_same_bytes(
    raw, tmp_path, small_pieces, monkeypatch, case
):
    """Row pieces across column-split (LLaMA 1) and row-split (LLaMA 3) embeddings, the tied
    check (3.2) and the q/k permutation, which keeps each piece to whole heads."""
    rc = raw(case)
    convert(rc, tmp_path / "pieces")
    q = [rows for name, rows in small_pieces if name == "model.layers.0.self_attn.q_proj.weight"]
    assert q == [(0, 16), (16, 32), (32, 48), (48, 64)]  # 4 heads of 16 rows
    embed = [rows for name, rows in small_pieces if name == "model.embed_tokens.weight"]
    vocab = EXPECTED_CONFIG[case]["vocab_size"]
    per = 700 // (64 * rc.case.dtype.itemsize)
    assert embed == [(a, min(a + per, vocab)) for a in range(0, vocab, per)]
    monkeypatch.setattr(engine, "_PIECE", 2**40)
    convert(rc, tmp_path / "whole")
    assert file_bytes(tmp_path / "pieces") == file_bytes(tmp_path / "whole")


def test_rotary_permutation_round_trips():
    w = torch.arange(32 * 8, dtype=torch.float32).reshape(32, 8)
    assert torch.equal(from_hf_rotary(to_hf_rotary(w, 4), 4), w)
    # within a head, Meta interleaves the rotary pairs (0,1),(2,3)..; HF keeps halves apart
    assert to_hf_rotary(w, 4)[:4, 0].tolist() == [0, 16, 32, 48]


def test_names_follow_the_transformers_converter():
    assert hf_name("layers.3.feed_forward.w1.weight") == (
        "model.layers.3.mlp.gate_proj.weight",
        "rows",
        None,
    )
    assert hf_name("layers.0.feed_forward.w2.weight")[0] == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("layers.0.feed_forward.w3.weight")[0] == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("layers.1.attention.wk.weight") == (
        "model.layers.1.self_attn.k_proj.weight",
        "rows",
        "k",
    )
    assert hf_name("layers.1.attention.wo.weight")[1] == "cols"
    assert hf_name("layers.0.attention_norm.weight")[0] == "model.layers.0.input_layernorm.weight"
    assert (
        hf_name("layers.0.ffn_norm.weight")[0] == "model.layers.0.post_attention_layernorm.weight"
    )
    assert hf_name("output.weight") == ("lm_head.weight", "rows", None)
    assert hf_name("rope.freqs") is None
    with pytest.raises(InputError, match="layers.0.attention.wq.bias"):
        hf_name("layers.0.attention.wq.bias")


# ------------------------------------------------------------------ errors, before any output


def copy_raw(rc, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the raw download: (what to pass as input_dir, the size folder)."""
    dest = tmp_path / "raw"
    shutil.copytree(rc.folder.parent if rc.model_size else rc.folder, dest)
    return dest, dest / rc.model_size if rc.model_size else dest


def rewrite_shard(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def fails(input_dir: Path, out: Path, match: str, error=InputError, **kw) -> None:
    with pytest.raises(error, match=match):
        convert_llama(input_dir, out, **kw)
    assert not out.exists()


def test_missing_params_json(raw, tmp_path):
    rc = raw("llama2")
    input_dir, folder = copy_raw(rc, tmp_path)
    (folder / "params.json").unlink()
    fails(input_dir, tmp_path / "out", r"missing params\.json", model_size=rc.model_size)
    fails(folder.parent, tmp_path / "out", r"missing params\.json")


def test_parent_folder_without_model_size_names_the_choices(raw, tmp_path):
    rc = raw("llama1")
    with pytest.raises(InputError) as e:
        convert_llama(rc.input_dir, tmp_path / "out")
    assert "`model_size` with one of: 13B" in str(e.value)


def test_shard_count_must_match_the_model_size(raw, tmp_path):
    rc = raw("llama1")
    input_dir, folder = copy_raw(rc, tmp_path)
    folder.rename(input_dir / "7B")
    fails(
        input_dir,
        tmp_path / "out",
        r"2 consolidated\.\*\.pth files, but LLaMA 7B is shipped "
        r"in 1",
        model_size="7B",
    )


def test_a_missing_shard(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    (folder / "consolidated.01.pth").rename(folder / "consolidated.02.pth")
    fails(input_dir, tmp_path / "out", r"consolidated\.01\.pth is missing")


def test_shards_with_different_keys(raw, tmp_path):
    rc = raw("llama2")
    input_dir, folder = copy_raw(rc, tmp_path)
    rewrite_shard(
        folder / "consolidated.01.pth", lambda s: s.pop("layers.1.feed_forward.w3.weight")
    )
    fails(
        input_dir,
        tmp_path / "out",
        r"'layers\.1\.feed_forward\.w3\.weight' is in "
        r"consolidated\.00\.pth but not in consolidated\.01\.pth",
        model_size=rc.model_size,
    )


def test_shards_with_different_shapes(raw, tmp_path):
    rc = raw("llama2")
    input_dir, folder = copy_raw(rc, tmp_path)

    def shrink(state):
        state["layers.0.feed_forward.w1.weight"] = state["layers.0.feed_forward.w1.weight"][:100]

    rewrite_shard(folder / "consolidated.01.pth", shrink)
    fails(
        input_dir,
        tmp_path / "out",
        r"'layers\.0\.feed_forward\.w1\.weight' is \(128, 64\) "
        r"torch\.bfloat16 in consolidated\.00\.pth but \(100, 64\) torch\.bfloat16 in "
        r"consolidated\.01\.pth",
        model_size=rc.model_size,
    )


def test_weights_that_do_not_fit_params_json(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    params = json.loads((folder / "params.json").read_text())
    params["ffn_dim_multiplier"] = 2.0
    (folder / "params.json").write_text(json.dumps(params))
    fails(
        input_dir,
        tmp_path / "out",
        r"'layers\.0\.feed_forward\.w1\.weight': 2 shards of "
        r"\(128, 64\) join to \(256, 64\), but params\.json .* needs \(384, 64\)",
    )


def test_an_unexpected_tensor(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    for shard in ("consolidated.00.pth", "consolidated.01.pth"):
        rewrite_shard(
            folder / shard, lambda s: s.__setitem__("layers.0.attention.wq.bias", torch.zeros(32))
        )
    fails(
        input_dir,
        tmp_path / "out",
        r"consolidated\.00\.pth: unexpected tensor "
        r"'layers\.0\.attention\.wq\.bias'",
    )


def test_an_unknown_tokenizer_format(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    (folder / "tokenizer.model").write_bytes(b"\x00\x01 not a tokenizer \xff" * 10)
    fails(input_dir, tmp_path / "out", r"tokenizer\.model: unknown tokenizer format")


def test_a_tokenizer_from_another_llama(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    shutil.copyfile(raw("llama2").tokenizer, folder / "tokenizer.model")
    fails(
        input_dir,
        tmp_path / "out",
        r"looks like LLaMA 3 .* but tokenizer\.model is a "
        r"sentencepiece file",
    )


def test_checklist_is_verified_first(raw, tmp_path):
    rc = raw("llama2")
    input_dir, folder = copy_raw(rc, tmp_path)
    checklist = folder / "checklist.chk"
    lines = checklist.read_text().splitlines()
    lines[1] = "0" * 32 + lines[1][32:]  # the first shard's md5
    checklist.write_text("\n".join(lines) + "\n")
    fails(
        input_dir,
        tmp_path / "out",
        r"consolidated\.00\.pth is mismatch",
        ChecksumError,
        model_size=rc.model_size,
    )
    result = convert_llama(input_dir, tmp_path / "out", model_size=rc.model_size, verify=False)
    assert not any("checklist" in n for n in result.notes)


def test_without_a_tokenizer_the_weights_still_convert(raw, tmp_path):
    rc = raw("llama3")
    input_dir, folder = copy_raw(rc, tmp_path)
    (folder / "tokenizer.model").unlink()
    result = convert_llama(input_dir, tmp_path / "out")
    assert any("without a tokenizer" in n for n in result.notes)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 576
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    # transformers is imported for the tokenizer only: config.json is weightkit's own
    code = (
        "import sys; from weightkit.ops.convert_llama import convert_llama; "
        f"convert_llama({str(input_dir)!r}, {str(tmp_path / 'again')!r}); "
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_cli(raw, tmp_path, capsys):
    from weightkit.cli import _run

    rc = raw("llama1")
    args = [
        "convert",
        "--input-dir",
        str(rc.input_dir),
        "--model-size",
        "13B",
        "--out",
        str(tmp_path / "out"),
        "--dtype",
        "bf16",
    ]
    assert _run(args, debug=False) == 0
    err = capsys.readouterr().err
    assert "Detected LLaMA 1" in err and "checklist.chk" in err
    assert tensors(tmp_path / "out")["lm_head.weight"].dtype == torch.bfloat16
    assert _run(args, debug=False) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        _run(
            [
                "convert",
                "--input-dir",
                str(rc.input_dir),
                "--model-size",
                "7B",
                "--out",
                str(tmp_path / "other"),
            ],
            debug=False,
        )
        == 1
    )
    assert "missing params.json" in capsys.readouterr().err
