"""The HMC sampler on targets with known answers, its robustness, and the chain diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from gencnn_plugin.diagnostics import effective_sample_size, split_rhat
from gencnn_plugin.hmc import HMCConfig, hmc_sample


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_linear_score_gives_the_known_gaussian():
    """f(x) = a.x with q = N(0, s^2 I): p(x) = N(s^2 a, s^2 I)."""
    a, s = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]), 0.7
    r = hmc_sample(lambda x: x @ a, torch.zeros(3000, 5), iters=30, leapfrog_steps=10, step_size=0.3, mass=1.0,
                   sigma=s, generator=gen())
    torch.testing.assert_close(r.x.mean(0), s**2 * a, atol=0.06, rtol=0)  # ~4 standard errors
    torch.testing.assert_close(r.x.var(0), torch.full((5,), s**2), atol=0.06, rtol=0)
    assert r.summary["accept_rate"] > 0.9


@pytest.mark.parametrize("mala", [False, True])
def test_zero_score_returns_the_reference(mala):
    s = 2.0
    r = hmc_sample(lambda x: torch.zeros(x.shape[0]), torch.zeros(3000, 3, 2, 2), iters=40 if mala else 20,
                   leapfrog_steps=1 if mala else 8, step_size=0.8 if mala else 0.5, mass=1.0, sigma=s, generator=gen(1))
    flat = r.x.flatten(1)
    assert flat.mean().abs() < 0.05
    torch.testing.assert_close(flat.var(0), torch.full((12,), s**2), atol=0.4, rtol=0)


def test_acceptance_falls_as_the_step_grows():
    c = torch.tensor([0.3, 1.0, 3.0, 10.0])  # curvatures spread so no step size resonates with all of them

    def accept(eps):
        r = hmc_sample(lambda x: -(c * x * x).sum(1) / 2, torch.zeros(400, 4), iters=15, leapfrog_steps=10,
                       step_size=eps, mass=1.0, generator=gen(2))
        return r.summary["accept_rate"]

    rates = [accept(eps) for eps in (0.05, 0.3, 0.45, 0.6)]
    assert rates == sorted(rates, reverse=True) and rates[0] > 0.95 and rates[-1] < 0.4, rates


def test_mass_and_step_only_matter_through_step_over_root_mass():
    def run(eps, m):
        return hmc_sample(lambda x: -(x**2).sum(1), torch.zeros(64, 3), iters=5, leapfrog_steps=5, step_size=eps,
                          mass=m, generator=gen(3)).summary["accept_rate"]

    assert run(0.1, 0.01) == pytest.approx(run(1.0, 1.0), abs=0.05)


def test_exploding_scores_are_rejected_never_nan():
    def score(x):
        return torch.exp(50 * x.flatten(1).sum(1))  # overflows to inf along most trajectories

    r = hmc_sample(score, torch.zeros(32, 4), iters=5, leapfrog_steps=5, step_size=1.0, mass=1.0, generator=gen())
    assert torch.isfinite(r.x).all() and r.summary["nonfinite_proposals"] > 0
    assert r.summary["accept_rate"] < 0.5


def test_seeded_runs_are_reproducible():
    def run():
        return hmc_sample(lambda x: x.sum(1), torch.zeros(8, 3), iters=5, leapfrog_steps=3, step_size=0.2,
                          mass=1.0, generator=gen(7)).x

    assert torch.equal(run(), run())


def test_low_precision_score_keeps_float32_energies_and_samples_the_target():
    """A bf16 score: states, energies and traces stay float32, and the samples still have the known target's
    moments (f = a.x: N(a, I)) within bf16's rounding of the score."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 1)
    a = layer.weight.detach()[0]
    # a trajectory of a quarter period (0.2 x 8 ~ pi / 2) refreshes a unit Gaussian in one iteration
    r = hmc_sample(lambda x: layer(x).squeeze(1), torch.zeros(3000, 6), iters=30, leapfrog_steps=8, step_size=0.2,
                   mass=1.0, generator=gen(), precision="bf16")
    assert r.x.dtype == torch.float32 and all(v.dtype == torch.float32 for v in r.trace.values())
    torch.testing.assert_close(r.x.mean(0), a, atol=0.07, rtol=0)
    torch.testing.assert_close(r.x.var(0), torch.ones(6), atol=0.1, rtol=0)
    assert r.summary["accept_rate"] > 0.8


