"""The ``edge-agent`` command: run the daemon, detect on images, check configs, inspect and
benchmark models, list the events kept on disk."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.compress.cli import add_compress_commands
from agent.compress.distill_cli import add_distill_command
from agent.errors import EXIT_FAILURE, EXIT_OK, EdgeAgentError
from agent.logs import setup_logging
from agent.runtime_args import add_runtime_options
from agent.split.cli import add_split_commands
from agent.tracking.cli import add_events_command

log = logging.getLogger("agent")


def cmd_run(args: argparse.Namespace) -> int:
    from agent.app import Agent
    from agent.config import load_config
    from agent.memory import return_large_blocks
    from agent.preflight import preflight

    return_large_blocks()  # before the model loads: see agent/memory.py
    config = load_config(args.config)
    preflight(config, args.config)  # what a restart cannot fix: exit 78 before anything starts
    if config.split.role == "tail":
        from agent.split.tail import TailAgent

        return TailAgent(config).run_forever()
    return Agent(config, config_path=args.config).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.preflight import check_config_file

    path = Path(args.config)
    problems = check_config_file(path)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_FAILURE
    print(f"{path}: ok")
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    from agent.config import Config

    print(json.dumps(Config.model_json_schema(), indent=2))
    return 0


def _draw(
    image_path: Path, image: Any, detections: Sequence[Any], out_dir: Path, grid: bool = False
) -> Path:
    import cv2

    from agent.detection.draw import annotate, draw_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{image_path.stem}.jpg"
    drawn = annotate(image, detections)
    cv2.imwrite(str(out), draw_grid(drawn) if grid else drawn)
    return out


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from agent.detection import DetectorSettings
    from agent.runtime_args import spec_from_args

    detector = spec_from_args(args).load(args.model, card=args.card)
    settings = DetectorSettings(score_threshold=args.score, labels=tuple(args.labels or ()))
    status = 0
    for name in args.images:
        path = Path(name)
        image = cv2.imread(str(path))
        if image is None:
            print(f"{path}: cannot read this image", file=sys.stderr)
            status = 1
            continue
        t0 = time.perf_counter()
        detections, _ = detector.detect(image, settings)
        latency = (time.perf_counter() - t0) * 1e3
        if args.json:
            print(
                json.dumps(
                    {
                        "image": str(path),
                        "width": image.shape[1],
                        "height": image.shape[0],
                        "latency_ms": round(latency, 2),
                        "objects": [d.to_dict() for d in detections],
                    }
                )
            )
        else:
            print(f"{path}: {len(detections)} object(s) in {latency:.1f} ms")
            for d in detections:
                box = ", ".join(f"{v:.3f}" for v in d.box)
                print(f"  {d.label:<14} {d.score:.2f}  [{box}]")
        if args.draw:
            out = _draw(path, image, detections, Path(args.draw), grid=args.grid)
            if not args.json:
                print(f"  drawn: {out}")
    return status


def cmd_model_info(args: argparse.Namespace) -> int:
    from agent.detection.card import resolve_card
    from agent.detection.detector import file_sha256
    from agent.runtimes import load_runtime

    runtime = load_runtime(args.model)
    card = resolve_card(args.model, runtime, args.card)
    size = Path(args.model).stat().st_size
    info: dict[str, Any] = {
        "path": str(args.model),
        "size_bytes": size,
        "sha256": file_sha256(args.model),
        "inputs": [_spec(s) for s in runtime.inputs],
        "outputs": [_spec(s) for s in runtime.outputs],
        "card": card.model_dump(exclude_none=True),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}  {size / 1e6:.1f} MB  sha256 {info['sha256']}")
    print(f"  {card.name} {card.version}: family {card.family}, labels {card.labels}")
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            print(
                f"  {kind[:-1]:<6} {s['name']}: {s['shape']} {s['dtype']}"
                + (f" (scale {s['scale']}, zero point {s['zero_point']})" if s["scale"] else "")
            )
    for note in card.assumed:
        print(f"  assumed: {note}")
    return 0


def _spec(spec: object) -> dict[str, object]:
    from agent.runtimes import TensorSpec

    assert isinstance(spec, TensorSpec)
    return {
        "name": spec.name,
        "shape": list(spec.shape),
        "dtype": str(spec.dtype),
        "scale": spec.scale,
        "zero_point": spec.zero_point,
    }


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench import run_bench, run_static_bench
    from agent.bench_cameras import BenchError
    from agent.runtime_args import spec_from_args

    specs = [spec_from_args(args, kind) for kind in args.runtime]
    if args.cameras is not None:
        if args.runtime != ["auto"]:
            raise BenchError(
                "bench --cameras runs the model on its default runtime: drop --runtime"
            )
        return _bench_cameras(args)
    if args.static:
        if len(specs) > 1:
            raise BenchError("bench --static: one --runtime at a time")
        static = run_static_bench(
            args.model,
            source=args.source,
            seconds=args.seconds,
            threads=args.threads,
            card=args.card,
            spec=specs[0],
        )
        _print_result(static, args.json)
        return 0
    if len(specs) > 1:
        return _bench_runtimes(args)
    result = run_bench(
        args.model,
        source=args.source,
        frames=args.frames,
        threads=args.threads,
        card=args.card,
        broker=args.broker,
        spec=specs[0],
    )
    _print_result(result, args.json)
    return 0


def _bench_runtimes(args: argparse.Namespace) -> int:
    """One row per runtime, each measured in a fresh process (its own memory peak, no thread
    pool of another runtime beside it)."""
    import subprocess

    from agent.bench import BENCH_COLUMNS

    rows = []
    for kind in args.runtime:
        cmd = [sys.executable, "-m", "agent", "bench", str(args.model), "--json"]
        cmd += ["--frames", str(args.frames), "--threads", str(args.threads), "--runtime", kind]
        for option, value in (("--source", args.source), ("--card", args.card)):
            if value:
                cmd += [option, str(value)]
        if args.broker:
            cmd += ["--broker", args.broker]
        if kind == "openvino":
            cmd += ["--device", args.device, "--precision", args.precision]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr.strip(), file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("| " + " | ".join(BENCH_COLUMNS) + " |")
    print("|" + "---|" * len(BENCH_COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in BENCH_COLUMNS) + " |")
    return 0


def _bench_cameras(args: argparse.Namespace) -> int:
    from agent.bench_cameras import format_report, measure_cameras, run_cameras_bench

    options: dict[str, Any] = {
        "cameras": args.cameras,
        "source": args.source,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "fps": args.fps,
        "threads": args.threads,
        "card": args.card,
    }
    if args.no_baseline or args.cameras == 1:
        result = measure_cameras(args.model, **options)
    else:
        result = run_cameras_bench(args.model, **options)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    """One JSON object per line for scripts, aligned key: value lines for people."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


