"""Training options for pixel policies: image-only observation from a dataset that also stores states, image plus
named state entries (state_keys), and the random-shift image augmentation (reproducible, edge-replicated, content
actually moves)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from irvs_ros.data.store import DatasetWriter
from irvs_ros.learn.aux_state import aux_targets
from irvs_ros.learn.batches import image_and_state, image_only, random_shift, state_only
from irvs_ros.learn.checkpoint import load_for_export
from irvs_ros.learn.config_schema import ConfigError
from irvs_ros.learn.export import export_policy
from irvs_ros.learn.train_config import config_from_dict
from irvs_ros.learn.trainer import TrainError, train
from irvs_ros.runtime.policy_file import load_policy
from irvs_ros.runtime.spec import NormStats, ObsSpec, PolicySpec, SpecError, observation_adapter

H, W = 16, 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Images of a bright square whose column sets the action; the state (3,) is noise the policy must not need."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "pixels.h5"
    with DatasetWriter(str(path), obs_spec=ObsSpec(3, (H, W, 3)).to_dict(), action_dim=1,
                       meta={"action_limits": {"low": [-1.0], "high": [1.0]}}) as writer:
        for _ in range(6):
            cols = rng.integers(2, W - 6, size=8)
            images = np.zeros((8, H, W, 3), np.uint8)
            for i, c in enumerate(cols):
                images[i, 6:10, c:c + 4] = 255
            actions = ((cols - 2) / (W - 8) * 2 - 1).astype(np.float32)[:, None]
            writer.add_episode(state=rng.normal(size=(8, 3)).astype(np.float32), image=images, action=actions,
                               reward=np.ones(8, np.float32), success=True)
    return path


def test_image_observation_trains_a_policy_that_needs_no_state(dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = config_from_dict({"dataset": str(dataset), "algorithm": "ebm_dfo", "observation": "image",
                            "image_shift": 2, "steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6,
                            "params": {"width": 16, "depth": 2, "num_counter_examples": 4, "dfo_samples": 32,
                                       "image_channels": [4, 8], "image_stem_stride": 2}})
    result = train(cfg, tmp_path / "run")
    algo, config, fingerprint = load_for_export(result.run_dir)
    assert algo.spec.obs.state_dim == 0 and algo.spec.obs.image_shape == (H, W, 3)
    assert config["observation"] == "image" and config["image_shift"] == 2
    policy = load_policy(export_policy(algo, tmp_path / "p.onnx", train_config=config,
                                       dataset_fingerprint=fingerprint))
    action = policy.act({"image": np.zeros((2, H, W, 3), np.uint8)}, np.random.default_rng(0))
    assert action.shape == (2, 1) and np.isfinite(action).all()


def test_image_only_needs_images_and_drops_state_statistics():
    stats = NormStats((1.0, 2.0), (1.0, 1.0), (-1.0,), (1.0,), -0.5, 0.5)
    spec = PolicySpec(ObsSpec(2, (H, W, 3)), 1, stats, (-1.1,), (1.1,), 5.0)
    only = image_only(spec)
    assert only.obs.state_dim == 0 and only.stats.state_mean == () and only.stats.return_min == -0.5
    assert only.action_low == spec.action_low
    with pytest.raises(SpecError, match="needs a dataset with images"):
        image_only(PolicySpec(ObsSpec(2), 1, stats, (-1.1,), (1.1,), 5.0))
    with pytest.raises(ConfigError, match="image_shift"):
        config_from_dict({"dataset": "d.h5", "algorithm": "mse", "image_shift": -1})
    with pytest.raises(ConfigError, match="observation"):
        config_from_dict({"dataset": "d.h5", "algorithm": "mse", "observation": "depth"})
    state = state_only(spec)
    assert state.obs.state_dim == 2 and state.obs.image_shape is None and state.stats == spec.stats
    with pytest.raises(SpecError, match="needs a dataset with a state"):
        state_only(image_only(spec))


def test_state_observation_trains_a_state_policy_from_a_pixel_dataset(dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = config_from_dict({"dataset": str(dataset), "algorithm": "mse", "observation": "state", "steps": 2,
                            "batch_size": 8, "log_every": 1, "checkpoint_every": 2,
                            "params": {"width": 8, "depth": 2}})
    algo, _, _ = load_for_export(train(cfg, tmp_path / "run").run_dir)
    assert algo.spec.obs.state_dim == 3 and algo.spec.obs.image_shape is None
    assert algo.predict({"state": np.zeros((2, 3), np.float32)}, np.random.default_rng(0)).shape == (2, 1)


def test_random_shift_moves_content_reproducibly_and_replicates_edges():
    image = torch.zeros(64, H, W, 3, dtype=torch.uint8)
    image[:, 6:10, 8:12] = 200
    a = random_shift(image, 3, torch.Generator().manual_seed(5))
    b = random_shift(image, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == image.shape
    centres = [tuple(torch.nonzero(x[..., 0]).float().mean(0).tolist()) for x in a]
    assert len(set(centres)) > 10  # many different offsets
    for x in a:  # the square keeps its size: only shifted, by at most 3 px per axis
        rows, cols = torch.nonzero(x[..., 0], as_tuple=True)
        assert rows.numel() == 16 and abs(rows.float().mean() - 7.5) <= 3 and abs(cols.float().mean() - 9.5) <= 3
    edge = torch.arange(W, dtype=torch.uint8).repeat(1, H, 1)[..., None].expand(1, H, W, 3).contiguous()
    shifted = random_shift(edge, 2, torch.Generator().manual_seed(0))
    assert shifted.min() >= 0 and shifted.max() <= W - 1  # replicated borders add no new values
    assert torch.equal(random_shift(image, 0, torch.Generator()), image)


@pytest.fixture(scope="module")
def hinted_dataset(tmp_path_factory) -> Path:
    """Blank images and a state laid out as noise (2,), hint (1,): the action is the hint."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "hinted.h5"
    meta = {"action_limits": {"low": [-1.0], "high": [1.0]}, "state_layout": [["noise", 2], ["hint", 1]]}
    with DatasetWriter(str(path), obs_spec=ObsSpec(3, (H, W, 3)).to_dict(), action_dim=1, meta=meta) as writer:
        for _ in range(8):
            state = np.concatenate([rng.normal(5.0, 3.0, size=(16, 2)), rng.uniform(-1, 1, size=(16, 1))], 1)
            writer.add_episode(state=state.astype(np.float32), image=np.zeros((16, H, W, 3), np.uint8),
                               action=state[:, 2:].astype(np.float32), reward=np.ones(16, np.float32), success=True)
    return path


