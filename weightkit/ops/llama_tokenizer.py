"""Meta's `tokenizer.model` -> HF tokenizer files, with transformers' own conversions.

LLaMA 1/2 ship a sentencepiece model, LLaMA 3 a tiktoken BPE file (base64 token + rank lines)
under the same name; the format is read from the file, not guessed from the version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from weightkit.errors import InputError
from weightkit.ops.llama_params import CONTEXT_LENGTH

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_NAME = "tokenizer.model"
SENTENCEPIECE, TIKTOKEN = "sentencepiece", "tiktoken"
# LLaMA 3's pre-tokenizer split (tiktoken's pat_str in Meta's tokenizer.py)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS_LLAMA3, EOS_LLAMA3, EOT_LLAMA3 = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
# Meta-Llama-3-8B-Instruct's chat template; 3.1/3.2 add tool calls on top of this format
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+")


def find_tokenizer(folder: Path) -> Path | None:
    """tokenizer.model in the model folder (LLaMA 3) or its parent (LLaMA 1/2 downloads)."""
    for candidate in (folder / TOKENIZER_NAME, folder.parent / TOKENIZER_NAME):
        if candidate.is_file():
            return candidate
    return None


def tokenizer_kind(path: Path) -> str:
    """'sentencepiece' or 'tiktoken'; InputError for anything else."""
    with open(path, "rb") as f:
        head = f.read(4096)
    lines = head.split(b"\n")[:-1] or [head]
    if all(_TIKTOKEN_LINE.fullmatch(line.rstrip(b"\r")) for line in lines[:8]):
        return TIKTOKEN
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise InputError(
            f"{path}: unknown tokenizer format: neither a sentencepiece model (LLaMA 1/2) nor a "
            f"tiktoken BPE file (LLaMA 3) ({str(e).splitlines()[0]}; starts with {head[:16]!r})",
            "Download tokenizer.model again, or remove it to convert the weights alone.",
        ) from None
    return SENTENCEPIECE


def tiktoken_size(path: Path) -> int:
    """How many BPE ranks a tiktoken file holds (the ids before the special tokens)."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def llama3_special_tokens(version: str) -> list[str]:
    """The 256 special tokens after the ranks, in id order (3.1 renamed a few reserved ones)."""
    if version == "3":
        named = (
            [BOS_LLAMA3, EOS_LLAMA3]
            + [f"<|reserved_special_token_{i}|>" for i in range(4)]
            + [
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|reserved_special_token_4|>",
                EOT_LLAMA3,
            ]
        )
        first_reserved = 5
    else:
        named = [
            BOS_LLAMA3,
            EOS_LLAMA3,
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|reserved_special_token_2|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            EOT_LLAMA3,
            "<|python_tag|>",
        ]
        first_reserved = 3
    count = 256 - len(named)
    return named + [f"<|reserved_special_token_{first_reserved + i}|>" for i in range(count)]


def convert_tokenizer(
    path: Path, kind: str, version: str, instruct: bool = False
) -> PreTrainedTokenizerBase:
    """The HF tokenizer for `path`, in memory; save it with save_pretrained."""
    if kind == TIKTOKEN:
        return _llama3_tokenizer(path, version, instruct)
    return _sentencepiece_tokenizer(path)


def _sentencepiece_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import LlamaTokenizerFast

    # from_pretrained is the conversion path every transformers version keeps working (5.x
    # builds vocab and merges from the .model itself); a folder of its own keeps it from
    # reading anything else that sits next to the download
    with tempfile.TemporaryDirectory(prefix="weightkit-spm-") as tmp:
        shutil.copyfile(path, Path(tmp) / TOKENIZER_NAME)
        return LlamaTokenizerFast.from_pretrained(
            tmp, legacy=False, add_bos_token=True, add_eos_token=False
        )


def _llama3_tokenizer(path: Path, version: str, instruct: bool) -> PreTrainedTokenizerBase:
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(path), pattern=LLAMA3_PATTERN).converted()
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in llama3_special_tokens(version)]
    )
    bos_id = backend.token_to_id(BOS_LLAMA3)
    # <|begin_of_text|> in front of every sequence, as Meta's tokenizer.encode(bos=True) does
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_LLAMA3} $A",
                pair=f"{BOS_LLAMA3}:0 $A:0 {BOS_LLAMA3}:1 $B:1",
                special_tokens=[(BOS_LLAMA3, bos_id)],
            ),
        ]
    )
    extra = {"chat_template": LLAMA3_CHAT_TEMPLATE} if instruct else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_LLAMA3,
        eos_token=EOT_LLAMA3 if instruct else EOS_LLAMA3,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=CONTEXT_LENGTH[version],
        # the converter asks for True; it would strip spaces before punctuation when decoding
        clean_up_tokenization_spaces=False,
        **extra,
    )
