"""Single-image skills (VST-P): depth comparison, distance, measurement, 3D detection and grounding,
counting and scene captions. Each is `(ctx, rng) -> GeneratedSample | None` (None: ill-posed here)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from vst_vla.spatial.boxes import BOX_FORMAT_PROMPT, camera_prompt
from vst_vla.spatial.draw import draw_boxes, draw_points

from .common import article, boxes_sample, fmt_xyz, mc_sample, multiple_choice, number_sample, round_box, sample
from .context import LETTERS, PARTIAL, VISIBLE, Img, SceneContext, View, plural

SCENARIO = "single_image"
DEPTH_MARGIN = 0.025  # m: closer calls than this are never asked
DISTANCE_MARGIN = 0.02  # m
WRIST_SHARE = 0.3  # of the questions that may use either camera


def _view(ctx: SceneContext, rng: np.random.Generator) -> View:
    return ctx.view("wrist") if rng.random() < WRIST_SHARE else ctx.front


def _depths(view: View, points: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """z-depth and Euclidean distance to the camera of world points."""
    pc = view.camera.to_camera(np.asarray(points))
    return pc[:, 2], np.linalg.norm(pc, axis=1)


def _clear_order(z: np.ndarray, e: np.ndarray, margin: float) -> np.ndarray | None:
    """Near-to-far order if depth and distance agree on it with `margin` between neighbours."""
    order = np.argsort(z)
    if not np.array_equal(order, np.argsort(e)):
        return None
    if np.any(np.diff(z[order]) < margin) or np.any(np.diff(e[order]) < margin / 2):
        return None
    return order


def depth_comparison_points(ctx: SceneContext, rng: np.random.Generator):
    """Two marked points on two objects: which is closer to (farther from) the camera?"""
    skill, view = "depth_comparison_points", _view(ctx, rng)
    vis = view.visible()
    if len(vis) < 2:
        return None
    pair = rng.choice(vis, 2, replace=False)
    pixels, points = [], []
    for k in pair:
        ys, xs = np.nonzero(view.mask(int(k), erode=2))  # away from edges: the mark is on the object
        if len(xs) == 0:
            return None
        n = rng.integers(len(xs))
        u, v = int(xs[n]), int(ys[n])
        pixels.append((u, v))
        points.append(view.camera.backproject((u, v), float(view.depth[v, u])))
    z, e = _depths(view, points)
    order = _clear_order(z, e, DEPTH_MARGIN)
    if order is None:
        return None
    ask = ctx.balance.pick((skill, "ask"), ("closer to", "farther from"))
    correct = int(order[0] if ask == "closer to" else order[-1])
    slot = ctx.balance.slot(skill, 2)
    labels = ["", ""]
    labels[correct], labels[1 - correct] = LETTERS[slot], LETTERS[1 - slot]
    image = draw_points(view.rgb, [(u + 0.5, v + 0.5) for u, v in pixels], labels, style=ctx.marks)
    options = {"A": "point A", "B": "point B"}
    names = [ctx.objects[int(k)].label for k in pair]
    steps = [f"Point {labels[i]} lies on the {names[i]} at a depth of {z[i]:.3f} m." for i in (0, 1)]
    steps.append(f"Point {labels[correct]} is {ask} the camera.")
    facts = {"view": view.key, "ask": ask, "points": [
        {"label": labels[i], "pixel": list(pixels[i]), "object": int(pair[i]), "world": np.round(points[i], 4).tolist(),
         "depth": round(float(z[i]), 4)} for i in (0, 1)]}
    question = f"Two points are marked on the image, labelled A and B. Which point is {ask} the camera?"
    return mc_sample(ctx, skill, SCENARIO, [Img(image)], [view.camera], question, options, LETTERS[slot], facts,
                     steps, [int(k) for k in pair])


def depth_comparison_boxes(ctx: SceneContext, rng: np.random.Generator):
    """Numbered 2D boxes around objects: which is closest / farthest, or their near-to-far order."""
    skill, view = "depth_comparison_boxes", _view(ctx, rng)
    vis = view.visible()
    boxes_of = {k: _pad(view.bbox2d(k), view) for k in vis}
    found = None
    for n in ((3, 2) if rng.random() < 0.7 else (2,)):
        combos = list(itertools.combinations(vis, n))
        for c in rng.permutation(len(combos)) if combos else []:
            ks = [int(k) for k in rng.permutation(combos[c])]
            z, e = _depths(view, [ctx.objects[k].position for k in ks])
            order = _clear_order(z, e, DEPTH_MARGIN)
            # overlapping boxes: which box marks which object would be unclear
            if order is not None and all(_iou2d(boxes_of[a], boxes_of[b]) <= 0.3 for a, b in itertools.combinations(ks, 2)):
                found = ks, z, order
                break
        if found:
            break
    if found is None:
        return None
    ks, z, order = found
    n = len(ks)
    boxes = [boxes_of[k] for k in ks]
    if n == 3 and rng.random() < 0.4:  # order all three
        numbers = (rng.permutation(n) + 1).tolist()
        seq = lambda o: ", ".join(f"box {numbers[i]}" for i in o)  # noqa: E731
        wrong = [p for p in itertools.permutations(range(n)) if list(p) != order.tolist()]
        distractors = [seq(wrong[i]) for i in rng.choice(len(wrong), 3, replace=False)]
        options, letter = multiple_choice(ctx, skill, rng, seq(order), distractors)
        question = (f"{n} objects are marked with numbered boxes. Order them from closest to farthest "
                    "from the camera.")
        ask = "order"
    else:
        ask = ctx.balance.pick((skill, "ask"), ("closest to", "farthest from"))
        correct = int(order[0] if ask == "closest to" else order[-1])
        slot = ctx.balance.slot(skill, n)
        rest = [i for i in rng.permutation(n).tolist() if i != slot]
        numbers = [0] * n
        numbers[correct] = slot + 1
        for i, num in zip([i for i in range(n) if i != correct], rest, strict=True):
            numbers[i] = num + 1
        options, letter = {LETTERS[i]: f"box {i + 1}" for i in range(n)}, LETTERS[slot]
        question = f"{n} objects are marked with numbered boxes. Which marked object is {ask} the camera?"
    image = draw_boxes(view.rgb, boxes, [str(m) for m in numbers], style=ctx.marks)
    steps = [f"Box {numbers[i]} holds the {ctx.objects[k].label}, whose center is {z[i]:.3f} m deep."
             for i, k in enumerate(ks)]
    steps.append("From closest to farthest: " + ", ".join(f"box {numbers[i]}" for i in order) + ".")
    facts = {"view": view.key, "ask": ask, "boxes": [
        {"number": numbers[i], "object": k, "box2d": list(boxes[i]), "depth": round(float(z[i]), 4)}
        for i, k in enumerate(ks)]}
    return mc_sample(ctx, skill, SCENARIO, [Img(image)], [view.camera], question, options, letter, facts, steps, ks)


def object_distance(ctx: SceneContext, rng: np.random.Generator):
    """Which of the listed objects is nearest to / farthest from a reference object (3D centres)?"""
    skill, view = "object_distance", ctx.front
    vis = [k for k in view.visible() if ctx.names[k]]
    if len(vis) < 3:
        return None
    valid = {}  # ask -> (reference, candidates, distances, order) of the first clear question
    for ref in rng.permutation(vis).tolist():
        cands = [int(k) for k in rng.permutation([k for k in vis if k != ref])[:4]]
        d = np.array([np.linalg.norm(ctx.objects[k].position - ctx.objects[ref].position) for k in cands])
        for ask, order in (("nearest to", np.argsort(d)), ("farthest from", np.argsort(-d))):
            if ask not in valid and abs(d[order[0]] - d[order[1]]) >= DISTANCE_MARGIN:
                valid[ask] = ref, cands, d, order
    if len(valid) < 2:
        return None  # ask only where both are possible, so the balanced choice is never wasted
    ask = ctx.balance.pick((skill, "ask"), ("nearest to", "farthest from"))
    ref, cands, d, order = valid[ask]
    names = [f"the {ctx.names[k]}" for k in cands]
    correct = names[order[0]]
    options, letter = multiple_choice(ctx, skill, rng, correct, [x for x in names if x != correct])
    question = f"Which of these objects is {ask} the {ctx.names[ref]} (measured between their centers)?"
    steps = [f"The {ctx.names[k]} is {d[i]:.3f} m from the {ctx.names[ref]}." for i, k in enumerate(cands)]
    steps.append(f"So {correct} is {ask} the {ctx.names[ref]}.")
    facts = {"view": view.key, "ask": ask, "reference": ref, "candidates": cands,
             "distances": np.round(d, 4).tolist()}
    return mc_sample(ctx, skill, SCENARIO, [ctx.image(view)], [view.camera], question, options, letter, facts, steps,
                     [ref, *cands])


def measurement_size(ctx: SceneContext, rng: np.random.Generator):
    """Height / diameter / side length of an object, in centimetres."""
    skill, view = "measurement_size", ctx.front
    vis = [k for k in view.visible() if ctx.names[k]]
    if not vis:
        return None
    k = int(rng.choice(vis))
    obj = ctx.objects[k]
    if obj.rotation[2, 2] < 0.95:
        return None  # tipped over: "height" would not be a size of the object
    if obj.shape == "cube":
        dims = {"side length": obj.size[0]}
    elif obj.shape == "sphere":
        dims = {"diameter": obj.size[0]}
    else:
        dims = {"height": obj.size[2], "diameter": obj.size[0]}
    what = list(dims)[rng.integers(len(dims))]
    value = 100.0 * dims[what]
    question = f"What is the {what} of the {ctx.names[k]} in centimeters? Answer with a number and a unit."
    steps = [f"The {ctx.names[k]} measures {100 * obj.size[0]:.1f} x {100 * obj.size[1]:.1f} x "
             f"{100 * obj.size[2]:.1f} cm (width x depth x height).", f"Its {what} is {value:.1f} cm."]
    facts = {"view": view.key, "object": k, "dimension": what}
    return number_sample(ctx, skill, SCENARIO, [ctx.image(view)], [view.camera], question, value, "cm", 1, facts,
                         steps, [k])


def measurement_distance(ctx: SceneContext, rng: np.random.Generator):
    """Distance in metres between two objects' centres, or from an object to the camera."""
    skill, view = "measurement_distance", ctx.front
    vis = [k for k in view.visible() if ctx.names[k]]
    if len(vis) < 2 or rng.random() < 0.3:
        k = int(rng.choice(vis)) if vis else None
        if k is None:
            return None
        value = float(np.linalg.norm(ctx.objects[k].position - view.camera.position))
        question = f"How far is the center of the {ctx.names[k]} from the camera, in meters?"
        steps = [f"In the camera frame the {ctx.names[k]} is at {fmt_xyz(view.camera.to_camera(ctx.objects[k].position)[0])} m.",
                 f"Its distance from the camera is {value:.3f} m."]
        facts, layout = {"view": view.key, "objects": [k], "to": "camera"}, [k]
    else:
        a, b = (int(x) for x in rng.choice(vis, 2, replace=False))
        value = float(np.linalg.norm(ctx.objects[a].position - ctx.objects[b].position))
        if value < 0.03:
            return None
        question = (f"What is the distance between the centers of the {ctx.names[a]} and the {ctx.names[b]}, "
                    "in meters?")
        steps = [f"The centers are {value:.3f} m apart."]
        facts, layout = {"view": view.key, "objects": [a, b], "to": "object"}, [a, b]
    return number_sample(ctx, skill, SCENARIO, [ctx.image(view)], [view.camera],
                         question + " Answer with a number and a unit.", value, "m", 3, facts, steps, layout)


