"""Run keys and the recipient: resolve, refuse unusable keys, wrap and unwrap."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dfarchive.errors import RecipientError
from dfarchive.keys import Recipient, new_run_key, resolve_recipient, unwrap_key, wrap_key
from tests.gpg_fixtures import GnupgHome


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
