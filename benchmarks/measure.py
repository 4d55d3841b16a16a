"""Timing one command in a subprocess: wall and CPU seconds, page faults and peak RSS, with a
cold page cache; and the copy limit a tool reading those inputs and writing that output has."""

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
                  "user": usage.ru_utime, "sys": usage.ru_stime, "minflt": usage.ru_minflt,
                  "majflt": usage.ru_majflt, "stderr": done.stderr.decode()[-2000:],
                  "read_bytes": 512 * usage.ru_inblock, "write_bytes": 512 * usage.ru_oublock}))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `cmd` (in `env`, if given); returns {"seconds", "cpu" (user + sys), "user", "sys",
    "minflt", "majflt", "rss_kb", "rss_gb", "read_bytes", "write_bytes"} (bytes the command
    read from and wrote to the disk: ru_inblock and ru_oublock, 512 each; a read served by the
    page cache is not counted); exits with its stderr if it failed."""
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result['rc']}):\n{result['stderr']}")
    keys = ("seconds", "user", "sys", "minflt", "majflt", "rss_kb", "read_bytes", "write_bytes")
    return {
        **{k: result[k] for k in keys},
        "cpu": result["user"] + result["sys"],
        "rss_gb": result["rss_kb"] / 2**20,
    }


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


# The two forms of the copy limit: read every input cold, then write the output's bytes and
# flush them. `cat` + `sync` is what a user types; `dd conv=fsync` flushes only its own file.
COPY_FORMS = {
    "cat+sync": "cat {inputs} > /dev/null && head -c {n} /dev/zero > {target} && sync",
    "dd fsync": (
        "cat {inputs} > /dev/null && head -c {n} /dev/zero | "
        "dd of={target} bs=1M iflag=fullblock conv=fsync status=none"
    ),
}


def input_files(inputs: list[Path]) -> list[str]:
    return [str(p) for f in inputs for p in sorted(Path(f).rglob("*")) if p.is_file()]


def copy_limit_run(inputs: list[Path], out_bytes: int, scratch: Path, form: str) -> dict:
    """measure() of one copy-limit form, the page cache dropped first: the floor, in wall and
    in CPU seconds, for any tool that must read those inputs and write that output."""
    target = scratch / "copy-limit.bin"
    script = COPY_FORMS[form].format(
        inputs=" ".join(input_files(inputs)), n=out_bytes, target=target
    )
    drop_caches()
    try:
        return measure(["sh", "-c", script])
    finally:
        target.unlink(missing_ok=True)


def copy_limit(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds of the `dd conv=fsync` copy limit (the form run.py's table has always used)."""
    return copy_limit_run(inputs, out_bytes, scratch, "dd fsync")["seconds"]