def test_dual_averaging_adapts_during_warmup_only():
    r = hmc_sample(lambda x: -(x**2).sum(1) / 2, torch.zeros(200, 10), iters=60, leapfrog_steps=10, step_size=3.0,
                   mass=1.0, generator=gen(), adapt_steps=40, target_accept=0.7)
    eps = r.trace["step_size"]
    assert eps[0].mean() == 3.0 and eps[-1].mean() < 2.0
    assert torch.equal(eps[41], eps[-1])  # frozen after warm-up
    assert 0.5 < float(r.trace["accepted"][40:].mean()) <= 1.0


def test_callback_and_stop_end_the_run():
    seen = []

    def callback(step):
        seen.append((step.iteration, step.x.shape, step.accepted.shape))
        return step.iteration == 2

    r = hmc_sample(lambda x: x.sum(1), torch.zeros(4, 3), iters=10, leapfrog_steps=2, step_size=0.1, mass=1.0,
                   generator=gen(), callback=callback)
    assert r.iters_done == 3 and r.stopped and [s[0] for s in seen] == [0, 1, 2]
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 7  # mid-way through the 4th trajectory of 2 leapfrog steps

    r = hmc_sample(lambda x: x.sum(1), torch.zeros(4, 3), iters=10, leapfrog_steps=2, step_size=0.1, mass=1.0,
                   generator=gen(), stop=stop)
    assert r.stopped and r.iters_done == 3


def test_samples_of_a_cnn_node_move_away_from_the_start():
    from gencnn_plugin import create_model
    from gencnn_plugin.nodes import node_score

    torch.manual_seed(0)
    model, info = create_model("lenet")
    score = node_score(model, info, "conv2:3")
    x0 = torch.randn(4, 1, 28, 28)
    r = hmc_sample(score, x0, iters=5, leapfrog_steps=10, step_size=0.01, mass=0.01, generator=gen())
    assert r.summary["accept_rate"] > 0.5
    assert (r.x - x0).flatten(1).norm(dim=1).min() > 1.0
    assert r.trace["score"][-1].mean() > score(x0).mean()


@pytest.mark.parametrize("kw,match", [(dict(step_size=0.0), "step_size"), (dict(leapfrog_steps=0), "leapfrog"),
                                      (dict(chains=0), "chains"), (dict(mass=-1.0), "mass"),
                                      (dict(step_size=math.inf), "step_size"), (dict(precision="fp8"), "precision")])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        HMCConfig(**kw)


def test_ess_and_rhat():
    g = gen(0)
    iid = torch.randn(400, 8, generator=g)
    assert 0.7 * 3200 < effective_sample_size(iid) < 1.3 * 3200
    assert abs(split_rhat(iid) - 1.0) < 0.02
    ar = torch.zeros(4000, 4)
    e = torch.randn(4000, 4, generator=g)
    ar[0] = e[0] / math.sqrt(1 - 0.81)
    for t in range(1, 4000):
        ar[t] = 0.9 * ar[t - 1] + e[t]
    assert effective_sample_size(ar) == pytest.approx(16000 * 0.1 / 1.9, rel=0.3)  # AR(1): n (1 - phi) / (1 + phi)
    assert split_rhat(iid + torch.arange(8.0)) > 1.5


def test_rhat_is_computed_within_each_node_group():
    from gencnn_plugin.hmc import summarize

    # two groups of chains with different targets: mixed within each group, far apart between them
    r = hmc_sample(lambda x: torch.where(torch.arange(x.shape[0]) < 8, 20.0, 5.0) * x[:, 0],  # f ~ 400 vs ~ 25
                   torch.zeros(16, 2), iters=40, leapfrog_steps=5, step_size=0.3, mass=1.0, generator=gen())
    assert summarize(r, groups=1)["rhat_score"] > 1.5
    assert summarize(r, groups=2)["rhat_score"] < 1.2


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_temperature_scales_the_tilt(temperature):
    """f(x) = a.x with q = N(0, s^2 I) at temperature T: p(x) ~ exp(a.x / T) q(x) = N(s^2 a / T, s^2 I)."""
    a, s = torch.tensor([1.0, -2.0, 0.5]), 0.6
    r = hmc_sample(lambda x: x @ a, torch.zeros(3000, 3), iters=30, leapfrog_steps=10, step_size=0.3, mass=1.0,
                   sigma=s, temperature=temperature, generator=gen(4))
    torch.testing.assert_close(r.x.mean(0), s**2 * a / temperature, atol=0.05, rtol=0)
    torch.testing.assert_close(r.x.var(0), torch.full((3,), s**2), atol=0.05, rtol=0)
    assert torch.allclose(r.trace["score"][-1], r.x @ a)  # the trace keeps f itself, not f / T


