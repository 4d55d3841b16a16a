"""Telling the inputs apart without a flag.

A path that exists is a model: a raw Meta LLaMA folder (`params.json` and `consolidated.*.pth`)
is read as the HF checkpoint `weightkit convert` would write (weightkit.ops.convert_llama.MetaView),
any other folder or file as a checkpoint (weightkit.io.reader). Anything else is a Hub repo id
(`org/name`, `org/name@revision`) or a release from checksums/catalog.json, resolved in the
Hugging Face cache by weightkit.hub.cache: once resolved, a snapshot is just a folder of one of
the kinds above.
"""

from __future__ import annotations

from pathlib import Path

import torch

from weightkit.errors import InputError
from weightkit.io.reader import open_checkpoint
from weightkit.sources.source import Source

PARAMS_NAME = "params.json"  # Meta's model arguments, next to consolidated.*.pth
_NOT_FOUND_HINT = ("Give an HF model folder, a raw Meta LLaMA folder (params.json and "
                   "consolidated.*.pth) or a Hub repo id (org/name).")


def resolve(spec: str | Path, *, role: str, dry_run: bool = False, quiet: bool = True) -> Path:
    """Where the model `spec` lies on this machine: the path itself when it exists, else the
    snapshot folder of a Hub repo id or release in the Hugging Face cache (fetched into the
    cache if it is not complete there; with HF_HUB_OFFLINE, a repo or file the cache lacks is
    one error naming the repo). `role` (raw, diff, tuned, base, lora) says which files are read
    and which release repo a release name stands for."""
    path = Path(spec)
    if path.exists():
        return path
    # the Hub's half of the source layer, imported here: a bare path needs none of it
    from weightkit.hub.cache import is_hub_spec, resolve_model

    if not is_hub_spec(str(spec)):
        raise InputError(f"{spec}: no such file or folder", _NOT_FOUND_HINT)
    from weightkit.options import HubOptions
    from weightkit.progress import say

    model = resolve_model(str(spec), role=role, dry_run=dry_run,
                          hub=HubOptions(progress=not quiet))
    for note in model.notes:  # until the source carries them as its notes
        say(note, quiet)
    # `missing` is what the cache lacked: fetched by now, unless this is a dry run (which has
    # said what it would download, and how much)
    if dry_run and model.missing:
        names = [f.path for f in model.missing]
        raise InputError(
            f"{spec}: {len(names)} file(s) of {model.repo} are not in the Hugging Face cache yet "
            f"({', '.join(names[:3])}{', …' if len(names) > 3 else ''}); a dry run does not "
            "download them, so the inputs cannot be checked",
            "Run the command without --dry-run: it downloads them into the cache first.",
        )
    return Path(model.folder)


def is_meta_folder(path: Path) -> bool:
    """A raw Meta LLaMA model folder: params.json next to consolidated.*.pth."""
    return (path.is_dir() and (path / PARAMS_NAME).is_file()
            and any(path.glob("consolidated.*.pth")))


def open_path(path: Path, *, dtype: torch.dtype | None = None, quiet: bool = True) -> Source:
    """The model at a local path. A raw Meta folder is read as `convert --dtype dtype` writes it
    (None: its own dtype), its checklist.chk verified first as convert verifies it."""
    if is_meta_folder(path):
        from weightkit.ops.convert_llama import open_meta

        view = open_meta(path, dtype=dtype)
        view.verify(quiet)
        return view
    try:
        return open_checkpoint(path)
    except InputError:
        sizes = sorted(p.name for p in path.iterdir() if is_meta_folder(p)) if path.is_dir() else []
        if not sizes:
            raise
        raise InputError(
            f"{path}: a Meta LLaMA download holding {len(sizes)} model folder(s) "
            f"({', '.join(sizes)}), not a model itself",
            f"Give the model's own folder, e.g. {path / sizes[0]}.",
        ) from None


def open_source(spec: str | Path, *, role: str, dtype: torch.dtype | None = None,
                dry_run: bool = False, quiet: bool = True) -> Source:
    """The model `spec` names, whichever kind it is (see the module's docstring)."""
    return open_path(resolve(spec, role=role, dry_run=dry_run, quiet=quiet), dtype=dtype,
                     quiet=quiet)


def local_paths(*specs: str | Path | None) -> list[Path]:
    """The specs that are paths on this machine (for checks before anything is opened)."""
    return [Path(s) for s in specs if s is not None and Path(s).exists()]
