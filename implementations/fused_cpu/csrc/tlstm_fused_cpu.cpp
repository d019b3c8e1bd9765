// Fused tLSTM on the CPU: the whole T+L-1-step recurrence, forward and backward, in one operator.
//
// Equations and step numbers (1)-(9): implementations/tlstm_naive.py. Shape letters: B batch,
// T sequence length, R input size, M channels, P tensor size, K kernel size, d_up = K / 2,
// L depth, S = T + L - 1 steps, G = 4M + K (memory-cell convolution on) or 4M.
//
// Per step: ONE matrix product for the cross-layer convolution (3), [B*P, K*M] x [K*M, G], through
// ATen so MKL / oneDNN do the arithmetic, then ONE parallel loop over the B*P (sample, location)
// rows doing (4)-(9). The left operand of the product is an im2col buffer X[s] of shape
// [B, P, K, M]: row (b, p), tap k holds Hcat[b, p + 1 - d_up + k] (zero outside 0..P). The
// pointwise loop writes each new hidden row straight into the K slots of X[s+1] that read it, so
// there is no separate im2col pass, and X over all steps is exactly what the weight gradient needs:
// dW = X^T dA, one large product after the backward loop.
//
// Saved for backward: X [S, B, P, K, M] and the pre-activations A [S, B*P, G] in the matmul dtype,
// the cells C [S+1, B, P, M] in the accumulation dtype (float for bfloat16). The pointwise
// values are recomputed from A in the backward loop, which costs less than storing them.

// Per-operator ATen headers and TORCH_LIBRARY registration instead of <torch/extension.h>: the
// whole of libtorch and pybind11 would triple the build time for nothing this file uses.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// Force inlining of the activation helpers: a call inside a channel loop stops it vectorizing.
#define TLSTM_INLINE inline __attribute__((always_inline))

namespace {

constexpr double kCnEps = 1e-5;  // channel normalization epsilon, as in tlstm_naive.CN_EPS

// ---- activations --------------------------------------------------------------------------------
// float: exp(x) = 2^n exp(r) with |r| <= ln2/2 and a degree-7 Taylor polynomial (truncation error
// below 1e-8, under float rounding). Branch-free so that the channel loops calling it vectorize;
// libm's expf does not. double keeps the C library for the 1e-10 checks and gradcheck.
TLSTM_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n a normal float
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f;       // ln 2, high part (exact in float)
  r = r - n * 1.42860682030941723212e-6f;     // ln 2, low part
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return poly * scale;
}

template <typename T>
struct Act;

template <>
struct Act<float> {
  static TLSTM_INLINE float exp(float x) { return exp_approx(x); }
  static TLSTM_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
  static TLSTM_INLINE float tanh(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }
};

template <>
struct Act<double> {
  static TLSTM_INLINE double exp(double x) { return std::exp(x); }
  static TLSTM_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static TLSTM_INLINE double tanh(double x) { return std::tanh(x); }
};

// ---- sizes --------------------------------------------------------------------------------------
struct Dims {
  int64_t B, T, R, M, P, K, G, S, L, d_up;
  bool mem_conv, cn;

  // Location whose previous cell tap k of location p reads in (6): replicate padding.
  int64_t cell_source(int64_t p, int64_t k) const { return std::min(std::max(p - d_up + k, int64_t(0)), P - 1); }
  // Rows to hand one parallel task: enough channels per task that a fork pays for itself.
  int64_t grain() const { return std::max<int64_t>(1, 4096 / M); }
};

// Below this many FLOPs per step's convolution product, the operator runs on one thread: splitting
// a product of a few microseconds between threads costs more in fork/join (and much more when the
// cores are shared with other work) than it saves.
constexpr double kParallelStepFlops = 4e6;

// Runs the enclosed code on one thread (products and loops alike) when a step is too small to
// split, restoring PyTorch's thread count after.
class SmallStepThreadGuard {
 public:
  explicit SmallStepThreadGuard(const struct Dims& d);
  ~SmallStepThreadGuard() {
    if (previous_ > 0) at::set_num_threads(previous_);
  }
  SmallStepThreadGuard(const SmallStepThreadGuard&) = delete;
  SmallStepThreadGuard& operator=(const SmallStepThreadGuard&) = delete;

