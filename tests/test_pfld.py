"""PFLD loss against a per-face loop reference; NME, AUC and failure rate on known values."""
import math

import pytest
import torch

from retinaface_ext.landmarks import (INTER_OCULAR, PFLDLoss, attribute_weights, auc_and_failure_rate,
                                      nme, pfld_loss)

from utils import DEVICES


# ---------------------------------------------------------------------------- PFLD loss

def loop_pfld_loss(landmarks, landmarks_gt, angles, angles_gt, attributes, floor):
    """The paper's sum, one face and one attribute at a time (weights: inverse batch
    frequency per attribute, floored)."""
    n = landmarks.shape[0]
    if n == 0:
        return torch.zeros(()), torch.zeros(())
    frequency = [sum(float(attributes[i][c]) for i in range(n)) / n for c in range(attributes.shape[1])]
    weighted, plain = 0.0, 0.0
    for i in range(n):
        w = sum(float(attributes[i][c]) / frequency[c] for c in range(len(frequency)) if frequency[c] > 0)
        w = max(w, floor)
        angle_term = sum(1 - torch.cos(angles[i][k] - angles_gt[i][k]) for k in range(3))
        l2 = ((landmarks[i] - landmarks_gt[i]) ** 2).sum()
        weighted = weighted + w * angle_term * l2
        plain = plain + l2
    return weighted / n, plain / n


