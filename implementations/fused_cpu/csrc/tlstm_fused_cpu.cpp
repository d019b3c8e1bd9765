// Fused tLSTM on the CPU: the whole T+L-1-step recurrence, forward and backward, in one operator.
//
// Equations and step numbers (1)-(9): implementations/tlstm_naive.py. Shape letters: B batch,
// T sequence length, R input size, M channels, P tensor size, K kernel size, d_up = K / 2,
// L depth, S = T + L - 1 steps. The operator serves the tLSTM (2D: weight_h [K, M, G], state
// [B, P, M]) and the 3D tLSTM (weight_h [K, K, M, G], state [B, P, P, M]) with the same loops, written
// over N locations and KK taps: N = P, KK = K in 2D; N = P*P (location (p1, p2) is n = p1*P + p2),
// KK = K*K (tap (k1, k2) is t = k1*K + k2) in 3D. G = 4M + KK (memory-cell convolution on) or 4M.
// Which Hcat row tap t of location n reads, which cell its memory convolution reads, and the inverse
// maps are index tables built once per call (see Dims); the output is read at the last location, N-1.
//
// Per step: ONE matrix product for the cross-layer convolution (3), [B*N, KK*M] x [KK*M, G], then ONE
// pass over the B*N (sample, location) rows doing (4)-(9). Rows are independent within a step, so a
// step large enough to split is cut into one block of rows per thread, and each thread runs its
// block's product and pointwise pass back to back: one fork/join per step (two in the backward), and
// no thread waits on another inside a step. Products go through ATen (MKL / oneDNN), except thin
// ones, which take a small kernel in this file (see "thin matrix products").
//
// The left operand of the product is an im2col buffer X[s] of shape
// [B, N, KK, M]: row (b, n), tap t holds the Hcat row that tap reads (zero outside the input and the
// hidden rows). The pointwise loop writes each new hidden row straight into the slots of X[s+1] that
// read it, so there is no separate im2col pass, and X over all steps is exactly what the weight
// gradient needs: dW = X^T dA, one large product after the backward loop.
//
// Saved for backward: X [S, B, N, KK, M] and the products A [S, B*N, G] (bias_h not yet added; (4)
// adds it as it reads a row) in the matmul dtype, the cells C [S+1, B, N, M] in the accumulation
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
#include <mutex>
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
struct ExpSplit {
  float scale;  // 2^n
  float r;      // x - n ln2
  float q;      // exp(r) = 1 + r q
};

TLSTM_INLINE ExpSplit exp_split(float x) {
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n a normal float
  x = x > 88.0f ? 88.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f;       // ln 2, high part (exact in float)
  r = r - n * 1.42860682030941723212e-6f;     // ln 2, low part
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return {scale, r, q};
}

TLSTM_INLINE float exp_approx(float x) {
  const ExpSplit e = exp_split(x);
  return (e.q * e.r + 1.0f) * e.scale;
}

// exp(x) - 1 without the cancellation near 0: 2^n r q + (2^n - 1). For |x| < ln2/2 (n = 0) that is
// r q, relative error a float rounding or two, down to denormals; elsewhere the two terms do not cancel
// much (at worst n = 1, r < 0: a factor 1.4).
TLSTM_INLINE float expm1_approx(float x) {
  const ExpSplit e = exp_split(x);
  return e.scale * (e.r * e.q) + (e.scale - 1.0f);
}

// float tanh(x) = u / (u + 2), u = expm1(2x): accurate in relative terms everywhere (within 2.4e-7 of
// float64 tanh for every float with 1e-30 <= |x| <= 10, denormals included) and as cheap as the
// 2 / (1 + exp(-2x)) - 1 it replaces, which was exact only in absolute terms: near 0 its final
// subtraction cancels, and below |x| ~ 3e-8 it returned 0. u + 2 never cancels (u > -1). Large |x|
// saturates to +-1 exactly (exp_split clamps, so u is finite); NaN stays NaN; the copysign gives
// tanh(-0) = -0 (u would be +0).
TLSTM_INLINE float tanh_approx(float x) {
  const float u = expm1_approx(2.0f * x);
  return std::copysign(u / (u + 2.0f), x);
}

template <typename T>
struct Act;

// Also the bfloat16 path: its accumulation dtype (at::opmath_type) is float.
template <>
struct Act<float> {
  static TLSTM_INLINE float exp(float x) { return exp_approx(x); }
  static TLSTM_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
  static TLSTM_INLINE float tanh(float x) { return tanh_approx(x); }
};

template <>
struct Act<double> {
  static TLSTM_INLINE double exp(double x) { return std::exp(x); }
  static TLSTM_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static TLSTM_INLINE double tanh(double x) { return std::tanh(x); }
};

// ---- buffer cache -------------------------------------------------------------------------------
// The large per-call buffers (X, A, C in the forward, dA in the backward: 150 MB for a 3D tLSTM at
// B = 16, M = 64, P = 4, T = 128) are far above glibc's mmap threshold, so each fresh at::empty maps
// new pages that the kernel faults in and zeroes on first touch, and each free unmaps them again:
// about 0.25 ms per MB on this project's 2-core machine, 15-20% of a 3D training call. So they come
// from a small cache instead: a block is handed out again, without being cleared, once every tensor
// made from it (views included) is gone. Every buffer taken from here is fully written before it
// is read. The cache keeps the last call's blocks (while their sizes keep being asked for); a miss
// drops the blocks not in use, so memory held between calls is at most one call's buffers.
constexpr int64_t kCachedBufferBytes = int64_t(1) << 20;  // smaller buffers: plain at::empty

class BufferCache {
 public:
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    int64_t numel = 1;
    for (const int64_t size : sizes) numel *= size;
    const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
    if (nbytes < kCachedBufferBytes) return at::empty(sizes, opts);
    at::Tensor block;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // use_count() == 1: only this list refers to the block (a tensor handed out holds a copy in
      // its deleter until its storage dies).
      for (const at::Tensor& entry : blocks_) {
        if (entry.numel() == nbytes && entry.use_count() == 1) {
          block = entry;
          break;
        }
      }
      if (!block.defined()) {
        blocks_.erase(std::remove_if(blocks_.begin(), blocks_.end(), [](const at::Tensor& e) { return e.use_count() == 1; }),
                      blocks_.end());
        block = at::empty({nbytes}, opts.dtype(at::kByte));
        blocks_.push_back(block);
      }
    }
    void* data = block.data_ptr();
    return at::from_blob(data, sizes, [block](void*) {}, opts);
  }

 private:
  std::mutex mutex_;
  std::vector<at::Tensor> blocks_;
};

