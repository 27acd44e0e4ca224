"""Run keys and the recipient: resolve, refuse unusable keys, wrap and unwrap."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dfarchive.archiving.keys import (
    Recipient,
    gpg_passphrase,
    new_run_key,
    resolve_recipient,
    unwrap_key,
    wrap_key,
)
from dfarchive.errors import CryptoError, KeyFileError, RecipientError
from dfarchive.openpgp import decrypt_bytes
from tests.support.gpg import GnupgHome


def subkey_ids(home: GnupgHome, fingerprint: str) -> list[str]:
    listing = home.gpg("--with-colons", "--list-keys", "--", fingerprint).decode()
    return [line.split(":")[4] for line in listing.splitlines() if line.startswith("sub:")]


def test_new_run_key_is_64_hex_characters_and_fresh():
    keys = {new_run_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(rb"[0-9a-f]{64}", key) for key in keys)


@pytest.mark.parametrize("by", ["fingerprint", "email", "uid part"])
def test_resolves_the_recipient(gnupg_home, by):
    name = {
        "fingerprint": gnupg_home.fingerprint,
        "email": "test@dfarchive.invalid",
        "uid part": "dfarchive test",
    }[by]
    recipient = resolve_recipient(name, gnupg_home=gnupg_home.home)
    assert recipient == Recipient(
        fingerprint=gnupg_home.fingerprint,
        uid=gnupg_home.uid,
        expires=None,
        encryption_key_ids=tuple(subkey_ids(gnupg_home, gnupg_home.fingerprint)),
    )


def test_missing_key_is_a_recipient_error(gnupg_home):
    with pytest.raises(RecipientError, match=r"'nobody@dfarchive\.invalid': no public key"):
        resolve_recipient("nobody@dfarchive.invalid", gnupg_home=gnupg_home.home)


def test_ambiguous_name_is_a_recipient_error(gnupg_home):
    gnupg_home.make_key("dfarchive other <other@dfarchive.invalid>")
    with pytest.raises(RecipientError, match="ambiguous: 2 keys match"):
        resolve_recipient("dfarchive.invalid", gnupg_home=gnupg_home.home)


def test_sign_only_key_is_a_recipient_error(gnupg_home):
    fingerprint = gnupg_home.make_key("signer <signer@dfarchive.invalid>", subkey_usage=None)
    with pytest.raises(RecipientError, match=f"{fingerprint}.*no usable encryption key"):
        resolve_recipient("signer@dfarchive.invalid", gnupg_home=gnupg_home.home)


def test_expired_key_is_a_recipient_error(gnupg_home):
    fingerprint = gnupg_home.make_key(
        "expired <expired@dfarchive.invalid>", expire="1d", faked_time="20200101T000000!"
    )
    with pytest.raises(RecipientError, match=f"{fingerprint}.*expired"):
        resolve_recipient("expired@dfarchive.invalid", gnupg_home=gnupg_home.home)


def test_expired_encryption_subkey_is_a_recipient_error(gnupg_home):
    fingerprint = gnupg_home.make_key(
        "subexp <subexp@dfarchive.invalid>", subkey_expire="1d", faked_time="20200101T000000!"
    )
    with pytest.raises(RecipientError, match="no usable encryption key"):
        resolve_recipient(fingerprint, gnupg_home=gnupg_home.home)


def test_revoked_key_is_a_recipient_error(gnupg_home):
    fingerprint = gnupg_home.make_key("revoked <revoked@dfarchive.invalid>")
    certificate = Path(gnupg_home.home, "openpgp-revocs.d", f"{fingerprint}.rev").read_bytes()
    gnupg_home.gpg("--import", input=certificate.replace(b"\n:-----", b"\n-----"))
    with pytest.raises(RecipientError, match=f"{fingerprint}.*revoked"):
        resolve_recipient(fingerprint, gnupg_home=gnupg_home.home)


def test_wrapped_key_decrypts_with_stock_gpg_to_exactly_the_key(gnupg_home, tmp_path):
    key = new_run_key()
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    wrapped = wrap_key(key, recipient, gnupg_home=gnupg_home.home)
    assert key not in wrapped
    assert wrapped[0] & 0x80 and not wrapped.startswith(b"-----")  # binary OpenPGP
    path = tmp_path / "run.key.gpg"
    path.write_bytes(wrapped)
    assert gnupg_home.gpg("--decrypt", str(path)) == key
    assert unwrap_key(path, gnupg_home=gnupg_home.home) == key
    status = gnupg_home.gpg("--status-fd", "1", "--list-only", "--decrypt", str(path))
    assert f"ENC_TO {recipient.encryption_key_ids[0]}".encode() in status


def test_wrap_refuses_a_result_not_addressed_to_the_pinned_keys(gnupg_home):
    other = gnupg_home.make_key("other <other@dfarchive.invalid>")
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    mismatched = Recipient(
        fingerprint=recipient.fingerprint,
        uid=recipient.uid,
        expires=None,
        encryption_key_ids=tuple(subkey_ids(gnupg_home, other)),
    )
    with pytest.raises(RecipientError, match="addressed to"):
        wrap_key(new_run_key(), mismatched, gnupg_home=gnupg_home.home)


def test_wrap_to_a_key_that_became_unusable_is_a_recipient_error(gnupg_home):
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    certificate = Path(
        gnupg_home.home, "openpgp-revocs.d", f"{gnupg_home.fingerprint}.rev"
    ).read_bytes()
    gnupg_home.gpg("--import", input=certificate.replace(b"\n:-----", b"\n-----"))
    with pytest.raises(RecipientError, match="not usable"):
        wrap_key(new_run_key(), recipient, gnupg_home=gnupg_home.home)


def test_key_is_not_on_any_command_line(gnupg_home, monkeypatch):
    key = new_run_key()
    argvs: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(argv, *args, **kwargs):
        argvs.append(list(argv))
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    wrap_key(key, recipient, gnupg_home=gnupg_home.home)
    assert argvs
    assert not [argv for argv in argvs if any(key.decode() in arg for arg in argv)]


# -- passphrases as gpg reads them --------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "passphrase"),
    [
        (b"ab\ncd", b"ab"),
        (b"ab\0cd", b"ab"),
        (b"a\0b\nc", b"a"),
        (b"a\nb\0c", b"a"),
        (b"ab\r\ncd", b"ab\r"),  # a carriage return is kept
        (b"abc\r", b"abc\r"),
        (b"x\n", b"x"),
        (b"\xff" * 256, b"\xff" * 256),
        (b"\nabc", b""),
        (b"\0abc", b""),
        (b"", b""),
    ],
)
def test_gpg_passphrase_ends_at_the_first_newline_or_nul(key: bytes, passphrase: bytes) -> None:
    assert gpg_passphrase(key) == passphrase


def test_gpg_passphrase_leaves_dfarchive_keys_alone() -> None:
    for _ in range(100):
        key = new_run_key()
        assert gpg_passphrase(key) == key


@pytest.mark.parametrize(
    "key",
    [
        b"\xfe\n" + bytes(range(256))[:254],
        b"\x01\x02\x03\0" + b"\n" * 252,
        bytes(range(11, 200)) + b"\0tail",
        b"abc\r\ndef",
        b"abc\rdef\0ghi",
        b"no end at all \xff\xfe\r",
    ],
    ids=["newline_at_1", "nul_at_3", "nul_at_189", "crlf", "cr_then_nul", "neither"],
)
def test_gpg_passphrase_is_what_gpg_uses_from_a_passphrase_file(
    key: bytes, tmp_path: Path, symmetric_gnupg_home: Path
) -> None:
    """The evidence: what ``gpg --symmetric --passphrase-file`` encrypted with is what
    :func:`gpg_passphrase` returns (the original tool's command)."""
    (tmp_path / "run.key").write_bytes(key)
    blob = subprocess.run(
        ["gpg", "--batch", "--symmetric", "--cipher-algo", "AES256", "--compress-algo", "none",
         "--passphrase-file", str(tmp_path / "run.key"), "--output", "-"],
        input=b"data", capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert decrypt_bytes(blob, gpg_passphrase(key)) == b"data"
    if gpg_passphrase(key) != key:
        with pytest.raises(CryptoError):
            decrypt_bytes(blob, key)


def test_unwrap_refuses_a_key_file_holding_no_passphrase(gnupg_home, tmp_path):
    recipient = resolve_recipient(gnupg_home.fingerprint, gnupg_home=gnupg_home.home)
    path = tmp_path / "run.key.gpg"
    path.write_bytes(wrap_key(b"\nthe rest", recipient, gnupg_home=gnupg_home.home))
    with pytest.raises(KeyFileError, match=f"key file {path} holds no passphrase"):
        unwrap_key(path, gnupg_home=gnupg_home.home)
