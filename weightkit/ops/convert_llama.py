"""`weightkit convert`: Meta's raw LLaMA (consolidated.*.pth + params.json + tokenizer.model) to
an HF checkpoint, one tensor at a time.

Meta splits every matrix over its model-parallel shards. For each output tensor the job reads that
tensor from each shard, joins the pieces and permutes q/k into HF's rotary layout; nothing else is
held, so memory stays at a few tensors whatever the model size. Names and joins follow the
transformers converter (`convert_llama_weights_to_hf.py`); the dtype is kept unless asked.

`MetaView` is that conversion as a source (weightkit.sources): `convert` writes it, and the
other commands read a raw Meta folder through it, converted in the same pass, never written.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from weightkit.checksums import (
    CHECKLIST_NAME,
    EXTRA,
    MISMATCH,
    MISSING,
    CheckOptions,
    verify_folder,
)
from weightkit.dtypes import output_dtype, parse_dtype, short_name
from weightkit.engine import identity
from weightkit.errors import ChecksumError, InputError
from weightkit.io.buffers import empty_tensor, release
from weightkit.io.output import copy_side_files
from weightkit.io.reader import Checkpoint, open_checkpoint
from weightkit.io.tensor_info import TensorInfo
from weightkit.ops import llama_params, llama_tokenizer
from weightkit.ops.llama_params import LlamaParams
from weightkit.options import WriteOptions
from weightkit.results import WriteResult
from weightkit.sources.source import Node, SideFiles, View
from weightkit.sources.write import check_output, write_source

if TYPE_CHECKING:  # transformers is imported only when a tokenizer is converted
    from transformers import PreTrainedTokenizerBase

PARAMS_NAME = "params.json"
TOKENIZER_CHECKLIST_NAME = "tokenizer_checklist.chk"
_SHARD = re.compile(r"consolidated\.(\d+)\.pth")

# how the model-parallel pieces of a tensor are joined
ROWS, COLS, FIRST, EMBED = "rows", "cols", "first", "embed"  # EMBED: rows or cols, by shape
# Meta name inside layers.N -> (HF name inside model.layers.N, join, rotary permute)
LAYER_NAMES = {
    "attention.wq.weight": ("self_attn.q_proj.weight", ROWS, "q"),
    "attention.wk.weight": ("self_attn.k_proj.weight", ROWS, "k"),
    "attention.wv.weight": ("self_attn.v_proj.weight", ROWS, None),
    "attention.wo.weight": ("self_attn.o_proj.weight", COLS, None),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", ROWS, None),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", ROWS, None),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", COLS, None),
    "attention_norm.weight": ("input_layernorm.weight", FIRST, None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", FIRST, None),
}
TOP_NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", EMBED),
    "norm.weight": ("model.norm.weight", FIRST),
    "output.weight": ("lm_head.weight", ROWS),
}
IGNORED = {"rope.freqs"}  # LLaMA 1's precomputed rotary table; HF computes its own
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Part:
    """One HF tensor: where its pieces are and how they become it."""

    raw: str  # Meta name, the same in every shard
    name: str  # HF name
    join: str  # ROWS / COLS / FIRST
    rotary_heads: int | None = None  # permute q/k for HF's rotary layout with this many heads


def hf_name(raw: str) -> tuple[str, str, str | None] | None:
    """(HF name, join, 'q'/'k'/None) for a Meta tensor name; None for a tensor HF does not keep.

    Raises InputError for a name that is not LLaMA's.
    """
    if raw in IGNORED:
        return None
    if raw in TOP_NAMES:
        name, join = TOP_NAMES[raw]
        return name, join, None
    m = _LAYER_KEY.fullmatch(raw)
    if m and m.group(2) in LAYER_NAMES:
        name, join, rotary = LAYER_NAMES[m.group(2)]
        return f"model.layers.{m.group(1)}.{name}", join, rotary
    raise InputError(
        f"unexpected tensor {raw!r}: not a Meta LLaMA weight name",
        "Only Meta's consolidated.*.pth LLaMA checkpoints can be converted.",
    )


def to_hf_rotary(w: torch.Tensor, n_heads: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Meta's interleaved rotary pairs -> HF's rotate_half layout (the converter's permute),
    into `out` when given."""
    rows, cols = w.shape
    permuted = w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2)
    if out is None:
        return permuted.reshape(rows, cols)
    out.view(n_heads, 2, rows // n_heads // 2, cols).copy_(permuted)
    return out


def from_hf_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of to_hf_rotary."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def convert_llama(
    input_dir: str | Path,
    out: str | Path,
    *,
    model_size: str | None = None,
    llama_version: str = "auto",
    dtype: str = "auto",
    instruct: bool = False,
    verify: bool = True,
    options: WriteOptions | None = None,
) -> WriteResult:
    """Convert Meta's raw LLaMA in `input_dir` (the size folder, or its parent + `model_size`);
    prints nothing, returns the result.

    dtype "auto" keeps the raw weights' dtype; "bf16" gives what the transformers converter
    writes. Every input is checked before anything is written; with `verify`, checklist.chk (and
    tokenizer_checklist.chk) are checked too. `options`: how the checkpoint is written (on the
    CPU whatever `options.device` says: it is all data movement).
    """
    options = options if options is not None else WriteOptions()
    forced = None if dtype == "auto" else parse_dtype(dtype)
    view = open_meta(
        input_dir,
        model_size=model_size,
        llama_version=llama_version,
        dtype=forced,
        instruct=instruct,
    )
    # a wrong `out` fails now, not after minutes of hashing
    check_output(out, view.inputs, options, view.total_bytes)
    if verify:
        view.verify(options.progress)
    return write_source(
        view,
        out,
        title="convert",
        options=options.replace(device="cpu"),
        notes=[f"Cast to {short_name(forced)} as asked."] if forced is not None else [],
    )