// Never destroyed: tensors handed out may outlive static destruction at exit.
BufferCache& buffer_cache() {
  static BufferCache* cache = new BufferCache();
  return *cache;
}

// ---- sizes and index tables ---------------------------------------------------------------------
// A slot is one (location, tap) pair of X's rows: slot = n * KK + t.
struct Dims {
  int64_t B, T, R, M, P, K, G, S, L, d_up;
  int64_t dims;  // 2: the tLSTM; 3: the 3D tLSTM
  int64_t N;     // locations: P, or P*P
  int64_t KK;    // taps per location: K, or K*K
  bool mem_conv, cn;
  // cell_src[slot]: the location whose previous cell tap t of location n reads in (6) (replicate
  // padding in each dimension).
  std::vector<int64_t> cell_src;
  // The slots whose tap reads hidden location j (Hcat row j + 1, in 3D Hcat[p1 + 1, p2 + 1]):
  // hidden_slots[hidden_off[j] .. hidden_off[j + 1]), in tap order.
  std::vector<int64_t> hidden_off, hidden_slots;
  // The slots whose tap reads the input row (Hcat row 0, in 3D Hcat[0, 0]), in tap order.
  std::vector<int64_t> input_slots;
  // The slots whose tap reads zero (outside the state, or the zero part of Hcat's row / column 0).
  std::vector<int64_t> zero_slots;
  // Location n's taps that do not read zero, as ranges of X's row (k = tap * M + channel): pairs
  // tap_segs[2e], tap_segs[2e + 1] for e in [seg_off[n], seg_off[n + 1]).
  std::vector<int64_t> seg_off, tap_segs;
  // The slots whose memory convolution reads location j's cell: cell_users[cell_off[j] .. cell_off[j + 1]),
  // in slot order.
  std::vector<int64_t> cell_off, cell_users;

  bool small_steps() const;
  // Rows of one step handed to one thread (at::parallel_for's grain): all B*N rows (the step runs on
  // the calling thread) for small steps, else one block per thread.
  int64_t row_grain() const { return small_steps() ? B * N : (B * N + at::get_num_threads() - 1) / at::get_num_threads(); }
};

// Below this many FLOPs in a step's convolution product the step runs on one thread: the fork/join
// (about 2 us) costs as much as splitting saves. Training steps on this project's 2-core machine,
// split against one thread: 1.3-1.4x faster at 0.4-0.8 MFLOP per step (B = 2, 4, M = 32, P = 8;
// B = 1, M = 64, P = 8), 1.08x at 0.2 MFLOP (B = 1, M = 32, P = 8), 0.83-1.06x below 0.1 MFLOP.
constexpr double kParallelStepFlops = 2e5;

bool Dims::small_steps() const { return 2.0 * double(B * N) * double(KK * M) * double(G) < kParallelStepFlops; }

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

// Hcat index of tap k of location p along one dimension: 0 the input row or column, 1..P the hidden
// locations 0..P-1, anything else reads zero.
inline int64_t hcat_index(const Dims& d, int64_t p, int64_t k) { return p + 1 - d.d_up + k; }
inline int64_t clamp_location(const Dims& d, int64_t i) { return std::min(std::max(i, int64_t(0)), d.P - 1); }

// The index tables of Dims. What each slot reads: -1 the input row, -2 zero, j >= 0 hidden location j.
void build_tables(Dims& d) {
  const int64_t N = d.N, KK = d.KK, P = d.P, K = d.K;
  std::vector<int64_t> reads(static_cast<size_t>(N * KK));
  d.cell_src.assign(static_cast<size_t>(N * KK), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < KK; ++t) {
      int64_t src, cell;
      if (d.dims == 2) {
        const int64_t i = hcat_index(d, n, t);
        src = i == 0 ? -1 : (i >= 1 && i <= P ? i - 1 : -2);
        cell = clamp_location(d, n - d.d_up + t);
      } else {  // Hcat[0, 0] is the input; the rest of row 0 and column 0 is zero
        const int64_t p1 = n / P, p2 = n % P, k1 = t / K, k2 = t % K;
        const int64_t i1 = hcat_index(d, p1, k1), i2 = hcat_index(d, p2, k2);
        const bool hidden = i1 >= 1 && i1 <= P && i2 >= 1 && i2 <= P;
        src = (i1 == 0 && i2 == 0) ? -1 : (hidden ? (i1 - 1) * P + (i2 - 1) : -2);
        cell = clamp_location(d, p1 - d.d_up + k1) * P + clamp_location(d, p2 - d.d_up + k2);
      }
      reads[n * KK + t] = src;
      d.cell_src[n * KK + t] = cell;
    }
  }
  // Inverse maps as compressed lists. Tap-major for the hidden rows and the input (in 2D the slots of
  // one hidden row come in tap order), slot order for the cells.
  d.hidden_off.assign(static_cast<size_t>(N + 1), 0);
  d.cell_off.assign(static_cast<size_t>(N + 1), 0);
  for (int64_t slot = 0; slot < N * KK; ++slot) {
    if (reads[slot] >= 0) ++d.hidden_off[reads[slot] + 1];
    ++d.cell_off[d.cell_src[slot] + 1];
  }
  for (int64_t j = 0; j < N; ++j) {
    d.hidden_off[j + 1] += d.hidden_off[j];
    d.cell_off[j + 1] += d.cell_off[j];
  }
  d.hidden_slots.assign(static_cast<size_t>(d.hidden_off[N]), 0);
  d.cell_users.assign(static_cast<size_t>(N * KK), 0);
  d.input_slots.clear();
  d.zero_slots.clear();
  for (int64_t slot = 0; slot < N * KK; ++slot)
    if (reads[slot] == -2) d.zero_slots.push_back(slot);
  d.seg_off.assign(static_cast<size_t>(N + 1), 0);
  d.tap_segs.clear();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < KK;) {
      if (reads[n * KK + t] == -2) { ++t; continue; }
      int64_t end = t;
      while (end < KK && reads[n * KK + end] != -2) ++end;
      d.tap_segs.push_back(t * d.M);
      d.tap_segs.push_back(end * d.M);
      t = end;
    }
    d.seg_off[n + 1] = static_cast<int64_t>(d.tap_segs.size() / 2);
  }
  std::vector<int64_t> fill(d.hidden_off.begin(), d.hidden_off.end() - 1);
  for (int64_t t = 0; t < KK; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t slot = n * KK + t;
      if (reads[slot] >= 0) d.hidden_slots[fill[reads[slot]]++] = slot;
      else if (reads[slot] == -1) d.input_slots.push_back(slot);
    }
  }
  fill.assign(d.cell_off.begin(), d.cell_off.end() - 1);
  for (int64_t slot = 0; slot < N * KK; ++slot) d.cell_users[fill[d.cell_src[slot]]++] = slot;
}

