"""Dataset store: round trip, return-to-go, statistics, fingerprint, crash safety and input checks."""

import h5py
import numpy as np
import pytest

from irvs_ros.data import store
from irvs_ros.data.store import STATS_KEYS, Dataset, DatasetError, DatasetWriter
from irvs_ros.runtime.spec import NormStats, ObsSpec

SPEC = ObsSpec(state_dim=3).to_dict()


def _episodes(seed=0):
    rng = np.random.default_rng(seed)
    return [dict(state=rng.normal(size=(t, 3)), action=rng.uniform(-1, 1, (t, 2)), reward=rng.normal(size=t),
                 success=bool(i % 2), info={"i": i}) for i, t in enumerate((4, 1, 7))]


def _write(path, episodes, meta=None, spec=SPEC, action_dim=2):
    with DatasetWriter(path, obs_spec=spec, action_dim=action_dim, meta=meta) as w:
        for ep in episodes:
            w.add_episode(**ep)
    return Dataset.open(path)


def test_round_trip_arrays_stats_and_meta(tmp_path):
    eps = _episodes()
    meta = {"env": "particle", "env_kwargs": {"n_dim": 2}, "action_limits": {"low": [-1, -1], "high": [1, 1]}}
    ds = _write(tmp_path / "d.h5", eps, meta=meta)
    assert (ds.num_episodes, ds.num_steps, ds.action_dim) == (3, 12, 2)
    assert ds.obs_spec["state_dim"] == 3 and ObsSpec.from_dict(ds.obs_spec) == ObsSpec(3)
    assert ds.meta["env_kwargs"] == {"n_dim": 2} and "created" in ds.meta
    np.testing.assert_array_equal(ds.episode_ends, [4, 5, 12])
    np.testing.assert_array_equal(ds.success, [False, True, False])
    arrays = ds.arrays()
    assert set(arrays) == {"state", "action", "reward", "return", "episode_index"}
    for key in ("state", "action", "reward"):
        assert arrays[key].dtype == np.float32
        np.testing.assert_allclose(arrays[key], np.concatenate([e[key] for e in eps]), rtol=1e-6)
    np.testing.assert_array_equal(arrays["episode_index"], [0] * 4 + [1] + [2] * 7)
    assert set(ds.arrays(["action"])) == {"action"}
    ep2 = ds.episode(2)
    np.testing.assert_allclose(ep2["action"], eps[2]["action"], rtol=1e-6)
    assert ep2["info"] == {"i": 2} and ds.episode_info() == [{"i": 0}, {"i": 1}, {"i": 2}]

    # Statistics: exactly the NormStats fields, equal to numpy over all steps.
    assert set(ds.stats) == set(STATS_KEYS)
    states = np.concatenate([e["state"] for e in eps])
    np.testing.assert_allclose(ds.stats["state_mean"], states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["state_std"], states.std(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["action_min"], arrays["action"].min(0))
    np.testing.assert_allclose(ds.stats["action_max"], arrays["action"].max(0))
    assert ds.stats["return_min"] == pytest.approx(arrays["return"].min())
    assert ds.stats["return_max"] == pytest.approx(arrays["return"].max())
    NormStats.from_dict(ds.stats)  # loads into the shared spec type
    with pytest.raises(DatasetError, match="no array.*'bogus'"):
        ds.arrays(["bogus"])


def test_return_to_go_is_the_average_future_reward(tmp_path):
    eps = [dict(state=np.zeros((4, 3)), action=np.zeros((4, 2)), reward=[1.0, 0.0, 0.0, 3.0], success=True),
           dict(state=np.zeros((2, 3)), action=np.zeros((2, 2)), reward=[-2.0, 4.0], success=False)]
    ds = _write(tmp_path / "g.h5", eps)
    np.testing.assert_allclose(ds.arrays(["return"])["return"], [1.0, 1.0, 1.5, 3.0, 1.0, 4.0])
    assert (ds.stats["return_min"], ds.stats["return_max"]) == (1.0, 4.0)


def test_fingerprint_is_stable_and_content_sensitive(tmp_path):
    eps = _episodes()
    a = _write(tmp_path / "a.h5", eps, meta={"note": "first"})
    b = _write(tmp_path / "b.h5", eps, meta={"note": "second"})  # meta is not content
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    changed = [dict(e) for e in eps]
    changed[1] = dict(changed[1], action=changed[1]["action"] + 1e-3)
    assert _write(tmp_path / "c.h5", changed).fingerprint != a.fingerprint
    relabelled = [dict(e) for e in eps]
    relabelled[0] = dict(relabelled[0], success=True)
    assert _write(tmp_path / "d.h5", relabelled).fingerprint != a.fingerprint
    a.verify()
    with h5py.File(tmp_path / "a.h5", "r+") as f:  # tamper with one stored value
        f["steps/reward"][3] = 42.0
    with pytest.raises(DatasetError, match="does not match its fingerprint"):
        Dataset.open(tmp_path / "a.h5").verify()


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        Dataset.open(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        Dataset.open(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="not an irvs_ros.dataset file"):
        Dataset.open(tmp_path / "other.h5")
    # A truncated copy of a good file is also rejected clearly.
    good = tmp_path / "good.h5"
    _write(good, _episodes())
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(DatasetError):
        Dataset.open(cut)
    # Inconsistent content: an array shorter than the episodes say.
    with h5py.File(good, "r+") as f:
        f["steps/action"].resize(5, axis=0)
    with pytest.raises(DatasetError, match="inconsistent"):
        Dataset.open(good)


def test_interrupted_writes_never_look_complete(tmp_path):
    path = tmp_path / "d.h5"
    first = _write(path, _episodes(0))
    # An exception inside the writer leaves the previous file untouched and no partial file behind.
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(path, obs_spec=SPEC, action_dim=2) as w:
            w.add_episode(**_episodes(1)[0])
            raise RuntimeError("boom")
    assert Dataset.open(path).fingerprint == first.fingerprint
    assert not (tmp_path / "d.h5.partial").exists()
    # A writer that never closes (a killed process) leaves only the .partial file, which open() names.
    crashed = tmp_path / "crashed.h5"
    w = DatasetWriter(crashed, obs_spec=SPEC, action_dim=2)
    w.add_episode(**_episodes(1)[0])
    w._file.flush()
    with pytest.raises(FileNotFoundError, match="crashed.h5.partial exists"):
        Dataset.open(crashed)
    with pytest.raises(DatasetError, match="not closed properly"):
        Dataset.open(tmp_path / "crashed.h5.partial")
    w.abort()
    # Closing without any episode is an error, not an empty dataset.
    with pytest.raises(DatasetError, match="no episodes"):
        with DatasetWriter(tmp_path / "empty.h5", obs_spec=SPEC, action_dim=2):
            pass
    assert not (tmp_path / "empty.h5").exists()


def test_bad_episodes_are_rejected(tmp_path):
    w = DatasetWriter(tmp_path / "d.h5", obs_spec=SPEC, action_dim=2)
    good = dict(state=np.zeros((3, 3)), action=np.zeros((3, 2)), reward=np.zeros(3), success=True)
    cases = [
        (dict(action=np.zeros((3, 4))), r"action has shape \(3, 4\), expected \(T, 2\)"),
        (dict(reward=np.zeros(2)), r"reward has shape \(2,\), expected \(3,\)"),
        (dict(state=np.zeros((3, 2))), r"state has shape \(3, 2\), expected \(3, 3\)"),
        (dict(state=None), "state of shape"),
        (dict(action=np.full((3, 2), np.nan)), "action contains NaN"),
        (dict(reward=[0.0, np.inf, 0.0]), "reward contains NaN or inf"),
        (dict(success=1.0), "success must be a bool"),
        (dict(image=np.zeros((3, 4, 4, 3), np.uint8)), "no images"),
        (dict(info={"x": object()}), "JSON"),
        (dict(action=np.zeros((0, 2)), reward=np.zeros(0), state=np.zeros((0, 3))), "at least one step"),
    ]
    for change, message in cases:
        with pytest.raises(DatasetError, match=message):
            w.add_episode(**{**good, **change})
    assert w.num_episodes == 0  # nothing half-written
    w.add_episode(**good)
    w.close()
    assert Dataset.open(tmp_path / "d.h5").num_steps == 3
    with pytest.raises(DatasetError, match="obs_spec"):
        DatasetWriter(tmp_path / "e.h5", obs_spec={"state_dim": 0}, action_dim=2)
    with pytest.raises(DatasetError, match="action_dim"):
        DatasetWriter(tmp_path / "e.h5", obs_spec=SPEC, action_dim=0)


def test_image_dataset_is_chunked_per_step_block(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "_FLUSH_BYTES", 3000)  # several buffered blocks, as with real image datasets
    spec = ObsSpec(state_dim=2, image_shape=(9, 12, 3)).to_dict()
    rng = np.random.default_rng(0)
    eps = [dict(state=rng.normal(size=(5, 2)), image=rng.integers(0, 256, (5, 9, 12, 3), dtype=np.uint8),
                action=rng.normal(size=(5, 2)), reward=np.ones(5), success=True) for _ in range(3)]
    path = tmp_path / "img.h5"
    with DatasetWriter(path, obs_spec=spec, action_dim=2, image_chunk=4) as w:
        for ep in eps:
            w.add_episode(**ep)
        with pytest.raises(DatasetError, match=r"image has shape .* expected \(5, 9, 12, 3\) uint8"):
            w.add_episode(**{**eps[0], "image": eps[0]["image"].astype(np.float32)})
    ds = Dataset.open(path)
    np.testing.assert_array_equal(ds.arrays(["image"])["image"], np.concatenate([e["image"] for e in eps]))
    assert ds.obs_spec["image_shape"] == [9, 12, 3]
    with h5py.File(path, "r") as f:
        assert f["steps/image"].chunks == (4, 9, 12, 3) and f["steps/image"].compression == "lzf"
    ds.verify()
