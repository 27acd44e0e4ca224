"""Odd run folders through the real ``dataflow_archive --once`` process.

One sequencing tree holds every odd shape at once (a "zoo"); one real run archives it,
and each test below asserts the end state of one case: the run document, the files on
disk, the archive's contents (decrypted with the run key unwrapped by the test keyring)
and the log.
"""

from __future__ import annotations

import os
import socket
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfarchive.ops.restore import restore_archive
from tests.support.gpg import new_gnupg_home, tree_snapshot
from tests.support.workspace import (
    SENTINEL,
    Finished,
    Workspace,
    descendants,
    plaintext_of,
    tar_members,
)

SECRET = b"TOP-SECRET-OUTSIDE-THE-RUN-FOLDER\n"
OPTION_NAMES = (
    "-rf",
    "--checkpoint=1",
    "--checkpoint-action=exec=touch pwned",
    "--to-command=touch pwned",
    "--use-compress-program=touch pwned",
    "-C",
)
ODD_FILE_NAMES = (
    b"new\nline",
    b"carriage\rreturn",
    b"tab\there",
    b"bad_utf8_\xff\xfe",
    b"latin1_\xe9t\xe9",
    b"back\\slash",
    b"*glob?[x]",
    b"..dots",
    b" leading space",
    b"trailing space ",
    "naïve_日本".encode(),
    b"n" * 200,
)
LONG_RUN = "L" * 250  # <run>.tar.gpg.partial would be 266 bytes: over NAME_MAX
BACKSLASH_RUNS = {  # names GNU tar decodes on its command line unless told not to
    "octal_neighbour": "victim\\061",  # -> victim1, the run next to it
    "octal_dot": "\\056",  # -> ".": the whole sequencer folder
    "octal_dotdot": "\\056\\056",  # -> "..": the whole sequencing tree
    "backslash": "back\\\\slash",  # -> back\slash: not found
    "backslash_n": "line\\nfeed",  # -> a newline
}
BACKSLASH_INSIDE = "in\\061side \\\\.txt"  # a file name tar must keep as it is, too
NEIGHBOUR = "victim1"


@dataclass
class Zoo:
    ws: Workspace
    result: Finished
    outside: Path

    def doc(self, run_id: str) -> dict:
        return self.ws.documents()[run_id]

    def passphrase(self, run_id: str) -> bytes:
        return self.ws.run_key(run_id)

    def members(self, run_id: str) -> list[tarfile.TarInfo]:
        archive = self.ws.archives / f"{run_id}.tar.gpg"
        return tar_members(plaintext_of(archive, self.passphrase(run_id)))

    def restore(self, run_id: str, into: Path) -> Path:
        archive = self.ws.archives / f"{run_id}.tar.gpg"
        doc = self.doc(run_id)
        restore_archive(
            archive,
            self.passphrase(run_id),
            into,
            run_id=run_id,
            plaintext_size=doc["archive"]["plaintext_size"],
            plaintext_sha256=doc["archive"]["plaintext_sha256"],
        )
        return into / run_id

    def log(self) -> str:
        return self.ws.log.read_text(encoding="utf-8", errors="backslashreplace")

    def messages(self, text: str) -> set[str]:
        """Distinct log messages holding ``text`` (level and message, no time stamp):
        skipped folders are logged on every scheduling pass."""
        return {line[24:] for line in self.log().splitlines() if text in line}


def lexists(path: Path) -> bool:
    try:
        return os.path.lexists(path)
    except OSError:  # a name too long to exist
        return False


