"""Raw SSD regressors decoded against generated anchors, as MediaPipe's BlazeFace and BlazePose
detectors need (SsdAnchorsCalculator + TensorsToDetectionsCalculator)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from agent.detection.card import AnchorDecodeSpec, AnchorSpec, ModelCard
from agent.detection.types import Candidates
from agent.errors import DecodeError


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) / 2
    return min_scale + (max_scale - min_scale) * index / (count - 1)


def generate_anchors(spec: AnchorSpec, input_width: int, input_height: int) -> np.ndarray:
    """Anchors ``[N, 4]`` as centre x, centre y, width, height, normalised to the input."""
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    n = spec.num_layers
    while layer < n:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        # Consecutive layers with the same stride share one feature map.
        while last < len(spec.strides) and spec.strides[last] == spec.strides[layer]:
            scale = _scale(spec.min_scale, spec.max_scale, last, n)
            if last == 0 and spec.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in spec.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if spec.interpolated_scale_aspect_ratio > 0:
                    following = (
                        1.0
                        if last == len(spec.strides) - 1
                        else _scale(spec.min_scale, spec.max_scale, last + 1, n)
                    )
                    scales.append(math.sqrt(scale * following))
                    ratios.append(spec.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]
        stride = spec.strides[layer]
        rows, cols = math.ceil(input_height / stride), math.ceil(input_width / stride)
        for y in range(rows):
            for x in range(cols):
                for w, h in sizes:
                    cx = (x + spec.anchor_offset_x) / cols
                    cy = (y + spec.anchor_offset_y) / rows
                    if spec.fixed_anchor_size:
                        w = h = 1.0
                    anchors.append((cx, cy, w, h))
        layer = last
    return np.asarray(anchors, np.float32)


@lru_cache(maxsize=8)
def _cached_anchors(key: tuple[object, ...], width: int, height: int) -> np.ndarray:
    spec = AnchorSpec.model_validate(dict(zip(AnchorSpec.model_fields, key, strict=True)))
    return generate_anchors(spec, width, height)


def _anchors_of(spec: AnchorSpec, width: int, height: int) -> np.ndarray:
    """The generated anchors, cached by the spec's values (a few tuples a frame, not a JSON
    dump of the spec)."""
    key = tuple(
        tuple(v) if isinstance(v, list) else v
        for v in (getattr(spec, name) for name in AnchorSpec.model_fields)
    )
    return _cached_anchors(key, width, height)


def _split(
    outputs: Sequence[np.ndarray], card: ModelCard, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    if card.outputs:
        by_name = dict(zip(names, outputs, strict=True))
        try:
            return by_name[card.outputs["boxes"]], by_name[card.outputs["scores"]]
        except KeyError as exc:
            raise DecodeError(
                f"model card names output {exc} which the model does not have"
            ) from exc
    if len(outputs) != 2:
        raise DecodeError(
            f"anchor models have two outputs (regressors, scores), got {len(outputs)}"
        )
    a, b = outputs
    return (a, b) if a.shape[-1] >= b.shape[-1] else (b, a)


def _score(raw: np.ndarray, d: AnchorDecodeSpec) -> np.ndarray:
    """Raw class scores as the card says: clipped, then through the sigmoid."""
    scores = raw
    if d.score_clipping > 0:
        scores = np.minimum(np.maximum(scores, -d.score_clipping), d.score_clipping)
    if d.sigmoid_score:
        # tanh form of the sigmoid: no overflow warning for large negative logits.
        scores = 0.5 * (1.0 + np.tanh(0.5 * scores))
    return scores


def decode_anchors(
    outputs: Sequence[np.ndarray],
    card: ModelCard,
    score_threshold: float,
    names: Sequence[str] = (),
) -> Candidates:
    if card.anchors is None or card.decode is None:
        raise DecodeError(f"model card of {card.name} lacks 'anchors' and 'decode' sections")
    raw_boxes, raw_scores = _split(outputs, card, names)
    anchors = _anchors_of(card.anchors, card.input.width, card.input.height)
    raw_boxes = raw_boxes.reshape(raw_boxes.shape[-2], raw_boxes.shape[-1])
    raw_scores = raw_scores.reshape(raw_scores.shape[-2], raw_scores.shape[-1])
    if raw_boxes.shape[0] != len(anchors) or raw_scores.shape[0] != len(anchors):
        raise DecodeError(
            f"{card.name}: {raw_boxes.shape[0]} regressors and {raw_scores.shape[0]} scores "
            f"for {len(anchors)} generated anchors; check the card's anchors section"
        )
    d = card.decode
    # Clipping and the sigmoid never change which class is best (ties aside, which the argmax
    # after them settles as before): so the threshold is applied first, to each anchor's best
    # raw score, and the rest is done on the few anchors left.
    best_raw = raw_scores[:, 0] if raw_scores.shape[1] == 1 else raw_scores.max(axis=1)
    keep = np.flatnonzero(_score(best_raw, d) >= score_threshold)
    if not len(keep):
        return Candidates.empty()
    scores = _score(raw_scores[keep], d)
    class_ids = scores.argmax(axis=1)
    best = scores[np.arange(len(keep)), class_ids]
    r = raw_boxes[keep]
    a = anchors[keep]
    sx, sy, sw, sh = d.box_scale
    if d.reverse_output_order:
        xc, yc, w, h = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    else:
        yc, xc, h, w = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    xc = xc / sx * a[:, 2] + a[:, 0]
    yc = yc / sy * a[:, 3] + a[:, 1]
    w = w / sw * a[:, 2]
    h = h / sh * a[:, 3]
    if d.box_from_keypoints is not None:
        center, edge = d.box_from_keypoints

        def keypoint(k: int) -> tuple[np.ndarray, np.ndarray]:
            off = d.keypoint_offset + 2 * k
            # Keypoints follow the box order: x, y when reversed, else y, x (as in MediaPipe).
            kx, ky = r[:, off], r[:, off + 1]
            if not d.reverse_output_order:
                kx, ky = ky, kx
            return (kx / sx * a[:, 2] + a[:, 0], ky / sy * a[:, 3] + a[:, 1])

        cx, cy = keypoint(center)
        ex, ey = keypoint(edge)
        # Half-size in pixels of the larger side, so the box stays square on non-square inputs.
        iw, ih = card.input.width, card.input.height
        radius = np.hypot((ex - cx) * iw, (ey - cy) * ih)
        xc, yc, w, h = cx, cy, 2 * radius / iw, 2 * radius / ih
    boxes = np.empty((len(keep), 4), np.float32)
    boxes[:, 0] = xc - w / 2
    boxes[:, 1] = yc - h / 2
    boxes[:, 2] = xc + w / 2
    boxes[:, 3] = yc + h / 2
    return Candidates(boxes, best.astype(np.float32, copy=False), class_ids)
