"""How good, fast and small a model is: COCO mAP (pycocotools) against labels or against a
reference model's detections ("fidelity"), latency, file and zstd sizes, peak memory.

Labels file (JSON), boxes as fractions of the frame::

    {"images": {"street.jpg": [{"label": "person", "box": [x1, y1, x2, y2]}], "12": []}}

Keys are image file names of a folder (or of the one image given), or frame indices of a video;
an image with an empty list has no objects. Only the images the labels name are evaluated.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.compress.frames import Frame, frame_names, read_frames, sample_frames, spread
from agent.compress.rss import measure_rss_mb
from agent.detection.detector import DetectorSettings
from agent.detection.types import Detection
from agent.errors import CompressError
from agent.runtimes import describe
from agent.serving import RuntimeSpec

__all__ = [
    "EVAL_SCORE",
    "Candidate",
    "EvalReport",
    "Fidelity",
    "coco_map",
    "compare",
    "evaluate",
    "fidelity",
    "load_labels",
    "markdown_table",
    "zstd_size",
]

# Predictions are ranked down to this score, as COCO evaluations do (a low threshold lets AP see
# the whole precision-recall curve); the truth from a reference model uses its card's threshold.
EVAL_SCORE = 0.01
ZSTD_LEVEL = 19
WARMUP_FRAMES = 2
RSS_FRAMES = 3  # frames the fresh process measuring peak memory runs


@dataclass
class EvalReport:
    """One model's figures. ``map50``/``map5095`` are None when there was nothing to compare
    against (no labels, no reference)."""

    name: str
    path: str
    size_bytes: int
    zstd_bytes: int
    map50: float | None
    map5095: float | None
    truth: str  # "labels FILE", "reference NAME" or "none"
    latency_ms_p50: float
    latency_ms_p95: float
    rss_mb: float  # peak RSS of a fresh process loading this model and running 3 frames
    frames: int
    threads: int
    detections: int  # objects found on the evaluated frames at the card's score threshold
    runtime: str = ""  # what ran it: onnx, tflite, "openvino CPU f32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """A model to evaluate: its file, its card (None: the one beside it) and a display name."""

    path: Path
    card: Path | None = None
    name: str | None = None


# ------------------------------------------------------------------------------------ mAP


def coco_map(
    predictions: Sequence[Sequence[Detection]], truths: Sequence[Sequence[Detection]]
) -> tuple[float, float]:
    """COCO mAP@0.5 and mAP@0.5:0.95 of ``predictions`` against ``truths`` (one list per image,
    same order), computed by pycocotools. Classes are told apart by label.

    COCO's rules apply: a class without any true object is left out of the mean. With no true
    object at all, a model that predicts nothing scores 1.0 (it agrees), else 0.0.
    """
    if len(predictions) != len(truths):
        raise CompressError(f"{len(predictions)} prediction lists for {len(truths)} images")
    n_truth = sum(len(t) for t in truths)
    n_pred = sum(len(p) for p in predictions)
    if n_truth == 0:
        return (1.0, 1.0) if n_pred == 0 else (0.0, 0.0)
    if n_pred == 0:
        return 0.0, 0.0
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    labels = sorted({d.label for dets in (*truths, *predictions) for d in dets})
    cat = {label: i + 1 for i, label in enumerate(labels)}
    # Boxes are fractions; COCO's area ranges only matter for its small/medium/large figures,
    # which are not used, but scale to a nominal 1000 px so they stay meaningful numbers.
    scale = 1000.0

    def xywh(d: Detection) -> list[float]:
        x1, y1, x2, y2 = (v * scale for v in d.box)
        return [x1, y1, x2 - x1, y2 - y1]

    annotations: list[dict[str, object]] = []
    for image_id, dets in enumerate(truths, 1):
        for d in dets:
            box = xywh(d)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat[d.label],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": image_id, "category_id": cat[d.label], "bbox": xywh(d), "score": d.score}
        for image_id, dets in enumerate(predictions, 1)
        for d in dets
    ]
    dataset = {
        "images": [{"id": i} for i in range(1, len(truths) + 1)],
        "categories": [{"id": i, "name": label} for label, i in cat.items()],
        "annotations": annotations,
    }
    # pycocotools prints its progress and summary to stdout; callers print JSON there.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return max(float(stats[1]), 0.0), max(float(stats[0]), 0.0)


# --------------------------------------------------------------------------------- labels


def load_labels(path: str | Path) -> dict[str, list[Detection]]:
    """Read a labels file (format in the module docstring): image name -> true objects."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompressError(f"{path}: cannot read labels: {exc}") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise CompressError(f'{path}: expected {{"images": {{NAME: [objects]}}}}')
    truths: dict[str, list[Detection]] = {}
    for name, objects in images.items():
        if not isinstance(objects, list):
            raise CompressError(f"{path}: images.{name}: expected a list of objects")
        dets = []
        for i, obj in enumerate(objects):
            where = f"{path}: images.{name}[{i}]"
            if not isinstance(obj, dict) or not isinstance(obj.get("label"), str):
                raise CompressError(f"{where}: expected {{'label': str, 'box': [x1, y1, x2, y2]}}")
            box = obj.get("box")
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(v, int | float) for v in box)
                or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)
            ):
                raise CompressError(f"{where}: box must be [x1, y1, x2, y2], 0 <= x1 < x2 <= 1")
            dets.append(Detection(obj["label"], -1, 1.0, (box[0], box[1], box[2], box[3])))
        truths[str(name)] = dets
    if not truths:
        raise CompressError(f"{path}: no images labelled")
    return truths


