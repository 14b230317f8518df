"""Network cameras that fail the ways real ones do, against real servers on loopback: an MJPEG
camera over HTTP (frames of bikes.mp4), GStreamer's RTSP server, a closed port, a host that does
not answer. The source must say which failure it met, keep the log quiet while it retries, and
deliver again within seconds of the camera coming back.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from agent.config import SourceConfig
from agent.localbroker import LocalBroker
from agent.sources import Frame, FrameSource, SourceStatus, StreamSource, open_source
from tests.conftest import MEDIA, AgentProcess, Subscriber
from tests.stream_servers import MjpegServer, RtspServer, SilentPort, free_port, video_frames

# what the issue asks: detections again within 5 s of a camera coming back
RESUME_DEADLINE_S = 5.0
OUTAGE_S = 8.0


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return video_frames(MEDIA / "bikes.mp4", count=20)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def configured_source(uri: str, statuses: list[SourceStatus]) -> FrameSource:
    """A source with the retry settings of a default config, as the agent makes it."""
    cfg = SourceConfig(uri=uri)
    return open_source(
        cfg.uri,
        fps=0,
        backoff_initial_s=cfg.backoff_initial_s,
        backoff_max_s=cfg.backoff_max_s,
        on_status=statuses.append,
    )


def next_frame(source: FrameSource, timeout: float) -> Frame | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        frame = source.read(timeout=left)
        if frame is not None:
            return frame
    return None


def ride_out_outage(source: FrameSource, outage_s: float) -> None:
    """Keep reading (as the pipeline does) while the camera is away."""
    end = time.monotonic() + outage_s
    while time.monotonic() < end:
        source.read(timeout=0.1)


def test_the_default_retry_wait_keeps_a_5_minute_outage_within_seconds_of_resuming() -> None:
    source = configured_source("rtsp://127.0.0.1:1/cam", [])
    assert isinstance(source, StreamSource)
    backoff = source.backoff
    # every wait of a 5-minute outage (150 tries and more at the cap), jitter included
    waits = [backoff.delay(n) for n in range(1, 400)]
    assert sum(waits) > 300
    assert max(waits) <= backoff.max_s <= 2.0
    # the slowest retry cycle for a camera that is off: the connect probe, then the wait
    assert backoff.max_s + source.probe_timeout_s < RESUME_DEADLINE_S
    # a source made without the config retries the same way
    assert open_source("rtsp://127.0.0.1:1/cam").backoff == backoff


def assert_outage_and_resume(
    source: FrameSource,
    statuses: list[SourceStatus],
    stop: Callable[[], None],
    start: Callable[[], None],
) -> float:
    """Stop the camera for OUTAGE_S, start it again; the seconds until a frame came back."""
    source.start()
    assert next_frame(source, 15) is not None, source.status
    stop()
    ride_out_outage(source, OUTAGE_S)
    status = source.status
    assert status.state == "retrying"
    assert status.failures >= 3
    assert status.error_kind == "refused", status
    start()
    restarted = time.monotonic()
    frame = next_frame(source, 3 * RESUME_DEADLINE_S)
    resumed_after = time.monotonic() - restarted
    assert frame is not None, source.status
    assert source.status.state == "connected"
    source.stop()
    # no wait of the outage was longer than the cap
    waits = [s.next_retry_s for s in statuses if s.state == "retrying"]
    assert waits and max(w or 0.0 for w in waits) <= source.backoff.max_s
    assert resumed_after < RESUME_DEADLINE_S
    return resumed_after


def test_mjpeg_camera_that_goes_away_and_comes_back_delivers_again_within_5_s(
    frames: list[bytes],
    started: list[FrameSource],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    statuses: list[SourceStatus] = []
    with caplog.at_level(logging.INFO, "agent.sources"), MjpegServer(frames) as camera:
        source = configured_source(camera.url, statuses)
        started.append(source)
        resumed_after = assert_outage_and_resume(source, statuses, camera.stop, camera.start)
    kinds = [s.error_kind for s in statuses if s.state == "retrying"]
    assert kinds[0] == "stopped" and set(kinds[1:]) == {"refused"}
    # one line when it stopped, one when the reason became "refused", one when it was back;
    # not one per try
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.sources"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(kinds) >= 4
    assert len(warnings) == 2, lines
    assert "stopped delivering frames" in warnings[0].getMessage()
    assert re.search(r"now connection (refused|reset) by 127\.0\.0\.1:", warnings[1].getMessage())
    assert any("recovered after" in line for line in lines)
    # and neither OpenCV nor FFmpeg wrote their own lines for each try
    err = capfd.readouterr().err
    assert "Connection refused" not in err and "WARN" not in err, err
    with capfd.disabled():
        print(f"MJPEG camera: frames again {resumed_after:.2f} s after it came back")


def test_rtsp_camera_that_goes_away_and_comes_back_delivers_again_within_5_s(
    started: list[FrameSource],
) -> None:
    statuses: list[SourceStatus] = []
    with RtspServer() as camera:
        source = configured_source(camera.url, statuses)
        started.append(source)
        resumed_after = assert_outage_and_resume(source, statuses, camera.stop, camera.start)
    print(f"RTSP camera: frames again {resumed_after:.2f} s after it came back")


@contextmanager
def refused(scheme: str) -> Iterator[str]:
    yield f"{scheme}://127.0.0.1:{free_port()}/cam"


@contextmanager
def mjpeg_path(frames: list[bytes], path: str) -> Iterator[str]:
    with MjpegServer(frames) as camera:
        yield f"http://127.0.0.1:{camera.port}{path}"


@contextmanager
def rtsp_path(path: str) -> Iterator[str]:
    with RtspServer() as camera:
        yield f"rtsp://127.0.0.1:{camera.port}{path}"


@contextmanager
def silent(scheme: str, accepting: bool) -> Iterator[str]:
    with SilentPort(accepting) as port:
        yield f"{scheme}://127.0.0.1:{port.port}/cam"


CASES: dict[str, tuple[Callable[[list[bytes]], AbstractContextManager[str]], str, list[str]]] = {
    "rtsp refused": (lambda f: refused("rtsp"), "refused", ["connection refused by 127.0.0.1:"]),
    "http refused": (lambda f: refused("http"), "refused", ["connection refused by 127.0.0.1:"]),
    "rtsp 404": (
        lambda f: rtsp_path("/nope"),
        "not_found",
        ["RTSP 404", "no stream at path /nope"],
    ),
    "http 404": (lambda f: mjpeg_path(f, "/nope.mjpg"), "not_found", ["HTTP 404", "/nope.mjpg"]),
    "host not answering": (
        lambda f: silent("rtsp", accepting=False),
        "timeout",
        ["no answer from 127.0.0.1:", "within 1 s"],
    ),
    "server not answering": (
        lambda f: silent("http", accepting=True),
        "timeout",
        ["accepts connections but did not answer within 1 s"],
    ),
    "http page, not a video": (
        lambda f: mjpeg_path(f, "/page"),
        "not_video",
        ["not a video", "/page", "text/html"],
    ),
    "rtsp audio, not a video": (
        lambda f: rtsp_path("/audio"),
        "not_video",
        ["not a video", "no video track"],
    ),
    "http login refused": (
        lambda f: mjpeg_path(f, "/private"),
        "unauthorized",
        ["HTTP 401", "needs a user and password"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stream_that_cannot_open_says_why(
    case: str,
    frames: list[bytes],
    started: list[FrameSource],
    capfd: pytest.CaptureFixture[str],
) -> None:
    make, kind, texts = CASES[case]
    statuses: list[SourceStatus] = []
    with make(frames) as url:
        source = StreamSource(
            url,
            open_timeout_s=1.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.1,
            on_status=statuses.append,
        )
        started.append(source)
        source.start()
        # the first try (FFmpeg, then the probe) and a retry (the connect check first)
        assert wait_until(lambda: source.status.failures >= 2, timeout=20), source.status
        source.stop()
    failed = [s for s in statuses if s.state == "retrying"]
    assert {s.error_kind for s in failed} == {kind}, failed
    for status in failed:
        for text in texts:
            assert text in (status.last_error or ""), status.last_error
    err = capfd.readouterr().err
    assert "WARN" not in err and "[rtsp @" not in err and "[tcp @" not in err, err


@pytest.mark.parametrize("path", ["/private", "/nope.mjpg"])
def test_the_reason_never_shows_the_password_or_the_query_of_the_url(
    path: str, frames: list[bytes], started: list[FrameSource]
) -> None:
    with MjpegServer(frames) as camera:
        url = f"http://admin:hunter2@127.0.0.1:{camera.port}{path}?token=s3cret"
        source = StreamSource(url, open_timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.1)
        started.append(source)
        source.start()
        assert wait_until(lambda: source.status.failures >= 1, timeout=10), source.status
        status = source.status
        source.stop()
    assert status.error_kind == ("unauthorized" if path == "/private" else "not_found")
    if path == "/private":
        assert "the user or password in the URL is not accepted" in (status.last_error or "")
    assert path in (status.last_error or "")
    reason = status.last_error or ""
    assert "hunter2" not in reason and "s3cret" not in reason, reason
    assert "hunter2" not in str(status.to_dict())


def test_a_file_that_opens_but_has_no_frame_is_not_a_video(
    tmp_path: Path, started: list[FrameSource]
) -> None:
    path = tmp_path / "clip.mp4"
    path.write_text("this is a text file, not a video\n" * 100)
    source = open_source(str(path), backoff_initial_s=0.05, backoff_max_s=0.1)
    started.append(source)
    source.start()
    assert wait_until(lambda: source.status.failures >= 1, timeout=5)
    assert source.status.error_kind == "not_video"
    assert "not a video" in (source.status.last_error or "")
    assert str(path) in (source.status.last_error or "")


def test_retry_log_says_the_first_failure_each_new_reason_and_a_summary_not_every_try(
    frames: list[bytes], started: list[FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    source = StreamSource(
        f"http://127.0.0.1:{port}/nope.mjpg", backoff_initial_s=0.01, backoff_max_s=0.02
    )
    source.retry_log.summary_s = 0.5
    started.append(source)
    with caplog.at_level(logging.DEBUG, "agent.sources"):
        source.start()
        assert wait_until(lambda: source.status.failures >= 40, timeout=10)
        # the port opens, and the path is not there: a new reason
        camera = MjpegServer(frames, port=port)
        camera.start()
        try:
            assert wait_until(lambda: source.status.error_kind == "not_found", timeout=10)
            failures = source.status.failures
            assert wait_until(lambda: source.status.failures >= failures + 5, timeout=10)
        finally:
            camera.stop()
        # back to refused: a reason already said in this outage
        failures = source.status.failures
        assert wait_until(
            lambda: (
                source.status.failures >= failures + 5 and source.status.error_kind == "refused"
            ),
            timeout=10,
        )
        source.stop()
    records = [r for r in caplog.records if r.name == "agent.sources"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    debug = [r for r in records if r.levelno == logging.DEBUG]
    assert "connection refused by 127.0.0.1:" in warnings[0]
    news = [w for w in warnings[1:] if "still failing" not in w]
    assert len(news) == 1 and "now 127.0.0.1:" in news[0] and "HTTP 404" in news[0], warnings
    summaries = [w for w in warnings if "still failing after" in w]
    assert summaries, warnings
    # every try is still in the debug log, but the warnings are a handful
    assert len(debug) + len(warnings) == source.status.failures
    assert len(warnings) <= 2 + len(summaries) < source.status.failures / 5


def test_agent_detects_again_within_5_s_of_its_camera_coming_back_and_says_why_it_was_away(
    broker: LocalBroker,
    subscriber: Callable[..., Subscriber],
    write_config: Callable[..., Path],
    run_agent: Callable[..., AgentProcess],
    assets: Path,
) -> None:
    faces = video_frames(MEDIA / "carphone_pristine.mp4", count=20, width=176)
    sub = subscriber("edge-agent/cam-test/#")
    with MjpegServer(faces) as camera:
        config = {
            "device_id": "cam-test",
            # the retry settings of a default config
            "source": {"uri": camera.url, "fps": 10},
            "model": {"path": str(assets / "face-short-range.tflite"), "threads": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5},
            "publish": {"mode": "every_frame"},
        }
        agent = run_agent(write_config(config))
        first = sub.wait_for("/detections", timeout=60)
        assert any(o["label"] == "face" for o in first["objects"])
        camera.stop()
        away = sub.wait_for(
            "/status",
            lambda s: (
                (s.get("source") or {}).get("state") == "retrying"
                and "connection refused by 127.0.0.1:"
                in ((s.get("source") or {}).get("last_error") or "")
            ),
            timeout=20,
        )
        assert away["state"] == "online"
        time.sleep(OUTAGE_S)
        camera.start()
        restarted, restarted_wall = time.monotonic(), time.time()
        back = sub.wait_for(
            "/detections", lambda b: b["ts"] >= restarted_wall, timeout=3 * RESUME_DEADLINE_S
        )
        resumed_after = time.monotonic() - restarted
        assert any(o["label"] == "face" for o in back["objects"])
        assert resumed_after < RESUME_DEADLINE_S
        # the retained status tells the camera is back (and what failed last)
        late = subscriber("edge-agent/cam-test/status")
        status = late.wait_for("/status")
        assert status["source"]["state"] == "connected", status
        assert "connection refused" in status["source"]["last_error"]
        print(f"agent: detections again {resumed_after:.2f} s after the camera came back")
        output = agent.output()
        assert agent.proc.poll() is None, output
    # neither OpenCV's nor FFmpeg's own lines, and our retry line not once per try
    assert "[ WARN" not in output and "[tcp @" not in output, output
    assert output.count("connection refused by") <= 2, output


def test_a_fresh_process_keeps_opencv_and_ffmpeg_lines_out_of_its_output() -> None:
    # a process of its own, so nothing this test process set up beforehand counts
    script = textwrap.dedent(
        f"""
        import logging, time
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        from agent.sources import open_source
        for uri in ("rtsp://127.0.0.1:{free_port()}/cam", "http://127.0.0.1:{free_port()}/v"):
            source = open_source(uri, backoff_initial_s=0.01, backoff_max_s=0.02)
            source.start()
            while source.status.failures < 5:
                time.sleep(0.01)
            source.stop()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # per source: its first failure, and no line of OpenCV's or FFmpeg's own
    assert [line.split(":")[0] for line in lines] == ["WARNING source rtsp", "WARNING source http"]
    assert all("connection refused by 127.0.0.1:" in line for line in lines), lines
