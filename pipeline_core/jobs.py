"""Job ids: unguessable, URL-safe, and signed, so a service can tell an id it issued from nonsense."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_RANDOM_BYTES = 16  # 128 bits: unguessable
_TAG_BYTES = 8
JOB_ID_LENGTH = 32  # base64url of 24 bytes, no padding


def _tag(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()[:_TAG_BYTES]


def new_job_id(secret: bytes) -> str:
    """A fresh job id: 128 random bits plus a 64-bit HMAC tag, base64url encoded (32 characters)."""
    nonce = secrets.token_bytes(_RANDOM_BYTES)
    return base64.urlsafe_b64encode(nonce + _tag(secret, nonce)).decode()


def is_issued_job_id(job_id: str, secret: bytes) -> bool:
    """Whether `job_id` was made by `new_job_id` with this secret (constant-time check)."""
    if len(job_id) != JOB_ID_LENGTH:
        return False
    try:
        raw = base64.urlsafe_b64decode(job_id.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    nonce, tag = raw[:_RANDOM_BYTES], raw[_RANDOM_BYTES:]
    return hmac.compare_digest(tag, _tag(secret, nonce))
