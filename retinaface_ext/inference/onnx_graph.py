"""An ONNX graph of a RetinaFace, written from its modules (BatchNorm folded), for onnxruntime.

Why not ``torch.onnx.export``: the TorchScript exporter takes seconds (and is
deprecated), the dynamo exporter tens of seconds, and both would be paid on
the first ``detect()`` call. The network is a fixed set of blocks, so writing
its graph node by node takes milliseconds and gives exactly the graph we want:
dynamic batch, height and width; BatchNorm folded; for MobileNetV1-0.25 the
option to start after the fused ``mobilenet_stem`` op. The outputs are
``RetinaFace.forward``'s in eval mode: ``loc`` [B, P, 4], ``conf`` [B, P, 2]
(softmaxed), ``landmarks`` [B, P, 10]. tests/test_inference.py checks the
graph against the PyTorch model for both backbones at several sizes.

Only the exact module types of ``retinaface_ext.models`` are translated; a
subclass or another module (whose forward may differ) raises
:class:`UnsupportedModel`.
"""
import itertools

import numpy as np
import torch
from torch import nn

from ..models.mobilenet import MobileNetV1
from ..models.necks import FPN, SSH
from ..models.resnet import Bottleneck, ResNet50
from ..models.retinaface import BboxHead, ClassHead, LandmarkHead, RetinaFace
from .folding import folded_conv, is_foldable_batchnorm

OPSET = 17
INPUT_NAME = "input"
STEM_INPUT_NAME = "stem"
OUTPUT_NAMES = ("loc", "conf", "landmarks")
#: Blocks of MobileNetV1's stage1 that ``ops.mobilenet_stem`` computes.
STEM_BLOCKS = 4


class UnsupportedModel(ValueError):
    """The model holds a module the graph writer does not know (e.g. a subclass with its own forward)."""


def _require_type(module, expected, where):
    if type(module) not in (expected if isinstance(expected, tuple) else (expected,)):
        raise UnsupportedModel(f"{where} is a {type(module).__name__}; the ONNX graph writer knows only "
                               f"retinaface_ext's own modules")


