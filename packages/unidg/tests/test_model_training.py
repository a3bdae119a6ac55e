"""The unified network, the raw-sample renderer and training through slimkit.train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slimkit.errors import BadInputError
from slimkit.io import save_model
from unidg.api import attach, detach, example, group
from unidg.config import ClusterConfig
from unidg.model import NetConfig, UnifiedNet
from unidg.render import SAMPLE_RATE, body_crop, face_crop, voice_patch, voice_wave
from unidg.synth import SynthConfig
from unidg.tables import network_table
from unidg.training import CharacterSamples, IdentityHeads, _Trainable, embed_tracks, fit, unidg_loss


def test_render_shapes_and_determinism() -> None:
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert face_crop(3, rng()).shape == (3, 32, 32) and body_crop(3, 1, rng()).shape == (3, 32, 32)
    assert voice_patch(3, rng()).shape == (1, 32, 32)
    assert np.array_equal(face_crop(3, rng()), face_crop(3, rng()))
    assert not np.array_equal(body_crop(3, 0, rng()), body_crop(3, 1, rng()))  # outfits differ


def test_voice_pitch_is_the_speakers() -> None:
    # the spectrum's lowest strong peak differs between speakers and is stable across utterances
    def f0(identity: int, seed: int) -> float:
        wave = voice_wave(identity, np.random.default_rng(seed), seconds=1.0)
        spec = np.abs(np.fft.rfft(wave))
        freqs = np.fft.rfftfreq(wave.size, 1 / SAMPLE_RATE)
        band = (freqs > 60) & (freqs < 300)
        return float(freqs[band][np.argmax(spec[band] * (spec[band] > 0.3 * spec[band].max()) / freqs[band])])

    assert abs(f0(1, 0) - f0(1, 1)) < 15
    assert {round(f0(i, 0) / 20) for i in range(6)}.__len__() >= 3


def test_unified_net_modalities() -> None:
    torch.manual_seed(0)
    net = UnifiedNet(NetConfig(dim=32, depth=1, heads=2, embed=16))
    face, voice = torch.rand(4, 3, 32, 32), torch.rand(4, 1, 32, 32)
    z_face, z_body, z_voice = net(face, 0), net(face, 1), net(voice, 2)
    assert z_face.shape == (4, 16) and torch.allclose(z_face.norm(dim=1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(z_face, z_body)  # modality embedding and head make the same pixels differ
    assert z_voice.shape == (4, 16)
    with pytest.raises(BadInputError, match="modality"):
        net(face, 3)


def test_loss_reaches_every_modality() -> None:
    torch.manual_seed(0)
    net = UnifiedNet(NetConfig(dim=32, depth=1, heads=2, embed=16))
    data = CharacterSamples(4, 16, seed=0)
    batch = [torch.stack(t) for t in zip(*[data[i] for i in range(16)], strict=True)]
    loss, parts = unidg_loss()(_Trainable(net, IdentityHeads(16, 4)), batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"identity", "cross_modal"}
    loss.backward()
    for m in range(3):  # each modality's tokenizer, embedding row and head gets a gradient
        assert net.patchify[m].weight.grad is not None and net.patchify[m].weight.grad.abs().sum() > 0
        assert net.heads[m][0].weight.grad is not None and net.heads[m][0].weight.grad.abs().sum() > 0
        assert net.modality.weight.grad is not None and net.modality.weight.grad[m].abs().sum() > 0


@pytest.mark.slow
def test_training_through_slimkit_lowers_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UnifiedNet(NetConfig(dim=32, depth=1, heads=2, embed=16))
    data = CharacterSamples(4, 64, seed=0)
    res = fit(net, data, tmp_path / "run", steps=30, batch_size=16, lr=3e-3, progress=False)
    assert res.steps == 30 and np.isfinite(res.final_loss)
    assert (tmp_path / "run" / "checkpoints" / "final").is_dir()
    assert np.mean([m["loss"] for m in res.metrics[-3:]]) < np.mean([m["loss"] for m in res.metrics[:3]])


def test_character_samples_open_set_identities() -> None:
    data = CharacterSamples(3, 6, seed=0, first_identity=1000)
    face, _, _, label = data[4]
    assert int(label) == 4 % 3  # the class index the heads see
    rng = np.random.default_rng([0, 4, 31])
    rng.integers(4)  # the outfit draw comes first
    assert np.array_equal(face.numpy(), face_crop(1001, rng))  # the rendered character is 1000 + label
    with pytest.raises(BadInputError, match="first_identity"):
        CharacterSamples(3, 6, first_identity=-1)


def test_network_table_scores_trained_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UnifiedNet(NetConfig(dim=16, depth=1, heads=2, embed=16))
    save_model(tmp_path / "m", net, net.config, {"steps": 0, "identities": 3, "first_identity": 1000})
    small = SynthConfig(identities=3, extras=1, duration=60.0, dim=16)
    res = network_table([5], [tmp_path / "m"], synth=small)
    assert len(res["rows"]) == 2 and len(res["markdown"].splitlines()) == 4
    name = next(r for r in res["rows"] if r.startswith("UnifiedNet"))
    assert "characters 1000-1002, 0 steps" in name
    for row in res["rows"].values():
        assert 0 < row["fused.bcubed_f"][0] <= 1 and 0 <= row["timeline_iou"][0] <= 1


def test_embed_tracks_pools_unit_features(video: Any) -> None:
    torch.manual_seed(0)
    net = UnifiedNet(NetConfig(dim=32, depth=1, heads=2, embed=16))
    sub = video.tracks[:12]
    feats = embed_tracks(net, sub, frames=2)
    assert feats.shape == (12, 16) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    assert np.array_equal(feats, embed_tracks(net, sub, frames=2))
    odd = [t for t in video.tracks if t.modality == "body" and t.scene % 2 == 1][:3]  # outfit scene // 2 vs scene // 1
    mixed = [*sub, *odd]
    base, every_scene = embed_tracks(net, mixed, frames=2), embed_tracks(net, mixed, frames=2, outfit_every=1)
    assert odd and not np.allclose(every_scene[12:], base[12:])  # the generator's outfit_every decides the outfit
    assert np.array_equal(every_scene[:12], base[:12])  # scene 0: the same outfit either way


def test_attach_group_detach() -> None:
    net, cfg = example()
    x = net.example_input()
    before = net(x)
    assert attach(net, ClusterConfig(k=3, threshold=0.2)) is net
    assert torch.equal(net(x), before)
    res = group(net, torch.rand(12, 3, 32, 32))
    assert res.labels.shape == (12,)
    assert detach(net) is net and "unidg_grouping" not in dict(net.named_modules())
    with pytest.raises(BadInputError, match="no grouping head"):
        group(net, x)
    with pytest.raises(BadInputError, match="ClusterConfig"):
        attach(net, cfg.__dict__)  # type: ignore[arg-type]