def test_state_keys_train_on_the_image_plus_the_named_state_entries(hinted_dataset, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = config_from_dict({"dataset": str(hinted_dataset), "algorithm": "mse", "observation": "image",
                            "state_keys": ["hint"], "steps": 300, "batch_size": 32, "lr": 3e-3,
                            "log_every": 100, "checkpoint_every": 300,
                            "params": {"width": 32, "depth": 2, "image_channels": [4], "image_stem_stride": 2}})
    result = train(cfg, tmp_path / "run")
    algo, config, fingerprint = load_for_export(result.run_dir)
    obs = algo.spec.obs
    assert obs.state_dim == 1 and obs.state_keys == ("hint",) and config["state_keys"] == ["hint"]
    assert abs(algo.spec.stats.state_mean[0]) < 0.3  # the hint's statistics, not the noise's (mean 5)
    policy = load_policy(export_policy(algo, tmp_path / "p.onnx", train_config=config,
                                       dataset_fingerprint=fingerprint))
    # An environment's observation carries the whole state; the adapter picks the policy's entries from it.
    adapt = observation_adapter(policy.spec.obs, (("noise", 2), ("hint", 1)))
    rng = np.random.default_rng(2)
    hint = rng.uniform(-0.9, 0.9, size=(64, 1)).astype(np.float32)
    full = np.concatenate([rng.normal(5.0, 3.0, size=(64, 2)).astype(np.float32), hint], 1)
    action = policy.act(adapt({"state": full, "image": np.zeros((64, H, W, 3), np.uint8)}), rng)
    assert np.abs(action - hint).mean() < 0.15, np.abs(action - hint).mean()  # it follows the hint it was given


def test_state_keys_errors():
    stats = NormStats((1.0, 2.0, 3.0), (1.0, 1.0, 1.0), (-1.0,), (1.0,))
    spec = PolicySpec(ObsSpec(3, (H, W, 3)), 1, stats, (-1.1,), (1.1,), 5.0)
    with_hint, cols = image_and_state(spec, ("hint",), (("noise", 2), ("hint", 1)))
    assert cols.tolist() == [2] and with_hint.stats.state_mean == (3.0,)
    with pytest.raises(SpecError, match="not a non-empty subset"):
        image_and_state(spec, ("speed",), (("noise", 2), ("hint", 1)))
    with pytest.raises(SpecError, match="does not add up"):
        image_and_state(spec, ("hint",), (("noise", 1), ("hint", 1)))
    with pytest.raises(SpecError, match="layout"):
        image_and_state(spec, ("hint",), None)
    with pytest.raises(SpecError, match="no named layout"):
        observation_adapter(with_hint.obs, None)
    with pytest.raises(ConfigError, match="only with observation 'image'"):
        config_from_dict({"dataset": "d.h5", "algorithm": "mse", "state_keys": ["hint"]})


@pytest.fixture(scope="module")
def located_dataset(tmp_path_factory) -> Path:
    """Images of a bright square at a random place; the state records where it is and an angle (layout
    position (2,), turn_yaw (1,)); the action is unrelated noise. Nothing but the auxiliary loss ties the
    encoder's features to the square's position."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("data") / "located.h5"
    meta = {"action_limits": {"low": [-1.0], "high": [1.0]}, "state_layout": [["position", 2], ["turn_yaw", 1]]}
    with DatasetWriter(str(path), obs_spec=ObsSpec(3, (H, W, 3)).to_dict(), action_dim=1, meta=meta) as writer:
        for _ in range(8):
            rows, cols = rng.integers(0, H - 4, size=16), rng.integers(0, W - 4, size=16)
            images = np.zeros((16, H, W, 3), np.uint8)
            for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
                images[i, r:r + 4, c:c + 4] = 255
            state = np.stack([rows, cols, rng.uniform(-np.pi, np.pi, 16)], 1).astype(np.float32)
            writer.add_episode(state=state, image=images, action=rng.uniform(-1, 1, (16, 1)).astype(np.float32),
                               reward=np.ones(16, np.float32), success=True)
    return path


def test_aux_targets_turn_yaws_into_cos_sin():
    state = np.array([[1.0, 2.0, np.pi], [3.0, 4.0, -np.pi / 2]])
    out = aux_targets(state, (("position", 2), ("turn_yaw", 1)))
    assert out.dtype == np.float32 and np.allclose(out, [[1, 2, -1, 0], [3, 4, 0, -1]], atol=1e-6)
    assert np.array_equal(aux_targets(state, None), state.astype(np.float32))


def _aux_config(path: Path, steps: int, weight: float) -> dict:
    return {"dataset": str(path), "algorithm": "ebm_dfo", "observation": "image", "aux_state_weight": weight,
            "steps": steps, "batch_size": 32, "lr": 3e-3, "log_every": 50, "checkpoint_every": steps, "seed": 4,
            "params": {"width": 16, "depth": 2, "num_counter_examples": 4, "dfo_samples": 32,
                       "image_channels": [8, 8]}}


def test_aux_state_loss_teaches_the_encoder_where_things_are_and_stays_out_of_the_policy(located_dataset, tmp_path):
    torch.set_num_threads(1)
    result = train(config_from_dict(_aux_config(located_dataset, 300, 1.0)), tmp_path / "aux")
    rows = [r for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]
    # Standardized targets: 1.0 is predicting the mean; the position is learnt, the random angle is not.
    assert rows[0]["aux_state_mse"] > 0.8 and rows[-1]["aux_state_mse"] < 0.6, [r["aux_state_mse"] for r in rows]
    assert all(r["loss"] > r["info_nce"] for r in rows)
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["extra"]["aux_head"]["linear.weight"].shape == (4, 16)  # position (2) + cos, sin; 16 keypoints
    algo, config, fingerprint = load_for_export(result.run_dir)
    assert config["aux_state_weight"] == 1.0 and not any(k.startswith("aux") for k in algo.state_dict())
    policy = load_policy(export_policy(algo, tmp_path / "p.onnx", train_config=config,
                                       dataset_fingerprint=fingerprint))
    assert policy.spec.obs.state_dim == 0  # the policy sees the image alone
    action = policy.act({"image": np.zeros((2, H, W, 3), np.uint8)}, np.random.default_rng(0))
    assert action.shape == (2, 1) and np.isfinite(action).all()


@pytest.mark.parametrize("algorithm", ["mse", "mdn"])
def test_explicit_pixel_policies_train_with_the_aux_state_loss_too(algorithm, located_dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = {**_aux_config(located_dataset, 4, 1.0), "algorithm": algorithm,
           "params": {"width": 16, "depth": 2, "image_channels": [8, 8]}}
    result = train(config_from_dict(cfg), tmp_path / algorithm)
    rows = [r for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]
    assert rows and all(math.isfinite(r["aux_state_mse"]) and r["aux_state_mse"] > 0 for r in rows)
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["extra"]["aux_head"]["linear.weight"].shape == (4, 16)
    algo, _, _ = load_for_export(result.run_dir)
    assert not any(k.startswith("aux") for k in algo.state_dict())


def test_aux_state_loss_resumes_bit_identically_and_needs_a_state(located_dataset, dataset, tmp_path):
    torch.set_num_threads(1)
    straight = train(config_from_dict(_aux_config(located_dataset, 6, 0.5)), tmp_path / "straight")
    train(config_from_dict(_aux_config(located_dataset, 3, 0.5)), tmp_path / "split")
    split = train(config_from_dict(_aux_config(located_dataset, 6, 0.5)), tmp_path / "split", resume=True)
    a, b = (torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=False) for r in (straight, split))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["extra"]["aux_head"]:
        assert torch.equal(a["extra"]["aux_head"][key], b["extra"]["aux_head"][key]), key
    with pytest.raises(TrainError, match="aux_state_weight was"):
        train(config_from_dict(_aux_config(located_dataset, 9, 0.0)), tmp_path / "split", resume=True)
    with pytest.raises(ConfigError, match="aux_state_weight"):
        config_from_dict(_aux_config(located_dataset, 1, -1.0))
    imageless = tmp_path / "images_only.h5"
    with DatasetWriter(str(imageless), obs_spec=ObsSpec(0, (H, W, 3)).to_dict(), action_dim=1,
                       meta={"action_limits": {"low": [-1.0], "high": [1.0]}}) as writer:
        writer.add_episode(image=np.zeros((4, H, W, 3), np.uint8), action=np.zeros((4, 1), np.float32),
                           reward=np.ones(4, np.float32), success=True)
    with pytest.raises(TrainError, match="records no state"):
        train(config_from_dict({**_aux_config(imageless, 1, 1.0)}), tmp_path / "none")
