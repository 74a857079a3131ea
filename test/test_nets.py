"""Networks: dense stacks, the energy head's analytic input gradient, the image encoder and the observation encoder."""

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from irvs_ros.learn.nets import ConvMaxPool, DenseNet, EnergyHead, ObservationEncoder, SpatialSoftArgmax
from irvs_ros.runtime.spec import NormStats, ObsSpec, SpecError

torch.set_num_threads(1)


def _head(resnet: bool, spectral_norm: bool, dropout: float = 0.0, dtype=torch.float64) -> EnergyHead:
    torch.manual_seed(0)
    head = EnergyHead(5, 3, width=16, depth=4, resnet=resnet, dropout=dropout, spectral_norm=spectral_norm)
    return head.to(dtype).eval()


@pytest.mark.parametrize("resnet", [False, True], ids=["mlp", "resnet"])
@pytest.mark.parametrize("spectral_norm", [False, True], ids=["plain", "specnorm"])
def test_analytic_gradient_matches_autograd(resnet, spectral_norm):
    head = _head(resnet, spectral_norm)
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    energy, grad = head.energy_and_grad(feat, y)
    ref = head(feat, y)
    (ref_grad,) = torch.autograd.grad(ref.sum(), y)
    assert energy.shape == (4, 7) and grad.shape == (4, 7, 3)
    torch.testing.assert_close(energy, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)
    assert grad.abs().max() > 1e-3  # a real gradient, not an all-dead network


def test_analytic_gradient_float32_and_dropout_ignored_in_eval():
    head = _head(resnet=True, spectral_norm=True, dropout=0.3, dtype=torch.float32)
    feat = torch.randn(3, 5)
    y = torch.randn(3, 9, 3, requires_grad=True)
    _, grad = head.energy_and_grad(feat, y)
    (ref_grad,) = torch.autograd.grad(head(feat, y).sum(), y)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_analytic_gradient_is_differentiable_in_the_parameters():
    # The gradient penalty backpropagates through dE/dy into the weights.
    head = _head(resnet=False, spectral_norm=False)
    feat = torch.randn(2, 5, dtype=torch.float64)
    y = torch.randn(2, 6, 3, dtype=torch.float64)
    _, grad = head.energy_and_grad(feat, y)
    grad.square().sum().backward()
    assert head.net.inp.weight.grad is not None and head.net.inp.weight.grad.abs().sum() > 0


def test_late_fusion_equals_the_dense_net_on_concatenated_input():
    head = _head(resnet=True, spectral_norm=False)
    feat = torch.randn(3, 5, dtype=torch.float64)
    y = torch.randn(3, 4, 3, dtype=torch.float64)
    joint = torch.cat([feat[:, None, :].expand(3, 4, 5), y], dim=-1)
    torch.testing.assert_close(head(feat, y), head.net(joint).squeeze(-1))


def test_energy_head_rejects_wrong_shapes():
    head = _head(resnet=False, spectral_norm=False)
    with pytest.raises(ValueError, match=r"candidates must be \(B=2, N, 3\)"):
        head(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"feat must be \(B, 5\)"):
        head(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, 3, dtype=torch.float64))


def test_dense_net_shapes_and_argument_checks():
    for resnet in (False, True):
        net = DenseNet(6, 2, width=8, depth=4, resnet=resnet, dropout=0.1)
        assert net(torch.zeros(5, 6)).shape == (5, 2)
        assert net(torch.zeros(3, 4, 6)).shape == (3, 4, 2)
    with pytest.raises(ValueError, match="even depth"):
        DenseNet(2, 1, width=8, depth=3, resnet=True)
    with pytest.raises(ValueError, match="dropout"):
        DenseNet(2, 1, width=8, depth=2, dropout=1.0)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    net = DenseNet(4, 1, width=32, depth=2, dropout=0.5)
    x = torch.randn(8, 4)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize(("resnet", "bound"), [(False, 1.0), (True, 4.0)], ids=["mlp", "resnet"])
