import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from utils import DEVICES, requires_extension

from retinaface_ext import ops, reference

pytestmark = requires_extension

NAN, INF = float("nan"), float("inf")


def expected_count(positive, ratio):
    """k = min(ratio * num_pos, P - 1) per image, never negative."""
    num_pos = positive.sum(dim=1)
    return torch.clamp(ratio * num_pos, max=max(positive.shape[1] - 1, 0))


def random_problem(batch, num_priors, seed, pos_fraction=0.02, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    loss = torch.rand(batch, num_priors, generator=g) * 5
    positive = torch.rand(batch, num_priors, generator=g) < pos_fraction
    return loss.to(device), positive.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,num_priors", [(1, 1), (2, 2), (3, 100), (4, 16800)])
@pytest.mark.parametrize("ratio", [0, 1, 7])
def test_matches_reference(device, batch, num_priors, ratio):
    loss, positive = random_problem(batch, num_priors, seed=num_priors + ratio, device=device)
    positive[:, 0] = True  # at least one positive per image
    mask = ops.hard_negative_mask(loss, positive, ratio)
    assert mask.dtype == torch.bool and mask.shape == loss.shape
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, ratio))
    assert torch.equal(mask.sum(dim=1), expected_count(positive, ratio))


def test_selects_largest_losses_and_ignores_positives():
    loss = torch.tensor([[0.5, 9.0, 0.1, 3.0, 2.0, 0.0, 1.0, 8.0]])
    positive = torch.tensor([[False, True, False, False, False, False, False, True]])
    # Two positives, ratio 2 -> 4 negatives; the positives' 9.0 and 8.0 are zeroed.
    mask = ops.hard_negative_mask(loss, positive, 2)
    assert mask[0].nonzero().flatten().tolist() == [0, 3, 4, 6]


def test_ties_take_the_lower_index():
    loss = torch.tensor([[1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 0.0, 1.0]])
    positive = torch.zeros_like(loss, dtype=torch.bool)
    positive[0, 6] = True
    # One positive, ratio 4: both 2.0s, then the first two 1.0s.
    mask = ops.hard_negative_mask(loss, positive, 4)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2, 4]
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, 4))


def test_nan_is_the_largest_and_signed_zeros_tie():
    loss = torch.tensor([[0.0, -0.0, NAN, INF, -1.0, 0.0, NAN, -0.0, -INF, 5.0]])
    positive = torch.zeros_like(loss, dtype=torch.bool)
    positive[0, 9] = True  # its 5.0 becomes 0
    for k in range(1, 10):
        mask = ops.hard_negative_mask(loss, positive, k)
        assert torch.equal(mask, reference.hard_negative_mask(loss, positive, k)), k
    # NaNs (index order), inf, then the zeros (-0.0 == 0.0) in index order.
    mask = ops.hard_negative_mask(loss, positive, 5)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 6]


def test_no_positives_selects_nothing():
    loss, positive = random_problem(3, 50, seed=1)
    positive[1] = False
    mask = ops.hard_negative_mask(loss, positive, 7)
    assert not mask[1].any()
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, 7))


def test_k_capped_at_p_minus_one_may_include_positives():
    loss, positive = random_problem(2, 40, seed=2, pos_fraction=0.5)
    for ratio in (7, 2**40):  # the second would overflow ratio * num_pos if multiplied first
        mask = ops.hard_negative_mask(loss, positive, ratio)
        assert torch.equal(mask.sum(dim=1), torch.full((2,), 39))
        assert torch.equal(mask, reference.hard_negative_mask(loss, positive, min(ratio, 10**6)))
        # The prior left out is a positive, the lowest-ranked of the zeroed losses.
        assert positive[~mask].all()


@pytest.mark.parametrize("shape", [(0, 0), (0, 10), (3, 0), (2, 1)])
def test_empty_and_tiny(shape):
    loss = torch.rand(shape)
    positive = torch.ones(shape, dtype=torch.bool)
    mask = ops.hard_negative_mask(loss, positive, 7)
    assert mask.shape == shape and mask.dtype == torch.bool
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, 7))
    assert not mask.any()  # P <= 1 leaves room for no negative


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    # Quantised losses have many exact ties: the order must still be exact.
    loss, positive = random_problem(3, 2000, seed=3)
    loss = loss.to(dtype)
    mask = ops.hard_negative_mask(loss, positive, 7)
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, 7))


