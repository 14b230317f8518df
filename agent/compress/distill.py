"""Distillation: train a small student detector to mimic a teacher on unlabeled frames, export it
to ONNX with a model card, and measure its fidelity to the teacher, speed and size.

The teacher runs through the agent's own Detector (onnxruntime): per training frame, its raw dense
class map (resampled onto the student's cells) and its detections after NMS at its card's
thresholds (the pseudo-labels). The student and the loss are in ``distill_student``. Frames at the
end of the data are held out: the student never trains on them, and its fidelity is measured there.
Needs the ``distill`` extra (torch, onnxscript); nothing here is imported by the daemon.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agent.compress.distill_student import (
    INPUT_MULTIPLE,
    STRIDE,
    ExportedStudent,
    Student,
    Targets,
    anchor_points,
    assign_targets,
    boxes_from_distances,
    distillation_loss,
    grid_size,
)
from agent.compress.evaluate import Candidate, EvalReport, compare, markdown_table
from agent.compress.frames import Frame, frame_names, read_frames, spread
from agent.detection.card import ModelCard, card_path_for
from agent.detection.decoders.yolo import decode_yolo, yolo_layout
from agent.detection.detector import Detector, file_sha256
from agent.detection.nms import nms
from agent.detection.preprocess import Preprocessor, Transform
from agent.detection.types import Candidates, box_iou
from agent.errors import CompressError, DecodeError

log = logging.getLogger("agent.compress.distill")

ONNX_OPSET = 18
YOLO_STRIDES = (8, 16, 32)  # the grids of a YOLOv8 output, finest first


@dataclass(frozen=True)
class DistillOptions:
    input_size: int = 320  # the student's square input side, a multiple of 32
    width: int = 16  # channels of the student's first layer (later layers: 2x, 4x, 6x, 8x)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    alpha: float = 1.0  # weight of the softened teacher-student term
    temperature: float = 2.0
    frames: int = 200  # training frames, spread over the data before the held-out ones
    holdout: int = 50  # frames at the end of the data, never trained on, for the fidelity figures
    seed: int = 0
    threads: int = 2  # torch and onnxruntime threads


def check_options(options: DistillOptions) -> None:
    o = options
    if o.input_size < INPUT_MULTIPLE or o.input_size % INPUT_MULTIPLE:
        raise CompressError(
            f"--input-size must be a multiple of {INPUT_MULTIPLE}, not {o.input_size}"
        )
    for name, value in (("width", o.width), ("epochs", o.epochs), ("frames", o.frames)):
        if value < 1:
            raise CompressError(f"--{name} must be at least 1, not {value}")
    if o.batch_size < 1 or o.threads < 1:
        raise CompressError("--batch and --threads must be at least 1")
    if o.holdout < 0:
        raise CompressError(f"--holdout must be 0 or more, not {o.holdout}")
    if o.alpha < 0 or o.temperature <= 0 or o.lr <= 0:
        raise CompressError("--alpha must be >= 0, --temperature and --lr > 0")


def require_torch_export() -> None:
    """Fail before hours of training, not at export: torch's ONNX exporter needs onnxscript."""
    for module in ("onnxscript", "onnx"):
        if importlib.util.find_spec(module) is None:
            raise CompressError(
                f"model distill needs {module} to export the student: "
                "pip install 'edge-detection-agent[distill]'"
            )


# ------------------------------------------------------------------------- teacher -> targets


def teacher_grids(width: int, height: int, anchors: int) -> list[tuple[int, int, int]]:
    """(stride, cells across, cells down) of a YOLOv8 output for a ``width`` x ``height`` input;
    a CompressError when they do not add up to the output's ``anchors``."""
    grids = [(s, math.ceil(width / s), math.ceil(height / s)) for s in YOLO_STRIDES]
    if sum(gw * gh for _, gw, gh in grids) != anchors:
        raise CompressError(
            f"the teacher's output has {anchors} anchors, not the YOLOv8 grids of strides "
            f"{list(YOLO_STRIDES)} for a {width}x{height} input: its dense class map cannot be "
            "placed on the student's cells; distil from its detections only with --alpha 0"
        )
    return grids


