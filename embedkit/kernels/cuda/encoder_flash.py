"""Flash-style encoder attention on tensor cores: CUDA C compiled at run time (NVRTC, through CuPy).

Numba exposes no matrix instructions, so this kernel is CUDA C with `mma.sync.m16n8k16` (float16 operands,
float32 accumulation) written as inline PTX; CuPy compiles it with NVRTC on first use and launches it on the
encoder's CuPy stream. No header is included (the float16 conversions and exp2 are PTX too), so it builds
wherever CuPy's NVRTC does.

Layout: qkv [b*T, 3*d] float16 (Q | K | V, heads inside each, the GEMM's product *without* its biases),
bias float32 [3*d], mask int32 [b, T] (1 = token; holes allowed), out [b*T, d] float16. A block takes
`16 * warps` queries of one (sequence, head); each warp owns 16 of them, holding Q (bias added, times
scale * log2 e, rounded to float16) as mma A fragments in registers for the whole key loop. The keys and
values go through shared memory `KEY_TILE` at a time (biases added on the way, V transposed so that its mma B
fragments are single 32-bit loads; rows padded by 16 bytes, which keeps the fragment loads free of bank
conflicts); for each tile a warp computes its 16 x KEY_TILE scores on tensor cores into registers, masks keys
whose mask is 0, runs the online softmax in float32 (row max and sum over the 4 lanes that share a row, one
rescale of the output a tile), turns the probabilities into float16 A fragments in place (the mma's C layout
is its A layout) and multiplies them by V. Scores never leave registers. Key tiles stop at the sequence's last
real token, a block whose queries are all padding only writes zeros, padded query rows come out 0.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

KEY_TILE = 64  # keys per shared-memory tile (a multiple of 16)
WARPS = 4  # warps a block: 16 queries each
FLASH_HEAD_DIMS = (16, 32, 64, 128)  # head widths the kernel takes (multiples of 16)
_LOG2E = 1.4426950408889634

# The device helpers of the flash kernels (this one and the variants kept in benchmarks/kernels/): the float16
# conversions, exp2 and the m16n8k16 mma as inline PTX, in str.format form (braces doubled).
PRELUDE = r"""typedef unsigned short u16;
typedef unsigned int u32;
struct __align__(16) U4 {{ u32 x, y, z, w; }};

__device__ __forceinline__ float h2f(u32 h) {{
  float f; u16 s = (u16)h; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s)); return f;
}}
__device__ __forceinline__ u16 f2h(float f) {{
  u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}}
__device__ __forceinline__ u32 pack2(float lo, float hi) {{
  u32 r; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}}
__device__ __forceinline__ float ex2(float x) {{
  float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}}
