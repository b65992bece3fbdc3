"""Size refusals name the size and the limit once."""

from __future__ import annotations

import io

from fleetflow.cli import _print_failure
from fleetflow.errors import PayloadTooLarge
from fleetflow.serde import RemoteTaskError
from rich.console import Console


def test_a_remote_failure_prints_its_type_once():
    message = (
        "task list_files: result is 3377154 bytes, over the inline result limit of "
        "1048576 bytes (setting max_result_bytes)"
    )
    exc = RemoteTaskError("fleetflow.errors.FlowRunFailed", message)
    out = io.StringIO()
    _print_failure(Console(file=out, width=300), exc, "run1")
    text = out.getvalue()
    assert text.count("fleetflow.errors.FlowRunFailed") == 1
    assert text.count("3377154 bytes") == 1 and text.count("1048576 bytes") == 1


def test_payload_too_large_names_size_limit_and_setting():
    exc = PayloadTooLarge("result", 3377154, 1048576, "max_result_bytes")
    assert str(exc) == (
        "result is 3377154 bytes, over the limit of 1048576 bytes (max_result_bytes)"
    )
