/* Decode steps of a Llama-family LM in a single call each: all layers and the LM head, on `threads` OpenMP
 * threads (torch's thread count). `bm_decode_step` decodes one row; `bm_decode_batch` (second half of the file)
 * decodes several rows or a prompt's beams.
 *
 * Why this exists: at batch 1 a decode step reads every weight once, so its floor is (weight bytes) / (memory
 * bandwidth). Run through PyTorch, a step is ~20 operator calls per layer (~600 for SmolLM2-135M), each with a
 * few microseconds of dispatch, and PyTorch's CPU matrix-vector kernels read int8/bf16 weights at about a third
 * of the copy bandwidth (docs/performance.md). Here the step is one C function: one OpenMP parallel region for
 * the whole step, matrix-vector products that stream each weight row once with four independent accumulators,
 * the residual adds, SiLU and RoPE fused into them, and attention over the existing KV cache in place.
 *
 * Built and loaded by biomedgpt/model/native.py (compiled on first use with the system C compiler; when that is
 * impossible the PyTorch path runs instead). Activations, norms and the residual stream are float32; weights are
 * float32, bf16, or int8 with one bf16 scale per output row (biomedgpt.model.quantize's layouts, read in place);
 * the KV cache is float32 or bf16 ([kv_heads, max_len, head_dim] per layer, batch 1).
 *
 * Layout of the arguments (all pointers passed as int64 by ctypes):
 *   cfg[12] (int32): hidden, heads, kv_heads, head_dim, inter, n_layers, vocab, max_len, wtype, head_wtype,
 *                    kv_bf16, threads            (wtype: 0 float32, 1 bf16, 2 int8)
 *   layers[n_layers * 18] (int64): in_norm, post_norm, then (weight, scale) for q, k, v, o, gate, up, down, then
 *                    k_cache, v_cache           (scale is NULL unless the weight is int8)
 *   head[3] (int64): lm head weight, its scale, final norm
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)h << 16;
    return c.f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's .to(torch.bfloat16) */
    union { uint32_t u; float f; } c;
    c.f = f;
    if ((c.u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((c.u >> 16) | ((c.u & 0xffffu) ? 0x40u : 0u));
    c.u += 0x7fffu + ((c.u >> 16) & 1u);
    return (uint16_t)(c.u >> 16);
}

/* Vectors of VL floats (GCC/Clang vector extensions: one source for AVX-512, AVX2 and other targets). TR, NV:
 * the batched step's tile (second half of the file). */
#if defined(__AVX512F__)
#define VL 16 /* floats per vector */
#define TR 12 /* weight rows per tile: TR x NV accumulators + NV inputs + 1 broadcast <= 32 registers */
#else
#define VL 8
#define TR 6 /* 16 registers (AVX2): 6 x 2 accumulators + 2 inputs + 1 broadcast */
#endif
#define NV 2 /* batch vectors per tile */
typedef float vf __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef int8_t vb __attribute__((vector_size(VL)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static inline float vsum(vf v) {
    float s = 0.f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

#ifdef __AVX512F__
static inline __m512 load_f32(const float *p) { return _mm512_loadu_ps(p); }

static inline __m512 load_bf16(const uint16_t *p) { /* bf16 -> fp32: the 16 bits become the high half */
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline __m512 load_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* dot(w, x) over n inputs for one weight type. Four accumulators so that the loop is bound by loads, not by the
 * latency of one chain of FMAs. */
#define DEFINE_DOT(NAME, T, LOAD, SCALAR)                                                                    \
    static float NAME(const T *w, const float *x, int n) {                                                  \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                         \
        int i = 0;                                                                                          \
        for (; i + 64 <= n; i += 64) {                                                                      \
            a0 = _mm512_fmadd_ps(LOAD(w + i), _mm512_loadu_ps(x + i), a0);                                  \
            a1 = _mm512_fmadd_ps(LOAD(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);                        \
            a2 = _mm512_fmadd_ps(LOAD(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);                        \
            a3 = _mm512_fmadd_ps(LOAD(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);                        \
        }                                                                                                   \
        for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(LOAD(w + i), _mm512_loadu_ps(x + i), a0);         \
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));       \
        for (; i < n; i++) s += SCALAR(w[i]) * x[i];                                                        \
        return s;                                                                                           \
    }
#else
/* Other targets (AVX2, Arm, ...): the same loop on VL-float vectors. */
static inline vf load_f32(const float *p) { return vload(p); }

#if defined(__AVX2__)
/* (GCC turns the generic widening below into scalar code for 8-lane vectors: 6x slower int8 rows, measured.) */
static inline vf load_bf16(const uint16_t *p) { /* the 16 bits become the high half */
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline vf load_i8(const int8_t *p) {
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#else
static inline vf load_bf16(const uint16_t *p) { /* the 16 bits become the high half: a bitcast */
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

static inline vf load_i8(const int8_t *p) {
    vb b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
}
#endif

#define DEFINE_DOT(NAME, T, LOAD, SCALAR)                                                                    \
    static float NAME(const T *w, const float *x, int n) {                                                  \
        vf a0 = {0}, a1 = a0, a2 = a0, a3 = a0;                                                             \
        int i = 0;                                                                                          \
        for (; i + 4 * VL <= n; i += 4 * VL) {                                                              \
            a0 += LOAD(w + i) * vload(x + i);                                                               \
            a1 += LOAD(w + i + VL) * vload(x + i + VL);                                                     \
            a2 += LOAD(w + i + 2 * VL) * vload(x + i + 2 * VL);                                             \
            a3 += LOAD(w + i + 3 * VL) * vload(x + i + 3 * VL);                                             \
        }                                                                                                   \
        for (; i + VL <= n; i += VL) a0 += LOAD(w + i) * vload(x + i);                                      \
        float s = vsum((a0 + a1) + (a2 + a3));                                                              \
        for (; i < n; i++) s += SCALAR(w[i]) * x[i];                                                        \
        return s;                                                                                           \
    }
#endif
#define AS_FLOAT(v) ((float)(v))
DEFINE_DOT(dot_f32, float, load_f32, AS_FLOAT)
DEFINE_DOT(dot_bf16, uint16_t, load_bf16, bf16_to_f32)
DEFINE_DOT(dot_i8, int8_t, load_i8, AS_FLOAT)

/* Row `r` of the matrix W [rows, n] (type `t`, int8 rows scaled by scale[r]) times x. */
static inline float row_dot(const void *w, const uint16_t *scale, int t, size_t r, const float *x, int n) {
    if (t == W_F32) return dot_f32((const float *)w + r * n, x, n);
    if (t == W_BF16) return dot_bf16((const uint16_t *)w + r * n, x, n);
    return bf16_to_f32(scale[r]) * dot_i8((const int8_t *)w + r * n, x, n);
}

static void rms_norm(const float *x, const float *weight, float *out, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

static inline float cache_get(const void *c, int bf16, size_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)c)[i]) : ((const float *)c)[i];
}

static inline void cache_set(void *c, int bf16, size_t i, float v) {
    if (bf16) ((uint16_t *)c)[i] = f32_to_bf16(v);
    else ((float *)c)[i] = v;
}

/* One query head's attention over up to two runs of keys in a KV cache: `n0` keys at k0/v0 (a shared prompt
 * prefix, or the row's own cache), then `n1` at k1/v1 (the row's own cache after a prefix; n1 = 0 without one).
 * Keys are `dim` apart (elements of float32, or bf16 when kv_bf16); valid0/valid1 (may be NULL) mark which keys
 * may be attended. pr: scratch for n0 + n1 scores; out: [dim]. */
static void attend(const float *q, int dim, float scale, int kv_bf16, const void *k0, const void *v0,
                   const uint8_t *valid0, int n0, const void *k1, const void *v1, const uint8_t *valid1, int n1,
                   float *pr, float *out) {
    const int total_keys = n0 + n1;
    float best = -INFINITY;
    for (int t = 0; t < total_keys; t++) {
        const int first = t < n0, i = first ? t : t - n0;
        const uint8_t *valid = first ? valid0 : valid1;
        if (valid && !valid[i]) { pr[t] = -INFINITY; continue; }
        const void *k = first ? k0 : k1;
        size_t base = (size_t)i * dim;
        float s = kv_bf16 ? dot_bf16((const uint16_t *)k + base, q, dim) : dot_f32((const float *)k + base, q, dim);
        pr[t] = s * scale;
        if (pr[t] > best) best = pr[t];
    }
    float total = 0.f;
    for (int t = 0; t < total_keys; t++) {
        pr[t] = pr[t] == -INFINITY ? 0.f : expf(pr[t] - best);
        total += pr[t];
    }
    for (int d = 0; d < dim; d++) out[d] = 0.f;
    for (int t = 0; t < total_keys; t++) {
        if (pr[t] == 0.f) continue;
        const int first = t < n0;
        const void *v = first ? v0 : v1;
        size_t base = (size_t)(first ? t : t - n0) * dim;
        float w = pr[t] / total;
        for (int d = 0; d < dim; d++) out[d] += w * cache_get(v, kv_bf16, base + d);
    }
}

/* The scratch `bm_decode_step` needs, in floats. */
int64_t bm_scratch_floats(const int32_t *cfg) {
    int hidden = cfg[0], heads = cfg[1], kv_heads = cfg[2], dim = cfg[3], inter = cfg[4], max_len = cfg[7];
    return (int64_t)hidden + (int64_t)(heads + 2 * kv_heads) * dim + (int64_t)heads * dim + inter
           + (int64_t)heads * max_len;
}

/* x: [hidden] the new token's embedding, replaced by the final residual stream. Writes the token's key and value
 * at cache position `pos`, attends to cache positions 0..pos (those with key_valid[t] != 0 when key_valid is not
 * NULL), rotates q and k with cos/sin ([head_dim] each, sin carrying rotate_half's sign in its first half), and
 * writes logits [vocab]. Returns 0, or -1 if pos is outside the cache. The caller (native.py) checks shapes
 * and dtypes; nothing here does. */
int bm_decode_step(const int32_t *cfg, float eps, const int64_t *layers, const int64_t *head, float *x, int pos,
                   const uint8_t *key_valid, const float *cos_t, const float *sin_t, float *scratch,
                   float *logits) {
    const int hidden = cfg[0], heads = cfg[1], kv_heads = cfg[2], dim = cfg[3], inter = cfg[4];
    const int n_layers = cfg[5], vocab = cfg[6], max_len = cfg[7], wt = cfg[8], head_wt = cfg[9];
    const int kv_bf16 = cfg[10], threads = cfg[11] > 0 ? cfg[11] : 1;
    if (pos < 0 || pos >= max_len) return -1;
    const int half = dim / 2, group = heads / kv_heads, n_keys = pos + 1;
    const float att_scale = 1.0f / sqrtf((float)dim);
    float *h = scratch;                          /* [hidden] normed input */
    float *qkv = h + hidden;                     /* [(heads + 2 kv_heads) * dim] */
    float *att = qkv + (heads + 2 * kv_heads) * dim; /* [heads * dim] */
    float *act = att + heads * dim;              /* [inter] */
    float *probs = act + inter;                  /* [heads * max_len] */

#pragma omp parallel num_threads(threads)
    for (int l = 0; l < n_layers; l++) {
        const int64_t *L = layers + (size_t)l * 18;
        const float *in_norm = (const float *)L[0], *post_norm = (const float *)L[1];
        void *k_cache = (void *)L[16], *v_cache = (void *)L[17];
#pragma omp single
        rms_norm(x, in_norm, h, hidden, eps);

        /* q, k, v in pairs of rows (i, i + half) of one head, so that RoPE can be applied right away. */
        const int qk_heads = heads + kv_heads, pairs = (heads + 2 * kv_heads) * half;
#pragma omp for schedule(static)
        for (int p = 0; p < pairs; p++) {
            int hd = p / half, i = p % half, which, local;
            if (hd < heads) { which = 0; local = hd; }
            else if (hd < qk_heads) { which = 1; local = hd - heads; }
            else { which = 2; local = hd - qk_heads; }
            const void *w = (const void *)L[2 + 2 * which];
            const uint16_t *s = (const uint16_t *)L[3 + 2 * which];
            size_t r0 = (size_t)local * dim + i, r1 = r0 + half;
            float a = row_dot(w, s, wt, r0, h, hidden), b = row_dot(w, s, wt, r1, h, hidden);
            if (which < 2) { /* rotate: out_i = a cos_i + (-b) sin_i ... sin_t's first half already negated */
                float ra = a * cos_t[i] + b * sin_t[i], rb = b * cos_t[i + half] + a * sin_t[i + half];
                a = ra; b = rb;
            }
            float *out = qkv + (size_t)hd * dim;
            out[i] = a;
            out[i + half] = b;
            if (which > 0) {
                void *cache = which == 1 ? k_cache : v_cache;
                size_t base = ((size_t)local * max_len + pos) * dim;
                cache_set(cache, kv_bf16, base + i, a);
                cache_set(cache, kv_bf16, base + i + half, b);
            }
        }

#pragma omp for schedule(static)
        for (int hd = 0; hd < heads; hd++) {
            size_t head_base = (size_t)(hd / group) * max_len * dim; /* its KV head's keys */
            const char *kc = (const char *)k_cache + head_base * (kv_bf16 ? 2 : 4);
            const char *vc = (const char *)v_cache + head_base * (kv_bf16 ? 2 : 4);
            attend(qkv + (size_t)hd * dim, dim, att_scale, kv_bf16, kc, vc, key_valid, n_keys, NULL, NULL, NULL, 0,
                   probs + (size_t)hd * max_len, att + (size_t)hd * dim);
        }

#pragma omp for schedule(static)
        for (int r = 0; r < hidden; r++)
            x[r] += row_dot((const void *)L[8], (const uint16_t *)L[9], wt, r, att, heads * dim);

#pragma omp single
        rms_norm(x, post_norm, h, hidden, eps);

#pragma omp for schedule(static)
        for (int r = 0; r < inter; r++) {
            float g = row_dot((const void *)L[10], (const uint16_t *)L[11], wt, r, h, hidden);
            float u = row_dot((const void *)L[12], (const uint16_t *)L[13], wt, r, h, hidden);
            act[r] = g / (1.0f + expf(-g)) * u;
        }

#pragma omp for schedule(static)
        for (int r = 0; r < hidden; r++)
            x[r] += row_dot((const void *)L[14], (const uint16_t *)L[15], wt, r, act, inter);
    }

    rms_norm(x, (const float *)head[2], scratch, hidden, eps);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int r = 0; r < vocab; r++)
        logits[r] = row_dot((const void *)head[0], (const uint16_t *)head[1], head_wt, r, scratch, hidden);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Batched decode step: B rows (a batch of prompts, or a prompt's beams) in one call.
 *
 * Why: above batch 1 a step is bound by arithmetic rather than by reading the weights, and PyTorch runs it as ~600
 * operator calls whose small matrix products (B x 576 by 576 x 1536, ...) reach a fraction of the cores' FMA rate
 * (bf16 ones far less on CPUs without bf16 instructions). Here the products use the "broadcast" form of BLAS
 * kernels: the inputs are transposed once per product to xT [n][bpad] (bpad = B rounded up to the vector width), so
 * one vector holds VL batch rows; a tile of TR weight rows x NV batch vectors keeps TR * NV accumulators in
 * registers, and each weight, widened to float32 once per tile (bf16/int8 rows into a small per-thread buffer),
 * is broadcast and used for NV vectors of batch rows. No horizontal sums, two input loads per TR * NV FMAs.
 * Vector extensions, so one source serves AVX-512, AVX2 and other targets.
 * ------------------------------------------------------------------------------------------------------------- */

/* Weight rows r0 .. r0 + tr - 1 (float32, rows of `w` n apart) times batch rows b0 .. b0 + nv * VL - 1 of xT;
 * writes (or adds) out[b, r0 + r] for the batch rows below `batch`. tr, nv: constants at every call site, so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void ktile(const float *w, int tr, int nv, int n, const float *xt,
                                                         int bpad, int b0, int batch, float *out, int ldo, int r0,
                                                         const float *scale, int add) {
    vf acc[TR][NV];
    _Pragma("GCC unroll 16") for (int r = 0; r < TR; r++)
        _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    const float *xp = xt + b0;
    for (int k = 0; k < n; k++, xp += bpad) {
        vf x0 = vload(xp), x1 = nv > 1 ? vload(xp + VL) : x0;
        _Pragma("GCC unroll 16") for (int r = 0; r < TR; r++) {
            if (r < tr) {
                float wk = w[(size_t)r * n + k];
                acc[r][0] += x0 * wk;
                if (nv > 1) acc[r][1] += x1 * wk;
            }
        }
    }
    for (int r = 0; r < tr; r++) {
        float sc = scale ? scale[r] : 1.0f;
        for (int v = 0; v < nv; v++)
            for (int j = 0; j < VL; j++) {
                int b = b0 + v * VL + j;
                if (b >= batch) break;
                float *o = out + (size_t)b * ldo + r0 + r;
                float val = acc[r][v][j] * sc;
                *o = add ? *o + val : val;
            }
    }
}

/* xT[k * bpad + b] = x[b * ldx + k], the padding columns zero. Inside a parallel region; ends with a barrier. */
static void transpose_in(const float *x, int ldx, int batch, int n, float *xt, int bpad) {
#pragma omp for schedule(static)
    for (int k = 0; k < n; k++) {
        float *row = xt + (size_t)k * bpad;
        for (int b = 0; b < batch; b++) row[b] = x[(size_t)b * ldx + k];
        for (int b = batch; b < bpad; b++) row[b] = 0.f;
    }
}

/* out[b, r] (= or +=) (W x_b)[r] for all rows r < rows and batch rows b < batch, x given as xT (transpose_in).
 * Called inside a parallel region (an orphaned `omp for`: the threads split the weight rows, so each weight is
 * read from memory once); ends with a barrier. `wbuf`: this thread's TR * n floats for widened weight rows. */
static void gemm(const void *w, const uint16_t *scale, int t, int rows, int n, const float *xt, int bpad,
                 int batch, float *out, int ldo, int add, float *wbuf) {
    const int blocks = (rows + TR - 1) / TR;
#pragma omp for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        const int r0 = blk * TR, tr = rows - r0 < TR ? rows - r0 : TR;
        const float *rows_f32 = (const float *)w + (size_t)r0 * n;
        float sc[TR], *scp = NULL;
        if (t != W_F32) { /* widen the block's rows to float32 once; every batch tile then reads them from L1 */
            for (int r = 0; r < tr; r++) {
                float *dst = wbuf + (size_t)r * n;
                size_t row = (size_t)(r0 + r) * n;
                if (t == W_BF16) {
                    const uint16_t *src = (const uint16_t *)w + row;
                    for (int k = 0; k < n; k++) dst[k] = bf16_to_f32(src[k]);
                } else {
                    const int8_t *src = (const int8_t *)w + row;
                    for (int k = 0; k < n; k++) dst[k] = (float)src[k];
                    sc[r] = bf16_to_f32(scale[r0 + r]);
                }
            }
            rows_f32 = wbuf;
            scp = t == W_I8 ? sc : NULL;
        }
        for (int b0 = 0; b0 < batch; b0 += NV * VL) {
            const int two = batch - b0 > VL;
            if (tr == TR) {
                if (two) ktile(rows_f32, TR, 2, n, xt, bpad, b0, batch, out, ldo, r0, scp, add);
                else ktile(rows_f32, TR, 1, n, xt, bpad, b0, batch, out, ldo, r0, scp, add);
            } else {
                for (int r = 0; r < tr; r++) {
                    const float *one = rows_f32 + (size_t)r * n, *s1 = scp ? scp + r : NULL;
                    if (two) ktile(one, 1, 2, n, xt, bpad, b0, batch, out, ldo, r0 + r, s1, add);
                    else ktile(one, 1, 1, n, xt, bpad, b0, batch, out, ldo, r0 + r, s1, add);
                }
            }
        }
    }
}

static int64_t widest_input(const int32_t *cfg) { /* the largest input size of a product: hidden, heads x dim, inter */
    int64_t n = cfg[0] > cfg[4] ? cfg[0] : cfg[4];
    return n > (int64_t)cfg[1] * cfg[3] ? n : (int64_t)cfg[1] * cfg[3];
}

static int padded(int batch) { return (batch + VL - 1) / VL * VL; }

int64_t bm_batch_scratch_floats(const int32_t *cfg, int batch, int prefix_len) {
    int64_t hidden = cfg[0], heads = cfg[1], kv_heads = cfg[2], dim = cfg[3], inter = cfg[4], max_len = cfg[7];
    int64_t threads = cfg[11] > 0 ? cfg[11] : 1, widest = widest_input(cfg);
    return batch * (hidden + (heads + 2 * kv_heads) * dim + heads * dim + 2 * inter + heads * (prefix_len + max_len))
           + padded(batch) * widest + threads * TR * widest;
}

/* x: [batch, hidden] the new tokens' embeddings, replaced by the final residual streams. Row b writes its key and
 * value at position `pos` of its own cache (layers' k/v caches: [batch, kv_heads, max_len, head_dim]) and attends
 * to its prefix (when `prefix` is not NULL: prompt b / (batch / prompts), keys 0..prefix_len-1 of `prefix[2 l]`,
 * `prefix[2 l + 1]` ([prompts, kv_heads, prefix_len, head_dim], those with prefix_valid[p, t] != 0 when
 * prefix_valid is not NULL) and then to its own positions 0..pos (those with key_valid[b, t] != 0 when key_valid
 * is not NULL). cos/sin: [batch, head_dim], each row's RoPE tables. logits: [batch, vocab]. Returns 0, or -1 if pos
 * is outside the cache or batch is not a multiple of prompts. Shapes and dtypes are checked by the caller. */
int bm_decode_batch(const int32_t *cfg, float eps, const int64_t *layers, const int64_t *head, float *x, int batch,
                    int pos, const uint8_t *key_valid, const float *cos_t, const float *sin_t,
                    const int64_t *prefix, int prompts, int prefix_len, const uint8_t *prefix_valid,
                    float *scratch, float *logits) {
    const int hidden = cfg[0], heads = cfg[1], kv_heads = cfg[2], dim = cfg[3], inter = cfg[4];
    const int n_layers = cfg[5], vocab = cfg[6], max_len = cfg[7], wt = cfg[8], head_wt = cfg[9];
    const int kv_bf16 = cfg[10], threads = cfg[11] > 0 ? cfg[11] : 1;
    if (pos < 0 || pos >= max_len || batch < 1) return -1;
    if (prefix && (prompts < 1 || batch % prompts)) return -1;
    const int half = dim / 2, group = heads / kv_heads, n_keys = pos + 1, qkv_dim = (heads + 2 * kv_heads) * dim;
    const int per_prompt = prefix ? batch / prompts : 1, n_prefix = prefix ? prefix_len : 0;
    const int span = n_prefix + max_len;
    const float att_scale = 1.0f / sqrtf((float)dim);
    float *h = scratch;                                   /* [batch, hidden] normed input */
    float *qkv = h + (size_t)batch * hidden;              /* [batch, qkv_dim] */
    float *att = qkv + (size_t)batch * qkv_dim;           /* [batch, heads * dim] */
    float *gate = att + (size_t)batch * heads * dim;      /* [batch, inter] */
    float *up = gate + (size_t)batch * inter;             /* [batch, inter] */
    float *probs = up + (size_t)batch * inter;            /* [batch * heads, n_prefix + max_len] */
    const int bpad = padded(batch);
    const int64_t widest = widest_input(cfg);
    float *xt = probs + (size_t)batch * heads * span;     /* [widest, bpad]: a product's inputs, transposed */
    float *wbufs = xt + (size_t)bpad * widest;            /* [threads, TR, widest]: widened weight rows */
    const size_t own_stride = (size_t)kv_heads * max_len * dim, prefix_stride = (size_t)kv_heads * n_prefix * dim;

#pragma omp parallel num_threads(threads)
    {
        float *wbuf = wbufs + (size_t)omp_get_thread_num() * TR * widest;
        for (int l = 0; l < n_layers; l++) {
            const int64_t *L = layers + (size_t)l * 18;
            void *k_cache = (void *)L[16], *v_cache = (void *)L[17];
            const void *pk = prefix ? (const void *)prefix[2 * l] : NULL;
            const void *pv = prefix ? (const void *)prefix[2 * l + 1] : NULL;
#pragma omp for schedule(static)
            for (int b = 0; b < batch; b++)
                rms_norm(x + (size_t)b * hidden, (const float *)L[0], h + (size_t)b * hidden, hidden, eps);
            transpose_in(h, hidden, batch, hidden, xt, bpad);
            gemm((const void *)L[2], (const uint16_t *)L[3], wt, heads * dim, hidden, xt, bpad, batch,
                 qkv, qkv_dim, 0, wbuf);
            gemm((const void *)L[4], (const uint16_t *)L[5], wt, kv_heads * dim, hidden, xt, bpad, batch,
                 qkv + heads * dim, qkv_dim, 0, wbuf);
            gemm((const void *)L[6], (const uint16_t *)L[7], wt, kv_heads * dim, hidden, xt, bpad, batch,
                 qkv + (heads + kv_heads) * dim, qkv_dim, 0, wbuf);

            /* RoPE on q and k (sin's first half carries rotate_half's sign), then k and v into the cache. */
#pragma omp for schedule(static)
            for (int bh = 0; bh < batch * (heads + 2 * kv_heads); bh++) {
                int b = bh / (heads + 2 * kv_heads), hd = bh % (heads + 2 * kv_heads);
                float *v = qkv + (size_t)b * qkv_dim + (size_t)hd * dim;
                if (hd < heads + kv_heads) {
                    const float *c = cos_t + (size_t)b * dim, *s = sin_t + (size_t)b * dim;
                    for (int i = 0; i < half; i++) {
                        float a = v[i], bb = v[i + half];
                        v[i] = a * c[i] + bb * s[i];
                        v[i + half] = bb * c[i + half] + a * s[i + half];
                    }
                }
                if (hd >= heads) {
                    int local = hd < heads + kv_heads ? hd - heads : hd - heads - kv_heads;
                    void *cache = hd < heads + kv_heads ? k_cache : v_cache;
                    size_t base = b * own_stride + ((size_t)local * max_len + pos) * dim;
                    for (int i = 0; i < dim; i++) cache_set(cache, kv_bf16, base + i, v[i]);
                }
            }

#pragma omp for schedule(static)
            for (int bh = 0; bh < batch * heads; bh++) {
                int b = bh / heads, hd = bh % heads, g = hd / group, p = b / per_prompt;
                const size_t elem = kv_bf16 ? 2 : 4;
                const size_t own = (b * own_stride + (size_t)g * max_len * dim) * elem;
                const char *ok = (const char *)k_cache + own, *ov = (const char *)v_cache + own;
                const uint8_t *own_valid = key_valid ? key_valid + (size_t)b * max_len : NULL;
                const float *q = qkv + (size_t)b * qkv_dim + (size_t)hd * dim;
                float *pr = probs + (size_t)bh * span, *o = att + (size_t)b * heads * dim + (size_t)hd * dim;
                if (n_prefix) {
                    const size_t shared = (p * prefix_stride + (size_t)g * n_prefix * dim) * elem;
                    attend(q, dim, att_scale, kv_bf16, (const char *)pk + shared, (const char *)pv + shared,
                           prefix_valid ? prefix_valid + (size_t)p * n_prefix : NULL, n_prefix, ok, ov, own_valid,
                           n_keys, pr, o);
                } else {
                    attend(q, dim, att_scale, kv_bf16, ok, ov, own_valid, n_keys, NULL, NULL, NULL, 0, pr, o);
                }
            }

            transpose_in(att, heads * dim, batch, heads * dim, xt, bpad);
            gemm((const void *)L[8], (const uint16_t *)L[9], wt, hidden, heads * dim, xt, bpad, batch,
                 x, hidden, 1, wbuf);
#pragma omp for schedule(static)
            for (int b = 0; b < batch; b++)
                rms_norm(x + (size_t)b * hidden, (const float *)L[1], h + (size_t)b * hidden, hidden, eps);
            transpose_in(h, hidden, batch, hidden, xt, bpad);
            gemm((const void *)L[10], (const uint16_t *)L[11], wt, inter, hidden, xt, bpad, batch, gate, inter, 0,
                 wbuf);
            gemm((const void *)L[12], (const uint16_t *)L[13], wt, inter, hidden, xt, bpad, batch, up, inter, 0,
                 wbuf);
#pragma omp for schedule(static)
            for (size_t i = 0; i < (size_t)batch * inter; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
            transpose_in(gate, inter, batch, inter, xt, bpad);
            gemm((const void *)L[14], (const uint16_t *)L[15], wt, hidden, inter, xt, bpad, batch, x, hidden, 1,
                 wbuf);
        }
#pragma omp for schedule(static)
        for (int b = 0; b < batch; b++)
            rms_norm(x + (size_t)b * hidden, (const float *)head[2], h + (size_t)b * hidden, hidden, eps);
        transpose_in(h, hidden, batch, hidden, xt, bpad);
        gemm((const void *)head[0], (const uint16_t *)head[1], head_wt, vocab, hidden, xt, bpad, batch,
             logits, vocab, 0, wbuf);
    }
    return 0;
}
