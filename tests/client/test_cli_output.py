"""CLI rendering helpers, events decoding and the lazily loaded subcommands."""

from __future__ import annotations

import io

from click.testing import CliRunner
from fleetflow import cli as cli_module
from fleetflow.api.v1 import common_pb2
from fleetflow.cli import cli, format_event, render_result
from fleetflow.events import FlowEvent, TaskErrorInfo
from rich.console import Console


def rendered(value) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_result(value))
    return console.file.getvalue()


def test_dict_result_is_a_table_with_nested_records():
    text = rendered(
        {
            "files": 3,
            "largest_modules": [{"module": "a.py", "lines": 10}, {"module": "b.py", "lines": 5}],
            "unparsable_files": [],
            "name": "plain",
        }
    )
    assert "files" in text and "3" in text
    assert "module" in text and "a.py" in text and "b.py" in text
    assert "[]" in text
    assert "plain" in text and "'plain'" not in text


def test_other_results_are_pretty_printed():
    assert "[1, 2, 3]" in rendered([1, 2, 3])
    assert "None" in rendered(None)


def test_event_from_proto_and_format():
    proto = common_pb2.Event(
        seq=7,
        kind=common_pb2.EVENT_KIND_TASK_RUN_RETRYING,
        flow_run_id="fr",
        time=1000.0,
        node=1,
        task_name="parse",
        task_run_id=9,
        index=3,
        attempt=2,
        worker_id="w-1",
        error=common_pb2.TaskError(type="builtins.OSError", message="disk"),
        retry_at=1000.5,
    )
    event = FlowEvent.from_proto(proto)
    assert event.kind == "TASK_RUN_RETRYING" and not event.is_terminal
    assert event.error == TaskErrorInfo("builtins.OSError", "disk", "")
    line = format_event(event)
    for part in ["7", "TASK_RUN_RETRYING", "parse[3]", "attempt=2", "worker=w-1", "0.50s", "disk"]:
        assert part in line


def test_event_without_error_and_unknown_kind():
    event = FlowEvent.from_proto(common_pb2.Event(seq=1, kind=99, flow_run_id="fr"))
    assert event.kind == "UNKNOWN_99" and event.error is None
    done = FlowEvent.from_proto(
        common_pb2.Event(seq=2, kind=common_pb2.EVENT_KIND_FLOW_RUN_CANCELLED)
    )
    assert done.is_terminal


def test_lazy_commands_are_listed_and_explain_when_unavailable(monkeypatch):
    monkeypatch.setitem(cli_module.LAZY_COMMANDS, "coordinator", "no_such_module_xyz.cli:command")
    ctx = cli.make_context("fleetflow", ["flow-runs"], resilient_parsing=True)
    assert {"coordinator", "worker", "run", "watch", "flow-runs"} <= set(cli.list_commands(ctx))
    result = CliRunner().invoke(cli, ["coordinator"])
    assert result.exit_code == 1
    assert "unavailable" in result.output and "no_such_module_xyz" in result.output


def test_tables_are_wide_when_the_output_is_no_terminal(monkeypatch, capsys):
    # Issue 17: piped tables were cut at rich's 80 columns.
    from fleetflow._cli_render import PIPED_WIDTH, out_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert out_console().width == PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert out_console().width == 100


def test_ctrl_c_ends_watch_with_130_in_both_views(monkeypatch):
    """Ctrl-C in ``fleetflow watch``: exit 130 (128 + SIGINT), with or without --events."""
    from fleetflow import _cli_watch

    class Interrupted:
        def __init__(self, address):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def watch(self, flow_run_id, after_seq=0):
            yield FlowEvent(seq=1, kind="FLOW_RUN_STARTED", flow_run_id=flow_run_id, time=0.0)
            raise KeyboardInterrupt

    def follow(client, flow_run_id, console):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_watch, "Client", Interrupted)
    monkeypatch.setattr(_cli_watch, "follow_progress", follow)
    for extra in ([], ["--events"]):
        done = CliRunner().invoke(cli, ["watch", "abc", "--coordinator", "127.0.0.1:1", *extra])
        assert done.exit_code == 130, (extra, done.output)
        assert "Aborted" not in done.output