__device__ __forceinline__ u32 add_bias2(u32 x, const float* b) {{
  return pack2(h2f(x & 0xffffu) + b[0], h2f(x >> 16) + b[1]);
}}
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {{
  asm volatile(
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, {{%8,%9}}, {{%0,%1,%2,%3}};\n"
    : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
    : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}}

"""

SOURCE = (
    r"""
#define HD {hd}
#define BK {bk}
#define NW {nw}
#define BQ (16 * NW)
#define KP (HD + 8)
#define VP (BK + 8)
"""
    + PRELUDE
    + r"""extern "C" __global__ void __launch_bounds__(32 * NW)
flash_attention(const unsigned long long qkv_p, const unsigned long long bias_p, const unsigned long long mask_p,
                const unsigned long long out_p, const int T, const int n_head, const int n_qt, const float qscale)
{{
  const u16* __restrict__ qkv = (const u16*)qkv_p;
  const float* __restrict__ bias = (const float*)bias_p;
  const int* __restrict__ mask = (const int*)mask_p;
  u16* __restrict__ out = (u16*)out_p;
  __shared__ __align__(16) u16 Ks[BK * KP];
  __shared__ __align__(16) u16 Vt[HD * VP];
  __shared__ int msk[BK];
  __shared__ int kend_s;
  float NEG_INF;
  asm("mov.f32 %0, 0fFF800000;" : "=f"(NEG_INF));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tig = lane & 3;
  const unsigned bid = blockIdx.x;
  const int qt = (int)(bid % (unsigned)n_qt);
  const unsigned rest = bid / (unsigned)n_qt;
  const int h = (int)(rest % (unsigned)n_head);
  const long long seq = (long long)(rest / (unsigned)n_head);
  const int d = n_head * HD;
  const long long ld = 3LL * d;
  const long long row0 = seq * T;
  const int* __restrict__ mrow = mask + row0;
  if (tid == 0) kend_s = 0;
  __syncthreads();
  for (int j = tid; j < T; j += 32 * NW)
    if (mrow[j] != 0) atomicMax(&kend_s, j + 1);
  __syncthreads();
  const int kend = kend_s;  // one past the last real token
  const int qb0 = qt * BQ;
  const int q0 = qb0 + warp * 16;
  const int ra = q0 + g, rb = q0 + g + 8;

  // Q as A fragments: a0 (row g, cols 2t..), a1 (row g+8), a2 (row g, cols 2t+8..), a3 (row g+8, cols 2t+8..)
  u32 qa[HD / 16][4];
  const float* bq = bias + h * HD;
#pragma unroll
  for (int kc = 0; kc < HD / 16; kc++) {{
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {{
      const int c = kc * 16 + hf * 8 + 2 * tig;
      const float b0 = bq[c], b1 = bq[c + 1];
      u32 va = 0, vb = 0;
      if (ra < T) {{
        const u32 x = *(const u32*)(qkv + (row0 + ra) * ld + h * HD + c);
        va = pack2((h2f(x & 0xffffu) + b0) * qscale, (h2f(x >> 16) + b1) * qscale);
      }}
      if (rb < T) {{
        const u32 x = *(const u32*)(qkv + (row0 + rb) * ld + h * HD + c);
        vb = pack2((h2f(x & 0xffffu) + b0) * qscale, (h2f(x >> 16) + b1) * qscale);
      }}
      qa[kc][2 * hf] = va;
      qa[kc][2 * hf + 1] = vb;
    }}
  }}

  float o[HD / 8][4];
#pragma unroll
  for (int dt = 0; dt < HD / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
  const int n_keys = (qb0 < kend) ? kend : 0;
  const float* bk = bias + d + h * HD;
  const float* bv = bias + 2 * d + h * HD;

  for (int k0 = 0; k0 < n_keys; k0 += BK) {{
    // stage K (+ bias) row-major and V (+ bias) transposed; rows past the last token are zeros
    for (int c = tid; c < BK * (HD / 8); c += 32 * NW) {{
      const int r = c / (HD / 8), part = c % (HD / 8);
      const int j = k0 + r;
      U4 kx = {{0u, 0u, 0u, 0u}};
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; e++) v[e] = 0.f;
      if (j < kend) {{
        const u16* src = qkv + (row0 + j) * ld + d + h * HD + part * 8;
        const U4 kr = *(const U4*)src;
        const U4 vr = *(const U4*)(src + d);
        const float* kb = bk + part * 8;
        kx.x = add_bias2(kr.x, kb); kx.y = add_bias2(kr.y, kb + 2);
        kx.z = add_bias2(kr.z, kb + 4); kx.w = add_bias2(kr.w, kb + 6);
        const float* vb2 = bv + part * 8;
        const u32 vw[4] = {{vr.x, vr.y, vr.z, vr.w}};
#pragma unroll
        for (int e = 0; e < 4; e++) {{
          v[2 * e] = h2f(vw[e] & 0xffffu) + vb2[2 * e];
          v[2 * e + 1] = h2f(vw[e] >> 16) + vb2[2 * e + 1];
        }}
      }}
      *(U4*)(Ks + r * KP + part * 8) = kx;
#pragma unroll
      for (int e = 0; e < 8; e++) Vt[(part * 8 + e) * VP + r] = f2h(v[e]);
    }}
    for (int r = tid; r < BK; r += 32 * NW) {{
      const int j = k0 + r;
      msk[r] = (j < kend && mrow[j] != 0) ? 1 : 0;
    }}
    __syncthreads();
    if (q0 < kend) {{
      float s[BK / 8][4];
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt++) {{
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) {{
          const u16* kp = Ks + (nt * 8 + g) * KP + kc * 16 + 2 * tig;
          mma16816(s[nt], qa[kc], *(const u32*)kp, *(const u32*)(kp + 8));
        }}
      }}
      float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt++) {{
        const int key = nt * 8 + 2 * tig;
        if (!msk[key]) {{ s[nt][0] = NEG_INF; s[nt][2] = NEG_INF; }}
        if (!msk[key + 1]) {{ s[nt][1] = NEG_INF; s[nt][3] = NEG_INF; }}
        mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
      }}
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      const float mu0 = (mn0 == NEG_INF) ? 0.f : mn0;  // a row with no key yet: every weight 0, no NaN
      const float mu1 = (mn1 == NEG_INF) ? 0.f : mn1;
      const float c0 = ex2(m0 - mu0), c1 = ex2(m1 - mu1);
      m0 = mn0;
      m1 = mn1;
      l0 *= c0;
      l1 *= c1;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt++) {{
        o[dt][0] *= c0; o[dt][1] *= c0; o[dt][2] *= c1; o[dt][3] *= c1;
      }}
#pragma unroll
      for (int nt = 0; nt < BK / 8; nt++) {{
        s[nt][0] = ex2(s[nt][0] - mu0);
        s[nt][1] = ex2(s[nt][1] - mu0);
        s[nt][2] = ex2(s[nt][2] - mu1);
        s[nt][3] = ex2(s[nt][3] - mu1);
        l0 += s[nt][0] + s[nt][1];
        l1 += s[nt][2] + s[nt][3];
      }}
#pragma unroll
      for (int kk = 0; kk < BK / 16; kk++) {{
        u32 pa[4];
        pa[0] = pack2(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack2(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {{
          const u16* vp = Vt + (dt * 8 + g) * VP + kk * 16 + 2 * tig;
          mma16816(o[dt], pa, *(const u32*)vp, *(const u32*)(vp + 8));
        }}
      }}
    }}
    __syncthreads();
  }}

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  if (ra < T) {{
    const float inv = (ra < kend && mrow[ra] != 0 && l0 > 0.f) ? 1.f / l0 : 0.f;
    u16* dst = out + (row0 + ra) * d + h * HD + 2 * tig;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) *(u32*)(dst + dt * 8) = pack2(o[dt][0] * inv, o[dt][1] * inv);
  }}
  if (rb < T) {{
    const float inv = (rb < kend && mrow[rb] != 0 && l1 > 0.f) ? 1.f / l1 : 0.f;
    u16* dst = out + (row0 + rb) * d + h * HD + 2 * tig;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) *(u32*)(dst + dt * 8) = pack2(o[dt][2] * inv, o[dt][3] * inv);
  }}
}}
"""
)


def source(head_dim: int, warps: int = WARPS, key_tile: int = KEY_TILE) -> str:
    """The CUDA C of the kernel for one head width, warps a block and key tile."""
    return SOURCE.format(hd=head_dim, nw=warps, bk=key_tile)


def flash_ok(head_dim: int, d: int) -> bool:
    """Whether the kernel takes this head width (a multiple of 16 up to 128; rows of 16-byte multiples)."""
    return head_dim in FLASH_HEAD_DIMS and d % 8 == 0


@cache
def _kernel(text: str):
    import cupy

    return cupy.RawKernel(text, "flash_attention")


def _ptr(a) -> int:
    return int(a.__cuda_array_interface__["data"][0])


def flash_attention(qkv, bias, mask, n_head: int, scale: float, out, cp_stream=None, warps: int = WARPS,
                    key_tile: int = KEY_TILE, kernel_source: str | None = None) -> None:  # fmt: skip
    """out [b*t, d] float16 = bidirectional attention of qkv [b*t, 3*d] float16 (biases not yet added) plus
    bias float32 [3*d], over mask int32 [b, t] (1 = token); padded query rows come out 0. Device arrays in C
    order, 16-byte aligned; launched on the CuPy stream `cp_stream` (None: CuPy's current one). The kernel is
    compiled (NVRTC) on the first call for each head width; `warps`, `key_tile` (see `source`) and
    `kernel_source` (the CUDA C of another kernel with the same parameters and launch, e.g. a variant kept for
    comparison in benchmarks/kernels/, written for this head width, warps and key tile) are there for tests and
    benchmarks."""
    b, t = mask.shape
    d = out.shape[1]
    hd = d // n_head
    if not flash_ok(hd, d):
        raise ValueError(f"flash_attention: head_dim {hd} has no kernel (have {FLASH_HEAD_DIMS})")
    if qkv.dtype != np.float16 or out.dtype != np.float16 or qkv.shape != (b * t, 3 * d):
        raise ValueError("flash_attention: qkv [b*t, 3*d] and out [b*t, d] must be float16")
    if _ptr(qkv) % 16 or _ptr(out) % 4:
        raise ValueError("flash_attention: qkv must be 16-byte aligned")
    n_qt = math.ceil(t / (16 * warps))
    blocks = b * n_head * n_qt
    if blocks >= 2**31:
        raise ValueError(f"flash_attention: {blocks} blocks do not fit one launch")
    kern = _kernel(kernel_source or source(hd, warps, key_tile))
    args = (
        np.uint64(_ptr(qkv)), np.uint64(_ptr(bias)), np.uint64(_ptr(mask)), np.uint64(_ptr(out)),
        np.int32(t), np.int32(n_head), np.int32(n_qt), np.float32(scale * _LOG2E),
    )  # fmt: skip
    if cp_stream is not None:
        with cp_stream:
            kern((blocks,), (32 * warps,), args)
    else:
        kern((blocks,), (32 * warps,), args)
