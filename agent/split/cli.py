"""`edge-agent model` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def add_split_commands(model_sub: Any) -> None:
    """Add the subcommands to `edge-agent model`."""
    del model_sub
    _ = argparse
