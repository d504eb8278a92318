"""batch_hard_triplet_loss / TripletLoss against an O(N^2) Python-loop mining reference."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from retinaface_ext.recognition import TripletLoss, batch_hard_triplet_loss

from utils import DEVICES


def loop_distance(a, b, metric, squared):
    if metric == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=0, eps=1e-12)
    sq = ((a - b) ** 2).sum()
    return sq if squared else sq.sqrt()


def loop_triplet_loss(embeddings, labels, margin=0.3, metric="euclidean", squared=False):
    """Every pair, one at a time: hardest positive / negative per anchor, mean over valid anchors.
    Returns (loss, per_anchor list (None = not valid), number of active triplets)."""
    n = embeddings.shape[0]
    per_anchor, active = [], 0
    for a in range(n):
        positives = [loop_distance(embeddings[a], embeddings[j], metric, squared)
                     for j in range(n) if j != a and labels[j] == labels[a]]
        negatives = [loop_distance(embeddings[a], embeddings[j], metric, squared)
                     for j in range(n) if labels[j] != labels[a]]
        if not positives or not negatives:
            per_anchor.append(None)
            continue
        gap = max(positives) - min(negatives)
        if margin is None:
            per_anchor.append(torch.log1p(torch.exp(gap)))
            active += bool(gap > 0)
        else:
            per_anchor.append(torch.clamp(gap + margin, min=0))
            active += bool(gap + margin > 0)
    valid = [v for v in per_anchor if v is not None]
    loss = torch.stack(valid).mean() if valid else embeddings.sum() * 0
    return loss, per_anchor, active


def make_batch(n=16, d=8, classes=4, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (n,), generator=g)
    return embeddings.to(device), labels.to(device)


CONFIGS = [
    dict(margin=0.3, metric="euclidean", squared=False),
    dict(margin=None, metric="euclidean", squared=False),
    dict(margin=1.0, metric="euclidean", squared=True),
    dict(margin=0.2, metric="cosine", squared=False),
    dict(margin=None, metric="cosine", squared=False),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['metric']}-m{c['margin']}-sq{c['squared']}")
def test_matches_loop_reference_values_gradients_and_active_fraction(device, config):
    embeddings, labels = make_batch(device=device)
    labels[0] = 99  # a singleton identity: anchor 0 has no positive and is excluded
    e1 = embeddings.clone().requires_grad_()
    e2 = embeddings.cpu().clone().requires_grad_()
    loss, fraction = batch_hard_triplet_loss(e1, labels, return_active_fraction=True, **config)
    ref, per_anchor, active = loop_triplet_loss(e2, labels.cpu().tolist(), **config)
    assert per_anchor[0] is None
    torch.testing.assert_close(loss.cpu(), ref, rtol=1e-10, atol=1e-12)
    num_valid = sum(v is not None for v in per_anchor)
    assert fraction.item() == pytest.approx(active / num_valid)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(e1.grad.cpu(), e2.grad, rtol=1e-8, atol=1e-12)

    per = batch_hard_triplet_loss(embeddings, labels, reduction="none", **config)
    expected = torch.stack([v if v is not None else torch.zeros((), dtype=torch.float64)
                            for v in per_anchor]).detach()
    torch.testing.assert_close(per.cpu(), expected, rtol=1e-10, atol=1e-12)
    total = batch_hard_triplet_loss(embeddings, labels, reduction="sum", **config)
    torch.testing.assert_close(total.cpu(), expected.sum(), rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 9), classes=st.integers(1, 4), seed=st.integers(0, 2**16),
       config=st.sampled_from(CONFIGS))
def test_property_matches_loop_reference(n, classes, seed, config):
    embeddings, labels = make_batch(n=n, d=3, classes=classes, seed=seed)
    ours = batch_hard_triplet_loss(embeddings, labels, **config)
    ref, _, _ = loop_triplet_loss(embeddings, labels.tolist(), **config)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-9, atol=1e-12)


def test_known_values_on_a_line():
    # 1-D points: class 0 at 0 and 1, class 1 at 3 and 10
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    per = batch_hard_triplet_loss(embeddings, labels, margin=0.5, reduction="none")
    # anchor 0: pos 1, neg 3 -> 1 - 3 + .5 < 0; anchor 1: pos 1, neg 2 -> 1 - 2 + .5 < 0
    # anchor 2: pos 7, neg 2 -> 5.5; anchor 3: pos 7, neg 9 -> 0 (hinge)
    torch.testing.assert_close(per, torch.tensor([0.0, 0.0, 5.5, 0.0], dtype=torch.float64))
    loss, fraction = batch_hard_triplet_loss(embeddings, labels, margin=0.5, return_active_fraction=True)
    assert loss.item() == pytest.approx(5.5 / 4) and fraction.item() == pytest.approx(0.25)
    soft = batch_hard_triplet_loss(embeddings, labels, margin=None, reduction="none")
    torch.testing.assert_close(soft, F.softplus(torch.tensor([-2.0, -1.0, 5.0, -2.0], dtype=torch.float64)))


def test_gradcheck_float64():
    embeddings, labels = make_batch(n=8, d=3, classes=3, seed=3)
    embeddings.requires_grad_()
    for config in CONFIGS:
        assert torch.autograd.gradcheck(lambda e: batch_hard_triplet_loss(e, labels, **config), (embeddings,))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_zero_distance_gradient_is_finite(metric):
    base = torch.randn(3, 5, dtype=torch.float64)
    # every anchor's hardest positive is an exact duplicate of it (distance 0)
    embeddings = base.repeat_interleave(2, dim=0).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = batch_hard_triplet_loss(embeddings, labels, margin=10.0, metric=metric)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()
    # all points identical: every distance is 0, still finite
    same = torch.ones(4, 5, requires_grad=True)
    loss = batch_hard_triplet_loss(same, torch.tensor([0, 0, 1, 1]), margin=0.3, metric=metric)
    loss.backward()
    assert loss.item() == pytest.approx(0.3) and torch.isfinite(same.grad).all()


@pytest.mark.parametrize("labels", [[3, 3, 3, 3, 3], [0, 1, 2, 3, 4]], ids=["one-identity", "singletons"])
def test_no_valid_anchor_gives_zero_not_nan(labels):
    embeddings = torch.randn(5, 4, requires_grad=True)
    loss, fraction = batch_hard_triplet_loss(embeddings, torch.tensor(labels), return_active_fraction=True)
    assert loss.item() == 0 and fraction.item() == 0
    loss.backward()
    assert embeddings.grad.abs().max() == 0


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_sample_batches(n):
    embeddings = torch.randn(n, 4, requires_grad=True)
    labels = torch.zeros(n, dtype=torch.long)
    for config in CONFIGS:
        loss = batch_hard_triplet_loss(embeddings, labels, **config)
        assert loss.item() == 0 and loss.shape == ()
        assert batch_hard_triplet_loss(embeddings, labels, reduction="none", **config).shape == (n,)
    batch_hard_triplet_loss(embeddings, labels).backward()
    assert embeddings.grad.shape == (n, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_half_precision_inputs_are_computed_in_float32(dtype, metric):
    embeddings, labels = make_batch(dtype=torch.float32)
    low = embeddings.to(dtype).requires_grad_()
    loss = batch_hard_triplet_loss(low, labels, metric=metric)
    assert loss.dtype == torch.float32
    ref, _, _ = loop_triplet_loss(low.detach().float(), labels.tolist(), metric=metric)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


def test_ignored_labels_take_no_part():
    embeddings, labels = make_batch(n=20)
    labels[::3] = -1
    kept = labels != -1
    per = batch_hard_triplet_loss(embeddings, labels, reduction="none")
    assert (per[~kept] == 0).all()
    torch.testing.assert_close(per[kept],
                               batch_hard_triplet_loss(embeddings[kept], labels[kept], reduction="none"))
    torch.testing.assert_close(TripletLoss()(embeddings, labels),
                               batch_hard_triplet_loss(embeddings[kept], labels[kept]))
    # ignore_index=None: -1 is an identity like any other
    ref, _, _ = loop_triplet_loss(embeddings, labels.tolist())
    torch.testing.assert_close(batch_hard_triplet_loss(embeddings, labels, ignore_index=None), ref)


def test_module_keeps_the_active_fraction():
    embeddings, labels = make_batch()
    module = TripletLoss(margin=0.3)
    loss = module(embeddings, labels)
    expected, fraction = batch_hard_triplet_loss(embeddings, labels, 0.3, return_active_fraction=True)
    torch.testing.assert_close(loss, expected)
    assert module.last_active_fraction.item() == fraction.item()
    assert not module.last_active_fraction.requires_grad
    assert "margin=soft" in repr(TripletLoss(margin=None))


def test_non_contiguous_embeddings_and_int32_labels():
    embeddings, labels = make_batch()
    strided = embeddings.T.contiguous().T
    torch.testing.assert_close(batch_hard_triplet_loss(strided, labels.int()),
                               batch_hard_triplet_loss(embeddings, labels))


def test_bad_inputs_name_the_argument():
    embeddings, labels = make_batch()
    with pytest.raises(ValueError, match=r"embeddings must have shape \[N, D\], got \[16\]"):
        batch_hard_triplet_loss(embeddings[:, 0], labels)
    with pytest.raises(ValueError, match=r"labels must have shape \[16\]"):
        batch_hard_triplet_loss(embeddings, labels[:3])
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        batch_hard_triplet_loss(embeddings, labels.float())
    with pytest.raises(TypeError, match="embeddings must be a floating-point tensor"):
        batch_hard_triplet_loss(embeddings.long(), labels)
    with pytest.raises(ValueError, match="metric must be one of"):
        batch_hard_triplet_loss(embeddings, labels, metric="manhattan")
    with pytest.raises(ValueError, match="margin must be >= 0 or None"):
        batch_hard_triplet_loss(embeddings, labels, margin=-0.1)
    with pytest.raises(ValueError, match="margin must be >= 0 or None"):
        TripletLoss(margin=math.nan)
    with pytest.raises(ValueError, match="squared=True needs metric='euclidean'"):
        batch_hard_triplet_loss(embeddings, labels, metric="cosine", squared=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        TripletLoss(reduction="avg")
