"""The INT8 person model as the default where it keeps fp32's detections.

``make_default`` (what scripts/setup runs, ``python -m agent.compress.int8_default``) quantizes the
fp32 person model once with the toolchain's own quantizer, calibrated on frames of the bundled
``bikes.mp4``; measures its fidelity against fp32 (mAP@0.5 with fp32's detections as the truth) on
frames of the video it was not calibrated on and on the astronaut photo; and records the choice in
``models/default-model.json`` (``agent.default_model`` reads it): INT8 only when fidelity >= 0.90,
else fp32 and why. A second run with the same fp32 file, media and settings does nothing; a cache
folder keyed by them restores the result without quantizing again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from agent.atomic import write_atomic
from agent.compress.evaluate import Candidate, Fidelity, fidelity
from agent.compress.frames import Frame, frame_names, read_frames, sample_frames, spread
from agent.compress.quantize import Calibration, QuantizeResult, quantize
from agent.default_model import DECISION_FILE, FP32_MODEL, INT8_MODEL, decision_path
from agent.detection.card import Quantization, card_path_for, load_card
from agent.detection.detector import file_sha256
from agent.errors import CompressError, EdgeAgentError
from agent.sources.folder import IMAGE_SUFFIXES

MIN_FIDELITY = 0.90
CALIB_VIDEO = "media/bikes.mp4"
EVAL_PHOTO = "media/astronaut.png"
FORMAT = 1  # of default-model.json; a change makes setup decide again


@dataclass(frozen=True)
class Settings:
    """How the INT8 model is made and judged. Measured here (2 cores): percentile calibration
    on 8 frames kept fidelity 0.979 on 100 held-out frames and the photo, 32 frames 0.982 at 3.5x
    the time. Fidelity rests on the fp32 detections among the frames judged: all 242 held-out
    frames and the photo (94 detections) gave 0.972, spreads of 40, 60 and 80 of them 0.944 (16
    detections), 0.987 (23) and 0.987 (35): 60 is the cheapest that is not a coin toss."""

    calib_frames: int = 8
    eval_frames: int = 60
    calibration: Calibration = "percentile"
    min_fidelity: float = MIN_FIDELITY
    threads: int = 2


@dataclass(frozen=True)
class Choice:
    """The model to serve and why. ``fidelity`` is None when the INT8 model could not be
    measured at all (it did not load or run)."""

    model: Path
    int8: bool
    reason: str
    fidelity: Fidelity | None = None


def choose_default(
    fp32: Path,
    int8: Path,
    frames: Sequence[Frame],
    *,
    min_fidelity: float = MIN_FIDELITY,
    threads: int = 2,
) -> Choice:
    """INT8 when its fidelity against fp32 on ``frames`` (frames it was not calibrated on) is at
    least ``min_fidelity``; otherwise fp32, with the reason."""
    try:
        measured = fidelity(Candidate(int8), Candidate(fp32), frames, threads=threads)
    except EdgeAgentError as exc:
        return Choice(fp32, False, f"{int8.name} could not be measured ({exc}); {fp32.name} stays")
    where = (
        f"mAP@0.5 against {fp32.name}'s {measured.reference_detections} detections on "
        f"{measured.frames} frames not used for calibration"
    )
    if measured.reference_detections == 0:
        return Choice(
            fp32, False, f"{fp32.name} found nothing on the {measured.frames} frames: no fidelity "
            f"to measure; {fp32.name} stays", measured,
        )  # fmt: skip
    if measured.map50 >= min_fidelity:
        return Choice(
            int8, True, f"fidelity {measured.map50:.3f} >= {min_fidelity:.2f} ({where})", measured
        )
    return Choice(
        fp32,
        False,
        f"fidelity {measured.map50:.3f} < {min_fidelity:.2f} ({where}): {int8.name} loses "
        f"detections; {fp32.name} stays the default",
        measured,
    )


# ----------------------------------------------------------------- quantize and measure


@dataclass
class Measured:
    """A quantized model, the frames it was calibrated and judged on, and the verdict."""

    result: QuantizeResult
    choice: Choice
    calib_frames: list[str]
    eval_frames: list[str]  # frame names (video frame indices, image file names)
    eval_sources: list[str]
    seconds: dict[str, float] = field(default_factory=dict)


def held_out_frames(
    calib: Path, calibrated: Sequence[str], count: int, extra: Sequence[Path] = ()
) -> tuple[list[Frame], list[str]]:
    """``count`` frames of ``calib`` spread over those not calibrated on, plus every frame of
    ``extra`` (photos, folders the quantizer never saw); and what they are, one line a source."""
    names = spread(frame_names(calib), count, exclude=calibrated)
    if not names and not extra:
        raise CompressError(
            f"{calib}: every frame was used for calibration, none is left to measure fidelity "
            "on: use fewer calibration frames or name other data to evaluate on"
        )
    frames = read_frames(calib, names)
    sources = [_frames_of(calib, len(frames))] if frames else []
    for source in extra:
        more = sample_frames(source, len(frame_names(source)))
        frames += more
        sources.append(_frames_of(source, len(more)))
    return frames, sources


def _frames_of(source: Path, count: int) -> str:
    single_image = count == 1 and source.suffix.lower() in IMAGE_SUFFIXES
    return source.name if single_image else f"{count} frames of {source.name}"


def quantize_and_measure(
    fp32: Path,
    out: Path,
    calib: Path,
    settings: Settings,
    *,
    extra_eval: Sequence[Path] = (),
    card: Path | None = None,
) -> Measured:
    """Quantize ``fp32`` to ``out`` (static INT8, sensitive nodes in float) on frames of
    ``calib``; judge it on other frames of ``calib`` and on ``extra_eval``; write the fidelity
    into ``out``'s card."""
    started = time.monotonic()
    result = quantize(
        fp32,
        out,
        calib=calib,
        calib_frames=settings.calib_frames,
        calibration=settings.calibration,
        card=card,
    )
    measured = measure(fp32, result, calib, settings, extra_eval=extra_eval)
    measured.seconds["quantize"] = round(
        time.monotonic() - started - measured.seconds["evaluate"], 1
    )
    return measured