def test_float64_keeps_its_precision():
    # 1 + 1e-12 and 1 are equal in float32 but not in float64.
    loss = torch.tensor([[1.0, 1.0 + 1e-12, 0.5, 0.0]], dtype=torch.float64)
    positive = torch.tensor([[False, False, False, True]])
    mask = ops.hard_negative_mask(loss, positive, 1)
    assert mask[0].tolist() == [False, True, False, False]


def test_non_contiguous():
    loss, positive = random_problem(6, 300, seed=4)
    loss_t = loss.t().contiguous().t()[::2]
    positive_t = positive.t().contiguous().t()[::2]
    assert not loss_t.is_contiguous() and not positive_t.is_contiguous()
    assert torch.equal(ops.hard_negative_mask(loss_t, positive_t, 3),
                       reference.hard_negative_mask(loss[::2], positive[::2], 3))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.tuples(st.sampled_from([0.0, -0.0, 0.25, 1.0, 1.0, 3.5, -2.0, NAN, INF, -INF]),
                      st.booleans()),
            min_size=1, max_size=40),
        min_size=1, max_size=4),
    ratio=st.integers(0, 12),
)
def test_property_matches_stable_double_sort(rows, ratio):
    width = min(len(r) for r in rows)
    loss = torch.tensor([[v for v, _ in r[:width]] for r in rows])
    positive = torch.tensor([[p for _, p in r[:width]] for r in rows])
    mask = ops.hard_negative_mask(loss, positive, ratio)
    assert torch.equal(mask, reference.hard_negative_mask(loss, positive, ratio))
    assert torch.equal(mask.sum(dim=1), expected_count(positive, ratio))



