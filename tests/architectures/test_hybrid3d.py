import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_liver.architectures.hybrid3d import (
    ChannelAttention,
    HybridLesionNet3D,
    class_balance_weights,
    gradcam_3d,
    hybrid_loss,
)

# Small networks keep CPU tests fast; the default configuration is exercised once for parameter counts.
TINY = dict(features=4, growth=2, n_blocks=2, layers_per_block=2, reduction=2, head_features=8)


def tiny(**kw):
    torch.manual_seed(0)
    return HybridLesionNet3D(**{**TINY, **kw})


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("size", [16, 32])
def test_output_shapes(in_channels, size):
    net = tiny(in_channels=in_channels)
    out = net(torch.randn(2, in_channels, size, size, size))
    assert out.logit.shape == (2,)
    assert out.aux_logits.shape == (2, 2)
    assert out.channel_weights.shape == (2, net.feature_channels) == (2, 16)
    assert ((out.channel_weights > 0) & (out.channel_weights < 1)).all()


def test_non_cubic_and_deeper_config():
    net = tiny(n_blocks=3)
    out = net(torch.randn(2, 1, 8, 16, 24))
    assert out.logit.shape == (2,) and out.channel_weights.shape == (2, 32)


def test_batch_size_one_keeps_batch_axis():
    net = tiny().eval()
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert out.logit.shape == (1,)
    assert out.aux_logits.shape == (1, 2)
    assert out.channel_weights.shape == (1, 16)


def test_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny()(torch.randn(1, 1, 18, 16, 16))


def test_default_config_parameter_counts():
    with_att = sum(p.numel() for p in HybridLesionNet3D().parameters())
    without = sum(p.numel() for p in HybridLesionNet3D(use_attention=False).parameters())
    assert with_att == 873_459
    # SE MLP 256 -> 64 -> 256 with biases.
    assert with_att - without == 256 * 64 + 64 + 64 * 256 + 256
    assert HybridLesionNet3D().feature_channels == 256


def test_every_parameter_gets_a_gradient():
    net = tiny(in_channels=2)
    out = net(torch.randn(2, 2, 16, 16, 16))
    loss = hybrid_loss(out, torch.tensor([0, 1]), pos_weight=2.0, aux_weight=0.3)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert any(n.startswith("attention.fc1") for n, _ in net.named_parameters())
    assert any(n.startswith("aux_head") for n, _ in net.named_parameters())


def test_channel_attention_is_constant_over_space():
    net = tiny().eval()
    seen = {}

    def hook(_m, inputs, output):
        seen["in"], (seen["out"], seen["w"]) = inputs[0], output

    handle = net.attention.register_forward_hook(hook)
    out = net(torch.randn(2, 1, 32, 32, 32))
    handle.remove()
    x, y, w = seen["in"], seen["out"], seen["w"]
    assert x.shape == y.shape and x.shape[2:] == (8, 8, 8)
    torch.testing.assert_close(y, x * w[:, :, None, None, None])
    # Voxel by voxel, out / in equals the weight of its channel: one weight per channel, constant over space.
    nz = x.abs() > 1e-3
    assert nz.sum() > 100
    ratio = y[nz] / x[nz]
    torch.testing.assert_close(ratio, w[:, :, None, None, None].expand_as(x)[nz])
    assert (w.std(dim=1) > 0).all()  # and the weights do differ between channels
    torch.testing.assert_close(out.channel_weights, w)


def test_channel_attention_module_pools_over_all_spatial_axes():
    att = ChannelAttention(6, reduction=2)
    x = torch.randn(2, 6, 4, 5, 3)
    x_perm = x[:, :, torch.randperm(4)]  # shuffling one spatial axis leaves the global mean unchanged
    _, w = att(x)
    _, w_perm = att(x_perm)
    torch.testing.assert_close(w, w_perm)
    y2d, w2d = att(torch.randn(2, 6, 7, 7))  # the same module works in 2D
    assert y2d.shape == (2, 6, 7, 7) and w2d.shape == (2, 6)


def test_no_attention_ablation():
    with_att, without = tiny(), tiny(use_attention=False)
    n_with = sum(p.numel() for p in with_att.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_without < n_with
    out = without(torch.randn(2, 1, 16, 16, 16))
    assert out.logit.shape == (2,)
    torch.testing.assert_close(out.channel_weights, torch.ones(2, 16))


def test_bce_pos_weight_scales_positive_loss():
    logit = torch.tensor([-0.7])
    out_pos = type("O", (), {"logit": logit, "aux_logits": torch.zeros(1, 2)})()
    unweighted = hybrid_loss(out_pos, torch.tensor([1]), pos_weight=None, aux_weight=0.0)
    weighted = hybrid_loss(out_pos, torch.tensor([1]), pos_weight=3.0, aux_weight=0.0)
    torch.testing.assert_close(weighted, 3 * unweighted)
    torch.testing.assert_close(unweighted, F.softplus(-logit)[0])
    # Negatives are not reweighted.
    neg_w = hybrid_loss(out_pos, torch.tensor([0]), pos_weight=3.0, aux_weight=0.0)
    neg_u = hybrid_loss(out_pos, torch.tensor([0]), pos_weight=None, aux_weight=0.0)
    torch.testing.assert_close(neg_w, neg_u)


def test_aux_term_is_class_weighted_cross_entropy():
    torch.manual_seed(1)
    aux = torch.randn(4, 2)
    target = torch.tensor([0, 0, 0, 1])
    out = type("O", (), {"logit": torch.zeros(4), "aux_logits": aux})()
    pos_weight, class_weights = class_balance_weights(target)
    main_only = hybrid_loss(out, target, pos_weight, aux_weight=0.0)
    total = hybrid_loss(out, target, pos_weight, aux_weight=0.5)
    expected_aux = F.cross_entropy(aux, target, weight=class_weights)
    torch.testing.assert_close(total - main_only, 0.5 * expected_aux)


def test_class_balance_weights():
    pos_weight, class_weights = class_balance_weights([0, 0, 0, 1])
    assert math.isclose(pos_weight.item(), 3.0)
    torch.testing.assert_close(class_weights, torch.tensor([4 / 6, 4 / 2]))
    assert math.isclose((class_weights[1] / class_weights[0]).item(), 3.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        class_balance_weights([1, 1])


@pytest.mark.parametrize("target", ["logit", "aux"])
def test_gradcam_shape_range_and_cleanup(target):
    net = tiny().train()
    x = torch.randn(2, 1, 16, 16, 16)
    cam = gradcam_3d(net, x, target=target)
    assert cam.shape == (2, 16, 16, 16)
    assert cam.min() >= 0 and cam.max() <= 1
    for c in cam:
        assert c.max() == 1 or c.max() == 0
    assert net.training  # mode restored
    assert all(p.grad is None for p in net.parameters())
    for m in net.modules():
        assert not m._forward_hooks and not m._backward_hooks


def test_gradcam_removes_hook_on_error():
    net = tiny()
    with pytest.raises(ValueError):
        gradcam_3d(net, torch.randn(1, 1, 18, 16, 16))  # invalid size raises inside the forward
    assert not net.gradcam_layer._forward_hooks


def test_torch_compile_fullgraph():
    net = tiny().eval()
    x = torch.randn(2, 1, 16, 16, 16)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x).logit, net(x).logit)
