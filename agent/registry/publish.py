"""Publisher tools: put a model into a registry folder as a signed version (artifact, manifest,
index), and check a whole registry the way a device would."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from agent.detection.card import card_path_for, load_card
from agent.errors import CompressError, ManifestError, RegistryError, SignatureError
from agent.registry.manifest import (
    Index,
    IndexEntry,
    Manifest,
    dump_json,
    load_index,
    load_manifest,
    parse_index,
    parse_manifest,
    validation_problems,
)
from agent.registry.names import check_name, parse_version
from agent.registry.signing import (
    fsync_dir,
    load_private_key,
    load_public_keys,
    sign_file,
    verify,
    write_atomic,
)

if TYPE_CHECKING:
    from agent.compress.int8_default import Measured, Settings

INDEX = "index.json"
MANIFEST = "manifest.json"
SIG = ".sig"


def publish(
    model: Path,
    registry: Path,
    *,
    name: str,
    version: str,
    key: Path,
    channel: str | None = "stable",
    card: Path | None = None,
    expires_days: float | None = 365,
    min_agent_version: str | None = None,
    canaries: Sequence[tuple[Path, Sequence[Mapping[str, Any]]]] = (),
) -> Path:
    """Publish ``model`` as ``name`` ``version``; returns the path of its ``manifest.json``.

    The version folder appears whole (staged beside it, then renamed), then the index is updated
    and re-signed. Publishing the same version again with the same content only updates the
    channel; with different content it is refused, because devices may already have it.
    """
    model, registry = Path(model), Path(registry)
    check_name("model name", name)
    check_name("version", version)
    parse_version(version)
    if channel is not None:
        check_name("channel", channel)
    if min_agent_version is not None:
        parse_version(min_agent_version)
    if expires_days is not None and expires_days <= 0:
        raise ManifestError(f"expires_days must be positive, not {expires_days} (None: never)")
    if not model.is_file():
        raise RegistryError(f"{model}: no such model file")
    check_name("artifact file", model.name)
    card_path = Path(card) if card is not None else card_path_for(model)
    if not card_path.is_file():
        raise RegistryError(
            f"{model}: no model card; write {card_path_for(model).name} beside it or pass --card "
            "(devices need the card to read the model's outputs)"
        )
    model_card = load_card(card_path)
    private = load_private_key(key)

    now = datetime.now(timezone.utc).replace(microsecond=0)
    expires = now + timedelta(days=expires_days) if expires_days is not None else None
    registry.mkdir(parents=True, exist_ok=True)
    with _locked(registry):
        index = _current_index(registry, private)
        entry = index.models.get(name, IndexEntry())
        for other in entry.versions:
            if other != version and parse_version(other) == parse_version(version):
                raise RegistryError(
                    f"{name} {version} is the same version as the published {other}; "
                    "pick another version number"
                )
        name_dir = registry / name
        name_dir.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=name_dir))
        try:
            staging.chmod(0o755)  # mkdtemp makes it 0700; the registry is served to others
            manifest = _stage(
                staging,
                model,
                name,
                version,
                model_card.model_dump(mode="json", exclude_none=True),
                min_agent_version,
                now,
                expires,
                canaries,
            )
            final = name_dir / version
            if final.exists():
                _republish(final, staging, manifest, private)
            else:
                write_atomic(staging / MANIFEST, dump_json(manifest))
                sign_file(staging / MANIFEST, private)
                staging.rename(final)  # the version appears whole or not at all
                fsync_dir(name_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        entry.versions = sorted({*entry.versions, version}, key=parse_version)
        if channel is not None:
            entry.channels[channel] = version
        index.models[name] = entry
        index.expires = expires
        write_atomic(registry / INDEX, dump_json(index))
        sign_file(registry / INDEX, private)
    return final / MANIFEST


def publish_int8(
    out: Path,
    fp32: Path,
    calib: Path,
    registry: Path,
    *,
    name: str,
    version: str,
    key: Path,
    settings: Settings | None = None,
    extra_eval: Sequence[Path] = (),
    card: Path | None = None,
    **options: Any,
) -> tuple[Path, Measured]:
    """Quantize ``fp32`` to INT8 as ``out`` (calibrated on frames of ``calib``), measure its
    fidelity against ``fp32`` on frames of ``calib`` it was not calibrated on (and
    ``extra_eval``), and publish it with that fidelity in its card (``quantization``). Refused
    below ``settings.min_fidelity``; ``options`` go to ``publish``."""
    from agent.compress.int8_default import Settings, quantize_and_measure

    settings = settings or Settings()
    load_private_key(key)  # a bad key fails before minutes of quantizing
    measured = quantize_and_measure(
        Path(fp32), Path(out), Path(calib), settings, extra_eval=extra_eval, card=card
    )
    f = measured.choice.fidelity
    if f is None:
        raise CompressError(f"{out}: not published: {measured.choice.reason}")
    if f.map50 < settings.min_fidelity:
        raise CompressError(
            f"{out}: not published: fidelity {f.map50:.3f} < {settings.min_fidelity:.2f} "
            f"(mAP@0.5 against {Path(fp32).name}'s {f.reference_detections} detections on "
            f"{f.frames} frames not used for calibration); --min-fidelity 0 publishes it anyway"
        )
    manifest = publish(Path(out), registry, name=name, version=version, key=key, **options)
    return manifest, measured


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    """One publisher at a time, so two publishes cannot lose each other's index entries."""
    with open(registry / ".publish.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _current_index(registry: Path, private: Ed25519PrivateKey) -> Index:
    path = registry / INDEX
    if not path.exists():
        return Index()
    data = path.read_bytes()
    sig_path = registry / (INDEX + SIG)
    # Re-signing an index that someone edited would vouch for their edit: check it is ours first.
    try:
        verify(data, sig_path.read_bytes(), [private.public_key()])
    except (OSError, SignatureError) as exc:
        reason = "no index.json.sig" if isinstance(exc, OSError) else str(exc)
        raise RegistryError(
            f"{path}: not signed by this key ({reason}); not re-signing it. Check the registry "
            "with `edge-agent registry verify`, and publish with the key that signed it"
        ) from exc
    return parse_index(data)


def _copy(src: Path, dst: Path) -> tuple[str, int]:
    """Copy ``src`` and return the sha256 and size of the bytes actually copied."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise RegistryError(f"{src}: cannot copy into the registry: {exc.strerror}") from exc
    if size == 0:
        raise RegistryError(f"{src}: empty file")
    return digest.hexdigest(), size


def _stage(
    staging: Path,
    model: Path,
    name: str,
    version: str,
    card: dict[str, Any],
    min_agent_version: str | None,
    now: datetime,
    expires: datetime | None,
    canaries: Sequence[tuple[Path, Sequence[Mapping[str, Any]]]],
) -> Manifest:
    sha256, size = _copy(model, staging / model.name)
    canary_entries = []
    for image, expect in canaries:
        image = Path(image)
        check_name("canary image", image.name)
        if (staging / image.name).exists():
            raise ManifestError(f"canary {image.name}: a file of that name is already published")
        image_sha, image_size = _copy(image, staging / image.name)
        canary_entries.append(
            {"image": image.name, "sha256": image_sha, "size": image_size, "expect": list(expect)}
        )
    # The manifest vouches for the artifact, so the card names it and its digest, whatever the
    # card file beside the model said.
    card = {**card, "name": name, "version": version, "sha256": sha256}
    try:
        manifest = Manifest.model_validate(
            {
                "name": name,
                "version": version,
                "artifact": {"file": model.name, "sha256": sha256, "size": size},
                "card": card,
                "min_agent_version": min_agent_version,
                "created": now,
                "expires": expires,
                "canaries": canary_entries,
            }
        )
    except ValidationError as exc:
        raise ManifestError(f"{name} {version}: {validation_problems(exc)}") from exc
    manifest.model_card()
    return manifest


def _content(m: Manifest) -> dict[str, Any]:
    return m.model_dump(mode="json", exclude={"created", "expires"})


def _republish(final: Path, staging: Path, manifest: Manifest, private: Ed25519PrivateKey) -> None:
    """Same version again: allowed only with the same content (then it may move a channel)."""
    path = final / MANIFEST
    if not path.is_file():
        raise RegistryError(f"{final}: exists without a {MANIFEST}; move it away and publish again")
    data = path.read_bytes()
    old = parse_manifest(data)
    if old.artifact != manifest.artifact:
        raise RegistryError(
            f"{manifest.name} {manifest.version} is already published with different bytes "
            f"(sha256 {old.artifact.sha256[:12]}..., not {manifest.artifact.sha256[:12]}...); "
            "devices may have it: publish a new version instead"
        )
    if _content(old) != _content(manifest):
        raise RegistryError(
            f"{manifest.name} {manifest.version} is already published with a different card, "
            "canaries or min_agent_version; publish a new version instead"
        )
    # Same bytes: put back any file that went missing or was damaged since.
    for f in [manifest.artifact.file, *(c.image for c in manifest.canaries)]:
        (staging / f).replace(final / f)
    try:
        verify(data, (final / (MANIFEST + SIG)).read_bytes(), [private.public_key()])
    except (OSError, SignatureError):
        write_atomic(path, dump_json(manifest))
        sign_file(path, private)
    fsync_dir(final)


def verify_registry(registry: Path, public_keys: Sequence[Path]) -> list[str]:
    """Check a registry as devices would: signatures, digests, sizes, and that every version and
    channel the index names exists. Returns the problems found; empty means all is well."""
    registry = Path(registry)
    keys = load_public_keys(public_keys)
    if not registry.is_dir():
        return [f"{registry}: not a folder"]
    problems: list[str] = []

    index: Index | None = None
    try:
        index = load_index(_read(registry / INDEX), _read(registry / (INDEX + SIG)), keys)
    except RegistryError as exc:
        problems.append(f"{INDEX}: {exc}")

    folders: set[tuple[str, str]] = set()
    for model_dir in _subfolders(registry):
        for version_dir in _subfolders(model_dir):
            folders.add((model_dir.name, version_dir.name))
            where = f"{model_dir.name}/{version_dir.name}"
            try:
                # agent_version=None: a registry serves old and new agents alike.
                manifest = load_manifest(
                    _read(version_dir / MANIFEST),
                    _read(version_dir / (MANIFEST + SIG)),
                    keys,
                    agent_version=None,
                )
                if (manifest.name, manifest.version) != (model_dir.name, version_dir.name):
                    raise ManifestError(
                        f"it is for {manifest.name} {manifest.version}, not {where}"
                    )
                manifest.model_card()
            except RegistryError as exc:
                problems.append(f"{where}/{MANIFEST}: {exc}")
                continue
            files = [(manifest.artifact.file, manifest.artifact.size, manifest.artifact.sha256)]
            files += [(c.image, c.size, c.sha256) for c in manifest.canaries]
            for file, size, sha256 in files:
                problem = _check_file(version_dir / file, size, sha256)
                if problem:
                    problems.append(f"{where}/{file}: {problem}")

    if index is not None:
        for name, entry in sorted(index.models.items()):
            for version in entry.versions:
                if (name, version) not in folders:
                    problems.append(
                        f"{INDEX}: {name} {version} is listed but {name}/{version}/ does not exist"
                    )
            for channel, version in sorted(entry.channels.items()):
                if version not in entry.versions:
                    problems.append(
                        f"{INDEX}: {name} channel {channel} points to {version}, "
                        "which is not in its versions"
                    )
                elif (name, version) not in folders:
                    problems.append(
                        f"{INDEX}: {name} channel {channel} points to {version}, "
                        "which does not exist"
                    )
    return problems


def _subfolders(folder: Path) -> list[Path]:
    # Dot folders are publish staging areas, not versions.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"{path.name} is missing") from None
    except OSError as exc:
        raise RegistryError(f"{path.name}: cannot read: {exc.strerror}") from exc


def _check_file(path: Path, size: int, sha256: str) -> str | None:
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"{actual} bytes, the manifest says {size}"
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if digest.hexdigest() != sha256:
        return "sha256 differs from the manifest's"
    return None
