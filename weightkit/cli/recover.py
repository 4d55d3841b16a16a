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
)


@click.command("recover")
@click.option("--raw", required=True, type=click.Path(exists=True),
              help="The base model the diff was made against (HF format).")
@click.option("--diff", "diff_path", required=True, type=click.Path(exists=True),
              help="The published weight diff.")
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
def command(raw: str, diff_path: str, out: str, dtype: str, fp16: bool, out_format: str,
            max_shard_size: str, overwrite: bool, device: str, dry_run: bool,
            quiet: bool) -> None:
    """Rebuild a fine-tuned model: OUT = RAW + DIFF, checked tensor by tensor."""
    from weightkit.ops.recover import recover

    recover(raw, diff_path, out, dtype=dtype, fp16=fp16, fmt=out_format,
            max_shard_size=max_shard_size, overwrite=overwrite, device=device,
            dry_run=dry_run, quiet=is_quiet(quiet))
