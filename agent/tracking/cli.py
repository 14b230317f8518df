"""`edge-agent events`: the events the agent keeps on disk, newest first, read-only (it works
while the agent runs), as lines for people or JSON for scripts, and an event's snapshot."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agent.errors import EdgeAgentError
from agent.tracking.store import EventReader


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def add_events_command(sub: Any) -> argparse.ArgumentParser:
    """Add ``events`` to the ``edge-agent`` subcommands; returns its parser."""
    events = sub.add_parser("events", help="the events kept on disk, newest first")
    events.add_argument(
        "-c",
        "--config",
        help="config file (YAML): its store.path holds the events (default: "
        "the default store.path)",
    )
    events.add_argument("--camera", metavar="C", help="only this camera's events (default: all)")
    events.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N events"
    )
    events.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per event: the event and its snapshot_bytes",
    )
    events.add_argument(
        "--snapshot", metavar="ID", help="write the snapshot JPEG of event ID to -o FILE"
    )
    events.add_argument("-o", "--output", metavar="FILE.jpg", help="--snapshot: where to write")
    events.add_argument(
        "--replay",
        metavar="VIDEO",
        help="run the whole path (fps cap, motion gate, model, filters, tracker, zones) offline "
        "on a recording, as the config's camera (--camera) would, and print the events",
    )
    events.set_defaults(func=cmd_events)
    return events  # type: ignore[no-any-return]


def cmd_events(args: argparse.Namespace) -> int:
    from agent.config import load_config

    config = load_config(args.config)
    if args.replay is not None:
        return _replay(Path(args.replay), config, args.camera, as_json=args.json)
    reader = EventReader(config.store.path)
    try:
        if args.snapshot is not None:
            return _write_snapshot(reader, args.snapshot, args.output)
        if args.output is not None:
            raise EdgeAgentError("-o/--output writes a snapshot: give --snapshot ID with it")
        if not reader.exists:
            print(f"no events kept yet: {reader.path} does not exist")
            return 0
        entries = reader.entries(camera=args.camera, limit=args.limit)
    finally:
        reader.close()
    if not entries:
        whose = f" of camera {args.camera!r}" if args.camera is not None else ""
        print(f"no events{whose} kept in {reader.path}")
        return 0
    if args.json:
        for e in entries:
            print(json.dumps({**e.event, "snapshot_bytes": e.snapshot_bytes}))
        return 0
    rows = [["start", "camera", "label", "top", "duration", "zones", "id"]]
    rows += [_columns(e.event) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    return 0


def _columns(event: dict[str, Any]) -> list[str]:
    """start time, camera, label, top score, duration (or open), zones entered, id."""
    start = float(event["start"])
    end = event.get("end")
    zones = event.get("entered_zones") or []
    return [
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
        str(event.get("camera", "")),
        str(event.get("label", "")),
        f"{float(event.get('top_score', event.get('score', 0.0))):.2f}",
        "open" if end is None else f"{float(end) - start:.1f} s",
        ",".join(str(z) for z in zones) or "-",
        str(event["id"]),
    ]


def _write_snapshot(reader: EventReader, event_id: str, output: str | None) -> int:
    if output is None:
        raise EdgeAgentError("--snapshot ID needs -o FILE.jpg: where to write the snapshot")
    if reader.get(event_id) is None:
        raise EdgeAgentError(f"{reader.path}: no event {event_id!r} kept (edge-agent events)")
    jpeg = reader.snapshot(event_id)
    if jpeg is None:
        raise EdgeAgentError(f"{reader.path}: event {event_id!r} has no snapshot")
    out = Path(output)
    try:
        out.write_bytes(jpeg)
    except OSError as exc:
        raise EdgeAgentError(f"{out}: cannot write: {exc.strerror}") from exc
    print(f"{out}: snapshot of event {event_id} ({len(jpeg)} bytes)")
    return 0


def _replay(video: Path, config: Any, camera: str | None, *, as_json: bool) -> int:
    from collections import Counter

    from agent.tracking.replay import ReplaySummary, replay

    if not video.is_file():
        raise EdgeAgentError(f"{video}: no such video file")
    summary = ReplaySummary()
    new: Counter[str] = Counter()
    for message in replay(video, config, camera, summary):
        event = message.event
        if message.type == "new":
            new[str(event["label"])] += 1
        if as_json:
            print(json.dumps({"type": message.type, "ts": round(message.ts, 3), "event": event}))
            continue
        zones = ",".join(event.get("entered_zones") or []) or "-"
        span = f"{event['end'] - event['start']:.1f} s" if event.get("end") is not None else ""
        print(
            f"{message.ts:7.2f} s  {message.type:<6}  {event['label']:<10}  "
            f"{event['top_score']:.2f}  zones {zones:<12} {span:>7}  {event['id']}"
        )
    if not as_json:
        found = ", ".join(f"{n} {label}" for label, n in sorted(new.items())) or "no event"
        print(
            f"{found} in {summary.seconds:.1f} s of {video.name}: {summary.frames} frames at "
            f"the fps cap, {summary.inferences} model runs (the motion gate kept the rest)"
        )
    return 0