def _detectable(view: View, views: list[View] = ()) -> list[int] | None:
    """Objects to list in a detection answer: VISIBLE in some view; None if one is only PARTIAL."""
    all_views = [view, *views]
    listed = [k for k in range(len(view.objects)) if any(v.states[k] == VISIBLE for v in all_views)]
    unsure = [k for k in range(len(view.objects)) if k not in listed and any(v.states[k] == PARTIAL for v in all_views)]
    return None if unsure else listed


def _category(ctx: SceneContext, rng: np.random.Generator, ks: list[int]) -> tuple[str, list[int]]:
    """"objects" (all), or a shape or colour present among `ks`, with the matching subset."""
    r = rng.random()
    if r < 0.5 or not ks:
        return "objects", ks
    if r < 0.75:
        shape = ctx.objects[int(rng.choice(ks))].shape
        return plural(shape), [k for k in ks if ctx.objects[k].shape == shape]
    color = ctx.objects[int(rng.choice(ks))].color
    return f"{color} objects", [k for k in ks if ctx.objects[k].color == color]


def detection_3d(ctx: SceneContext, rng: np.random.Generator):
    """All objects (or one category) in the FoV-unified front image as VST 3D boxes."""
    skill = "3d_detection"
    listed = _detectable(ctx.front)
    if not listed:
        return None
    what, ks = _category(ctx, rng, listed)
    img, cam = ctx.front_unified
    boxes = [{"label": ctx.objects[k].label, "bbox_3d": round_box(ctx.objects[k].box(cam))} for k in ks]
    question = (f"{camera_prompt(cam.intrinsics)}\n{BOX_FORMAT_PROMPT}Detect all {what} on the table in the image. "
                'Output a JSON list of objects, each with a "label" and its "bbox_3d".')
    steps = [f"The {ctx.objects[k].label} is centered at {fmt_xyz(b['bbox_3d'][:3])} m in the camera frame."
             for k, b in zip(ks, boxes, strict=True)]
    return boxes_sample(ctx, skill, SCENARIO, [img], [cam], question, boxes, {"objects": ks, "category": what},
                        steps, ks)


