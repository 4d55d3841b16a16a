"""What a checkpoint-writing command returns (`WriteResult`) and the text it reports: the
summary, a dry run's needs, the check against a manifest, an output error."""

from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightkit.errors import OutputError
from weightkit.io.disk import free_bytes
from weightkit.io.lossless_diff import LOSSLESS_FORMAT
from weightkit.io.tensor_info import numel
from weightkit.manifest import MANIFEST_NAME, TARGET_MANIFEST_NAME, Manifest
from weightkit.progress import human_bytes, human_time


@dataclass(frozen=True)
class Needs:
    """What a run will need, from headers alone: what a dry run reports."""

    bytes: int  # the tensors to write
    disk_free: int  # where the output goes, now
    memory: int  # at most, beyond the program itself
    gpu_memory: int | None  # at most, when the arithmetic runs on a GPU
    largest_tensor: str
    largest_tensor_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WriteResult:
    """What a checkpoint-writing command did (a dry run: what it would need); what its library
    function returns. `summary()` is the text the command line shows, `to_dict()` the same as
    plain values (for JSON)."""

    command: str  # the title the summary starts with: "recover", "diff --lossless", ...
    out: Path
    format: str  # what the files are: safetensors, bin, lossless-diff
    files: list[str]  # their names in `out`
    tensors: int
    bytes_written: int  # the tensors' bytes (a lossless diff: its files')
    seconds: float
    manifest: Manifest
    dtypes: list[str] = field(default_factory=list)  # of the tensors, as safetensors names them
    tensor_bytes: int = 0  # the tensors' bytes as computed (before a lossless diff's encoding)
    checked: int = 0  # tensors checked against the manifest of `expected_what`
    within_rounding: list[str] = field(default_factory=list)  # of those: the predicted result
    expected_what: str | None = None  # what the tensors were checked against; None: nothing
    check_in_notes: bool = False  # the check is reported in `notes` (not after the totals)
    notes: list[str] = field(default_factory=list)  # for the summary, in the order they came
    log: list[str] = field(default_factory=list)  # what was done before the run (an input
    # found in the Hugging Face cache, fetched into it): a line each, ahead of the summary
    dry_run: bool = False
    needs: Needs | None = None  # a dry run's

    def summary(self) -> str:
        """What the command line prints: the log's lines, then the summary (a dry run: what
        the run would need)."""
        return "\n".join([*self.log, summary_text(self)])

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able values: what was written, what was checked, the notes."""
        checked: dict[str, Any] = {}
        if self.expected_what is not None:
            checked = {
                "against": self.expected_what,
                "tensors": self.checked,
                "exact": self.checked - len(self.within_rounding),
                "within_rounding": list(self.within_rounding),
                "not_checked": self.tensors - self.checked,
            }
        d: dict[str, Any] = {
            "command": self.command,
            "out": str(self.out),
            "format": self.format,
            "dry_run": self.dry_run,
            "files": list(self.files),
            "tensors": self.tensors,
            "bytes": self.bytes_written,
            "tensor_bytes": self.tensor_bytes,
            "seconds": self.seconds,
            "dtypes": list(self.dtypes),
            "checked": checked,
            "notes": [*self.log, *self.notes],
        }
        if self.needs is not None:
            d["needs"] = self.needs.to_dict()
        return d


def summary_text(r: WriteResult) -> str:
    """The summary line of `r` (without its log)."""
    if r.dry_run:
        assert r.needs is not None
        return preflight(r.command, r.out, r.tensors, r.needs)
    if r.format == LOSSLESS_FORMAT:
        return _lossless_summary(r)
    rate = r.bytes_written / r.seconds if r.seconds > 0 else 0.0
    text = (
        f"{r.command}: wrote {r.tensors} tensors, {human_bytes(r.bytes_written)} "
        f"({', '.join(r.dtypes)}) in {len(r.files)} file(s) to {r.out} in "
        f"{human_time(r.seconds)} ({human_bytes(rate)}/s)."
    )
    if r.expected_what is not None and not r.check_in_notes:
        text += " " + checked_text(r.checked, r.within_rounding, r.tensors, r.expected_what)
    else:
        text += f" Its tensor manifest is in {MANIFEST_NAME}."
    return " ".join([text, *r.notes])


def _lossless_summary(r: WriteResult) -> str:
    params = sum(numel(e.shape) for e in r.manifest.entries.values())
    text = (
        f"{r.command}: wrote {r.tensors} tensors ({human_bytes(r.tensor_bytes)} of "
        f"{', '.join(r.dtypes)}) as {human_bytes(r.bytes_written)} "
        f"({8 * r.bytes_written / max(params, 1):.2f} bits per parameter) in "
        f"{len(r.files)} file(s) to {r.out} in {human_time(r.seconds)}. Recovering from "
        f"this diff gives all {r.tensors} tensors bit for bit; {TARGET_MANIFEST_NAME} holds "
        "their manifest."
    )
    return " ".join([text, *r.notes])


def preflight(title: str, out: Path, tensors: int, n: Needs) -> str:
    """A dry run's report of what the run will need."""
    text = (
        f"{title} (dry run): inputs check out; {tensors} tensors, "
        f"{human_bytes(n.bytes)} to write to {out} "
        f"(disk free: {human_bytes(n.disk_free)}). Largest tensor: {n.largest_tensor} "
        f"({human_bytes(n.largest_tensor_bytes)}); memory needed beyond the program itself: "
        f"at most {human_bytes(n.memory)}"
    )
    if n.gpu_memory is not None:
        text += f"; GPU memory: at most {human_bytes(n.gpu_memory)}"
    return text + ". Nothing was written."


def output_error(e: OSError, out: Path, needed: int) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(
            f"disk full while writing {out} (the output needs {human_bytes(needed)}; "
            f"{human_bytes(free_bytes(out.parent))} are free now). The partial output was removed.",
            "Free some space or choose another `out`, then run the command again.",
        )
    return OutputError(
        f"cannot write {out}: {e.strerror or e}",
        "Check the folder's permissions and the disk, then run again.",
    )


def checked_text(checked: int, within_rounding: list[str], tensors: int, expected_what: str) -> str:
    """What the check of `tensors` tensors against a manifest found, for the summary."""
    text = (
        f"Checked against the manifest of {expected_what}: {checked - len(within_rounding)} "
        "tensors match exactly"
    )
    if within_rounding:
        text += f", {len(within_rounding)} match the within-one-rounding result the diff predicted"
    unchecked = tensors - checked
    return text + f"{f', {unchecked} not checked (other dtype)' if unchecked else ''}."
