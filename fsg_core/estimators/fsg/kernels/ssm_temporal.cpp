// FSG's temporal slow net, fused on the CPU: forward and hand-written backward of the selective SSM over
// every weight coordinate's sequence [e_l, g_{t-k}, ..., g_{t-1}] (FSG_SPEC §4 step 3, §8).
//
// What is fused, per coordinate (the layer token's position 0 is a per-layer constant computed by the
// caller in PyTorch: its conv contribution `tokconv` and the state it leaves `h0`):
//   u_t   = hist[order[t], n] / scale_l                               t = 0..k-1 (history, oldest first)
//   xc_t  = convb + tokconv[l, t] + sum_j taps[:, j] * win_x * u_{t-j}  (depthwise causal conv)
//   x_t   = silu(xc_t);  dtr_t = wx[0] . x_t;  B_t = wx[1:1+S] x_t;  dt_t = softplus(wdt dtr_t + bdt)
//   h_t   = exp(dt_t A) h_{t-1} + dt_t x_t B_t   (h_{-1} = h0[l])
//   y     = C . h_{k-1} + Dp x_{k-1} with C = wx[1+S:] x_{k-1};  z = win_z u_{k-1}
//   out_n = scale_l * wout . (y * silu(z))
// Nothing but the output is stored: the backward recomputes the forward of a tile of 16 coordinates
// (SIMD lanes) and runs the k positions in reverse. Work is split in blocks that never cross a layer;
// every block accumulates its parameter gradients on its own, and blocks are reduced in a fixed order,
// so the result does not depend on the number of threads (bit-identical runs and data-parallel ranks).
//
// float uses polynomial exp / log1p (error bounds in kernels/__init__.py, measured by the tests);
// double uses the C library, for tests of the calculus at 1e-10.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