def test_an_old_positional_call_says_what_config_is():
    with pytest.raises(TypeError, match="config must be an HMCConfig"):
        hmc_sample(lambda x: x.sum(1), torch.zeros(2, 3), 5)


# ---------------------------------------------------------------------------------------------------------------
# replica exchange (parallel tempering)
# ---------------------------------------------------------------------------------------------------------------

def test_replica_exchange_keeps_the_cold_chain_exact():
    """A linear tilt at T = 0.25 with replicas up to T = 1: the T chain is still N(s^2 a / T, s^2 I), and the
    neighbours do swap (each swap re-tempers the moved state's cached gradient and energy)."""
    a, s, t = torch.tensor([1.0, -2.0, 0.5]), 0.6, 0.25
    r = hmc_sample(lambda x: x @ a, torch.zeros(3000, 3), iters=30, leapfrog_steps=10, step_size=0.3, mass=1.0,
                   sigma=s, temperature=t, replicas=3, hot_temperature=1.0, generator=gen(4))
    torch.testing.assert_close(r.x.mean(0), s**2 * a / t, atol=0.05, rtol=0)
    torch.testing.assert_close(r.x.var(0), torch.full((3,), s**2), atol=0.05, rtol=0)
    assert r.x.shape == (3000, 3) and r.trace["score"].shape == (30, 3000)  # only the T chains come back
    assert r.swap_rate is not None and r.swap_rate.shape == (2,) and (r.swap_rate > 0.05).all()
    assert r.summary["swap_rate"] == pytest.approx(r.swap_rate.tolist(), abs=1e-4)
    assert r.grad_evals == (1 + 30 * 10) * 3  # the work of every replica
    assert HMCConfig(temperature=0.25, replicas=3, hot_temperature=1.0).ladder == pytest.approx([0.25, 0.5, 1.0])


def _bimodal(x: torch.Tensor) -> torch.Tensor:
    """f(x) = log(0.55 N(x; 4, 1) + 0.45 N(x; -4, 1)) up to a constant, on the first coordinate."""
    x = x[:, 0]
    return torch.logsumexp(torch.stack([-(x - 4) ** 2 / 2 + math.log(0.55), -(x + 4) ** 2 / 2 + math.log(0.45)]), 0)


def test_replica_exchange_crosses_between_modes_with_the_right_weights():
    """At T = 0.25 the barrier between the modes is ~32 nats: chains started in one mode stay there without
    tempering; with replicas up to T = 4 the T chain visits both in the proportion quadrature gives."""
    s, t = 4.0, 0.25
    grid = torch.linspace(-12, 12, 24001).view(-1, 1)
    dens = torch.exp(_bimodal(grid) / t - grid[:, 0] ** 2 / (2 * s * s))
    want = float(dens[grid[:, 0] < 0].sum() / dens.sum())  # ~0.31
    x0 = torch.full((400, 1), 4.0)
    kw = dict(iters=300, leapfrog_steps=10, step_size=0.3, mass=1.0, sigma=s, temperature=t, generator=gen(7))
    plain = hmc_sample(_bimodal, x0, **kw)
    tempered = hmc_sample(_bimodal, x0, replicas=5, hot_temperature=4.0, **kw)
    assert float((plain.x[:, 0] < 0).float().mean()) < 0.02
    assert float((tempered.x[:, 0] < 0).float().mean()) == pytest.approx(want, abs=0.07)  # ~3 standard errors
    assert tempered.x[:, 0].abs().mean() == pytest.approx(4.0, abs=0.3)  # in the modes, not between them