def open_meta(
    input_dir: str | Path,
    *,
    model_size: str | None = None,
    llama_version: str = "auto",
    dtype: torch.dtype | None = None,
    instruct: bool = False,
) -> MetaView:
    """The raw Meta LLaMA in `input_dir` (or `input_dir/model_size`) as the HF checkpoint
    convert writes, in `dtype` (None: the raw weights' own). Everything is checked from
    headers; no tensor is read."""
    folder = find_model_folder(Path(input_dir), model_size)
    params = llama_params.read_params(folder / PARAMS_NAME)
    shards = [open_checkpoint(f) for f in shard_files(folder, model_size)]
    check_shards(shards)
    found = llama_tokenizer.find_tokenizer(folder)
    # tokenizer.model and its format, where there is one
    tok = None if found is None else (found, llama_tokenizer.tokenizer_kind(found))
    notes: list[str] = []
    version = _version(llama_version, params, None if tok is None else tok[1], notes)
    if instruct and not version.startswith("3"):
        notes.append("`instruct` changes nothing for LLaMA 1/2 (stop token </s> either way).")
    tied = version == "3.2"
    parts = plan_parts(shards, params, tied)
    shapes = joined_shapes(parts, shards, params)
    vocab_size = shapes["model.embed_tokens.weight"][0]
    config = llama_params.hf_config(params, version, vocab_size, instruct)
    tokenizer = None
    if tok is not None:
        tok_path, tok_kind = tok
        check_tokenizer_size(tok_path, tok_kind, vocab_size)
        tokenizer = Tokenizer(tok_path, tok_kind, version, instruct, vocab_size)
    else:
        notes.append(
            "No tokenizer.model next to the weights or in the folder above: wrote the "
            "model without a tokenizer."
        )
    return MetaView(folder, shards, parts, shapes, dtype, tied, config, tokenizer, notes)


@dataclass(frozen=True)
class Tokenizer:
    """Meta's tokenizer.model and what converting it needs."""

    path: Path
    kind: str
    version: str
    instruct: bool
    vocab_size: int


