"""Frames of a video (default bikes.mp4) that the motion gate (default settings) keeps from the
model although the ungated person model finds a person there with score >= 0.5; at the
video's own rate and at a 5 fps cap (every 5th frame of a 25 fps video).
Usage: scripts/motion_misses.py [VIDEO] [MODEL]"""

from __future__ import annotations

import sys

import cv2

from agent.config import ASSETS_DIR, DEFAULT_VIDEO
from agent.detection import Detector, DetectorSettings
from agent.motion import MotionGate, MotionSettings


def main() -> None:
    video = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_VIDEO)
    model = sys.argv[2] if len(sys.argv) > 2 else str(ASSETS_DIR / "person-yolov8s.onnx")
    cap = cv2.VideoCapture(video)
    rate = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    detector = Detector.load(model, threads=2)
    settings = DetectorSettings(0.5, 0.45, ("person",))
    with_person = set()
    for i, frame in enumerate(frames):
        tensor, transform = detector.preprocess(frame)
        detections, _, _ = detector.run(tensor, transform, settings)
        if detections:
            with_person.add(i)
    detector.close()
    motion = MotionSettings()
    for step in (1, round(rate / 5)):
        gate, last, seen, skipped = MotionGate(motion), -float("inf"), 0, []
        for i in range(0, len(frames), step):
            t = i / rate
            seen += 1
            if not gate.check(frames[i], t).moving and t - last < motion.recheck_s:
                skipped.append(i)
            else:
                last = t
        missed = sorted(set(skipped) & with_person)
        print(
            f"every {step}. frame: {seen} frames, {len(skipped)} skipped, "
            f"{len(with_person & set(range(0, len(frames), step)))} with a person >= 0.5, "
            f"skipped among them: {len(missed)} {missed}"
        )


if __name__ == "__main__":
    main()
