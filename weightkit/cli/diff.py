"""weightkit diff --raw RAW --tuned TUNED --out DIFF"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    device_option,
    dry_run_option,
    is_quiet,
    output_options,
    quiet_option,
)


@click.command("diff")
@click.option("--raw", required=True, type=click.Path(exists=True), help="The base model.")
@click.option("--tuned", required=True, type=click.Path(exists=True), help="The fine-tuned model.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the diff into.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True, help="How the diff is stored (it is computed in fp32).")
@output_options
@device_option
@dry_run_option
@quiet_option
def command(raw: str, tuned: str, out: str, dtype: str, out_format: str, max_shard_size: str,
            overwrite: bool, device: str, dry_run: bool, quiet: bool) -> None:
    """Write diff = TUNED - RAW, with the manifest `recover` checks its result against."""
    from weightkit.ops.diff import diff

    diff(raw, tuned, out, dtype=dtype, fmt=out_format, max_shard_size=max_shard_size,
         overwrite=overwrite, device=device, dry_run=dry_run, quiet=is_quiet(quiet))
