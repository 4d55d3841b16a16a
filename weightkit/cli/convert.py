"""weightkit convert --input-dir RAW --out OUT"""

from __future__ import annotations

import click

from weightkit.cli.options import (
    DTYPES,
    dry_run_option,
    is_quiet,
    output_options,
    quiet_option,
    show,
    write_options,
)

LLAMA_VERSIONS = ["auto", "1", "2", "3", "3.1", "3.2"]


@click.command("convert")
@click.option("--input-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Meta's download: the folder with params.json and consolidated.*.pth, or its "
                   "parent with --model-size.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the HF model into.")
@click.option("--model-size", default=None,
              help="Subfolder of --input-dir to convert (7B, 13B, llama-2-70b, ...); also checks "
                   "the number of shards.")
@click.option("--llama-version", type=click.Choice(LLAMA_VERSIONS), default="auto",
              show_default=True,
              help="Which LLaMA; auto reads it from params.json and tokenizer.model.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Output dtype; auto keeps the raw weights' (no silent cast). bf16 is what the "
                   "transformers converter writes.")
@click.option("--instruct", is_flag=True,
              help="LLaMA 3 instruct model: eos <|eot_id|>, the three stop ids, a chat template.")
@click.option("--no-verify", is_flag=True, help="Do not check checklist.chk before converting.")
@output_options
@dry_run_option
@quiet_option
def command(input_dir: str, out: str, model_size: str | None, llama_version: str, dtype: str,
            instruct: bool, no_verify: bool, out_format: str, max_shard_size: str,
            overwrite: bool, dry_run: bool, quiet: bool) -> None:
    """Convert Meta's raw LLaMA 1/2/3 checkpoint to HF format, streaming, bit for bit."""
    from weightkit.ops.convert_llama import convert_llama

    quiet = is_quiet(quiet)
    show(convert_llama(input_dir, out, model_size=model_size, llama_version=llama_version,
                       dtype=dtype, instruct=instruct, verify=not no_verify,
                       options=write_options(out_format, max_shard_size, overwrite, "auto",
                                             dry_run, quiet)), quiet)
