/* Philox4x32-10 for mezo_elastic's CPU sweep: integer math only, so the words are exact on any
 * compiler and instruction set (target_clones picks AVX-512 / AVX2 / baseline code at run time; no
 * -march=native, no -ffast-math). The float outputs are exact too: an int32 -> float conversion
 * (round to nearest), one float multiply and a max, with -ffp-contract=off so nothing is fused.
 * Layout (see mezo_elastic/perturb.py): element h of a parameter is lane h % 4 of counter h // 4.
 *
 * Each function fills `nr` ranges; range r covers counters [first[r], first[r] + count[r]) under
 * key (k0[r], k1[r]) and writes them at counter slot out[r] of the output (4 floats a slot for z,
 * 2 pairs a slot for the Box-Muller inputs). Ranges are independent, so callers split them over
 * threads (ctypes releases the GIL).
 */
#include <stdint.h>

#define PHILOX_A 0xD2511F53u
#define PHILOX_B 0xCD9E8D57u
#define PHILOX_KA 0x9E3779B9u
#define PHILOX_KB 0xBB67AE85u
#define UINT_TO_FLOAT 4.6566127342e-10f /* 1 / 2**31 as float32, Triton's uint_to_uniform_float */
#define TWO_PI_F 6.283185307179586f
#define U1_MIN 1.0e-7f

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline void philox(uint64_t ctr, uint32_t k0, uint32_t k1, uint32_t x[4]) {
    uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; r++) {
        uint64_t pa = (uint64_t)PHILOX_A * c0, pb = (uint64_t)PHILOX_B * c2;
        uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0, n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)pb;
        c3 = (uint32_t)pa;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_KA;
        k1 += PHILOX_KB;
    }
    x[0] = c0; x[1] = c1; x[2] = c2; x[3] = c3;
}

/* Triton's uint_to_uniform_float: the word as int32, negatives folded (x < 0 -> -x - 1), times 2**-31. */
static inline float uniform(uint32_t w) {
    int32_t s = (int32_t)w;
    return (float)(s < 0 ? -s - 1 : s) * UINT_TO_FLOAT;
}

/* Raw words: 4 uint32 a counter (tests and the torch fallback's cross-check). */
CLONES void philox_words(int64_t nr, const uint64_t *first, const int64_t *count, const uint32_t *k0,
                         const uint32_t *k1, const int64_t *out, uint32_t *dst) {
    for (int64_t r = 0; r < nr; r++) {
        uint32_t *d = dst + 4 * out[r];
        for (int64_t i = 0; i < count[r]; i++) philox(first[r] + (uint64_t)i, k0[r], k1[r], d + 4 * i);
    }
}

/* Box-Muller inputs: per counter the pairs (x0, x1) and (x2, x3) as u1 = max(u(a), 1e-7) and
 * th = u(b) * 2 pi; pair p of slot s goes to index 2 s + p. */
CLONES void gauss_inputs(int64_t nr, const uint64_t *first, const int64_t *count, const uint32_t *k0,
                         const uint32_t *k1, const int64_t *out, float *u1, float *th) {
    for (int64_t r = 0; r < nr; r++) {
        float *pu = u1 + 2 * out[r], *pt = th + 2 * out[r];
        for (int64_t i = 0; i < count[r]; i++) {
            uint32_t x[4];
            philox(first[r] + (uint64_t)i, k0[r], k1[r], x);
            float a = uniform(x[0]), c = uniform(x[2]);
            pu[2 * i] = a > U1_MIN ? a : U1_MIN;
            pu[2 * i + 1] = c > U1_MIN ? c : U1_MIN;
            pt[2 * i] = uniform(x[1]) * TWO_PI_F;
            pt[2 * i + 1] = uniform(x[3]) * TWO_PI_F;
        }
    }
}

/* Rademacher z: element lane l of a counter is -1 where bit 31 of word x_l is set, else +1. */
CLONES void rademacher(int64_t nr, const uint64_t *first, const int64_t *count, const uint32_t *k0,
                       const uint32_t *k1, const int64_t *out, float *z) {
    for (int64_t r = 0; r < nr; r++) {
        float *d = z + 4 * out[r];
        for (int64_t i = 0; i < count[r]; i++) {
            uint32_t x[4];
            philox(first[r] + (uint64_t)i, k0[r], k1[r], x);
            for (int l = 0; l < 4; l++) d[4 * i + l] = (x[l] >> 31) ? -1.0f : 1.0f;
        }
    }
}
