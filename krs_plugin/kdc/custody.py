"""Where the KDC's long-term secrets live: its signing key (ES256) and a key-encryption key (KEK).

Three custodies (docs/security.md, "Key custody"):

- ``pkcs11``: the signing key and the KEK (AES-256) are objects of a PKCS#11 token (an HSM,
  SoftHSM2), made in the token or imported into it non-extractable and sensitive; the KDC asks
  the token to sign and to wrap or unwrap, and never holds either key.
- ``file``: the KEK is 32 bytes in a 0600 file (default ``keys/kdc.kek``) or a systemd credential
  ``kdc-kek``; the signing key stays the 0600 file ``keys/kdc.signing.privatekey``.
- ``legacy``: a kdc.db from before custody, its DNSSEC private keys in the clear; until
  ``krs-kdc custody migrate`` seals them.

The DNSSEC private keys in kdc.db are sealed with AES-256-GCM under the KEK: a fresh 96-bit nonce
per key, the row's zone, key tag, algorithm and role as associated data, so a sealed key copied
onto another row does not open. A custody is opened only when a secret is used (sealing a new
key, opening one for a distribution, signing): ``key list``, ``zone ds`` and the lifecycle
engine's planning read the public DNSKEY column and never touch the token or the KEK.

The settings are kdc.db's meta ``custody`` (JSON); never a PIN or a KEK.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krs_plugin.crypto import JoseKey, load_jose_key
from krs_plugin.errors import KeyFileError, KrsError
from krs_plugin.files import SECRET_MODE, atomic_write

KINDS = ("legacy", "file", "pkcs11")
META_KEY = "custody"
KEK_BYTES = 32
NONCE_BYTES = 12
SEALED_VERSION = b"\x01"
DEFAULT_KEK_FILE = "keys/kdc.kek"
SIGNING_FILE = "keys/kdc.signing.privatekey"  # identity.SIGNING_FILE under the state directory
SIGNING_PUBLIC_FILE = "keys/kdc.signing.pubkey"
DEFAULT_SIGNING_LABEL = "krs-kdc-signing"
DEFAULT_KEK_LABEL = "krs-kdc-kek"
PIN_ENV = "KRS_KDC_PIN"
PIN_CREDENTIAL = "kdc-pin"
KEK_CREDENTIAL = "kdc-kek"
_CHECK_TEXT = b"krs-kdc key-encryption key check v1"


class CustodyError(KrsError):
    """The token or the KEK is missing, unusable or not the one kdc.db's keys are sealed with;
    or a sealed key does not open. Nothing was changed."""


@dataclass(frozen=True)
class CustodySettings:
    """kdc.db's meta ``custody``: where the secrets are, never a secret."""

    kind: str = "legacy"
    kek_file: str | None = None  # file: the KEK file (relative: to the state directory)
    module: str | None = None  # pkcs11: the module's path
    token: str | None = None  # pkcs11: the token's label
    signing_label: str = DEFAULT_SIGNING_LABEL
    kek_label: str = DEFAULT_KEK_LABEL
    pin_file: str | None = None
    kek_check: str | None = None  # hex of the check text sealed under the KEK: a wrong KEK

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> CustodySettings:
        if text is None:
            return cls()
        try:
            data = json.loads(text)
            settings = cls(**data)
        except (ValueError, TypeError) as exc:
            raise CustodyError(f"kdc.db meta custody is not valid: {exc}") from exc
        if settings.kind not in KINDS:
            raise CustodyError(f"kdc.db meta custody: kind {settings.kind!r} is not one of {KINDS}")
        return settings


def key_aad(zone: str, key_tag: int, algorithm: int, role: str) -> bytes:
    """The associated data that binds a sealed DNSSEC key to its row."""
    return f"krs-kdc dnssec key v1\0{zone}\0{key_tag}\0{algorithm}\0{role}".encode()


# --- the token's signing key as a cryptography private key ------------------------------------


