"""weightkit merge-lora --base BASE --lora ADAPTER --out OUT"""

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


@subcommand("merge-lora")
@click.option(
    "--base",
    required=True,
    metavar="MODEL",
    help="The base model the adapter was trained on: an HF folder, a raw Meta LLaMA "
    "folder (converted in the same pass) or a Hub repo id.",
)
@click.option(
    "--lora",
    required=True,
    metavar="ADAPTER",
    help="peft adapter folder (adapter_config.json plus adapter_model.safetensors "
    "or adapter_model.bin), a Hub repo id or a release name.",
)
@out_option("the model")
@dtype_option(
    "auto",
    DTYPES,
    help="Output dtype; auto = the base model's. The merge is computed in fp32 and rounded once.",
)
@write_options()
@hub_options()
def command(**kwargs: Any) -> Any:
    """Merge a LoRA adapter into its base model: OUT = BASE + LoRA, tensor by tensor."""
    from weightkit.ops.merge_lora import merge_lora

    return merge_lora(**kwargs)
