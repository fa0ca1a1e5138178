"""Issue 18: tokens from an identity provider. A local one (parley_devstack.idp) serves its
JWKS on a free port, signs with ES256 and rotates its key; the gateway verifies against it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil
from parley_contract.auth import JwtConfig, mint_token, verify_token
from parley_contract.claims import parse_kind_rules
from parley_contract.errors import ParleyError
from parley_contract.events import PrincipalKind
from parley_devstack.idp import TestIdentityProvider
from parley_gateway.settings import Settings

AGENT_RULES = "agent:scope:parley:agent,user:claim:realm_access.roles=parley-user"


@pytest.fixture
def idp() -> Iterator[TestIdentityProvider]:
    with TestIdentityProvider() as provider:
        yield provider


def cfg_of(idp: TestIdentityProvider, rules: str = AGENT_RULES, **kw: Any) -> JwtConfig:
    return JwtConfig(
        jwks_url=idp.jwks_url,
        issuer=idp.issuer,
        audience=idp.audience,
        kind_rules=parse_kind_rules(rules),
        **kw,
    )


def refusal(token: str, cfg: JwtConfig) -> str:
    with pytest.raises(ParleyError) as exc:
        verify_token(token, cfg)
    assert exc.value.code.value == "UNAUTHORIZED"
    return exc.value.message


USER: dict[str, Any] = {"realm_access": {"roles": ["parley-user"]}}


def test_es256_token_maps_to_the_right_principal(idp: TestIdentityProvider) -> None:
    cfg = cfg_of(idp, name_claim="preferred_username")
    principal, exp = verify_token(idp.token("alice", preferred_username="Alice A", **USER), cfg)
    assert (principal.id, principal.kind, principal.name) == (
        "alice",
        PrincipalKind.USER,
        "Alice A",
    )
    assert exp > time.time()
    agent, _ = verify_token(idp.token("bot-1", scope="openid parley:agent"), cfg)
    assert agent.kind is PrincipalKind.AGENT
    fixed = cfg_of(idp, "agent:always", id_claim="azp")
    assert verify_token(idp.token("x", azp="svc-7"), fixed)[0].id == "svc-7"


def test_refusals_say_why(idp: TestIdentityProvider) -> None:
    cfg = cfg_of(idp)
    assert refusal(idp.token("a", ttl=-60, **USER), cfg) == "token expired"
    assert "audience" in refusal(idp.token("a", aud="someone-else", **USER), cfg)
    assert "issuer" in refusal(idp.token("a", iss="https://evil.test/", **USER), cfg)
    assert "no kind" in refusal(idp.token("a"), cfg)  # no role, no scope
    assert "no kind" in refusal(idp.token("a", kind="user"), cfg)  # no kind claim trusted
    assert "id claim" in refusal(idp.token("auth0|123", **USER), cfg)
    assert "aud" in refusal(idp.token("a", aud=None, **USER), cfg)  # aud required
    # The development secret (HS256) is not accepted when an identity provider is configured.
    assert "invalid token" in refusal(mint_token("a"), cfg)
    with TestIdentityProvider() as other:  # a key the provider never published
        assert "unknown signing key" in refusal(other.token("a", **USER), cfg)


def test_rotation_and_a_bounded_refresh_rate(idp: TestIdentityProvider) -> None:
    cfg = cfg_of(idp, jwks_min_refresh_seconds=0.5)
    verify_token(idp.token("a", **USER), cfg)
    assert idp.fetches == 1
    for _ in range(5):  # cached: no fetch per token
        verify_token(idp.token("a", **USER), cfg)
    assert idp.fetches == 1
    idp.rotate(keep_old=False)
    rotated = idp.token("a", **USER)
    # Within the cooldown, unknown kids do not refetch (made-up kids cannot flood the IdP).
    for _ in range(20):
        refusal(rotated, cfg)
    assert idp.fetches == 1
    time.sleep(0.6)
    assert verify_token(rotated, cfg)[0].id == "a"  # one refetch finds the new key
    assert idp.fetches == 2


def test_an_unreachable_provider_is_not_asked_for_every_token(idp: TestIdentityProvider) -> None:
    cfg = cfg_of(idp, jwks_min_refresh_seconds=60)
    token = idp.token("a", **USER)
    idp.stop()
    assert "unavailable" in refusal(token, cfg)
    assert "unavailable" in refusal(token, cfg)  # fails fast: no second fetch attempt


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_JWT_JWKS_URL", "https://idp.example/jwks")
    with pytest.raises(ValueError, match="PARLEY_JWT_ISSUER"):
        Settings().check()
    monkeypatch.setenv("PARLEY_JWT_ISSUER", "https://idp.example/")
    monkeypatch.setenv("PARLEY_JWT_AUDIENCE", "parley")
    monkeypatch.setenv("PARLEY_ENVIRONMENT", "production")
    Settings().check()  # the development HS256 secret is not used, so not refused
    monkeypatch.setenv("PARLEY_JWT_JWKS_URL", "http://idp.example/jwks")
    with pytest.raises(ValueError, match="https"):
        Settings().check()
    monkeypatch.setenv("PARLEY_JWT_KIND_RULES", "admin:always")
    with pytest.raises(ValueError, match="admin:always"):
        Settings()


async def test_a_real_gateway_admits_and_refuses(
    idp: TestIdentityProvider, gateway_factory: Any, clients: Any
) -> None:
    gw = gateway_factory(
        {
            "PARLEY_JWT_JWKS_URL": idp.jwks_url,
            "PARLEY_JWT_ISSUER": idp.issuer,
            "PARLEY_JWT_AUDIENCE": idp.audience,
            "PARLEY_JWT_KIND_RULES": AGENT_RULES,
            "PARLEY_JWT_NAME_CLAIM": "preferred_username",
            "PARLEY_JWT_JWKS_MIN_REFRESH_SECONDS": "0.5",
        }
    )
    tok = idp.token("alice", preferred_username="Alice", **USER)
    c = await clients(gw.ws_url, "alice", tok=tok)
    assert c.frames[0]["data"]["principal"] == {"id": "alice", "kind": "user", "name": "Alice"}
    bot = await clients(gw.ws_url, "bot", tok=idp.token("bot", scope="parley:agent"))
    assert bot.frames[0]["data"]["principal"]["kind"] == "agent"
    for bad, reason in (
        (idp.token("alice", ttl=-60, **USER), b"token expired"),
        (idp.token("alice", aud="other", **USER), b"audience"),
        (idp.token("alice"), b"maps to no kind"),
        (mint_token("alice"), b"invalid token"),  # the development secret
    ):
        with pytest.raises(InvalidStatus) as exc:
            await connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {bad}"})
        assert exc.value.response.status_code == 401
        error = jsonutil.loads(exc.value.response.body)["error"]
        assert error["code"] == "UNAUTHORIZED" and reason in error["message"].encode(), error
    idp.rotate(keep_old=False)
    await asyncio.sleep(0.6)  # the refresh cooldown
    after = await clients(gw.ws_url, "alice", tok=idp.token("carol", **USER))
    assert after.frames[0]["data"]["principal"]["id"] == "carol"
    with pytest.raises(InvalidStatus):  # the old key is gone from the set
        await connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {tok}"})
