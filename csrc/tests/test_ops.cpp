// A C++ (libtorch) user's view of the library: link retinaface_ops, call the
// ops through the dispatcher, no Python involved. Run by ctest in CI.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

int main() {
  // The last argument is the device to compute on (std::nullopt: the CPU).
  const auto prior_box = op<at::Tensor(int64_t, int64_t, at::IntArrayRef, at::IntArrayRef,
                                       at::IntArrayRef, bool, std::optional<at::Device>)>(
      "retinaface::prior_box");
  const auto priors = prior_box.call(640, 640, {16, 32, 64, 128, 256, 512}, {2, 2, 2}, {8, 16, 32},
                                     false, std::nullopt);
  expect(priors.size(0) == 16800 && priors.size(1) == 4, "prior_box(640, 640) has 16800 priors");
  // First prior: cell (0, 0) of the stride-8 level, min size 16.
  expect(torch::allclose(priors[0], torch::tensor({4.0f / 640, 4.0f / 640, 16.0f / 640, 16.0f / 640})),
         "prior_box first prior");

  const auto box_iou = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("retinaface::box_iou");
  const auto a = torch::tensor({{0.0f, 0.0f, 2.0f, 2.0f}});
  const auto b = torch::tensor({{1.0f, 0.0f, 3.0f, 2.0f}, {5.0f, 5.0f, 6.0f, 6.0f}});
  const auto iou = box_iou.call(a, b);
  expect(torch::allclose(iou, torch::tensor({{1.0f / 3.0f, 0.0f}})), "box_iou values");

  const auto match = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>(
      "retinaface::match");
  // One face exactly on the first prior's box: that prior is assigned to it.
  const auto gt = torch::tensor({{{-4.0f / 640, -4.0f / 640, 12.0f / 640, 12.0f / 640}}});
  const auto assigned = match.call(gt, torch::tensor({1L}), priors, 0.35, 0.2);
  expect(assigned.size(0) == 1 && assigned.size(1) == 16800, "match output shape");
  expect(assigned[0][0].item<int64_t>() == 0, "match assigns the face's own prior");
  expect(assigned.gt(-1).sum().item<int64_t>() >= 1, "match finds a positive");

  bool threw = false;
  try {
    box_iou.call(torch::zeros({3, 5}), b);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("boxes1 must have shape [N, 4]") != std::string::npos;
  }
  expect(threw, "bad shape raises a clear error");

  std::cout << (failures ? "FAILED" : "all passed") << "\n";
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