namespace {

constexpr int V = 16;  // lanes: coordinates processed together (one AVX-512 register of floats)
constexpr int MAX_STATE = 256;   // d_state's bound in FSG.Params
constexpr int MAX_HISTORY = 64;  // history's bound in FSG.Params

// ------------------------------------------------------------------------------------------------ math
// One `Vec<T>` holds the V lanes; GCC's vector extensions compile it to whole registers (one zmm for
// floats with AVX-512, two ymm with AVX2, four xmm on the baseline), so values stay in registers
// instead of round-tripping through lane arrays.
template <typename T>
struct Lanes;
static_assert(V == 16, "the AVX-512 exp below handles one 16-float register per vec");

template <>
struct Lanes<float> {
  typedef float vec __attribute__((vector_size(V * sizeof(float))));
  typedef int32_t ivec __attribute__((vector_size(V * sizeof(int32_t))));
};
template <>
struct Lanes<double> {
  typedef double vec __attribute__((vector_size(V * sizeof(double))));
  typedef int64_t ivec __attribute__((vector_size(V * sizeof(int64_t))));
};
template <typename T>
using Vec = typename Lanes<T>::vec;

template <typename T>
inline Vec<T> splat(T a) {
  return Vec<T>{} + a;
}

template <typename T>
inline Vec<T> load_vec(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
inline T hsum(const Vec<T>& lanes) {
  T acc = 0;
  for (int v = 0; v < V; ++v) acc += lanes[v];  // fixed order
  return acc;
}

template <typename T>
struct Math;

// float64: the C library, lane by lane (the tests check the calculus with it at 1e-10).
template <>
struct Math<double> {
  using vec = Vec<double>;
  static inline vec exp(vec x) {
    for (int v = 0; v < V; ++v) x[v] = std::exp(x[v]);
    return x;
  }
  static inline vec sigmoid(vec x) {
    for (int v = 0; v < V; ++v) x[v] = 1.0 / (1.0 + std::exp(-x[v]));
    return x;
  }
  static inline vec softplus_value(vec x) {
    vec value, slope;
    softplus(x, value, slope);
    return value;
  }
  // torch's softplus (threshold 20) and its slope
  static inline void softplus(vec x, vec& value, vec& slope) {
    for (int v = 0; v < V; ++v) {
      const double e = std::exp(-std::fabs(x[v]));
      value[v] = x[v] > 20.0 ? x[v] : std::max(x[v], 0.0) + std::log1p(e);
      slope[v] = x[v] > 20.0 ? 1.0 : (x[v] >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e));
    }
  }
};

// float32: polynomials on whole vectors, branch-free.
template <>
struct Math<float> {
  using vec = Vec<float>;
  using ivec = Lanes<float>::ivec;
  // Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial (~2 ulp). 0 below -87.3,
  // where the float range ends.
  static inline vec exp(vec x) {
#if defined(__AVX512F__)
    // x = n ln2 + r with n rounded by the hardware; 2^n applied by vscalefps, which flushes the
    // result to 0 below the float range. The clamp keeps r exact for huge |x| (and -inf).
    const __m512 xv = _mm512_min_ps(_mm512_max_ps(reinterpret_cast<const __m512&>(x), _mm512_set1_ps(-104.0f)),
                                    _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xv);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(p, n);
    return reinterpret_cast<const vec&>(res);
#else
    vec xc = x < -87.3f ? splat(-87.3f) : x;
    xc = xc > 88.7f ? splat(88.7f) : xc;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    const vec n = (xc * 1.44269504088896341f + magic) - magic;
    vec r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vec p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const vec poly = p * r * r + r + 1.0f;
    const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
    const vec scale = reinterpret_cast<const vec&>(bits);
    return x < -87.3f ? splat(0.0f) : poly * scale;
#endif
  }
  static inline vec sigmoid(vec x) { return 1.0f / (1.0f + exp(-x)); }
  // log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: the series to s^15 leaves a
  // relative error below 1e-8, and no 1 + e is rounded (a small e keeps its relative precision).
  static inline vec log1p_series(vec s) {
    const vec s2 = s * s;
    vec p = splat(1.0f / 15.0f);
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
  }
  // One division gives both 1 / (1 + e) (the slope) and e / (2 + e) (for log1p): q = 1 / ((1+e)(2+e)).
  static inline void softplus(vec x, vec& value, vec& slope) {
    const vec ax = x < 0.0f ? -x : x;
    const vec e = exp(-ax);
    const vec q = 1.0f / ((1.0f + e) * (2.0f + e));
    const vec inv = (2.0f + e) * q;
    const vec pos = x > 0.0f ? x : splat(0.0f);
    value = x > 20.0f ? x : pos + log1p_series(e * (1.0f + e) * q);
    slope = x > 20.0f ? splat(1.0f) : (x >= 0.0f ? inv : e * inv);
  }
  // softplus alone (the forward needs no slope): one division.
  static inline vec softplus_value(vec x) {
    const vec ax = x < 0.0f ? -x : x;
    const vec e = exp(-ax);
    const vec pos = x > 0.0f ? x : splat(0.0f);
    return x > 20.0f ? x : pos + log1p_series(e / (2.0f + e));
  }
};

// ------------------------------------------------------------------------------------------- parameters
template <typename T>
struct Weights {
  const T* win_x;    // (D)
  const T* win_z;    // (D)
  const T* taps;     // (D, dconv): taps[d * dconv + j] weighs x_{t-j}
  const T* convb;    // (D)
  const T* wx;       // (1 + 2S, D): dt-rank row, then B rows, then C rows
  const T* wdt;      // (D)
  const T* bdt;      // (D)
  const T* A;        // (D, S), negative
  const T* Dp;       // (D)
  const T* wout;     // (D)
  const T* tokconv;  // (layers, k, D)
  const T* h0;       // (layers, D, S)
  int64_t D, S, dconv, k;
};

// Offsets of each gradient in a flat block accumulator; tokconv and h0 are the block's layer's.
struct Layout {
  int64_t win_x, win_z, taps, convb, wx, wdt, bdt, A, Dp, wout, shared, tok, h0, total;
  Layout(int64_t D, int64_t S, int64_t dconv, int64_t k) {
    win_x = 0;
    win_z = win_x + D;
    taps = win_z + D;
    convb = taps + D * dconv;
    wx = convb + D;
    wdt = wx + (1 + 2 * S) * D;
    bdt = wdt + D;
    A = bdt + D;
    Dp = A + D * S;
    wout = Dp + D;
    shared = wout + D;  // end of the parameters shared by every layer
    tok = shared;
    h0 = tok + k * D;
    total = h0 + D * S;
  }
};

// ----------------------------------------------------------------------------------------------- a tile
// V coordinates of one layer, one lane each. DC, SC, KC: d_inner, d_state and k when known at compile
// time (the presets), 0 when read at run time; the code is the same.
template <typename T, int DC, int SC, int KC>
struct Tile {
  using vec = Vec<T>;
  int64_t D_, S_, k_, dconv;
  // forward values, indexed [t][d], [t][s] or [s]
  std::vector<vec> u, xc, sgx, x, dtr, B, C, dt, sgdt;
  // backward
  std::vector<vec> dx, ddt, dB, dC, dh, hs, aa;
  std::vector<vec> grad;  // lane-wise gradient accumulators, Layout offsets
  vec out;

