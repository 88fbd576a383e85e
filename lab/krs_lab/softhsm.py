"""A SoftHSM2 token in a temporary directory, for the KDC's PKCS#11 custody (docs/security.md).

Each ``SoftHsm`` has its own ``softhsm2.conf`` and token directory: the system's
(/etc/softhsm/softhsm2.conf, /var/lib/softhsm/tokens) is never read or written. ``env`` is what
a process needs to see the token (``SOFTHSM2_CONF``); ``activate`` sets it in this process, which
python-pkcs11 reads when the module is first loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "kdc"
USER_PIN = "1234"
SO_PIN = "5678"


def module_path() -> str | None:
    """SoftHSM2's PKCS#11 module, or None when the softhsm2 package is not installed."""
    return next((p for p in MODULE_PATHS if Path(p).exists()), None)


def available() -> str | None:
    """Why SoftHSM2 cannot be used here, or None when it can."""
    if module_path() is None:
        return "SoftHSM2 is not installed (apt-get install softhsm2)"
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util not found (apt-get install softhsm2)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed (pip install -e '.[custody]')"
    return None


class SoftHsm:
    """One initialised token (``label``, user PIN ``pin``) under ``directory``."""

    def __init__(self, directory: Path, *, label: str = TOKEN_LABEL, pin: str = USER_PIN) -> None:
        module = module_path()
        if module is None:
            raise RuntimeError(available() or "SoftHSM2 not found")
        self.module = module
        self.label = label
        self.pin = pin
        self.directory = directory
        tokens = directory / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        self.pin_file = directory / "pin"
        self.pin_file.write_text(pin + "\n")
        self.pin_file.chmod(0o600)
        self.add_token(label, pin)

    def add_token(self, label: str, pin: str = USER_PIN) -> None:
        """Initialise one more token in a free slot (before this process loads the module)."""
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label,
             "--so-pin", SO_PIN, "--pin", pin],
            env=self.env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        """The environment for a process that uses this token (the KDC, softhsm2-util)."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def activate(self) -> None:
        """Point this process at the token (before python-pkcs11 first loads the module)."""
        os.environ["SOFTHSM2_CONF"] = str(self.conf)

    def files(self) -> list[Path]:
        """The token's object files: what an attacker with the token directory holds."""
        return sorted(p for p in (self.directory / "tokens").rglob("*") if p.is_file())


# --- the lab's KDCs with their keys in a token ----------------------------------------------

LAB_CUSTODY = "KRS_LAB_CUSTODY"
"""``pkcs11``: every KDC the lab makes (Deployment, MultiSigner, krs-demo --custody pkcs11) keeps
its signing key and KEK in SoftHSM2; unset or ``file``: the default custody."""

_LAB_TOKEN: SoftHsm | None = None


def lab_init_options(state: Path) -> list[str]:
    """``krs-kdc init`` options for a lab KDC in ``state``: none (custody file) unless
    ``$KRS_LAB_CUSTODY`` is ``pkcs11``. Then one token serves this process's KDCs (a temporary
    directory; ``SOFTHSM2_CONF`` and ``KRS_KDC_PIN`` are set in ``os.environ``, which every
    ``krs-kdc`` the lab starts inherits), each KDC with labels of its own."""
    global _LAB_TOKEN
    custody = os.environ.get(LAB_CUSTODY, "file")
    if custody == "file":
        return []
    if custody != "pkcs11":
        raise RuntimeError(f"${LAB_CUSTODY}={custody!r}: expected file or pkcs11")
    if _LAB_TOKEN is None:
        import atexit
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="krs-lab-softhsm-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _LAB_TOKEN = SoftHsm(directory)
    os.environ["SOFTHSM2_CONF"] = str(_LAB_TOKEN.conf)
    os.environ["KRS_KDC_PIN"] = _LAB_TOKEN.pin
    name = "krs-" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]
    return [
        "--custody", "pkcs11", "--pkcs11-module", _LAB_TOKEN.module, "--token", _LAB_TOKEN.label,
        "--signing-label", f"{name}-signing", "--kek-label", f"{name}-kek",
    ]  # fmt: skip
