"""Multi-image skills (VST-P): correspondence, object-object direction from a chosen camera,
camera-camera direction (clock face), camera motion and multi-view 3D detection.

Views: `front` (fixed camera facing the robot), `wrist` and `wrist2` (the wrist camera at two arm
poses). Directions are read on the table plane as a person at the camera, facing where it looks,
would say them (`Camera.horizontal_frame`).
"""

from __future__ import annotations

import math

import numpy as np

from vst_vla.spatial.boxes import BOX_FORMAT_PROMPT, camera_prompt
from vst_vla.spatial.draw import draw_points

from .common import boxes_sample, fmt_xyz, mc_sample, multiple_choice, round_box
from .context import LETTERS, VISIBLE, Camera, Img, SceneContext, clock_hour
from .single_image import _category, _detectable, _relation

SCENARIO = "multi_image"
TWO_VIEWS = "Image 1 and image 2 show the same table from two different cameras."
DIRECTION_OPTIONS = ("to the left of", "to the right of", "in front of", "behind")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "in front of": "behind", "behind": "in front of"}


def correspondence(ctx: SceneContext, rng: np.random.Generator):
    """A point marked in image 1; which of four labelled points in image 2 shows the same 3D point?"""
    skill = "correspondence"
    first, second = ("front", "wrist") if rng.random() < 0.5 else ("wrist", "front")
    va, vb = ctx.view(first), ctx.view(second)
    common = [k for k in va.visible() if vb.states[k] == VISIBLE]
    if not common:
        return None
    k = int(rng.choice(common))
    ys, xs = np.nonzero(va.mask(k, erode=2))
    if len(xs) == 0:
        return None
    n = rng.integers(len(xs))
    pa = (int(xs[n]), int(ys[n]))
    point = va.camera.backproject(pa, float(va.depth[pa[1], pa[0]]))
    uv = vb.camera.project(point)[0]
    w, h = vb.camera.width, vb.camera.height
    border = 0.05 * w
    if not np.all(np.isfinite(uv)) or not (border <= uv[0] < w - border and border <= uv[1] < h - border):
        return None
    pb = (int(uv[0]), int(uv[1]))
    # the point must show in image 2: on the same object, at the depth it has there (not occluded)
    if vb.seg[pb[1], pb[0]] != k or abs(float(vb.depth[pb[1], pb[0]]) - vb.camera.to_camera(point)[0, 2]) > 0.01:
        return None
    others = _spread_pixels(vb, rng, [pb], 3, min_dist=0.12 * w, border=border)
    if others is None:
        return None
    slot = ctx.balance.slot(skill, 4)
    letters = [LETTERS[slot]] + [c for c in LETTERS[:4] if c != LETTERS[slot]]
    pixels = [pb, *others]
    image_a = draw_points(va.rgb, [(pa[0] + 0.5, pa[1] + 0.5)], ["P"], style=ctx.marks)
    image_b = draw_points(vb.rgb, [(u + 0.5, v + 0.5) for u, v in pixels], letters, style=ctx.marks)
    options = {c: f"point {c}" for c in LETTERS[:4]}
    question = (f"{TWO_VIEWS} Point P is marked in image 1. Which of the points A, B, C and D marked in image 2 "
                "shows the same place in the scene as point P?")
    steps = [f"Point P lies on the {ctx.objects[k].label} at {fmt_xyz(point)} m (table frame).",
             f"Seen from the second camera that place is at pixel ({pb[0]}, {pb[1]}), where point {letters[0]} is."]
    facts = {"views": [first, second], "object": k, "world": np.round(point, 4).tolist(), "pixel_1": list(pa),
             "points_2": {c: list(p) for c, p in zip(letters, pixels, strict=True)}}
    return mc_sample(ctx, skill, SCENARIO, [Img(image_a), Img(image_b)], [va.camera, vb.camera], question, options,
                     LETTERS[slot], facts, steps, [k])