def build_zoo(ws: Workspace, outside: Path) -> None:
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_bytes(SECRET)

    ws.make_run("seqA", "sentinel_only", complete=False)
    (ws.seq / "seqA" / "sentinel_only" / "RunInfo.xml").unlink()
    (ws.seq / "seqA" / "sentinel_only" / SENTINEL).write_text("0\n")
    (ws.seq / "seqA" / "empty_no_sentinel").mkdir()

    run = ws.make_run("seqA", "run with spaces 'single' \"double\"")
    (run / "a file.txt").write_text("spaces\n")
    (run / 'it\'s "quoted".txt').write_text("quotes\n")

    for name in ("-rf", "--checkpoint-action=exec=touch pwned"):
        run = ws.make_run("seqA", name)
        for option in OPTION_NAMES:
            (run / option).write_text("a name, not an option\n")

    run = ws.make_run("seqA", "odd_file_names")
    for raw in ODD_FILE_NAMES:
        with open(os.path.join(os.fsencode(run), raw), "wb") as f:
            f.write(raw + b"\n")
    os.mkdir(os.path.join(os.fsencode(run), b"dir_\xff"))
    with open(os.path.join(os.fsencode(run), b"dir_\xff", b"inner\n"), "wb") as f:
        f.write(b"inside a non-UTF-8 directory\n")

    run = ws.make_run("seqA", "links")
    os.symlink(outside / "secret.txt", run / "abs_outside")
    os.symlink("../../../outside/secret.txt", run / "rel_outside")
    os.symlink(outside / "dir", run / "dir_outside")
    os.symlink("nowhere/at/all", run / "dangling")
    os.symlink("/etc/passwd", run / "abs_system")
    os.symlink("loop", run / "loop")
    os.symlink("RunInfo.xml", run / "rel_inside")

    run = ws.make_run("seqA", "fifo")
    os.mkfifo(run / "pipe")

    run = ws.make_run("seqA", "socket")
    with socket.socket(socket.AF_UNIX) as listener:  # a real bound socket (then closed)
        cwd = os.getcwd()
        os.chdir(run)  # bind by a short relative name: socket paths are limited
        try:
            listener.bind("sock")
        finally:
            os.chdir(cwd)

    run = ws.make_run("seqA", "device")
    os.mknod(run / "null_dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))

    run = ws.make_run("seqA", "special_excluded")  # the operator's remedy: tar_exclusions
    os.mknod(run / "ipc.sock", stat.S_IFSOCK | 0o600)
    os.mknod(run / "tty.dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))

    for run_id in BACKSLASH_RUNS.values():
        run = ws.make_run("seqA", run_id)
        (run / BACKSLASH_INSIDE).write_text("a backslash inside\n")
    (ws.make_run("seqA", NEIGHBOUR) / "neighbour_only.txt").write_text("victim1's own\n")

    ws.make_run("seqA", "_reserved")
    ws.make_run("seqA", "new\nline_run")
    ws.make_run("seqA", b"latin1_\xe9_run")
    ws.make_run("seqA", "dup_run")
    ws.make_run("seqB", "dup_run")
    real = ws.base / "elsewhere" / "symlinked_run"
    real.mkdir(parents=True)
    (real / SENTINEL).write_text("0\n")
    os.symlink(real, ws.seq / "seqA" / "symlinked_run")
    ws.make_run("seqA", LONG_RUN)
    mounted = ws.base / "instrument_share"  # a sequencer folder that is a mount, linked
    mounted.mkdir()
    os.symlink(mounted, ws.seq / "seqLinked")
    ws.make_run("seqLinked", "run_on_share")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    base = tmp_path_factory.mktemp("zoo")
    home = new_gnupg_home(base / "gpg")
    try:
        ws = Workspace(base, home)
        build_zoo(ws, base / "outside")
        config = ws.config(concurrency=2, tar_exclusions=["*.sock", "*.dev"])
        before = set(descendants(os.getpid()))
        result = ws.run("dataflow_archive", "-c", str(config), "--once", timeout=150)
        assert set(descendants(os.getpid())) <= before  # no tar/gpg left behind
        yield Zoo(ws, result, base / "outside")
    finally:
        home.stop_agent()


def test_the_run_ends_with_exit_1_and_leaves_nothing_half_done(zoo: Zoo) -> None:
    assert zoo.result.returncode == 1, zoo.result.output  # some runs were refused
    assert "Traceback" not in zoo.result.output
    assert "Logging error" not in zoo.result.output
    assert zoo.ws.partials() == []
    statuses = {doc["status"] for doc in zoo.ws.documents().values()}
    assert statuses <= {"encrypted", "pending"}  # nothing stuck in processing
    for doc in zoo.ws.documents().values():
        archive = zoo.ws.archives / f"{doc['_id']}.tar.gpg"
        assert lexists(archive) == (doc["status"] == "encrypted"), doc["_id"]


def test_a_folder_with_only_the_sentinel_is_archived(zoo: Zoo, tmp_path: Path) -> None:
    doc = zoo.doc("sentinel_only")
    assert doc["status"] == "encrypted"
    assert doc["archive"]["members"] == 2  # the folder and the sentinel
    assert [m.name for m in zoo.members("sentinel_only")] == [
        "sentinel_only",
        f"sentinel_only/{SENTINEL}",
    ]
    restored = zoo.restore("sentinel_only", tmp_path)
    assert tree_snapshot(restored) == tree_snapshot(zoo.ws.seq / "seqA" / "sentinel_only")


def test_an_empty_folder_without_sentinel_is_not_registered(zoo: Zoo) -> None:
    assert "empty_no_sentinel" not in zoo.ws.documents()


def test_spaces_and_quotes_in_names(zoo: Zoo, tmp_path: Path) -> None:
    run_id = "run with spaces 'single' \"double\""
    assert zoo.doc(run_id)["status"] == "encrypted"
    restored = zoo.restore(run_id, tmp_path)
    assert tree_snapshot(restored) == tree_snapshot(zoo.ws.seq / "seqA" / run_id)


@pytest.mark.parametrize("run_id", ["-rf", "--checkpoint-action=exec=touch pwned"])
def test_names_like_options_are_archived_as_names_and_nothing_runs(
    zoo: Zoo, run_id: str, tmp_path: Path
) -> None:
    doc = zoo.doc(run_id)
    assert doc["status"] == "encrypted"
    assert doc["archive"]["file"] == str(zoo.ws.archives / f"{run_id}.tar.gpg")
    names = {m.name for m in zoo.members(run_id)}
    assert {f"{run_id}/{option}" for option in OPTION_NAMES} <= names
    assert not [p for p in zoo.ws.base.rglob("pwned*")]  # no option was executed
    restored = zoo.restore(run_id, tmp_path)
    assert tree_snapshot(restored) == tree_snapshot(zoo.ws.seq / "seqA" / run_id)


def test_newlines_control_characters_and_non_utf8_bytes_in_file_names(
    zoo: Zoo, tmp_path: Path
) -> None:
    assert zoo.doc("odd_file_names")["status"] == "encrypted"
    restored = zoo.restore("odd_file_names", tmp_path)
    source = zoo.ws.seq / "seqA" / "odd_file_names"
    assert tree_snapshot(restored) == tree_snapshot(source)
    assert set(os.listdir(os.fsencode(restored))) >= set(ODD_FILE_NAMES)


def test_symlinks_are_archived_as_links_never_followed(zoo: Zoo, tmp_path: Path) -> None:
    doc = zoo.doc("links")
    assert doc["status"] == "encrypted"
    plaintext = plaintext_of(zoo.ws.archives / "links.tar.gpg", zoo.passphrase("links"))
    assert SECRET not in plaintext  # no target's bytes in the archive
    links = {m.name: m.linkname for m in tar_members(plaintext) if m.issym()}
    assert links == {
        "links/abs_outside": str(zoo.outside / "secret.txt"),
        "links/rel_outside": "../../../outside/secret.txt",
        "links/dir_outside": str(zoo.outside / "dir"),
        "links/dangling": "nowhere/at/all",
        "links/abs_system": "/etc/passwd",
        "links/loop": "loop",
        "links/rel_inside": "RunInfo.xml",
    }
    assert doc["archive"]["members"] == 1 + 2 + len(links)  # folder, 2 files, links
    restored = zoo.restore("links", tmp_path)
    assert tree_snapshot(restored) == tree_snapshot(zoo.ws.seq / "seqA" / "links")
    assert (zoo.outside / "secret.txt").read_bytes() == SECRET


def test_a_fifo_is_archived_as_a_fifo_entry_without_reading_it(zoo: Zoo, tmp_path: Path) -> None:
    assert zoo.doc("fifo")["status"] == "encrypted"
    [pipe] = [m for m in zoo.members("fifo") if m.name == "fifo/pipe"]
    assert pipe.isfifo()
    restored = zoo.restore("fifo", tmp_path)
    assert stat.S_ISFIFO(os.lstat(restored / "pipe").st_mode)


def test_a_socket_fails_the_attempt_naming_it(zoo: Zoo) -> None:
    doc = zoo.doc("socket")
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert "socket/sock: socket ignored" in doc["last_error"]
    assert not (zoo.ws.archives / "socket.tar.gpg").exists()
    assert not (zoo.ws.keys / "socket.key.gpg").exists()


def test_a_device_node_fails_the_attempt_naming_it(zoo: Zoo) -> None:
    doc = zoo.doc("device")
    assert (doc["status"], doc["failure_count"]) == ("pending", 1)
    assert "device/null_dev" in doc["last_error"]
    assert "device" in doc["last_error"]
    assert not (zoo.ws.archives / "device.tar.gpg").exists()


def test_sockets_and_devices_named_in_tar_exclusions_are_left_out(zoo: Zoo) -> None:
    assert zoo.doc("special_excluded")["status"] == "encrypted"
    assert {m.name for m in zoo.members("special_excluded")} == {
        "special_excluded", "special_excluded/RunInfo.xml", f"special_excluded/{SENTINEL}",
    }  # fmt: skip


def test_a_name_too_long_for_the_outputs_is_reported_not_registered(zoo: Zoo) -> None:
    """It once failed three attempts ("File name too long"), then ended failed."""
    assert LONG_RUN not in zoo.ws.documents()
    [reported] = zoo.messages(LONG_RUN)  # the same line on every pass
    assert "ERROR" in reported
    assert "the name is 250 bytes long; at most 239 fit in the output file names" in reported
    assert not list(zoo.ws.archives.glob("L*"))


def test_names_that_cannot_be_run_ids_are_logged_not_registered(zoo: Zoo) -> None:
    docs = zoo.ws.documents()
    assert not [run_id for run_id in docs if run_id.startswith("_")]
    assert not [run_id for run_id in docs if "\n" in run_id or "latin1" in run_id]
    log = zoo.log()
    assert "_reserved" in log and "reserved by CouchDB" in log
    [newline] = zoo.messages("line_run")
    assert "control characters" in newline  # one line: the name is quoted, not split
    assert "latin1_\\udce9_run" in log and "not valid UTF-8" in log


def test_the_same_run_name_under_two_sequencers_is_flagged(zoo: Zoo) -> None:
    doc = zoo.doc("dup_run")
    assert doc["status"] == "encrypted"
    assert doc["sequencer"] == "seqA"
    [flagged] = zoo.messages("seqB/dup_run")
    assert "ERROR" in flagged
    assert str(zoo.ws.seq / "seqA" / "dup_run") in flagged


@pytest.mark.parametrize("run_id", BACKSLASH_RUNS.values(), ids=BACKSLASH_RUNS.keys())
def test_a_run_named_with_backslashes_archives_exactly_its_own_folder(
    zoo: Zoo, run_id: str, tmp_path: Path
) -> None:
    doc = zoo.doc(run_id)
    assert doc["status"] == "encrypted", doc.get("last_error")
    assert sorted(m.name for m in zoo.members(run_id)) == [
        run_id, f"{run_id}/{SENTINEL}", f"{run_id}/RunInfo.xml", f"{run_id}/{BACKSLASH_INSIDE}",
    ]  # fmt: skip
    assert doc["archive"]["members"] == 4
    restored = zoo.restore(run_id, tmp_path)
    assert tree_snapshot(restored) == tree_snapshot(zoo.ws.seq / "seqA" / run_id)


def test_the_neighbour_a_backslash_name_decodes_to_is_archived_as_itself(zoo: Zoo) -> None:
    assert zoo.doc(NEIGHBOUR)["status"] == "encrypted"
    assert sorted(m.name for m in zoo.members(NEIGHBOUR)) == [
        NEIGHBOUR, f"{NEIGHBOUR}/{SENTINEL}", f"{NEIGHBOUR}/RunInfo.xml",
        f"{NEIGHBOUR}/neighbour_only.txt",
    ]  # fmt: skip


def test_a_symlinked_sequencer_folder_is_followed(zoo: Zoo) -> None:
    doc = zoo.doc("run_on_share")
    assert (doc["status"], doc["sequencer"]) == ("encrypted", "seqLinked")
    assert doc["path"] == str(zoo.ws.seq / "seqLinked" / "run_on_share")
    assert {m.name for m in zoo.members("run_on_share")} == {
        "run_on_share", "run_on_share/RunInfo.xml", f"run_on_share/{SENTINEL}",
    }  # fmt: skip


def test_a_symlinked_run_folder_is_reported_not_followed(zoo: Zoo) -> None:
    assert "symlinked_run" not in zoo.ws.documents()
    [reported] = zoo.messages("symlinked_run")
    assert "symbolic link" in reported
