"""Bird's-eye-view PNGs (matplotlib, always available) and an optional open3d off-screen render.

The BEV plot draws the points (coloured by height), the ground-truth boxes (green) and the predictions
(red, with their scores) of one scene; :func:`render_open3d` needs a working off-screen renderer (on
Debian: ``libvulkan1`` + ``mesa-vulkan-drivers`` for lavapipe) and raises ``RuntimeError`` with the
reason otherwise, which the CLI reports instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kd3d.boxes import bev_corners
from slimkit.plot import save_png

__all__ = ["bev_png", "render_open3d"]


def bev_png(
    path: str | Path, points: NDArray[np.floating], gt_boxes: NDArray[np.floating], pred: dict[str, Any] | None = None,
    point_range: list[float] | None = None, title: str = "", classes: list[str] | None = None,
) -> Path:  # fmt: skip
    """One scene from above: points, ground truth (green) and predictions (red, labelled with scores)."""
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(7, 7))
    ax = fig.add_subplot(1, 1, 1)
    pts = np.asarray(points)
    if point_range is not None:
        r = point_range
        keep = (pts[:, 0] >= r[0]) & (pts[:, 0] < r[3]) & (pts[:, 1] >= r[1]) & (pts[:, 1] < r[4])
        pts = pts[keep]
        ax.set_xlim(r[0], r[3])
        ax.set_ylim(r[1], r[4])
    ground = pts[:, 2] < np.percentile(pts[:, 2], 60) + 0.15 if len(pts) else np.zeros(0, dtype=bool)
    ax.scatter(pts[ground, 0], pts[ground, 1], s=0.2, c="0.8", linewidths=0)  # the ground rings, light
    ax.scatter(pts[~ground, 0], pts[~ground, 1], s=1.0, c=pts[~ground, 2], cmap="viridis", linewidths=0)
    for corners in bev_corners(np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 7)):
        ax.fill(corners[:, 0], corners[:, 1], fill=False, edgecolor="limegreen", linewidth=1.5)
    if pred is not None:
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 7)
        for corners, box, score, label in zip(bev_corners(boxes), boxes, pred["scores"], pred["labels"], strict=True):
            ax.fill(corners[:, 0], corners[:, 1], fill=False, edgecolor="red", linewidth=1.0)
            head = (corners[0] + corners[3]) / 2
            ax.plot([box[0], head[0]], [box[1], head[1]], color="red", linewidth=0.8)
            name = classes[int(label)][0] if classes else str(int(label))
            ax.text(box[0], box[1], f"{name} {score:.2f}", color="red", fontsize=6)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or "BEV: ground truth (green), predictions (red)")
    return save_png(fig, path, dpi=110)


def render_open3d(
    path: str | Path, points: NDArray[np.floating], boxes: NDArray[np.floating], size: int = 640,
    truth: NDArray[np.floating] | None = None,
) -> Path:  # fmt: skip
    """An off-screen open3d render of the points (grey), boxes (red) and optional ground truth (green),
    seen from above and behind.

    Needs a working off-screen renderer: a GPU, or Mesa's software Vulkan (``libvulkan1``,
    ``mesa-vulkan-drivers``); ``RuntimeError`` names what is missing otherwise.
    """
    try:  # open3d loads libGL / libusb on import: a machine without them has no renderer either
        import open3d as o3d
        from open3d.visualization import rendering
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"open3d off-screen rendering is unavailable: {exc}") from exc
    try:
        renderer = rendering.OffscreenRenderer(size, size)
    except Exception as exc:  # pragma: no cover - depends on the machine's GPU / Vulkan stack
        raise RuntimeError(f"open3d off-screen rendering is unavailable: {exc}") from exc
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    renderer.scene.view.set_post_processing(False)  # no tone mapping: white stays white, colours stay as painted
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.colors = o3d.utility.Vector3dVector(np.tile([0.35, 0.35, 0.4], (len(xyz), 1)))
    dots = rendering.MaterialRecord()
    dots.shader = "defaultUnlit"
    dots.point_size = 2.0
    renderer.scene.add_geometry("points", cloud, dots)
    edges = rendering.MaterialRecord()
    edges.shader = "unlitLine"
    edges.line_width = 2.0
    drawn = [] if truth is None else [(np.asarray(truth, dtype=np.float64).reshape(-1, 7), (0.1, 0.65, 0.2))]
    drawn.append((np.asarray(boxes, dtype=np.float64).reshape(-1, 7), (0.9, 0.1, 0.1)))  # predictions on top
    for g, (group, colour) in enumerate(drawn):
        for i, b in enumerate(group):
            obb = o3d.geometry.OrientedBoundingBox(b[:3], o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, float(b[6]))), b[3:6])
            obb.color = colour  # the line set takes its colour from the box
            lines = o3d.geometry.LineSet.create_from_oriented_bounding_box(obb)
            renderer.scene.add_geometry(f"box{g}_{i}", lines, edges)
    box_arr = np.concatenate([group for group, _ in drawn])
    if len(box_arr):  # frame the boxes (the scan's far rings would make them tiny)
        centre = box_arr[:, :3].mean(axis=0)
        reach = max(5.0, 1.3 * float((np.abs(box_arr[:, :2] - centre[:2]) + box_arr[:, 3:5]).max()))
    else:
        centre = xyz.mean(axis=0) if len(xyz) else np.zeros(3)
        reach = float(np.abs(xyz[:, :2] - centre[:2]).max()) if len(xyz) else 10.0
    eye = centre + np.array([-0.9 * reach, -0.9 * reach, 0.8 * reach])
    renderer.setup_camera(60.0, centre.tolist(), eye.tolist(), [0.0, 0.0, 1.0])
    image = renderer.render_to_image()
    out = Path(path)
    if not o3d.io.write_image(str(out), image):  # type: ignore[arg-type]
        raise RuntimeError(f"open3d could not write {out}")
    return out