def grounding_3d(ctx: SceneContext, rng: np.random.Generator):
    """The 3D box of one referred object in the FoV-unified front image."""
    skill = "3d_grounding"
    vis = [k for k in ctx.front.visible() if ctx.names[k]]
    if not vis:
        return None
    k = int(rng.choice(vis))
    img, cam = ctx.front_unified
    box = round_box(ctx.objects[k].box(cam))
    question = (f"{camera_prompt(cam.intrinsics)}\n{BOX_FORMAT_PROMPT}Output the 3D bounding box of the "
                f'{ctx.names[k]} as a JSON list with one object with keys "label" and "bbox_3d".')
    steps = [f"The {ctx.names[k]} is centered at {fmt_xyz(box[:3])} m in the camera frame and measures "
             f"{box[3]:.3f} x {box[4]:.3f} x {box[5]:.3f} m."]
    return boxes_sample(ctx, skill, SCENARIO, [img], [cam], question, [{"label": ctx.names[k], "bbox_3d": box}],
                        {"objects": [k]}, steps, [k])


def counting(ctx: SceneContext, rng: np.random.Generator):
    """How many objects of a category show in the image (0 allowed); PARTIAL matches make it ill-posed."""
    skill, view = "counting", _view(ctx, rng)
    what, matches = _category(ctx, rng, list(range(len(ctx.objects))))
    if rng.random() < 0.15:  # sometimes a category that is absent: the answer 0 must be learnt too
        shapes = {"cube", "cylinder", "sphere", "bowl", "plate"} - {o.shape for o in ctx.objects}
        if shapes:
            what, matches = plural(sorted(shapes)[rng.integers(len(shapes))]), []
    if any(view.states[k] == PARTIAL for k in matches):
        return None
    seen = [k for k in matches if view.states[k] == VISIBLE]
    question = f"How many {what} are there in the image? Answer with a number."
    steps = [f"Visible {what}: " + (", ".join(ctx.objects[k].label for k in seen) or "none") + "."]
    return number_sample(ctx, skill, SCENARIO, [ctx.image(view)], [view.camera], question, len(seen), None, 0,
                         {"view": view.key, "category": what, "objects": seen}, steps, seen)


