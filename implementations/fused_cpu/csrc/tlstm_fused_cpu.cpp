// Fused tLSTM on the CPU: the whole T+L-1-step recurrence, forward and backward, in one operator.
//
// Equations and step numbers (1)-(9): implementations/tlstm_naive.py. Shape letters: B batch,
// T sequence length, R input size, M channels, P tensor size, K kernel size, d_up = K / 2,
// L depth, S = T + L - 1 steps, G = 4M + K (memory-cell convolution on) or 4M.
//
// Per step: ONE matrix product for the cross-layer convolution (3), [B*P, K*M] x [K*M, G], then ONE
// pass over the B*P (sample, location) rows doing (4)-(9). Rows are independent within a step, so a
// step large enough to split is cut into one block of rows per thread, and each thread runs its
// block's product and pointwise pass back to back: one fork/join per step (two in the backward), and
// no thread waits on another inside a step. Products go through ATen (MKL / oneDNN), except thin
// ones, which take a small kernel in this file (see "thin matrix products").
//
// The left operand of the product is an im2col buffer X[s] of shape
// [B, P, K, M]: row (b, p), tap k holds Hcat[b, p + 1 - d_up + k] (zero outside 0..P). The
// pointwise loop writes each new hidden row straight into the K slots of X[s+1] that read it, so
// there is no separate im2col pass, and X over all steps is exactly what the weight gradient needs:
// dW = X^T dA, one large product after the backward loop.
//
// Saved for backward: X [S, B, P, K, M] and the products A [S, B*P, G] (bias_h not yet added; (4)
// adds it as it reads a row) in the matmul dtype, the cells C [S+1, B, P, M] in the accumulation
// dtype (float for bfloat16). The pointwise values are recomputed from A in the backward loop,
// which costs less than storing them.

// Per-operator ATen headers and TORCH_LIBRARY registration instead of <torch/extension.h>: the
// whole of libtorch and pybind11 would triple the build time for nothing this file uses.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TLSTM_THIN_GEMM 1
#else
#define TLSTM_THIN_GEMM 0
#endif

// Force inlining of the activation helpers: a call inside a channel loop stops it vectorizing.
#define TLSTM_INLINE inline __attribute__((always_inline))

namespace {

constexpr double kCnEps = 1e-5;  // channel normalization epsilon, as in tlstm_naive.CN_EPS

// A named range for the profiler (`tlstm-bench profile` splits the operator's time by these names), as
// Python's `with torch.profiler.record_function(name)`; a flag check when no profiler is running.
class PhaseRange {
 public:
  explicit PhaseRange(const char* name) : range_(at::RecordScope::USER_SCOPE) {
    if (range_.isActive()) range_.before(std::string_view(name));
  }

 private:
  at::RecordFunction range_;
};

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
  bool small_steps() const;
  // Rows of one step handed to one thread (at::parallel_for's grain): all B*P rows (the step runs on
  // the calling thread) for small steps, else one block per thread.
  int64_t row_grain() const { return small_steps() ? B * P : (B * P + at::get_num_threads() - 1) / at::get_num_threads(); }
};

// Below this many FLOPs in a step's convolution product the step runs on one thread: the fork/join
// (about 2 us) costs as much as splitting saves. Training steps on this project's 2-core machine,
// split against one thread: 1.3-1.4x faster at 0.4-0.8 MFLOP per step (B = 2, 4, M = 32, P = 8;
// B = 1, M = 64, P = 8), 1.08x at 0.2 MFLOP (B = 1, M = 32, P = 8), 0.83-1.06x below 0.1 MFLOP.
constexpr double kParallelStepFlops = 2e5;

bool Dims::small_steps() const { return 2.0 * double(B * P) * double(K * M) * double(G) < kParallelStepFlops; }

