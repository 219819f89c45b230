import copy
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_liver.architectures.dual_stream import DualStreamAttentionNet, slices_to_channels
from nnunet_liver.augment.window import FIXED_PAPER, OSTMO_BEST, PAPER, apply_window

PATCH = (8, 32, 32)
STRIDES = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2]]
SMALL = {"strides": STRIDES, "features_per_stage": (8, 16, 32, 32), "n_blocks_per_stage": (1, 1, 2, 1),
         "context_features_per_stage": (4, 8, 8), "context_strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
         "context_pool": (1, 2, 2), "context_channels": 4}
PINNED_PARAMETERS = 100_989  # SMALL with input_channels=1, num_classes=3 (Oktay gates: theta_x strided, kernel 2x2)


def build(deep_supervision=False, seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = {**SMALL, **overrides}
    return DualStreamAttentionNet(input_channels=kwargs.pop("input_channels", 1), num_classes=3,
                                  deep_supervision=deep_supervision, **kwargs)


def hu(batch=2, channels=1, patch=PATCH, seed=0):
    return torch.rand(batch, channels, *patch, generator=torch.Generator().manual_seed(seed)) * 2000 - 1000


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def nnunet_ds_shapes(patch, strides):
    # nnUNetTrainer._get_deep_supervision_scales, then the target shapes of DownsampleSegForDSTransform
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
    return [tuple(int(round(p * s)) for p, s in zip(patch, scale)) for scale in scales]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("input_channels", [1, 2])
def test_output_shapes_with_and_without_deep_supervision(batch, input_channels):
    net = build(deep_supervision=True, input_channels=input_channels)
    x = hu(batch, input_channels)
    out = net(x)
    assert isinstance(out, list) and len(out) == len(STRIDES) - 1
    assert [tuple(o.shape[2:]) for o in out] == nnunet_ds_shapes(PATCH, STRIDES)
    assert all(o.shape[:2] == (batch, 3) for o in out)
    net.decoder.deep_supervision = False
    single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (batch, 3, *PATCH)


@pytest.mark.parametrize("strides,patch", [
    ([[1, 1, 1], [1, 2, 2], [1, 2, 1]], (5, 16, 8)),
    ([[1, 2, 2], [1, 2, 2]], (3, 16, 16)),
    ([[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]], (4, 64, 64)),
])
def test_deep_supervision_matches_nnunet_targets_for_other_strides(strides, patch):
    n = len(strides)
    net = DualStreamAttentionNet(1, 2, strides=strides, features_per_stage=[4] * n, n_blocks_per_stage=[1] * n,
                                 context_features_per_stage=(4,), context_strides=[[1, 1, 1]], context_channels=4,
                                 deep_supervision=True)
    out = net(hu(1, patch=patch))
    assert [tuple(o.shape[2:]) for o in out] == nnunet_ds_shapes(patch, strides)


def test_state_dict_does_not_depend_on_deep_supervision_or_window():
    on = build(deep_supervision=True).state_dict()
    off = build(deep_supervision=False, window=FIXED_PAPER.to_dict()).state_dict()
    assert list(on) == list(off)
    assert all(on[k].shape == off[k].shape for k in on)
    net = build(deep_supervision=False, window="ostmo_best")
    net.load_state_dict(on, strict=True)


def test_deep_supervision_flag_switches_and_the_full_resolution_output_agrees():
    net = build(deep_supervision=True).eval()
    x = hu()
    with torch.no_grad():
        listed = net(x)
        net.decoder.deep_supervision = False
        single = net(x)
    torch.testing.assert_close(listed[0], single)


def test_every_parameter_gets_a_gradient_in_train_mode_with_deep_supervision():
    net = build(deep_supervision=True).train()
    out = net(hu())
    loss = sum((o * torch.randn_like(o)).sum() for o in out)
    loss.backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    assert any(name.startswith("context.encoder.") for name, _ in net.named_parameters())
    assert any(name.startswith("context.global_context.") for name, _ in net.named_parameters())
    assert len(net.decoder.gates) == len(STRIDES) - 1


def test_train_mode_draws_random_windows():
    net = build().train()
    x = hu()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


def test_eval_is_deterministic_and_equals_applying_the_fixed_window_by_hand():
    net = build(window=PAPER.to_dict(), window_mean=0.4, window_std=0.3).eval()
    x = hu()
    by_hand = copy.deepcopy(net)
    by_hand.window = nn.Identity()
    windowed = (apply_window(x, PAPER.eval_level, PAPER.eval_width) - 0.4) / 0.3
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)
        torch.testing.assert_close(out, by_hand(windowed))


