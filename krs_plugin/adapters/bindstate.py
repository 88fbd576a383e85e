"""BIND 9.20 key ``.state`` files: what named believes of a key, and the reset that makes it
follow the KDC's timing (docs/servers/bind9.md, "BIND 9.20").

Under ``dnssec-policy`` named keeps each key's DNSSEC states (DNSKEY, zone and key RRSIG, DS,
goal) in ``K<zone>+<alg>+<tag>.state``, and the states, not the timing in the key files, decide
what it publishes and signs with. It derives them from the timing only when a key has no state
lines: when the ``.state`` is missing or holds just the key's identity. In ``manual-mode`` it then
never moves a key forward by itself. So the adapter drives named by timing: whenever what named
believes of a key (published? signing?) differs from what the key's timing says for now, it
writes the minimal ``.state`` below and has named load the keys again, which re-derives that
key's states from its timing. A key whose states already agree is left alone, so named's own
settling (rumoured to omnipresent) is not restarted for nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from krs_plugin.adapters.cdsset import has_cds
from krs_plugin.adapters.dnscheck import is_active, is_published
from krs_plugin.dnssec import DnssecKey, KeyTiming
from krs_plugin.files import atomic_write

IN_USE = {"rumoured", "omnipresent"}  # named's states in which a record is (being) served
STATE_MODE = 0o644  # no secret in it; named rewrites it

# The key length named compares with the policy's (dns_kasp_key_match): fixed by the algorithm,
# except RSA, whose modulus size it is.
FIXED_LENGTHS = {13: 256, 14: 384, 15: 256, 16: 456}


def key_length(key: DnssecKey) -> int:
    fixed = FIXED_LENGTHS.get(key.algorithm)
    if fixed is not None:
        return fixed
    size = getattr(key.private_key, "key_size", None)
    if not isinstance(size, int):
        raise ValueError(f"no key length for algorithm {key.algorithm}")
    return size


def roles(role: str | None, flags: int) -> tuple[bool, bool]:
    """(signs DNSKEY, signs the zone) for a KDC role, or from the flags when there is none."""
    if role is None:
        role = "KSK" if flags == 257 else "ZSK"
    return role in ("KSK", "CSK"), role in ("ZSK", "CSK")


def minimal_state_text(key: DnssecKey, role: str | None) -> str:
    """A ``.state`` with the key's identity and role and no state lines: named fills the states
    in from the key's timing the next time it loads keys. The first line must be a comment and
    Algorithm/Length must match the key, or named ignores the key ("unexpected token")."""
    ksk, zsk = roles(role, key.flags)
    return (
        f"; state of key {key.key_tag} for {key.zone.to_text()}, reset by the KRS to follow its "
        "timing\n"
        f"Algorithm: {key.algorithm}\n"
        f"Length: {key_length(key)}\n"
        "Lifetime: 0\n"
        f"KSK: {'yes' if ksk else 'no'}\n"
        f"ZSK: {'yes' if zsk else 'no'}\n"
    )


def state_path(directory: Path, key: DnssecKey) -> Path:
    return directory / f"{key.basename}.state"


def read_state(path: Path) -> dict[str, str]:
    """``Field: value`` lines of a ``.state`` file (empty when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    fields = {}
    for line in text.splitlines():
        if line.startswith(";") or ":" not in line:
            continue
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def serves_cds(timing: KeyTiming, flags: int, now: int) -> bool:
    """Whether the key's CDS/CDNSKEY are to be served at ``now``: a KSK or CSK the KDC marked
    ``publish`` (the adapter wrote a SyncPublish, bind9.bind_timing), while it is active
    (cdsset.has_cds, the same on every server)."""
    return flags == 257 and timing.sync_publish is not None and has_cds(timing, now)


@dataclass(frozen=True)
class Phase:
    """What is true of a key at one moment: its DNSKEY is served, it signs, its CDS/CDNSKEY
    are served."""

    published: bool
    signing: bool
    cds: bool = False

    def describe(self) -> str:
        if self.signing:
            text = "published and signing"
        else:
            text = "published, not signing" if self.published else "not published"
        return text + (", CDS served" if self.cds else "")


def wanted_phase(timing: KeyTiming, now: int, flags: int = 256) -> Phase:
    return Phase(is_published(timing, now), is_active(timing, now), serves_cds(timing, flags, now))


def named_phase(state: dict[str, str], flags: int) -> Phase | None:
    """What named's states say of the key, or None when they are not there yet (a minimal
    ``.state`` named has not read)."""
    dnskey = state.get("DNSKEYState")
    if dnskey is None:
        return None
    ksk, zsk = roles_from_state(state, flags)
    signatures = [state.get("KRRSIGState", "")] if ksk else []
    signatures += [state.get("ZRRSIGState", "")] if zsk else []
    # named serves the CDS/CDNSKEY of a key whose DS state is rumoured or omnipresent
    # (dnssec.c syncpublish(): the DS state decides, the sync times are not read then)
    cds = ksk and state.get("DSState", "hidden") in IN_USE
    return Phase(dnskey in IN_USE, any(s in IN_USE for s in signatures), cds)


def roles_from_state(state: dict[str, str], flags: int) -> tuple[bool, bool]:
    """The roles a ``.state`` records (named keeps the lines it was given), else by flags."""
    if "KSK" in state or "ZSK" in state:
        return state.get("KSK") == "yes", state.get("ZSK") == "yes"
    return roles(None, flags)


def role_of(state: dict[str, str], flags: int) -> str:
    ksk, zsk = roles_from_state(state, flags)
    return "CSK" if ksk and zsk else "KSK" if ksk else "ZSK"


def needs_reset(directory: Path, key: DnssecKey, timing: KeyTiming, now: int) -> str | None:
    """Why named must re-derive ``key``'s states from its timing now, or None."""
    state = read_state(state_path(directory, key))
    if not state:
        return "no state file"
    believed = named_phase(state, key.flags)
    if believed is None:
        return "named has not read its state yet"
    wanted = wanted_phase(timing, now, key.flags)
    if believed != wanted:
        return f"named has it {believed.describe()}, its timing says {wanted.describe()}"
    return None


def reset_state(
    directory: Path, key: DnssecKey, role: str | None, owner: tuple[int, int] | None
) -> None:
    """Write the minimal ``.state`` (keeping the role it records when ``role`` is None)."""
    path = state_path(directory, key)
    if role is None:
        role = role_of(read_state(path), key.flags)
    atomic_write(path, minimal_state_text(key, role).encode(), STATE_MODE)
    if owner is not None:
        os.chown(path, *owner)
