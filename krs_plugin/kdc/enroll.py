"""The KDC's side of enrollment: bootstrap packages out (``krs-kdc enroll create``), enrollment
UPDATEs in (``krs-kdc serve``).

A package's token is single use and short-lived, and the KDC keeps only its SHA-256: someone who
reads the database cannot enrol. An UPDATE is checked in the order that reveals least: its form,
whether it opens with the KDC's key, the token, the timestamp, the SIG(0) made with the key the
request carries, the package digest, the keys, and that the node id is free. Every refusal answers
with an rcode, a confirmation with status "error", and an Extended DNS Error (RFC 8914) whose text
says why; nothing is stored. Success registers the node and uses up the token in one
transaction, answers with the confirmation sealed to the node's new key, and queues a
distribution of the node's zones, so the node gets its keys when ``krs run`` starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode

from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey
from krs_plugin.dnsio import formerr_reply
from krs_plugin.enrollment import (
    DEFAULT_WINDOW,
    BootstrapPackage,
    EnrollmentConfirmation,
    EnrollmentRequest,
    answer_option,
    encode_jose_pubkey,
    new_token,
    open_request,
    parse_rfc3339,
    request_chunk,
    rfc3339,
    seal_confirmation,
    token_hash,
)
from krs_plugin.errors import EnrollmentError, KrsError, SignatureError
from krs_plugin.kdc.distribute import LIVE_STATES, distribute_node
from krs_plugin.kdc.identity import KdcIdentity
from krs_plugin.kdc.pqidentity import pq_signer
from krs_plugin.kdc.signroll import active_signer
from krs_plugin.kdc.store import StateError, Store, TokenRow, canonical
from krs_plugin.protocol import check_node_id, sig0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IssuedPackage:
    package: BootstrapPackage
    token: TokenRow


def create_package(
    store: Store,
    identity: KdcIdentity,
    node_id: str,
    *,
    zones: Sequence[str],
    backend: str,
    valid_for: int,
    kdc_address: str,
    now: float,
) -> IssuedPackage:
    """A new package for ``node_id``; the store keeps the token's hash and the package digest."""
    try:
        node = check_node_id(canonical(node_id)).to_text()
    except KrsError as exc:
        raise StateError(str(exc)) from exc
    control_zone = store.get_meta("control_zone") or ""
    package = BootstrapPackage(
        token=new_token(),
        node_id=node,
        # hpke-pq: the request is sealed with classic HPKE (docs/enrollment.md, "The hybrid
        # backend"); what the node's new key protects is every distribution after it.
        kdc_hpke_pubkey=identity.hpke.public_hex if backend in ("hpke", "hpke-pq") else "",
        kdc_jose_pubkey=encode_jose_pubkey(identity.jose) if backend == "jose" else "",
        kdc_enrollment_address=kdc_address,
        control_zone=control_zone,
        kdc_signing_pubkey=active_signer(store, identity).public_jwk,  # kdc/signroll.py
        valid_until=rfc3339(now + valid_for),
        backend=backend,
        zones=tuple(canonical(z) for z in zones),
        kdc_pq_pubkey=pq_public_hex(store),
    )
    row = store.add_token(
        token_hash(package.token),
        node,
        backend=backend,
        zones=package.zones,
        package_digest=package.digest(),
        expires_at=int(now + valid_for),
        now=now,
    )
    return IssuedPackage(package, row)


# How long the distribution queued at enrollment stays valid: an hour, not distribute's 300 s.
# The operator enrols, then sets the adapter up (krs.yaml's adapter:, the server's key directory)
# before krs run starts; the node must still find its keys then (docs/enrollment.md).
FIRST_DISTRIBUTION_TTL = 3600


class Refusal(Exception):
    """Why an enrollment is refused: the rcode, and the text for the EDE and the confirmation."""

    def __init__(self, rcode: dns.rcode.Rcode, text: str) -> None:
        super().__init__(text)
        self.rcode = rcode
        self.text = text


