"""center_loss / CenterLoss against a dense [N, K] reference and a loop centre update."""
import pytest
import torch

from retinaface_ext.recognition import CenterLoss, center_loss, center_update_statistics

from utils import DEVICES


def dense_center_loss(features, labels, centers, ignore_index=-1, reduction="mean"):
    """The textbook formulation: every sample against every centre ([N, K]), then pick y_i."""
    distances = 0.5 * (features[:, None, :] - centers[None, :, :]).square().sum(dim=-1)  # [N, K]
    valid = labels != ignore_index
    one_hot = torch.zeros_like(distances)
    one_hot[valid.nonzero()[:, 0], labels[valid]] = 1
    per_sample = (distances * one_hot).sum(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / max(int(valid.sum()), 1)


def loop_center_update(centers, features, labels, alpha, ignore_index=-1):
    """Wen et al. 2016, Algorithm 1, class by class."""
    new = centers.clone()
    for j in range(centers.shape[0]):
        members = [i for i in range(len(labels)) if int(labels[i]) == j and int(labels[i]) != ignore_index]
        delta = torch.zeros_like(centers[j])
        for i in members:
            delta += centers[j] - features[i]
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return new


def make_batch(n=12, k=5, d=7, dtype=torch.float64, seed=0, ignore_some=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=dtype)
    centers = torch.randn(k, d, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    if ignore_some:
        labels[::4] = -1
    return features.to(device), labels.to(device), centers.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_dense_reference_values_and_gradients(device, reduction):
    features, labels, centers = make_batch(device=device)
    f1, c1 = features.clone().requires_grad_(), centers.clone().requires_grad_()
    f2, c2 = features.clone().requires_grad_(), centers.clone().requires_grad_()
    ours = center_loss(f1, labels, c1, reduction=reduction)
    ref = dense_center_loss(f2, labels, c2, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    weights = torch.rand_like(ours)  # a generic upstream gradient (also for "none")
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad)
    torch.testing.assert_close(c1.grad, c2.grad)
    assert f1.grad[labels == -1].abs().max() == 0  # ignored samples get no gradient


def test_custom_ignore_index_and_non_contiguous_features():
    features, labels, centers = make_batch(ignore_some=False)
    labels[1] = 99
    strided = features.T.contiguous().T  # same values, transposed strides
    assert not strided.is_contiguous()
    torch.testing.assert_close(center_loss(strided, labels, centers, ignore_index=99),
                               dense_center_loss(features, labels, centers, ignore_index=99))


def test_gradcheck_float64():
    features, labels, centers = make_batch(n=6, k=3, d=4)
    features.requires_grad_()
    centers.requires_grad_()
    assert torch.autograd.gradcheck(lambda f, c: center_loss(f, labels, c), (features, centers))
    assert torch.autograd.gradcheck(lambda f, c: center_loss(f, labels, c, reduction="none"),
                                    (features, centers))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_computed_in_float32(dtype):
    features, labels, centers = make_batch(dtype=torch.float32)
    low = features.to(dtype).requires_grad_()
    loss = center_loss(low, labels, centers)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, dense_center_loss(low.detach().float(), labels, centers))
    loss.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    # a half-precision module (model.half()) keeps working; the update is done in float32
    module = CenterLoss(5, 7).to(dtype)
    module(low.detach(), labels)
    assert module.centers.dtype == dtype and torch.isfinite(module.centers.float()).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_labels_ignored_gives_zero_and_no_nan(reduction):
    features, _, centers = make_batch()
    features.requires_grad_()
    labels = torch.full((features.shape[0],), -1)
    loss = center_loss(features, labels, centers, reduction=reduction)
    assert loss.item() == 0
    loss.backward()
    assert features.grad.abs().max() == 0
    module = CenterLoss(5, 7)
    module.centers.normal_()
    before = module.centers.clone()
    assert module(features.detach(), labels).item() == 0
    torch.testing.assert_close(module.centers, before, rtol=0, atol=0)


def test_empty_batch():
    features = torch.zeros(0, 7, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    centers = torch.randn(5, 7)
    assert center_loss(features, labels, centers).item() == 0
    assert center_loss(features, labels, centers, reduction="none").shape == (0,)
    center_loss(features, labels, centers).backward()
    assert features.grad.shape == (0, 7)
    module = CenterLoss(5, 7)
    assert module(features, labels).item() == 0
    assert module.centers.abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_count_normalised_update_matches_loop(device):
    torch.manual_seed(0)
    module = CenterLoss(6, 4, alpha=0.5).to(device).double()
    module.centers.normal_()
    assert "centers" not in dict(module.named_parameters()) and "centers" in dict(module.named_buffers())
    for step in range(3):
        features, labels, _ = make_batch(n=10, k=5, d=4, seed=step, device=device)  # class 5 never appears
        before = module.centers.clone()
        features.requires_grad_()
        loss = module(features, labels)
        # the loss uses the centres *before* this step's update, and backward still works
        # after the in-place update (nothing in the graph saved the centres)
        reference_features = features.detach().clone().requires_grad_()
        reference = dense_center_loss(reference_features, labels, before)
        torch.testing.assert_close(loss, reference)
        loss.backward()
        reference.backward()
        torch.testing.assert_close(features.grad, reference_features.grad)
        features = features.detach()
        expected = loop_center_update(before.cpu(), features.cpu(), labels.cpu(), alpha=0.5)
        torch.testing.assert_close(module.centers.cpu(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.centers[5], before[5], rtol=0, atol=0)  # absent class unchanged


def test_update_statistics_are_per_class_sums_and_counts():
    features, labels, _ = make_batch(n=20, k=4, d=3)
    sums, counts = center_update_statistics(features, labels, num_classes=4)
    for j in range(4):
        members = labels == j
        assert counts[j].item() == members.sum().item()
        torch.testing.assert_close(sums[j], features[members].sum(dim=0))


def test_no_update_in_eval_mode_and_loss_keeps_its_gradient():
    features, labels, _ = make_batch(dtype=torch.float32)
    module = CenterLoss(5, 7).eval()
    module.centers.normal_()
    before = module.centers.clone()
    features.requires_grad_()
    module(features, labels).backward()
    torch.testing.assert_close(module.centers, before, rtol=0, atol=0)
    assert features.grad.abs().sum() > 0


def test_sgd_centres_are_a_parameter_learned_by_the_optimizer():
    features, labels, _ = make_batch(dtype=torch.float32)
    module = CenterLoss(5, 7, update="sgd")
    assert [name for name, _ in module.named_parameters()] == ["centers"]
    module.centers.data.normal_()
    before = module.centers.detach().clone()
    c_ref = before.clone().requires_grad_()
    loss = module(features, labels)
    torch.testing.assert_close(module.centers, before, rtol=0, atol=0)  # forward does not update
    loss.backward()
    dense_center_loss(features, labels, c_ref).backward()
    torch.testing.assert_close(module.centers.grad, c_ref.grad)
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    torch.testing.assert_close(module.centers, before - 0.1 * c_ref.grad)


def test_all_reduce_with_a_single_process_group_equals_local_update(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed not available or already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        features, labels, _ = make_batch(dtype=torch.float32)
        local, synced = CenterLoss(5, 7), CenterLoss(5, 7, all_reduce=True)
        local(features, labels)
        synced(features, labels)
        torch.testing.assert_close(synced.centers, local.centers)
    finally:
        dist.destroy_process_group()


def test_bad_inputs_name_the_argument():
    features, labels, centers = make_batch()
    with pytest.raises(ValueError, match=r"features must have shape \[N, D\], got \[12\]"):
        center_loss(features[:, 0], labels, centers)
    with pytest.raises(ValueError, match=r"labels must have shape \[12\]"):
        center_loss(features, labels[:5], centers)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        center_loss(features, labels.double(), centers)
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        center_loss(features.long(), labels, centers)
    with pytest.raises(ValueError, match=r"centers must have shape \[K, 7\]"):
        center_loss(features, labels, centers[:, :3])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\) or ignore_index=-1, got 5"):
        center_loss(features, torch.where(labels == 0, 5, labels), centers)
    with pytest.raises(ValueError, match="labels must be in .* got -3"):
        center_loss(features, torch.where(labels == 0, -3, labels), centers)
    with pytest.raises(ValueError, match="reduction must be one of"):
        center_loss(features, labels, centers, reduction="avg")
    with pytest.raises(ValueError, match="update must be one of"):
        CenterLoss(5, 7, update="momentum")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        CenterLoss(0, 7)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        CenterLoss(5, 7, alpha=-1)
