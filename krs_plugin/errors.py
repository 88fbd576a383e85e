"""One exception tree for the whole package, and the one list of stage names.

Every error raised on bad input is a ``KrsError`` subclass named after the stage that found it, so
callers (the daemon, the CLI, tests) can tell *where* a distribution failed without parsing text.
Messages say what was expected, what was found, and where.

Each class names its stage in the class attribute ``stage`` (as dnspython's exceptions carry
their ``msg``); ``stage_of`` reads it, and the pipeline, ``krs fetch``, ``krs run`` (and so
``krs status``) and the metrics labels record exactly these names. ``STAGES`` lists them all:
the stage column of docs/operations.md, "Errors and what to do".
"""

STAGES: tuple[str, ...] = (
    "fetch",
    "wire",
    "integrity",
    "policy",
    "signature",
    "decryption",
    "payload",
    "apply",
)
"""Where a distribution can stop, one row each in docs/operations.md's error table."""

RETRIED_STAGES: frozenset[str] = frozenset({"fetch", "apply"})
"""Stages on this node's side (servers unreachable, the nameserver or a local file failing):
recorded ``failed`` and tried again. Every other stage refuses the KDC's data: ``rejected``."""

DONE = "done"
"""The stage recorded with the outcome ``applied``."""


class KrsError(Exception):
    """Base of every error this package raises on purpose.

    Its stage, ``apply``, is that of every error without one of its own (configuration, key files,
    enrollment, state): a problem on this node's side, retried, never a refusal of the KDC's data.
    ``stage=`` sets it for one error whose class serves several stages (an unsupported algorithm
    is found by the signature, decryption or payload check).
    """

    stage: str = "apply"

    def __init__(self, *args: object, stage: str | None = None) -> None:
        super().__init__(*args)
        if stage is not None:
            if stage not in STAGES:
                raise ValueError(f"stage {stage!r} is not one of {STAGES}")
            self.stage = stage


def stage_of(error: KrsError) -> str:
    """The stage that found ``error`` (one of ``STAGES``)."""
    return error.stage


def outcome_of(stage: str) -> str:
    """``failed`` (tried again) for this node's side, ``rejected`` for the KDC's data."""
    return "failed" if stage in RETRIED_STAGES else "rejected"


class WireError(KrsError):
    """Malformed data on the wire: RDATA, names, base64, JSON, compact serializations."""

    stage = "wire"


class LimitError(WireError):
    """Input larger than a configured limit (chunk count, total bytes, chunk size)."""


class IntegrityError(KrsError):
    """Integrity checks failed: manifest HMAC, missing/duplicate/extra chunks, freshness."""

    stage = "integrity"


class SignatureError(KrsError):
    """The KDC's JWS signature is missing, malformed, or does not verify."""

    stage = "signature"


class DecryptionError(KrsError):
    """The sealed content could not be opened with this node's key."""

    stage = "decryption"


class KeyFileError(KrsError):
    """A key file (node, KDC or DNSSEC) is unreadable, malformed or of the wrong type.

    Stage ``apply``: a local key file is this node's side (a key the KDC sent that does not
    parse is a ``PayloadError``)."""

    stage = "apply"


class UnsupportedAlgorithmError(KrsError):
    """An algorithm (DNSSEC, JOSE or HPKE) outside what this package supports."""

    stage = "payload"


class PayloadError(KrsError):
    """The decrypted distribution content is invalid."""

    stage = "payload"


class PolicyError(KrsError):
    """Valid content that this node must refuse (recipient, replay, zone not served, window)."""

    stage = "policy"


class AdapterError(KrsError):
    """A nameserver adapter failed; the message names the step and the server's own message."""

    stage = "apply"


class ConfigError(KrsError):
    """Configuration is invalid; the message names file, key and reason."""


class KeyMismatchError(KrsError):
    """A DNSSEC private key does not belong to the DNSKEY (or key tag) it came with."""

    stage = "payload"


class EnrollmentError(KrsError):
    """A bootstrap package, enrollment request or enrollment answer is refused; the message
    says why (expired, used, revoked, altered, not sealed to this KDC...)."""
