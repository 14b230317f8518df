"""The OpenVINO runtime (``model.runtime: openvino``): the generated models' known outputs (fp32,
fp16, quantized TFLite, an INT8 QDQ ONNX model against onnxruntime), the real person and face
models against onnxruntime's and TFLite's boxes, the compiled-model cache in the store (used on
the second load, never stale for a file replaced in place), the options' config errors, the
package missing (one line, exit 78), the CLI's --runtime, and an update and a rollback that stay
on OpenVINO. Tests that need the package skip where it is not installed (scripts/test installs
it)."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import agent  # noqa: F401  (blocks openvino-telemetry before openvino is imported)
from agent.config import ModelConfig, parse_config
from agent.detection import Detector, DetectorSettings
from agent.errors import ConfigError, ModelLoadError, RuntimeUnavailableError
from agent.runtimes import load_runtime
from agent.runtimes.openvino import CACHE_KEEP, OpenVinoRuntime
from agent.serving import RuntimeSpec
from tests import compress_models, modelgen
from tests.conftest import MEDIA, MODELS, ROOT, iou
from tests.registry_server import RegistryServer
from tests.test_updates import CONFIGURED, Rig, keys, registry, server  # noqa: F401  (the rig's fixtures)

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="openvino is not installed (pip install 'edge-detection-agent[openvino]')"
)
PERSON = MODELS / "person-yolov8s.onnx"
FACE = MODELS / "face-short-range.tflite"
IOU_MIN = 0.9  # the bar: the same detections
SCORE_TOLERANCE = 0.02


def ov_load(path: Path, **options: object) -> OpenVinoRuntime:
    rt = load_runtime(path, runtime="openvino", **options)  # type: ignore[arg-type]
    assert isinstance(rt, OpenVinoRuntime)
    return rt


def ramp(shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.linspace(low, high, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def frame(video: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(MEDIA / video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, image = cap.read()
    cap.release()
    assert ok, f"cannot read frame {index} of {video}"
    return np.asarray(image)


def same_detections(
    reference: Detector, other: Detector, image: np.ndarray, score: float | None = None
) -> int:
    """Every detection of ``reference`` has one of ``other`` with IoU >= 0.9 and a score within
    0.02 (and no more of them), at the card's threshold or ``score``; returns how many."""
    settings = DetectorSettings(score_threshold=score)
    want, _ = reference.detect(image, settings)
    got, _ = other.detect(image, settings)
    assert len(got) == len(want), (want, got)
    for d in want:
        match = max(got, key=lambda g: iou(g.box, d.box) if g.label == d.label else -1.0)
        assert match.label == d.label
        assert iou(match.box, d.box) >= IOU_MIN, (d, match)
        assert abs(match.score - d.score) <= SCORE_TOLERANCE, (d, match)
    return len(want)


# ------------------------------------------------------------------------- generated models


@needs_openvino
def test_generated_models_give_their_planned_outputs(tmp_path: Path) -> None:
    """Constant-output models (ONNX fp32 and fp16, TFLite float, quantized inputs and outputs)
    give on OpenVINO exactly what the reference runtime gives, which is what was planned."""
    v8 = modelgen.example_yolo_v8()
    for path in modelgen.write_all(tmp_path):
        ref = load_runtime(path)
        ov = ov_load(path)
        assert [s.name for s in ov.outputs] == [s.name for s in ref.outputs], path.name
        assert [s.shape for s in ov.inputs] == [s.shape for s in ref.inputs], path.name
        # the quantization of a TFLite file's integer edges is the file's, as TFLite reads it
        assert [(s.dtype, s.scale, s.zero_point) for s in ov.inputs] == [
            (s.dtype, s.scale, s.zero_point) for s in ref.inputs
        ], path.name
        x = [ramp(s.shape) for s in ref.inputs]
        want, got = ref.infer(x), ov.infer(x)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, atol=1e-6, err_msg=path.name)
        if path.name in ("yolo_v8.onnx", "yolo_fp16.onnx", "yolo.tflite"):
            np.testing.assert_allclose(got[0], v8, atol=1e-3)
        ov.close()


