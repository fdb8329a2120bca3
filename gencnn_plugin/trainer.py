"""The trainer: one flat loop, ``train`` -> ``train_one_epoch`` -> ``evaluate``, checkpoint every epoch.

The loss and learning rate of every step come from :class:`~gencnn_plugin.schedule.GenerativeSchedule`, the same
object a user's own loop would use. Small datasets (MNIST) sit on the device; metrics accumulate there too and are
read once per epoch, so the loop has no host synchronisation per step (progress reads the loss every
``log_interval`` steps, on a terminal only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ._version import __version__
from .batchnorm import gg_batchnorm
from .checkpoint import (
    CHECKPOINT_NAME,
    TRAIN_STATE_NAME,
    CheckpointError,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from .config import ConfigError, TrainConfig
from .data import describe, make_loader
from .distributed import DistContext, convert_global_batchnorm
from .distributed import cleanup as dist_cleanup
from .distributed import setup as dist_setup
from .files import OutputPathError, atomic_path, check_output_path
from .losses import generative_loss
from .progress import Progress
from .runtime import environment, precision_context, resolve_device
from .schedule import GenerativeSchedule, LRPolicy
from .specs import ModelInfo, create_model

__all__ = ["train", "train_one_epoch", "evaluate", "build_data", "make_optimizer", "NonFiniteLossError",
           "TrainingInterrupted", "RUN_FILES"]

# the files a run folder holds; a folder with any of them is a run that only --resume or --overwrite may touch
RUN_FILES = (CHECKPOINT_NAME, TRAIN_STATE_NAME, "metrics.jsonl", "summary.json", "config.yaml")


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: training stopped; the last finished epoch's checkpoint is kept."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def _uses_holdout(cfg: TrainConfig) -> bool:
    return cfg.mode == "auto" and cfg.auto_rule == "holdout"


def build_data(cfg: TrainConfig, device: torch.device, ctx: DistContext | None = None, load_weights: bool = True,
               trust_pickle: bool = False) -> tuple[nn.Module, ModelInfo, object, object, object | None]:
    """The model (on ``device``) with its ModelInfo, and the train, test and held-out loaders (the last only for
    ``auto`` with the holdout rule, else None), from one config.

    ``load_weights=False`` skips ``cfg.weights`` (a resumed run's weights come from its train_state.pt).
    """
    ctx = ctx or DistContext()
    data = describe(cfg.dataset, cfg.data_dir, cfg.in_chans, cfg.img_size, cfg.num_classes)
    num_classes = cfg.num_classes or len(data.class_names)
    model, info = create_model(
        cfg.model, num_classes=num_classes, in_chans=data.in_chans, img_size=data.img_size,
        weights=cfg.weights if load_weights else None, trust_pickle=trust_pickle,
        mean=tuple(cfg.mean) if cfg.mean else None, std=tuple(cfg.std) if cfg.std else None,
        default_mean_std=data.mean_std,
        class_names=data.class_names if len(data.class_names) == num_classes else None, **cfg.model_kwargs)
    model.to(device)
    common = dict(num_classes=num_classes, seed=cfg.seed, workers=cfg.workers, classes=data.class_names)
    holdout = cfg.holdout if _uses_holdout(cfg) else 0
    train_loader = make_loader(cfg.dataset, cfg.data_dir, "train", info.input_size, info.mean, info.std, device,
                               cfg.batch_size, subset=cfg.train_subset, rank=ctx.rank, world_size=ctx.world_size,
                               holdout=holdout, **common)
    test_loader = make_loader(cfg.dataset, cfg.data_dir, "test", info.input_size, info.mean, info.std, device,
                              cfg.eval_batch_size, **common)
    holdout_loader = make_loader(cfg.dataset, cfg.data_dir, "holdout", info.input_size, info.mean, info.std, device,
                                 cfg.eval_batch_size, holdout=holdout, **common) if holdout else None
    return model, info, train_loader, test_loader, holdout_loader


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on weights; biases at ``bias_lr_mult`` times the rate, without decay
    (Caffe's LeNet solver)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") else decay).append(p)
    return torch.optim.SGD([{"params": decay, "lr_mult": 1.0}, {"params": no_decay, "lr_mult": cfg.bias_lr_mult}],
                           lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", precision: str = "fp32") -> dict:
    """Test error (fraction) and mean cross-entropy of ``model`` on ``loader``, in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    errors = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision_context(device, _train_precision(device, precision)):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        errors += (logits.argmax(1) != y).sum()
        n += y.shape[0]
    model.train(was_training)
    return {"loss": loss_sum.item() / max(n, 1), "error": errors.item() / max(n, 1), "n": n}


def _train_precision(device: torch.device, precision: str) -> str:
    """Autocast is used for training on CUDA only (CPU training stays fp32, as it always has)."""
    return precision if device.type == "cuda" else "fp32"


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, schedule: GenerativeSchedule,
                    device: torch.device, precision: str = "fp32", scaler: torch.amp.GradScaler | None = None,
                    progress: Progress | None = None, interval: int = 100) -> dict:
    """One pass over ``loader`` with the schedule's loss and LR. Returns the epoch's training metrics."""
    model.train()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # gg loss, dg loss, errors, examples
    losses = torch.zeros(len(loader), device=device)  # per step, on the device: finds a non-finite step afterwards
    steps, lr_first, lr_last = 0, None, None
    run_precision = _train_precision(device, precision)
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lr_last = schedule.apply_lr(optimizer)
        lr_first = lr_last if lr_first is None else lr_first
        with precision_context(device, run_precision):
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
            dg = F.cross_entropy(lf, y)
            sums += torch.stack([gg.double(), dg.double(), (lf.argmax(1) != y).sum().double(),
                                 sums.new_full((), y.shape[0])])  # new_tensor would copy from the host and sync
        steps += 1
        if progress is not None and not progress.quiet and (step + 1) % interval == 0:
            progress.update(step + 1, loss=float(loss.detach()))  # reads the loss: a sync every `interval` steps only
    gg, dg, errors, n = sums.tolist()
    bad = (~torch.isfinite(losses[:steps])).nonzero()
    return {"gg_loss": gg / max(steps, 1), "dg_loss": dg / max(steps, 1), "train_error": errors / max(n, 1),
            "steps": steps, "first_nonfinite_step": int(bad[0]) + 1 if len(bad) else None,
            "lr_first": lr_first, "lr_last": lr_last}


