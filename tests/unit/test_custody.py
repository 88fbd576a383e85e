"""Key custody (kdc/custody.py): DNSSEC keys sealed under a KEK in a file or a PKCS#11 token,
bound to their row; the token's signing key signing through JoseKey and jws_sign."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from krs_lab import softhsm
from krs_plugin.crypto import HpkeKey, JoseKey
from krs_plugin.crypto.jose import jws_sign, jws_verify
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc import custody as cu
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.identity import create_identity, load_identity
from krs_plugin.kdc.keygen import store_key
from krs_plugin.kdc.store import Store

ZONE = "example.com."


def file_kdc(state: Path) -> Store:
    """A KDC in ``state`` with the file custody, as ``krs-kdc init`` makes it."""
    create_identity(state / "keys")
    settings = cu.CustodySettings("file")
    cu.write_kek(cu.kek_path(state, settings))
    store = Store(state / "kdc.db")
    opened = cu.open_custody(state, settings)
    store.set_meta(cu.META_KEY, cu.with_check(opened).dumps())
    store.add_zone(ZONE)
    return store


def add_key(store: Store, role: str = "ZSK", zone: str = ZONE) -> tuple[int, bytes]:
    key = generate_key(zone, 13, flags=257 if role != "ZSK" else 256)
    row = store_key(store, zone, key, role, now=int(time.time()))
    return row.id, key.to_pkcs8_pem()


def reopen(store: Store) -> Store:
    """kdc.db opened again by a new process: nothing of the custody cached."""
    store.close()
    cu._OPENED.clear()
    return Store(store.path)


def test_file_custody_seals_a_new_key_and_opens_it_again(tmp_path: Path) -> None:
    store = file_kdc(tmp_path)
    key_id, pem = add_key(store)
    raw = store.db.execute(
        "SELECT private_pem, private_sealed FROM keys WHERE id = ?", (key_id,)
    ).fetchone()
    assert bytes(raw[0]) == b"" and pem not in bytes(raw[1])
    store = reopen(store)
    assert store.private_pem(store.key_by_id(key_id)) == pem


def test_a_sealed_key_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    store = file_kdc(tmp_path)
    first, _ = add_key(store)
    second, _ = add_key(store)
    tag = store.key_by_id(second).key_tag
    store.db.execute(
        "UPDATE keys SET private_sealed = (SELECT private_sealed FROM keys WHERE id = ?) "
        "WHERE id = ?",
        (first, second),
    )
    with pytest.raises(cu.CustodyError, match=rf"{ZONE} tag {tag} does not decrypt"):
        store.private_pem(store.key_by_id(second))


def test_the_role_is_bound_too(tmp_path: Path) -> None:
    store = file_kdc(tmp_path)
    key_id, _ = add_key(store, "KSK")
    store.db.execute("UPDATE keys SET role = 'CSK' WHERE id = ?", (key_id,))
    with pytest.raises(cu.CustodyError, match="does not decrypt"):
        store.private_pem(store.key_by_id(key_id))


def test_missing_kek_is_named_and_public_reads_still_work(tmp_path: Path) -> None:
    store = file_kdc(tmp_path)
    key_id, pem = add_key(store)
    (tmp_path / "keys" / "kdc.kek").unlink()
    store = reopen(store)
    row = store.key_by_id(key_id)
    assert dnskey_of(row) == generate_key_dnskey(pem, row)  # no KEK needed for the public key
    with pytest.raises(cu.CustodyError, match="cannot read the key-encryption key"):
        store.private_pem(row)
    with pytest.raises(cu.CustodyError, match="cannot read the key-encryption key"):
        add_key(store)
    assert [k.id for k in store.keys(ZONE)] == [key_id]  # nothing was added


def generate_key_dnskey(pem: bytes, row: object) -> object:
    from krs_plugin.dnssec import load_pkcs8_pem

    return load_pkcs8_pem(pem, ZONE, 13, 256).dnskey


def test_wrong_kek_is_told_from_a_damaged_row(tmp_path: Path) -> None:
    store = file_kdc(tmp_path)
    key_id, _ = add_key(store)
    kek = tmp_path / "keys" / "kdc.kek"
    kek.unlink()
    cu.write_kek(kek)  # another KEK, same place
    store = reopen(store)
    with pytest.raises(cu.CustodyError, match=r"is not the one kdc\.db's keys are sealed with"):
        store.private_pem(store.key_by_id(key_id))


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"00" * 31 + b"\n", "holds 63 bytes"), (b"zz" * 32, "not 64 hex digits")],
)
def test_kek_file_of_the_wrong_size_or_form_is_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "kek"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(cu.CustodyError, match=problem):
        cu.read_kek(tmp_path, cu.CustodySettings("file", kek_file=str(path)))


def test_kek_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_bytes(b"ab" * 32)
    path.chmod(0o644)
    with pytest.raises(cu.CustodyError, match="readable by others"):
        cu.read_kek(tmp_path, cu.CustodySettings("file", kek_file=str(path)))


def test_kek_from_a_systemd_credential_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "kdc-kek").write_bytes(bytes(range(32)))
    (credentials / "kdc-kek").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    raw, source = cu.read_kek(tmp_path, cu.CustodySettings("file"))
    assert raw == bytes(range(32)) and source == "systemd credential kdc-kek"


def test_legacy_kdc_db_keeps_plain_keys_until_migrated(tmp_path: Path) -> None:
    store = Store(tmp_path / "kdc.db")
    store.add_zone(ZONE)
    key_id, pem = add_key(store)
    assert store.custody.kind == "legacy"
    row = store.key_by_id(key_id)
    assert row.private_pem == pem and store.private_pem(row) == pem
    assert row.dnskey is not None


def test_public_dnskey_column_is_filled_for_old_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "kdc.db")
    store.add_zone(ZONE)
    key_id, pem = add_key(store)
    store.db.execute("UPDATE keys SET dnskey = NULL")
    store = reopen(store)
    row = store.key_by_id(key_id)
    assert row.dnskey is not None
    assert dnskey_of(row) == generate_key_dnskey(pem, row)


# --- PKCS#11 (SoftHSM2) -----------------------------------------------------------------------

SKIP = softhsm.available()


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[softhsm.SoftHsm]:
    """One SoftHSM2 directory for this process (the module reads its conf once): token ``kdc``
    and token ``other`` (for a wrong PIN, never logged in successfully)."""
    if SKIP:
        pytest.skip(SKIP)
    hsm = softhsm.SoftHsm(tmp_path_factory.mktemp("softhsm"))
    hsm.add_token("other")
    hsm.activate()
    # SoftHSM2 reads SOFTHSM2_CONF when the library is initialised: a test before this one in
    # the same process may have loaded it for another token directory (the suite's lab token)
    for lib in cu._LIBS.values():
        lib.reinitialize()
    cu._SESSIONS.clear()
    cu._OPENED.clear()
    yield hsm


@pytest.fixture(autouse=True)
def no_pin_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PIN comes from the settings' file here ($KRS_KDC_PIN would come first)."""
    monkeypatch.delenv("KRS_KDC_PIN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def pkcs11_settings(hsm: softhsm.SoftHsm, name: str, **more: str) -> cu.CustodySettings:
    return cu.CustodySettings(
        "pkcs11",
        module=hsm.module,
        token=hsm.label,
        pin_file=str(hsm.pin_file),
        signing_label=f"{name}-signing",
        kek_label=f"{name}-kek",
        **more,
    )


def test_token_signing_key_signs_jws_that_verify(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    settings = pkcs11_settings(token, "jws")
    public = cu.provision_token(settings, None)
    signer = cu.open_custody(tmp_path, settings).signing_key()
    assert signer.thumbprint == public.thumbprint
    assert isinstance(signer.private, ec.EllipticCurvePrivateKey)
    compact = jws_sign(b"payload", signer)
    assert jws_verify(compact, public) == b"payload"
    der = signer.private.sign(b"data", ec.ECDSA(hashes.SHA256()))
    public.public.verify(der, b"data", ec.ECDSA(hashes.SHA256()))


def test_token_signing_key_never_leaves_the_token(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    import pkcs11

    settings = pkcs11_settings(token, "leave")
    cu.provision_token(settings, None)
    signer = cu.open_custody(tmp_path, settings).signing_key()
    with pytest.raises(cu.CustodyError, match="cannot leave it"):
        signer.private_jwk()
    session, _ = cu.open_session(settings)
    for kind, label in (
        (pkcs11.ObjectClass.PRIVATE_KEY, settings.signing_label),
        (pkcs11.ObjectClass.SECRET_KEY, settings.kek_label),
    ):
        obj = cu._find(session, kind, label)
        assert obj is not None
        assert obj[pkcs11.Attribute.SENSITIVE] and not obj[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            obj[pkcs11.Attribute.VALUE]


def test_imported_signing_key_is_the_kdcs_and_import_is_idempotent(
    token: softhsm.SoftHsm, tmp_path: Path
) -> None:
    mine = JoseKey.generate()
    settings = pkcs11_settings(token, "import")
    assert cu.provision_token(settings, mine).thumbprint == mine.thumbprint
    assert cu.provision_token(settings, mine).thumbprint == mine.thumbprint  # run again
    with pytest.raises(cu.CustodyError, match="already holds another signing key"):
        cu.provision_token(settings, JoseKey.generate())
    signer = cu.open_custody(tmp_path, settings).signing_key()
    assert jws_verify(jws_sign(b"x", signer), mine.public_only()) == b"x"


def test_token_kek_seals_keys_bound_to_their_row(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    settings = pkcs11_settings(token, "kek")
    cu.provision_token(settings, None)
    opened = cu.open_custody(tmp_path, settings)
    aad = cu.key_aad(ZONE, 1, 13, "ZSK")
    sealed = opened.seal(b"secret", aad)
    assert b"secret" not in sealed
    assert opened.open(sealed, aad, what="key 1") == b"secret"
    assert opened.seal(b"secret", aad) != sealed  # a fresh nonce each time
    with pytest.raises(cu.CustodyError, match="key 2 does not decrypt"):
        opened.open(sealed, cu.key_aad(ZONE, 2, 13, "ZSK"), what="key 2")


def test_wrong_pin_is_named_and_nothing_opened(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("0000\n")
    settings = replace_settings(pkcs11_settings(token, "pin"), token="other", pin_file=str(pin))
    with pytest.raises(cu.CustodyError, match=r"token 'other'.*the PIN \(PIN file .*\) is wrong"):
        cu.open_custody(tmp_path, settings).signing_key()


def test_absent_token_is_named(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    settings = replace_settings(pkcs11_settings(token, "absent"), token="nosuch")
    with pytest.raises(cu.CustodyError, match="token 'nosuch': no such token"):
        cu.open_custody(tmp_path, settings).seal(b"x", b"y")


def test_pin_from_the_environment_or_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cu.CustodySettings("pkcs11", pin_file=str(tmp_path / "nope"))
    monkeypatch.setenv("KRS_KDC_PIN", "4321")
    assert cu.read_pin(settings) == ("4321", "$KRS_KDC_PIN")
    monkeypatch.delenv("KRS_KDC_PIN")
    (tmp_path / "kdc-pin").write_text("9999\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert cu.read_pin(settings) == ("9999", "systemd credential kdc-pin")


def test_settings_never_hold_a_secret(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    settings = pkcs11_settings(token, "meta")
    cu.provision_token(settings, None)
    stored = json.loads(cu.with_check(cu.open_custody(tmp_path, settings)).dumps())
    assert token.pin not in json.dumps({k: v for k, v in stored.items() if k != "kek_check"})
    assert set(stored) == {
        "kind", "module", "token", "signing_label", "kek_label", "pin_file", "kek_check",
    }  # fmt: skip


def test_identity_loads_the_token_signing_key(token: softhsm.SoftHsm, tmp_path: Path) -> None:
    settings = pkcs11_settings(token, "identity")
    cu.provision_token(settings, None)
    opened = cu.open_custody(tmp_path, settings)
    create_identity(tmp_path / "keys", signer=opened.signing_key())
    assert not (tmp_path / "keys" / "kdc.signing.privatekey").exists()
    identity = load_identity(tmp_path / "keys", opened)
    assert identity.signer.thumbprint == opened.signing_key().thumbprint


def replace_settings(settings: cu.CustodySettings, **changes: str) -> cu.CustodySettings:
    from dataclasses import replace

    return replace(settings, **changes)


def test_a_key_that_does_not_open_stops_the_distribution_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    from krs_plugin.kdc.distribute import distribute_zone

    store = file_kdc(tmp_path)
    store.add_node(
        "ns1.example.", notify_address="127.0.0.1:9", backend="hpke",
        hpke_pubkey=HpkeKey.generate().public_hex, jose_pubkey=None, signing_pubkey=None,
        zones=[ZONE],
    )  # fmt: skip
    good, _ = add_key(store, "KSK")
    bad, _ = add_key(store)
    tag = store.key_by_id(bad).key_tag
    store.db.execute(
        "UPDATE keys SET private_sealed = (SELECT private_sealed FROM keys WHERE id = ?) "
        "WHERE id = ?",
        (good, bad),
    )
    identity = load_identity(tmp_path / "keys", store.custody)
    with pytest.raises(cu.CustodyError, match=rf"private key of {ZONE} tag {tag} does not decrypt"):
        distribute_zone(store, identity, ZONE, now=time.time())
    assert store.distributions() == []
    assert {k.state for k in store.keys(ZONE)} == {"created"}  # not published either
    store.db.execute("UPDATE keys SET state = 'removed' WHERE id = ?", (bad,))
    assert distribute_zone(store, identity, ZONE, now=time.time()).key_count == 1


def test_a_published_key_a_roll_just_switched_to_is_not_taken_for_another_kdcs(
    token: softhsm.SoftHsm, tmp_path: Path
) -> None:
    # identity roll's switch rewrites kdc.signing.pubkey a moment before its transaction
    # commits; a command that loads the token's key by the old label in that moment must not
    # call it another KDC's key (seen once in a test polling identity status), while a token
    # key kdc.db does not name is still refused.
    from krs_plugin.crypto import write_jose_public
    from krs_plugin.kdc import signroll
    from krs_plugin.kdc.store import Store

    settings = pkcs11_settings(token, "switching")
    cu.provision_token(settings, None)
    store = Store(tmp_path / "kdc.db")
    store.set_meta(cu.META_KEY, settings.dumps())
    current = cu.open_custody(tmp_path, settings).signing_key()
    following = JoseKey.generate()
    (tmp_path / "keys").mkdir()
    write_jose_public(tmp_path / cu.SIGNING_PUBLIC_FILE, following, use="sig")

    def load() -> str:
        cu._OPENED.clear()  # a new process: nothing opened yet
        return Store(tmp_path / "kdc.db").custody.signing_key().thumbprint

    with pytest.raises(cu.CustodyError, match="is not the KDC's"):
        load()
    signroll.ensure_schema(store.db)
    for key, state in ((current, "current"), (following, "next")):
        store.db.execute(
            "INSERT INTO signing_keys(thumbprint, jwk, state, custody, locator, created_at) "
            "VALUES (?, ?, ?, 'pkcs11', 'label', 0)",
            (key.thumbprint, json.dumps(key.public_jwk), state),
        )
    store.db.commit()
    assert load() == current.thumbprint
