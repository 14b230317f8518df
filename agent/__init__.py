"""edge-agent: on-device detection agent (camera -> TFLite/ONNX detector -> MQTT)."""

from __future__ import annotations

import os
import sys

# onnxruntime looks up a telemetry host on Linux unless this is set before it is imported
# (DESIGN.md section 8): a device on a customer's network talks only to what it was told to.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# `import openvino` imports its model converter, which sends an "import" event to Google
# Analytics through the openvino-telemetry package (and writes a client id under ~/intel) unless
# an opt-out file in the user's home says no; it has no environment switch. With the package made
# unimportable, OpenVINO falls back to its own no-op stub (openvino/tools/ovc/telemetry_stub.py).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
