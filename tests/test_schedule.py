"""The GG/DG schedule: phases, switching, learning rates, resume state."""

from __future__ import annotations

import pytest
import torch

from gencnn_plugin import GenerativeSchedule, LRPolicy


def run_epochs(sched: GenerativeSchedule, epochs: int, logits: torch.Tensor, y: torch.Tensor) -> list[str]:
    phases = []
    for epoch in range(epochs):
        sched.start_epoch(epoch)
        for _ in range(sched.steps_per_epoch):
            sched.loss(logits, y)
            sched.step()
        phases.append(sched.end_epoch()["phase"])
    return phases


def test_gg_then_dg_switches_at_the_epoch_and_restarts_the_lr_policy():
    policy = LRPolicy("inv", gamma=1e-4, power=0.75)
    sched = GenerativeSchedule("gg+dg", base_lr=0.01, epochs=5, steps_per_epoch=10, switch_epoch=3,
                               switch_lr=0.003, lr_policy=policy)
    y = torch.tensor([0, 1, 2, 0])
    assert run_epochs(sched, 5, torch.randn(4, 3), y) == ["gg", "gg", "gg", "dg", "dg"]
    assert sched.switched_at == 3
    # after 2 DG epochs of 10 steps: Caffe's inv from iteration 0 with base lr 0.003
    assert sched.lr() == pytest.approx(0.003 * (1 + 1e-4 * 20) ** -0.75)


def test_loss_follows_the_phase():
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.randn(4, 2)
    gg = GenerativeSchedule("gg", track_ess=False)
    dg = GenerativeSchedule("dg", track_ess=False)
    from gencnn_plugin import generative_loss

    torch.testing.assert_close(gg.loss(logits, y), generative_loss(logits, y))
    torch.testing.assert_close(dg.loss(logits, y), torch.nn.functional.cross_entropy(logits, y))


def test_auto_switches_when_ess_falls():
    sched = GenerativeSchedule("auto", epochs=4, steps_per_epoch=2, ess_threshold=0.5, auto_rule="ess")
    y = torch.tensor([0, 1, 0, 1])
    flat = torch.zeros(4, 2)
    assert run_epochs(sched, 1, flat, y) == ["gg"] and sched.phase == "gg"
    peaked = torch.tensor([[30.0, 0.0], [0.0, 30.0], [0.0, 0.0], [0.0, 0.0]])  # one image carries each class
    sched.start_epoch(1)
    sched.loss(peaked, y)
    end = sched.end_epoch()
    assert end == {"phase": "gg", "mean_ess": pytest.approx(0.25, rel=1e-3), "switch_next": True}
    assert sched.start_epoch(2) == "dg" and sched.switched_at == 2


@pytest.mark.parametrize("plateau, switched_at", [(0.01, 2), (None, None)])
def test_auto_switches_when_ess_settles(plateau, switched_at):
    # Under GG the ESS settles near 1/K instead of falling below a threshold; a flat epoch-to-epoch ESS ends GG.
    sched = GenerativeSchedule("auto", epochs=4, steps_per_epoch=1, ess_threshold=0.01, ess_plateau=plateau,
                               auto_rule="ess")
    y = torch.tensor([0, 1, 0, 1])
    assert run_epochs(sched, 2, torch.zeros(4, 2), y) == ["gg", "gg"]
    assert sched.start_epoch(2) == ("dg" if switched_at else "gg") and sched.switched_at == switched_at


def test_lr_policies():
    assert LRPolicy("fixed")(0.1, 50, 100) == 0.1
    assert LRPolicy("step", gamma=0.1, step_iters=10)(1.0, 25, 100) == pytest.approx(0.01)
    assert LRPolicy("cosine")(1.0, 50, 100) == pytest.approx(0.5)
    assert LRPolicy("cosine")(1.0, 100, 100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="policy"):
        LRPolicy("exp")


def test_apply_lr_honours_group_multipliers():
    p, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [b], "lr_mult": 2.0}], lr=1.0)
    GenerativeSchedule("dg", base_lr=0.01).apply_lr(opt)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]


def test_state_dict_round_trip():
    a = GenerativeSchedule("gg+dg", epochs=4, steps_per_epoch=3, switch_epoch=1, lr_policy=LRPolicy())
    run_epochs(a, 2, torch.randn(3, 2), torch.tensor([0, 1, 0]))
    b = GenerativeSchedule("gg+dg", epochs=4, steps_per_epoch=3, switch_epoch=1, lr_policy=LRPolicy())
    b.load_state_dict(a.state_dict())
    assert b.lr() == a.lr() and b.phase == a.phase == "dg"


def test_bad_modes():
    with pytest.raises(ValueError, match="unknown mode"):
        GenerativeSchedule("ggdg")
    with pytest.raises(ValueError, match="switch_epoch"):
        GenerativeSchedule("gg+dg", switch_epoch=None)
