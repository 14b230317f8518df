"""edge-agent: on-device detection agent (camera -> TFLite/ONNX detector -> MQTT)."""

from __future__ import annotations

import os

# onnxruntime looks up a telemetry host on Linux unless this is set before it is imported
# (DESIGN.md section 8): a device on a customer's network talks only to what it was told to.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
