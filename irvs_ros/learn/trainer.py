"""The offline training loop: dataset -> algorithm -> Adam + step decay, logs, checkpoints, exact resume, DDP.

Run layout (RUN = out_dir/name or --out):
    RUN/config.yaml            resolved TrainConfig
    RUN/spec.json              PolicySpec the policy acts under
    RUN/metrics.jsonl          one JSON row per log / evaluation ({"kind": "train" | "eval", "step": ..., ...})
    RUN/tb/                    TensorBoard scalars: train/<loss terms>, train/lr, train/steps_per_sec, eval/<metrics>
    RUN/checkpoints/last.pt    latest checkpoint (+ step_XXXXXXXX.pt every checkpoint_every steps); with ema_decay > 0
                               each also holds the moving average of the weights, which evaluation runs
    RUN/summary.json           final step, metrics, evaluation, DDP consistency check

Distributed: launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) each process trains on
its own sample stream, gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA), and only
rank 0 writes files or evaluates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from irvs_ros.learn.algorithms.base import Algorithm, make_algorithm
from irvs_ros.learn.aux_state import AuxStateHead, FeatureTap, aux_targets
from irvs_ros.learn.batches import (
    InMemoryBatches,
    dataset_state_layout,
    image_and_state,
    image_only,
    policy_spec_from_dataset,
    random_shift,
    select_top_episodes,
    state_only,
)
from irvs_ros.learn.checkpoint import (
    LAST_NAME,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    step_checkpoint_name,
)
from irvs_ros.learn.config_schema import ConfigError, to_dict
from irvs_ros.learn.train_config import TrainConfig, check_algorithm_params, save_config
from irvs_ros.learn.weight_average import WeightAverage

log = logging.getLogger("irvs_ros.train")

# Config keys that must not change when a run is resumed (the weights or the data would not match).
RESUME_FIXED_KEYS = ("algorithm", "params", "keep_top_fraction", "observation", "state_keys", "aux_state_weight",
                     "ema_decay")


class TrainError(RuntimeError):
    """Training cannot start or continue (run directory state, resume mismatch, non-finite loss)."""


@dataclass
class DistContext:
    """Where this process trains: rank / world size under torchrun (0 / 1 otherwise) and its torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """What a finished run reports (complete on rank 0; other ranks fill what they know)."""

    run_dir: Path
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, Any] | None
    checkpoint: Path | None
    summary: dict[str, Any]
    algorithm: Algorithm | None = None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:local_rank when CUDA is available, else cpu; explicit names are checked."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available (use 'auto' or 'cpu')")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup_distributed(device_name: str) -> DistContext:
    """Read torchrun's environment, pick the device, and initialize the process group when world size > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so collectives and default CUDA tensors use this process's GPU
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        ctx.initialized_here = True
    return ctx


def derived_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for (seed, stream ids), e.g. (seed, rank, 0) for a rank's batch sampler."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block (e.g. evaluation) without disturbing the global RNG streams that training depends on."""
    state = capture_rng_state(device=device)
    try:
        yield
    finally:
        restore_rng_state(state, device=device)


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 over all parameters and buffers (names, dtypes, bytes): equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LossModule(nn.Module):
    """Routes `compute_loss` through `forward`, so DistributedDataParallel sees the loss computation.

    With `aux` (an AuxStateHead), adds `aux_weight` x its regression loss of batch["aux_state"] from the features
    the algorithm's encoder produced for this batch (logged as "aux_state_mse").
    """

    def __init__(self, algorithm: Algorithm, aux: AuxStateHead | None = None, aux_weight: float = 0.0) -> None:
        super().__init__()
        self.algorithm, self.aux, self.aux_weight = algorithm, aux, float(aux_weight)
        self._tap = FeatureTap(algorithm.encoder) if aux is not None else None

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self._tap is None:
            return self.algorithm.compute_loss(batch, generator)
        self._tap.reset()
        losses = self.algorithm.compute_loss(batch, generator)
        if self._tap.features is None:
            raise TrainError(f"{self.algorithm.name}.compute_loss did not run its encoder: no features for the "
                             "auxiliary state loss")
        aux = self.aux.loss(self._tap.features, batch["aux_state"])
        return {**losses, "loss": losses["loss"] + self.aux_weight * aux, "aux_state_mse": aux.detach()}