# Values chosen to stress the radix select: many share the top 11 key bits and
# differ only in the last mantissa bits (so the refinement passes decide), with
# exact ties, NaN (every payload and sign ties, and is the largest), signed
# zeros (tie), infinities and negatives. Converting to float16/bfloat16 merges
# some of them into further ties.
_CLOSE_VALUES = (
    [1.0 + i * 2.0**-52 for i in range(4)]      # float64: last-bit differences
    + [1.0 + i * 2.0**-23 for i in range(4)]    # float32: last-bit differences
    + [1.0 + 2.0**-12, 1.0 + 2.0**-11, 1.5, 0.75, 2.0**-140, 2.0**-1070]
    + [0.0, -0.0, NAN, -NAN, INF, -INF, -1.0, -(1.0 + 2.0**-23), 3.0e38, 1e300]
)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(1, 3),
    num_priors=st.integers(1, 600),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    pos_fraction=st.sampled_from([0.0, 0.01, 0.2, 0.9, 1.0]),
    k_from_end=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_property_close_keys_and_k_near_p(data, batch, num_priors, dtype, pos_fraction,
                                          k_from_end, seed):
    """Many near-equal keys, ties, NaNs and zeros; k from 0 up to P - 1."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(data.draw(
        st.lists(st.sampled_from(_CLOSE_VALUES), min_size=1, max_size=8)), dtype=torch.float64)
    loss = pool[torch.randint(0, len(pool), (batch, num_priors), generator=g)].to(dtype)
    positive = torch.rand(batch, num_priors, generator=g) < pos_fraction
    positive[0, 0] = True
    # A ratio that makes k = P - 1 - k_from_end for the first image (or caps at P - 1).
    num_pos = int(positive[0].sum())
    ratio = max(num_priors - 1 - k_from_end, 0) // num_pos
    for r in (ratio, ratio + 1, 2**40):
        mask = ops.hard_negative_mask(loss, positive, r)
        assert torch.equal(mask, reference.hard_negative_mask(loss, positive, min(r, 10**7)))
        assert torch.equal(mask.sum(dim=1), expected_count(positive, min(r, 10**7)))


def test_all_equal_keys_take_the_lowest_indices():
    for value in (0.0, 1.0, NAN, INF, -INF):
        loss = torch.full((2, 5000), value)
        positive = torch.zeros(2, 5000, dtype=torch.bool)
        positive[:, -3:] = True  # zeroed, so below the rest unless value <= 0
        mask = ops.hard_negative_mask(loss, positive, 7)
        assert torch.equal(mask, reference.hard_negative_mask(loss, positive, 7)), value
        if value > 0 or value != value:
            assert mask[:, :21].all() and not mask[:, 21:].any(), value


def test_same_mask_for_any_thread_count():
    # 24 images of 3000 priors: several images per task, several tasks.
    loss, positive = random_problem(24, 3000, seed=9, pos_fraction=0.01)
    loss = loss.to(torch.bfloat16).float()  # many ties
    loss[::5, ::7] = NAN
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            masks.append(ops.hard_negative_mask(loss, positive, 7))
    finally:
        torch.set_num_threads(threads)
    expected = reference.hard_negative_mask(loss, positive, 7)
    for mask in masks:
        assert torch.equal(mask, expected)

@pytest.mark.parametrize(
    "loss,positive,ratio,message",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.bool), 7,
         r"conf_loss must have shape \[B, P\], got \[3\]"),
        (torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool), 7,
         r"positive must have the shape of conf_loss \(\[2, 3\]\), got \[2, 4\]"),
        (torch.zeros(2, 3), torch.zeros(2, 3), 7, r"positive must be Bool, got Float"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool), 7,
         r"conf_loss must be a floating tensor"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), -1,
         r"neg_pos_ratio must be >= 0, got -1"),
    ],
)
def test_bad_input(loss, positive, ratio, message):
    with pytest.raises(RuntimeError, match=message):
        ops.hard_negative_mask(loss, positive, ratio)


def test_opcheck():
    loss, positive = random_problem(3, 64, seed=5, pos_fraction=0.1)
    torch.library.opcheck(torch.ops.retinaface.hard_negative_mask.default, (loss, positive, 7))
    torch.library.opcheck(torch.ops.retinaface.hard_negative_mask.default,
                          (loss[:0], positive[:0], 7))


# ------------------------------------------------------------------- CUDA
# The CUDA kernel must select exactly the CPU's set: compare the two on the
# same inputs (the CPU result is itself checked against the reference above).

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def assert_cuda_matches_cpu(loss, positive, ratio):
    expected = ops.hard_negative_mask(loss.cpu(), positive.cpu(), ratio)
    mask = ops.hard_negative_mask(loss.cuda(), positive.cuda(), ratio)
    assert mask.device.type == "cuda" and mask.dtype == torch.bool and mask.shape == loss.shape
    assert torch.equal(mask.cpu(), expected)
    return mask


@requires_cuda
@pytest.mark.parametrize("batch", [8, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_realistic(batch, dtype):
    # 640x640 priors, ~1% positives: k = 7 * num_pos lands in the middle of
    # the loss distribution; half/bf16 quantisation gives many exact ties.
    loss, positive = random_problem(batch, 16800, seed=100 + batch, pos_fraction=0.01)
    positive[1] = False  # an image without positives selects nothing
    mask = assert_cuda_matches_cpu(loss.to(dtype), positive, 7)
    assert not mask[1].any()


@requires_cuda
@pytest.mark.parametrize("num_priors", [5, 1023, 1024, 1025, 4097, 16800])
def test_cuda_ties_across_chunks(num_priors):
    # Few distinct values: the k-th largest key has many equal keys spread
    # over several 1024-prior chunks, so the index-order ranking of equal
    # keys (the block prefix sum) decides; NaN and signed zeros included.
    g = torch.Generator().manual_seed(num_priors)
    values = torch.tensor([NAN, INF, 3.0, 1.0, 0.0, -0.0, -1.0, -INF])
    loss = values[torch.randint(0, len(values), (4, num_priors), generator=g)]
    positive = torch.rand(4, num_priors, generator=g) < 0.05
    positive[:, 0] = True
    for ratio in (1, 3, 7, 50):
        assert_cuda_matches_cpu(loss, positive, ratio)


@requires_cuda
def test_cuda_all_equal_and_all_nan():
    for value in (0.0, NAN, 2.0):
        loss = torch.full((3, 3000), value)
        positive = torch.zeros(3, 3000, dtype=torch.bool)
        positive[:, ::97] = True
        mask = assert_cuda_matches_cpu(loss, positive, 2)
        # All keys tie (the zeroed positives too, for 0.0): the lowest indices win.
        assert torch.equal(mask.sum(1).cpu(), expected_count(positive, 2))


@requires_cuda
def test_cuda_small_cases():
    cases = [
        ([[0.5, 9.0, 0.1, 3.0, 2.0, 0.0, 1.0, 8.0]],
         [[False, True, False, False, False, False, False, True]], 2),
        ([[1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 0.0, 1.0]],
         [[False, False, False, False, False, False, True, False]], 4),
        ([[0.0, -0.0, NAN, INF, -1.0, 0.0, NAN, -0.0, -INF, 5.0]],
         [[False] * 9 + [True]], 5),
    ]
    for loss, positive, ratio in cases:
        assert_cuda_matches_cpu(torch.tensor(loss), torch.tensor(positive), ratio)
    loss = torch.tensor([[1.0, 1.0 + 1e-12, 0.5, 0.0]], dtype=torch.float64)
    positive = torch.tensor([[False, False, False, True]])
    assert assert_cuda_matches_cpu(loss, positive, 1)[0].tolist() == [False, True, False, False]


@requires_cuda
def test_cuda_k_capped_and_huge_ratio():
    loss, positive = random_problem(2, 3000, seed=2, pos_fraction=0.5)
    for ratio in (7, 2**40):
        mask = assert_cuda_matches_cpu(loss, positive, ratio)
        assert torch.equal(mask.sum(dim=1).cpu(), torch.full((2,), 2999))


@requires_cuda
@pytest.mark.parametrize("shape", [(0, 0), (0, 10), (3, 0), (2, 1)])
def test_cuda_empty_and_tiny(shape):
    loss = torch.rand(shape)
    positive = torch.ones(shape, dtype=torch.bool)
    mask = assert_cuda_matches_cpu(loss, positive, 7)
    assert not mask.any()


@requires_cuda
def test_cuda_non_contiguous():
    loss, positive = random_problem(6, 3000, seed=4)
    loss, positive = loss.cuda(), positive.cuda()
    loss_t = loss.t().contiguous().t()[::2]
    positive_t = positive.t().contiguous().t()[::2]
    assert not loss_t.is_contiguous() and not positive_t.is_contiguous()
    assert torch.equal(ops.hard_negative_mask(loss_t, positive_t, 3),
                       ops.hard_negative_mask(loss[::2], positive[::2], 3))
    assert_cuda_matches_cpu(loss_t, positive_t, 3)


@requires_cuda
@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.tuples(st.sampled_from([0.0, -0.0, 0.25, 1.0, 1.0, 3.5, -2.0, NAN, INF, -INF]),
                      st.booleans()),
            min_size=1, max_size=40),
        min_size=1, max_size=4),
    ratio=st.integers(0, 12),
    repeat=st.integers(1, 80),
)
def test_cuda_property_matches_cpu(rows, ratio, repeat):
    # repeat tiles the rows so that some problems span several chunks.
    width = min(len(r) for r in rows)
    loss = torch.tensor([[v for v, _ in r[:width]] for r in rows]).repeat(1, repeat)
    positive = torch.tensor([[p for _, p in r[:width]] for r in rows]).repeat(1, repeat)
    assert_cuda_matches_cpu(loss, positive, ratio)


@requires_cuda
def test_cuda_no_host_sync_and_graph_capture():
    loss, positive = random_problem(4, 16800, seed=6)
    loss, positive = loss.cuda(), positive.cuda()
    expected = ops.hard_negative_mask(loss, positive, 7)
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.hard_negative_mask(loss, positive, 7)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.hard_negative_mask(loss, positive, 7)  # warm-up
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_mask = ops.hard_negative_mask(loss, positive, 7)
    new_loss, new_positive = random_problem(4, 16800, seed=7)
    loss.copy_(new_loss)
    positive.copy_(new_positive)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_mask.cpu(), ops.hard_negative_mask(new_loss, new_positive, 7))
    assert not torch.equal(static_mask, expected)


@requires_cuda
def test_cuda_opcheck_and_errors():
    loss, positive = random_problem(3, 64, seed=5, pos_fraction=0.1)
    loss, positive = loss.cuda(), positive.cuda()
    torch.library.opcheck(torch.ops.retinaface.hard_negative_mask.default, (loss, positive, 7))
    torch.library.opcheck(torch.ops.retinaface.hard_negative_mask.default,
                          (loss[:0], positive[:0], 7))
    with pytest.raises(RuntimeError, match=r"positive must be on the same device as conf_loss"):
        ops.hard_negative_mask(loss, positive.cpu(), 7)
    with pytest.raises(RuntimeError, match=r"positive must be Bool, got Float"):
        ops.hard_negative_mask(loss, positive.float(), 7)