def cmd_bench_publish(args: argparse.Namespace) -> int:
    from agent.bench import run_publish_bench

    _print_result(run_publish_bench(args.messages, args.port), args.json)
    return 0


def cmd_registry_keygen(args: argparse.Namespace) -> int:
    from agent.registry.signing import generate_key, key_id, load_public_keys

    key, pub = generate_key(Path(args.output))
    print(f"private key: {key} (mode 0600: keep it secret, keep it off devices)")
    print(
        f"public key:  {pub} (key id {key_id(load_public_keys([pub])[0])}; "
        "list it in registry.trusted_keys)"
    )
    return 0


def cmd_registry_publish(args: argparse.Namespace) -> int:
    from agent.registry.manifest import parse_manifest
    from agent.registry.publish import publish, publish_int8

    options: dict[str, Any] = {
        "channel": None if args.no_channel else args.channel,
        "expires_days": args.expires_days or None,
        "min_agent_version": args.min_agent_version,
    }
    card = Path(args.card) if args.card else None
    if args.int8_from:
        from agent.compress.int8_default import Settings
        from agent.errors import CompressError

        if not args.calib:
            raise CompressError("--int8-from needs --calib VIDEO|DIR: the frames to calibrate on")
        settings = Settings(
            calib_frames=args.calib_frames,
            eval_frames=args.eval_frames,
            min_fidelity=args.min_fidelity,
        )
        manifest_path, measured = publish_int8(
            Path(args.model),
            Path(args.int8_from),
            Path(args.calib),
            Path(args.registry),
            name=args.name,
            version=args.version,
            key=Path(args.key),
            settings=settings,
            extra_eval=[Path(e) for e in args.eval],
            card=card,  # the float model's card
            **options,
        )
        print(f"{args.int8_from} -> {args.model}: {measured.choice.reason}")
    else:
        manifest_path = publish(
            Path(args.model),
            Path(args.registry),
            name=args.name,
            version=args.version,
            key=Path(args.key),
            card=card,
            **options,
        )
    manifest = parse_manifest(manifest_path.read_bytes())
    print(manifest_path)
    print(f"sha256 {manifest.artifact.sha256}")
    return 0


