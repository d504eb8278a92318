"""RetinaFace network: biubug6's architecture, state_dict keys, output shapes and modes."""
import pytest
import torch

from retinaface_ext import RetinaFace, ops
from retinaface_ext.models import MobileNetV1, ResNet50, canonical_backbone_name

# A sample of biubug6's keys (models/net.py, models/retinaface.py), spelled exactly.
MOBILENET_KEYS = [
    "body.stage1.0.0.weight", "body.stage1.0.1.running_var", "body.stage1.1.0.weight",
    "body.stage1.1.3.weight", "body.stage1.1.4.num_batches_tracked", "body.stage2.5.4.bias",
    "body.stage3.1.3.weight", "fpn.output1.0.weight", "fpn.output3.1.running_mean",
    "fpn.merge1.0.weight", "fpn.merge2.1.bias", "ssh1.conv3X3.0.weight", "ssh1.conv5X5_1.1.weight",
    "ssh2.conv5X5_2.0.weight", "ssh2.conv7X7_2.1.bias", "ssh3.conv7x7_3.0.weight",
    "ClassHead.0.conv1x1.weight", "ClassHead.2.conv1x1.bias", "BboxHead.1.conv1x1.weight",
    "LandmarkHead.2.conv1x1.bias",
]
RESNET_KEYS = [
    "body.conv1.weight", "body.bn1.running_mean", "body.layer1.0.downsample.0.weight",
    "body.layer1.0.downsample.1.bias", "body.layer2.3.conv3.weight", "body.layer3.5.bn2.weight",
    "body.layer4.2.bn3.running_var", "fpn.output3.0.weight", "ssh3.conv7x7_3.1.bias",
    "LandmarkHead.0.conv1x1.weight",
]


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return RetinaFace("mobilenet0.25").eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return RetinaFace("resnet50").eval()


def test_mobilenet_state_dict_matches_biubug6(mobilenet):
    state = mobilenet.state_dict()
    assert set(MOBILENET_KEYS) <= set(state)
    assert not any(k.startswith(("body.fc", "body.avg")) for k in state)  # IntermediateLayerGetter drops them
    assert len(state) == 300
    # biubug6's mobilenet0.25 RetinaFace has 426,608 parameters.
    assert sum(p.numel() for p in mobilenet.parameters()) == 426_608
    assert state["body.stage1.0.0.weight"].shape == (8, 3, 3, 3)
    assert state["fpn.output1.0.weight"].shape == (64, 64, 1, 1)
    assert state["ClassHead.0.conv1x1.weight"].shape == (4, 64, 1, 1)
    assert state["LandmarkHead.0.conv1x1.weight"].shape == (20, 64, 1, 1)
    # biubug6's module order: body, fpn, ssh1..3, ClassHead, BboxHead, LandmarkHead.
    tops = list(dict.fromkeys(k.split(".")[0] for k in state))
    assert tops == ["body", "fpn", "ssh1", "ssh2", "ssh3", "ClassHead", "BboxHead", "LandmarkHead"]


def test_resnet_state_dict_matches_biubug6_and_torchvision(resnet):
    state = resnet.state_dict()
    assert set(RESNET_KEYS) <= set(state)
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in state)
    assert sum(p.numel() for p in resnet.parameters()) == 27_293_600
    assert state["fpn.output1.0.weight"].shape == (256, 512, 1, 1)
    assert state["body.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert resnet.body.layer2[0].conv2.stride == (2, 2)
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in fc.
    assert sum(p.numel() for p in resnet.body.parameters()) == 25_557_032 - 2_049_000


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (1, 1), (100, 33)])
def test_output_shapes_follow_prior_box(mobilenet, size):
    with torch.no_grad():
        loc, conf, landms = mobilenet(torch.randn(2, 3, *size))
    priors = ops.prior_box(size).shape[0]
    assert loc.shape == (2, priors, 4)
    assert conf.shape == (2, priors, 2)
    assert landms.shape == (2, priors, 10)


def test_an_empty_batch_gives_empty_outputs(mobilenet):
    # reshape(B, -1, 4) cannot infer -1 for B = 0 ("cannot reshape tensor of 0 elements").
    with torch.no_grad():
        outputs = mobilenet(torch.randn(0, 3, 64, 96))
    priors = ops.prior_box((64, 96)).shape[0]
    assert [tuple(t.shape) for t in outputs] == [(0, priors, 4), (0, priors, 2), (0, priors, 10)]


def test_resnet_small_input(resnet):
    with torch.no_grad():
        loc, conf, landms = resnet(torch.randn(1, 3, 48, 80))
    assert loc.shape == (1, ops.prior_box((48, 80)).shape[0], 4)
    assert torch.isfinite(loc).all() and torch.isfinite(landms).all()


def test_conf_is_softmaxed_in_eval_mode_only():
    torch.manual_seed(1)
    model = RetinaFace("mobilenet0.25")
    x = torch.randn(2, 3, 32, 32)
    model.train()
    _, logits, _ = model(x)
    assert not torch.allclose(logits.sum(-1), torch.ones(()))
    model.eval()
    with torch.no_grad():
        _, probabilities, _ = model(x)
    assert torch.allclose(probabilities.sum(-1), torch.ones(()), atol=1e-6)
    assert (probabilities >= 0).all()


def test_training_mode_is_differentiable():
    torch.manual_seed(2)
    model = RetinaFace("mobilenet0.25").train()
    loc, conf, landms = model(torch.randn(2, 3, 32, 32))
    (loc.square().mean() + conf.logsumexp(-1).mean() + landms.abs().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_head_order_is_row_column_anchor(mobilenet):
    """Prior k of level 1 is (row, col, anchor): a 1x1 head conv's output is laid out the same."""
    head = mobilenet.ClassHead[0]
    features = torch.zeros(1, 64, 3, 5)
    features[0, :, 1, 2] = 1.0  # only location (row 1, col 2) differs
    with torch.no_grad():
        out = head(features) - head(torch.zeros_like(features))
    changed = out[0].abs().sum(-1).nonzero().flatten().tolist()
    assert changed == [(1 * 5 + 2) * 2, (1 * 5 + 2) * 2 + 1]


def test_backbone_names():
    assert canonical_backbone_name("mobile0.25") == "mobilenet0.25"
    assert canonical_backbone_name("Resnet50") == "resnet50"
    assert isinstance(RetinaFace("mobile0.25").body, MobileNetV1)
    assert isinstance(RetinaFace("Resnet50").body, ResNet50)
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        RetinaFace("vgg16")


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_pretrained_backbone_loaders_drop_classifiers():
    # The weights come from one network and are loaded into a freshly
    # initialised other one, so a loader that loads nothing fails.
    torch.manual_seed(0)
    source, body = MobileNetV1(), MobileNetV1()
    imagenet = {"module." + k: v for k, v in source.state_dict().items()}
    imagenet["module.fc.weight"] = torch.zeros(1000, 256)
    imagenet["module.fc.bias"] = torch.zeros(1000)
    body.load_pretrained_backbone(imagenet)
    _assert_same_state(body, source)
    source, resnet = ResNet50(), ResNet50()
    torchvision_like = dict(source.state_dict(), **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    resnet.load_pretrained_backbone(torchvision_like)
    _assert_same_state(resnet, source)