def make_faces(n=8, k=98, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, k, 2, generator=g, dtype=dtype)
    pred = gt + 0.05 * torch.randn(n, k, 2, generator=g, dtype=dtype)
    angles_gt = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * math.pi / 2  # +-45 degrees
    angles = angles_gt + 0.2 * torch.randn(n, 3, generator=g, dtype=dtype)
    attributes = (torch.rand(n, 6, generator=g) < 0.3).long()
    attributes[0] = 0  # a face without any attribute
    attributes[:, 3] = 0  # an attribute absent from the batch
    return [t.to(device) for t in (pred, gt, angles, angles_gt, attributes)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("floor", [1.0, 0.0, 0.25])
def test_matches_loop_reference_values_and_gradients(device, floor):
    pred, gt, angles, angles_gt, attributes = make_faces(device=device)
    p1, a1 = pred.clone().requires_grad_(), angles.clone().requires_grad_()
    p2, a2 = pred.cpu().clone().requires_grad_(), angles.cpu().clone().requires_grad_()
    weighted, plain = pfld_loss(p1, gt, a1, angles_gt, attributes, attribute_floor=floor)
    ref_weighted, ref_plain = loop_pfld_loss(p2, gt.cpu(), a2, angles_gt.cpu(), attributes.cpu(), floor)
    torch.testing.assert_close(weighted.cpu(), ref_weighted, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(plain.cpu(), ref_plain, rtol=1e-12, atol=1e-15)
    (weighted + 0.5 * plain).backward()
    (ref_weighted + 0.5 * ref_plain).backward()
    torch.testing.assert_close(p1.grad.cpu(), p2.grad)
    torch.testing.assert_close(a1.grad.cpu(), a2.grad)


def test_floor_keeps_faces_without_attributes():
    pred, gt, angles, angles_gt, attributes = make_faces()
    weights = attribute_weights(attributes)
    assert weights[0].item() == 1.0  # no attribute: the floor
    flagged = attributes.sum(dim=1) > 0
    assert (weights[flagged] >= 1).all()
    torch.testing.assert_close(weights[flagged], attribute_weights(attributes, attribute_floor=0)[flagged])
    # floor 0 (the reference implementations): the unflagged face drops out of the loss
    pred.requires_grad_()
    pfld_loss(pred, gt, angles, angles_gt, attributes, attribute_floor=0)[0].backward()
    assert pred.grad[0].abs().max() == 0 and pred.grad[1:].abs().max() > 0
    # default floor: it counts
    pred.grad = None
    PFLDLoss()(pred, gt, angles, angles_gt, attributes)[0].backward()
    assert pred.grad[0].abs().max() > 0


def test_attribute_weights_are_inverse_batch_frequencies():
    attributes = torch.tensor([[1, 0, 0, 0, 0, 0],
                               [1, 1, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0, 0],
                               [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    # frequencies: pose 3/4, expression 1/4, blur 1/4
    expected = torch.tensor([4 / 3, 4 / 3 + 4, 1.0, 4 / 3 + 4])
    torch.testing.assert_close(attribute_weights(attributes), expected)


def test_radians_known_value():
    gt = torch.zeros(1, 5, 2)
    pred = gt.clone()
    pred[0, 2] = torch.tensor([3.0, 4.0])  # ||d||^2 = 25
    angles_gt = torch.zeros(1, 3)
    weighted, plain = pfld_loss(pred, gt, torch.tensor([[math.pi / 2, math.pi, 0.0]]), angles_gt)
    # (1 - cos(pi/2)) + (1 - cos(pi)) + 0 = 3; no attributes given: weight 1
    assert weighted.item() == pytest.approx(3 * 25) and plain.item() == pytest.approx(25)
    full_turn = pfld_loss(pred, gt, torch.tensor([[2 * math.pi, 0.0, 0.0]]), angles_gt)[0]
    assert full_turn.item() == pytest.approx(0, abs=1e-5)  # angles are radians: 2*pi is no error


def test_flattened_landmarks_and_no_attributes():
    pred, gt, angles, angles_gt, attributes = make_faces()
    flat = pfld_loss(pred.flatten(1), gt.flatten(1), angles, angles_gt, attributes)
    torch.testing.assert_close(flat, pfld_loss(pred, gt, angles, angles_gt, attributes))
    ones = torch.ones(8, 1)  # one attribute every face has: weight 1 everywhere
    torch.testing.assert_close(pfld_loss(pred, gt, angles, angles_gt),
                               pfld_loss(pred, gt, angles, angles_gt, ones))


def test_gradcheck_float64():
    pred, gt, angles, angles_gt, attributes = make_faces(n=4, k=5)
    pred.requires_grad_()
    angles.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, a: pfld_loss(p, gt, a, angles_gt, attributes), (pred, angles))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    pred, gt, angles, angles_gt, attributes = make_faces(dtype=torch.float32)
    low = [t.to(dtype) for t in (pred, gt, angles, angles_gt)]
    low[0].requires_grad_()
    weighted, plain = pfld_loss(*low, attributes)
    assert weighted.dtype == plain.dtype == torch.float32
    ref = loop_pfld_loss(*[t.float() for t in low], attributes, 1.0)
    torch.testing.assert_close(weighted, ref[0].detach().float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain, ref[1].detach().float(), rtol=1e-5, atol=1e-7)
    weighted.backward()
    assert low[0].grad.dtype == dtype and torch.isfinite(low[0].grad.float()).all()


def test_empty_batch_is_zero_not_nan():
    pred = torch.zeros(0, 98, 2, requires_grad=True)
    weighted, plain = pfld_loss(pred, torch.zeros(0, 98, 2), torch.zeros(0, 3), torch.zeros(0, 3),
                                torch.zeros(0, 6))
    assert weighted.item() == 0 and plain.item() == 0
    weighted.backward()


def test_pfld_bad_inputs_name_the_argument():
    pred, gt, angles, angles_gt, attributes = make_faces()
    with pytest.raises(ValueError, match=r"landmarks_gt must have the shape of landmarks \[8, 98, 2\]"):
        pfld_loss(pred, gt[:, :68], angles, angles_gt)
    with pytest.raises(ValueError, match=r"angles must have shape \[8, 3\] \(yaw, pitch, roll in radians\)"):
        pfld_loss(pred, gt, angles[:, :2], angles_gt)
    with pytest.raises(ValueError, match=r"angles_gt must have shape \[8, 3\]"):
        pfld_loss(pred, gt, angles, angles_gt[:4])
    with pytest.raises(ValueError, match=r"attributes must have shape \[8, C\]"):
        pfld_loss(pred, gt, angles, angles_gt, attributes[:3])
    with pytest.raises(ValueError, match=r"landmarks must have shape \[N, K, 2\] or \[N, 2K\]"):
        pfld_loss(pred[:, 0, 0], gt[:, 0, 0], angles, angles_gt)
    with pytest.raises(TypeError, match="landmarks must be a floating-point tensor"):
        pfld_loss(pred.long(), gt, angles, angles_gt)
    with pytest.raises(ValueError, match="attribute_floor must be >= 0"):
        PFLDLoss(attribute_floor=-1)


# ---------------------------------------------------------------------------- NME

def loop_nme(pred, gt, left, right):
    """Mean point error over the distance between the means of two groups of gt points."""
    out = []
    for p, g in zip(pred, gt):
        d = (g[list(left)].mean(0) - g[list(right)].mean(0)).norm()
        out.append(sum((p[k] - g[k]).norm() for k in range(len(p))) / len(p) / d)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,mode,left,right", [
    (5, "inter_ocular", [0], [1]),
    (5, "inter_pupil", [0], [1]),
    (68, "inter_ocular", [36], [45]),
    (68, "inter_pupil", list(range(36, 42)), list(range(42, 48))),
    (98, "inter_ocular", [60], [72]),
    (98, "inter_pupil", [96], [97]),
])
def test_nme_matches_loop_reference(device, k, mode, left, right):
    pred, gt = make_faces(n=6, k=k, device=device)[:2]
    torch.testing.assert_close(nme(pred, gt, mode).cpu(), loop_nme(pred.cpu(), gt.cpu(), left, right))


def test_nme_known_values():
    gt = torch.zeros(1, 68, 2)
    gt[0, 36] = torch.tensor([0.0, 0.0])
    gt[0, 45] = torch.tensor([10.0, 0.0])
    pred = gt + torch.tensor([3.0, 4.0])  # every point 5 off
    assert nme(pred, gt, "inter_ocular").item() == pytest.approx(0.5)
    assert INTER_OCULAR[98] == (60, 72)
    # bbox: the gt landmarks span 4 x 9 -> sqrt(36) = 6
    gt5 = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [2.0, 4.0], [1.0, 9.0], [3.0, 9.0]]])
    assert nme(gt5 + torch.tensor([3.0, 4.0]), gt5, "bbox").item() == pytest.approx(5 / 6)
    # a given normaliser: per face [N] or one number
    assert nme(pred, gt, torch.tensor([2.0])).item() == pytest.approx(2.5)
    assert nme(pred, gt, 5.0).item() == pytest.approx(1.0)


