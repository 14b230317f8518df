"""The MQTT connection: paho 2.x with a retained last will, "online" and re-subscription on every
connect, paho's reconnect with capped backoff, TLS, and a drainer thread that sends the disk outbox
in order (a supervised thread with a heartbeat: a full disk is reported and retried, a crash is
seen by the watchdog). paho callbacks only record state or enqueue; they never block or work."""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, mqtt_password
from agent.errors import PublishError
from agent.health import Heartbeat, Heartbeats, supervised
from agent.publish.outbox import Outbox
from agent.publish.payloads import status_message
from agent.publish.topics import Topics

log = logging.getLogger("agent.mqtt")

# CONNACK reason codes that retrying cannot fix (MQTT 5 values; paho maps 3.1.1's 4 and 5 to them).
_AUTH_FAILURES = {134: "bad user name or password", 135: "not authorized"}
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class _LostConnectionIsAWarning(logging.Filter):
    """paho logs a reset or timed-out socket (and each failed reconnect) at ERROR; for us a
    broker that went away is retried and reported (``_on_disconnect`` and ``_on_connect_fail``
    warn), not an error. paho's other errors stay errors."""

    _PREFIXES = ("failed to receive on socket", "timeout on socket")
    # Said again on every loop turn after a disconnect, ours at a clean stop included; the
    # disconnect itself is already reported by ``_on_disconnect``.
    _REPEATS = ("Client is not connected",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and str(record.msg).startswith(self._REPEATS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger("agent.mqtt.paho").isEnabledFor(logging.DEBUG)
        if record.levelno == logging.ERROR and str(record.msg).startswith(self._PREFIXES):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_paho_log = logging.getLogger("agent.mqtt.paho")
_paho_log.addFilter(_LostConnectionIsAWarning())


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    tls = config.tls
    assert tls is not None
    # ssl's errors do not name the file ("[Errno 2] No such file or directory"): say which.
    step = f"mqtt.tls.ca_file {str(tls.ca_file)!r}" if tls.ca_file else "the system CA store"
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
        ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
        if tls.cert_file:
            step = f"mqtt.tls.cert_file {str(tls.cert_file)!r} / key_file {str(tls.key_file)!r}"
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise PublishError(f"MQTT TLS setup failed: {step}: {exc}") from exc
    if tls.insecure:
        log.warning("MQTT TLS certificate verification is OFF (mqtt.tls.insecure: true)")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttPublisher:
    """Publishes to ``{prefix}/{device_id}/...`` and receives subscribed messages.

    ``send`` puts a message in the disk outbox (when there is one) and returns at once; the drainer
    thread hands stored messages to paho in order while connected and deletes each one once paho
    is done with it: for QoS 1 and 2 when the broker acknowledges it, for QoS 0 when paho has
    written it to the socket (its ``on_publish``). paho resends QoS 1 and 2 in flight after a
    reconnect; the drainer resends QoS 0 messages that a lost connection left unwritten. After a
    restart the drainer starts again from the oldest message not deleted.
    """

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        *,
        outbox: Outbox | None = None,
        status_extra: Callable[[], dict[str, object]] | None = None,
        window: int = 256,
        health: Heartbeats | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix, device_id)
        self.outbox = outbox
        self._status_extra = status_extra or dict
        self.connected = threading.Event()
        self.reconnects = 0
        self.connects = 0
        self.last_error: str | None = None
        self.fatal: str | None = None
        self.incoming: queue.Queue[mqtt.MQTTMessage] = queue.Queue(maxsize=1000)
        self.incoming_dropped = 0
        self._subscriptions: list[tuple[str, int]] = []
        self._window = window
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        # QoS 0 handed to paho but not yet written: paho mid -> (outbox id, connection number).
        # paho drops unwritten QoS 0 packets when the connection is lost; these are sent again.
        self._unwritten: dict[int, tuple[int, int]] = {}
        self._inflight_lock = threading.Lock()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._acks_direct: list[int] = []  # outbox ids to delete without a paho ack
        self._last_sent = 0  # outbox id of the newest message handed to paho
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self.health = health if health is not None else Heartbeats()
        self._heartbeat: Heartbeat | None = None
        self._reported_error: str | None = None
        protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"edge-agent-{device_id}",
            protocol=protocol,
        )
        self._client.enable_logger(_paho_log)
        self._client.reconnect_delay_set(min_delay=1, max_delay=int(config.reconnect_max_s))
        self._client.max_inflight_messages_set(64)
        if config.username:
            self._client.username_pw_set(config.username, mqtt_password(config))
        if config.tls is not None:
            self._client.tls_set_context(tls_context(config))
        self._client.will_set(self.topics.status, status_message("offline"), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # --- paho callbacks (paho's network thread: record, enqueue, return) ---

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            code = getattr(reason, "value", None)
            if code in _AUTH_FAILURES:
                # Retrying with the same credentials only hammers the broker: stop and say why.
                self.fatal = (
                    f"MQTT broker {self.config.host}:{self.config.port} refused the login: "
                    f"{_AUTH_FAILURES[code]} (user {self.config.username!r}); fix mqtt.username / "
                    "the password and restart"
                )
                log.error("%s", self.fatal)
                client.disconnect()
            else:
                self.last_error = f"broker refused the connection: {reason}"
                log.error(
                    "MQTT %s:%s refused the connection: %s",
                    self.config.host,
                    self.config.port,
                    reason,
                )
            return
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self.last_error = None
        log.info("MQTT connected to %s:%s", self.config.host, self.config.port)
        # Re-announce and re-subscribe on every connect: the broker published our will while we
        # were away, and a clean session forgets subscriptions.
        client.publish(self.topics.status, self.status_payload("online"), qos=1, retain=True)
        if self._subscriptions:
            client.subscribe(self._subscriptions)
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around a failed (re)connect and logs the
        # error itself only at debug level: report it here (TLS verification failures included).
        exc = sys.exc_info()[1]
        self.last_error = f"cannot connect: {exc}"
        log.log(
            logging.ERROR if isinstance(exc, ssl.SSLError) else logging.WARNING,
            "MQTT cannot connect to %s:%s: %s; retrying with backoff",
            self.config.host,
            self.config.port,
            exc,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if reason.is_failure and was_connected:
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT connection lost (%s); reconnecting with backoff", reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.incoming.put_nowait(msg)
        except queue.Full:
            self.incoming_dropped += 1  # a flood of commands must not grow memory

    # --- the drainer thread ---

    def _drain_loop(self) -> None:
        assert self.outbox is not None and self._heartbeat is not None
        while not self._stop.is_set():
            self._heartbeat.beat()
            self._wake.wait(0.5)
            self._wake.clear()
            self._collect_acks()
            if self.outbox.retry_due:
                self.outbox.retry()
            self._report_outbox_error()
            if not self.connected.is_set():
                continue
            self._resend_unwritten()
            with self._inflight_lock:
                room = self._window - len(self._inflight)
            if room <= 0:
                continue
            batch = self.outbox.peek(after_id=self._last_sent, limit=room)
            for m in batch:
                if not self._hand_over(m.id, m.topic, m.payload, m.qos):
                    break  # the connection went: the rest waits for the next one
                self._last_sent = m.id
            else:
                if batch and len(batch) == room:
                    self._wake.set()  # more waiting: go on without sleeping

    def _hand_over(self, outbox_id: int, topic: str, payload: bytes, qos: int) -> bool:
        """Give one stored message to paho; False when paho did not take it (QoS 0 while the
        connection is down: it must stay for the next connection)."""
        connection = self.connects
        with self._inflight_lock:  # before paho can call on_publish for it
            try:
                info = self._client.publish(topic, payload, qos=qos)
            except ValueError as exc:  # a topic or payload no broker would take: never deliverable
                log.error(
                    "outbox message %d to %r cannot be sent (%s): dropped", outbox_id, topic, exc
                )
                self._acks_direct.append(outbox_id)
                return True
            if qos == 0:
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return False
                self._unwritten[info.mid] = (outbox_id, connection)
            # QoS 1/2: paho keeps it (and resends it after a reconnect) even when not connected.
            self._inflight[info.mid] = outbox_id
        return True

    def _resend_unwritten(self) -> None:
        """QoS 0 messages paho never wrote because their connection was lost: send them again."""
        connection = self.connects
        with self._inflight_lock:
            lost = [mid for mid, (_, conn) in self._unwritten.items() if conn != connection]
            ids = []
            for mid in lost:
                ids.append(self._unwritten.pop(mid)[0])
                self._inflight.pop(mid, None)
        if not ids:
            return
        assert self.outbox is not None
        for m in self.outbox.fetch(ids):
            if not self._hand_over(m.id, m.topic, m.payload, m.qos):
                return

    def _collect_acks(self) -> None:
        with self._inflight_lock:
            ids, self._acks_direct = self._acks_direct, []
            while True:
                try:
                    mid = self._acks.get_nowait()
                except queue.Empty:
                    break
                if mid in self._inflight:
                    ids.append(self._inflight.pop(mid))
                    self._unwritten.pop(mid, None)
        if ids and self.outbox is not None:
            self.outbox.ack(ids)

    def _report_outbox_error(self) -> None:
        assert self.outbox is not None
        error = self.outbox.error
        if error != self._reported_error:
            self._reported_error = error
            self.publish_status("online")  # the retained status says it (and when it is over)

    # --- public ---

    def status_payload(self, state: str) -> bytes:
        extra = dict(self._status_extra())
        if self.outbox is not None:
            extra["outbox"] = {
                "depth": self.outbox.depth,
                "error": self.outbox.error,
                "refused": self.outbox.refused,
            }
        return status_message(state, **extra)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now and after every reconnect; messages arrive on ``incoming``."""
        self._subscriptions.append((topic, qos))
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    def route(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 0) -> None:
        """Subscribe to ``topic`` (a filter) and hand its messages to ``handler`` on paho's
        network thread instead of ``incoming``. ``handler`` must only record or enqueue."""

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(msg.topic, bytes(msg.payload))
            except Exception:  # a bad message must not take paho's thread down
                log.exception("handling a message on %s failed", msg.topic)

        self._client.message_callback_add(topic, on_message)
        self.subscribe(topic, qos)

    def start(self) -> None:
        try:
            self._client.connect_async(
                self.config.host, self.config.port, keepalive=self.config.keepalive
            )
        except (OSError, ValueError) as exc:
            raise PublishError(f"MQTT {self.config.host}:{self.config.port}: {exc}") from exc
        self._client.loop_start()
        if self.outbox is not None:
            self._heartbeat = self.health.register("outbox")
            self._drainer = supervised("outbox", self._drain_loop, self._heartbeat)
            self._drainer.start()

    def send(self, topic: str, build: Callable[[int], bytes], qos: int = 1) -> int | None:
        """Queue ``build(seq)`` for ``topic``: through the outbox when there is one (None: the
        outbox cannot store it now, see ``outbox.error``)."""
        if self.outbox is not None:
            seq = self.outbox.put(topic, build, qos)
            self._wake.set()
            return seq
        self._client.publish(topic, build(0), qos=qos)
        return 0

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Publish directly (status, replies, metrics): not stored, dropped while offline."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def publish_status(self, state: str = "online") -> None:
        if self.connected.is_set():
            self.publish(self.topics.status, self.status_payload(state), qos=1, retain=True)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty and paho has nothing unacknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.connected.is_set():
            self._wake.set()
            if (self.outbox is None or self.outbox.depth == 0) and not self._pending():
                return True
            time.sleep(0.05)
        return (self.outbox is None or self.outbox.depth == 0) and not self._pending()

    def _pending(self) -> int:
        # paho keeps unacknowledged outgoing messages here; it has no public accessor.
        return len(getattr(self._client, "_out_messages", {}))

    def close(self, final_state: str = "stopped", timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), publish the final status, disconnect.
        What is still in the outbox stays on disk for the next start."""
        if self.connected.is_set():
            self.flush(timeout)
            info = self.publish(
                self.topics.status, self.status_payload(final_state), qos=1, retain=True
            )
            deadline = time.monotonic() + 2.0
            while (
                not info.is_published() and time.monotonic() < deadline and self.connected.is_set()
            ):
                time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            self._drainer.join(5)
            self._collect_acks()
        self._client.disconnect()
        self._client.loop_stop()
        if self.outbox is not None:
            self.outbox.close()
