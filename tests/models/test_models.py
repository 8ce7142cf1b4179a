import pytest
import torch

from prunetune.models import (
    FAMILIES,
    CifarResNet,
    build_family,
    build_model,
    cnn_spec,
    family_spec,
    lenet5_spec,
    mlp_spec,
    resnet_model,
)


def _n(model):
    return sum(p.numel() for p in model.parameters())


def test_lenet_300_100_has_the_published_parameter_count():
    model = build_model(mlp_spec((1, 28, 28), [300, 100], 10))
    assert _n(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610


def test_lenet5_shapes_and_count():
    model = build_model(lenet5_spec((1, 28, 28), 10))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    expected = (
        (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    )
    assert _n(model) == expected == 61_706


def test_cnn_on_digits():
    model = build_model(cnn_spec((1, 8, 8), [8, 16], [32], 10))
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mlp_spec((4,), [3, 0], 2), r"widths\[1\] must be a positive integer, but got 0"),
        (lambda: mlp_spec((4,), [3], 2, activation="swish"), "activation must be one of"),
        (lambda: lenet5_spec((1, 8, 8), 10), r"lenet5 needs image inputs of at least 20x20"),
        (lambda: cnn_spec((1, 8, 8), [4, 4, 4, 4], [8], 10), "needs inputs of at least 16x16"),
        (
            lambda: family_spec("resnet", (3, 32, 32), 10, []),
            r"model.family 'resnet' has no Sequential architecture spec.*build_family",
        ),
        (
            lambda: family_spec("vgg", (4,), 2, [3]),
            r"model.family must be one of \['mlp', 'lenet5', 'cnn', 'resnet'\], but got 'vgg'",
        ),
        (
            lambda: build_model({"input_shape": [4], "layers": [{"type": "lstm"}]}),
            r"layers\[0\].type",
        ),
    ],
)
def test_invalid_specs_name_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_resnet20_has_the_hand_counted_parameter_count():
    # ResNet-20 (n = 3), width 16, 3 input channels, 10 outputs; convs have no bias, a BN has
    # 2 parameters per channel, shortcuts are 1x1 projections (option B) entering stages 2, 3.
    # stem:     conv 3*16*9 = 432                              + BN 32            =     464
    # stage 1:  3 blocks * (2 * 16*16*9 = 4608 + 2 BN * 32 = 64)                    =  14,016
    # stage 2:  first  16*32*9 + 32*32*9 = 4608 + 9216 = 13,824 + 2 BN 128
    #                  + shortcut 16*32 = 512 + BN 64                              =  14,528
    #           2 more * (2 * 32*32*9 = 18,432 + 128)  = 2 * 18,560                =  37,120
    # stage 3:  first  32*64*9 + 64*64*9 = 18,432 + 36,864 = 55,296 + 2 BN 256
    #                  + shortcut 32*64 = 2048 + BN 128                            =  57,728
    #           2 more * (2 * 64*64*9 = 73,728 + 256)  = 2 * 73,984                = 147,968
    # fc:       64*10 + 10                                                          =     650
    # total: 464 + 14,016 + 14,528 + 37,120 + 57,728 + 147,968 + 650               = 272,474
    model = resnet_model((3, 32, 32), 10, depth=20, width=16)
    assert _n(model) == 464 + 14_016 + 14_528 + 37_120 + 57_728 + 147_968 + 650 == 272_474
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9 + 2  # stem, two per block, two projections
    assert all(c.bias is None for c in convs)


@pytest.mark.parametrize(("depth", "blocks"), [(8, 1), (14, 2), (20, 3), (32, 5)])
def test_resnet_depths_give_logits(depth, blocks):
    model = build_family("resnet", (3, 32, 32), 10, depth=depth, channels=[4])
    assert isinstance(model, CifarResNet)
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [blocks] * 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # 8x8 is the smallest input: two stride-2 stages leave 2x2 before the pool.
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


def test_resnet_init_is_kaiming_and_unit_batchnorm():
    torch.manual_seed(0)
    model = CifarResNet(depth=8, width=64)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in bns)
    assert all(torch.equal(b.bias, torch.zeros_like(b.bias)) for b in bns)
    # kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (c_out * 3 * 3)) = sqrt(2 / 576)
    w = model.layer1[0].conv1.weight
    assert abs(w.std().item() - (2 / 576) ** 0.5) < 0.003


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: CifarResNet(depth=10),
            r"model.depth must be one of \[8, 14, 20, 32\], but got 10\.",
        ),
        (lambda: CifarResNet(width=0), r"model.width must be a positive integer, but got 0"),
        (lambda: resnet_model((64,), 10), r"resnet needs image inputs .* got \(64,\)"),
        (lambda: resnet_model((3, 4, 4), 10), r"at least 8x8 pixels, but got \(3, 4, 4\)"),
        (
            lambda: build_family("resnet", (3, 32, 32), 10, activation="silu"),
            r"model.activation must be 'relu' for family 'resnet', but got 'silu'",
        ),
        (
            lambda: build_family("resnet", (3, 32, 32), 10, channels=[16, 32, 64]),
            r"model.channels for family 'resnet' must be \[width\].*got \[16, 32, 64\]",
        ),
        (lambda: build_family("vgg", (3, 32, 32), 10), r"model.family must be one of"),
    ],
)
def test_invalid_resnets_name_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("family", "shape", "kwargs"),
    [
        ("mlp", (1, 8, 8), {"widths": [32, 16], "activation": "silu"}),
        ("lenet5", (1, 28, 28), {"widths": [120, 84]}),
        ("cnn", (1, 8, 8), {"widths": [32], "channels": [8, 16]}),
    ],
)
def test_build_family_equals_the_spec_path(family, shape, kwargs):
    torch.manual_seed(3)
    old = build_model(
        family_spec(
            family,
            shape,
            10,
            kwargs["widths"],
            kwargs.get("channels", ()),
            kwargs.get("activation", "relu"),
        )
    )
    torch.manual_seed(3)
    new = build_family(family, shape, 10, **kwargs)
    assert isinstance(new, torch.nn.Sequential)
    assert [type(m) for m in new] == [type(m) for m in old]
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_family_builds():
    for family in FAMILIES:
        model = build_family(family, (1, 28, 28), 10, widths=[16])
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10), family
