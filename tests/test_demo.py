"""The newcomer's demo (`python -m agent.demo`, what scripts/demo runs) keeps its state to itself:
never the service's store, whatever the environment or config says the store is."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import ASSETS_DIR
from agent.default_model import default_model
from agent.localbroker import LocalBroker


def run_demo(tmp_path: Path, port: int, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        # Where the agent's default store would be: systemd's StateDirectory (what root and the
        # unit get: /var/lib/edge-agent) and a user's XDG state folder.
        "STATE_DIRECTORY": str(tmp_path / "service"),
        "XDG_STATE_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.demo", "--seconds", "15", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out


def first_seq(out: str) -> int:
    found = re.search(r"/detections seq=(\d+) ", out)
    assert found, out
    return int(found.group(1))


def nothing_in(*folders: Path) -> bool:
    return all(not f.exists() or not any(f.rglob("*")) for f in folders)


def test_demo_uses_a_fresh_folder_of_its_own_and_removes_it(
    broker: LocalBroker, tmp_path: Path, assets: Path
) -> None:
    code, out = run_demo(tmp_path, broker.port)
    assert code == 0, out
    assert first_seq(out) == 1, out  # a fresh outbox: nothing carried over from anyone
    # it serves the default person model setup chose (the agent's log says what it loaded), and
    # says which and why
    assert f"demo: model {default_model(ASSETS_DIR)} (" in out, out
    assert f" from {default_model(ASSETS_DIR)} [config]" in out, out
    assert nothing_in(tmp_path / "service", tmp_path / "xdg", tmp_path / "home"), out
    state = Path(re.search(r"demo: state in (\S+)", out).group(1))  # type: ignore[union-attr]
    assert not state.exists()  # a temporary folder, removed at the end


@pytest.mark.slow
def test_demo_state_option_keeps_the_folder_even_with_a_service_config(
    broker: LocalBroker, tmp_path: Path, assets: Path
) -> None:
    service = tmp_path / "service"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"store": {"path": str(service)}, "source": {"loop": True}})
    )
    kept = tmp_path / "demo-state"
    code, out = run_demo(tmp_path, broker.port, "--state", str(kept), "-c", str(config))
    assert code == 0, out
    assert first_seq(out) == 1, out
    assert (kept / "outbox.sqlite").is_file()
    assert nothing_in(service, tmp_path / "xdg", tmp_path / "home"), out
    # A second demo in the same folder continues its own sequence.
    code, out = run_demo(tmp_path, broker.port, "--state", str(kept))
    assert code == 0, out
    assert first_seq(out) > 1, out


def test_demo_sets_up_the_runtime_set_and_the_tests_the_full_one() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    demo = (root / "scripts" / "demo").read_text()
    assert re.search(r"^scripts/setup --runtime$", demo, re.M), demo
    assert re.search(r"^scripts/setup$", (root / "scripts" / "test").read_text(), re.M)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["demo"]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in runtime}
    dev_only = {"pytest", "ruff", "mypy", "torch", "onnx", "hypothesis", "pycocotools", "jinja2"}
    assert not names & dev_only


def test_fetch_assets_fetches_only_the_named_assets(assets: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    fetch = [sys.executable, str(root / "scripts" / "fetch_assets.py")]
    out = subprocess.run(
        [*fetch, "person-yolov8s.onnx", "media/bikes.mp4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "those assets present and verified" in out.stdout
    bad = subprocess.run([*fetch, "person.onnx"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "person.onnx" in bad.stderr and "assets.lock" in bad.stderr
