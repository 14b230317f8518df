"""scripts/release: the wheel carries a name that is free on PyPI and keeps the `edge-agent`
command; the .deb holds that wheel and every runtime dependency for the suite's Python, its
postinst installs them with no network, and its postrm keeps the config and the state on remove
and takes them on purge. The .deb test builds a ~130 MB package and installs it (about two
minutes on 2 busy cores): marked slow, so `scripts/test --slow` runs it, CI does not; the same
package in an emulated Debian root: `sudo scripts/check-arm64 --deb`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from agent.config import parse_config
from tests.conftest import ROOT

RELEASE = ROOT / "scripts" / "release"
WHEEL = f"edge_detection_agent-{__version__}-py3-none-any.whl"


def release(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(RELEASE), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def host_suite() -> str | None:
    """bookworm or trixie where this host is that Debian (its /usr/bin/python3 is the suite's)."""
    try:
        fields = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return None
    name = fields.get("VERSION_CODENAME", "").strip('"')
    return name if fields.get("ID") == "debian" and name in ("bookworm", "trixie") else None


def test_the_wheel_is_edge_detection_agent_and_keeps_the_edge_agent_command(
    tmp_path: Path,
) -> None:
    out = release("--out", str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [WHEEL]
    assert str(tmp_path / WHEEL) in out.stdout
    with zipfile.ZipFile(tmp_path / WHEEL) as whl:
        names = whl.namelist()
        info = f"edge_detection_agent-{__version__}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert "Name: edge-detection-agent\n" in metadata  # `edge-agent` on PyPI is another project
    assert "edge-agent = agent.cli:main" in entry_points
    assert "agent/cli.py" in names
    assert not [n for n in names if n.endswith((".onnx", ".tflite", ".pt"))]  # no weights


def test_a_bad_suite_or_architecture_is_named(tmp_path: Path) -> None:
    for args, word in ((["--suite", "buster"], "buster"), (["--arch", "riscv64"], "riscv64")):
        result = subprocess.run(
            [str(RELEASE), "--deb", "--out", str(tmp_path), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2
        assert word in result.stderr and result.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.timeout(900)
@pytest.mark.slow  # builds and installs a ~130 MB .deb (minutes): scripts/test --slow
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
@pytest.mark.skipif(host_suite() is None, reason="not a Debian bookworm or trixie host")
@pytest.mark.skipif(
    subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"], capture_output=True).returncode,
    reason="the system python3 has no venv (apt-get install python3-venv)",
)
def test_the_deb_installs_offline_and_remove_keeps_the_state_until_purge(tmp_path: Path) -> None:
    suite = host_suite()
    assert suite is not None
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    py = {"bookworm": "3.11", "trixie": "3.13"}[suite]
    out = tmp_path / "dist"
    release("--deb", "--suite", suite, "--out", str(out))
    deb = out / f"edge-agent_{__version__}-1~deb{12 if suite == 'bookworm' else 13}_{arch}.deb"
    assert sorted(p.name for p in out.iterdir()) == sorted([WHEEL, deb.name])

    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert field("Package") == "edge-agent" and field("Architecture") == arch
    major, minor = py.split(".")
    depends = field("Depends")
    assert f"python3 (>= {py}~), python3 (<< {major}.{int(minor) + 1}~)" in depends
    assert "python3-venv" in depends
    assert "procps" in depends  # the unit's ExecReload=/bin/kill (not in a minimal trixie)
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    files = [line.split()[5] for line in listing.splitlines()]
    assert "./usr/lib/systemd/system/edge-agent.service" in files
    assert "./usr/bin/edge-agent -> /opt/edge-agent/venv/bin/edge-agent" in listing
    wheels = {Path(f).name.split("-")[0] for f in files if f.startswith("./opt/edge-agent/wheels/")}
    assert {"edge_detection_agent", "onnxruntime", "ai_edge_litert", "numpy"} <= wheels
    assert "onnx" not in wheels and "pycocotools" not in wheels  # no toolchain extras
    assert not [f for f in files if f.endswith((".onnx", ".tflite"))]  # weights are fetched

    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    unit = root / "usr/lib/systemd/system/edge-agent.service"
    assert unit.read_bytes() == (ROOT / "systemd" / "edge-agent.service").read_bytes()
    # No index, no pip config, an index URL that refuses: the device may be offline.
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DPKG_ROOT": str(root),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    }

    def maint(script: str, action: str) -> None:
        result = subprocess.run(
            [str(root / "DEBIAN" / script), action],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    maint("postinst", "configure")
    venv = root / "opt/edge-agent/venv"
    version = subprocess.run(
        [str(venv / "bin/edge-agent"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"edge-agent {__version__}"
    assert (venv / f"lib/python{py}").is_dir()  # the system python3: the suite's
    config = parse_config(
        (root / "etc/edge-agent/config.yaml").read_text(), "config.yaml", environ={}
    )
    assert config.device_id == socket.gethostname()
    assert str(config.model.path) == "/opt/edge-agent/models/person-yolov8s.onnx"
    password = root / "etc/edge-agent/mqtt.password"
    assert password.stat().st_mode & 0o777 == 0o600 and password.read_bytes() == b""
    # The vendored runtime runs a real model.
    detect = subprocess.run(
        [str(venv / "bin/edge-agent"), "detect", "--json",
         str(ROOT / "models/face-short-range.tflite"), str(ROOT / "models/media/astronaut.png")],
        capture_output=True, text=True, timeout=120, env={**env, "ORT_DISABLE_TELEMETRY": "1"},
    )
    assert detect.returncode == 0, detect.stderr
    assert [o["label"] for o in json.loads(detect.stdout)["objects"]] == ["face"]

    # The state as systemd makes it for DynamicUser= (StateDirectory=), an outbox in it.
    state = root / "var/lib/private/edge-agent"
    (state / "outbox").mkdir(parents=True)
    (state / "outbox" / "queued").write_text("undelivered")
    (root / "var/lib/edge-agent").symlink_to("private/edge-agent")
    maint("postrm", "remove")
    assert not (root / "opt/edge-agent").exists()
    assert (root / "var/lib/edge-agent/outbox/queued").read_text() == "undelivered"
    assert (root / "etc/edge-agent/config.yaml").is_file()
    maint("postrm", "purge")
    assert not (root / "etc/edge-agent").exists()
    assert not (root / "var/lib/edge-agent").is_symlink() and not state.exists()
