"""DNSSEC keys: generation, PKCS#8 and BIND v1.3 files, DNSKEY, key tags (algorithms 8-16).

The KDC sends keys as PKCS#8 PEM; nameservers take BIND's ``.key``/``.private`` files. This
package converts between the two and checks, every time, that a private key derives the DNSKEY
and key tag it came with.
"""

from krs_plugin.dnssec.algorithms import ALGORITHMS, Algorithm, PrivateKey, get_algorithm
from krs_plugin.dnssec.bindfiles import (
    bind_private_text,
    bind_public_text,
    key_file_paths,
    read_bind_key_pair,
    write_bind_key_pair,
)
from krs_plugin.dnssec.bindtext import bind_key_stem, parse_bind_private, parse_dnskey_text
from krs_plugin.dnssec.key import (
    KSK_FLAGS,
    ZSK_FLAGS,
    DnssecKey,
    PublicKey,
    check_key_matches,
    generate_key,
    load_pkcs8_pem,
)
from krs_plugin.dnssec.timing import KeyTiming

__all__ = [
    "ALGORITHMS",
    "KSK_FLAGS",
    "ZSK_FLAGS",
    "Algorithm",
    "DnssecKey",
    "KeyTiming",
    "PrivateKey",
    "PublicKey",
    "bind_key_stem",
    "bind_private_text",
    "bind_public_text",
    "check_key_matches",
    "generate_key",
    "get_algorithm",
    "key_file_paths",
    "load_pkcs8_pem",
    "parse_bind_private",
    "parse_dnskey_text",
    "read_bind_key_pair",
    "write_bind_key_pair",
]
