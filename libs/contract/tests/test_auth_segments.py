"""The token segment check of ``parley_contract.auth._JWS`` against PyJWT's own: same bytes
or the same refusal for valid, padded and hostile segments, and hostile tokens refused with
the same message through ``verify_token``."""

from __future__ import annotations

import functools
import random

import jwt
import pytest
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS

from parley_contract.auth import _JWS, JwtConfig, _CheckedHMAC, _jwt, mint_token, verify_token
from parley_contract.errors import ParleyError

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_FIXED = [
    b"",
    b"=",
    b"==",
    b"===",
    b"A",
    b"AA",
    b"AAA",
    b"AAAA",
    b"AA==",
    b"AAA=",
    b"AA=",
    b"AA===",
    b"A===",
    b"!!!!",
    b"AB+/",
    b"AB\x00C",
    b"AB=C",
    b"eyJhbGciOiJIUzI1NiJ9",
    b"eyJhbGciOiJIUzI1NiJ9==",
    b"QUJD\xc3\xa9",
    b"QR",  # non-canonical: the last character has bits base64 drops
    b"QQ",
    b" QUJD",
    b"QUJD\n",
]


def _outcome(fn: object, segment: bytes) -> tuple[str, object]:
    try:
        return "ok", fn(segment, "header")  # type: ignore[operator]
    except jwt.DecodeError as exc:
        return "refused", str(exc)


def _segments() -> list[bytes]:
    rng = random.Random(16)
    pool = _ALPHABET + b"=+/!. \x00\xff"
    out = list(_FIXED)
    for _ in range(3000):
        out.append(bytes(rng.choice(pool) for _ in range(rng.randrange(0, 12))))
        valid = bytes(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 12)))
        out.append(valid + b"=" * rng.randrange(0, 4))
    return out


@pytest.mark.parametrize("chunk", range(4))
def test_segment_check_is_pyjwts(chunk: int) -> None:
    segments = _segments()[chunk::4]
    refused = 0
    for segment in segments:
        ours = _outcome(_JWS._decode_base64url_segment, segment)
        theirs = _outcome(PyJWS._decode_base64url_segment, segment)
        assert ours == theirs, segment
        refused += ours[0] == "refused"
    assert 0 < refused < len(segments)  # both kinds were exercised


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", "!.", 1),
        lambda t: t + "==",
        lambda t: t[:-1] + "!",
        lambda t: "A" + t,
        lambda t: t.replace(".", ".\u00e9", 1),
    ],
)
def test_hostile_tokens_refused_as_before(mangle: object) -> None:
    cfg = JwtConfig()
    token = mangle(mint_token("alice"))  # type: ignore[operator]
    with pytest.raises(ParleyError) as ours:
        verify_token(token, cfg)
    with pytest.raises(jwt.InvalidTokenError) as theirs:
        jwt.decode(token, cfg.secret or "", algorithms=["HS256"])
    assert ours.value.message == f"invalid token: {theirs.value}"


def test_a_good_token_still_verifies() -> None:
    principal, exp = verify_token(mint_token("alice", name="Alice"), JwtConfig())
    assert principal.id == "alice" and exp > 0


def test_the_checked_hs256_key_signs_and_verifies_as_pyjwt_does() -> None:
    """``_CheckedHMAC`` (the configured secret, checked once) against PyJWT's HS256: the
    same signatures, the same key-length answer, the same refusal of a wrong signature."""
    rng = random.Random(16)
    plain = HMACAlgorithm(HMACAlgorithm.SHA256)
    for size in (1, 16, 31, 32, 64, 100):
        secret = bytes(rng.randrange(256) for _ in range(size))
        checked = _CheckedHMAC(secret)
        assert checked.check_key_length(checked.checked) == plain.check_key_length(secret)
        for n in (0, 1, 64, 1000):
            msg = bytes(rng.randrange(256) for _ in range(n))
            sig = plain.sign(msg, secret)
            assert checked.sign(msg, checked.checked) == sig
            assert checked.verify(msg, checked.checked, sig)
            assert not checked.verify(msg, checked.checked, bytes(32))


_PAYLOADS = [
    b'{"sub":"u1","exp":1,"name":"A"}',
    b'{"sub":"u1","sub":"u2"}',  # the last one wins in both
    b'{"a":[1,2,{"b":null}],"c":1.5,"d":"\\u00e9"}',
    b"[]",
    b'"sub"',
    b"1",
    b"null",
    b"",
    b"{",
    b'{"a":1,}',
    b"{'a':1}",
    b'{"a":1} x',
    b"\xff\xfe",
    b"[" * 5000 + b"]" * 5000,
    b'{"n":123456789012345678901234567890,"m":-18446744073709551616}',  # exact, not floats
    b'{"n":18446744073709551615,"m":-9223372036854775808,"f":1.7e9,"g":0.1}',
]
# Refused by orjson only: not RFC 8259 JSON (an invalid token here, accepted by PyJWT's).
_STRICTER = [
    b'{"exp":NaN}',
    b'{"exp":Infinity}',
    b'{"f":1e400}',
    b'{"s":"\\ud800"}',
]


def _payload_outcome(decode: object, payload: bytes) -> tuple[str, object]:
    try:
        return "ok", decode({"payload": payload})  # type: ignore[operator]
    except jwt.DecodeError as exc:
        return "refused", str(exc).split(":")[0]


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_payload_parse_is_pyjwts(payload: bytes) -> None:
    ours = _payload_outcome(_jwt._decode_payload, payload)
    theirs = _payload_outcome(functools.partial(jwt.PyJWT._decode_payload, _jwt), payload)
    assert ours == theirs
    assert repr(ours) == repr(theirs)  # the same types too (an int stays an int)


@pytest.mark.parametrize("payload", _STRICTER)
def test_payload_parse_refuses_what_is_not_json(payload: bytes) -> None:
    assert _payload_outcome(_jwt._decode_payload, payload)[0] == "refused"