// Small steps run on one thread, matrix products included: left at PyTorch's thread count, MKL
// would split each tiny product itself (at [1, 192] x [192, 259]: 11 us on two threads against
// 4 us on one). Sets the thread count to 1 for the operator's duration and restores it after.
// A split step needs no such guard: inside at::parallel_for's region the products run on one
// thread each.
class SmallStepThreadGuard {
 public:
  explicit SmallStepThreadGuard(const Dims& d) {
    if (d.small_steps() && at::get_num_threads() > 1) {
      previous_ = at::get_num_threads();
      at::set_num_threads(1);
    }
  }
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

// Steps (4)-(8) for row (b, p): a_row is A[b, p] ([G], the product without bias), bias bias_h in
// the accumulation dtype, c_prev the sample's previous cells [P, M].
template <typename scalar_t, typename acc_t>
inline void row_forward(const Dims& d, const scalar_t* a_row, const acc_t* bias, const acc_t* c_prev, int64_t p,
                        const CnParams<acc_t>& cn, RowState<acc_t>& st) {
  using A = Act<acc_t>;
  const int64_t M = d.M, M4 = 4 * d.M;
  acc_t* pre = st.pre;
  for (int64_t j = 0; j < d.G; ++j) pre[j] = static_cast<acc_t>(a_row[j]) + bias[j];
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

// Back through the normalization z_hat = (z - mean) * rstd, scaled by weight, of n values: dz_hat
// in, the gradient of z out (in place); accumulates the weight and bias gradients.
template <typename acc_t>
inline void cn_backward(int64_t n, const acc_t* __restrict norm, acc_t rstd, const acc_t* __restrict weight,
                        acc_t* __restrict grad, acc_t* __restrict scratch, acc_t* __restrict acc_weight,
                        acc_t* __restrict acc_bias) {
  acc_t mean_dn = 0, mean_dn_n = 0;
  for (int64_t j = 0; j < n; ++j) {
    acc_weight[j] += grad[j] * norm[j];
    acc_bias[j] += grad[j];
    scratch[j] = grad[j] * weight[j];
    mean_dn += scratch[j];
    mean_dn_n += scratch[j] * norm[j];
  }
  mean_dn /= acc_t(n);
  mean_dn_n /= acc_t(n);
  for (int64_t j = 0; j < n; ++j) grad[j] = rstd * (scratch[j] - mean_dn - norm[j] * mean_dn_n);
}

// Gradients of steps (4)-(8) for row (b, p), given st from row_forward and the gradients dh of
// h_new and dc of c_new (dc is used as scratch). Writes dpre [G], the gradient of A's row; dcv [M],
// of Cconv; q_out [K], the memory kernel the cell-gradient gather needs; and, with CN, adds this
// step's parameter gradients to cn_acc [a_weight 4M | a_bias 4M | c_weight M | c_bias M].
template <typename acc_t>
inline void row_backward(const Dims& d, const acc_t* c_prev, int64_t p, const CnParams<acc_t>& cn,
                         const RowState<acc_t>& st, const acc_t* __restrict dh, acc_t* __restrict dc,
                         acc_t* __restrict dpre, acc_t* __restrict scratch, acc_t* __restrict dcv,
                         acc_t* __restrict q_out, acc_t* __restrict cn_acc) {
  const int64_t M = d.M, M4 = 4 * d.M;
  const acc_t* __restrict g = st.gate;
  const acc_t* __restrict i = st.gate + M;
  const acc_t* __restrict f = st.gate + 2 * M;
  const acc_t* __restrict o = st.gate + 3 * M;
  const acc_t* __restrict tanh_c = st.tanh_c;
  const acc_t* __restrict c_conv = st.c_conv;
  acc_t* __restrict dpre_g = dpre;
  acc_t* __restrict dpre_i = dpre + M;
  acc_t* __restrict dpre_f = dpre + 2 * M;
  acc_t* __restrict dpre_o = dpre + 3 * M;
  // (8) h = tanh(cout) * o; scratch holds the gradient of cout
  for (int64_t m = 0; m < M; ++m) {
    dpre_o[m] = dh[m] * tanh_c[m] * o[m] * (acc_t(1) - o[m]);
    scratch[m] = dh[m] * o[m] * (acc_t(1) - tanh_c[m] * tanh_c[m]);
  }
  if (d.cn) cn_backward<acc_t>(M, st.norm_c, st.rstd_c, cn.c_weight, scratch, scratch + M, cn_acc + 8 * M, cn_acc + 9 * M);
  for (int64_t m = 0; m < M; ++m) dc[m] += scratch[m];
  // (7) c_new = g * i + Cconv * f, and the activations of (5)
  for (int64_t m = 0; m < M; ++m) {
    dpre_g[m] = dc[m] * i[m] * (acc_t(1) - g[m] * g[m]);
    dpre_i[m] = dc[m] * g[m] * i[m] * (acc_t(1) - i[m]);
    dpre_f[m] = dc[m] * c_conv[m] * f[m] * (acc_t(1) - f[m]);
    dcv[m] = dc[m] * f[m];
  }
  if (d.mem_conv) {  // (6) and the softmax of (5)
    acc_t* dq = dpre + M4;
    acc_t weighted = 0;
    for (int64_t k = 0; k < d.K; ++k) {
      const acc_t* __restrict src = c_prev + d.cell_source(p, k) * M;
      acc_t sum = 0;
      for (int64_t m = 0; m < M; ++m) sum += dcv[m] * src[m];
      dq[k] = sum;
      weighted += st.q[k] * sum;
      q_out[k] = st.q[k];
    }
    for (int64_t k = 0; k < d.K; ++k) dq[k] = st.q[k] * (dq[k] - weighted);
  }
  if (d.cn) cn_backward<acc_t>(M4, st.norm_a, st.rstd_a, cn.a_weight, dpre, scratch, cn_acc, cn_acc + M4);  // (4)
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

// ---- thin matrix products ------------------------------------------------------------------------
// A step's products have few rows (B*P, split between threads) against a weight matrix that stays
// the same for the whole sequence. MKL re-packs the weight on every call and reaches 20-60% of this
// CPU's FMA peak on such shapes, one thread each (measured on this project's 2-core AMD EPYC, where
// a plain FMA loop runs at 105 GFLOP/s per core):
//   [1, 192] x [192, 259]: MKL 19, the kernel below 35;   [16, 192] x [192, 259]: 59 and 88;
//   [64, 384] x [384, 515]: 61 and 88;   [64, 515] x [515, 384]: 77 and 70 GFLOP/s.
// So for float32 on an AVX2/FMA CPU, products with at most kThinRows rows per thread take this
// kernel, with the weight packed once per operator call; larger ones, every other dtype and every
// other CPU take ATen (at::mm_out: MKL / oneDNN).
constexpr int64_t kThinRows = 64;
constexpr int64_t kPanel = 16;  // columns per packed panel: two AVX2 vectors

// B [Kd, N], packed in panels of 16 columns: panel j holds B[k, 16j .. 16j + 15] for k = 0 .. Kd-1,
// zero-padded past N.
struct PackedWeight {
  at::Tensor storage;
  const float* data = nullptr;
  int64_t Kd = 0, N = 0, panels = 0;
};

// Element (k, n) of the source is src[k * k_stride + n * n_stride].
PackedWeight pack_weight(const float* src, int64_t Kd, int64_t N, int64_t k_stride, int64_t n_stride) {
  PackedWeight w;
  w.Kd = Kd;
  w.N = N;
  w.panels = (N + kPanel - 1) / kPanel;
  w.storage = at::zeros({w.panels * Kd * kPanel}, at::TensorOptions().dtype(at::kFloat));
  float* dst = w.storage.data_ptr<float>();
  for (int64_t j = 0; j < w.panels; ++j)
    for (int64_t k = 0; k < Kd; ++k)
      for (int64_t c = 0; c < kPanel && j * kPanel + c < N; ++c)
        dst[(j * Kd + k) * kPanel + c] = src[k * k_stride + (j * kPanel + c) * n_stride];
  w.data = dst;
  return w;
}

#if TLSTM_THIN_GEMM
// C[MR, cols] = A[MR, Kd] x one packed panel (cols <= 16). MR <= 2 keeps a second set of
// accumulators for odd k, so that enough independent FMAs are in flight to hide their latency.
template <int MR>
TLSTM_INLINE void thin_kernel(const float* A, int64_t lda, const float* panel, int64_t Kd, float* C, int64_t ldc,
                              int64_t cols) {
  constexpr int U = MR <= 2 ? 2 : 1;
  __m256 acc[U][MR][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < MR; ++r) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + U <= Kd; k += U) {
    for (int u = 0; u < U; ++u) {
      const __m256 b0 = _mm256_loadu_ps(panel + (k + u) * kPanel);
      const __m256 b1 = _mm256_loadu_ps(panel + (k + u) * kPanel + 8);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k + u);
        acc[u][r][0] = _mm256_fmadd_ps(a, b0, acc[u][r][0]);
        acc[u][r][1] = _mm256_fmadd_ps(a, b1, acc[u][r][1]);
      }
    }
  }
  for (; k < Kd; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      acc[0][r][0] = _mm256_fmadd_ps(a, b0, acc[0][r][0]);
      acc[0][r][1] = _mm256_fmadd_ps(a, b1, acc[0][r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    __m256 lo = acc[0][r][0], hi = acc[0][r][1];
    if constexpr (U == 2) {
      lo = _mm256_add_ps(lo, acc[1][r][0]);
      hi = _mm256_add_ps(hi, acc[1][r][1]);
    }
    float* out = C + r * ldc;
    if (cols == kPanel) {
      _mm256_storeu_ps(out, lo);
      _mm256_storeu_ps(out + 8, hi);
    } else {
      alignas(32) float tmp[kPanel];
      _mm256_store_ps(tmp, lo);
      _mm256_store_ps(tmp + 8, hi);
      std::copy(tmp, tmp + cols, out);
    }
  }
}

// C[n, N] = A[n, Kd] x W (packed), rows of A and C lda and ldc apart. Rows go in blocks of at most
// six, as even as possible (8 rows: 4 + 4, not 6 + 2), each block against every panel while the
// panel is in L1.
void thin_gemm(const float* A, int64_t lda, int64_t n, const PackedWeight& w, float* C, int64_t ldc) {
  const int64_t blocks = (n + 5) / 6;
  for (int64_t j = 0; j < w.panels; ++j) {
    const float* panel = w.data + j * w.Kd * kPanel;
    const int64_t cols = std::min(kPanel, w.N - j * kPanel);
    int64_t row = 0;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t mr = n / blocks + (blk < n % blocks ? 1 : 0);
      const float* a = A + row * lda;
      float* c = C + row * ldc + j * kPanel;
      switch (mr) {
        case 1: thin_kernel<1>(a, lda, panel, w.Kd, c, ldc, cols); break;
        case 2: thin_kernel<2>(a, lda, panel, w.Kd, c, ldc, cols); break;
        case 3: thin_kernel<3>(a, lda, panel, w.Kd, c, ldc, cols); break;
        case 4: thin_kernel<4>(a, lda, panel, w.Kd, c, ldc, cols); break;
        case 5: thin_kernel<5>(a, lda, panel, w.Kd, c, ldc, cols); break;
        default: thin_kernel<6>(a, lda, panel, w.Kd, c, ldc, cols); break;
      }
      row += mr;
    }
  }
}
#endif

// One thread's share of a step's product: out [n, N] = a [n, Kd] x weight [Kd, N], rows of a and out
// lda and ldc elements apart. The thin kernel where it applies (packed given), else at::mm_out.
// Raw pointers, not tensor views: at a few microseconds per step, creating views costs as much as
// the arithmetic.
template <typename scalar_t>
void step_product(const scalar_t* a, int64_t lda, int64_t n, const at::Tensor& weight, const PackedWeight* packed,
                  scalar_t* out, int64_t ldc) {
#if TLSTM_THIN_GEMM
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (packed != nullptr) {
      thin_gemm(a, lda, n, *packed, out, ldc);
      return;
    }
  }
#endif
  const auto opts = weight.options();
  const at::Tensor a_t = at::from_blob(const_cast<scalar_t*>(a), {n, weight.size(0)}, {lda, 1}, opts);
  at::Tensor out_t = at::from_blob(out, {n, weight.size(1)}, {ldc, 1}, opts);
  at::mm_out(out_t, a_t, weight);
}

