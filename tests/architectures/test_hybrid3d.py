import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_liver.architectures.hybrid3d import (
    HybridLesionNet3D,
    class_balance_weights,
    gradcam_3d,
    hybrid_loss,
)
from nnunet_liver.blocks.attention import ChannelAttention, SpatialAttention

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
    assert net.feature_channels == 16
    # one weight vector per stage, over the dense block's output: 4 + 2 * 2 and 8 + 2 * 4 channels
    assert [tuple(w.shape) for w in out.channel_weights] == [(2, 8), (2, 16)]
    assert all(((w > 0) & (w < 1)).all() for w in out.channel_weights)


def test_non_cubic_and_deeper_config():
    net = tiny(n_blocks=3)
    out = net(torch.randn(2, 1, 8, 16, 24))
    assert out.logit.shape == (2,) and [w.shape[1] for w in out.channel_weights] == [8, 16, 32]


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_batch_size_one_keeps_batch_axis(stem_stride):
    net = tiny(stem_stride=stem_stride).eval()
    out = net(torch.randn(1, 1, 16, 16, 16))
    assert out.logit.shape == (1,)
    assert out.aux_logits.shape == (1, 2)
    assert out.channel_weights[-1].shape == (1, 16)


def test_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny()(torch.randn(1, 1, 18, 16, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(stem_stride=2)(torch.randn(1, 1, 12, 16, 16))


def test_stem_stride_halves_the_resolution_of_every_stage():
    seen = []
    net = tiny(stem_stride=2)
    hooks = [s.attended.register_forward_hook(lambda _m, _i, o: seen.append(o.shape[2:])) for s in net.stages]
    net(torch.randn(2, 1, 32, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == [(16, 16, 16), (8, 8, 8)]
    assert net.input_multiple == 8


def test_default_config_parameter_counts():
    with_att = sum(p.numel() for p in HybridLesionNet3D().parameters())
    without = sum(p.numel() for p in HybridLesionNet3D(use_attention=False).parameters())
    assert without == 873_459 - (256 * 64 + 64 + 64 * 256 + 256)  # the old network less its head-side SE MLP
    # one SE MLP per stage on the dense-block outputs (32, 64, 128, 256 channels), hidden C // 4, with biases
    assert with_att - without == sum(2 * c * (c // 4) + c // 4 + c for c in (32, 64, 128, 256))
    assert HybridLesionNet3D().feature_channels == 256
    spatial = sum(p.numel() for p in HybridLesionNet3D(spatial_attention=True).parameters())
    assert spatial - with_att == 4 * (2 * 7**3 + 1)  # a 7x7x7 conv over [mean; max] per stage


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("use_attention", [True, False])
def test_every_parameter_gets_a_gradient(spatial, use_attention):
    net = tiny(in_channels=2, spatial_attention=spatial, use_attention=use_attention, stem_stride=2)
    out = net(torch.randn(2, 2, 16, 16, 16))
    loss = hybrid_loss(out, torch.tensor([0, 1]), pos_weight=2.0, aux_weight=0.3)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    names = [n for n, _ in net.named_parameters()]
    assert any(n.startswith("aux_head") for n in names)
    assert any(".channel_attention." in n for n in names) == use_attention
    assert any(".spatial_attention." in n for n in names) == (use_attention and spatial)


def _attention_io(net, stage, x):
    """Input and output of a stage's attention (dense-block output -> attended map) in one forward."""
    seen = {}
    h1 = net.stages[stage].dense.register_forward_hook(lambda _m, _i, o: seen.__setitem__("in", o))
    h2 = net.stages[stage].attended.register_forward_hook(lambda _m, _i, o: seen.__setitem__("out", o))
    out = net(x)
    h1.remove()
    h2.remove()
    return seen["in"], seen["out"], out


@pytest.mark.parametrize("stage", [0, 1])
def test_channel_attention_is_constant_over_space(stage):
    net = tiny().eval()
    x, y, out = _attention_io(net, stage, torch.randn(2, 1, 32, 32, 32))
    w = out.channel_weights[stage]
    assert x.shape == y.shape and x.shape[2:] == ((32, 32, 32), (16, 16, 16))[stage]
    torch.testing.assert_close(y, x * w[:, :, None, None, None])
    # Voxel by voxel, out / in equals the weight of its channel: one weight per channel, constant over space.
    nz = x.abs() > 1e-3
    assert nz.sum() > 100
    torch.testing.assert_close(y[nz] / x[nz], w[:, :, None, None, None].expand_as(x)[nz])
    assert (w.std(dim=1) > 0).all()  # and the weights do differ between channels


def test_attention_reweights_the_input_of_the_next_convolution(monkeypatch):
    # A gate before global average pooling could be folded into the head; this one feeds a convolution:
    # zeroing one channel's weight zeroes that channel of the transition conv's input and changes its output.
    net = tiny().eval()
    x = torch.randn(2, 1, 16, 16, 16)
    stage = net.stages[0]
    seen = []
    hook = stage.transition.register_forward_hook(lambda _m, i, o: seen.append((i[0], o)))
    net(x)
    original = stage.channel_attention.attention

    def without_channel_3(t):
        w = original(t).clone()
        w[:, 3] = 0
        return w

    monkeypatch.setattr(stage.channel_attention, "attention", without_channel_3)
    out = net(x)
    hook.remove()
    (in_a, out_a), (in_b, out_b) = seen
    assert in_a[:, 3].abs().sum() > 0 and in_b[:, 3].abs().sum() == 0
    torch.testing.assert_close(in_b[:, :3], in_a[:, :3])
    assert not torch.allclose(out_a, out_b)
    assert out.channel_weights[0][:, 3].eq(0).all()


def test_spatial_attention_follows_channel_attention():
    net = tiny(spatial_attention=True).eval()
    x, y, out = _attention_io(net, 0, torch.randn(2, 1, 16, 16, 16))
    stage = net.stages[0]
    channel_weighted = x * out.channel_weights[0][:, :, None, None, None]
    torch.testing.assert_close(y, channel_weighted * stage.spatial_attention.attention(channel_weighted))


def test_channel_attention_module_pools_over_all_spatial_axes():
    att = ChannelAttention(6, reduction=2, min_hidden=4, use_max=False)
    x = torch.randn(2, 6, 4, 5, 3)
    x_perm = x[:, :, torch.randperm(4)]  # shuffling one spatial axis leaves the global mean unchanged
    torch.testing.assert_close(att.attention(x), att.attention(x_perm))
    assert att.attention(torch.randn(2, 6, 7, 7)).shape == (2, 6, 1, 1)  # the same module works in 2D


def test_no_attention_ablation_has_no_attention_module():
    with_att, without = tiny(spatial_attention=True), tiny(use_attention=False, spatial_attention=True)
    assert not any(isinstance(m, (ChannelAttention, SpatialAttention)) for m in without.modules())
    assert sum(isinstance(m, ChannelAttention) for m in with_att.modules()) == with_att.n_blocks
    n_with = sum(p.numel() for p in with_att.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_without < n_with
    x = torch.randn(2, 1, 16, 16, 16)
    out = without(x)
    assert out.logit.shape == (2,) and out.channel_weights == ()
    x_in, y, _ = _attention_io(without.eval(), 1, x)
    torch.testing.assert_close(y, x_in)  # the dense block feeds the transition directly


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


@pytest.mark.parametrize("target", ["logit", "aux", "predicted"])
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


@pytest.mark.parametrize("kw", [{}, {"spatial_attention": True, "stem_stride": 2}, {"use_attention": False},
                                {"in_channels": 2, "lesion_pooling": True, "stem_stride": 2}])
def test_torch_compile_fullgraph(kw):
    net = tiny(**kw).eval()
    x = torch.randn(2, kw.get("in_channels", 1), 16, 16, 16)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x).logit, net(x).logit)


def test_lesion_pooling_averages_every_stage_over_the_mask():
    with pytest.raises(ValueError, match="in_channels=2"):
        tiny(lesion_pooling=True)
    net = tiny(in_channels=2, lesion_pooling=True, stem_stride=2).eval()
    assert net.head[0].in_features == net.aux_head.in_features == 16 + (8 + 16)  # global + both stages
    x = torch.randn(2, 2, 32, 32, 32)
    x[:, 1] = 0
    x[:, 1, 12:20, 12:20, 12:20] = 1  # an 8^3 lesion in the middle
    seen = []
    hooks = [s.transition.register_forward_hook(lambda _m, _i, o: seen.append(o)) for s in net.stages]
    _, _, inside = net.forward_features(x)
    for h in hooks:
        h.remove()
    # stage 0's transition runs at 16^3 (lesion: voxels 6..9), stage 1's at 8^3 (voxels 3..4)
    torch.testing.assert_close(inside[:, :8], seen[0][:, :, 6:10, 6:10, 6:10].mean(dim=(2, 3, 4)))
    torch.testing.assert_close(inside[:, 8:], seen[1][:, :, 3:5, 3:5, 3:5].mean(dim=(2, 3, 4)))
    out = net(x)
    assert out.logit.shape == (2,) and out.aux_logits.shape == (2, 2)
