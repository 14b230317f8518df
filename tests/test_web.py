"""The local web page (DESIGN.md section 10) on a running agent: the JSON API, the annotated
latest frame (zones, masks, boxes, track ids), events from the store with their snapshots, the
MJPEG stream that costs nothing while nobody watches and never slows a camera when its viewer
stalls, ``/metrics``, HTTP limits, and the bearer token (a listener beyond loopback without one
refuses to start: exit 78)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import main as cli_main
from agent.config import WEB_PORT, parse_config, web_token
from agent.detection import Detection, StageTimes
from agent.errors import ConfigError
from agent.pipeline import Result
from agent.preflight import web_problems
from agent.sources import Frame
from agent.tracking.store import EventReader
from agent.tracking.types import TrackedObject
from agent.web.frames import LiveFrames, draw
from tests.conftest import ROOT
from tests.test_exit_codes import refused
from tests.web_helpers import (
    BIKES,
    FACE,
    WebAgent,
    free_port,
    person_on_bikes,
    wait_for,
    web_agent,
)

TOKEN = "s3cret-web-token-0123456789"
ZONE_Y = 0.6  # the zone's top edge: a horizontal line across the frame
MASK = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.25], [0.0, 0.25]]


def _jpeg(body: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


# --- a person model on bikes.mp4, the page open on loopback -----------------------------------


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebAgent]:
    folder = tmp_path_factory.mktemp("web")
    config = person_on_bikes(ZONE_Y, MASK, metrics_interval_s=1)
    with web_agent(folder, config) as running:
        yield running


def test_status_is_the_retained_status_with_the_model_in_service_and_metrics_per_camera(
    page: WebAgent,
) -> None:
    status = page.status()
    assert status["state"] == "online" and status["agent_version"]
    assert status["cameras"]["main"]["state"] == "connected"
    assert status["model"] == {"name": "person", "version": "1.0.0"}
    assert status["model_service"]["sha256"] and status["model_service"]["format"] == "onnx"
    camera = status["metrics"]["cameras"]["main"]
    assert camera["frames"] > 0 and {"fps", "skipped_no_motion", "dropped"} <= set(camera)
    assert status["events_enabled"] is True and status["stuck"] == []


def test_events_come_from_the_store_newest_first_each_with_its_snapshot(page: WebAgent) -> None:
    def with_snapshot() -> list[dict[str, Any]] | None:
        events = page.get("/api/events?limit=50").json()["events"]
        return events if any(e.get("snapshot_url") for e in events) else None

    events = wait_for(with_snapshot, 90, "person event with a snapshot", page.process)
    starts = [e["start"] for e in events]
    assert starts == sorted(starts, reverse=True)
    assert {e["label"] for e in events} == {"person"} and {e["camera"] for e in events} == {"main"}
    shown = next(e for e in events if e.get("snapshot_url"))
    assert shown["snapshot_url"] == f"/api/events/{shown['id']}/snapshot.jpg"
    reader = EventReader(page.state)
    try:
        kept = reader.get(shown["id"])
        assert kept is not None and kept["start"] == shown["start"]

        def same_snapshot() -> bytes | None:
            resp = page.get(shown["snapshot_url"])
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
            return resp.body if resp.body == reader.snapshot(shown["id"]) else None

        assert _jpeg(wait_for(same_snapshot, 10, "the store's snapshot")).shape[1] == 640
    finally:
        reader.close()
    newest = page.get("/api/events?limit=1&camera=main").json()["events"]
    assert len(newest) == 1 and newest[0]["start"] >= starts[0]


def test_the_latest_frame_is_drawn_with_the_cameras_zone(page: WebAgent) -> None:
    resp = page.get("/api/cameras/main/latest.jpg")
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
    drawn = _jpeg(resp.body)
    h, w = drawn.shape[:2]
    assert (h, w) == (272, 640)
    # the zone's top edge: a blue line across the whole frame
    band = drawn[int(ZONE_Y * h) - 2 : int(ZONE_Y * h) + 3].astype(int)
    blue = (band[..., 0] > 170) & (band[..., 2] < 110) & (band[..., 0] - band[..., 2] > 100)
    assert blue.any(axis=0).mean() > 0.9


def test_unknown_cameras_events_and_pages_are_404_with_a_json_error(page: WebAgent) -> None:
    for path in (
        "/api/cameras/porch/latest.jpg",
        "/api/cameras/porch/stream.mjpeg",
        "/api/events?camera=porch",
        "/api/events/main-1-abcdef/snapshot.jpg",
        "/api/nothing",
        "/static/../../config.yaml",
    ):
        resp = page.get(path)
        assert resp.status == 404, path
        assert resp.headers["Content-Type"] == "application/json" and resp.json()["error"], path
    assert "porch" in page.get("/api/cameras/porch/latest.jpg").json()["error"]
    for bad in ("0", "abc", "100000"):
        resp = page.get(f"/api/events?limit={bad}")
        assert resp.status == 400 and "limit" in resp.json()["error"]


def test_only_small_get_and_head_requests_without_cors(page: WebAgent) -> None:
    head = page.get("/api/status", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) > 0
    head = page.get("/api/cameras/main/stream.mjpeg", method="HEAD")
    assert head.status == 200 and head.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        resp = page.get("/api/status", method=method, headers={"Origin": "http://evil.example"})
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD", method
    body = page.get("/api/status", headers={"Content-Length": "5"}, body=b"hello")
    assert body.status == 413
    assert page.get("/api/events?x=" + "a" * 3000).status == 414
    cross = page.get("/api/status", headers={"Origin": "http://evil.example"})
    assert cross.status == 200
    assert not [k for k in cross.headers if k.lower().startswith("access-control-")]
    assert cross.headers["X-Content-Type-Options"] == "nosniff"


def _read_part(sock_file: Any) -> bytes:
    """One JPEG part of a multipart/x-mixed-replace stream."""
    line = sock_file.readline()
    while line in (b"\r\n", b""):
        if line == b"":
            raise AssertionError("the stream ended")
        line = sock_file.readline()
    assert line.startswith(b"--"), line
    length = 0
    while (line := sock_file.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return bytes(sock_file.read(length))


def _open_stream(port: int, token: str | None = None, rcvbuf: int | None = None) -> socket.socket:
    """A viewer of camera main's stream, its request sent."""
    sock = socket.socket()
    sock.settimeout(20)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET /api/cameras/main/stream.mjpeg HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    return sock


