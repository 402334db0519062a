"""The training loop: one short, visible step; everything else is a hook.

``Trainer.run_step`` is the whole algorithm: for each micro-batch, forward the backbone under
autocast, compute the margin loss in float32, scale it by 1/grad_accum and backpropagate; then
unscale, clip, step the optimisers and the schedules once. Logging, checkpoints and evaluation are
hooks (:mod:`arcface.engine.hooks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from arcface.align.template import TEMPLATE_NAME, template_for_size
from arcface.data import build_dataset
from arcface.data.sampler import ResumableDistributedSampler
from arcface.data.transforms import TrainTransform
from arcface.engine import checkpoint as ckpt
from arcface.engine.config import Config, ConfigError
from arcface.engine.distributed import DistInfo, barrier
from arcface.engine.hooks import CheckpointHook, EvalHook, Hook, LoggerHook, ensure_dir
from arcface.engine.optim import build_optimizer, build_scheduler, clip_grad_norm_
from arcface.heads import create_head
from arcface.heads.partial_fc import PartialFC
from arcface.inference.contract import TEMPLATES, ContractError, ModelContract, read_contract, save_model
from arcface.models import create_model
from arcface.models.weights import load_backbone_weights
from arcface.runtime import threads as thread_policy
from arcface.runtime.amp import autocast, resolve_precision
from arcface.runtime.memory import retain_freed_memory

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the likely cause."""


class _SeededView(Dataset):
    """Makes each sample's random augmentation a function of (seed, epoch, index) alone.

    With this, a resumed run sees exactly the same augmented images as an uninterrupted one, however
    many DataLoader workers there are and wherever the loader was restarted.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = zlib.crc32(f"{self.seed}:{epoch}:{index}".encode())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


class _EpochTagged(Sampler):
    """Yields (epoch, index) pairs from a resumable sampler, for :class:`_SeededView`."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        for i in self.sampler:
            yield (epoch, int(i))

    def __len__(self) -> int:
        return len(self.sampler)


