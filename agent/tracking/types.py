"""The types the tracking modules hand each other: a tracked object as the tracker reports it
after a frame, and what one frame did to the tracks."""

from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # x1, y1, x2, y2, fractions of the frame
#: scores a track keeps (a long-lived object must not grow without bound); the confirmation
#: median looks at fewer
SCORE_HISTORY = 32


def anchor(box: Box) -> tuple[float, float]:
    """The point of a box that says where an object is: the bottom centre (where a person
    stands), as Frigate does for zones and masks."""
    x1, _, x2, y2 = box
    return (x1 + x2) / 2, y2


@dataclass
class TrackedObject:
    """One object followed across frames (the tracker owns it; others read it)."""

    #: stable for the life of the object, unique across restarts (the event id)
    id: str
    label: str
    #: the latest matched detection's box and score (the predicted box while it is missed)
    box: Box
    score: float
    #: wall-clock times (the capture ``ts`` of its first and latest frame)
    first_ts: float
    last_ts: float
    #: scores of the latest matched detections (at most ``SCORE_HISTORY``), oldest first
    scores: list[float] = field(default_factory=list)
    #: the highest score of any matched detection
    best_score: float = 0.0
    #: the median of ``scores`` reached the label's threshold once (it stays confirmed)
    confirmed: bool = False
    #: model runs in a row without a detection for it
    missed: int = 0
    #: it has not moved for ``events.stationary_s``
    stationary: bool = False

    def scored(self, score: float) -> None:
        """A matched detection's score: kept in the bounded history and the best."""
        self.scores.append(score)
        del self.scores[:-SCORE_HISTORY]
        self.best_score = max(self.best_score, score)

    @property
    def top_score(self) -> float:
        return max(self.best_score, self.score)


@dataclass
class TrackUpdate:
    """What one model run did to the tracks of a camera."""

    #: every live track after the frame, tentative ones included
    active: list[TrackedObject]
    #: tracks that were lost at this frame (missed too often); they are gone from ``active``
    ended: list[TrackedObject]
