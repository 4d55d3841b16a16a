"""weightkit recover --raw RAW --diff DIFF --out OUT"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    DTYPES,
    device_option,
    dry_run_option,
    is_quiet,
    output_options,
    quiet_option,
    refuses_conflicts,
    show,
    write_options,
)


@click.command("recover")
@click.option("--raw", required=True, metavar="MODEL",
              help="The base model the diff was made against: an HF folder, a raw Meta LLaMA "
                   "folder (converted in the same pass) or a Hub repo id.")
@click.option("--diff", "diff_path", required=True, metavar="DIFF",
              help="The published weight diff: a folder, a Hub repo id or a release name.")
@click.option("--lora", default=None, metavar="ADAPTER",
              help="A LoRA adapter to merge into the recovered model in the same pass (a folder, "
                   "a Hub repo id or a release name); the recovered model is not written.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the model into.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Output dtype; auto = the tuned model's (from the diff's manifest), else the "
                   "wider of raw and diff.")
@click.option("--fp16", is_flag=True, help="KnowLM's flag for an fp16 diff: write fp16.")
@output_options
@device_option
@dry_run_option
@quiet_option
@refuses_conflicts
def command(raw: str, diff_path: str, lora: str | None, out: str, dtype: str, fp16: bool,
            out_format: str, max_shard_size: str, overwrite: bool, device: str, dry_run: bool,
            quiet: bool) -> None:
    """Rebuild a fine-tuned model: OUT = RAW + DIFF (+ LORA), checked tensor by tensor."""
    from weightkit.ops.recover import recover
    from weightkit.options import HubOptions

    quiet = is_quiet(quiet)
    show(recover(raw, diff_path, out, lora=lora, dtype=dtype, fp16=fp16,
                 options=write_options(out_format, max_shard_size, overwrite, device, dry_run,
                                       quiet), hub=HubOptions(progress=not quiet)), quiet)