class _Graph:
    def __init__(self):
        import onnx  # the [onnxruntime] extra

        self.onnx = onnx
        self.nodes = []
        self.initializers = []
        self._ids = itertools.count()

    def name(self, hint):
        return f"{hint}_{next(self._ids)}"

    def constant(self, hint, array):
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, hint=None, outputs=1, **attributes):
        names = [self.name(hint or op.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    # ---------------------------------------------------------------- layers

    def conv(self, x, conv, bn=None, hint="conv"):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModel(f"{hint}: only explicit zero padding is supported")
        weight, bias = folded_conv(conv, bn)
        return self.node("Conv", [x, self.constant(f"{hint}.weight", weight.cpu().numpy()),
                                  self.constant(f"{hint}.bias", bias.cpu().numpy())], hint=hint,
                         kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                         pads=list(conv.padding) * 2, dilations=list(conv.dilation), group=conv.groups)

    def activation(self, x, module, hint):
        if type(module) is nn.ReLU or (type(module) is nn.LeakyReLU and module.negative_slope == 0):
            return self.node("Relu", [x], hint=hint)
        if type(module) is nn.LeakyReLU:
            return self.node("LeakyRelu", [x], hint=hint, alpha=float(module.negative_slope))
        raise UnsupportedModel(f"{hint}: {type(module).__name__} is not an activation the graph writer knows")

    def sequential(self, x, seq, hint, skip=0):
        """nn.Sequential of Conv2d (+ BatchNorm2d), LeakyReLU / ReLU, Identity and nested Sequentials."""
        _require_type(seq, nn.Sequential, hint)
        layers = list(seq.named_children())[skip:]
        i = 0
        while i < len(layers):
            name, layer = layers[i]
            where = f"{hint}.{name}"
            if type(layer) is nn.Conv2d:
                bn = None
                if i + 1 < len(layers) and is_foldable_batchnorm(layers[i + 1][1]):
                    bn = layers[i + 1][1]
                    i += 1
                x = self.conv(x, layer, bn, hint=where)
            elif type(layer) is nn.Sequential:
                x = self.sequential(x, layer, where)
            elif type(layer) is nn.Identity:
                pass
            else:
                x = self.activation(x, layer, where)
            i += 1
        return x

    # ---------------------------------------------------------------- blocks

    def mobilenet(self, x, body, after_stem):
        c3 = self.sequential(x, body.stage1, "body.stage1", skip=STEM_BLOCKS if after_stem else 0)
        c4 = self.sequential(c3, body.stage2, "body.stage2")
        c5 = self.sequential(c4, body.stage3, "body.stage3")
        return [c3, c4, c5]

    def resnet(self, x, body):
        x = self.node("Relu", [self.conv(x, body.conv1, body.bn1, hint="body.conv1")])
        _require_type(body.maxpool, nn.MaxPool2d, "body.maxpool")
        pool = body.maxpool
        x = self.node("MaxPool", [x], kernel_shape=[pool.kernel_size] * 2, strides=[pool.stride] * 2,
                      pads=[pool.padding] * 4)
        features = []
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(body, layer_name)
            _require_type(layer, nn.Sequential, f"body.{layer_name}")
            for index, block in layer.named_children():
                x = self.bottleneck(x, block, f"body.{layer_name}.{index}")
            features.append(x)
        return features[1:]

    def bottleneck(self, x, block, hint):
        _require_type(block, Bottleneck, hint)
        out = self.node("Relu", [self.conv(x, block.conv1, block.bn1, hint=f"{hint}.conv1")])
        out = self.node("Relu", [self.conv(out, block.conv2, block.bn2, hint=f"{hint}.conv2")])
        out = self.conv(out, block.conv3, block.bn3, hint=f"{hint}.conv3")
        identity = x if block.downsample is None else self.sequential(x, block.downsample, f"{hint}.downsample")
        return self.node("Relu", [self.node("Add", [out, identity])])

    def upsample_add(self, small, target):
        """target + nearest-upsampled small (F.interpolate(mode="nearest", size=target's))."""
        sizes = self.node("Concat", [self.node("Shape", [small], end=2), self.node("Shape", [target], start=2)],
                          axis=0)
        upsampled = self.node("Resize", [small, "", "", sizes], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return self.node("Add", [target, upsampled])

    def fpn(self, features, fpn):
        _require_type(fpn, FPN, "fpn")
        c3, c4, c5 = features
        p3 = self.sequential(c3, fpn.output1, "fpn.output1")
        p4 = self.sequential(c4, fpn.output2, "fpn.output2")
        p5 = self.sequential(c5, fpn.output3, "fpn.output3")
        p4 = self.sequential(self.upsample_add(p5, p4), fpn.merge2, "fpn.merge2")
        p3 = self.sequential(self.upsample_add(p4, p3), fpn.merge1, "fpn.merge1")
        return [p3, p4, p5]

    def ssh(self, x, ssh, hint):
        _require_type(ssh, SSH, hint)
        branch3 = self.sequential(x, ssh.conv3X3, f"{hint}.conv3X3")
        shared = self.sequential(x, ssh.conv5X5_1, f"{hint}.conv5X5_1")
        branch5 = self.sequential(shared, ssh.conv5X5_2, f"{hint}.conv5X5_2")
        branch7 = self.sequential(self.sequential(shared, ssh.conv7X7_2, f"{hint}.conv7X7_2"), ssh.conv7x7_3,
                                  f"{hint}.conv7x7_3")
        # relu(concat(...)) as concat(relu(...)): onnxruntime fuses each Relu into its conv.
        return self.node("Concat", [self.node("Relu", [branch]) for branch in (branch3, branch5, branch7)],
                         axis=1)

    def heads(self, features, model):
        """loc, conf logits and landmarks [B, P, 4 / 2 / 10]: the three heads of a level as one 1x1 conv.

        The merged conv's output channels are, per anchor, its 4 box, 2 class and
        10 landmark channels, so its NHWC output reshaped to [B, H * W * anchors,
        16] holds each prior's values in a row (the prior_box order); one
        Concat over the levels and one Split give the three outputs.
        """
        per_level = []
        for k, x in enumerate(features):
            convs = []
            for heads, head_type, hint in ((model.BboxHead, BboxHead, "BboxHead"), (model.ClassHead, ClassHead,
                                           "ClassHead"), (model.LandmarkHead, LandmarkHead, "LandmarkHead")):
                _require_type(heads, nn.ModuleList, hint)
                _require_type(heads[k], head_type, f"{hint}.{k}")
                conv = heads[k].conv1x1
                if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
                    raise UnsupportedModel(f"{hint}.{k}.conv1x1 is not a plain 1x1 conv")
                convs.append((folded_conv(conv), heads[k].values))
            anchors = {weight.shape[0] // values for (weight, _), values in convs}
            if len(anchors) != 1:
                raise UnsupportedModel(f"the heads of level {k} predict for different numbers of anchors")
            weights, biases = [], []
            for anchor in range(anchors.pop()):
                for (weight, bias), values in convs:
                    weights.append(weight[anchor * values:(anchor + 1) * values])
                    biases.append(bias[anchor * values:(anchor + 1) * values])
            weight = torch.cat(weights).cpu().numpy()
            bias = torch.cat(biases).cpu().numpy()
            out = self.node("Conv", [x, self.constant(f"heads.{k}.weight", weight),
                                     self.constant(f"heads.{k}.bias", bias)], hint=f"heads.{k}",
                            kernel_shape=[1, 1])
            out = self.node("Transpose", [out], perm=[0, 2, 3, 1])
            shape = self.constant(f"heads.{k}.shape", np.array([0, -1, sum(v for _, v in convs)], dtype=np.int64))
            per_level.append(self.node("Reshape", [out, shape]))
        rows = self.node("Concat", per_level, axis=1)
        split = self.constant("heads.split", np.array([values for _, values in convs], dtype=np.int64))
        return self.node("Split", [rows, split], outputs=3, axis=2)


def build_onnx_model(model, after_stem=False):
    """The ``onnx.ModelProto`` of ``model`` (a RetinaFace) in eval mode, BatchNorm folded, dynamic sizes.

    Input ``input``: [B, 3, H, W] float32, BGR minus the mean (as the PyTorch
    model's). ``after_stem=True`` (MobileNetV1 bodies only): input ``stem``,
    [B, 32, ceil(H / 4), ceil(W / 4)], the output of ``ops.mobilenet_stem``,
    and the graph starts after ``body.stage1[:4]``. The weights are copied
    when the graph is written: later changes to the model are not seen.
    """
    _require_type(model, RetinaFace, "the model")
    graph = _Graph()
    onnx = graph.onnx
    if type(model.body) is MobileNetV1:
        if after_stem:
            x = onnx.helper.make_tensor_value_info(STEM_INPUT_NAME, onnx.TensorProto.FLOAT,
                                                   ["batch", 32, "stem_height", "stem_width"])
        else:
            x = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT,
                                                   ["batch", 3, "height", "width"])
        features = graph.mobilenet(x.name, model.body, after_stem)
    elif type(model.body) is ResNet50:
        if after_stem:
            raise UnsupportedModel("after_stem=True needs a MobileNetV1 body")
        x = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
        features = graph.resnet(x.name, model.body)
    else:
        raise UnsupportedModel(f"the body is a {type(model.body).__name__}; expected MobileNetV1 or ResNet50")

    pyramid = graph.fpn(features, model.fpn)
    levels = [graph.ssh(pyramid[k], getattr(model, f"ssh{k + 1}"), f"ssh{k + 1}") for k in range(3)]
    loc, logits, landmarks = graph.heads(levels, model)
    conf = graph.node("Softmax", [logits], axis=-1)
    # Name the three results as the outputs.
    values = {}
    for result, name, width in ((loc, "loc", 4), (conf, "conf", 2), (landmarks, "landmarks", 10)):
        graph.nodes.append(onnx.helper.make_node("Identity", [result], [name]))
        values[name] = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", "priors", width])
    onnx_graph = onnx.helper.make_graph(graph.nodes, "retinaface", [x], [values[n] for n in OUTPUT_NAMES],
                                       initializer=graph.initializers)
    proto = onnx.helper.make_model(onnx_graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="retinaface_ext")
    proto.ir_version = min(proto.ir_version, 8)  # readable by older onnxruntime releases too
    return proto