class TokenSigningKey(ec.EllipticCurvePrivateKey):
    """A P-256 private key that lives in a PKCS#11 token: ``sign`` asks the token (ECDSA over a
    SHA-256 digest, r||s turned into DER), ``public_key`` is the token's public half, and
    everything that would export the private key refuses. JoseKey, ``jws_sign`` and the audit
    trail use it as any ``EllipticCurvePrivateKey``."""

    def __init__(
        self, sign_digest: Callable[[bytes], bytes], public: ec.EllipticCurvePublicKey, label: str
    ) -> None:
        self._sign_digest = sign_digest
        self._public = public
        self.label = label

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise CustodyError("the token's signing key makes ECDSA signatures only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            if not isinstance(algorithm._algorithm, hashes.SHA256) or len(data) != 32:
                raise CustodyError("the token's signing key signs SHA-256 digests only")
            digest = bytes(data)
        elif isinstance(algorithm, hashes.SHA256):
            digest = hashlib.sha256(data).digest()
        else:
            raise CustodyError(f"the token's signing key signs with SHA-256, not {algorithm.name}")
        raw = self._sign_digest(digest)
        if len(raw) != 64:
            raise CustodyError(f"the token returned a {len(raw)}-byte signature, expected 64")
        return encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise CustodyError("the KDC's signing key in the token signs only; no key agreement")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise CustodyError(
            f"the KDC's signing key is in the PKCS#11 token ({self.label}) and cannot leave it"
        )

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise CustodyError(
            f"the KDC's signing key is in the PKCS#11 token ({self.label}) and cannot leave it"
        )

    def __copy__(self) -> TokenSigningKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenSigningKey:
        return self

    def __repr__(self) -> str:
        return f"TokenSigningKey({self.label})"


# --- custodies --------------------------------------------------------------------------------


@dataclass
class Custody:
    """One custody, opened for a state directory. ``seal``/``open`` use the KEK (AES-256-GCM);
    ``signing_key`` is the KDC's ES256 key (a JoseKey whose private part may be the token's)."""

    settings: CustodySettings
    state: Path
    source: str = ""  # where the KEK / PIN came from, for status (never the secret)
    _signing: JoseKey | None = field(default=None, repr=False)
    _verified: bool = field(default=False, repr=False)  # the KEK matched the check value
    rolled_signers: Callable[[], frozenset[str]] = field(default=frozenset, repr=False)
    """Thumbprints kdc.db records as the signing key, current or next (kdc/signroll.py); set by
    Store.custody. A roll's switch rewrites kdc.signing.pubkey a moment before it commits."""

    @property
    def kind(self) -> str:
        return self.settings.kind

    @property
    def seals(self) -> bool:
        """New DNSSEC keys are sealed under a KEK (file, pkcs11), not stored in the clear."""
        return self.kind != "legacy"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        self._verify_once()
        nonce = secrets.token_bytes(NONCE_BYTES)
        return SEALED_VERSION + nonce + self._encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes, *, what: str) -> bytes:
        """The plaintext of ``blob``; CustodyError naming ``what`` when it does not open."""
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != SEALED_VERSION:
            raise CustodyError(f"custody {self.kind}: {what}: not a sealed key (damaged row?)")
        self._verify_once()
        try:
            return self._decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
        except CustodyError:
            raise
        except Exception as exc:  # InvalidTag; a token's GeneralError
            raise CustodyError(
                f"custody {self.kind}: {what} does not decrypt under the KEK ({self.kek_name}): "
                "the KEK is another one, or the row was altered or copied from another key "
                f"({type(exc).__name__})"
            ) from exc

    def check_value(self) -> str:
        """The check text sealed under this KEK, stored in the settings at init and migrate."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return (SEALED_VERSION + nonce + self._encrypt(nonce, _CHECK_TEXT, b"kek-check")).hex()

    @property
    def kek_name(self) -> str:
        """Where the KEK is, for messages."""
        return self.source or "none"

    def _verify_once(self) -> None:
        if not self._verified:
            self.verify()
            self._verified = True

    def opens(self, check: str) -> bool:
        """Whether this KEK opens the check value ``check`` (sealed by ``check_value``)."""
        try:
            ok = self._decrypt(bytes.fromhex(check)[1:13], bytes.fromhex(check)[13:], b"kek-check")
        except CustodyError:
            raise  # no KEK at all, no token: named as such
        except Exception:
            ok = b""
        return ok == _CHECK_TEXT

    def verify(self) -> None:
        """Refuse a KEK that is not the one the settings' check value was sealed with."""
        check = self.settings.kek_check
        if check is None or not self.seals:
            return
        if not self.opens(check):
            raise CustodyError(
                f"custody {self.kind}: the key-encryption key ({self.kek_name}) is not the one "
                "kdc.db's keys are sealed with; nothing was changed (the right KEK file, "
                "credential or token is needed: docs/security.md, 'Key custody')"
            )

    def signing_key(self) -> JoseKey:
        if self._signing is None:
            self._signing = self._load_signing_key()
        return self._signing

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = {"custody": self.kind}
        return data

    def _load_signing_key(self) -> JoseKey:
        path = self.state / SIGNING_FILE
        try:
            return load_jose_key(path)
        except KeyFileError as exc:
            raise CustodyError(f"custody {self.kind}: the KDC's signing key: {exc}") from exc

    def _encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        raise CustodyError(
            "custody legacy: kdc.db has no key-encryption key; seal its keys first with: "
            "krs-kdc custody migrate --to file (docs/security.md, 'Key custody')"
        )

    def _decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return self._encrypt(nonce, ciphertext, aad)


