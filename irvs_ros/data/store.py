"""Training dataset store: one HDF5 file per dataset, episodes concatenated along the step axis.

Layout (format "irvs_ros.dataset", version 1):
    /steps/state   (N, S) float32     only when obs_spec["state_dim"] > 0
    /steps/image   (N, H, W, 3) uint8 only when obs_spec["image_shape"] is set; chunked per block of steps, lzf
    /steps/action  (N, A) float32
    /steps/reward  (N,) float32
    /steps/return  (N,) float32       return-to-go G_t = mean(r_t, ..., r_{T-1}) within the episode
    /episodes/ends (E,) int64         exclusive end step of each episode
    /episodes/success (E,) bool
    /episodes/info (E,) JSON strings  per-episode extras (seed, goal reached, ...)
    file attributes: format, format_version, complete, obs_spec, action_dim, meta, stats (JSON), fingerprint.

A writer fills `<path>.partial` and renames it to `<path>` only on a clean close, so an interrupted write never
leaves a file that looks complete. The fingerprint is a sha256 over the stored arrays (not over `meta`, which holds
timestamps), so the same content always has the same fingerprint.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "irvs_ros.dataset"
FORMAT_VERSION = 1
STEP_KEYS = ("state", "image", "action", "reward", "return")
ARRAY_KEYS = STEP_KEYS + ("episode_index",)
STATS_KEYS = ("state_mean", "state_std", "action_min", "action_max", "return_min", "return_max")
_HASHED = STEP_KEYS + ("episode_ends", "success")
_LOWDIM_CHUNK = 4096
_FLUSH_BYTES = 32 << 20


class DatasetError(ValueError):
    """A dataset file or an episode given to the writer is not what the store expects."""


def _check_obs_spec(obs_spec: dict) -> tuple[int, tuple[int, int, int] | None]:
    """(state_dim, image_shape | None) from an ObsSpec.to_dict()-style dict; DatasetError if malformed."""
    if not isinstance(obs_spec, dict) or "state_dim" not in obs_spec:
        raise DatasetError(f"obs_spec must be a dict with 'state_dim' (ObsSpec.to_dict() format), got {obs_spec!r}")
    state_dim = obs_spec["state_dim"]
    if not isinstance(state_dim, (int, np.integer)) or state_dim < 0:
        raise DatasetError(f"obs_spec['state_dim'] must be an integer >= 0, got {state_dim!r}")
    shape = obs_spec.get("image_shape")
    if shape is not None:
        if len(shape) != 3 or int(shape[2]) != 3 or min(int(v) for v in shape) <= 0:
            raise DatasetError(f"obs_spec['image_shape'] must be [H, W, 3], got {shape!r}")
        shape = tuple(int(v) for v in shape)
    if state_dim == 0 and shape is None:
        raise DatasetError("obs_spec needs a state (state_dim > 0), an image (image_shape), or both")
    return int(state_dim), shape


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what} must be JSON-serialisable (finite numbers, str, list, dict): {exc}") from exc


def _digest_update(h: Any, array: np.ndarray) -> None:
    h.update(np.ascontiguousarray(array).tobytes())


def _fingerprint(digests: dict[str, tuple[str, list[int], str]]) -> str:
    """sha256 over the (dtype, shape, sha256 of bytes) of every stored array, in a fixed key order."""
    body = json.dumps([[k, *digests[k]] for k in _HASHED if k in digests])
    return hashlib.sha256(body.encode()).hexdigest()


@contextlib.contextmanager
def _damage_is_an_error(path: Path) -> Iterator[None]:
    """Turn h5py's low-level read failures (damaged bytes inside a readable file) into a DatasetError."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as exc:
        raise DatasetError(f"{path} is damaged: reading it failed ({type(exc).__name__}: {exc})") from exc


