"""Tensor manifest (`weightkit.manifest.json`): per tensor its dtype, shape and the sha256 of its
raw little-endian bytes.

It does not depend on sharding, file format or serializer, so it can prove that a recovered model
equals the one a publisher trained even when the files themselves differ byte for byte.

    {"format": "weightkit.manifest", "version": 1,
     "tensors": {"model.norm.weight": {"dtype": "F16", "shape": [4096], "sha256": "…"}, …}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from weightkit.errors import ChecksumError, InputError

if TYPE_CHECKING:  # torch is imported only where tensors are hashed; verify of files needs none
    import torch

MANIFEST_NAME = "weightkit.manifest.json"
# in a diff folder: the manifest of the tuned model that recovering from the diff must give
TARGET_MANIFEST_NAME = "weightkit.target-manifest.json"
_FORMAT = "weightkit.manifest"


@dataclass(frozen=True)
class ManifestEntry:
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    sha256: str
    # set by `weightkit diff` when raw + diff cannot reproduce this tensor exactly (an fp16 diff,
    # or changes below fp32's resolution): the sha256 that recovering from that diff must give.
    recovers_to: str | None = None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> ManifestEntry:
        """The entry for a tensor: dtype, shape and the sha256 of its raw bytes."""
        from weightkit.dtypes import safetensors_name
        from weightkit.io.raw_bytes import tensor_bytes

        return cls(
            safetensors_name(tensor.dtype), tuple(tensor.shape), sha256_bytes(tensor_bytes(tensor))
        )


def sha256_bytes(data: memoryview | bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RowHasher:
    """A tensor's manifest entry, hashed as its pieces of rows arrive (in row order), or whole."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.rows_left = shape[0] if shape else 1
        self.digest = hashlib.sha256()

    def add(self, piece: torch.Tensor) -> bool:
        """Hash one piece; True once the last one is in."""
        from weightkit.io.raw_bytes import tensor_bytes

        self.digest.update(tensor_bytes(piece))
        self.rows_left -= piece.shape[0] if self.shape else 1
        return self.rows_left == 0

    def entry(self, dtype: torch.dtype, recovers_to: str | None = None) -> ManifestEntry:
        from weightkit.dtypes import safetensors_name

        return ManifestEntry(
            safetensors_name(dtype), self.shape, self.digest.hexdigest(), recovers_to
        )


class Manifest:
    def __init__(self, entries: dict[str, ManifestEntry] | None = None) -> None:
        self.entries: dict[str, ManifestEntry] = dict(entries or {})

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def add(self, name: str, entry: ManifestEntry) -> None:
        self.entries[name] = entry

    def to_dict(self) -> dict[str, dict]:
        tensors = {}
        for name, e in sorted(self.entries.items()):
            tensors[name] = {"dtype": e.dtype, "shape": list(e.shape), "sha256": e.sha256}
            if e.recovers_to:
                tensors[name]["recovers_to"] = e.recovers_to
        return tensors

    @classmethod
    def from_dict(cls, tensors: dict[str, dict]) -> Manifest:
        return cls(
            {
                name: ManifestEntry(
                    e["dtype"], tuple(e["shape"]), e["sha256"], e.get("recovers_to")
                )
                for name, e in tensors.items()
            }
        )

    def to_json(self) -> str:
        doc = {"format": _FORMAT, "version": 1, "tensors": self.to_dict()}
        return json.dumps(doc, indent=1) + "\n"

    def write(self, folder: Path, name: str = MANIFEST_NAME) -> Path:
        path = Path(folder) / name
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest file, or the one inside a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}")
            return cls.from_dict(doc["tensors"])
        except FileNotFoundError:
            raise InputError(f"{path}: no tensor manifest here") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}: not a valid weightkit manifest ({e})") from None

    @classmethod
    def find(cls, folder: Path, name: str = MANIFEST_NAME) -> Manifest | None:
        """The manifest called `name` inside `folder`, or None when there is none."""
        path = Path(folder) / name
        return cls.load(path) if path.is_file() else None

    def check(self, name: str, entry: ManifestEntry, where: str) -> bool:
        """True when `entry` is exactly what is expected, False when it is the predicted
        within-one-rounding result (`recovers_to`); ChecksumError otherwise."""
        want = self.entries.get(name)
        if want is None:
            raise ChecksumError(f"tensor {name!r} in {where} is not in the manifest")
        if (want.dtype, want.shape) != (entry.dtype, entry.shape):
            raise ChecksumError(
                f"tensor {name!r} in {where} is {entry.dtype} {list(entry.shape)}, "
                f"the manifest expects {want.dtype} {list(want.shape)}"
            )
        if want.sha256 == entry.sha256:
            return True
        if want.recovers_to == entry.sha256:
            return False
        raise ChecksumError(
            f"tensor {name!r} in {where} has sha256 {entry.sha256[:16]}…, "
            f"the manifest expects {want.sha256[:16]}…",
            "The inputs are not the ones this manifest was made from (wrong base model, "
            "or a damaged download). Check them with `weightkit verify`.",
        )
