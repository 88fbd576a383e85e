"""``dnsbatch.answer_part``: a batch's replies read as far as their answer section, which is all
a look uses (docs/adapters.md, "Many zones at once"), byte-compatible with dnspython's own
reading of that section."""

from __future__ import annotations

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from krs_plugin.adapters.dnsbatch import answer_part
from krs_plugin.dnssec import generate_key

ZONE = dns.name.from_text("example.com.")


def reply(rdtype: dns.rdatatype.RdataType, *, answer: bool) -> dns.message.Message:
    """A signed authoritative reply of ``rdtype`` for the apex: an answer (the RRset and an
    RRSIG) or NODATA (the SOA, an NSEC and their RRSIGs in the authority section)."""
    key = generate_key(ZONE.to_text(), 13, 257)
    query = dns.message.make_query(ZONE, rdtype, want_dnssec=True)
    response = dns.message.make_response(query)
    sig = "DNSKEY 13 2 3600 20270101000000 20260101000000 1234 example.com. " + "A" * 88
    rrsig = dns.rrset.from_text(ZONE, 3600, "IN", "RRSIG", sig)
    if answer:
        response.answer.append(dns.rrset.from_rdata(ZONE, 3600, key.dnskey))
        response.answer.append(rrsig)
    else:
        soa = "ns.example.com. hostmaster.example.com. 1 3600 600 86400 300"
        response.authority.append(dns.rrset.from_text(ZONE, 300, "IN", "SOA", soa))
        response.authority.append(
            dns.rrset.from_text(ZONE, 300, "IN", "NSEC", "example.com. NS SOA RRSIG NSEC DNSKEY")
        )
        response.authority.append(rrsig)
    return response


@pytest.mark.parametrize("answer", [True, False])
def test_the_answer_section_is_read_as_dnspython_reads_it(answer: bool) -> None:
    sent = reply(dns.rdatatype.DNSKEY, answer=answer)
    wire = sent.to_wire()
    whole, part = dns.message.from_wire(wire), answer_part(wire)
    assert part.id == whole.id and part.flags == whole.flags and part.rcode() == whole.rcode()
    assert part.question == whole.question
    assert part.answer == whole.answer and len(part.answer) == (2 if answer else 0)
    assert part.authority == [] and whole.authority == ([] if answer else sent.authority)


def test_what_is_not_a_message_is_still_refused() -> None:
    with pytest.raises(dns.exception.FormError):
        answer_part(b"\x00\x01\x84")
    wire = reply(dns.rdatatype.DNSKEY, answer=True).to_wire()
    with pytest.raises(dns.exception.FormError):
        answer_part(wire[:-20])  # cut inside the answer section
