"""The head side of split inference (``split.role: head``).

For each frame the pipeline hands ``SplitHead.run`` the preprocessed tensor. The head runs the
model's first layers up to the cut, sends the cut tensors (coded, zstd-compressed) to the tail
agent ``split.peer`` on ``{prefix}/{peer}/split/request`` and waits for the kept boxes on
``{prefix}/{device}/split/result``. When the tail is offline (its retained status), missed
``max_misses`` deadlines in a row, refuses the request (another model) or the broker is away, the
head runs the rest of the model itself: the frame is never lost, only slower. It tries the
tail again when the tail comes back online or after ``retry_s``.

The model is read and partitioned in the background after a start or a model update (frames run
whole here meanwhile). With ``split.at: auto`` the cut is planned from this device's per-layer
profile (measured there too, on the first real frame) and the link and peer speed measured on every
exchange, and re-planned when either moves by more than ``replan_margin``.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import SplitConfig
from agent.detection import Detection, Detector, DetectorSettings
from agent.detection.preprocess import Transform
from agent.detection.types import Candidates
from agent.errors import EdgeAgentError, SplitError
from agent.serving import RuntimeSpec
from agent.split.codec import decode, encode
from agent.split.link import LinkEstimate, TokenBucket
from agent.split.parts import Part, SplitModel
from agent.split.tail import REQUEST

if TYPE_CHECKING:
    from agent.publish import MqttPublisher
    from agent.split.profile import Profile

log = logging.getLogger("agent.split.head")

RESULT = "split/result"


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class SplitCounters:
    remote: int = 0
    local: int = 0
    late: int = 0
    refused: int = 0
    replans: int = 0


class SplitHead:
    """Runs frames split with a tail agent, or wholly here when the tail cannot help."""

    def __init__(
        self,
        config: SplitConfig,
        publisher: MqttPublisher,
        *,
        spec: RuntimeSpec | None = None,
    ) -> None:
        assert config.peer is not None
        self.config = config
        self.publisher = publisher
        prefix = publisher.config.topic_prefix
        self.request_topic = f"{prefix}/{config.peer}/{REQUEST}"
        self.result_topic = f"{publisher.topics.base}/{RESULT}"
        self.peer_status_topic = f"{prefix}/{config.peer}/status"
        # The model slot's runtime options: the parts run where the whole model runs.
        self.spec = spec or RuntimeSpec()
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.peer_state = "unknown"  # online / offline / stopped / unknown, from its status
        self._unusable_until = 0.0
        self._unusable_why: str | None = None
        self._misses = 0
        self.mode = "local"
        self.counters = SplitCounters()
        self.link = LinkEstimate(config.rtt_ms)
        self.shaper = TokenBucket(config.link_mbps) if config.link_mbps else None
        self._model: SplitModel | None = None
        self._model_path: str | None = None
        self._profile: Profile | None = None
        self.prepared = threading.Event()  # the current model's preparation has ended
        self.cut: str | None = None if config.at == "auto" else config.at
        self._planned: tuple[float, float] | None = None  # bandwidth, speedup of the plan
        self._probe_cut: str | None = None  # the best cut that uses the peer
        self._next_probe = 0.0

    # --- MQTT (paho's thread: record and return) ---

    def attach(self) -> None:
        self.publisher.route(self.result_topic, self._on_result, qos=0)
        self.publisher.route(self.peer_status_topic, self._on_peer_status, qos=1)

    def _on_result(self, topic: str, payload: bytes) -> None:
        try:
            meta, tensors = decode(payload)
        except SplitError as exc:
            log.warning("malformed split result: %s", exc)
            return
        with self._lock:
            pending = self._pending.get(str(meta.get("id")))
        if pending is not None:  # else: late, its frame already ran locally
            pending.meta, pending.tensors = meta, tensors
            pending.done.set()

    def _on_peer_status(self, topic: str, payload: bytes) -> None:
        try:
            state = str(json.loads(payload)["state"])
        except (ValueError, KeyError, TypeError):
            state = payload.decode("utf-8", "replace").strip() or "unknown"
        if state != self.peer_state:
            log.info("split peer %s is %s", self.config.peer, state)
        if state == "online" and self.peer_state != "online":
            self._unusable_until, self._unusable_why, self._misses = 0.0, None, 0
        self.peer_state = state

    # --- per frame (the pipeline's infer thread) ---

    def peer_usable(self) -> bool:
        return (
            self.peer_state == "online"
            and self.publisher.connected.is_set()
            and time.monotonic() >= self._unusable_until
        )

    def _split_model(self, detector: Detector, tensor: np.ndarray) -> SplitModel | None:
        """The current model ready to split, or None while it is being prepared (frames then
        run whole here)."""
        path = str(detector.runtime.path)
        if path != self._model_path:  # first frame, or a model update swapped the detector
            self._model_path, self._model, self._profile = path, None, None
            self.cut = None if self.config.at == "auto" else self.config.at
            self.prepared.clear()
            threading.Thread(
                target=self._prepare, args=(path, tensor.copy()), name="split-prepare", daemon=True
            ).start()
        return self._model

    def run(
        self,
        detector: Detector,
        tensor: np.ndarray,
        transform: Transform,
        settings: DetectorSettings,
    ) -> tuple[list[Detection], float, float]:
        """Detections of one frame and the milliseconds of inference (head, link and tail) and
        of decoding here."""
        t0 = time.perf_counter()
        model = self._split_model(detector, tensor)
        cut = self._probe() if model is not None else self.cut
        if (
            model is None
            or cut is None
            or model.cuts[cut].kind == "local"
            or not self.peer_usable()
        ):
            return self._whole(detector, tensor, transform, settings, t0)
        feeds = {model.input_names[0]: tensor}
        tail: Part | None = None
        if model.cuts[cut].kind == "remote":  # the input itself is sent
            cut_tensors = feeds
        else:
            head, tail = model.parts(cut)
            cut_tensors = head.run(feeds)
        kept = self._exchange(model, cut, cut_tensors, detector, settings)
        if kept is None:  # the tail cannot help with this frame: finish it here
            if tail is None:
                return self._whole(detector, tensor, transform, settings, t0)
            rest = tail.run(cut_tensors)
            outputs = [rest[n] for n in model.output_names]
            t1 = time.perf_counter()
            detections = detector.postprocess(outputs, transform, settings)
            self.counters.local += 1
            self.mode = "local"
            return detections, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        t1 = time.perf_counter()
        detections = detector.to_detections(kept, transform)
        self.counters.remote += 1
        self.mode = "remote"
        return detections, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def _probe(self) -> str | None:
        """The planned cut; but while the plan keeps everything here, one frame every
        ``probe_s`` goes to the peer anyway, so a link or peer that got better is noticed."""
        assert self._model is not None
        cut = self.cut
        if (
            cut is not None
            and self._probe_cut is not None
            and self._model.cuts[cut].kind == "local"
            and self.peer_usable()
            and time.monotonic() >= self._next_probe
        ):
            self._next_probe = time.monotonic() + self.config.probe_s
            return self._probe_cut
        return cut

    def _whole(
        self,
        detector: Detector,
        tensor: np.ndarray,
        transform: Transform,
        settings: DetectorSettings,
        t0: float,
    ) -> tuple[list[Detection], float, float]:
        """The whole model here; inference time counts from ``t0`` (any head run before)."""
        detections, _, decode_ms = detector.run(tensor, transform, settings)
        self.counters.local += 1
        self.mode = "local"
        return detections, (time.perf_counter() - t0) * 1e3 - decode_ms, decode_ms

    def _exchange(
        self,
        model: SplitModel,
        cut: str,
        tensors: dict[str, np.ndarray],
        detector: Detector,
        settings: DetectorSettings,
    ) -> Candidates | None:
        request_id = f"{self.publisher.topics.device_id}:{next(self._ids)}"
        meta = {
            "id": request_id,
            "reply_to": self.result_topic,
            "cut": cut,
            "model": {
                "name": detector.card.name,
                "version": detector.card.version,
                "sha256": model.sha256,
            },
            "settings": {
                "score": settings.score_threshold,
                "iou": settings.iou_threshold,
                "labels": list(settings.labels),
            },
        }
        payload = encode(meta, tensors, method=self.config.codec)
        pending = _Pending()
        with self._lock:
            self._pending[request_id] = pending
        try:
            sent = time.perf_counter()
            if self.shaper is not None:
                self.shaper.consume(len(payload))
            self.publisher.publish(self.request_topic, payload, qos=0)
            deadline = self.config.deadline_ms / 1e3 - (time.perf_counter() - sent)
            arrived = pending.done.wait(max(deadline, 0.0))
            round_trip_ms = (time.perf_counter() - sent) * 1e3
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if not arrived:
            self._missed(f"no result within {self.config.deadline_ms:.0f} ms")
            self.counters.late += 1
            return None
        if not pending.meta.get("ok"):
            self.counters.refused += 1
            self._unusable(f"the tail refused: {pending.meta.get('error')}")
            return None
        self._misses = 0
        tail_ms = float(pending.meta.get("tail_ms", 0.0))
        self.link.record(len(payload), round_trip_ms, tail_ms, self._local_tail_ms(cut))
        self._maybe_replan()
        t = pending.tensors
        try:
            return Candidates(
                boxes=np.asarray(t["boxes"], np.float32).reshape(-1, 4),
                scores=np.asarray(t["scores"], np.float32).reshape(-1),
                class_ids=np.asarray(t["class_ids"]).astype(np.int64).reshape(-1),
            )
        except KeyError as exc:
            self._unusable(f"the tail's result lacks {exc}")
            return None

    def _missed(self, why: str) -> None:
        self._misses += 1
        if self._misses >= self.config.max_misses:
            self._unusable(f"{why}, {self._misses} times in a row")

    def _unusable(self, why: str) -> None:
        self._unusable_until = time.monotonic() + self.config.retry_s
        self._misses = 0
        if why != self._unusable_why:
            log.warning(
                "split peer %s: %s; running locally, retrying in %.0f s",
                self.config.peer,
                why,
                self.config.retry_s,
            )
        self._unusable_why = why

    # --- planning ---

    def _prepare(self, path: str, sample: np.ndarray) -> None:
        """Off the frame path (seconds on a small device): read and partition the model and,
        with ``at: auto``, profile every cut on a real frame (coded sizes depend on content)
        and plan."""
        try:
            model = SplitModel(
                path, threads=self.spec.threads, providers=self.spec.provider_list, spec=self.spec
            )
            if self.cut is not None:
                model.cut(self.cut)
            profile = None
            if self.config.at == "auto":
                from agent.split.profile import profile_model

                profile = profile_model(
                    model.path,
                    runs=2,
                    threads=self.spec.threads,
                    methods=(self.config.codec,),
                    sample=sample,
                    max_tensors=self.config.max_tensors,
                    graph=model.graph,
                )
        except Exception as exc:  # this thread must not die unseen: frames then run whole here
            log.error(
                "split inference off for %s, running it whole here: %s",
                path,
                exc,
                exc_info=not isinstance(exc, EdgeAgentError),  # a bug: its traceback
            )
            self.prepared.set()
            return
        if path != self._model_path:
            return  # the model was swapped meanwhile
        self._profile = profile
        if profile is not None:
            self._replan(self.config.bandwidth_mbps, self.config.peer_speedup, first=True)
        self._model = model
        self.prepared.set()

    def _local_tail_ms(self, cut: str) -> float | None:
        if self._profile is None:
            return None
        try:
            return self._profile.tail_ms(cut)
        except SplitError:  # a fixed cut the profile left out (max_tensors)
            return None

    def _replan(self, bandwidth: float, speedup: float, first: bool = False) -> None:
        from agent.split.plan import best, keep_or_switch, predict

        assert self._profile is not None
        rows = predict(
            self._profile,
            bandwidth,
            self.link.rtt_ms,
            speedup,
            self.config.codec,
            max_tensors=self.config.max_tensors,
        )
        if first or self.cut is None:
            pick = best(rows)
        else:  # a cut close enough to the best stays: noise must not make the cut flap
            pick = keep_or_switch(rows, self.cut, self.config.replan_margin)
        remote = [r for r in rows if r.kind != "local"]
        self._probe_cut = best(remote).cut if remote else None
        self._planned = (bandwidth, speedup)
        if pick.cut != self.cut:
            log.info(
                "split plan: cut %s (predicted %.1f ms at %.1f Mbit/s, peer %.2fx)%s",
                pick.cut,
                pick.total_ms,
                bandwidth,
                speedup,
                "" if first else f", was {self.cut}",
            )
            if not first:
                self.counters.replans += 1
        self.cut = pick.cut

    def _maybe_replan(self) -> None:
        if self.config.at != "auto" or self._profile is None or self._planned is None:
            return
        bw, sp = self.link.bandwidth.value, self.link.speedup.value
        if bw is None or self.link.bandwidth.samples < 3:
            return
        sp = sp if sp is not None else self._planned[1]
        from agent.split.plan import should_replan

        if should_replan(self._planned[0], self._planned[1], bw, sp, self.config.replan_margin):
            self._replan(bw, sp)

    def metrics(self) -> dict[str, Any]:
        c = self.counters
        return {
            "role": "head",
            "peer": self.config.peer,
            "peer_state": self.peer_state,
            "peer_usable": self.peer_usable(),
            "mode": self.mode,
            "cut": self.cut,
            "remote_frames": c.remote,
            "local_frames": c.local,
            "late_frames": c.late,
            "refused_frames": c.refused,
            "replans": c.replans,
            "bandwidth_mbps": _round(self.link.bandwidth.value),
            "peer_speedup": _round(self.link.speedup.value),
            "last_problem": self._unusable_why,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
