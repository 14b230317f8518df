"""The model slot (agent/serving.py): the one owner of the model in service. Every load uses the
configured runtime options; a swap happens between two frames and hands the old model back only
when its frame is done; after a swap every reader (retained status, B/model, Home Assistant
discovery, systemd STATUS=, detections) names the new model, and stop closes the one serving."""

from __future__ import annotations

import ast
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from agent.app import Agent
from agent.config import ModelConfig, load_config
from agent.detection import Detector
from agent.errors import ModelLoadError
from agent.pipeline import Pipeline, Result
from agent.serving import ModelSlot, RuntimeSpec
from agent.sources import open_source
from tests import modelgen
from tests.conftest import MEDIA, MODELS, ROOT, Subscriber
from tests.test_service import NotifySocket

SHORT = MODELS / "face-short-range.tflite"
FULL = MODELS / "face-full-range.tflite"
# Available in every onnxruntime wheel beside the CPU, so a load without the configured
# providers is told apart from one with them.
PROVIDERS = ("AzureExecutionProvider", "CPUExecutionProvider")


def is_closed(detector: Detector) -> bool:
    try:
        detector.detect(np.zeros((64, 64, 3), np.uint8))
    except AttributeError:  # the runtime let go of its interpreter or session
        return True
    return False


def tiny_onnx(folder: Path) -> tuple[Path, Path]:
    """A small YOLOv8-shaped ONNX model with its card."""
    model = modelgen.yolo_v8_onnx(folder, modelgen.example_yolo_v8(), name="tiny")
    card = {
        "name": "tiny",
        "version": "1.0.0",
        "format": "onnx",
        "family": "yolo",
        "yolo_version": "v8",
        "input": {"width": 64, "height": 64, "layout": "NCHW", "color": "RGB"},
        "labels": ["person", "car"],
    }
    path = folder / "tiny.card.yaml"
    path.write_text(yaml.safe_dump(card))
    return model, path


# ------------------------------------------------------------------------------ one load path


def test_every_load_of_the_slot_uses_the_configured_runtime_options(tmp_path: Path) -> None:
    model, card = tiny_onnx(tmp_path)
    spec = RuntimeSpec.from_config(
        ModelConfig(path=model, card=card, threads=2, providers=list(PROVIDERS))
    )
    assert spec == RuntimeSpec(runtime="auto", threads=2, providers=PROVIDERS)
    slot = ModelSlot(spec)
    # A trial or rollback load, and the trial's baseline (a twin of the model in service).
    loaded = slot.load(model, card=card)
    slot.serve(loaded, origin="config")
    twin = slot.load_twin()
    for detector in (loaded, twin):
        session = detector.runtime._session  # type: ignore[attr-defined]
        assert session.get_providers() == list(PROVIDERS)
        assert session.get_session_options().intra_op_num_threads == 2
    assert twin.card == loaded.card and twin is not loaded
    twin.close()
    slot.close()
    assert is_closed(loaded)


# ai-edge-litert's Delegate.__del__ fails on a delegate whose library did not load (it never set
# its _library); that is the library's, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_slot_passes_the_tflite_delegate_to_every_load(tmp_path: Path) -> None:
    delegate = tmp_path / "libedgetpu.so.1"
    slot = ModelSlot(RuntimeSpec.from_config(ModelConfig(path=SHORT, delegate=str(delegate))))
    with pytest.raises(ModelLoadError, match=f"cannot load TFLite delegate {delegate}"):
        slot.load(SHORT)
    slot.serve(Detector.load(SHORT, threads=1), origin="config")
    with pytest.raises(ModelLoadError, match="delegate"):
        slot.load_twin()  # the trial's baseline too
    slot.close()


# ------------------------------------------------------------------------ swap between frames


def test_a_replaced_model_comes_back_only_after_the_frame_that_uses_it(tmp_path: Path) -> None:
    old = Detector.load(SHORT, threads=1)
    slot = ModelSlot(RuntimeSpec(threads=1))
    slot.serve(old, origin="config")
    source = open_source(str(MEDIA / "carphone_pristine.mp4"), fps=20, loop=True)
    results: list[Result] = []
    pipeline = Pipeline(source, slot, results.append)
    hold, inside, release = threading.Event(), threading.Event(), threading.Event()
    real_infer = old.infer

    def infer(tensor: Any) -> Any:
        if hold.is_set():
            inside.set()
            release.wait(30)  # a frame in the middle of its inference
        return real_infer(tensor)

    old.infer = infer  # type: ignore[method-assign]
    source.start()
    pipeline.start()
    try:
        deadline = time.monotonic() + 30
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        hold.set()
        assert inside.wait(30)
        new = slot.load(FULL)
        handed_back: list[Detector | None] = []
        swapper = threading.Thread(
            target=lambda: handed_back.append(slot.serve(new, origin="store"))
        )
        swapper.start()
        time.sleep(0.5)
        # The next frame gets the new model at once, but the old one is not handed back (to be
        # closed) while its frame still runs.
        assert slot.detector is new and slot.info.name == "face-full-range"
        assert swapper.is_alive() and not handed_back
        held = len(results)
        release.set()
        swapper.join(30)
        assert handed_back == [old]
        assert len(results) > held and results[held].model_name == "face-short-range"
        old.close()  # safe now: no frame runs on it
        target = len(results) + 3
        while len(results) < target and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert [r.model_name for r in results[-3:]] == ["face-full-range"] * 3
        assert pipeline.stats.errors == 0
    finally:
        release.set()
        pipeline.stop()
        source.stop()
        slot.close()
    assert is_closed(new)