def test_frames_are_encoded_only_while_someone_watches_the_stream(page: WebAgent) -> None:
    before, frames_before = page.status()["web"]["encodes"], page.camera()["frames"]
    wait_for(lambda: page.camera()["frames"] >= frames_before + 3, 60, "3 more frames")
    assert page.status()["web"]["encodes"] == before  # frames came, nobody watched: no encode
    sock = _open_stream(page.port)
    reader = sock.makefile("rb")
    try:
        status_line = reader.readline()
        assert b" 200 " in status_line
        headers = []
        while (line := reader.readline()) != b"\r\n":
            headers.append(line.decode().lower())
        assert any("multipart/x-mixed-replace" in h for h in headers)
        images = [_jpeg(_read_part(reader)) for _ in range(3)]
        assert all(image.shape == (272, 640, 3) for image in images)
        watched = page.status()["web"]
        assert watched["streams"] == 1 and watched["encodes"] >= before + 3
    finally:
        reader.close()
        sock.close()
    wait_for(lambda: page.status()["web"]["streams"] == 0, 30, "the stream's end")


def test_metrics_are_served_in_the_prometheus_format_and_the_latency_histogram_fills(
    page: WebAgent,
) -> None:
    def families() -> dict[str, Any]:
        resp = page.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(resp.body.decode())}

    def latency_count() -> float:
        family = families()["edge_agent_inference_latency_seconds"]
        return next(s.value for s in family.samples if s.name.endswith("_count"))

    first = latency_count()
    wait_for(lambda: latency_count() > first, 60, "a new inference in the histogram")
    frames = families()["edge_agent_camera_frames"].samples
    assert [s.labels for s in frames if s.name.endswith("_total")] == [{"camera": "main"}]


