"""VST-P style perception questions generated from the sim's exact ground truth.

`SKILLS` maps a skill name to `(scenario, generator)`; a generator is
`(ctx: SceneContext, rng) -> GeneratedSample | None`, None when the question would be ill-posed in
this scene (ties, occluded marks, objects out of view), so the caller tries another scene.
"""

from .context import Balancer, GeneratedSample, SceneContext
from .multi_image import SKILLS as _MULTI
from .single_image import SKILLS as _SINGLE
from .video import SKILLS as _VIDEO

SKILLS = {
    **{name: ("single_image", fn) for name, fn in _SINGLE.items()},
    **{name: ("multi_image", fn) for name, fn in _MULTI.items()},
    **{name: ("video", fn) for name, fn in _VIDEO.items()},
}

# Per-scene caps below `max_per_scene` for skills with few distinct questions per scene.
PER_SCENE_LIMIT: dict[str, int] = {}

__all__ = ["PER_SCENE_LIMIT", "SKILLS", "Balancer", "GeneratedSample", "SceneContext"]
