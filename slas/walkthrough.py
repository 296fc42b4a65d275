"""A walkthrough of the algorithmic core on a problem small enough to print.

The "model" is a flow-matching policy whose only parameters are one target point per prompt:
v_θ(x, σ) = (x − θ_p)/σ is the exact velocity of the straight path from noise to θ_p. The reward of
a sample is −‖x₀ − goal_p‖²/D. Rollouts use DanceGRPO's SDE step on the shift-3 schedule; the
update is the PPO-clip loss on recomputed log-probabilities. Every number printed is computed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slas.advantages import clamp_advantages, get_advantage_fn
from slas.losses import ppo_clip_loss
from slas.sampling import flow_sde_step, linear_sigmas, shift_sigmas

PROMPTS, GROUP, DIM, STEPS, ETA = 4, 6, 8, 10, 0.3


def velocity(x: Tensor, sigma: float, theta: Tensor) -> Tensor:
    """Straight-path velocity ``[N, D]`` towards ``theta`` ``[N, D]`` at noise level sigma."""
    return (x - theta) / sigma


def rollout(theta: Tensor, sigmas: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample G trajectories per prompt -> latents ``[N, T+1, D]`` and log-probs ``[N, T]``."""
    rows = theta.detach().repeat_interleave(GROUP, 0)
    x = torch.randn(rows.shape, generator=gen)
    latents, log_probs = [x], []
    for i in range(STEPS):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        out = flow_sde_step(
            velocity(x, s, rows),
            x,
            s,
            s_next,
            noise_type="dance",
            eta=ETA,
            noise=torch.randn(x.shape, generator=gen),
        )
        x = out.prev_sample
        latents.append(x)
        log_probs.append(out.log_prob)
    return torch.stack(latents, 1), torch.stack(log_probs, 1)


def recompute_log_probs(theta: Tensor, latents: Tensor, sigmas: Tensor) -> Tensor:
    """Log-probs ``[N, T]`` of the recorded transitions under the current parameters."""
    rows = theta.repeat_interleave(GROUP, 0)
    out = []
    for i in range(STEPS):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = latents[:, i]
        step = flow_sde_step(
            velocity(x, s, rows),
            x,
            s,
            s_next,
            noise_type="dance",
            eta=ETA,
            prev_sample=latents[:, i + 1],
        )
        out.append(step.log_prob)
    return torch.stack(out, 1)


def reward(x0: Tensor, goals: Tensor) -> Tensor:
    """−‖x₀ − goal‖²/D per sample ``[N]``."""
    return -((x0 - goals.repeat_interleave(GROUP, 0)) ** 2).mean(1)


def train(estimator: str, iterations: int, seed: int, lr: float = 0.05) -> list[float]:
    """A complete GRPO-family loop on the toy policy; returns the mean reward per iteration."""
    gen = torch.Generator().manual_seed(seed)
    goals = torch.randn(PROMPTS, DIM, generator=gen)
    theta = torch.zeros(PROMPTS, DIM, requires_grad=True)
    sigmas = shift_sigmas(linear_sigmas(STEPS), 3.0)
    group_ids = torch.arange(PROMPTS).repeat_interleave(GROUP)
    advantage_fn = get_advantage_fn(estimator, gamma=1.0)
    opt = torch.optim.Adam([theta], lr=lr)
    history = []
    for _ in range(iterations):
        latents, old_log_probs = rollout(theta, sigmas, gen)  # rollout
        r = reward(latents[:, -1], goals)  # score
        adv = clamp_advantages(advantage_fn(r, group_ids), 5.0)  # advantages
        out = ppo_clip_loss(
            recompute_log_probs(theta, latents, sigmas), old_log_probs, adv, clip_range=1e-4
        )  # update
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(float(r.mean()))
    return history


def main(seed: int = 0) -> None:
    torch.manual_seed(seed)
    sigmas = shift_sigmas(linear_sigmas(STEPS), 3.0)
    print("1. Schedule: DanceGRPO shift 3, sigma = 3t / (1 + 2t), t = linspace(1, 0, 11)")
    print("   sigma:", " ".join(f"{s:.3f}" for s in sigmas.tolist()))
    stds = [ETA * abs(float(sigmas[i + 1] - sigmas[i])) ** 0.5 for i in range(STEPS)]
    print("   SDE std per step, s = eta * sqrt(|d sigma|):", " ".join(f"{s:.3f}" for s in stds))

    gen = torch.Generator().manual_seed(seed)
    goals = torch.randn(PROMPTS, DIM, generator=gen)
    theta = torch.zeros(PROMPTS, DIM)
    latents, log_probs = rollout(theta, sigmas, gen)
    again = recompute_log_probs(theta, latents, sigmas)
    ratio = torch.exp(again - log_probs)
    print(f"\n2. Rollout: {PROMPTS} prompts x G={GROUP}, {STEPS} SDE steps, latent dim {DIM}")
    print(
        f"   mean log-prob per step: {log_probs.mean():.4f}; recomputed PPO ratios equal to 1 "
        f"exactly: {int((ratio == 1).sum())} of {ratio.numel()}"
    )

    r = reward(latents[:, -1], goals)
    group_ids = torch.arange(PROMPTS).repeat_interleave(GROUP)
    r[:GROUP] = -1.0 + 1e-3 * torch.randn(
        GROUP, generator=gen
    )  # a prompt the reward can't tell apart
    print("\n3. Advantages of prompt 0 (rewards differ by ~1e-3: noise) and prompt 1 (real gaps)")
    print("   rewards p0:", " ".join(f"{v:+.4f}" for v in r[:GROUP].tolist()))
    print("   rewards p1:", " ".join(f"{v:+.4f}" for v in r[GROUP : 2 * GROUP].tolist()))
    for name in ("grpo", "global_std", "slas"):
        a = get_advantage_fn(name, gamma=1.0)(r, group_ids)
        print(
            f"   {name:<10} p0 |A| max {a[:GROUP].abs().max():.3f}   "
            f"p1 |A| max {a[GROUP : 2 * GROUP].abs().max():.3f}"
        )
    print("   grpo blows the noise of p0 up to unit-size advantages; slas keeps it near 0.")

    print("\n4. Training the toy policy for 40 iterations (mean reward; higher is better)")
    for name in ("grpo", "slas"):
        h = train(name, 40, seed)
        print(f"   {name:<5} " + " ".join(f"{h[i]:+.3f}" for i in (0, 9, 19, 29, 39)))


if __name__ == "__main__":
    main()
