"""Why merge-lora holds a merged tensor whole: is a row block of B @ A the same bits as those
rows of the whole product? On this machine's torch (MKL) it is not for small blocks.

    python benchmarks/gemm_row_blocks.py

For LoRA-shaped products (B: out x r, A: r x in, fp32, fixed seed) it takes rows [s, s + n) of
B @ A once from the whole product and once as B[s:s+n] @ A, and counts the blocks whose bits
differ. Any difference would make a merge in row pieces differ from peft's merge_and_unload.
"""

from __future__ import annotations

import torch

SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632), (3200, 8640)]
RANKS = [8, 16, 64]
BLOCK_ROWS = [1, 3, 5, 16, 100, 1024]


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| block rows | blocks compared | blocks with other bits |")
    print("|---|---|---|")
    for rows in BLOCK_ROWS:
        compared = differ = 0
        for out_features, in_features in SHAPES:
            for r in RANKS:
                b = torch.randn(out_features, r, generator=gen) * 0.01
                a = torch.randn(r, in_features, generator=gen) * 0.01
                whole = b @ a
                for start in (0, rows, out_features - rows):
                    part = b[start : start + rows] @ a
                    compared += 1
                    differ += not torch.equal(part, whole[start : start + rows])
        print(f"| {rows} | {compared} | {differ} |")


if __name__ == "__main__":
    main()