def _run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.mode.replace('+', '')}-s{cfg.seed}-{stamp}"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch."""

    cfg: TrainConfig
    model: nn.Module  # the network (its state is what is saved)
    net: nn.Module  # what the steps call: the model, or its DDP wrapper
    info: ModelInfo
    optimizer: torch.optim.Optimizer
    schedule: GenerativeSchedule
    scaler: torch.amp.GradScaler | None
    train_loader: object
    test_loader: object
    holdout_loader: object | None  # auto's held-out images (the holdout rule), else None
    device: torch.device
    ctx: DistContext
    run_dir: Path
    resolved: dict
    history: list
    log: Callable[[str], None]
    quiet: bool
    started: str


def train(cfg: TrainConfig, log: Callable[[str], None] = _log, *, trust_pickle: bool = False, overwrite: bool = False,
          quiet: bool = False) -> dict:
    """Run a whole training job from a config; returns the summary also written to ``RUN/summary.json``.

    Args:
        cfg: the settings (a recipe plus overrides: :func:`gencnn_plugin.config.load_config`).
        log: where the per-epoch lines and the final line go (rank 0 only).
        trust_pickle: unpickle ``cfg.weights`` fully (the caller's explicit trust; never read from a file).
        overwrite: replace the run in an existing run folder (otherwise that is an error unless resuming).
        quiet: no progress display within epochs.
    """
    ctx, device = dist_setup(resolve_device(cfg.device))
    try:
        with _deterministic(cfg.deterministic, device):
            return _train(cfg, log if ctx.is_main else (lambda msg: None), ctx, device, trust_pickle, overwrite,
                          quiet or not ctx.is_main)
    finally:
        dist_cleanup(ctx)


