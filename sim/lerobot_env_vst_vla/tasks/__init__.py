"""Task families: each samples spatial instructions with one correct answer and checks success from state."""

from .base import Episode, SceneState, TaskFamily
from .pick_extreme import PickExtreme
from .pick_relation import PickByRelation
from .place_relative import PlaceRelative
from .put_in_container import PutInContainer
from .stack import StackByRelation

FAMILIES: dict[str, type[TaskFamily]] = {
    cls.name: cls for cls in (PickByRelation, PickExtreme, PlaceRelative, PutInContainer, StackByRelation)
}

__all__ = ["FAMILIES", "Episode", "SceneState", "TaskFamily"]
