"""A camera's named zones: which of them an object is in (its anchor, the bottom centre of its
box, inside the polygon) and which labels each zone counts."""

from __future__ import annotations

from collections.abc import Mapping

from agent.config import ZoneConfig
from agent.tracking.filters import contour, inside
from agent.tracking.types import Box, anchor


class Zones:
    """The zones of one camera, in the order of the config."""

    def __init__(self, zones: Mapping[str, ZoneConfig]) -> None:
        self._zones = [
            (name, contour(zone.polygon), frozenset(zone.labels)) for name, zone in zones.items()
        ]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._zones]

    def labels(self, zone: str) -> frozenset[str]:
        """The labels the zone counts; empty: every label."""
        for name, _, labels in self._zones:
            if name == zone:
                return labels
        raise KeyError(zone)

    def of(self, label: str, box: Box) -> list[str]:
        """The zones an object of ``label`` with this box is in, in config order."""
        point = anchor(box)
        return [
            name
            for name, polygon, labels in self._zones
            if (not labels or label in labels) and inside(polygon, point)
        ]