@contextlib.contextmanager
def _deterministic(on: bool, device: torch.device):
    """``torch.use_deterministic_algorithms`` and cuDNN without benchmarking for the run (restored afterwards)."""
    if not on:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's requirement for reproducibility
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
           torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old[1], old[2]


def _state_path(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    p = Path(cfg.resume)
    state = p if p.is_file() else p / TRAIN_STATE_NAME
    if not state.is_file():
        if p.is_dir() and (p / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"cannot resume {p}: it has a checkpoint but no {TRAIN_STATE_NAME}")
        if p.is_dir():
            raise CheckpointError(f"cannot resume {p}: no epoch of that run had finished, so there is nothing to "
                                  f"continue; start it again with --overwrite")
        raise FileNotFoundError(f"cannot resume: {state} does not exist")
    return state


def _write_run_file(path: Path, text: str) -> None:
    """A run folder's own file, written atomically and never through a symbolic link (the user did not name it)."""
    with atomic_path(path, follow_symlinks=False) as tmp:
        tmp.write_text(text)


def _check_run_files(run_dir: Path) -> None:
    """A run folder's files are written in place: refuse links planted among them before anything is written."""
    for name in RUN_FILES:
        try:
            check_output_path(run_dir / name, follow_symlinks=False)
        except OutputPathError as e:
            raise CheckpointError(f"run folder {run_dir}: {e}") from None


def _claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run may use an empty or missing folder; a folder holding a run needs --resume or --overwrite."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out: {run_dir} is a file, not a run folder")
    found = [n for n in RUN_FILES if (run_dir / n).exists()]
    if found and not overwrite:
        raise ConfigError(f"out: {run_dir} already holds a run ({', '.join(found)}); continue it with --resume "
                          f"{run_dir}, or pass --overwrite to replace it")
    for n in found:  # --overwrite: the old run's files go, nothing else in the folder is touched
        (run_dir / n).unlink()


