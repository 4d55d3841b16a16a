"""Timing one command in a subprocess: wall seconds and peak RSS, with a cold page cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# A fresh, small wrapper process per measurement: RUSAGE_CHILDREN then holds that one command
# only (Linux carries ru_maxrss over fork+exec, so measuring from a big parent would be wrong).
_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": done.returncode, "seconds": seconds, "rss_kb": usage.ru_maxrss,
                  "cpu": usage.ru_utime + usage.ru_stime, "stderr": done.stderr.decode()[-2000:],
                  "read_bytes": 512 * usage.ru_inblock, "write_bytes": 512 * usage.ru_oublock}))
"""


def measure(cmd: list[str]) -> dict:
    """Run `cmd`; returns {"seconds", "cpu", "rss_kb", "rss_gb", "read_bytes", "write_bytes"}
    (bytes the command read from and wrote to the disk: ru_inblock and ru_oublock, 512 each;
    a read served by the page cache is not counted); exits with its stderr if it failed."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result['rc']}):\n{result['stderr']}")
    return {"seconds": result["seconds"], "cpu": result["cpu"], "rss_kb": result["rss_kb"],
            "rss_gb": result["rss_kb"] / 2**20, "read_bytes": result["read_bytes"],
            "write_bytes": result["write_bytes"]}


def drop_caches() -> bool:
    """Drop the page cache so the next command reads from disk; False if not permitted."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for f in folders for p in Path(f).rglob("*") if p.is_file())


def copy_limit(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read every input byte cold and write `out_bytes` to disk (flushed): the floor
    for any tool that must read those inputs and write that output."""
    files = [str(p) for f in inputs for p in sorted(Path(f).rglob("*")) if p.is_file()]
    drop_caches()
    target = scratch / "copy-limit.bin"
    script = (f"cat {' '.join(files)} > /dev/null && "
              f"head -c {out_bytes} /dev/zero | dd of={target} bs=1M iflag=fullblock "
              "conv=fsync status=none")
    seconds = measure(["sh", "-c", script])["seconds"]
    target.unlink()
    return seconds
