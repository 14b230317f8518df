"""The MQTT connection: paho 2.x with a retained last will, "online" on every connect and
paho's own reconnect with capped backoff. Callbacks only record state; they never block."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MqttConfig, mqtt_password
from agent.errors import PublishError
from agent.publish.payloads import status_message
from agent.publish.topics import Topics

log = logging.getLogger("agent.mqtt")


class MqttPublisher:
    """Publishes to ``{prefix}/{device_id}/...``. ``publish`` never blocks on the network:
    paho queues messages while the broker is away and sends them after reconnecting."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        *,
        status_extra: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix, device_id)
        self._status_extra = status_extra or dict
        self.connected = threading.Event()
        self.reconnects = 0
        self._ever_connected = False
        self.last_error: str | None = None
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"edge-agent-{device_id}",
            protocol=protocol,
        )
        self._client.enable_logger(logging.getLogger("agent.mqtt.paho"))
        self._client.reconnect_delay_set(min_delay=1, max_delay=60)
        self._client.max_queued_messages_set(10000)
        if config.username:
            self._client.username_pw_set(config.username, mqtt_password(config))
        if config.tls is not None:
            self._setup_tls()
        self._client.will_set(self.topics.status, status_message("offline"), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def _setup_tls(self) -> None:
        tls = self.config.tls
        assert tls is not None
        try:
            self._client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise PublishError(f"MQTT TLS setup failed: {exc}") from exc
        if tls.insecure:
            log.warning("MQTT TLS certificate verification is OFF (mqtt.tls.insecure: true)")
            self._client.tls_insecure_set(True)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error(
                "MQTT %s:%s refused the connection: %s", self.config.host, self.config.port, reason
            )
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.last_error = None
        log.info("MQTT connected to %s:%s", self.config.host, self.config.port)
        # Re-announce on every connect: the broker published our will while we were away.
        client.publish(self.topics.status, self.status_payload("online"), qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        if reason.is_failure:
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason)

    def status_payload(self, state: str) -> bytes:
        return status_message(state, **self._status_extra())

    def start(self) -> None:
        try:
            self._client.connect_async(
                self.config.host, self.config.port, keepalive=self.config.keepalive
            )
        except (OSError, ValueError) as exc:
            raise PublishError(f"MQTT {self.config.host}:{self.config.port}: {exc}") from exc
        self._client.loop_start()

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_status(self, state: str = "online") -> None:
        if self.connected.is_set():
            self.publish(self.topics.status, self.status_payload(state), qos=1, retain=True)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued QoS>0 message is acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout
        while self._pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._pending() == 0

    def _pending(self) -> int:
        # paho keeps unacknowledged outgoing messages here; no public accessor exists.
        return len(getattr(self._client, "_out_messages", {}))

    def close(self, final_state: str = "stopped", timeout: float = 5.0) -> None:
        """Publish the final retained status, deliver what is queued, disconnect."""
        if self.connected.is_set():
            info = self.publish(
                self.topics.status, self.status_payload(final_state), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
            self.flush(timeout)
        rc = self._client.disconnect()
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.debug("MQTT disconnect returned %s", rc)
        self._client.loop_stop()