def test_fixed_window_model_is_the_same_in_train_and_eval_windowing():
    net = build(window="fixed_paper")
    x = hu()
    torch.testing.assert_close(net.train().window(x), net.eval().window(x))
    assert not net.window.config.is_random and net.window.config == FIXED_PAPER


def test_ablation_flags_remove_parameters_and_still_run():
    full = build(deep_supervision=True)
    no_attention = build(deep_supervision=True, use_attention=False)
    no_context = build(deep_supervision=True, use_context=False)
    neither = build(deep_supervision=True, use_attention=False, use_context=False)
    assert n_params(neither) < n_params(no_attention) < n_params(full)
    assert n_params(no_context) < n_params(full)
    assert not any("context" in k for k in no_context.state_dict())
    assert not any("gates" in k for k in no_attention.state_dict())
    x = hu(1)
    for net in (no_attention, no_context, neither):
        out = net(x)
        assert [tuple(o.shape[2:]) for o in out] == nnunet_ds_shapes(PATCH, STRIDES)
        sum(o.sum() for o in out).backward()
        assert all(p.grad is not None for p in net.parameters())


def _check_spatial_norm_swap(net, norm_cls):
    """The spatial stream's 2D norms are all ``norm_cls``, the contextual stream's 3D norms instance norms; the
    same parameters as the default network; every parameter gets a gradient; in eval mode a patch's output does
    not depend on the other patch of its batch. Returns the batch of two patches used."""
    from nnunet_liver.blocks.norm import PatchInstanceNorm2d

    spatial = [m for name, m in net.named_modules() if not name.startswith("context") and isinstance(
        m, (nn.BatchNorm2d, nn.InstanceNorm2d, PatchInstanceNorm2d))]
    assert spatial and all(isinstance(m, norm_cls) for m in spatial)
    context = [m for m in net.context.modules() if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d))]
    assert context and all(isinstance(m, nn.InstanceNorm3d) for m in context)
    assert n_params(net) == n_params(build())  # the norms are affine: the same parameters, other statistics
    x = hu(2)
    out = net(x)
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        pair = net(x)[0]
        alone = net(x[:1])[0]
    torch.testing.assert_close(pair[:1], alone, rtol=1e-4, atol=1e-4)
    return x


def test_spatial_norm_batch_changes_the_spatial_stream_only():
    # eval: running statistics, so a patch's output does not depend on the other patch of the batch (with
    # per-slice instance norm it never did; in training, batch statistics couple them)
    _check_spatial_norm_swap(build(deep_supervision=True, spatial_norm="batch"), nn.BatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build().modules())


def test_pinned_parameter_count():
    assert n_params(build()) == PINNED_PARAMETERS


def test_spatial_stream_sees_only_the_neighbouring_slices():
    net = build(use_context=False).eval()
    x = hu(1)
    far = x.clone()
    far[:, :, 7] += 500.0  # slice 7 is 4 slices away from slice 3 (n_slices = 7 reaches 3 slices)
    with torch.no_grad():
        a, b = net(x), net(far)
    torch.testing.assert_close(a[:, :, :4], b[:, :, :4], rtol=0, atol=0)
    assert not torch.equal(a[:, :, 4:], b[:, :, 4:])
    with_context = build().eval()
    with torch.no_grad():
        assert not torch.equal(with_context(x)[:, :, 0], with_context(far)[:, :, 0])  # the context stream sees z


def test_slices_to_channels_stacks_replicate_padded_neighbours():
    x = torch.arange(2 * 2 * 4 * 3 * 3, dtype=torch.float32).view(2, 2, 4, 3, 3)
    out = slices_to_channels(x, 3)
    assert out.shape == (8, 6, 3, 3)
    for b in range(2):
        for z in range(4):
            for k in range(3):
                for c in range(2):
                    src = min(max(z - 1 + k, 0), 3)
                    assert torch.equal(out[b * 4 + z, k * 2 + c], x[b, c, src])


def test_slices_to_channels_without_padding_keeps_only_full_stacks():
    x = torch.arange(1 * 1 * 9 * 2 * 2, dtype=torch.float32).view(1, 1, 9, 2, 2)
    out = slices_to_channels(x, 7, pad=False)
    assert out.shape == (3, 7, 2, 2)
    for i, z in enumerate(range(3, 6)):
        assert torch.equal(out[i], x[0, 0, z - 3:z + 4])
    with pytest.raises(ValueError, match="no full stack"):
        slices_to_channels(x[:, :, :5], 7, pad=False)


