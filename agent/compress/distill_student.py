"""The student network of ``edge-agent model distill``, its pseudo-label assignment and the
distillation loss: small enough to train on a CPU in minutes, exported in the YOLOv8 output format.

The student is a plain strided conv backbone (BatchNorm, ReLU) down to stride 32, a top-down merge
back to stride 8, and one anchor-free head there: per cell, class logits and the distances from the
cell centre to the box's four sides. ``ExportedStudent`` turns that into YOLOv8's ``[1, 4+nc, N]``
(centre x, centre y, width, height in input pixels, then sigmoid class scores), so the agent's
``yolo`` decoder and a copy of the teacher's card run it unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, interpolate, logsigmoid

STRIDE = 8  # the head's stride; the backbone goes down to STRIDE * 4
INPUT_MULTIPLE = 32  # input sides must divide by the deepest stride
BOX_WEIGHT = 2.0  # weight of the GIoU term against the classification term of the task loss
CENTRE_RADIUS = 2.5  # a pseudo box claims the cells within this many strides of its centre
PRIOR_PROB = 0.01  # initial class score, so that training starts with "nothing anywhere"
PROB_EPS = 1e-6  # teacher probabilities are clamped to [eps, 1-eps] before taking logits
MAX_LOG_DISTANCE = 8.0  # box distances are exp(raw) strides; clamp raw so exp stays finite


class LossParts(NamedTuple):
    """The distillation loss and its terms (``total = cls + BOX_WEIGHT * box + alpha T^2 soft``)."""

    total: Tensor
    cls: Tensor
    box: Tensor
    soft: Tensor


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of paired ``(x1, y1, x2, y2)`` boxes ``[..., 4]``: IoU minus the share of
    the enclosing box that neither covers; 1 for equal boxes, towards -1 for far-apart ones."""
    ix = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iy = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    ex = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ey = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    enclosing = ex * ey
    eps = 1e-9
    return inter / (union + eps) - (enclosing - union) / (enclosing + eps)


def distillation_loss(
    student_logits: Tensor,
    student_boxes: Tensor,
    teacher_probs: Tensor,
    target_classes: Tensor,
    target_boxes: Tensor,
    positive: Tensor,
    *,
    alpha: float,
    temperature: float,
    box_weight: float = BOX_WEIGHT,
) -> LossParts:
    """Task loss on the teacher's pseudo-labels plus ``alpha * T^2`` times the softened term.

    Shapes: ``student_logits``, ``teacher_probs``, ``target_classes`` ``[B, N, nc]``;
    ``student_boxes``, ``target_boxes`` ``[B, N, 4]`` (x1, y1, x2, y2, input pixels);
    ``positive`` ``[B, N]`` bool, the cells a pseudo box was assigned to.

    - ``cls``: binary cross-entropy of the student's logits against ``target_classes`` (the
      pseudo-labels' one-hot classes at positive cells, 0 elsewhere), summed over cells and classes;
    - ``box``: ``1 - GIoU`` of student and pseudo box, summed over positive cells;
    - ``soft``: Hinton's softened term for sigmoid outputs: per cell and class, the Bernoulli KL
      divergence ``KL(sigmoid(t/T) || sigmoid(s/T))``, where ``t = log(p/(1-p))`` is the
      teacher's logit recovered from its probability ``p`` (clamped to ``[1e-6, 1-1e-6]``) and
      ``s`` the student's logit; summed over cells and classes. ``T^2`` keeps its gradients at
      the task loss's scale whatever the temperature.

    Every sum is divided by the number of positive cells in the batch (at least 1), as YOLOv8
    normalises its classification loss, so ``alpha = 1`` weighs both parts alike.
    """
    npos = positive.sum().clamp(min=1).to(student_logits.dtype)
    cls = binary_cross_entropy_with_logits(student_logits, target_classes, reduction="sum")
    cls = cls / npos
    if bool(positive.any()):
        box = (1.0 - giou(student_boxes[positive], target_boxes[positive])).sum() / npos
    else:
        box = student_boxes.sum() * 0.0  # keeps the graph (and the dtype) without a positive
    teacher_logits = torch.logit(teacher_probs, eps=PROB_EPS)
    t = teacher_logits / temperature
    s = student_logits / temperature
    p = torch.sigmoid(t)
    kl = p * (logsigmoid(t) - logsigmoid(s)) + (1.0 - p) * (logsigmoid(-t) - logsigmoid(-s))
    soft = kl.sum() / npos
    total = cls + box_weight * box + alpha * temperature**2 * soft
    return LossParts(total, cls, box, soft)


def grid_size(width: int, height: int) -> tuple[int, int]:
    """Cells of the student's head across and down for an input of ``width`` x ``height``."""
    return width // STRIDE, height // STRIDE


def anchor_points(width: int, height: int) -> np.ndarray:
    """Cell centres ``[N, 2]`` (x, y, input pixels), row by row, as the head's outputs come."""
    gw, gh = grid_size(width, height)
    ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([(xs.ravel() + 0.5) * STRIDE, (ys.ravel() + 0.5) * STRIDE], 1).astype(
        np.float32
    )