def teacher_class_map(
    output: np.ndarray,
    teacher_size: tuple[int, int],
    teacher_tf: Transform,
    student_tf: Transform,
) -> np.ndarray:
    """The teacher's dense class scores ``[4+nc, N_t]`` (YOLOv8) on the student's cells:
    ``[N_s, nc]``.

    Each student input pixel takes, per class, the score of the teacher cell that covers the
    same frame point, highest over the teacher's three grids (each grid serves its own object
    sizes); a student cell then takes the highest of its pixels. Pixels outside the teacher's
    view score 0.
    """
    nc = output.shape[0] - 4
    probs = output[4:]
    tw, th = teacher_size
    sw, sh = student_tf.input_width, student_tf.input_height
    # student px = teacher px * a + b, through the frame: both transforms are scale and offset.
    ax = student_tf.scale_x / teacher_tf.scale_x
    ay = student_tf.scale_y / teacher_tf.scale_y
    bx = student_tf.pad_x - teacher_tf.pad_x * ax
    by = student_tf.pad_y - teacher_tf.pad_y * ay
    tx = (np.arange(sw) + 0.5 - bx) / ax  # teacher px under each student pixel centre
    ty = (np.arange(sh) + 0.5 - by) / ay
    pixels = np.zeros((nc, sh, sw), np.float32)
    offset = 0
    for stride, gw, gh in teacher_grids(tw, th, probs.shape[1]):
        level = probs[:, offset : offset + gw * gh].reshape(nc, gh, gw)
        offset += gw * gh
        col = np.floor(tx / stride).astype(np.int64)
        row = np.floor(ty / stride).astype(np.int64)
        ok_c = (col >= 0) & (col < gw) & (tx >= 0)
        ok_r = (row >= 0) & (row < gh) & (ty >= 0)
        sampled = level[:, np.clip(row, 0, gh - 1)][:, :, np.clip(col, 0, gw - 1)]
        sampled = sampled * (ok_r[:, None] & ok_c[None, :])
        np.maximum(pixels, sampled, out=pixels)
    cw, ch = grid_size(sw, sh)
    cells = pixels[:, : ch * STRIDE, : cw * STRIDE].reshape(nc, ch, STRIDE, cw, STRIDE)
    return np.ascontiguousarray(cells.max(axis=(2, 4)).reshape(nc, -1).T)


@dataclass
class TrainingSet:
    """Everything training needs, per frame, on the student's input and cells."""

    images: np.ndarray  # [F, 3, H, W] float32, the student's preprocessed input
    teacher_probs: np.ndarray  # [F, N, nc]
    targets: list[Targets]
    pseudo: list[tuple[np.ndarray, np.ndarray]]  # per frame: boxes [M, 4] input px, classes [M]
    pseudo_boxes: int
    frames_with_boxes: int

    def __len__(self) -> int:
        return int(self.images.shape[0])


def student_card(teacher: ModelCard, size: int, teacher_path: Path) -> ModelCard:
    """The teacher's card with the student's input size; name, notes and license say whence."""
    return teacher.model_copy(
        update={
            "name": f"{teacher.name}-distilled",
            "version": f"{teacher.version}-distilled.{size}",
            "format": "onnx",
            "input": teacher.input.model_copy(update={"width": size, "height": size}),
            "yolo_version": "v8",
            "yolo_boxes": "pixels",
            "outputs": {},
            "sha256": None,
            "anchors": None,
            "decode": None,
            "assumed": [],
            "source": f"edge-agent model distill, teacher {teacher_path.name} "
            f"({teacher.name} {teacher.version})",
            "license": "derived from the teacher's weights, so under the teacher's license: "
            f"{teacher.license or 'see the teacher'}",
        },
        deep=True,
    )


