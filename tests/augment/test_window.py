import json

import pytest
import torch

from nnunet_liver.augment.window import (
    FIXED_PAPER,
    OSTMO_BEST,
    PAPER,
    WindowConfig,
    apply_window,
    as_window_config,
    sample_windows,
)


def hu(shape=(2, 1, 3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 3000 - 1000  # -1000..2000 HU


@pytest.mark.parametrize("config", [PAPER, OSTMO_BEST])
def test_sampled_windows_lie_in_their_ranges(config):
    level, width = sample_windows(config, 4000, generator=torch.Generator().manual_seed(1))
    assert level.shape == width.shape == (4000,)
    assert level.dtype == width.dtype == torch.float32
    candidates_l = (level >= config.level_range[0]) & (level <= config.level_range[1]) | (level == config.level)
    candidates_w = (width >= config.width_range[0]) & (width <= config.width_range[1]) | (width == config.width)
    assert candidates_l.all() and candidates_w.all()


def test_paper_preset_draws_every_time_and_spreads_over_the_range():
    level, width = sample_windows(PAPER, 4000, generator=torch.Generator().manual_seed(2))
    assert (level != PAPER.level).all() and (width != PAPER.width).all()
    assert level.min() < 20 and level.max() > 120 and width.min() < 140 and width.max() > 285


def test_ostmo_preset_redraws_with_its_probability():
    level, width = sample_windows(OSTMO_BEST, 20000, generator=torch.Generator().manual_seed(3))
    redrawn_l = (level != OSTMO_BEST.level).float().mean().item()
    redrawn_w = (width != OSTMO_BEST.width).float().mean().item()
    assert abs(redrawn_l - 0.163) < 0.015 and abs(redrawn_w - 0.163) < 0.015
    both = ((level != OSTMO_BEST.level) & (width != OSTMO_BEST.width)).float().mean().item()
    assert abs(both - 0.163**2) < 0.01  # independent coins


def test_probability_zero_gives_the_base_window_exactly():
    config = WindowConfig(level=40.0, width=350.0, level_range=(-500.0, 500.0), width_range=(10.0, 2000.0),
                          p_level=0.0, p_width=0.0, eval_level=0.0, eval_width=1.0)
    level, width = sample_windows(config, 100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(level, torch.full((100,), 40.0)) and torch.equal(width, torch.full((100,), 350.0))
    assert not config.is_random and not FIXED_PAPER.is_random and PAPER.is_random and OSTMO_BEST.is_random


def test_seeded_generator_is_deterministic_and_leaves_global_state_alone():
    state = torch.get_rng_state()
    a = sample_windows(PAPER, 8, generator=torch.Generator().manual_seed(5))
    b = sample_windows(PAPER, 8, generator=torch.Generator().manual_seed(5))
    c = sample_windows(PAPER, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].unique().numel() == 8  # per-sample draws


def test_window_covering_everything_is_a_monotone_affine_map():
    x = hu()
    out = apply_window(x, level=500.0, width=4000.0)  # -1500..2500 HU covers -1000..2000
    torch.testing.assert_close(out, (x + 1500.0) / 4000.0)
    order = x.flatten().argsort()
    assert (out.flatten()[order].diff() >= 0).all()


def test_extreme_windows_give_known_outputs():
    x = hu()
    assert torch.equal(apply_window(x, level=10000.0, width=100.0), torch.zeros_like(x))  # window above all data
    assert torch.equal(apply_window(x, level=-10000.0, width=100.0), torch.ones_like(x))  # window below all data
    hard = apply_window(x, level=40.0, width=1e-3)  # a near-threshold at 40 HU
    assert torch.equal(hard[x < 39], torch.zeros_like(hard[x < 39]))
    assert torch.equal(hard[x > 41], torch.ones_like(hard[x > 41]))


def test_fixed_paper_window_maps_minus_100_and_400_to_0_and_1():
    x = torch.tensor([-1000.0, -100.0, 150.0, 400.0, 3000.0]).view(1, 1, 5)
    out = apply_window(x, FIXED_PAPER.eval_level, FIXED_PAPER.eval_width)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_per_sample_windows_broadcast_over_the_batch():
    x = hu((3, 2, 4, 4))
    level, width = torch.tensor([0.0, 100.0, 200.0]), torch.tensor([100.0, 200.0, 300.0])
    out = apply_window(x, level, width)
    for i in range(3):
        torch.testing.assert_close(out[i], apply_window(x[i:i + 1], level[i].item(), width[i].item())[0])
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    x = hu().to(dtype)
    out = apply_window(x, 71.0, 213.5)
    assert out.dtype == dtype and out.min() >= 0 and out.max() <= 1


def test_gradient_is_one_over_width_inside_and_zero_outside():
    x = torch.tensor([[-500.0, 50.0, 60.0, 900.0]], requires_grad=True)
    apply_window(x, 50.0, 100.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.01, 0.01, 0.0]]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        apply_window(hu(), 0.0, 0.0)
    with pytest.raises(ValueError):
        apply_window(hu((2, 1, 4)), torch.zeros(3), 100.0)
    with pytest.raises(ValueError):
        WindowConfig.fixed(0.0, -1.0)
    with pytest.raises(ValueError):
        WindowConfig(level=0.0, width=1.0, level_range=(5.0, 0.0), width_range=(1.0, 1.0), p_level=0.5,
                     p_width=0.0, eval_level=0.0, eval_width=1.0)
    with pytest.raises(ValueError):
        WindowConfig.from_dict({**PAPER.to_dict(), "typo": 1})


@pytest.mark.parametrize("config", [PAPER, OSTMO_BEST, FIXED_PAPER])
def test_dict_round_trip_through_json(config):
    d = json.loads(json.dumps(config.to_dict()))
    assert WindowConfig.from_dict(d) == config
    assert as_window_config(d) == config


def test_presets_match_the_documents():
    assert (PAPER.level_range, PAPER.width_range, PAPER.eval_level, PAPER.eval_width) == \
        ((12.0, 130.0), (129.0, 298.0), 71.0, 213.5)
    assert (OSTMO_BEST.level, OSTMO_BEST.width, OSTMO_BEST.p_level, OSTMO_BEST.p_width) == (62.5, 198.8, 0.163, 0.163)
    assert (OSTMO_BEST.level_range, OSTMO_BEST.width_range) == ((2.5, 122.5), (118.8, 278.8))
    assert (FIXED_PAPER.eval_level - FIXED_PAPER.eval_width / 2, FIXED_PAPER.eval_level + FIXED_PAPER.eval_width / 2) \
        == (-100.0, 400.0)
    assert as_window_config(None) is PAPER and as_window_config("ostmo_best") is OSTMO_BEST
    with pytest.raises(ValueError):
        as_window_config("nope")