@dataclass
class FileCustody(Custody):
    _kek: AESGCM | None = field(default=None, repr=False)

    def _aead(self) -> AESGCM:
        if self._kek is None:
            raw, self.source = read_kek(self.state, self.settings)
            self._kek = AESGCM(raw)
        return self._kek

    def _encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead().encrypt(nonce, plaintext, aad)

    def _decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead().decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise ValueError("authentication tag does not match") from exc

    def status(self) -> dict[str, Any]:
        self._aead()
        return {
            "custody": "file",
            "kek": self.source,
            "signing_key_file": str(self.state / SIGNING_FILE),
        }


def kek_path(state: Path, settings: CustodySettings) -> Path:
    path = Path(settings.kek_file or DEFAULT_KEK_FILE)
    return path if path.is_absolute() else state / path


def credential_kek() -> Path | None:
    """The systemd credential ``kdc-kek`` when the unit gives one (it wins over the file)."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / KEK_CREDENTIAL).exists():
        return Path(credentials) / KEK_CREDENTIAL
    return None


def read_kek(
    state: Path, settings: CustodySettings, *, credential: bool = True
) -> tuple[bytes, str]:
    """The file custody's KEK and where it came from: the systemd credential ``kdc-kek`` when
    the unit gives one (unless ``credential`` is false: a KEK rotation reads the new file),
    else the KEK file. 32 raw bytes or 64 hex digits; a file others can read is refused."""
    path = kek_path(state, settings)
    source = f"KEK file {path}"
    found = credential_kek() if credential else None
    if found is not None:
        path = found
        source = f"systemd credential {KEK_CREDENTIAL}"
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise CustodyError(
            f"custody file: cannot read the key-encryption key ({source}): {exc.strerror}; "
            "nothing was changed (restore the KEK file or the credential: docs/security.md)"
        ) from None
    if info.st_mode & 0o077:
        raise CustodyError(
            f"custody file: {source} is readable by others (mode {info.st_mode & 0o777:o}); "
            "refused: chmod 600 it"
        )
    text = data.strip()
    if len(data) == KEK_BYTES:
        raw = data
    elif len(text) == 2 * KEK_BYTES:
        try:
            raw = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CustodyError(f"custody file: {source} is not 64 hex digits: {exc}") from None
    else:
        raise CustodyError(
            f"custody file: {source} holds {len(data)} bytes; a key-encryption key is 32 bytes "
            "(raw) or 64 hex digits"
        )
    return raw, source


def write_kek(path: Path) -> None:
    """A new random KEK as 64 hex digits, 0600 from its first byte; never replaces one."""
    if path.exists():
        raise CustodyError(f"custody file: {path} exists; refusing to replace a KEK")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, (secrets.token_bytes(KEK_BYTES).hex() + "\n").encode(), SECRET_MODE)


# --- PKCS#11 ----------------------------------------------------------------------------------

_LIBS: dict[str, Any] = {}
_SESSIONS: dict[tuple[str, str], tuple[Any, str]] = {}
_LOCK = threading.RLock()


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:
        raise CustodyError(
            "custody pkcs11: python-pkcs11 is not installed (pip install 'krs-plugin[custody]')"
        ) from exc
    return pkcs11


def read_pin(settings: CustodySettings) -> tuple[str, str]:
    """The token's user PIN and where it came from: $KRS_KDC_PIN, else the systemd credential
    ``kdc-pin``, else the PIN file of the settings."""
    pin = os.environ.get(PIN_ENV)
    if pin:
        return pin, f"${PIN_ENV}"
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = []
    if credentials:
        candidates.append(
            (Path(credentials) / PIN_CREDENTIAL, f"systemd credential {PIN_CREDENTIAL}")
        )
    if settings.pin_file:
        candidates.append((Path(settings.pin_file), f"PIN file {settings.pin_file}"))
    for path, source in candidates:
        if not path.exists() and source.startswith("systemd"):
            continue
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CustodyError(
                f"custody pkcs11: cannot read the token PIN ({source}): {exc}"
            ) from None
        if not text:
            raise CustodyError(f"custody pkcs11: {source} is empty")
        return text, source
    raise CustodyError(
        f"custody pkcs11: no token PIN: set ${PIN_ENV}, give the unit the credential "
        f"{PIN_CREDENTIAL} (LoadCredential=), or name a PIN file (--pin-file)"
    )


def open_session(settings: CustodySettings) -> tuple[Any, str]:
    """A logged-in read-write session on the settings' token (one per process and token)."""
    pkcs11 = _pkcs11()
    from pkcs11 import exceptions as p11

    module, label = settings.module or "", settings.token or ""
    key = (module, label)
    with _LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        pin, source = read_pin(settings)
        stage = f"custody pkcs11: module {module}, token {label!r}"
        if not Path(module).exists():
            raise CustodyError(f"{stage}: the module does not exist (apt-get install softhsm2?)")
        try:
            lib = _LIBS.get(module) or pkcs11.lib(module)
            _LIBS[module] = lib
            token = lib.get_token(token_label=label)
        except p11.NoSuchToken:
            raise CustodyError(
                f"{stage}: no such token (is it plugged in / initialised?)"
            ) from None
        except p11.MultipleTokensReturned:
            raise CustodyError(f"{stage}: several tokens have this label") from None
        except (p11.PKCS11Error, RuntimeError, OSError) as exc:
            raise CustodyError(f"{stage}: cannot load the module: {exc!r}") from None
        try:
            session = token.open(user_pin=pin, rw=True)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise CustodyError(
                f"{stage}: the PIN ({source}) is wrong; nothing was changed"
            ) from None
        except p11.PinLocked:
            raise CustodyError(f"{stage}: the user PIN is locked (too many wrong PINs)") from None
        except p11.PKCS11Error as exc:
            raise CustodyError(f"{stage}: cannot log in ({source}): {exc!r}") from None
        _SESSIONS[key] = (session, source)
        return session, source


