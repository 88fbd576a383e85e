"""Issue 20, finding 3: one list of stage names (``errors.STAGES``) for the pipeline, ``krs fetch``,
``krs run`` (so ``krs status``), the metrics labels and docs/operations.md's error table; each
error class names its stage, and the outcome follows from it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import krs_plugin
from krs_plugin.crypto import JoseKey
from krs_plugin.crypto.jose import jwe_decrypt, jws_sign, jws_verify
from krs_plugin.crypto.keys import b64url_encode
from krs_plugin.dnssec import generate_key, read_bind_key_pair, write_bind_key_pair
from krs_plugin.errors import (
    DONE,
    STAGES,
    AdapterError,
    ConfigError,
    DecryptionError,
    EnrollmentError,
    IntegrityError,
    KeyFileError,
    KeyMismatchError,
    KrsError,
    LimitError,
    PayloadError,
    PolicyError,
    SignatureError,
    UnsupportedAlgorithmError,
    WireError,
    outcome_of,
    stage_of,
)
from krs_plugin.metrics import Metrics
from krs_plugin.protocol import parse_chunk_wire
from krs_plugin.receiver.fetcher import BadAnswer, FetchError, NotPublished
from tests.doctable import error_table


def test_every_stage_of_the_docs_table_is_in_stages_and_every_stage_has_a_row() -> None:
    documented = [row.stage for row in error_table()]
    assert set(documented) <= set(STAGES), f"not in errors.STAGES: {set(documented) - set(STAGES)}"
    assert set(STAGES) <= set(documented), f"no row in the docs: {set(STAGES) - set(documented)}"
    assert len(set(STAGES)) == len(STAGES)


def every_error_class() -> list[type[KrsError]]:
    """KrsError and every subclass defined anywhere in krs_plugin."""
    for module in pkgutil.walk_packages(krs_plugin.__path__, "krs_plugin."):
        importlib.import_module(module.name)
    found: list[type[KrsError]] = []
    todo: list[type[KrsError]] = [KrsError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_error_class_of_the_package_has_a_stage_of_the_list() -> None:
    classes = every_error_class()
    assert len(classes) > 15
    for cls in classes:
        assert cls.stage in STAGES, f"{cls.__module__}.{cls.__qualname__}: {cls.stage!r}"


def test_a_stage_outside_the_list_cannot_be_given() -> None:
    with pytest.raises(ValueError, match="'validation' is not one of"):
        KrsError("x", stage="validation")


def local_key_file_that_does_not_match(tmp_path: Path) -> KrsError:
    key, other = generate_key("example.com.", 13, 256), generate_key("example.com.", 13, 256)
    write_bind_key_pair(tmp_path, key)
    write_bind_key_pair(tmp_path, other)
    private = tmp_path / f"{key.basename}.private"  # holds the other key: a pair that disagrees
    private.write_bytes((tmp_path / f"{other.basename}.private").read_bytes())
    with pytest.raises(KeyMismatchError) as info:
        read_bind_key_pair(private)
    return info.value


def unsupported_jws_algorithm(tmp_path: Path) -> KrsError:
    kdc = JoseKey.generate()
    compact = jws_sign(b"content", kdc)
    header = b64url_encode(b'{"alg":"HS256"}')
    with pytest.raises(UnsupportedAlgorithmError) as info:
        jws_verify(header + compact[compact.index(".") :], kdc.public_only())
    return info.value


def unsupported_jwe_algorithm(tmp_path: Path) -> KrsError:
    header = b64url_encode(b'{"alg":"RSA-OAEP","enc":"A256GCM"}')
    with pytest.raises(UnsupportedAlgorithmError) as info:
        jwe_decrypt(f"{header}.a.b.c.d", JoseKey.generate())
    return info.value


def malformed_chunk_rdata(tmp_path: Path) -> KrsError:
    with pytest.raises(WireError) as info:
        parse_chunk_wire(b"\x01\x00")
    return info.value


# (what raises it, stage, outcome): failed is this node's side and tried again.
STAGE_OF: dict[str, tuple[object, str, str]] = {
    "WireError": (WireError("x"), "wire", "rejected"),
    "LimitError": (LimitError("x"), "wire", "rejected"),
    "malformed CHUNK RDATA": (malformed_chunk_rdata, "wire", "rejected"),
    "IntegrityError": (IntegrityError("x"), "integrity", "rejected"),
    "PolicyError": (PolicyError("x"), "policy", "rejected"),
    "SignatureError": (SignatureError("x"), "signature", "rejected"),
    "unsupported JWS algorithm": (unsupported_jws_algorithm, "signature", "rejected"),
    "DecryptionError": (DecryptionError("x"), "decryption", "rejected"),
    "unsupported JWE algorithm": (unsupported_jwe_algorithm, "decryption", "rejected"),
    "PayloadError": (PayloadError("x"), "payload", "rejected"),
    "KeyMismatchError (a key the KDC sent)": (KeyMismatchError("x"), "payload", "rejected"),
    "UnsupportedAlgorithmError (DNSSEC)": (UnsupportedAlgorithmError("x"), "payload", "rejected"),
    "FetchError (servers down)": (FetchError("x"), "fetch", "failed"),
    "NotPublished": (NotPublished("x"), "fetch", "failed"),
    "BadAnswer": (BadAnswer("x", stage="integrity"), "integrity", "rejected"),
    "AdapterError": (AdapterError("x"), "apply", "failed"),
    "KeyFileError (a local key file)": (KeyFileError("x"), "apply", "failed"),
    "a local key file that does not match": (local_key_file_that_does_not_match, "apply", "failed"),
    "ConfigError": (ConfigError("x"), "apply", "failed"),
    "EnrollmentError": (EnrollmentError("x"), "apply", "failed"),
    "KrsError": (KrsError("x"), "apply", "failed"),
}


@pytest.mark.parametrize("case", list(STAGE_OF))
def test_stage_and_outcome_of_each_error(tmp_path: Path, case: str) -> None:
    make, stage, outcome = STAGE_OF[case]
    error = make(tmp_path) if callable(make) else make
    assert isinstance(error, KrsError)
    assert (stage_of(error), outcome_of(stage_of(error))) == (stage, outcome)


def test_the_metrics_know_every_stage_from_zero_and_no_other() -> None:
    text = Metrics().exposition().decode()
    labels = set(re.findall(r'krs_distributions_total\{outcome="(\w+)",stage="(\w+)"\} 0\.0', text))
    assert labels == {("applied", DONE), *((outcome_of(s), s) for s in STAGES)}
    assert 'krs_fetches_total{result="rejected"} 0.0' in text


def test_no_module_names_a_stage_outside_the_list() -> None:
    # The old fallback name must not come back as a literal somewhere.
    for path in Path(inspect.getfile(krs_plugin)).parent.rglob("*.py"):
        assert '"validation"' not in path.read_text(), path