def test_the_agent_stops_cleanly_while_someone_watches(page: WebAgent) -> None:
    """Last of the tests on ``page``: it stops that agent."""
    sock = _open_stream(page.port)
    reader = sock.makefile("rb")
    try:
        assert b" 200 " in reader.readline()
        wait_for(lambda: page.status()["web"]["streams"] == 1, 10, "an open stream")
        page.process.signal(signal.SIGTERM)
        assert page.process.wait(30) == 0
        assert reader.read() is not None  # the server closed the stream: read to its end
    finally:
        reader.close()
        sock.close()
    out = page.process.output()
    assert "Traceback" not in out and " ERROR " not in out, out


# --- two cameras, a cheap model at a steady 5 fps, the page beyond loopback with a token -------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebAgent]:
    folder = tmp_path_factory.mktemp("web-token")
    # every frame runs the model (no motion gate): the count of runs is the pipeline's pace
    camera = {"source": {"uri": str(BIKES), "fps": 5, "loop": True}, "motion": {"enabled": False}}
    config = {
        "cameras": {
            "main": camera,
            "side": {**camera, "zones": {"kerb": {"polygon": [[0, 0.9], [1, 0.9], [1, 1], [0, 1]]}}},
        },
        "model": {"path": str(FACE), "threads": 1},
        "publish": {"detections": "every_frame", "metrics_interval_s": 1},
        "events": {"enabled": False},
    }
    with web_agent(folder, config, token=TOKEN, listen_host="0.0.0.0") as running:
        yield running


def test_beyond_loopback_the_api_needs_the_token_and_a_wrong_one_is_logged_once_a_minute(
    guarded: WebAgent,
) -> None:
    for path in ("/api/status", "/api/events", "/api/cameras/main/latest.jpg", "/metrics"):
        missing = guarded.get(path, token=None)
        assert missing.status == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert guarded.get(path, token="wrong-token-0123456789").status == 401, path
        assert guarded.get(path).status == 200, path
    assert guarded.get("/api/cameras/main/latest.jpg?access_token=" + TOKEN, token=None).status == 200
    assert guarded.get("/", token=None).status == 200  # the page's own code holds no data
    log = wait_for(
        lambda: guarded.process.output() if "wrong token" in guarded.process.output() else None,
        10,
        "a logged wrong token",
    )
    wrong = [line for line in log.splitlines() if "wrong token" in line]
    assert len(wrong) == 1 and "127.0.0.1" in wrong[0], wrong  # 4 wrong requests, one line
    assert TOKEN not in log and "wrong-token-0123456789" not in log


def test_each_camera_has_its_figures_its_view_and_its_own_zones(guarded: WebAgent) -> None:
    cameras = guarded.status()["metrics"]["cameras"]
    assert set(cameras) == {"main", "side"}
    wait_for(lambda: guarded.camera("side")["frames"] > 0, 30, "a frame of camera side")
    views = {name: _jpeg(guarded.get(f"/api/cameras/{name}/latest.jpg").body) for name in cameras}
    row = views["side"][int(0.9 * 272)].astype(int)  # camera side's zone edge; main has none
    assert ((row[:, 0] > 170) & (row[:, 2] < 110)).mean() > 0.9
    row = views["main"][int(0.9 * 272)].astype(int)
    assert ((row[:, 0] > 170) & (row[:, 2] < 110)).mean() < 0.5
    assert guarded.get("/api/events?camera=side").json() == {"events": []}  # events are off