def _train(cfg: TrainConfig, log, ctx: DistContext, device: torch.device, trust_pickle: bool, overwrite: bool,
           quiet: bool) -> dict:
    state_path = _state_path(cfg)
    state = load_train_state(state_path) if state_path else None
    if state is not None:
        missing = [k for k in ("epoch", "model", "optimizer", "schedule", "history") if k not in state]
        if missing:
            raise CheckpointError(f"{state_path} is not a complete resume state (missing {', '.join(missing)})")
    run_dir = state_path.parent if state_path else _run_dir(cfg)
    if ctx.enabled:  # one run folder for all ranks: rank 0's (its name may hold a time stamp)
        shared = [str(run_dir)]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    if ctx.is_main:
        _check_run_files(run_dir)
        if state is None:
            _claim_run_dir(run_dir, overwrite)
    torch.manual_seed(cfg.seed)  # model initialisation: the same on every rank (DDP also broadcasts rank 0's)
    model, info, train_loader, test_loader, holdout_loader = build_data(cfg, device, ctx, load_weights=state is None,
                                                                        trust_pickle=trust_pickle)
    if ctx.enabled and cfg.gg_estimator == "global" and cfg.mode != "dg":
        model = convert_global_batchnorm(model)  # q(x)'s sample is the global batch: normalise with its statistics
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    policy = LRPolicy(cfg.lr_policy, gamma=cfg.lr_gamma, power=cfg.lr_power,
                      step_iters=cfg.lr_step_epochs * steps_per_epoch)
    schedule = GenerativeSchedule(cfg.mode, base_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                                  switch_epoch=cfg.switch_epoch, switch_lr=cfg.switch_lr,
                                  ess_threshold=cfg.ess_threshold, ess_plateau=cfg.ess_plateau, lr_policy=policy,
                                  gg_estimator=cfg.gg_estimator, auto_rule=cfg.auto_rule, patience=cfg.patience,
                                  mix_start=cfg.mix_start, mix_end=cfg.mix_end, label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None

    start_epoch, history = 0, []
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{state_path} does not fit this run's model and settings "
                                  f"({str(e).strip().splitlines()[0][:200]})") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        log(f"resumed {run_dir} at epoch {start_epoch}")
    resolved = dataclasses.asdict(dataclasses.replace(cfg, out=str(run_dir), resume=None))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        # metrics.jsonl mirrors ``history``, which the resume state carries, so a resumed run rewrites it whole.
        _write_run_file(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ranks = f", {ctx.world_size} processes (DDP, GG estimator {cfg.gg_estimator})" if ctx.enabled else ""
    log(f"training {info.model} on {cfg.dataset}, mode {cfg.mode}, {cfg.epochs} epochs x {steps_per_epoch} steps, "
        f"device {device}{ranks}, run {run_dir}")
    run = _Run(cfg, model, net, info, optimizer, schedule, scaler, train_loader, test_loader, holdout_loader, device,
               ctx, run_dir, resolved, history, log, quiet, _now())
    with _signals_interrupt():
        for epoch in range(start_epoch, cfg.epochs):
            try:
                _run_epoch(run, epoch)
            except KeyboardInterrupt:
                done = len(run.history)
                if done:
                    kept = f"the checkpoint of epoch {done} is kept in {run_dir}; continue with: gencnn train " \
                           f"--resume {run_dir}"
                else:
                    kept = f"no epoch had finished, so nothing was saved; start again with --overwrite --out {run_dir}"
                raise TrainingInterrupted(f"interrupted in epoch {epoch + 1}; {kept}") from None

    history = run.history
    summary = {
        "name": cfg.name, "model": info.model, "dataset": cfg.dataset, "mode": cfg.mode, "seed": cfg.seed,
        "epochs": cfg.epochs, "test_error": history[-1]["test_error"] if history else None,
        "test_loss": history[-1]["test_loss"] if history else None,
        "switched_at_epoch": schedule.switched_at, "train_seconds": sum(r["seconds"] for r in history),
        "seconds_per_epoch": {ph: _mean([r["seconds"] for r in history if r["phase"] == ph]) for ph in ("gg", "dg")},
        "precision": cfg.precision, "deterministic": cfg.deterministic, **environment(device),
        "started": run.started, "finished": _now(), "date": _now(),
        "checkpoint": str(run_dir / CHECKPOINT_NAME), "run_dir": str(run_dir),
    }
    if ctx.is_main:
        _write_run_file(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if history:
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


@contextlib.contextmanager
def _deferred_interrupts():
    """Ctrl-C and SIGTERM wait until the block ends (main thread): the resume state and the checkpoint are written as
    a pair, so an interrupt between the two cannot leave a resume state one epoch ahead of the weights. (Handlers,
    not a signal mask: any thread of the process may receive a signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


def _run_epoch(run: _Run, epoch: int) -> None:
    """One epoch: train, evaluate, then rank 0 writes the resume state and the checkpoint (each atomically)."""
    cfg, schedule, ctx = run.cfg, run.schedule, run.ctx
    # dropout etc.: a resumed epoch draws the same numbers; each rank its own
    torch.manual_seed(cfg.seed * 100_003 + epoch + 7919 * ctx.rank)
    if hasattr(run.train_loader, "set_epoch"):
        run.train_loader.set_epoch(epoch)
    phase = schedule.start_epoch(epoch)
    if cfg.switch_reset and schedule.switched_at == epoch and epoch > 0 and phase == "dg" \
            and not _optimizer_is_fresh(run.optimizer):
        run.optimizer = make_optimizer(run.model, cfg)  # the DG phase starts as a new solver: no momentum carried
    steps = len(run.train_loader)
    progress = Progress(steps, f"epoch {epoch + 1}/{cfg.epochs} [{phase}]", "steps", quiet=run.quiet, every=30.0)
    t0 = time.perf_counter()
    try:
        with gg_batchnorm(run.model, cfg.gg_batchnorm if phase in ("gg", "mix") else "batch"):
            stats = train_one_epoch(run.net, run.train_loader, run.optimizer, schedule, run.device, cfg.precision,
                                    run.scaler, progress, cfg.log_interval)
    finally:
        progress.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t0
    holdout = evaluate(run.model, run.holdout_loader, run.device, cfg.precision)["error"] \
        if schedule.needs_holdout and run.holdout_loader is not None else None
    end = schedule.end_epoch(holdout)
    saved = len(run.history)
    kept = (f"the last good checkpoint is {run.run_dir / CHECKPOINT_NAME} (epoch {saved})" if saved
            else "nothing was saved")
    if stats["first_nonfinite_step"] or not (math.isfinite(stats["gg_loss"]) and math.isfinite(stats["dg_loss"])):
        at = f" at step {stats['first_nonfinite_step']} of {stats['steps']}" if stats["first_nonfinite_step"] else ""
        raise NonFiniteLossError(f"non-finite loss in epoch {epoch + 1}{at} ({phase}); {kept}; try a lower lr")
    t1 = time.perf_counter()
    test = evaluate(run.model, run.test_loader, run.device, cfg.precision)
    record = {
        "epoch": epoch + 1, "phase": end["phase"], "gg_loss": stats["gg_loss"], "dg_loss": stats["dg_loss"],
        "train_error": stats["train_error"], "test_error": test["error"],
        "test_loss": test["loss"], "mean_ess": end["mean_ess"], "holdout_error": holdout,
        "mix_weight": schedule.mix_weight if cfg.mode == "mix" else None, "lr": stats["lr_first"],
        "lr_last": stats["lr_last"],
        "seconds": seconds, "eval_seconds": time.perf_counter() - t1, "finished": _now(),
    }
    run.history.append(record)
    if not ctx.is_main:
        if ctx.enabled:
            torch.distributed.barrier()  # rank 0 is writing the files every rank may resume from
        return
    state = {"epoch": epoch + 1, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "schedule": schedule.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else {},
             "history": run.history}
    with _deferred_interrupts():  # no Ctrl-C or SIGTERM between the two files
        try:
            save_train_state(run.run_dir / TRAIN_STATE_NAME, state)
            save_checkpoint(run.run_dir / CHECKPOINT_NAME, run.model, run.info, follow_symlinks=False, mode=cfg.mode,
                            epoch=epoch + 1,
                            phase=end["phase"], dataset=cfg.dataset, test_error=test["error"], config=run.resolved,
                            gencnn=__version__, date=_now())
        except (OSError, RuntimeError, CheckpointError) as e:  # disk full, quota, permissions: previous files stay
            reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200]
            raise CheckpointError(f"could not save epoch {epoch + 1} to {run.run_dir} ({reason}); "
                                  f"{kept.replace('the last good', 'the previous')}") from None
    _write_run_file(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.history))
    if ctx.enabled:
        torch.distributed.barrier()
    switched = " -> DG next" if end["switch_next"] else ""
    run.log(f"epoch {epoch + 1:3d}/{cfg.epochs} [{end['phase']}] gg_loss {record['gg_loss']:.4f} "
            f"dg_loss {record['dg_loss']:.4f} test_error {100 * test['error']:.2f}% ess {end['mean_ess']:.3f} "
            f"lr {record['lr']:.2e} {seconds:.1f}s{switched}")


def _optimizer_is_fresh(optimizer: torch.optim.Optimizer) -> bool:
    return not any(optimizer.state.values())


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
