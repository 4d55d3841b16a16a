"""weightkit diff --raw RAW --tuned TUNED --out DIFF"""

from __future__ import annotations

from typing import Any

import click

from weightkit.cli.options import dtype_option, hub_options, out_option, subcommand, write_options
from weightkit.options import DIFF_DTYPES


@subcommand("diff")
@click.option(
    "--raw",
    required=True,
    metavar="MODEL",
    help="The base model: an HF folder, a raw Meta LLaMA folder or a Hub repo id.",
)
@click.option(
    "--tuned",
    required=True,
    metavar="MODEL",
    help="The fine-tuned model: an HF folder, a raw Meta LLaMA folder or a Hub repo id.",
)
@out_option("the diff")
@dtype_option("fp32", DIFF_DTYPES, help="How the diff is stored (it is computed in fp32).")
@click.option(
    "--lossless",
    is_flag=True,
    help="Instead of --dtype: store the difference of the weights' bit patterns, "
    "zstd-compressed; recover gives the tuned model back bit for bit. Raw and "
    "tuned need the same dtype per tensor.",
)
# default = weightkit.ops.lossless.DEFAULT_LEVEL, not imported: --help must not load torch
@click.option(
    "--level",
    type=click.IntRange(1, 19),
    default=1,
    show_default=True,
    help="zstd level for --lossless (higher: slower, at most a few % smaller).",
)
@write_options()
@hub_options()
def command(**kwargs: Any) -> Any:
    """Write diff = TUNED - RAW, with the manifest `recover` checks its result against."""
    from weightkit.ops.diff import diff

    _check_lossless_options(kwargs["lossless"])
    return diff(**kwargs)


def _check_lossless_options(lossless: bool) -> None:
    """--dtype and --format describe a plain diff; --level only a lossless one (even given with
    their default values, which the library cannot tell from no value)."""
    from weightkit.errors import OptionConflict
    from weightkit.ops.diff import LEVEL_OF_LOSSLESS, LOSSLESS_OWN_FORMAT

    ctx = click.get_current_context()
    given = {
        name
        for name in ("dtype", "format", "level")
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    if lossless and given & {"dtype", "format"}:
        raise OptionConflict(LOSSLESS_OWN_FORMAT)
    if not lossless and "level" in given:
        raise OptionConflict(LEVEL_OF_LOSSLESS)
