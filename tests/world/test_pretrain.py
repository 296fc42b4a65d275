"""Tests of the world policy's flow-matching pretraining loop."""

import json

import pytest
import torch

from slas.backbones.world import WorldBackbone
from slas.errors import SlasError
from slas.world.pretrain import flow_matching_loss, pretrain, sample_sigmas, training_batch

TINY = {"unet_kwargs": {"block_out_channels": (8, 16, 16), "attention_levels": (False, False, True),
                        "norm_num_groups": 4, "attention_heads": 2},
        "text_kwargs": {"hidden_size": 16, "num_layers": 1, "num_heads": 2}}


def test_flow_matching_loss_closed_form():
    x0 = torch.full((1, 3, 2, 2), 0.5)
    noise = torch.full((1, 3, 2, 2), -1.0)
    # target v = eps - x0 = -1.5 everywhere: a perfect prediction costs 0, predicting 0 costs 2.25.
    assert flow_matching_loss(torch.full_like(x0, -1.5), x0, noise).item() == 0.0
    assert flow_matching_loss(torch.zeros_like(x0), x0, noise).item() == pytest.approx(2.25)


def test_training_batch_is_deterministic_and_drops_captions():
    a, pa, _ = training_batch(3, batch_size=40, seed=1, caption_dropout=0.5)
    b, pb, _ = training_batch(3, batch_size=40, seed=1, caption_dropout=0.5)
    c, _, _ = training_batch(4, batch_size=40, seed=1, caption_dropout=0.5)
    assert torch.equal(a, b) and pa == pb and not torch.equal(a, c)
    assert a.shape == (40, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert 5 <= pa.count("") <= 35  # ~20 of 40 dropped
    _, none_dropped, _ = training_batch(3, batch_size=40, seed=1, caption_dropout=0.0)
    assert "" not in none_dropped


def test_sigma_sampling_ranges():
    gen = torch.Generator().manual_seed(0)
    u = sample_sigmas(4000, gen, "uniform")
    ln = sample_sigmas(4000, gen, "logit_normal")
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    # logit-normal(0, 1) is symmetric about 0.5 and more concentrated than uniform (var 1/12).
    assert abs(ln.mean().item() - 0.5) < 0.02 and ln.var().item() < u.var().item()
    with pytest.raises(SlasError, match="logit_normal"):
        sample_sigmas(2, gen, "beta")


def test_twenty_steps_lower_the_loss_and_save_a_loadable_policy(tmp_path):
    res = pretrain(tmp_path, steps=20, batch_size=16, lr=3e-3, warmup_steps=1, seed=0,
                   log_every=5, **TINY)
    assert res.steps == 20 and len(res.losses) == 20
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    lines = [json.loads(x) for x in (tmp_path / "pretrain_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20]
    assert lines[0]["loss"] == pytest.approx(first)
    policy = WorldBackbone.from_pretrained(tmp_path)
    assert policy.info["pretrain"]["steps"] == 20


def test_pretraining_is_deterministic_under_the_seed(tmp_path):
    a = pretrain(tmp_path / "a", steps=3, batch_size=4, seed=5, warmup_steps=1, **TINY)
    b = pretrain(tmp_path / "b", steps=3, batch_size=4, seed=5, warmup_steps=1, **TINY)
    assert a.losses == b.losses
    pa = WorldBackbone.from_pretrained(tmp_path / "a").unet.state_dict()
    pb = WorldBackbone.from_pretrained(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_bad_arguments():
    with pytest.raises(SlasError, match="minutes"):
        pretrain("unused", batch_size=4)
    with pytest.raises(SlasError, match="caption_dropout"):
        pretrain("unused", steps=1, caption_dropout=1.5)


def test_init_from_starts_at_the_given_weights(tmp_path):
    pretrain(tmp_path / "a", steps=2, batch_size=4, seed=0, warmup_steps=1, **TINY)
    # One step at lr 1e-12 moves an Adam parameter by ~1e-12, so the saved weights are the
    # warm-start weights, not the seed-3 initialisation.
    pretrain(tmp_path / "b", steps=1, batch_size=4, seed=3, lr=1e-12, warmup_steps=1,
             ema_decay=0.0, init_from=tmp_path / "a", **TINY)
    pretrain(tmp_path / "c", steps=1, batch_size=4, seed=3, lr=1e-12, warmup_steps=1,
             ema_decay=0.0, **TINY)
    wa, wb, wc = (WorldBackbone.from_pretrained(tmp_path / d).unet.conv_in.weight
                  for d in "abc")
    torch.testing.assert_close(wb, wa, atol=1e-9, rtol=0)
    assert not torch.allclose(wc, wa)
