"""The catalog of known releases (`checksums/catalog.json`) and their checksum manifests.

A release names its parts (diff, diff-fp16, lora, recovered, ...); each part may have a Hub repo
and a manifest file in md5sum/sha256sum format that checks it. `base` says, in words, which base
model the release is applied to and where to get it (it is never one of the parts).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from weightkit.errors import InputError


@dataclass(frozen=True)
class Part:
    name: str
    repo: str | None
    manifest: Path | None


@dataclass(frozen=True)
class HubPart(Part):
    """A part that is on the Hub: its repo is known."""

    repo: str


@dataclass(frozen=True)
class Release:
    name: str
    description: str
    parts: dict[str, Part]
    base: str = ""

    def part(self, name: str) -> Part:
        try:
            return self.parts[name]
        except KeyError:
            raise InputError(
                f"release {self.name!r} has no part {name!r}",
                f"It has: {', '.join(sorted(self.parts))}.",
            ) from None

    def hub_part(self, name: str) -> HubPart:
        """The part `name`, which must have a Hub repo."""
        part = self.part(name)
        if not part.repo:
            raise InputError(f"part {name!r} of release {self.name} is not on the Hub")
        return HubPart(part.name, part.repo, part.manifest)


def checksums_dir() -> Path:
    """Where the shipped manifests are: $WEIGHTKIT_CHECKSUMS, the source tree, or the install."""
    candidates = [
        os.environ.get("WEIGHTKIT_CHECKSUMS"),
        Path(__file__).resolve().parent.parent / "checksums",
        Path(sys.prefix) / "share" / "weightkit" / "checksums",
    ]
    for c in candidates:
        if c and (Path(c) / "catalog.json").is_file():
            return Path(c)
    raise InputError(
        "the checksums/ folder with catalog.json was not found",
        "Set WEIGHTKIT_CHECKSUMS to its path.",
    )


def known_manifests() -> dict[str, Path]:
    """Shipped manifest name (file name without suffix) -> path."""
    folder = checksums_dir()
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.suffix in (".md5", ".sha256") and p.is_file()
    }


def load_catalog() -> dict[str, Release]:
    folder = checksums_dir()
    path = folder / "catalog.json"
    try:
        doc = json.loads(path.read_text())
        releases = {}
        for name, r in doc["releases"].items():
            parts = {
                pname: Part(
                    pname, p.get("repo"), folder / p["manifest"] if p.get("manifest") else None
                )
                for pname, p in r["parts"].items()
            }
            releases[name] = Release(name, r.get("description", ""), parts, r.get("base", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: cannot read the release catalog ({e})") from None
    return releases


def find_release(name: str) -> Release | None:
    return load_catalog().get(name)
