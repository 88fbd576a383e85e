"""SIG(0) against implementations we did not write, in both directions.

* BIND's nsupdate (9.18) signs an UPDATE with a dnssec-keygen KEY; our ``verify`` must accept it.
* Perl's Net::DNS::SEC (Debian libnet-dns-sec-perl) signs, and verifies what we sign.
* named cannot be the verifier: 9.18.28 and later dropped SIG(0) verification (CVE-2024-1975) and
  refuse even nsupdate's own signed UPDATE; knotd and ldns have no SIG(0) at all.

Each test skips only when its tool is absent.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.update
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from krs_lab.ports import free_port
from krs_plugin.errors import SignatureError
from krs_plugin.protocol import sig0

pytestmark = pytest.mark.integration

BIND_ALGORITHMS = {"ED25519": 15, "ECDSAP256SHA256": 13}
NODE = "node1.example."

PERL_VERIFY = r"""
use strict; use warnings; use Net::DNS; use Net::DNS::SEC;
my ($keytext) = @ARGV; local $/; binmode STDIN; my $data = <STDIN>;
my $packet = Net::DNS::Packet->new(\$data) or die "unparsable: $@\n";
# Packet->verify returns true for an UNSIGNED packet, so look for the SIG first.
my $sig = $packet->sigrr or do { print "NOSIG\n"; exit 0 };
my $key = Net::DNS::RR->new($keytext);
print $sig->verify($packet, $key) ? "VERIFIED\n" : "FAILED: " . $sig->vrfyerrstr . "\n";
"""

PERL_SIGN = r"""
use strict; use warnings; use Net::DNS; use Net::DNS::SEC;
my ($private) = @ARGV;
my $update = Net::DNS::Update->new('example.');
$update->push(update => rr_add('node1.example. 300 IN A 192.0.2.1'));
$update->sign_sig0($private);
binmode STDOUT; print $update->data;
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def need_net_dns_sec() -> None:
    need("perl")
    probe = subprocess.run(["perl", "-MNet::DNS::SEC", "-e1"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("Perl Net::DNS::SEC is not installed (Debian: libnet-dns-sec-perl)")


def bind_key(tmp_path: Path, mnemonic: str) -> tuple[Path, sig0.Sig0Key]:
    """A SIG(0) key made by dnssec-keygen: the .private path and the parsed .key record."""
    keygen = need("dnssec-keygen")
    out = subprocess.run(
        [keygen, "-K", str(tmp_path), "-T", "KEY", "-a", mnemonic, "-n", "HOST", NODE],
        capture_output=True,
        text=True,
        check=True,
    )
    stem = out.stdout.strip()  # Knode1.example.+015+12345: no with_suffix, the name has dots
    key = sig0.parse_key_text((tmp_path / f"{stem}.key").read_text())
    assert key.algorithm == BIND_ALGORITHMS[mnemonic]
    assert key.rdata.flags == 512  # -n HOST; the tag in the file name is over these flags
    assert stem.endswith(f"+{key.key_tag:05d}")
    return tmp_path / f"{stem}.private", key


def flip(wire: bytes, index: int) -> bytes:
    changed = bytearray(wire)
    changed[index] ^= 0x01
    return bytes(changed)


# --- a one-shot DNS listener that keeps the raw UPDATE ------------------------------------------


@dataclass
class Capture:
    """Answers one UPDATE with NOERROR on 127.0.0.1 and keeps its exact wire image."""

    tcp: bool
    port: int = field(default_factory=free_port)
    wire: bytes | None = None

    def __post_init__(self) -> None:
        kind = socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(20)
        if self.tcp:
            self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            if self.tcp:
                conn, _ = self.sock.accept()
                with conn:
                    (length,) = struct.unpack("!H", _read(conn, 2))
                    self.wire = _read(conn, length)
                    reply = _reply(self.wire)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            else:
                self.wire, peer = self.sock.recvfrom(65535)
                self.sock.sendto(_reply(self.wire), peer)
        except OSError:
            pass

    def close(self) -> bytes:
        self.thread.join(timeout=25)
        self.sock.close()
        assert self.wire is not None, "nsupdate sent nothing to the listener"
        return self.wire


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed early")
        data += chunk
    return data


def _reply(wire: bytes) -> bytes:
    try:
        response = dns.message.make_response(dns.message.from_wire(sig0.strip(wire)))
        return bytes(response.to_wire())
    except Exception:  # still answer, so nsupdate finishes; the test checks the wire itself
        header = bytearray(wire[:12])
        header[2] |= 0x80
        header[3] &= 0xF0
        header[4:12] = bytes(8)
        return bytes(header)


@pytest.fixture(params=[False, True], ids=["udp", "tcp"])
def capture(request: pytest.FixtureRequest) -> Iterator[Capture]:
    listener = Capture(tcp=request.param)
    yield listener
    listener.sock.close()


# --- BIND nsupdate signs, we verify ---------------------------------------------------------------


@pytest.mark.parametrize("mnemonic", BIND_ALGORITHMS)
def test_nsupdate_sig0_is_accepted_and_a_flipped_byte_refused(
    tmp_path: Path, mnemonic: str, capture: Capture
) -> None:
    nsupdate = need("nsupdate")
    private, key = bind_key(tmp_path, mnemonic)
    script = (
        f"server 127.0.0.1 {capture.port}\nzone example.\n"
        f"update add {NODE} 300 IN A 192.0.2.1\nsend\n"
    )
    args = [nsupdate, "-k", str(private), "-t", "10"] + (["-v"] if capture.tcp else [])
    run = subprocess.run(args, input=script, capture_output=True, text=True, timeout=30)
    wire = capture.close()
    assert run.returncode == 0, run.stderr

    info = sig0.verify(wire, key)

    assert (str(info.signer), info.key_tag, info.algorithm) == (NODE, key.key_tag, key.algorithm)
    assert info.expiration - info.inception == 600  # BIND: now - 300 .. now + 300, like tdns
    update = info.to_message()
    assert [str(rrset) for rrset in update.authority] == [f"{NODE} 300 IN A 192.0.2.1"]
    address_byte = len(info.unsigned_wire) - 1
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(flip(wire, address_byte), key)
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(flip(wire, len(wire) - 1), key)


# --- Perl Net::DNS::SEC: both directions ----------------------------------------------------------


def perl_verify(wire: bytes, key_text: str) -> str:
    run = subprocess.run(
        ["perl", "-e", PERL_VERIFY, key_text], input=wire, capture_output=True, timeout=30
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout.decode().strip()


def our_update(*, edns: bool) -> bytes:
    update = dns.update.UpdateMessage("example.")
    update.add(NODE, 300, "A", "192.0.2.7")
    if edns:
        update.use_edns(0, 0, 1232)
    return bytes(update.to_wire())


KEY_MAKERS = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "with-opt"])
@pytest.mark.parametrize("make", KEY_MAKERS.values(), ids=KEY_MAKERS.keys())
def test_net_dns_sec_verifies_what_we_sign(
    make: Callable[[], sig0.Sig0PrivateKey], edns: bool
) -> None:
    need_net_dns_sec()
    private = make()
    key_text = sig0.key_text(private, NODE)
    wire = sig0.sign(our_update(edns=edns), private, NODE)

    assert perl_verify(wire, key_text) == "VERIFIED"
    address_byte = len(sig0.strip(wire)) - (12 if edns else 1)  # the A record's last byte
    assert perl_verify(flip(wire, address_byte), key_text).startswith("FAILED")
    assert perl_verify(flip(wire, 0), key_text).startswith("FAILED")  # the message ID
    other = sig0.key_text(make(), NODE)
    assert perl_verify(wire, other).startswith("FAILED")


@pytest.mark.parametrize("mnemonic", BIND_ALGORITHMS)
def test_we_verify_what_net_dns_sec_signs(tmp_path: Path, mnemonic: str) -> None:
    need_net_dns_sec()
    private, key = bind_key(tmp_path, mnemonic)
    run = subprocess.run(
        ["perl", "-e", PERL_SIGN, str(private)], capture_output=True, check=False, timeout=30
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")

    info = sig0.verify(run.stdout, key)

    assert (str(info.signer), info.key_tag) == (NODE, key.key_tag)
    with pytest.raises(SignatureError, match="does not verify"):
        sig0.verify(flip(run.stdout, len(info.unsigned_wire) - 1), key)
