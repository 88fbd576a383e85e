"""The PowerDNS API client's cheap paths: a DNSKEY as PowerDNS writes it read without dnspython's
tokenizer (the same rdata, or dnspython's own error), and the API key file read again only when
it changed (a key rotated while the KRS runs is used at the next request)."""

from __future__ import annotations

import os
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from krs_plugin.adapters.pdnsctl import ApiKeyStore, parse_dnskey
from krs_plugin.dnssec import generate_key
from krs_plugin.errors import AdapterError


@pytest.mark.parametrize(("algorithm", "flags"), [(8, 257), (13, 257), (13, 256), (15, 256)])
def test_a_dnskey_reads_as_dnspython_reads_it(algorithm: int, flags: int) -> None:
    key = generate_key("example.com.", algorithm, flags).dnskey
    for text in (key.to_text(), key.to_text(chunksize=32)):
        expected = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text)
        read = parse_dnskey(text, "zone example.com.")
        assert read == expected and read.to_wire() == expected.to_wire()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("257 3 13 !!!", "base64"),
        ("257 3", "expecting"),
        ("70000 3 13 AAAA", "16-bit"),
    ],
)
def test_an_unreadable_dnskey_is_refused_with_dnspythons_reason(text: str, reason: str) -> None:
    with pytest.raises(AdapterError, match=f"PowerDNS gave an unreadable DNSKEY: .*{reason}"):
        parse_dnskey(text, "zone example.com.")


def test_the_api_key_is_read_again_when_its_file_changes(tmp_path: Path) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("first\n")
    store = ApiKeyStore("http://127.0.0.1:1", key_file, "localhost", 1.0)
    assert store._key() == "first"
    replaced = tmp_path / "api.key.new"
    replaced.write_text("second-key\n")
    os.replace(replaced, key_file)  # as a rotation writes it: a new file
    assert store._key() == "second-key"
    key_file.write_text("third-key!\n")  # same size, written in place
    os.utime(key_file, ns=(1, 1))
    assert store._key() == "third-key!"
    key_file.unlink()
    with pytest.raises(AdapterError, match="cannot read the API key file"):
        store._key()
