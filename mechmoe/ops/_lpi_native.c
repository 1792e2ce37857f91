/* The fused exp-accumulate kernel of the exact Gated-LPI path (see docs/performance.md).
 *
 * For prompts b, directions j in [j0, j1) and vocabulary entries v it computes
 *
 *     out[b, j] += sum_v exp(logp[b, v] + c[b, j] * P[j, v] - shift[b, j])
 *
 * in one pass: the multiply-add, the exponential and the sum stay in registers, where
 * three eager torch operations would write and read the (prompt, direction, vocab)
 * block twice. The caller picks shift[b, j] >= max_v c[b, j] * P[j, v], so no term
 * exceeds exp(logp) <= 1.
 *
 * Built by mechmoe.ops._native with the platform's C compiler and loaded with ctypes
 * (no Python or torch headers); callers run disjoint [j0, j1) ranges on several threads.
 */
#include <stdint.h>

/* exp(x) for x <= 88: 2^(x log2 e) split into 2^i (exponent bits, i = round(t)) and 2^f,
 * f in [-1/2, 1/2], by a degree-6 polynomial fitted here for relative error (below 1e-7
 * in fp32, unbiased). Inputs below -87 are clamped there: such terms are < 2e-38 of the
 * largest possible one. Written without branches or calls so that the compiler
 * vectorises the loop that uses it. */
static inline float lpi_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * 1.44269504088896341f;
    float fi = __builtin_rintf(t);
    float f = t - fi;
    float p = 1.5347280714195222e-4f;
    p = p * f + 1.3399943709373474e-3f;
    p = p * f + 9.618483483791351e-3f;
    p = p * f + 5.550328642129898e-2f;
    p = p * f + 2.4022646248340607e-1f;
    p = p * f + 6.931471824645996e-1f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } u;
    u.f = p;
    u.i += ((int32_t)fi) << 23;
    return u.f;
}

/* Directions per tile and vocabulary entries per block: a tile's rows of P and one
 * prompt's block of logp (8 x 2 KiB + 2 KiB) stay in the L1 cache while every prompt
 * of the group walks them. */
#define LPI_TILE 8
#define LPI_BLOCK 512

int lpi_native_version(void) { return 2; }

void lpi_shifted_sums(const float *P, const float *logp, const float *c, const float *shift,
                      double *out, int64_t n, int64_t k, int64_t vocab, int64_t j0, int64_t j1) {
    for (int64_t jt = j0; jt < j1; jt += LPI_TILE) {
        int64_t jn = jt + LPI_TILE < j1 ? LPI_TILE : j1 - jt;
        for (int64_t v0 = 0; v0 < vocab; v0 += LPI_BLOCK) {
            int64_t vn = v0 + LPI_BLOCK < vocab ? LPI_BLOCK : vocab - v0;
            for (int64_t b = 0; b < n; b++) {
                const float *lb = logp + b * vocab + v0;
                for (int64_t t = 0; t < jn; t++) {
                    int64_t j = jt + t;
                    const float *pj = P + j * vocab + v0;
                    const float cb = c[b * k + j];
                    const float sb = shift[b * k + j];
                    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                    for (int64_t v = 0; v < vn; v++) acc += lpi_exp(lb[v] + cb * pj[v] - sb);
                    out[b * k + j] += (double)acc;
                }
            }
        }
    }
}

/* The same sum for listed (prompt, direction) pairs: out[i] = sum_v exp(logp[pb[i], v] +
 * c[i] * P[pk[i], v] - shift[i]) for i in [i0, i1). */
void lpi_pair_sums(const float *P, const float *logp, const int64_t *pb, const int64_t *pk,
                   const float *c, const float *shift, double *out, int64_t vocab, int64_t i0,
                   int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
        const float *lb = logp + pb[i] * vocab;
        const float *pj = P + pk[i] * vocab;
        const float ci = c[i];
        const float si = shift[i];
        double total = 0.0;
        for (int64_t v0 = 0; v0 < vocab; v0 += LPI_BLOCK) {
            int64_t vn = v0 + LPI_BLOCK < vocab ? LPI_BLOCK : vocab - v0;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t v = 0; v < vn; v++) acc += lpi_exp(lb[v0 + v] + ci * pj[v0 + v] - si);
            total += (double)acc;
        }
        out[i] = total;
    }
}
