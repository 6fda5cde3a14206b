// focal_det::sigmoid_loss_per_class: FL with a focusing parameter and a weight per class, and the
// per-class sums of its gradient's magnitude, in the same fused pass (one OpenMP region). It is
// what Equalized Focal Loss (focal_det.losses.efl) computes:
//
//   loss[r, k] = class_weight[k] * alpha_t * (1 - p_t)^class_gamma[k] * (-log p_t)
//
// Shapes and conventions as focal_det::sigmoid_loss (sigmoid_loss_cpu.cpp): x (R, K); labels (R,)
// (K = background, -1 = ignored row) or targets (R, K); class_alpha (K,) or the scalar alpha
// (< 0: no alpha weighting); class_gamma (K,) and class_weight (K,) in the compute type.
// Returns (loss, grad, stats): loss and grad as sigmoid_loss (times `scale`); with need_stats
// (labels only), stats (2, K) in the compute type: row 0 the sum over rows labelled k of
// |grad[r, k]|, row 1 the sum over the other non-ignored rows, each |grad| the value before its
// rounding to x's dtype (so the sums of half-precision logits are not those of rounded values);
// else an empty tensor. With need_stats the gradient is computed even when need_grad is false.
//
// Determinism: with need_stats the rows are cut into at most kStatBlocks blocks (fixed by R and
// K, never by the thread count), each with its own double accumulators for the loss and the
// 2K sums; the blocks are added in order. Same inputs, same bits, on any number of threads.
#include <ATen/Dispatch.h>
#include <omp.h>
#include <torch/library.h>

#include "sigmoid_loss.h"

namespace {

using namespace focal_det_cpu;

// Bounds the per-block accumulators: kStatBlocks * 2K doubles (1.2 MB at K = 1203).
constexpr int64_t kStatBlocks = 64;

template <typename T>
struct PerClass {
  const T* alpha;   // (K,) or nullptr: the scalar alpha
  const T* gamma;   // (K,)
  const T* weight;  // (K,) or nullptr: 1
};

template <typename scalar_t, typename T>
void run_per_class(const at::Tensor& x, const int64_t* labels, const T* targets,
                   const PerClass<T>& C, double alpha_d, double scale_d, bool elementwise,
                   bool need_grad, T* loss_out, scalar_t* grad_out, double* block_sums,
                   double* block_stats, int64_t rows_per_block) {
  const int64_t R = x.size(0), K = x.size(1);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const int64_t n_blocks = (R + rows_per_block - 1) / rows_per_block;
  const T scale = static_cast<T>(scale_d);
  const bool weighted = C.alpha != nullptr || alpha_d >= 0;
  const T alpha = static_cast<T>(alpha_d);
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t r0 = b * rows_per_block, r1 = std::min(R, r0 + rows_per_block);
    double* pos = block_stats ? block_stats + b * 2 * K : nullptr;  // this block's sums
    double* neg = pos ? pos + K : nullptr;
    double acc = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t label = labels ? labels[r] : 0;
      const bool ignored = labels && label < 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = r * K + k;
        T loss = T(0), grad = T(0);
        if (!ignored) {
          const T t = labels ? (label == k ? T(1) : T(0)) : targets[i];
          focal<T, true>(static_cast<T>(xp[i]), t, C.gamma[k], C.alpha ? C.alpha[k] : alpha,
                         weighted, loss, grad);
          if (C.weight) {
            loss *= C.weight[k];
            grad *= C.weight[k];
          }
        }
        const T g = grad * scale;
        if (elementwise) loss_out[i] = loss * scale;
        else acc += static_cast<double>(loss);
        if (need_grad) grad_out[i] = static_cast<scalar_t>(g);
        if (pos && !ignored) (k == label ? pos : neg)[k] += std::abs(static_cast<double>(g));
      }
    }
    if (!elementwise) block_sums[b] = acc;
  }
}

template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_loss_per_class(
    const at::Tensor& x, const c10::optional<at::Tensor>& labels,
    const c10::optional<at::Tensor>& targets, double alpha, int64_t reduction, double scale,
    bool need_grad, const c10::optional<at::Tensor>& class_alpha, const at::Tensor& class_gamma,
    const c10::optional<at::Tensor>& class_weight, bool need_stats) {
  const auto cdtype =
      check_inputs("focal_det::sigmoid_loss_per_class", x, labels, targets, class_alpha);
  const int64_t R = x.size(0), K = x.size(1);
  TORCH_CHECK(class_gamma.scalar_type() == cdtype && class_gamma.is_contiguous() &&
                  class_gamma.numel() == K, "class_gamma must be (K,) contiguous, compute dtype");
  if (class_weight) {
    TORCH_CHECK(class_weight->scalar_type() == cdtype && class_weight->is_contiguous() &&
                    class_weight->numel() == K, "class_weight must be (K,) contiguous, compute dtype");
  }
  TORCH_CHECK(!need_stats || labels, "need_stats needs labels (positives are the labelled class)");
  const bool elementwise = reduction == 0;
  int64_t rows_per_block = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(K, 1));
  if (need_stats) rows_per_block = std::max(rows_per_block, (R + kStatBlocks - 1) / kStatBlocks);
  const int64_t n_blocks = (R + rows_per_block - 1) / rows_per_block;
  at::Tensor loss = elementwise ? at::empty({R, K}, x.options().dtype(cdtype))
                                : at::empty({}, x.options().dtype(cdtype));
  at::Tensor grad = need_grad ? at::empty_like(x) : at::empty({0}, x.options());
  std::vector<double> block_sums(elementwise ? 0 : n_blocks, 0.0);
  std::vector<double> block_stats(need_stats ? n_blocks * 2 * K : 0, 0.0);
  const int64_t* lp = labels ? labels->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "focal_det_sigmoid_loss_per_class", [&] {
    auto launch = [&](auto zero) {
      using T = decltype(zero);
      const PerClass<T> C{optional_ptr<T>(class_alpha), class_gamma.data_ptr<T>(),
                          optional_ptr<T>(class_weight)};
      run_per_class<scalar_t, T>(x, lp, optional_ptr<T>(targets), C, alpha, scale, elementwise,
                                 need_grad, elementwise ? loss.data_ptr<T>() : nullptr,
                                 need_grad ? grad.data_ptr<scalar_t>() : nullptr,
                                 block_sums.data(), need_stats ? block_stats.data() : nullptr,
                                 rows_per_block);
    };
    if (cdtype == at::kDouble) launch(double(0));
    else launch(float(0));
  });
  if (!elementwise) fill_sum(loss, block_sums, scale);
  at::Tensor stats = at::empty({need_stats ? 2 : 0, K}, x.options().dtype(at::kDouble));
  if (need_stats) {
    double* out = stats.data_ptr<double>();
    std::fill(out, out + 2 * K, 0.0);
    for (int64_t b = 0; b < n_blocks; ++b) {  // fixed order: deterministic
      const double* s = block_stats.data() + b * 2 * K;
      for (int64_t j = 0; j < 2 * K; ++j) out[j] += s[j];
    }
  }
  return {loss, grad, stats.to(cdtype)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(focal_det, m) {
  m.def(
      "sigmoid_loss_per_class(Tensor x, Tensor? labels, Tensor? targets, float alpha, "
      "int reduction, float scale, bool need_grad, Tensor? class_alpha, Tensor class_gamma, "
      "Tensor? class_weight, bool need_stats) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(focal_det, CPU, m) {
  m.impl("sigmoid_loss_per_class", &sigmoid_loss_per_class);
}
