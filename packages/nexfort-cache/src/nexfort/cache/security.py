"""What the cache trusts: the signing secret's strength, the Redis URL (checked, and redacted wherever shown).

- ``NEXFORT_CACHE_SECRET`` is the HMAC key of every entry: anyone who knows it can make a machine run code.
  A short or repetitive one is recovered offline from a single entry, so :func:`check_secret` refuses one of
  fewer than :data:`MIN_SECRET_BYTES` bytes, or of visibly low entropy (few distinct bytes, repeated patterns:
  a heuristic; it cannot tell a random key from a long passphrase), with the command that makes a good one.
- A Redis URL may carry a password (``redis://:pw@host``, ``?password=pw``): :func:`redact` replaces it with
  ``***`` in everything nexfort prints (warnings, errors, ``python -m nexfort.cache stats``).
- :func:`check_redis_url` accepts only the schemes redis-py connects with (``redis://``, ``rediss://``,
  ``unix://``), so a wrong URL is an error naming it, not a confusing failure later.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from nexfort.core.api import NexfortConfigError

MIN_SECRET_BYTES = 32
MIN_SECRET_DISTINCT = 8  # "aaaa...", "passwordpassword...": a dictionary attack, not a key
MIN_SECRET_BITS = 80.0  # estimated (bytes' Shannon entropy x length): token_hex(16) >= ~90, token_hex(32) ~250
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_hex(32))"'
REDIS_SCHEMES = ("redis", "rediss", "unix")
_HIDDEN = "***"


class NexfortCacheConfigError(NexfortConfigError):
    """A cache configuration nexfort cannot honour safely (e.g. a shared store without a secret)."""


def estimated_bits(secret: bytes) -> float:
    """An upper estimate of the secret's entropy: its bytes' Shannon entropy times its length."""
    if not secret:
        return 0.0
    n = len(secret)
    return -n * sum(c / n * math.log2(c / n) for c in Counter(secret).values())


def _repeats(secret: bytes) -> bool:
    """Whether ``secret`` is a block repeated (``abcdabcdabcd...``, a period of at most half its length)."""
    n = len(secret)
    return any(secret[p:] == secret[:n - p] for p in range(1, n // 2 + 1))


def check_secret(secret: bytes, source: str = "NEXFORT_CACHE_SECRET") -> bytes:
    """``secret`` if it is strong enough to sign cache entries, else :class:`NexfortCacheConfigError`."""
    how = f"it must be at least {MIN_SECRET_BYTES} bytes of random data. Make one with: {MAKE_SECRET}"
    if len(secret) < MIN_SECRET_BYTES:
        raise NexfortCacheConfigError(f"nexfort cache: {source} is {len(secret)} bytes; {how}")
    distinct = len(set(secret))
    if distinct < MIN_SECRET_DISTINCT or estimated_bits(secret) < MIN_SECRET_BITS or _repeats(secret):
        raise NexfortCacheConfigError(
            f"nexfort cache: {source} is {len(secret)} bytes but of low entropy ({distinct} distinct "
            f"characters, about {estimated_bits(secret):.0f} bits): a guessable key lets anyone forge entries "
            f"that run code; {how}")
    return secret


def redact(url: Optional[str]) -> str:
    """``url`` with its password (in the user part or a ``password=`` query parameter) replaced by ``***``."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            name, colon, _ = user.partition(":")
            netloc = f"{name}:{_HIDDEN}@{host}" if colon else f"{_HIDDEN}@{host}"  # a lone user part may be a password
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, _HIDDEN if k.lower() in ("password", "pass", "pwd") else v) for k, v in pairs],
                              safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # unparsable: show nothing of it that could be a password
        return url.split("://", 1)[0] + "://" + _HIDDEN


def scrub(text: str, url: Optional[str]) -> str:
    """``text`` (e.g. an exception's message) with the URL, and any password in it, redacted."""
    if not url:
        return text
    text = text.replace(url, redact(url))
    try:
        parts = urlsplit(url)
        secrets_in_url = [parts.password] + [v for k, v in parse_qsl(parts.query)
                                             if k.lower() in ("password", "pass", "pwd")]
        if parts.username and parts.password is None:
            secrets_in_url.append(parts.username)
    except ValueError:
        return text
    for s in secrets_in_url:
        if s and len(s) >= 3:
            text = text.replace(s, _HIDDEN)
    return text


def check_redis_url(url: str, source: str = "the Redis URL") -> str:
    """``url`` if redis-py can connect with it, else :class:`NexfortCacheConfigError` naming it (redacted)."""
    scheme = str(url).split("://", 1)[0].lower() if "://" in str(url) else ""
    if scheme not in REDIS_SCHEMES:
        valid = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        raise NexfortCacheConfigError(
            f"nexfort cache: {source} {redact(str(url))!r} is not a Redis URL: it must start with one of {valid} "
            "(e.g. redis://:PASSWORD@host:6379/0, rediss:// for TLS, unix:///run/redis.sock).")
    return url