// Sizes from the inputs: dims from weight_h's rank (checked by check_inputs).
Dims make_dims(const at::Tensor& x, const at::Tensor& weight_h, int64_t tensor_size, bool mem_conv, bool cn) {
  Dims d{};
  d.dims = weight_h.dim() - 1;
  d.B = x.size(0);
  d.T = x.size(1);
  d.R = x.size(2);
  d.K = weight_h.size(0);
  d.M = weight_h.size(-2);
  d.G = weight_h.size(-1);
  d.P = tensor_size;
  d.N = d.dims == 3 ? d.P * d.P : d.P;
  d.KK = d.dims == 3 ? d.K * d.K : d.K;
  d.d_up = d.K / 2;
  d.L = (d.P + d.d_up - 1) / d.d_up;
  d.S = d.T + d.L - 1;
  d.mem_conv = mem_conv;
  d.cn = cn;
  build_tables(d);
  return d;
}

// The state's shape: [B, P, M], or [B, P, P, M] for the 3D tLSTM.
std::vector<int64_t> state_shape(const Dims& d) {
  if (d.dims == 3) return {d.B, d.P, d.P, d.M};
  return {d.B, d.P, d.M};
}

// Channel-normalization parameters, in the accumulation dtype.
template <typename acc_t>
struct CnParams {
  const acc_t* a_weight = nullptr;  // [4M]
  const acc_t* a_bias = nullptr;    // [4M]
  const acc_t* c_weight = nullptr;  // [M]
  const acc_t* c_bias = nullptr;    // [M]
};

// Everything steps (4)-(8) compute for one (b, n) row; the backward recomputes it from A.
template <typename acc_t>
struct RowState {
  std::vector<acc_t> buf;
  acc_t *pre, *gate, *norm_a, *q, *c_conv, *c_new, *norm_c, *tanh_c, *h;
  acc_t rstd_a = 0, rstd_c = 0;