// Whether the per-step products of this operator call take the thin kernel.
template <typename scalar_t>
bool use_thin_gemm(int64_t rows_per_thread) {
  return TLSTM_THIN_GEMM && std::is_same_v<scalar_t, float> && rows_per_thread <= kThinRows;
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
    // Detached: the products run on at::parallel_for threads, where grad mode is on by default.
    const at::Tensor w2d = weight_h.detach().contiguous().view({KM, G});  // [K*M, G]
    const at::Tensor bh = bias_h.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* bh_ptr = bh.data_ptr<acc_t>();

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
    scalar_t* Abuf_ptr = Abuf.data_ptr<scalar_t>();
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
    const int64_t grain = d.row_grain();
    PackedWeight packed;
    if (use_thin_gemm<scalar_t>(grain)) packed = pack_weight(reinterpret_cast<const float*>(w2d.data_ptr()), KM, G, G, 1);
    const PackedWeight* packed_ptr = packed.data ? &packed : nullptr;
    for (int64_t s = 0; s < S; ++s) {
      if (!keep_state) write_input_row(s);
      scalar_t* A_ptr = Abuf_ptr + (keep_state ? s : 0) * B * P * G;  // A[s], [B*P, G]
      const scalar_t* X_s = X_ptr + xs(s) * B * PKM;                     // X[s], [B*P, K*M]
      const acc_t* c_prev_all = C_ptr + cs(s) * B * P * M;
      acc_t* c_next_all = C_ptr + cs(s + 1) * B * P * M;
      scalar_t* X_next = X_ptr + xs(s + 1) * B * PKM;
      at::parallel_for(0, B * P, grain, [&](int64_t r0, int64_t r1) {
        // Named ranges for the profiler (tlstm-bench profile); free when no profiler is running.
        std::optional<PhaseRange> phase;
        phase.emplace("tlstm_fused::forward_product");
        // (3) the cross-layer convolution for these rows: [r1 - r0, K*M] x [K*M, G].
        step_product<scalar_t>(X_s + r0 * KM, KM, r1 - r0, w2d, packed_ptr, A_ptr + r0 * G, G);
        phase.reset();
        phase.emplace("tlstm_fused::forward_pointwise");
        // (4)-(9) for the same rows. They write hidden rows into X[s+1] slots of other blocks' rows,
        // which nothing reads before the next step.
        RowState<acc_t> st(d);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P, p = r % P;
          row_forward<scalar_t, acc_t>(d, A_ptr + r * G, bh_ptr, c_prev_all + b * P * M, p, cn, st);
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
                                 const at::Tensor& bias_h,
                                 const std::optional<at::Tensor>& cn_a_weight, const std::optional<at::Tensor>& cn_a_bias,
                                 const std::optional<at::Tensor>& cn_c_weight, const std::optional<at::Tensor>& cn_c_bias,
                                 const at::Tensor& X, const at::Tensor& Abuf, const at::Tensor& C, int64_t tensor_size,
                                 bool mem_conv) {
  check_inputs(x_in, weight_x, weight_h, tensor_size);
  TORCH_CHECK(X.is_contiguous() && Abuf.is_contiguous() && C.is_contiguous(), "X, A, C must be the forward's own buffers");
  const Dims d = make_dims(x_in, weight_h, tensor_size, mem_conv, cn_a_weight.has_value());
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
    // Detached: the products run on at::parallel_for threads, where grad mode is on by default.
    const at::Tensor w2d = weight_h.detach().contiguous().view({KM, G});  // [K*M, G]
    const at::Tensor w2d_t = w2d.t();                             // [G, K*M], a view
    const at::Tensor bh = bias_h.to(acc_type).contiguous();
    const acc_t* bh_ptr = bh.data_ptr<acc_t>();

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
    scalar_t* dX_p = dX.data_ptr<scalar_t>();
    const scalar_t* A_p = Abuf.data_ptr<scalar_t>();
    scalar_t* dA_p = dA.data_ptr<scalar_t>();
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

    const int64_t grain = d.row_grain();
    PackedWeight packed_t;  // W^T [G, K*M] for dX = dA W^T
    if (use_thin_gemm<scalar_t>(grain)) packed_t = pack_weight(reinterpret_cast<const float*>(w2d.data_ptr()), G, KM, 1, G);
    const PackedWeight* packed_t_ptr = packed_t.data ? &packed_t : nullptr;
    std::optional<SmallStepThreadGuard> step_threads(std::in_place, d);  // the products after the loop use every thread
    for (int64_t s = S - 1; s >= 0; --s) {
      const scalar_t* A_s = A_p + s * B * P * G;  // [B*P, G]
      scalar_t* dA_s = dA_p + s * B * P * G;
      const acc_t* c_prev_all = C_p + s * B * P * M;
      // Pass 1 over rows: recompute (4)-(8), then their gradients back to A and to Cconv.
      at::parallel_for(0, B * P, grain, [&](int64_t r0, int64_t r1) {
        PhaseRange phase("tlstm_fused::backward_pointwise");
        RowState<acc_t> st(d);
        std::vector<acc_t> work(static_cast<size_t>(2 * M + G + M4));
        acc_t* dh = work.data();      // [M] gradient of h_new
        acc_t* dc = dh + M;           // [M] gradient of c_new
        acc_t* dpre = dc + M;         // [G] gradient of A's row
        acc_t* scratch = dpre + G;    // [4M]
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / P, p = r % P;
          const acc_t* c_prev = c_prev_all + b * P * M;
          row_forward<scalar_t, acc_t>(d, A_s + r * G, bh_ptr, c_prev, p, cn, st);
          if (s == S - 1) std::copy(dh_last_p + r * M, dh_last_p + (r + 1) * M, dh);
          else gather_dh(b, p, dh);
          if (p == P - 1 && s >= L - 1) {
            const acc_t* src = dy_p + (b * T + s - (L - 1)) * M;
            for (int64_t m = 0; m < M; ++m) dh[m] += src[m];
          }
          std::copy(dcc_p + r * M, dcc_p + (r + 1) * M, dc);
          row_backward<acc_t>(d, c_prev, p, cn, st, dh, dc, dpre, scratch, dcv_p + r * M, q_p + r * K,
                              d.cn ? cn_p + r * 10 * M : nullptr);
          scalar_t* dst = dA_s + r * G;
          for (int64_t j = 0; j < G; ++j) dst[j] = static_cast<scalar_t>(dpre[j]);
        }
      });
      // Pass 2 over rows: gradient of the previous cell, gathered from the locations that read it,
      // and the same rows of the gradient of X[s]: dA[s] W^T, [r1 - r0, G] x [G, K*M].
      at::parallel_for(0, B * P, grain, [&](int64_t r0, int64_t r1) {
        std::optional<PhaseRange> phase;
        phase.emplace("tlstm_fused::backward_product");
        step_product<scalar_t>(dA_s + r0 * G, G, r1 - r0, w2d_t, packed_t_ptr, dX_p + r0 * KM, KM);
        phase.reset();
        phase.emplace("tlstm_fused::backward_pointwise");  // the previous cell's gradient
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
      // The input-row slots of the gradient of X[s] give dz[s].
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

    step_threads.reset();

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
