// focal_det._C: the paper's sigmoid classification losses (FL, FL*, CE, balanced CE) as one
// fused CPU pass: every element's loss and closed-form gradient (Appendix B) are computed
// together, in one OpenMP region, with no temporaries. Registered as the torch operator
// focal_det::sigmoid_loss (one dispatched op per call).
//
// Shapes: x (R, K) contiguous; either labels (R,) int64 (K = background, -1 = ignored row) or
// targets (R, K) in the compute type (float for float/half/bfloat16 x, double for double x);
// optional class_alpha (K,) in the compute type: alpha per class (positives of class k weigh
// class_alpha[k], its negatives 1 - class_alpha[k]), instead of the scalar alpha.
//
// The loss value's cross-entropy term is computed as torch's binary_cross_entropy_with_logits
// computes it, (1 - t) x - log_sigmoid(x) with log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)),
// so FL is never above torch's BCE on the same input (the modulating factor is <= 1); the
// gradient uses the cancellation-free softplus form, so easy negatives keep exact gradients.
// Returns (loss, grad): loss is (R, K) in the compute type for reduction 0 ("none"), else a
// 0-dim tensor with the sum times `scale`; grad is (R, K) in x's dtype (times `scale`), or an
// empty tensor when need_grad is false.
//
// Determinism: rows are cut into fixed blocks (independent of the thread count); each block
// sums in double, and the block sums are added in order. Same inputs, same bits.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <omp.h>
#include <torch/library.h>

#include "sigmoid_loss.h"

namespace {

using namespace focal_det_cpu;

template <typename scalar_t, typename T>
void run(const at::Tensor& x, const int64_t* labels, const T* targets, const T* class_alpha,
         const Params& P, bool elementwise, bool need_grad, T* loss_out, scalar_t* grad_out,
         double* block_sums, int64_t rows_per_block) {
  const int64_t R = x.size(0), K = x.size(1);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const int64_t n_blocks = (R + rows_per_block - 1) / rows_per_block;
  const T scale = static_cast<T>(P.scale);
  const bool weighted = class_alpha != nullptr || P.alpha >= 0;
  const T alpha = static_cast<T>(P.alpha);
  // Dynamic scheduling: when another process holds a core (a DataLoader worker), the thread
  // that shares it takes fewer blocks instead of making the others wait at the barrier.
  // OpenMP's thread count is torch's (torch.set_num_threads sets it).
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t r0 = b * rows_per_block, r1 = std::min(R, r0 + rows_per_block);
    double acc = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t label = labels ? labels[r] : 0;
      const bool ignored = labels && label < 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = r * K + k;
        T loss = T(0), grad = T(0);
        if (!ignored) {
          const T xi = static_cast<T>(xp[i]);
          const T t = labels ? (label == k ? T(1) : T(0)) : targets[i];
          const T a = class_alpha ? class_alpha[k] : alpha;
          if (P.star) focal_star(xi, t, P, a, weighted, loss, grad);
          else focal(xi, t, static_cast<T>(P.gamma), a, weighted, loss, grad);
        }
        if (elementwise) loss_out[i] = loss * scale;
        else acc += static_cast<double>(loss);
        if (need_grad) grad_out[i] = static_cast<scalar_t>(grad * scale);
      }
    }
    if (!elementwise) block_sums[b] = acc;
  }
}

std::tuple<at::Tensor, at::Tensor> sigmoid_loss(
    const at::Tensor& x, const c10::optional<at::Tensor>& labels,
    const c10::optional<at::Tensor>& targets, bool star, double gamma, double alpha, double beta,
    int64_t reduction, double scale, bool need_grad,
    const c10::optional<at::Tensor>& class_alpha) {
  const auto cdtype = check_inputs("focal_det::sigmoid_loss", x, labels, targets, class_alpha);
  const int64_t R = x.size(0), K = x.size(1);
  const bool elementwise = reduction == 0;
  const Params P{star, gamma, alpha, beta, scale};
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(K, 1));
  const int64_t n_blocks = (R + rows_per_block - 1) / rows_per_block;
  at::Tensor loss = elementwise ? at::empty({R, K}, x.options().dtype(cdtype))
                                : at::empty({}, x.options().dtype(cdtype));
  at::Tensor grad = need_grad ? at::empty_like(x) : at::empty({0}, x.options());
  std::vector<double> block_sums(elementwise ? 0 : n_blocks, 0.0);
  const int64_t* lp = labels ? labels->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "focal_det_sigmoid_loss", [&] {
    if (cdtype == at::kDouble) {
      run<scalar_t, double>(x, lp, targets ? targets->data_ptr<double>() : nullptr,
                            class_alpha ? class_alpha->data_ptr<double>() : nullptr, P,
                            elementwise, need_grad,
                            elementwise ? loss.data_ptr<double>() : nullptr,
                            need_grad ? grad.data_ptr<scalar_t>() : nullptr, block_sums.data(),
                            rows_per_block);
    } else {
      run<scalar_t, float>(x, lp, targets ? targets->data_ptr<float>() : nullptr,
                           class_alpha ? class_alpha->data_ptr<float>() : nullptr, P, elementwise,
                           need_grad, elementwise ? loss.data_ptr<float>() : nullptr,
                           need_grad ? grad.data_ptr<scalar_t>() : nullptr, block_sums.data(),
                           rows_per_block);
    }
  });
  if (!elementwise) fill_sum(loss, block_sums, scale);
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY(focal_det, m) {
  m.def(
      "sigmoid_loss(Tensor x, Tensor? labels, Tensor? targets, bool star, float gamma, "
      "float alpha, float beta, int reduction, float scale, bool need_grad, "
      "Tensor? class_alpha=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(focal_det, CPU, m) {
  m.impl("sigmoid_loss", &sigmoid_loss);
}

// A plain extension module: importing focal_det._C runs the registrations above.
static PyModuleDef focal_det_module = {PyModuleDef_HEAD_INIT, "focal_det._C",
                                       "focal_det's fused CPU loss (torch.ops.focal_det)", -1,
                                       nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&focal_det_module); }
