import pickle

import pytest
import torch

from nnunet_liver.augment.window import FIXED_PAPER, OSTMO_BEST, PAPER, apply_window
from nnunet_liver.blocks.windowing import WindowInput


def hu(shape=(4, 1, 3, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2000 - 1000


def test_no_parameters_and_an_empty_state_dict_whatever_the_config():
    for config in (PAPER, OSTMO_BEST, FIXED_PAPER, "paper", None):
        layer = WindowInput(config)
        assert list(layer.parameters()) == [] and layer.state_dict() == {}


@pytest.mark.parametrize("config", [PAPER, OSTMO_BEST, FIXED_PAPER])
def test_eval_applies_the_fixed_window_then_the_affine_normalisation(config):
    layer = WindowInput(config, mean=0.3, std=0.2).eval()
    x = hu()
    expected = (apply_window(x, config.eval_level, config.eval_width) - 0.3) / 0.2
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), layer(x))


def test_train_draws_a_window_per_sample_and_per_call():
    layer = WindowInput(PAPER).train()
    x = hu().expand(4, 1, 3, 8, 8).contiguous()
    x[:] = x[0]  # identical samples: differences come from the windows
    torch.manual_seed(0)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_train_with_a_fixed_config_is_the_eval_window():
    layer = WindowInput(FIXED_PAPER)
    x = hu()
    torch.testing.assert_close(layer.train()(x), layer.eval()(x))


def test_output_range_is_set_by_mean_and_std():
    out = WindowInput(PAPER).train()(hu())
    assert out.min() >= -2.0 and out.max() <= 2.0


def test_dtype_shape_and_pickling():
    layer = WindowInput(PAPER)
    x = hu((2, 1, 2, 4, 4)).to(torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16 and layer(x).shape == x.shape
    pickle.loads(pickle.dumps(layer))


def test_compiles_without_graph_breaks():
    layer = WindowInput(PAPER)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = hu((2, 1, 2, 4, 4))
    assert compiled.train()(x).shape == x.shape
    torch.testing.assert_close(compiled.eval()(x), layer.eval()(x))


def test_std_must_be_positive():
    with pytest.raises(ValueError):
        WindowInput(PAPER, std=0.0)