class MetaView(View):
    """A raw Meta LLaMA folder read as the HF checkpoint `convert` writes, a tensor at a time:
    HF names, model-parallel shards joined, q/k permuted for HF's rotary layout, in the asked
    dtype; with the config.json, generation_config.json and tokenizer files convert makes.
    Nothing is written: `convert` writes this view, and other commands read it as their input.
    """

    def __init__(
        self,
        folder: Path,
        shards: list[Checkpoint],
        parts: list[Part],
        shapes: dict[str, tuple[int, ...]],
        dtype: torch.dtype | None,
        tied: bool,
        config: dict,
        tokenizer: Tokenizer | None,
        notes: list[str],
    ) -> None:
        self.folder = folder
        self.label = str(folder)
        self.shards = shards
        self.parts = {p.name: p for p in parts}
        self.tied = tied
        self.hf_config = config
        self.tokenizer = tokenizer
        self.notes = notes
        self.infos = {}
        for p in parts:
            raw_dtype = shards[0].info(p.raw).dtype
            self.infos[p.name] = TensorInfo(
                p.name, output_dtype(raw_dtype, dtype), shapes[p.name], folder
            )
        self.dtype_name = str(self.infos[parts[0].name].dtype).removeprefix("torch.")  # embeddings'

    def node(self, name: str) -> Node:
        return _node(self.parts[name], self.shards, self.infos[name], self.tied)

    @property
    def inputs(self) -> list[Path]:
        return [self.folder, *([self.tokenizer.path] if self.tokenizer else [])]

    def verify(self, progress: bool | None = None) -> None:
        """Check Meta's md5 lists (checklist.chk, tokenizer_checklist.chk), where the download
        has them; ChecksumError on a mismatch. What they found goes into the notes; `progress`
        as WriteOptions.progress says."""
        tok = self.tokenizer
        self.notes += verify_checklists(self.folder, None if tok is None else tok.path, progress)

    def config(self) -> dict:
        return llama_params.config_json(self.hf_config, self.dtype_name)

    def side_files(self) -> list[SideFiles]:
        tok = self.tokenizer
        prepared = None
        if tok is not None:
            # importing transformers and converting the tokenizer take seconds: done in a thread
            # from now on, while the weights stream (that work is I/O and torch, which free the GIL)
            background = ThreadPoolExecutor(1, thread_name_prefix="weightkit-tokenizer")
            prepared = background.submit(_tokenizer, tok)
            background.shutdown(wait=False)

        def write(dest: Path) -> list[str]:
            # made in a folder of their own, then copied where an earlier input has not put a
            # file of that name: a diff's tokenizer files win over the raw model's, as they do
            # when recover copies them from a converted folder
            with tempfile.TemporaryDirectory(prefix="weightkit-meta-") as tmp:
                made = Path(tmp)
                llama_params.write_config_files(made, self.hf_config, self.dtype_name)
                notes: list[str] = []
                if tok is not None and prepared is not None:
                    tokenizer, notes = prepared.result()
                    tokenizer.save_pretrained(made)
                    if tok.kind == llama_tokenizer.SENTENCEPIECE:
                        # sentencepiece users (slow tokenizer, llama.cpp) read the original model
                        shutil.copyfile(tok.path, made / llama_tokenizer.TOKENIZER_NAME)
                copy_side_files([made], dest)
            return notes

        return [write]


def _version(asked: str, params: LlamaParams, tok_kind: str | None, notes: list[str]) -> str:
    if asked == "auto":
        version, why = llama_params.detect_version(params, tok_kind)
        notes.append(f"Detected LLaMA {version} ({why}).")
        return version
    if asked not in llama_params.VERSIONS:
        raise InputError(
            f"unknown LLaMA version {asked!r}",
            f"Use auto or one of: {', '.join(llama_params.VERSIONS)}.",
        )
    return asked


# ------------------------------------------------------------------ finding and checking inputs


def find_model_folder(root: Path, model_size: str | None) -> Path:
    """The folder holding params.json: `root` itself, or `root/model_size`."""
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if (root / PARAMS_NAME).is_file():
        return root
    if model_size and (root / model_size / PARAMS_NAME).is_file():
        return root / model_size
    sizes = sorted(p.name for p in root.iterdir() if (p / PARAMS_NAME).is_file())
    where = f"{root}" + (f" or {root / model_size}" if model_size else "")
    hint = "Point `input_dir` at the folder with params.json and consolidated.*.pth"
    hint += f", or pass `model_size` with one of: {', '.join(sizes)}." if sizes else "."
    raise InputError(f"{where}: missing params.json (no Meta LLaMA checkpoint here)", hint)