def object_direction(ctx: SceneContext, rng: np.random.Generator):
    """Where is object X relative to object Y from the viewpoint of the camera of image 1 or 2?"""
    skill = "object_direction"
    names = ("front", "wrist") if rng.random() < 0.5 else ("wrist", "front")
    which = int(rng.integers(2))
    view = ctx.view(names[which])
    frame = view.camera.horizontal_frame()
    vis = [k for k in view.visible() if ctx.names[k]]
    if frame is None or len(vis) < 2:
        return None
    a, b = (int(x) for x in rng.choice(vis, 2, replace=False))
    rel = _relation(ctx.objects[a].position - ctx.objects[b].position, *frame)
    if rel is None:
        return None
    axis = "lr" if rel in ("to the left of", "to the right of") else "fb"
    want = ctx.balance.pick((skill, axis), ("to the left of", "to the right of") if axis == "lr" else ("in front of", "behind"))
    if rel != want:  # swapping the pair flips the relation: each side is the answer equally often
        a, b, rel = b, a, OPPOSITE[rel]
    options, letter = multiple_choice(ctx, skill, rng, f"{rel} the {ctx.names[b]}",
                                      [f"{r} the {ctx.names[b]}" for r in DIRECTION_OPTIONS if r != rel])
    question = (f"{TWO_VIEWS} From the viewpoint of the camera that took image {which + 1}, where is the "
                f"{ctx.names[a]} relative to the {ctx.names[b]}? (In front of means closer to that camera.)")
    fwd, right = frame
    d = ctx.objects[a].position - ctx.objects[b].position
    steps = [f"Seen from camera {which + 1}, the {ctx.names[a]} is {float(d @ right):+.3f} m to the right and "
             f"{float(d @ fwd):+.3f} m farther away than the {ctx.names[b]}.", f"So it is {rel} the {ctx.names[b]}."]
    images = [ctx.image(ctx.view(n)) for n in names]
    facts = {"views": list(names), "viewpoint": which, "objects": [a, b], "relation": rel}
    return mc_sample(ctx, skill, SCENARIO, images, [ctx.view(n).camera for n in names], question, options, letter,
                     facts, steps, [a, b])


def camera_camera(ctx: SceneContext, rng: np.random.Generator):
    """Clock direction of camera 2 as seen from camera 1 (12 o'clock: where camera 1 faces)."""
    skill = "camera_camera"
    views = [ctx.front, ctx.view("wrist"), ctx.view("wrist2")]
    tour = ctx.clip("tour")
    if tour is not None:  # more wrist poses for free once the tour clip is rendered
        views += tour.wrist[1:]
    i, j = (int(x) for x in rng.choice(len(views), 2, replace=False))
    c1, c2 = views[i].camera, views[j].camera
    frame = c1.horizontal_frame()
    if frame is None:
        return None
    d = c2.position - c1.position
    fwd, right = float(d @ frame[0]), float(d @ frame[1])
    if math.hypot(fwd, right) < 0.05:
        return None
    hour, off = clock_hour(math.atan2(right, fwd))
    if off > 0.3:
        return None  # too close to the boundary between two hours
    far = [h for h in range(1, 13) if min((h - hour) % 12, (hour - h) % 12) >= 2]
    distractors = [f"{h} o'clock" for h in rng.choice(far, 3, replace=False)]
    options, letter = multiple_choice(ctx, skill, rng, f"{hour} o'clock", distractors)
    question = (f"{TWO_VIEWS} Imagine standing at the camera of image 1 and facing the way it looks (12 o'clock). "
                "In which clock direction is the camera that took image 2?")
    steps = [f"Camera 2 is {fwd:+.3f} m ahead of and {right:+.3f} m to the right of camera 1 on the table plane.",
             f"That direction is {math.degrees(math.atan2(right, fwd)):.0f} degrees clockwise from straight ahead, "
             f"about {hour} o'clock."]
    facts = {"views": [views[i].key, views[j].key], "hour": hour}
    return mc_sample(ctx, skill, SCENARIO, [ctx.image(views[i]), ctx.image(views[j])], [c1, c2], question, options,
                     letter, facts, steps, [])


TRANSLATION = {0: ("moved right", "moved left"), 1: ("moved down", "moved up"), 2: ("moved forward", "moved backward")}
ROTATION = {"yaw": ("turned right", "turned left"), "pitch": ("tilted up", "tilted down")}


def camera_motion(c1: Camera, c2: Camera) -> tuple[np.ndarray, float, float]:
    """Translation (in camera 1's frame, m) and yaw / pitch (degrees; right and up positive) from 1 to 2."""
    t = c1.rotation.T @ (c2.position - c1.position)
    f2 = c1.rotation.T @ c2.rotation[:, 2]  # camera 2's viewing direction in camera 1's frame
    yaw = math.degrees(math.atan2(f2[0], f2[2]))
    pitch = math.degrees(math.atan2(-f2[1], math.hypot(f2[0], f2[2])))
    return t, yaw, pitch


def _motion_answer(c1: Camera, c2: Camera, kind: str) -> tuple[str, str] | None:
    """(axis, answer) of the dominant motion, None if no motion clearly dominates."""
    t, yaw, pitch = camera_motion(c1, c2)
    if kind == "translation":
        mags = np.abs(t)
        axis = int(np.argmax(mags))
        if mags[axis] < 0.03 or mags[axis] < 1.5 * np.sort(mags)[-2]:
            return None
        return str(axis), TRANSLATION[axis][t[axis] < 0]
    mags = {"yaw": abs(yaw), "pitch": abs(pitch)}
    axis = max(mags, key=mags.get)
    other = mags["pitch" if axis == "yaw" else "yaw"]
    if mags[axis] < 10.0 or mags[axis] < 1.5 * other:
        return None
    value = yaw if axis == "yaw" else pitch
    return axis, ROTATION[axis][value < 0]


