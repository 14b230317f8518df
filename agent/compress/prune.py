"""Magnitude pruning of the Conv/Gemm/MatMul weight initializers of ONNX models: a threshold, a
sparsity target (one global threshold, or the same share in every layer), or per-layer targets
chosen from a sensitivity scan (each layer pruned alone at a few levels, fidelity measured).

Zeros make a file compress (zstd) but do not make dense kernels faster: onnxruntime's CPU Conv and
MatMul do the same work whatever the values, so expect the same latency.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.compress.derived import check_paths, write_derived_card
from agent.compress.evaluate import Candidate, EvalReport, compare
from agent.compress.frames import Frame
from agent.compress.graph import WEIGHTED_OPS
from agent.detection.card import card_path_for
from agent.errors import CompressError


@dataclass(frozen=True)
class Layer:
    """One prunable weight: the initializer ``weight`` of node ``node``."""

    node: str
    op_type: str
    weight: str


@dataclass(frozen=True)
class LayerSparsity:
    node: str
    weight: str
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


@dataclass
class PruneResult:
    model: Path
    card: Path
    layers: list[LayerSparsity]
    skipped: list[str]  # nodes with weights left alone, and why
    rule: str
    levels: dict[str, float] = field(default_factory=dict)  # sensitivity mode: per-layer target
    scan: list[tuple[str, float, float]] = field(default_factory=list)  # layer, level, fidelity
    fidelity: float | None = None  # sensitivity mode: of the final model

    @property
    def total(self) -> LayerSparsity:
        return LayerSparsity(
            "all", "", sum(x.size for x in self.layers), sum(x.zeros for x in self.layers)
        )


# ---------------------------------------------------------------------------- the weights


class Weights:
    """A loaded ONNX model and its prunable weights; variants are written from it with other
    weight values, the originals are never changed."""

    def __init__(self, path: Path, family: str | None = None) -> None:
        import onnx
        from onnx import numpy_helper

        self.path = path
        self.model = onnx.load(str(path))
        inits = {t.name: t for t in self.model.graph.initializer}
        skip_nodes: dict[str, str] = {}
        if family == "yolo":
            from agent.compress.sensitive import yolo_decode_tail

            skip_nodes = {
                k.name: "fixed yolo box-decoding weights" for k in yolo_decode_tail(self.model)
            }
        self.layers: list[Layer] = []
        self.skipped: list[str] = []
        seen: set[str] = set()
        for node in self.model.graph.node:
            if node.op_type not in WEIGHTED_OPS:
                continue
            # Conv/Gemm: the weight is input 1; MatMul: either side may be the constant.
            names = node.input[1:2] if node.op_type != "MatMul" else node.input[:2]
            for name in names:
                if name not in inits or name in seen:
                    continue
                if node.name in skip_nodes:
                    self.skipped.append(f"{node.name}: {skip_nodes[node.name]}")
                    continue
                if inits[name].data_type not in (1, 10, 11):  # float, float16, double
                    self.skipped.append(f"{node.name}: {name} is not a float tensor")
                    continue
                seen.add(name)
                self.layers.append(Layer(node.name, node.op_type, name))
        if not self.layers:
            raise CompressError(f"{path}: no Conv/Gemm/MatMul weight initializers to prune")
        self.original: dict[str, np.ndarray] = {
            layer.weight: numpy_helper.to_array(inits[layer.weight]) for layer in self.layers
        }
        self._inits = inits

    @property
    def count(self) -> int:
        return sum(a.size for a in self.original.values())

    def write(self, arrays: dict[str, np.ndarray], out: Path) -> None:
        """Save the model with ``arrays`` in place of those weights (the originals return)."""
        import onnx
        from onnx import numpy_helper

        saved = {name: onnx.TensorProto() for name in arrays}
        for name, array in arrays.items():
            saved[name].CopyFrom(self._inits[name])
            self._inits[name].CopyFrom(numpy_helper.from_array(array, name))
        try:
            onnx.save(self.model, str(out))
        finally:
            for name, proto in saved.items():
                self._inits[name].CopyFrom(proto)

    def sparsity(self, arrays: dict[str, np.ndarray]) -> list[LayerSparsity]:
        return [
            LayerSparsity(
                layer.node,
                layer.weight,
                int(arrays[layer.weight].size),
                int(np.count_nonzero(arrays[layer.weight] == 0)),
            )
            for layer in self.layers
        ]


# ------------------------------------------------------------------------------- the rules


def by_threshold(weights: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    """|w| < threshold -> 0."""
    if threshold < 0:
        raise CompressError(f"threshold must be >= 0, not {threshold}")
    return {k: np.where(np.abs(w) < threshold, 0, w).astype(w.dtype) for k, w in weights.items()}


def _zero_smallest(w: np.ndarray, k: int) -> np.ndarray:
    out = w.copy()
    if k > 0:
        flat = out.reshape(-1)
        flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
    return out


def by_layer_sparsity(
    weights: dict[str, np.ndarray], levels: dict[str, float]
) -> dict[str, np.ndarray]:
    """In each layer, the ``round(level * size)`` smallest weights -> 0 (exactly that many)."""
    for name, level in levels.items():
        _check_level(level, name)
    return {
        k: _zero_smallest(w, round(levels.get(k, 0.0) * w.size)) if levels.get(k) else w.copy()
        for k, w in weights.items()
    }


def by_global_sparsity(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """The ``round(sparsity * total)`` smallest weights across all layers -> 0: one threshold for
    the whole model, so layers of small weights lose more than layers of large ones."""
    _check_level(sparsity, "sparsity")
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).reshape(-1).astype(np.float32) for n in names])
    k = round(sparsity * flat.size)
    mask = np.ones(flat.size, bool)
    if k > 0:
        mask[np.argpartition(flat, k - 1)[:k]] = False
    out: dict[str, np.ndarray] = {}
    start = 0
    for n in names:
        w = weights[n]
        keep = mask[start : start + w.size].reshape(w.shape)
        out[n] = np.where(keep, w, 0).astype(w.dtype)
        start += w.size
    return out


def _check_level(level: float, what: str) -> None:
    if not 0 <= level < 1:
        raise CompressError(f"{what}: sparsity must be in [0, 1), not {level}")


# ------------------------------------------------------------------------------ operations


def prune(
    model: str | Path,
    out: str | Path,
    *,
    threshold: float | None = None,
    sparsity: float | None = None,
    per_layer: bool = False,
    card: Path | None = None,
) -> PruneResult:
    """Prune by ``threshold`` or to ``sparsity`` (global, or ``per_layer``); write ``out`` and
    its card."""
    from agent.compress.quantize import model_card

    model, out = _check_paths(model, out)
    if (threshold is None) == (sparsity is None):
        raise CompressError("give exactly one of threshold and sparsity")
    src = model_card(model, card)
    weights = Weights(model, src.family)
    if threshold is not None:
        arrays = by_threshold(weights.original, threshold)
        rule = f"|w| < {threshold:g} -> 0"
    elif per_layer:
        assert sparsity is not None
        arrays = by_layer_sparsity(weights.original, dict.fromkeys(weights.original, sparsity))
        rule = f"{sparsity:.0%} of each layer's smallest weights -> 0"
    else:
        assert sparsity is not None
        arrays = by_global_sparsity(weights.original, sparsity)
        rule = f"the {sparsity:.0%} smallest weights of the model (one global threshold) -> 0"
    weights.write(arrays, out)
    return PruneResult(
        out,
        write_derived_card(src, model, out, f"Pruned ({rule})", "prune"),
        weights.sparsity(arrays),
        weights.skipped,
        rule,
    )


def _check_paths(model: str | Path, out: str | Path) -> tuple[Path, Path]:
    model, out = Path(model), Path(out)
    if model.suffix.lower() != ".onnx":
        raise CompressError(f"{model}: pruning works on .onnx models")
    check_paths(model, out, ".onnx", "the output must be an .onnx file", "pruned")
    out.parent.mkdir(parents=True, exist_ok=True)
    return model, out


@contextmanager
def _variant(weights: Weights, arrays: dict[str, np.ndarray], tmp: Path) -> Iterator[Path]:
    path = tmp / f"variant{len(list(tmp.iterdir()))}.onnx"
    weights.write(arrays, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


Fidelity = Callable[[Path], float]


def _fidelity_fn(
    model: Path, card: Path | None, data: str | Path, frames: int, threads: int
) -> Fidelity:
    """Fidelity (mAP@0.5 against ``model``'s own detections) of a variant, on fixed frames. The
    reference runs once."""
    from agent.compress.evaluate import _above, _run, coco_map
    from agent.compress.frames import sample_frames

    sample: list[Frame] = sample_frames(data, frames)
    ref = _run(Candidate(model, card), sample, threads)
    truths = [_above(p, ref.card_score) for p in ref.predictions]
    card_path = card if card is not None else card_path_for(model)
    use_card = card_path if card_path.is_file() else None

    def fidelity(variant: Path) -> float:
        return coco_map(_run(Candidate(variant, use_card), sample, threads).predictions, truths)[0]

    return fidelity


def sensitivity_prune(
    model: str | Path,
    out: str | Path,
    *,
    data: str | Path,
    min_fidelity: float,
    levels: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    frames: int = 8,
    threads: int = 2,
    card: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune each layer alone at each of ``levels`` and measure fidelity; give every layer the
    highest level it stands alone with fidelity >= ``min_fidelity``; then, since the errors of
    layers add up, lower every layer's level one step at a time, together, until the whole
    model keeps ``min_fidelity``. Costs (layers x levels + a few) evaluations of ``frames``."""
    from agent.compress.quantize import model_card

    model, out = _check_paths(model, out)
    if not 0 < min_fidelity <= 1:
        raise CompressError(f"min fidelity must be in (0, 1], not {min_fidelity}")
    levels = sorted(levels)
    for level in levels:
        _check_level(level, "level")
    src = model_card(model, card)
    weights = Weights(model, src.family)
    fidelity = _fidelity_fn(model, card, data, frames, threads)
    say = progress or (lambda _: None)
    scan: list[tuple[str, float, float]] = []
    best: dict[str, int] = {}  # weight -> index into levels (-1: leave dense)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n, layer in enumerate(weights.layers, 1):
            best[layer.weight] = -1
            for i, level in enumerate(levels):
                arrays = by_layer_sparsity(
                    {layer.weight: weights.original[layer.weight]}, {layer.weight: level}
                )
                with _variant(weights, arrays, tmp) as path:
                    f = fidelity(path)
                scan.append((layer.node, level, f))
                if f < min_fidelity:
                    break
                best[layer.weight] = i
            say(
                f"[{n}/{len(weights.layers)}] {layer.node}: "
                + ", ".join(f"{lv:.0%} -> {f:.3f}" for nd, lv, f in scan if nd == layer.node)
            )
        # Combined: step every layer's level down together until the whole model holds.
        shift = 0
        while True:
            chosen = {w: levels[i - shift] if i - shift >= 0 else 0.0 for w, i in best.items()}
            arrays = by_layer_sparsity(weights.original, chosen)
            with _variant(weights, arrays, tmp) as path:
                combined = fidelity(path)
            say(f"all layers together (levels lowered {shift} step(s)): fidelity {combined:.3f}")
            if combined >= min_fidelity or all(i - shift < 0 for i in best.values()):
                break
            shift += 1
    weights.write(arrays, out)
    rule = (
        f"per-layer sparsity from a sensitivity scan (levels {', '.join(f'{x:g}' for x in levels)}"
        f", fidelity >= {min_fidelity:g} on {frames} frames of {Path(data).name})"
    )
    return PruneResult(
        out,
        write_derived_card(src, model, out, f"Pruned ({rule})", "prune"),
        weights.sparsity(arrays),
        weights.skipped,
        rule,
        levels={layer.node: chosen[layer.weight] for layer in weights.layers},
        scan=scan,
        fidelity=combined,
    )


# ------------------------------------------------------------------------------------ scan


@dataclass
class ScanRow:
    sparsity: float
    fp32: EvalReport
    int8: EvalReport | None


def sparsity_scan(
    model: str | Path,
    sparsities: Sequence[float],
    data: str | Path,
    *,
    per_layer: bool = False,
    int8: bool = True,
    calib: str | Path | None = None,
    calib_frames: int = 16,
    frames: int = 20,
    threads: int = 2,
    card: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[EvalReport, list[ScanRow]]:
    """For each sparsity: the pruned model's fidelity against the original, sizes, latency; and
    the same for it quantized to INT8 (static, sensitive nodes kept in float). Evaluation frames
    never include the calibration frames. Returns the original's report and one row per level."""
    from agent.compress.frames import frame_names, spread
    from agent.compress.quantize import model_card, quantize

    model = Path(model)
    if model.suffix.lower() != ".onnx" or not model.is_file():
        raise CompressError(f"{model}: expected an existing .onnx model")
    for s in sparsities:
        _check_level(s, "sparsity")
    say = progress or (lambda _: None)
    src = model_card(model, card)
    weights = Weights(model, src.family)
    calib = calib or data
    calib_names = spread(frame_names(calib), calib_frames) if int8 else []
    exclude = calib_names if Path(calib).resolve() == Path(data).resolve() else []
    ref = Candidate(model, card, "original")
    card_file = card if card is not None else card_path_for(model)
    use_card = card_file if card_file.is_file() else None
    rows: list[ScanRow] = []
    base: EvalReport | None = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for s in sparsities:
            arrays = (
                by_layer_sparsity(weights.original, dict.fromkeys(weights.original, s))
                if per_layer
                else by_global_sparsity(weights.original, s)
            )
            pruned = tmp / f"pruned-{round(s * 100)}.onnx"
            weights.write(arrays, pruned)
            candidates = [Candidate(pruned, use_card, f"pruned {s:.0%}")]
            if int8:
                q = quantize(
                    pruned,
                    tmp / f"pruned-{round(s * 100)}-int8.onnx",
                    calib=calib,
                    calib_frames=calib_frames,
                    card=use_card,
                )
                candidates.append(Candidate(q.model, q.card, f"pruned {s:.0%} + int8"))
            reports = compare(
                [ref, *candidates] if base is None else candidates,
                data,
                reference=ref,
                frames=frames,
                threads=threads,
                exclude=exclude,
            )
            if base is None:
                base, reports = reports[0], reports[1:]
            rows.append(ScanRow(s, reports[0], reports[1] if int8 else None))
            say(
                f"sparsity {s:.0%}: fidelity {reports[0].map50}"
                + (f", int8 {reports[1].map50}" if int8 else "")
            )
            pruned.unlink()
    assert base is not None
    return base, rows


def scan_table(base: EvalReport, rows: Sequence[ScanRow]) -> str:
    """Markdown: per sparsity, fidelity, sizes (fp32, zstd of fp32, zstd of INT8) and latency."""
    mb = 1e6
    lines = [
        "| sparsity | fidelity fp32 | fidelity int8 | size MB | zstd MB (% of original) "
        "| int8 zstd MB (% of original) | latency p50 ms fp32 / int8 |",
        "|---|---|---|---|---|---|---|",
        f"| 0 (original) | 1.000 | - | {base.size_bytes / mb:.2f} | {base.zstd_bytes / mb:.2f} "
        f"({100 * base.zstd_bytes / base.size_bytes:.1f}%) | - | {base.latency_ms_p50:.1f} / - |",
    ]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        q = r.int8
        lines.append(
            f"| {r.sparsity:.0%} | {f(r.fp32.map50)} | {f(q.map50 if q else None)} "
            f"| {r.fp32.size_bytes / mb:.2f} "
            f"| {r.fp32.zstd_bytes / mb:.2f} ({100 * r.fp32.zstd_bytes / base.size_bytes:.1f}%) "
            + (
                f"| {q.zstd_bytes / mb:.2f} ({100 * q.zstd_bytes / base.size_bytes:.1f}%) "
                if q
                else "| - "
            )
            + f"| {r.fp32.latency_ms_p50:.1f} / {q.latency_ms_p50 if q else float('nan'):.1f} |"
        )
    lines.append("")
    lines.append(
        f"fidelity: mAP@0.5 against the original's detections on {base.frames} frames "
        f"({base.threads} threads)"
    )
    return "\n".join(lines)


def layer_table(result: PruneResult) -> str:
    lines = ["| layer | weights | zeros | sparsity |", "|---|---|---|---|"]
    for x in [*result.layers, result.total]:
        lines.append(f"| {x.node} | {x.size} | {x.zeros} | {x.sparsity:.1%} |")
    return "\n".join(lines)