def build_training_set(
    teacher: Detector, frames: Sequence[Frame], card: ModelCard, alpha: float
) -> TrainingSet:
    """Run the teacher once per frame: pseudo-labels (its detections) and its dense class map,
    both placed on the student's input."""
    spec = teacher.card.input
    nc = len(card.labels)
    pre = Preprocessor(card.input)
    size = (card.input.width, card.input.height)
    anchors = anchor_points(*size)
    images, maps, targets = [], [], []
    pseudo: list[tuple[np.ndarray, np.ndarray]] = []
    boxes_total = with_boxes = 0
    for i, frame in enumerate(frames):
        tensor, t_tf = teacher.preprocess(frame.image)
        outputs = teacher.infer(tensor)
        detections = teacher.postprocess(outputs, t_tf)
        s_tensor, s_tf = pre(frame.image)
        images.append(s_tensor[0])
        if alpha > 0:
            maps.append(teacher_class_map(outputs[0][0], (spec.width, spec.height), t_tf, s_tf))
        fw, fh = s_tf.frame_width, s_tf.frame_height
        boxes = np.array(
            [
                [
                    d.box[0] * fw * s_tf.scale_x + s_tf.pad_x,
                    d.box[1] * fh * s_tf.scale_y + s_tf.pad_y,
                    d.box[2] * fw * s_tf.scale_x + s_tf.pad_x,
                    d.box[3] * fh * s_tf.scale_y + s_tf.pad_y,
                ]
                for d in detections
            ],
            np.float32,
        ).reshape(-1, 4)
        classes = np.array([d.class_id for d in detections], np.int64)
        targets.append(assign_targets(anchors, boxes, classes, nc))
        pseudo.append((boxes, classes))
        boxes_total += len(detections)
        with_boxes += bool(detections)
        if (i + 1) % 50 == 0:
            log.info("teacher: %d/%d frames", i + 1, len(frames))
    probs = (
        np.stack(maps)
        if maps
        else np.zeros((len(frames), len(anchors), nc), np.float32)  # unused when alpha == 0
    )
    return TrainingSet(np.stack(images), probs, targets, pseudo, boxes_total, with_boxes)


def check_teacher(teacher: Detector) -> None:
    card = teacher.card
    if card.family != "yolo" or len(teacher.runtime.outputs) != 1:
        raise CompressError(
            f"{teacher.runtime.path}: distillation needs a YOLO teacher (family yolo, one output), "
            f"this one is family {card.family}"
        )
    shape = tuple(teacher.runtime.outputs[0].shape)
    try:
        layout = yolo_layout(shape, len(card.labels), card.yolo_version)
    except DecodeError as exc:
        raise CompressError(f"{teacher.runtime.path}: {exc}") from exc
    if layout != "v8":
        raise CompressError(
            f"{teacher.runtime.path}: distillation needs a YOLOv8-layout teacher [1, 4+nc, N] "
            f"(its class scores are the soft targets), this one is {list(shape)}"
        )


# ------------------------------------------------------------------------------ training


