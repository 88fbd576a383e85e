"""DNSSEC keys: generation, PKCS#8 and BIND v1.3 files, DNSKEY, key tags (algorithms 8-16)."""

from krs_plugin.dnssec.algorithms import ALGORITHMS, PrivateKey, get_algorithm
from krs_plugin.dnssec.bindfiles import (
    bind_private_text,
    bind_public_text,
    parse_bind_private,
    read_bind_key_pair,
    write_bind_key_pair,
)
from krs_plugin.dnssec.key import (
    KSK_FLAGS,
    ZSK_FLAGS,
    DnssecKey,
    check_key_matches,
    generate_key,
    load_pkcs8_pem,
    parse_dnskey_text,
)
from krs_plugin.dnssec.timing import KeyTiming

__all__ = [
    "ALGORITHMS",
    "KSK_FLAGS",
    "ZSK_FLAGS",
    "DnssecKey",
    "KeyTiming",
    "PrivateKey",
    "bind_private_text",
    "bind_public_text",
    "check_key_matches",
    "generate_key",
    "get_algorithm",
    "load_pkcs8_pem",
    "parse_bind_private",
    "parse_dnskey_text",
    "read_bind_key_pair",
    "write_bind_key_pair",
]