def measure(
    fp32: Path,
    result: QuantizeResult,
    calib: Path,
    settings: Settings,
    *,
    extra_eval: Sequence[Path] = (),
) -> Measured:
    """Judge the INT8 model ``result`` against ``fp32`` on frames of ``calib`` it was not
    calibrated on and on ``extra_eval``; write the fidelity into its card."""
    started = time.monotonic()
    frames, sources = held_out_frames(calib, result.calib_frames, settings.eval_frames, extra_eval)
    choice = choose_default(
        fp32, result.model, frames, min_fidelity=settings.min_fidelity, threads=settings.threads
    )
    if choice.fidelity is not None:
        record_fidelity(result.card, choice.fidelity, sources)
    return Measured(
        result,
        choice,
        list(result.calib_frames),
        [f.name for f in frames],
        sources,
        {"evaluate": round(time.monotonic() - started, 1)},
    )


def record_fidelity(card_file: Path, measured: Fidelity, sources: Sequence[str]) -> None:
    """Add the measured fidelity to the quantization block of the card ``model quantize``
    wrote (the card stays valid: the schema is checked by loading it back)."""
    card = load_card(card_file)
    base = card.quantization or Quantization(method="INT8")
    card.quantization = base.model_copy(
        update={
            "fidelity_map50": measured.map50,
            "fidelity_frames": f"{', '.join(sources)}, none used for calibration "
            f"({measured.reference_detections} detections of the reference)",
        }
    )
    head = card_file.read_text(encoding="utf-8").splitlines()[0]
    data = card.model_dump(mode="json", exclude_none=True)
    if not data.get("assumed"):
        data.pop("assumed", None)
    body = yaml.safe_dump(data, sort_keys=False)
    write_atomic(card_file, ((head + "\n" if head.startswith("#") else "") + body).encode())
    load_card(card_file)


# ----------------------------------------------------------------------- the setup step