class EnrollmentDesk:
    """Answers enrollment UPDATEs for ``krs-kdc serve``."""

    def __init__(
        self,
        store: Store,
        identity: KdcIdentity,
        control_zone: dns.name.Name,
        *,
        window: int = DEFAULT_WINDOW,
        distribution_ttl: int = FIRST_DISTRIBUTION_TTL,
    ) -> None:
        self.store = store
        self.identity = identity
        self.control_zone = control_zone
        self.window = window
        self.distribution_ttl = distribution_ttl

    def handle(self, wire: bytes, source: str) -> bytes:
        """The answer to one UPDATE, always: success or a refusal that says why."""
        now = time.time()
        node_keys: tuple[HpkeKey | None, JoseKey | None, HybridKey | None] = (None, None, None)
        node_id = ""
        try:
            query = _parse(wire)
        except Refusal as unparsable:
            log.info("malformed enrollment UPDATE from %s: %s", source, unparsable.text)
            return formerr_reply(wire) or b""
        try:
            request, backend = self._open(query)
            if _keys_ok(request):
                node_keys = (request.hpke_key(), request.jose_key(), request.hybrid_key())
            token = self._token(request, now)
            node_id = token.node_id
            self._check_request(wire, request, token, backend, now)
            self._register(request, token, backend, now)
        except (Refusal, KrsError) as failure:
            refusal = (
                failure
                if isinstance(failure, Refusal)
                else Refusal(dns.rcode.FORMERR, f"unreadable request: {failure}")
            )
            log.warning(
                "enrollment from %s%s refused: %s",
                source,
                f" for node {node_id}" if node_id else "",
                refusal.text,
            )
            confirmation = EnrollmentConfirmation(
                node_id, "error", rfc3339(now), error_message=refusal.text
            )
            return self._answer(query, refusal.rcode, confirmation, node_keys, refusal.text)
        log.info("node %s enrolled from %s (%s)", node_id, source, backend)
        self._first_distribution(node_id, now)
        confirmation = EnrollmentConfirmation(
            node_id, "success", rfc3339(now), kdc_hpke_pubkey=self.identity.hpke.public_hex
        )
        return self._answer(query, dns.rcode.NOERROR, confirmation, node_keys, "")

    # --- the checks, in order ---------------------------------------------------------------

    def _open(self, query: dns.message.Message) -> tuple[EnrollmentRequest, str]:
        try:
            sealed = request_chunk(query, self.control_zone)
        except EnrollmentError as exc:
            raise Refusal(dns.rcode.FORMERR, str(exc)) from exc
        try:
            return open_request(sealed, self.identity.hpke, self.identity.jose)
        except EnrollmentError as exc:
            text = str(exc)
            rcode = dns.rcode.REFUSED if "not sealed" in text else dns.rcode.FORMERR
            raise Refusal(rcode, text) from exc

    def _token(self, request: EnrollmentRequest, now: float) -> TokenRow:
        token = self.store.find_token(token_hash(request.auth_token))
        if token is None:
            raise Refusal(dns.rcode.REFUSED, "unknown enrollment token")
        if token.used_at is not None:
            raise Refusal(
                dns.rcode.REFUSED,
                f"enrollment token already used (at {rfc3339(token.used_at)}): tokens are "
                "single use; ask for a new package",
            )
        if token.revoked_at is not None:
            raise Refusal(dns.rcode.REFUSED, "enrollment token revoked")
        if token.expires_at < now:
            raise Refusal(
                dns.rcode.REFUSED, f"enrollment token expired at {rfc3339(token.expires_at)}"
            )
        return token

    def _check_request(
        self,
        wire: bytes,
        request: EnrollmentRequest,
        token: TokenRow,
        backend: str,
        now: float,
    ) -> None:
        try:
            stamp = parse_rfc3339(request.timestamp, "request timestamp")
        except EnrollmentError as exc:
            raise Refusal(dns.rcode.FORMERR, str(exc)) from exc
        if abs(stamp - now) > self.window:
            raise Refusal(
                dns.rcode.REFUSED,
                f"request timestamp {request.timestamp} is more than {self.window} s from the "
                f"KDC's clock ({rfc3339(now)}): check the node's clock",
            )
        try:
            key = sig0.parse_key_text(request.sig0_pubkey)
        except KrsError as exc:
            raise Refusal(dns.rcode.FORMERR, f"sig0_pubkey: {exc}") from exc
        if key.owner != dns.name.from_text(token.node_id):
            raise Refusal(
                dns.rcode.REFUSED,
                f"the SIG(0) KEY is for {key.owner}, not for node {token.node_id}",
            )
        try:
            # Our KRS signs as the node (the KEY owner); tdns's as the control zone.
            signer = sig0.parse_sig0(wire).signer
            if signer not in (key.owner, self.control_zone):
                raise EnrollmentError(
                    f"signer {signer} is neither the node {key.owner} nor the control zone"
                )
            sig0.verify(wire, key, signer=signer, now=now)
        except KrsError as exc:
            raise Refusal(dns.rcode.REFUSED, f"SIG(0): {exc}") from exc
        if request.package_digest and request.package_digest != token.package_digest:
            raise Refusal(
                dns.rcode.REFUSED,
                "the package the node used is not the one issued for this token (altered)",
            )
        if not _keys_ok(request):
            raise Refusal(dns.rcode.FORMERR, "the request's public keys are malformed")
        offered = {
            "hpke": request.hpke_pubkey,
            "jose": request.jose_pubkey,
            "hpke-pq": request.hpke_pq_pubkey,
        }
        if not offered.get(token.backend):
            raise Refusal(
                dns.rcode.REFUSED,
                f"the package is for backend {token.backend}, but the request has no "
                f"{token.backend.replace('-', '_')}_pubkey",
            )
        existing = self.store.find_node(token.node_id)
        if existing is not None:
            raise Refusal(
                dns.rcode.REFUSED,
                f"node {token.node_id} is already enrolled with other keys (remove it at the "
                "KDC first to enrol it again)",
            )

    def _register(
        self, request: EnrollmentRequest, token: TokenRow, backend: str, now: float
    ) -> None:
        host, _, port = request.notify_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise Refusal(
                dns.rcode.FORMERR, f"notify_address {request.notify_address!r} is not host:port"
            )
        signing = request.signing_key()
        try:
            self.store.add_node(
                token.node_id,
                notify_address=request.notify_address,
                backend=token.backend,
                hpke_pubkey=request.hpke_pubkey or None,
                jose_pubkey=request.jose_pubkey or None,
                hpke_pq_pubkey=request.hpke_pq_pubkey or None,
                signing_pubkey=request.signing_pubkey if signing is not None else None,
                zones=token.zones,
                sig0_pubkey=request.sig0_pubkey,
                used_token=token.token_hash,
                now=now,
            )
        except StateError as exc:
            raise Refusal(dns.rcode.REFUSED, str(exc)) from exc
        except KrsError as exc:
            raise Refusal(dns.rcode.SERVFAIL, f"the KDC could not store the node: {exc}") from exc

    def _first_distribution(self, node_id: str, now: float) -> None:
        """The node's keys, ready when it starts: the zones it serves that have live keys."""
        node = self.store.require_node(node_id)
        live = {k.zone for k in self.store.keys(states=LIVE_STATES)}
        zones = [z for z in node.zones if z in live]
        if not zones:
            log.info("node %s enrolled; no zone of it has keys yet: nothing to send", node_id)
            return
        try:
            summary = distribute_node(
                self.store, self.identity, node_id, zones=zones, now=now,
                ttl=self.distribution_ttl,
            )  # fmt: skip
        except KrsError as exc:
            log.error("first distribution for node %s failed: %s", node_id, exc)
            return
        log.info("distribution %s queued for new node %s", summary.distribution_id, node_id)

    # --- the answer ---------------------------------------------------------------------------

    def _answer(
        self,
        query: dns.message.Message,
        rcode: dns.rcode.Rcode,
        confirmation: EnrollmentConfirmation,
        node_keys: tuple[HpkeKey | None, JoseKey | None, HybridKey | None],
        reason: str,
    ) -> bytes:
        hpke, jose, hybrid = node_keys
        sealed = seal_confirmation(
            confirmation,
            node_hpke=hpke,
            node_jose=jose,
            kdc_hpke=self.identity.hpke,
            node_hybrid=hybrid,
        )
        options: list[dns.edns.Option] = [answer_option(sealed)]
        if reason:
            code = (
                dns.edns.EDECode.PROHIBITED
                if rcode == dns.rcode.REFUSED
                else dns.edns.EDECode.OTHER
            )
            options.append(dns.edns.EDEOption(code, reason[:300]))
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        response.use_edns(0, 0, 1232, options=options)
        return bytes(response.to_wire(max_size=0xFFFF))


def _parse(wire: bytes) -> dns.message.Message:
    try:
        unsigned = sig0.strip(wire)
    except SignatureError:
        unsigned = wire  # no or a misplaced SIG(0): refused, saying so, at the SIG(0) check
    except KrsError as exc:
        raise Refusal(dns.rcode.FORMERR, str(exc)) from exc
    try:
        message = dns.message.from_wire(unsigned)
    except (dns.exception.DNSException, ValueError, KrsError) as exc:
        raise Refusal(dns.rcode.FORMERR, f"malformed UPDATE: {exc}") from exc
    if message.opcode() != dns.opcode.UPDATE:
        raise Refusal(dns.rcode.FORMERR, "not a DNS UPDATE")
    return message


def _keys_ok(request: EnrollmentRequest) -> bool:
    try:
        request.hpke_key()
        request.jose_key()
        request.hybrid_key()
        request.signing_key()
    except EnrollmentError:
        return False
    return True


def pq_public_hex(store: Store) -> str:
    """The KDC's ML-DSA-65 public key for a package ("" when none is enabled): the node enrolled
    with it requires the KDC's post-quantum signature from its first distribution."""
    key = pq_signer(store.path.parent / "keys")
    return "" if key is None else key.public_raw.hex()
