"""Job ids: unguessable, URL-safe, and signed, so a service can tell an id it issued from nonsense."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_RANDOM_BYTES = 16  # 128 bits: unguessable
_TAG_BYTES = 8
JOB_ID_LENGTH = 32  # base64url of 24 bytes, no padding
# Only the URL-safe alphabet: Python's base64 decoders also take `+`, `/`, padding and (without validation)
# skip any other character, so a decoder alone would accept forged spellings of a real id.
_CANONICAL = re.compile(rf"[A-Za-z0-9_-]{{{JOB_ID_LENGTH}}}")


def _tag(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()[:_TAG_BYTES]


def new_job_id(secret: bytes) -> str:
    """A fresh job id: 128 random bits plus a 64-bit HMAC tag, base64url encoded (32 characters)."""
    nonce = secrets.token_bytes(_RANDOM_BYTES)
    return base64.urlsafe_b64encode(nonce + _tag(secret, nonce)).decode()


def _canonical_bytes(job_id: str) -> bytes | None:
    """The id's bytes if `job_id` is exactly how `new_job_id` spells them, else None."""
    if not _CANONICAL.fullmatch(job_id):
        return None
    raw = base64.urlsafe_b64decode(job_id)
    # Decode, encode again, compare: one spelling per id, whatever the decoder tolerates.
    return raw if base64.urlsafe_b64encode(raw).decode() == job_id else None


def is_issued_job_id(job_id: str, secret: bytes) -> bool:
    """Whether `job_id` was made by `new_job_id` with this secret, spelt as it made it (constant-time check)."""
    raw = _canonical_bytes(job_id)
    if raw is None or len(raw) != _RANDOM_BYTES + _TAG_BYTES:
        return False
    nonce, tag = raw[:_RANDOM_BYTES], raw[_RANDOM_BYTES:]
    return hmac.compare_digest(tag, _tag(secret, nonce))
