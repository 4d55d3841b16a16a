"""The sizes and times that summaries print."""

from __future__ import annotations

from weightkit.progress import human_bytes, human_time


def test_human_bytes_every_unit_and_beyond_the_last():
    assert [human_bytes(n) for n in (0, 999, 1000, 853_250, 5e9, 1.5e12, 1.5e15)] == [
        "0 B",
        "999 B",
        "1.00 kB",
        "853.25 kB",
        "5.00 GB",
        "1.50 TB",
        "1500.00 TB",
    ]


def test_human_time():
    assert [human_time(s) for s in (0.04, 59.9, 61, 3725)] == ["0.0 s", "59.9 s", "1m01s", "1h02m"]