def test_replica_exchange_keeps_node_groups_and_split_runs():
    """A chain's replicas are consecutive rows, so a two-node score (equal consecutive groups) sees each chain's
    replicas in its own group; chains split over devices (noise_rows) repeat the one-device run."""
    a = torch.tensor([1.0, 2.0])

    def two_nodes(x):
        sign = torch.where(torch.arange(x.shape[0]) < x.shape[0] // 2, 1.0, -1.0)
        return sign * (x @ a)

    kw = dict(iters=30, leapfrog_steps=8, step_size=0.3, mass=1.0, temperature=0.5, replicas=3, hot_temperature=2.0)
    r = hmc_sample(two_nodes, torch.zeros(2000, 2), generator=gen(2), **kw)
    torch.testing.assert_close(r.x[:1000].mean(0), a / 0.5, atol=0.08, rtol=0)
    torch.testing.assert_close(r.x[1000:].mean(0), -a / 0.5, atol=0.08, rtol=0)
    whole = hmc_sample(lambda x: x @ a, torch.zeros(6, 2), generator=gen(3), **kw)
    parts = [hmc_sample(lambda x: x @ a, torch.zeros(3, 2), generator=gen(3), noise_rows=torch.arange(k, k + 3),
                        noise_total=6, **kw).x for k in (0, 3)]
    torch.testing.assert_close(torch.cat(parts), whole.x)


def test_replica_settings():
    with pytest.raises(ValueError, match="hot_temperature"):
        HMCConfig(temperature=0.5, replicas=2, hot_temperature=0.5)
    with pytest.raises(ValueError, match="replicas"):
        HMCConfig(replicas=0)
    assert HMCConfig(temperature=0.5, hot_temperature=0.1).ladder == [0.5]  # one replica: the hot T is unused


def test_an_exchange_moves_states_and_retempers_their_energy_and_gradient():
    """With every test passed, pairs (0, 1) and (2, 3) swap (parity 0) and the pair (1, 2) does not; each row's U and
    dU/dx are then those of its new state at its own temperature, as potential() computes them."""
    from gencnn_plugin.hmc import exchange, potential

    def score(x):
        return torch.sin(3 * x).sum(1) + (x ** 3).sum(1) / 10

    ladder, s = torch.tensor([0.2, 0.5, 1.0, 3.0]), 0.7
    x = torch.randn(2 * 4, 5, generator=gen(5))
    row_t = ladder.repeat(2)
    u, grad, f = potential(score, x, s, temperature=row_t)
    x2, grad2, u2, f2, swapped = exchange(x, grad, u, f, ladder, 1 / s / s, 0, torch.full((2, 3), -math.inf))
    want = x.view(2, 4, 5)[:, [1, 0, 3, 2]].reshape(8, 5)
    torch.testing.assert_close(x2, want)
    u_want, grad_want, f_want = potential(score, want, s, temperature=row_t)
    torch.testing.assert_close(grad2, grad_want)
    torch.testing.assert_close(u2, u_want)
    torch.testing.assert_close(f2, f_want)
    assert swapped.tolist() == [2, 0, 2]
    # a finite threshold: each pair swaps exactly when log u < (1/T_r - 1/T_{r+1}) (f_{r+1} - f_r)
    fv = f.view(2, 4)
    log_a = (1 / ladder[:-1] - 1 / ladder[1:]) * (fv[:, 1:] - fv[:, :-1])
    for eps, want_swap in ((-1e-4, True), (1e-4, False)):
        out = exchange(x, grad, u, f, ladder, 1 / s / s, 0, log_a + eps)
        assert out[4].tolist() == ([2, 0, 2] if want_swap else [0, 0, 0])
    none = exchange(x, grad, u, f, ladder, 1 / s / s, 1, torch.full((2, 3), math.inf))  # every test failed
    torch.testing.assert_close(none[0], x)
    assert none[4].tolist() == [0, 0, 0]


def test_swap_rates_count_each_pair_in_the_iterations_of_its_parity():
    """With a zero score every tried swap is accepted (the log-ratio is 0), so the rate is exactly 1 for each pair
    whatever the iteration count's parity; a count of tries that was off would move it from 1."""
    for iters in (4, 5):
        r = hmc_sample(lambda x: torch.zeros(x.shape[0]), torch.zeros(6, 2), iters=iters, leapfrog_steps=2,
                       step_size=0.3, mass=1.0, temperature=0.5, replicas=4, hot_temperature=2.0, generator=gen(1))
        assert r.swap_rate.tolist() == [1.0, 1.0, 1.0]