def cmd_registry_verify(args: argparse.Namespace) -> int:
    from agent.registry.publish import verify_registry

    problems = verify_registry(Path(args.registry), [Path(k) for k in args.key])
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{args.registry}: OK")
    return 0


def cmd_bench_update(args: argparse.Namespace) -> int:
    from agent.bench import run_update_bench

    result = run_update_bench(args.model, threads=args.threads, probation_s=args.probation)
    _print_result(result, args.json)
    return 0 if result["committed"] else 1


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: ``(default: X)`` unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if (
            "default" in text
            or not shown
            or action.default in (None, False, argparse.SUPPRESS)
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; ``add_subparsers`` makes its subcommands
    of this class too (argparse uses ``type(self)``), so every command gets the formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format",
        choices=["auto", "human", "journal", "json"],
        default="auto",
        help="auto: journal prefixes under systemd, else human-readable",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (no config: the demo defaults)")
    run.add_argument("-c", "--config", help="config file (YAML) (default: the demo defaults)")
    run.set_defaults(func=cmd_run)

    add_events_command(sub)

    det = sub.add_parser("detect", help="run a model on images")
    det.add_argument("model", help="model file (.onnx or .tflite)")
    det.add_argument("images", nargs="+", help="image files")
    det.add_argument("--card", help="model card (default: <model>.card.yaml)")
    det.add_argument("--json", action="store_true", help="one JSON object per image")
    det.add_argument("--draw", metavar="DIR", help="write annotated copies into DIR")
    det.add_argument(
        "--grid",
        action="store_true",
        help="--draw: with lines every 0.1 of the frame, to read zone and mask coordinates",
    )
    det.add_argument("--score", type=float, help="score threshold (default: the card's)")
    det.add_argument("--labels", nargs="*", help="labels to keep (default: all)")
    det.add_argument(
        "--threads", type=int, default=0, help="inference threads; 0: the runtime's choice"
    )
    add_runtime_options(det)
    det.set_defaults(func=cmd_detect)

    chk = sub.add_parser(
        "check-config",
        help="validate a config file and what it names: files, folders, source URI, labels",
    )
    chk.add_argument("config", help="config file (YAML); EDGE_AGENT_* overrides apply")
    chk.set_defaults(func=cmd_check_config)

    cfg = sub.add_parser("config", help="config helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    schema = cfg_sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_config_schema)

    model = sub.add_parser("model", help="inspect, compress, evaluate and split models")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    info = model_sub.add_parser("info", help="inputs, outputs, card and digest of a model")
    info.add_argument("model", help="model file (.onnx or .tflite)")
    info.add_argument("--card", help="model card (default: <model>.card.yaml, else guessed)")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(func=cmd_model_info)
    add_compress_commands(model_sub)
    add_distill_command(model_sub)
    add_split_commands(model_sub)

    bench = sub.add_parser("bench", help="measure runtime, pipeline and naive-loop speed")
    bench.add_argument("model", help="model file (.onnx or .tflite)")
    bench.add_argument("--source", help="video or image folder (default: the sample video)")
    bench.add_argument("--frames", type=int, default=50, help="frames to measure")
    bench.add_argument("--threads", type=int, default=2, help="inference threads")
    bench.add_argument("--card", help="model card (default: <model>.card.yaml)")
    bench.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="publish detections to this broker (default: no publishing)",
    )
    bench.add_argument(
        "--static",
        action="store_true",
        help="a still scene (the source's first frame) at 5 fps: CPU with the motion gate on "
        "and off",
    )
    bench.add_argument(
        "--cameras",
        type=int,
        metavar="N",
        help="N cameras replaying the source at its own rate into one pipeline on one model "
        "(no motion gate): per-camera fps, total inferences/s, CPU %% and peak RSS, next to one "
        "camera; each run in a fresh process",
    )
    bench.add_argument(
        "--no-baseline",
        action="store_true",
        help="--cameras: only the N-camera run, in this process (no 1-camera run to compare)",
    )
    bench.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="--cameras: each camera's fps cap (default: 0, the video's own rate)",
    )
    bench.add_argument(
        "--warmup", type=float, default=5.0, help="--cameras: seconds before measuring"
    )
    bench.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="--static: seconds of each run (on, off); --cameras: seconds measured",
    )
    add_runtime_options(bench, several=True)
    bench.add_argument("--json", action="store_true", help="one JSON object (per runtime)")
    bench.set_defaults(func=cmd_bench)

    bench_pub = sub.add_parser(
        "bench-publish", help="cost of the publish path and drain rate of an outbox backlog"
    )
    bench_pub.add_argument("--messages", type=int, default=10_000, help="backlog size")
    bench_pub.add_argument("--port", type=int, help="broker on 127.0.0.1 (default: start one)")
    bench_pub.add_argument("--json", action="store_true", help="one JSON object")
    bench_pub.set_defaults(func=cmd_bench_publish)

    bench_upd = sub.add_parser(
        "bench-update", help="time of a model update over loopback HTTP and the frame gap it causes"
    )
    bench_upd.add_argument("model", help="model file to publish and update to")
    bench_upd.add_argument("--threads", type=int, default=2, help="inference threads")
    bench_upd.add_argument("--probation", type=float, default=0.0, help="probation seconds")
    bench_upd.add_argument("--json", action="store_true", help="one JSON object")
    bench_upd.set_defaults(func=cmd_bench_update)

    reg = sub.add_parser("registry", help="publisher tools: keys, publishing, checking")
    reg_sub = reg.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    keygen = reg_sub.add_parser("keygen", help="make an Ed25519 signing key and its .pub")
    keygen.add_argument(
        "-o",
        "--output",
        "--out",
        required=True,
        metavar="KEY",
        help="private key path; the public key goes to KEY.pub",
    )
    keygen.set_defaults(func=cmd_registry_keygen)
    pub = reg_sub.add_parser("publish", help="sign and add a model version to a registry folder")
    pub.add_argument("model", help="model file to publish")
    pub.add_argument("--registry", required=True, metavar="DIR", help="registry folder")
    pub.add_argument("--name", required=True, help="model name (devices' registry.model)")
    pub.add_argument("--version", required=True, help="version to publish (e.g. 1.2.0)")
    pub.add_argument("--key", required=True, help="private signing key")
    channel = pub.add_mutually_exclusive_group()
    channel.add_argument("--channel", default="stable", help="point this channel at the version")
    channel.add_argument("--no-channel", action="store_true", help="move no channel")
    pub.add_argument("--card", help="model card (default: <model>.card.yaml)")
    pub.add_argument(
        "--expires-days", type=float, default=365, help="devices refuse it after (0: never)"
    )
    pub.add_argument(
        "--min-agent-version", help="oldest edge-agent that may install it (default: any)"
    )
    int8 = pub.add_argument_group(
        "INT8 variant",
        "quantize FP32 into MODEL, measure its fidelity against FP32 on frames it was not "
        "calibrated on, publish it with that fidelity in its card",
    )
    int8.add_argument("--int8-from", metavar="FP32", help="the float ONNX model to quantize")
    int8.add_argument(
        "--calib", metavar="DATA", help="video, image folder or image to calibrate on"
    )
    int8.add_argument("--calib-frames", type=int, default=8, help="calibration frames (default 8)")
    int8.add_argument(
        "--eval-frames",
        type=int,
        default=60,
        help="frames of DATA not calibrated on that judge fidelity (default 60)",
    )
    int8.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="DATA",
        help="more images or videos to judge fidelity on (repeatable)",
    )
    int8.add_argument(
        "--min-fidelity",
        type=float,
        default=0.9,
        help="refuse to publish below this mAP@0.5 against FP32 (default 0.9)",
    )
    pub.set_defaults(func=cmd_registry_publish)
    ver = reg_sub.add_parser("verify", help="check signatures, digests and the index")
    ver.add_argument("registry", metavar="DIR", help="registry folder")
    ver.add_argument(
        "--key", action="append", required=True, help="trusted public key (repeatable)"
    )
    ver.set_defaults(func=cmd_registry_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code is the one place errors become exit codes (DESIGN.md
    section 9): 0 done, an ``EdgeAgentError``'s ``exit_code`` (78 for what a restart cannot fix,
    else 1) as one line without a traceback, 1 and the traceback for anything unexpected."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.func(args))
    except EdgeAgentError as exc:
        log.debug("%s failed", args.command, exc_info=True)  # the traceback: only with -v
        print(f"edge-agent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "edge-agent: unexpected error (a bug: please report it with the traceback above)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