# ---------------------------------------------------------------- every reader asks the slot


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def retained(port: int, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    """The retained message on ``topic``, as a fresh subscriber gets it."""
    sub = Subscriber(port, [topic])
    try:
        return sub.wait_for(topic, timeout=timeout)
    finally:
        sub.close()


def retained_discovery(port: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    sub = Subscriber(port, ["homeassistant/#"])
    try:
        time.sleep(timeout)  # retained configs arrive at once; wait for all of them
        bodies = []
        while not sub.messages.empty():
            topic, payload, retain = sub.messages.get()
            if retain and topic.endswith("/config"):
                bodies.append(json.loads(payload))
        return bodies
    finally:
        sub.close()


def test_after_a_swap_status_model_discovery_and_systemd_name_the_new_model(
    broker, tmp_path: Path, notify_socket: NotifySocket, monkeypatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-slot",
                "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
                "model": {"path": str(SHORT), "threads": 1},
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "homeassistant": {},
                "store": {"path": str(tmp_path / "state")},
                "service": {"stop_flush_s": 1},
            }
        )
    )
    base = "edge-agent/cam-slot"
    sub = Subscriber(broker.port, [f"{base}/#"])
    agent = Agent(load_config(cfg), cfg)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        notify_socket.wait_for("READY=1")
        before = sub.wait_for("/model", lambda m: m.get("name") == "face-short-range")
        first = {"name": "face-short-range", "version": "0.10.21"}
        assert retained(broker.port, f"{base}/status")["model"] == first
        assert {d["device"]["model"] for d in retained_discovery(broker.port)} == {
            "face-short-range"
        }
        old = agent.slot.detector

        swapped = time.monotonic()
        replaced = agent.slot.serve(agent.slot.load(FULL), origin="store")
        assert replaced is old
        new = agent.slot.detector

        new_model = {"name": "face-full-range", "version": "0.10.21"}
        status = retained(broker.port, f"{base}/status")
        assert status["state"] == "online" and status["model"] == new_model, status
        model = retained(broker.port, f"{base}/model")
        assert {k: model[k] for k in ("name", "version", "from")} == {**new_model, "from": "store"}
        assert model["since"] > before["since"]
        assert {d["device"]["model"] for d in retained_discovery(broker.port)} == {
            "face-full-range"
        }
        told = [
            line
            for ts, msg in list(notify_socket.messages)
            if ts >= swapped
            for line in msg.splitlines()
            if line.startswith("STATUS=")
        ]
        assert told and told[0].startswith("STATUS=model face-full-range 0.10.21"), told
        live = sub.wait_for("/model", lambda m: m.get("name") == "face-full-range")
        assert live["since"] == model["since"]
        detection = sub.wait_for("/detections", lambda d: d["model"] == new_model)
        assert detection["objects"]
        metrics = agent.metrics()
        assert metrics["model"] == new_model

        # The same model served again (e.g. committed after probation): since stays.
        agent.slot.serve(new, origin="store")
        again = sub.wait_for("/model")  # the next one
        assert again["since"] == model["since"]

        agent.request_stop()
        runner.join(30)
        assert not runner.is_alive()
        # stop() closed the model in service, not the one it replaced (the caller owns that).
        assert is_closed(new)
        assert not is_closed(old)
        old.close()
    finally:
        agent.request_stop()
        runner.join(30)
        sub.close()


# ------------------------------------------------------------------------ the import graph


def _imports(module: str) -> set[str]:
    """Every ``agent.*`` module that ``module``'s source imports, at any depth of the file
    (functions and ``if TYPE_CHECKING:`` blocks included)."""
    path = (ROOT / module.replace(".", "/")).with_suffix(".py")
    if not path.is_file():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "agent" and _is_module(m)}


def _is_module(name: str) -> bool:
    folder = ROOT / name.replace(".", "/")
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def test_commands_do_not_import_the_app() -> None:
    seen: set[str] = set()
    todo = ["agent.commands"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imports(module) - seen)
    assert "agent.commands" in seen and "agent.registry.updater" in seen  # the walk works
    assert "agent.app" not in seen, sorted(seen)
