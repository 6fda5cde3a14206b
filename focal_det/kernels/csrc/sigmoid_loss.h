// Shared by focal_det._C's operators: the per-element math of the sigmoid loss family (FL, FL*)
// and its closed-form gradient (Appendix B), the input checks and the deterministic final sum.
// See sigmoid_loss_cpu.cpp for the conventions (shapes, the value's and the gradient's forms).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace focal_det_cpu {

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
// q^gamma for binary targets from -log q (softplus, already computed): one exp instead of
// pow's log and exp (the per-class kernel, whose gammas are arbitrary); exact cases as power.
template <typename T>
inline T power_from_log(T q, T gamma, T neg_log_q) {
  if (gamma == T(2)) return q * q;
  if (gamma == T(1)) return q;
  if (gamma == T(0)) return T(1);
  return std::exp(-gamma * neg_log_q);
}

// POW_FROM_LOG: the binary form's (1 - p_t)^gamma as exp(-gamma * softplus(x_t)) (see
// power_from_log); false: pow, as the FL operator has always computed it.
template <typename T, bool POW_FROM_LOG = false>
inline void focal(T x, T t, T gamma, T a, bool weighted, T& loss, T& grad) {
  const Logistic<T> s(x);
  if (t == T(1) || t == T(0)) {
    const bool pos = t == T(1);
    const T ce = pos ? s.sp_neg : s.ce_neg;   // -log p_t, rounded as torch's BCE (the value)
    const T ce_exact = pos ? s.sp_neg : s.sp_pos;  // -log p_t without cancellation (gradient)
    const T q = pos ? s.one_m_p : s.p;        // 1 - p_t
    const T p_t = pos ? s.p : s.one_m_p;
    const T mod = POW_FROM_LOG ? power_from_log(q, gamma, pos ? s.sp_pos : s.sp_neg)
                               : power(q, gamma);
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

// The compute type of x after checking the operator's common inputs (x (R, K) contiguous;
// exactly one of labels (R,) int64 and targets (R, K) in the compute type; class_alpha (K,)).
inline at::ScalarType check_inputs(const char* op, const at::Tensor& x,
                                   const c10::optional<at::Tensor>& labels,
                                   const c10::optional<at::Tensor>& targets,
                                   const c10::optional<at::Tensor>& class_alpha) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be (R, K) contiguous");
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
  return cdtype;
}

// The block sums added in order (deterministic), times scale, into the 0-dim loss. A sum beyond
// float's range is inf, as torch's own float sum is (a diverging run must reach Detectron2's
// NaN/inf check, not fail in the Scalar -> float conversion).
inline void fill_sum(at::Tensor& loss, const std::vector<double>& block_sums, double scale) {
  double total = 0.0;
  for (double s : block_sums) total += s;
  double value = total * scale;
  if (loss.scalar_type() == at::kFloat && std::isfinite(value) &&
      std::abs(value) > static_cast<double>(std::numeric_limits<float>::max())) {
    value = std::copysign(std::numeric_limits<double>::infinity(), value);
  }
  loss.fill_(value);
}

}  // namespace focal_det_cpu
