"""Model cards: what a detector expects as input and how to read its outputs.

A card lives beside the model as ``<model>.card.yaml`` (or inside a registry manifest). Without one,
``infer_card`` guesses from the model itself and lists what it assumed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import ModelCardError
from agent.runtimes.base import Runtime


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """How a frame becomes the model's input tensor: ``value = (pixel * scale - mean) / std``."""

    width: int = Field(gt=0, description="model input width in pixels")
    height: int = Field(gt=0, description="model input height in pixels")
    layout: Literal["NHWC", "NCHW"] = Field("NHWC", description="tensor layout")
    color: Literal["RGB", "BGR"] = Field("RGB", description="channel order the model expects")
    resize: Literal["letterbox", "stretch"] = Field(
        "letterbox", description="keep aspect ratio with padding, or stretch to fit"
    )
    pad_value: int = Field(0, ge=0, le=255, description="pixel value of letterbox padding")
    scale: float = Field(1 / 255, gt=0, description="multiplier applied to 0..255 pixels")
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])


class AnchorSpec(_Strict):
    """SSD anchor generation as in MediaPipe's SsdAnchorsCalculator."""

    num_layers: int
    min_scale: float
    max_scale: float
    strides: list[int]
    aspect_ratios: list[float] = Field(default_factory=lambda: [1.0])
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    fixed_anchor_size: bool = True
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False


class AnchorDecodeSpec(_Strict):
    """How raw regressors are read (MediaPipe's TensorsToDetectionsCalculator options)."""

    box_scale: list[float] = Field(
        description="x, y, w, h scales the regressors are divided by (usually the input size)"
    )
    reverse_output_order: bool = Field(
        True, description="regressors are x, y, w, h (not y, x, h, w)"
    )
    sigmoid_score: bool = True
    score_clipping: float = 100.0
    num_keypoints: int = 0
    keypoint_offset: int = 4
    box_from_keypoints: list[int] | None = Field(
        None,
        description="[center, edge] keypoint indices: report a square box centred on the first "
        "keypoint with half-size the distance to the second (BlazePose's body box) instead of the "
        "regressed box",
    )


class Thresholds(_Strict):
    score: float = Field(0.5, ge=0, le=1)
    iou: float = Field(0.45, ge=0, le=1)


class Quantization(_Strict):
    """How a quantized model was made from its float original, and how closely it still finds
    what the original finds (written by `model quantize`, `registry publish --int8-from` and
    scripts/setup)."""

    method: str = Field(description="e.g. INT8 static QDQ, per-channel s8 weights, u8 activations")
    calibration: str | None = Field(None, description="calibration method and frames")
    reference: str | None = Field(None, description="the float model: file name and sha256")
    fidelity_map50: float | None = Field(
        None,
        ge=0,
        le=1,
        description="mAP@0.5 against the reference's detections, on frames not calibrated on",
    )
    fidelity_frames: str | None = Field(None, description="what the fidelity was measured on")
    input_dtype: Literal["int8", "uint8"] | None = Field(
        None, description="integer input of a full-integer model (the runtime quantizes frames)"
    )
    input_scale: float | None = Field(None, gt=0, description="its scale: real = scale * (q - zp)")
    input_zero_point: int | None = Field(None, description="its zero point")


class ModelCard(_Strict):
    name: str
    version: str = "0"
    format: Literal["onnx", "tflite"] | None = None
    family: Literal["yolo", "ssd", "anchors"]
    input: InputSpec
    labels: list[str] = Field(min_length=1)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    yolo_version: Literal["auto", "v5", "v8"] = Field(
        "auto", description="yolo: output [1, 4+nc, N] (v8/v11) or [1, N, 5+nc] (v5)"
    )
    yolo_boxes: Literal["auto", "pixels", "normalized"] = Field(
        "auto",
        description="yolo: box units; Ultralytics ONNX gives input pixels, its TFLite exports "
        "0..1; "
        "auto tells them apart by value",
    )
    label_offset: int = Field(0, description="ssd: subtract from class ids before label lookup")
    anchors: AnchorSpec | None = None
    decode: AnchorDecodeSpec | None = None
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="role -> output tensor name (ssd: boxes/classes/scores/count; anchors: "
        "boxes/scores), when the shapes alone do not tell",
    )
    sha256: str | None = None
    source: str | None = None
    license: str | None = None
    notes: str | None = None
    quantization: Quantization | None = None
    assumed: list[str] = Field(
        default_factory=list, description="what was guessed because no card said it"
    )


def card_path_for(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".card.yaml")


def load_card(path: str | Path) -> ModelCard:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ModelCardError(f"{path}: cannot read model card: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: a model card must be a mapping")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ModelCardError(f"{path}: {problems}") from exc


def infer_card(model_path: str | Path, runtime: Runtime) -> ModelCard:
    """Guess a card from the model: Ultralytics metadata, tensor shapes, quantization."""
    path = Path(model_path)
    assumed: list[str] = []
    spec = runtime.inputs[0]
    shape = spec.shape
    if len(shape) != 4:
        raise ModelCardError(f"{path}: no card and input shape {shape} is not an image tensor")
    layout = "NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC"
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    assumed.append(f"input {width}x{height} {layout} from the tensor shape")
    metadata: dict[str, str] = getattr(runtime, "metadata", {})
    labels: list[str] = []
    if "names" in metadata:
        try:
            names = ast.literal_eval(metadata["names"])
            labels = [str(names[k]) for k in sorted(names)]
            assumed.append("labels from the model's 'names' metadata")
        except (ValueError, SyntaxError):
            pass
    outputs = runtime.outputs
    family: Literal["yolo", "ssd", "anchors"]
    if len(outputs) == 1 and len(outputs[0].shape) == 3:
        family = "yolo"
        if not labels:
            _, a, b = outputs[0].shape
            nc = min(a, b) - 4
            labels = [f"class{i}" for i in range(max(nc, 1))]
            assumed.append(f"{len(labels)} unnamed classes from the output shape")
        color, scale, resize, pad = "RGB", 1 / 255, "letterbox", 114
    elif len(outputs) == 4:
        family = "ssd"
        labels = labels or [f"class{i}" for i in range(91)]
        assumed.append("unnamed classes; give a card with labels")
        color, scale, resize, pad = "RGB", 1 / 255, "stretch", 0
    else:
        raise ModelCardError(
            f"{path}: no model card, and the outputs {[o.shape for o in outputs]} do not tell the "
            f"family; write {card_path_for(path).name} (see README, 'Bring your own model')"
        )
    assumed.append(f"family {family} from the output shapes")
    if spec.quantized or spec.dtype == "uint8":
        assumed.append(f"{spec.dtype} input with scale {spec.scale} zero point {spec.zero_point}")
    return ModelCard(
        name=path.stem,
        format="onnx" if path.suffix == ".onnx" else "tflite",
        family=family,
        input=InputSpec(
            width=width,
            height=height,
            layout=layout,
            color=color,
            resize=resize,
            pad_value=pad,
            scale=scale,
        ),
        labels=labels,
        assumed=assumed,
    )


def resolve_card(
    model_path: str | Path, runtime: Runtime, card: str | Path | None = None
) -> ModelCard:
    """The card named, else the one beside the model, else a guessed one."""
    if card is not None:
        return load_card(card)
    beside = card_path_for(model_path)
    if beside.is_file():
        return load_card(beside)
    return infer_card(model_path, runtime)