def _find(session: Any, kind: Any, label: str) -> Any | None:
    attribute = _pkcs11().Attribute
    found = list(session.get_objects({attribute.CLASS: kind, attribute.LABEL: label}))
    if len(found) > 1:
        raise CustodyError(
            f"custody pkcs11: the token holds {len(found)} objects labelled {label!r}"
        )
    return found[0] if found else None


def _ec_point(public: ec.EllipticCurvePublicKey) -> bytes:
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b"\x04" + bytes([len(point)]) + point  # DER OCTET STRING, as CKA_EC_POINT holds it


def _public_from_point(value: bytes) -> ec.EllipticCurvePublicKey:
    point = value[2:] if len(value) == 67 and value[:2] == b"\x04\x41" else value
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(point))


@dataclass
class Pkcs11Custody(Custody):
    @property
    def kek_name(self) -> str:
        return f"token {self.settings.token!r}, key {self.settings.kek_label!r}"

    def _session(self) -> Any:
        session, self.source = open_session(self.settings)
        return session

    _kek_object: Any = field(default=None, repr=False)  # found once: a lookup costs 0.2 ms

    def _kek(self) -> Any:
        if self._kek_object is not None:
            return self._kek_object
        p = _pkcs11()
        key = _find(self._session(), p.ObjectClass.SECRET_KEY, self.settings.kek_label)
        if key is None:
            raise CustodyError(
                f"custody pkcs11: token {self.settings.token!r} has no key-encryption key "
                f"labelled {self.settings.kek_label!r}"
            )
        self._kek_object = key
        return key

    def _gcm(self, nonce: bytes, aad: bytes) -> dict[str, Any]:
        from pkcs11.mechanisms import GCMParams

        return {"mechanism": _pkcs11().Mechanism.AES_GCM,
                "mechanism_param": GCMParams(nonce, aad, 128)}  # fmt: skip

    def _encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        with _LOCK:
            return bytes(self._kek().encrypt(plaintext, **self._gcm(nonce, aad)))

    def _decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        with _LOCK:
            return bytes(self._kek().decrypt(ciphertext, **self._gcm(nonce, aad)))

    def _load_signing_key(self) -> JoseKey:
        if not self.settings.signing_label:  # a roll --to-file moved it out of the token
            return super()._load_signing_key()  # (docs/security.md, "Leaving a token")
        p = _pkcs11()
        label = self.settings.signing_label
        with _LOCK:
            session = self._session()
            private = _find(session, p.ObjectClass.PRIVATE_KEY, label)
            public_obj = _find(session, p.ObjectClass.PUBLIC_KEY, label)
        if private is None or public_obj is None:
            raise CustodyError(
                f"custody pkcs11: token {self.settings.token!r} has no signing key labelled "
                f"{label!r} (private and public objects)"
            )
        public = _public_from_point(bytes(public_obj[p.Attribute.EC_POINT]))

        def sign_digest(digest: bytes) -> bytes:
            with _LOCK:
                return bytes(private.sign(digest, mechanism=p.Mechanism.ECDSA))

        key = JoseKey(private=TokenSigningKey(sign_digest, public, label))
        published = self.state / SIGNING_PUBLIC_FILE
        if published.exists():
            expected = load_jose_key(published)
            if expected.thumbprint != key.thumbprint and (
                key.thumbprint not in self.rolled_signers()  # read while a roll switches
            ):
                raise CustodyError(
                    f"custody pkcs11: the token's signing key {key.thumbprint} is not the KDC's "
                    f"({expected.thumbprint} in {published})"
                )
        return key

    def status(self) -> dict[str, Any]:
        p = _pkcs11()
        with _LOCK:
            private = _find(self._session(), p.ObjectClass.PRIVATE_KEY, self.settings.signing_label)
            kek = self._kek()
            flags = {
                "signing_key_extractable": bool(private[p.Attribute.EXTRACTABLE])
                if private
                else None,
                "signing_key_sensitive": bool(private[p.Attribute.SENSITIVE]) if private else None,
                "kek_extractable": bool(kek[p.Attribute.EXTRACTABLE]),
                "kek_sensitive": bool(kek[p.Attribute.SENSITIVE]),
            }
        return {
            "custody": "pkcs11",
            "module": self.settings.module,
            "token": self.settings.token,
            "signing_label": self.settings.signing_label,
            "kek_label": self.settings.kek_label,
            "pin": self.source,
            **flags,
        }