  Tile(int64_t Dn, int64_t Sn, int64_t kn, int64_t dconv_, int64_t grad_size)
      : D_(Dn), S_(Sn), k_(kn), dconv(dconv_),
        u(kn), xc(kn * Dn), sgx(kn * Dn), x(kn * Dn), dtr(kn), B(kn * Sn), C(Sn), dt(kn * Dn), sgdt(kn * Dn),
        dx(kn * Dn), ddt(kn * Dn), dB(kn * Sn), dC(Sn), dh(Sn), hs((kn + 1) * Sn), aa(kn * Sn), grad(grad_size) {}

#define FSG_SIZES                              \
  const int64_t D = DC ? DC : D_;              \
  const int64_t S = SC ? SC : S_;              \
  const int64_t k = KC ? KC : k_;              \
  (void)D;                                     \
  (void)S;                                     \
  (void)k

  // u for lanes [0, nv) from the history rows (oldest first); 0 in padding lanes.
  void load(const T* hist, const int64_t* order, int64_t N, int64_t n0, int nv, T scale) {
    FSG_SIZES;
    for (int64_t t = 0; t < k; ++t) {
      const T* row = hist + order[t] * N + n0;
      vec raw = vec{};
      if (nv == V)
        raw = load_vec(row);
      else
        for (int v = 0; v < nv; ++v) raw[v] = row[v];
      u[t] = raw / scale;
    }
  }

  // Everything but the scan: conv, SiLU, projections and dt for every position. With `Grad`, also what
  // the backward reads (pre-activations and the slopes of SiLU and softplus).
  template <bool Grad>
  void project(const Weights<T>& w, int64_t layer) {
    FSG_SIZES;
    const T* tok = w.tokconv + layer * k * D;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t taps = std::min<int64_t>(t + 1, dconv);
      for (int64_t d = 0; d < D; ++d) {
        vec acc = splat(w.convb[d] + tok[t * D + d]);
        for (int64_t j = 0; j < taps; ++j) acc += (w.taps[d * dconv + j] * w.win_x[d]) * u[t - j];
        const vec sg = Math<T>::sigmoid(acc);
        if (Grad) {
          xc[t * D + d] = acc;
          sgx[t * D + d] = sg;
        }
        x[t * D + d] = acc * sg;
      }
      // dtr and B: the first 1 + S rows of wx times x_t
      for (int64_t r = 0; r < 1 + S; ++r) {
        const T* row = w.wx + r * D;
        vec acc = vec{};
        for (int64_t d = 0; d < D; ++d) acc += row[d] * x[t * D + d];
        if (r == 0)
          dtr[t] = acc;
        else
          B[t * S + r - 1] = acc;
      }
      for (int64_t d = 0; d < D; ++d) {
        const vec v = w.wdt[d] * dtr[t] + w.bdt[d];
        if (Grad)
          Math<T>::softplus(v, dt[t * D + d], sgdt[t * D + d]);
        else
          dt[t * D + d] = Math<T>::softplus_value(v);
      }
    }
    // C at the last position only
    for (int64_t s = 0; s < S; ++s) {
      const T* row = w.wx + (1 + S + s) * D;
      vec acc = vec{};
      for (int64_t d = 0; d < D; ++d) acc += row[d] * x[(k - 1) * D + d];
      C[s] = acc;
    }
  }