 private:
  int previous_ = 0;
};

Dims make_dims(const at::Tensor& x, const at::Tensor& weight_h, int64_t tensor_size, bool mem_conv, bool cn) {
  Dims d{};
  d.B = x.size(0);
  d.T = x.size(1);
  d.R = x.size(2);
  d.K = weight_h.size(0);
  d.M = weight_h.size(1);
  d.G = weight_h.size(2);
  d.P = tensor_size;
  d.d_up = d.K / 2;
  d.L = (d.P + d.d_up - 1) / d.d_up;
  d.S = d.T + d.L - 1;
  d.mem_conv = mem_conv;
  d.cn = cn;
  return d;
}

SmallStepThreadGuard::SmallStepThreadGuard(const Dims& d) {
  const double step_flops = 2.0 * double(d.B * d.P) * double(d.K * d.M) * double(d.G);
  if (step_flops < kParallelStepFlops && at::get_num_threads() > 1) {
    previous_ = at::get_num_threads();
    at::set_num_threads(1);
  }
}

// Channel-normalization parameters, in the accumulation dtype.
template <typename acc_t>
struct CnParams {
  const acc_t* a_weight = nullptr;  // [4M]
  const acc_t* a_bias = nullptr;    // [4M]
  const acc_t* c_weight = nullptr;  // [M]
  const acc_t* c_bias = nullptr;    // [M]
};

// Everything steps (4)-(8) compute for one (b, p) row; the backward recomputes it from A.
template <typename acc_t>
struct RowState {
  std::vector<acc_t> buf;
  acc_t *pre, *gate, *norm_a, *q, *c_conv, *c_new, *norm_c, *tanh_c, *h;
  acc_t rstd_a = 0, rstd_c = 0;

  explicit RowState(const Dims& d) : buf(static_cast<size_t>(d.G + 4 * d.M + 4 * d.M + d.K + 5 * d.M + 8)) {
    acc_t* ptr = buf.data();
    pre = ptr;     ptr += d.G;      // [G] pre-activations, gates after CN
    gate = ptr;    ptr += 4 * d.M;  // [4M] g, i, f, o after tanh / sigmoid
    norm_a = ptr;  ptr += 4 * d.M;  // [4M] normalized gate pre-activations (CN)
    q = ptr;       ptr += d.K;      // [K] memory kernel
    c_conv = ptr;  ptr += d.M;      // [M] (6)
    c_new = ptr;   ptr += d.M;      // [M] (7)
    norm_c = ptr;  ptr += d.M;      // [M] normalized cell (CN)
    tanh_c = ptr;  ptr += d.M;      // [M] tanh of the (normalized) cell
    h = ptr;                        // [M] (8)
  }
};

// Mean and reciprocal standard deviation (biased variance) of n values: CN's statistics.
template <typename acc_t>
inline void moments(const acc_t* z, int64_t n, acc_t& mean, acc_t& rstd) {
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += z[j];
  mean = sum / acc_t(n);
  acc_t var = 0;
  for (int64_t j = 0; j < n; ++j) var += (z[j] - mean) * (z[j] - mean);
  var /= acc_t(n);
  rstd = acc_t(1) / std::sqrt(var + acc_t(kCnEps));
}

