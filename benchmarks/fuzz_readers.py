"""The readers' long mutation fuzz: damaged safetensors and torch .bin files, counted by outcome.

    python benchmarks/fuzz_readers.py [--cases 100000] [--seed 0] [--show 5]

Each case (tests/io/fuzz_mutations.py: the mutator the suite's fuzz test uses) is written to a
temp file, opened with weightkit and read whole and in rows. Prints the counts by outcome, by
exception type for the unhandled ones, and a few example messages; exits 1 if any case was not
"read" (bytes equal to the reference reader's) or "refused" (an InputError naming the file).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mutations():
    path = ROOT / "tests" / "io" / "fuzz_mutations.py"
    spec = importlib.util.spec_from_file_location("fuzz_mutations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument("--show", type=int, default=5, help="example messages per outcome")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    warnings.simplefilter("ignore")  # torch's warnings about odd pickle protocols, per case
    fm = _mutations()

    outcomes: collections.Counter[str] = collections.Counter()
    by_format: collections.Counter[tuple[str, str]] = collections.Counter()
    unhandled: collections.Counter[str] = collections.Counter()
    lenient: collections.Counter[str] = collections.Counter()  # read; the reference refuses
    examples: dict[str, list[str]] = collections.defaultdict(list)
    seen: dict[str, str] = {}  # unhandled exception and where it was raised -> its first case
    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="weightkit-fuzz-") as tmp:
        for index in range(args.first, args.first + args.cases):
            fmt, applied, data = fm.make_case(args.seed, index)
            path = Path(tmp) / fm.FILE_NAMES[fmt]
            path.write_bytes(data)
            result, detail = fm.outcome(path, fmt)
            outcomes[result] += 1
            by_format[fmt, result] += 1
            if detail == fm.REFERENCE_REFUSED:
                lenient[fmt] += 1
            if result == "unhandled":
                unhandled[detail.split()[0]] += 1
                if detail not in seen:
                    seen[detail] = f"case {index} ({fmt}, {'+'.join(applied)})"
            if len(examples[result]) < args.show and result != fm.READ:
                examples[result].append(
                    f"case {index} ({fmt}, {'+'.join(applied)}): "
                    + detail.replace("\n", " / ")[:300]
                )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    print(f"{args.cases} cases, seed {args.seed}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    for result, count in outcomes.most_common():
        split = ", ".join(f"{fmt} {by_format[fmt, result]}" for fmt in fm.FILE_NAMES)
        print(f"  {result:14} {count:7}  ({split})")
    if lenient:
        split = ", ".join(f"{fmt} {lenient[fmt]}" for fmt in fm.FILE_NAMES)
        print(
            f"  of those read, {sum(lenient.values())} ({split}) are refused by the reference "
            "reader, with the sample's tensors intact"
        )
    if unhandled:
        print("unhandled, by exception type:")
        for name, count in unhandled.most_common():
            print(f"  {name:20} {count:7}")
    if seen:
        print("unhandled, by where they were raised (first case):")
        for detail, case in sorted(seen.items()):
            print(f"  {detail}: {case}")
    for result, lines in examples.items():
        print(f"examples, {result}:")
        for line in lines:
            print(f"  {line}")
    return 0 if set(outcomes) <= {fm.READ, fm.REFUSED} else 1


if __name__ == "__main__":
    sys.exit(main())