def camera_motion_skill(ctx: SceneContext, rng: np.random.Generator):
    """How did the wrist camera move (or turn) between image 1 and image 2?"""
    skill = "camera_motion"
    kind = "translation" if rng.random() < 0.5 else "rotation"
    pairs = [(ctx.view("wrist"), ctx.view("wrist2"))]
    tour = ctx.clip("tour")
    if tour is not None:  # consecutive wrist frames of the tour clip: more, and smaller, motions
        pairs += list(zip(tour.wrist[:-1], tour.wrist[1:], strict=True))
    views = list(pairs[rng.integers(len(pairs))])
    cams = [v.camera for v in views]
    forward, backward = _motion_answer(*cams, kind), _motion_answer(*cams[::-1], kind)
    # played backwards the motion must read as the opposite one: then either order can be asked
    if forward is None or backward is None or forward[0] != backward[0] or forward[1] == backward[1]:
        return None
    axis = forward[0]
    pair = TRANSLATION[int(axis)] if kind == "translation" else ROTATION[axis]
    answer = ctx.balance.pick((skill, kind, axis), pair)
    if answer != forward[1]:
        views, cams = views[::-1], cams[::-1]
    if kind == "translation":
        other = TRANSLATION[int(rng.choice([a for a in range(3) if a != int(axis)]))]
        distractors = [x for x in pair if x != answer] + list(other)
    else:
        distractors = [x for p in ROTATION.values() for x in p if x != answer]
    options, letter = multiple_choice(ctx, skill, rng, answer, distractors)
    motion = "move" if kind == "translation" else "rotate"
    question = ("Both images were taken by the robot's wrist camera, first image 1 and then image 2. "
                f"Relative to the camera's own view in image 1, how did the camera mainly {motion}?")
    t, yaw, pitch = camera_motion(*cams)
    steps = [f"In the first camera's frame (x right, y down, z forward) the camera moved by {fmt_xyz(t)} m.",
             f"It turned {abs(yaw):.1f} degrees {'right' if yaw > 0 else 'left'} and tilted {abs(pitch):.1f} degrees "
             f"{'up' if pitch > 0 else 'down'}."]
    facts = {"views": [v.key for v in views], "kind": kind, "answer": answer}
    return mc_sample(ctx, skill, SCENARIO, [ctx.image(v) for v in views], cams, question, options, letter, facts,
                     steps, [])


def multi_view_detection(ctx: SceneContext, rng: np.random.Generator):
    """All objects seen in the unified front image or a wrist image, boxed in image 1's camera frame."""
    skill = "multi_view_3d_detection"
    wrist = ctx.view("wrist")
    listed = _detectable(ctx.front, [wrist])
    if not listed:
        return None
    what, listed = _category(ctx, rng, listed)
    img, cam = ctx.front_unified
    boxes = [{"label": ctx.objects[k].label, "bbox_3d": round_box(ctx.objects[k].box(cam))} for k in listed]
    question = (f"{camera_prompt(cam.intrinsics)}\n{BOX_FORMAT_PROMPT}{TWO_VIEWS} The camera parameters above are "
                f"those of image 1. Detect all {what} on the table seen in either image and output their 3D bounding "
                'boxes in the camera coordinate system of image 1, as a JSON list of objects with "label" and "bbox_3d".')
    steps = [f"The {ctx.objects[k].label} is centered at {fmt_xyz(b['bbox_3d'][:3])} m in camera 1's frame."
             for k, b in zip(listed, boxes, strict=True)]
    return boxes_sample(ctx, skill, SCENARIO, [img, ctx.image(wrist)], [cam, wrist.camera], question, boxes,
                        {"views": ["front", "wrist"], "objects": listed, "category": what}, steps, listed)


def _spread_pixels(view, rng, taken: list, n: int, min_dist: float, border: float) -> list | None:
    """`n` pixels at least `min_dist` from `taken` and each other, half on objects when possible."""
    h, w = view.seg.shape
    on_obj = np.argwhere(view.seg >= 0)[:, ::-1]
    picked = list(taken)
    for t in range(200):
        if t % 2 == 0 and len(on_obj):
            p = tuple(int(v) for v in on_obj[rng.integers(len(on_obj))])
        else:
            p = (int(rng.uniform(border, w - border)), int(rng.uniform(border, h - border)))
        inside = border <= p[0] < w - border and border <= p[1] < h - border
        if inside and all(math.dist(p, q) >= min_dist for q in picked):
            picked.append(p)
            if len(picked) == len(taken) + n:
                return picked[len(taken):]
    return None


SKILLS = {
    "correspondence": correspondence,
    "object_direction": object_direction,
    "camera_camera": camera_camera,
    "camera_motion": camera_motion_skill,
    "multi_view_3d_detection": multi_view_detection,
}