  // The scan of channel d from h0; with `keep`, every state hs[t+1] and decay aa[t] is kept.
  void scan(const Weights<T>& w, int64_t layer, int64_t d, bool keep) {
    FSG_SIZES;
    const T* h0 = w.h0 + (layer * D + d) * S;
    for (int64_t s = 0; s < S; ++s) hs[s] = splat(h0[s]);
    for (int64_t t = 0; t < k; ++t) {
      const vec dtv = dt[t * D + d];
      const vec dtx = dtv * x[t * D + d];
      const vec* prev = keep ? &hs[t * S] : &hs[0];
      vec* next = keep ? &hs[(t + 1) * S] : &hs[0];
      for (int64_t s = 0; s < S; ++s) {
        const vec decay = Math<T>::exp(dtv * w.A[d * S + s]);
        if (keep) aa[t * S + s] = decay;
        next[s] = decay * prev[s] + dtx * B[t * S + s];
      }
    }
  }

  // y and SiLU(z) (with its slope) of channel d after scan().
  void output_terms(const Weights<T>& w, int64_t d, bool keep, vec& y, vec& sz, vec& dsz) {
    FSG_SIZES;
    const vec* hk = keep ? &hs[k * S] : &hs[0];
    y = w.Dp[d] * x[(k - 1) * D + d];
    for (int64_t s = 0; s < S; ++s) y += C[s] * hk[s];
    const vec z = w.win_z[d] * u[k - 1];
    const vec sg = Math<T>::sigmoid(z);
    sz = z * sg;
    dsz = sg * (T(1) + z * (T(1) - sg));
  }

  void forward(const Weights<T>& w, int64_t layer) {
    FSG_SIZES;
    project<false>(w, layer);
    out = vec{};
    for (int64_t d = 0; d < D; ++d) {
      scan(w, layer, d, false);
      vec y, sz, dsz;
      output_terms(w, d, false, y, sz, dsz);
      out += w.wout[d] * y * sz;
    }
  }