class Targets(NamedTuple):
    """Pseudo-label targets of one frame on the student's cells."""

    classes: np.ndarray  # [N, nc] float32, one-hot at positive cells
    boxes: np.ndarray  # [N, 4] float32, x1 y1 x2 y2 input pixels (zeros where not positive)
    positive: np.ndarray  # [N] bool


def assign_targets(
    anchors: np.ndarray, boxes: np.ndarray, classes: np.ndarray, num_classes: int
) -> Targets:
    """Give each pseudo box (``[M, 4]`` x1 y1 x2 y2 input pixels, class ids ``[M]``) the cells
    whose centre lies inside it and within ``CENTRE_RADIUS`` strides of its centre, and always
    the cell nearest its centre (so a box smaller than a cell is not lost). A cell two boxes
    claim goes to the smaller box."""
    n = len(anchors)
    out = Targets(
        np.zeros((n, num_classes), np.float32), np.zeros((n, 4), np.float32), np.zeros(n, bool)
    )
    if len(boxes) == 0:
        return out
    ax, ay = anchors[:, 0:1], anchors[:, 1:2]  # [N, 1]
    x1, y1, x2, y2 = (boxes[:, i][None, :] for i in range(4))  # [1, M]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    inside = (ax > x1) & (ax < x2) & (ay > y1) & (ay < y2)
    reach = CENTRE_RADIUS * STRIDE
    near = (np.abs(ax - cx) < reach) & (np.abs(ay - cy) < reach)
    claim = inside & near
    nearest = ((ax - cx) ** 2 + (ay - cy) ** 2).argmin(axis=0)  # [M]
    claim[nearest, np.arange(len(boxes))] = True
    area = ((x2 - x1) * (y2 - y1)).astype(np.float64)
    cost = np.where(claim, area, np.inf)  # [N, M]
    best = cost.argmin(axis=1)
    positive = np.isfinite(cost[np.arange(n), best])
    out.positive[:] = positive
    out.boxes[positive] = boxes[best[positive]]
    out.classes[positive, classes[best[positive]].astype(np.int64)] = 1.0
    return out


def _conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Student(nn.Module):
    """Backbone to stride 32, top-down merge to stride 8, one anchor-free head.

    ``forward`` returns class logits ``[B, N, nc]`` and side distances ``[B, N, 4]`` (left, top,
    right, bottom from the cell centre, input pixels), cells row by row.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = width, 2 * width, 4 * width, 6 * width, 8 * width
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv(3, c1, 2), _conv(c1, c2, 2), _conv(c2, c2))  # /4
        self.down3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))  # /8
        self.down4 = nn.Sequential(_conv(c3, c4, 2), _conv(c4, c4))  # /16
        self.down5 = nn.Sequential(_conv(c4, c5, 2), _conv(c5, c5))  # /32
        self.lat5 = nn.Conv2d(c5, c3, 1)
        self.lat4 = nn.Conv2d(c4, c3, 1)
        self.lat3 = nn.Conv2d(c3, c3, 1)
        self.fuse = _conv(c3, c3)
        self.cls_branch = nn.Sequential(_conv(c3, c3), nn.Conv2d(c3, num_classes, 1))
        self.box_branch = nn.Sequential(_conv(c3, c3), nn.Conv2d(c3, 4, 1))
        cls_out = self.cls_branch[-1]
        box_out = self.box_branch[-1]
        assert isinstance(cls_out, nn.Conv2d) and isinstance(box_out, nn.Conv2d)
        assert cls_out.bias is not None and box_out.bias is not None
        nn.init.constant_(cls_out.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        # Start with boxes 2 strides from the centre on each side: small, plausible boxes.
        nn.init.constant_(box_out.bias, math.log(2.0))
        nn.init.normal_(box_out.weight, std=0.01)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        p3 = self.down3(self.stem(images))
        p4 = self.down4(p3)
        p5 = self.down5(p4)
        top = interpolate(self.lat5(p5), scale_factor=2.0, mode="nearest") + self.lat4(p4)
        merged = self.fuse(interpolate(top, scale_factor=2.0, mode="nearest") + self.lat3(p3))
        logits = self.cls_branch(merged).flatten(2).transpose(1, 2)  # [B, N, nc]
        raw = self.box_branch(merged).flatten(2).transpose(1, 2)  # [B, N, 4]
        distances = torch.exp(raw.clamp(max=MAX_LOG_DISTANCE)) * STRIDE
        return logits, distances


def boxes_from_distances(anchors: Tensor, distances: Tensor) -> Tensor:
    """Cell centres ``[N, 2]`` and side distances ``[B, N, 4]`` -> x1 y1 x2 y2 ``[B, N, 4]``."""
    return torch.cat([anchors - distances[..., :2], anchors + distances[..., 2:]], dim=-1)


class ExportedStudent(nn.Module):
    """The student as the device runs it: ``images [1, 3, H, W]`` -> YOLOv8 ``[1, 4+nc, N]``."""

    def __init__(self, student: Student, width: int, height: int) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("anchors", torch.from_numpy(anchor_points(width, height)))

    def forward(self, images: Tensor) -> Tensor:
        logits, distances = self.student(images)
        anchors: Tensor = self.anchors  # type: ignore[assignment]
        xyxy = boxes_from_distances(anchors, distances)
        xywh = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)
        return torch.cat([xywh, torch.sigmoid(logits)], dim=-1).transpose(1, 2)
