"""Follows detections across model runs: a Kalman filter per object (OpenCV's) predicts where it
went, an optimal assignment (``lap``'s Jonker-Volgenant solver) pairs predictions with detections,
and a life cycle (tentative -> confirmed -> lost, stationary) says what the events are.

Chosen by measurement against norfair, roboflow's trackers (SORT, ByteTrack, OC-SORT) and motpy
(``scripts/track_compare.py``, README "Tracker"): at the 2-5 fps we run, a constant-velocity
filter with time in seconds and a low IoU gate keep ids best, and only ``lap`` is new (2.4 MB,
numpy its one dependency; the others bring scipy or more).

Rules (Frigate's, where Frigate has one):

- Only detections of the same label are paired; each model run is one :meth:`Tracker.update`.
  Frames the motion gate keeps from the model never reach it, so they neither age nor end tracks.
- A detection no track takes starts a tentative track. ``confirmed`` becomes True, and stays,
  once the median of its last 10 scores, padded with zeros to 3, reaches the label's threshold:
  one frame can never confirm, two frames both above the threshold can.
- ``missed`` counts runs in a row without a match; at ``max_missed`` the track is lost (it moves
  to ``ended``). While missed, ``box`` is the filter's prediction (clipped to the frame) and
  ``score`` the last matched score.
- ``stationary`` once the box centre stayed within ``STILL_SHARE`` of the box's size around where
  it settled for ``stationary_s`` seconds of capture time; two matched runs in a row beyond that
  are a move and clear it.
- After more than ``MAX_PREDICT_S`` between two runs an object is looked for where it was last
  seen, not where its speed would have taken it.
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import lap
import numpy as np
import numpy.typing as npt

from agent.detection.types import Detection
from agent.tracking.types import Box, TrackedObject, TrackUpdate

#: lowest IoU between a track's predicted box and a detection that can pair them. Low on purpose:
#: at 2-5 fps a walking person moves a good part of its width between runs, and the prediction
#: carries most of that motion; 0.3 (SORT's) lost ids at 2 fps in the measurement.
MIN_IOU = 0.01
#: the longest gap between model runs that the filter extrapolates over. Runs farther apart mean
#: the motion gate saw nothing move in between, so the object is looked for where it was last seen
#: and its speed starts from zero (a walker that stopped while the model slept would otherwise be
#: looked for a minute's walk away).
MAX_PREDICT_S = 1.0
#: the centre may wander this share of the box's width (x) and height (y) and still count as still
STILL_SHARE = 0.1
#: matched runs in a row outside the still area that make a move (one can be the detector's wobble)
_MOVED_RUNS = 2
#: how many recent scores the confirmation median looks at (Frigate's history length)
SCORE_WINDOW = 10
#: fewer scores than this are padded with zeros before the median (Frigate's rule)
MIN_SCORES = 3

# Kalman noise, as shares of the box size (mean of width and height), time in seconds.
_MEASUREMENT_STD = 0.05  # a detector's box edges wobble by about 5 % of the box
_POSITION_STD = 0.1  # per second: how far off a constant-velocity guess may drift
_VELOCITY_STD = 0.5  # per second, per second: how fast a speed may change
_INITIAL_VELOCITY_STD = 1.0  # a new object may walk about one box per second either way
_LOST = 1e6  # cost of a pair that must never be made


def _default_threshold(label: str) -> float:
    return 0.7


@dataclass(frozen=True)
class TrackerSettings:
    #: model runs in a row without a match before a track is lost
    max_missed: int = 5
    #: not moved (its box centre barely changes) for this long -> stationary
    stationary_s: float = 10.0
    #: per-label confirmation threshold for the median score
    threshold: Callable[[str], float] = _default_threshold


class _Motion:
    """One object's constant-velocity Kalman filter on (cx, cy, w, h) and their speeds per
    second; noise scales with the box, so small far objects and big near ones behave alike."""

    def __init__(self, box: Box) -> None:
        self._kf = cv2.KalmanFilter(8, 4, 0, cv2.CV_64F)
        self._kf.measurementMatrix = np.eye(4, 8)
        z = _measurement(box)
        size = _size(z)
        self._kf.statePost = np.concatenate([z, np.zeros((4, 1))])
        self._kf.errorCovPost = np.diag(
            [(_MEASUREMENT_STD * 2 * size) ** 2] * 4 + [(_INITIAL_VELOCITY_STD * size) ** 2] * 4
        )
        self.predicted: Box = box

    def predict(self, dt: float) -> Box:
        size = _size(self._kf.statePost)
        transition = np.eye(8)
        transition[:4, 4:] = np.eye(4) * dt
        self._kf.transitionMatrix = transition
        self._kf.processNoiseCov = np.diag(
            [(_POSITION_STD * size) ** 2 * dt] * 4 + [(_VELOCITY_STD * size) ** 2 * dt] * 4
        )
        self.predicted = _box(self._kf.predict())
        return self.predicted

    def stop(self) -> None:
        """Forgets the speeds (it stands where it was last seen), and how sure they were."""
        size = _size(self._kf.statePost)
        self._kf.statePost = np.concatenate([self._kf.statePost[:4], np.zeros((4, 1))])
        cov = self._kf.errorCovPost.copy()
        cov[4:, :] = cov[:, 4:] = 0.0
        cov[4:, 4:] = np.eye(4) * (_INITIAL_VELOCITY_STD * size) ** 2
        self._kf.errorCovPost = cov

    def correct(self, box: Box) -> None:
        z = _measurement(box)
        self._kf.measurementNoiseCov = np.eye(4) * (_MEASUREMENT_STD * _size(z)) ** 2
        self._kf.correct(z)


def _measurement(box: Box) -> npt.NDArray[np.float64]:
    x1, y1, x2, y2 = box
    return np.array([[(x1 + x2) / 2], [(y1 + y2) / 2], [x2 - x1], [y2 - y1]])


def _box(state: npt.NDArray[Any]) -> Box:
    cx, cy = float(state[0, 0]), float(state[1, 0])
    w, h = max(float(state[2, 0]), 1e-4), max(float(state[3, 0]), 1e-4)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _size(state: npt.NDArray[Any]) -> float:
    return max((float(state[2, 0]) + float(state[3, 0])) / 2, 1e-4)


class _Stillness:
    """Where an object settled: the mean of its boxes since it last moved, and since when. A box
    whose centre is off that mean by more than ``STILL_SHARE`` of the size is outside; one such
    box can be the detector's wobble, ``_MOVED_RUNS`` in a row are a move and start anew."""

    def __init__(self, box: Box, ts: float) -> None:
        self._restart(box, ts)

    def _restart(self, box: Box, ts: float) -> None:
        self._sum = np.array(box, dtype=np.float64)
        self._count = 1
        self._outside = 0
        self.since = ts

    def observe(self, box: Box, ts: float) -> float:
        """Takes in a matched box; returns since when the object has been still."""
        x1, y1, x2, y2 = (float(v) for v in self._sum / self._count)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        outside = (
            abs(cx - (x1 + x2) / 2) > STILL_SHARE * (x2 - x1)
            or abs(cy - (y1 + y2) / 2) > STILL_SHARE * (y2 - y1)
        )
        if not outside:
            self._sum += box
            self._count += 1
            self._outside = 0
        else:
            self._outside += 1
            if self._outside >= _MOVED_RUNS:
                self._restart(box, ts)
        return self.since


