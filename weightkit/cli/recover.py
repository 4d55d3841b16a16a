"""weightkit recover --raw RAW --diff DIFF --out OUT"""

from __future__ import annotations

from typing import Any

import click

from weightkit.cli.options import (
    DTYPES,
    dtype_option,
    hub_options,
    out_option,
    subcommand,
    write_options,
)


@subcommand("recover")
@click.option(
    "--raw",
    required=True,
    metavar="MODEL",
    help="The base model the diff was made against: an HF folder, a raw Meta LLaMA "
    "folder (converted in the same pass) or a Hub repo id.",
)
@click.option(
    "--diff",
    required=True,
    metavar="DIFF",
    help="The published weight diff: a folder, a Hub repo id or a release name.",
)
@click.option(
    "--lora",
    default=None,
    metavar="ADAPTER",
    help="A LoRA adapter to merge into the recovered model in the same pass (a folder, "
    "a Hub repo id or a release name); the recovered model is not written.",
)
@out_option("the model")
@dtype_option(
    "auto",
    DTYPES,
    help="Output dtype; auto = the tuned model's (from the diff's manifest), else the "
    "wider of raw and diff.",
)
@click.option("--fp16", is_flag=True, help="KnowLM's flag for an fp16 diff: write fp16.")
@write_options()
@hub_options()
def command(**kwargs: Any) -> Any:
    """Rebuild a fine-tuned model: OUT = RAW + DIFF (+ LORA), checked tensor by tensor."""
    from weightkit.ops.recover import recover

    return recover(**kwargs)