@needs_openvino
def test_quantized_tflite_input_is_quantized_with_the_files_scale(tmp_path: Path) -> None:
    path = modelgen.dequantize_tflite(tmp_path, (8, 4), np.uint8, 1 / 64, 128)
    ov = ov_load(path)
    x = ramp(ov.inputs[0].shape, -2.0, 1.9)
    (out,) = ov.infer([x])
    assert np.abs(out - x).max() <= 1 / 128 + 1e-6  # within half a step of what went in


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    from agent.compress.frames import sample_frames
    from agent.compress.quantize import calibration_feeds, model_card, quantize

    d = tmp_path_factory.mktemp("tiny")
    model = compress_models.tiny_yolo(d)
    images = compress_models.image_folder(d / "images", count=8)
    int8 = quantize(model, d / "int8.onnx", calib=images, calib_frames=4).model
    feeds = calibration_feeds(model, model_card(model), sample_frames(images, 8))
    return model, int8, [f["images"] for f in feeds]


@needs_openvino
def test_an_int8_qdq_model_runs_as_onnxruntime_runs_it(
    tiny_int8: tuple[Path, Path, list[np.ndarray]],
) -> None:
    """The toolchain's INT8 QDQ model on OpenVINO gives onnxruntime's INT8 outputs: measured here
    within 1e-5 px and 1e-6 (the same integer arithmetic); the bar, a tenth of the quantization
    tests' tolerances (0.5 px of 64, 0.02), leaves room for another CPU's kernels."""
    _, int8, tensors = tiny_int8
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really a QDQ model
    ov = ov_load(int8, threads=1)
    ort = load_runtime(int8, runtime="onnx", threads=1)
    for tensor in tensors:
        (got,) = ov.infer([tensor])
        (want,) = ort.infer([tensor])
        assert np.abs(got[:, :4] - want[:, :4]).max() < 0.05
        assert np.abs(got[:, 4:] - want[:, 4:]).max() < 0.002