  // Adds this tile's gradients, lane-wise, to `grad` (Layout offsets). go: dL/d(out) times scale.
  void backward(const Weights<T>& w, int64_t layer, const vec go, const Layout& L) {
    FSG_SIZES;
    project<true>(w, layer);
    std::fill(dx.begin(), dx.end(), vec{});
    std::fill(dB.begin(), dB.end(), vec{});
    std::fill(dC.begin(), dC.end(), vec{});
    vec* __restrict g = grad.data();
    const vec ul = u[k - 1];
    for (int64_t d = 0; d < D; ++d) {
      scan(w, layer, d, true);
      vec y, sz, dsz;
      output_terms(w, d, true, y, sz, dsz);
      const vec* hk = &hs[k * S];
      const vec dy = go * w.wout[d] * sz;
      const vec xl = x[(k - 1) * D + d];
      g[L.wout + d] += go * y * sz;
      g[L.win_z + d] += go * w.wout[d] * y * dsz * ul;
      g[L.Dp + d] += dy * xl;
      dx[(k - 1) * D + d] += dy * w.Dp[d];
      // Local adjoints (no pointer into them escapes, so they live in registers for the presets).
      vec dh_l[SC ? SC : MAX_STATE], gA_l[SC ? SC : MAX_STATE];
      for (int64_t s = 0; s < S; ++s) {
        dC[s] += dy * hk[s];
        dh_l[s] = dy * C[s];
        gA_l[s] = vec{};
      }
      const T* __restrict Ad = w.A + d * S;
      for (int64_t t = k - 1; t >= 0; --t) {
        const vec dtv = dt[t * D + d];
        const vec xv = x[t * D + d];
        const vec dtx = dtv * xv;
        const vec* __restrict av = &aa[t * S];
        const vec* __restrict bv = &B[t * S];
        const vec* __restrict hp = &hs[t * S];
        vec* __restrict dbv = &dB[t * S];
        vec ddtv = vec{}, dxb = vec{};
        for (int64_t s = 0; s < S; ++s) {
          const vec dhv = dh_l[s];
          const vec dad = dhv * hp[s] * av[s];  // dL/d(dt A) through the decay
          gA_l[s] += dad * dtv;
          ddtv += dad * Ad[s] + dhv * xv * bv[s];
          dxb += dhv * bv[s];
          dbv[s] += dhv * dtx;
          dh_l[s] = dhv * av[s];
        }
        ddt[t * D + d] = ddtv;
        dx[t * D + d] += dxb * dtv;
      }
      for (int64_t s = 0; s < S; ++s) {
        g[L.h0 + d * S + s] += dh_l[s];
        g[L.A + d * S + s] += gA_l[s];
      }
    }
    // dt = softplus(wdt dtr + bdt): d(dtr) per position, wdt and bdt summed over positions
    vec ddtr[KC ? KC : MAX_HISTORY];
    for (int64_t t = 0; t < k; ++t) ddtr[t] = vec{};
    for (int64_t d = 0; d < D; ++d) {
      vec gw = vec{}, gb = vec{};
      for (int64_t t = 0; t < k; ++t) {
        const vec dv = ddt[t * D + d] * sgdt[t * D + d];
        gw += dv * dtr[t];
        gb += dv;
        ddtr[t] += dv * w.wdt[d];
      }
      g[L.wdt + d] += gw;
      g[L.bdt + d] += gb;
    }
    // x feeds dtr (row 0 of wx), B (rows 1..S, every position) and C (rows 1+S.., the last position)
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t r = 0; r < 1 + S; ++r) {
        const T c = w.wx[r * D + d];
        vec gr = vec{};
        for (int64_t t = 0; t < k; ++t) {
          const vec src = r == 0 ? ddtr[t] : dB[t * S + r - 1];
          gr += src * x[t * D + d];
          dx[t * D + d] += src * c;
        }
        g[L.wx + r * D + d] += gr;
      }
      const vec xl = x[(k - 1) * D + d];
      vec dxl = vec{};
      for (int64_t s = 0; s < S; ++s) {
        g[L.wx + (1 + S + s) * D + d] += dC[s] * xl;
        dxl += dC[s] * w.wx[(1 + S + s) * D + d];
      }
      dx[(k - 1) * D + d] += dxl;
    }
    // SiLU, then the conv: taps[d, j] weighs u_{t-j} in xc_t
    for (int64_t d = 0; d < D; ++d) {
      vec dxc[KC ? KC : MAX_HISTORY];
      vec gcb = vec{};
      for (int64_t t = 0; t < k; ++t) {
        const vec sg = sgx[t * D + d];
        dxc[t] = dx[t * D + d] * sg * (T(1) + xc[t * D + d] * (T(1) - sg));
        gcb += dxc[t];
        g[L.tok + t * D + d] += dxc[t];
      }
      g[L.convb + d] += gcb;
      vec gwin = vec{};
      const int64_t taps = std::min<int64_t>(k, dconv);
      for (int64_t j = 0; j < taps; ++j) {
        vec acc = vec{};
        for (int64_t t = j; t < k; ++t) acc += dxc[t] * u[t - j];
        g[L.taps + d * dconv + j] += acc * w.win_x[d];
        gwin += acc * w.taps[d * dconv + j];
      }
      g[L.win_x + d] += gwin;
    }
  }
#undef FSG_SIZES
};

// ---------------------------------------------------------------------------------------------- driver
struct Block {
  int64_t layer, start, end;
};

// Flush denormals to zero (FTZ and DAZ) in this thread while the kernel runs: decays exp(dt A) and
// states that underflow would otherwise run through the CPU's slow denormal path (measured: the
// paper preset 1.8x slower on inputs whose states underflow). The previous mode is restored.
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Blocks of at most `size` coordinates, never crossing a layer boundary: a function of the layer sizes
// and `size` only, so the reduction order is the same whatever the thread count.
std::vector<Block> make_blocks(const int64_t* layer_start, int64_t layers, int64_t size) {
  std::vector<Block> blocks;
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t s = layer_start[l]; s < layer_start[l + 1]; s += size)
      blocks.push_back({l, s, std::min(s + size, layer_start[l + 1])});
  return blocks;
}

