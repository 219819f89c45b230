import pytest
import torch
from torch import nn

from nnunet_liver.blocks.attention import CBAM, AttentionGate, ChannelAttention, SpatialAttention

DIMS = [(nn.Conv2d, (6, 5)), (nn.Conv3d, (4, 6, 5))]


def make(name, conv_op, channels=12):
    return {
        "channel": lambda: ChannelAttention(channels),
        "spatial": lambda: SpatialAttention(channels, conv_op),
        "cbam": lambda: CBAM(channels, conv_op),
    }[name]()


@pytest.mark.parametrize("conv_op,spatial", DIMS)
@pytest.mark.parametrize("name", ["channel", "spatial", "cbam"])
@pytest.mark.parametrize("batch", [1, 3])
def test_self_attention_keeps_the_shape(name, conv_op, spatial, batch):
    x = torch.randn(batch, 12, *spatial)
    assert make(name, conv_op)(x).shape == x.shape


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_channel_attention_is_constant_over_space(conv_op, spatial):
    module = ChannelAttention(12)
    x = torch.rand(2, 12, *spatial) + 0.5  # positive: out / x is the weight
    ratio = module(x) / x
    reference = ratio.flatten(2)[..., :1]
    torch.testing.assert_close(ratio.flatten(2), reference.expand_as(ratio.flatten(2)))
    weights = module.attention(x)
    assert weights.shape == (2, 12, *([1] * len(spatial)))
    assert ((weights > 0) & (weights < 1)).all()


def test_channel_attention_pools_over_every_spatial_axis():
    # DNA's SqueezeExcite pools over (2, 3) only, so a 3D map gates each slice separately; ours must not.
    module = ChannelAttention(4)
    x = torch.randn(1, 4, 3, 5, 5)
    assert module.attention(x).shape == (1, 4, 1, 1, 1)
    assert ChannelAttention(64).mlp[0].out_features == 8 and ChannelAttention(256).mlp[0].out_features == 16


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_spatial_attention_is_constant_over_channels(conv_op, spatial):
    module = SpatialAttention(12, conv_op)
    assert module.conv.kernel_size == (7,) * len(spatial)
    x = torch.rand(2, 12, *spatial) + 0.5
    ratio = module(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


@pytest.mark.parametrize("conv_op,spatial", DIMS)
@pytest.mark.parametrize("use_cbam", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_attention_gate_shapes(conv_op, spatial, use_cbam, batch):
    gate = AttentionGate(8, 16, conv_op, use_cbam=use_cbam)
    x = torch.randn(batch, 8, *spatial)
    g = torch.randn(batch, 16, *[max(s // 2, 1) for s in spatial])
    assert gate(x, g).shape == x.shape
    assert gate.attention(x, g).shape == (batch, 1, *spatial)


def test_attention_gate_combines_cbam_and_alpha():
    gate = AttentionGate(8, 16, nn.Conv2d)
    x, g = torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(gate(x, g), gate.cbam(x) * gate.attention(x, g), rtol=1e-5, atol=1e-6)
    plain = AttentionGate(8, 16, nn.Conv2d, use_cbam=False)
    torch.testing.assert_close(plain(x, g), x * plain.attention(x, g))
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in gate.parameters())


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_every_parameter_gets_a_gradient(conv_op, spatial):
    gate = AttentionGate(8, 16, conv_op)
    x = torch.randn(2, 8, *spatial, requires_grad=True)
    g = torch.randn(2, 16, *[s // 2 for s in spatial], requires_grad=True)
    gate(x, g).square().sum().backward()
    for name, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert g.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_compiles_without_graph_breaks(conv_op, spatial):
    gate = AttentionGate(8, 16, conv_op)
    x, g = torch.randn(1, 8, *spatial), torch.randn(1, 16, *[s // 2 for s in spatial])
    compiled = torch.compile(gate, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, g), gate(x, g))


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_channel_attention_use_max_switch(conv_op, spatial):
    # use_max=True: CBAM (average- and max-pooled branches through one MLP); False: squeeze-and-excitation.
    torch.manual_seed(0)
    cbam, se = ChannelAttention(12, reduction=4, min_hidden=2), ChannelAttention(12, reduction=4, min_hidden=2,
                                                                                  use_max=False)
    se.load_state_dict(cbam.state_dict())  # the same parameters: only the pooling differs
    x = torch.randn(2, 12, *spatial)
    dims = tuple(range(2, x.ndim))
    view = (2, 12) + (1,) * len(spatial)
    torch.testing.assert_close(se.attention(x), torch.sigmoid(se.mlp(x.mean(dims))).view(view))
    torch.testing.assert_close(cbam.attention(x), torch.sigmoid(cbam.mlp(x.mean(dims)) + cbam.mlp(x.amax(dims))).view(view))
    assert not torch.allclose(se.attention(x), cbam.attention(x))
    with pytest.raises(ValueError, match="reduction"):
        ChannelAttention(12, reduction=0)


@pytest.mark.parametrize("conv_op,spatial", DIMS)
def test_strided_gate_computes_alpha_at_the_gating_resolution(conv_op, spatial):
    # Oktay et al.'s gate: Wx strided to g's grid, psi there, only the one-channel alpha interpolated up.
    torch.manual_seed(0)
    gate = AttentionGate(8, 16, conv_op, stride=2)
    x = torch.randn(2, 8, *spatial)
    g = torch.randn(2, 16, *[s // 2 for s in spatial])
    coarse = torch.sigmoid(gate.psi(torch.relu(gate.theta_x(x) + gate.phi_g(g))))
    assert coarse.shape[2:] == g.shape[2:]
    mode = {4: "bilinear", 5: "trilinear"}[x.ndim]
    expected = torch.nn.functional.interpolate(coarse, size=x.shape[2:], mode=mode, align_corners=False)
    torch.testing.assert_close(gate.attention(x, g), expected)
    # a size that the stride does not divide still gives x's shape
    odd = torch.randn(1, 8, *[s + 1 for s in spatial])
    assert gate(odd, g[:1]).shape == odd.shape


def test_gate_stride_must_be_positive():
    with pytest.raises(ValueError, match="stride"):
        AttentionGate(8, 16, nn.Conv2d, stride=0)
