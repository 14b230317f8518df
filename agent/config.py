"""The config file: pydantic models of every section, YAML loading, environment overrides,
and error reports that name the file, line and key (or the environment variable), with the key
that was probably meant when one is unknown."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.default_model import default_model
from agent.errors import ConfigError

ENV_PREFIX = "EDGE_AGENT_"
# Demo defaults: the assets scripts/fetch-assets places beside the package in a checkout.
ASSETS_DIR = Path(
    os.environ.get("EDGE_AGENT_ASSETS", Path(__file__).resolve().parent.parent / "models")
)
# The INT8 person model where scripts/setup measured it faithful to fp32, else fp32 (README
# "Models": how the default is chosen).
DEFAULT_MODEL = default_model(ASSETS_DIR)
DEFAULT_VIDEO = ASSETS_DIR / "media" / "bikes.mp4"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    uri: str = Field(
        str(DEFAULT_VIDEO),
        description="camera index (0) or /dev/videoN, rtsp:// or http(s):// URL, "
        "video file or image folder",
    )
    fps: float = Field(5.0, ge=0, description="processing cap in frames per second; 0 = no cap")
    loop: bool = Field(False, description="replay a video file or image folder forever")
    realtime: bool = Field(
        True, description="play files at their own frame rate, as a camera would deliver them"
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="first retry delay after a failure")
    backoff_max_s: float = Field(
        2.0,
        gt=0,
        description="cap of the exponential retry delay: a source is back within about this long "
        "of its camera coming back",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _uri_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _backoff_in_order(self) -> SourceConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) must be at least "
                f"backoff_initial_s ({self.backoff_initial_s:g})"
            )
        return self


class MotionConfig(Section):
    enabled: bool = Field(
        True,
        description="run the model only on frames where something moves (and every recheck_s)",
    )
    threshold: int = Field(
        25,
        ge=1,
        le=255,
        description="grey-level change (0-255) of a pixel of the small grey copy that counts "
        "as changed",
    )
    min_area: float = Field(
        0.002,
        ge=0,
        le=1,
        description="smallest changed region that counts as motion, as a share of the frame",
    )
    recheck_s: float = Field(
        10,
        gt=0,
        description="while nothing moves, run the model at least this often anyway (what "
        "arrived slowly or stands still)",
    )


Mask = list[tuple[float, float]]

#: the camera of a config with a lone ``source:``
MAIN_CAMERA = "main"
# Topic levels of the device's own (DESIGN.md section 5): a camera of that name would publish
# into them (``B/cmd/detections`` would come back as a command).
RESERVED_CAMERA_NAMES = frozenset(
    {"cmd", "status", "model", "metrics", "detections", "snapshot", "events", "objects", "zones",
     "all"}
)
CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_masks(masks: list[Mask]) -> list[Mask]:
    for i, polygon in enumerate(masks):
        _check_polygon(polygon, f"mask {i}")
    return masks


def _check_zone_names(zones: dict[str, Any]) -> dict[str, Any]:
    for name in zones:
        if not CAMERA_NAME.fullmatch(name):
            raise ValueError(
                f"zone name {name!r} is not topic-safe: use 1 to 64 letters, digits, _ or -"
            )
    return zones


def _check_polygon(polygon: Mask, what: str) -> Mask:
    if len(polygon) < 3:
        raise ValueError(f"{what} has {len(polygon)} points; a polygon needs 3 or more")
    for x, y in polygon:
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise ValueError(
                f"{what}: point [{x:g}, {y:g}] is outside the frame "
                "(coordinates are fractions, 0 to 1)"
            )
    return polygon


class ZoneConfig(Section):
    polygon: Mask = Field(description="[x, y] frame fractions, 3 points or more")
    labels: list[str] = Field(
        default_factory=list, description="labels counted in the zone; empty = all"
    )

    @field_validator("polygon")
    @classmethod
    def _a_polygon(cls, polygon: Mask) -> Mask:
        return _check_polygon(polygon, "the zone's polygon")


class ObjectConfig(Section):
    """False-positive filters and the confirmation rule of one label (Frigate's names)."""

    min_score: float = Field(
        0.5, ge=0, le=1, description="a detection scoring less is dropped before tracking"
    )
    threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description="a track becomes an event once the median score of its recent history "
        "reaches this",
    )
    min_area: float = Field(
        0.0, ge=0, le=1, description="smallest box, as a share of the frame; smaller is dropped"
    )
    max_area: float = Field(
        1.0, gt=0, le=1, description="largest box, as a share of the frame; larger is dropped"
    )

    @model_validator(mode="after")
    def _areas_in_order(self) -> ObjectConfig:
        if self.max_area < self.min_area:
            raise ValueError(
                f"max_area ({self.max_area:g}) must be at least min_area ({self.min_area:g})"
            )
        return self


