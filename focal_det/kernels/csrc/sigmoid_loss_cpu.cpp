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

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlockElements = 1 << 14;

struct Params {
  bool star;      // FL* instead of FL
  double gamma;   // focusing parameter (FL) or FL*'s gamma
  double alpha;   // weight of positives; < 0: no weighting
  double beta;    // FL* shift
  double scale;   // multiplies loss and gradient (1/numel for "mean")
};

template <typename T>
struct Logistic {  // every sigmoid/softplus of x from one exp and one log1p
  T sp_pos, sp_neg, p, one_m_p, ce_neg;  // softplus(x) = -log(1-p), softplus(-x) = -log p
  explicit Logistic(T x) {
    const T e = std::exp(-std::abs(x));
    const T l = std::log1p(e);
    const T inv = T(1) / (T(1) + e);
    p = x >= 0 ? inv : e * inv;
    one_m_p = x >= 0 ? e * inv : inv;
    sp_pos = std::max(x, T(0)) + l;
    sp_neg = std::max(-x, T(0)) + l;  // = -log_sigmoid(x), torch's CE of a positive
    ce_neg = x + sp_neg;  // x - log_sigmoid(x): torch's CE of a negative, rounded as torch does
  }
};

template <typename T>
inline T power(T q, T gamma) {
  if (gamma == T(2)) return q * q;
  if (gamma == T(1)) return q;
  if (gamma == T(0)) return T(1);
  return std::pow(q, gamma);
}

// FL for a target t in [0, 1]; exact binary form where t is 0 or 1. `a` is alpha (of this
// element's class), `weighted` false for no alpha weighting.
template <typename T>
inline void focal(T x, T t, const Params& P, T a, bool weighted, T& loss, T& grad) {
  const Logistic<T> s(x);
  const T gamma = static_cast<T>(P.gamma);
  if (t == T(1) || t == T(0)) {
    const bool pos = t == T(1);
    const T ce = pos ? s.sp_neg : s.ce_neg;   // -log p_t, rounded as torch's BCE (the value)
    const T ce_exact = pos ? s.sp_neg : s.sp_pos;  // -log p_t without cancellation (gradient)
    const T q = pos ? s.one_m_p : s.p;        // 1 - p_t
    const T p_t = pos ? s.p : s.one_m_p;
    const T mod = power(q, gamma);
    const T a_t = weighted ? (pos ? a : T(1) - a) : T(1);
    loss = a_t * ce * mod;
    // dFL/dx = -y alpha_t (1 - p_t)^gamma (gamma p_t (-log p_t) + (1 - p_t))
    const T m = gamma == T(0) ? q : q + gamma * p_t * ce_exact;
    grad = (pos ? -a_t : a_t) * m * mod;
    return;
  }
  const T one_m_t = T(1) - t;
  const T ce = one_m_t * x + s.sp_neg;  // (1 - t) x - log_sigmoid(x), as torch (the value)
  const T q = t * s.one_m_p + one_m_t * s.p;  // 1 - p_t without cancellation
  const T mod = power(q, gamma);
  const T a_t = weighted ? t * (T(2) * a - T(1)) + (T(1) - a) : T(1);
  loss = a_t * ce * mod;
  T g = one_m_t * s.p - t * s.one_m_p;  // p - t
  if (gamma != T(0)) {
    const T ratio = s.p * s.one_m_p / std::max(q, std::numeric_limits<T>::min());
    const T ce_exact = t * s.sp_neg + one_m_t * s.sp_pos;  // no cancellation (gradient)
    g = (g - gamma * ce_exact * (T(2) * t - T(1)) * ratio) * mod;
  }
  grad = a_t * g;
}

// FL* = -alpha_t log(sigmoid(gamma x_t + beta)) / gamma; dFL*/dx = -alpha_t y sigmoid(-z).
template <typename T>
inline void focal_star(T x, T t, const Params& P, T a, bool weighted, T& loss, T& grad) {
  const T gamma = static_cast<T>(P.gamma);
  const T y = T(2) * t - T(1);
  const T z = gamma * x * y + static_cast<T>(P.beta);
  const Logistic<T> s(z);
  const T a_t = weighted ? t * (T(2) * a - T(1)) + (T(1) - a) : T(1);
  loss = a_t * s.sp_neg / gamma;
  grad = -a_t * y * s.one_m_p;
}

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
          else focal(xi, t, P, a, weighted, loss, grad);
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
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "focal_det::sigmoid_loss: x must be (R, K) contiguous");
  TORCH_CHECK(labels.has_value() != targets.has_value(), "give exactly one of labels, targets");
  const auto cdtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t R = x.size(0), K = x.size(1);
  if (labels) {
    TORCH_CHECK(labels->scalar_type() == at::kLong && labels->is_contiguous() &&
                    labels->numel() == R, "labels must be (R,) contiguous int64");
  } else {
    TORCH_CHECK(targets->scalar_type() == cdtype && targets->is_contiguous() &&
                    targets->sizes() == x.sizes(), "targets must be contiguous, x's shape, compute dtype");
  }
  if (class_alpha) {
    TORCH_CHECK(class_alpha->scalar_type() == cdtype && class_alpha->is_contiguous() &&
                    class_alpha->numel() == K, "class_alpha must be (K,) contiguous, compute dtype");
  }
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
  if (!elementwise) {
    double total = 0.0;
    for (double s : block_sums) total += s;  // fixed order: deterministic
    double value = total * scale;
    // A sum beyond float's range is inf, as torch's own float sum is (a diverging run must reach
    // Detectron2's NaN/inf check, not fail in the Scalar -> float conversion).
    if (cdtype == at::kFloat && std::isfinite(value) &&
        std::abs(value) > static_cast<double>(std::numeric_limits<float>::max())) {
      value = std::copysign(std::numeric_limits<double>::infinity(), value);
    }
    loss.fill_(value);
  }
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
