"""The KDC's signing-key set as a distribution carries it (ours: docs/payload.md, "kdc_keys";
the rollover: docs/security.md, "Rotation").

One implementation for both sides: the KDC writes the set with ``announce_json``, the KRS reads
it with ``parse_kdc_keys``. The set is the complete list of verification keys the KDC wants a
node to trust from now on, as public JWKs; it sits inside the signed, encrypted payload, so only
a distribution that verifies with a key the node already trusts can change what it trusts.
"""

from __future__ import annotations

from collections.abc import Sequence

from krs_plugin.crypto import JoseKey
from krs_plugin.errors import KeyFileError, PayloadError

FIELD = "kdc_keys"
"""The ``metadata`` key (ours) of the payload's first entry that carries the set."""

MAX_KEYS = 4  # current and next, with room; a longer list is refused, not truncated
_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y", "kid", "use", "alg"})


def announce_json(keys: Sequence[JoseKey]) -> list[dict[str, str]]:
    """The set as the payload carries it: public JWKs with ``kid`` = RFC 7638 thumbprint."""
    return [{**k.public_jwk, "kid": k.thumbprint} for k in keys]


def parse_kdc_keys(value: object, where: str) -> tuple[JoseKey, ...]:
    """The set from a payload; ``PayloadError`` naming the problem for anything but 1 to
    ``MAX_KEYS`` distinct public P-256 JWKs (a private member ``d`` is refused: the KDC never
    sends a private key here), each ``kid`` equal to its key's thumbprint when present."""
    label = f"{where}: metadata '{FIELD}'"
    if not isinstance(value, list) or not value:
        raise PayloadError(f"{label} must be a non-empty list of public JWKs")
    if len(value) > MAX_KEYS:
        raise PayloadError(f"{label} lists {len(value)} keys, at most {MAX_KEYS} are accepted")
    keys: list[JoseKey] = []
    for index, jwk in enumerate(value):
        item = f"{label}[{index}]"
        if not isinstance(jwk, dict):
            raise PayloadError(f"{item} must be a JSON object (a public JWK)")
        extra = sorted(set(jwk) - _JWK_MEMBERS)
        if extra:
            raise PayloadError(f"{item}: member {extra[0]!r} is not one of a public P-256 JWK")
        if not all(isinstance(v, str) for v in jwk.values()):
            raise PayloadError(f"{item}: every member of a JWK is a string")
        try:
            key = JoseKey.from_jwk(jwk, where=item)
        except KeyFileError as exc:
            raise PayloadError(str(exc)) from exc
        if "kid" in jwk and jwk["kid"] != key.thumbprint:
            raise PayloadError(f"{item}: kid {jwk['kid'][:64]!r} is not the key's thumbprint")
        if any(k.thumbprint == key.thumbprint for k in keys):
            raise PayloadError(f"{item}: key {key.thumbprint} is listed twice")
        keys.append(key)
    return tuple(keys)