def shard_files(folder: Path, model_size: str | None) -> list[Path]:
    """consolidated.00.pth, .01, ... in order; their count checked against the model size."""
    found = {}
    for p in folder.iterdir():
        m = _SHARD.fullmatch(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    if not found:
        raise InputError(f"{folder}: no consolidated.*.pth files next to params.json")
    if sorted(found) != list(range(len(found))):
        missing = sorted(set(range(max(found) + 1)) - set(found))
        raise InputError(
            f"{folder}: model-parallel shard consolidated.{missing[0]:02d}.pth is "
            f"missing (found {len(found)} shards)",
            "Download it again.",
        )
    expected = llama_params.expected_shards(model_size) if model_size else None
    if expected is not None and expected != len(found):
        raise InputError(
            f"{folder}: {len(found)} consolidated.*.pth files, but LLaMA {model_size} is "
            f"shipped in {expected}",
            "Download the missing shards, or check `model_size`.",
        )
    return [found[i] for i in range(len(found))]


def check_shards(shards: list[Checkpoint]) -> None:
    """Every shard holds the same tensor names, each with one shape and dtype in every shard."""
    first = shards[0]
    for other in shards[1:]:
        missing = [n for n in first.names() if n not in other]
        extra = [n for n in other.names() if n not in first]
        if missing or extra:
            name, has, lacks = (missing[0], first, other) if missing else (extra[0], other, first)
            raise InputError(
                f"shards differ: tensor {name!r} is in {has.path.name} but not in "
                f"{lacks.path.name} ({len(missing) + len(extra)} names differ)",
                "The shards come from different models or a damaged download.",
            )
        for name in first.names():
            a, b = first.info(name), other.info(name)
            if a.shape != b.shape or a.dtype != b.dtype:
                raise InputError(
                    f"shards differ: tensor {name!r} is {tuple(a.shape)} {a.dtype} in "
                    f"{first.path.name} but {tuple(b.shape)} {b.dtype} in {other.path.name}",
                    "The shards come from different models or a damaged download.",
                )


def plan_parts(shards: list[Checkpoint], params: LlamaParams, tied: bool) -> list[Part]:
    """The output tensors in HF's order; every Meta name accounted for."""
    found: dict[str, Part] = {}
    for raw in shards[0].names():
        try:
            mapped = hf_name(raw)
        except InputError as e:
            raise InputError(f"{shards[0].path}: {e.message}", e.hint) from None
        if mapped is None:
            continue
        name, join, rotary = mapped
        if join == EMBED:
            join = embed_join(shards, raw, params.dim)
        heads = {"q": params.n_heads, "k": params.n_kv_heads, None: None}[rotary]
        found[name] = Part(raw, name, join, heads)
    order = ["model.embed_tokens.weight"]
    for i in range(params.n_layers):
        order += [f"model.layers.{i}.{name}" for name, _, _ in LAYER_NAMES.values()]
    order += ["model.norm.weight"] + ([] if tied else ["lm_head.weight"])
    missing = [n for n in order if n not in found]
    unexpected = [p.raw for n, p in found.items() if n not in order and n != "lm_head.weight"]
    if unexpected:
        raise InputError(
            f"{shards[0].path}: unexpected tensor {unexpected[0]!r}: params.json "
            f"says {params.n_layers} layers"
        )
    if missing:
        raw = _raw_name(missing[0])
        raise InputError(
            f"{shards[0].path}: no tensor {raw!r} (needed for {missing[0]}; "
            f"{len(missing)} missing)",
            "The checkpoint is incomplete.",
        )
    return [found[n] for n in order]


def _raw_name(hf: str) -> str:
    for raw, (name, _) in TOP_NAMES.items():
        if name == hf:
            return raw
    i, rest = hf.removeprefix("model.layers.").split(".", 1)
    return next(f"layers.{i}.{raw}" for raw, (n, _, _) in LAYER_NAMES.items() if n == rest)


def joined_shapes(
    parts: list[Part], shards: list[Checkpoint], params: LlamaParams
) -> dict[str, tuple[int, ...]]:
    """Each output's shape, checked against what params.json says it must be."""
    n = len(shards)
    dim, kv, inter = params.dim, params.kv_dim, params.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {}
    for p in parts:
        piece = tuple(shards[0].info(p.raw).shape)
        shape = list(piece)
        if p.join in (ROWS, COLS) and len(piece) != 2:
            raise InputError(
                f"{shards[0].path}: tensor {p.raw!r} has shape {piece}, expected a matrix"
            )
        if p.join == ROWS:
            shape[0] *= n
        elif p.join == COLS:
            shape[1] *= n
        shapes[p.name] = tuple(shape)
    vocab = shapes["model.embed_tokens.weight"][0]
    if params.vocab_size is not None and params.vocab_size != vocab:
        raise InputError(
            f"{shards[0].path}: tok_embeddings.weight has {vocab} rows over the "
            f"shards, params.json says vocab_size {params.vocab_size}"
        )
    expected = {  # HF name, without model.layers.N., -> its shape
        "self_attn.q_proj.weight": (dim, dim),
        "self_attn.k_proj.weight": (kv, dim),
        "self_attn.v_proj.weight": (kv, dim),
        "self_attn.o_proj.weight": (dim, dim),
        "mlp.gate_proj.weight": (inter, dim),
        "mlp.up_proj.weight": (inter, dim),
        "mlp.down_proj.weight": (dim, inter),
        "input_layernorm.weight": (dim,),
        "post_attention_layernorm.weight": (dim,),
        "model.norm.weight": (dim,),
        "model.embed_tokens.weight": (vocab, dim),
        "lm_head.weight": (vocab, dim),
    }
    for p in parts:
        key = re.sub(r"^model\.layers\.\d+\.", "", p.name)
        if shapes[p.name] != expected[key]:
            what = (
                f"{n} shards of {tuple(shards[0].info(p.raw).shape)} join to {shapes[p.name]}"
                if p.join != FIRST
                else f"it is {shapes[p.name]}"
            )
            raise InputError(
                f"tensor {p.raw!r}: {what}, but params.json (dim {dim}, n_heads "
                f"{params.n_heads}, n_kv_heads {params.n_kv_heads}, intermediate size {inter}) "
                f"needs {expected[key]} for {p.name}",
                "params.json does not describe these weights, or shards are missing.",
            )
    return shapes


def embed_join(shards: list[Checkpoint], raw: str, dim: int) -> str:
    """LLaMA 1/2 split the embeddings by columns, LLaMA 3 by vocabulary rows; the shape says."""
    piece, n = tuple(shards[0].info(raw).shape), len(shards)
    if n == 1 or (len(piece) == 2 and piece[1] == dim):
        return ROWS
    if len(piece) == 2 and piece[1] * n == dim:
        return COLS
    raise InputError(
        f"{shards[0].path}: tensor {raw!r} has shape {piece}; with {n} shards of a "
        f"dim-{dim} model it must have {dim} or {dim // n} columns"
    )


def verify_checklists(
    folder: Path, tok_path: Path | None, progress: bool | None = None
) -> list[str]:
    """Check Meta's md5 lists, if the download has them; ChecksumError on a mismatch."""
    lists = [folder / CHECKLIST_NAME]
    if tok_path is not None:
        lists.append(tok_path.parent / TOKENIZER_CHECKLIST_NAME)
    notes = []
    for checklist in lists:
        if not checklist.is_file():
            continue
        report = verify_folder(
            checklist.parent, CheckOptions(manifest=checklist, progress=progress)
        )
        bad = [r for r in report.rows if r.verdict in (MISMATCH, MISSING)]
        if bad:
            raise ChecksumError(
                f"{checklist}: {bad[0].name} is {bad[0].verdict.lower()}"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + "; nothing was converted",
                "Download the damaged files again, or pass `verify` to convert anyway.",
            )
        checked = sum(r.verdict != EXTRA for r in report.rows)
        notes.append(f"{checklist.name}: the {checked} listed file(s) match.")
    return notes


def check_tokenizer_size(path: Path, kind: str, vocab_size: int) -> None:
    """A LLaMA 3 tokenizer must have the embeddings' rows (sentencepiece ones may differ)."""
    if kind != llama_tokenizer.TIKTOKEN:
        return
    ranks = llama_tokenizer.tiktoken_size(path)
    if ranks + llama_params.LLAMA3_SPECIAL_TOKENS != vocab_size:
        raise InputError(
            f"{path}: {ranks} tokens + {llama_params.LLAMA3_SPECIAL_TOKENS} special tokens "
            f"do not match the {vocab_size} rows of tok_embeddings.weight",
            "tokenizer.model belongs to another model.",
        )


def _tokenizer(t: Tokenizer) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """The converted tokenizer and the notes about it."""
    tokenizer = llama_tokenizer.convert_tokenizer(t.path, t.kind, t.version, t.instruct)
    notes = []
    if len(tokenizer) != t.vocab_size:
        notes.append(
            f"The tokenizer has {len(tokenizer)} tokens, the embeddings {t.vocab_size} "
            "rows; config.json follows the embeddings."
        )
    notes.append(f"Converted the {t.kind} tokenizer.")
    return tokenizer, notes


# ------------------------------------------------------------------ the jobs


def _node(p: Part, shards: list[Checkpoint], info: TensorInfo, tied: bool) -> Node:
    shape = info.shape
    check_tied = tied and p.name == "model.embed_tokens.weight" and "output.weight" in shards[0]
    head_rows = shape[0] // p.rotary_heads if p.rotary_heads else 1  # pieces keep heads whole

    def load(rows: tuple[int, int] | None = None) -> tuple[torch.Tensor]:
        # all the work is data movement, done here in the reader thread into pooled buffers
        joined = read_joined(shards, p.raw, p.join, rows)
        if check_tied and not torch.equal(joined, read_joined(shards, "output.weight", ROWS, rows)):
            raise InputError(
                "output.weight differs from tok_embeddings.weight, so this is not a "
                "model with tied embeddings (LLaMA 3.2 1B/3B)",
                "Pass the right `llama_version` (3.1?).",
            )
        if p.rotary_heads:
            permuted = to_hf_rotary(
                joined, joined.shape[0] // head_rows, out=empty_tensor(joined.shape, joined.dtype)
            )
            release(joined)
            joined = permuted
        return (joined,)

    return Node(
        info,
        load,
        identity,
        load_rows=lambda start, stop: load((start, stop)),
        row_multiple=head_rows,
    )


def read_joined(
    shards: list[Checkpoint], raw: str, join: str, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """One tensor from every shard, concatenated (with `rows`, only its rows [start, stop));
    replicated tensors from shard 0 only.

    Each piece is copied into place as soon as it is read, so at most one piece is alive
    besides the result (torch.cat would hold all of them and the result).
    """
    if join == FIRST or len(shards) == 1:
        return shards[0].read(raw) if rows is None else shards[0].read_rows(raw, *rows)
    info = shards[0].info(raw)
    size = info.shape[0] if join == ROWS else info.shape[1]  # of each shard, along the join
    total = size * len(shards) if join == ROWS else info.shape[0]
    start, stop = rows if rows is not None else (0, total)
    shape = (
        (stop - start, *info.shape[1:])
        if join == ROWS
        else (stop - start, size * len(shards), *info.shape[2:])
    )
    joined = empty_tensor(shape, info.dtype)
    for i, shard in enumerate(shards):
        a, b = (max(start, i * size), min(stop, (i + 1) * size)) if join == ROWS else (start, stop)
        if a >= b:
            continue
        offset = i * size if join == ROWS else 0
        piece = shard.read(raw) if rows is None else shard.read_rows(raw, a - offset, b - offset)
        if join == ROWS:
            joined[a - start : b - start].copy_(piece)
        else:
            joined.narrow(1, i * size, size).copy_(piece)
        release(piece)
    return joined
