"""Cost per frame of the motion-gate candidates on the frames of a video (default bikes.mp4):
the running-average difference the agent uses (agent.motion) and OpenCV's MOG2 and KNN
background subtractors on the same small grey copy. Usage: scripts/motion_cost.py [VIDEO]"""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np

from agent.config import DEFAULT_VIDEO
from agent.motion import WIDTH, MotionGate, MotionSettings


def frames(path: str) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def small(f: np.ndarray) -> np.ndarray:
    h, w = f.shape[:2]
    g = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, (WIDTH, round(h * WIDTH / w)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(g, (3, 3), 0)


def per_frame_ms(run, images: list[np.ndarray], repeat: int = 4) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for i, im in enumerate(images):
            run(im, i / 25)
    return (time.perf_counter() - t0) * 1e3 / (repeat * len(images))


def main() -> None:
    cv2.setNumThreads(1)
    images = frames(sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_VIDEO))
    gate = MotionGate(MotionSettings())
    mog2 = cv2.createBackgroundSubtractorMOG2(history=125, varThreshold=16, detectShadows=False)
    knn = cv2.createBackgroundSubtractorKNN(history=125, dist2Threshold=625, detectShadows=False)
    h, w = images[0].shape[:2]
    print(f"{len(images)} frames {w}x{h}, check on a {WIDTH} px wide grey copy, one thread")
    print(f"running average (agent.motion): {per_frame_ms(gate.check, images):.3f} ms/frame")
    print(f"MOG2: {per_frame_ms(lambda im, t: mog2.apply(small(im)), images):.3f} ms/frame")
    print(f"KNN: {per_frame_ms(lambda im, t: knn.apply(small(im)), images):.3f} ms/frame")
    print(f"grey copy alone: {per_frame_ms(lambda im, t: small(im), images):.3f} ms/frame")


if __name__ == "__main__":
    main()
