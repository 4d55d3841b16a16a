"""Reading and writing checkpoints, one tensor at a time.

- `open_checkpoint` gives a `Checkpoint`: names, shapes and dtypes from headers, tensors on demand.
- `ShardWriter` writes a planned list of tensors into sharded safetensors or `.bin` files.
- `OutputFolder` builds an output in a hidden folder and moves it into place when complete.
"""
