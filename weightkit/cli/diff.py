"""weightkit diff --raw RAW --tuned TUNED --out DIFF"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    device_option,
    dry_run_option,
    flags,
    is_quiet,
    output_options,
    quiet_option,
    show,
    write_options,
)


@click.command("diff")
@click.option("--raw", required=True, metavar="MODEL",
              help="The base model: an HF folder, a raw Meta LLaMA folder or a Hub repo id.")
@click.option("--tuned", required=True, metavar="MODEL",
              help="The fine-tuned model: an HF folder, a raw Meta LLaMA folder or a Hub repo id.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the diff into.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True, help="How the diff is stored (it is computed in fp32).")
@click.option("--lossless", is_flag=True,
              help="Instead of --dtype: store the difference of the weights' bit patterns, "
                   "zstd-compressed; recover gives the tuned model back bit for bit. Raw and "
                   "tuned need the same dtype per tensor.")
# default = weightkit.ops.lossless.DEFAULT_LEVEL, not imported: --help must not load torch
@click.option("--level", type=click.IntRange(1, 19), default=1, show_default=True,
              help="zstd level for --lossless (higher: slower, at most a few % smaller).")
@output_options
@device_option
@dry_run_option
@quiet_option
@click.pass_context
def command(ctx: click.Context, raw: str, tuned: str, out: str, dtype: str, lossless: bool,
            level: int, out_format: str, max_shard_size: str, overwrite: bool, device: str,
            dry_run: bool, quiet: bool) -> None:
    """Write diff = TUNED - RAW, with the manifest `recover` checks its result against."""
    from weightkit.ops.diff import diff
    from weightkit.options import HubOptions

    _check_lossless_options(ctx, lossless)
    quiet = is_quiet(quiet)
    show(diff(raw, tuned, out, dtype=dtype, lossless=lossless, level=level,
              options=write_options(out_format, max_shard_size, overwrite, device, dry_run,
                                    quiet), hub=HubOptions(progress=not quiet)), quiet)


def _check_lossless_options(ctx: click.Context, lossless: bool) -> None:
    """--dtype and --format describe a plain diff; --level only a lossless one (even given with
    their default values, which the library cannot tell from no value)."""
    from weightkit.ops.diff import LEVEL_OF_LOSSLESS, LOSSLESS_OWN_FORMAT

    given = {name for name in ("dtype", "out_format", "level")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if lossless and given & {"dtype", "out_format"}:
        raise click.UsageError(flags(LOSSLESS_OWN_FORMAT))
    if not lossless and "level" in given:
        raise click.UsageError(flags(LEVEL_OF_LOSSLESS))
