/* Philox4x32-10 for mezo_elastic's CPU sweep: integer math only, so the words are exact on any
 * compiler and instruction set (target_clones picks AVX-512 / AVX2 / baseline code at run time; no
 * -march=native, no -ffast-math). The float outputs are exact too: an int32 -> float conversion
 * (round to nearest), one float multiply and a max, with -ffp-contract=off so nothing is fused.
 * Layout (see mezo_elastic/zo/perturb.py): element h of a parameter is lane h % 4 of counter h // 4;
 * for rademacher32, bit h % 32 of word (h % 128) / 32 of counter h // 128.
 *
 * Each function fills `nr` ranges; range r covers counters [first[r], first[r] + count[r]) under
 * key (k0[r], k1[r]) (uint32 values in int64) and writes them at counter slot out[r] of the output (4 floats a slot for z,
 * 128 for rademacher32's z, 2 pairs a slot for the Box-Muller inputs). Ranges are independent, so callers split them over
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
    return (float)(s ^ (s >> 31)) * UINT_TO_FLOAT; /* s < 0: ~s = -s - 1 (branch-free: vectorizes) */
}

#define BLK 256 /* counters per block: the words of a block stay in L1 between the two loops */

/* Words of counters ctr .. ctr + n - 1 (n <= BLK) in structure-of-arrays form: the loop over i is
 * what the compiler vectorizes (32 x 32 -> 64-bit products are vpmuludq). */
static inline void philox_block(uint64_t ctr, int64_t n, uint32_t k0, uint32_t k1, uint32_t x0[BLK],
                                uint32_t x1[BLK], uint32_t x2[BLK], uint32_t x3[BLK]) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t w[4];
        philox(ctr + (uint64_t)i, k0, k1, w);
        x0[i] = w[0]; x1[i] = w[1]; x2[i] = w[2]; x3[i] = w[3];
    }
}

#define FOR_BLOCKS(r, ...)                                                         \
    for (int64_t b = 0; b < count[r]; b += BLK) {                                 \
        int64_t n = count[r] - b < BLK ? count[r] - b : BLK;                       \
        uint32_t x0[BLK], x1[BLK], x2[BLK], x3[BLK];                              \
        philox_block(first[r] + (uint64_t)b, n, (uint32_t)k0[r], (uint32_t)k1[r], x0, x1, x2, x3);     \
        int64_t s = out[r] + b; /* output slot of the block's first counter */     \
        __VA_ARGS__                                                               \
    }

/* Raw words: 4 uint32 a counter (tests cross-check the torch path with them). */
CLONES void philox_words(int64_t nr, const uint64_t *first, const int64_t *count, const int64_t *k0,
                         const int64_t *k1, const int64_t *out, uint32_t *restrict dst) {
    for (int64_t r = 0; r < nr; r++) {
        FOR_BLOCKS(r, for (int64_t i = 0; i < n; i++) {
            uint32_t *d = dst + 4 * (s + i);
            d[0] = x0[i]; d[1] = x1[i]; d[2] = x2[i]; d[3] = x3[i];
        })
    }
}

/* Box-Muller inputs: per counter the pairs (x0, x1) and (x2, x3) as u1 = max(u(a), 1e-7) and
 * th = u(b) * 2 pi; pair p of slot s goes to index 2 s + p. */
CLONES void gauss_inputs(int64_t nr, const uint64_t *first, const int64_t *count, const int64_t *k0,
                         const int64_t *k1, const int64_t *out, float *restrict u1, float *restrict th) {
    for (int64_t r = 0; r < nr; r++) {
        FOR_BLOCKS(r, for (int64_t i = 0; i < n; i++) {
            float a = uniform(x0[i]), c = uniform(x2[i]);
            u1[2 * (s + i)] = a > U1_MIN ? a : U1_MIN;
            u1[2 * (s + i) + 1] = c > U1_MIN ? c : U1_MIN;
            th[2 * (s + i)] = uniform(x1[i]) * TWO_PI_F;
            th[2 * (s + i) + 1] = uniform(x3[i]) * TWO_PI_F;
        })
    }
}

/* Rademacher z: element lane l of a counter is -1 where bit 31 of word x_l is set, else +1. */
CLONES void rademacher(int64_t nr, const uint64_t *first, const int64_t *count, const int64_t *k0,
                       const int64_t *k1, const int64_t *out, float *restrict z) {
    for (int64_t r = 0; r < nr; r++) {
        FOR_BLOCKS(r, for (int64_t i = 0; i < n; i++) {
            float *d = z + 4 * (s + i);
            d[0] = (x0[i] >> 31) ? -1.0f : 1.0f;
            d[1] = (x1[i] >> 31) ? -1.0f : 1.0f;
            d[2] = (x2[i] >> 31) ? -1.0f : 1.0f;
            d[3] = (x3[i] >> 31) ? -1.0f : 1.0f;
        })
    }
}

/* Packed Rademacher z (rademacher32): element 32 w + b of a counter is -1 where bit b (0 = least
 * significant) of word x_w is set, else +1; 128 floats a slot. One Philox call gives 128 elements. */
CLONES void rademacher32(int64_t nr, const uint64_t *first, const int64_t *count, const int64_t *k0,
                         const int64_t *k1, const int64_t *out, float *restrict z) {
    for (int64_t r = 0; r < nr; r++) {
        FOR_BLOCKS(r, for (int64_t i = 0; i < n; i++) {
            float *d = z + 128 * (s + i);
            const uint32_t w[4] = {x0[i], x1[i], x2[i], x3[i]};
            for (int k = 0; k < 4; k++)
                for (int bit = 0; bit < 32; bit++) /* branch-free: 1 - 2 * bit is exact, and vectorizes */
                    d[32 * k + bit] = 1.0f - 2.0f * (float)((w[k] >> bit) & 1u);
        })
    }
}