def _bad_kwargs(section: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a factory; an unexpected keyword becomes a ConfigError naming the config section."""
    try:
        return fn(*args, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e) or "got an unexpected" in str(e):
            raise ConfigError(f"{section}: {e}") from None
        raise


def build_classifier(cfg: Config, num_classes: int, dist: DistInfo) -> nn.Module:
    """The margin head, or Partial FC when sampling or more than one rank is asked for.

    Partial FC at sample_rate 1.0 in one process computes exactly the full head; more than one rank
    always uses it, since it shards the class centres across ranks.
    """
    h = cfg.head
    if h.partial_fc or h.sample_rate < 1.0 or dist.world_size > 1:
        return _bad_kwargs(
            "head.params",
            PartialFC,
            h.kind,
            cfg.model.num_features,
            num_classes,
            sample_rate=h.sample_rate,
            rank=dist.rank,
            world_size=dist.world_size,
            seed=cfg.seed,
            **h.params,
        )
    return _bad_kwargs("head.params", create_head, h.kind, cfg.model.num_features, num_classes, **h.params)


class Trainer:
    """Trains a backbone with a margin head from a :class:`Config`.

    Args:
        cfg: the validated recipe.
        out_dir: where checkpoints, ``log.jsonl``, TensorBoard files and the final weights go.
        dist: this process's rank/world size/device (one plain CPU process by default).
        max_steps: stop after this optimiser step (default ``cfg.train.max_steps``); the lr schedule
            always follows ``cfg.train.max_steps``, so a run stopped early and resumed is identical
            to one that never stopped.
        resume: continue from the newest checkpoint in ``out_dir`` (exactly: model, head, optimiser,
            schedules, scaler, sampler position and RNG states).
        init_from: backbone weights to fine-tune from (ours or an arcface_torch ``backbone.pth``);
            only the backbone is loaded, with ``strict=True``.
        evaluate: ``(model, contract) -> {set: accuracy}`` for the periodic evaluation hook (the contract says how
            the model is fed).
        progress: show a progress bar on rank 0.
        threads: CPUs this machine's training may use; None: ``ARCFACE_THREADS``, else the usable CPUs (affinity and
            cgroup quota). The thread policy (:mod:`arcface.runtime.threads`, workload "train") gives each training
            process (torchrun's ``LOCAL_WORLD_SIZE``) its share less one CPU per DataLoader worker
            (``data.num_workers``, which run one thread each), at least 1 torch thread.
    """

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        *,
        dist: DistInfo | None = None,
        max_steps: int | None = None,
        resume: bool = False,
        init_from: str | Path | None = None,
        evaluate: Callable[[nn.Module, ModelContract], dict[str, float]] | None = None,
        progress: bool = True,
        extra_hooks: list[Hook] | None = None,
        threads: int | str | None = None,
    ) -> None:
        #: The thread plan of this training process.
        self.thread_plan = thread_policy.apply(
            thread_policy.decide("train", threads=threads, loader_workers=cfg.data.num_workers))
        self.cfg = cfg
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.out_dir = ensure_dir(out_dir)
        self.max_steps = cfg.train.max_steps if max_steps is None else max_steps
        self.total_steps = cfg.train.max_steps
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.step = 0
        if self.device.type == "cpu":
            retain_freed_memory()  # CPU steps reuse freed activation buffers instead of page-faulting new ones

        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.contract = model_contract(cfg, init_from)  # drives the input normalisation and the saved file
        transform = TrainTransform.for_contract(self.contract)
        self.dataset = _bad_kwargs("data.params", build_dataset, cfg.data.kind, transform=transform, **cfg.data.params)
        num_classes = int(self.dataset.num_classes)

        model = _bad_kwargs(
            "model.options", create_model, cfg.model.name, num_features=cfg.model.num_features, **cfg.model.options
        )
        if init_from is not None:
            sd = load_backbone_weights(init_from)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise ValueError(f"--init-from {init_from}: weights do not fit model {cfg.model.name}: {e}") from None
            log.info("initialised backbone from %s", init_from)
        model.to(self.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.head = build_classifier(cfg, num_classes, self.dist).to(self.device)
        if cfg.head.init == "class_means" and not resume:
            self._class_mean_centres(model)

        self.optimizer = build_optimizer(cfg.optim, model, self.head)
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        if self.dist.world_size > 1:
            ddp_kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.model: nn.Module = nn.parallel.DistributedDataParallel(model, **ddp_kw)
        else:
            self.model = model

        self.sampler = ResumableDistributedSampler(
            len(self.dataset),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            shuffle=cfg.data.shuffle,
            seed=cfg.seed,
            drop_last=True,
        )
        self._view = _SeededView(self.dataset, cfg.seed)
        self._iter: Iterator | None = None
        self.samples_per_step = cfg.data.batch_size * cfg.train.grad_accum * self.dist.world_size

        if resume:
            self._resume()

        self.hooks: list[Hook] = [
            LoggerHook(cfg.train.log_every, tensorboard=cfg.train.tensorboard, progress=progress),
            CheckpointHook(cfg.train.ckpt_every, cfg.train.keep_last),
        ]
        if evaluate is not None and cfg.eval.every > 0:
            self.hooks.append(EvalHook(cfg.eval.every, evaluate))
        self.hooks.extend(extra_hooks or [])

    @torch.no_grad()
    def _class_mean_centres(self, model: nn.Module) -> None:
        """Set each class centre to the normalised mean embedding of the class's images (``head.init:
        class_means``), so fine-tuning a trained backbone starts from a head that already fits it instead of
        pushing random-centre gradients into the backbone. Classes without images keep their random centre."""
        head = self.head
        start, n = (head.class_start, head.num_local) if isinstance(head, PartialFC) else (0, head.num_classes)
        if int(getattr(head, "rows_per_class", 1)) != 1:
            raise ConfigError("head.init: class_means needs one centre per class (rows_per_class 1)")
        weight = head.weight  # (n, D): this rank's centres
        sums = torch.zeros(n, weight.shape[1], dtype=torch.float64)
        counts = torch.zeros(n, dtype=torch.float64)
        loader = DataLoader(self.dataset, batch_size=max(64, self.cfg.data.batch_size),
                            num_workers=self.cfg.data.num_workers)  # fmt: skip
        was_training = model.training
        model.eval()
        for images, labels in loader:
            local = labels - start
            keep = (local >= 0) & (local < n)
            if not keep.any():
                continue
            images = images[keep].to(self.device)
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(self.precision, self.device):
                emb = model(images).float()
            emb = torch.nn.functional.normalize(emb, dim=1).double().cpu()
            sums.index_add_(0, local[keep], emb)
            counts.index_add_(0, local[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
        model.train(was_training)
        seen = counts > 0
        means = torch.nn.functional.normalize(sums[seen], dim=1)
        weight[seen.to(weight.device)] = means.to(weight.dtype).to(weight.device)
        log.info("head.init class_means: %d of %d centres set from their images", int(seen.sum()), n)

    # -- properties -------------------------------------------------------------------------
    @property
    def bare_model(self) -> nn.Module:
        """The backbone without its DDP wrapper."""
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    @property
    def epoch(self) -> int:
        """The current data epoch."""
        return int(self.sampler.epoch)

    @property
    def lr(self) -> float:
        """The learning rate of the backbone's first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    # -- data ---------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        return DataLoader(
            self._view,
            batch_size=self.cfg.data.batch_size,
            sampler=_EpochTagged(self.sampler),
            num_workers=self.cfg.data.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (images (B, 3, H, W), labels (B,)) batch; a new epoch starts when one ends."""
        for _ in range(3):
            if self._iter is None:
                self._iter = iter(self._loader())
            try:
                images, labels = next(self._iter)
            except StopIteration:
                self._iter = None
                self.sampler.set_epoch(self.sampler.epoch + 1)
                continue
            self.sampler.advance(len(labels))
            return images, labels
        raise RuntimeError(
            f"the dataset ({len(self.dataset)} samples) is too small for one batch of "
            f"{self.cfg.data.batch_size} per rank x {self.dist.world_size} ranks"
        )

    # -- the step -------------------------------------------------------------------------------
    def run_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns its loss and lr."""
        self.model.train()
        self.head.train()
        accum = self.cfg.train.grad_accum
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            images, labels = self.next_batch()
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world_size == 1 else self.model.no_sync()
            with sync:
                with autocast(self.precision, self.device):
                    embeddings = self.model(images)  # (B, D)
                loss = self.head(embeddings.float(), labels)  # float32 margin logits
                self._check_finite(loss)
                self.scaler.scale(loss / accum).backward()
            total += loss.detach()
        if self.cfg.train.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            clip_grad_norm_(params, self.cfg.train.clip_grad_norm)  # takes Partial FC's sparse grads too
        lr = self.lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return {"loss": float(total.item()) / accum, "lr": lr}

    def _check_finite(self, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).item():
            return
        last = ckpt.latest_checkpoint(self.out_dir)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        cause = (
            "fp16 overflow (try train.precision=bf16 or fp32)"
            if self.precision == "fp16"
            else f"a learning rate too high for this batch (lr={self.lr:.4g}; try a lower optim.lr or "
            "longer schedule.warmup_steps), or corrupt input"
        )
        raise TrainingDiverged(
            f"step {self.step + 1}: the loss is {loss.item()}; likely cause: {cause}; {where} "
            "(continue with --resume and a changed setting)"
        )

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> None:
        """Run steps until ``max_steps``, calling the hooks."""
        for h in self.hooks:
            h.before_train(self)
        try:
            while self.step < self.max_steps:
                metrics = self.run_step()
                for h in self.hooks:
                    h.after_step(self, metrics)
            for h in self.hooks:
                h.after_train(self)
        finally:
            for h in self.hooks:
                if isinstance(h, LoggerHook):
                    h.close()

    # -- checkpoints ------------------------------------------------------------------------------
    def _gather(self, obj: Any) -> list[Any]:
        if self.dist.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        tdist.all_gather_object(out, obj)
        return out

    def save_checkpoint(self, keep_last: int = 2) -> Path | None:
        """Write ``DIR/ckpt-<step>.pt`` atomically (rank 0) with every rank's head shard."""
        # Collectives first, on every rank: the head shards and their optimiser state.
        head_states = self._gather({k: v.cpu() for k, v in self.head.state_dict().items()})
        optimizer_state = self._optimizer_state()
        path = None
        if self.dist.is_main:
            state = {
                "step": self.step,
                "world_size": self.dist.world_size,
                "model": self.bare_model.state_dict(),
                "head_shards": head_states,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": ckpt.rng_state(),
                "config": self.cfg.to_dict(),
            }
            path = ckpt.checkpoint_path(self.out_dir, self.step)
            ckpt.atomic_torch_save(state, path)
            ckpt.prune_checkpoints(self.out_dir, keep_last)
        barrier(self.dist)
        return path

    def _optimizer_state(self) -> dict[str, Any]:
        # Head parameters differ per rank (sharded centres): gather their optimiser state too.
        sd = self.optimizer.state_dict()
        head_ids = {id(p) for p in self.head.parameters()}
        index = {}
        i = 0
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                index[i] = id(p) in head_ids
                i += 1
        local_head = {k: v for k, v in sd["state"].items() if index.get(k)}
        shards = self._gather({k: {n: t.cpu() if torch.is_tensor(t) else t for n, t in v.items()}
                               for k, v in local_head.items()})
        state = {k: v for k, v in sd["state"].items() if not index.get(k)}
        return {"state": state, "param_groups": sd["param_groups"], "head_state_shards": shards}

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint (ckpt-*.pt) in {self.out_dir}")
        state = ckpt.load_checkpoint(path)
        if state.get("world_size", 1) != self.dist.world_size:
            raise ValueError(
                f"--resume: {path} was written by {state.get('world_size')} ranks, this run has "
                f"{self.dist.world_size}; the class centres are sharded per rank, so use the same number"
            )
        self.bare_model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head_shards"][self.dist.rank])
        opt = state["optimizer"]
        merged = dict(opt["state"])
        merged.update(opt["head_state_shards"][self.dist.rank])
        self.optimizer.load_state_dict({"state": merged, "param_groups": opt["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def save_backbone(self, path: str | Path) -> None:
        """Write the backbone as safetensors with its embedding contract (rank 0 only).

        The contract is :attr:`contract` (the model's own when fine-tuning one) with the new weights: the weights'
        SHA-256 is recomputed, and a calibrated threshold is dropped (it belonged to the old weights).
        """
        if not self.dist.is_main:
            return
        contract = dataclasses.replace(
            self.contract,
            threshold=None,
            calibrated_on=None,
            source=f"arcface trainer: {self.step} steps, head {self.cfg.head.kind} {self.cfg.head.params}"
            + (f"; fine-tuned from {self.contract.source}" if self.contract.source else ""),
        )
        save_model(self.bare_model, contract, path)


def model_contract(cfg: Config, init_from: str | Path | None = None) -> ModelContract:
    """The contract of the model a config trains: the ``--init-from`` model file's own when it carries one (fine-tuning
    keeps the model's normalisation, colour order, input size and template), else ours (RGB, ``(x - 127.5) / 127.5``,
    the arcface template at the model's ``input_size``).

    Raises:
        ConfigError: the init model's architecture, options or embedding size differ from the config's.
    """
    opts = dict(cfg.model.options)
    if init_from is not None and Path(init_from).suffix == ".safetensors":
        try:
            base = read_contract(init_from)
        except ContractError:
            base = None  # plain safetensors weights without a contract: ours applies
        if base is not None:
            ours = (cfg.model.name, cfg.model.num_features, opts)
            theirs = (base.architecture, base.embedding_size, base.options)
            if ours != theirs:
                raise ConfigError(
                    f"--init-from {init_from} is a {theirs[0]} {theirs[1]}-D model with options {theirs[2]}; "
                    f"the config trains {ours[0]} {ours[1]}-D with options {ours[2]} (set model.name, "
                    "model.num_features and model.options to match)"
                )
            return base
    size = opts.get("input_size", 112)
    size = (size, size) if isinstance(size, int) else tuple(size)
    try:
        points = tuple(map(tuple, template_for_size(size[1]).tolist()))
    except ValueError:  # a size the template does not scale to (64x64 crops of the 112 template): scale it
        ratio = size[1] / 112.0
        points = tuple((x * ratio, y * ratio) for x, y in TEMPLATES[TEMPLATE_NAME])
    return ModelContract(
        architecture=cfg.model.name, embedding_size=cfg.model.num_features, options=opts, input_size=size,
        template_points=points,
    )  # fmt: skip