_NONSECRET = {"SENSITIVE": True, "EXTRACTABLE": False, "TOKEN": True, "PRIVATE": True}


def _secret_template(**more: Any) -> dict[Any, Any]:
    p = _pkcs11()
    template = {getattr(p.Attribute, k): v for k, v in _NONSECRET.items()}
    template.update({getattr(p.Attribute, k): v for k, v in more.items()})
    return template


def provision_token(
    settings: CustodySettings, signing: JoseKey | None, *, fresh: bool = False
) -> JoseKey:
    """Make (or find) the KEK and the signing key in the token, and return the signing key's
    public half. ``signing``: import this private key as the signing key (migration) instead of
    making one; a key already under the label must be this one (a migration run again).
    ``fresh`` (a new KDC): refuse labels already taken, another KDC's keys perhaps."""
    p = _pkcs11()
    from pkcs11.util.ec import encode_named_curve_parameters

    session, _ = open_session(settings)
    with _LOCK:
        taken = [
            label
            for kind, label in (
                (p.ObjectClass.SECRET_KEY, settings.kek_label),
                (p.ObjectClass.PRIVATE_KEY, settings.signing_label),
            )
            if _find(session, kind, label) is not None
        ]
        if fresh and taken:
            raise CustodyError(
                f"custody pkcs11: token {settings.token!r} already holds {' and '.join(taken)} "
                "(another KDC's keys?); nothing was made: choose --signing-label and "
                "--kek-label, or a token of its own"
            )
        if _find(session, p.ObjectClass.SECRET_KEY, settings.kek_label) is None:
            session.generate_key(
                p.KeyType.AES, 256, label=settings.kek_label, store=True,
                template=_secret_template(ENCRYPT=True, DECRYPT=True, WRAP=False, UNWRAP=False),
            )  # fmt: skip
        private = _find(session, p.ObjectClass.PRIVATE_KEY, settings.signing_label)
        public = _find(session, p.ObjectClass.PUBLIC_KEY, settings.signing_label)
        params = encode_named_curve_parameters("secp256r1")
        if private is None:
            if signing is None:
                domain = session.create_domain_parameters(
                    p.KeyType.EC, {p.Attribute.EC_PARAMS: params}, local=True
                )
                domain.generate_keypair(
                    store=True, label=settings.signing_label,
                    public_template={p.Attribute.VERIFY: True, p.Attribute.TOKEN: True},
                    private_template=_secret_template(SIGN=True),
                )  # fmt: skip
            else:
                assert signing.private is not None
                d = signing.private.private_numbers().private_value.to_bytes(32, "big")
                session.create_object(
                    {
                        p.Attribute.CLASS: p.ObjectClass.PRIVATE_KEY,
                        p.Attribute.KEY_TYPE: p.KeyType.EC,
                        p.Attribute.LABEL: settings.signing_label,
                        p.Attribute.EC_PARAMS: params,
                        p.Attribute.VALUE: d,
                        **_secret_template(SIGN=True),
                    }
                )
                if public is None:
                    session.create_object(
                        {
                            p.Attribute.CLASS: p.ObjectClass.PUBLIC_KEY,
                            p.Attribute.KEY_TYPE: p.KeyType.EC,
                            p.Attribute.TOKEN: True,
                            p.Attribute.LABEL: settings.signing_label,
                            p.Attribute.EC_PARAMS: params,
                            p.Attribute.EC_POINT: _ec_point(signing.public),
                            p.Attribute.VERIFY: True,
                        }
                    )
        public = _find(session, p.ObjectClass.PUBLIC_KEY, settings.signing_label)
        if public is None:
            raise CustodyError(
                f"custody pkcs11: token {settings.token!r} has a signing key labelled "
                f"{settings.signing_label!r} without its public object"
            )
        found = JoseKey(public=_public_from_point(bytes(public[p.Attribute.EC_POINT])))
    if signing is not None and found.thumbprint != signing.thumbprint:
        raise CustodyError(
            f"custody pkcs11: token {settings.token!r} already holds another signing key "
            f"labelled {settings.signing_label!r} ({found.thumbprint}, the KDC's is "
            f"{signing.thumbprint}); choose another --signing-label"
        )
    return found


