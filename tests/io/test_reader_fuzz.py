"""The readers against a few thousand damaged files (fuzz_mutations.py; the long run is
benchmarks/fuzz_readers.py): every file either reads, giving the bytes it holds, or raises one
InputError naming the file, with a hint. Never another exception, never a misread."""

from __future__ import annotations

import collections
import warnings

from fuzz_mutations import FILE_NAMES, READ, REFERENCE_REFUSED, REFUSED, make_case, outcome

CASES = 2500
SEED = 0


def test_every_damaged_file_reads_right_or_is_refused_by_name(tmp_path):
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own warnings about odd pickle protocols
        for index in range(CASES):
            fmt, applied, data = make_case(SEED, index)
            path = tmp_path / FILE_NAMES[fmt]
            path.write_bytes(data)
            result, detail = outcome(path, fmt)
            counts[fmt, result if detail != REFERENCE_REFUSED else "read, reference refuses"] += 1
            if result not in (READ, REFUSED):
                failures.append(f"case {index} ({fmt}, {'+'.join(applied)}): {result}: {detail}")
    assert failures == []
    # the mutations reach both outcomes in both formats, mostly damage
    for fmt in FILE_NAMES:
        assert counts[fmt, READ] > 50 and counts[fmt, REFUSED] > 2 * counts[fmt, READ]
