"""Model updates from a signed registry over real HTTP: the happy path through a running agent,
every refusal with the old model still serving, probation rollback, the first update rolled back
to the configured model, replace, commit failures. The state table's own tests (an error and a
crash in every state) are in tests/test_update_states.py and tests/test_update_kills.py."""

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
from agent.detection.detector import file_sha256
from agent.errors import RegistryError
from agent.pipeline import Pipeline, Result
from agent.registry import updater as updater_module
from agent.registry.publish import publish
from agent.registry.signing import generate_key, load_private_key, sign_file
from agent.registry.updater import Job, Updater
from agent.serving import ModelSlot, RuntimeSpec
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

FACE_SHA = file_sha256(FACE)
CONFIGURED = "0.10.21"  # the version on the configured face model's card


class Rig:
    """A real pipeline on the sample face video, its model in a real model slot, and an Updater on
    a store in tmp: the daemon minus MQTT, so each refusal can be checked directly."""

    def __init__(
        self, store: Path, url: str, pub: Path, spec: RuntimeSpec | None = None, **registry: Any
    ) -> None:
        # A generous latency budget: tests run beside others on two cores; the one test about
        # latency sets its own.
        settings: dict[str, Any] = {"probation_s": 1.0, "latency_budget": 10.0, **registry}
        self.config = RegistryConfig(url=url, trusted_keys=[pub], model="face", **settings)
        self.store_root = store
        self.labels: list[str] = []
        self.done: list[tuple[Job, bool, dict[str, Any] | None, str | None]] = []
        self.source = open_source(str(MEDIA / "carphone_pristine.mp4"), fps=10, loop=True)
        self.results: list[Result] = []
        self.slot = ModelSlot(spec or RuntimeSpec(threads=1))
        self.updater = self.make_updater()
        self.updater.load_serving()
        self.pipeline = Pipeline(self.source, self.slot, self.results.append)
        self.source.start()
        self.pipeline.start()

    def make_updater(self) -> Updater:
        return Updater(
            self.config,
            self.store_root,
            self.slot,
            configured=(FACE, None),
            watched_labels=lambda: self.labels,
            recent_frames=lambda: [r.frame.image for r in self.results[-5:]],
            frame_stats=lambda: self.pipeline.stats.snapshot(),
            on_done=lambda *done: self.done.append(done),
        )

    def restart(self) -> Updater:
        """What a new process does at start: a fresh updater on the same store loads what it
        serves into the slot."""
        self.updater = self.make_updater()
        self.updater.load_serving()
        return self.updater

    def wait_frames(self, n: int = 5) -> None:
        target = len(self.results) + n
        deadline = time.monotonic() + 30
        while len(self.results) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.results) >= target

    def run(self, version: str = "2.0.0", name: str = "face", **kw: Any) -> None:
        self.wait_frames(3)
        self.updater._run(Job(name, version, "stable", **kw))

    def serving_version(self) -> str:
        assert self.pipeline.detector is self.slot.detector
        return self.slot.info.version

    def serves_the_configured_model(self) -> bool:
        return self.slot.info.sha256 == FACE_SHA and self.slot.info.origin == "config"

    def frames_run_on(self, version: str) -> None:
        """The next frames really run on ``version``."""
        self.wait_frames(2)
        assert self.results[-1].model_version == version

    def close(self) -> None:
        self.pipeline.stop()
        self.source.stop()
        self.slot.close()


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
        real_infer = detector.infer

        def infer(tensor: Any) -> Any:
            # passes warm-up and the trial (however many recent frames it runs on), then fails
            # on the frames it serves: what probation is there to catch
            if rig.slot.loaded and rig.slot.detector is detector:
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
    assert rig.updater.store.current("face") == CONFIGURED
    assert "2.0.0" not in rig.updater.store.versions("face")


# ----------------------------------------------------------------------- the agent, end to end


