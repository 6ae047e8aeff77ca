"""Video skills (VST-P): appearance order, counting across frames, spatiotemporal change and route order.

Clips (see `sim.py` / `episodes.py`): `tour` — the gripper hovers over 2-3 objects in turn, with
front- and wrist-camera frames at every stop; `pick_place` — one object is carried to another spot,
front-camera frames. A sample shows 4-8 frames in time order.
"""

from __future__ import annotations

import itertools

import numpy as np

from .common import fmt_xyz, mc_sample, multiple_choice, number_sample
from .context import HIDDEN, MIN_PIXEL_AREA, PARTIAL, VISIBLE, Img, SceneContext, View
from .single_image import _category

SCENARIO = "video"
FRAMES = "These are frames of a video, in time order."
WRIST_FRAMES = "These are frames of a video from the robot's wrist camera, in time order."
MIN_MOVE = 0.05  # m: smaller displacements are not asked about


def _frames(views: list[View]) -> list[Img]:
    return [Img(v.rgb, v.key) for v in views]


def _order_options(ctx, skill, rng, names: list[str]) -> tuple[dict, str]:
    """Options: the true sequence and up to three other orders of the same objects."""
    seq = lambda p: ", then ".join(f"the {names[i]}" for i in p)  # noqa: E731
    truth = tuple(range(len(names)))
    wrong = [p for p in itertools.permutations(truth) if p != truth]
    picks = rng.choice(len(wrong), min(3, len(wrong)), replace=False)
    return multiple_choice(ctx, skill, rng, seq(truth), [seq(wrong[i]) for i in picks])


def appearance_order(ctx: SceneContext, rng: np.random.Generator):
    """In which order do objects first appear in the wrist camera's frames?"""
    skill = "appearance_order"
    clip = ctx.clip("tour")
    if clip is None:
        return None
    frames = clip.wrist
    min_px = MIN_PIXEL_AREA * frames[0].camera.width * frames[0].camera.height
    first = {}
    for k in range(len(ctx.objects)):
        counts = [int(f.pixel_counts[k]) for f in frames]
        shown = [i for i, c in enumerate(counts) if c >= min_px]
        # appears when enough of it shows (even cut by the image border); never glimpsed before that
        if shown and ctx.names[k] and all(c == 0 for c in counts[: shown[0]]):
            first[k] = shown[0]
    by_frame = {}
    for k in rng.permutation(list(first)).tolist():
        by_frame.setdefault(first[k], k)  # one object per frame: distinct first appearances
    if len(by_frame) < 2:
        return None
    chosen = sorted(by_frame) if len(by_frame) <= 3 else sorted(rng.choice(sorted(by_frame), 3, replace=False).tolist())
    ks = [by_frame[i] for i in chosen]
    names = [ctx.names[k] for k in ks]
    options, letter = _order_options(ctx, skill, rng, names)
    listed = ", ".join(f"the {ctx.names[k]}" for k in rng.permutation(ks))
    question = f"{WRIST_FRAMES} In which order do these objects first appear: {listed}?"
    steps = [f"The {ctx.names[k]} first appears in frame {first[k] + 1}." for k in ks]
    facts = {"clip": "tour", "camera": "wrist", "first_frame": {str(k): first[k] for k in ks}, "order": ks}
    return mc_sample(ctx, skill, SCENARIO, _frames(frames), [f.camera for f in frames], question, options, letter,
                     facts, steps, ks)


def video_counting(ctx: SceneContext, rng: np.random.Generator):
    """How many distinct objects of a category appear over the wrist camera's frames?"""
    skill = "video_counting"
    clip = ctx.clip("tour")
    if clip is None:
        return None
    frames = clip.wrist
    what, matches = _category(ctx, rng, list(range(len(ctx.objects))))
    best = {}
    for k in matches:
        states = {f.states[k] for f in frames}
        best[k] = VISIBLE if VISIBLE in states else PARTIAL if PARTIAL in states else HIDDEN
    if PARTIAL in best.values():
        return None  # only glimpsed: whether it "appears" is unclear
    seen = [k for k in matches if best[k] == VISIBLE]
    question = f"{WRIST_FRAMES} How many distinct {what} appear in the video? Answer with a number."
    steps = [f"Distinct {what} seen: " + (", ".join(ctx.objects[k].label for k in seen) or "none") + "."]
    facts = {"clip": "tour", "camera": "wrist", "category": what, "objects": seen}
    return number_sample(ctx, skill, SCENARIO, _frames(frames), [f.camera for f in frames], question, len(seen),
                         None, 0, facts, steps, seen)


MOVES = {"left": "to the left", "right": "to the right", "toward": "toward the camera", "away": "away from the camera"}