  explicit RowState(const Dims& d) : buf(static_cast<size_t>(d.G + 4 * d.M + 4 * d.M + d.KK + 5 * d.M + 8)) {
    acc_t* ptr = buf.data();
    pre = ptr;     ptr += d.G;      // [G] pre-activations, gates after CN
    gate = ptr;    ptr += 4 * d.M;  // [4M] g, i, f, o after tanh / sigmoid
    norm_a = ptr;  ptr += 4 * d.M;  // [4M] normalized gate pre-activations (CN)
    q = ptr;       ptr += d.KK;     // [KK] memory kernel
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

// Steps (4)-(8) for row (b, n): a_row is A[b, n] ([G], the product without bias), bias bias_h in
// the accumulation dtype, c_prev the sample's previous cells [N, M].
template <typename scalar_t, typename acc_t>
inline void row_forward(const Dims& d, const scalar_t* a_row, const acc_t* bias, const acc_t* c_prev, int64_t n,
                        const CnParams<acc_t>& cn, RowState<acc_t>& st) {
  using A = Act<acc_t>;
  const int64_t M = d.M, M4 = 4 * d.M, KK = d.KK;
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
  if (d.mem_conv) {  // (5) softmax over the KK taps, (6) memory-cell convolution with replicate padding
    const acc_t* logits = pre + M4;
    const int64_t* cells = d.cell_src.data() + n * KK;
    acc_t top = logits[0];
    for (int64_t k = 1; k < KK; ++k) top = std::max(top, logits[k]);
    acc_t total = 0;
    for (int64_t k = 0; k < KK; ++k) total += (st.q[k] = A::exp(logits[k] - top));
    for (int64_t k = 0; k < KK; ++k) st.q[k] /= total;
    for (int64_t m = 0; m < M; ++m) st.c_conv[m] = 0;
    for (int64_t k = 0; k < KK; ++k) {
      const acc_t qk = st.q[k];
      const acc_t* src = c_prev + cells[k] * M;
      for (int64_t m = 0; m < M; ++m) st.c_conv[m] += qk * src[m];
    }
  } else {
    std::copy(c_prev + n * M, c_prev + (n + 1) * M, st.c_conv);
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

// Gradients of steps (4)-(8) for row (b, n), given st from row_forward and the gradients dh of
// h_new and dc of c_new (dc is used as scratch). Writes dpre [G], the gradient of A's row; dcv [M],
// of Cconv; q_out [KK], the memory kernel the cell-gradient gather needs; and, with CN, adds this
// step's parameter gradients to cn_acc [a_weight 4M | a_bias 4M | c_weight M | c_bias M].
template <typename acc_t>
inline void row_backward(const Dims& d, const acc_t* c_prev, int64_t n, const CnParams<acc_t>& cn,
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
    const int64_t* cells = d.cell_src.data() + n * d.KK;
    acc_t weighted = 0;
    for (int64_t k = 0; k < d.KK; ++k) {
      const acc_t* __restrict src = c_prev + cells[k] * M;
      acc_t sum = 0;
      for (int64_t m = 0; m < M; ++m) sum += dcv[m] * src[m];
      dq[k] = sum;
      weighted += st.q[k] * sum;
      q_out[k] = st.q[k];
    }
    for (int64_t k = 0; k < d.KK; ++k) dq[k] = st.q[k] * (dq[k] - weighted);
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

// Shapes shared by the forward and the backward. weight_h's rank says which model: [K, M, G] the
// tLSTM, [K, K, M, G] the 3D tLSTM.
void check_inputs(const at::Tensor& x, const at::Tensor& weight_x, const at::Tensor& weight_h, const at::Tensor& bias_h,
                  int64_t tensor_size, bool mem_conv) {
  TORCH_CHECK(x.device().is_cpu(), "the cpp backend runs on CPU tensors, got x on ", x.device());
  TORCH_CHECK(x.dim() == 3, "x must be [B, T, R], got ", x.sizes());
  TORCH_CHECK(weight_h.dim() == 3 || weight_h.dim() == 4,
              "weight_h must be [K, M, G] (tLSTM) or [K, K, M, G] (3D tLSTM), got ", weight_h.sizes());
  const bool three_d = weight_h.dim() == 4;
  const int64_t K = weight_h.size(0), M = weight_h.size(-2), G = weight_h.size(-1);
  const int64_t taps = three_d ? K * K : K, want_g = 4 * M + (mem_conv ? taps : 0);
  if (three_d) {
    TORCH_CHECK(K >= 2 && weight_h.size(1) == K && G == want_g, "weight_h must be [K, K, M, G] with K >= 2 and G = 4M",
                mem_conv ? " + K*K" : "", " (3D tLSTM, mem_conv=", mem_conv ? "True" : "False", "): [", K, ", ", K,
                ", ", M, ", ", want_g, "] for K = ", K, ", M = ", M, "; got ", weight_h.sizes());
  } else {
    TORCH_CHECK(K >= 2 && G == want_g, "weight_h must be [K, M, G] with K >= 2 and G = 4M", mem_conv ? " + K" : "",
                " (mem_conv=", mem_conv ? "True" : "False", "): [", K, ", ", M, ", ", want_g, "] for K = ", K,
                ", M = ", M, "; got ", weight_h.sizes());
  }
  TORCH_CHECK(bias_h.dim() == 1 && bias_h.size(0) == G, "bias_h must be [G] = [", G, "], got ", bias_h.sizes());
  TORCH_CHECK(weight_x.dim() == 2 && weight_x.size(0) == x.size(2) && weight_x.size(1) == M,
              "weight_x must be [R, M] = [", x.size(2), ", ", M, "], got ", weight_x.sizes());
  TORCH_CHECK(tensor_size >= 1, "tensor_size must be >= 1, got ", tensor_size);
}

// A state tensor (h0, c0, or the gradient of the final h, c) must have the state's shape.
void check_state(const char* name, const at::Tensor& t, const Dims& d) {
  const std::vector<int64_t> want = state_shape(d);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(want), name, " must be ", d.dims == 3 ? "[B, P, P, M]" : "[B, P, M]", " = ",
              at::IntArrayRef(want), ", got ", t.sizes());
}

// ---- thin matrix products ------------------------------------------------------------------------
// A step's products have few rows (B*N, split between threads) against a weight matrix that stays
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
TLSTM_INLINE void thin_kernel(const float* A, int64_t lda, const float* panel, const int64_t* segs, int64_t nseg,
                              float* C, int64_t ldc, int64_t cols) {
  // segs: nseg ranges [segs[2i], segs[2i + 1]) of k; the terms outside them are known to be zero.
  constexpr int U = MR <= 2 ? 2 : 1;
  __m256 acc[U][MR][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < MR; ++r) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_ps();
  for (int64_t sg = 0; sg < nseg; ++sg) {
    const int64_t k_end = segs[2 * sg + 1];
    int64_t k = segs[2 * sg];
    for (; k + U <= k_end; k += U) {
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
    for (; k < k_end; ++k) {
      const __m256 b0 = _mm256_loadu_ps(panel + k * kPanel);
      const __m256 b1 = _mm256_loadu_ps(panel + k * kPanel + 8);
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
        acc[0][r][0] = _mm256_fmadd_ps(a, b0, acc[0][r][0]);
        acc[0][r][1] = _mm256_fmadd_ps(a, b1, acc[0][r][1]);
      }
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
// Rows [0, n) of C (ldc apart) against panel j, A's rows lda apart, k restricted to segs.
inline void thin_panel(const float* A, int64_t lda, int64_t n, const PackedWeight& w, int64_t j, const int64_t* segs,
                       int64_t nseg, float* C, int64_t ldc) {
  const float* panel = w.data + j * w.Kd * kPanel;
  const int64_t cols = std::min(kPanel, w.N - j * kPanel);
  const int64_t blocks = (n + 5) / 6;
  int64_t row = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t mr = n / blocks + (blk < n % blocks ? 1 : 0);
    const float* a = A + row * lda;
    float* c = C + row * ldc + j * kPanel;
    switch (mr) {
      case 1: thin_kernel<1>(a, lda, panel, segs, nseg, c, ldc, cols); break;
      case 2: thin_kernel<2>(a, lda, panel, segs, nseg, c, ldc, cols); break;
      case 3: thin_kernel<3>(a, lda, panel, segs, nseg, c, ldc, cols); break;
      case 4: thin_kernel<4>(a, lda, panel, segs, nseg, c, ldc, cols); break;
      case 5: thin_kernel<5>(a, lda, panel, segs, nseg, c, ldc, cols); break;
      default: thin_kernel<6>(a, lda, panel, segs, nseg, c, ldc, cols); break;
    }
    row += mr;
  }
}

void thin_gemm(const float* A, int64_t lda, int64_t n, const PackedWeight& w, float* C, int64_t ldc) {
  const int64_t all[2] = {0, w.Kd};
  for (int64_t j = 0; j < w.panels; ++j) thin_panel(A, lda, n, w, j, all, 1, C, ldc);
}

// Location-split products (Dims::by_location): the rows of locations [n0, n1), all B samples each
// (row b * N + n), against the packed weight, skipping the taps that read zero.
// Forward, A[rows] = X[rows] W: only the k (= tap * M + channel) of location n's nonzero taps.
void thin_gemm_locations_fwd(const Dims& d, const float* X, int64_t n0, int64_t n1, const PackedWeight& w, float* A) {
  const int64_t KM = d.KK * d.M, lda = d.N * KM, ldc = d.N * d.G;
  for (int64_t j = 0; j < w.panels; ++j)
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t* segs = d.tap_segs.data() + 2 * d.seg_off[n];
      thin_panel(X + n * KM, lda, d.B, w, j, segs, d.seg_off[n + 1] - d.seg_off[n], A + n * d.G, ldc);
    }
}

// Backward, dX[rows] = dA[rows] W^T: only the column panels that hold location n's nonzero taps
// (the other columns of dX are never read).
void thin_gemm_locations_bwd(const Dims& d, const float* dA, int64_t n0, int64_t n1, const PackedWeight& wt, float* dX) {
  const int64_t KM = d.KK * d.M, lda = d.N * d.G, ldc = d.N * KM;
  const int64_t all[2] = {0, wt.Kd};
  for (int64_t n = n0; n < n1; ++n) {
    int64_t next = 0;  // first panel not yet done for this location
    for (int64_t e = d.seg_off[n]; e < d.seg_off[n + 1]; ++e) {
      const int64_t first = std::max(next, d.tap_segs[2 * e] / kPanel);
      const int64_t last = (d.tap_segs[2 * e + 1] + kPanel - 1) / kPanel;
      for (int64_t j = first; j < last; ++j) thin_panel(dA + n * d.G, lda, d.B, wt, j, all, 1, dX + n * KM, ldc);
      next = std::max(next, last);
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

// Whether a step splits by location instead of by row (float32 with the thin kernel, B from 4 to
// 64, at least 1/8 of the taps reading zero): each thread takes a block of locations, all B samples
// of each (rows b * N + n), so that every product it runs has one location's taps and skips those
// that read zero (thin_gemm_locations_*). Training at B = 16 on this project's 2-core machine: in
// the 3D tLSTM at M = 64, P = 4, K = 3 (31% of the taps read zero; the row split's 128 rows per
// thread went to MKL) the step products take 40% less time; in the tLSTM at M = 128, P = 8 (4%)
// the location split made no measurable difference, so it keeps the row split.
template <typename scalar_t>
bool by_location(const Dims& d) {
  return TLSTM_THIN_GEMM && std::is_same_v<scalar_t, float> && !d.small_steps() && d.B >= 4 && d.B <= 64 &&
         static_cast<int64_t>(d.zero_slots.size()) * 8 >= d.N * d.KK && d.N >= at::get_num_threads();
}

// Locations per thread for a location-split step.
inline int64_t location_grain(const Dims& d) { return (d.N + at::get_num_threads() - 1) / at::get_num_threads(); }

// Row i of a thread's share [lo, hi): rows lo + i (row split), or location lo + i / B of sample
// i % B (location split). count_rows: how many rows that share has.
inline int64_t share_row(const Dims& d, bool by_loc, int64_t lo, int64_t i) {
  return by_loc ? (i % d.B) * d.N + lo + i / d.B : lo + i;
}
inline int64_t share_rows(const Dims& d, bool by_loc, int64_t lo, int64_t hi) { return by_loc ? (hi - lo) * d.B : hi - lo; }

template <typename scalar_t>
void location_product_fwd(const Dims& d, const scalar_t* X, int64_t n0, int64_t n1, const PackedWeight& w, scalar_t* A) {
#if TLSTM_THIN_GEMM
  if constexpr (std::is_same_v<scalar_t, float>) {
    thin_gemm_locations_fwd(d, X, n0, n1, w, A);
    return;
  }
#endif
  TORCH_CHECK(false, "location-split products need float32 and AVX2");
}

template <typename scalar_t>
void location_product_bwd(const Dims& d, const scalar_t* dA, int64_t n0, int64_t n1, const PackedWeight& wt, scalar_t* dX) {
#if TLSTM_THIN_GEMM
  if constexpr (std::is_same_v<scalar_t, float>) {
    thin_gemm_locations_bwd(d, dA, n0, n1, wt, dX);
    return;
  }
#endif
  TORCH_CHECK(false, "location-split products need float32 and AVX2");
}

// ---- forward ------------------------------------------------------------------------------------
// Returns y [B, T, M], h and c (the state's shape: [B, P, M], or [B, P, P, M]) and, with keep_state,
// X, A, C for the backward.
std::vector<at::Tensor> forward(const at::Tensor& x_in, const at::Tensor& h0_in, const at::Tensor& c0_in,
                                const at::Tensor& weight_x, const at::Tensor& bias_x, const at::Tensor& weight_h,
                                const at::Tensor& bias_h, const std::optional<at::Tensor>& cn_a_weight,
                                const std::optional<at::Tensor>& cn_a_bias, const std::optional<at::Tensor>& cn_c_weight,
                                const std::optional<at::Tensor>& cn_c_bias, int64_t tensor_size, bool mem_conv,
                                bool keep_state) {
  check_inputs(x_in, weight_x, weight_h, bias_h, tensor_size, mem_conv);
  const Dims d = make_dims(x_in, weight_h, tensor_size, mem_conv, cn_a_weight.has_value());
  check_state("h0", h0_in, d);
  check_state("c0", c0_in, d);
  TORCH_CHECK(bias_x.dim() == 1 && bias_x.size(0) == d.M, "bias_x must be [M] = [", d.M, "], got ", bias_x.sizes());
  const SmallStepThreadGuard threads(d);
  const at::Tensor x = x_in.contiguous();
  const auto opts = x.options();
  std::vector<at::Tensor> outputs;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "tlstm_fused_cpu_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = opts.dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t B = d.B, T = d.T, M = d.M, N = d.N, KK = d.KK, G = d.G, S = d.S, L = d.L;
    const int64_t KM = KK * M, NKM = N * KK * M;  // one row of X; one sample's rows
    std::vector<at::Tensor> keep;
    const CnParams<acc_t> cn = cn_params<acc_t>(d, keep, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias);
    // Detached: the products run on at::parallel_for threads, where grad mode is on by default.
    const at::Tensor w2d = weight_h.detach().contiguous().view({KM, G});  // [KK*M, G], rows tap-major
    const at::Tensor bh = bias_h.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* bh_ptr = bh.data_ptr<acc_t>();

    // (1) the input projection of all T steps as one product; padding steps read bias_x.
    const at::Tensor z = at::addmm(bias_x, x.view({B * T, d.R}), weight_x).view({B, T, M});  // [B, T, M]
    const at::Tensor bx = bias_x.contiguous();

    // Without a backward, two X slices and C slices (ping-pong) and one A slice suffice.
    const int64_t nx = keep_state ? S : 2, na = keep_state ? S : 1, nc = keep_state ? S + 1 : 2;
    // Every slot of X is written each step except those reading zero (zero_slots), which are zeroed
    // once per slice below: filling the whole buffer with zeros first would be a wasted pass.
    at::Tensor X = buffer_cache().empty({nx, B, N, KK, M}, opts);
    at::Tensor Abuf = buffer_cache().empty({na, B * N, G}, opts);
    at::Tensor C = buffer_cache().empty({nc, B, N, M}, acc_opts);
    at::Tensor y = at::empty({B, T, M}, opts);
    at::Tensor h_out = at::empty(state_shape(d), opts);
    auto xs = [&](int64_t s) { return keep_state ? s : s % 2; };
    auto cs = [&](int64_t s) { return keep_state ? s : s % 2; };
    scalar_t* X_ptr = X.data_ptr<scalar_t>();
    scalar_t* Abuf_ptr = Abuf.data_ptr<scalar_t>();
    const scalar_t* z_ptr = z.data_ptr<scalar_t>();
    const scalar_t* bx_ptr = bx.data_ptr<scalar_t>();
    const int64_t* input_slots = d.input_slots.data();
    const int64_t n_input_slots = static_cast<int64_t>(d.input_slots.size());
    const int64_t* hidden_off = d.hidden_off.data();
    const int64_t* hidden_slots = d.hidden_slots.data();

    // The projected input (Hcat row 0; Hcat[0, 0] in 3D) goes to the slots that read it.
    const int64_t* zero_slots = d.zero_slots.data();
    const int64_t n_zero_slots = static_cast<int64_t>(d.zero_slots.size());
    auto zero_slice = [&](int64_t slice) {
      scalar_t* Xs = X_ptr + slice * B * NKM;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t e = 0; e < n_zero_slots; ++e) std::fill_n(Xs + b * NKM + zero_slots[e] * M, M, scalar_t(0));
    };
    auto write_input_row = [&](int64_t s) {
      scalar_t* Xs = X_ptr + xs(s) * B * NKM;
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* src = s < T ? z_ptr + (b * T + s) * M : bx_ptr;
        for (int64_t e = 0; e < n_input_slots; ++e) std::copy(src, src + M, Xs + b * NKM + input_slots[e] * M);
      }
    };
    // Hidden row j of a sample goes to the slots that read it (in 2D: location j + d_up - k, tap k).
    auto write_hidden_row = [&](scalar_t* Xs_b, int64_t j, const acc_t* h) {
      for (int64_t e = hidden_off[j]; e < hidden_off[j + 1]; ++e) {
        scalar_t* dst = Xs_b + hidden_slots[e] * M;
        for (int64_t m = 0; m < M; ++m) dst[m] = static_cast<scalar_t>(h[m]);
      }
    };

    {  // initial state: h0 into X[0], c0 into C[0]
      const at::Tensor h0 = h0_in.to(x.scalar_type()).contiguous();
      const at::Tensor h0_acc = h0.to(acc_opts.dtype());
      C.select(0, 0).copy_(c0_in.reshape({B, N, M}));
      const acc_t* h0p = h0_acc.data_ptr<acc_t>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < N; ++j) write_hidden_row(X_ptr + b * NKM, j, h0p + (b * N + j) * M);
    }
    if (keep_state) {
      at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
          zero_slice(s);
          write_input_row(s);
        }
      });
    } else {
      for (int64_t slice = 0; slice < nx; ++slice) zero_slice(slice);
    }

    scalar_t* y_ptr = y.data_ptr<scalar_t>();
    scalar_t* hout_ptr = h_out.data_ptr<scalar_t>();
    acc_t* C_ptr = C.data_ptr<acc_t>();
    const bool by_loc = by_location<scalar_t>(d);
    const int64_t grain = by_loc ? location_grain(d) : d.row_grain();
    PackedWeight packed;
    if (by_loc || use_thin_gemm<scalar_t>(grain))
      packed = pack_weight(reinterpret_cast<const float*>(w2d.data_ptr()), KM, G, G, 1);
    const PackedWeight* packed_ptr = packed.data ? &packed : nullptr;
    for (int64_t s = 0; s < S; ++s) {
      if (!keep_state) write_input_row(s);
      scalar_t* A_ptr = Abuf_ptr + (keep_state ? s : 0) * B * N * G;  // A[s], [B*N, G]
      const scalar_t* X_s = X_ptr + xs(s) * B * NKM;                     // X[s], [B*N, KK*M]
      const acc_t* c_prev_all = C_ptr + cs(s) * B * N * M;
      acc_t* c_next_all = C_ptr + cs(s + 1) * B * N * M;
      scalar_t* X_next = X_ptr + xs(s + 1) * B * NKM;
      at::parallel_for(0, by_loc ? N : B * N, grain, [&](int64_t lo, int64_t hi) {
        // Named ranges for the profiler (tlstm-bench profile); free when no profiler is running.
        std::optional<PhaseRange> phase;
        phase.emplace("tlstm_fused::forward_product");
        // (3) the cross-layer convolution for these rows: [rows, KK*M] x [KK*M, G].
        if (by_loc) location_product_fwd<scalar_t>(d, X_s, lo, hi, packed, A_ptr);
        else step_product<scalar_t>(X_s + lo * KM, KM, hi - lo, w2d, packed_ptr, A_ptr + lo * G, G);
        phase.reset();
        phase.emplace("tlstm_fused::forward_pointwise");
        // (4)-(9) for the same rows. They write hidden rows into X[s+1] slots of other blocks' rows,
        // which nothing reads before the next step.
        RowState<acc_t> st(d);
        for (int64_t i = 0, rows = share_rows(d, by_loc, lo, hi); i < rows; ++i) {
          const int64_t r = share_row(d, by_loc, lo, i);
          const int64_t b = r / N, n = r % N;
          row_forward<scalar_t, acc_t>(d, A_ptr + r * G, bh_ptr, c_prev_all + b * N * M, n, cn, st);
          std::copy(st.c_new, st.c_new + M, c_next_all + r * M);
          if (s + 1 < S) write_hidden_row(X_next + b * NKM, n, st.h);
          else for (int64_t m = 0; m < M; ++m) hout_ptr[r * M + m] = static_cast<scalar_t>(st.h[m]);
          if (n == N - 1 && s >= L - 1) {  // (9) the output for input s - (L-1), at the last location
            scalar_t* dst = y_ptr + (b * T + s - (L - 1)) * M;
            for (int64_t m = 0; m < M; ++m) dst[m] = static_cast<scalar_t>(st.h[m]);
          }
        }
      });
    }
    at::Tensor c_out = C.select(0, cs(S)).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true).view(state_shape(d));
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
  check_inputs(x_in, weight_x, weight_h, bias_h, tensor_size, mem_conv);
  TORCH_CHECK(X.is_contiguous() && Abuf.is_contiguous() && C.is_contiguous(), "X, A, C must be the forward's own buffers");
  const Dims d = make_dims(x_in, weight_h, tensor_size, mem_conv, cn_a_weight.has_value());
  check_state("the gradient of h", dh_in, d);
  check_state("the gradient of c", dc_in, d);
  TORCH_CHECK(X.numel() == d.S * d.B * d.N * d.KK * d.M && Abuf.numel() == d.S * d.B * d.N * d.G &&
                  C.numel() == (d.S + 1) * d.B * d.N * d.M,
              "X, A, C must be the forward's own buffers (saved with keep_state) for these sizes");
  const at::Tensor x = x_in.contiguous();
  const auto opts = x.options();
  std::vector<at::Tensor> grads;

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "tlstm_fused_cpu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto acc_opts = opts.dtype(acc_type);
    const int64_t B = d.B, T = d.T, M = d.M, N = d.N, KK = d.KK, G = d.G, S = d.S, L = d.L, M4 = 4 * M;
    const int64_t KM = KK * M, NKM = N * KK * M;  // one row of X; one sample's rows
    std::vector<at::Tensor> keep;
    const CnParams<acc_t> cn = cn_params<acc_t>(d, keep, cn_a_weight, cn_a_bias, cn_c_weight, cn_c_bias);
    // Detached: the products run on at::parallel_for threads, where grad mode is on by default.
    const at::Tensor w2d = weight_h.detach().contiguous().view({KM, G});  // [KK*M, G]
    const at::Tensor w2d_t = w2d.t();                             // [G, KK*M], a view
    const at::Tensor bh = bias_h.to(acc_type).contiguous();
    const acc_t* bh_ptr = bh.data_ptr<acc_t>();

    const at::Tensor dy = dy_in.to(acc_type).contiguous();        // [B, T, M]
    const at::Tensor dh_last = dh_in.to(acc_type).contiguous();   // [B, N, M]
    at::Tensor dc_carry = dc_in.to(acc_type, false, true).contiguous();  // [B, N, M] gradient of the current cell
    at::Tensor dA = buffer_cache().empty({S, B * N, G}, opts);               // gradient of the pre-activations, every step
    at::Tensor dX = at::empty({B * N, KM}, opts);                 // gradient of X[s+1] = dA[s+1] W^T
    at::Tensor dz = at::zeros({B, S, M}, acc_opts);               // gradient of the projected input rows
    at::Tensor dc_conv = at::empty({B, N, M}, acc_opts);          // gradient of Cconv (6), this step
    at::Tensor q_buf = at::empty({B, N, KK}, acc_opts);  // memory kernels, this step
    // CN parameter gradients accumulate per row over the steps (one writer per row: no races, and
    // the sum does not depend on how rows are split between threads), then sum over rows.
    at::Tensor cn_acc = at::zeros({d.cn ? B * N : 0, 10 * M}, acc_opts);

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
    const int64_t* input_slots = d.input_slots.data();
    const int64_t n_input_slots = static_cast<int64_t>(d.input_slots.size());
    const int64_t* hidden_off = d.hidden_off.data();
    const int64_t* hidden_slots = d.hidden_slots.data();
    const int64_t* cell_off = d.cell_off.data();
    const int64_t* cell_users = d.cell_users.data();

    // Gradient of hidden row (b, j) from the slots of X[s+1] that hold it.
    auto gather_dh = [&](int64_t b, int64_t j, acc_t* out) {
      for (int64_t m = 0; m < M; ++m) out[m] = 0;
      for (int64_t e = hidden_off[j]; e < hidden_off[j + 1]; ++e) {
        const scalar_t* src = dX_p + b * NKM + hidden_slots[e] * M;
        for (int64_t m = 0; m < M; ++m) out[m] += static_cast<acc_t>(src[m]);
      }
    };

    const int64_t grain = d.row_grain();
    const bool by_loc = by_location<scalar_t>(d);  // pass 2 only: pass 1 has no product
    const int64_t grain2 = by_loc ? location_grain(d) : grain;
    PackedWeight packed_t;  // W^T [G, KK*M] for dX = dA W^T
    if (by_loc || use_thin_gemm<scalar_t>(grain))
      packed_t = pack_weight(reinterpret_cast<const float*>(w2d.data_ptr()), G, KM, 1, G);
    const PackedWeight* packed_t_ptr = packed_t.data ? &packed_t : nullptr;
    std::optional<SmallStepThreadGuard> step_threads(std::in_place, d);  // the products after the loop use every thread
    for (int64_t s = S - 1; s >= 0; --s) {
      const scalar_t* A_s = A_p + s * B * N * G;  // [B*N, G]
      scalar_t* dA_s = dA_p + s * B * N * G;
      const acc_t* c_prev_all = C_p + s * B * N * M;
      // Pass 1 over rows: recompute (4)-(8), then their gradients back to A and to Cconv.
      at::parallel_for(0, B * N, grain, [&](int64_t r0, int64_t r1) {
        PhaseRange phase("tlstm_fused::backward_pointwise");
        RowState<acc_t> st(d);
        std::vector<acc_t> work(static_cast<size_t>(2 * M + G + M4));
        acc_t* dh = work.data();      // [M] gradient of h_new
        acc_t* dc = dh + M;           // [M] gradient of c_new
        acc_t* dpre = dc + M;         // [G] gradient of A's row
        acc_t* scratch = dpre + G;    // [4M]
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / N, n = r % N;
          const acc_t* c_prev = c_prev_all + b * N * M;
          row_forward<scalar_t, acc_t>(d, A_s + r * G, bh_ptr, c_prev, n, cn, st);
          if (s == S - 1) std::copy(dh_last_p + r * M, dh_last_p + (r + 1) * M, dh);
          else gather_dh(b, n, dh);
          if (n == N - 1 && s >= L - 1) {
            const acc_t* src = dy_p + (b * T + s - (L - 1)) * M;
            for (int64_t m = 0; m < M; ++m) dh[m] += src[m];
          }
          std::copy(dcc_p + r * M, dcc_p + (r + 1) * M, dc);
          row_backward<acc_t>(d, c_prev, n, cn, st, dh, dc, dpre, scratch, dcv_p + r * M, q_p + r * KK,
                              d.cn ? cn_p + r * 10 * M : nullptr);
          scalar_t* dst = dA_s + r * G;
          for (int64_t j = 0; j < G; ++j) dst[j] = static_cast<scalar_t>(dpre[j]);
        }
      });
      // Pass 2 over rows: gradient of the previous cell, gathered from the slots whose memory
      // convolution read it, and the same rows of the gradient of X[s]: dA[s] W^T, [r1 - r0, G] x [G, KK*M].
      // Location split: the columns of dX that hold taps reading zero are not computed (never read).
      at::parallel_for(0, by_loc ? N : B * N, grain2, [&](int64_t lo, int64_t hi) {
        std::optional<PhaseRange> phase;
        phase.emplace("tlstm_fused::backward_product");
        if (by_loc) location_product_bwd<scalar_t>(d, dA_s, lo, hi, packed_t, dX_p);
        else step_product<scalar_t>(dA_s + lo * G, G, hi - lo, w2d_t, packed_t_ptr, dX_p + lo * KM, KM);
        phase.reset();
        phase.emplace("tlstm_fused::backward_pointwise");  // the previous cell's gradient
        for (int64_t i = 0, rows = share_rows(d, by_loc, lo, hi); i < rows; ++i) {
          const int64_t r = share_row(d, by_loc, lo, i);
          const int64_t b = r / N, j = r % N;
          acc_t* out = dcc_p + r * M;
          if (!d.mem_conv) {
            std::copy(dcv_p + r * M, dcv_p + (r + 1) * M, out);
            continue;
          }
          for (int64_t m = 0; m < M; ++m) out[m] = 0;
          for (int64_t e = cell_off[j]; e < cell_off[j + 1]; ++e) {
            const int64_t slot = cell_users[e];  // location slot / KK, tap slot % KK
            const acc_t qk = q_p[b * N * KK + slot];
            const acc_t* src = dcv_p + (b * N + slot / KK) * M;
            for (int64_t m = 0; m < M; ++m) out[m] += qk * src[m];
          }
        }
      });
      // The input-row slots of the gradient of X[s] give dz[s].
      for (int64_t b = 0; b < B; ++b) {
        acc_t* dst = dz_p + (b * S + s) * M;
        for (int64_t e = 0; e < n_input_slots; ++e) {
          const scalar_t* src = dX_p + b * NKM + input_slots[e] * M;
          for (int64_t m = 0; m < M; ++m) dst[m] += static_cast<acc_t>(src[m]);
        }
      }
    }