@pytest.mark.serial
def test_a_stream_viewer_that_never_reads_does_not_slow_the_pipeline(guarded: WebAgent) -> None:
    window = 5.0

    def runs_in(seconds: float) -> int:
        start = guarded.camera()["inferences"]
        time.sleep(seconds)
        return int(guarded.camera()["inferences"]) - start

    def encodes() -> int:
        return int(guarded.status()["web"]["encodes"])

    def blocked() -> bool:
        # the server's writes to both viewers block: no frame is encoded for them any more
        before = encodes()
        time.sleep(1.0)
        return encodes() == before

    alone = runs_in(window)
    # two viewers with tiny buffers that never read a byte
    stalled = [_open_stream(guarded.port, TOKEN, rcvbuf=4096) for _ in range(2)]
    try:
        wait_for(lambda: guarded.status()["web"]["streams"] == 2, 10, "2 open streams")
        wait_for(blocked, 20, "the stalled viewers' buffers full")
        watched = runs_in(window)
        assert alone > 0, "the model did not run"
        assert abs(watched - alone) <= 0.1 * alone, (alone, watched)
        # a viewer that takes nothing for CLIENT_TIMEOUT_S (10 s) is dropped: its thread ends
        wait_for(lambda: guarded.status()["web"]["streams"] == 0, 20, "the stalled streams' end")
    finally:
        for sock in stalled:
            sock.close()


def test_the_unit_lets_the_agent_bind_the_web_port_only() -> None:
    unit = (ROOT / "systemd" / "edge-agent.service").read_text().splitlines()
    assert f"SocketBindAllow=tcp:{WEB_PORT}" in unit and "SocketBindDeny=any" in unit


# --- refusing to start -------------------------------------------------------------------------


def test_a_listener_beyond_loopback_without_a_token_exits_78(run_agent, write_config) -> None:
    config = write_config(
        {"model": {"path": str(FACE)}, "web": {"listen": f"0.0.0.0:{free_port()}"}}
    )
    line = refused(run_agent, config, env={"CREDENTIALS_DIRECTORY": ""})
    assert f"{config}:" in line and "web.listen" in line and "token" in line, line
    assert cli_main(["check-config", str(config)]) == 1


def test_a_short_or_unreadable_token_file_exits_78_naming_it(
    run_agent, write_config, tmp_path: Path
) -> None:
    short = tmp_path / "short.token"
    short.write_text("1234\n")
    config = write_config(
        {"model": {"path": str(FACE)}, "web": {"listen": "127.0.0.1:8971", "token_file": str(short)}}
    )
    line = refused(run_agent, config)
    assert "web.token_file" in line and str(short) in line and "16" in line, line


