"""Both engines with the real tar and gpg: output, restore with stock tools, failures,
cancellation, and where the run key may (not) go."""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dfarchive.archiving.engines import ENGINE_NAMES, get_engine
from dfarchive.archiving.keys import new_run_key, resolve_recipient, wrap_key
from dfarchive.archiving.validate import validate_archive
from dfarchive.errors import Cancelled, ToolError
from dfarchive.plumbing import threadhash
from tests.support.gpg import (
    children_of,
    encrypt_to_file,
    extract,
    files_containing,
    process_texts,
    stock_decrypt,
    tar_by_hand,
    tree_snapshot,
)

EXCLUSIONS = ["Demultiplex*", "demux_*"]


def test_get_engine_knows_both_names():
    assert ENGINE_NAMES == ("inprocess", "gpg")
    assert [get_engine(name).name for name in ENGINE_NAMES] == list(ENGINE_NAMES)
    with pytest.raises(ValueError, match="unknown engine 'zip'"):
        get_engine("zip")


@pytest.mark.parametrize("helpers", [True, False], ids=["hash-helpers", "hash-inline"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_archive_restores_identically_with_stock_gpg_and_tar(
    engine, direct, helpers, symmetric_gnupg_home, run_folder, tmp_path, monkeypatch
):
    # both ways of hashing, whatever this host's cores would choose
    monkeypatch.setattr(threadhash, "HELPER_MIN_CORES", 1 if helpers else 1 << 20)
    spec = run_folder()
    out = tmp_path / "run.tar.gpg"
    key = new_run_key()
    reports: list[int] = []
    result = encrypt_to_file(
        engine, spec.path, out, key, direct=direct, progress=reports.append
    )

    plaintext = tar_by_hand(spec.path)
    listed = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", "-"],
        input=plaintext,
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    archive = out.read_bytes()
    assert result.engine == engine
    assert result.plaintext_size == len(plaintext)
    assert result.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest()
    assert result.archive_size == len(archive) == out.stat().st_size
    assert result.members == len(listed)
    assert result.seconds > 0
    assert reports and reports[-1] == result.plaintext_size
    assert reports == sorted(reports)

    for method in ("inprocess", "gpg"):
        assert validate_archive(out, key, result, method=method) == (
            hashlib.sha256(archive).hexdigest()
        )

    decrypted = stock_decrypt(out, key)
    assert decrypted.returncode == 0, decrypted.stderr
    assert b"GOODMDC" in decrypted.stderr
    assert decrypted.stdout == plaintext
    extract(decrypted.stdout, tmp_path / "restored")
    assert tree_snapshot(tmp_path / "restored" / spec.path.name) == tree_snapshot(spec.path)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_exclusions_are_honoured_exactly_like_tar_exclude(
    engine, symmetric_gnupg_home, run_folder, tmp_path
):
    spec = run_folder(small_files=20, big_files=0)
    out = tmp_path / "run.tar.gpg"
    key = new_run_key()
    result = encrypt_to_file(engine, spec.path, out, key, exclusions=EXCLUSIONS)
    plaintext = tar_by_hand(spec.path, EXCLUSIONS)
    assert result.plaintext_sha256 == hashlib.sha256(plaintext).hexdigest()
    validate_archive(out, key, result)
    extract(stock_decrypt(out, key).stdout, tmp_path / "restored")
    restored = {p.name for p in (tmp_path / "restored" / spec.path.name).iterdir()}
    assert "Demultiplex_Stats" not in restored
    assert "demux_1" not in restored
    assert "RunInfo.xml" in restored


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_missing_run_folder_is_a_tool_error_naming_it(engine, symmetric_gnupg_home, tmp_path):
    (tmp_path / "runs").mkdir()
    missing = tmp_path / "runs" / "240101_GONE"
    with pytest.raises(ToolError) as caught:
        encrypt_to_file(engine, missing, tmp_path / "out.tar.gpg", new_run_key())
    assert str(missing) in str(caught.value)
    assert "Cannot stat" in str(caught.value)
    assert children_of(os.getpid()) == set()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_file_changed_while_archived_is_a_tool_error(engine, symmetric_gnupg_home, tmp_path):
    run = tmp_path / "runs" / "240101_CHANGING"
    run.mkdir(parents=True)
    big = run / "big.bin"
    big.write_bytes(bytes(32 << 20))  # tar is inside it when the first chunk arrives

    def touch_once(done: int) -> None:
        if done < big.stat().st_size:
            os.utime(big, (1, 1))

    with pytest.raises(ToolError, match="file changed as we read it") as caught:
        encrypt_to_file(engine, run, tmp_path / "out.tar.gpg", new_run_key(), progress=touch_once)
    assert str(run) in str(caught.value)


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_key_never_reaches_argv_environment_or_plain_files(
    engine, symmetric_gnupg_home, run_folder, tmp_path
):
    # larger than the engine buffers ahead of its first chunk: tar is still running then
    spec = run_folder(small_files=20, big_files=1, big_size=32 << 20)
    key = new_run_key()
    seen: dict[int, bytes] = {}

    def sample_children(_done: int) -> None:
        pending = list(children_of(os.getpid()))
        while pending:  # children and their descendants
            pid = pending.pop()
            seen[pid] = process_texts(pid)
            pending.extend(children_of(pid))

    result = encrypt_to_file(
        engine, spec.path, tmp_path / "run.tar.gpg", key, progress=sample_children
    )
    validate_archive(tmp_path / "run.tar.gpg", key, result, method="gpg")
    assert len(seen) >= (2 if engine == "gpg" else 1)  # tar (and gpg) were sampled
    assert all(b"tar" in text or b"gpg" in text for text in seen.values())
    assert not [pid for pid, text in seen.items() if key in text]
    assert files_containing([tmp_path, symmetric_gnupg_home], key) == []


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    """A 300 MB run folder (no holes): long enough to cancel in the middle."""
    run = tmp_path_factory.mktemp("big") / "240101_BIG"
    run.mkdir()
    block = os.urandom(1 << 20)
    for i in range(3):
        with open(run / f"part_{i}.bin", "wb") as f:
            for _ in range(100):
                f.write(block)
    return run


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_cancel_mid_run_is_prompt_and_leaves_no_child(
    engine, symmetric_gnupg_home, big_run, tmp_path
):
    cancel = threading.Event()
    running = threading.Event()
    cancelled_at: list[float] = []
    children: set[int] = set()

    def on_progress(done: int) -> None:
        if done and not running.is_set():
            children.update(children_of(os.getpid()))
            running.set()

    def canceller() -> None:
        if running.wait(30):
            cancelled_at.append(time.monotonic())
            cancel.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    out = tmp_path / "run.tar.gpg"
    try:
        with pytest.raises(Cancelled):
            encrypt_to_file(
                engine, big_run, out, new_run_key(), progress=on_progress, cancel=cancel
            )
        raised_at = time.monotonic()
    finally:
        running.set()
        thread.join(30)
    assert cancelled_at, "the engine never reported progress"
    assert raised_at - cancelled_at[0] < 2
    assert out.stat().st_size < 300 << 20  # really stopped in the middle
    assert len(children) == (2 if engine == "gpg" else 1)
    assert children_of(os.getpid()) == set()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists()
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_restore_with_the_documented_stock_pipeline(gnupg_home, run_folder, tmp_path):
    spec = run_folder(small_files=30, big_files=1, big_size=1 << 20)
    key = new_run_key()
    encrypt_to_file("inprocess", spec.path, tmp_path / "run.tar.gpg", key)
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    (tmp_path / "run.key.gpg").write_bytes(wrap_key(key, recipient, gnupg_home=gnupg_home.home))
    (tmp_path / "restored").mkdir()
    subprocess.run(
        [
            "bash",
            "-c",
            "set -o pipefail; gpg -d run.key.gpg | gpg --batch --pinentry-mode "
            "loopback --passphrase-fd 0 -d run.tar.gpg | tar -x -C restored",
        ],
        cwd=tmp_path,
        env=gnupg_home.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert tree_snapshot(tmp_path / "restored" / spec.path.name) == tree_snapshot(spec.path)


class Injected(Exception):
    """Stands for Dramatiq's Shutdown / TimeLimit, raised asynchronously in the worker."""


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_asynchronous_exception_mid_run_kills_the_children(
    engine, symmetric_gnupg_home, big_run, tmp_path, monkeypatch
):
    # Report progress on every chunk, and strike only from the third one on: by then the
    # engine has started every thread it will start. (On CPython 3.11 an asynchronous
    # exception aimed at a thread that is starting another one can land in the new
    # thread instead, leaving the starter blocked in Thread.start() for ever.)
    monkeypatch.setattr("dfarchive.archiving.engines.meter.PROGRESS_INTERVAL", 0.0)
    running = threading.Event()
    children: set[int] = set()
    outcome: list[BaseException] = []
    reports: list[int] = []

    def on_progress(done: int) -> None:
        reports.append(done)
        if len(reports) == 3:
            children.update(children_of(os.getpid()))
            running.set()

    def worker() -> None:
        try:
            encrypt_to_file(
                engine, big_run, tmp_path / "run.tar.gpg", new_run_key(), progress=on_progress
            )
        except BaseException as exc:  # what Dramatiq's worker thread would see
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert running.wait(30), "the engine never reported progress"
    injected_at = time.monotonic()
    assert (
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(Injected)
        )
        == 1
    )
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - injected_at < 3
    assert [type(exc) for exc in outcome] == [Injected]
    assert children and children_of(os.getpid()) == set()
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
