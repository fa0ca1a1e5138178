"""Signing keys of an identity provider, from its JWKS URL (docs/security.md "Identity providers").

PyJWT's ``PyJWKClient`` keeps the key set (refetched after ``lifespan``) and, for a token whose
``kid`` it does not know, refetches at most once per ``cooldown`` seconds: a flood of tokens
with made-up ``kid`` values cannot turn into a flood of requests to the provider. It has no
such bound after a *failed* fetch (every token would try again, each waiting for the
timeout), so ``JwksKeys`` adds one: after a failure, tokens are refused for ``cooldown``
seconds without a request. Fetching blocks: callers on an event loop use
``auth.verify_token_async`` (a worker thread).
"""

from __future__ import annotations

import logging
import threading
import time

from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError

from parley_contract.errors import ErrorCode, ParleyError

log = logging.getLogger(__name__)


class JwksKeys:
    """The signing keys published at one JWKS URL."""

    def __init__(
        self, url: str, *, lifespan: float = 300.0, cooldown: float = 30.0, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.cooldown = cooldown
        self._client = PyJWKClient(
            url, lifespan=lifespan, cooldown_duration=cooldown, timeout=timeout
        )
        self._lock = threading.Lock()
        self._failed_at: float | None = None

    def signing_key(self, kid: object) -> PyJWK:
        """The key with this ``kid``; ParleyError(UNAUTHORIZED) if there is none (after at most
        one refetch per cooldown) or the provider cannot be reached."""
        if not isinstance(kid, str) or not kid:
            raise ParleyError(ErrorCode.UNAUTHORIZED, "invalid token: no key id (kid) in header")
        with self._lock:
            failed_at = self._failed_at
            if failed_at is not None and time.monotonic() - failed_at < self.cooldown:
                raise ParleyError(
                    ErrorCode.UNAUTHORIZED, "identity provider keys unavailable, try again later"
                )
            try:
                key = self._client.get_signing_key(kid)
            except PyJWKClientConnectionError as exc:
                self._failed_at = time.monotonic()
                log.warning("JWKS fetch from %s failed: %s", self.url, exc)
                raise ParleyError(
                    ErrorCode.UNAUTHORIZED, "identity provider keys unavailable, try again later"
                ) from None
            except (PyJWKClientError, PyJWKSetError) as exc:
                if "matches" not in str(exc):  # a bad key set, not an unknown kid
                    self._failed_at = time.monotonic()
                    log.warning("JWKS from %s unusable: %s", self.url, exc)
                raise ParleyError(
                    ErrorCode.UNAUTHORIZED, f"invalid token: unknown signing key {kid[:64]!r}"
                ) from None
            self._failed_at = None
            return key


_keys: dict[tuple[str, float, float, float], JwksKeys] = {}
_keys_lock = threading.Lock()


def jwks_keys(url: str, *, lifespan: float, cooldown: float, timeout: float) -> JwksKeys:
    """One shared ``JwksKeys`` per URL and settings (its cache lives as long as the process)."""
    key = (url, lifespan, cooldown, timeout)
    with _keys_lock:
        found = _keys.get(key)
        if found is None:
            found = _keys[key] = JwksKeys(
                url, lifespan=lifespan, cooldown=cooldown, timeout=timeout
            )
        return found
