"""Publisher tools on real files: keys, signatures, manifests, publishing into a registry folder,
verifying it, and the `edge-agent registry` commands run as a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.detection import Detector
from agent.detection.card import ModelCard
from agent.errors import ManifestError, ModelCardError, RegistryError, SignatureError
from agent.registry.manifest import (
    Index,
    Manifest,
    dump_json,
    load_index,
    load_manifest,
    parse_manifest,
)
from agent.registry.names import check_name, is_newer, parse_version
from agent.registry.publish import publish, verify_registry
from agent.registry.signing import (
    generate_key,
    key_id,
    load_private_key,
    load_public_keys,
    sign,
    sign_file,
    verify,
)
from tests import modelgen
from tests.conftest import MEDIA, MODELS, ROOT

FACE = MODELS / "face-short-range.tflite"
UNSAFE = ["..", "a/b", "/abs", ".hidden", "", "a\\b", "a\x00b", "a..b", "x" * 65, "face\n"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key(tmp_path / "keys" / "publisher.key")


@pytest.fixture
def face(tmp_path: Path) -> Path:
    """The face model with its card beside it, as a publisher has it."""
    folder = tmp_path / "src"
    folder.mkdir()
    model = folder / "face.tflite"
    shutil.copy(FACE, model)
    shutil.copy(MODELS / "face-short-range.card.yaml", folder / "face.card.yaml")
    return model


@pytest.fixture
def yolo(tmp_path: Path) -> Path:
    """A small generated ONNX detector with its card."""
    folder = tmp_path / "yolo"
    model = modelgen.yolo_v8_onnx(folder, modelgen.example_yolo_v8(nc=2), name="yolo")
    card = {
        "name": "yolo",
        "family": "yolo",
        "input": {"width": 64, "height": 64, "layout": "NCHW"},
        "labels": ["person", "car"],
    }
    (folder / "yolo.card.yaml").write_text(yaml.safe_dump(card))
    return model


def sign_manifest(data: dict[str, Any], key: Path) -> tuple[bytes, bytes]:
    raw = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    return raw, sign(raw, load_private_key(key))


def published(registry: Path, name: str = "face", version: str = "1.0.0") -> tuple[bytes, bytes]:
    folder = registry / name / version
    return (folder / "manifest.json").read_bytes(), (folder / "manifest.json.sig").read_bytes()


# ------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("value", ["face", "1.0.0", "face-short_range.tflite", "2.0.0+build.1"])
def test_safe_names_are_accepted(value: str) -> None:
    assert check_name("name", value) == value


@pytest.mark.parametrize("value", UNSAFE)
def test_names_that_could_leave_the_store_are_refused(value: str) -> None:
    with pytest.raises(ManifestError, match="unsafe model name"):
        check_name("model name", value)


def test_versions_compare_as_versions_not_strings() -> None:
    assert is_newer("10.0.0", "9.1.0")
    assert not is_newer("1.0.0", "1.0.0")
    assert parse_version("1.0") == parse_version("1.0.0")
    with pytest.raises(ManifestError, match="invalid version"):
        parse_version("latest")


# -------------------------------------------------------------------------------------- keys


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask the private key must not be readable
    try:
        key, pub = generate_key(tmp_path / "k" / "publisher.key")
    finally:
        os.umask(old)
    assert mode(key) == 0o600
    assert mode(pub) == 0o644
    assert pub.name == "publisher.key.pub"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert sorted(p.name for p in key.parent.iterdir()) == ["publisher.key", "publisher.key.pub"]
    public = load_public_keys([pub])[0]
    assert key_id(public) == key_id(load_private_key(key).public_key())
    assert len(key_id(public)) == 16


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, _ = keys
    before = key.read_bytes()
    with pytest.raises(RegistryError, match="already exists"):
        generate_key(key)
    assert key.read_bytes() == before
    # A lone .pub is refused too: the pair would not match.
    lone = tmp_path / "lone.key.pub"
    lone.write_text("x")
    with pytest.raises(RegistryError, match="already exists"):
        generate_key(tmp_path / "lone.key")
    assert not (tmp_path / "lone.key").exists()


def test_unreadable_or_wrong_keys_are_named(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(RegistryError, match=re.escape("missing.pub")):
        load_public_keys([tmp_path / "missing.pub"])
    with pytest.raises(RegistryError, match=r"publisher.key: .*private key"):
        load_public_keys([keys[0]])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(RegistryError, match=re.escape("junk.pem")):
        load_public_keys([junk])
    with pytest.raises(RegistryError, match=re.escape("junk.pem")):
        load_private_key(junk)


# -------------------------------------------------------------------------------- signatures


def test_signature_round_trip(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    path = tmp_path / "file.json"
    path.write_bytes(b'{"a": 1}\n')
    sig = sign_file(path, load_private_key(keys[0]))
    assert sig.name == "file.json.sig"
    content = sig.read_bytes()
    assert content.endswith(b"\n") and len(content) == 89  # base64 of 64 bytes + newline
    verify(path.read_bytes(), content, load_public_keys([keys[1]]))


def test_one_changed_byte_breaks_the_signature(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    data, sig = published(registry)
    tampered = bytearray(data)
    tampered[data.index(b'"size"') + 9] ^= 1  # one byte of the artifact size
    with pytest.raises(SignatureError, match="does not match any trusted key"):
        load_manifest(bytes(tampered), sig, load_public_keys([keys[1]]))


def test_a_signature_by_another_key_is_refused(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    other, other_pub = generate_key(tmp_path / "other.key")
    data, _ = published(registry)
    with pytest.raises(SignatureError, match="does not match any trusted key"):
        load_manifest(data, sign(data, load_private_key(other)), load_public_keys([keys[1]]))
    # Trusting both keys accepts either.
    trusted = load_public_keys([other_pub, keys[1]])
    load_manifest(data, sign(data, load_private_key(other)), trusted)


@pytest.mark.parametrize("sig", [b"", b"not base64!\n", b"AAAA" * 22 + b"\n", b"QUJD\n"])
def test_malformed_signatures_are_refused(sig: bytes, keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match="malformed signature"):
        verify(b"{}", sig, load_public_keys([keys[1]]))


def test_nothing_verifies_without_a_trusted_key(keys: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError, match="no trusted key"):
        verify(b"{}", sign(b"{}", load_private_key(keys[0])), [])


# --------------------------------------------------------------------------------- manifests


def good_manifest(**changes: Any) -> dict[str, Any]:
    card = yaml.safe_load((MODELS / "face-short-range.card.yaml").read_text())
    card.update(name="face", version="1.0.0")
    data: dict[str, Any] = {
        "name": "face",
        "version": "1.0.0",
        "artifact": {"file": "face.tflite", "sha256": "ab" * 32, "size": 229714},
        "card": card,
        "min_agent_version": None,
        "created": "2025-01-01T00:00:00+00:00",
        "expires": None,
        "canaries": [],
    }
    data.update(changes)
    return data


def test_a_signed_manifest_loads(keys: tuple[Path, Path]) -> None:
    data, sig = sign_manifest(good_manifest(), keys[0])
    manifest = load_manifest(data, sig, load_public_keys([keys[1]]))
    assert manifest.artifact.file == "face.tflite"
    card = manifest.model_card()
    assert isinstance(card, ModelCard)
    assert (card.name, card.version, card.family) == ("face", "1.0.0", "anchors")


def test_an_expired_manifest_is_refused(keys: tuple[Path, Path]) -> None:
    data, sig = sign_manifest(good_manifest(expires="2020-01-01T00:00:00+00:00"), keys[0])
    with pytest.raises(ManifestError, match="expired"):
        load_manifest(data, sig, load_public_keys([keys[1]]))
    # ...but it was valid before then.
    before = datetime(2019, 6, 1, tzinfo=timezone.utc)
    load_manifest(data, sig, load_public_keys([keys[1]]), now=before)


def test_a_manifest_for_a_newer_agent_is_refused(keys: tuple[Path, Path]) -> None:
    data, sig = sign_manifest(good_manifest(min_agent_version="99.0"), keys[0])
    trusted = load_public_keys([keys[1]])
    with pytest.raises(ManifestError, match=r"needs edge-agent 99.0 or newer; this is 0.1.0"):
        load_manifest(data, sig, trusted, agent_version="0.1.0")
    assert load_manifest(data, sig, trusted, agent_version="99.0.1").min_agent_version == "99.0"


@pytest.mark.parametrize(
    ("where", "value"),
    [("name", v) for v in UNSAFE[:5]]
    + [("version", v) for v in UNSAFE[:5]]
    + [("artifact.file", v) for v in [*UNSAFE[:5], "../../evil.tflite"]]
    + [("canary.image", v) for v in UNSAFE[:5]],
)
def test_a_validly_signed_manifest_with_unsafe_names_is_refused(
    keys: tuple[Path, Path], where: str, value: str
) -> None:
    data = good_manifest()
    if where == "artifact.file":
        data["artifact"]["file"] = value
    elif where == "canary.image":
        canary = {"image": value, "sha256": "cd" * 32, "size": 10, "expect": []}
        data["canaries"] = [canary]
    else:
        data[where] = value
    raw, sig = sign_manifest(data, keys[0])
    with pytest.raises(ManifestError, match="unsafe"):
        load_manifest(raw, sig, load_public_keys([keys[1]]))


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"created": "2025-01-01T00:00:00"},  # no time zone
        {"artifact": {"file": "face.tflite", "sha256": "AB" * 32, "size": 1}},
        {"artifact": {"file": "face.tflite", "sha256": "ab" * 32, "size": 0}},
        {"version": "latest"},
    ],
)
def test_malformed_manifests_are_refused(keys: tuple[Path, Path], change: dict[str, Any]) -> None:
    raw, sig = sign_manifest(good_manifest(**change), keys[0])
    with pytest.raises(ManifestError):
        load_manifest(raw, sig, load_public_keys([keys[1]]))


def test_signed_bytes_that_are_not_json_are_a_manifest_error(keys: tuple[Path, Path]) -> None:
    for raw in (b"not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(ManifestError):
            load_manifest(raw, sign(raw, load_private_key(keys[0])), load_public_keys([keys[1]]))


def test_the_signature_is_checked_before_parsing(keys: tuple[Path, Path]) -> None:
    raw, _ = sign_manifest(good_manifest(version="../x"), keys[0])
    with pytest.raises(SignatureError):
        load_manifest(raw, sign(raw + b" ", load_private_key(keys[0])), load_public_keys([keys[1]]))


def test_a_bad_card_in_a_manifest_is_a_manifest_error() -> None:
    manifest = Manifest.model_validate(good_manifest(card={"name": "face", "family": "nope"}))
    with pytest.raises(ManifestError, match="model card"):
        manifest.model_card()
    mismatched = good_manifest()
    mismatched["card"]["version"] = "0.9"
    with pytest.raises(ManifestError, match=re.escape("card says face 0.9")):
        Manifest.model_validate(mismatched).model_card()


def test_dump_json_is_stable() -> None:
    manifest = Manifest.model_validate(good_manifest())
    raw = dump_json(manifest)
    assert raw.endswith(b"}\n")
    assert raw == dump_json(parse_manifest(raw))
    assert list(json.loads(raw)) == sorted(json.loads(raw))
    assert b'\n  "artifact": {\n' in raw


def test_index_resolves_channels(keys: tuple[Path, Path]) -> None:
    index = Index.model_validate(
        {"models": {"face": {"channels": {"stable": "1.0.0"}, "versions": ["1.0.0"]}}}
    )
    raw = dump_json(index)
    loaded = load_index(raw, sign(raw, load_private_key(keys[0])), load_public_keys([keys[1]]))
    assert loaded.resolve("face", "stable") == "1.0.0"
    with pytest.raises(ManifestError, match="not in the registry index"):
        loaded.resolve("person", "stable")
    with pytest.raises(ManifestError, match="no channel 'beta'"):
        loaded.resolve("face", "beta")
    index.expires = datetime.now(timezone.utc) - timedelta(seconds=1)
    raw = dump_json(index)
    with pytest.raises(ManifestError, match="expired"):
        load_index(raw, sign(raw, load_private_key(keys[0])), load_public_keys([keys[1]]))


def test_an_index_with_unsafe_names_is_refused(keys: tuple[Path, Path]) -> None:
    for models in (
        {"../face": {"versions": ["1.0.0"]}},
        {"face": {"versions": ["../1.0.0"]}},
        {"face": {"channels": {"stable": "/etc"}}},
    ):
        raw = json.dumps({"models": models}).encode()
        with pytest.raises(ManifestError, match="unsafe"):
            load_index(raw, sign(raw, load_private_key(keys[0])), load_public_keys([keys[1]]))


# ---------------------------------------------------------------------------------- publish


def test_publish_writes_a_signed_version_and_index(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    path = publish(face, registry, name="face", version="1.0.0", key=keys[0])
    assert path == registry / "face" / "1.0.0" / "manifest.json"
    trusted = load_public_keys([keys[1]])
    manifest = load_manifest(*published(registry), trusted)
    artifact = registry / "face" / "1.0.0" / "face.tflite"
    assert artifact.read_bytes() == FACE.read_bytes()
    assert manifest.artifact.size == FACE.stat().st_size
    assert manifest.expires is not None and manifest.expires > datetime.now(timezone.utc)
    card = manifest.model_card()
    assert (card.name, card.version) == ("face", "1.0.0")  # set from what was published
    assert card.sha256 == manifest.artifact.sha256
    assert mode(registry / "face" / "1.0.0") == 0o755  # served to others
    root = registry / "index.json"
    index = load_index(root.read_bytes(), (registry / "index.json.sig").read_bytes(), trusted)
    assert index.resolve("face", "stable") == "1.0.0"
    assert verify_registry(registry, [keys[1]]) == []
    # Nothing of the staging area is left behind.
    assert sorted(p.name for p in (registry / "face").iterdir()) == ["1.0.0"]


def test_publishing_versions_keeps_all_and_points_the_channel_to_the_latest(
    tmp_path: Path, face: Path, yolo: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="9.0.0", key=keys[0])
    publish(face, registry, name="face", version="10.0.0", key=keys[0])
    publish(face, registry, name="face", version="11.0.0b1", key=keys[0], channel="beta")
    publish(yolo, registry, name="yolo", version="1.0", key=keys[0], channel=None)
    trusted = load_public_keys([keys[1]])
    raw = (registry / "index.json").read_bytes()
    index = load_index(raw, (registry / "index.json.sig").read_bytes(), trusted)
    assert index.models["face"].versions == ["9.0.0", "10.0.0", "11.0.0b1"]
    assert index.models["face"].channels == {"stable": "10.0.0", "beta": "11.0.0b1"}
    assert index.models["yolo"].versions == ["1.0"]
    assert index.models["yolo"].channels == {}
    assert verify_registry(registry, [keys[1]]) == []


def test_republishing_a_version_with_different_bytes_is_refused(
    tmp_path: Path, face: Path, yolo: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    before = published(registry)
    changed = tmp_path / "changed" / "face.tflite"
    changed.parent.mkdir()
    changed.write_bytes(face.read_bytes() + b"\0")
    shutil.copy(face.with_name("face.card.yaml"), changed.with_name("face.card.yaml"))
    with pytest.raises(RegistryError, match="already published with different bytes"):
        publish(changed, registry, name="face", version="1.0.0", key=keys[0])
    with pytest.raises(RegistryError, match="already published with different bytes"):
        publish(yolo, registry, name="face", version="1.0.0", key=keys[0])
    with pytest.raises(RegistryError, match=re.escape("same version as the published 1.0.0")):
        publish(changed, registry, name="face", version="1.0", key=keys[0])
    assert published(registry) == before
    assert (registry / "face" / "1.0.0" / "face.tflite").read_bytes() == FACE.read_bytes()
    assert verify_registry(registry, [keys[1]]) == []


def test_republishing_the_same_bytes_only_moves_the_channel(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0], channel="beta")
    before = published(registry)
    publish(face, registry, name="face", version="1.0.0", key=keys[0], channel="stable")
    assert published(registry) == before  # devices that have it see the same signed manifest
    raw = (registry / "index.json").read_bytes()
    index = load_index(raw, (registry / "index.json.sig").read_bytes(), load_public_keys([keys[1]]))
    assert index.models["face"].channels == {"beta": "1.0.0", "stable": "1.0.0"}
    assert index.models["face"].versions == ["1.0.0"]


@pytest.mark.parametrize("field", ["name", "version"])
@pytest.mark.parametrize("value", UNSAFE[:5])
def test_publish_refuses_unsafe_names(
    tmp_path: Path, face: Path, keys: tuple[Path, Path], field: str, value: str
) -> None:
    names = {"name": "face", "version": "1.0.0", field: value}
    registry = tmp_path / "registry"
    with pytest.raises(ManifestError, match="unsafe"):
        publish(face, registry, key=keys[0], **names)
    assert not registry.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "src"]


def test_publish_refuses_an_unsafe_artifact_file_name(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    hidden = face.with_name(".face.tflite")
    shutil.copy(face, hidden)
    with pytest.raises(ManifestError, match="unsafe artifact file"):
        publish(
            hidden,
            tmp_path / "registry",
            name="face",
            version="1.0.0",
            key=keys[0],
            card=face.with_name("face.card.yaml"),
        )


def test_publish_refuses_a_model_without_a_card(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    face.with_name("face.card.yaml").unlink()
    with pytest.raises(RegistryError, match=r"no model card; write face.card.yaml"):
        publish(face, tmp_path / "registry", name="face", version="1.0.0", key=keys[0])
    bad = tmp_path / "bad.card.yaml"
    bad.write_text("name: face\n")
    with pytest.raises(ModelCardError, match=re.escape("bad.card.yaml")):
        publish(face, tmp_path / "registry", name="face", version="1.0.0", key=keys[0], card=bad)
    assert not (tmp_path / "registry" / "face" / "1.0.0").exists()


def test_publish_takes_a_card_from_elsewhere(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    card = tmp_path / "elsewhere.yaml"
    face.with_name("face.card.yaml").rename(card)
    registry = tmp_path / "registry"
    publish(
        face,
        registry,
        name="face",
        version="1.0.0",
        key=keys[0],
        card=card,
        expires_days=None,
        min_agent_version="0.1",
    )
    manifest = load_manifest(*published(registry), load_public_keys([keys[1]]))
    assert manifest.expires is None
    assert manifest.min_agent_version == "0.1"
    assert manifest.model_card().family == "anchors"


def test_publish_refuses_to_re_sign_an_index_it_did_not_sign(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    index = registry / "index.json"
    index.write_bytes(index.read_bytes().replace(b'"stable": "1.0.0"', b'"stable": "0.0.1"'))
    with pytest.raises(RegistryError, match="not signed by this key"):
        publish(face, registry, name="face", version="2.0.0", key=keys[0])
    other, _ = generate_key(tmp_path / "other.key")
    sign_file(index, load_private_key(keys[0]))
    with pytest.raises(RegistryError, match="not signed by this key"):
        publish(face, registry, name="face", version="2.0.0", key=other)


def test_publish_with_a_canary_image(tmp_path: Path, face: Path, keys: tuple[Path, Path]) -> None:
    registry = tmp_path / "registry"
    image = tmp_path / "astronaut.png"
    shutil.copy(MEDIA / "astronaut.png", image)
    expect = [{"label": "face", "box": [0.4, 0.1, 0.6, 0.4]}]
    publish(face, registry, name="face", version="1.0.0", key=keys[0], canaries=[(image, expect)])
    manifest = load_manifest(*published(registry), load_public_keys([keys[1]]))
    (canary,) = manifest.canaries
    assert canary.image == "astronaut.png"
    assert canary.expect[0].box == (0.4, 0.1, 0.6, 0.4)
    assert canary.expect[0].min_iou == 0.5
    assert (registry / "face" / "1.0.0" / "astronaut.png").read_bytes() == image.read_bytes()
    assert verify_registry(registry, [keys[1]]) == []
    bad = [{"label": "face", "box": [0.6, 0.1, 0.4, 1.5]}]
    with pytest.raises(ManifestError, match="canaries"):
        publish(face, registry, name="face", version="2.0.0", key=keys[0], canaries=[(image, bad)])
    assert not (registry / "face" / "2.0.0").exists()


# ---------------------------------------------------------------------------------- verify


def test_verify_registry_finds_damage(tmp_path: Path, face: Path, keys: tuple[Path, Path]) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    publish(face, registry, name="face", version="2.0.0", key=keys[0])
    publish(face, registry, name="face", version="3.0.0", key=keys[0])
    assert verify_registry(registry, [keys[1]]) == []

    artifact = registry / "face" / "1.0.0" / "face.tflite"
    data = bytearray(artifact.read_bytes())
    data[1000] ^= 0xFF
    artifact.write_bytes(bytes(data))
    (registry / "face" / "2.0.0" / "face.tflite").unlink()
    shutil.rmtree(registry / "face" / "3.0.0")  # the version stable points to
    problems = verify_registry(registry, [keys[1]])
    assert problems == [
        "face/1.0.0/face.tflite: sha256 differs from the manifest's",
        "face/2.0.0/face.tflite: missing",
        "index.json: face 3.0.0 is listed but face/3.0.0/ does not exist",
        "index.json: face channel stable points to 3.0.0, which does not exist",
    ]


def test_verify_registry_checks_every_signature(
    tmp_path: Path, face: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(face, registry, name="face", version="1.0.0", key=keys[0])
    (registry / "index.json.sig").unlink()
    manifest = registry / "face" / "1.0.0" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b"1.0.0", b"1.0.1", 1))
    problems = verify_registry(registry, [keys[1]])
    assert problems == [
        "index.json: index.json.sig is missing",
        "face/1.0.0/manifest.json: signature does not match any trusted key "
        f"({key_id(load_public_keys([keys[1]])[0])}): the file was changed or signed by "
        "another key",
    ]
    _, other_pub = generate_key(tmp_path / "other.key")
    assert len(verify_registry(registry, [other_pub])) == 2


# ------------------------------------------------------------------------------------- CLI


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "registry", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_registry_commands_end_to_end(tmp_path: Path, face: Path) -> None:
    key = tmp_path / "keys" / "pub.key"
    done = cli("keygen", "--out", key)
    assert done.returncode == 0, done.stderr
    assert str(key) in done.stdout and "key id" in done.stdout
    assert mode(key) == 0o600
    again = cli("keygen", "--out", key)
    assert again.returncode == 1
    assert again.stderr.startswith("edge-agent: ") and "already exists" in again.stderr

    registry = tmp_path / "registry"
    pub = cli(
        "publish",
        face,
        "--registry",
        registry,
        "--name",
        "face",
        "--version",
        "1.0.0",
        "--key",
        key,
    )
    assert pub.returncode == 0, pub.stderr
    manifest_path, digest_line = pub.stdout.splitlines()
    assert Path(manifest_path) == registry / "face" / "1.0.0" / "manifest.json"
    manifest = parse_manifest(Path(manifest_path).read_bytes())
    assert digest_line == f"sha256 {manifest.artifact.sha256}"
    assert manifest.expires is not None

    beta = cli(
        "publish",
        face,
        "--registry",
        registry,
        "--name",
        "face",
        "--version",
        "2.0.0b1",
        "--key",
        key,
        "--channel",
        "beta",
        "--expires-days",
        "0",
        "--min-agent-version",
        "0.1.0",
        "--card",
        face.with_name("face.card.yaml"),
    )
    assert beta.returncode == 0, beta.stderr
    manifest = parse_manifest((registry / "face" / "2.0.0b1" / "manifest.json").read_bytes())
    assert manifest.expires is None and manifest.min_agent_version == "0.1.0"
    index = json.loads((registry / "index.json").read_text())
    assert index["models"]["face"] == {
        "channels": {"beta": "2.0.0b1", "stable": "1.0.0"},
        "versions": ["1.0.0", "2.0.0b1"],
    }

    unsafe = cli(
        "publish", face, "--registry", registry, "--name", "../x", "--version", "1", "--key", key
    )
    assert unsafe.returncode == 1 and "unsafe model name" in unsafe.stderr

    ok = cli("verify", registry, "--key", f"{key}.pub")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{registry}: OK"

    (registry / "face" / "1.0.0" / "face.tflite").write_bytes(b"junk")
    bad = cli("verify", registry, "--key", f"{key}.pub", "--key", f"{key}.pub")
    assert bad.returncode == 1
    assert "face/1.0.0/face.tflite: 4 bytes, the manifest says" in bad.stderr

    wrong = cli("verify", registry, "--key", key)  # the private key by mistake
    assert wrong.returncode == 1 and "give its .pub" in wrong.stderr


def test_generated_onnx_model_publishes(
    tmp_path: Path, yolo: Path, keys: tuple[Path, Path]
) -> None:
    registry = tmp_path / "registry"
    publish(yolo, registry, name="person", version="1.0.0", key=keys[0])
    manifest = load_manifest(*published(registry, "person"), load_public_keys([keys[1]]))
    card = manifest.model_card()
    assert card.name == "person" and card.labels == ["person", "car"]
    assert manifest.artifact.file == "yolo.onnx"
    # The card carried in the manifest is enough to load and run the published model.
    folder = registry / "person" / "1.0.0"
    card_file = tmp_path / "card.yaml"
    card_file.write_text(yaml.safe_dump(card.model_dump(exclude_none=True)))
    detector = Detector.load(folder / manifest.artifact.file, card=card_file, threads=1)
    try:
        detections, _ = detector.detect(np.zeros((64, 64, 3), np.uint8))
        assert all(d.label in ("person", "car") for d in detections)
    finally:
        detector.close()


def test_publish_int8_from_publishes_the_quantized_model_with_its_measured_fidelity(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from tests import compress_models

    fp32 = compress_models.tiny_yolo(tmp_path)
    images = compress_models.image_folder(tmp_path / "images", count=12)
    out = tmp_path / "out" / "tiny-int8.onnx"
    registry = tmp_path / "registry"
    pub = cli(
        "publish", out, "--int8-from", fp32, "--calib", images, "--calib-frames", "5",
        "--eval-frames", "7", "--registry", registry, "--name", "tiny", "--version", "2.0.0",
        "--key", keys[0],
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    said, _, digest_line = pub.stdout.splitlines()
    fidelity = float(re.search(r"fidelity (\d\.\d+) >= 0\.90", said).group(1))  # type: ignore[union-attr]
    assert said.startswith(f"{fp32} -> {out}: ") and "on 7 frames not used for calibration" in said
    assert cli("verify", registry, "--key", keys[1]).returncode == 0

    manifest = load_manifest(*published(registry, "tiny", "2.0.0"), load_public_keys([keys[1]]))
    assert manifest.artifact.file == "tiny-int8.onnx"
    assert digest_line == f"sha256 {manifest.artifact.sha256}"
    quantization = manifest.model_card().quantization  # what a device reads
    assert quantization is not None
    assert round(quantization.fidelity_map50 or 0, 3) == fidelity
    assert quantization.calibration == "percentile on 5 frames of images"
    assert quantization.fidelity_frames == "7 frames of images, none used for calibration (14 detections of the reference)"
    assert quantization.reference is not None and quantization.reference.startswith("tiny.onnx (sha256 ")
    assert manifest.model_card().labels == compress_models.LABELS
    # the published bytes are the INT8 model: its QDQ nodes are there
    import onnx

    graph = onnx.load(str(registry / "tiny" / "2.0.0" / "tiny-int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)


def test_publish_int8_from_refuses_an_unfaithful_model(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    import cv2

    from tests import compress_models

    fp32 = compress_models.tiny_yolo(tmp_path)
    black = tmp_path / "black"
    black.mkdir()
    for i in range(8):
        cv2.imwrite(str(black / f"black{i}.png"), np.zeros((64, 64, 3), np.uint8))
    images = compress_models.image_folder(tmp_path / "images", count=6)
    registry = tmp_path / "registry"
    args = [
        "publish", tmp_path / "tiny-int8.onnx", "--int8-from", fp32, "--calib", black,
        "--eval", images, "--registry", registry, "--name", "tiny", "--version", "2.0.0",
        "--key", keys[0],
    ]  # fmt: skip
    refused = cli(*args)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"edge-agent: {tmp_path / 'tiny-int8.onnx'}: not published: fidelity 0.")
    assert "< 0.90" in refused.stderr and "--min-fidelity 0 publishes it anyway" in refused.stderr
    assert not (registry / "tiny").exists()
    anyway = cli(*args, "--min-fidelity", "0")
    assert anyway.returncode == 0, anyway.stderr
    card = load_manifest(*published(registry, "tiny", "2.0.0"), load_public_keys([keys[1]])).model_card()
    assert card.quantization is not None and (card.quantization.fidelity_map50 or 0) < 0.9