template <typename T>
Weights<T> weights_of(const std::vector<at::Tensor>& p, int64_t k) {
  Weights<T> w;
  w.win_x = p[0].data_ptr<T>();
  w.win_z = p[1].data_ptr<T>();
  w.taps = p[2].data_ptr<T>();
  w.convb = p[3].data_ptr<T>();
  w.wx = p[4].data_ptr<T>();
  w.wdt = p[5].data_ptr<T>();
  w.bdt = p[6].data_ptr<T>();
  w.A = p[7].data_ptr<T>();
  w.Dp = p[8].data_ptr<T>();
  w.wout = p[9].data_ptr<T>();
  w.tokconv = p[10].data_ptr<T>();
  w.h0 = p[11].data_ptr<T>();
  w.D = p[0].size(0);
  w.S = p[7].size(1);
  w.dconv = p[2].size(1);
  w.k = k;
  return w;
}

void check_inputs(const at::Tensor& hist, const at::Tensor& order, const at::Tensor& layer_start,
                  const at::Tensor& scale, const std::vector<at::Tensor>& p) {
  TORCH_CHECK(hist.dim() == 2 && hist.is_contiguous(), "hist must be a contiguous (K, N) tensor");
  TORCH_CHECK(order.scalar_type() == at::kLong && order.dim() == 1 && order.numel() >= 1, "order: (k,) int64");
  TORCH_CHECK(layer_start.scalar_type() == at::kLong && layer_start.dim() == 1, "layer_start: (layers+1,) int64");
  TORCH_CHECK(p.size() == 12, "expected 12 weight tensors");
  TORCH_CHECK(p[7].dim() == 2 && p[7].size(1) <= MAX_STATE, "d_state above 256 is not supported by the kernel");
  TORCH_CHECK(order.numel() <= MAX_HISTORY, "a history longer than 64 is not supported by the kernel");
  const int64_t layers = layer_start.size(0) - 1;
  TORCH_CHECK(scale.numel() == layers, "scale: one value per layer");
  for (const auto& t : p) {
    TORCH_CHECK(t.scalar_type() == hist.scalar_type(), "weights and history must share a dtype");
    TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "weights must be contiguous CPU tensors");
  }
  const int64_t k = order.numel();
  TORCH_CHECK(p[10].size(0) == layers && p[10].size(1) == k, "tokconv: (layers, k, D)");
  TORCH_CHECK(p[11].size(0) == layers, "h0: (layers, D, S)");
  const auto* ls = layer_start.data_ptr<int64_t>();
  TORCH_CHECK(ls[0] == 0 && ls[layers] == hist.size(1), "layer_start must run from 0 to N");
  const auto* o = order.data_ptr<int64_t>();
  for (int64_t t = 0; t < k; ++t) TORCH_CHECK(o[t] >= 0 && o[t] < hist.size(0), "order out of range");
}

template <typename T, int DC, int SC, int KC>
at::Tensor forward_impl(const at::Tensor& hist, const at::Tensor& order, const at::Tensor& layer_start,
                        const at::Tensor& scale, const std::vector<at::Tensor>& p, int64_t block) {
  const int64_t N = hist.size(1), k = order.numel(), layers = layer_start.size(0) - 1;
  const Weights<T> w = weights_of<T>(p, k);
  auto out = at::empty({N}, hist.options());
  const auto blocks = make_blocks(layer_start.data_ptr<int64_t>(), layers, block);
  const T* h = hist.data_ptr<T>();
  const int64_t* o = order.data_ptr<int64_t>();
  const T* sc = scale.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
    const FlushDenormals ftz;
    Tile<T, DC, SC, KC> tile(w.D, w.S, k, w.dconv, 0);
    for (int64_t b = b0; b < b1; ++b) {
      const Block& blk = blocks[b];
      for (int64_t n0 = blk.start; n0 < blk.end; n0 += V) {
        const int nv = static_cast<int>(std::min<int64_t>(V, blk.end - n0));
        tile.load(h, o, N, n0, nv, sc[blk.layer]);
        tile.forward(w, blk.layer);
        for (int v = 0; v < nv; ++v) dst[n0 + v] = tile.out[v] * sc[blk.layer];
      }
    }
  });
  return out;
}

