"""One exception tree for the whole package.

Every error raised on bad input is a ``KrsError`` subclass named after the stage that found it, so
callers (the daemon, the CLI, tests) can tell *where* a distribution failed without parsing text.
Messages say what was expected, what was found, and where.
"""


class KrsError(Exception):
    """Base of every error this package raises on purpose."""


class WireError(KrsError):
    """Malformed data on the wire: RDATA, names, base64, JSON, compact serializations."""


class LimitError(WireError):
    """Input larger than a configured limit (chunk count, total bytes, chunk size)."""


class IntegrityError(KrsError):
    """Integrity checks failed: manifest HMAC, missing/duplicate/extra chunks, freshness."""


class SignatureError(KrsError):
    """The KDC's JWS signature is missing, malformed, or does not verify."""


class DecryptionError(KrsError):
    """The sealed content could not be opened with this node's key."""


class KeyFileError(KrsError):
    """A key file (node, KDC or DNSSEC) is unreadable, malformed or of the wrong type."""


class UnsupportedAlgorithmError(KrsError):
    """An algorithm (DNSSEC, JOSE or HPKE) outside what this package supports."""


class PayloadError(KrsError):
    """The decrypted distribution content is invalid."""


class PolicyError(KrsError):
    """Valid content that this node must refuse (recipient, replay, zone not served, window)."""


class AdapterError(KrsError):
    """A nameserver adapter failed; the message names the step and the server's own message."""


class ConfigError(KrsError):
    """Configuration is invalid; the message names file, key and reason."""


class KeyMismatchError(KrsError):
    """A DNSSEC private key does not belong to the DNSKEY (or key tag) it came with."""


class EnrollmentError(KrsError):
    """A bootstrap package, enrollment request or enrollment answer is refused; the message
    says why (expired, used, revoked, altered, not sealed to this KDC...)."""