@needs_openvino
def test_split_parts_run_on_openvino_when_the_model_does(
    tiny_int8: tuple[Path, Path, list[np.ndarray]],
) -> None:
    """A split head and tail made with the slot's openvino options run on OpenVINO, and the two
    parts give the whole model's output."""
    from agent.split.parts import SplitModel

    model, _, tensors = tiny_int8
    split = SplitModel(model, threads=1, spec=RuntimeSpec(runtime="openvino", threads=1))
    inner = [c.id for c in split.graph.cuts if c.id not in ("input", "output")]
    head, tail = split.parts(inner[len(inner) // 2])
    assert head._openvino is not None and tail._openvino is not None
    (whole,) = load_runtime(model, runtime="onnx").infer([tensors[0]])
    out = tail.run(head.run({"images": tensors[0]}))
    np.testing.assert_allclose(out[split.output_names[0]], whole, atol=1e-3)


# ------------------------------------------------------------------------------ real models


@needs_openvino
def test_person_model_finds_what_onnxruntime_finds(assets: Path) -> None:
    onnx_det = RuntimeSpec(runtime="onnx", threads=2).load(PERSON)
    ov_det = RuntimeSpec(runtime="openvino", threads=2).load(PERSON)
    assert isinstance(ov_det.runtime, OpenVinoRuntime) and ov_det.runtime.precision == "f32"
    # Down to 0.25, so that more than the one confident box of each picture is compared.
    found = same_detections(onnx_det, ov_det, cv2.imread(str(MEDIA / "astronaut.png")), 0.25)
    found += same_detections(onnx_det, ov_det, frame("bikes.mp4", 210), 0.25)
    assert found >= 3  # the astronaut (twice) and a rider: something was compared


@needs_openvino
def test_face_model_loads_through_the_tflite_frontend_and_finds_what_tflite_finds(
    assets: Path,
) -> None:
    tflite = RuntimeSpec(runtime="tflite", threads=2).load(FACE)
    ov = RuntimeSpec(runtime="openvino", threads=2).load(FACE)
    found = same_detections(tflite, ov, cv2.imread(str(MEDIA / "astronaut.png")))
    found += same_detections(tflite, ov, frame("carphone_pristine.mp4", 20))
    assert found >= 2


# -------------------------------------------------------------------------- compile cache


@needs_openvino
def test_the_second_load_comes_from_the_compile_cache(tmp_path: Path, assets: Path) -> None:
    cache = tmp_path / "cache" / "openvino"
    first = ov_load(FACE, cache_dir=cache)
    assert not first.loaded_from_cache
    x = [ramp(s.shape) for s in first.inputs]
    compiled = first.infer(x)
    folder = first.cache
    assert folder is not None and folder.parent == cache
    blobs = list(folder.glob("*.blob"))
    assert blobs and all(b.stat().st_size > 1000 for b in blobs)  # the compiled model is kept
    first.close()
    again = ov_load(FACE, cache_dir=cache)
    assert again.loaded_from_cache  # OpenVINO's own word: imported, not compiled
    assert again.cache == folder and list(folder.glob("*.blob")) == blobs
    for got, want in zip(again.infer(x), compiled, strict=True):
        np.testing.assert_array_equal(got, want)  # the same compiled model


@needs_openvino
def test_a_model_file_replaced_in_place_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """OpenVINO keys a compiled file by its path: the agent's cache folder per file identity
    keeps a replaced file from getting the old file's compiled model."""
    cache = tmp_path / "cache"
    one = modelgen.yolo_v8_onnx(tmp_path / "a", np.zeros((1, 6, 8), np.float32), name="m")
    two = modelgen.yolo_v8_onnx(tmp_path / "b", np.ones((1, 6, 8), np.float32), name="m")
    model = tmp_path / "model.onnx"
    model.write_bytes(one.read_bytes())
    x = [np.zeros((1, 3, 64, 64), np.float32)]
    assert ov_load(model, cache_dir=cache).infer(x)[0].max() == 0.0
    assert ov_load(model, cache_dir=cache).loaded_from_cache
    model.write_bytes(two.read_bytes())  # same path, same size, new content
    again = ov_load(model, cache_dir=cache)
    assert not again.loaded_from_cache
    assert again.infer(x)[0].min() == 1.0


@needs_openvino
def test_the_cache_keeps_only_the_most_recently_used_models(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = np.zeros((1, 6, 8), np.float32)
    paths = [modelgen.yolo_v8_onnx(tmp_path / str(i), out, name=f"m{i}") for i in range(6)]
    folders = []
    for path in paths:
        rt = ov_load(path, cache_dir=cache)
        folders.append(rt.cache)
    kept = sorted(p for p in cache.iterdir())
    assert kept == sorted(folders[-CACHE_KEEP:])


@needs_openvino
def test_the_config_puts_the_cache_in_the_store(tmp_path: Path) -> None:
    model = ModelConfig(runtime="openvino", threads=1)
    spec = RuntimeSpec.from_config(model, tmp_path / "store")
    assert spec.cache_dir == str(tmp_path / "store" / "cache" / "openvino")
    assert (spec.device, spec.precision, spec.hint) == ("CPU", "f32", "LATENCY")
    assert RuntimeSpec.from_config(ModelConfig(runtime="openvino", cache=False), tmp_path).cache_dir is None
    assert RuntimeSpec.from_config(ModelConfig(), tmp_path).cache_dir is None  # not onnx's
    detector = spec.load(FACE)
    assert isinstance(detector.runtime, OpenVinoRuntime) and detector.runtime.cache is not None
    assert detector.runtime.cache.parent == tmp_path / "store" / "cache" / "openvino"


# ----------------------------------------------------------------------- options and errors


@needs_openvino
def test_precision_and_threads_reach_openvino(tmp_path: Path) -> None:
    import openvino as ov

    path = modelgen.yolo_v8_onnx(tmp_path, modelgen.example_yolo_v8())
    rt = ov_load(path, precision="bf16", threads=1)
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # what the CPU really runs: bf16 where it has it, f32 otherwise
    assert rt.precision == ("bf16" if "BF16" in capabilities else "f32")
    assert rt._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(rt._compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"


@needs_openvino
def test_throughput_warns_that_the_agent_keeps_one_request_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = modelgen.yolo_v8_onnx(tmp_path, modelgen.example_yolo_v8())
    with caplog.at_level(logging.WARNING, logger="agent.runtimes.openvino"):
        ov_load(path, threads=2)
        assert not caplog.records  # LATENCY: nothing to say
        tput = ov_load(path, threads=2, hint="THROUGHPUT")
    assert str(tput._compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    requests = tput._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    said = [r.getMessage() for r in caplog.records]
    if requests > 1:  # a device with one stream whatever the hint has nothing to warn of
        assert len(said) == 1 and "runs one at a time" in said[0] and "LATENCY" in said[0], said
    else:
        assert said == []


@needs_openvino
def test_a_device_openvino_does_not_find_is_refused_in_one_line(tmp_path: Path) -> None:
    import openvino as ov

    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    with pytest.raises(RuntimeUnavailableError, match=r"model.device NPU: .*available: CPU") as e:
        ov_load(FACE, device="NPU")
    assert "\n" not in str(e.value)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": {"runtime": "openvino", "device": "NPU"}, "store": {"path": str(tmp_path)}}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"{config}:2: model.device: OpenVINO finds no NPU here" in done.stderr


@pytest.mark.parametrize(
    ("device", "available", "found"),
    [
        ("CPU", ["CPU"], True),
        ("GPU", ["CPU"], False),
        ("GPU", ["CPU", "GPU"], True),
        ("GPU", ["CPU", "GPU.0", "GPU.1"], True),  # two GPUs: GPU is the first
        ("GPU.1", ["CPU", "GPU.0", "GPU.1"], True),
        ("GPU.0", ["CPU", "GPU"], True),  # a lone GPU is GPU.0
        ("GPU.1", ["CPU", "GPU"], False),
        ("NPU", ["CPU", "GPU"], False),
        ("AUTO", ["CPU"], True),
    ],
)
def test_devices_are_found_by_name_and_index(device: str, available: list[str], found: bool) -> None:
    from agent.runtimes.openvino import device_found

    assert device_found(device, available) is found


@needs_openvino
def test_a_broken_model_file_is_a_model_load_error_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx: OpenVINO cannot load it") as e:
        ov_load(bad)
    assert "\n" not in str(e.value) and "Exception from" not in str(e.value)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"device": "GPU"}, "model.device: GPU is an OpenVINO option: set model.runtime: openvino"),
        (
            {"runtime": "onnx", "precision": "bf16"},
            "model.precision: bf16 is an OpenVINO option: set model.runtime: openvino "
            "(model.runtime is onnx)",
        ),
        (
            {"runtime": "tflite", "performance_hint": "THROUGHPUT"},
            "model.performance_hint: THROUGHPUT is an OpenVINO option",
        ),
        ({"runtime": "openvino", "device": "gpu"}, "unknown OpenVINO device 'gpu'"),
        ({"runtime": "openvino", "precision": "int8"}, "model.precision: Input should be"),
    ],
)
def test_openvino_options_are_checked_in_the_config(model: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=r"x\.yaml:\d+: ") as e:
        parse_config(yaml.safe_dump({"model": model}), "x.yaml")
    assert words in str(e.value)


def test_openvino_options_at_their_defaults_stay_valid_for_any_runtime() -> None:
    # A whole config dumped and validated again (a config/set patch) names every key.
    config = parse_config("model: {runtime: onnx}\n", "x.yaml")
    again = parse_config(yaml.safe_dump(config.model_dump(mode="json")), "again.yaml")
    assert again.model.device == "CPU" and again.model.precision == "f32"
    ok = parse_config("model: {runtime: openvino, device: GPU.1, precision: f16}\n", "x.yaml")
    assert (ok.model.device, ok.model.precision) == ("GPU.1", "f16")


# ---------------------------------------------------------------------- the package missing


def test_without_the_package_the_runtime_is_unavailable_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a device without the extra
    with pytest.raises(RuntimeUnavailableError, match="openvino package is not installed") as e:
        ov_load(FACE)
    assert "pip install 'edge-detection-agent[openvino]'" in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 78


BLOCKED = "import sys; sys.modules['openvino'] = None; from agent.cli import main; "


def test_run_without_the_package_exits_78_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"runtime": "openvino"}, "store": {"path": str(tmp_path)}})
    )
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED + f"sys.exit(main(['run', '-c', {str(config)!r}]))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 78, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{config}:2: model.runtime: openvino is not installed here" in lines[0]
    # and nothing of the agent needed it: the core imports and validates without it
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------- commands