template <typename T, int DC, int SC, int KC>
std::vector<at::Tensor> backward_impl(const at::Tensor& gout, const at::Tensor& hist, const at::Tensor& order,
                                      const at::Tensor& layer_start, const at::Tensor& scale,
                                      const std::vector<at::Tensor>& p, int64_t block) {
  const int64_t N = hist.size(1), k = order.numel(), layers = layer_start.size(0) - 1;
  const Weights<T> w = weights_of<T>(p, k);
  const Layout L(w.D, w.S, w.dconv, k);
  const auto blocks = make_blocks(layer_start.data_ptr<int64_t>(), layers, block);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  auto partial = at::empty({nb, L.total}, hist.options());  // one row per block, reduced in block order
  const T* h = hist.data_ptr<T>();
  const int64_t* o = order.data_ptr<int64_t>();
  const T* sc = scale.data_ptr<T>();
  const T* g = gout.data_ptr<T>();
  T* part = partial.data_ptr<T>();
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    const FlushDenormals ftz;
    Tile<T, DC, SC, KC> tile(w.D, w.S, k, w.dconv, L.total);
    Vec<T> go;
    for (int64_t b = b0; b < b1; ++b) {
      const Block& blk = blocks[b];
      std::fill(tile.grad.begin(), tile.grad.end(), Vec<T>{});
      for (int64_t n0 = blk.start; n0 < blk.end; n0 += V) {
        const int nv = static_cast<int>(std::min<int64_t>(V, blk.end - n0));
        tile.load(h, o, N, n0, nv, sc[blk.layer]);
        // padding lanes get a zero output gradient: every gradient they add is exactly zero
        go = Vec<T>{};
        for (int v = 0; v < nv; ++v) go[v] = g[n0 + v] * sc[blk.layer];
        tile.backward(w, blk.layer, go, L);
      }
      T* row = part + b * L.total;
      for (int64_t i = 0; i < L.total; ++i) row[i] = hsum<T>(tile.grad[i]);
    }
  });
  // Reduce in block order; columns are independent, so they may be split over threads.
  auto shared = at::zeros({L.shared}, hist.options());
  auto per_layer = at::zeros({layers, L.total - L.shared}, hist.options());
  T* sh = shared.data_ptr<T>();
  T* pl = per_layer.data_ptr<T>();
  const int64_t width = L.total - L.shared;
  at::parallel_for(0, L.total, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t b = 0; b < nb; ++b) {
      const T* row = part + b * L.total;
      for (int64_t c = c0; c < c1; ++c) {
        if (c < L.shared)
          sh[c] += row[c];
        else
          pl[blocks[b].layer * width + (c - L.shared)] += row[c];
      }
    }
  });
  const int64_t D = w.D, S = w.S;
  auto piece = [&](int64_t off, std::vector<int64_t> shape) {
    return shared.narrow(0, off, std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<>()))
        .view(shape)
        .clone();
  };
  std::vector<at::Tensor> grads = {
      piece(L.win_x, {D}),
      piece(L.win_z, {D}),
      piece(L.taps, {D, w.dconv}),
      piece(L.convb, {D}),
      piece(L.wx, {1 + 2 * S, D}),
      piece(L.wdt, {D}),
      piece(L.bdt, {D}),
      piece(L.A, {D, S}),
      piece(L.Dp, {D}),
      piece(L.wout, {D}),
      per_layer.narrow(1, 0, k * D).reshape({layers, k, D}).clone(),
      per_layer.narrow(1, k * D, D * S).reshape({layers, D, S}).clone(),
  };
  return grads;
}

template <int D_, int S_, int K_>
struct Sizes {
  static constexpr int D = D_, S = S_, K = K_;
};

// The presets with a full history (lite, paper, and (16, 8)) get compile-time sizes; anything else
// (a custom size, the K-1 warm-up steps) runs the same code with sizes read at run time.
template <typename F>
auto dispatch_sizes(const std::vector<at::Tensor>& p, int64_t k, F&& run) {
  const int64_t D = p[0].size(0), S = p[7].size(1);
  if (k == 5 && D == 8 && S == 4) return run(Sizes<8, 4, 5>{});
  if (k == 5 && D == 16 && S == 8) return run(Sizes<16, 8, 5>{});
  if (k == 5 && D == 100 && S == 16) return run(Sizes<100, 16, 5>{});
  return run(Sizes<0, 0, 0>{});
}

