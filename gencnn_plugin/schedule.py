"""When to use the generative gradient (GG) and when the discriminative one (DG), and at what learning rate.

:class:`GenerativeSchedule` is the one object a training loop asks, per step, for its loss and learning rate; our
trainer uses it and so can timm's train.py, a Lightning module or a 20-line loop (docs/training_hooks.md).
Modes: ``dg``; ``gg``; ``gg+dg`` (GG for ``switch_epoch`` epochs, then DG from ``switch_lr``, as in the paper's
section 4.1); ``auto`` (GG, then DG, switching by a rule, at most after ``switch_epoch`` epochs); ``mix`` (every step
lambda GG + (1 - lambda) DG, lambda going linearly from ``mix_start`` at the first epoch to ``mix_end`` at the last).

``auto``'s rules: ``holdout`` (default) switches once the error on images held out of the training set has not
improved for ``patience`` epochs: GG's gains have run out. ``ess`` is the paper's hint (section 3.2: switch once the
importance weights of eq. (7) grow skewed): the epoch's mean normalised ESS falls below ``ess_threshold`` or by less
than the fraction ``ess_plateau``. On MNIST the ESS settles near 1/K within 2 epochs and stays there
(docs/results/auto_switch.md), so the ESS rule switches after epoch 3 while the held-out error keeps improving for
about 12 more epochs; the held-out rule is the one the data support.
At the switch the LR policy restarts from iteration 0 with the new base LR, as a new Caffe solver would (the trainer
also starts a fresh optimizer). ``label_smoothing`` applies to the DG cross-entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import GG_ESTIMATORS
from .losses import generative_loss, importance_ess

__all__ = ["LRPolicy", "GenerativeSchedule", "MODES", "LR_POLICIES", "AUTO_RULES"]

MODES = ("dg", "gg", "gg+dg", "auto", "mix")
AUTO_RULES = ("holdout", "ess")
LR_POLICIES = ("inv", "step", "cosine", "fixed")


@dataclass
class LRPolicy:
    """Learning-rate policy of iteration t within a phase of T iterations.

    ``inv`` (Caffe): base (1 + gamma t)^-power; ``step``: base gamma^floor(t / step_iters);
    ``cosine``: base (1 + cos(pi t / T)) / 2; ``fixed``: base.
    """

    name: str = "inv"
    gamma: float = 1e-4
    power: float = 0.75
    step_iters: int = 100_000

    def __post_init__(self) -> None:
        if self.name not in LR_POLICIES:
            raise ValueError(f"unknown lr policy {self.name!r}: use {', '.join(LR_POLICIES)}")

    def __call__(self, base_lr: float, t: int, total: int) -> float:
        if self.name == "inv":
            return base_lr * (1.0 + self.gamma * t) ** (-self.power)
        if self.name == "step":
            return base_lr * self.gamma ** (t // max(1, self.step_iters))
        if self.name == "cosine":
            return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(1, total)))
        return base_lr


class GenerativeSchedule:
    """Chooses GG or DG per epoch and the LR per step; tracks the importance-sampling ESS on the device.

    Call :meth:`start_epoch` before an epoch; each step :meth:`apply_lr`, :meth:`loss` (once per training step: it
    also records the ESS) and, after ``optimizer.step()``, :meth:`step`; then :meth:`end_epoch`, where ``auto``
    mode reads the epoch's mean ESS (one host sync per epoch).

    Args:
        mode: ``dg``, ``gg``, ``gg+dg`` or ``auto`` (:data:`MODES`).
        base_lr: the learning rate of the first phase.
        epochs, steps_per_epoch: the run's length, for policies that need the phase's length (cosine).
        switch_epoch: ``gg+dg``: the number of GG epochs.
        switch_lr: the base learning rate of the DG phase (default: ``base_lr``).
        ess_threshold, ess_plateau: ``auto`` switches after an epoch whose mean normalised ESS is below the
            threshold or fell by less than the plateau fraction.
        lr_policy: an :class:`LRPolicy` (None: the base rate throughout).
        track_ess: record the importance-sampling ESS of eq. (7) each step (on the device).
        gg_estimator: under DDP, ``local`` (each process's batch is q's sample) or ``global`` (all of them).
    """

    def __init__(self, mode: str = "gg+dg", base_lr: float = 0.01, epochs: int = 25, steps_per_epoch: int = 1,
                 switch_epoch: int | None = None, switch_lr: float | None = None, ess_threshold: float = 0.1,
                 ess_plateau: float | None = 0.01, lr_policy: LRPolicy | None = None, track_ess: bool = True,
                 gg_estimator: str = "local", auto_rule: str = "holdout", patience: int = 3, mix_start: float = 1.0,
                 mix_end: float = 0.0, label_smoothing: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "gg+dg" and switch_epoch is None:
            raise ValueError("mode 'gg+dg' needs switch_epoch (the number of GG epochs)")
        if auto_rule not in AUTO_RULES:
            raise ValueError(f"auto_rule must be one of {', '.join(AUTO_RULES)}, got {auto_rule!r}")
        self.auto_rule, self.patience = auto_rule, patience
        self.mix_start, self.mix_end, self.label_smoothing = mix_start, mix_end, label_smoothing
        self.best_holdout: float | None = None  # auto/holdout: the best held-out error so far, and its epoch
        self.best_epoch = -1
        self.mode, self.base_lr, self.epochs, self.steps_per_epoch = mode, base_lr, epochs, steps_per_epoch
        self.switch_epoch = switch_epoch
        self.switch_lr = base_lr if switch_lr is None else switch_lr
        self.ess_threshold, self.lr_policy, self.track_ess = ess_threshold, lr_policy, track_ess
        self.ess_plateau = ess_plateau
        if gg_estimator not in GG_ESTIMATORS:
            raise ValueError(f"gg_estimator must be one of {', '.join(GG_ESTIMATORS)}, got {gg_estimator!r}")
        self.gg_estimator = gg_estimator  # under DDP: q(x) = this rank's batch, or all ranks' (distributed.py)
        self.last_ess: float | None = None  # the previous epoch's mean ESS, for the plateau test
        self.phase = {"dg": "dg", "mix": "mix"}.get(mode, "gg")
        self.switched_at: int | None = None  # epoch at which DG started, for gg+dg and auto
        self.epoch = 0
        self.step_in_phase = 0
        self._ess_sum: torch.Tensor | float = 0.0
        self._ess_count = 0

    # -- per epoch ---------------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> str:
        """Enter ``epoch`` (0-based); returns the phase, ``"gg"`` or ``"dg"``."""
        self.epoch = epoch
        if self.mode == "gg+dg" and self.phase == "gg" and epoch >= self.switch_epoch:
            self._switch(epoch)
        self._ess_sum, self._ess_count = 0.0, 0
        return self.phase

    @property
    def needs_holdout(self) -> bool:
        """Whether :meth:`end_epoch` wants this epoch's held-out error (auto mode, holdout rule, still in GG)."""
        return self.mode == "auto" and self.auto_rule == "holdout" and self.phase == "gg"

    def end_epoch(self, holdout_error: float | None = None) -> dict:
        """Close the epoch: its mean ESS, and in ``auto`` mode the decision to switch for the next epoch
        (``holdout_error``: the error on held-out training images, for the holdout rule)."""
        mean_ess = float(self._ess_sum / self._ess_count) if self._ess_count else float("nan")
        switch_next = False
        if self.mode == "auto" and self.phase == "gg":
            done = self.epoch + 1
            if self.auto_rule == "ess":
                settled = (self.ess_plateau is not None and self.last_ess is not None
                           and mean_ess > self.last_ess * (1.0 - self.ess_plateau))
                switch_next = mean_ess < self.ess_threshold or settled
            else:
                if holdout_error is None:
                    raise ValueError("auto mode's holdout rule needs the epoch's held-out error")
                if self.best_holdout is None or holdout_error < self.best_holdout:
                    self.best_holdout, self.best_epoch = holdout_error, self.epoch
                switch_next = self.epoch - self.best_epoch >= self.patience
            if self.switch_epoch is not None and done >= self.switch_epoch:
                switch_next = True  # the most GG epochs auto runs
            switch_next = switch_next and done < self.epochs
        self.last_ess = mean_ess
        if switch_next:
            self._switch(self.epoch + 1)
        return {"phase": "gg" if switch_next else self.phase, "mean_ess": mean_ess, "switch_next": switch_next}

    def _switch(self, epoch: int) -> None:
        self.phase, self.switched_at, self.step_in_phase = "dg", epoch, 0

    # -- per step ------------------------------------------------------------------------------------------------
    @property
    def phase_base_lr(self) -> float:
        return self.switch_lr if self.switched_at is not None else self.base_lr

    def lr(self) -> float:
        """The learning rate for the current step."""
        if self.lr_policy is None:
            return self.phase_base_lr
        start = self.switched_at if self.switched_at is not None else 0
        end = self.epochs if self.switched_at is not None or self.mode != "gg+dg" else self.switch_epoch
        return self.lr_policy(self.phase_base_lr, self.step_in_phase, (end - start) * self.steps_per_epoch)

    def apply_lr(self, optimizer: torch.optim.Optimizer) -> float:
        """Set the current step's learning rate on every parameter group (times its ``lr_mult``); returns it."""
        lr = self.lr()
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    @property
    def mix_weight(self) -> float:
        """lambda of the mix mode at this epoch: linear from ``mix_start`` (first epoch) to ``mix_end`` (last)."""
        frac = self.epoch / max(1, self.epochs - 1)
        return self.mix_start + (self.mix_end - self.mix_start) * frac

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The current phase's loss: GG (eq. 8, the batch as the sample of q), DG (cross-entropy, with
        ``label_smoothing``), or in ``mix`` mode lambda GG + (1 - lambda) DG."""
        if self.track_ess:
            self._ess_sum = self._ess_sum + importance_ess(logits, targets)  # stays on the device: no sync
            self._ess_count += 1
        if self.phase == "dg":
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        gg_logits, gg_targets = logits, targets
        if self.gg_estimator == "global" and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1:
            from .distributed import gather_for_gg

            gg_logits, gg_targets = gather_for_gg(logits, targets)
        gg = generative_loss(gg_logits, gg_targets)
        if self.phase == "gg":
            return gg
        lam = self.mix_weight
        return lam * gg + (1 - lam) * F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def step(self) -> None:
        """Count one optimizer step (after ``optimizer.step()``), as ``torch.optim.lr_scheduler`` does."""
        self.step_in_phase += 1

    # -- resume ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"phase": self.phase, "switched_at": self.switched_at, "epoch": self.epoch,
                "step_in_phase": self.step_in_phase, "last_ess": self.last_ess, "best_holdout": self.best_holdout,
                "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.switched_at = state["phase"], state["switched_at"]
        self.epoch, self.step_in_phase = state["epoch"], state["step_in_phase"]
        self.last_ess = state.get("last_ess")
        self.best_holdout, self.best_epoch = state.get("best_holdout"), state.get("best_epoch", -1)
