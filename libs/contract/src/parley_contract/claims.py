"""From a verified token's claims to a principal, by settings (docs/security.md "Identity
providers"): which claim is the id, which the display name, and how the kind is decided.

Kind rules (``PARLEY_JWT_KIND_RULES``), comma-separated, the first that matches wins:

- ``<kind>:claim:<claim>=<value>``: the claim equals the value, or is a list holding it;
  ``<claim>`` is a top-level name (Auth0's namespaced ``https://example.com/kind`` works) or
  a dotted path into objects (Keycloak's ``realm_access.roles``);
- ``<kind>:scope:<scope>``: ``scope`` (space-separated string) or ``scp`` (a list, or a
  string) holds the scope;
- ``<kind>:always``: a fixed kind (an audience used by one kind only).

``<kind>`` is ``user`` or ``agent``. A token no rule matches is refused. No rules: the
``kind`` claim itself (``user`` / ``agent``; absent means ``user`` unless ``strict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.ids import is_valid_id
from parley_contract.internal import Principal

_KINDS = {PrincipalKind.USER.value, PrincipalKind.AGENT.value}


@dataclass(frozen=True)
class KindRule:
    kind: PrincipalKind
    how: Literal["claim", "scope", "always"]
    claim: str = ""
    value: str = ""

    def matches(self, claims: dict[str, Any]) -> bool:
        if self.how == "always":
            return True
        if self.how == "scope":
            scopes: set[str] = set()
            for name in ("scope", "scp"):
                raw = claims.get(name)
                if isinstance(raw, str):
                    scopes.update(raw.split())
                elif isinstance(raw, list):
                    scopes.update(s for s in raw if isinstance(s, str))
            return self.value in scopes
        found = claim_value(claims, self.claim)
        if isinstance(found, list):
            return self.value in found
        return isinstance(found, (str, int, bool)) and str(found) == self.value


def claim_value(claims: dict[str, Any], path: str) -> object:
    """A top-level claim by its whole name, else a dotted path into nested objects."""
    if path in claims:
        return claims[path]
    node: object = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_kind_rules(text: str) -> tuple[KindRule, ...]:
    """``PARLEY_JWT_KIND_RULES``; ValueError names the bad rule."""
    rules = []
    for raw in text.split(","):
        rule = raw.strip()
        if not rule:
            continue
        kind, _, rest = rule.partition(":")
        how, _, arg = rest.partition(":")
        if kind not in _KINDS:
            raise ValueError(f"kind rule {rule!r}: the kind must be 'user' or 'agent'")
        if how == "always" and not arg:
            rules.append(KindRule(PrincipalKind(kind), "always"))
        elif how == "scope" and arg:
            rules.append(KindRule(PrincipalKind(kind), "scope", value=arg))
        elif how == "claim" and "=" in arg:
            claim, _, value = arg.rpartition("=")
            if not claim or not value:
                raise ValueError(f"kind rule {rule!r}: expected <kind>:claim:<claim>=<value>")
            rules.append(KindRule(PrincipalKind(kind), "claim", claim=claim, value=value))
        else:
            raise ValueError(
                f"kind rule {rule!r}: expected <kind>:claim:<claim>=<value>, "
                "<kind>:scope:<scope> or <kind>:always"
            )
    return tuple(rules)


def map_principal(
    claims: dict[str, Any],
    *,
    id_claim: str = "sub",
    name_claim: str = "name",
    kind_rules: tuple[KindRule, ...] = (),
    strict: bool = False,
) -> Principal:
    """The principal a verified token names; ParleyError(UNAUTHORIZED) with the reason."""
    pid = claim_value(claims, id_claim)
    if not is_valid_id(pid):
        raise ParleyError(
            ErrorCode.UNAUTHORIZED,
            f"invalid token: the id claim {id_claim!r} must be 1-128 letters, digits, '_' or '-'",
        )
    assert isinstance(pid, str)
    if kind_rules:
        kind = next((r.kind for r in kind_rules if r.matches(claims)), None)
        if kind is None:
            raise ParleyError(
                ErrorCode.UNAUTHORIZED,
                "token maps to no kind: no rule of PARLEY_JWT_KIND_RULES matches its claims",
            )
    else:
        raw = claims.get("kind", None if strict else PrincipalKind.USER.value)
        if raw not in _KINDS:
            raise ParleyError(
                ErrorCode.UNAUTHORIZED,
                "token maps to no kind: the kind claim must be 'user' or 'agent'",
            )
        kind = PrincipalKind(raw)
    name = claim_value(claims, name_claim)
    return Principal(id=pid, kind=kind, name=name if isinstance(name, str) else None)
