import itertools
import math

import pytest
import torch
from torch import nn

from nnunet_liver.architectures.receptive_field import (
    effective_receptive_field,
    main,
    receptive_field_table,
    shortest_interval,
)


def conv(dim: int, k=3, n: int = 1) -> nn.Module:
    op = nn.Conv2d if dim == 2 else nn.Conv3d
    pad = tuple(s // 2 for s in k) if isinstance(k, tuple) else k // 2
    return nn.Sequential(*[op(2, 2, k, padding=pad) for _ in range(n)])


def shape(dim: int, size: int = 11) -> tuple[int, ...]:
    return (1, 2) + (size,) * dim


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("n,extent", [(1, 3), (2, 5)])
def test_stacked_3x3_convs_have_theoretical_extent_2n_plus_1(dim, n, extent):
    torch.manual_seed(0)
    r = effective_receptive_field(conv(dim, 3, n), shape(dim))
    assert r["theoretical_extent"] == (extent,) * dim
    assert r["theoretical_range"] == ((5 - n, 5 + n),) * dim  # around the centre 11 // 2 = 5
    assert r["centre_output"] == r["centre_input"] == (5,) * dim
    assert all(m <= extent for m in r["mass_extent"])
    assert all(0 < s < extent / 2 for s in r["std"])
    assert r["mean"] == pytest.approx((5.0,) * dim, abs=1.0)
    assert r["grad_abs"].shape == (11,) * dim


def test_inplane_kernel_in_a_3d_net_has_extent_1_in_z():
    torch.manual_seed(0)
    r = effective_receptive_field(conv(3, (1, 3, 3), 2), shape(3), n_samples=2)
    assert r["theoretical_extent"] == (1, 5, 5)
    assert r["mass_extent"][0] == 1 and r["std"][0] == 0


def test_global_average_pool_covers_the_whole_input():
    def gap(x):  # global average pool, broadcast back over space
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x)

    r = effective_receptive_field(gap, (1, 1, 8, 20, 10), centre=(0, 3, 9))
    assert r["theoretical_extent"] == (8, 20, 10)
    assert r["mass_extent"] == tuple(math.ceil(0.95 * n) for n in (8, 20, 10))
    # uniform weights: the std of a discrete uniform distribution
    assert r["std"] == pytest.approx(tuple(math.sqrt((n * n - 1) / 12) for n in (8, 20, 10)))


def test_mass_extent_is_monotone_in_mass_and_full_mass_is_the_theoretical_extent():
    torch.manual_seed(0)
    net = nn.Sequential(conv(3, 3, 3), nn.ReLU(), conv(3, 3, 1)).eval()
    extents = [effective_receptive_field(net, shape(3, 15), mass=m, n_samples=2)["mass_extent"]
               for m in (0.3, 0.5, 0.8, 0.95, 0.99, 1.0)]
    for a, b in itertools.pairwise(extents):
        assert all(x <= y for x, y in zip(a, b)), extents
    full = effective_receptive_field(net, shape(3, 15), mass=1.0, n_samples=2)
    assert full["mass_extent"] == full["theoretical_extent"] == (9, 9, 9)


def test_strided_output_centre_maps_to_input_and_channel_selects():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 2, stride=2))
    r = effective_receptive_field(net, (1, 1, 16, 16))
    assert r["output_shape"] == (8, 8) and r["centre_output"] == (4, 4)
    assert r["centre_input"] == (8.5, 8.5)
    assert r["theoretical_range"] == ((7, 10), (7, 10))
    one = effective_receptive_field(net, (1, 1, 16, 16), channel=1)
    assert one["theoretical_extent"] == (4, 4)
    assert not torch.allclose(one["grad_abs"], r["grad_abs"])


def test_deep_supervision_list_uses_the_first_output_and_instance_norm_reaches_everywhere():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.norm = nn.InstanceNorm3d(2, affine=True)

        def forward(self, x):
            y = self.norm(self.conv(x))
            return [y, y[:, :, ::2, ::2, ::2]]

    torch.manual_seed(0)
    r = effective_receptive_field(Net().eval(), (1, 1, 9, 9, 9))
    assert r["output_shape"] == (9, 9, 9)
    assert r["theoretical_extent"] == (9, 9, 9)  # the norm's statistics are over all of space
    tol = effective_receptive_field(Net().eval(), (1, 1, 9, 9, 9), rel_tol=0.05)
    assert tol["theoretical_extent"] == (3, 3, 3)


def test_training_mode_is_left_alone_and_the_table_restores_it():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)).train()
    r = effective_receptive_field(net, (1, 1, 9, 9))
    assert net.training and r["theoretical_extent"] == (9, 9)  # batch statistics mix the whole input
    table = receptive_field_table({"bn": net}, (1, 1, 9, 9))
    assert net.training
    assert "| bn | 9 x 9 | 9 x 9 | 3 x 3 |" in table


def test_shortest_interval_prefers_the_centre_among_ties():
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    assert shortest_interval(w, 0.5, centre=0.0) == (0, 1)
    assert shortest_interval(w, 0.5, centre=4.0) == (3, 4)
    assert shortest_interval(w, 1.0) == (0, 4)
    with pytest.raises(ValueError):
        shortest_interval(w, 0.0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="input_shape"):
        effective_receptive_field(nn.Identity(), (2, 1, 8, 8))
    with pytest.raises(ValueError, match="centre"):
        effective_receptive_field(nn.Identity(), (1, 1, 8, 8), centre=(8, 0))


def test_main_prints_a_table(capsys):
    assert main(["torch.nn:Conv3d", "--kwargs", '{"in_channels": 1, "out_channels": 2, "kernel_size": 3}',
                 "--shape", "1", "1", "5", "7", "7", "--n-samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "| torch.nn:Conv3d | 5 x 7 x 7 | 3 x 5 x 5 | 3 x 3 x 3 |" in out
