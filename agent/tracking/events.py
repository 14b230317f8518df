"""The event builder of one camera: turns the tracker's frames into events (DESIGN.md section 5:
``new`` / ``update`` / ``end``), the counts per label and per zone, and the best snapshot of the
latest event of each label.

Rules:
- ``new`` once a track is confirmed; tentative tracks produce nothing and are not counted.
- ``update`` when an event's zones (one entered or left), its stationary state or its best
  snapshot change, at most once per ``update_interval_s`` after the event's previous message
  (``new`` included), measured on the frames' ``ts`` (not read from the clock: deterministic). A
  change in the quiet time is sent at the first frame after it, never lost; an ``end`` carries
  whatever was still waiting. ``ts`` stepping back (the clock was set) ends the quiet time.
- ``end`` when the tracker reports the track lost (``TrackUpdate.ended``), with ``end`` = the
  track's ``last_ts``. An open event whose track vanishes from ``active`` without being reported
  ended is ended the same way (its last seen ``ts``), so no event stays open forever.
- ``close(ts)`` (agent stop) ends every open event and sets every count to 0, as Frigate does on a
  clean stop: a subscriber never keeps an event or a retained count that nothing will end.
- The best snapshot of an event is its matched frame with the highest score since it was
  confirmed. The builder holds one frame per open event at most (a reference: the pipeline hands a
  fresh image per frame and must not draw on it) and none once the event ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.detection.draw import annotate, jpeg_within
from agent.detection.types import Detection
from agent.tracking.types import Box, TrackedObject, TrackUpdate
from agent.tracking.zones import Zones

EventType = Literal["new", "update", "end"]


def _box(box: Box) -> list[float]:
    return [round(v, 4) for v in box]


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The frame of an event where its object scored highest, with that score and box."""

    label: str
    ts: float
    score: float
    box: Box
    image: npt.NDArray[np.uint8] = field(repr=False)
    # encoded once per size cap: the retained topic and the store both want the same bytes
    _jpegs: dict[int, bytes] = field(default_factory=dict, init=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``snapshot`` of an event payload."""
        return {"ts": round(self.ts, 3), "score": round(self.score, 4), "box": _box(self.box)}

    def jpeg(self, max_bytes: int) -> bytes:
        """The frame with the object's box and label drawn, as a JPEG of at most ``max_bytes``
        (quality and then size lowered until it fits)."""
        if max_bytes not in self._jpegs:
            drawn = annotate(self.image, [Detection(self.label, -1, self.score, self.box)])
            self._jpegs[max_bytes] = jpeg_within(drawn, max_bytes)
        return self._jpegs[max_bytes]


@dataclass(frozen=True)
class EventMessage:
    """One message for ``C/events``; ``snapshot`` is the event's best frame so far (for the
    events on disk), not part of the payload."""

    type: EventType
    ts: float
    event: dict[str, Any]
    snapshot: Snapshot | None = field(default=None, repr=False)

    def payload(self, seq: int) -> dict[str, Any]:
        """The JSON body of DESIGN.md section 5; ``seq`` is the publisher's."""
        return {"type": self.type, "seq": seq, "ts": round(self.ts, 3), "event": self.event}


