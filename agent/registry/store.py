"""The on-device model store: verified versions under ``models/NAME/VERSION/``, ``current`` and
``previous`` symlinks switched by one atomic rename, downloads in ``staging/`` and the highest
version ever accepted per model (so an old, signed manifest cannot downgrade the device).

    ROOT/models/NAME/VERSION/{artifact, card.yaml, manifest.json, manifest.json.sig}
    ROOT/models/NAME/current -> VERSION      ROOT/models/NAME/previous -> VERSION
    ROOT/models/NAME/accepted.json           {"version": HIGHEST}
    ROOT/models/NAME/configured.json         {"version", "sha256"}: the configured model, imported
    ROOT/models/active.json                  {"name", "previous"}: the model name that serves
    ROOT/staging/NAME/VERSION/               downloads in progress

The configured model (``model.path``) is imported as a version of ``registry.model`` at start, so
the first update has a ``previous`` to roll back to. ``active.json`` names the model that serves
when an update replaced the configured model by another one (``replace: true``); without it the
configured ``registry.model`` serves.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.atomic import fsync_dir, write_atomic
from agent.damaged import set_aside
from agent.errors import ManifestError, RegistryError
from agent.registry.names import check_name, parse_version

MODEL_SUFFIXES = (".onnx", ".tflite")
LINKS = ("current", "previous")
# Files that live beside the version folders: a version with one of these names would clash.
_RESERVED = frozenset({*LINKS, "accepted.json", "configured.json"})
ACTIVE_FILE = "active.json"


@dataclass(frozen=True)
class Active:
    """The model name that serves, and the one it replaced (what a rollback goes back to)."""

    name: str
    previous: str | None = None


@dataclass(frozen=True)
class Imported:
    """The configured model file as imported into the store."""

    version: str
    sha256: str


Which = Literal["current", "previous"]


class ModelStore:
    """The model versions on this device, under ``root`` (the agent's state folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.staging = self.root / "staging"
        # The updater thread and a rollback command may switch links at the same time.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # --- paths ---

    def model_dir(self, name: str) -> Path:
        if name == ACTIVE_FILE:
            raise ManifestError(f"unsafe model name {name!r}: reserved name in the store")
        return self.models / check_name("model name", name)

    def version_dir(self, name: str, version: str) -> Path:
        return self.model_dir(name) / check_version(version)

    def staging_dir(self, name: str, version: str) -> Path:
        """The folder a download of ``name`` ``version`` goes to (created)."""
        folder = self.staging / check_name("model name", name) / check_version(version)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def link_path(self, name: str, which: Which = "current") -> Path:
        """The ``current`` or ``previous`` link of ``name`` (e.g. for ``model.path``)."""
        if which not in LINKS:
            raise ValueError(f"which must be one of {LINKS}, not {which!r}")
        return self.model_dir(name) / which

    def model_file(self, name: str, version: str) -> Path:
        """The one .onnx or .tflite file of an installed version."""
        folder = self.version_dir(name, version)
        try:
            found = [
                p for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()
            ]
        except FileNotFoundError:
            raise RegistryError(f"{name} {version} is not in the store ({folder})") from None
        if len(found) != 1:
            raise RegistryError(f"{folder}: expected one .onnx or .tflite file, found {len(found)}")
        return found[0]

    # --- versions ---

    def versions(self, name: str) -> list[str]:
        """Installed versions of ``name``, oldest first."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and not p.is_symlink() and _is_version_folder(p.name)
        ]
        return sorted(found, key=_version_key)

    def install(self, name: str, version: str) -> Path:
        """Move the staged ``name`` ``version`` into the store (one rename); return its folder.

        An installed version is never replaced: if it is there already with the same files, the
        staged copy is dropped; with different files, RegistryError.
        """
        src = self.staging / check_name("model name", name) / check_version(version)
        dst = self.version_dir(name, version)
        if not src.is_dir():
            raise RegistryError(f"{name} {version}: nothing staged at {src}")
        with self._lock:
            if dst.exists():
                if not _same_files(src, dst):
                    raise RegistryError(
                        f"{name} {version} is installed already with other files ({dst})"
                    )
                shutil.rmtree(src)
                return dst
            # The card and manifest were written without fsync: make them durable before the
            # rename makes them part of the store.
            for f in src.iterdir():
                if f.is_file():
                    _fsync_file(f)
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
        return dst

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version; never the current or previous one."""
        folder = self.version_dir(name, version)
        with self._lock:
            if version in (self.current(name), self.previous(name)):
                raise RegistryError(f"{name} {version} is current or previous: not removed")
            if not folder.exists():
                return
            # Renamed away first, so a crash halfway never leaves a half version that looks whole.
            trash = folder.with_name(f".{version}.removing")
            shutil.rmtree(trash, ignore_errors=True)
            folder.rename(trash)
            fsync_dir(folder.parent)
            shutil.rmtree(trash)

    def clean_staging(self, name: str | None = None) -> None:
        """Drop downloads in progress, of ``name`` or of every model."""
        target = self.staging if name is None else self.staging / check_name("model name", name)
        shutil.rmtree(target, ignore_errors=True)

    # --- current and previous ---

    def current(self, name: str) -> str | None:
        return self._read_link(name, "current")

    def previous(self, name: str) -> str | None:
        return self._read_link(name, "previous")

    def set_current(self, name: str, version: str) -> None:
        """Make ``version`` current; the old current becomes previous (if it differs)."""
        self._require(name, version)
        with self._lock:
            old = self.current(name)
            if old == version:
                return
            # previous first: a crash between the two renames leaves current unchanged.
            if old is not None:
                self._switch(name, "previous", old)
            self._switch(name, "current", version)

    def set_previous(self, name: str, version: str | None) -> None:
        """Point ``previous`` at ``version``, or remove it (None)."""
        with self._lock:
            if version is None:
                link = self.link_path(name, "previous")
                if link.is_symlink():
                    link.unlink()
                    fsync_dir(link.parent)
                return
            self._require(name, version)
            self._switch(name, "previous", version)

    def rollback(self, name: str) -> str:
        """Make ``previous`` current and the version rolled back from previous; return the
        version now current."""
        with self._lock:
            target = self.previous(name)
            if target is None:
                raise RegistryError(f"no previous version of {name} to roll back to")
            self._require(name, target)
            old = self.current(name)
            self._switch(name, "current", target)
            if old is None or old == target:
                self.set_previous(name, None)
            else:
                self._switch(name, "previous", old)
            return target

    def links(self, name: str) -> tuple[str | None, str | None]:
        """(current, previous) of ``name``."""
        return self.current(name), self.previous(name)

    def set_links(self, name: str, current: str | None, previous: str | None) -> None:
        """Point ``current`` and ``previous`` exactly there (None removes a link): idempotent, so
        an interrupted switch can be done again or undone from recorded values."""
        with self._lock:
            # previous first: a crash between the two leaves current as it was.
            targets: tuple[tuple[Which, str | None], ...] = (
                ("previous", previous),
                ("current", current),
            )
            for which, version in targets:
                link = self.link_path(name, which)
                if version is None:
                    if link.is_symlink():
                        link.unlink()
                        fsync_dir(link.parent)
                elif self._read_link(name, which) != version:
                    self._require(name, version)
                    self._switch(name, which, version)

    # --- which model serves ---

    def active(self) -> Active | None:
        """The recorded model name that serves, if an update ever recorded one."""
        path = self.models / ACTIVE_FILE
        data = _read_record(path)
        if data is None:
            return None
        name = data.get("name") if isinstance(data, dict) else None
        previous = data.get("previous") if isinstance(data, dict) else None
        if not isinstance(name, str) or not (previous is None or isinstance(previous, str)):
            raise RegistryError(f"{path}: no model name in it")
        check_name("model name", name)
        if previous is not None:
            check_name("model name", previous)
        return Active(name, previous)

    def set_active(self, active: Active | None) -> None:
        """Record which model name serves (None: the configured one)."""
        path = self.models / ACTIVE_FILE
        with self._lock:
            if active is None:
                if path.exists():
                    path.unlink()
                    fsync_dir(path.parent)
                return
            check_name("model name", active.name)
            self.models.mkdir(parents=True, exist_ok=True)
            body = {"name": active.name, "previous": active.previous}
            write_atomic(path, (json.dumps(body) + "\n").encode())

    # --- the configured model ---

    def imported(self, name: str) -> Imported | None:
        """Which configured model file was imported as a version of ``name``."""
        path = self.model_dir(name) / "configured.json"
        try:
            data = json.loads(path.read_text())
            return Imported(check_version(data["version"]), str(data["sha256"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ManifestError) as exc:
            raise RegistryError(f"{path}: unreadable ({exc})") from exc

    def import_file(self, name: str, version: str, model: Path, card_yaml: str, sha256: str) -> str:
        """Copy a model file and its card into the store as ``name`` ``version`` (through
        staging: a crash never leaves half a version) and record it as the configured model.
        Returns the version folder used: ``version``, or ``version+config.<sha>`` when another
        file already holds that version."""
        check_version(version)
        folder = self.version_dir(name, version)
        if folder.is_dir():
            same = [p for p in folder.iterdir() if p.suffix.lower() in MODEL_SUFFIXES]
            if not (len(same) == 1 and filecmp.cmp(same[0], model, shallow=False)):
                version = check_version(f"{version}+config.{sha256[:8]}"[:64])
                folder = self.version_dir(name, version)
        if not folder.is_dir():
            staging = self.staging_dir(name, version)
            for f in staging.iterdir():
                f.unlink()
            shutil.copyfile(model, staging / model.name)
            (staging / "card.yaml").write_text(card_yaml)
            self.install(name, version)
        self.model_dir(name).mkdir(parents=True, exist_ok=True)
        body = {"version": version, "sha256": sha256}
        write_atomic(self.model_dir(name) / "configured.json", (json.dumps(body) + "\n").encode())
        return version

    def expected_sha256(self, name: str, version: str) -> str | None:
        """The sha256 ``name`` ``version``'s model file had when it was installed: from its
        manifest, or the import record of the configured model; None when neither says."""
        manifest = self.version_dir(name, version) / "manifest.json"
        try:
            data = json.loads(manifest.read_text())
            return str(data["artifact"]["sha256"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{manifest}: unreadable ({exc})") from exc
        imported = self.imported(name)
        return imported.sha256 if imported is not None and imported.version == version else None

    # --- downgrade protection ---

    def highest_accepted(self, name: str) -> str | None:
        """The highest version of ``name`` ever accepted on this device."""
        path = self.model_dir(name) / "accepted.json"
        data = _read_record(path)
        if data is None:
            return None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str):
            raise RegistryError(f"{path}: no version in it")
        return version

    def record_accepted(self, name: str, version: str) -> None:
        """Remember ``version`` as accepted, keeping the highest one (PEP 440 order)."""
        new = parse_version(check_version(version))
        with self._lock:
            old = self.highest_accepted(name)
            if old is not None and parse_version(old) >= new:
                return
            folder = self.model_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(
                folder / "accepted.json", (json.dumps({"version": version}) + "\n").encode()
            )

    # --- internals ---

    def _require(self, name: str, version: str) -> None:
        folder = self.version_dir(name, version)
        if not folder.is_dir():
            raise RegistryError(f"{name} {version} is not in the store ({folder})")

    def _read_link(self, name: str, which: Which) -> str | None:
        link = self.link_path(name, which)
        try:
            target = str(link.readlink())
        except FileNotFoundError:
            return None
        except OSError as exc:
            # A power cut can leave a plain file or garbage here: set it aside (reported in
            # the status), and the store goes on as if the link had never been set.
            set_aside(link, f"not a link ({exc.strerror})")
            return None
        try:
            return check_version(target)
        except ManifestError:
            set_aside(link, f"points at {target!r}, not a version folder")
            return None

    def _switch(self, name: str, which: Which, version: str) -> None:
        """Point link ``which`` at ``version`` with one rename, so no reader sees it missing."""
        link = self.link_path(name, which)
        tmp = link.with_name(f".{which}.tmp")
        tmp.unlink(missing_ok=True)  # left by a crash
        # Relative target: the store keeps working when its root folder is moved or mounted.
        tmp.symlink_to(version)
        tmp.replace(link)
        fsync_dir(link.parent)


def _read_record(path: Path) -> object | None:
    """A small JSON record of the store, or None when there is none yet."""
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a power cut mid-write: set aside, as if never written
        set_aside(path, f"unreadable ({exc})")
        return None


def check_version(version: str) -> str:
    """``version`` if it is safe as a version folder name in the store, else ManifestError."""
    check_name("version", version)
    if version in _RESERVED:
        raise ManifestError(f"unsafe version {version!r}: reserved name in the store")
    return version


def _is_version_folder(name: str) -> bool:
    try:
        check_version(name)
    except ManifestError:
        return False
    return True


def _version_key(version: str) -> tuple[int, object, str]:
    # Versions that are not PEP 440 sort first, by name, instead of breaking the listing.
    try:
        return (1, parse_version(version), version)
    except ManifestError:
        return (0, 0, version)


def _same_files(a: Path, b: Path) -> bool:
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    if names_a != names_b:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, names_a, shallow=False)
    return not mismatch and not errors


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