int64_t block_size(int64_t grad_size) {
  // Blocks of 512 coordinates keep the partial buffer small for `lite`; wider nets (paper: ~8.7k
  // gradient values per block) get larger blocks so that it stays within a few MB. 16-aligned.
  return grad_size <= 1024 ? 512 : 2048;
}

at::Tensor ssm_forward(const at::Tensor& hist, const at::Tensor& order, const at::Tensor& layer_start,
                       const at::Tensor& scale, std::vector<at::Tensor> p) {
  check_inputs(hist, order, layer_start, scale, p);
  const Layout L(p[0].size(0), p[7].size(1), p[2].size(1), order.numel());
  const int64_t block = block_size(L.total);
  if (hist.scalar_type() == at::kDouble) return forward_impl<double, 0, 0, 0>(hist, order, layer_start, scale, p, block);
  TORCH_CHECK(hist.scalar_type() == at::kFloat, "float32 or float64 only");
  return dispatch_sizes(p, order.numel(), [&](auto tag) {
    using Tag = decltype(tag);
    return forward_impl<float, Tag::D, Tag::S, Tag::K>(hist, order, layer_start, scale, p, block);
  });
}

std::vector<at::Tensor> ssm_backward(const at::Tensor& gout, const at::Tensor& hist, const at::Tensor& order,
                                     const at::Tensor& layer_start, const at::Tensor& scale,
                                     std::vector<at::Tensor> p) {
  check_inputs(hist, order, layer_start, scale, p);
  TORCH_CHECK(gout.is_contiguous() && gout.numel() == hist.size(1) && gout.scalar_type() == hist.scalar_type(),
              "gout: (N,) contiguous, the history's dtype");
  const Layout L(p[0].size(0), p[7].size(1), p[2].size(1), order.numel());
  const int64_t block = block_size(L.total);
  if (hist.scalar_type() == at::kDouble)
    return backward_impl<double, 0, 0, 0>(gout, hist, order, layer_start, scale, p, block);
  TORCH_CHECK(hist.scalar_type() == at::kFloat, "float32 or float64 only");
  return dispatch_sizes(p, order.numel(), [&](auto tag) {
    using Tag = decltype(tag);
    return backward_impl<float, Tag::D, Tag::S, Tag::K>(gout, hist, order, layer_start, scale, p, block);
  });
}

// The scalar functions the float kernel uses, for the tests' error bounds: 0 exp, 1 sigmoid,
// 2 softplus, 3 softplus' slope (both from the backward's softplus), 4 the forward's softplus.
at::Tensor fast_math(const at::Tensor& x, int64_t which) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "float32, contiguous");
  auto out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  using vec = Vec<float>;
  for (int64_t i = 0; i < x.numel(); i += V) {
    const int64_t n = std::min<int64_t>(V, x.numel() - i);
    vec in = vec{};
    for (int64_t v = 0; v < n; ++v) in[v] = src[i + v];
    vec value, slope;
    Math<float>::softplus(in, value, slope);
    const vec res = which == 0   ? Math<float>::exp(in)
                    : which == 1 ? Math<float>::sigmoid(in)
                    : which == 2 ? value
                    : which == 3 ? slope
                                 : Math<float>::softplus_value(in);
    for (int64_t v = 0; v < n; ++v) dst[i + v] = res[v];
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(fsg_ssm, m) {
  m.def("forward(Tensor hist, Tensor order, Tensor layer_start, Tensor scale, Tensor[] weights) -> Tensor");
  m.def(
      "backward(Tensor gout, Tensor hist, Tensor order, Tensor layer_start, Tensor scale, Tensor[] weights) "
      "-> Tensor[]");
  m.def("fast_math(Tensor x, int which) -> Tensor");
}

TORCH_LIBRARY_IMPL(fsg_ssm, CPU, m) {
  m.impl("forward", &ssm_forward);
  m.impl("backward", &ssm_backward);
  m.impl("fast_math", &fast_math);
}
