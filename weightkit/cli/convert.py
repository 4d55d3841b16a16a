"""weightkit convert --input-dir RAW --out OUT"""

from __future__ import annotations

from typing import Any

import click

from weightkit.cli.options import (
    DTYPES,
    dtype_option,
    no_verify_option,
    out_option,
    subcommand,
    write_options,
)

LLAMA_VERSIONS = ["auto", "1", "2", "3", "3.1", "3.2"]


@subcommand("convert")
@click.option(
    "--input-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Meta's download: the folder with params.json and consolidated.*.pth, or its "
    "parent with --model-size.",
)
@out_option("the HF model")
@click.option(
    "--model-size",
    default=None,
    help="Subfolder of --input-dir to convert (7B, 13B, llama-2-70b, ...); also checks "
    "the number of shards.",
)
@click.option(
    "--llama-version",
    type=click.Choice(LLAMA_VERSIONS),
    default="auto",
    show_default=True,
    help="Which LLaMA; auto reads it from params.json and tokenizer.model.",
)
@dtype_option(
    "auto",
    DTYPES,
    help="Output dtype; auto keeps the raw weights' (no silent cast). bf16 is what the "
    "transformers converter writes.",
)
@click.option(
    "--instruct",
    is_flag=True,
    help="LLaMA 3 instruct model: eos <|eot_id|>, the three stop ids, a chat template.",
)
@no_verify_option("Do not check checklist.chk before converting.")
@write_options(device=False)
def command(**kwargs: Any) -> Any:
    """Convert Meta's raw LLaMA 1/2/3 checkpoint to HF format, streaming, bit for bit."""
    from weightkit.ops.convert_llama import convert_llama

    return convert_llama(**kwargs)