@pytest.mark.serial
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
            # the same 2 ms model: on a busy machine its trial runs can take 3x the last ones
            # (the budget's own refusal has its test)
            "latency_budget": 20,
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
    # Whoever subscribes next is told the model in service now (the retained status).
    status = subscriber("edge-agent/cam-upd/status").wait_for("/status")
    assert status["model"] == {"name": "face", "version": "2.0.0"}, status
    after = [sub.wait_for("/detections") for _ in range(3)]
    assert all(d["model"] == {"name": "face", "version": "2.0.0"} for d in after)
    stamps = [json.loads(p)["ts"] for t, p, _ in sub.seen if t.endswith("/detections")]
    gaps = np.diff(stamps)
    # fps 5: one frame every 0.2 s; the swap happens between two frames.
    assert gaps.max() < 3 * np.median(gaps) + 0.2, gaps
    # The first update rolls back to the configured model, through the updater.
    mark = len(sub.seen)
    sub.client.publish("edge-agent/cam-upd/cmd/model/rollback", json.dumps({"id": "r1"}), qos=1)
    reply = sub.wait_for("/cmd/model/rollback/reply", timeout=60)
    assert reply == {
        "id": "r1",
        "ok": True,
        "result": {"name": "face", "version": CONFIGURED, "rolled_back_from": "2.0.0"},
    }, reply
    # B/model told it before the reply: rolling back, then idle on the configured model.
    models = [json.loads(p) for t, p, _ in sub.seen[mark:] if t.endswith("/model")]
    assert models[0]["update"]["state"] == "rolling_back", models
    model = models[-1]
    assert model["update"]["state"] == "idle"
    assert (model["name"], model["version"], model["from"]) == ("face-short-range", CONFIGURED,
                                                                "config")
    assert model["last_update"]["action"] == "rollback"
    sub.wait_for("/detections", lambda d: d["model"]["name"] == "face-short-range")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


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


# ------------------------------------------------- the first update, replace, commit, rollback


def test_the_configured_model_is_imported_so_the_first_update_can_be_rolled_back(
    rig: Rig,
) -> None:
    store = rig.updater.store
    assert store.current("face") == CONFIGURED and rig.serves_the_configured_model()
    rig.run("2.0.0")
    assert rig.serving_version() == "2.0.0"
    assert store.links("face") == ("2.0.0", CONFIGURED)
    result = rig.updater.rollback("r1")
    assert result == {"name": "face", "version": CONFIGURED, "rolled_back_from": "2.0.0"}
    assert rig.serves_the_configured_model()
    assert rig.updater.state.state == "idle"
    assert rig.updater.state.history[-1]["action"] == "rollback"
    assert store.links("face") == (CONFIGURED, "2.0.0")
    rig.frames_run_on(CONFIGURED)
    # and what a rollback committed is what a restart serves
    rig.restart()
    assert rig.serves_the_configured_model()


def test_a_restart_after_an_update_serves_the_update(rig: Rig) -> None:
    rig.run("2.0.0")
    rig.restart()
    assert rig.serving_version() == "2.0.0" and rig.slot.info.origin == "store"


def test_a_damaged_store_model_is_not_served_after_a_restart(rig: Rig, caplog) -> None:
    rig.run("2.0.0")
    model = rig.updater.store.model_file("face", "2.0.0")
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte: the model may well still load
    model.write_bytes(bytes(data))
    rig.restart()
    assert rig.serves_the_configured_model()
    assert "it had when installed (damaged)" in caplog.text


@pytest.mark.parametrize(("state", "committed"), [("probation", True), ("downloading", False)])
def test_a_state_file_from_before_the_table_is_recovered_truthfully(
    rig: Rig, state: str, committed: bool
) -> None:
    """An agent upgraded in the middle of an update finds an updater.json without links."""
    if committed:  # the old agent had switched the links before it stopped
        rig.run("2.0.0")
    legacy = {"state": state, "name": "face", "version": "2.0.0", "from_version": CONFIGURED}
    (rig.store_root / "updater.json").write_text(json.dumps(legacy))
    updater = rig.restart()
    assert updater.state.state == ("idle" if committed else "failed")
    assert rig.serving_version() == ("2.0.0" if committed else CONFIGURED)
    assert updater.store.current("face") == rig.serving_version()


def test_a_changed_configured_model_wins_at_the_next_start(rig: Rig, tmp_path: Path) -> None:
    rig.run("2.0.0")
    other = tmp_path / "configured" / "face-full-range.tflite"
    other.parent.mkdir()
    shutil.copy(MODELS / "face-full-range.tflite", other)
    shutil.copy(MODELS / "face-full-range.card.yaml", other.with_suffix(".card.yaml"))
    updater = Updater(rig.config, rig.store_root, rig.slot, configured=(other, None))
    updater.load_serving()
    assert rig.slot.info.sha256 == file_sha256(other) and rig.slot.info.origin == "config"
    # the card's version is taken, so the new file gets a folder of its own; 2.0.0 is previous
    assert updater.store.links("face") == (f"{CONFIGURED}+config.{rig.slot.info.sha256[:8]}",
                                           "2.0.0")


