"""Pure OpenPGP (RFC 4880) symmetric encryption, streaming, on ``cryptography``.

:class:`SymmetricWriter` writes one message (SKESK v4 + SEIPD v1 with MDC, AES-256) in
bounded memory; :func:`decrypt` reads what it and ``gpg --symmetric`` write and proves
integrity (MDC) before returning. Errors are :class:`~dfarchive.errors.CryptoError`
subclasses: :class:`~dfarchive.errors.IntegrityError` for anything damaged, truncated
or decrypted with the wrong passphrase, :class:`~dfarchive.errors.UnsupportedMessage`
for what this module does not read.
"""

from dfarchive.openpgp.reader import DecryptResult, decrypt, decrypt_bytes
from dfarchive.openpgp.streams import ByteSource
from dfarchive.openpgp.writer import PASSPHRASE_TYPE, SymmetricWriter, encrypt_bytes

__all__ = [
    "PASSPHRASE_TYPE",
    "ByteSource",
    "DecryptResult",
    "SymmetricWriter",
    "decrypt",
    "decrypt_bytes",
    "encrypt_bytes",
]