// Steps (4)-(8) for row (b, p): a_row is A[b, p] ([G], bias included), c_prev the sample's
// previous cells [P, M].
template <typename scalar_t, typename acc_t>
inline void row_forward(const Dims& d, const scalar_t* a_row, const acc_t* c_prev, int64_t p,
                        const CnParams<acc_t>& cn, RowState<acc_t>& st) {
  using A = Act<acc_t>;
  const int64_t M = d.M, M4 = 4 * d.M;
  acc_t* pre = st.pre;
  for (int64_t j = 0; j < d.G; ++j) pre[j] = static_cast<acc_t>(a_row[j]);
  if (d.cn) {  // (4) CN over the 4M gate pre-activations of this row
    acc_t mean;
    moments(pre, M4, mean, st.rstd_a);
    for (int64_t j = 0; j < M4; ++j) {
      st.norm_a[j] = (pre[j] - mean) * st.rstd_a;
      pre[j] = st.norm_a[j] * cn.a_weight[j] + cn.a_bias[j];
    }
  }
  acc_t *g = st.gate, *i = st.gate + M, *f = st.gate + 2 * M, *o = st.gate + 3 * M;
  for (int64_t m = 0; m < M; ++m) g[m] = A::tanh(pre[m]);  // (5)
  for (int64_t m = 0; m < 3 * M; ++m) i[m] = A::sigmoid(pre[M + m]);  // i, f, o are contiguous
  if (d.mem_conv) {  // (5) softmax over K, (6) memory-cell convolution with replicate padding
    const acc_t* logits = pre + M4;
    acc_t top = logits[0];
    for (int64_t k = 1; k < d.K; ++k) top = std::max(top, logits[k]);
    acc_t total = 0;
    for (int64_t k = 0; k < d.K; ++k) total += (st.q[k] = A::exp(logits[k] - top));
    for (int64_t k = 0; k < d.K; ++k) st.q[k] /= total;
    for (int64_t m = 0; m < M; ++m) st.c_conv[m] = 0;
    for (int64_t k = 0; k < d.K; ++k) {
      const acc_t qk = st.q[k];
      const acc_t* src = c_prev + d.cell_source(p, k) * M;
      for (int64_t m = 0; m < M; ++m) st.c_conv[m] += qk * src[m];
    }
  } else {
    std::copy(c_prev + p * M, c_prev + (p + 1) * M, st.c_conv);
  }
  for (int64_t m = 0; m < M; ++m) st.c_new[m] = g[m] * i[m] + st.c_conv[m] * f[m];  // (7)
  if (d.cn) {  // (8) with CN on the cell
    acc_t mean;
    moments(st.c_new, M, mean, st.rstd_c);
    for (int64_t m = 0; m < M; ++m) {
      st.norm_c[m] = (st.c_new[m] - mean) * st.rstd_c;
      st.tanh_c[m] = A::tanh(st.norm_c[m] * cn.c_weight[m] + cn.c_bias[m]);
    }
  } else {
    for (int64_t m = 0; m < M; ++m) st.tanh_c[m] = A::tanh(st.c_new[m]);
  }
  for (int64_t m = 0; m < M; ++m) st.h[m] = st.tanh_c[m] * o[m];
}

template <typename acc_t>
CnParams<acc_t> cn_params(const Dims& d, std::vector<at::Tensor>& keep, const std::optional<at::Tensor>& a_weight,
                          const std::optional<at::Tensor>& a_bias, const std::optional<at::Tensor>& c_weight,
                          const std::optional<at::Tensor>& c_bias) {
  CnParams<acc_t> cn;
  if (!d.cn) return cn;
  TORCH_CHECK(a_weight && a_bias && c_weight && c_bias, "norm='cn' needs cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias");
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  for (const auto* t : {&*a_weight, &*a_bias, &*c_weight, &*c_bias}) keep.push_back(t->to(acc_type).contiguous());
  cn.a_weight = keep[0].data_ptr<acc_t>();
  cn.a_bias = keep[1].data_ptr<acc_t>();
  cn.c_weight = keep[2].data_ptr<acc_t>();
  cn.c_bias = keep[3].data_ptr<acc_t>();
  return cn;
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight_x, const at::Tensor& weight_h, int64_t tensor_size) {
  TORCH_CHECK(x.device().is_cpu(), "the cpp backend runs on CPU tensors, got x on ", x.device());
  TORCH_CHECK(x.dim() == 3, "x must be [B, T, R], got ", x.sizes());
  TORCH_CHECK(weight_h.dim() == 3 && weight_h.size(0) >= 2, "weight_h must be [K, M, G] with K >= 2, got ", weight_h.sizes());
  TORCH_CHECK(weight_x.dim() == 2 && weight_x.size(0) == x.size(2) && weight_x.size(1) == weight_h.size(1),
              "weight_x must be [R, M] = [", x.size(2), ", ", weight_h.size(1), "], got ", weight_x.sizes());
  TORCH_CHECK(tensor_size >= 1, "tensor_size must be >= 1, got ", tensor_size);
}