class MetricsLog:
    """RUN/metrics.jsonl plus TensorBoard scalars (rank 0 only)."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Rows written after the checkpoint we resume from belong to a run that is being replaced.
            rows = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if json.loads(r).get("step", 0) <= resume_step]
            self.path.write_text("".join(r + "\n" for r in kept))
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def _open_dataset(path: str) -> Any:
    from irvs_ros.data.store import Dataset

    if not Path(path).exists():
        raise ConfigError(f"dataset: {path!r} does not exist")
    return Dataset.open(path)


def run_directory(config: TrainConfig, out: str | Path | None = None) -> Path:
    """The run directory: `out` when given, else config.out_dir / config.name."""
    return Path(out) if out is not None else Path(config.out_dir) / config.name


class Trainer:
    """One training run. Build it, then call `run()`; see the module docstring for what it writes."""

    def __init__(self, config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> None:
        self.config = config
        self.run_dir = run_directory(config, run_dir)
        self.resume = resume
        self.ctx = setup_distributed(config.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._metrics: MetricsLog | None = None

    # ------------------------------------------------------------------------------------------------ set-up
    def _check_run_dir(self) -> dict[str, Any] | None:
        last = self.ckpt_dir / LAST_NAME
        if not self.resume:
            if last.exists():
                raise TrainError(f"{self.run_dir} already holds a checkpoint ({last}); pass --resume to continue "
                                 "it or choose another run directory (--out / name=...)")
            return None
        if not last.exists():
            raise TrainError(f"--resume: no checkpoint at {last}")
        ckpt = load_checkpoint(last, map_location="cpu")
        # Compared as saved (plain data: lists, not tuples); a key a checkpoint predates had its default then.
        current, defaults = to_dict(self.config), {f.name: f for f in fields(TrainConfig)}
        for key in RESUME_FIXED_KEYS:
            field_ = defaults[key]
            default = field_.default_factory() if field_.default_factory is not MISSING else field_.default
            before, now = ckpt["config"].get(key, to_dict(default)), current[key]
            if before != now:
                raise TrainError(f"--resume: {key} was {before!r} in {last}, the config now says {now!r}; "
                                 "start a new run instead")
        return ckpt

    def _build(self) -> None:
        cfg, ctx = self.config, self.ctx
        check_algorithm_params(cfg)
        self.ckpt = self._check_run_dir()
        self.dataset = _open_dataset(cfg.dataset)
        self.fingerprint = str(self.dataset.fingerprint)
        if self.ckpt is not None and self.ckpt["dataset_fingerprint"] != self.fingerprint:
            raise TrainError(f"--resume: dataset {cfg.dataset!r} has fingerprint {self.fingerprint}, the checkpoint "
                             f"was trained on {self.ckpt['dataset_fingerprint']}")
        self.spec = policy_spec_from_dataset(self.dataset, cfg.control_rate_hz)
        arrays = select_top_episodes(self.dataset.arrays(), self.dataset.episode_ends, cfg.keep_top_fraction)
        if cfg.aux_state_weight > 0:
            if "state" not in arrays:
                raise TrainError(f"aux_state_weight {cfg.aux_state_weight}: dataset {cfg.dataset!r} records no state "
                                 "to regress")
            arrays["aux_state"] = aux_targets(arrays["state"], dataset_state_layout(self.dataset))
        if cfg.observation == "image" and cfg.state_keys:
            layout = dataset_state_layout(self.dataset)
            self.spec, columns = image_and_state(self.spec, tuple(cfg.state_keys), layout)
            arrays["state"] = arrays["state"][:, columns]  # fancy indexing copies
        elif cfg.observation == "image":
            self.spec = image_only(self.spec)
        elif cfg.observation == "state":
            self.spec = state_only(self.spec)

        # Same seed on every rank, so every rank builds identical initial weights.
        seed_everything(cfg.seed)
        self.algorithm = make_algorithm(cfg.algorithm, self.spec, cfg.params)
        self.algorithm.fit_dataset(arrays)
        self.algorithm.to(ctx.device)
        self.trainable = self.algorithm.trainable
        self.aux: AuxStateHead | None = None
        if cfg.aux_state_weight > 0 and self.trainable:
            if not isinstance(getattr(self.algorithm, "encoder", None), nn.Module):
                raise TrainError(f"aux_state_weight {cfg.aux_state_weight}: algorithm {cfg.algorithm!r} has no "
                                 f"observation encoder to regress the state from; set aux_state_weight=0")
            self.aux = AuxStateHead(self.algorithm.encoder.out_dim, arrays["aux_state"]).to(ctx.device)
        self.batches = InMemoryBatches(arrays, self.spec, ctx.device) if self.trainable else None
        self.num_train_steps = len(arrays["action"])

        self.sample_gen = torch.Generator(device="cpu")
        self.sample_gen.manual_seed(derived_seed(cfg.seed, ctx.rank, 0))
        self.loss_gen = torch.Generator(device=ctx.device)
        self.loss_gen.manual_seed(derived_seed(cfg.seed, ctx.rank, 1))

        self.optimizer = self.scheduler = None
        if self.trainable:
            trained = list(self.algorithm.parameters()) + (list(self.aux.parameters()) if self.aux else [])
            self.optimizer = torch.optim.Adam(trained, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                              weight_decay=cfg.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.lr_decay_every,
                                                             gamma=cfg.lr_decay)
        self.ema = WeightAverage(self.algorithm, cfg.ema_decay) if cfg.ema_decay > 0 and self.trainable else None
        self.step = 0
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, Any] | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)

        self.loss_module: nn.Module | None = None
        if self.trainable:
            self.loss_module = LossModule(self.algorithm, self.aux, cfg.aux_state_weight)
            if ctx.distributed:
                from torch.nn.parallel import DistributedDataParallel

                self.loss_module = DistributedDataParallel(
                    self.loss_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                    find_unused_parameters=cfg.ddp_find_unused_parameters)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        ctx = self.ctx
        self.algorithm.load_state_dict(ckpt["model"])
        if self.aux is not None:
            self.aux.load_state_dict((ckpt.get("extra") or {})["aux_head"])
        if self.trainable:
            if ckpt.get("optimizer") is None or ckpt.get("scheduler") is None:
                raise CheckpointError(f"{ckpt['path']} has no optimizer/scheduler state to resume from")
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            if not ckpt.get("ema"):
                raise CheckpointError(f"{ckpt['path']} has no EMA state to resume from")
            self.ema.load_state_dict(ckpt["ema"])
        self.step = int(ckpt["step"])
        extra = ckpt.get("extra") or {}
        self.last_train = dict(extra.get("train_metrics") or {})
        self.last_eval = extra.get("eval_metrics")
        rng = ckpt.get("rng")
        generators = {"sample": self.sample_gen, "loss": self.loss_gen}
        if isinstance(rng, list) and len(rng) == ctx.world_size:
            restore_rng_state(rng[ctx.rank], generators, device=ctx.device)
        else:
            # A different world size cannot replay the old streams; continue with fresh, still seeded ones.
            saved = len(rng) if isinstance(rng, list) else 0
            log.warning("checkpoint holds RNG state for %d rank(s), this run has %d: resuming with reseeded "
                        "streams (not bit-identical to an uninterrupted run)", saved, ctx.world_size)
            seed_everything(derived_seed(self.config.seed, ctx.rank, self.step, 2))
            self.sample_gen.manual_seed(derived_seed(self.config.seed, ctx.rank, self.step, 0))
            self.loss_gen.manual_seed(derived_seed(self.config.seed, ctx.rank, self.step, 1))
        log.info("resumed %s at step %d", ckpt["path"], self.step)

    # --------------------------------------------------------------------------------------------- helpers
    def _all_gather(self, obj: Any) -> list[Any]:
        if not self.ctx.distributed:
            return [obj]
        out: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(out, obj)
        return out

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    def _save(self, extra: dict[str, Any] | None = None) -> Path | None:
        """Checkpoint the current step (collective under DDP: every rank contributes its RNG state)."""
        rng = self._all_gather(capture_rng_state({"sample": self.sample_gen, "loss": self.loss_gen}, self.ctx.device))
        path = None
        if self.ctx.is_main:
            path = self.ckpt_dir / step_checkpoint_name(self.step)
            save_checkpoint(path, algorithm=self.algorithm, algorithm_name=self.config.algorithm,
                            params=self.config.params, spec=self.spec, step=self.step, config=to_dict(self.config),
                            dataset_fingerprint=self.fingerprint, optimizer=self.optimizer, scheduler=self.scheduler,
                            rng=rng, copies=[self.ckpt_dir / LAST_NAME],
                            ema=self.ema.state_dict() if self.ema is not None else None,
                            extra={"world_size": self.ctx.world_size, "train_metrics": self.last_train,
                                   "eval_metrics": self.last_eval, **(extra or {}),
                                   **({"aux_head": {k: v.detach().cpu() for k, v in self.aux.state_dict().items()}}
                                      if self.aux is not None else {})})
        self._barrier()
        return path

    def evaluate(self) -> dict[str, Any] | None:
        """Roll the current policy out in simulation (rank 0; other ranks wait). None when eval.env is unset.

        With ema_decay > 0 the policy evaluated is the moving average of the weights (what `irvs export` writes).
        """
        ev = self.config.eval
        if ev.env is None:
            return None
        result = None
        if self.ctx.is_main:
            from irvs_ros.runtime.spec import observation_adapter
            from irvs_ros.sim.registry import state_layout
            from irvs_ros.sim.rollout import evaluate

            rng = np.random.default_rng(ev.seed)
            adapt = observation_adapter(self.spec.obs, state_layout(ev.env))
            was_training = self.algorithm.training
            self.algorithm.eval()
            t0 = time.perf_counter()
            averaged = self.ema.swapped_into(self.algorithm) if self.ema is not None else contextlib.nullcontext()
            try:
                with preserved_rng(self.ctx.device), averaged:
                    raw = evaluate(ev.env, dict(ev.env_kwargs), lambda obs: self.algorithm.predict(adapt(obs), rng),
                                   ev.episodes, ev.seed)
            finally:
                self.algorithm.train(was_training)
            # Scalars go to TensorBoard, the checkpoint and the summary; per-episode details only to metrics.jsonl.
            result = {k: float(v) for k, v in raw.items()
                      if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
            result["eval_seconds"] = time.perf_counter() - t0
            raw["weights"] = "ema" if self.ema is not None else "raw"
            self._metrics.write("eval", self.step, {**raw, **result})
            log.info("step %d eval: %s", self.step, result)
        self._barrier()
        self.last_eval = result
        return result

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        """Train up to config.steps (from the checkpoint when resuming) and return the final state."""
        # Process-wide (this thread's CPU math): on only for the run, so callers' numerics are left as they were.
        flushing = self.config.flush_denormal and torch.set_flush_denormal(True)
        try:
            return self._run()
        finally:
            if flushing:
                torch.set_flush_denormal(False)
            if self._metrics is not None:
                self._metrics.close()
            if self.ctx.initialized_here and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> TrainResult:
        cfg, ctx = self.config, self.ctx
        t_start = time.perf_counter()
        self._build()
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "spec.json").write_text(self.spec.to_json())
            self._metrics = MetricsLog(self.run_dir, resume_step=self.step if self.ckpt is not None else None)
        self._barrier()
        log.info("run %s: %s on %s, %d training steps in the dataset, world size %d", self.run_dir, cfg.algorithm,
                 ctx.device, self.num_train_steps, ctx.world_size)

        checkpoint = None
        if not self.trainable:
            self.evaluate()
            checkpoint = self._save()
        elif self.step < cfg.steps:
            checkpoint = self._train_loop()
        else:
            log.info("nothing to do: checkpoint step %d >= steps %d", self.step, cfg.steps)

        digests = self._all_gather(parameter_digest(self.algorithm))
        if len(set(digests)) != 1:
            raise TrainError(f"DDP ranks ended with different weights (digests {digests}); gradients were not synced")
        summary = {
            "run_dir": str(self.run_dir),
            "algorithm": cfg.algorithm,
            "step": self.step,
            "steps": cfg.steps,
            "trainable": self.trainable,
            "train": self.last_train,
            "eval": self.last_eval,
            "checkpoint": str(self.ckpt_dir / LAST_NAME),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "param_digests": digests,
            "rank_last_losses": getattr(self, "_rank_last_losses", None),
            "dataset_fingerprint": self.fingerprint,
            "dataset_steps": self.num_train_steps,
            "wall_seconds": time.perf_counter() - t_start,
        }
        if ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return TrainResult(run_dir=self.run_dir, step=self.step, train_metrics=self.last_train,
                           eval_metrics=self.last_eval, checkpoint=checkpoint, summary=summary,
                           algorithm=self.algorithm)

    def _train_loop(self) -> Path | None:
        cfg, ctx = self.config, self.ctx
        assert self.loss_module is not None and self.optimizer is not None and self.batches is not None
        self.algorithm.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        window_start, window_step = time.perf_counter(), self.step
        checkpoint = None
        bar = _progress(cfg.steps, self.step, ctx.is_main, cfg.name)
        params = [p for p in self.algorithm.parameters() if p.requires_grad]
        try:
            while self.step < cfg.steps:
                batch = self.batches.sample(cfg.batch_size, self.sample_gen)
                if cfg.image_shift and "image" in batch:
                    batch["image"] = random_shift(batch["image"], cfg.image_shift, self.sample_gen)
                losses = self.loss_module(batch, self.loss_gen)
                if "loss" not in losses:
                    raise TrainError(f"{cfg.algorithm}.compute_loss returned {sorted(losses)}, without 'loss'")
                self.optimizer.zero_grad(set_to_none=True)
                losses["loss"].backward()
                if cfg.grad_clip is not None:
                    losses = {**losses, "grad_norm": torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)}
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.algorithm)
                self.step += 1
                count += 1
                for key, value in losses.items():
                    v = torch.as_tensor(value, device=ctx.device).detach().float().mean()
                    sums[key] = sums[key] + v if key in sums else v
                bar.update(1)

                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    now = time.perf_counter()
                    self._log_train(sums, count, (self.step - window_step) / max(now - window_start, 1e-9), bar)
                    sums, count = {}, 0
                    window_start, window_step = time.perf_counter(), self.step
                if cfg.eval.env is not None and ((cfg.eval.every and self.step % cfg.eval.every == 0) or last):
                    self.evaluate()
                    window_start = time.perf_counter()  # evaluation time is not training throughput
                if self.step % cfg.checkpoint_every == 0 or last:
                    checkpoint = self._save() or checkpoint
                    window_start = time.perf_counter()
        finally:
            bar.close()
        return checkpoint

    def _log_train(self, sums: dict[str, torch.Tensor], count: int, steps_per_sec: float, bar: Any) -> None:
        keys = sorted(sums)
        local = torch.stack([sums[k] / count for k in keys]).double()
        mean = local.clone()
        if self.ctx.distributed:
            dist.all_reduce(mean)
            mean /= self.ctx.world_size
            self._rank_last_losses = [float(v) for v in self._all_gather(float(local[keys.index("loss")]))]
        values = {k: float(v) for k, v in zip(keys, mean.cpu().tolist(), strict=True)}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise TrainError(f"non-finite {bad} at step {self.step} ({values}); lower lr or check the data")
        values["lr"] = float(self.scheduler.get_last_lr()[0])
        values["steps_per_sec"] = float(steps_per_sec)
        self.last_train = values
        if self.ctx.is_main:
            self._metrics.write("train", self.step, values)
            bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{values['lr']:.2e}")
            if bar.disable:
                log.info("step %d/%d loss %.5g lr %.3g %.1f steps/s", self.step, self.config.steps, values["loss"],
                         values["lr"], steps_per_sec)


def train(config: TrainConfig, run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Train `config` into `run_dir` (default out_dir/name); `resume` continues from RUN/checkpoints/last.pt."""
    return Trainer(config, run_dir, resume).run()