    step_threads.reset();

    at::Tensor dh0 = at::empty({B, N, M}, acc_opts);
    acc_t* dh0_p = dh0.data_ptr<acc_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < N; ++j) gather_dh(b, j, dh0_p + (b * N + j) * M);

    // The weight gradient over all steps at once: [KK*M, S*B*N] x [S*B*N, G].
    const at::Tensor dA2d = dA.view({S * B * N, G});
    at::Tensor d_weight_h;
    if (std::is_same_v<scalar_t, float> && static_cast<int64_t>(d.zero_slots.size()) * 8 >= N * KK) {
      // Many taps read zero (the 3D tLSTM at P = 4: 31% of X): one product per location and run of
      // nonzero taps, [run, S*B] x [S*B, G], added into the rows of those taps; float32 only, as the
      // partial sums are added in the output dtype.
      at::Tensor dw2d = at::zeros({KM, G}, opts);
      const at::Tensor X3 = X.view({S * B, N, KM}), dA3 = dA.view({S * B, N, G});
      for (int64_t n = 0; n < N; ++n) {
        const at::Tensor Xn = X3.select(1, n), dAn = dA3.select(1, n);  // rows N*KM and N*G apart
        for (int64_t e = d.seg_off[n]; e < d.seg_off[n + 1]; ++e) {
          const int64_t k0 = d.tap_segs[2 * e], len = d.tap_segs[2 * e + 1] - k0;
          dw2d.narrow(0, k0, len).addmm_(Xn.narrow(1, k0, len).t(), dAn);
        }
      }
      d_weight_h = dw2d.view(weight_h.sizes());
    } else {
      d_weight_h = at::mm(X.view({S * B * N, KM}).t(), dA2d).view(weight_h.sizes());
    }
    at::Tensor d_bias_h = dA2d.sum(0, false, acc_type).to(x.scalar_type());
    // (1): the input rows; padding steps (s >= T) only reach bias_x.
    const at::Tensor dz_in = dz.narrow(1, 0, T).to(x.scalar_type()).reshape({B * T, M});  // [B*T, M]
    at::Tensor dx = at::mm(dz_in, weight_x.t()).view({B, T, d.R});
    at::Tensor d_weight_x = at::mm(x.view({B * T, d.R}).t(), dz_in);
    at::Tensor d_bias_x = dz.sum({0, 1}).to(x.scalar_type());
    const std::vector<int64_t> state = state_shape(d);
    grads = {dx, dh0.to(x.scalar_type()).view(state), dc_carry.to(x.scalar_type()).view(state), d_weight_x, d_bias_x,
             d_weight_h, d_bias_h};
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