// ---- forward ------------------------------------------------------------------------------------
// Returns y [B, T, M], h [B, P, M], c [B, P, M] and, with keep_state, X, A, C for the backward.
std::vector<at::Tensor> forward(const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                const at::Tensor& weight_x, const at::Tensor& bias_x, const at::Tensor& weight_h,
                                const at::Tensor& bias_h, const std::optional<at::Tensor>& cn_a_weight,
                                const std::optional<at::Tensor>& cn_a_bias, const std::optional<at::Tensor>& cn_c_weight,
                                const std::optional<at::Tensor>& cn_c_bias, int64_t tensor_size, bool mem_conv,
                                bool keep_state) {
  check_inputs(x_in, weight_x, weight_h, tensor_size);
  const Dims d = make_dims(x_in, weight_h, tensor_size, mem_conv, cn_a_weight.has_value());
  const SmallStepThreadGuard threads(d);
  TORCH_CHECK(d.G == 4 * d.M + (mem_conv ? d.K : 0), "weight_h's last dim must be G = 4M", mem_conv ? " + K" : "",
              " = ", 4 * d.M + (mem_conv ? d.K : 0), ", got ", d.G);
  const at::Tensor x = x_in.contiguous();
  const auto opts = x.options();
  std::vector<at::Tensor> outputs;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "tlstm_fused_cpu_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = opts.dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t B = d.B, T = d.T, M = d.M, P = d.P, K = d.K, G = d.G, S = d.S, L = d.L;
    const int64_t KM = K * M, PKM = P * K * M;
    std::vector<at::Tensor> keep;
    const CnParams<acc_t> cn = cn_params<acc_t>(d, keep, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias);
    const at::Tensor w2d = weight_h.contiguous().view({KM, G});  // [K*M, G]
    const at::Tensor bh = bias_h.contiguous();

    // (1) the input projection of all T steps as one product; padding steps read bias_x.
    const at::Tensor z = at::addmm(bias_x, x.view({B * T, d.R}), weight_x).view({B, T, M});  // [B, T, M]
    const at::Tensor bx = bias_x.contiguous();

    // Without a backward, two X slices and C slices (ping-pong) and one A slice suffice.
    const int64_t nx = keep_state ? S : 2, na = keep_state ? S : 1, nc = keep_state ? S + 1 : 2;
    at::Tensor X = at::zeros({nx, B, P, K, M}, opts);  // zero = taps outside rows 0..P; never written
    at::Tensor Abuf = at::empty({na, B * P, G}, opts);
    at::Tensor C = at::empty({nc, B, P, M}, acc_opts);
    at::Tensor y = at::empty({B, T, M}, opts);
    at::Tensor h_out = at::empty({B, P, M}, opts);
    auto xs = [&](int64_t s) { return keep_state ? s : s % 2; };
    auto cs = [&](int64_t s) { return keep_state ? s : s % 2; };
    scalar_t* X_ptr = X.data_ptr<scalar_t>();
    const scalar_t* z_ptr = z.data_ptr<scalar_t>();
    const scalar_t* bx_ptr = bx.data_ptr<scalar_t>();

    // Row 0 of Hcat (the projected input) goes to location p' = d_up - 1 - k, tap k.
    auto write_input_row = [&](int64_t s) {
      scalar_t* Xs = X_ptr + xs(s) * B * PKM;
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* src = s < T ? z_ptr + (b * T + s) * M : bx_ptr;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t pp = d.d_up - 1 - k;
          if (pp >= 0 && pp < P) std::copy(src, src + M, Xs + b * PKM + (pp * K + k) * M);
        }
      }
    };
    // Hidden row p (Hcat row p + 1) goes to location p' = p + d_up - k, tap k.
    auto write_hidden_row = [&](scalar_t* Xs_b, int64_t p, const acc_t* h) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t pp = p + d.d_up - k;
        if (pp < 0 || pp >= P) continue;
        scalar_t* dst = Xs_b + (pp * K + k) * M;
        for (int64_t m = 0; m < M; ++m) dst[m] = static_cast<scalar_t>(h[m]);
      }
    };

    {  // initial state: h0 into X[0], c0 into C[0]
      const at::Tensor h0 = h0_in.to(x.scalar_type()).contiguous();
      const at::Tensor h0_acc = h0.to(acc_opts.dtype());
      C.select(0, 0).copy_(c0_in);
      const acc_t* h0p = h0_acc.data_ptr<acc_t>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t p = 0; p < P; ++p) write_hidden_row(X_ptr + b * PKM, p, h0p + (b * P + p) * M);
    }
    if (keep_state) at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) { for (int64_t s = s0; s < s1; ++s) write_input_row(s); });

    scalar_t* y_ptr = y.data_ptr<scalar_t>();
    scalar_t* hout_ptr = h_out.data_ptr<scalar_t>();
    acc_t* C_ptr = C.data_ptr<acc_t>();
    for (int64_t s = 0; s < S; ++s) {
      if (!keep_state) write_input_row(s);
      // (3) the cross-layer convolution: one [B*P, K*M] x [K*M, G] product, bias added.
      at::Tensor A_s = Abuf.select(0, keep_state ? s : 0);
      at::addmm_out(A_s, bh, X.select(0, xs(s)).view({B * P, KM}), w2d);
      const scalar_t* A_ptr = A_s.data_ptr<scalar_t>();
      const acc_t* c_prev_all = C_ptr + cs(s) * B * P * M;
      acc_t* c_next_all = C_ptr + cs(s + 1) * B * P * M;
      scalar_t* X_next = X_ptr + xs(s + 1) * B * PKM;
      // (4)-(9): one parallel pass over the (sample, location) rows.
      at::parallel_for(0, B * P, d.grain(), [&](int64_t r0, int64_t r1) {
        RowState<acc_t> st(d);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P, p = r % P;
          row_forward<scalar_t, acc_t>(d, A_ptr + r * G, c_prev_all + b * P * M, p, cn, st);
          std::copy(st.c_new, st.c_new + M, c_next_all + r * M);
          if (s + 1 < S) write_hidden_row(X_next + b * PKM, p, st.h);
          else for (int64_t m = 0; m < M; ++m) hout_ptr[r * M + m] = static_cast<scalar_t>(st.h[m]);
          if (p == P - 1 && s >= L - 1) {  // (9) the output for input s - (L-1)
            scalar_t* dst = y_ptr + (b * T + s - (L - 1)) * M;
            for (int64_t m = 0; m < M; ++m) dst[m] = static_cast<scalar_t>(st.h[m]);
          }
        }
      });
    }
    at::Tensor c_out = C.select(0, cs(S)).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    outputs = {y, h_out, c_out};
    if (keep_state) outputs.insert(outputs.end(), {X, Abuf, C});
  });
  return outputs;
}

