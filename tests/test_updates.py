"""Model updates from a signed registry over real HTTP: the happy path through a running agent,
every refusal with the old model still serving, probation rollback, and a crash in every state."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.config import RegistryConfig
from agent.detection import Detector
from agent.errors import RegistryError
from agent.pipeline import Pipeline, Result
from agent.registry import updater as updater_module
from agent.registry.publish import publish
from agent.registry.signing import generate_key, load_private_key, sign_file
from agent.registry.updater import STATES, Job, Updater
from agent.sources import open_source
from tests import modelgen
from tests.conftest import MEDIA, MODELS
from tests.registry_server import RegistryServer

FACE = MODELS / "face-short-range.tflite"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key(tmp_path / "keys" / "publisher.key")


def face_copy(folder: Path, name: str = "face.tflite") -> Path:
    """The face model with its card, as a publisher would have it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / name
    shutil.copy(FACE, model)
    card = yaml.safe_load((MODELS / "face-short-range.card.yaml").read_text())
    card["name"] = "face"
    (folder / f"{model.stem}.card.yaml").write_text(yaml.safe_dump(card))
    return model


@pytest.fixture
def registry(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A registry with face 1.0.0 and 2.0.0 (stable -> 2.0.0)."""
    root = tmp_path / "registry"
    model = face_copy(tmp_path / "src")
    for version in ("1.0.0", "2.0.0"):
        publish(model, root, name="face", version=version, key=keys[0], channel="stable")
    return root


@pytest.fixture
def server(registry: Path) -> Iterator[RegistryServer]:
    with RegistryServer(registry) as s:
        yield s


# ----------------------------------------------------------------------------- in-process rig


class Rig:
    """A real pipeline on the sample face video, serving the face model, with an Updater on a
    store in tmp: the daemon minus MQTT, so each refusal can be checked directly."""

    def __init__(self, store: Path, url: str, pub: Path, **registry: Any) -> None:
        # A generous latency budget: tests run beside others on two cores; the one test about
        # latency sets its own.
        settings: dict[str, Any] = {"probation_s": 1.0, "latency_budget": 10.0, **registry}
        self.config = RegistryConfig(url=url, trusted_keys=[pub], model="face", **settings)
        self.store_root = store
        self.source = open_source(str(MEDIA / "carphone_pristine.mp4"), fps=10, loop=True)
        self.detector = Detector.load(FACE, threads=1)
        self.results: list[Result] = []
        self.pipeline = Pipeline(self.source, self.detector, self.results.append)
        self.source.start()
        self.pipeline.start()
        self.updater = self.make_updater()

    def make_updater(self) -> Updater:
        u = Updater(self.config, self.store_root, threads=1)
        u.recover()
        u.pipeline = self.pipeline
        u.recent_frames = lambda: [r.frame.image for r in self.results[-5:]]
        return u

    def wait_frames(self, n: int = 5) -> None:
        target = len(self.results) + n
        deadline = time.monotonic() + 30
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.results) >= target

    def run(self, version: str = "2.0.0", **kw: Any) -> None:
        self.wait_frames(3)
        self.updater._run(Job("face", version, "stable", **kw))

    def serving_version(self) -> str:
        return self.pipeline.detector.card.version

    def close(self) -> None:
        self.pipeline.stop()
        self.source.stop()


@pytest.fixture
def rig(tmp_path: Path, server: RegistryServer, keys: tuple[Path, Path]) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", server.url, keys[1])
    yield r
    r.close()


def test_update_swaps_in_the_new_model_and_commits(rig: Rig) -> None:
    rig.run("2.0.0")
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "2.0.0"
    assert rig.updater.store.current("face") == "2.0.0"
    assert rig.updater.store.highest_accepted("face") == "2.0.0"
    rig.wait_frames(3)
    assert rig.results[-1].model_version == "2.0.0"


def refused(rig: Rig, words: str, version: str = "2.0.0", **kw: Any) -> None:
    before = rig.pipeline.detector
    link = rig.updater.store.current("face")
    rig.run(version, **kw)
    assert rig.updater.state.state == "failed"
    assert words in (rig.updater.state.error or ""), rig.updater.state.error
    assert rig.pipeline.detector is before  # the old model keeps serving
    frames = len(rig.results)
    rig.wait_frames(2)
    assert len(rig.results) > frames
    assert rig.updater.store.current("face") == link


def resign(path: Path, key: Path) -> None:
    sign_file(path, load_private_key(key))


def test_bad_signature_is_refused(rig: Rig, registry: Path) -> None:
    sig = registry / "face" / "2.0.0" / "manifest.json.sig"
    sig.write_text("AAAA" * 22 + "\n")
    refused(rig, "signature")


def test_signature_by_an_untrusted_key_is_refused(rig: Rig, registry: Path, tmp_path: Path) -> None:
    other, _ = generate_key(tmp_path / "other.key")
    resign(registry / "face" / "2.0.0" / "manifest.json", other)
    refused(rig, "signature")


def test_manifest_tampered_after_signing_is_refused(rig: Rig, registry: Path) -> None:
    path = registry / "face" / "2.0.0" / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"2.0.0"', b'"2.0.1"', 1))
    refused(rig, "signature")


def edit_manifest(registry: Path, version: str, key: Path, change: Any) -> None:
    path = registry / "face" / version / "manifest.json"
    data = json.loads(path.read_bytes())
    change(data)
    path.write_bytes(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")
    resign(path, key)


def test_artifact_checksum_mismatch_is_refused(rig: Rig, registry: Path, keys) -> None:
    edit_manifest(registry, "2.0.0", keys[0], lambda m: m["artifact"].update(sha256="0" * 64))
    refused(rig, "sha256")


def test_artifact_larger_than_the_manifest_says_is_refused(rig: Rig, registry: Path, keys) -> None:
    edit_manifest(
        registry, "2.0.0", keys[0], lambda m: m["artifact"].update(size=m["artifact"]["size"] - 100)
    )
    refused(rig, "larger than the manifest says")


def test_truncated_download_is_refused_then_resumed(rig: Rig, server: RegistryServer) -> None:
    server.truncate_after = 50_000
    refused(rig, "truncated")
    server.truncate_after = None
    rig.run("2.0.0")
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "2.0.0"
    ranges = [r for _, r in server.requests if r]
    assert any(r.startswith("bytes=50000-") for r in ranges), server.requests


def test_expired_manifest_is_refused(rig: Rig, registry: Path, keys) -> None:
    edit_manifest(
        registry, "2.0.0", keys[0], lambda m: m.update(expires="2020-01-01T00:00:00+00:00")
    )
    refused(rig, "expired")


def test_downgrade_is_refused_unless_asked(rig: Rig) -> None:
    rig.run("2.0.0")
    assert rig.serving_version() == "2.0.0"
    refused(rig, "downgrade", version="1.0.0")
    rig.run("1.0.0", allow_downgrade=True)
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "1.0.0"


@pytest.mark.parametrize("version", ["..", "../x", "a/b", "/etc"])
def test_path_traversal_in_the_request_is_refused(rig: Rig, version: str) -> None:
    with pytest.raises(RegistryError):
        rig.updater.request(Job("face", version, "stable"))
    with pytest.raises(RegistryError):
        rig.updater.request(Job("../face", "2.0.0", "stable"))


def test_path_traversal_in_a_signed_manifest_is_refused(rig: Rig, registry: Path, keys) -> None:
    edit_manifest(
        registry, "2.0.0", keys[0], lambda m: m["artifact"].update(file="../../evil.tflite")
    )
    refused(rig, "unsafe")


def publish_file(
    registry: Path, keys, folder: Path, model: Path, version: str, card: dict[str, Any]
) -> None:
    (folder / f"{model.stem}.card.yaml").write_text(yaml.safe_dump(card))
    publish(model, registry, name="face", version=version, key=keys[0], channel=None)


def face_card() -> dict[str, Any]:
    card = yaml.safe_load((MODELS / "face-short-range.card.yaml").read_text())
    card["name"] = "face"
    return card


def test_a_file_that_is_not_a_model_is_refused(
    rig: Rig, registry: Path, keys, tmp_path: Path
) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    model = folder / "junk.tflite"
    model.write_bytes(b"this is not a flatbuffer" * 100)
    publish_file(registry, keys, folder, model, "3.0.0", face_card())
    refused(rig, "trial", version="3.0.0")


def test_a_model_whose_outputs_do_not_fit_its_family_is_refused(
    rig: Rig, registry: Path, keys, tmp_path: Path
) -> None:
    folder = tmp_path / "misfit"
    folder.mkdir()
    # An SSD-shaped model published with the anchors card of the face detector.
    model = modelgen.ssd_tflite(
        folder,
        np.zeros((1, 4, 4), np.float32),
        np.zeros((1, 4), np.float32),
        np.zeros((1, 4), np.float32),
        np.array([0.0], np.float32),
        size=(128, 128),
    )
    publish_file(registry, keys, folder, model, "3.0.0", face_card())
    refused(rig, "trial", version="3.0.0")


def test_a_model_10x_slower_in_trial_is_refused(
    rig: Rig, registry: Path, keys, tmp_path: Path
) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    model = folder / "pose.tflite"
    shutil.copy(MODELS / "pose-detector.tflite", model)
    card = yaml.safe_load((MODELS / "pose-detector.card.yaml").read_text())
    card["name"] = "face"
    rig.updater.config.latency_budget = 1.5  # the pose model is several times slower than BlazeFace
    publish_file(registry, keys, folder, model, "3.0.0", card)
    refused(rig, "trial", version="3.0.0")


@pytest.mark.expect_thread_errors("the swapped-in model fails on every frame on purpose")
def test_a_model_that_fails_after_the_swap_is_rolled_back(rig: Rig, monkeypatch) -> None:
    real_load = Detector.load

    def failing_load(*args: Any, **kwargs: Any) -> Detector:
        detector = real_load(*args, **kwargs)
        calls = {"n": 0}
        real_infer = detector.infer

        def infer(tensor: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 8:  # passes warm-up and the trial, then starts failing
                raise RuntimeError("model fell over")
            return real_infer(tensor)

        detector.infer = infer  # type: ignore[method-assign]
        return detector

    monkeypatch.setattr(updater_module.Detector, "load", staticmethod(failing_load))
    rig.updater.config.probation_s = 5
    before = rig.pipeline.detector
    rig.run("2.0.0")
    assert rig.updater.state.state == "failed"
    assert "rolled back" in (rig.updater.state.error or "")
    assert rig.pipeline.detector is before
    assert rig.updater.store.current("face") is None


class Died(BaseException):
    """Stands for SIGKILL: execution stops right here, the disk stays as it is."""


@pytest.mark.parametrize(
    "state", [s for s in STATES if s not in ("idle", "failed", "rolling_back")]
)
def test_killed_in_every_state_restarts_serving_a_verified_model(
    rig: Rig, state: str, monkeypatch
) -> None:
    real_persist = Updater._persist

    def persist(self: Updater, new: str, **changes: Any) -> None:
        real_persist(self, new, **changes)
        if new == state:
            raise Died(state)

    monkeypatch.setattr(Updater, "_persist", persist)
    with pytest.raises(Died):
        rig.run("2.0.0")
    monkeypatch.setattr(Updater, "_persist", real_persist)
    # "Restart": a fresh updater on the same store recovers, then the agent loads what it serves.
    fresh = rig.make_updater()
    assert fresh.state.state in ("idle", "failed")
    serving = fresh.serving()
    store = fresh.store
    if state == "committed":
        assert serving is not None and serving[2] == "2.0.0"
        assert store.highest_accepted("face") == "2.0.0"
    else:
        assert serving is None  # the configured model: the update never committed
        assert store.current("face") is None
        assert "interrupted" in (fresh.state.error or "")
    if serving is not None:
        Detector.load(serving[0], card=serving[1]).close()
    staging = rig.store_root / "staging"
    assert not staging.exists() or state == "downloading" or not any(staging.rglob("*.tflite"))
    # and the next update goes through
    fresh.pipeline = rig.pipeline
    fresh.recent_frames = rig.updater.recent_frames
    fresh._run(Job("face", "2.0.0", "stable"))
    assert fresh.state.state in ("idle", "failed")
    if state != "committed":
        assert fresh.state.state == "idle", fresh.state.error
        assert fresh.store.current("face") == "2.0.0"


@pytest.mark.parametrize(
    "step", ["_fetch_manifest", "_download", "_verify_staged", "_trial", "_commit"]
)
def test_an_error_in_every_step_keeps_the_old_model(rig: Rig, step: str, monkeypatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RegistryError(f"injected failure in {step}")

    monkeypatch.setattr(Updater, step, boom)
    before = rig.pipeline.detector
    rig.run("2.0.0")
    assert rig.updater.state.state == "failed"
    assert "injected failure" in (rig.updater.state.error or "")
    assert rig.pipeline.detector is before or step == "_commit"
    if step != "_commit":
        assert rig.updater.store.current("face") is None


# ----------------------------------------------------------------------- the agent, end to end


def test_agent_updates_over_mqtt_without_a_frame_gap(
    broker, subscriber, write_config, run_agent, server, keys, tmp_path
):
    sub = subscriber("edge-agent/cam-upd/#")
    config = {
        "device_id": "cam-upd",
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 5, "loop": True},
        "model": {"path": str(FACE), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "registry": {
            "url": server.url,
            "trusted_keys": [str(keys[1])],
            "model": "face",
            "probation_s": 2,
        },
    }
    agent = run_agent(write_config(config))
    sub.wait_for("/model", lambda m: m.get("name") == "face-short-range")
    for _ in range(5):
        sub.wait_for("/detections")
    from tests.conftest import Subscriber

    assert isinstance(sub, Subscriber)
    sub.client.publish(
        "edge-agent/cam-upd/cmd/model/update", json.dumps({"id": "u1", "version": "latest"}), qos=1
    )
    reply = sub.wait_for("/cmd/model/update/reply", timeout=120)
    assert reply == {"id": "u1", "ok": True, "result": {"name": "face", "version": "2.0.0"}}, reply
    # B/model told the story before the reply: swapped in, committed, back to idle.
    models = [json.loads(p) for t, p, _ in sub.seen if t.endswith("/model")]
    states = [m["update"]["state"] for m in models]
    assert "probation" in states and "committed" in states, states
    assert models[-1]["version"] == "2.0.0" and models[-1]["update"]["state"] == "idle"
    assert models[-1]["last_update"]["ok"] is True
    after = [sub.wait_for("/detections") for _ in range(3)]
    assert all(d["model"] == {"name": "face", "version": "2.0.0"} for d in after)
    stamps = [json.loads(p)["ts"] for t, p, _ in sub.seen if t.endswith("/detections")]
    gaps = np.diff(stamps)
    # fps 5: one frame every 0.2 s; the swap happens between two frames.
    assert gaps.max() < 3 * np.median(gaps) + 0.2, gaps
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


@pytest.mark.parametrize("state", ["downloading", "probation"])
def test_agent_killed_during_an_update_restarts_on_a_verified_model(
    state, broker, subscriber, write_config, run_agent, server, keys
):
    """A real SIGKILL of the agent process in the middle of an update, then a restart."""
    sub = subscriber("edge-agent/cam-kill/#")
    config = write_config(
        {
            "device_id": "cam-kill",
            "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 5, "loop": True},
            "model": {"path": str(FACE), "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "registry": {
                "url": server.url,
                "trusted_keys": [str(keys[1])],
                "model": "face",
                "probation_s": 30,
                "latency_budget": 10,
            },
        }
    )
    first = run_agent(config)
    for _ in range(3):
        sub.wait_for("/detections")
    if state == "downloading":
        server.delay_s = 20  # the manifest request hangs: the update sits in "downloading"
    sub.client.publish(
        "edge-agent/cam-kill/cmd/model/update", json.dumps({"id": "k1", "version": "2.0.0"}), qos=1
    )
    sub.wait_for("/model", lambda m: m.get("update", {}).get("state") == state, timeout=60)
    first.signal(signal.SIGKILL)
    first.wait(10)
    server.delay_s = 0
    second = run_agent(config)
    # It comes back on the configured model, says the update was interrupted, and detects.
    model = sub.wait_for(
        "/model",
        lambda m: m.get("from") == "config" and m["update"]["state"] == "failed",
        timeout=60,
    )
    assert "interrupted" in model["update"]["error"]
    assert sub.wait_for("/detections")["model"]["name"] == "face-short-range"
    assert "interrupted in state" in second.output()
    # ...and the same update then goes through.
    sub.client.publish(
        "edge-agent/cam-kill/cmd/model/update", json.dumps({"id": "k2", "version": "2.0.0"}), qos=1
    )
    reply = sub.wait_for("/cmd/model/update/reply", lambda r: r["id"] == "k2", timeout=120)
    assert reply["ok"] is True, reply
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0


@pytest.mark.parametrize(
    ("box", "passes"), [((0.35, 0.16, 0.53, 0.34), True), ((0.6, 0.6, 0.9, 0.9), False)]
)
def test_canary_images_must_show_what_the_manifest_expects(
    rig: Rig, registry: Path, keys, tmp_path: Path, box: tuple[float, ...], passes: bool
) -> None:
    folder = tmp_path / "canary"
    model = face_copy(folder)
    expect = [{"label": "face", "box": list(box), "min_iou": 0.5}]
    publish(
        model,
        registry,
        name="face",
        version="3.0.0",
        key=keys[0],
        channel=None,
        canaries=[(MEDIA / "astronaut.png", expect)],
    )
    if passes:
        rig.run("3.0.0")
        assert rig.updater.state.state == "idle", rig.updater.state.error
        assert rig.serving_version() == "3.0.0"
    else:
        refused(rig, "canary astronaut.png", version="3.0.0")
