"""Filters, zones and the event builder on hand-made sequences with known answers: masks and the
per-label score and area filters, zone membership by anchor and label, one ``new`` / ``update`` /
``end`` per object, nothing for a track that never confirms, counts per label and zone, the
update rate limit, the best snapshot and its JPEG, and ``close`` at agent stop."""

from __future__ import annotations

import gc
import weakref

import cv2
import numpy as np
import pytest

from agent.config import ObjectConfig, ZoneConfig
from agent.detection import Detection
from agent.tracking.events import EventBuilder, FrameEvents
from agent.tracking.filters import ObjectFilters
from agent.tracking.types import Box, TrackedObject, TrackUpdate
from agent.tracking.zones import Zones

H, W = 240, 320
# a vertical band in the middle of the frame, for people only
GATE = ZoneConfig(polygon=[(0.4, 0.0), (0.6, 0.0), (0.6, 1.0), (0.4, 1.0)], labels=["person"])
# the lower half, for everything
LAWN = ZoneConfig(polygon=[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)])
EVENT_KEYS = {"id", "camera", "label", "score", "top_score", "box", "zones", "entered_zones",
              "start", "end", "stationary", "snapshot"}


def det(label: str, score: float, box: Box) -> Detection:
    return Detection(label, 0, score, box)


def track(
    id: str,
    x: float,
    ts: float,
    *,
    label: str = "person",
    score: float = 0.8,
    confirmed: bool = True,
    first_ts: float = 0.0,
    missed: int = 0,
    stationary: bool = False,
    y2: float = 0.9,
) -> TrackedObject:
    """An object 0.1 wide, 0.4 tall, whose anchor (bottom centre) is at ``(x, y2)``."""
    return TrackedObject(
        id=id,
        label=label,
        box=(x - 0.05, y2 - 0.4, x + 0.05, y2),
        score=score,
        first_ts=first_ts,
        last_ts=ts,
        scores=[score],
        confirmed=confirmed,
        missed=missed,
        stationary=stationary,
    )


def frame(value: int = 0) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def kinds(out: FrameEvents) -> list[str]:
    return [m.type for m in out.messages]


# --- filters ---


def test_a_detection_whose_anchor_is_in_a_mask_is_dropped() -> None:
    # the top left corner is masked
    filters = ObjectFilters([[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]], {})
    masked = det("person", 0.9, (0.1, 0.1, 0.3, 0.4))  # anchor (0.2, 0.4): under the mask
    # most of this box is under the mask, but its anchor (0.3, 0.7) is not: it stays
    standing_below = det("person", 0.9, (0.1, 0.1, 0.5, 0.7))
    elsewhere = det("person", 0.9, (0.6, 0.6, 0.8, 0.9))
    assert filters.apply([masked, standing_below, elsewhere]) == [standing_below, elsewhere]
    assert ObjectFilters([], {}).apply([masked]) == [masked]


def test_min_score_is_per_label_and_other_labels_get_the_defaults() -> None:
    filters = ObjectFilters([], {"person": ObjectConfig(min_score=0.7)})
    person_low = det("person", 0.65, (0.1, 0.1, 0.3, 0.5))
    person_ok = det("person", 0.7, (0.1, 0.1, 0.3, 0.5))
    car_ok = det("car", 0.65, (0.1, 0.1, 0.3, 0.5))  # default min_score 0.5
    car_low = det("car", 0.45, (0.1, 0.1, 0.3, 0.5))
    assert filters.apply([person_low, person_ok, car_ok, car_low]) == [person_ok, car_ok]
    assert filters.settings("car") == ObjectConfig()


def test_boxes_outside_min_area_and_max_area_are_dropped() -> None:
    filters = ObjectFilters([], {"person": ObjectConfig(min_area=0.01, max_area=0.5)})
    tiny = det("person", 0.9, (0.5, 0.5, 0.55, 0.55))  # 0.0025 of the frame
    small = det("person", 0.9, (0.5, 0.5, 0.7, 0.6))  # 0.02
    huge = det("person", 0.9, (0.0, 0.0, 0.9, 0.9))  # 0.81
    half = det("person", 0.9, (0.0, 0.0, 1.0, 0.5))  # 0.5 exactly: on the limit, kept
    tiny_car = det("car", 0.9, (0.5, 0.5, 0.55, 0.55))  # cars have no area limits
    assert filters.apply([tiny, small, huge, half, tiny_car]) == [small, half, tiny_car]


# --- zones ---


