"""Rollout: seed-derived noise, micro-batch independence, recorded log-probs."""

import torch

from slas.config import SampleConfig
from slas.sampling.rollout import _mix, make_times, rollout, sample_noise, transition
from tests.conftest import tiny_world_backbone


def test_noise_depends_only_on_its_keys():
    a = sample_noise((3, 4, 4), seed=1, iteration=2, ids=torch.tensor([5, 6, 7]), step=3)
    b = sample_noise((3, 4, 4), seed=1, iteration=2, ids=torch.tensor([7, 5]), step=3)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    c = sample_noise((3, 4, 4), seed=1, iteration=2, ids=torch.tensor([5]), step=4)
    assert not torch.equal(a[0], c[0])
    assert len({_mix(1, 2, k, s) for k in range(50) for s in range(-1, 20)}) == 50 * 21


def run(micro: int, n: int = 4, cfg_overrides=None):
    backbone = tiny_world_backbone()
    cfg = SampleConfig(num_steps=3, group_size=2, batch_size=n, micro_batch_size=micro,
                       **(cfg_overrides or {}))
    cond = backbone.encode_prompts(["a photo of a red circle", "a photo of two squares"])
    ids = torch.arange(n)
    times = make_times(backbone, cfg)
    return backbone, cfg, rollout(backbone, cond, cfg, times=times, prompt_ids=ids // 2,
                                  group_ids=ids // 2, sample_ids=ids, seed=3, iteration=0)


def test_micro_batch_size_changes_only_rounding():
    _, _, a = run(2)
    _, _, b = run(4)
    assert torch.equal(a.latents[:, 0], b.latents[:, 0])  # identical initial noise
    assert torch.allclose(a.latents, b.latents, atol=1e-4)
    assert a.latents.shape == (4, 4, 3, 32, 32) and a.log_probs.shape == (4, 3)


def test_same_initial_noise_per_group():
    _, _, t = run(4, cfg_overrides={"same_initial_noise": True})
    assert torch.equal(t.latents[0, 0], t.latents[1, 0])
    assert not torch.equal(t.latents[0, 0], t.latents[2, 0])
    assert not torch.equal(t.latents[0, 1], t.latents[1, 1])  # SDE noise still per sample


def test_recorded_log_probs_recompute_exactly():
    backbone, cfg, t = run(4)
    cond = backbone.encode_prompts(["a photo of a red circle", "a photo of two squares"])
    for i in range(cfg.num_steps):
        step = torch.full((4,), i)
        out = backbone.predict(t.latents[:, i], t.times[step].float(),
                               cond.select(t.prompt_ids), 1.0)
        res = transition(backbone, cfg, t.times, step, t.latents[:, i], out,
                         prev_sample=t.latents[:, i + 1])
        assert torch.equal(res.log_prob, t.log_probs[:, i])


def test_flow_times_follow_schedule():
    backbone = tiny_world_backbone()
    times = make_times(backbone, SampleConfig(num_steps=4, schedule="shift", shift=3.0))
    # sigma = 3t / (1 + 2t) at t = 1, .75, .5, .25, 0
    assert torch.allclose(times, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-6)


def run_with(micro: int = 4, n: int = 4, num_steps: int = 4, eta: float = 0.3, **kwargs):
    backbone = tiny_world_backbone()
    cfg = SampleConfig(num_steps=num_steps, group_size=2, batch_size=n, micro_batch_size=micro,
                       eta=eta)
    cond = backbone.encode_prompts(["a photo of a red circle", "a photo of two squares"])
    ids = torch.arange(n)
    return rollout(backbone, cond, cfg, times=make_times(backbone, cfg), prompt_ids=ids // 2,
                   group_ids=ids // 2, sample_ids=ids, seed=3, iteration=0, **kwargs)


def test_sde_window_is_ode_outside_and_sde_inside():
    ode = run_with(eta=0.0)
    mixed = run_with(sde_steps=range(1, 3))
    full = run_with()
    # step 0 is deterministic: the same as the ODE rollout from the same initial noise
    assert torch.equal(mixed.latents[:, :2], ode.latents[:, :2])
    assert not torch.equal(mixed.latents[:, 2], ode.latents[:, 2])
    # steps 1-2 are the SDE with the same noise keys as a full-SDE rollout
    assert (mixed.log_probs[:, [0, 3]] == 0).all() and (mixed.log_probs[:, 1:3] != 0).all()
    assert (full.log_probs != 0).all()


def test_on_chunk_sees_every_micro_batch_in_order():
    seen = []
    t = run_with(micro=1, on_chunk=lambda a, b, x: seen.append((a, b, x.clone())))
    assert [(a, b) for a, b, _ in seen] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert torch.equal(torch.cat([x for *_, x in seen]), t.latents[:, -1])