def make_token_kek(settings: CustodySettings, label: str) -> None:
    """A new AES-256 KEK object under ``label`` (non-extractable, sensitive): a KEK rotation
    (kdc/kekrotate.py). Refused when the label is taken."""
    p = _pkcs11()
    session, _ = open_session(settings)
    with _LOCK:
        if _find(session, p.ObjectClass.SECRET_KEY, label) is not None:
            raise CustodyError(
                f"custody pkcs11: token {settings.token!r} already holds a key labelled {label!r}"
            )
        session.generate_key(
            p.KeyType.AES, 256, label=label, store=True,
            template=_secret_template(ENCRYPT=True, DECRYPT=True, WRAP=False, UNWRAP=False),
        )  # fmt: skip


def destroy_token_kek(settings: CustodySettings, label: str) -> bool:
    """Destroy the token's secret key labelled ``label`` (a KEK a rotation replaced); whether
    there was one."""
    p = _pkcs11()
    session, _ = open_session(settings)
    with _LOCK:
        found = _find(session, p.ObjectClass.SECRET_KEY, label)
        if found is not None:
            found.destroy()
        return found is not None


def kek_id(settings: CustodySettings) -> str:
    """A KEK's name for the audit trail and messages: where it is and a digest of its check
    value (a ciphertext: nothing of the key), so two KEKs under one path differ."""
    check = hashlib.sha256((settings.kek_check or "").encode()).hexdigest()[:16]
    where = (
        f"token {settings.token} key {settings.kek_label}"
        if settings.kind == "pkcs11"
        else f"file {settings.kek_file or DEFAULT_KEK_FILE}"
    )
    return f"{where} check {check}"


