"""TSIG keys from BIND key files, as ``tsig-keygen`` writes them: the one reader of such files
for everything the KDC signs with TSIG (a parent's DS push, zone transfers of the control zone,
NOTIFY to its secondaries, UPDATEs to a primary it publishes into; docs/kdc.md)."""

from __future__ import annotations

import base64
import binascii
import re
import stat
from pathlib import Path

import dns.tsig

from krs_plugin.errors import KrsError

TSIG_ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


class TsigKeyFileError(KrsError):
    """A TSIG key file that cannot be used; the message names the file and the problem."""


# A quoted string first, so that a comment marker inside one (a base64 secret holds "//" about
# once in a hundred keys) is left alone; only what is not quoted can be a comment.
_STRING_OR_COMMENT = re.compile(r'"[^"]*"|/\*.*?\*/|//[^\n]*|#[^\n]*', re.S)
_KEY = re.compile(r'\s*key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;\s*', re.S)
_CLAUSE = re.compile(r'\s*(algorithm|secret)\s+"?([^";\s]+)"?\s*;\s*')


def _keep_strings(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0).startswith('"') else " "


def read_tsig_key(path: str | Path) -> dns.tsig.Key:
    """The one ``key "name" { algorithm ...; secret "..."; };`` statement of a BIND key file.
    Refuses a world-readable file, a second key, an unknown algorithm, a secret that is not
    base64, and anything else in the file, each with the file's name."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text()
    except OSError as error:
        raise TsigKeyFileError(f"TSIG key file {file}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TsigKeyFileError(f"TSIG key file {file}: not a text file") from None
    if mode & stat.S_IROTH:
        raise TsigKeyFileError(
            f"TSIG key file {file} is readable by every user (mode {stat.S_IMODE(mode):04o}): "
            f"chmod o-rwx {file}"
        )
    return parse_tsig_key(text, str(file))


def parse_tsig_key(text: str, where: str = "TSIG key") -> dns.tsig.Key:
    """The key of a BIND key-file text (see ``read_tsig_key``); errors name ``where``."""
    body = _STRING_OR_COMMENT.sub(_keep_strings, text)
    statements = list(_KEY.finditer(body))
    if not statements:
        raise TsigKeyFileError(f'{where}: no key "NAME" {{ algorithm ...; secret "..."; }};')
    if len(statements) > 1:
        raise TsigKeyFileError(f"{where}: {len(statements)} key statements, expected one")
    statement = statements[0]
    if body[: statement.start()].strip() or body[statement.end() :].strip():
        raise TsigKeyFileError(f"{where}: text outside the key statement")
    name, inner = statement.group(1), statement.group(2)
    clauses: dict[str, str] = {}
    position = 0
    for clause in _CLAUSE.finditer(inner):
        if clause.start() != position:
            break
        if clause.group(1) in clauses:
            raise TsigKeyFileError(f"{where}: key {name}: {clause.group(1)} given twice")
        clauses[clause.group(1)] = clause.group(2)
        position = clause.end()
    if inner[position:].strip():
        raise TsigKeyFileError(f"{where}: key {name}: unexpected {inner[position:].split()[0]!r}")
    for needed in ("algorithm", "secret"):
        if needed not in clauses:
            raise TsigKeyFileError(f"{where}: key {name}: no {needed}")
    algorithm = clauses["algorithm"].lower()
    if algorithm not in TSIG_ALGORITHMS:
        raise TsigKeyFileError(
            f"{where}: key {name}: unknown algorithm {algorithm} "
            f"(one of {', '.join(TSIG_ALGORITHMS)})"
        )
    try:
        secret = base64.b64decode(clauses["secret"], validate=True)
    except (binascii.Error, ValueError):
        raise TsigKeyFileError(f"{where}: key {name}: the secret is not base64") from None
    if not secret:
        raise TsigKeyFileError(f"{where}: key {name}: the secret is empty")
    return dns.tsig.Key(name, secret, TSIG_ALGORITHMS[algorithm])
