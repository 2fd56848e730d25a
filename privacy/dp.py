"""Differential privacy of each data owner's training (DP-SGD comes with issue #3).

``dp=off`` trains without DP: the update a backend protects is the owner's exact delta.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoDPConfig:
    name: str = "off"


DP_MODES = {"off": NoDPConfig}
