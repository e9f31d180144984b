"""Pure-numpy contour tracing of bool masks along pixel edges, with holes joined by keyhole bridges.

Boundaries run on pixel *corners* (pixel (r, c) is the square [c, c+1] x [r, r+1]), so the polygons rasterise back
to exactly the same pixels with pycocotools. Each outer boundary is returned as ONE closed polygon that also visits
each of its holes through a zero-width bridge (out and back along the same segment); even-odd filling — what
pycocotools does — then leaves the holes empty, so ``polygons_to_mask(mask_to_polygons(m)) == m``.
"""

from __future__ import annotations

import numpy as np

# Direction codes of unit edges: 0 = +x, 1 = +y, 2 = -x, 3 = -y (image coordinates, y down).
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start vertices (E, 2) xy and direction codes (E,) of all fg/bg pixel edges, fg on the right (screen)."""
    padded = np.pad(mask, 1)
    fg = padded[1:-1, 1:-1]
    starts, dirs = [], []
    # neighbour offsets (dr, dc) and for each: edge start offset (x, y) relative to the pixel corner, direction
    for (dr, dc), (sx, sy), code in (
        ((-1, 0), (0, 0), 0),  # background above: top edge, walking +x
        ((0, 1), (1, 0), 1),  # background right: right edge, walking +y
        ((1, 0), (1, 1), 2),  # background below: bottom edge, walking -x
        ((0, -1), (0, 1), 3),  # background left: left edge, walking -y
    ):
        neighbour = padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        rows, cols = np.nonzero(fg & ~neighbour)
        starts.append(np.stack([cols + sx, rows + sy], axis=1))
        dirs.append(np.full(rows.shape, code, dtype=np.int64))
    return np.concatenate(starts).astype(np.int64), np.concatenate(dirs)


def trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """All closed boundary loops of an (H, W) bool mask as (K, 2) int corner vertices (collinear points removed).

    Outer boundaries have positive shoelace area (clockwise on screen), holes negative. At a vertex where two
    pixels touch only diagonally the walk turns right, keeping such pixels in separate loops (4-connectivity).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected one mask of shape (H, W), got {mask.shape}")
    starts, dirs = _boundary_edges(mask)
    if len(starts) == 0:
        return []
    width = mask.shape[1] + 3
    keys = starts[:, 1] * width + starts[:, 0]
    # at most two edges leave a vertex (saddle); index them by (vertex key, direction)
    outgoing: dict[int, list[int]] = {}
    for edge, key in enumerate(keys.tolist()):
        outgoing.setdefault(key, []).append(edge)
    ends = starts + _STEP[dirs]
    end_keys = (ends[:, 1] * width + ends[:, 0]).tolist()
    used = np.zeros(len(starts), dtype=bool)
    dir_list = dirs.tolist()
    loops = []
    for first in range(len(starts)):
        if used[first]:
            continue
        edge = first
        path = []
        while not used[edge]:
            used[edge] = True
            path.append(edge)
            candidates = outgoing[end_keys[edge]]
            if len(candidates) > 1:  # saddle: always take the right turn (direction + 1 mod 4)
                right = (dir_list[edge] + 1) % 4
                candidates = [e for e in candidates if dir_list[e] == right]
            edge = candidates[0]  # already used: the loop is closed
        path_dirs = dirs[path]
        corners = np.nonzero(path_dirs != np.roll(path_dirs, 1))[0]
        loops.append(starts[path][corners])
    return loops


def signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0].astype(np.float64), loop[:, 1].astype(np.float64)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of an (H, W) bool mask: 0 on background, else 1 + the largest flat index of
    the component's pixels. Vectorised label propagation with pointer jumping (no per-pixel Python loop)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), 0)
    while True:
        grown = labels.copy()
        np.maximum(grown[1:], labels[:-1], out=grown[1:])
        np.maximum(grown[:-1], labels[1:], out=grown[:-1])
        np.maximum(grown[:, 1:], labels[:, :-1], out=grown[:, 1:])
        np.maximum(grown[:, :-1], labels[:, 1:], out=grown[:, :-1])
        grown = np.where(mask, grown, 0)
        flat = grown.ravel()
        jumped = flat[np.maximum(flat - 1, 0)].reshape(h, w)
        grown = np.where(mask, np.maximum(grown, jumped), 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def _probe_pixel(loop: np.ndarray) -> tuple[int, int]:
    """(row, col) of the foreground pixel right of the first edge of a loop (fg lies right of the walk)."""
    direction = np.sign(loop[1] - loop[0]).astype(np.float64)
    centre = loop[0].astype(np.float64) + direction * 0.5 + 0.5 * np.array([-direction[1], direction[0]])
    return int(np.floor(centre[1])), int(np.floor(centre[0]))


def trace_outer_contours(mask: np.ndarray) -> list[np.ndarray]:
    """One closed polygon (K, 2) float per outer boundary of ``mask``, its holes joined in by keyhole bridges.

    A hole belongs to the 4-connected foreground component on its rim, whose outer boundary is unique.
    """
    mask = np.asarray(mask, dtype=bool)
    loops = trace_loops(mask)
    if not loops:
        return []
    labels = label_components(mask)
    owner = [int(labels[_probe_pixel(loop)]) for loop in loops]
    is_outer = [signed_area(loop) > 0 for loop in loops]
    holes_of: dict[int, list[np.ndarray]] = {}
    for loop, component, outer in zip(loops, owner, is_outer, strict=True):
        if not outer:
            holes_of.setdefault(component, []).append(loop)
    polygons = []
    for loop, component, outer in zip(loops, owner, is_outer, strict=True):
        if not outer:
            continue
        parts = [loop[:1]]
        for hole in holes_of.get(component, []):  # out along the bridge, round the hole, back to the outer start
            parts += [hole, hole[:1], loop[:1]]
        parts.append(loop[1:])
        polygons.append(np.concatenate(parts).astype(np.float64))
    return polygons


def simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed contour (K, 2); keeps the first vertex and the farthest one."""
    contour = np.asarray(contour, dtype=np.float64)
    if tolerance <= 0 or len(contour) <= 3:
        return contour
    far = int(np.argmax(np.linalg.norm(contour - contour[0], axis=1)))
    first = _douglas_peucker(contour[: far + 1], tolerance)
    second = _douglas_peucker(np.concatenate([contour[far:], contour[:1]]), tolerance)
    return np.concatenate([first[:-1], second[:-1]])


def _douglas_peucker(points: np.ndarray, tolerance: float) -> np.ndarray:
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        lo, hi = stack.pop()
        if hi - lo < 2:
            continue
        a, b = points[lo], points[hi]
        segment = points[lo + 1 : hi]
        ab = b - a
        length = float(np.hypot(*ab))
        if length == 0:
            dist = np.linalg.norm(segment - a, axis=1)
        else:
            dist = np.abs(ab[0] * (segment[:, 1] - a[1]) - ab[1] * (segment[:, 0] - a[0])) / length
        idx = int(np.argmax(dist))
        if dist[idx] > tolerance:
            mid = lo + 1 + idx
            keep[mid] = True
            stack += [(lo, mid), (mid, hi)]
    return points[keep]