def test_an_update_to_another_model_name_is_refused_unless_replace(
    rig: Rig, registry: Path, keys, tmp_path: Path
) -> None:
    # The same network under another name: only the name is what this test is about.
    model = face_copy(tmp_path / "other")
    publish(model, registry, name="other", version="1.0.0", key=keys[0])
    with pytest.raises(RegistryError, match=r'serves \'face\'.*"replace": true'):
        rig.updater.request(Job("other", "1.0.0", "stable"))
    rig.run("1.0.0", name="other", replace=True)
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "1.0.0" and rig.slot.info.name == "other"
    # what was committed serves after a restart, and a rollback goes back to the other name
    assert rig.restart().active_name() == "other"
    assert rig.slot.info.name == "other"
    assert rig.updater.rollback()["name"] == "face"
    assert rig.serves_the_configured_model()
    rig.restart()
    assert rig.serves_the_configured_model()


def test_an_update_whose_labels_miss_a_watched_one_is_refused_unless_replace(
    rig: Rig, registry: Path, keys, tmp_path: Path
) -> None:
    card = face_card()
    card["labels"] = ["nose"]
    folder = tmp_path / "nose"
    folder.mkdir()
    model = folder / "nose.tflite"
    shutil.copy(FACE, model)
    publish_file(registry, keys, folder, model, "3.0.0", card)
    rig.labels = ["face"]
    refused(rig, "does not detect face", version="3.0.0")
    assert '"replace": true' in (rig.updater.state.error or "")
    rig.run("3.0.0", replace=True)
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "3.0.0"


def test_a_server_error_while_resuming_keeps_the_partial_download(
    rig: Rig, server: RegistryServer
) -> None:
    server.truncate_after = 50_000
    refused(rig, "truncated")
    part = next(rig.store_root.glob("staging/face/2.0.0/*.part"))
    server.fail["/face/2.0.0/face.tflite"] = [503]
    refused(rig, "HTTP 503")
    assert part.stat().st_size == 50_000  # kept: the next try resumes it
    rig.run("2.0.0")
    assert rig.updater.state.state == "idle", rig.updater.state.error
    ranges = [r for p, r in server.requests if p.endswith(".tflite")]
    assert ranges[-1] == "bytes=50000-", ranges


def test_a_commit_that_fails_rolls_back_to_the_previous_model(rig: Rig, monkeypatch) -> None:
    store_cls = type(rig.updater.store)

    def full_disk(self: Any, name: str, version: str) -> None:
        raise RegistryError("accepted.json: No space left on device")

    monkeypatch.setattr(store_cls, "record_accepted", full_disk)
    rig.run("2.0.0")
    assert rig.updater.state.state == "failed"
    assert "No space left" in (rig.updater.state.error or "")
    # the links had switched before the failure: they are back, and so is the model
    assert rig.updater.store.links("face") == (CONFIGURED, None)
    assert rig.serves_the_configured_model()
    assert "2.0.0" not in rig.updater.store.versions("face")
    rig.frames_run_on(CONFIGURED)


def test_a_rollback_cannot_race_an_update(rig: Rig) -> None:
    rig.config.probation_s = 3
    rig.wait_frames(3)
    rig.updater.start()
    rig.updater.request(Job("face", "2.0.0", "stable", command_id="u"))
    deadline = time.monotonic() + 60
    while rig.updater.state.state != "probation" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.updater.state.state == "probation"
    with pytest.raises(RegistryError, match="an update is running"):
        rig.updater.rollback("r")
    with pytest.raises(RegistryError, match="already running"):
        rig.updater.request(Job("face", "1.0.0", "stable"))
    while not rig.done and time.monotonic() < deadline:
        time.sleep(0.05)
    rig.updater.stop()
    assert rig.done[-1][1] is True
    assert rig.updater.rollback("r")["version"] == CONFIGURED


def test_no_previous_version_says_what_the_store_holds(rig: Rig) -> None:
    with pytest.raises(RegistryError, match=rf"no previous version of face.*{CONFIGURED}"):
        rig.updater.rollback()
    assert rig.updater.state.state == "idle"


def test_being_on_the_requested_version_already_is_ok_with_a_note(rig: Rig) -> None:
    rig.run("2.0.0", command_id="a")
    since = rig.slot.info.since
    rig.run("2.0.0", command_id="b")
    job, ok, result, error = rig.done[-1]
    assert job.command_id == "b" and ok is True and error is None
    assert result == {"name": "face", "version": "2.0.0", "note": "already the current model"}
    assert rig.slot.info.since == since


def test_since_changes_only_when_the_serving_model_does(rig: Rig) -> None:
    seen: list[tuple[str, float]] = []
    rig.slot.subscribe(lambda info: seen.append((info.origin, info.since)))
    rig.run("2.0.0")
    assert [o for o, _ in seen] == ["store (probation)", "store"]
    assert seen[0][1] == seen[1][1]  # the commit re-served the same model: same "since"


def test_a_missing_version_says_which_versions_exist(rig: Rig) -> None:
    refused(rig, "published versions: 1.0.0, 2.0.0", version="9.9.9")