def _batches(
    data: TrainingSet, batch_size: int, rng: np.random.Generator, size: tuple[int, int]
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffled batches, each frame mirrored left-right with probability 1/2 (image, targets and
    teacher map alike: the cells are symmetric because the width divides by the stride)."""
    gw, gh = grid_size(*size)
    width = float(size[0])
    order = rng.permutation(len(data))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        flip = rng.random(len(index)) < 0.5
        images = data.images[index].copy()
        probs = data.teacher_probs[index].copy()
        cls = np.stack([data.targets[i].classes for i in index])
        boxes = np.stack([data.targets[i].boxes for i in index])
        pos = np.stack([data.targets[i].positive for i in index])
        for k in np.flatnonzero(flip):
            images[k] = images[k][:, :, ::-1]

            def mirror(a: np.ndarray) -> np.ndarray:
                return a.reshape(gh, gw, -1)[:, ::-1].reshape(gh * gw, -1)

            probs[k] = mirror(probs[k])
            cls[k] = mirror(cls[k])
            pos[k] = mirror(pos[k][:, None])[:, 0]
            b = mirror(boxes[k])
            boxes[k] = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
            boxes[k][~pos[k]] = 0.0
        yield (
            torch.from_numpy(images),
            torch.from_numpy(probs),
            torch.from_numpy(cls),
            torch.from_numpy(boxes),
            torch.from_numpy(pos),
        )


@dataclass
class EpochStats:
    epoch: int
    total: float
    cls: float
    box: float
    soft: float
    seconds: float


def train_student(
    data: TrainingSet,
    num_classes: int,
    options: DistillOptions,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> tuple[Student, list[EpochStats]]:
    """AdamW with a one-cycle learning rate over ``options.epochs``; the mean loss per epoch."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    size = (options.input_size, options.input_size)
    anchors = torch.from_numpy(anchor_points(*size))
    model = Student(num_classes, options.width)
    steps = options.epochs * math.ceil(len(data) / options.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=steps, pct_start=0.15
    )
    history: list[EpochStats] = []
    model.train()
    for epoch in range(1, options.epochs + 1):
        t0 = time.perf_counter()
        sums = np.zeros(4)
        count = 0
        for images, probs, cls, boxes, pos in _batches(data, options.batch_size, rng, size):
            logits, distances = model(images)
            parts = distillation_loss(
                logits,
                boxes_from_distances(anchors, distances),
                probs,
                cls,
                boxes,
                pos,
                alpha=options.alpha,
                temperature=options.temperature,
            )
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            n = len(images)
            sums += n * np.array([float(p.detach()) for p in parts])
            count += n
        mean = sums / max(count, 1)
        total, cls_loss, box_loss, soft = (float(v) for v in mean)
        stats = EpochStats(epoch, total, cls_loss, box_loss, soft, time.perf_counter() - t0)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return model, history


# --------------------------------------------------------------------------- calibration


def match_pseudo_boxes(
    kept: Candidates, boxes: np.ndarray, classes: np.ndarray, size: int, iou: float = 0.5
) -> np.ndarray:
    """Per kept detection (highest score first), whether it finds a pseudo box of its class not
    found by a higher-scoring one (IoU >= ``iou``), as a detection benchmark counts hits."""
    taken = np.zeros(len(boxes), bool)
    hits = np.zeros(len(kept), bool)
    for k in range(len(kept)):
        box = kept.boxes[k] * size
        best, best_iou = -1, iou
        for j in range(len(boxes)):
            if taken[j] or classes[j] != kept.class_ids[k]:
                continue
            overlap = box_iou(box.tolist(), boxes[j].tolist())
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best >= 0:
            taken[best] = hits[k] = True
    return hits


def calibrate_threshold(model: Student, data: TrainingSet, card: ModelCard) -> float | None:
    """The score threshold at which the student's detections best match the teacher's on the
    training frames (F1 at IoU 0.5): trained on hard pseudo-labels, the student's scores need
    not sit where the teacher's do. None when there is nothing to go by: the teacher found
    nothing, or the student matches none of it at any threshold."""
    if data.pseudo_boxes == 0:
        return None
    size = card.input.width
    wrapper = ExportedStudent(model, size, size).eval()
    thresholds = np.round(np.arange(0.05, 0.951, 0.05), 2)
    tp = np.zeros(len(thresholds))
    found = np.zeros(len(thresholds))
    with torch.no_grad():
        for start in range(0, len(data), 16):
            outputs = wrapper(torch.from_numpy(data.images[start : start + 16])).numpy()
            for i, output in enumerate(outputs):
                kept = nms(
                    decode_yolo([output[None]], card, float(thresholds[0])),
                    card.thresholds.iou,
                )
                boxes, classes = data.pseudo[start + i]
                hits = match_pseudo_boxes(kept, boxes, classes, size)
                above = kept.scores[None, :] >= thresholds[:, None]  # [T, K]
                found += above.sum(1)
                tp += (above & hits[None, :]).sum(1)
    precision = tp / np.maximum(found, 1)
    recall = tp / data.pseudo_boxes
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    if f1.max() <= 0:
        return None
    # Of equal scores, the highest threshold: fewer false alarms for the same agreement.
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(thresholds[best])


# -------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter and onnxscript warn and log about their own internals
    (deprecations, torchvision ops skipped, graph passes) and print progress: none of it is the
    user's business, and a real failure still raises."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_student(
    model: Student, size: int, labels: Sequence[str], path: Path, producer: str
) -> None:
    """Write the student as ONNX (opset 18, YOLOv8 output, Ultralytics-style ``names``
    metadata) and check onnxruntime gives what torch gives."""
    import onnx
    import onnxruntime as ort

    wrapper = ExportedStudent(model, size, size).eval()
    dummy = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(tmp),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["output0"],
                external_data=False,
                verbose=False,
            )
            expected = wrapper(dummy).numpy()
        proto = onnx.load(str(tmp))
        names = dict(enumerate(labels))
        onnx.helper.set_model_props(
            proto, {"names": repr(names), "stride": str(STRIDE), "description": producer}
        )
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": dummy.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-2):
            raise CompressError(
                f"{path}: the exported student disagrees with torch (largest difference "
                f"{float(np.abs(got - expected).max()):.4g}); nothing written"
            )
        tmp.replace(path)
    except CompressError:
        raise
    except Exception as exc:  # torch's exporter raises many kinds; name it at our border
        raise CompressError(f"{path}: cannot export the student to ONNX: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_card(card: ModelCard, path: Path) -> None:
    data = card.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    for empty in ("outputs", "assumed"):
        if not data.get(empty):
            data.pop(empty, None)
    header = (
        "# Written by `edge-agent model distill`: a student trained to mimic its teacher.\n"
        "# Derived from the teacher's weights: it carries the teacher's license (see below).\n"
    )
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# ----------------------------------------------------------------------------------- run


@dataclass
class DistillResult:
    student: Path
    card: Path
    train_frames: int
    holdout_frames: int
    pseudo_boxes: int
    frames_with_boxes: int
    teacher_seconds: float
    train_seconds: float
    epochs: list[EpochStats]
    reports: list[EvalReport] = field(default_factory=list)  # teacher, student (held-out frames)

    @property
    def latency_ratio(self) -> float | None:
        """Student's latency p50 over the teacher's (held-out frames, this machine)."""
        if len(self.reports) < 2 or not self.reports[0].latency_ms_p50:
            return None
        return self.reports[1].latency_ms_p50 / self.reports[0].latency_ms_p50

    def table(self) -> str:
        if not self.reports:
            return "no held-out frames (--holdout 0): fidelity, latency and size not measured"
        table = markdown_table(self.reports)
        teacher, student = self.reports[0], self.reports[-1]
        table += (
            f"\nobjects found on the held-out frames at the cards' thresholds: teacher "
            f"{teacher.detections}, student {student.detections}"
        )
        ratio = self.latency_ratio
        if ratio is not None:
            table += f"\nstudent latency / teacher latency (p50): {ratio:.3f}"
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": str(self.student),
            "card": str(self.card),
            "train_frames": self.train_frames,
            "holdout_frames": self.holdout_frames,
            "pseudo_boxes": self.pseudo_boxes,
            "frames_with_boxes": self.frames_with_boxes,
            "teacher_seconds": round(self.teacher_seconds, 1),
            "train_seconds": round(self.train_seconds, 1),
            "epochs": [asdict(e) for e in self.epochs],
            "reports": [r.to_dict() for r in self.reports],
            "latency_ratio": self.latency_ratio,
        }


