"""The trainer: one flat loop, ``train`` -> ``train_one_epoch`` -> ``evaluate``, checkpoint every epoch.

The loss and learning rate of every step come from :class:`~gencnn_plugin.schedule.GenerativeSchedule`, the same
object a user's own loop would use. Small datasets (MNIST) sit on the device; metrics accumulate there too and are
read once per epoch, so the loop has no host synchronisation per step (except the optional terminal progress line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from . import __version__
from .checkpoint import (
    CHECKPOINT_NAME,
    TRAIN_STATE_NAME,
    CheckpointError,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from .config import TrainConfig
from .data import DeviceLoader, dataset_mean_std, folder_loader, load_dataset, normalizer
from .distributed import DistContext
from .distributed import cleanup as dist_cleanup
from .distributed import setup as dist_setup
from .losses import generative_loss
from .schedule import GenerativeSchedule, LRPolicy
from .specs import ModelInfo, create_model

__all__ = ["train", "train_one_epoch", "evaluate", "resolve_device", "build_data", "NonFiniteLossError",
           "TrainingInterrupted"]


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: training stopped; the last finished epoch's checkpoint is kept."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device that does not exist is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def _autocast(device: torch.device, amp: str):
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def build_data(cfg: TrainConfig, device: torch.device, ctx: DistContext | None = None
               ) -> tuple[nn.Module, ModelInfo, object, object]:
    """The model (on ``device``) with its ModelInfo, and the train and test loaders, from one config."""
    if cfg.dataset == "imagefolder":
        from torchvision.datasets.folder import find_classes

        if cfg.data_dir is None:
            raise ValueError("dataset 'imagefolder' needs data_dir (a folder with train/ and val/)")
        class_names, _ = find_classes(str(Path(cfg.data_dir) / "train"))
        in_chans, img_size, default_norm = cfg.in_chans or 3, cfg.img_size or 224, None
    else:
        in_chans = cfg.in_chans or 1
        img_size = cfg.img_size or (16 if cfg.dataset == "synthetic" else 28)
        kw = dict(in_chans=in_chans, img_size=img_size, num_classes=cfg.num_classes, seed=cfg.seed)
        train_set = load_dataset(cfg.dataset, cfg.data_dir, train=True, **kw)
        test_set = load_dataset(cfg.dataset, cfg.data_dir, train=False, **kw)
        if cfg.train_subset:
            train_set = dataclasses.replace(train_set, images=train_set.images[:cfg.train_subset],
                                            labels=train_set.labels[:cfg.train_subset])
        class_names = train_set.class_names
        default_norm = dataset_mean_std(cfg.dataset)
    num_classes = cfg.num_classes or len(class_names)
    if cfg.dataset != "imagefolder":
        for split, data in (("train", train_set), ("test", test_set)):
            lo, hi = int(data.labels.min()), int(data.labels.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"{split} labels span [{lo}, {hi}] but the model has num_classes={num_classes}")
    model, info = create_model(
        cfg.model, num_classes=num_classes, in_chans=in_chans, img_size=img_size, weights_file=cfg.weights_file,
        trust_pickle=cfg.trust_pickle, mean=tuple(cfg.mean) if cfg.mean else None,
        std=tuple(cfg.std) if cfg.std else None, default_mean_std=default_norm,
        class_names=class_names if len(class_names) == num_classes else None, **cfg.model_kwargs)
    model.to(device)
    if cfg.dataset == "imagefolder":
        common = dict(img_size=img_size, mean=info.mean, std=info.std, workers=cfg.workers, seed=cfg.seed)
        train_loader, _ = folder_loader(cfg.data_dir, True, batch_size=cfg.batch_size, **common,
                                        rank=ctx.rank if ctx else 0, world_size=ctx.world_size if ctx else 1)
        test_loader, _ = folder_loader(cfg.data_dir, False, batch_size=cfg.eval_batch_size, **common)
    else:
        norm = normalizer(info.mean, info.std, device)
        ctx = ctx or DistContext()
        train_loader = DeviceLoader(train_set.to(device), cfg.batch_size, norm, shuffle=True, seed=cfg.seed,
                                    rank=ctx.rank, world_size=ctx.world_size)
        test_loader = DeviceLoader(test_set.to(device), cfg.eval_batch_size, norm, shuffle=False)
    return model, info, train_loader, test_loader


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", amp: str = "none") -> dict:
    """Test error (fraction) and mean cross-entropy of ``model`` on ``loader``, in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    errors = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        errors += (logits.argmax(1) != y).sum()
        n += y.shape[0]
    model.train(was_training)
    return {"loss": loss_sum.item() / max(n, 1), "error": errors.item() / max(n, 1), "n": n}


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, schedule: GenerativeSchedule,
                    device: torch.device, amp: str = "none", scaler: torch.amp.GradScaler | None = None,
                    progress=None) -> dict:
    """One pass over ``loader`` with the schedule's loss and LR. Returns the epoch's training metrics."""
    model.train()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # gg loss, dg loss, errors, examples
    losses = torch.zeros(len(loader), device=device)  # per step, on the device: finds a non-finite step afterwards
    steps = 0
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        schedule.apply_lr(optimizer)
        with _autocast(device, amp):
            logits = model(x)
        loss = schedule.loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.step()
        losses[step] = loss.detach()
        with torch.no_grad():  # log both losses: the training one as computed, the other one on the side
            lf = logits.detach().float()
            gg = loss.detach() if schedule.phase == "gg" else generative_loss(lf, y)
            dg = loss.detach() if schedule.phase == "dg" else F.cross_entropy(lf, y)
            sums += torch.stack([gg.double(), dg.double(), (lf.argmax(1) != y).sum().double(),
                                 sums.new_full((), y.shape[0])])  # new_tensor would copy from the host and sync
        steps += 1
        if progress is not None and (step + 1) % progress.interval == 0:
            progress.update(step + 1, len(loader), loss)
    gg, dg, errors, n = sums.tolist()
    bad = (~torch.isfinite(losses[:steps])).nonzero()
    return {"gg_loss": gg / max(steps, 1), "dg_loss": dg / max(steps, 1), "train_error": errors / max(n, 1),
            "steps": steps, "first_nonfinite_step": int(bad[0]) + 1 if len(bad) else None}


