"""Visual prompts drawn with OpenCV on copies of RGB images: marked points, 2D boxes, letter labels.

Sizes scale with the image so prompts stay legible from 160x120 to 1280x960. Colours avoid the
sim's object colours (red, green, blue, yellow, purple, orange, white): markers are cyan and
magenta with black outlines, labels are black on a white tag.

`MarkStyle` is the knob for small models: VST's look (one marker colour, the label only in the tag)
asks a model to read a few-pixel glyph to tell point A from point B. `label_colors` gives each label
its own marker / box colour as well (A and 1 cyan, B and 2 magenta, C and 3 black, D and 4 brown), and
`scale` enlarges markers, tags and lines; the letter tags stay, so the question text is unchanged.
(On their own they did not lift the tiny preset's SFT above text-only: README section 3.)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MARKER = (0, 230, 255)  # RGB cyan
BOX = (255, 0, 200)  # RGB magenta
OUTLINE = (0, 0, 0)
TAG = (255, 255, 255)
# per-label colours (label_colors): off the sim's object colours, told apart at a few pixels
LABEL_COLORS = [MARKER, BOX, OUTLINE, (120, 70, 20)]
LABEL_ORDER = {label: i for i, label in enumerate("ABCD")} | {str(i + 1): i for i in range(4)}


@dataclass(frozen=True)
class MarkStyle:
    scale: float = 1.0  # markers, tags and lines, relative to VST's look at this image size
    label_colors: bool = False  # each label (A-D, 1-4) its own marker / box colour

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"MarkStyle.scale must be > 0, got {self.scale}")

    def color(self, label: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
        if self.label_colors and label in LABEL_ORDER:
            return LABEL_COLORS[LABEL_ORDER[label]]
        return default


VST_STYLE = MarkStyle()


def _outline(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The edge drawn under a mark: black, or white under a black mark."""
    return TAG if colour == OUTLINE else OUTLINE


def _scale(image: np.ndarray, style: MarkStyle = VST_STYLE) -> float:
    return style.scale * max(image.shape[0], image.shape[1]) / 320.0


def _tag(image: np.ndarray, text: str, anchor: tuple[int, int], scale: float) -> None:
    """A white tag with black text whose bottom-left corner sits at `anchor`, kept inside the image."""
    font, fs, th = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, max(1, round(scale))
    (w, h), base = cv2.getTextSize(text, font, fs, th)
    pad = max(1, round(2 * scale))
    x = int(np.clip(anchor[0], 0, image.shape[1] - w - 2 * pad))
    y = int(np.clip(anchor[1], h + 2 * pad, image.shape[0] - 1))
    cv2.rectangle(image, (x, y - h - 2 * pad), (x + w + 2 * pad, y), TAG, -1)
    cv2.putText(image, text, (x + pad, y - pad), font, fs, OUTLINE, th, cv2.LINE_AA)


def draw_points(image: np.ndarray, points, labels: list[str], style: MarkStyle = VST_STYLE) -> np.ndarray:
    """A copy of `image` with a filled circle and a label tag at each (x, y) pixel."""
    out = np.ascontiguousarray(image.copy())
    s = _scale(out, style)
    r = max(2, round(3.5 * s))
    for (x, y), label in zip(points, labels, strict=True):
        c = (int(round(x)), int(round(y)))
        fill = style.color(label, MARKER)
        cv2.circle(out, c, r + max(1, round(s)), _outline(fill), -1, cv2.LINE_AA)
        cv2.circle(out, c, r, fill, -1, cv2.LINE_AA)
        if label:
            _tag(out, label, (c[0] + r + 1, c[1] - r - 1), s)
    return out


def draw_boxes(image: np.ndarray, boxes, labels: list[str], style: MarkStyle = VST_STYLE) -> np.ndarray:
    """A copy of `image` with each (x0, y0, x1, y1) box outlined and tagged with its label."""
    out = np.ascontiguousarray(image.copy())
    s = _scale(out, style)
    th = max(1, round(1.5 * s))
    for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
        p0, p1 = (int(x0), int(y0)), (int(x1), int(y1))
        line = style.color(label, BOX)
        cv2.rectangle(out, p0, p1, _outline(line), th + 2)
        cv2.rectangle(out, p0, p1, line, th)
        if label:
            _tag(out, label, (p0[0], p0[1] - th), s)
    return out


def draw_polylines(image: np.ndarray, strips, color=(0, 255, 0)) -> np.ndarray:
    """A copy of `image` with line strips (lists of (x, y)) drawn, e.g. projected 3D box edges."""
    out = np.ascontiguousarray(image.copy())
    th = max(1, round(_scale(out)))
    for strip in strips:
        pts = np.asarray(strip, float)
        if len(pts) >= 2 and np.all(np.isfinite(pts)):
            cv2.polylines(out, [np.round(pts).astype(np.int32)], False, color, th, cv2.LINE_AA)
    return out