class EventsConfig(Section):
    """Tracking and events, for every camera."""

    enabled: bool = Field(True, description="track objects and publish events on C/events")
    max_missed: int = Field(
        5,
        ge=1,
        description="model runs in a row without its object before a track is lost (frames the "
        "motion gate keeps from the model do not count)",
    )
    stationary_s: float = Field(
        10, gt=0, description="an object that has not moved for this long is stationary"
    )
    update_interval_s: float = Field(
        1.0, ge=0, description="an event's update messages come at most this often"
    )
    keep: int = Field(200, ge=1, description="events kept on disk with their snapshots")
    max_disk_mb: float = Field(
        100, gt=0, description="bound of the events kept on disk; the oldest go first"
    )


class CameraConfig(Section):
    """One camera of ``cameras:``: what it reads, its motion gate, its zones and its object
    filters."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    motion: MotionConfig = Field(
        default_factory=MotionConfig, description="the motion gate of this camera"
    )
    masks: list[Mask] = Field(
        default_factory=list,
        description="polygons of [x, y] frame fractions where motion is ignored and objects "
        "(their box's bottom centre) are dropped",
    )
    zones: dict[str, ZoneConfig] = Field(
        default_factory=dict, description="named polygons; events say which an object entered"
    )
    objects: dict[str, ObjectConfig] = Field(
        default_factory=dict,
        description="per label: min_score, threshold, min_area, max_area; a label not named "
        "here gets the defaults",
    )

    @field_validator("masks")
    @classmethod
    def _masks_are_polygons(cls, masks: list[Mask]) -> list[Mask]:
        return _check_masks(masks)

    @field_validator("zones")
    @classmethod
    def _zone_names(cls, zones: dict[str, ZoneConfig]) -> dict[str, ZoneConfig]:
        return _check_zone_names(zones)


# Options only OpenVINO takes, at their defaults (any other value needs ``runtime: openvino``).
OPENVINO_DEFAULTS: dict[str, object] = {
    "device": "CPU",
    "precision": "f32",
    "performance_hint": "LATENCY",
}


class ModelConfig(Section):
    path: Path = Field(DEFAULT_MODEL, description="model file (.onnx or .tflite)")
    card: Path | None = Field(None, description="model card; default: <model>.card.yaml beside it")
    runtime: Literal["auto", "onnx", "tflite", "openvino"] = Field(
        "auto",
        description="auto: by file suffix (onnx, tflite); openvino: Intel CPUs, GPUs and NPUs "
        "(the openvino extra)",
    )
    threads: int = Field(2, ge=0, description="inference threads; 0 = the runtime's default")
    providers: list[str] = Field(
        default_factory=list, description="onnxruntime execution providers; empty = CPU"
    )
    delegate: str | None = Field(None, description="TFLite delegate library (e.g. libedgetpu.so.1)")
    device: str = Field(
        "CPU",
        description="OpenVINO device: CPU, GPU (GPU.1: the second), NPU or AUTO",
    )
    precision: Literal["f32", "bf16", "f16"] = Field(
        "f32",
        description="OpenVINO inference precision; f32 gives onnxruntime's outputs, bf16 and f16 "
        "are faster where the device has them",
    )
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = Field(
        "LATENCY", description="OpenVINO performance hint"
    )
    cache: bool = Field(
        True,
        description="OpenVINO: keep compiled models in <store.path>/cache/openvino, so a "
        "restart does not compile again",
    )

    @field_validator("device")
    @classmethod
    def _a_device(cls, value: str) -> str:
        if not re.fullmatch(r"CPU|GPU(\.[0-9]+)?|NPU|AUTO", value):
            raise ValueError(
                f"unknown OpenVINO device {value!r}; expected CPU, GPU (or GPU.N), NPU or AUTO"
                + did_you_mean(value.upper(), ["CPU", "GPU", "NPU", "AUTO"])
            )
        return value

    @model_validator(mode="after")
    def _openvino_options_need_openvino(self) -> ModelConfig:
        # By value, not by the keys given: a config dumped and validated again names every key.
        if self.runtime != "openvino":
            given = [
                f"{key}: {getattr(self, key)}"
                for key, default in OPENVINO_DEFAULTS.items()
                if getattr(self, key) != default
            ]
            if given:
                raise ValueError(
                    f"model.{given[0]} is an OpenVINO option: set model.runtime: openvino "
                    f"(model.runtime is {self.runtime})"
                )
        return self


class DetectionConfig(Section):
    score_threshold: float | None = Field(
        None, ge=0, le=1, description="minimum score; default: the model card's"
    )
    iou_threshold: float | None = Field(
        None, ge=0, le=1, description="NMS overlap; default: card's"
    )
    labels: list[str] = Field(default_factory=list, description="labels to report; empty = all")


class TlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client key (mutual TLS)")
    insecure: bool = Field(False, description="skip certificate verification (never in production)")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="lowest TLS version accepted")


class OutboxConfig(Section):
    path: Path | None = Field(None, description="SQLite file; default: <store.path>/outbox.sqlite")
    max_messages: int = Field(
        100_000, ge=10, description="bound of the queue; when full the oldest are dropped"
    )


class MqttConfig(Section):
    host: str = Field("localhost", description="broker host")
    port: int = Field(1883, gt=0, lt=65536, description="broker port")
    topic_prefix: str = Field("edge-agent", description="topics are {topic_prefix}/{device_id}/...")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of detection messages")
    client_id: str | None = Field(
        None, description="MQTT client id; default: edge-agent-<device_id>"
    )
    keepalive: int = Field(30, ge=5, description="seconds between keepalive pings")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version")
    username: str | None = Field(None, description="broker user name")
    password_file: Path | None = Field(
        None, description="file holding the password (or set EDGE_AGENT_MQTT_PASSWORD)"
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; absent = plain TCP")
    reconnect_max_s: float = Field(60, ge=1, description="cap of the reconnect backoff")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if (
            not value
            or any(c in value for c in "+#")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError("must be non-empty, without + or #, and not start or end with /")
        return value


def _default_store() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY; root gets the FHS place; anyone else a
    # folder of their own (the demo, a developer's checkout).
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-agent"


class StoreConfig(Section):
    path: Path = Field(
        default_factory=_default_store,
        description="state folder: outbox, config overlay, models; default /var/lib/edge-agent "
        "(root), $STATE_DIRECTORY under systemd, else ~/.local/state/edge-agent",
    )


class PublishConfig(Section):
    detections: Literal["every_frame", "on_change", "off"] = Field(
        "on_change",
        description="the per-frame C/detections stream: every_frame, one message per model run; "
        "on_change, when the labels or their counts change, plus a heartbeat; off, none (events "
        "carry what matters)",
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_is_detections(cls, data: Any) -> Any:
        # ``mode`` was this key's name before events came (0.x configs and overlays).
        if isinstance(data, dict) and "mode" in data:
            data = dict(data)
            mode = data.pop("mode")
            data.setdefault("detections", mode)
        if isinstance(data, dict) and data.get("detections") is False:
            data = {**data, "detections": "off"}  # YAML 1.1 reads a bare off as false
        return data

    heartbeat_s: float = Field(60, gt=0, description="on_change: publish at least this often")
    metrics_interval_s: float = Field(30, gt=0, description="period of B/metrics")
    snapshot_max_bytes: int = Field(
        256_000, ge=10_000, description="cap of a snapshot JPEG (it is scaled down to fit)"
    )


class HomeAssistantConfig(Section):
    enabled: bool = Field(True, description="publish MQTT discovery when this section is present")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    labels: list[str] = Field(
        default_factory=list,
        description="labels with a binary sensor and a count sensor; default: detection.labels, "
        "else the model's labels",
    )


class RegistryConfig(Section):
    url: str = Field(description="registry root: https://..., http://... or file:///...")
    trusted_keys: list[Path] = Field(
        min_length=1, description="Ed25519 public keys (PEM) whose signatures are accepted"
    )
    model: str = Field("person", description="model name in the registry")
    channel: str = Field("stable", description="channel followed by polls and 'latest'")
    poll_interval_s: float = Field(
        0, ge=0, description="check the channel this often; 0 = commands only"
    )
    timeout_s: float = Field(30, gt=0, description="network timeout of each registry request")
    trial_frames: int = Field(5, ge=1, description="latest real frames the new model must pass")
    latency_budget: float = Field(
        3.0,
        gt=1,
        description="the new model may be at most this many times slower than the current",
    )
    probation_s: float = Field(
        60, ge=0, description="after the swap, watch errors and latency this long"
    )
    probation_max_error_rate: float = Field(
        0.2, ge=0, le=1, description="share of failed frames in probation that triggers a rollback"
    )


class ServiceConfig(Section):
    stall_s: float = Field(
        30,
        gt=0,
        description="an inference or camera read running longer than this counts as "
        "hung: the systemd watchdog pings stop and systemd restarts the agent",
    )
    stop_flush_s: float = Field(
        10, ge=0, description="on SIGTERM, time allowed to deliver queued messages"
    )


class SplitConfig(Section):
    role: Literal["off", "head", "tail"] = Field(
        "off",
        description="head: run the first layers here and send the cut tensor to `peer`; "
        "tail: serve heads that address this device (no camera needed); off: all local",
    )
    peer: str | None = Field(None, description="head: device_id of the tail agent")
    at: str = Field(
        "auto",
        description="cut id (see `edge-agent model plan-split`), or auto: planned from this "
        "device's profile and the measured link and peer, re-planned when they change",
    )
    codec: Literal["int8", "fp16", "raw"] = Field(
        "fp16", description="coding of the cut tensor on the wire (zstd-compressed)"
    )
    deadline_ms: float = Field(
        1000, gt=0, description="a frame whose result is later than this runs locally"
    )
    bandwidth_mbps: float = Field(
        20, gt=0, description="auto: link bandwidth assumed until one is measured"
    )
    rtt_ms: float = Field(5, ge=0, description="auto: round trip assumed until one is measured")
    peer_speedup: float = Field(
        1.0, gt=0, description="auto: how much faster the peer is, assumed until measured"
    )
    replan_margin: float = Field(
        0.25, gt=0, description="auto: re-plan when bandwidth or peer speed moves by this share"
    )
    max_tensors: int = Field(
        4, ge=1, description="auto: consider cuts carrying at most this many tensors"
    )
    probe_s: float = Field(
        30,
        gt=0,
        description="auto: while the plan runs all here, send a frame to the peer this "
        "often to measure the link again",
    )
    max_misses: int = Field(
        3, ge=1, description="deadlines missed in a row before the peer counts as unresponsive"
    )
    retry_s: float = Field(
        10, gt=0, description="while the peer is unresponsive, run locally this long, then retry"
    )
    link_mbps: float | None = Field(
        None,
        gt=0,
        description="simulate a slower link: a token bucket paces the head's sends (tests, "
        "benchmarks)",
    )

    @model_validator(mode="after")
    def _head_needs_peer(self) -> SplitConfig:
        if self.role == "head" and not self.peer:
            raise ValueError("split.role head needs split.peer (the tail agent's device_id)")
        return self


#: the web page's port when ``web.listen`` names none (DESIGN.md section 7)
WEB_PORT = 8971
#: a shorter bearer token is refused: it could be guessed
WEB_TOKEN_MIN = 16


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8971"`` -> ``("127.0.0.1", 8971)``; ``"[::1]:8971"`` -> ``("::1", 8971)``;
    a bare host gets port 8971. ValueError with the reason for anything else."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{listen!r}: an IPv6 address is written [ADDRESS]:PORT")
        port_text = rest[1:] if rest else str(WEB_PORT)
    elif text.count(":") > 1:
        raise ValueError(f"{listen!r}: an IPv6 address is written [ADDRESS]:PORT")
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text or str(WEB_PORT)
    if not host or host.isdigit():  # ":8971", "8971": a port alone
        raise ValueError(f"{listen!r}: no address (e.g. 127.0.0.1:{WEB_PORT}, 0.0.0.0:{WEB_PORT})")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{listen!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost): no token needed.
    A host name other than localhost is not resolved (validation does no I/O) and counts as
    reachable from the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(Section):
    """The local web page (DESIGN.md section 10)."""

    listen: str = Field(
        f"127.0.0.1:{WEB_PORT}",
        description="ADDRESS:PORT the page listens on ([ADDRESS]:PORT for IPv6); beyond "
        "loopback a token is required (token_file or $CREDENTIALS_DIRECTORY/web-token)",
    )
    token_file: Path | None = Field(
        None,
        description="file holding the bearer token the API and /metrics require; default: "
        "$CREDENTIALS_DIRECTORY/web-token (systemd LoadCredential=)",
    )

    @field_validator("listen")
    @classmethod
    def _an_address(cls, value: str) -> str:
        split_listen(value)
        return value.strip()

    @property
    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address[0])


class Config(Section):
    device_id: str = Field(
        default_factory=socket.gethostname, description="device name in topics; default: host name"
    )
    source: SourceConfig = Field(default_factory=SourceConfig)
    motion: MotionConfig = Field(
        default_factory=MotionConfig, description="the motion gate of the camera"
    )
    masks: list[Mask] = Field(
        default_factory=list,
        description="polygons of [x, y] frame fractions where motion is ignored and objects "
        "(their box's bottom centre) are dropped",
    )
    zones: dict[str, ZoneConfig] = Field(
        default_factory=dict, description="named polygons of the camera; see cameras.NAME.zones"
    )
    objects: dict[str, ObjectConfig] = Field(
        default_factory=dict, description="per label filters of the camera; see cameras.NAME"
    )
    events: EventsConfig = Field(default_factory=EventsConfig, description="tracking and events")
    cameras: dict[str, CameraConfig] = Field(
        default_factory=dict,
        description="several cameras by name (topic-safe: letters, digits, _ and -), instead of "
        "the top-level source, motion and masks; each publishes under B/<name>/",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    homeassistant: HomeAssistantConfig | None = Field(
        None, description="Home Assistant MQTT discovery; absent = off"
    )
    store: StoreConfig = Field(default_factory=StoreConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    registry: RegistryConfig | None = Field(None, description="model updates; absent = off")
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="split inference across two devices"
    )
    web: WebConfig | None = Field(
        None, description="the local web page, JSON API and /metrics; absent = off"
    )

    @field_validator("masks")
    @classmethod
    def _masks_are_polygons(cls, masks: list[Mask]) -> list[Mask]:
        return _check_masks(masks)

    @field_validator("zones")
    @classmethod
    def _zone_names(cls, zones: dict[str, ZoneConfig]) -> dict[str, ZoneConfig]:
        return _check_zone_names(zones)

    @model_validator(mode="after")
    def _cameras_or_source(self) -> Config:
        if self.cameras:
            # By value, not by the keys given: a whole config dumped and validated again (a
            # config/set patch) names every key.
            defaults = {
                "source": SourceConfig(),
                "motion": MotionConfig(),
                "masks": [],
                "zones": {},
                "objects": {},
            }
            top = [key for key, default in defaults.items() if getattr(self, key) != default]
            if top:
                raise ValueError(
                    f"cameras: and a top-level {', '.join(top)} are exclusive: with cameras, "
                    f"each camera has its own (cameras.NAME.{top[0]})"
                )
        return self

    @property
    def single_camera(self) -> bool:
        """A lone ``source:`` (no ``cameras:``): one camera named ``main`` whose topics are the
        device's own."""
        return not self.cameras

    def camera_configs(self) -> dict[str, CameraConfig]:
        """Every camera by name; a lone ``source:`` is the camera ``main``."""
        if self.cameras:
            return dict(self.cameras)
        return {
            MAIN_CAMERA: CameraConfig(
                source=self.source,
                motion=self.motion,
                masks=self.masks,
                zones=self.zones,
                objects=self.objects,
            )
        }

    @property
    def outbox_path(self) -> Path:
        return self.mqtt.outbox.path or self.store.path / "outbox.sqlite"

    @property
    def overlay_path(self) -> Path:
        return self.store.path / "config.overlay.yaml"

    @field_validator("cameras")
    @classmethod
    def _camera_names(cls, cameras: dict[str, CameraConfig]) -> dict[str, CameraConfig]:
        for name in cameras:
            if not CAMERA_NAME.fullmatch(name):
                raise ValueError(
                    f"camera name {name!r} is not topic-safe: use 1 to 64 letters, digits, "
                    "_ or -"
                )
            if name in RESERVED_CAMERA_NAMES:
                raise ValueError(
                    f"camera name {name!r} is a topic of the device itself; reserved: "
                    + ", ".join(sorted(RESERVED_CAMERA_NAMES))
                )
        return cameras

    @field_validator("device_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/+#"):
            raise ValueError("must be non-empty and contain no / + or #")
        return value


