"""A real SIGKILL of a real agent process (``python -m agent run``, real mosquitto, a real
registry on loopback) in every state of the updater's transition table, ``rolling_back``
included, each followed by a restart that must serve a verified model and say so in the retained
``B/model`` and ``B/status``.

The agent is stopped in a given state by ``EDGE_AGENT_TEST_PAUSE_IN=<state>`` (agent.registry.
updater): the updater persists the state, then waits there for good, and the test kills it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.registry.publish import publish
from agent.registry.signing import generate_key
from agent.registry.transitions import State
from agent.registry.updater import PAUSE_ENV
from tests.conftest import MEDIA
from tests.registry_server import RegistryServer
from tests.test_update_states import UPDATE_STATES, after_restart
from tests.test_updates import CONFIGURED, FACE, face_copy

DEVICE = "cam-kill"
BASE = f"edge-agent/{DEVICE}"

KILLS: list[tuple[State, str]] = [*((s, "update") for s in UPDATE_STATES)]
KILLS.append(("rolling_back", "rollback"))


@pytest.fixture
def registry_setup(tmp_path: Path) -> Iterator[tuple[RegistryServer, Path]]:
    key, pub = generate_key(tmp_path / "keys" / "publisher.key")
    model = face_copy(tmp_path / "src")
    publish(model, tmp_path / "registry", name="face", version="2.0.0", key=key)
    with RegistryServer(tmp_path / "registry") as server:
        yield server, pub


def send(sub: Any, name: str, body: dict[str, Any]) -> None:
    sub.client.publish(f"{BASE}/cmd/{name}", json.dumps(body), qos=1)


@pytest.mark.parametrize(("state", "action"), KILLS)
def test_sigkill_in_every_state_restarts_on_a_verified_model_it_reports(
    state: State,
    action: str,
    broker: Any,
    subscriber: Any,
    write_config: Any,
    run_agent: Any,
    registry_setup: tuple[RegistryServer, Path],
) -> None:
    server, pub = registry_setup
    config = write_config(
        {
            "device_id": DEVICE,
            "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 4, "loop": True},
            "model": {"path": str(FACE), "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "registry": {
                "url": server.url,
                "trusted_keys": [str(pub)],
                "model": "face",
                "probation_s": 0.5,
                "latency_budget": 10,
            },
        }
    )
    sub = subscriber(f"{BASE}/#")
    first = run_agent(config, env={PAUSE_ENV: state})
    sub.wait_for("/detections", timeout=60)
    if action == "rollback":
        send(sub, "model/update", {"id": "u0", "version": "2.0.0"})
        reply = sub.wait_for("/cmd/model/update/reply", timeout=90)
        assert reply["ok"] is True, reply
        send(sub, "model/rollback", {"id": "r1"})
    else:
        send(sub, "model/update", {"id": "u1", "version": "2.0.0"})
    sub.wait_for("/model", lambda m: m.get("update", {}).get("state") == state, timeout=90)
    first.signal(signal.SIGKILL)
    first.wait(10)

    final = after_restart(state, action)
    version = "2.0.0" if (final == "idle") == (action == "update") else CONFIGURED
    origin = "config" if version == CONFIGURED else "store"

    def reported(m: dict[str, Any]) -> bool:
        last = m.get("last_update") or {}
        told = (
            "after restart" in (last.get("note") or "")
            if final == "idle"
            else "interrupted" in (last.get("error") or "")
        )
        return (
            m.get("version") == version
            and m.get("from") == origin
            and m["update"]["state"] == final
            and told
        )

    second = run_agent(config)
    sub.wait_for("/model", reported, timeout=60)
    # (detections queued before the kill are delivered first, from the outbox)
    sub.wait_for("/detections", lambda d: d["model"]["version"] == version, timeout=60)
    # What a subscriber that comes later is told (retained): the same.
    later = subscriber(f"{BASE}/model", f"{BASE}/status")
    later.wait_for("/model", reported, timeout=30)
    status = later.wait_for(
        "/status", lambda m: m["state"] == "online" and m["model"]["version"] == version
    )
    assert status["model"]["version"] == version
    assert "Traceback" not in second.output()
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