class DatasetWriter:
    """Write episodes to a new dataset file (a context manager; on an exception the partial file is removed).

    obs_spec: ObsSpec.to_dict() format. action_dim: A. meta: JSON dict stored as is (e.g. env, env_kwargs,
    action_limits {"low", "high"}, quality, command); "created" (UTC ISO time) is added when missing.
    An existing file at `path` is replaced only when the new one is complete.
    """

    def __init__(self, path: str | os.PathLike, *, obs_spec: dict, action_dim: int, meta: dict | None = None,
                 image_chunk: int = 16, image_compression: str | None = "lzf") -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.state_dim, self.image_shape = _check_obs_spec(obs_spec)
        if not isinstance(action_dim, (int, np.integer)) or action_dim < 1:
            raise DatasetError(f"action_dim must be a positive integer, got {action_dim!r}")
        self.action_dim = int(action_dim)
        self.meta = dict(meta or {})
        self.meta.setdefault("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        meta_json = _json(self.meta, "meta")
        image_shape = list(self.image_shape) if self.image_shape else None
        self.obs_spec = {"state_dim": self.state_dim, "image_shape": image_shape,
                         **{k: v for k, v in obs_spec.items() if k not in ("state_dim", "image_shape")}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: h5py.File | None = h5py.File(self.partial, "w")
        f = self._file
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, complete=False,
                       obs_spec=_json(self.obs_spec, "obs_spec"), action_dim=self.action_dim, meta=meta_json)
        steps = f.create_group("steps")
        lowdim = {"compression": "gzip", "compression_opts": 4}
        if self.state_dim:
            steps.create_dataset("state", (0, self.state_dim), np.float32, maxshape=(None, self.state_dim),
                                 chunks=(_LOWDIM_CHUNK, self.state_dim), **lowdim)
        if self.image_shape:
            steps.create_dataset("image", (0, *self.image_shape), np.uint8, maxshape=(None, *self.image_shape),
                                 chunks=(max(1, int(image_chunk)), *self.image_shape), compression=image_compression)
        steps.create_dataset("action", (0, self.action_dim), np.float32, maxshape=(None, self.action_dim),
                             chunks=(_LOWDIM_CHUNK, self.action_dim), **lowdim)
        for key in ("reward", "return"):
            steps.create_dataset(key, (0,), np.float32, maxshape=(None,), chunks=(_LOWDIM_CHUNK,), **lowdim)
        eps = f.create_group("episodes")
        eps.create_dataset("ends", (0,), np.int64, maxshape=(None,), chunks=(1024,))
        eps.create_dataset("success", (0,), np.bool_, maxshape=(None,), chunks=(1024,))
        eps.create_dataset("info", (0,), h5py.string_dtype("utf-8"), maxshape=(None,), chunks=(1024,))
        self._hash = {k: hashlib.sha256() for k in STEP_KEYS}
        self._broken = ""
        self._pending: dict[str, list[np.ndarray]] = {k: [] for k in STEP_KEYS}
        self._pending_bytes = 0
        self._info: list[str] = []
        self._ends: list[int] = []
        self._success: list[bool] = []
        self._num_steps = 0
        # Running statistics in float64 (parallel mean/variance merge per episode).
        self._state_mean = np.zeros(self.state_dim)
        self._state_m2 = np.zeros(self.state_dim)
        self._action_min = np.full(self.action_dim, np.inf)
        self._action_max = np.full(self.action_dim, -np.inf)
        self._return_min, self._return_max = math.inf, -math.inf

    # ------------------------------------------------------------------ writing
    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    def add_episode(self, *, action: np.ndarray, reward: np.ndarray, success: bool, state: np.ndarray | None = None,
                    image: np.ndarray | None = None, info: dict | None = None) -> int:
        """Append one episode of T steps; returns its index.

        action (T, A), reward (T,), state (T, S) (required iff state_dim > 0), image (T, H, W, 3) uint8
        (required iff the spec has an image). Values must be finite. The return-to-go is computed here.
        """
        if self._file is None:
            raise DatasetError(f"the writer for {self.path} is closed")
        if self._broken:
            raise DatasetError(f"the writer for {self.path} failed earlier ({self._broken}); start a new one")
        act = self._float_array("action", action, (None, self.action_dim))
        t = act.shape[0]
        if t < 1:
            raise DatasetError("an episode needs at least one step, got action of shape (0, ...)")
        rew64 = np.asarray(reward, dtype=np.float64)
        if rew64.shape != (t,):
            raise DatasetError(f"reward has shape {rew64.shape}, expected ({t},) to match action {act.shape}")
        rew = self._float_array("reward", rew64, (t,))
        if self.state_dim:
            if state is None:
                raise DatasetError(f"this dataset has states: state of shape ({t}, {self.state_dim}) is required")
            st = self._float_array("state", state, (t, self.state_dim))
        elif state is not None:
            raise DatasetError("this dataset has no state (obs_spec state_dim is 0) but a state was given")
        if self.image_shape:
            if image is None:
                dims = ", ".join(map(str, self.image_shape))
                raise DatasetError(f"this dataset has images: image of shape ({t}, {dims}) uint8 is required")
            img = np.asarray(image)
            if img.shape != (t, *self.image_shape) or img.dtype != np.uint8:
                raise DatasetError(f"image has shape {img.shape} and dtype {img.dtype}, expected "
                                   f"({t}, {', '.join(map(str, self.image_shape))}) uint8")
        elif image is not None:
            raise DatasetError("this dataset has no images (obs_spec image_shape is None) but an image was given")
        if not isinstance(success, (bool, np.bool_)):
            raise DatasetError(f"success must be a bool, got {type(success).__name__}")
        info_json = _json(dict(info or {}), "info")
        ret = (np.cumsum(rew64[::-1])[::-1] / np.arange(t, 0, -1)).astype(np.float32)

        new = {"action": act, "reward": rew, "return": ret}
        if self.state_dim:
            new["state"] = st
        if self.image_shape:
            new["image"] = img
        idx = len(self._ends)
        for key, value in new.items():
            value = np.array(value, copy=True)  # the caller may reuse its buffers
            self._pending[key].append(value)
            self._pending_bytes += value.nbytes
            _digest_update(self._hash[key], value)
        self._info.append(info_json)
        self._ends.append(self._num_steps + t)
        self._success.append(bool(success))
        self._num_steps += t
        self._update_stats(new)
        # Buffer small episodes and write in blocks: resizing compressed datasets per episode is slow.
        if self._pending_bytes >= _FLUSH_BYTES:
            self._flush()
        return idx

    def _flush(self) -> None:
        """Append the buffered steps and episode records to the file."""
        try:
            for key, parts in self._pending.items():
                if not parts:
                    continue
                block = np.concatenate(parts)
                ds = self._file["steps"][key]
                start = ds.shape[0]
                ds.resize(start + len(block), axis=0)
                ds[start:] = block
                parts.clear()
            eps, done = self._file["episodes"], self._file["episodes/ends"].shape[0]
            for key, values in (("ends", self._ends), ("success", self._success), ("info", self._info)):
                eps[key].resize(len(values), axis=0)
                eps[key][done:] = values[done:]
        except BaseException as exc:
            # An I/O failure half-way leaves arrays of different lengths: the file can no longer be completed.
            self._broken = f"{type(exc).__name__}: {exc}"
            raise
        self._pending_bytes = 0

    def _float_array(self, name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{name} must be numeric: {exc}") from exc
        if arr.ndim != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape,
                                                                                              strict=True)):
            expected = ", ".join("T" if s is None else str(s) for s in shape)
            raise DatasetError(f"{name} has shape {arr.shape}, expected ({expected}{',' if len(shape) == 1 else ''})")
        if not np.all(np.isfinite(arr)):
            raise DatasetError(f"{name} contains NaN or inf (or values too large for float32)")
        return arr

    def _update_stats(self, new: dict[str, np.ndarray]) -> None:
        t = len(new["action"])
        n_old = self._num_steps - t
        if self.state_dim:
            s = new["state"].astype(np.float64)
            mean_b, m2_b = s.mean(axis=0), ((s - s.mean(axis=0)) ** 2).sum(axis=0)
            delta = mean_b - self._state_mean
            total = n_old + t
            self._state_mean = self._state_mean + delta * (t / total)
            self._state_m2 = self._state_m2 + m2_b + delta ** 2 * (n_old * t / total)
        self._action_min = np.minimum(self._action_min, new["action"].min(axis=0))
        self._action_max = np.maximum(self._action_max, new["action"].max(axis=0))
        self._return_min = min(self._return_min, float(new["return"].min()))
        self._return_max = max(self._return_max, float(new["return"].max()))

    def stats(self) -> dict[str, Any]:
        """Normalisation statistics of what was written so far (NormStats field names; std floored at 1e-6)."""
        if not self._ends:
            raise DatasetError("no episodes written yet: statistics are undefined")
        std = np.maximum(np.sqrt(self._state_m2 / self._num_steps), 1e-6)
        return {"state_mean": self._state_mean.tolist(), "state_std": std.tolist(),
                "action_min": self._action_min.tolist(), "action_max": self._action_max.tolist(),
                "return_min": self._return_min, "return_max": self._return_max}

    # ------------------------------------------------------------------ finishing
    def close(self) -> None:
        """Write statistics and fingerprint, then move the file into place. Idempotent."""
        if self._file is None:
            return
        if self._broken:
            self.abort()
            raise DatasetError(f"writing {self.path} failed half-way ({self._broken}); nothing was written")
        if not self._ends:
            self.abort()
            raise DatasetError(f"no episodes were added to {self.path}; nothing was written")
        try:
            self._flush()
        except BaseException:
            self.abort()
            raise
        digests = {k: ("float32" if k != "image" else "uint8", list(self._file["steps"][k].shape), h.hexdigest())
                   for k, h in self._hash.items() if k in self._file["steps"]}
        ends, success = np.asarray(self._ends, np.int64), np.asarray(self._success, np.bool_)
        for key, arr in (("episode_ends", ends), ("success", success)):
            h = hashlib.sha256()
            _digest_update(h, arr)
            digests[key] = (str(arr.dtype), list(arr.shape), h.hexdigest())
        f = self._file
        f.attrs.update(stats=_json(self.stats(), "stats"), fingerprint=_fingerprint(digests),
                       num_episodes=len(self._ends), num_steps=self._num_steps, complete=True)
        f.close()
        self._file = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Discard everything written (removes the partial file)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Dataset:
    """A complete dataset file, opened read-only. Metadata is read at `open`; arrays are read on demand."""

    def __init__(self, path: Path, attrs: dict[str, Any], ends: np.ndarray, success: np.ndarray,
                 keys: tuple[str, ...]) -> None:
        self.path = path
        self.obs_spec: dict = json.loads(attrs["obs_spec"])
        self.action_dim: int = int(attrs["action_dim"])
        self.meta: dict = json.loads(attrs["meta"])
        self.stats: dict = json.loads(attrs["stats"])
        self.fingerprint: str = str(attrs["fingerprint"])
        self.episode_ends: np.ndarray = ends
        self.success: np.ndarray = success
        self.num_episodes: int = int(len(ends))
        self.num_steps: int = int(ends[-1]) if len(ends) else 0
        self._keys = keys

    @classmethod
    def open(cls, path: str | os.PathLike) -> Dataset:
        """Open and check a dataset file. FileNotFoundError if missing; DatasetError if corrupt, unfinished,
        of another format or internally inconsistent."""
        path = Path(path)
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            hint = f" ({partial.name} exists: a write that never finished)" if partial.exists() else ""
            raise FileNotFoundError(f"no dataset at {path}{hint}")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"{path} is not a readable HDF5 file (corrupt or not a dataset): {exc}") from exc
        with _damage_is_an_error(path), f:
            attrs = dict(f.attrs)
            if attrs.get("format") != FORMAT:
                raise DatasetError(f"{path} is an HDF5 file but not an {FORMAT} file (format={attrs.get('format')!r})")
            version = int(attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise DatasetError(f"{path} has format version {version}; this code reads version {FORMAT_VERSION}")
            if not bool(attrs.get("complete", False)) or "stats" not in attrs or "fingerprint" not in attrs:
                raise DatasetError(f"{path} was not closed properly (incomplete write); regenerate it")
            ends = np.asarray(f["episodes/ends"][:], np.int64)
            success = np.asarray(f["episodes/success"][:], np.bool_)
            keys = tuple(k for k in STEP_KEYS if k in f["steps"])
            lengths = {k: f["steps"][k].shape[0] for k in keys}
        num_steps = int(ends[-1]) if len(ends) else 0
        problems = []
        if len(ends) == 0 or len(success) != len(ends):
            problems.append(f"{len(ends)} episode ends and {len(success)} success flags")
        if len(ends) and (ends[0] < 1 or np.any(np.diff(ends) < 1)):
            problems.append("episode ends are not strictly increasing")
        if any(n != num_steps for n in lengths.values()):
            problems.append(f"array lengths {lengths} differ from the {num_steps} steps of the episodes")
        recorded = (int(attrs.get("num_steps", -1)), int(attrs.get("num_episodes", -1)))
        if recorded != (num_steps, len(ends)):
            problems.append("the recorded step / episode counts do not match the arrays")
        if problems:
            raise DatasetError(f"{path} is inconsistent: " + "; ".join(problems))
        try:
            ds = cls(path, attrs, ends, success, keys)
            _check_obs_spec(ds.obs_spec)
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{path} has malformed metadata: {exc}") from exc
        if set(ds.stats) != set(STATS_KEYS):
            raise DatasetError(f"{path} stats have keys {sorted(ds.stats)}, expected {sorted(STATS_KEYS)}")
        return ds

    @property
    def available_keys(self) -> tuple[str, ...]:
        """Keys `arrays` can return."""
        return self._keys + ("episode_index",)

    @property
    def episode_starts(self) -> np.ndarray:
        """(E,) int64 first step of each episode."""
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    def arrays(self, keys: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Whole arrays in memory: "state" (N, S) float32, "image" (N, H, W, 3) uint8, "action" (N, A) float32,
        "reward" (N,), "return" (N,) float32, "episode_index" (N,) int64. Default: every key the dataset has."""
        keys = self.available_keys if keys is None else tuple(keys)
        unknown = [k for k in keys if k not in self.available_keys]
        if unknown:
            raise DatasetError(f"{self.path} has no array(s) {unknown}; available: {list(self.available_keys)}")
        out: dict[str, np.ndarray] = {}
        with _damage_is_an_error(self.path), h5py.File(self.path, "r") as f:
            for k in keys:
                if k == "episode_index":
                    out[k] = np.repeat(np.arange(self.num_episodes, dtype=np.int64),
                                       self.episode_ends - self.episode_starts)
                else:
                    out[k] = f["steps"][k][:]
        return out

    def episode(self, index: int) -> dict[str, Any]:
        """One episode's step arrays (T, ...) plus "success" and "info"."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
        index %= self.num_episodes
        start, end = int(self.episode_starts[index]), int(self.episode_ends[index])
        with _damage_is_an_error(self.path), h5py.File(self.path, "r") as f:
            out: dict[str, Any] = {k: f["steps"][k][start:end] for k in self._keys}
            out["info"] = json.loads(f["episodes/info"][index])
        out["success"] = bool(self.success[index])
        return out

    def episode_info(self) -> list[dict]:
        """Per-episode info dicts, as given to `add_episode`."""
        with _damage_is_an_error(self.path), h5py.File(self.path, "r") as f:
            return [json.loads(s) for s in f["episodes/info"].asstr()[:]]

    def verify(self, block: int = 4096) -> None:
        """Re-hash the stored arrays and compare with the fingerprint; DatasetError on mismatch."""
        digests: dict[str, tuple[str, list[int], str]] = {}
        with _damage_is_an_error(self.path), h5py.File(self.path, "r") as f:
            for k in self._keys:
                ds, h = f["steps"][k], hashlib.sha256()
                for s in range(0, ds.shape[0], block):
                    _digest_update(h, ds[s:s + block])
                digests[k] = (str(ds.dtype), list(ds.shape), h.hexdigest())
        for key, arr in (("episode_ends", self.episode_ends), ("success", self.success)):
            h = hashlib.sha256()
            _digest_update(h, arr)
            digests[key] = (str(arr.dtype), list(arr.shape), h.hexdigest())
        actual = _fingerprint(digests)
        if actual != self.fingerprint:
            raise DatasetError(f"{self.path} content does not match its fingerprint ({actual[:12]} != "
                               f"{self.fingerprint[:12]}): the file was modified or damaged")

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, episodes={self.num_episodes}, steps={self.num_steps}, "
                f"obs_spec={self.obs_spec}, action_dim={self.action_dim}, fingerprint={self.fingerprint[:12]})")
