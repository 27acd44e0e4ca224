"""dfarchive's error tree.

Library errors (requests, ibm_cloud_sdk_core, sqlite3, subprocess, cryptography) are
caught at the module that talks to the library and re-raised as one of these, so
callers never import a third-party package to handle a failure.
"""

from __future__ import annotations


class DfArchiveError(Exception):
    """Base class of every error dfarchive raises on purpose."""


# -- configuration -----------------------------------------------------------------


class ConfigError(DfArchiveError):
    """The configuration file is missing, unreadable or invalid.

    ``str()`` is one line naming the file, the key and what was expected.
    """

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


# -- state store ---------------------------------------------------------------------


class StoreError(DfArchiveError):
    """The run-state store failed."""


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, timeout, 5xx).

    Transient: callers retry with backoff and never count it against a run.
    """


class StoreAuthError(StoreError):
    """The store rejected the credentials (HTTP 401/403). Not retried."""


class UnknownRun(StoreError):
    """No run document with that id."""


class TransitionRefused(StoreError):
    """The run's current state does not allow the requested transition."""


class NotClaimable(TransitionRefused):
    """The run is not pending (someone else holds it, or it is done or failed)."""


class ClaimLost(TransitionRefused):
    """The caller's claim on the run is no longer valid (reclaimed or released)."""


# -- OpenPGP -------------------------------------------------------------------------


class CryptoError(DfArchiveError):
    """An OpenPGP message could not be written or read."""


class IntegrityError(CryptoError):
    """The message is damaged, truncated, tampered with or the passphrase is wrong."""


class UnsupportedMessage(CryptoError):
    """The message uses a packet or algorithm dfarchive does not read."""


# -- archiving -----------------------------------------------------------------------


class ArchiveError(DfArchiveError):
    """Archiving one run failed; the run is failed (counted) and may be retried."""


class PreflightError(ArchiveError):
    """The run cannot be archived as things stand (missing folder, no space, ...)."""


class OutOfSpace(ArchiveError):
    """The destination has no room for the run. Not the run's fault: it goes back to
    pending uncounted and is tried again later."""


class ToolError(ArchiveError):
    """tar or gpg exited with an error or warning."""


class RunFolderChanged(ToolError):
    """The run folder changed while it was archived; the run is retried later.

    A ToolError as before, so callers that do not tell it apart treat it as then.
    """


class ValidationError(ArchiveError):
    """The written archive did not read back as exactly what was archived."""


class Cancelled(DfArchiveError):
    """Work was stopped from outside (shutdown, lost claim). Not a failure of the run."""


class RecipientError(DfArchiveError):
    """The GPG recipient key is missing or unusable. A start-up error, not a run failure."""


class KeyFileError(DfArchiveError):
    """A wrapped run key file can't be a run key: not a message encrypted to a public
    key, or it holds no passphrase. A check that failed, not a start-up error."""


# -- start-up, broker, metrics ------------------------------------------------------


class StartupError(DfArchiveError):
    """dfarchive can't start with this configuration on this host."""


class BrokerError(DfArchiveError):
    """The message broker could not be reached or refused a message."""


class MetricsError(DfArchiveError):
    """The metrics endpoint could not be started."""


# -- verification, adoption, audits -------------------------------------------------


class NotVerifiable(DfArchiveError):
    """The run has no archive to verify (not encrypted, or no archive record: archived
    by the original tool and not adopted yet)."""


class AdoptionError(DfArchiveError):
    """A run's legacy files can't be adopted; the message names the file and why."""


class Yielded(DfArchiveError):
    """The audit stopped because archive work arrived; nothing was recorded."""


# -- restore -------------------------------------------------------------------------


class RestoreError(DfArchiveError):
    """The archive could not be restored; nothing was left in the destination."""


class UnsafeMember(RestoreError):
    """A member would be extracted outside the destination, or through a link."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"refusing archive member {name!r}: {reason}")


class RestoreIntegrityError(RestoreError):
    """The archive is damaged, tampered with, or not the one recorded for the run."""


class DestinationExists(RestoreError):
    """The run folder already exists in the destination directory."""