def test_training_computes_only_slices_with_real_neighbours():
    # fixed window, so train and eval mode differ only in which slices are computed
    net = build(deep_supervision=True, window="fixed_paper", seed=1)
    m = net.z_margin
    assert m == 3
    x = hu(2, patch=(12, 32, 32))
    with torch.no_grad():
        train, evaluated = net.train()(x), net.eval()(x)
    for t, e in zip(train, evaluated):
        torch.testing.assert_close(t[:, :, m:-m], e[:, :, m:-m])
        # the margins copy their nearest computed slice (the trainer leaves them out of the loss)
        assert torch.equal(t[:, :, :m], t[:, :, m:m + 1].expand_as(t[:, :, :m]))
        assert torch.equal(t[:, :, -m:], t[:, :, -m - 1:-m].expand_as(t[:, :, -m:]))
        assert not torch.allclose(e[:, :, 0], e[:, :, m])
    # an interior slice's training output does not depend on slices outside its stack, even at the patch edge
    far = x.clone()
    far[:, :, 0] += 300.0
    no_context = build(window="fixed_paper", use_context=False).train()
    with torch.no_grad():
        a, b = no_context(x), no_context(far)
    torch.testing.assert_close(a[:, :, 4:-m], b[:, :, 4:-m], rtol=0, atol=0)
    assert not torch.equal(a[:, :, 3], b[:, :, 3])


@pytest.mark.parametrize("starts", [(0, 5), (2, 9)])
def test_interior_slices_do_not_depend_on_where_the_tile_starts(starts):
    # two z tilings of one 40-slice volume: every slice at least z_margin from its tile's ends gets the same
    # spatial-stream logits from both tiles (the contextual stream is a 3D network over the tile and, like
    # nnU-Net's own 3D U-Net, depends on it; nnU-Net's Gaussian blending weights tile edges least)
    net = build(use_context=False, window="fixed_paper").eval()
    volume = hu(1, patch=(40, 32, 32), seed=3)
    tile, m = 16, net.z_margin
    with torch.no_grad():
        whole = net(volume)
        outputs = {s: net(volume[:, :, s:s + tile]) for s in starts}
    for s, out in outputs.items():
        torch.testing.assert_close(out[:, :, m:tile - m], whole[:, :, s + m:s + tile - m], rtol=1e-5, atol=1e-5)
    a, b = starts
    shared = range(max(a, b) + m, min(a, b) + tile - m)
    assert len(shared) > 0
    for z in shared:
        torch.testing.assert_close(outputs[a][:, :, z - a], outputs[b][:, :, z - b], rtol=1e-5, atol=1e-5)
    # an edge slice of a tile inside the volume is built from replicated slices and differs
    assert not torch.allclose(outputs[starts[1]][:, :, 0], whole[:, :, starts[1]], atol=1e-3)
    # the same holds for the spatial stream inside the full network
    full = build(window="fixed_paper").eval()
    with torch.no_grad():
        xw = full.window(volume)
        whole_sf = full.spatial_features(xw)[0].view(40, -1)
        for s in starts:
            tile_sf = full.spatial_features(xw[:, :, s:s + tile])[0].view(tile, -1)
            torch.testing.assert_close(tile_sf[m:tile - m], whole_sf[s + m:s + tile - m], rtol=1e-5, atol=1e-5)


def test_context_upsampling_equals_trilinear_upsampling_of_the_whole_map():
    import torch.nn.functional as F

    net = build(window="fixed_paper", context_pool=(2, 2, 2)).eval()  # pooled in z too: the general path
    xw = net.window(hu(2, patch=(12, 32, 32)))
    with torch.no_grad():
        low = net.context_fusion(net.context(xw))
        reference = F.interpolate(low, size=(12, 32, 32), mode="trilinear", align_corners=False)
        reference = reference[:, :, 3:9].transpose(1, 2).reshape(12, low.shape[1], 32, 32)
        torch.testing.assert_close(net.context_features(xw, margin=3), reference, rtol=1e-5, atol=1e-5)


