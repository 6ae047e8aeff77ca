"""Spatial relations as the front camera (the viewer) sees them.

The front camera's image-right axis is world +y and it looks back at the robot along −x, so
"left of" is −y, "right of" is +y, "in front of" (nearer the viewer) is +x and "behind" is −x.
A relation holds only with a clear margin, so every instruction has one unambiguous answer.
"""

from __future__ import annotations

import numpy as np

MARGIN = 0.04  # metres: closer calls than this are never asked about

DIRECTIONS = {  # unit vector on the table for each direction word
    "left of": np.array([0.0, -1.0]),
    "right of": np.array([0.0, 1.0]),
    "in front of": np.array([1.0, 0.0]),
    "behind": np.array([-1.0, 0.0]),
}


def holds(relation: str, a_xy, b_xy, margin: float = MARGIN) -> bool:
    """a is `relation` b: displaced along the direction by more than `margin`, and more along it than across."""
    d = np.asarray(a_xy, dtype=float) - np.asarray(b_xy, dtype=float)
    u = DIRECTIONS[relation]
    along = float(d @ u)
    across = abs(float(d @ np.array([-u[1], u[0]])))
    return along > margin and along > across


def distance(a_xy, b_xy) -> float:
    return float(np.linalg.norm(np.asarray(a_xy, dtype=float) - np.asarray(b_xy, dtype=float)))
