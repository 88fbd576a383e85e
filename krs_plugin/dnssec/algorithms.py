"""The DNSSEC algorithms this package handles, and the key type each one needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from krs_plugin.errors import UnsupportedAlgorithmError

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


@dataclass(frozen=True)
class Algorithm:
    number: int
    mnemonic: str
    raw_private_bytes: int  # 0 for RSA, whose BIND file holds CRT fields instead

    def accepts(self, key: Any) -> bool:
        """Whether ``key`` is of the type this algorithm signs with."""
        if self.number == 8:
            return isinstance(key, rsa.RSAPrivateKey)
        if self.number == 13:
            return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
                key.curve, ec.SECP256R1
            )
        if self.number == 14:
            return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
                key.curve, ec.SECP384R1
            )
        if self.number == 15:
            return isinstance(key, ed25519.Ed25519PrivateKey)
        return isinstance(key, ed448.Ed448PrivateKey)

    def generate(self, rsa_bits: int = 2048) -> PrivateKey:
        if self.number == 8:
            return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        if self.number == 13:
            return ec.generate_private_key(ec.SECP256R1())
        if self.number == 14:
            return ec.generate_private_key(ec.SECP384R1())
        if self.number == 15:
            return ed25519.Ed25519PrivateKey.generate()
        return ed448.Ed448PrivateKey.generate()


ALGORITHMS: dict[int, Algorithm] = {
    8: Algorithm(8, "RSASHA256", 0),
    13: Algorithm(13, "ECDSAP256SHA256", 32),
    14: Algorithm(14, "ECDSAP384SHA384", 48),
    15: Algorithm(15, "ED25519", 32),
    16: Algorithm(16, "ED448", 57),
}


def get_algorithm(number: int) -> Algorithm:
    """The algorithm for ``number``; ``UnsupportedAlgorithmError`` naming it otherwise."""
    found = ALGORITHMS.get(number) if isinstance(number, int) else None
    if found is None:
        supported = ", ".join(f"{n} ({a.mnemonic})" for n, a in ALGORITHMS.items())
        raise UnsupportedAlgorithmError(
            f"DNSSEC algorithm {number!r} is not supported; supported: {supported}"
        )
    return found