def test_zones_hold_an_object_by_its_anchor_and_only_their_labels() -> None:
    zones = Zones({"gate": GATE, "lawn": LAWN})
    assert zones.names == ["gate", "lawn"]
    assert zones.of("person", (0.45, 0.6, 0.55, 0.9)) == ["gate", "lawn"]
    assert zones.of("car", (0.45, 0.6, 0.55, 0.9)) == ["lawn"]  # gate counts people only
    # the box reaches into the gate but its bottom centre (0.3, 0.9) does not
    assert zones.of("person", (0.2, 0.6, 0.41, 0.9)) == ["lawn"]
    # anchor at (0.5, 0.4): in the gate, above the lawn
    assert zones.of("person", (0.45, 0.1, 0.55, 0.4)) == ["gate"]
    assert zones.labels("gate") == {"person"}
    assert zones.labels("lawn") == frozenset()


# --- events ---


def test_an_object_walking_through_a_zone_gives_one_new_an_update_per_zone_change_one_end() -> None:
    builder = EventBuilder("driveway", Zones({"gate": GATE}))
    messages = []
    # 1 fps, left to right: the anchor is in the gate (0.4 to 0.6) at t = 3, 4, 5
    xs = [0.1, 0.2, 0.3, 0.45, 0.5, 0.55, 0.7, 0.8]
    for t, x in enumerate(xs):
        obj = track("p1", x, float(t), confirmed=t >= 1)
        out = builder.update(TrackUpdate([obj], []), float(t), frame())
        messages += [(t, m) for m in out.messages]
    lost = track("p1", 0.8, 7.0)
    out = builder.update(TrackUpdate([], [lost]), 9.0, frame())
    messages += [(9, m) for m in out.messages]

    assert [(t, m.type) for t, m in messages] == [
        (1, "new"), (3, "update"), (6, "update"), (9, "end")
    ]
    new, enter, leave, end = (m for _, m in messages)
    assert set(new.event) == EVENT_KEYS
    assert new.event["id"] == end.event["id"] == "p1"
    assert new.event["camera"] == "driveway" and new.event["label"] == "person"
    assert new.event["zones"] == [] and new.event["entered_zones"] == []
    assert new.event["end"] is None and new.event["stationary"] is False
    assert enter.event["zones"] == ["gate"] and enter.event["entered_zones"] == ["gate"]
    assert leave.event["zones"] == [] and leave.event["entered_zones"] == ["gate"]
    assert end.event["entered_zones"] == ["gate"]
    assert end.event["start"] == 0.0 and end.event["end"] == 7.0  # the track's last_ts
    assert end.ts == 9.0
    assert end.event["box"] == [0.75, 0.5, 0.85, 0.9]
    payload = end.payload(seq=41)
    assert payload == {"type": "end", "seq": 41, "ts": 9.0, "event": end.event}
    assert builder.open_events() == []


def test_entered_zones_keep_the_order_of_entry() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE, "lawn": LAWN}), update_interval_s=0)
    builder.update(TrackUpdate([track("p", 0.5, 0.0, y2=0.3)], []), 0.0, None)  # gate only
    out = builder.update(TrackUpdate([track("p", 0.2, 1.0, y2=0.8)], []), 1.0, None)
    assert out.messages[0].event["zones"] == ["lawn"]
    assert out.messages[0].event["entered_zones"] == ["gate", "lawn"]


def test_a_track_that_never_confirms_gives_no_event_and_no_count() -> None:
    builder = EventBuilder("c", Zones({"lawn": LAWN}))
    blip = track("fp", 0.5, 0.0, score=0.55, confirmed=False)
    out = builder.update(TrackUpdate([blip], []), 0.0, frame())
    assert not out
    out = builder.update(TrackUpdate([], [blip]), 1.0, frame())
    assert not out
    assert builder.counts() == {} and builder.zone_counts() == {}


def test_counts_per_label_and_per_zone_are_given_when_they_change() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE, "lawn": LAWN}))
    a = track("a", 0.5, 0.0)  # gate and lawn
    b = track("b", 0.2, 0.0)  # lawn
    car = track("car1", 0.5, 0.0, label="car", y2=0.3)  # neither (above the lawn; gate: people)
    tentative = track("t", 0.2, 0.0, confirmed=False)
    out = builder.update(TrackUpdate([a, b, car, tentative], []), 0.0, None)
    assert out.counts == {"person": 2, "car": 1}
    assert out.zone_counts == {("gate", "person"): 1, ("lawn", "person"): 2}
    # the same again: nothing changed, nothing to publish
    out = builder.update(TrackUpdate([a, b, car, tentative], []), 1.0, None)
    assert out.counts == {} and out.zone_counts == {}
    # b is lost, the car drives down into the lawn
    car_down = track("car1", 0.5, 2.0, label="car", y2=0.9)
    out = builder.update(TrackUpdate([a, car_down], [b]), 2.0, None)
    assert out.counts == {"person": 1}
    assert out.zone_counts == {("lawn", "person"): 1, ("lawn", "car"): 1}
    assert builder.counts() == {"person": 1, "car": 1}
    assert builder.zone_counts() == {
        ("gate", "person"): 1, ("lawn", "person"): 1, ("lawn", "car"): 1
    }
    out = builder.update(TrackUpdate([], [a, car_down]), 3.0, None)
    assert out.counts == {"person": 0, "car": 0}
    assert out.zone_counts == {("gate", "person"): 0, ("lawn", "person"): 0, ("lawn", "car"): 0}