def decision_key(assets: Path, settings: Settings) -> str:
    """What the decision depends on: the fp32 file, the media, the settings, onnxruntime."""
    import onnxruntime

    fp32 = assets / FP32_MODEL
    for needed in (fp32, card_path_for(fp32), assets / CALIB_VIDEO, assets / EVAL_PHOTO):
        if not needed.is_file():
            raise CompressError(f"{needed}: missing (scripts/fetch-assets puts it there)")
    inputs = {
        "format": FORMAT,
        "fp32": file_sha256(assets / FP32_MODEL),
        "calib": file_sha256(assets / CALIB_VIDEO),
        "photo": file_sha256(assets / EVAL_PHOTO),
        "settings": asdict(settings),
        "onnxruntime": onnxruntime.__version__,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def up_to_date(assets: Path, key: str) -> dict[str, Any] | None:
    """The recorded decision when it was made from these inputs and its INT8 file is intact."""
    try:
        decision = json.loads(decision_path(assets).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(decision, dict) or decision.get("key") != key:
        return None
    int8 = decision.get("int8") or {}
    model = assets / str(int8.get("model", INT8_MODEL))
    if not model.is_file() or not card_path_for(model).is_file():
        return None
    if file_sha256(model) != int8.get("sha256"):
        return None
    return decision


def _restore(assets: Path, cache: Path, key: str) -> dict[str, Any] | None:
    """Copy a decision made from the same inputs out of ``cache``, if it holds one."""
    folder = cache / key[:32]
    try:
        decision = json.loads((folder / DECISION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = folder / INT8_MODEL
    if not model.is_file() or file_sha256(model) != (decision.get("int8") or {}).get("sha256"):
        return None
    for name in (INT8_MODEL, card_path_for(model).name, DECISION_FILE):  # the decision last
        _copy_atomic(folder / name, assets / name)
    return up_to_date(assets, key)


def _store(assets: Path, cache: Path, key: str) -> None:
    folder = cache / key[:32]
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        for name in (INT8_MODEL, card_path_for(Path(INT8_MODEL)).name, DECISION_FILE):
            shutil.copy2(assets / name, staging / name)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.part")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def make_default(
    assets: Path, settings: Settings | None = None, *, cache: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Make (once) the INT8 person model and the decision; returns how (``up to date``,
    ``restored`` from the cache, ``made``) and the decision record."""
    settings = settings or Settings()
    fp32 = assets / FP32_MODEL
    calib = assets / CALIB_VIDEO
    key = decision_key(assets, settings)
    done = up_to_date(assets, key)
    if done is not None:
        return "up to date", done
    if cache is not None:
        restored = _restore(assets, cache, key)
        if restored is not None:
            return "restored", restored
    started = time.monotonic()
    result = quantize(
        fp32,
        assets / INT8_MODEL,
        calib=calib,
        calib_frames=settings.calib_frames,
        calibration=settings.calibration,
    )
    decision = decide(assets, result, settings, key, quantize_s=time.monotonic() - started)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _store(assets, cache, key)
    return "made", decision


def decide(
    assets: Path,
    result: QuantizeResult,
    settings: Settings,
    key: str,
    *,
    quantize_s: float | None = None,
) -> dict[str, Any]:
    """Judge the INT8 model ``result`` made from ``assets``' fp32 model on frames of bikes.mp4 it
    was not calibrated on and the astronaut photo, and write the choice to default-model.json."""
    measured = measure(
        assets / FP32_MODEL,
        result,
        assets / CALIB_VIDEO,
        settings,
        extra_eval=[assets / EVAL_PHOTO],
    )
    if quantize_s is not None:
        measured.seconds = {"quantize": round(quantize_s, 1), **measured.seconds}
    decision = decision_record(assets, key, settings, measured)
    write_atomic(decision_path(assets), (json.dumps(decision, indent=2) + "\n").encode())
    return decision


def decision_record(
    assets: Path, key: str, settings: Settings, measured: Measured
) -> dict[str, Any]:
    """default-model.json's content (README "Models" documents it)."""
    import onnxruntime

    choice, f = measured.choice, measured.choice.fidelity
    fp32 = assets / FP32_MODEL
    int8 = measured.result.model
    return {
        "model": choice.model.name,
        "chosen": "int8" if choice.int8 else "fp32",
        "reason": choice.reason,
        "fidelity_map50": None if f is None else f.map50,
        "fidelity_map5095": None if f is None else f.map5095,
        "min_fidelity": settings.min_fidelity,
        "reference": {"model": fp32.name, "sha256": file_sha256(fp32)},
        "int8": {
            "model": int8.name,
            "sha256": file_sha256(int8),
            "card": measured.result.card.name,
            "kept_float": len(measured.result.kept),
        },
        "quantizer": {
            "tool": "edge-agent model quantize (agent.compress.quantize)",
            "mode": "static",
            "format": "QDQ",
            "calibration": settings.calibration,
            "keep_float": "auto",
            "onnxruntime": onnxruntime.__version__,
        },
        "calibration": {
            "data": CALIB_VIDEO,
            "sha256": file_sha256(assets / CALIB_VIDEO),
            "frames": measured.calib_frames,
        },
        "evaluation": {
            "data": measured.eval_sources,
            "frames": None if f is None else f.frames,
            "frame_names": measured.eval_frames,
            "reference_detections": None if f is None else f.reference_detections,
            "detections": None if f is None else f.detections,
            "latency_ms_p50": None
            if f is None
            else {"fp32": f.reference_latency_ms_p50, "int8": f.latency_ms_p50},
            "threads": settings.threads,
        },
        "seconds": measured.seconds,
        "key": key,
        "written": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }


CHECK_NEEDS_WORK = 10  # --check: the INT8 model has to be made (quantizer tools needed)


def main(argv: Sequence[str] | None = None) -> int:
    from agent.config import ASSETS_DIR

    parser = argparse.ArgumentParser(
        prog="python -m agent.compress.int8_default", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="models folder")
    parser.add_argument("--cache", type=Path, help="keep and reuse results here (.cache/int8)")
    parser.add_argument("--tools", type=Path, help="folder holding onnx and pycocotools")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"only say whether work is needed (exit {CHECK_NEEDS_WORK}); restores from --cache",
    )
    args = parser.parse_args(argv)
    if args.tools is not None:
        sys.path.append(str(args.tools.resolve()))
    settings = Settings()
    try:
        if args.check:
            key = decision_key(args.assets, settings)
            done = up_to_date(args.assets, key)
            how = "up to date"
            if done is None and args.cache is not None:
                done, how = _restore(args.assets, args.cache, key), "restored"
            if done is None:
                return CHECK_NEEDS_WORK
        else:
            print(
                f"int8-default: quantizing {FP32_MODEL} (calibration: {settings.calib_frames} "
                f"frames of {CALIB_VIDEO}; fidelity on {settings.eval_frames} others and "
                f"{Path(EVAL_PHOTO).name})",
                flush=True,
            )
            how, done = make_default(args.assets, settings, cache=args.cache)
    except (EdgeAgentError, OSError) as exc:
        print(f"int8-default: {exc}; {FP32_MODEL} stays the default", file=sys.stderr)
        return 1
    print(f"int8-default: default model {done['model']} ({how}): {done['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
