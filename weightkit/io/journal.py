"""The journal of an unfinished output: which shards are complete, so a rerun can resume.

It lives in the hidden partial folder as `.weightkit-journal.json` and is replaced atomically
after each finished shard. A rerun of the same command (same inputs, options and plan: the key)
keeps the shards it lists once their tensors hash as recorded; anything else starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightkit.manifest import Manifest, ManifestEntry

JOURNAL_NAME = ".weightkit-journal.json"


def run_key(title: str, fmt: str, max_shard_size: int, plan: list, inputs: list[Path]) -> str:
    """What makes two runs the same: command, options, planned tensors and the input files."""
    files = []
    for p in inputs:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.is_file():
                st = f.stat()
                files.append([str(f.absolute()), st.st_size, st.st_mtime_ns])
    doc = [title, fmt, max_shard_size, [[t.name, str(t.dtype), list(t.shape)] for t in plan], files]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


class Journal:
    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / JOURNAL_NAME
        self.key = key
        self.shards: dict[str, dict[str, ManifestEntry]] = {}
        # per shard, entries of a second manifest the command builds as it goes (diff's target)
        self.side: dict[str, dict[str, ManifestEntry]] = {}

    @classmethod
    def open(cls, folder: Path, key: str) -> Journal:
        """The journal of a killed run with this key, or a fresh one in an emptied folder."""
        journal = cls(folder, key)
        try:
            doc = json.loads(journal.path.read_text())
            if doc["key"] == key:
                journal.shards = {
                    f: Manifest.from_dict(t).entries for f, t in doc["shards"].items()
                }
                journal.side = {
                    f: Manifest.from_dict(t).entries for f, t in doc.get("side", {}).items()
                }
                return journal
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return journal

    def finished(
        self,
        file_names: list[str],
        shard_names: list[list[str]],
        open_file: Callable[[Path], Any] | None = None,
    ) -> set[int]:
        """Indices of shards that are complete on disk: present and hashing as recorded.
        `open_file(path)` gives the `manifest_entry(name)` of a file's tensors (default: the
        checkpoint file's own)."""
        from weightkit.io.reader import open_checkpoint

        open_file = open_file or open_checkpoint
        done = set()
        for i, fname in enumerate(file_names):
            recorded = self.shards.get(fname)
            path = self.path.parent / fname
            if recorded is None or sorted(recorded) != sorted(shard_names[i]) or not path.is_file():
                continue
            try:
                ckpt = open_file(path)
                if all(ckpt.manifest_entry(n) == recorded[n] for n in recorded):
                    done.add(i)
            except Exception:  # noqa: BLE001 - a damaged shard is simply written again
                continue
        return done

    def record(
        self,
        file_name: str,
        entries: dict[str, ManifestEntry],
        side: dict[str, ManifestEntry] | None = None,
    ) -> None:
        self.shards[file_name] = dict(entries)
        if side:
            self.side[file_name] = dict(side)
        doc = {
            "key": self.key,
            "shards": {f: Manifest(e).to_dict() for f, e in sorted(self.shards.items())},
            "side": {f: Manifest(e).to_dict() for f, e in sorted(self.side.items())},
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