def test_known_labels_get_a_zero_count_on_the_first_frame() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE, "lawn": LAWN}), labels=["person", "car"])
    out = builder.update(TrackUpdate([track("a", 0.2, 0.0)], []), 0.0, None)
    assert out.counts == {"person": 1, "car": 0}
    assert out.zone_counts == {
        ("gate", "person"): 0, ("lawn", "person"): 1, ("lawn", "car"): 0
    }
    out = builder.update(TrackUpdate([track("a", 0.2, 1.0)], []), 1.0, None)
    assert out.counts == {} and out.zone_counts == {}


def test_updates_come_at_most_once_per_interval_and_none_is_lost() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE}), update_interval_s=1.0)
    assert kinds(builder.update(TrackUpdate([track("p", 0.2, 0.0)], []), 0.0, None)) == ["new"]
    assert not builder.update(TrackUpdate([track("p", 0.3, 1.0)], []), 1.0, None)
    # 2.0: enters the gate: sent at once (1 s since the new)
    out = builder.update(TrackUpdate([track("p", 0.5, 2.0)], []), 2.0, None)
    assert kinds(out) == ["update"] and out.messages[0].event["zones"] == ["gate"]
    # 2.4: stands still; it is a change, but within the quiet time
    out = builder.update(TrackUpdate([track("p", 0.5, 2.4, stationary=True)], []), 2.4, None)
    assert kinds(out) == []
    out = builder.update(TrackUpdate([track("p", 0.5, 2.8, stationary=True)], []), 2.8, None)
    assert kinds(out) == []
    # 3.2: the first frame after the quiet time carries it
    out = builder.update(TrackUpdate([track("p", 0.5, 3.2, stationary=True)], []), 3.2, None)
    assert kinds(out) == ["update"]
    assert out.messages[0].event["stationary"] is True
    assert out.messages[0].ts == 3.2
    # nothing changed since: no more updates
    out = builder.update(TrackUpdate([track("p", 0.5, 5.0, stationary=True)], []), 5.0, None)
    assert kinds(out) == []


def test_a_clock_set_back_does_not_hold_updates_back() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE}), update_interval_s=1.0)
    builder.update(TrackUpdate([track("p", 0.3, 1000.0)], []), 1000.0, None)
    out = builder.update(TrackUpdate([track("p", 0.5, 10.0)], []), 10.0, None)
    assert kinds(out) == ["update"]


def test_a_change_still_waiting_when_the_event_ends_is_in_the_end_message() -> None:
    builder = EventBuilder("c", Zones({"gate": GATE}), update_interval_s=1.0)
    builder.update(TrackUpdate([track("p", 0.3, 0.0)], []), 0.0, None)
    out = builder.update(TrackUpdate([track("p", 0.5, 0.5)], []), 0.5, None)  # quiet time
    assert kinds(out) == []
    out = builder.update(TrackUpdate([], [track("p", 0.5, 0.5)]), 0.7, None)
    assert kinds(out) == ["end"]
    assert out.messages[0].event["entered_zones"] == ["gate"]


def test_the_best_snapshot_is_the_highest_score_and_the_builder_keeps_only_that_frame() -> None:
    builder = EventBuilder("c", Zones({}), update_interval_s=0)
    frames = [frame(v) for v in (10, 20, 30, 40, 50)]
    scores = [0.75, 0.9, 0.8, 0.85, 0.95]
    refs = [weakref.ref(f) for f in frames]
    given = []
    for t, (image, score) in enumerate(zip(frames, scores, strict=True)):
        # the last frame is missed: its high score must not count (its box is a prediction)
        obj = track("p", 0.5, float(t), score=score, missed=1 if t == 4 else 0)
        out = builder.update(TrackUpdate([obj], []), float(t), image)
        given += [(t, m.type, m.event["snapshot"]) for m in out.messages]
        given += [(t, "topic", s.score) for _, s in out.snapshots]
    assert given == [
        (0, "new", {"ts": 0.0, "score": 0.75, "box": [0.45, 0.5, 0.55, 0.9]}),
        (0, "topic", 0.75),
        (1, "update", {"ts": 1.0, "score": 0.9, "box": [0.45, 0.5, 0.55, 0.9]}),
        (1, "topic", 0.9),
    ]
    del frames, image, out
    gc.collect()
    assert [r() is not None for r in refs] == [False, True, False, False, False]
    out = builder.update(TrackUpdate([], [track("p", 0.5, 4.0)]), 5.0, None)
    assert out.messages[0].event["snapshot"]["score"] == 0.9
    assert out.messages[0].snapshot is not None
    assert int(out.messages[0].snapshot.image[0, 0, 0]) == 20
    del out
    gc.collect()
    assert refs[1]() is None  # the event ended: its frame is let go