# ------------------------------------------------------------------------ size and memory


def zstd_size(path: str | Path, level: int = ZSTD_LEVEL) -> int:
    """Bytes of the file compressed with zstd: what a device downloads over a compressed link."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level, threads=-1)
    with open(path, "rb") as fh:
        return len(compressor.compress(fh.read()))


# ----------------------------------------------------------------------------- evaluation


@dataclass
class _Run:
    predictions: list[list[Detection]]  # at EVAL_SCORE
    latencies: list[float]
    card_score: float
    runtime: str = ""


def _run(
    candidate: Candidate, frames: Sequence[Frame], threads: int, spec: RuntimeSpec | None = None
) -> _Run:
    detector = (spec or RuntimeSpec(threads=threads)).load(candidate.path, card=candidate.card)
    try:
        settings = DetectorSettings(score_threshold=EVAL_SCORE)
        for frame in frames[:WARMUP_FRAMES]:
            detector.detect(frame.image, settings)
        predictions, latencies = [], []
        for frame in frames:
            dets, times = detector.detect(frame.image, settings)
            predictions.append(dets)
            latencies.append(times.total)
        return _Run(
            predictions, latencies, detector.card.thresholds.score, describe(detector.runtime)
        )
    finally:
        detector.close()


def _above(dets: Sequence[Detection], score: float) -> list[Detection]:
    # NMS keeps a box only against higher-scoring ones, so detections at a low threshold cut at
    # the card's threshold are exactly what the model reports at that threshold.
    return [d for d in dets if d.score >= score]


def _report(
    candidate: Candidate,
    run: _Run,
    truths: Sequence[Sequence[Detection]] | None,
    truth_name: str,
    threads: int,
    rss_mb: float,
) -> EvalReport:
    m50: float | None = None
    m5095: float | None = None
    if truths is not None:
        predictions = run.predictions
        if not any(truths):
            # Nothing to find: agreement means reporting nothing at the card's threshold (the
            # low-score candidates kept for ranking would otherwise all count as false).
            predictions = [_above(p, run.card_score) for p in predictions]
        m50, m5095 = coco_map(predictions, truths)
    path = Path(candidate.path)
    return EvalReport(
        name=candidate.name or path.stem,
        path=str(path),
        size_bytes=path.stat().st_size,
        zstd_bytes=zstd_size(path),
        map50=None if m50 is None else round(m50, 4),
        map5095=None if m5095 is None else round(m5095, 4),
        truth=truth_name,
        latency_ms_p50=round(float(np.percentile(run.latencies, 50)), 2),
        latency_ms_p95=round(float(np.percentile(run.latencies, 95)), 2),
        rss_mb=rss_mb,
        frames=len(run.predictions),
        threads=threads,
        detections=sum(len(_above(p, run.card_score)) for p in run.predictions),
        runtime=run.runtime,
    )


def compare(
    candidates: Sequence[Candidate],
    data: str | Path,
    *,
    labels: Path | None = None,
    reference: Candidate | None = None,
    frames: int = 50,
    threads: int = 2,
    exclude: Sequence[str] = (),
    spec: RuntimeSpec | None = None,
) -> list[EvalReport]:
    """Evaluate several models on the same frames. With ``labels``, mAP against them; else, with
    a ``reference``, fidelity: mAP against the reference's detections (its card's threshold) on
    frames evenly spread over ``data``, none of ``exclude`` (e.g. calibration frames). The
    reference runs once; a candidate that is the reference reuses that run. ``spec``: the
    runtime options of the candidates (default: by file suffix, ``threads``); the reference runs
    on its file's default runtime, so ``--runtime openvino --precision bf16`` against the same
    file measures what the runtime and precision change."""
    ref_spec = RuntimeSpec(threads=spec.threads if spec else threads)
    spec = spec or ref_spec
    threads = spec.threads
    if frames <= 0:
        raise CompressError(f"--frames must be positive, not {frames}")
    truths: list[list[Detection]] | None = None
    truth_name = "none"
    ref_run: _Run | None = None
    if labels is not None:
        labelled = load_labels(labels)
        available = set(frame_names(data))
        unknown = [n for n in labelled if n not in available]
        if unknown:
            raise CompressError(f"{labels}: {unknown[0]!r} is not a frame of {data}")
        names = spread([n for n in labelled if n not in set(exclude)], frames)
        sample = read_frames(data, names)
        truths = [labelled[n] for n in names]
        truth_name = f"labels {Path(labels).name}"
    else:
        sample = sample_frames(data, frames, exclude)
        if reference is not None:
            ref_run = _run(reference, sample, threads, ref_spec)
            truths = [_above(p, ref_run.card_score) for p in ref_run.predictions]
            truth_name = f"reference {reference.name or Path(reference.path).stem}"
    reports = []
    for candidate in candidates:
        if (
            ref_run is not None
            and reference is not None
            and spec == ref_spec
            and _same(candidate, reference)
        ):
            run = ref_run
        else:
            run = _run(candidate, sample, threads, spec)
        rss = measure_rss_mb(
            Path(candidate.path),
            data,
            [f.name for f in sample[:RSS_FRAMES]],
            candidate.card,
            threads,
            spec,
        )
        reports.append(_report(candidate, run, truths, truth_name, threads, rss))
    return reports


@dataclass(frozen=True)
class Fidelity:
    """How closely a candidate finds what a reference model finds, on the same frames."""

    map50: float
    map5095: float
    frames: int
    reference_detections: int  # the truth: the reference's objects at its card's threshold
    detections: int  # the candidate's objects at its card's threshold
    reference_latency_ms_p50: float
    latency_ms_p50: float


def fidelity(
    candidate: Candidate, reference: Candidate, frames: Sequence[Frame], *, threads: int = 2
) -> Fidelity:
    """The fidelity ``compare`` reports (mAP@0.5 of ``candidate`` against ``reference``'s
    detections) on frames the caller picked, possibly from several sources, without the sizes
    and the memory measurement: the quick check that decides whether a model may replace
    another."""
    if not frames:
        raise CompressError("fidelity needs at least one frame")
    ref = _run(reference, frames, threads)
    got = _run(candidate, frames, threads)
    truths = [_above(p, ref.card_score) for p in ref.predictions]
    predictions = got.predictions
    if not any(truths):
        predictions = [_above(p, got.card_score) for p in predictions]
    m50, m5095 = coco_map(predictions, truths)
    return Fidelity(
        map50=round(m50, 4),
        map5095=round(m5095, 4),
        frames=len(frames),
        reference_detections=sum(len(t) for t in truths),
        detections=sum(len(_above(p, got.card_score)) for p in got.predictions),
        reference_latency_ms_p50=round(float(np.percentile(ref.latencies, 50)), 2),
        latency_ms_p50=round(float(np.percentile(got.latencies, 50)), 2),
    )


def _same(a: Candidate, b: Candidate) -> bool:
    return Path(a.path).resolve() == Path(b.path).resolve() and a.card == b.card


def evaluate(
    model: str | Path,
    data: str | Path,
    *,
    labels: Path | None = None,
    reference: str | Path | None = None,
    frames: int = 50,
    threads: int = 2,
    card: Path | None = None,
    spec: RuntimeSpec | None = None,
) -> EvalReport:
    """One model's report; see ``compare``. Fidelity is against ``reference`` (with the card
    beside it) when no ``labels`` are given."""
    ref = Candidate(Path(reference)) if reference is not None else None
    return compare(
        [Candidate(Path(model), card)],
        data,
        labels=labels,
        reference=ref,
        frames=frames,
        threads=threads,
        spec=spec,
    )[0]


# ----------------------------------------------------------------------------------- table


def markdown_table(reports: Sequence[EvalReport]) -> str:
    """One row per report; sizes and speed also relative to the first row (the baseline)."""
    if not reports:
        return ""
    base = reports[0]
    head = (
        "| model | mAP@0.5 | mAP@0.5:0.95 | latency p50 / p95 ms | speed-up | size MB | size % "
        "| zstd MB | zstd % | peak RSS MB |"
    )
    rows = [head, "|" + "---|" * 10]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in reports:
        speed = base.latency_ms_p50 / r.latency_ms_p50 if r.latency_ms_p50 else 0.0
        rows.append(
            f"| {r.name} | {fmt(r.map50)} | {fmt(r.map5095)} "
            f"| {r.latency_ms_p50:.1f} / {r.latency_ms_p95:.1f} | {speed:.2f}x "
            f"| {r.size_bytes / 1e6:.2f} | {100 * r.size_bytes / base.size_bytes:.1f} "
            f"| {r.zstd_bytes / 1e6:.2f} | {100 * r.zstd_bytes / base.size_bytes:.1f} "
            f"| {r.rss_mb:.0f} |"
        )
    truth = {r.truth for r in reports}
    note = f"mAP against: {', '.join(sorted(truth))}; {base.frames} frames, {base.threads} threads"
    runtimes = sorted({r.runtime for r in reports if r.runtime})
    if runtimes:
        note += f"; runtime {', '.join(runtimes)}"
    return "\n".join([*rows, "", note])
