"""``dfarchive <command>``: the operator commands.

What each command does, its options and the exit codes are in the README's
"Commands" section; the documents ``status --json`` prints, in "Run document".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from dfarchive import __version__
from dfarchive.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_config_option,
    load,
    run_main,
)
from dfarchive.cli.status_view import render_table, summary_line
from dfarchive.coordination.runstate import ENCRYPTED, STATUSES, RunDocument
from dfarchive.coordination.store import RunStore
from dfarchive.coordination.store.base import utc_now
from dfarchive.errors import DfArchiveError, TransitionRefused, UnknownRun
from dfarchive.plumbing.logs import setup_logging
from dfarchive.service.config import CONFIG_ENV, Config, config_path
from dfarchive.service.stores import open_store

if TYPE_CHECKING:
    from dfarchive.archiving.keys import Recipient
    from dfarchive.coordination.fixity import Check
    from dfarchive.ops.verify import ArchiveRecord
    from dfarchive.service.audit import AuditSettings

PROGRAM = "dfarchive"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``dfarchive`` console script; exits with the command's code."""
    run_main(PROGRAM, lambda: dispatch(argv))


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code.

    Raises: DfArchiveError for configuration and start-up errors (exit 2 in main).
    """
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    return command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Operator commands for dfarchive: set up, watch, retry, verify and "
        "restore archived sequencing runs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str):
        sub = commands.add_parser(name, help=help, description=help)
        add_config_option(sub)
        sub.set_defaults(command=handler)
        return sub

    command("init", cmd_init, "create the state database and keys_path")

    status = command("status", cmd_status, "show where every run stands")
    status.add_argument("--json", action="store_true", help="print the run documents as JSON")
    status.add_argument("--status", choices=STATUSES, help="only runs with this status")
    status.add_argument(
        "--fixity",
        choices=FIXITY_FILTERS,
        help="only runs whose last fixity audit failed or found the archive missing, or "
        "that are due for one (by fixity_interval_days; if that is 0, never audited)",
    )

    show = command("show", cmd_show, "print one run document as JSON")
    show.add_argument("run_id", metavar="RUN_ID")

    retry = command("retry", cmd_retry, "put a failed run back to pending")
    retry.add_argument("run_id", metavar="RUN_ID")

    release = command(
        "release",
        cmd_release,
        "put a processing run back to pending now, lease or not (its worker is gone)",
    )
    release.add_argument("run_id", metavar="RUN_ID")

    verify = command(
        "verify", cmd_verify, "check archives against their records (bit rot); recorded"
    )
    verify.add_argument("run_id", metavar="RUN_ID", nargs="?")
    verify.add_argument(
        "--deep",
        action="store_true",
        help="also decrypt it (needs the recipient's private key) and check the "
        "integrity code and the plaintext checksum",
    )
    verify.add_argument(
        "--all", action="store_true", help="audit every encrypted run (a fixity audit, now)"
    )
    verify.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="with --all: only runs not checked in the last DAYS days",
    )
    verify.add_argument(
        "--max-rate",
        type=float,
        metavar="MB/s",
        help="read at most this many MB/s (default: fixity_max_rate; 0: no limit)",
    )

    restore = command("restore", cmd_restore, "decrypt, verify and extract an archive")
    restore.add_argument("run_id", metavar="RUN_ID")
    restore.add_argument(
        "--to", required=True, type=Path, metavar="DIR", help="restore into DIR/RUN_ID"
    )
    restore.add_argument(
        "--archive", type=Path, metavar="PATH", help="the .tar.gpg (default: from the store)"
    )
    restore.add_argument(
        "--key", type=Path, metavar="PATH", help="the wrapped .key.gpg (default: from the store)"
    )

    scheduler = command("scheduler", cmd_scheduler, "run the scheduling loop")
    scheduler.add_argument("--once", action="store_true", help="one pass, then exit")

    adopt = command(
        "adopt",
        cmd_adopt,
        "record the archives and keys the original dataflow_archive tool made for its "
        "encrypted runs",
    )
    adopt.add_argument("run_ids", metavar="RUN_ID", nargs="*")
    adopt.add_argument(
        "--all", action="store_true", help="every encrypted run without an archive record"
    )
    adopt.add_argument(
        "--deep",
        action="store_true",
        help="also decrypt each archive (needs the recipient's private key), check its "
        "integrity code and record its plaintext checksum and member count",
    )
    return parser


# -- helpers --------------------------------------------------------------------------


# dfarchive.coordination.fixity.FILTERS, imported lazily
FIXITY_FILTERS = ("failed", "missing", "due")


def _load(args: argparse.Namespace) -> Config:
    """The config, with logging to stderr only (the daemon's log file may not be ours)."""
    config = load(args, log=False)
    setup_logging(config.log_level)
    return config


def _say(message: str) -> None:
    print(f"{PROGRAM}: {message}", file=sys.stderr)


def _gnupg_home(config: Config | None) -> str | None:
    return str(config.gnupg_home) if config is not None and config.gnupg_home else None


def _open_existing_store(config: Config) -> RunStore:
    """The configured store, for reading: never creates a database.

    Raises: StartupError when the SQLite state file does not exist yet.
    """
    from dfarchive.errors import StartupError

    state_file = config.state_file if config.couchdb is None else None
    if state_file is not None and not state_file.exists():
        raise StartupError(
            f"{config.source}: statusdb: no state database at {state_file} yet; "
            "run 'dfarchive init' first"
        )
    return open_store(config)


def _get_run(store: RunStore, run_id: str) -> RunDocument | None:
    doc = store.get(run_id)
    if doc is None:
        _say(f"no run {run_id!r} in the {store.backend} store")
    return doc


def _unwrapper(config: Config | None) -> Callable[[Path], bytes]:
    """Unwraps a run key with the configured keyring (else ``$GNUPGHOME``).

    Its errors are one line: a StartupError saying where the private key must be.
    """
    from dfarchive.archiving.keys import unwrap_key
    from dfarchive.errors import StartupError, ToolError

    home = _gnupg_home(config)

    def unwrap(path: Path) -> bytes:
        try:
            return unwrap_key(path, gnupg_home=home)
        except (ToolError, OSError) as error:
            keyring = home or os.environ.get("GNUPGHOME") or "~/.gnupg"
            details = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise StartupError(
                f"cannot unwrap the run key {path} with the keyring {keyring} (the "
                f"recipient's private key must be there: gnupg_home or GNUPGHOME): {details}"
            ) from None

    return unwrap


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


# -- commands ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create the state database and design documents, and keys_path (0700)."""
    from dfarchive.service.startup import check_keys_path, open_checked_store

    config = _load(args)
    check_keys_path(config)
    mode = stat.S_IMODE(config.keys_path.stat().st_mode)
    print(f"keys_path {config.keys_path} ready (mode {mode:04o})")
    with open_checked_store(config) as store:
        if config.couchdb is not None:
            where = f"CouchDB database {config.couchdb.database!r} at {config.couchdb.url}"
            print(f"state store ready: {where} (design docs _design/dfarchive, _design/lookup)")
        else:
            print(f"state store ready: SQLite {config.state_file} ({store.backend})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """The runs as a table, or with ``--json`` as their stored documents.

    Plaintext ``<run>.key`` files the original tool left in destination_path are
    flagged in the table and, in any case, in a warning on stderr (``--json`` prints
    the documents exactly as stored).
    """
    config = _load(args)
    with _open_existing_store(config) as store:
        docs = store.runs(args.status)
    if args.fixity:
        docs = _fixity_filtered(docs, args.fixity, config)
    leftovers = _key_leftovers(config, docs)
    if args.json:
        print(_dump(docs))
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        notes = {run_id: f"plaintext key {path} left" for run_id, path in leftovers.items()}
        if docs:
            for line in render_table(docs, utc_now(), width=width, notes=notes):
                print(line)
        filters = [
            f"{key} {value}"
            for key, value in (("status", args.status), ("fixity", args.fixity))
            if value
        ]
        print(summary_line(docs) + (f" ({', '.join(filters)})" if filters else ""))
    for path in leftovers.values():
        _say(
            f"warning: plaintext run key {path} left by dataflow_archive; it is removed "
            "when dfarchive archives or adopts that run"
        )
    return EXIT_OK


def _fixity_filtered(docs: list[RunDocument], wanted: str, config: Config) -> list[RunDocument]:
    from datetime import timedelta

    from dfarchive.coordination.fixity import matches_filter

    days = config.fixity_interval_days
    interval = timedelta(days=days) if days > 0 else None
    now = utc_now()
    return [doc for doc in docs if matches_filter(doc, wanted, now, interval)]


def _key_leftovers(config: Config, docs: list[RunDocument]) -> dict[str, Path]:
    """The original tool's plaintext keys in destination_path, of the runs in ``docs``
    (none when destination_path can't be listed from this host)."""
    from dfarchive.coordination.leftovers import legacy_key_leftovers

    try:
        return legacy_key_leftovers(config.destination_path, (doc["_id"] for doc in docs))
    except OSError:
        return {}


def cmd_show(args: argparse.Namespace) -> int:
    """One run document as JSON; exit 1 if there is no such run."""
    config = _load(args)
    with _open_existing_store(config) as store:
        doc = _get_run(store, args.run_id)
    if doc is None:
        return EXIT_CHECK_FAILED
    print(_dump(doc))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """failed → pending with the failure count reset; any other state: exit 1."""
    doc = _operator_transition(args, "retry", lambda store: store.retry(args.run_id))
    if doc is None:
        return EXIT_CHECK_FAILED
    print(
        f"{args.run_id}: failed -> {doc['status']} (failure count reset); "
        "it is archived again on the next scheduling pass"
    )
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    """processing → pending, not counted, whatever its lease says; other states: exit 1."""
    doc = _operator_transition(args, "release", lambda store: store.force_release(args.run_id))
    if doc is None:
        return EXIT_CHECK_FAILED
    released_from = doc["attempts"][-1]["worker_id"]
    print(
        f"{args.run_id}: processing -> {doc['status']} (was held by {released_from}); "
        "it is archived again on the next scheduling pass. If that worker is in fact "
        "alive, it stops its attempt at its next heartbeat."
    )
    return EXIT_OK


def _operator_transition(
    args: argparse.Namespace, verb: str, transition: Callable[[RunStore], RunDocument]
) -> RunDocument | None:
    """Apply an operator's transition; None (after saying why) if unknown or refused."""
    config = _load(args)
    with _open_existing_store(config) as store:
        try:
            return transition(store)
        except UnknownRun:
            _say(f"no run {args.run_id!r} in the {store.backend} store")
        except TransitionRefused as error:
            _say(f"cannot {verb}: {error}")
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the archive against its record and record the result as the run's
    ``fixity``: 0 ok, 1 mismatch or nothing to verify. ``--all``: :func:`verify_all`."""
    from dfarchive.service.audit import audit

    if (args.run_id is None) == (not args.all):
        _say("verify: give either RUN_ID or --all")
        return EXIT_USAGE
    if args.older_than is not None and not args.all:
        _say("verify: --older-than goes with --all")
        return EXIT_USAGE
    config = _load(args)
    settings = _audit_settings(args, config)
    with _open_existing_store(config) as store:
        if args.all:
            return verify_all(store, settings, older_than=args.older_than)
        doc = _get_run(store, args.run_id)
        if doc is None:
            return EXIT_CHECK_FAILED
        check, report = audit(doc, settings)
        if report is None:
            _say(f"nothing to verify: {check.reason}")
            return EXIT_CHECK_FAILED
        _record(store, args.run_id, check)
    for line in report.passed:
        print(f"ok        {line}")
    for line in report.problems:
        print(f"MISMATCH  {line}")
    kind = "deep verification" if args.deep else "verification"
    if report.ok:
        print(f"{args.run_id}: {report.archive}: {kind} passed")
        return EXIT_OK
    print(f"{args.run_id}: {report.archive}: {kind} FAILED ({len(report.problems)} problems)")
    return EXIT_CHECK_FAILED


def _audit_settings(args: argparse.Namespace, config: Config) -> AuditSettings:
    from dfarchive.coordination.fixity import MB, RateLimiter
    from dfarchive.ops.verify import recipient_key_lister
    from dfarchive.service.audit import AuditSettings

    rate = config.fixity_max_rate if args.max_rate is None else args.max_rate
    if rate < 0:
        raise DfArchiveError(f"--max-rate: expected MB/s >= 0, got {rate}")
    return AuditSettings(
        limiter=RateLimiter(rate * MB) if rate > 0 else None,
        deep=args.deep,
        unwrap=_unwrapper(config) if args.deep else None,
        recipient_keys=recipient_key_lister(_gnupg_home(config)),
    )


def _record(store: RunStore, run_id: str, check: Check) -> None:
    """Record an audit's outcome; a run that changed meanwhile is only reported."""
    try:
        store.record_fixity(run_id, check.record())
    except (TransitionRefused, UnknownRun) as error:
        _say(f"[{run_id}] result not recorded: {error}")


def verify_all(store: RunStore, settings: AuditSettings, *, older_than: float | None) -> int:
    """Audit every encrypted run (not checked for ``older_than`` days), one at a time,
    with a live progress line in a terminal; one line per run and a summary. 1 if any
    failed (a missing archive is reported, not a failure)."""
    from dfarchive.cli.progress_view import TerminalProgress, format_duration, wants_progress
    from dfarchive.coordination.attempt import AttemptOutcome
    from dfarchive.coordination.fixity import FAILED, MISSING, OK, auditable, checked_at
    from dfarchive.service.audit import audit

    now = utc_now()
    docs = store.runs(ENCRYPTED)
    unadopted = [doc["_id"] for doc in docs if not auditable(doc)]
    todo = [
        doc
        for doc in docs
        if auditable(doc)
        and (
            older_than is None
            or (checked := checked_at(doc)) is None
            or (now - checked).total_seconds() >= older_than * 86400
        )
    ]
    view = TerminalProgress(sys.stderr) if wants_progress(sys.stderr) else None
    if view is not None:
        view.attach()
    counts = dict.fromkeys((OK, FAILED, MISSING), 0)
    read, started = 0, utc_now()
    try:
        for number, doc in enumerate(todo, 1):
            label = f"[{number}/{len(todo)}] {doc['_id']}"
            total = int(doc["archive"].get("size") or 0)
            done = 0

            def progress(n: int, label: str = label, total: int = total) -> None:
                nonlocal done
                done += n
                if view is not None:
                    view.progress(label, done, total)

            check, report = audit(doc, settings, on_read=progress)
            if view is not None:
                view.ended(label, AttemptOutcome.ENCRYPTED, None)
            read += report.bytes_read if report is not None else 0
            _record(store, doc["_id"], check)
            counts[check.result] += 1
            word = {OK: "ok", FAILED: "FAILED", MISSING: "MISSING"}[check.result]
            print(f"{word:8}  {doc['_id']}" + (f": {check.reason}" if check.reason else ""))
    finally:
        if view is not None:
            view.close()
    seconds = (utc_now() - started).total_seconds()
    rate = f", {read / seconds / 1e6:.1f} MB/s" if seconds > 0 else ""
    kind = "deep " if settings.deep else ""
    print(
        f"{len(todo)} runs {kind}audited: {counts[OK]} ok, {counts[FAILED]} failed, "
        f"{counts[MISSING]} missing ({read / 1e9:.2f} GB in {format_duration(seconds)}{rate})"
    )
    if unadopted:
        print(
            f"{len(unadopted)} encrypted runs not audited: archived by the original tool and "
            f"not adopted yet (dfarchive adopt --all): {', '.join(unadopted[:5])}"
            + (" ..." if len(unadopted) > 5 else "")
        )
    return EXIT_CHECK_FAILED if counts[FAILED] else EXIT_OK


def _restore_config(args: argparse.Namespace) -> Config | None:
    """The config, or None when the command names both files and there is no config."""
    named = args.config or os.environ.get(CONFIG_ENV)
    standalone = args.archive is not None and args.key is not None
    if standalone and not named and not config_path(None).exists():
        setup_logging("INFO")
        return None
    return _load(args)


def _restore_record(
    args: argparse.Namespace, config: Config | None
) -> tuple[ArchiveRecord | None, int | None]:
    """The run's archive record (or None), or an exit code when the restore can't go on."""
    from dfarchive.errors import NotVerifiable
    from dfarchive.ops.verify import archive_record

    standalone = args.archive is not None and args.key is not None
    if config is None:
        return None, None
    try:
        with _open_existing_store(config) as store:
            doc = store.get(args.run_id)
            backend = store.backend
    except DfArchiveError as error:
        if not standalone:
            raise
        _say(f"warning: store not available ({error}); restoring without the record")
        return None, None
    if doc is None:
        if standalone:
            _say(f"note: no run {args.run_id!r} in the store; checking the MDC only")
            return None, None
        _say(
            f"no run {args.run_id!r} in the {backend} store "
            "(give --archive and --key to restore without it)"
        )
        return None, EXIT_CHECK_FAILED
    try:
        return archive_record(doc), None
    except NotVerifiable as error:
        if standalone:
            _say(f"note: {error}; checking the MDC only")
            return None, None
        _say(f"nothing to restore: {error}")
        return None, EXIT_CHECK_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    """Unwrap the key, decrypt, verify and extract into ``--to``; 1 if refused/damaged."""
    from dfarchive.errors import KeyFileError, RestoreError
    from dfarchive.ops.restore import restore_archive

    config = _restore_config(args)
    record, code = _restore_record(args, config)
    if code is not None:
        return code
    archive: Path | None = args.archive or (record.file if record else None)
    key_file: Path | None = args.key or (record.key_file if record else None)
    if key_file is None:
        _say(f"the record of {args.run_id!r} names no key file; give --key")
        return EXIT_USAGE
    if archive is None:  # no record comes back unless --archive and --key were given
        raise RuntimeError(f"no archive file for run {args.run_id!r}")
    for what, path in (("archive", archive), ("key file", key_file)):
        if not path.is_file():
            _say(f"{what} {path} does not exist")
            return EXIT_CHECK_FAILED
    try:
        passphrase = _unwrapper(config)(key_file)
        result = restore_archive(
            archive,
            passphrase,
            args.to,
            run_id=args.run_id,
            plaintext_size=record.plaintext_size if record else None,
            plaintext_sha256=record.plaintext_sha256 if record else None,
        )
    except (RestoreError, KeyFileError, OSError) as error:
        _say(f"restore failed, nothing restored: {error}")
        return EXIT_CHECK_FAILED
    checked = (
        "plaintext SHA-256 matches the record"
        if result.checked_against_record
        else "no recorded checksum to compare"
    )
    for path in result.restored:
        print(f"restored {path}")
    print(
        f"{args.run_id}: {result.members} members, {result.plaintext_size} bytes; "
        f"integrity code (MDC) correct, {checked}"
    )
    return EXIT_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    """The scheduling loop; the first SIGINT/SIGTERM stops it after the current pass."""
    from dfarchive.plumbing.sigsafe import SignalSafeEvent
    from dfarchive.service.metrics import scheduler_metrics
    from dfarchive.service.scheduler import run_scheduler

    config = load(args)
    stop = SignalSafeEvent()

    def graceful(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C: now

    signal.signal(signal.SIGINT, graceful)
    signal.signal(signal.SIGTERM, graceful)
    with scheduler_metrics(config):  # /metrics on metrics_port, if set
        return run_scheduler(config, once=args.once, stop=stop)


def cmd_adopt(args: argparse.Namespace) -> int:
    """Record the original tool's archives: 0 all adopted, 1 any run not adopted."""
    from dfarchive.service.startup import check_keys_path, check_recipient

    if bool(args.run_ids) == args.all:
        _say("adopt: give the runs to adopt, or --all (not both)")
        return EXIT_USAGE
    config = _load(args)
    check_keys_path(config)
    adopter = _Adopter(config, check_recipient(config), deep=args.deep)
    with _open_existing_store(config) as store:
        if args.all:
            docs = store.runs()
            for doc in docs:
                if _adoptable(doc):
                    adopter.adopt(store, doc)
                elif doc.get("status") == ENCRYPTED:
                    adopter.remove_leftover(doc["_id"])
        else:
            for run_id in args.run_ids:
                adopter.adopt(store, store.get(run_id) or run_id)
    print(adopter.summary())
    return EXIT_CHECK_FAILED if adopter.failed else EXIT_OK


def _adoptable(doc: RunDocument) -> bool:
    return doc.get("status") == ENCRYPTED and doc.get("archive") is None


class _Adopter:
    """Adopts runs one by one: a line per run on stdout, counts for the summary."""

    def __init__(self, config: Config, recipient: Recipient, *, deep: bool) -> None:
        from dfarchive.ops.adopt import recipient_key_ids

        self.config = config
        self.recipient = recipient
        self.recipient_keys = recipient_key_ids(recipient, gnupg_home=_gnupg_home(config))
        self.unwrap = _unwrapper(config) if deep else None
        self.adopted = self.failed = self.recorded = 0

    def adopt(self, store: RunStore, doc: RunDocument | str) -> None:
        """Adopt one run (a document, or the id of a run not in the store)."""
        from dfarchive.errors import AdoptionError
        from dfarchive.ops.adopt import adoption_record

        if isinstance(doc, str):
            return self._refused(doc, f"no such run in the {store.backend} store")
        run_id = doc["_id"]
        if doc.get("status") != ENCRYPTED:
            return self._refused(
                run_id, f"it is {doc.get('status')!r}, not encrypted: there is nothing to adopt"
            )
        if doc.get("archive") is not None:
            self.recorded += 1
            print(f"{run_id}: already has an archive record; nothing to adopt", flush=True)
            self.remove_leftover(run_id)
            return None
        try:
            record = adoption_record(
                run_id,
                destination_path=self.config.destination_path,
                keys_path=self.config.keys_path,
                recipient=self.recipient,
                recipient_keys=self.recipient_keys,
                unwrap=self.unwrap,
            )
            store.adopt(run_id, record)
        except (AdoptionError, TransitionRefused, UnknownRun) as error:
            return self._refused(run_id, str(error))
        self.adopted += 1
        plaintext = (
            f"; plaintext {record['plaintext_size']} bytes, {record['members']} members, "
            "integrity code (MDC) correct"
            if "plaintext_sha256" in record
            else ""
        )
        print(
            f"{run_id}: adopted {record['file']} ({record['size']} bytes, SHA-256 "
            f"{record['sha256']}{plaintext}); key {record['key_file']}",
            flush=True,  # one line per run as it goes, even into a file
        )
        self.remove_leftover(run_id)
        return None

    def remove_leftover(self, run_id: str) -> None:
        from dfarchive.coordination.leftovers import remove_legacy_key_leftover

        remove_legacy_key_leftover(self.config.destination_path, run_id)

    def _refused(self, run_id: str, reason: str) -> None:
        self.failed += 1
        print(f"{run_id}: NOT adopted: {reason}", flush=True)

    def summary(self) -> str:
        parts = [f"{self.adopted} adopted"]
        if self.recorded:
            parts.append(f"{self.recorded} already recorded")
        if self.failed:
            parts.append(f"{self.failed} NOT adopted (nothing recorded for them)")
        return "adopt: " + ", ".join(parts)