def _env_overrides(
    data: dict[str, Any], environ: dict[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """``EDGE_AGENT_MQTT__HOST=broker`` sets ``mqtt.host`` (values parsed as YAML scalars).

    Also returns which variable set which key, so that an error names the variable."""
    origins: dict[tuple[str, ...], str] = {}
    for key, raw in sorted(environ.items()):
        path = _env_path(key)
        if path is None:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {key}: {'.'.join(path[:-1])} is not a section")
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"environment {key}: {'.'.join(path)}: not a valid YAML value: "
                f"{getattr(exc, 'problem', exc)}"
            ) from exc
        origins[path] = key
    return data, origins


def _env_path(variable: str) -> tuple[str, ...] | None:
    """``EDGE_AGENT_MQTT__HOST`` -> ``("mqtt", "host")``; None for other variables."""
    if not variable.startswith(ENV_PREFIX) or "__" not in variable:
        return None
    return tuple(variable[len(ENV_PREFIX) :].lower().split("__"))


def _env_origin(
    origins: dict[tuple[str, ...], str], loc: tuple[int | str, ...]
) -> str | None:
    """The variable that set the value at ``loc`` (or a section above it)."""
    keys = tuple(str(p) for p in loc)
    for path, var in origins.items():
        if keys[: len(path)] == path:
            return var
    return None


def env_variable(
    loc: tuple[int | str, ...], environ: dict[str, str] | None = None
) -> str | None:
    """The ``EDGE_AGENT_...`` variable that sets the key at ``loc`` (or a section above it)."""
    env = os.environ if environ is None else environ
    origins = {path: key for key in env if (path := _env_path(key)) is not None}
    return _env_origin(origins, loc)


def known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the config accepts inside the section at ``loc`` (list indexes skipped)."""
    model: type[BaseModel] | None = Config
    named = False  # the part before was a map of names (cameras): this part is a name
    for part in loc:
        if isinstance(part, int) or named:
            named = False
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        named = get_origin(field.annotation) is dict
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The section model in a field's type (``TlsConfig | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """`` (did you mean mqtt.host?)`` for the closest of ``choices``, or nothing."""
    # Swapped letters (rtps -> rtsp) are the commonest typo; difflib alone would rank a longer
    # word that contains them (rtsps) first.
    close = [c for c in choices if sorted(c) == sorted(word) and c != word]
    close = close or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of the deepest parent that exists)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line = k.start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def where(source: str, root: yaml.Node | None, loc: tuple[int | str, ...]) -> str:
    """``FILE:LINE`` of the key at ``loc`` (just ``FILE`` when the file does not set it)."""
    line = _line_of(root, loc)
    return f"{source}:{line}" if line else source


def _report(
    exc: ValidationError,
    source: str,
    root: yaml.Node | None,
    origins: dict[tuple[str, ...], str] | None = None,
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        var = _env_origin(origins or {}, loc)
        place = f"environment {var}" if var else where(source, root, loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
            msg = "unknown key" + did_you_mean(
                str(loc[-1]), known_keys(loc[:-1]), f"{section}." if section else ""
            )
        value = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(value, dict)
            else f" (got {value!r})"
        )
        lines.append(f"{place}: {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(
    text: str, source: str = "<config>", environ: dict[str, str] | None = None
) -> Config:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping of sections")
    data, origins = _env_overrides(data, dict(os.environ) if environ is None else environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_report(exc, source, root, origins)) from exc


def load_config(path: str | Path | None, environ: dict[str, str] | None = None) -> Config:
    """The config at ``path``, or the built-in demo defaults when ``path`` is None."""
    if path is None:
        # The demo: the sample video replayed forever through the default model.
        return parse_config("source:\n  loop: true\n", "<defaults>", environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return relative_to(parse_config(text, str(path), environ), Path(path).resolve().parent)


def relative_to(config: Config, base: Path) -> Config:
    """Relative file paths in a config file mean: beside the config file."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    config.model.path = fix(config.model.path) or config.model.path
    config.model.card = fix(config.model.card)
    config.mqtt.outbox.path = fix(config.mqtt.outbox.path)
    config.store.path = fix(config.store.path) or config.store.path
    if config.registry is not None:
        config.registry.trusted_keys = [fix(k) or k for k in config.registry.trusted_keys]
        if config.registry.url.startswith("file://") is False and "://" not in config.registry.url:
            config.registry.url = (base / config.registry.url).resolve().as_uri() + "/"
    config.mqtt.password_file = fix(config.mqtt.password_file)
    if config.web is not None:
        config.web.token_file = fix(config.web.token_file)
    if config.mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            setattr(config.mqtt.tls, name, fix(getattr(config.mqtt.tls, name)))
    for source in [config.source, *(c.source for c in config.cameras.values())]:
        uri = source.uri
        if "://" not in uri and not uri.isdigit() and not Path(uri).is_absolute():
            source.uri = str(base / uri)
    return config


def check_files(config: Config, source: str = "<config>", text: str = "") -> list[str]:
    """Problems with files the config names (kept out of validation: validators do no I/O)."""
    root = yaml.compose(text) if text else None
    problems = []

    def missing(loc: tuple[str, ...], path: Path | None, what: str) -> None:
        if path is not None and not path.is_file():
            problems.append(
                f"{where(source, root, loc)}: {'.'.join(loc)}: {what} {str(path)!r} does not exist"
            )

    missing(("model", "path"), config.model.path, "model file")
    missing(("model", "card"), config.model.card, "model card")
    missing(("mqtt", "password_file"), config.mqtt.password_file, "password file")
    if config.mqtt.tls:
        for name in ("ca_file", "cert_file", "key_file"):
            missing(("mqtt", "tls", name), getattr(config.mqtt.tls, name), "TLS file")
    return problems  # trusted keys: agent.preflight.key_problems (exist and load)


def mqtt_password(config: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """The broker password: the password file, systemd's credential, or the environment."""
    env = dict(os.environ) if environ is None else environ
    if config.password_file is not None:
        try:
            return config.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"mqtt.password_file {str(config.password_file)!r}: cannot read: {exc.strerror}"
            ) from exc
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "mqtt-password").is_file():
        return (Path(cred_dir) / "mqtt-password").read_text(encoding="utf-8").strip()
    return env.get(f"{ENV_PREFIX}MQTT_PASSWORD")


def web_token(config: WebConfig, environ: dict[str, str] | None = None) -> str | None:
    """The web page's bearer token: ``web.token_file``, else systemd's credential
    ``$CREDENTIALS_DIRECTORY/web-token``; None when neither is set. ConfigError (naming the
    file) when the file cannot be read or holds no token."""
    env = dict(os.environ) if environ is None else environ
    if config.token_file is not None:
        path = config.token_file
    else:
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        path = Path(cred_dir or ".") / "web-token"
        # An empty credential is a placeholder (an installer's), as for mqtt-password: no token.
        if not cred_dir or not path.is_file() or path.stat().st_size == 0:
            return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"token file {str(path)!r} cannot be read: {reason}") from exc
    if len(token) < WEB_TOKEN_MIN:
        raise ConfigError(
            f"token file {str(path)!r} holds {len(token)} characters, at least "
            f"{WEB_TOKEN_MIN} are needed (e.g. openssl rand -hex 32 > FILE)"
        )
    return token
