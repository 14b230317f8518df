"""Names that become paths: model names, versions and file names from a registry, checked so that
nothing a registry says can reach outside its folder in the store; and version ordering."""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

from agent.errors import ManifestError

# One path component, printable ASCII only, never starting with a dot (no ".", "..", hidden files).
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_name(kind: str, value: str) -> str:
    """``value`` if it is safe as a single file or folder name, else ManifestError."""
    # Values come from JSON and MQTT payloads, so the type is not guaranteed at runtime.
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or ".." in value:
        raise ManifestError(
            f"unsafe {kind} {value!r}: use 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


def parse_version(v: str) -> Version:
    try:
        return Version(v)
    except (InvalidVersion, TypeError) as exc:
        raise ManifestError(f"invalid version {v!r}: not a PEP 440 version like 1.2.0") from exc


def is_newer(a: str, b: str) -> bool:
    """True when version ``a`` is strictly newer than ``b``."""
    return parse_version(a) > parse_version(b)