def test_spectral_norm_bounds_the_input_slope(resnet, bound):
    # The bound the docstring states (1 for an MLP, 2 per residual block): what caps an energy's steepness.
    torch.manual_seed(0)
    net = DenseNet(6, 1, width=32, depth=4, resnet=resnet, spectral_norm=True).double()
    with torch.no_grad():
        for layer in (net.inp, *net.hidden, net.out):
            layer.parametrizations.weight.original.mul_(5.0)  # far from 1-Lipschitz before normalization
        for _ in range(50):  # power iterations (one per training-mode forward) converge
            net(torch.randn(8, 6, dtype=torch.float64))
    net.eval()
    x = torch.randn(2000, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.norm(dim=1).max() <= bound * 1.01, grad.norm(dim=1).max()
    plain = DenseNet(6, 1, width=32, depth=4, resnet=resnet).double()
    with torch.no_grad():
        for layer in (plain.inp, *plain.hidden, plain.out):
            layer.weight.mul_(5.0)
    (grad,) = torch.autograd.grad(plain(x).sum(), x)
    assert grad.norm(dim=1).max() > 2 * bound  # without spectral norm the same scaled weights are steeper


def test_plain_copy_folds_spectral_norm_and_leaves_the_original_intact():
    head = _head(resnet=True, spectral_norm=True, dtype=torch.float32)
    feat, y = torch.randn(2, 5), torch.randn(2, 3, 3)
    before = head(feat, y)
    plain = head.plain_copy()
    assert not any("parametrizations" in name for name, _ in plain.named_parameters())
    torch.testing.assert_close(plain(feat, y), before)
    torch.testing.assert_close(plain.energy_and_grad(feat, y)[1], head.energy_and_grad(feat, y)[1])
    torch.testing.assert_close(head(feat, y), before)  # the original still has its parametrization


def test_spectral_norm_bounds_the_layer_gain():
    torch.manual_seed(0)
    net = DenseNet(3, 1, width=16, depth=2, spectral_norm=True)
    net.train()
    for _ in range(20):  # power iterations converge while training
        net(torch.zeros(1, 3))
    net.eval()
    for layer in (net.inp, *net.hidden, net.out):
        assert torch.linalg.matrix_norm(layer.weight, ord=2) < 1.05


@pytest.mark.parametrize("pooling,out_dim", [("spatial_softmax", 512), ("avg", 256)])
def test_conv_maxpool_on_raw_uint8_images(pooling, out_dim):
    torch.manual_seed(0)
    enc = ConvMaxPool((24, 32, 3), coord_conv=True, pooling=pooling).eval()
    assert enc.convs[0].in_channels == 5  # RGB + two CoordConv channels
    image = torch.randint(0, 256, (2, 24, 32, 3), dtype=torch.uint8)
    feat = enc(image)
    assert feat.shape == (2, out_dim) == (2, enc.out_dim)
    assert torch.isfinite(feat).all()
    if pooling == "spatial_softmax":
        assert feat.abs().max() <= 1.0  # expected keypoint coordinates lie in the image, [-1, 1]
    # /255 happens inside: the same picture as float 0..1 through the convs gives the same features
    x = torch.cat([image.permute(0, 3, 1, 2).float() / 255.0, enc.coord_map.expand(2, -1, -1, -1)], dim=1)
    torch.testing.assert_close(enc.pool(enc.convs(x)).reshape(2, -1), feat)


@pytest.mark.parametrize("algorithm", ["ebm_dfo", "irvs", "mse", "mdn"])
def test_image_encoder_options_reach_every_algorithm(algorithm):
    """image_channels / image_stem_stride from an algorithm's params build that encoder; a strided stem halves the
    feature map; bad values are config errors naming the field."""
    from irvs_ros.learn.algorithms import make_algorithm
    from irvs_ros.learn.config_schema import ConfigError
    from irvs_ros.runtime.spec import PolicySpec

    stats = NormStats((), (), (-1.0, -1.0), (1.0, 1.0))
    spec = PolicySpec(ObsSpec(0, (24, 32, 3), ()), 2, stats, (-1.1, -1.1), (1.1, 1.1), 5.0)
    algo = make_algorithm(algorithm, spec, {"width": 8, "depth": 2, "image_channels": [4, 6, 5],
                                            "image_stem_stride": 2})
    image = next(m for m in algo.modules() if isinstance(m, ConvMaxPool))
    convs = [m for m in image.convs if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 6, 5] and convs[0].stride == (2, 2)
    assert image.out_dim == 10 and tuple(image.pool.coords.shape) == (3 * 4, 2)  # 24x32 -> 12x16 -> 6x8 -> 3x4
    assert torch.isfinite(image(torch.zeros(1, 24, 32, 3, dtype=torch.uint8))).all()
    with pytest.raises(ConfigError, match="image_stem_stride"):
        make_algorithm(algorithm, spec, {"image_stem_stride": 3})
    with pytest.raises(ConfigError, match="image_channels"):
        make_algorithm(algorithm, spec, {"image_channels": []})


def test_spatial_soft_argmax_finds_a_bright_spot():
    maps = torch.full((1, 1, 4, 5), -50.0)
    maps[0, 0, 3, 1] = 50.0  # row 3 of 4 (y = +1), column 1 of 5 (x = -0.5)
    torch.testing.assert_close(SpatialSoftArgmax(4, 5)(maps), torch.tensor([[-0.5, 1.0]]))
    with pytest.raises(ValueError, match="pooling"):
        ConvMaxPool((16, 16, 3), pooling="max")
    with pytest.raises(ValueError, match="H >= 8"):
        ConvMaxPool((4, 16, 3))


def test_observation_encoder_normalizes_state_and_fuses_image():
    stats = NormStats(state_mean=(1.0, -2.0), state_std=(2.0, 0.5), action_min=(-1.0,), action_max=(1.0,))
    enc = ObservationEncoder(ObsSpec(2), stats)
    state = torch.tensor([[3.0, -1.0]])
    torch.testing.assert_close(enc(state), torch.tensor([[1.0, 2.0]]))
    assert enc.out_dim == 2

    enc2 = ObservationEncoder(ObsSpec(2, (16, 20, 3)), stats, coord_conv=False, pooling="avg")
    feat = enc2(state, torch.zeros(1, 16, 20, 3, dtype=torch.uint8))
    assert feat.shape == (1, 2 + 256) == (1, enc2.out_dim)
    torch.testing.assert_close(feat[:, :2], torch.tensor([[1.0, 2.0]]))
    with pytest.raises(SpecError, match="needs an image"):
        enc2(state)


def test_encoder_and_analytic_gradient_export_to_onnx():
    """The legacy tracer exports encoder + energy_and_grad, and onnxruntime reproduces torch."""

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            stats = NormStats((0.5,), (2.0,), (-1.0, -1.0), (1.0, 1.0))
            self.enc = ObservationEncoder(ObsSpec(1, (16, 16, 3)), stats, pooling="spatial_softmax")
            self.head = EnergyHead(self.enc.out_dim, 2, width=16, depth=2, resnet=True)

        def forward(self, state, image, feat_in, candidates):
            energy, grad = self.head.energy_and_grad(feat_in, candidates)
            return self.enc(state, image), energy, grad

    torch.manual_seed(0)
    graph = Graph().eval()
    args = (torch.randn(2, 1), torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8), torch.randn(2, 513),
            torch.rand(2, 3, 2))
    buf = io.BytesIO()
    names = ["state", "image", "feat_in", "candidates"]
    torch.onnx.export(graph, args, buf, input_names=names, output_names=["feat", "energy", "energy_grad"],
                      dynamic_axes={"state": {0: "b"}, "image": {0: "b"}, "feat_in": {0: "c"},
                                    "candidates": {0: "c", 1: "n"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"state": rng.standard_normal((3, 1), dtype=np.float32),
             "image": rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
             "feat_in": rng.standard_normal((4, 513), dtype=np.float32),
             "candidates": rng.uniform(-1, 1, (4, 7, 2)).astype(np.float32)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        ref = graph(*(torch.from_numpy(feeds[n]) for n in names))
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-5, rtol=1e-4)