// ---- backward -----------------------------------------------------------------------------------
// Returns dx, dh0, dc0, d weight_x, d bias_x, d weight_h, d bias_h and, with CN, d cn_a_weight,
// d cn_a_bias, d cn_c_weight, d cn_c_bias.
std::vector<at::Tensor> backward(const at::Tensor& dy_in, const at::Tensor& dh_in, const at::Tensor& dc_in,
                                 const at::Tensor& x_in, const at::Tensor& weight_x, const at::Tensor& weight_h,
                                 const std::optional<at::Tensor>& cn_a_weight, const std::optional<at::Tensor>& cn_a_bias,
                                 const std::optional<at::Tensor>& cn_c_weight, const std::optional<at::Tensor>& cn_c_bias,
                                 const at::Tensor& X, const at::Tensor& Abuf, const at::Tensor& C, int64_t tensor_size,
                                 bool mem_conv) {
  check_inputs(x_in, weight_x, weight_h, tensor_size);
  const Dims d = make_dims(x_in, weight_h, tensor_size, mem_conv, cn_a_weight.has_value());
  const SmallStepThreadGuard threads(d);
  const at::Tensor x = x_in.contiguous();
  const auto opts = x.options();
  std::vector<at::Tensor> grads;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "tlstm_fused_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto acc_opts = opts.dtype(acc_type);
    const int64_t B = d.B, T = d.T, M = d.M, P = d.P, K = d.K, G = d.G, S = d.S, L = d.L, M4 = 4 * M;
    const int64_t KM = K * M, PKM = P * K * M;
    std::vector<at::Tensor> keep;
    const CnParams<acc_t> cn = cn_params<acc_t>(d, keep, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias);
    const at::Tensor w2d = weight_h.contiguous().view({KM, G});  // [K*M, G]
    const at::Tensor w2d_t = w2d.t();                             // [G, K*M], a view

    const at::Tensor dy = dy_in.to(acc_type).contiguous();        // [B, T, M]
    const at::Tensor dh_last = dh_in.to(acc_type).contiguous();   // [B, P, M]
    at::Tensor dc_carry = dc_in.to(acc_type, false, true).contiguous();  // [B, P, M] gradient of the current cell
    at::Tensor dA = at::empty({S, B * P, G}, opts);               // gradient of the pre-activations, every step
    at::Tensor dX = at::empty({B * P, KM}, opts);                 // gradient of X[s+1] = dA[s+1] W^T
    at::Tensor dz = at::zeros({B, S, M}, acc_opts);               // gradient of the projected input rows
    at::Tensor dc_conv = at::empty({B, P, M}, acc_opts);          // gradient of Cconv (6), this step
    at::Tensor q_buf = at::empty({B, P, K}, acc_opts);  // memory kernels, this step
    // CN parameter gradients accumulate per row over the steps (one writer per row: no races, and
    // the sum does not depend on how rows are split between threads), then sum over rows.
    at::Tensor cn_acc = at::zeros({d.cn ? B * P : 0, 10 * M}, acc_opts);

    const acc_t* dy_p = dy.data_ptr<acc_t>();
    const acc_t* dh_last_p = dh_last.data_ptr<acc_t>();
    acc_t* dcc_p = dc_carry.data_ptr<acc_t>();
    const scalar_t* dX_p = dX.data_ptr<scalar_t>();
    acc_t* dz_p = dz.data_ptr<acc_t>();
    acc_t* dcv_p = dc_conv.data_ptr<acc_t>();
    acc_t* q_p = q_buf.data_ptr<acc_t>();
    acc_t* cn_p = d.cn ? cn_acc.data_ptr<acc_t>() : nullptr;
    const acc_t* C_p = C.data_ptr<acc_t>();

    // Gradient of hidden row (b, p) from the K slots of X[s+1] that hold it.
    auto gather_dh = [&](int64_t b, int64_t p, acc_t* out) {
      for (int64_t m = 0; m < M; ++m) out[m] = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t pp = p + d.d_up - k;
        if (pp < 0 || pp >= P) continue;
        const scalar_t* src = dX_p + b * PKM + (pp * K + k) * M;
        for (int64_t m = 0; m < M; ++m) out[m] += static_cast<acc_t>(src[m]);
      }
    };

    for (int64_t s = S - 1; s >= 0; --s) {
      const scalar_t* A_s = Abuf.select(0, s).data_ptr<scalar_t>();
      scalar_t* dA_s = dA.select(0, s).data_ptr<scalar_t>();
      const acc_t* c_prev_all = C_p + s * B * P * M;
      // Pass 1 over rows: recompute (4)-(8), then their gradients back to A and to Cconv.
      at::parallel_for(0, B * P, d.grain(), [&](int64_t r0, int64_t r1) {
        RowState<acc_t> st(d);
        std::vector<acc_t> work(static_cast<size_t>(10 * M + K));
        acc_t* dh = work.data();    // [M] gradient of h_new
        acc_t* dc = dh + M;         // [M] gradient of c_new
        acc_t* dpre = dc + M;       // [4M + K] gradient of the (normalized) pre-activations
        acc_t* dn_buf = dpre + M4 + K;  // [4M] CN backward scratch
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P, p = r % P;
          const acc_t* c_prev = c_prev_all + b * P * M;
          row_forward<scalar_t, acc_t>(d, A_s + r * G, c_prev, p, cn, st);
          const acc_t *g = st.gate, *i = st.gate + M, *f = st.gate + 2 * M, *o = st.gate + 3 * M;
          if (s == S - 1) std::copy(dh_last_p + r * M, dh_last_p + (r + 1) * M, dh);
          else gather_dh(b, p, dh);
          if (p == P - 1 && s >= L - 1) {
            const acc_t* src = dy_p + (b * T + s - (L - 1)) * M;
            for (int64_t m = 0; m < M; ++m) dh[m] += src[m];
          }
          std::copy(dcc_p + r * M, dcc_p + (r + 1) * M, dc);
          acc_t* dpre_g = dpre;
          acc_t* dpre_i = dpre + M;
          acc_t* dpre_f = dpre + 2 * M;
          acc_t* dpre_o = dpre + 3 * M;
          // (8) h = tanh(cout) * o
          for (int64_t m = 0; m < M; ++m) {
            const acc_t tc = st.tanh_c[m];
            dpre_o[m] = dh[m] * tc * o[m] * (acc_t(1) - o[m]);
            dn_buf[m] = dh[m] * o[m] * (acc_t(1) - tc * tc);  // gradient of cout
          }
          if (d.cn) {  // cout = CN(c_new): back through the normalization
            acc_t* acc_c = cn_p + r * 10 * M + 8 * M;  // [dcn_c_weight M | dcn_c_bias M]
            acc_t mean_dn = 0, mean_dn_n = 0;
            for (int64_t m = 0; m < M; ++m) {
              const acc_t dcout = dn_buf[m];
              acc_c[m] += dcout * st.norm_c[m];
              acc_c[M + m] += dcout;
              dn_buf[m] = dcout * cn.c_weight[m];
              mean_dn += dn_buf[m];
              mean_dn_n += dn_buf[m] * st.norm_c[m];
            }
            mean_dn /= acc_t(M);
            mean_dn_n /= acc_t(M);
            for (int64_t m = 0; m < M; ++m) dc[m] += st.rstd_c * (dn_buf[m] - mean_dn - st.norm_c[m] * mean_dn_n);
          } else {
            for (int64_t m = 0; m < M; ++m) dc[m] += dn_buf[m];
          }
          // (7) c_new = g * i + Cconv * f, (5) activations
          acc_t* dcv = dcv_p + r * M;
          for (int64_t m = 0; m < M; ++m) {
            dpre_g[m] = dc[m] * i[m] * (acc_t(1) - g[m] * g[m]);
            dpre_i[m] = dc[m] * g[m] * i[m] * (acc_t(1) - i[m]);
            dpre_f[m] = dc[m] * st.c_conv[m] * f[m] * (acc_t(1) - f[m]);
            dcv[m] = dc[m] * f[m];
          }
          if (d.mem_conv) {  // (6) and the softmax of (5)
            acc_t* dq = dpre + M4;
            acc_t weighted = 0;
            for (int64_t k = 0; k < K; ++k) {
              const acc_t* src = c_prev + d.cell_source(p, k) * M;
              acc_t sum = 0;
              for (int64_t m = 0; m < M; ++m) sum += dcv[m] * src[m];
              dq[k] = sum;
              weighted += st.q[k] * sum;
              q_p[r * K + k] = st.q[k];
            }
            for (int64_t k = 0; k < K; ++k) dq[k] = st.q[k] * (dq[k] - weighted);
          }
          if (d.cn) {  // (4) gates = CN(A[..., :4M])
            acc_t* acc_a = cn_p + r * 10 * M;  // [dcn_a_weight 4M | dcn_a_bias 4M]
            acc_t mean_dn = 0, mean_dn_n = 0;
            for (int64_t j = 0; j < M4; ++j) {
              acc_a[j] += dpre[j] * st.norm_a[j];
              acc_a[M4 + j] += dpre[j];
              dn_buf[j] = dpre[j] * cn.a_weight[j];
              mean_dn += dn_buf[j];
              mean_dn_n += dn_buf[j] * st.norm_a[j];
            }
            mean_dn /= acc_t(M4);
            mean_dn_n /= acc_t(M4);
            for (int64_t j = 0; j < M4; ++j) dpre[j] = st.rstd_a * (dn_buf[j] - mean_dn - st.norm_a[j] * mean_dn_n);
          }
          scalar_t* dst = dA_s + r * G;
          for (int64_t j = 0; j < G; ++j) dst[j] = static_cast<scalar_t>(dpre[j]);
        }
      });
      // Pass 2 over rows: gradient of the previous cell, gathered from the locations that read it.
      at::parallel_for(0, B * P, d.grain(), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P, j = r % P;
          acc_t* out = dcc_p + r * M;
          if (!d.mem_conv) {
            std::copy(dcv_p + r * M, dcv_p + (r + 1) * M, out);
            continue;
          }
          for (int64_t m = 0; m < M; ++m) out[m] = 0;
          for (int64_t p = 0; p < P; ++p) {
            for (int64_t k = 0; k < K; ++k) {
              if (d.cell_source(p, k) != j) continue;
              const acc_t qk = q_p[(b * P + p) * K + k];
              const acc_t* src = dcv_p + (b * P + p) * M;
              for (int64_t m = 0; m < M; ++m) out[m] += qk * src[m];
            }
          }
        }
      });
      // Gradient of X[s]: one [B*P, G] x [G, K*M] product; its input-row slots give dz[s].
      at::mm_out(dX, dA.select(0, s), w2d_t);
      for (int64_t b = 0; b < B; ++b) {
        acc_t* dst = dz_p + (b * S + s) * M;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t pp = d.d_up - 1 - k;
          if (pp < 0 || pp >= P) continue;
          const scalar_t* src = dX_p + b * PKM + (pp * K + k) * M;
          for (int64_t m = 0; m < M; ++m) dst[m] += static_cast<acc_t>(src[m]);
        }
      }
    }

    at::Tensor dh0 = at::empty({B, P, M}, acc_opts);
    acc_t* dh0_p = dh0.data_ptr<acc_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p) gather_dh(b, p, dh0_p + (b * P + p) * M);

    // The weight gradient over all steps at once: [K*M, S*B*P] x [S*B*P, G].
    const at::Tensor dA2d = dA.view({S * B * P, G});
    at::Tensor d_weight_h = at::mm(X.view({S * B * P, KM}).t(), dA2d).view({K, M, G});
    at::Tensor d_bias_h = dA2d.sum(0, false, acc_type).to(x.scalar_type());
    // (1): the input rows; padding steps (s >= T) only reach bias_x.
    const at::Tensor dz_in = dz.narrow(1, 0, T).to(x.scalar_type()).reshape({B * T, M});  // [B*T, M]
    at::Tensor dx = at::mm(dz_in, weight_x.t()).view({B, T, d.R});
    at::Tensor d_weight_x = at::mm(x.view({B * T, d.R}).t(), dz_in);
    at::Tensor d_bias_x = dz.sum({0, 1}).to(x.scalar_type());
    grads = {dx, dh0.to(x.scalar_type()), dc_carry.to(x.scalar_type()), d_weight_x, d_bias_x, d_weight_h, d_bias_h};
    if (d.cn) {
      const at::Tensor cn_sum = cn_acc.sum(0).to(x.scalar_type());  // [10M]
      grads.push_back(cn_sum.narrow(0, 0, M4));
      grads.push_back(cn_sum.narrow(0, M4, M4));
      grads.push_back(cn_sum.narrow(0, 8 * M, M));
      grads.push_back(cn_sum.narrow(0, 9 * M, M));
    }
  });
  return grads;
}

}  // namespace

// Called from Python as torch.ops.tlstm_fused_cpu.forward / .backward (see ../__init__.py).
TORCH_LIBRARY(tlstm_fused_cpu, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
