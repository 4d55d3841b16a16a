"""weightkit merge-lora --base BASE --lora ADAPTER --out OUT"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    DTYPES,
    device_option,
    dry_run_option,
    is_quiet,
    output_options,
    quiet_option,
    show,
    write_options,
)


@click.command("merge-lora")
@click.option("--base", required=True, metavar="MODEL",
              help="The base model the adapter was trained on: an HF folder, a raw Meta LLaMA "
                   "folder (converted in the same pass) or a Hub repo id.")
@click.option("--lora", required=True, metavar="ADAPTER",
              help="peft adapter folder (adapter_config.json plus adapter_model.safetensors "
                   "or adapter_model.bin), a Hub repo id or a release name.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the model into.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Output dtype; auto = the base model's. The merge is computed in fp32 and "
                   "rounded once.")
@output_options
@device_option
@dry_run_option
@quiet_option
def command(base: str, lora: str, out: str, dtype: str, out_format: str, max_shard_size: str,
            overwrite: bool, device: str, dry_run: bool, quiet: bool) -> None:
    """Merge a LoRA adapter into its base model: OUT = BASE + LoRA, tensor by tensor."""
    from weightkit.ops.merge_lora import merge_lora
    from weightkit.options import HubOptions

    quiet = is_quiet(quiet)
    show(merge_lora(base, lora, out, dtype=dtype,
                    options=write_options(out_format, max_shard_size, overwrite, device, dry_run,
                                          quiet), hub=HubOptions(progress=not quiet)), quiet)
