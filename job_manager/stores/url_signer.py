"""HMAC signatures for the standalone mode's upload and download URLs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from common import private_files

KEY_BYTES = 32


class UrlSigner:
    """Signs (method, object, expiry) so that a URL cannot be altered or reused elsewhere."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the URL signing key must be at least {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_key_file(cls, path: Path) -> UrlSigner:
        """Load the key from ``path``, creating it (readable by the owner only) the first
        time; a key another account could have planted or read is refused."""
        private_files.create_file(path, secrets.token_bytes(KEY_BYTES))
        key = private_files.read_file(path, secret=True)
        assert key is not None  # made just above, in a folder no one else may change
        return cls(key)

    def sign(self, method: str, object_name: str, expires_epoch_s: int) -> str:
        """The hex signature of one access."""
        message = f"{method.upper()}\n{object_name}\n{expires_epoch_s}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(
        self,
        method: str,
        object_name: str,
        expires_epoch_s: int,
        signature: str,
        now_epoch_s: float,
    ) -> bool:
        """True when the signature is right and has not expired."""
        if now_epoch_s > expires_epoch_s:
            return False
        expected = self.sign(method, object_name, expires_epoch_s)
        return hmac.compare_digest(expected, signature)
