"""Flash attention kernel for the encoder, second version, kept for comparison with the engine's
(`embedkit.kernels.cuda.encoder_flash`, same parameters and launch): it stages `stage_keys` keys in shared memory
a pass with their loads issued together, where the engine's kernel stages one key tile a pass. On an H100 at
256 x 128 MiniLM tokens it measured 0.136 ms a layer against the engine's 0.142, within run-to-run noise, so the
engine keeps the kernel its whole-model runs measured. `tests/test_cuda_encoder.py` checks it against float64
attention and `benchmarks/profile_encoder_stages.py` times it:

    flash_attention(..., warps, key_tile, kernel_source=encoder_flash_v2.source(head_dim, warps, key_tile))
"""

from __future__ import annotations

from embedkit.kernels.cuda.encoder_flash import KEY_TILE, PRELUDE, WARPS

STAGE_KEYS = 128  # keys staged in shared memory a pass (a multiple of the key tile), all loads issued together

SOURCE = (
    r"""
#define HD {hd}
#define BK {bk}
#define NW {nw}
#define SK {sk}
#define IT ((SK * (HD / 8) + 32 * NW - 1) / (32 * NW))
#define BQ (16 * NW)
#define KP (HD + 8)
#define VP (SK + 8)
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
  __shared__ __align__(16) u16 Ks[SK * KP];
  __shared__ __align__(16) u16 Vt[HD * VP];
  __shared__ int msk[SK];
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
  const int qb0 = qt * BQ;
  const int q0 = qb0 + warp * 16;
  const int ra = q0 + g, rb = q0 + g + 8;

  // Q's raw words first, so that their loads overlap the mask scan
  u32 qx[HD / 16][4];
#pragma unroll
  for (int kc = 0; kc < HD / 16; kc++) {{
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {{
      const int c = kc * 16 + hf * 8 + 2 * tig;
      qx[kc][2 * hf] = (ra < T) ? *(const u32*)(qkv + (row0 + ra) * ld + h * HD + c) : 0u;
      qx[kc][2 * hf + 1] = (rb < T) ? *(const u32*)(qkv + (row0 + rb) * ld + h * HD + c) : 0u;
    }}
  }}
  if (tid == 0) kend_s = 0;
  __syncthreads();
  for (int j = tid; j < T; j += 32 * NW)
    if (mrow[j] != 0) atomicMax(&kend_s, j + 1);
  __syncthreads();
  const int kend = kend_s;  // one past the last real token

  // Q as A fragments: a0 (row g, cols 2t..), a1 (row g+8), a2 (row g, cols 2t+8..), a3 (row g+8, cols 2t+8..)
  u32 qa[HD / 16][4];
  const float* bq = bias + h * HD;
#pragma unroll
  for (int kc = 0; kc < HD / 16; kc++) {{
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {{
      const int c = kc * 16 + hf * 8 + 2 * tig;
      const float b0 = bq[c], b1 = bq[c + 1];
      const u32 xa = qx[kc][2 * hf], xb = qx[kc][2 * hf + 1];
      qa[kc][2 * hf] = (ra < T) ? pack2((h2f(xa & 0xffffu) + b0) * qscale, (h2f(xa >> 16) + b1) * qscale) : 0u;
      qa[kc][2 * hf + 1] = (rb < T) ? pack2((h2f(xb & 0xffffu) + b0) * qscale, (h2f(xb >> 16) + b1) * qscale) : 0u;
    }}
  }}

  float o[HD / 8][4];
#pragma unroll
  for (int dt = 0; dt < HD / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
  const int n_keys = (qb0 < kend) ? kend : 0;
  const float* bk = bias + d + h * HD;
  const float* bv = bias + 2 * d + h * HD;

  for (int k0 = 0; k0 < n_keys; k0 += SK) {{
    // stage SK keys: every load of the pass issued before any is used; K (+ bias) row-major, V (+ bias)
    // transposed; rows past the last token are zeros
    U4 kr[IT], vr[IT];
#pragma unroll
    for (int it = 0; it < IT; it++) {{
      const int c = tid + it * 32 * NW;
      const int r = c / (HD / 8), part = c % (HD / 8);
      const int j = k0 + r;
      kr[it].x = kr[it].y = kr[it].z = kr[it].w = 0u;
      vr[it] = kr[it];
      if (c < SK * (HD / 8) && j < kend) {{
        const u16* src = qkv + (row0 + j) * ld + d + h * HD + part * 8;
        kr[it] = *(const U4*)src;
        vr[it] = *(const U4*)(src + d);
      }}
    }}
#pragma unroll
    for (int it = 0; it < IT; it++) {{
      const int c = tid + it * 32 * NW;
      const int r = c / (HD / 8), part = c % (HD / 8);
      const int j = k0 + r;
      if (c < SK * (HD / 8)) {{
        U4 kx = {{0u, 0u, 0u, 0u}};
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = 0.f;
        if (j < kend) {{
          const float* kb = bk + part * 8;
          kx.x = add_bias2(kr[it].x, kb); kx.y = add_bias2(kr[it].y, kb + 2);
          kx.z = add_bias2(kr[it].z, kb + 4); kx.w = add_bias2(kr[it].w, kb + 6);
          const float* vb2 = bv + part * 8;
          const u32 vw[4] = {{vr[it].x, vr[it].y, vr[it].z, vr[it].w}};
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
    }}
    for (int r = tid; r < SK; r += 32 * NW) {{
      const int j = k0 + r;
      msk[r] = (j < kend && mrow[j] != 0) ? 1 : 0;
    }}
    __syncthreads();
    if (q0 < kend) {{
      for (int sub = 0; sub < SK && k0 + sub < kend; sub += BK) {{
        float s[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {{
          s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
          for (int kc = 0; kc < HD / 16; kc++) {{
            const u16* kp = Ks + (sub + nt * 8 + g) * KP + kc * 16 + 2 * tig;
            mma16816(s[nt], qa[kc], *(const u32*)kp, *(const u32*)(kp + 8));
          }}
        }}
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {{
          const int key = sub + nt * 8 + 2 * tig;
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
            const u16* vp = Vt + (dt * 8 + g) * VP + sub + kk * 16 + 2 * tig;
            mma16816(o[dt], pa, *(const u32*)vp, *(const u32*)(vp + 8));
          }}
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


def stage_keys_for(head_dim: int, key_tile: int = KEY_TILE) -> int:
    """Keys staged in shared memory a pass by default: STAGE_KEYS (one pass for 128-token texts) where K and
    V^T fit the 48 KB of static shared memory, else one key tile."""
    return STAGE_KEYS if head_dim <= 64 and STAGE_KEYS % key_tile == 0 else key_tile


def source(head_dim: int, warps: int = WARPS, key_tile: int = KEY_TILE, stage_keys: int | None = None) -> str:
    """The CUDA C of this kernel for one head width, warps a block, key tile and keys staged a pass."""
    sk = stage_keys or stage_keys_for(head_dim, key_tile)
    if sk % key_tile:
        raise ValueError(f"flash attention: {sk} staged keys is no multiple of the {key_tile}-key tile")
    return SOURCE.format(hd=head_dim, nw=warps, bk=key_tile, sk=sk)
