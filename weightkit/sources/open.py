"""Telling the inputs apart without a flag.

A path that exists is a model: a raw Meta LLaMA folder (`params.json` and `consolidated.*.pth`)
is read as the HF checkpoint `weightkit convert` would write (weightkit.ops.convert_llama.MetaView),
any other folder or file as a checkpoint (weightkit.io.reader, as a `StoredSource`). Anything
else is a Hub repo id (`org/name`, `org/name@revision`) or a release from checksums/catalog.json,
resolved in the Hugging Face cache by weightkit.hub.cache: once resolved, a snapshot is just a
folder of one of the kinds above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightkit.errors import InputError
from weightkit.io.reader import open_checkpoint
from weightkit.options import HubOptions, WriteOptions
from weightkit.sources.source import Source, StoredSource

PARAMS_NAME = "params.json"  # Meta's model arguments, next to consolidated.*.pth
_NOT_FOUND_HINT = (
    "Give an HF model folder, a raw Meta LLaMA folder (params.json and "
    "consolidated.*.pth) or a Hub repo id (org/name)."
)


@dataclass
class Reading:
    """How a command reads its inputs, and what reading them did.

    `dry_run`: fetch nothing into the Hugging Face cache; `hub`: how to reach the Hub;
    `progress`: a bar while a raw Meta folder's checklist.chk is verified (as
    WriteOptions.progress says). `log` gathers what the cache lookups did (found a model,
    downloaded one), in order: what the command reports before its summary.
    """

    dry_run: bool = False
    hub: HubOptions | None = None
    progress: bool | None = None
    log: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, options: WriteOptions, hub: HubOptions | None = None) -> Reading:
        return cls(options.dry_run, hub, options.progress)

    def resolve(self, spec: str | Path, *, role: str) -> Path:
        """Where the model `spec` lies on this machine: the path itself when it exists, else
        the snapshot folder of a Hub repo id or release in the Hugging Face cache (fetched into
        the cache if it is not complete there; with HF_HUB_OFFLINE, a repo or file the cache
        lacks is one error naming the repo). `role` (raw, diff, tuned, base, lora) says which
        files are read and which release repo a release name stands for."""
        path = Path(spec)
        if path.exists():
            return path
        # the Hub's half of the source layer, imported here: a bare path needs none of it
        from weightkit.hub.cache import is_hub_spec, resolve_model

        if not is_hub_spec(str(spec)):
            raise InputError(f"{spec}: no such file or folder", _NOT_FOUND_HINT)
        model = resolve_model(str(spec), role=role, hub=self.hub, dry_run=self.dry_run)
        self.log += model.notes
        # `missing` is what the cache lacked: fetched by now, unless this is a dry run (which
        # has said what it would download, and how much)
        if self.dry_run and model.missing:
            names = [f.path for f in model.missing]
            raise InputError(
                f"{spec}: {len(names)} file(s) of {model.repo} are not in the Hugging Face cache "
                f"yet ({', '.join(names[:3])}{', …' if len(names) > 3 else ''}); a dry run does "
                "not download them, so the inputs cannot be checked",
                "Run the command without `dry_run`: it downloads them into the cache first.",
                result=model,  # what the dry run would download
            )
        return Path(model.folder)

    def open(self, spec: str | Path, *, role: str, dtype: torch.dtype | None = None) -> Source:
        """The model `spec` names, whichever kind it is (see the module's docstring)."""
        return open_path(self.resolve(spec, role=role), dtype=dtype, progress=self.progress)


def resolve(
    spec: str | Path, *, role: str, dry_run: bool = False, hub: HubOptions | None = None
) -> Path:
    """Where the model `spec` lies on this machine (see Reading.resolve)."""
    return Reading(dry_run, hub).resolve(spec, role=role)


def is_meta_folder(path: Path) -> bool:
    """A raw Meta LLaMA model folder: params.json next to consolidated.*.pth."""
    return path.is_dir() and (path / PARAMS_NAME).is_file() and any(path.glob("consolidated.*.pth"))


def open_path(
    path: Path, *, dtype: torch.dtype | None = None, progress: bool | None = None
) -> Source:
    """The model at a local path. A raw Meta folder is read as convert writes it in `dtype`
    (None: its own dtype), its checklist.chk verified first as convert verifies it (`progress`:
    show a bar meanwhile, as WriteOptions.progress says)."""
    if is_meta_folder(path):
        from weightkit.ops.convert_llama import open_meta

        view = open_meta(path, dtype=dtype)
        view.verify(progress)
        return view
    try:
        return StoredSource(open_checkpoint(path))
    except InputError:
        sizes = sorted(p.name for p in path.iterdir() if is_meta_folder(p)) if path.is_dir() else []
        if not sizes:
            raise
        raise InputError(
            f"{path}: a Meta LLaMA download holding {len(sizes)} model folder(s) "
            f"({', '.join(sizes)}), not a model itself",
            f"Give the model's own folder, e.g. {path / sizes[0]}.",
        ) from None


def open_source(
    spec: str | Path,
    *,
    role: str,
    dtype: torch.dtype | None = None,
    dry_run: bool = False,
    hub: HubOptions | None = None,
) -> Source:
    """The model `spec` names, whichever kind it is (see the module's docstring)."""
    return Reading(dry_run, hub).open(spec, role=role, dtype=dtype)


def local_paths(*specs: str | Path | None) -> list[Path]:
    """The specs that are paths on this machine (for checks before anything is opened)."""
    return [Path(s) for s in specs if s is not None and Path(s).exists()]
