"""MQTT security against a real mosquitto and real certificates made here: TLS with verification,
a wrong CA (refused, reported, retried), ``insecure``, mutual TLS, user name and password (a wrong
one stops the agent with exit code 78), and a missing CA file reported as a config error."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.app import EXIT_CONFIG
from agent.config import MqttConfig, TlsConfig
from agent.errors import PublishError
from agent.localbroker import LocalBroker, free_port, mosquitto_binary, port_open
from agent.publish.mqtt import tls_context
from tests.conftest import MEDIA, AgentProcess, Subscriber

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

# --- a small PKI, made with `cryptography` ---


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path

    @classmethod
    def make(cls, folder: Path, cn: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, _write_cert(cert, folder / f"{cn}.crt"))

    def issue(
        self, folder: Path, cn: str, *, server: bool
    ) -> tuple[Path, Path]:  # (certificate, key)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return _write_cert(cert, folder / f"{cn}.crt"), _write_key(key, folder / f"{cn}.key")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Ca.make(folder, "edge-test-ca")
    other = Ca.make(folder, "unrelated-ca")
    server_cert, server_key = ca.issue(folder, "localhost", server=True)
    client_cert, client_key = ca.issue(folder, "cam-client", server=False)
    return Pki(ca.cert_file, server_cert, server_key, client_cert, client_key, other.cert_file)


# --- brokers, agents, subscribers ---


@dataclass
class SecureBroker:
    """A mosquitto with the listener under test on ``port`` and a plain anonymous listener on
    ``plain_port`` for the test's own subscriber."""

    broker: LocalBroker
    plain_port: int

    @property
    def port(self) -> int:
        return self.broker.port


@pytest.fixture
def secure_broker() -> Iterator[Callable[[str], SecureBroker]]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    started: list[LocalBroker] = []

    def start(listener: str) -> SecureBroker:
        plain = free_port()
        # Run as root, mosquitto drops to user "mosquitto", which cannot read pytest's 0700
        # temporary folders; "user root" keeps it root (ignored when not started as root).
        b = LocalBroker(
            listener_config=(
                f"user root\n{listener}\nlistener {plain} 127.0.0.1\nallow_anonymous true\n"
            )
        )
        started.append(b)
        b.start()
        # start() waits for the first listener only; mosquitto opens the second a moment later.
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", plain) and time.monotonic() < deadline:
            time.sleep(0.05)
        return SecureBroker(b, plain)

    yield start
    for b in started:
        b.__exit__(None, None, None)


def tls_listener(pki: Pki, extra: str = "allow_anonymous true") -> str:
    return f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n{extra}"


@pytest.fixture
def subscribe() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, *topics: str) -> Subscriber:
        s = Subscriber(port, list(topics) or ["#"])
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def agent_config(
    port: int, assets: Path, device_id: str, state: Path, **mqtt: Any
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "source": {"uri": str(MEDIA / "carphone_pristine.mp4"), "fps": 10, "loop": True},
        "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, **mqtt},
        # Several agents in one test: each keeps its outbox to itself.
        "store": {"path": str(state / device_id)},
    }


