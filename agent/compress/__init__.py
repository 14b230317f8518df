"""Model toolchain: quantize, prune, distill and evaluate models for the device.

Needs the ``compress`` extra (onnx, pycocotools, zstandard); distillation also the ``distill``
extra (torch). Nothing here is imported by the daemon.
"""
