"""Every model weightkit reads is a source, behind one interface (`Source`, in source.py):

- an HF model folder or one weight file: a `weightkit.io.reader.Checkpoint`, read by
  `source.StoredSource`;
- a raw Meta LLaMA folder, read as the HF checkpoint `weightkit convert` would write, tensor by
  tensor, never written: `weightkit.ops.convert_llama.MetaView`;
- a Hub repo id or catalog release: resolved in the Hugging Face cache, then a folder as above;
- a model computed from other sources: `ops.recover.RecoveredView` (raw + diff),
  `ops.merge_lora.MergedView` (base + LoRA), `ops.diff.DiffView` (tuned - raw).

`open.open_source` tells the stored kinds apart; `write.write_source` writes any source, which
is what every command does: convert writes a MetaView, recover a RecoveredView, and
`recover --raw META --diff D --lora L` a MergedView over a RecoveredView over a MetaView, in one
pass.
"""

from weightkit.sources.source import Node, SideFiles, Source, View

__all__ = ["Node", "SideFiles", "Source", "View"]