def test_context_stream_runs_in_float32_under_autocast():
    # oneDNN's bf16 Conv3d weight gradient returned NaN for the contextual stream in CPU training (demo data)
    net = build(deep_supervision=True).train()
    x = hu(1, patch=(10, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.context_features(net.window(x), margin=3).dtype == torch.float32
        out = net(x)
    sum(o.float().sum() for o in out).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.context.parameters())


def test_context_stream_sees_the_whole_patch():
    net = build(window="fixed_paper").eval()
    x = hu(1, patch=(16, 32, 32)).requires_grad_(True)
    out = net.context_features(net.window(x))
    assert out.shape == (16, 8, 32, 32)  # (B * Z, fusion channels, Y, X)
    out[8, :, 16, 16].sum().backward()
    grad = x.grad.abs()[0, 0]
    assert grad[0].sum() > 0 and grad[-1].sum() > 0  # first and last slice of the patch
    assert grad[:, 0, 0].sum() > 0 and grad[:, -1, -1].sum() > 0  # the in-plane corners


@pytest.mark.parametrize("axes", [(2,), (3,), (4,), (2, 3, 4)])
def test_mirrored_sliding_window_tiles(axes):
    net = build().eval()
    x = hu(1)
    with torch.no_grad():
        out = torch.flip(net(torch.flip(x, axes)), axes)
    assert out.shape == (1, 3, *PATCH) and torch.isfinite(out).all()


@pytest.mark.parametrize("checkpointing", [{}, {"checkpoint_stages": (0, 1), "checkpoint_gates": True},
                                           {"checkpoint_stages": (0, 1), "spatial_norm": "patch_instance"}])
def test_compile_eager_fullgraph_in_train_and_eval(checkpointing):
    torch._dynamo.reset()  # each network and mode is a recompilation: keep the earlier cases' out of the limit
    net = build(deep_supervision=True, **checkpointing)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = hu(1)
    out = compiled.train()(x)
    assert len(out) == len(STRIDES) - 1
    sum(o.sum() for o in out).backward()
    # another batch size: a recompilation (torch marks the batch dynamic), a forward before the first backward
    out2, out1 = compiled(hu(2)), compiled(x)
    sum(o.sum() for o in out2).backward()
    sum(o.sum() for o in out1).backward()
    net.decoder.deep_supervision = False  # nnU-Net flips it on the compiled module's original
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), net.eval()(x))


@pytest.mark.parametrize("spatial_norm", [None, "patch_instance"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype, spatial_norm):
    net = build(deep_supervision=True, spatial_norm=spatial_norm).train()
    with torch.autocast("cpu", dtype=dtype):
        out = net(hu(1))
    assert all(o.dtype == dtype and torch.isfinite(o).all() for o in out)


def test_nnunet_style_construction_and_initialisation():
    # what get_network_from_plans passes: arch_kwargs from plans.json (classes imported), then net.apply(initialize)
    arch_kwargs = json.loads(json.dumps({
        "n_stages": 4, "strides": STRIDES, "features_per_stage": [8, 16, 32, 32], "n_blocks_per_stage": [1, 1, 2, 1],
        "n_conv_per_stage_decoder": [1, 1, 1], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "conv_bias": True, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op_kwargs": None,
        "nonlin_kwargs": {"inplace": True}, "window": OSTMO_BEST.to_dict(), "context_features_per_stage": [4, 8],
        "context_strides": [[1, 1, 1], [2, 2, 2]], "context_kernel_sizes": [[1, 3, 3], [3, 3, 3]],
        "context_pool": [1, 2, 2], "context_channels": 4,
    }))
    arch_kwargs.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, dropout_op=None, nonlin=nn.LeakyReLU)
    net = DualStreamAttentionNet(input_channels=1, num_classes=2, **arch_kwargs, deep_supervision=True)
    net.apply(net.initialize)
    assert net.window.config == OSTMO_BEST
    assert isinstance(net.encoder.stem.norm, nn.InstanceNorm2d)
    assert isinstance(net.context.encoder.stages[0][0].convs[0].norm, nn.InstanceNorm3d)
    w = net.encoder.stages[2][1].conv1.conv.weight
    assert abs(w.std().item() - (2 / (1 + 1e-4) / w[0].numel()) ** 0.5) < 0.01  # He, slope 1e-2
    assert len(net(hu(1))) == 3
    pickle.loads(pickle.dumps(net))


@pytest.mark.parametrize("bad", [
    {"strides": [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]]},
    {"strides": [[1, 1], [2, 2], [2, 2], [2, 2]]},
    {"n_slices": 4},
    {"n_stages": 5},
    {"conv_op": nn.Conv2d},
    {"features_per_stage": (8, 16, 32)},
    {"window": "unknown"},
    {"spatial_norm": "group"},
])
def test_invalid_configurations_raise(bad):
    with pytest.raises(ValueError):
        build(**bad)