def scene_caption(ctx: SceneContext, rng: np.random.Generator):
    """A layout caption: what is on the table, left to right, nearest/farthest, one clear relation."""
    skill, view = "scene_caption", ctx.front
    listed = _detectable(view)
    if not listed or len(listed) < 2:
        return None
    objs = ctx.objects
    groups = Counter(f"{objs[k].size_class} {objs[k].label}" for k in listed)
    counted = [article(g) if n == 1 else f"{_number_word(n)} {plural_label(g)}" for g, n in sorted(groups.items())]
    text = [f"There are {_number_word(len(listed))} objects on the table: {_join(counted)}."]
    u = view.camera.project([objs[k].position for k in listed])[:, 0]
    order = np.argsort(u)
    if np.all(np.diff(u[order]) > 0.04 * view.camera.width):
        text.append("From left to right: " + _join([f"the {objs[listed[i]].label}" for i in order]) + ".")
    z, e = _depths(view, [objs[k].position for k in listed])
    near = np.argsort(z)
    closest, farthest = ctx.names[listed[near[0]]], ctx.names[listed[near[-1]]]
    if closest and z[near[1]] - z[near[0]] > DEPTH_MARGIN and np.argmin(e) == near[0]:
        text.append(f"The {closest} is the closest to the camera.")
    if farthest and z[near[-1]] - z[near[-2]] > DEPTH_MARGIN and np.argmax(e) == near[-1]:
        text.append(f"The {farthest} is the farthest from the camera.")
    frame = view.camera.horizontal_frame()
    named = [k for k in listed if ctx.names[k]]
    if frame is not None and len(named) >= 2:
        for a, b in itertools.combinations(rng.permutation(named).tolist(), 2):
            rel = _relation(objs[a].position - objs[b].position, *frame)
            if rel:
                text.append(f"The {ctx.names[a]} is {rel} the {ctx.names[b]}.")
                break
    caption = " ".join(text)
    question = "Describe the layout of the objects on the table in this image."
    return sample(ctx, skill, SCENARIO, [ctx.image(view)], [view.camera], question, caption, "text",
                  {"text": caption}, {"view": view.key, "objects": listed}, [], listed)


