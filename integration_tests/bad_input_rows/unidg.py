"""Bad inputs for the ``unidg`` console script: broken video folders, features, cluster files, ranges, outputs.

The video folders are real ones written by :func:`unidg.tracks.save_video` from a short
synthetic video, then damaged one way each (features whose count differs from the tracks, a
NaN feature, a track ending before it starts, an unknown modality). Every row fails during
validation, before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bad_input_harness import BadInput, file_at, output_of

U = "unidg"


def _video(damage: Callable[[dict[str, Any]], None] | None = None, features: str | None = None,
           identity: bool = True) -> Callable[[Path], None]:  # fmt: skip
    """``{tmp}/v``: a 60-second synthetic video folder, its tracks or features damaged."""

    def setup(tmp: Path) -> None:
        import numpy as np

        from unidg.synth import SynthConfig, simulate
        from unidg.tracks import save_video

        video = simulate(SynthConfig(identities=3, extras=0, duration=60.0, dim=8), seed=0)
        save_video(tmp / "v", video.tracks, video.features, video.duration)
        path = tmp / "v" / "tracks.json"
        data = json.loads(path.read_text())
        if damage is not None:
            damage(data)
        if not identity:
            for t in data["tracks"]:
                t["identity"] = -1
        path.write_text(json.dumps(data))
        if features == "short":
            np.save(tmp / "v" / "features.npy", video.features[:-1])
        elif features == "nan":
            bad = video.features.copy()
            bad[2, 3] = np.nan
            np.save(tmp / "v" / "features.npy", bad)

    return setup


def _ends_early(data: dict[str, Any]) -> None:
    data["tracks"][1]["end"] = data["tracks"][1]["start"] - 1.0


def _lips(data: dict[str, Any]) -> None:
    data["tracks"][0]["modality"] = "lips"


def _clusters(labels: dict[str, Any]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _video()(tmp)
        (tmp / "c.json").write_text(json.dumps({"labels": labels}))

    return setup


V = "{tmp}/v"
CLUSTER = [U, "cluster", V, "-o", "{tmp}/c.json"]

ROWS: list[BadInput] = [
    BadInput("no-subcommand", [U], expect="required"),
    # ---------------------------------------------------------------- cluster: broken inputs
    BadInput("cluster-feature-count-differs", CLUSTER, expect="feature rows but", setup=_video(features="short")),
    BadInput("cluster-nan-features", CLUSTER, expect="not finite", setup=_video(features="nan")),
    BadInput("cluster-track-ends-before-start", CLUSTER, expect="before it starts", setup=_video(_ends_early)),
    BadInput("cluster-unknown-modality", CLUSTER, expect="unknown modality 'lips'", setup=_video(_lips)),
    BadInput("cluster-video-missing", CLUSTER, expect="video folder not found"),
    BadInput("cluster-video-is-file", CLUSTER, expect="is a file, expected a folder", setup=file_at("v")),
    BadInput("cluster-tracks-not-json", CLUSTER, expect="tracks.json",
             setup=lambda tmp: (_video()(tmp), (tmp / "v" / "tracks.json").write_text("{not json"))),
    BadInput("cluster-features-not-npy", [*CLUSTER, "--features", "{tmp}/f.txt"], expect=".npy",
             setup=lambda tmp: (_video()(tmp), (tmp / "f.txt").write_text("1 2 3"))),
    BadInput("cluster-kmeans-without-count", [*CLUSTER, "--method", "kmeans"], expect="needs --clusters", setup=_video()),
    BadInput("cluster-k-zero", [*CLUSTER, "--k", "0"], expect="--k must be >= 1", setup=_video()),
    BadInput("cluster-threshold-out-of-range", [*CLUSTER, "--threshold", "2"], expect="threshold must be in",
             setup=_video()),
    BadInput("cluster-unknown-method", [*CLUSTER, "--method", "dbscan"], expect="invalid choice", setup=_video()),
    BadInput("cluster-learned-edges-without-model", [*CLUSTER, "--edge-score", "learned"], expect="needs --edge-model",
             setup=_video()),
    BadInput("cluster-edge-model-missing", [*CLUSTER, "--edge-score", "learned", "--edge-model", "{tmp}/nope"],
             expect="nope", setup=_video()),
    BadInput("cluster-output-suffix", [U, "cluster", V, "-o", "{tmp}/c.txt"], expect="use one of .json", setup=_video()),
    # ---------------------------------------------------------------- associate / eval / timeline
    BadInput("associate-clusters-missing", [U, "associate", V, "--clusters", "{tmp}/nope.json", "-o", "{tmp}/a.json"],
             expect="clusters file not found", setup=_video()),
    BadInput("associate-clusters-wrong-count", [U, "associate", V, "--clusters", "{tmp}/c.json", "-o", "{tmp}/a.json"],
             expect="labels do not match", setup=_clusters({"face": [0, 1]})),
    BadInput("associate-clusters-unknown-modality", [U, "associate", V, "--clusters", "{tmp}/c.json", "-o", "{tmp}/a.json"],
             expect="unknown modality", setup=_clusters({"lips": [0]})),
    BadInput("eval-nothing-to-score", [U, "eval", V], expect="give --clusters", setup=_video()),
    BadInput("eval-no-ground-truth", [U, "eval", V, "--clusters", "{tmp}/c.json"], expect="ground-truth",
             setup=_video(identity=False)),
    BadInput("timeline-not-png", [U, "timeline", V, "--association", "{tmp}/a.json", "-o", "{tmp}/t.jpg"],
             expect="use one of .png", setup=_video()),
    # ---------------------------------------------------------------- simulate / embed / train / bench / table / demo
    BadInput("simulate-one-identity", [U, "simulate", "--identities", "1", "-o", "{tmp}/s"], expect="identities must be >= 2"),
    BadInput("simulate-negative-duration", [U, "simulate", "--duration", "-5", "-o", "{tmp}/s"], expect="duration must be > 0"),
    BadInput("simulate-output-is-file", [U, "simulate", "-o", "{tmp}/s"], expect="is a file, expected a folder",
             setup=file_at("s")),
    BadInput("embed-model-missing", [U, "embed", V, "--model", "{tmp}/m", "-o", "{tmp}/f.npy"],
             expect="model folder not found", setup=_video()),
    BadInput("train-zero-steps", [U, "train", "--steps", "0", "-o", "{tmp}/r"], expect="--steps must be >= 1"),
    BadInput("train-output-other-kind", [U, "train", "--steps", "1", "-o", "{tmp}/out"],
             expect="holds a nm-sparse train output", setup=output_of("nm-sparse train")),
    BadInput("bench-one-item", [U, "bench", "--n", "1"], expect="--n must be >= 2"),
    BadInput("table-output-is-file", [U, "table", "digits", "-o", "{tmp}/t"], expect="is a file, expected a folder",
             setup=file_at("t")),
    BadInput("demo-output-other-kind", [U, "demo", "-o", "{tmp}/out"], expect="holds a qdetr train output",
             setup=output_of("qdetr train")),
]
