"""Key policies: how the KDC rolls a zone's keys (issue 22), and the check that their timing fits.

A policy is a frozen :class:`Policy` with the defaults of docs/lifecycle.md, "Policies" (BIND's
``dnssec-policy`` and Knot's ``policy`` where they agree). Durations are whole seconds; a lifetime
of 0 means unlimited (the key is never rolled by age). :func:`validate` refuses a policy whose
lifetimes cannot fit its own RFC 7583 timing, naming every term and its value. The engine that runs
rollovers reads policies; this module only describes and checks them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from krs_plugin.errors import ConfigError
from krs_plugin.humantime import format_duration

LAYOUTS = ("ksk-zsk", "csk")
ZSK_METHODS = ("pre-publish", "double-signature")
KSK_METHODS = ("double-ksk", "double-ds")
CSK_METHODS = ("double-ksk", "double-ds")
CDS_MODES = ("none", "rollover", "always")  # docs/lifecycle.md, "CDS and CDNSKEY on every node"
ALGORITHM_METHODS = ("conservative", "liberal")  # RFC 6781 4.1.4's two approaches
TEXT_FIELDS = ("layout", "zsk_method", "ksk_method", "csk_method", "cds", "algorithm_method")
ALGORITHMS = (8, 13, 14, 15, 16)  # what krs-kdc key generate makes
MAX_STANDBY_ZSKS = 4

DURATION_FIELDS = (
    "zsk_lifetime",
    "ksk_lifetime",
    "csk_lifetime",
    "dnskey_ttl",
    "max_zone_ttl",
    "negative_ttl",
    "signatures_validity",
    "signatures_refresh",
    "publish_safety",
    "retire_safety",
    "parent_ds_ttl",
    "parent_propagation_delay",
    "propagation_margin",
)
LIFETIME_FIELDS = ("zsk_lifetime", "ksk_lifetime", "csk_lifetime")

# Changing these on a policy a zone uses starts a rollover the engine does not run yet.
UNSAFE_IN_USE = {
    "layout": "a CSK <-> KSK+ZSK rollover (a key-type change) is not supported yet",
}


class PolicyInvalid(ConfigError):
    """A key policy whose values are out of range or whose lifetimes cannot fit its timing."""


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_policy_name(name: str) -> str:
    """A policy name: lower-case letters, digits, ``.``, ``_``, ``-``; at most 63; not ``none``."""
    if not _NAME.fullmatch(name) or name == "none":
        raise PolicyInvalid(
            f"policy name {name!r}: expected 1 to 63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (and not 'none')"
        )
    return name


@dataclass(frozen=True)
class Policy:
    """One key policy; field names as in ``--json`` (the options spell ``_`` as ``-``)."""

    algorithm: int = 13
    layout: str = "ksk-zsk"
    zsk_lifetime: int = 30 * 86400  # Knot's zsk-lifetime
    ksk_lifetime: int = 0  # unlimited: Knot and BIND
    csk_lifetime: int = 0
    zsk_method: str = "pre-publish"
    ksk_method: str = "double-ksk"
    csk_method: str = "double-ksk"
    dnskey_ttl: int = 3600
    max_zone_ttl: int = 86400
    negative_ttl: int = 3600
    signatures_validity: int = 14 * 86400
    signatures_refresh: int = 5 * 86400
    publish_safety: int = 3600
    retire_safety: int = 3600
    parent_ds_ttl: int = 86400
    parent_propagation_delay: int = 3600
    propagation_margin: int = 300  # BIND's zone-propagation-delay
    standby_zsks: int = 0
    standby_ksk: int = 0  # 1: a published KSK whose DS the parent has, for an emergency
    cds: str = "rollover"  # CDS/CDNSKEY: Knot's cds-cdnskey-publish, BIND's default
    algorithm_method: str = "conservative"  # liberal: for BIND nodes (docs/lifecycle.md)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, data: Any, *, where: str = "policy") -> Policy:
        """A policy from a JSON object; missing fields take their defaults (a policy stored before a
        field existed), unknown fields are an error."""
        if not isinstance(data, dict):
            raise PolicyInvalid(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyInvalid(f"{where}: unknown field(s) {', '.join(unknown)}")
        for name, value in data.items():
            expected = str if name in TEXT_FIELDS else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise PolicyInvalid(
                    f"{where}: {name} must be {'text' if expected is str else 'whole seconds'}, "
                    f"got {value!r}"
                )
        return cls(**data)

    @classmethod
    def loads(cls, text: str, *, where: str = "policy") -> Policy:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PolicyInvalid(f"{where}: not JSON: {exc}") from exc
        return cls.from_json(data, where=where)

    def changed(self, **values: Any) -> Policy:
        """A copy with ``values`` (field names) replaced."""
        return replace(self, **values)

    @property
    def roles(self) -> tuple[str, ...]:
        return ("CSK",) if self.layout == "csk" else ("KSK", "ZSK")

    def describe(self) -> list[str]:
        """``name: value`` lines for people, durations as ``1h``, lifetimes 0 as ``unlimited``."""
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            label = f.name.replace("_", "-")
            if f.name in LIFETIME_FIELDS and value == 0:
                text = "unlimited"
            elif f.name in DURATION_FIELDS:
                text = human(value)
            else:
                text = str(value)
            unused = (f.name.startswith("csk_") and self.layout != "csk") or (
                f.name.startswith(("ksk_", "zsk_", "standby_")) and self.layout == "csk"
            )
            lines.append(f"{label}: {text}" + (" (not used by this layout)" if unused else ""))
        return lines


def human(seconds: float) -> str:
    """Days rather than weeks unless whole weeks (``30d``, ``2w``), and every unit, so that a sum
    in a message adds up: ``10d3h10m``."""
    whole = int(seconds)
    if whole != seconds or whole < 86400 or whole % 604800 == 0:
        return format_duration(seconds, parts=5)
    days, rest = divmod(whole, 86400)
    return f"{days}d" + (format_duration(rest, parts=4) if rest else "")


@dataclass(frozen=True)
class Interval:
    """A named sum of policy terms, e.g. Ipub = dnskey-ttl 1h + publish-safety 1h."""

    name: str
    seconds: int
    formula: str  # "dnskey-ttl 1h + publish-safety 1h + propagation-margin 5m"

    def text(self) -> str:
        return f"{self.name} = {self.formula} = {human(self.seconds)}"


def _term(policy: Policy, name: str) -> tuple[int, str]:
    value = int(getattr(policy, name))
    return value, f"{name.replace('_', '-')} {human(value)}"


def _sum(name: str, *parts: tuple[int, str]) -> Interval:
    return Interval(name, sum(p[0] for p in parts), " + ".join(p[1] for p in parts))


def _dsgn(policy: Policy) -> tuple[int, str]:
    seconds = policy.signatures_validity - policy.signatures_refresh
    return seconds, (
        f"Dsgn (signatures-validity {human(policy.signatures_validity)} - signatures-refresh "
        f"{human(policy.signatures_refresh)} = {human(seconds)})"
    )


def _largest(policy: Policy, *names: str) -> tuple[int, str]:
    terms = [_term(policy, n) for n in names]
    value = max(t[0] for t in terms)
    return value, f"max({', '.join(t[1] for t in terms)})"


def _largest_of(*parts: tuple[int, str]) -> tuple[int, str]:
    return max(p[0] for p in parts), f"max({', '.join(p[1] for p in parts)})"


def intervals(policy: Policy, role: str) -> tuple[Interval, Interval]:
    """(Ipub, Iret) of a rollover of ``role`` by the policy's method for it (RFC 7583; the
    formulas are listed in docs/lifecycle.md, "Policies")."""
    p = policy
    dnskey = _term(p, "dnskey_ttl")
    margin = _term(p, "propagation_margin")
    publish_child = _sum("Ipub", dnskey, _term(p, "publish_safety"), margin)
    publish_parent = _sum(
        "Ipub", _term(p, "parent_ds_ttl"), _term(p, "parent_propagation_delay"),
        _term(p, "publish_safety"),
    )  # fmt: skip
    retire = _term(p, "retire_safety")
    parent = (
        p.parent_ds_ttl + p.parent_propagation_delay,
        f"parent-ds-ttl {human(p.parent_ds_ttl)} + parent-propagation-delay "
        f"{human(p.parent_propagation_delay)}",
    )
    if role == "ZSK":
        if p.zsk_method == "double-signature":
            return publish_child, _sum(
                "Iret", _dsgn(p), _largest(p, "dnskey_ttl", "max_zone_ttl"), retire, margin
            )
        return publish_child, _sum("Iret", _dsgn(p), _term(p, "max_zone_ttl"), retire, margin)
    if role == "KSK":
        if p.ksk_method == "double-ds":
            return publish_parent, _sum("Iret", dnskey, retire, margin)
        return publish_child, _sum("Iret", _term(p, "parent_ds_ttl"),
                                   _term(p, "parent_propagation_delay"), retire)  # fmt: skip
    if role == "CSK":
        if p.csk_method == "double-ds":
            return publish_parent, _sum(
                "Iret", _dsgn(p), _largest(p, "dnskey_ttl", "max_zone_ttl"), retire, margin
            )
        signatures = _sum("", _dsgn(p), _term(p, "max_zone_ttl"), margin)
        return publish_child, _sum(
            "Iret", _largest_of((signatures.seconds, signatures.formula), parent), retire
        )
    raise ValueError(f"role {role!r} is not KSK, ZSK or CSK")


def problems(policy: Policy) -> list[str]:
    """Everything wrong with ``policy``, each with the numbers; empty when it is valid."""
    p = policy
    out: list[str] = []
    if p.algorithm not in ALGORITHMS:
        out.append(f"algorithm {p.algorithm} is not one of {', '.join(map(str, ALGORITHMS))}")
    for name, allowed in (
        ("layout", LAYOUTS),
        ("zsk_method", ZSK_METHODS),
        ("ksk_method", KSK_METHODS),
        ("csk_method", CSK_METHODS),
        ("cds", CDS_MODES),
        ("algorithm_method", ALGORITHM_METHODS),
    ):
        if getattr(p, name) not in allowed:
            label = name.replace("_", "-")
            out.append(f"{label} {getattr(p, name)!r} is not one of {', '.join(allowed)}")
    for name in DURATION_FIELDS:
        if getattr(p, name) < 0:
            out.append(f"{name.replace('_', '-')} must not be negative, got {getattr(p, name)}")
    for name in ("dnskey_ttl", "max_zone_ttl", "signatures_validity", "signatures_refresh"):
        if getattr(p, name) <= 0:
            out.append(f"{name.replace('_', '-')} must be more than 0s")
    if not 0 <= p.standby_zsks <= MAX_STANDBY_ZSKS:
        out.append(f"standby-zsks must be 0 to {MAX_STANDBY_ZSKS}, got {p.standby_zsks}")
    if p.standby_ksk not in (0, 1):
        out.append(f"standby-ksk must be 0 or 1, got {p.standby_ksk}")
    elif p.standby_ksk and p.layout == "csk":
        out.append("standby-ksk needs the ksk-zsk layout (a standby CSK is not built)")
    if out:
        return out  # the timing below needs sane values
    if p.signatures_refresh >= p.signatures_validity:
        out.append(
            f"signatures-refresh {human(p.signatures_refresh)} must be less than "
            f"signatures-validity {human(p.signatures_validity)} (a signature is renewed when "
            "less than signatures-refresh of its validity is left)"
        )
    if p.signatures_refresh <= p.max_zone_ttl:
        out.append(
            f"signatures-refresh {human(p.signatures_refresh)} must exceed max-zone-ttl "
            f"{human(p.max_zone_ttl)}: a signature cached just before it is renewed must stay "
            "valid for as long as a resolver may keep it"
        )
    if p.negative_ttl > p.max_zone_ttl:
        out.append(
            f"negative-ttl {human(p.negative_ttl)} exceeds max-zone-ttl "
            f"{human(p.max_zone_ttl)}: max-zone-ttl is the largest TTL in the zone, negative "
            "answers (NSEC/NSEC3 and the SOA) included"
        )
    if p.dnskey_ttl > p.max_zone_ttl:
        out.append(
            f"dnskey-ttl {human(p.dnskey_ttl)} exceeds max-zone-ttl {human(p.max_zone_ttl)}: "
            "max-zone-ttl is the largest TTL in the zone, the DNSKEY RRset's included"
        )
    if out:
        return out
    for role in p.roles:
        lifetime = getattr(p, f"{role.lower()}_lifetime")
        if lifetime == 0:
            continue
        method = getattr(p, f"{role.lower()}_method")
        ipub, iret = intervals(p, role)
        if lifetime <= ipub.seconds + iret.seconds:
            out.append(
                f"{role.lower()}-lifetime {human(lifetime)} is too short for a {role} {method} "
                f"rollover: it must exceed Ipub + Iret = {human(ipub.seconds)} + "
                f"{human(iret.seconds)} = {human(ipub.seconds + iret.seconds)}, where "
                f"{ipub.text()} and {iret.text()}"
            )
    return out


def validate(policy: Policy, *, name: str = "policy") -> Policy:
    """``policy`` itself when it is valid; otherwise PolicyInvalid listing every problem."""
    found = problems(policy)
    if found:
        raise PolicyInvalid(f"{name}: " + "; ".join(found))
    return policy


def unsafe_changes(old: Policy, new: Policy) -> list[str]:
    """Why ``new`` may not replace ``old`` on a policy zones use (empty: it may)."""
    return [
        f"{field.replace('_', '-')} {getattr(old, field)} -> {getattr(new, field)}: {why}"
        for field, why in UNSAFE_IN_USE.items()
        if getattr(old, field) != getattr(new, field)
    ]


def differences(old: Policy, new: Policy) -> list[tuple[str, Any, Any]]:
    """(field, old, new) of each field that differs."""
    return [
        (f.name, getattr(old, f.name), getattr(new, f.name))
        for f in fields(Policy)
        if getattr(old, f.name) != getattr(new, f.name)
    ]


def value_text(name: str, value: Any) -> str:
    if name in LIFETIME_FIELDS and value == 0:
        return "unlimited"
    return human(value) if name in DURATION_FIELDS else str(value)