class _Track:
    """A tracked object with what the tracker needs besides what it reports."""

    def __init__(self, obj: TrackedObject) -> None:
        self.obj = obj
        self.motion = _Motion(obj.box)
        self.predicted_ts = obj.first_ts
        self.still = _Stillness(obj.box, obj.first_ts)


class Tracker:
    """The tracks of one camera; :meth:`update` once per model run."""

    def __init__(self, settings: TrackerSettings, id_prefix: str = "") -> None:
        self._settings = settings
        self._prefix = f"{id_prefix}-" if id_prefix else ""
        self._tracks: list[_Track] = []

    def update(self, detections: Sequence[Detection], ts: float) -> TrackUpdate:
        """One model run at capture time ``ts`` (seconds): pair, start, miss and end tracks."""
        predicted = [self._predict(track, ts) for track in self._tracks]
        pairs = _associate(
            predicted,
            [track.obj.label for track in self._tracks],
            [d.box for d in detections],
            [d.label for d in detections],
        )
        matched_tracks = {t for t, _ in pairs}
        matched_detections = {d for _, d in pairs}
        for t, d in pairs:
            self._match(self._tracks[t], detections[d], ts)

        ended: list[TrackedObject] = []
        kept: list[_Track] = []
        for index, track in enumerate(self._tracks):
            if index not in matched_tracks:
                track.obj.missed += 1
                track.obj.box = _clip(track.motion.predicted)
            if track.obj.missed >= self._settings.max_missed:
                ended.append(track.obj)
            else:
                kept.append(track)
        for index, detection in enumerate(detections):
            if index not in matched_detections:
                kept.append(self._start(detection, ts))
        self._tracks = kept
        return TrackUpdate(active=[track.obj for track in kept], ended=ended)

    def _predict(self, track: _Track, ts: float) -> Box:
        dt = max(ts - track.predicted_ts, 0.0)
        track.predicted_ts = ts
        if dt > MAX_PREDICT_S:
            track.motion.stop()
            dt = 0.0
        return track.motion.predict(dt)

    def _start(self, detection: Detection, ts: float) -> _Track:
        obj = TrackedObject(
            id=f"{self._prefix}{int(ts)}-{secrets.token_hex(3)}",
            label=detection.label,
            box=detection.box,
            score=detection.score,
            first_ts=ts,
            last_ts=ts,
        )
        obj.scored(detection.score)
        self._confirm(obj)
        track = _Track(obj)
        track.predicted_ts = ts
        return track

    def _match(self, track: _Track, detection: Detection, ts: float) -> None:
        obj = track.obj
        track.motion.correct(detection.box)
        obj.box, obj.score, obj.last_ts, obj.missed = detection.box, detection.score, ts, 0
        obj.scored(detection.score)
        self._confirm(obj)
        obj.stationary = ts - track.still.observe(detection.box, ts) >= self._settings.stationary_s

    def _confirm(self, obj: TrackedObject) -> None:
        if obj.confirmed:
            return
        recent = obj.scores[-SCORE_WINDOW:]
        padded = recent + [0.0] * (MIN_SCORES - len(recent))
        obj.confirmed = statistics.median(padded) >= self._settings.threshold(obj.label)


def _associate(
    tracks: Sequence[Box],
    track_labels: Sequence[str],
    detections: Sequence[Box],
    detection_labels: Sequence[str],
) -> list[tuple[int, int]]:
    """Pairs (track index, detection index) of the same label with the most overlap in total
    between the tracks' predicted boxes and the detections."""
    if not tracks or not detections:
        return []
    t = np.asarray(tracks, dtype=np.float64)
    d = np.asarray(detections, dtype=np.float64)
    same_label = np.asarray(track_labels)[:, None] == np.asarray(detection_labels)[None, :]
    overlap = _iou(t, d)
    return _solve(np.where(same_label & (overlap >= MIN_IOU), 1.0 - overlap, _LOST))


def _solve(cost: npt.NDArray[np.float64]) -> list[tuple[int, int]]:
    """The cheapest one-to-one pairing, leaving out pairs that cost ``_LOST``."""
    _, rows, _ = lap.lapjv(cost, extend_cost=True, cost_limit=_LOST / 2)
    return [(i, int(j)) for i, j in enumerate(rows) if j >= 0]


def _iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    result: npt.NDArray[np.float64] = inter / np.maximum(union, 1e-12)
    return result


def _clip(box: Box) -> Box:
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in box)
    return x1, y1, x2, y2