def destroy_signing_key(settings: CustodySettings, label: str) -> None:
    """Destroy the token's private and public objects labelled ``label``: a signing key a roll
    retired (kdc/signroll.py). The other objects of the token are not touched."""
    p = _pkcs11()
    session, _ = open_session(settings)
    with _LOCK:
        for kind in (p.ObjectClass.PRIVATE_KEY, p.ObjectClass.PUBLIC_KEY):
            found = _find(session, kind, label)
            if found is not None:
                found.destroy()


# --- opening a custody --------------------------------------------------------------------------

_OPENED: dict[tuple[str, str], Custody] = {}


def open_custody(state: Path, settings: CustodySettings) -> Custody:
    """The custody of the KDC in ``state`` (nothing is read from the KEK or token yet)."""
    cls = {"legacy": Custody, "file": FileCustody, "pkcs11": Pkcs11Custody}[settings.kind]
    key = (str(state.resolve()), settings.dumps())
    with _LOCK:
        if key not in _OPENED:
            _OPENED[key] = cls(settings, state)
        return _OPENED[key]


def with_check(custody: Custody) -> CustodySettings:
    """The custody's settings with the check value of its KEK (what init and migrate store)."""
    return replace(custody.settings, kek_check=custody.check_value())


def shred(path: Path) -> None:
    """Overwrite a private key file with zeros, flush it to disk, then remove it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    with open(path, "r+b", buffering=0) as handle:
        handle.write(b"\0" * size)
        os.fsync(handle.fileno())
    path.unlink()