def test_the_snapshot_topic_follows_the_latest_event_of_each_label() -> None:
    builder = EventBuilder("c", Zones({}), update_interval_s=0)
    out = builder.update(TrackUpdate([track("a", 0.3, 0.0, score=0.8)], []), 0.0, frame())
    assert [(label, s.score) for label, s in out.snapshots] == [("person", 0.8)]
    both = [track("a", 0.3, 1.0, score=0.8), track("b", 0.7, 1.0, score=0.72)]
    out = builder.update(TrackUpdate(both, []), 1.0, frame())
    # b is the latest person event: its first snapshot is the label's, a's better one is not
    assert [(label, s.score) for label, s in out.snapshots] == [("person", 0.72)]
    both = [track("a", 0.3, 2.0, score=0.95), track("b", 0.7, 2.0, score=0.78)]
    out = builder.update(TrackUpdate(both, []), 2.0, frame())
    assert [(label, s.score) for label, s in out.snapshots] == [("person", 0.78)]
    assert kinds(out) == ["update", "update"]  # a's event still gets its better snapshot
    car = track("c1", 0.5, 3.0, label="car", score=0.6)
    out = builder.update(TrackUpdate([car], []), 3.0, frame())
    assert [(label, s.score) for label, s in out.snapshots] == [("car", 0.6)]


def test_the_snapshot_jpeg_shows_the_box_and_keeps_within_the_size_cap() -> None:
    builder = EventBuilder("c", Zones({}))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)  # noise: a big JPEG
    out = builder.update(TrackUpdate([track("p", 0.5, 0.0)], []), 0.0, image)
    [(_, snapshot)] = out.snapshots

    roomy = snapshot.jpeg(2_000_000)
    decoded = cv2.imdecode(np.frombuffer(roomy, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    # the box's left edge (x = 0.45 * 640 = 288) is drawn green, the noise beside it is not
    edge = decoded[300:400, 288].astype(int)
    assert (edge[:, 1] > 150).mean() > 0.9 and (edge[:, 2] < 80).mean() > 0.9
    assert snapshot.jpeg(2_000_000) is roomy  # encoded once per cap

    small = snapshot.jpeg(20_000)
    assert len(small) <= 20_000
    decoded = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[0] < 480  # it had to be scaled down
    assert decoded.shape[1] / decoded.shape[0] == pytest.approx(640 / 480, rel=0.02)


def test_close_ends_every_open_event_and_sets_the_counts_to_zero() -> None:
    builder = EventBuilder("c", Zones({"lawn": LAWN}))
    objs = [track("a", 0.2, 4.0), track("b", 0.7, 3.5, label="car"),
            track("t", 0.5, 4.0, confirmed=False)]
    builder.update(TrackUpdate(objs, []), 4.0, None)
    out = builder.close(10.0)
    assert sorted((m.type, m.event["id"], m.event["end"]) for m in out.messages) == [
        ("end", "a", 4.0), ("end", "b", 3.5)
    ]
    assert all(m.ts == 10.0 for m in out.messages)
    assert out.counts == {"person": 0, "car": 0}
    assert out.zone_counts == {("lawn", "person"): 0, ("lawn", "car"): 0}
    assert builder.open_events() == [] and not builder.close(11.0)


def test_an_event_whose_track_vanishes_unreported_is_ended() -> None:
    builder = EventBuilder("c", Zones({}))
    builder.update(TrackUpdate([track("a", 0.2, 0.0), track("b", 0.6, 0.0)], []), 0.0, None)
    out = builder.update(TrackUpdate([track("b", 0.6, 1.0)], []), 1.0, None)
    assert [(m.type, m.event["id"], m.event["end"]) for m in out.messages] == [("end", "a", 0.0)]
    assert out.counts == {"person": 1}


def test_a_confirmed_track_lost_before_the_builder_saw_it_still_gives_new_and_end() -> None:
    builder = EventBuilder("c", Zones({}))
    out = builder.update(TrackUpdate([], [track("a", 0.2, 2.0, first_ts=1.0)]), 3.0, None)
    assert [(m.type, m.event["start"], m.event["end"]) for m in out.messages] == [
        ("new", 1.0, None), ("end", 1.0, 2.0)
    ]