def wait_for_log(agent: AgentProcess, text: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = agent.output()
        if text.lower() in out.lower():
            return out
        if agent.proc.poll() is not None:
            break
        time.sleep(0.1)
    out = agent.output()
    raise AssertionError(
        f"{text!r} not in the agent's log within {timeout} s "
        f"(exit code {agent.proc.poll()}):\n{out}"
    )


def detections_from(sub: Subscriber, device_id: str) -> list[str]:
    """Detection topics of ``device_id`` the subscriber has received so far."""
    while not sub.messages.empty():
        sub.seen.append(sub.messages.get_nowait())
    return [t for t, _, _ in sub.seen if t == f"edge-agent/{device_id}/detections"]


def edge_agent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- tls_context() ---


def test_tls_context_verifies_the_broker_by_default(pki: Pki) -> None:
    ctx = tls_context(MqttConfig(tls=TlsConfig(ca_file=pki.ca)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    # Without a CA file: the system's CA store, still verified.
    ctx = tls_context(MqttConfig(tls=TlsConfig()))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True


def test_tls_context_min_version_sets_the_lowest_protocol(pki: Pki) -> None:
    for version, expected in (("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3)):
        ctx = tls_context(MqttConfig(tls=TlsConfig(ca_file=pki.ca, min_version=version)))
        assert ctx.minimum_version == expected


def test_tls_context_insecure_turns_verification_off_and_warns(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="agent.mqtt"):
        ctx = tls_context(MqttConfig(tls=TlsConfig(ca_file=pki.ca, insecure=True)))
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.check_hostname is False
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_tls_context_error_names_the_missing_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "no-such-ca.crt"
    with pytest.raises(PublishError, match=r"no-such-ca\.crt"):
        tls_context(MqttConfig(tls=TlsConfig(ca_file=missing)))
    with pytest.raises(PublishError, match=r"no-such-client\.crt"):
        tls_context(
            MqttConfig(
                tls=TlsConfig(
                    ca_file=pki.ca,
                    cert_file=tmp_path / "no-such-client.crt",
                    key_file=pki.client_key,
                )
            )
        )


def test_tls_min_version_1_3_refuses_a_tls_1_2_only_broker(pki: Pki) -> None:
    # mosquitto's tls_version is a floor, not a cap: a TLS 1.2-only server made with ssl instead.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:  # the refused handshake, or the client closing
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def handshake(min_version: str) -> str:
        ctx = tls_context(MqttConfig(tls=TlsConfig(ca_file=pki.ca, min_version=min_version)))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return str(tls.version())

    try:
        assert handshake("1.2") == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            handshake("1.3")
    finally:
        server.join(5)
        listener.close()


# --- the agent as a real process ---


def test_tls_with_verification_delivers_detections(
    pki, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(tls_listener(pki))
    sub = subscribe(broker.plain_port, "edge-agent/cam-tls/#")
    agent = run_agent(
        write_config(
            agent_config(broker.port, assets, "cam-tls", tmp_path, tls={"ca_file": str(pki.ca)})
        )
    )
    sub.wait_for("/status", lambda s: s["state"] == "online")
    sub.wait_for("/detections")
    out = agent.output()
    assert f"MQTT connected to 127.0.0.1:{broker.port}" in out
    assert "verification is OFF" not in out
    assert agent.proc.poll() is None, out


def test_wrong_ca_is_refused_reported_and_retried(
    pki, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(tls_listener(pki))
    sub = subscribe(broker.plain_port, "edge-agent/#")
    agent = run_agent(
        write_config(
            agent_config(
                broker.port, assets, "cam-wrong-ca", tmp_path, tls={"ca_file": str(pki.other_ca)}
            )
        )
    )
    wait_for_log(agent, "certificate verify failed")
    # Still running, and trying again (paho's backoff starts at 1 s).
    deadline = time.monotonic() + 10
    while agent.output().lower().count("certificate verify failed") < 2:
        assert agent.proc.poll() is None, agent.output()
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)
    out = agent.output()
    assert agent.proc.poll() is None, out
    failures = [line for line in out.splitlines() if "certificate verify failed" in line]
    assert all(f"127.0.0.1:{broker.port}" in line for line in failures), out
    stamps = [dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in failures]
    assert (stamps[1] - stamps[0]).total_seconds() >= 0.9, "retried without backoff:\n" + out
    assert "MQTT connected" not in out
    assert "Traceback" not in out
    assert detections_from(sub, "cam-wrong-ca") == []
    assert not any(t.startswith("edge-agent/cam-wrong-ca/") for t, _, _ in sub.seen)


def test_insecure_connects_despite_a_wrong_ca_and_warns(
    pki, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(tls_listener(pki))
    sub = subscribe(broker.plain_port, "edge-agent/cam-insecure/#")
    tls = {"ca_file": str(pki.other_ca), "insecure": True}
    agent = run_agent(
        write_config(agent_config(broker.port, assets, "cam-insecure", tmp_path, tls=tls))
    )
    sub.wait_for("/detections")
    out = agent.output()
    assert "WARNING agent.mqtt: MQTT TLS certificate verification is OFF" in out
    assert agent.proc.poll() is None, out


def test_mutual_tls_needs_the_client_certificate(
    pki, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(
        tls_listener(
            pki, "require_certificate true\nuse_identity_as_username true\nallow_anonymous false"
        )
    )
    sub_nocert = subscribe(broker.plain_port, "edge-agent/cam-nocert/#")
    sub_mtls = subscribe(broker.plain_port, "edge-agent/cam-mtls/#")
    only_ca = {"ca_file": str(pki.ca)}
    without = run_agent(
        write_config(
            agent_config(broker.port, assets, "cam-nocert", tmp_path, tls=only_ca), "nocert.yaml"
        )
    )
    mtls = {**only_ca, "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    with_cert = run_agent(
        write_config(agent_config(broker.port, assets, "cam-mtls", tmp_path, tls=mtls), "mtls.yaml")
    )
    sub_mtls.wait_for("/detections")
    assert f"MQTT connected to 127.0.0.1:{broker.port}" in with_cert.output()
    # The agent without a certificate was refused: the broker's TLS alert, as paho logs it.
    out = wait_for_log(without, "certificate required", timeout=10)
    assert "MQTT connected" not in out
    assert without.proc.poll() is None, out
    assert detections_from(sub_nocert, "cam-nocert") == []
    assert sub_nocert.seen == []


# --- user name and password ---

USER, PASSWORD = "agent", "s3cret-Pass"


@pytest.fixture
def password_listener(tmp_path: Path) -> str:
    if not Path(MOSQUITTO_PASSWD).is_file():
        pytest.skip("mosquitto_passwd is not installed (package mosquitto)")
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", "-c", str(passwd), USER, PASSWORD],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return f"password_file {passwd}\nallow_anonymous false"


def test_correct_password_from_file_or_environment_connects(
    password_listener, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(password_listener)
    secret = tmp_path / "mqtt.password"
    secret.write_text(PASSWORD + "\n")  # a trailing newline, as editors leave it
    from_file = agent_config(
        broker.port, assets, "cam-pwfile", tmp_path, username=USER, password_file=str(secret)
    )
    from_env = agent_config(broker.port, assets, "cam-pwenv", tmp_path, username=USER)
    subs = [subscribe(broker.plain_port, f"edge-agent/{d}/#") for d in ("cam-pwfile", "cam-pwenv")]
    run_agent(write_config(from_file, "pwfile.yaml"))
    run_agent(write_config(from_env, "pwenv.yaml"), env={"EDGE_AGENT_MQTT_PASSWORD": PASSWORD})
    for sub in subs:
        sub.wait_for("/status", lambda s: s["state"] == "online")
        sub.wait_for("/detections")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_wrong_password_stops_the_agent_with_exit_code_78(
    protocol, password_listener, secure_broker, subscribe, write_config, run_agent, assets, tmp_path
) -> None:
    broker = secure_broker(password_listener)
    sub = subscribe(broker.plain_port, "edge-agent/#")
    secret = tmp_path / "mqtt.password"
    secret.write_text("not-the-password\n")
    config = agent_config(
        broker.port,
        assets,
        "cam-badpw",
        tmp_path,
        username=USER,
        password_file=str(secret),
        protocol=protocol,
    )
    t0 = time.monotonic()
    agent = run_agent(write_config(config))
    try:
        code = agent.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent kept running with a wrong password:\n{agent.output()}")
    elapsed = time.monotonic() - t0
    out = agent.output()
    assert code == EXIT_CONFIG, out
    assert elapsed < 15
    error = f"MQTT broker 127.0.0.1:{broker.port} refused the login"
    # Once: no retry storm with credentials that cannot work.
    assert out.count(error) == 1, out
    assert f"(user {USER!r})" in out.split(error, 1)[1].splitlines()[0]
    assert "MQTT connected" not in out
    assert "Traceback" not in out
    assert detections_from(sub, "cam-badpw") == []
    assert PASSWORD not in out and "not-the-password" not in out


# --- a missing CA file ---


def test_missing_ca_file_is_reported_by_check_config_and_run(
    write_config, assets, tmp_path
) -> None:
    missing = tmp_path / "missing-ca.crt"
    config = write_config(
        agent_config(free_port(), assets, "cam-noca", tmp_path, tls={"ca_file": str(missing)})
    )
    line = 1 + next(
        i for i, text in enumerate(config.read_text().splitlines()) if "ca_file:" in text
    )
    check = edge_agent("check-config", str(config))
    assert check.returncode == 1, check.stderr
    assert (
        f"{config}:{line}: mqtt.tls.ca_file: TLS file {str(missing)!r} does not exist"
        in check.stderr
    ), check.stderr

    run = edge_agent("run", "-c", str(config))
    assert run.returncode == EXIT_CONFIG, run.stderr  # a restart cannot bring the file back
    assert "Traceback" not in run.stderr, run.stderr
    assert "edge-agent: MQTT TLS setup failed" in run.stderr, run.stderr
    assert str(missing) in run.stderr, run.stderr
