"""State files damaged by a power cut never stop the agent: a garbage outbox, live-settings
overlay or updater state is set aside as ``<name>.damaged-<UTC time>``, logged at ERROR with its
path, listed in the retained status, and the agent starts with a fresh one (DESIGN.md 9)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import yaml

from agent.config import Config
from agent.damaged import damaged_files
from agent.overlay import with_overlay
from agent.publish.outbox import Outbox
from agent.registry.signing import generate_key
from tests.conftest import MEDIA

STAMP = r"\.damaged-\d{8}T\d{6}Z(-\d+)?$"


def aside(folder: Path, name: str) -> list[Path]:
    """The set-aside copies of ``folder/name`` (``name`` may have folders in it)."""
    where = (folder / name).parent
    base = Path(name).name
    return [p for p in where.iterdir() if re.fullmatch(re.escape(base) + STAMP, p.name)]


def test_a_garbage_outbox_is_set_aside_and_a_fresh_one_works(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is no database, a power cut left it so" * 100)
    box = Outbox(path)
    assert box.put("t", lambda s: b"x") == 1
    box.close()
    [moved] = aside(tmp_path, "outbox.sqlite")
    assert moved.read_bytes().startswith(b"this is no database")
    assert any(d["file"] == str(path) and d["moved_to"] == str(moved) for d in damaged_files())


def test_a_database_that_is_not_an_outbox_is_set_aside(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE messages (x)")
    db.commit()
    db.close()
    box = Outbox(path)
    assert box.put("t", lambda s: b"x") == 1
    box.close()
    assert len(aside(tmp_path, "outbox.sqlite")) == 1


def test_an_overlay_with_settings_that_no_longer_fit_is_set_aside(tmp_path: Path) -> None:
    config = Config.model_validate({"store": {"path": str(tmp_path)}})
    config.overlay_path.write_text(yaml.safe_dump({"detection": {"score_threshold": 7}}))
    assert with_overlay(config) == config
    assert not config.overlay_path.exists()
    [moved] = aside(tmp_path, "config.overlay.yaml")
    entry = next(d for d in damaged_files() if d["moved_to"] == str(moved))
    assert "score_threshold" in str(entry["reason"])


def test_agent_starts_on_damaged_state_files_and_lists_them_in_its_status(
    broker, subscriber, write_config, run_agent, assets, tmp_path
):
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(b"\x00\xffnot sqlite" * 500)
    (state / "config.overlay.yaml").write_bytes(b"detection: {score_threshold: [0.5\n\xff")
    (state / "updater.json").write_text('{"state": "downloading", "name": "fa')  # cut short
    store_model = state / "models" / "face"
    store_model.mkdir(parents=True)
    (store_model / "current").write_bytes(b"\x00\x00")  # a plain file where a link should be
    _, pub = generate_key(tmp_path / "keys" / "registry.key")
    (tmp_path / "registry").mkdir()
    sub = subscriber("edge-agent/cam-damaged/#")
    agent = run_agent(
        write_config(
            {
                "device_id": "cam-damaged",
                "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
                "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
                "mqtt": {"host": "127.0.0.1", "port": broker.port},
                "registry": {
                    "url": (tmp_path / "registry").as_uri(),
                    "trusted_keys": [str(pub)],
                    "model": "face",
                },
            }
        )
    )
    status = sub.wait_for("/status", lambda s: s["state"] == "online")
    assert sub.wait_for("/detections", lambda d: d["seq"] == 1)["objects"]  # a fresh outbox
    damaged = {
        str(Path(d["file"]).relative_to(state)): d for d in status["damaged"]
    }
    assert set(damaged) == {
        "outbox.sqlite",
        "config.overlay.yaml",
        "updater.json",
        "models/face/current",
    }, status
    assert status["model"]["name"] == "face-short-range"  # the configured model serves
    for name, entry in damaged.items():
        [moved] = aside(state, name)
        assert entry["moved_to"] == str(moved)
    assert aside(state, "outbox.sqlite")[0].read_bytes().startswith(b"\x00\xffnot sqlite")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    out = agent.output()
    for name in damaged:
        assert re.search(rf"ERROR agent.damaged: state file {re.escape(str(state / name))} ", out)
    assert "Traceback" not in out
