"""The DNSSEC algorithms this package handles, and the key type each one needs.

Only algorithms that every supported nameserver signs with are listed (RFC 8624 "MUST"/"RECOMMENDED"
for signing). A key of the wrong type for its algorithm number would give a DNSKEY that no
resolver can use, so ``accepts`` is checked wherever a key meets an algorithm number.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from krs_plugin.errors import UnsupportedAlgorithmError

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

# BIND's dnssec-keygen makes RSASHA256 keys of 1024 to 4096 bits and the servers refuse others.
RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096


@dataclass(frozen=True)
class Algorithm:
    """One DNSSEC algorithm: its number, BIND's mnemonic and the key it takes."""

    number: int
    mnemonic: str
    key_description: str
    raw_private_bytes: int  # 0 for RSA, whose BIND file holds CRT fields instead

    def accepts(self, key: object) -> bool:
        """Whether ``key`` is of the type this algorithm signs with."""
        if self.number == 8:
            return isinstance(key, rsa.RSAPrivateKey)
        if self.number in (13, 14):
            curve = ec.SECP256R1 if self.number == 13 else ec.SECP384R1
            return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, curve)
        if self.number == 15:
            return isinstance(key, ed25519.Ed25519PrivateKey)
        return isinstance(key, ed448.Ed448PrivateKey)

    def generate(self, rsa_bits: int = 2048) -> PrivateKey:
        """A new private key of this algorithm's type."""
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
    8: Algorithm(8, "RSASHA256", "an RSA key", 0),
    13: Algorithm(13, "ECDSAP256SHA256", "an ECDSA P-256 key", 32),
    14: Algorithm(14, "ECDSAP384SHA384", "an ECDSA P-384 key", 48),
    15: Algorithm(15, "ED25519", "an Ed25519 key", 32),
    16: Algorithm(16, "ED448", "an Ed448 key", 57),
}


def get_algorithm(number: object) -> Algorithm:
    """The algorithm for ``number``; ``UnsupportedAlgorithmError`` naming it otherwise."""
    found = None
    if isinstance(number, int) and not isinstance(number, bool):
        found = ALGORITHMS.get(number)
    if found is None:
        supported = ", ".join(f"{n} ({a.mnemonic})" for n, a in ALGORITHMS.items())
        raise UnsupportedAlgorithmError(
            f"DNSSEC algorithm {number!r} is not supported; supported: {supported}"
        )
    return found


def describe_key(key: object) -> str:
    """A short description of a key object's type, for error messages (never its material)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an ECDSA {key.curve.name} key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "an Ed448 key"
    return f"a {type(key).__name__}"