@needs_openvino
def test_detect_and_bench_take_a_runtime(assets: Path) -> None:
    image = str(MEDIA / "astronaut.png")
    runs = {}
    for runtime in ("tflite", "openvino"):
        out = subprocess.run(
            [sys.executable, "-m", "agent", "detect", str(FACE), image, "--json", "--runtime", runtime],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        runs[runtime] = json.loads(out)["objects"]
    assert len(runs["openvino"]) == len(runs["tflite"]) == 1
    assert iou(runs["openvino"][0]["box"], runs["tflite"][0]["box"]) >= IOU_MIN
    bench = subprocess.run(
        [sys.executable, "-m", "agent", "bench", str(FACE), "--frames", "4", "--runtime",
         "tflite,openvino", "--json", "--source", str(MEDIA / "carphone_pristine.mp4")],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in bench.splitlines()]
    assert [r["runtime"] for r in rows] == ["tflite", "openvino"]
    assert rows[1]["device"] == "CPU" and rows[1]["precision"] == "f32"
    assert all(r["runtime_fps"] > 0 and r["pipeline_fps"] > 0 for r in rows)


@needs_openvino
def test_model_eval_runs_the_models_on_the_runtime_and_the_reference_on_its_own(
    assets: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "model", "eval", str(FACE), "--data",
         str(MEDIA / "astronaut.png"), "--reference", str(FACE), "--frames", "1",
         "--runtime", "openvino", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout  # fmt: skip
    (report,) = [json.loads(line) for line in out.splitlines()]
    assert report["runtime"] == "openvino CPU f32"
    assert report["truth"] == "reference face-short-range"  # run by TFLite, its own runtime
    assert report["map50"] == 1.0  # OpenVINO finds the face TFLite finds


def test_device_and_precision_without_openvino_are_refused(assets: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "detect", str(FACE), str(MEDIA / "astronaut.png"),
         "--precision", "bf16"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 78
    assert "--device and --precision are OpenVINO options: add --runtime openvino" in done.stderr


# -------------------------------------------------------------------- updates stay on it


@pytest.fixture
def ov_rig(
    tmp_path: Path,
    server: RegistryServer,  # noqa: F811
    keys: tuple[Path, Path],  # noqa: F811
) -> Iterator[Rig]:
    spec = RuntimeSpec(runtime="openvino", threads=1, cache_dir=str(tmp_path / "cache"))
    r = Rig(tmp_path / "state", server.url, keys[1], spec=spec)
    yield r
    r.close()


@needs_openvino
def test_an_update_and_a_rollback_stay_on_openvino(ov_rig: Rig, assets: Path) -> None:
    rig = ov_rig
    assert isinstance(rig.slot.detector.runtime, OpenVinoRuntime)
    rig.run("2.0.0")
    assert rig.updater.state.state == "idle", rig.updater.state.error
    assert rig.serving_version() == "2.0.0"
    assert isinstance(rig.slot.detector.runtime, OpenVinoRuntime)  # trial, swap, probation
    rig.updater.rollback("r1")
    assert rig.serves_the_configured_model()
    assert isinstance(rig.slot.detector.runtime, OpenVinoRuntime)
    rig.frames_run_on(CONFIGURED)

