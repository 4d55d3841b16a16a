"""weightkit/hub/client.py: HubOptions, checked when made, and what `connect` makes of them."""

from __future__ import annotations

import pytest

from weightkit.errors import InputError
from weightkit.hub.client import Hub, connect
from weightkit.options import HubOptions

from .conftest import TOKEN, FakeHub


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        (
            {"endpoint": "hf-mirror.com"},
            "`endpoint` 'hf-mirror.com' is not an http(s) URL",
            "Give it like https://hf-mirror.com.",
        ),
        (
            {"endpoint": "ftp://hf-mirror.com"},
            "`endpoint` 'ftp://hf-mirror.com' is not an http(s) URL",
            "Give it like https://hf-mirror.com.",
        ),
        ({"jobs": 0}, "`jobs` must be 1..64, not 0", None),
        ({"jobs": 65}, "`jobs` must be 1..64, not 65", None),
        ({"jobs": "4"}, "`jobs` must be 1..64, not '4'", None),
        ({"jobs": True}, "`jobs` must be 1..64, not True", None),
    ],
)
def test_hub_options_are_checked_when_made(options: dict, message: str, hint: str | None) -> None:
    with pytest.raises(InputError) as e:
        HubOptions(**options)
    assert (e.value.message, e.value.hint) == (message, hint)


def test_connect_takes_the_options_and_falls_back_to_the_environment(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = connect(HubOptions(endpoint=f"{hub.url}/", token=TOKEN, jobs=7, progress=True))
    assert got == Hub(hub.url, TOKEN, jobs=7, show_progress=True)

    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_environment")
    assert connect() == Hub(
        "https://hf-mirror.example", "hf_from_the_environment", jobs=4, show_progress=False
    )  # not a terminal: no progress bars
