"""TFLite detection post-process outputs (TF Object Detection API, EfficientDet-Lite).

Four outputs: boxes ``[1, N, 4]`` as ymin, xmin, ymax, xmax normalised; classes ``[1, N]``;
scores ``[1, N]``; count ``[1]``. Exporters disagree on their order, so they are told apart by
shape (and by name when the card's ``outputs`` says which is which).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.detection.card import ModelCard
from agent.detection.types import Candidates
from agent.errors import DecodeError


def _roles(
    outputs: Sequence[np.ndarray], card: ModelCard, names: Sequence[str]
) -> dict[str, np.ndarray]:
    if card.outputs:
        by_name = dict(zip(names, outputs, strict=True))
        try:
            return {role: by_name[name] for role, name in card.outputs.items()}
        except KeyError as exc:
            raise DecodeError(
                f"model card names output {exc} which the model does not have"
            ) from exc
    boxes = [o for o in outputs if o.ndim == 3 and o.shape[-1] == 4]
    counts = [o for o in outputs if o.size == 1]
    per_box = [o for o in outputs if o.ndim == 2 and o.size > 1]
    if len(boxes) != 1 or len(counts) != 1 or len(per_box) != 2:
        raise DecodeError(
            f"ssd outputs must be boxes [1,N,4], classes [1,N], scores [1,N], count [1]; "
            f"got {[list(o.shape) for o in outputs]}"
        )
    a, b = per_box
    # Class ids are whole numbers and scores are not: that tells them apart whatever the order;
    # when it cannot (all whole), the TF convention (classes before scores) holds.
    a_whole, b_whole = np.array_equal(a, np.round(a)), np.array_equal(b, np.round(b))
    classes, scores = (b, a) if b_whole and not a_whole else (a, b)
    return {"boxes": boxes[0], "classes": classes, "scores": scores, "count": counts[0]}


def decode_ssd(
    outputs: Sequence[np.ndarray],
    card: ModelCard,
    score_threshold: float,
    names: Sequence[str] = (),
) -> Candidates:
    if len(outputs) != 4:
        raise DecodeError(f"ssd models have four outputs, this one has {len(outputs)}")
    roles = _roles(outputs, card, names)
    count = int(np.asarray(roles["count"]).reshape(-1)[0])
    boxes = roles["boxes"].reshape(-1, 4)[:count]
    scores = roles["scores"].reshape(-1)[:count]
    classes = roles["classes"].reshape(-1)[:count].astype(np.int64) - card.label_offset
    keep = (scores >= score_threshold) & (classes >= 0) & (classes < len(card.labels))
    yxyx = boxes[keep]
    return Candidates(
        yxyx[:, [1, 0, 3, 2]].astype(np.float32), scores[keep].astype(np.float32), classes[keep]
    )
