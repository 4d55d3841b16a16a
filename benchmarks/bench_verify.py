"""Serial `md5sum` against `weightkit verify --algo md5 --jobs N` on the same files.

    python benchmarks/bench_verify.py [--files 4] [--size-mb 512] [--jobs 2] [--repeat 3]

Writes FILES files of random bytes into a temp folder (kept under 3 GB; they stay in the page
cache, so both tools hash from memory and the figure is hashing throughput, not disk speed),
makes the manifest with `md5sum`, then times each command end to end, Python start-up included.
The best of --repeat runs is reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHUNK = 64 * 1024 * 1024


def make_files(folder: Path, count: int, size: int) -> list[str]:
    names = [f"shard-{i + 1:05d}.bin" for i in range(count)]
    for name in names:
        with open(folder / name, "wb") as f:
            left = size
            while left:
                n = min(_CHUNK, left)
                f.write(os.urandom(n))
                left -= n
    return names


def best_time(cmd: list[str], cwd: Path, repeat: int, expect_rc: int = 0) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - start)
        if done.returncode != expect_rc:
            sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()}")
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp folder")
    args = ap.parse_args()
    size = args.size_mb * 1024 * 1024
    if args.files * size > 3 * 1024**3:
        sys.exit("keep the files under 3 GB in total")
    if shutil.which("md5sum") is None:
        sys.exit("md5sum (coreutils) is not on PATH")

    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=args.dir) as tmp:
        folder = Path(tmp)
        names = make_files(folder, args.files, size)
        sums = subprocess.run(["md5sum", *names], cwd=folder, check=True, capture_output=True)
        (folder / "sums.md5").write_bytes(sums.stdout)

        total = args.files * size
        serial = best_time(["md5sum", *names], folder, args.repeat)
        verify = [
            sys.executable,
            "-m",
            "weightkit",
            "-q",
            "verify",
            str(folder),
            "--manifest",
            str(folder / "sums.md5"),
            "--algo",
            "md5",
        ]
        one = best_time([*verify, "--jobs", "1"], folder, args.repeat)
        parallel = best_time([*verify, "--jobs", str(args.jobs)], folder, args.repeat)

    mb = total / 1e6
    print(
        f"{args.files} files x {args.size_mb} MiB = {mb:.0f} MB, {os.cpu_count()} cores, "
        f"best of {args.repeat}"
    )
    print(f"md5sum (serial)                  {serial:6.2f} s  {mb / serial:7.0f} MB/s")
    print(f"weightkit verify --jobs 1        {one:6.2f} s  {mb / one:7.0f} MB/s")
    print(f"weightkit verify --jobs {args.jobs:<8} {parallel:6.2f} s  {mb / parallel:7.0f} MB/s")
    print(f"speed-up over md5sum: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
