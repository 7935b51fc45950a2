"""A labelled sample grid: one row per class, the class name on the left."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vca_gen.utils.io import atomic_open


class GridCollector:
    """Keeps the first ``per_class`` images of each of the first ``num_classes`` classes."""

    def __init__(self, num_classes: int, per_class: int):
        self.num_classes, self.per_class = num_classes, per_class
        self.rows: dict[int, list[np.ndarray]] = {c: [] for c in range(num_classes)}

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        for img, y in zip(images, labels):
            row = self.rows.get(int(y))
            if row is not None and len(row) < self.per_class:
                row.append(img)

    @property
    def enabled(self) -> bool:
        return self.num_classes > 0 and self.per_class > 0


def render_grid(
    rows: Mapping[int, Sequence[np.ndarray]], class_names: Sequence[str] | None = None, min_cell: int = 64, pad: int = 2
):
    """PIL image: row ``c`` shows ``rows[c]`` (uint8 HWC) after a text label (name or index).

    Small images are enlarged by an integer factor (nearest neighbour) to at least ``min_cell`` px.
    """
    from PIL import Image, ImageDraw

    rows = {c: list(v) for c, v in rows.items() if len(v)}
    if not rows:
        raise ValueError("no images to put in the grid")
    h, w = next(iter(rows.values()))[0].shape[:2]
    scale = max(1, -(-min_cell // max(h, w)))
    ch, cw = h * scale, w * scale
    names = {c: (class_names[c] if class_names is not None and c < len(class_names) else str(c)) for c in rows}
    label_w = 8 + 7 * max(len(n) for n in names.values())
    ncols = max(len(v) for v in rows.values())
    canvas = Image.new("RGB", (label_w + ncols * (cw + pad) + pad, len(rows) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, c in enumerate(sorted(rows)):
        y0 = pad + r * (ch + pad)
        draw.text((4, y0 + ch // 2 - 6), names[c], fill="black")
        for j, img in enumerate(rows[c]):
            tile = Image.fromarray(img).resize((cw, ch), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + j * (cw + pad), y0))
    return canvas


def save_grid(path: Path, rows, class_names=None) -> Path:
    """Render and save the grid atomically as PNG (mode per umask)."""
    path = Path(path)
    img = render_grid(rows, class_names)
    with atomic_open(path, "wb", what="the sample grid", resumable=True) as f:
        img.save(f, format="PNG")
    return path