def split_frames(names: Sequence[str], frames: int, holdout: int) -> tuple[list[str], list[str]]:
    """Training frame names (``frames`` spread over all but the last ``holdout``) and the
    held-out ones (the last ``holdout``: the end of a video is the least like what was seen)."""
    if holdout >= len(names):
        raise CompressError(f"{len(names)} frames, so --holdout {holdout} leaves none to train on")
    train_pool = names[: len(names) - holdout]
    return spread(train_pool, frames), list(names[len(names) - holdout :])


def distill(
    teacher_path: str | Path,
    data: str | Path,
    output: str | Path,
    options: DistillOptions = DistillOptions(),
    *,
    teacher_card: str | Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> DistillResult:
    """Train, export and measure a student of ``teacher_path`` on the frames of ``data``."""
    check_options(options)
    require_torch_export()
    output = Path(output)
    if output.suffix != ".onnx":
        raise CompressError(f"{output}: the student is written as ONNX; name it *.onnx")
    if not output.parent.is_dir():
        raise CompressError(f"{output.parent}: no such folder")
    teacher_path = Path(teacher_path)
    torch.set_num_threads(options.threads)
    teacher = Detector.load(teacher_path, card=teacher_card, threads=options.threads)
    try:
        check_teacher(teacher)
        card = student_card(teacher.card, options.input_size, teacher_path)
        names = frame_names(data)
        train_names, held = split_frames(names, options.frames, options.holdout)
        t0 = time.perf_counter()
        frames = read_frames(data, train_names)
        log.info("teacher: labelling %d training frames", len(frames))
        training = build_training_set(teacher, frames, card, options.alpha)
        teacher_seconds = time.perf_counter() - t0
    finally:
        teacher.close()
    del frames
    log.info(
        "teacher: %d boxes on %d of %d frames (%.0f s)",
        training.pseudo_boxes,
        training.frames_with_boxes,
        len(training),
        teacher_seconds,
    )
    if training.pseudo_boxes == 0:
        log.warning("the teacher found nothing in the training frames: the student learns that")
    t0 = time.perf_counter()
    model, history = train_student(training, len(card.labels), options, on_epoch)
    train_seconds = time.perf_counter() - t0
    threshold = calibrate_threshold(model, training, card)
    if threshold is not None:
        log.info(
            "student: score threshold %.2f (the teacher's: %.2f) matches the teacher best on the "
            "training frames",
            threshold,
            card.thresholds.score,
        )
        card.thresholds = card.thresholds.model_copy(update={"score": threshold})
    pseudo_boxes, frames_with_boxes = training.pseudo_boxes, training.frames_with_boxes
    del training
    sha = file_sha256(teacher_path)[:12]
    card.notes = (
        f"Distilled from {teacher_path.name} (sha256 {sha}...) on {len(train_names)} frames of "
        f"{Path(data).name}: {options.epochs} epochs, alpha {options.alpha}, temperature "
        f"{options.temperature}, width {options.width}, seed {options.seed}. "
        + (
            f"Score threshold {threshold}: where it best matched the teacher on those frames."
            if threshold is not None
            else "Score threshold: the teacher's (nothing to calibrate it against)."
        )
    )
    export_student(model, options.input_size, card.labels, output, card.notes)
    card.sha256 = file_sha256(output)
    card_file = card_path_for(output)
    write_card(card, card_file)
    result = DistillResult(
        student=output,
        card=card_file,
        train_frames=len(train_names),
        holdout_frames=len(held),
        pseudo_boxes=pseudo_boxes,
        frames_with_boxes=frames_with_boxes,
        teacher_seconds=teacher_seconds,
        train_seconds=train_seconds,
        epochs=history,
    )
    if held:
        reference = Candidate(teacher_path, Path(teacher_card) if teacher_card else None, "teacher")
        result.reports = compare(
            [reference, Candidate(output, card_file, "student")],
            data,
            reference=reference,
            frames=len(held),
            threads=options.threads,
            exclude=names[: len(names) - len(held)],
        )
    return result
