"""Without the compiled extension the package still imports and every op works
(through retinaface_ext.reference), with one warning."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        import retinaface_ext
        from retinaface_ext import ops, reference
        import retinaface_ext.ops  # a second import does not warn again
    messages = [str(w.message) for w in caught if "compiled extension" in str(w.message)]
    assert len(messages) == 1, messages
    assert "RETINAFACE_EXT_NO_EXTENSION=1" in messages[0]
    assert not retinaface_ext.HAS_EXTENSION

    g = torch.Generator().manual_seed(0)
    priors = ops.prior_box((64, 64))
    assert priors.shape == (168, 4)
    xy = torch.rand(2, 3, 2, generator=g) * 0.6
    gt_boxes = torch.cat([xy, xy + 0.3], dim=-1)
    gt_landms = (gt_boxes[..., None, :2] + 0.1).expand(2, 3, 5, 2).reshape(2, 3, 10)
    gt_labels = torch.ones(2, 3)
    gt_counts = torch.tensor([3, 1])
    assigned = ops.match(gt_boxes, gt_counts, priors)
    assert assigned.shape == (2, 168) and (assigned >= 0).any()

    loc = torch.randn(2, 168, 4, generator=g, requires_grad=True)
    conf = torch.randn(2, 168, 2, generator=g, requires_grad=True)
    landms = torch.randn(2, 168, 10, generator=g, requires_grad=True)
    losses = ops.multibox_loss(loc, conf, landms, priors, gt_boxes, gt_landms, gt_labels, gt_counts)
    sum(losses).backward()
    assert loc.grad is not None and torch.isfinite(loc.grad).all()

    boxes = ops.decode(loc.detach(), priors)
    keep = ops.nms(boxes[0], conf[0, :, 1].detach(), 0.4)
    assert keep.numel() > 0
    dets, counts = ops.detect_postprocess(loc.detach(), conf.detach().softmax(-1), landms.detach(), priors)
    assert dets.shape == (2, 750, 15) and counts.shape == (2,)
    print("fallback ok")
    """
)


def test_package_works_without_extension():
    env = dict(os.environ, RETINAFACE_EXT_NO_EXTENSION="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback ok" in result.stdout