def test_a_token_from_systemds_credentials_folder_is_enough(tmp_path: Path) -> None:
    config = parse_config('web: {listen: "0.0.0.0:8971"}\n')
    assert config.web is not None
    (problem,) = web_problems(config, {})
    assert problem[0] == ("web", "listen")
    (tmp_path / "web-token").write_text(TOKEN + "\n")
    assert web_problems(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == []
    assert web_token(config.web, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == TOKEN


def test_a_port_in_use_exits_78_naming_web_listen(run_agent, write_config) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config({"model": {"path": str(FACE)}, "web": {"listen": f"127.0.0.1:{port}"}})
        line = refused(run_agent, config)
    assert "web.listen" in line and "cannot listen" in line, line


@pytest.mark.parametrize(
    ("listen", "problem"),
    [("8971", "no address"), ("127.0.0.1:99999", "port"), ("::1:8971", "[ADDRESS]:PORT")],
)
def test_a_bad_listen_address_names_the_key(listen: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f'web: {{listen: "{listen}"}}\n', "c.yaml")
    assert str(err.value).startswith("c.yaml:1: web.listen:") and problem in str(err.value)


# --- drawing and encoding, in the process ------------------------------------------------------


def _result(image: np.ndarray, detections: list[Detection]) -> Result:
    frame = Frame(0, time.time(), image, "test", time.monotonic())
    return Result(frame, detections, StageTimes(), "m", "1", time.time())


def test_track_ids_are_drawn_under_their_boxes_and_only_for_tracks_seen_in_the_frame() -> None:
    image = np.full((240, 320, 3), 30, np.uint8)
    box = (0.2, 0.2, 0.6, 0.9)
    result = _result(image, [Detection("person", 0, 0.9, box)])
    track = TrackedObject("main-1-a1b2c3", "person", box, 0.9, 0.0, 0.0, confirmed=True)
    plain = draw(image, result, [], None).astype(int)
    tagged = draw(image, result, [track], None).astype(int)
    x1, y2 = int(box[0] * 320), int(box[3] * 240)
    near = (slice(y2 - 16, y2), slice(x1, x1 + 70))
    assert np.abs(tagged - plain)[near].sum() > 1000  # the id's text, above the bottom edge
    assert np.abs(tagged - plain).sum() == np.abs(tagged - plain)[near].sum()  # nowhere else
    track.missed = 1
    assert np.array_equal(draw(image, result, [track], None), plain.astype(np.uint8))


def test_masks_are_shaded_and_zones_outlined() -> None:
    image = np.full((200, 400, 3), 200, np.uint8)
    camera = parse_config(
        "masks: [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]]\n"
        "zones: {gate: {polygon: [[0.6, 0.6], [0.9, 0.6], [0.9, 0.9], [0.6, 0.9]]}}\n"
    ).camera_configs()["main"]
    drawn = draw(image, _result(image, []), [], camera).astype(int)
    assert (drawn[10:90, 10:190] < 110).all()  # inside the mask: darkened
    assert (drawn[110:, :220] == 200).all()  # below it, left of the zone: untouched
    edge = drawn[int(0.6 * 200), 250:350]  # the zone's top edge, in its colour
    assert ((edge[:, 0] > 200) & (edge[:, 2] < 60)).all()


def test_a_frame_is_encoded_once_however_many_ask_and_only_when_asked() -> None:
    frames = LiveFrames(["main"], lambda name: None)
    assert frames.jpeg("main") is None
    frames.keep(_result(np.zeros((64, 64, 3), np.uint8), []))
    frames.keep(_result(np.zeros((64, 64, 3), np.uint8), []))
    assert frames.encodes == 0  # kept, never drawn
    first, again = frames.jpeg("main"), frames.jpeg("main")
    assert first is not None and first is again and first.seq == 2 and frames.encodes == 1
    frames.keep(_result(np.zeros((64, 64, 3), np.uint8), []))
    assert frames.wait_newer("main", 2, timeout=0.1) == 3
    newer = frames.jpeg("main")
    assert newer is not None and newer.seq == 3 and frames.encodes == 2


def test_a_frame_the_motion_gate_keeps_from_the_model_is_shown_with_the_latest_boxes() -> None:
    frames = LiveFrames(["main"], lambda name: None)
    still = Frame(7, time.time(), np.full((64, 64, 3), 90, np.uint8), "test")
    frames.keep_still("main", still)
    assert frames.jpeg("main") is None  # no model run yet: nothing to show
    box = (0.1, 0.1, 0.9, 0.9)
    frames.keep(_result(np.zeros((64, 64, 3), np.uint8), [Detection("person", 0, 0.9, box)]))
    frames.keep_still("main", still)
    shown = frames.jpeg("main")
    assert shown is not None and shown.seq == 2
    image = _jpeg(shown.jpeg)
    assert abs(int(image[32, 32, 1]) - 90) < 8  # the still frame's own pixels
    assert image[int(0.9 * 64) - 1, 32, 1] > 150  # and the last run's box, in green


def test_a_changed_web_section_waits_for_the_restart_on_sighup() -> None:
    from agent.live_config import LiveConfig

    live = LiveConfig(parse_config('web: {listen: "127.0.0.1:8971"}\n'))
    assert live.reload(parse_config('web: {listen: "127.0.0.1:8972"}\n')) == ["web"]
    assert live.config.web is not None and live.config.web.listen == "127.0.0.1:8971"