class _Progress:
    """A one-line progress display on a terminal; reading the loss syncs, so it runs every ``interval`` steps."""

    def __init__(self, epoch: int, epochs: int, phase: str, interval: int) -> None:
        self.epoch, self.epochs, self.phase, self.interval = epoch, epochs, phase, max(1, interval)
        self.t0 = time.perf_counter()

    def update(self, step: int, total: int, loss: torch.Tensor) -> None:
        rate = step / max(time.perf_counter() - self.t0, 1e-9)
        width = 24
        bar = "#" * int(width * step / total) + "-" * (width - int(width * step / total))
        sys.stderr.write(f"\repoch {self.epoch + 1}/{self.epochs} [{self.phase}] [{bar}] {step}/{total} "
                         f"loss {loss.item():.4f} {rate:.0f} it/s ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.mode.replace('+', '')}-s{cfg.seed}-{stamp}"


def _log(msg: str) -> None:
    print(msg, flush=True)


def train(cfg: TrainConfig, log=_log) -> dict:
    """Run a whole training job from a config; returns the summary also written to ``RUN/summary.json``."""
    ctx, device = dist_setup(resolve_device(cfg.device))
    try:
        return _train(cfg, log if ctx.is_main else (lambda msg: None), ctx, device)  # rank 0 logs and saves
    finally:
        dist_cleanup(ctx)


def _train(cfg: TrainConfig, log, ctx: DistContext, device: torch.device) -> dict:
    state_path = None
    if cfg.resume:
        state_path = Path(cfg.resume) if Path(cfg.resume).is_file() else Path(cfg.resume) / TRAIN_STATE_NAME
        if not state_path.is_file():
            raise FileNotFoundError(f"cannot resume: {state_path} does not exist")
    run_dir = state_path.parent if state_path else _run_dir(cfg)
    if ctx.enabled:  # one run folder for all ranks: rank 0's (its name may hold a time stamp)
        shared = [str(run_dir)]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    torch.manual_seed(cfg.seed)  # model initialisation: the same on every rank (DDP also broadcasts rank 0's)
    model, info, train_loader, test_loader = build_data(cfg, device, ctx)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "lr_mult": 1.0}, {"params": no_decay, "lr_mult": cfg.bias_lr_mult}],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    policy = LRPolicy(cfg.lr_policy, gamma=cfg.lr_gamma, power=cfg.lr_power,
                      step_iters=cfg.lr_step_epochs * steps_per_epoch)
    schedule = GenerativeSchedule(cfg.mode, base_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                                  switch_epoch=cfg.switch_epoch, switch_lr=cfg.switch_lr,
                                  ess_threshold=cfg.ess_threshold, ess_plateau=cfg.ess_plateau, lr_policy=policy,
                                  gg_estimator=cfg.gg_estimator)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" and device.type == "cuda" else None

    start_epoch, history = 0, []
    if state_path:
        state = load_train_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], list(state["history"])
        log(f"resumed {run_dir} at epoch {start_epoch}")
    resolved = dataclasses.asdict(dataclasses.replace(cfg, out=str(run_dir), resume=None))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        # metrics.jsonl mirrors ``history``, which the resume state carries, so a resumed run rewrites it whole.
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ranks = f", {ctx.world_size} processes (DDP, GG estimator {cfg.gg_estimator})" if ctx.enabled else ""
    log(f"training {info.spec} on {cfg.dataset}, mode {cfg.mode}, {cfg.epochs} epochs x {steps_per_epoch} steps, "
        f"device {device}{ranks}, run {run_dir}")

    show_progress = sys.stderr.isatty()
    with _signals_interrupt():
        for epoch in range(start_epoch, cfg.epochs):
            try:
                _run_epoch(epoch, cfg, model, net, ctx, info, optimizer, schedule, scaler, train_loader,
                           test_loader, device, run_dir, resolved, history, show_progress, log)
            except KeyboardInterrupt:
                kept = (f"the checkpoint of epoch {epoch} is kept in {run_dir}" if epoch > 0 else
                        "no epoch had finished, so nothing was saved")
                raise TrainingInterrupted(f"interrupted in epoch {epoch + 1}; {kept}; continue with: gencnn train "
                                          f"--resume {run_dir}") from None

    summary = {
        "name": cfg.name, "model": info.spec, "dataset": cfg.dataset, "mode": cfg.mode, "seed": cfg.seed,
        "epochs": cfg.epochs, "test_error": history[-1]["test_error"] if history else None,
        "test_loss": history[-1]["test_loss"] if history else None,
        "switched_at_epoch": schedule.switched_at, "train_seconds": sum(r["seconds"] for r in history),
        "seconds_per_epoch": {ph: _mean([r["seconds"] for r in history if r["phase"] == ph]) for ph in ("gg", "dg")},
        "device": _device_name(device), "torch": torch.__version__, "gencnn": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(run_dir / CHECKPOINT_NAME), "run_dir": str(run_dir),
    }
    if ctx.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done: test error {100 * summary['test_error']:.2f}% after {cfg.epochs} epochs ({cfg.mode}); {run_dir}")
    return summary


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM (a scheduler ending the job) interrupts training as Ctrl-C does; the last epoch's files stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_epoch(epoch, cfg, model, net, ctx, info, optimizer, schedule, scaler, train_loader, test_loader, device,
               run_dir, resolved, history, show_progress, log) -> None:
    """One epoch: train (``net``: the model, or its DDP wrapper), evaluate, then rank 0 writes the resume state and
    the checkpoint (each atomically)."""
    # dropout etc.: a resumed epoch draws the same numbers; each rank its own
    torch.manual_seed(cfg.seed * 100_003 + epoch + 7919 * ctx.rank)
    if hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(epoch)
    phase = schedule.start_epoch(epoch)
    progress = _Progress(epoch, cfg.epochs, phase, cfg.log_interval) if show_progress else None
    t0 = time.perf_counter()
    stats = train_one_epoch(net, train_loader, optimizer, schedule, device, cfg.amp, scaler, progress)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    end = schedule.end_epoch()
    lr = schedule.lr()
    kept = f"the last good checkpoint is {run_dir / CHECKPOINT_NAME} (epoch {epoch})" if epoch else "nothing was saved"
    if stats["first_nonfinite_step"] or not (math.isfinite(stats["gg_loss"]) and math.isfinite(stats["dg_loss"])):
        at = f" at step {stats['first_nonfinite_step']} of {stats['steps']}" if stats["first_nonfinite_step"] else ""
        raise NonFiniteLossError(f"non-finite loss in epoch {epoch + 1}{at} ({phase}); {kept}; try a lower lr")
    t1 = time.perf_counter()
    test = evaluate(model, test_loader, device, cfg.amp)
    record = {
        "epoch": epoch + 1, "phase": end["phase"], "gg_loss": stats["gg_loss"], "dg_loss": stats["dg_loss"],
        "train_error": stats["train_error"], "test_error": test["error"],
        "test_loss": test["loss"], "mean_ess": end["mean_ess"], "lr": lr, "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
    }
    history.append(record)
    state = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else {},
             "history": history}
    if not ctx.is_main:
        if ctx.enabled:
            torch.distributed.barrier()  # rank 0 is writing the files every rank may resume from
        return
    try:
        save_train_state(run_dir / TRAIN_STATE_NAME, state)
        save_checkpoint(run_dir / CHECKPOINT_NAME, model, info, mode=cfg.mode, epoch=epoch + 1,
                        phase=end["phase"], dataset=cfg.dataset, test_error=test["error"], config=resolved,
                        gencnn=__version__, date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    except OSError as e:  # disk full, quota, permissions: the atomic writes leave the previous files intact
        raise CheckpointError(f"could not save epoch {epoch + 1} to {run_dir} ({e.strerror or e}); "
                              f"{kept.replace('the last good', 'the previous')}") from None
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if ctx.enabled:
        torch.distributed.barrier()
    switched = " -> DG next" if end["switch_next"] else ""
    log(f"epoch {epoch + 1:3d}/{cfg.epochs} [{end['phase']}] gg_loss {record['gg_loss']:.4f} "
        f"dg_loss {record['dg_loss']:.4f} test_error {100 * test['error']:.2f}% ess {end['mean_ess']:.3f} "
        f"lr {lr:.2e} {seconds:.1f}s{switched}")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