# --------------------------------------------------------------------------------------- helpers
RELATION_MARGIN = 0.03


def _relation(d: np.ndarray, forward: np.ndarray, right: np.ndarray) -> str | None:
    """"to the left of" / "to the right of" / "in front of" / "behind" for offset d (a minus b), seen
    from a camera with horizontal (forward, right); None unless one direction clearly dominates."""
    along_r, along_f = float(d @ right), float(d @ forward)
    major, minor = (along_r, along_f) if abs(along_r) >= abs(along_f) else (along_f, along_r)
    if abs(major) < RELATION_MARGIN or abs(major) < 1.5 * abs(minor):
        return None
    if abs(along_r) >= abs(along_f):
        return "to the right of" if along_r > 0 else "to the left of"
    return "behind" if along_f > 0 else "in front of"  # forward = away from the camera


def _pad(box, view: View, pad: int = 2):
    x0, y0, x1, y1 = box
    return (max(0, x0 - pad), max(0, y0 - pad), min(view.camera.width - 1, x1 + pad),
            min(view.camera.height - 1, y1 + pad))


def _iou2d(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / max(1e-9, area(a) + area(b) - inter)


def _number_word(n: int) -> str:
    words = "zero one two three four five six seven eight nine ten".split()
    return words[n] if n < len(words) else str(n)


def plural_label(group: str) -> str:
    words = group.split()
    return " ".join([*words[:-1], plural(words[-1])])


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


SKILLS = {
    "depth_comparison_points": depth_comparison_points,
    "depth_comparison_boxes": depth_comparison_boxes,
    "object_distance": object_distance,
    "measurement_size": measurement_size,
    "measurement_distance": measurement_distance,
    "3d_detection": detection_3d,
    "3d_grounding": grounding_3d,
    "counting": counting,
    "scene_caption": scene_caption,
}