def test_default_configuration_builds_for_a_gpu_sized_patch():
    net = DualStreamAttentionNet(input_channels=1, num_classes=3)
    assert [len(s) for s in net.encoder.stages] == [1, 3, 4, 6, 3]
    assert net.encoder.output_channels == [16, 32, 64, 128, 256]
    assert net.shape_divisor == (1, 64, 64)  # context: pool 4 x strides 16 in-plane; spatial stream 16


def _saved_bytes(net, x):
    seen = {}
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    return sum(seen.values()), out


def test_checkpointing_gives_the_same_gradients_and_stores_less():
    x = hu(1, patch=(10, 32, 32))
    grads, saved = [], []
    for kwargs in ({}, {"checkpoint_stages": (0, 1, 2), "checkpoint_gates": True}):
        net = build(deep_supervision=True, window="fixed_paper", seed=4, **kwargs).train()
        nbytes, out = _saved_bytes(net, x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
        saved.append(nbytes)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-5, msg=k)
    assert saved[1] < 0.6 * saved[0]
    with torch.no_grad():  # no autograd, no checkpointing: eval is unchanged
        net.eval()(x)
    with pytest.raises(ValueError, match="checkpoint_stages"):
        build(checkpoint_stages=(7,))


def test_batch_norm_in_checkpointed_stages_keeps_the_running_statistics_of_one_update():
    # a checkpointed stage runs forward twice per step; without the momentum correction its batch norms would
    # move their running statistics twice as far as those of the same network without checkpointing
    x = hu(2, patch=(10, 32, 32))
    stats = []
    for kwargs in ({}, {"checkpoint_stages": (0, 1, 2), "checkpoint_gates": True}):
        net = build(deep_supervision=True, window="fixed_paper", seed=4, spatial_norm="batch", **kwargs).train()
        for _ in range(2):
            sum(o.sum() for o in net(x)).backward()
        stats.append({k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))})
    assert stats[0] and stats[0].keys() == stats[1].keys()
    assert any(k.startswith("encoder.stages.0") for k in stats[0])  # a checkpointed stage's norms are compared
    for k in stats[0]:
        torch.testing.assert_close(stats[1][k], stats[0][k], rtol=1e-3, atol=1e-4, msg=k)


def test_checkpointed_patch_norms_recompute_with_their_own_forwards_batch():
    from nnunet_liver.blocks.norm import PatchInstanceNorm2d

    # the patch norms learn the batch size from the network before each forward; a checkpointed stage recomputes
    # in the backward pass, after a forward of another batch size may have set another one
    x2, x1 = hu(2, patch=(10, 32, 32)), hu(1, patch=(10, 32, 32), seed=1)
    grads = []
    for kwargs in ({}, {"checkpoint_stages": (0, 1, 2)}):
        net = build(deep_supervision=True, window="fixed_paper", seed=4, spatial_norm="patch_instance",
                    **kwargs).train()
        out = net(x2)
        net(x1)  # a second forward, batch 1, before the first one's backward
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out).backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
        # the recomputation puts back the batch of the latest forward
        assert {m.batch for m in net.modules() if isinstance(m, PatchInstanceNorm2d)} == {1}
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-5, msg=k)


def test_patch_instance_norm_couples_the_slices_of_a_patch_not_the_patches_of_a_batch():
    from nnunet_liver.blocks.norm import PatchInstanceNorm2d

    net = build(deep_supervision=True, spatial_norm="patch_instance", window="fixed_paper")
    x = _check_spatial_norm_swap(net, PatchInstanceNorm2d)
    assert len(net.spatial_features(net.window(x))) == len(STRIDES) - 1  # called alone, it sets the norms' batch
    # one slice of a patch changes: without the contextual stream, a per-slice norm moves only the slices whose
    # 7-slice stack holds it; the patch norm moves every slice of that patch (shared statistics)
    changed = x.clone()
    changed[1, :, -1] += 300
    for spatial_norm, first_slices_move in ((None, False), ("patch_instance", True)):
        net = build(spatial_norm=spatial_norm, window="fixed_paper", use_context=False).eval()
        with torch.no_grad():
            moved = (net(changed)[1] - net(x)[1]).abs().amax(dim=(0, 2, 3))
        assert (moved[-4:] > 1e-4).all()
        assert bool((moved[:4] > 1e-4).all()) is first_slices_move, spatial_norm