def spatiotemporal(ctx: SceneContext, rng: np.random.Generator):
    """Which object moved, in which direction (as the camera sees it), or how far (cm)."""
    skill = "spatiotemporal"
    clip = ctx.clip("pick_place")
    if clip is None:
        return None
    frames = clip.front
    k = clip.info["moved"]
    f0, f1 = frames[0], frames[-1]
    if f0.states[k] != VISIBLE or f1.states[k] != VISIBLE or not ctx.names[k]:
        return None
    start, end = f0.objects[k].position, f1.objects[k].position
    disp = (end - start)[:2]
    dist = float(np.linalg.norm(disp))
    if dist < MIN_MOVE:
        return None
    images, cams = _frames(frames), [f.camera for f in frames]
    facts = {"clip": "pick_place", "moved": k, "start": np.round(start, 4).tolist(), "end": np.round(end, 4).tolist()}
    steps = [f"The {ctx.names[k]} starts at {fmt_xyz(start)} and ends at {fmt_xyz(end)} m (table frame)."]
    variant = ("which", "direction", "distance")[rng.integers(3)]
    facts["variant"] = variant
    if variant == "which":
        still = [j for j in range(len(ctx.objects)) if j != k and ctx.names[j]
                 and f0.states[j] == VISIBLE and f1.states[j] == VISIBLE
                 and np.linalg.norm(f1.objects[j].position - f0.objects[j].position) < 0.005]
        if not still:
            return None
        others = [f"the {ctx.names[j]}" for j in rng.permutation(still)[:3]]
        options, letter = multiple_choice(ctx, skill, rng, f"the {ctx.names[k]}", others)
        question = f"{FRAMES} Which object was moved to a different place?"
        steps.append(f"The other objects stay where they are, so the {ctx.names[k]} was moved.")
        return mc_sample(ctx, skill, SCENARIO, images, cams, question, options, letter, facts, steps, [k], f0.objects)
    if variant == "direction":
        fwd, right = f0.camera.horizontal_frame()
        along_r, along_f = float(disp @ right[:2]), float(disp @ fwd[:2])
        major, minor = sorted([abs(along_r), abs(along_f)], reverse=True)
        if major < 1.5 * minor:
            return None
        move = ("right" if along_r > 0 else "left") if abs(along_r) > abs(along_f) else \
            ("away" if along_f > 0 else "toward")
        options, letter = multiple_choice(ctx, skill, rng, MOVES[move], [v for m, v in MOVES.items() if m != move])
        question = f"{FRAMES} In which direction, as seen from this camera, was the {ctx.names[k]} moved?"
        steps.append(f"Seen from the camera it moved {along_r:+.3f} m to the right and {along_f:+.3f} m away.")
        facts["direction"] = move
        return mc_sample(ctx, skill, SCENARIO, images, cams, question, options, letter, facts, steps, [k], f0.objects)
    question = f"{FRAMES} How far was the {ctx.names[k]} moved, in centimeters? Answer with a number and a unit."
    steps.append(f"It moved {100 * dist:.1f} cm across the table.")
    return number_sample(ctx, skill, SCENARIO, images, cams, question, 100 * dist, "cm", 1, facts, steps, [k],
                         f0.objects)


def route_order(ctx: SceneContext, rng: np.random.Generator):
    """In which order did the gripper visit (hover over) the objects; or which did it visit first / last?"""
    skill = "route_order"
    clip = ctx.clip("tour")
    if clip is None:
        return None
    frames = clip.front
    visits = clip.info["visits"]
    if len(visits) < 2 or any(not ctx.names[k] or frames[0].states[k] != VISIBLE for k in visits):
        return None
    names = [ctx.names[k] for k in visits]
    steps = [f"In frame {s + 1} the gripper is above the {ctx.names[k]}."
             for s, k in zip(clip.info["stops"], visits, strict=True)]
    facts = {"clip": "tour", "camera": "front", "visits": visits, "stops": clip.info["stops"]}
    lead = f"{FRAMES} The robot's gripper moves above several objects, one after another."
    variant = ("order", "first", "last")[rng.integers(3)] if len(visits) > 2 else "order"
    facts["variant"] = variant
    if variant == "order":
        options, letter = _order_options(ctx, skill, rng, names)
        question = f"{lead} In which order does it visit them?"
    else:
        k = visits[0] if variant == "first" else visits[-1]
        others = [f"the {ctx.names[j]}" for j in visits if j != k]
        unvisited = [j for j in range(len(ctx.objects)) if j not in visits and ctx.names[j]]
        if unvisited:  # an object it never went to is a fair distractor too
            others.append(f"the {ctx.names[int(rng.choice(unvisited))]}")
        options, letter = multiple_choice(ctx, skill, rng, f"the {ctx.names[k]}", others)
        question = f"{lead} Which object does it visit {variant}?"
        steps.append(f"So it visits the {ctx.names[k]} {variant}.")
    return mc_sample(ctx, skill, SCENARIO, _frames(frames), [f.camera for f in frames], question, options, letter,
                     facts, steps, visits)


SKILLS = {
    "appearance_order": appearance_order,
    "video_counting": video_counting,
    "spatiotemporal": spatiotemporal,
    "route_order": route_order,
}
