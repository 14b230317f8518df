"""The registry's signed JSON files: ``NAME/VERSION/manifest.json`` (one published model) and
``index.json`` (versions and channels per model). Loaders check the signature before parsing."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent import __version__
from agent.detection.card import ModelCard
from agent.errors import ManifestError
from agent.registry.names import check_name, is_newer, parse_version
from agent.registry.signing import verify

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex sha256")]
Size = Annotated[int, Field(gt=0, description="size in bytes")]
Unit = Annotated[float, Field(ge=0, le=1)]


def _safe(kind: str, value: str) -> str:
    # pydantic reports ValueError as a validation error; our ManifestError would escape it raw.
    try:
        return check_name(kind, value)
    except ManifestError as exc:
        raise ValueError(str(exc)) from exc


def _safe_version(value: str) -> str:
    _safe("version", value)
    try:
        parse_version(value)  # versions must compare, or "no downgrade" means nothing
    except ManifestError as exc:
        raise ValueError(str(exc)) from exc
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Artifact(_Strict):
    file: str = Field(description="file name in the version folder")
    sha256: Sha256
    size: Size

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return _safe("artifact file", v)


class Expectation(_Strict):
    """Something a canary image must show: a detection of ``label`` overlapping ``box``."""

    label: str
    box: tuple[Unit, Unit, Unit, Unit] = Field(description="x1, y1, x2, y2 normalised to 0..1")
    min_iou: float = Field(0.5, gt=0, le=1)

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError("box must be x1 < x2 and y1 < y2")
        return v


class Canary(_Strict):
    """An image published with the model; the trial fails unless every expectation is met."""

    image: str = Field(description="image file name in the version folder")
    sha256: Sha256
    size: Size
    expect: list[Expectation] = Field(default_factory=list)

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        return _safe("canary image", v)


class Manifest(_Strict):
    name: str
    version: str
    artifact: Artifact
    card: dict[str, Any] = Field(description="the model card, as in <model>.card.yaml")
    min_agent_version: str | None = Field(None, description="oldest edge-agent that may use it")
    created: AwareDatetime
    expires: AwareDatetime | None = Field(None, description="devices refuse it after this")
    canaries: list[Canary] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _safe("model name", v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return _safe_version(v)

    @field_validator("min_agent_version")
    @classmethod
    def _min_agent(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_version(v)
            except ManifestError as exc:
                raise ValueError(str(exc)) from exc
        return v

    @model_validator(mode="after")
    def _distinct_files(self) -> Manifest:
        files = [self.artifact.file, *(c.image for c in self.canaries)]
        if len(set(files)) != len(files) or "manifest.json" in files or "card.yaml" in files:
            # The store keeps all of them, plus its own manifest.json and card.yaml, in one folder.
            raise ValueError(
                "artifact and canary file names must differ from each other and from "
                "manifest.json and card.yaml"
            )
        return self

    def model_card(self) -> ModelCard:
        """The validated card; it must name this manifest's model and version."""
        try:
            card = ModelCard.model_validate(self.card)
        except ValidationError as exc:
            raise ManifestError(
                f"{self.name} {self.version}: model card: {validation_problems(exc)}"
            ) from exc
        if (card.name, card.version) != (self.name, self.version):
            raise ManifestError(
                f"{self.name} {self.version}: the model card says {card.name} {card.version}"
            )
        return card


class IndexEntry(_Strict):
    channels: dict[str, str] = Field(default_factory=dict, description="channel -> version")
    versions: list[str] = Field(default_factory=list, description="published, oldest first")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: dict[str, str]) -> dict[str, str]:
        for channel, version in v.items():
            _safe("channel", channel)
            _safe_version(version)
        return v

    @field_validator("versions")
    @classmethod
    def _versions(cls, v: list[str]) -> list[str]:
        for version in v:
            _safe_version(version)
        return v


class Index(_Strict):
    models: dict[str, IndexEntry] = Field(default_factory=dict)
    expires: AwareDatetime | None = None

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, IndexEntry]) -> dict[str, IndexEntry]:
        for name in v:
            _safe("model name", name)
        return v

    def resolve(self, name: str, channel: str) -> str:
        """The version ``channel`` points to for model ``name``."""
        entry = self.models.get(name)
        if entry is None:
            raise ManifestError(f"model {name!r} is not in the registry index")
        version = entry.channels.get(channel)
        if version is None:
            known = ", ".join(sorted(entry.channels)) or "none"
            raise ManifestError(f"model {name!r} has no channel {channel!r} (channels: {known})")
        return version


def validation_problems(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # Our own checks raise ValueError; show their sentence without pydantic's "Value error, ".
        msg = str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def _parse(kind: str, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{kind}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ManifestError(f"{kind}: must be a JSON object")
    return obj


def _check_expiry(what: str, expires: datetime | None, now: datetime | None) -> None:
    now = now or datetime.now(timezone.utc)
    if expires is not None and expires <= now:
        raise ManifestError(f"{what} expired on {expires.isoformat()}; ask for a fresh one")


def parse_manifest(data: bytes) -> Manifest:
    """Schema only, no signature check: for files this process wrote or already verified."""
    try:
        return Manifest.model_validate(_parse("manifest", data))
    except ValidationError as exc:
        raise ManifestError(f"manifest: {validation_problems(exc)}") from exc


def parse_index(data: bytes) -> Index:
    """Schema only, no signature check: for files this process wrote or already verified."""
    try:
        return Index.model_validate(_parse("index", data))
    except ValidationError as exc:
        raise ManifestError(f"index: {validation_problems(exc)}") from exc


def load_manifest(
    data: bytes,
    sig: bytes,
    keys: list[Ed25519PublicKey],
    *,
    now: datetime | None = None,
    agent_version: str | None = __version__,
) -> Manifest:
    """A manifest signed by a trusted key, not expired, and meant for ``agent_version``.

    ``agent_version=None`` skips the version check (``registry verify`` serves every agent).
    """
    # Nothing of an unsigned file is parsed: the JSON parser is not exposed to attackers.
    verify(data, sig, keys)
    manifest = parse_manifest(data)
    _check_expiry(f"manifest for {manifest.name} {manifest.version}", manifest.expires, now)
    if (
        agent_version is not None
        and manifest.min_agent_version is not None
        and is_newer(manifest.min_agent_version, agent_version)
    ):
        raise ManifestError(
            f"{manifest.name} {manifest.version} needs edge-agent {manifest.min_agent_version} "
            f"or newer; this is {agent_version}"
        )
    return manifest


def load_index(
    data: bytes, sig: bytes, keys: list[Ed25519PublicKey], now: datetime | None = None
) -> Index:
    """An index signed by a trusted key and not expired."""
    verify(data, sig, keys)
    index = parse_index(data)
    _check_expiry("registry index", index.expires, now)
    return index


def dump_json(model: BaseModel) -> bytes:
    """Stable bytes for signing: sorted keys, 2-space indent, a trailing newline."""
    return (
        json.dumps(model.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False)
        + "\n"
    ).encode("utf-8")
