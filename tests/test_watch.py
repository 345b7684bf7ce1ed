"""``esper watch``: follows events.jsonl while it grows (and when a resume cuts it back), shows a
finished run, quits on q or Ctrl-C, refuses a folder that is not a run, and never writes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from esper.cli import main
from esper.nissa import EventFollower, read_events, watch_run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("watch") / "run"
    argv = ["train", "heuristic", "--epochs", "20", "--run-dir", str(run_dir), "--no-live"]
    assert main(argv) == 0
    return run_dir


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file's size, modification time and bytes: what 'unchanged' means."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def last_seed_stages(run_dir: Path) -> dict[str, tuple[str, str]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    last = {}
    for seed in sorted(summary["seeds"], key=lambda s: s["germinated_epoch"]):
        last[seed["slot"]] = (seed["seed_id"], seed["final_stage"])
    return last


def test_once_on_a_finished_run_shows_it_and_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    assert main(["watch", str(finished_run), "--once"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "epoch 20/20" in out
    for slot, (_, stage) in last_seed_stages(finished_run).items():
        row = next(line for line in out.splitlines() if line.startswith(f"│ {slot} "))
        assert stage in row, row  # 80 columns (not a terminal): the row without the seed id
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    assert main(["watch", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err and "Traceback" not in err


def test_bad_interval_is_one_line(finished_run, capsys):
    assert main(["watch", str(finished_run), "--interval", "0"]) == 2
    assert "interval must be > 0" in capsys.readouterr().err


def _lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)


def test_follower_reads_lines_appended_in_pieces_by_another_thread(finished_run, tmp_path):
    lines = _lines(finished_run)
    path = tmp_path / "events.jsonl"
    path.touch()

    def write() -> None:
        with path.open("ab") as out:
            for line in lines:
                cut = len(line) // 2  # half a line first, as a reader can see mid-write
                out.write(line[:cut])
                out.flush()
                time.sleep(0.001)
                out.write(line[cut:])
                out.flush()

    follower = EventFollower(path)
    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    while writer.is_alive():
        poll = follower.poll()
        assert not poll.restarted
        seen += poll.events
    writer.join()
    seen += follower.poll().events
    assert [e.to_dict() for e in seen] == [e.to_dict() for e in read_events(path)]
    assert len(seen) == len(lines) and follower.skipped == 0


def test_follower_starts_over_when_a_resume_cuts_the_log_back(finished_run, tmp_path):
    lines = _lines(finished_run)
    end = min(50, len(lines))
    assert end > 40, "the run wrote too few events for this test"
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(lines[:40]))
    follower = EventFollower(path)
    assert len(follower.poll().events) == 40
    # A resume cuts back to 30 lines and replays: other timestamps, and soon past where we were.
    replay = [line.replace(b'"timestamp": ', b'"timestamp": 1') for line in lines[30:end]]
    path.write_bytes(b"".join(lines[:30] + replay))
    poll = follower.poll()
    assert poll.restarted and len(poll.events) == end
    assert poll.events[-1].to_dict() == read_events(path)[-1].to_dict()
    # Cut shorter than what was read: noticed from the size alone.
    path.write_bytes(b"".join(lines[:10]))
    poll = follower.poll()
    assert poll.restarted and len(poll.events) == 10
    path.unlink()
    assert follower.poll().restarted
    assert follower.poll().events == [] and not follower.poll().restarted


def test_follower_counts_a_bad_line_and_goes_on(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps({"event_type": "run_started", "data": {"slots": ["a"]}})
    path.write_text(f"{good}\nnot json\n\n{good}\n")
    follower = EventFollower(path)
    assert len(follower.poll().events) == 2 and follower.skipped == 1


def test_watch_run_on_a_non_terminal_prints_once(finished_run):
    console = Console(record=True, width=120, force_terminal=False)
    assert watch_run(finished_run, console) == 0
    assert "epoch 20/20" in console.export_text()


def _spawn_watch(run_dir: Path) -> tuple[subprocess.Popen, int]:
    leader, follower = pty.openpty()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", "LINES": "40"}
    argv = [sys.executable, "-m", "esper", "watch", str(run_dir), "--interval", "0.1"]
    proc = subprocess.Popen(
        argv,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        # As from a terminal: the test run may itself ignore SIGINT (a shell's background job
        # does), and a Python started so never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(follower)
    return proc, leader


def _read_until(leader: int, proc: subprocess.Popen, needle: str | None, timeout: float) -> str:
    """What the terminal showed until ``needle`` appeared (None: until the process ended, or
    ``timeout`` seconds passed)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunks.append(os.read(leader, 65536))
            except OSError:
                break
        text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
        if (needle is not None and needle in text) or (not ready and proc.poll() is not None):
            return text
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def _exit_status(leader: int, proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the watch to end while reading what it still draws, as a terminal would: a
    reader that stops leaves the pseudo-terminal's buffer full, and the watch's last frame (and
    the terminal-mode restore, which waits for output to drain) then blocks it.
    Returns ``(exit status, the text it drew meanwhile)``; ``subprocess.TimeoutExpired`` when it
    is still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    drawn = _read_until(leader, proc, None, timeout)
    return proc.wait(timeout=max(0.1, deadline - time.monotonic())), drawn


def test_watch_follows_a_run_being_written_and_quits_on_q(finished_run, tmp_path):
    run_dir = tmp_path / "live-run"
    run_dir.mkdir()
    shutil.copy(finished_run / "config.json", run_dir / "config.json")
    lines = _lines(finished_run)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:5]))
    proc, leader = _spawn_watch(run_dir)
    try:
        first = _read_until(leader, proc, "q or Ctrl-C quits", timeout=60)
        assert "running" in first and "epoch 20/20" not in first
        with (run_dir / "events.jsonl").open("ab") as out:  # the run goes on meanwhile
            for line in lines[5:]:
                out.write(line)
                out.flush()
                time.sleep(0.005)
        later = _read_until(leader, proc, "finished", timeout=30)
        assert "epoch 20/20" in later and "finished" in later
        for slot, (_, stage) in last_seed_stages(finished_run).items():
            rows = [line for line in later.splitlines() if f"│ {slot} " in line]
            assert rows and stage in rows[-1], slot
        os.write(leader, b"q")
        assert _exit_status(leader, proc, timeout=30)[0] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "events.jsonl"]


def test_watch_exits_cleanly_on_ctrl_c(finished_run):
    before = snapshot(finished_run)
    proc, leader = _spawn_watch(finished_run)
    try:
        shown = _read_until(leader, proc, "q or Ctrl-C quits", timeout=60)
        assert "finished" in shown
        proc.send_signal(signal.SIGINT)
        status, drawn = _exit_status(leader, proc, timeout=30)
        assert status == 0
        rest = drawn + _read_until(leader, proc, "Traceback", timeout=1)
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert snapshot(finished_run) == before
