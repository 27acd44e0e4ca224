"""The status table: a pure function of run documents and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dfarchive.cli.status_view import (
    HEADERS,
    age,
    progress_percent,
    render_table,
    row,
    summary_line,
    throughput_mb_s,
)
from dfarchive.coordination.runstate import timestamp

NOW = datetime(2026, 4, 28, 12, 0, 0, tzinfo=UTC)


def doc(run_id: str = "run_1", status: str = "pending", **fields) -> dict:
    return {
        "_id": run_id,
        "path": f"/seq/A/{run_id}",
        "status": status,
        "worker_id": "host-a:123",
        "failure_count": 0,
        "created_at": timestamp(NOW - timedelta(hours=5)),
        "updated_at": timestamp(NOW - timedelta(minutes=3)),
        "sequencer": "A",
        **fields,
    }


PROCESSING = doc(
    "run_2",
    "processing",
    progress={"bytes_done": 250, "bytes_total": 1000, "rate": 123_400_000},
)
ENCRYPTED = doc(
    "run_3", "encrypted", archive={"plaintext_size": 10**9, "seconds": 4.0}, progress=None
)
FAILED = doc("run_4", "failed", failure_count=3, last_error="ToolError: tar exited 2\nboom")


def test_a_row_per_status() -> None:
    assert row(doc(), NOW) == (
        "run_1", "A", "pending", "-", "-", "host-a:123", "3m", "0", "-", ""
    )  # fmt: skip
    assert row(PROCESSING, NOW)[3:5] == ("25.0%", "123.4")
    assert row(ENCRYPTED, NOW)[3:5] == ("100%", "250.0")
    assert row(FAILED, NOW)[7:] == ("3", "-", "ToolError: tar exited 2 boom")


def test_progress_is_capped_and_tolerates_bad_values() -> None:
    over = doc(status="processing", progress={"bytes_done": 1500, "bytes_total": 1000})
    assert progress_percent(over) == "100.0%"
    for progress in (None, {}, {"bytes_done": "x", "bytes_total": 10}, {"bytes_total": 0}):
        assert progress_percent(doc(status="processing", progress=progress)) == "-"
    assert progress_percent(doc(status="pending", progress={"bytes_done": 1})) == "-"


def test_throughput_tolerates_bad_values() -> None:
    assert throughput_mb_s(doc(status="processing", progress={"rate": True})) == "-"
    assert throughput_mb_s(doc(status="encrypted", archive={"plaintext_size": 5})) == "-"
    assert throughput_mb_s(doc(status="encrypted", archive="?")) == "-"


def test_age() -> None:
    def at(delta: timedelta) -> str:
        return age({"updated_at": timestamp(NOW - delta)}, NOW)

    assert at(timedelta(seconds=5)) == "5s"
    assert at(timedelta(minutes=59, seconds=59)) == "59m"
    assert at(timedelta(hours=3, minutes=5)) == "3h05m"
    assert at(timedelta(days=4, hours=2)) == "4d02h"
    assert at(timedelta(seconds=-30)) == "0s"  # a clock slightly ahead of ours
    assert age({"updated_at": "yesterday"}, NOW) == "-"
    assert age({}, NOW) == "-"


def test_a_hand_edited_document_still_shows() -> None:
    cells = row({"_id": "weird\x1b[31m", "failure_count": "2", "status": None}, NOW)
    assert cells == ("weird?[31m", "-", "-", "-", "-", "-", "-", "2", "-", "")


def test_render_aligns_columns_and_cuts_the_last_error() -> None:
    docs = [doc(), PROCESSING, ENCRYPTED, FAILED]
    lines = render_table(docs, NOW)
    assert lines[0].split() == ["RUN", *HEADERS[1:-1], "LAST", "ERROR"]
    assert len({line.index("host-a") for line in lines[1:]}) == 1  # one column
    assert lines[4].endswith("ToolError: tar exited 2 boom")
    cut = render_table(docs, NOW, width=len(lines[4]) - 5)
    assert cut[4].endswith("ToolError: tar exite...")
    assert max(len(line) for line in cut) <= len(lines[4]) - 5


def test_a_narrow_terminal_cuts_whole_lines() -> None:
    lines = render_table([FAILED], NOW, width=30)
    assert all(len(line) <= 30 for line in lines)
    assert lines[1].startswith("run_4")


@given(
    ids=st.lists(st.text(min_size=1, max_size=40), max_size=5),
    error=st.text(max_size=300),
    width=st.integers(min_value=1, max_value=300),
)
def test_lines_never_exceed_the_width(ids: list[str], error: str, width: int) -> None:
    docs = [doc(run_id, "failed", last_error=error) for run_id in ids]
    lines = render_table(docs, NOW, width=width)
    assert len(lines) == len(docs) + 1
    for line in lines:
        assert len(line) <= width
        assert "\n" not in line and "\r" not in line


def test_summary_line() -> None:
    assert summary_line([]) == "0 runs"
    assert summary_line([doc()]) == "1 run: 1 pending"
    docs = [doc(), FAILED, ENCRYPTED, doc(status="archived?"), PROCESSING, doc()]
    assert summary_line(docs) == (
        "6 runs: 2 pending, 1 processing, 1 encrypted, 1 failed, 1 archived?"
    )


def test_a_note_goes_first_in_the_last_column() -> None:
    note = "plaintext key /dest/run_4.key left"
    assert row(FAILED, NOW, note)[-1] == f"{note}; ToolError: tar exited 2 boom"
    assert row(doc(), NOW, "line\nbreak")[-1] == "line break"
    lines = render_table([doc(), FAILED], NOW, notes={"run_1": note})
    assert lines[1].endswith(f"  {note}")
    assert lines[2].endswith("  ToolError: tar exited 2 boom")
