"""Tests of agent.sources against real files: MJPG videos and image folders written here.

Every frame carries its number in its pixel values, so order, loops and drops can be checked.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.sources import (
    CameraSource,
    FileSource,
    FolderSource,
    Frame,
    FrameSource,
    SourceStatus,
    StreamSource,
    open_source,
)

WIDTH, HEIGHT = 64, 48
# Pixel value = frame number x STEP; MJPG decodes a flat frame within 2 of what was written.
STEP = 8


def write_video(path: Path, frames: int = 20, fps: float = 20.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
    writer.release()
    return path


def number(frame: Frame) -> int:
    return round(float(frame.image.mean()) / STEP)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def read_all(source: FrameSource, timeout: float = 3.0) -> list[Frame]:
    frames = []
    while (frame := source.read(timeout=timeout)) is not None:
        frames.append(frame)
    return frames


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi")


@pytest.fixture
def fast_video(tmp_path: Path) -> Path:
    """30 frames at 100 fps: 0.3 s of realtime replay."""
    return write_video(tmp_path / "fast.avi", frames=30, fps=100.0)


@pytest.fixture
def statuses() -> list[SourceStatus]:
    return []


def test_file_hands_out_every_frame_in_order_then_ends(video: Path) -> None:
    with open_source(str(video), realtime=False) as source:
        frames = read_all(source)
        assert [f.id for f in frames] == list(range(20))
        assert [number(f) for f in frames] == list(range(20))
        assert all(
            f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames
        )
        assert all(f.source == str(video) for f in frames)
        assert source.read(timeout=0.1) is None
        assert source.ended
        status = source.status
        assert status.state == "ended"
        assert (status.frames, status.dropped, status.failures) == (20, 0, 0)
    assert source.status.state == "ended"


def test_loop_restarts_a_file_at_the_beginning(video: Path) -> None:
    with open_source(str(video), realtime=False, loop=True) as source:
        frames = [source.read(timeout=3) for _ in range(45)]
        assert all(f is not None for f in frames)
        assert [f.id for f in frames if f] == list(range(45))
        assert [number(f) for f in frames if f] == [i % 20 for i in range(45)]
        assert not source.ended
        assert source.status.state == "connected"


def test_slow_consumer_gets_the_newest_frame_and_old_ones_are_dropped(fast_video: Path) -> None:
    with open_source(str(fast_video)) as source:
        frames = []
        while (frame := source.read(timeout=3)) is not None:
            frames.append(frame)
            time.sleep(0.05)
        ids = [f.id for f in frames]
        assert ids == sorted(set(ids))
        assert len(frames) < 30
        assert source.status.dropped > 0
        assert source.status.dropped + len(frames) == source.status.frames == 30
        # the newest frame wins: the last one of the file is never lost
        assert number(frames[-1]) == 29
        assert source.ended


def test_fps_cap_limits_the_hand_out_rate(fast_video: Path) -> None:
    with open_source(str(fast_video), loop=True, fps=10) as source:
        count = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if source.read(timeout=0.5) is not None:
                count += 1
        # the file runs at 100 fps; capped at 10 about 10 frames come out in a second
        assert 4 <= count <= 16
        assert source.status.skipped > 30
        assert source.status.frames <= 17


def test_file_without_pacing_is_not_capped_to_its_own_fps(fast_video: Path) -> None:
    # realtime=False is the benchmark mode: as fast as the consumer takes frames
    start = time.monotonic()
    with open_source(str(fast_video), realtime=False) as source:
        assert len(read_all(source)) == 30
    assert time.monotonic() - start < 2.0


def test_folder_is_read_in_name_order_as_bgr(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        value = i * STEP
        if i == 1:
            image = np.full((HEIGHT, WIDTH), value, np.uint8)  # greyscale
        elif i == 2:
            image = np.full((HEIGHT, WIDTH, 4), value, np.uint8)  # BGRA
        else:
            image = np.full((HEIGHT, WIDTH, 3), value, np.uint8)
        suffix = [".png", ".png", ".png", ".bmp", ".PNG", ".jpg"][i]
        assert cv2.imwrite(str(folder / f"img_{i:02d}{suffix}"), image)
    (folder / "notes.txt").write_text("not an image")
    with open_source(str(folder), realtime=False) as source:
        assert isinstance(source, FolderSource)
        frames = read_all(source)
        assert [number(f) for f in frames] == list(range(6))
        assert all(
            f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames
        )
        assert source.ended


def test_folder_loop_replays_the_images(tmp_path: Path) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
    with open_source(str(tmp_path), loop=True) as source:
        frames = [source.read(timeout=3) for _ in range(10)]
        assert [number(f) for f in frames if f] == [i % 4 for i in range(10)]


def test_folder_passes_over_an_unreadable_image(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
    (tmp_path / "1b.jpg").write_bytes(b"not a jpeg")
    with open_source(str(tmp_path), realtime=False) as source:
        assert [number(f) for f in read_all(source)] == [0, 1, 2]
        assert source.ended


def test_folder_with_fps_is_paced(tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((HEIGHT, WIDTH, 3), i * STEP, np.uint8))
    start = time.monotonic()
    with open_source(str(tmp_path), fps=20, realtime=False) as source:
        assert len(read_all(source)) == 5
    # 5 frames at 20 fps cannot come out in much less than 0.2 s
    assert time.monotonic() - start > 0.15


def test_missing_file_is_retried_until_it_appears(
    tmp_path: Path, statuses: list[SourceStatus], started: list[FrameSource]
) -> None:
    path = tmp_path / "late.avi"
    source = open_source(
        str(path),
        realtime=False,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        on_status=statuses.append,
    )
    started.append(source)
    source.start()
    assert wait_until(lambda: source.status.failures >= 3)
    status = source.status
    assert status.state == "retrying"
    assert status.last_error is not None and "no such file" in status.last_error
    assert status.next_retry_s is not None and 0 <= status.next_retry_s <= 0.25
    assert not source.ended
    assert source.read(timeout=0.05) is None

    # write elsewhere and rename, so the source never sees a half-written file
    write_video(tmp_path / "writing.avi").replace(path)
    frame = source.read(timeout=5)
    assert frame is not None and number(frame) == 0
    assert source.status.state == "connected"
    assert source.status.failures == 0
    # The status callback runs on the source's thread and may follow the first frame.
    assert wait_until(lambda: statuses[-1].state == "connected")
    states = [s.state for s in statuses]
    assert "retrying" in states
    failures = [s.failures for s in statuses if s.state == "retrying"]
    assert failures == list(range(1, len(failures) + 1))


def test_backoff_doubles_up_to_the_cap(
    tmp_path: Path, statuses: list[SourceStatus], started: list[FrameSource]
) -> None:
    source = open_source(
        str(tmp_path / "never.avi"),
        backoff_initial_s=0.02,
        backoff_max_s=0.08,
        on_status=statuses.append,
    )
    started.append(source)
    source.start()
    assert wait_until(lambda: len(statuses) >= 5)
    delays = [s.next_retry_s or 0.0 for s in statuses[:5]]
    # x2 each time with 10 % jitter, capped at 0.08 s
    for delay, expected in zip(delays, [0.02, 0.04, 0.08, 0.08, 0.08], strict=True):
        assert expected * 0.85 <= delay <= min(expected * 1.15, 0.08)


def test_bad_network_url_goes_to_retrying_without_crashing(started: list[FrameSource]) -> None:
    source = open_source("rtsp://127.0.0.1:9/none", backoff_initial_s=0.05, backoff_max_s=0.1)
    started.append(source)
    assert isinstance(source, StreamSource)
    source.start()
    assert wait_until(lambda: source.status.failures >= 2)
    assert source.status.state == "retrying"
    assert source.status.error_kind == "refused"
    assert "connection refused by 127.0.0.1:9" in (source.status.last_error or "")
    assert source.read(timeout=0.05) is None
    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 2.0
    assert source.status.state == "stopped"


def test_silent_server_times_out_instead_of_hanging(started: list[FrameSource]) -> None:
    # a loopback server that accepts connections and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    # closing a socket does not wake an accept() blocked in another thread: poll instead
    server.settimeout(0.05)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        source = StreamSource(
            f"http://127.0.0.1:{port}/video", open_timeout_s=0.5, backoff_initial_s=0.05
        )
        started.append(source)
        source.start()
        # FFmpeg's own timeouts would leave it hanging far longer than this
        assert wait_until(lambda: source.status.failures >= 1, timeout=4.0)
        assert source.status.state == "retrying"
        assert source.status.error_kind == "timeout"
        assert "accepts connections but did not answer" in (source.status.last_error or "")
        assert accepted, "the source never connected to the server"
        source.stop()
    finally:
        done.set()
        thread.join(2)
        server.close()
        for conn in accepted:
            conn.close()


def test_stop_during_backoff_returns_promptly(tmp_path: Path) -> None:
    source = open_source(str(tmp_path / "missing.avi"), backoff_initial_s=10, backoff_max_s=10)
    source.start()
    assert wait_until(lambda: source.status.state == "retrying")
    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 1.0
    assert source.status.state == "stopped"
    assert source.status.next_retry_s is None
    assert source.read(timeout=5) is None  # returns at once: nothing will come


def test_file_removed_while_looping_leads_to_retrying(
    tmp_path: Path, started: list[FrameSource]
) -> None:
    path = write_video(tmp_path / "doomed.avi")
    source = open_source(str(path), realtime=False, loop=True, backoff_initial_s=0.05)
    started.append(source)
    source.start()
    assert source.read(timeout=3) is not None
    path.unlink()

    def drain_until_retrying() -> bool:
        source.read(timeout=0.01)
        return source.status.state == "retrying"

    assert wait_until(drain_until_retrying)
    assert "no such file" in (source.status.last_error or "")
    assert source.status.failures >= 1


def test_undecodable_file_is_a_failure_not_an_end(
    tmp_path: Path, started: list[FrameSource]
) -> None:
    path = tmp_path / "garbage.avi"
    path.write_bytes(b"\x00" * 4096)
    source = open_source(str(path), loop=True, backoff_initial_s=0.05)
    started.append(source)
    source.start()
    assert wait_until(lambda: source.status.failures >= 1)
    assert source.status.state == "retrying"
    assert not source.ended


def test_missing_camera_device_is_retried(started: list[FrameSource]) -> None:
    source = open_source("/dev/video99", backoff_initial_s=0.05)
    started.append(source)
    assert isinstance(source, CameraSource)
    source.start()
    assert wait_until(lambda: source.status.failures >= 1)
    assert source.status.state == "retrying"
    assert "/dev/video99" in (source.status.last_error or "")


@pytest.mark.expect_thread_errors("the status callback raises on purpose; the source logs it")
def test_callback_that_raises_does_not_stop_the_source(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(status: SourceStatus) -> None:
        raise RuntimeError("callback bug")

    with (
        caplog.at_level(logging.ERROR, "agent.sources"),
        open_source(str(video), realtime=False, on_status=broken) as source,
    ):
        assert len(read_all(source)) == 20
    assert "on_status callback failed" in caplog.text


def test_stop_is_idempotent_and_works_before_start(video: Path) -> None:
    source = open_source(str(video))
    source.stop()
    source.stop()
    assert source.status.state == "stopped"
    assert source.read(timeout=5) is None
    with pytest.raises(RuntimeError):
        source.start()


def test_open_source_picks_the_kind_from_the_uri(tmp_path: Path, video: Path) -> None:
    kinds: dict[str | int, type[FrameSource]] = {
        0: CameraSource,
        "2": CameraSource,
        "/dev/video1": CameraSource,
        "rtsp://127.0.0.1:8554/cam": StreamSource,
        "rtsps://127.0.0.1/cam": StreamSource,
        "http://127.0.0.1/video.mjpg": StreamSource,
        "HTTPS://127.0.0.1/live": StreamSource,
        str(tmp_path): FolderSource,
        str(video): FileSource,
        str(tmp_path / "not-yet.mp4"): FileSource,
    }
    for uri, cls in kinds.items():
        assert type(open_source(uri)) is cls, uri
    camera = open_source(3)
    assert isinstance(camera, CameraSource) and camera.device == 3


def test_password_never_shows_in_status_or_frames(started: list[FrameSource]) -> None:
    source = open_source("rtsp://admin:hunter2@127.0.0.1:9/stream", backoff_initial_s=0.05)
    started.append(source)
    source.start()
    assert wait_until(lambda: source.status.failures >= 1)
    assert "hunter2" not in str(source.status.to_dict())
    assert source.status.uri == "rtsp://admin:***@127.0.0.1:9/stream"


def test_status_to_dict_has_the_documented_keys(video: Path) -> None:
    with open_source(str(video), realtime=False) as source:
        source.read(timeout=3)
        data = source.status.to_dict()
    assert {
        "state",
        "uri",
        "frames",
        "dropped",
        "failures",
        "last_error",
        "next_retry_s",
    } <= set(data)
    assert data["state"] == "connected"


def test_a_retry_cap_below_the_first_wait_is_a_config_error_naming_the_keys() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("source:\n  backoff_initial_s: 5\n  backoff_max_s: 1\n", "cam.yaml")
    assert "cam.yaml" in str(err.value) and "backoff_max_s (1)" in str(err.value)
    assert "backoff_initial_s (5)" in str(err.value)