@dataclass
class FrameEvents:
    """What one frame changed, to publish.

    ``counts`` and ``zone_counts`` hold only the entries whose value changed since the previous
    frame (0 included, when the last object left): exactly the retained ``C/objects/<label>`` and
    ``C/zones/<zone>/<label>`` messages to send. The full current counts are
    ``EventBuilder.counts()`` and ``EventBuilder.zone_counts()``. ``snapshots`` are
    ``(label, snapshot)`` for ``C/objects/<label>/snapshot``: the latest event of the label has a
    better snapshot than the one last given for that label."""

    messages: list[EventMessage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    zone_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    snapshots: list[tuple[str, Snapshot]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.messages or self.counts or self.zone_counts or self.snapshots)


@dataclass
class _Event:
    """An open event: what was last seen of its track and what was last sent."""

    id: str
    label: str
    start: float
    score: float
    top_score: float
    box: Box
    last_ts: float
    stationary: bool
    zones: list[str]
    entered: list[str]
    last_sent: float
    best: Snapshot | None = None
    pending: bool = False  # a change waits for the end of the quiet time

    def see(self, track: TrackedObject) -> None:
        self.score = track.score
        self.top_score = max(self.top_score, track.top_score)
        self.box = track.box
        self.last_ts = track.last_ts

    def to_dict(self, camera: str, end: float | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera": camera,
            "label": self.label,
            "score": round(self.score, 4),
            "top_score": round(self.top_score, 4),
            "box": _box(self.box),
            "zones": list(self.zones),
            "entered_zones": list(self.entered),
            "start": round(self.start, 3),
            "end": None if end is None else round(end, 3),
            "stationary": self.stationary,
            "snapshot": None if self.best is None else self.best.to_dict(),
        }


class EventBuilder:
    """Events, counts and snapshots of one camera, from the tracker's updates.

    ``labels`` (optional) are the labels the model can report: the first frame then gives a 0
    count for each of them (and for each zone they can be in), which clears counts a previous run
    left retained."""

    def __init__(
        self,
        camera: str,
        zones: Zones,
        update_interval_s: float = 1.0,
        *,
        labels: Sequence[str] = (),
    ) -> None:
        self.camera = camera
        self.zones = zones
        self.update_interval_s = update_interval_s
        self._open: dict[str, _Event] = {}
        # the counts last reported (zeros dropped); -1: never reported, so a 0 is sent first
        self._counts: dict[str, int] = dict.fromkeys(labels, -1)
        self._zone_counts: dict[tuple[str, str], int] = {
            (zone, label): -1
            for zone in zones.names
            for label in (zones.labels(zone) or labels)
        }
        # per label: the event that is the latest, and the snapshot last given for the label
        self._latest: dict[str, str] = {}
        self._shown: dict[str, tuple[str, float]] = {}  # (event id, snapshot ts): no frame

    def counts(self) -> dict[str, int]:
        """Confirmed objects in view now, per label (labels with none left out)."""
        return {k: v for k, v in self._counts.items() if v > 0}

    def zone_counts(self) -> dict[tuple[str, str], int]:
        """Confirmed objects inside each zone now, per ``(zone, label)`` (none left out)."""
        return {k: v for k, v in self._zone_counts.items() if v > 0}

    def open_events(self) -> list[str]:
        """The ids of the events not ended yet."""
        return list(self._open)

    def update(
        self, tracks: TrackUpdate, ts: float, image: npt.NDArray[np.uint8] | None
    ) -> FrameEvents:
        """One model run's tracks, at frame time ``ts``; ``image`` is that frame (None: no
        snapshot from this frame)."""
        out = FrameEvents()
        for track in tracks.ended:
            event = self._open.get(track.id)
            if event is None and track.confirmed:  # confirmed and lost unseen: still an event
                event = self._start(track, self.zones.of(track.label, track.box), None, ts, out)
            if event is not None:
                event.see(track)
                self._end(event, ts, out)
        counts: dict[str, int] = {}
        zone_counts: dict[tuple[str, str], int] = {}
        seen: set[str] = set()
        for track in tracks.active:
            if not track.confirmed:
                continue
            seen.add(track.id)
            zones = self.zones.of(track.label, track.box)
            counts[track.label] = counts.get(track.label, 0) + 1
            for zone in zones:
                key = (zone, track.label)
                zone_counts[key] = zone_counts.get(key, 0) + 1
            best = self._better(track, ts, image)
            event = self._open.get(track.id)
            if event is None:
                self._start(track, zones, best, ts, out)
            else:
                self._follow(event, track, zones, best, ts, out)
        for event in [e for e in self._open.values() if e.id not in seen]:
            self._end(event, ts, out)  # vanished without a word from the tracker
        out.counts = self._changed(self._counts, counts)
        out.zone_counts = self._changed(self._zone_counts, zone_counts)
        self._counts, self._zone_counts = counts, zone_counts
        return out

    def close(self, ts: float) -> FrameEvents:
        """The agent stops: every open event ends (at its last seen ``ts``), every count is 0."""
        out = FrameEvents()
        for event in list(self._open.values()):
            self._end(event, ts, out)
        out.counts = self._changed(self._counts, {})
        out.zone_counts = self._changed(self._zone_counts, {})
        self._counts, self._zone_counts = {}, {}
        return out

    # --- one event's life ---

    def _better(
        self, track: TrackedObject, ts: float, image: npt.NDArray[np.uint8] | None
    ) -> Snapshot | None:
        """This frame as the track's snapshot, if it is better than the event's best (only a
        frame where the object was matched: a missed one has a predicted box)."""
        if image is None or track.missed:
            return None
        event = self._open.get(track.id)
        if event is not None and event.best is not None and track.score <= event.best.score:
            return None
        return Snapshot(track.label, ts, track.score, track.box, image)

    def _start(
        self,
        track: TrackedObject,
        zones: list[str],
        best: Snapshot | None,
        ts: float,
        out: FrameEvents,
    ) -> _Event:
        event = _Event(
            id=track.id,
            label=track.label,
            start=track.first_ts,
            score=track.score,
            top_score=track.top_score,
            box=track.box,
            last_ts=track.last_ts,
            stationary=track.stationary,
            zones=zones,
            entered=list(zones),
            last_sent=ts,
            best=best,
        )
        self._open[event.id] = event
        self._latest[event.label] = event.id
        self._send(event, "new", ts, out)
        return event

    def _follow(
        self,
        event: _Event,
        track: TrackedObject,
        zones: list[str],
        best: Snapshot | None,
        ts: float,
        out: FrameEvents,
    ) -> None:
        event.see(track)
        if zones != event.zones:
            event.zones = zones
            event.entered.extend(z for z in zones if z not in event.entered)
            event.pending = True
        if track.stationary != event.stationary:
            event.stationary = track.stationary
            event.pending = True
        if best is not None:
            event.best = best  # the previous best frame is let go here
            event.pending = True
        # a clock stepped back (``ts`` is wall-clock) must not hold updates back until it catches up
        quiet = event.last_sent <= ts < event.last_sent + self.update_interval_s
        if event.pending and not quiet:
            self._send(event, "update", ts, out)

    def _end(self, event: _Event, ts: float, out: FrameEvents) -> None:
        self._send(event, "end", ts, out)
        del self._open[event.id]

    def _send(self, event: _Event, kind: EventType, ts: float, out: FrameEvents) -> None:
        end = event.last_ts if kind == "end" else None
        out.messages.append(EventMessage(kind, ts, event.to_dict(self.camera, end), event.best))
        event.last_sent = ts
        event.pending = False
        best = event.best
        if best is not None and self._latest.get(event.label) == event.id:
            shown = (event.id, best.ts)
            if self._shown.get(event.label) != shown:
                self._shown[event.label] = shown
                out.snapshots.append((event.label, best))

    @staticmethod
    def _changed(old: dict[Any, int], new: dict[Any, int]) -> dict[Any, int]:
        keys: Iterable[Any] = {**old, **new}
        return {k: new.get(k, 0) for k in keys if new.get(k, 0) != old.get(k, 0)}