def test_nme_half_precision_and_zero_normaliser():
    pred, gt = make_faces(n=4, k=98, dtype=torch.float32)[:2]
    for dtype in (torch.float16, torch.bfloat16):
        out = nme(pred.to(dtype), gt.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, nme(pred.to(dtype).float(), gt.to(dtype).float()))
    degenerate = torch.zeros(2, 5, 2)
    out = nme(degenerate, degenerate)  # eyes on top of each other, exact prediction
    assert (out == 0).all()
    assert (nme(degenerate + 0.1, degenerate) > 1e30).all()  # any error is a failure, not NaN


def test_nme_bad_inputs_name_the_argument():
    pred, gt = make_faces(n=3, k=98)[:2]
    with pytest.raises(ValueError, match=r"pred must have shape \[N, K, 2\], got \[3, 98, 3\]"):
        nme(torch.zeros(3, 98, 3), gt)
    with pytest.raises(ValueError, match=r"gt must have the shape of pred \[3, 98, 2\], got \[3, 68, 2\]"):
        nme(pred, gt[:, :68])
    with pytest.raises(ValueError, match="normalization must be one of 'inter_ocular', 'inter_pupil', 'bbox'"):
        nme(pred, gt, "diagonal")
    with pytest.raises(ValueError, match=r"normalization='inter_ocular' knows the 5-, 68- and 98-point.*K=10"):
        nme(pred[:, :10], gt[:, :10])
    with pytest.raises(ValueError, match=r"normalization as a tensor must have shape \[\] or \[3\]"):
        nme(pred, gt, torch.ones(2))
    with pytest.raises(TypeError, match="gt must be a floating-point tensor"):
        nme(pred, gt.long())


# ---------------------------------------------------------------------------- AUC / failure rate

@pytest.mark.parametrize("step", [None, 1e-4, 0.01])
def test_auc_known_sets(step):
    assert auc_and_failure_rate(torch.zeros(10), step=step) == (1.0, 0.0)
    assert auc_and_failure_rate(torch.full((7,), 0.11), step=step) == (0.0, 1.0)
    # exactly at the threshold: not a failure (failure is NME > threshold); no area, except
    # the trapezoid rule's half cell at the grid's last point, where CED jumps to 1
    half_cell = 0.0 if step is None else 0.5 * step / 0.1
    assert auc_and_failure_rate([0.1, 0.1], step=step) == (pytest.approx(half_cell), 0.0)
    assert auc_and_failure_rate(torch.tensor([0.1, 0.1]), step=step) == (pytest.approx(half_cell), 0.0)
    assert auc_and_failure_rate([float("nan"), 0.0], step=step) == (0.5, 0.5)


def test_auc_exact_and_grid():
    # exact: mean(max(0, 1 - nme / 0.1)) = (1 + 0.5 + 0) / 3
    auc, failure = auc_and_failure_rate([0.0, 0.05, 0.2])
    assert auc == pytest.approx(0.5) and failure == pytest.approx(1 / 3)
    # trapezoid on the grid 0, 0.01, ..., 0.1: the jump at 0.05 costs half a cell
    auc_grid, _ = auc_and_failure_rate([0.05], step=0.01)
    assert auc_grid == pytest.approx(0.55)
    nmes = torch.rand(500, generator=torch.Generator().manual_seed(0)) * 0.15
    exact, fr = auc_and_failure_rate(nmes)
    fine, fr_fine = auc_and_failure_rate(nmes, step=1e-4)
    assert abs(exact - fine) < 1e-3 and fr == fr_fine == pytest.approx((nmes > 0.1).float().mean().item())
    # other thresholds (AUC@0.08 etc.)
    assert auc_and_failure_rate([0.04], threshold=0.08) == (pytest.approx(0.5), 0.0)


def test_auc_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="nmes is empty"):
        auc_and_failure_rate([])
    with pytest.raises(ValueError, match=r"nmes must be 1-D"):
        auc_and_failure_rate(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="nmes must be >= 0"):
        auc_and_failure_rate([0.1, -0.2])
    with pytest.raises(ValueError, match="threshold must be > 0"):
        auc_and_failure_rate([0.1], threshold=0)
    with pytest.raises(ValueError, match="step must be > 0 and divide threshold=0.1"):
        auc_and_failure_rate([0.1], step=0.03)
    with pytest.raises(ValueError, match="step must be > 0"):
        auc_and_failure_rate([0.1], step=0)
