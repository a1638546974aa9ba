/* initscope's fused statistics kernel: one pass over a tensor's memory for every statistic.
 *
 * Built when initscope is installed, as the optional extension module initscope.stats._kernel
 * (setup.py); without a C compiler the install still succeeds and initscope uses its torch path.
 * Python only imports the module to find its file: the functions below are plain C, called
 * through ctypes (initscope/stats/native.py), and Python.h serves only PyInit__kernel at the end.
 *
 * Why a kernel at all: the statistics (count, mean, M2, min, max, zero/NaN/inf counts) cost at
 * least four passes over memory in torch ops (extremes, signs, a float64 copy, sums), while
 * reading the values once is the floor a report is measured against (`make bench`).
 * Here every value is read once, in its own width, and all of them are accumulated together.
 *
 * Precision is that of initscope's float64 torch path. Each block's deviations d = x - K
 * from a shift K near the segment's mean (the median of a few of its values, see shift_of)
 * and their squares are summed in float64; then the block's mean = K + sum(d)/m exactly up to
 * rounding, and M2 = sum(d^2) - sum(d)^2/m loses only about eps * ((mean - K) / std)^2, which a
 * median keeps small (|median - mean| <= std for any distribution). Blocks and segments
 * combine by Chan, Golub & LeVeque (1979). Results depend only on the segment size the caller
 * passes, never on how many threads ran nor on the CPU: the AVX2 code and the portable code
 * below compute the same operations in the same order (no fused multiply-add, see setup.py).
 *
 * Files are read with pread into a small buffer, not memory-mapped: a mapped file that
 * shrinks under its reader (a trainer saving over the checkpoint) raises SIGBUS and kills the
 * process with no message, where a short read is an error Python can name.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python requires: it sets feature macros the C library reads */

#include <math.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One binary for every x86-64 CPU: the hot code is compiled twice, for the baseline and with
 * AVX2 enabled function by function (target attribute), and the AVX2 copy is picked at load
 * time when the CPU and the OS support it. Not -march=native: a wheel or a shared install
 * runs on other CPUs than the one that built it. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define KERNEL_AVX2 1
#include <immintrin.h>
#else
#define KERNEL_AVX2 0
#endif

enum { DT_F32 = 0, DT_F64 = 1, DT_F16 = 2, DT_BF16 = 3 };

/* Values per block: the unit that is either summed fast or, holding NaN or inf, carefully;
 * 16 KiB of float64 at most for the careful path's copy. */
#define BLOCK 2048

typedef struct {
    int64_t count; /* finite values */
    int64_t zeros;
    int64_t nans;
    int64_t infs;
    double mean;
    double m2;
    double lo;
    double hi;
} acc_t;

static inline void acc_init(acc_t *a) {
    a->count = a->zeros = a->nans = a->infs = 0;
    a->mean = a->m2 = 0.0;
    a->lo = INFINITY;
    a->hi = -INFINITY;
}

/* Chan et al.'s pairwise update; the weight is formed before it multiplies, since
 * delta * n overflowed for float64 values near the type's maximum. */
static inline void acc_add(acc_t *a, int64_t n, double mean, double m2, double lo, double hi) {
    if (n == 0) return;
    int64_t total = a->count + n;
    if (a->count == 0) {
        a->mean = mean;
        a->m2 = m2;
    } else {
        double delta = mean - a->mean;
        a->mean += delta * ((double)n / (double)total);
        a->m2 += m2 + delta * delta * ((double)a->count * (double)n / (double)total);
    }
    a->count = total;
    if (lo < a->lo) a->lo = lo;
    if (hi > a->hi) a->hi = hi;
}

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half to float32 by integer arithmetic, exact and as the F16C instruction converts (a
 * signalling NaN made quiet): the baseline x86-64 has no half-precision conversion, and the
 * compiler's own is a library call per value, ten times slower. No denormal float is formed
 * on the way, so a flush-to-zero mode cannot change the result. load_f16_ISA below does the
 * same for eight values. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t em = h & 0x7fffu, bits; /* exponent and mantissa */
    if (em < 0x400u) {               /* zero or subnormal: m * 2^-24, exact in float32 */
        float f = (float)em * 0x1p-24f;
        memcpy(&bits, &f, sizeof bits);
    } else {
        bits = (em << 13) + (112u << 23);       /* exponent bias 15 -> 127 */
        if (em >= 0x7c00u) bits += 112u << 23;  /* inf and NaN: exponent 255 */
        if (em > 0x7c00u) bits |= 0x400000u;    /* NaN: quiet */
    }
    bits |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Each reduction keeps several independent vector accumulators: a single one would wait on
 * the add's latency every step. No reassociation is asked of the compiler (no -ffast-math),
 * so results are exact to the order written here and identical on every run. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef int64_t v4l __attribute__((vector_size(32)));

/* Element-wise min and max, as x86's minps/maxps: a < b ? a : b (a > b ? a : b), so both
 * versions give the same bits, -0.0 against 0.0 included. NaN needs no care here: a NaN sends
 * the block's sum to NaN, and the careful path takes the block. The portable version is
 * a compare and a select; with AVX one instruction. */
static inline v8f vmin_portable(v8f a, v8f b) {
    v8i m = a < b;
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}
static inline v8f vmax_portable(v8f a, v8f b) {
    v8i m = a > b;
    return (v8f)(((v8i)a & m) | ((v8i)b & ~m));
}
static inline v4d vmind_portable(v4d a, v4d b) {
    v4l m = a < b;
    return (v4d)(((v4l)a & m) | ((v4l)b & ~m));
}
static inline v4d vmaxd_portable(v4d a, v4d b) {
    v4l m = a > b;
    return (v4d)(((v4l)a & m) | ((v4l)b & ~m));
}

/* float32 lanes 0-3 and 4-7 widened to float64 (exact). */
static inline void widen_portable(v8f v, v4d *a, v4d *b) {
    v4f x = {v[0], v[1], v[2], v[3]}, y = {v[4], v[5], v[6], v[7]};
    *a = __builtin_convertvector(x, v4d);
    *b = __builtin_convertvector(y, v4d);
}

#define TARGET_portable /* the compiler's default instruction set */

#if KERNEL_AVX2
#define TARGET_avx2 __attribute__((target("avx2")))
TARGET_avx2 static inline v8f vmin_avx2(v8f a, v8f b) {
    return (v8f)_mm256_min_ps((__m256)a, (__m256)b);
}
TARGET_avx2 static inline v8f vmax_avx2(v8f a, v8f b) {
    return (v8f)_mm256_max_ps((__m256)a, (__m256)b);
}
TARGET_avx2 static inline v4d vmind_avx2(v4d a, v4d b) {
    return (v4d)_mm256_min_pd((__m256d)a, (__m256d)b);
}
TARGET_avx2 static inline v4d vmaxd_avx2(v4d a, v4d b) {
    return (v4d)_mm256_max_pd((__m256d)a, (__m256d)b);
}
TARGET_avx2 static inline void widen_avx2(v8f v, v4d *a, v4d *b) {
    *a = (v4d)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v));
    *b = (v4d)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1));
}
#endif

/* Eight values widened exactly to float32 (unaligned loads through memcpy), per instruction
 * set as the block functions below that call them: a call between functions of different
 * targets that passes a 32-byte vector is refused by clang (the ABI differs without AVX). */
#define LOADS(ISA)                                                                             \
    TARGET_##ISA static inline v8f load_f32_##ISA(const void *p) {                             \
        v8f v;                                                                                 \
        memcpy(&v, p, sizeof v);                                                               \
        return v;                                                                              \
    }                                                                                          \
    TARGET_##ISA static inline v8f load_bf16_##ISA(const void *p) {                            \
        v8h h;                                                                                 \
        memcpy(&h, p, sizeof h);                                                               \
        return (v8f)(__builtin_convertvector(h, v8u) << 16); /* float32's top half */          \
    }                                                                                          \
    /* f16_to_f32 for eight values: the same integer steps, lane by lane */                    \
    TARGET_##ISA static inline v8f load_f16_##ISA(const void *p) {                             \
        v8h h;                                                                                 \
        memcpy(&h, p, sizeof h);                                                               \
        v8u x = __builtin_convertvector(h, v8u);                                               \
        v8u em = x & 0x7fff;                                /* exponent and mantissa */        \
        v8u bits = (em << 13) + (112u << 23);               /* exponent bias 15 -> 127 */      \
        bits += (v8u)(em >= 0x7c00) & (112u << 23);         /* inf and NaN: exponent 255 */    \
        bits |= (v8u)(em > 0x7c00) & 0x400000u;             /* NaN: quiet */                   \
        v8f sub = __builtin_convertvector((v8i)em, v8f) * 0x1p-24f; /* subnormal: m 2^-24 */   \
        v8u small = (v8u)(em < 0x400);                                                         \
        bits = ((v8u)sub & small) | (bits & ~small);                                           \
        return (v8f)(bits | (x & 0x8000) << 16);                                               \
    }

static inline float scalar_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static inline float scalar_bf16(const void *p, int64_t i) {
    return bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline float scalar_f16(const void *p, int64_t i) {
    return f16_to_f32(((const uint16_t *)p)[i]);
}

/* Sums about the shift of one block. */
typedef struct {
    int64_t n, zeros;
    double s, q, lo, hi;
} sums_t;

/* The block functions are written once, as macros, and compiled once per instruction set ISA
 * (portable, avx2): NAME_ISA, built with TARGET_ISA and the helpers vmin_ISA, widen_ISA...
 *
 * One block of m values at x (16- or 32-bit floats, read through LOAD8/SCALAR): extremes and
 * zeros in float32, deviations from k and their squares in float64. Four accumulators of
 * each sum, one of each extreme: what AVX2's 16 registers hold without spilling. */
#define BLOCK_NARROW(NAME, ISA, LOAD8, SCALAR, SIZE)                                           \
    TARGET_##ISA static inline void NAME##_##ISA(const char *x, int64_t m, double k,           \
                                                 sums_t *out) {                                \
        const v8f inf = {INFINITY, INFINITY, INFINITY, INFINITY,                               \
                         INFINITY, INFINITY, INFINITY, INFINITY};                              \
        const v8f zero = {0};                                                                  \
        const v4d kk = {k, k, k, k};                                                           \
        v8f lo = inf, hi = -inf;                                                               \
        v8i zeros = {0};                                                                       \
        v4d s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};    \
        int64_t i = 0;                                                                         \
        for (; i + 16 <= m; i += 16) {                                                         \
            v8f v = LOAD8##_##ISA(x + i * SIZE), u = LOAD8##_##ISA(x + (i + 8) * SIZE);        \
            lo = vmin_##ISA(vmin_##ISA(v, u), lo);                                             \
            hi = vmax_##ISA(vmax_##ISA(v, u), hi);                                             \
            zeros -= (v == zero) + (u == zero); /* a true comparison is -1 */                  \
            v4d a, b, c, d;                                                                    \
            widen_##ISA(v, &a, &b);                                                            \
            widen_##ISA(u, &c, &d);                                                            \
            a -= kk;                                                                           \
            b -= kk;                                                                           \
            c -= kk;                                                                           \
            d -= kk;                                                                           \
            s0 += a;                                                                           \
            s1 += b;                                                                           \
            s2 += c;                                                                           \
            s3 += d;                                                                           \
            q0 += a * a;                                                                       \
            q1 += b * b;                                                                       \
            q2 += c * c;                                                                       \
            q3 += d * d;                                                                       \
        }                                                                                      \
        v4d st = (s0 + s1) + (s2 + s3), qt = (q0 + q1) + (q2 + q3);                            \
        sums_t r = {m, 0, (st[0] + st[1]) + (st[2] + st[3]), (qt[0] + qt[1]) + (qt[2] + qt[3]), \
                    INFINITY, -INFINITY};                                                      \
        for (int l = 0; l < 8; l++) {                                                          \
            r.zeros += zeros[l];                                                               \
            r.lo = lo[l] < r.lo ? lo[l] : r.lo;                                                \
            r.hi = hi[l] > r.hi ? hi[l] : r.hi;                                                \
        }                                                                                      \
        for (; i < m; i++) {                                                                   \
            float v = SCALAR(x, i);                                                            \
            double d = (double)v - k;                                                          \
            r.s += d;                                                                          \
            r.q += d * d;                                                                      \
            r.zeros += (v == 0.0f);                                                            \
            r.lo = v < r.lo ? v : r.lo;                                                        \
            r.hi = v > r.hi ? v : r.hi;                                                        \
        }                                                                                      \
        *out = r;                                                                              \
    }

/* One block of m float64 values: as BLOCK_NARROW, all in float64. */
#define BLOCK_F64(ISA)                                                                         \
    TARGET_##ISA static inline void block_f64_##ISA(const char *p, int64_t m, double k,        \
                                                    sums_t *out) {                             \
        const double *x = (const double *)p;                                                   \
        const v4d inf = {INFINITY, INFINITY, INFINITY, INFINITY};                              \
        const v4d zero = {0};                                                                  \
        const v4d kk = {k, k, k, k};                                                           \
        v4d lo[2] = {inf, inf}, hi[2] = {-inf, -inf}, s[2] = {{0}}, q[2] = {{0}};              \
        v4l zeros[2] = {{0}};                                                                  \
        int64_t i = 0;                                                                         \
        for (; i + 8 <= m; i += 8)                                                             \
            for (int j = 0; j < 2; j++) {                                                      \
                v4d v;                                                                         \
                memcpy(&v, x + i + 4 * j, sizeof v);                                           \
                lo[j] = vmind_##ISA(v, lo[j]);                                                 \
                hi[j] = vmaxd_##ISA(v, hi[j]);                                                 \
                zeros[j] -= (v == zero);                                                       \
                v4d d = v - kk;                                                                \
                s[j] += d;                                                                     \
                q[j] += d * d;                                                                 \
            }                                                                                  \
        sums_t r = {m, 0, 0.0, 0.0, INFINITY, -INFINITY};                                      \
        for (int j = 0; j < 2; j++)                                                            \
            for (int l = 0; l < 4; l++) {                                                      \
                r.s += s[j][l];                                                                \
                r.q += q[j][l];                                                                \
                r.zeros += zeros[j][l];                                                        \
                r.lo = lo[j][l] < r.lo ? lo[j][l] : r.lo;                                      \
                r.hi = hi[j][l] > r.hi ? hi[j][l] : r.hi;                                      \
            }                                                                                  \
        for (; i < m; i++) {                                                                   \
            double d = x[i] - k;                                                               \
            r.s += d;                                                                          \
            r.q += d * d;                                                                      \
            r.zeros += (x[i] == 0.0);                                                          \
            r.lo = x[i] < r.lo ? x[i] : r.lo;                                                  \
            r.hi = x[i] > r.hi ? x[i] : r.hi;                                                  \
        }                                                                                      \
        *out = r;                                                                              \
    }

/* One block of any dtype. */
#define BLOCK_ANY(ISA)                                                                         \
    TARGET_##ISA static void block_any_##ISA(const char *p, int dtype, int64_t m, double k,    \
                                             sums_t *b) {                                      \
        switch (dtype) {                                                                       \
        case DT_F32:                                                                           \
            block_f32_##ISA(p, m, k, b);                                                       \
            break;                                                                             \
        case DT_F64:                                                                           \
            block_f64_##ISA(p, m, k, b);                                                       \
            break;                                                                             \
        case DT_F16:                                                                           \
            block_f16_##ISA(p, m, k, b);                                                       \
            break;                                                                             \
        default:                                                                               \
            block_bf16_##ISA(p, m, k, b);                                                      \
            break;                                                                             \
        }                                                                                      \
    }

#define BLOCKS(ISA)                                                                            \
    LOADS(ISA)                                                                                 \
    BLOCK_NARROW(block_f32, ISA, load_f32, scalar_f32, 4)                                      \
    BLOCK_NARROW(block_bf16, ISA, load_bf16, scalar_bf16, 2)                                   \
    BLOCK_NARROW(block_f16, ISA, load_f16, scalar_f16, 2)                                      \
    BLOCK_F64(ISA)                                                                             \
    BLOCK_ANY(ISA)

BLOCKS(portable)
#if KERNEL_AVX2
BLOCKS(avx2)
#endif

/* The block code the scans run, and its name for fused_isa: chosen once, when the library is
 * loaded (pick_isa), and called through a pointer once per block of 2048 values, which costs
 * nothing next to the block. */
typedef void block_fn(const char *p, int dtype, int64_t m, double k, sums_t *b);
static block_fn *block_any = block_any_portable;
static const char *isa = "portable";

static void pick_isa(int portable) {
    block_any = block_any_portable;
    isa = "portable";
#if KERNEL_AVX2
    __builtin_cpu_init(); /* needed before __builtin_cpu_supports in a constructor */
    /* true only where the OS also saves the AVX registers (libgcc reads XCR0) */
    if (!portable && __builtin_cpu_supports("avx2")) {
        block_any = block_any_avx2;
        isa = "avx2";
    }
#else
    (void)portable;
#endif
}

__attribute__((constructor)) static void pick_isa_at_load(void) { pick_isa(0); }

static inline double value_at(const void *x, int dtype, int64_t i) {
    switch (dtype) {
    case DT_F32:
        return ((const float *)x)[i];
    case DT_F64:
        return ((const double *)x)[i];
    case DT_F16:
        return f16_to_f32(((const uint16_t *)x)[i]);
    default:
        return bf16_to_f32(((const uint16_t *)x)[i]);
    }
}

static int known(int dtype) { return dtype >= DT_F32 && dtype <= DT_BF16; }

static size_t itemsize(int dtype) { return dtype == DT_F64 ? 8 : dtype == DT_F32 ? 4 : 2; }

/* The shift for the blocks of a segment: the median of up to 33 finite values evenly spaced
 * over the block x[b, e), else of its first 33 finite values; 0 (no shift found) when the block
 * has none, and the next block is tried. A median, not a mean, so that one outlier cannot move
 * it far; and any distance from the segment's mean comes from values of the segment, so the
 * precision loss eps * ((mean - K) / std)^2 stays within eps * (segment / block) = 128 eps. */
static int shift_of(const void *x, int dtype, int64_t b, int64_t e, double *k) {
    double picks[33];
    int n = 0;
    int64_t len = e - b, step = len / 33 > 0 ? len / 33 : 1;
    for (int64_t i = b; i < e && n < 33; i += step) {
        double v = value_at(x, dtype, i);
        if (isfinite(v)) picks[n++] = v;
    }
    for (int64_t i = b; i < e && n == 0; i++) { /* the evenly spaced ones were NaN or inf */
        double v = value_at(x, dtype, i);
        if (isfinite(v)) picks[n++] = v;
    }
    if (n == 0) return 0;
    for (int i = 1; i < n; i++) /* insertion sort: at most 33 values */
        for (int j = i; j > 0 && picks[j - 1] > picks[j]; j--) {
            double t = picks[j];
            picks[j] = picks[j - 1];
            picks[j - 1] = t;
        }
    *k = picks[n / 2];
    return 1;
}

/* NaN and inf counted and left out; a mean of values near the float64 maximum formed from
 * x/m so that it cannot overflow; a spread beyond ~1e154 is inf, as the torch path gives. */
static void block_careful(const double *w, int64_t m, acc_t *a) {
    int64_t k = 0, zeros = 0;
    double lo = INFINITY, hi = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < m; i++) {
        double v = w[i];
        if (isnan(v)) {
            a->nans++;
        } else if (isinf(v)) {
            a->infs++;
        } else {
            k++;
            zeros += (v == 0.0);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            sum += v;
        }
    }
    if (k == 0) return;
    double mean;
    if (isfinite(sum)) {
        mean = sum / (double)k;
    } else {
        mean = 0.0;
        for (int64_t i = 0; i < m; i++)
            if (isfinite(w[i])) mean += w[i] / (double)k;
    }
    double sq = 0.0;
    for (int64_t i = 0; i < m; i++)
        if (isfinite(w[i])) {
            double d = w[i] - mean;
            sq += d * d;
        }
    a->zeros += zeros;
    acc_add(a, k, mean, sq, lo, hi);
}

/* One scan: the statistics of values [start, stop) of a tensor, read from memory or from a
 * file, with the sample positions and the lines (rows or columns of its matrix view) it asks
 * for copied out on the way, so that nothing is read twice. */
typedef struct {
    const char *mem;     /* the values in memory, or NULL: read them from fd */
    int64_t fd;
    int64_t file_offset; /* where value 0 starts in the file */
    int64_t dtype;
    int64_t seg;         /* values per accumulator; out[j] covers [j*seg, (j+1)*seg) */
    acc_t *out;
    const int64_t *pos;  /* ascending flat positions to copy out (the sample) */
    int64_t npos;
    double *sample;
    const int64_t *line_start; /* lines to copy out: x[line_start[r] + j*line_stride] */
    int64_t nlines;
    int64_t line_len;
    int64_t line_stride;
    double *lines;       /* nlines x line_len */
} scan_t;

enum { SCAN_OK = 0, SCAN_SHORT = 1, SCAN_NOMEM = 2 };

/* Values per read: 32 Ki (128 KiB of float32) stays in L2 between the read and the pass, so
 * the file's bytes go from the page cache to the cache to the registers, with no page faults
 * (a memory map of the file costs one per 64 KiB, more than the arithmetic) and no copy to
 * fresh memory. A multiple of BLOCK, and a divisor of any segment size Python passes. */
#define CHUNK (16 * BLOCK)

static int read_at(int fd, char *buf, size_t n, off_t at) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, buf + done, n - done, at + (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -errno;
        if (got == 0) return SCAN_SHORT; /* the file ends early: truncated, or rewritten */
        done += (size_t)got;
    }
    return SCAN_OK;
}

/* The lines' values within x[c0, c1), one loop per dtype with typed loads (a switch per
 * value made copying 64 rows of each of the bf16 bench file's 1026 matrices cost 0.75 s). */
#define CAPTURE_LINES(NAME, T, CONV)                                                           \
    static void NAME(const scan_t *job, const char *xc, int64_t c0, int64_t c1) {              \
        const T *x = (const T *)xc;                                                            \
        int64_t stride = job->line_stride, len = job->line_len;                                \
        for (int64_t r = 0; r < job->nlines; r++) {                                            \
            int64_t s0 = job->line_start[r];                                                   \
            int64_t j = c0 > s0 ? (c0 - s0 + stride - 1) / stride : 0;                         \
            int64_t hi = c1 > s0 ? (c1 - s0 + stride - 1) / stride : 0;                        \
            if (hi > len) hi = len;                                                            \
            double *out = job->lines + r * len;                                                \
            for (; j < hi; j++) out[j] = (double)CONV(x[s0 + j * stride - c0]);                \
        }                                                                                      \
    }

#define AS_IS(v) (v)
CAPTURE_LINES(lines_f32, float, AS_IS)
CAPTURE_LINES(lines_f64, double, AS_IS)
CAPTURE_LINES(lines_f16, uint16_t, f16_to_f32)
CAPTURE_LINES(lines_bf16, uint16_t, bf16_to_f32)

static void capture(const scan_t *job, const char *x, int64_t c0, int64_t c1, int64_t *cursor) {
    int dtype = (int)job->dtype;
    while (*cursor < job->npos && job->pos[*cursor] < c1) {
        int64_t p = job->pos[*cursor];
        if (p >= c0) job->sample[*cursor] = value_at(x, dtype, p - c0);
        (*cursor)++;
    }
    if (job->nlines == 0) return;
    switch (dtype) {
    case DT_F32:
        lines_f32(job, x, c0, c1);
        break;
    case DT_F64:
        lines_f64(job, x, c0, c1);
        break;
    case DT_F16:
        lines_f16(job, x, c0, c1);
        break;
    default:
        lines_bf16(job, x, c0, c1);
        break;
    }
}

/* Values [start, stop) of the job, both on segment boundaries (or stop at the end): one
 * accumulator per segment. A block whose sums about the segment's shift are finite joins it
 * by Chan's update (from its mean K + s/m and M2 = q - s(s/m), which cannot overflow when q
 * does not: s^2 <= m q); a block with NaN, inf or an overflowing square takes the careful
 * path. Blocks before the first finite value have no shift and are all careful. */
int fused_scan(const scan_t *job, int64_t start, int64_t stop) {
    int dtype = (int)job->dtype;
    if (!known(dtype)) return -EINVAL;
    size_t size = itemsize(dtype);
    char *buffer = NULL;
    if (job->mem == NULL && (buffer = malloc(CHUNK * size)) == NULL) return SCAN_NOMEM;
    int64_t lo_i = 0, hi_i = job->npos; /* the first sample position at or after start */
    while (lo_i < hi_i) {
        int64_t mid = lo_i + (hi_i - lo_i) / 2;
        if (job->pos[mid] < start) lo_i = mid + 1;
        else hi_i = mid;
    }
    int64_t cursor = lo_i;
    int status = SCAN_OK;
    double w[BLOCK];
    for (int64_t s = start; s < stop && status == SCAN_OK; s += job->seg) {
        acc_t *a = &job->out[s / job->seg];
        acc_init(a);
        int64_t end = s + job->seg < stop ? s + job->seg : stop;
        double k = 0.0;
        int have_k = 0;
        for (int64_t c0 = s; c0 < end; c0 += CHUNK) {
            int64_t c1 = c0 + CHUNK < end ? c0 + CHUNK : end;
            const char *x;
            if (buffer != NULL) {
                status = read_at((int)job->fd, buffer, (size_t)(c1 - c0) * size,
                                 (off_t)(job->file_offset + c0 * (int64_t)size));
                if (status != SCAN_OK) break;
                x = buffer;
            } else {
                x = job->mem + c0 * (int64_t)size;
            }
            for (int64_t i = 0; i < c1 - c0; i += BLOCK) {
                int64_t m = c1 - c0 - i < BLOCK ? c1 - c0 - i : BLOCK;
                if (!have_k) have_k = shift_of(x, dtype, i, i + m, &k);
                sums_t b = {0, 0, NAN, NAN, 0.0, 0.0};
                if (have_k) block_any(x + i * (int64_t)size, dtype, m, k, &b);
                if (isfinite(b.s) && isfinite(b.q)) {
                    double m2 = b.q - b.s * (b.s / (double)m);
                    a->zeros += b.zeros;
                    acc_add(a, m, k + b.s / (double)m, m2 > 0.0 ? m2 : 0.0, b.lo, b.hi);
                } else {
                    for (int64_t j = 0; j < m; j++) w[j] = value_at(x, dtype, i + j);
                    block_careful(w, m, a);
                }
            }
            capture(job, x, c0, c1, &cursor); /* after the pass: the chunk is in cache now */
        }
    }
    free(buffer);
    return status;
}

/* The sums identification's row-independence test needs from k rows of len float64 values
 * (see _p_rows in identification.py): each row's mean, the grand mean, and about the grand
 * mean each row's sum of squares and the whole's sum of fourth powers. Two passes, no
 * temporaries; torch needed five passes and two 4 MiB temporaries for a 64 x 8192 block. */
static inline __attribute__((always_inline)) void
rows_body(const double *rows, int64_t k, int64_t len, double *row_means, double *row_squares,
          double *grand_and_fourth) {
    double grand = 0.0;
    for (int64_t r = 0; r < k; r++) {
        const double *x = rows + r * len;
        v4d s = {0};
        int64_t j = 0;
        for (; j + 4 <= len; j += 4) {
            v4d v;
            memcpy(&v, x + j, sizeof v);
            s += v;
        }
        double t = (s[0] + s[1]) + (s[2] + s[3]);
        for (; j < len; j++) t += x[j];
        row_means[r] = t / (double)len;
        grand += row_means[r];
    }
    grand /= (double)k;
    const v4d g = {grand, grand, grand, grand};
    double fourth = 0.0;
    for (int64_t r = 0; r < k; r++) {
        const double *x = rows + r * len;
        v4d q = {0}, f = {0};
        int64_t j = 0;
        for (; j + 4 <= len; j += 4) {
            v4d v;
            memcpy(&v, x + j, sizeof v);
            v4d d = v - g, d2 = d * d;
            q += d2;
            f += d2 * d2;
        }
        double tq = (q[0] + q[1]) + (q[2] + q[3]), tf = (f[0] + f[1]) + (f[2] + f[3]);
        for (; j < len; j++) {
            double d = x[j] - grand;
            tq += d * d;
            tf += d * d * d * d;
        }
        row_squares[r] = tq;
        fourth += tf;
    }
    grand_and_fourth[0] = grand;
    grand_and_fourth[1] = fourth;
}

/* rows_body compiled twice: a function inlined into another takes that function's target,
 * and it needs no AVX-only helper (its vector code is the compiler's own). */
static void rows_portable(const double *rows, int64_t k, int64_t len, double *row_means,
                          double *row_squares, double *grand_and_fourth) {
    rows_body(rows, k, len, row_means, row_squares, grand_and_fourth);
}
#if KERNEL_AVX2
TARGET_avx2 static void rows_avx2(const double *rows, int64_t k, int64_t len, double *row_means,
                                  double *row_squares, double *grand_and_fourth) {
    rows_body(rows, k, len, row_means, row_squares, grand_and_fourth);
}
#endif

static void row_sums(const double *rows, int64_t k, int64_t len, double *row_means,
                     double *row_squares, double *grand_and_fourth) {
#if KERNEL_AVX2
    if (block_any == block_any_avx2) {
        rows_avx2(rows, k, len, row_means, row_squares, grand_and_fourth);
        return;
    }
#endif
    rows_portable(rows, k, len, row_means, row_squares, grand_and_fourth);
}

/* The row test's statistics (identification._p_rows) from k >= 2 rows of len >= 2 float64
 * values, in one call where Python spent ~45 us on a few dozen numbers: with each row's
 * mean m_r about the grand mean, its sum of squares q_r about the grand mean and n = k len,
 * s2 = sum q_r / n; mu4 = (sum of fourth powers) / n; each row's sample variance
 * v_r = (q_r - len m_r^2) / (len - 1); v0 = (mu4 - s2^2 (len - 3) / (len - 1)) / len, the
 * variance of a row's sample variance. out = {sum (m_r - mean m)^2 / (s2 / len),
 * sum (v_r - mean v)^2 / v0, s2, v0}: the two chi-square statistics (k - 1 degrees of
 * freedom each) and what they are divided by, which the caller checks (s2 = 0: no spread,
 * v0 <= 0: no variance test). Returns 0, or -1 when scratch memory cannot be had. */
int fused_row_test(const double *rows, int64_t k, int64_t len, double *out) {
    double *means = malloc(2 * (size_t)k * sizeof(double));
    if (means == NULL) return -1;
    double *squares = means + k, grand_and_fourth[2];
    row_sums(rows, k, len, means, squares, grand_and_fourth);
    const double grand = grand_and_fourth[0], n = (double)k * (double)len, dl = (double)len;
    double total = 0.0, mean_of_means = 0.0;
    for (int64_t r = 0; r < k; r++) {
        means[r] -= grand; /* each row's mean of the centred values */
        total += squares[r];
        mean_of_means += means[r];
    }
    mean_of_means /= (double)k;
    const double s2 = total / n, mu4 = grand_and_fourth[1] / n;
    const double v0 = (mu4 - s2 * s2 * (dl - 3) / (dl - 1)) / dl;
    double spread_means = 0.0, mean_of_variances = 0.0;
    for (int64_t r = 0; r < k; r++) {
        double d = means[r] - mean_of_means;
        spread_means += d * d;
        squares[r] = (squares[r] - dl * means[r] * means[r]) / (dl - 1); /* now v_r */
        mean_of_variances += squares[r];
    }
    mean_of_variances /= (double)k;
    double spread_variances = 0.0;
    for (int64_t r = 0; r < k; r++) {
        double d = squares[r] - mean_of_variances;
        spread_variances += d * d;
    }
    out[0] = spread_means / (s2 / dl);
    out[1] = spread_variances / v0;
    out[2] = s2;
    out[3] = v0;
    free(means);
    return 0;
}

/* -- identification's sample work ---------------------------------------------------------
 *
 * Identification tests each tensor's bounded sample (4096 values at most) against its
 * candidates: the KS test needs the sample sorted, the kurtosis test its b2 = m4 / m2^2. A
 * comparison sort of 4096 random doubles costs about 250 us (the branches mispredict; torch's
 * sort measured so, and 55 us only when the same values are sorted again and again), which was
 * most of identification's time on a checkpoint of thousands of tensors. */

/* A double's bits as an unsigned key that orders as the doubles do: negative values
 * (sign set) have every bit flipped, others the sign bit set. -0.0 sorts just before +0.0,
 * which compare equal, so the sorted values are those of any correct sort. */
static inline uint64_t sort_key(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

static inline double key_value(uint64_t k) {
    uint64_t u = (k >> 63) ? (k & 0x7fffffffffffffffull) : ~k;
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* LSD radix sort of n doubles into out, with tmp (n words) as the other buffer. Only the
 * bits that differ between keys are sorted on, in as few passes of at most RADIX_BITS bits as
 * cover them: a bf16 value as a double has 19 significant bits (sign, exponent, 7 of
 * mantissa), two passes; float32's 35, four; float64's 64, six. A negative value's key has
 * its low bits flipped (ones where a positive's are zeros), so bits are compared within each
 * sign: one that is constant among the negatives and among the positives orders nothing that
 * the sign (the top bit, in the last pass) does not. Stable, and branch-free in its inner
 * loops: O(n) whatever the values. count holds 2^RADIX_BITS counters. */
#define RADIX_BITS 11
static void radix_sort(const double *x, int64_t n, uint64_t *keys, uint64_t *tmp, double *out,
                       int64_t *count) {
    if (n == 0) return;
    uint64_t first[2] = {0, 0}, differ = 0;
    int seen[2] = {0, 0};
    for (int64_t i = 0; i < n; i++) {
        uint64_t k = sort_key(x[i]);
        int positive = (int)(k >> 63);
        keys[i] = k;
        if (!seen[positive]) {
            seen[positive] = 1;
            first[positive] = k;
        }
        differ |= k ^ first[positive];
    }
    if (seen[0] && seen[1]) differ |= 1ull << 63; /* the top bit splits the signs */
    uint64_t *src = keys, *dst = tmp;
    if (differ != 0) {
        int low = __builtin_ctzll(differ), high = 63 - __builtin_clzll(differ);
        int span = high - low + 1;
        int passes = (span + RADIX_BITS - 1) / RADIX_BITS;
        int width = (span + passes - 1) / passes;
        uint64_t mask = (1ull << width) - 1;
        for (int p = 0; p < passes; p++) {
            int shift = low + p * width;
            size_t buckets = (size_t)1 << width;
            memset(count, 0, buckets * sizeof(int64_t));
            for (int64_t i = 0; i < n; i++) count[(src[i] >> shift) & mask]++;
            int64_t at = 0;
            for (size_t d = 0; d < buckets; d++) {
                int64_t m = count[d];
                count[d] = at;
                at += m;
            }
            for (int64_t i = 0; i < n; i++) {
                uint64_t k = src[i];
                dst[count[(k >> shift) & mask]++] = k;
            }
            uint64_t *swap = src;
            src = dst;
            dst = swap;
        }
    }
    for (int64_t i = 0; i < n; i++) out[i] = key_value(src[i]);
}

/* For each of count samples (sample j: values[offsets[j] .. offsets[j + 1])): the values
 * sorted ascending into sorted (same offsets) and the sample kurtosis b2 = m4 / m2^2 about
 * the mean into b2[j] (NaN for an empty or constant sample). Returns 0, or -1 when the
 * scratch memory cannot be had. */
int fused_samples(const double *values, const int64_t *offsets, int64_t count, double *sorted,
                  double *b2) {
    int64_t longest = 0;
    for (int64_t j = 0; j < count; j++) {
        int64_t m = offsets[j + 1] - offsets[j];
        if (m > longest) longest = m;
    }
    uint64_t *keys = malloc(2 * (size_t)(longest > 0 ? longest : 1) * sizeof(uint64_t));
    int64_t *counters = malloc(((size_t)1 << RADIX_BITS) * sizeof(int64_t));
    if (keys == NULL || counters == NULL) {
        free(keys);
        free(counters);
        return -1;
    }
    for (int64_t j = 0; j < count; j++) {
        const double *x = values + offsets[j];
        int64_t m = offsets[j + 1] - offsets[j];
        radix_sort(x, m, keys, keys + longest, sorted + offsets[j], counters);
        double sum = 0.0;
        for (int64_t i = 0; i < m; i++) sum += x[i];
        double mean = m ? sum / (double)m : 0.0, s2 = 0.0, s4 = 0.0;
        for (int64_t i = 0; i < m; i++) {
            double d = x[i] - mean, d2 = d * d;
            s2 += d2;
            s4 += d2 * d2;
        }
        double m2 = m ? s2 / (double)m : 0.0;
        b2[j] = m2 > 0 ? (s4 / (double)m) / (m2 * m2) : NAN;
    }
    free(keys);
    free(counters);
    return 0;
}

enum { KS_UNIFORM = 0, KS_NORMAL = 1, KS_TRUNC_NORMAL = 2 };

/* A continuous CDF with the operations of Distribution.cdf: uniform (a = low, b = high):
 * clamp((x - a) / (b - a), 0, 1); normal (a = loc, b = scale): 0.5 (1 + erf((x - a) / (b
 * sqrt 2))); truncated normal: that normal's CDF rescaled from [lo, hi] (its CDF at the cut
 * points) to [0, 1], clamped. */
typedef struct {
    int family;
    double a, b, lo, hi;
} cdf_t;

static inline double cdf_at(const cdf_t *c, double x) {
    const double root2 = 1.4142135623730951; /* math.sqrt(2.0), as distributions._SQRT2 */
    double f;
    if (c->family == KS_UNIFORM) {
        f = (x - c->a) / (c->b - c->a);
        return f < 0.0 ? 0.0 : (f > 1.0 ? 1.0 : f);
    }
    f = 0.5 * (1.0 + erf((x - c->a) / (c->b * root2)));
    if (c->family == KS_TRUNC_NORMAL) {
        f = (f - c->lo) / (c->hi - c->lo);
        f = f < 0.0 ? 0.0 : (f > 1.0 ? 1.0 : f);
    }
    return f;
}

/* Values per block of the KS search below: a block's bound exceeds its terms by at most
 * KS_BLOCK/n, so a small block is passed over unless it lies near the maximum. */
#define KS_BLOCK 8

/* The KS distance of n sorted values from a continuous CDF, as goodness.ks_test computes it:
 * D = max over i of (i + 1)/n - F(x_i) and F(x_i) - i/n (0-based i). NaN for an unknown
 * family, or when scratch memory cannot be had.
 *
 * The same maximum, with the CDF taken at a fraction of the values (an erf costs ~10 ns, so
 * 4096 of them were most of a candidate's test): F rises, so for the values x_j..x_{j+B-1}
 * of a block every term is at most (j + B)/n - F(x_j) or F(x_{j+B}) - j/n. The CDF is taken at
 * every B-th value, and a block is read value by value only when that bound could beat the
 * largest term found so far. A computed erf may fall by an ulp where the true one rises, so
 * a block is passed over only when its bound is below the best by 1e-12 (a million ulps of a
 * CDF value; divided by hi - lo for a truncated normal, whose rescaling magnifies them): every
 * term that could be the maximum is computed, and D is the same number the full pass gives.
 * NaN values, or a CDF that gives NaN, give NaN, as the full pass's max does. */
double fused_ks(const double *sorted, int64_t n, int family, double a, double b, double lo,
                double hi) {
    if (family != KS_UNIFORM && family != KS_NORMAL && family != KS_TRUNC_NORMAL) return NAN;
    if (n <= 0) return NAN;
    for (int64_t i = 0; i < n; i++)
        if (sorted[i] != sorted[i]) return NAN; /* NaN values: no distance, as torch's max */
    const cdf_t c = {family, a, b, lo, hi};
    /* The truncated normal's rescaling magnifies an ulp of erf by 1 / (hi - lo). */
    const double slack = family == KS_TRUNC_NORMAL ? 1e-12 / (hi - lo) : 1e-12;
    int nan = 0;
    const double dn = (double)n;
    int64_t blocks = (n + KS_BLOCK - 1) / KS_BLOCK;
    double *f = malloc((size_t)(blocks + 1) * sizeof(double)); /* F at each block's start, and
                                                                   at the last value */
    if (f == NULL) return NAN;
    double d = -INFINITY;
    for (int64_t k = 0; k <= blocks; k++) {
        int64_t i = k < blocks ? k * KS_BLOCK : n - 1;
        f[k] = cdf_at(&c, sorted[i]);
        double above = (double)(i + 1) / dn - f[k], below = f[k] - (double)i / dn;
        nan |= above != above || below != below;
        if (above > d) d = above;
        if (below > d) d = below;
    }
    for (int64_t k = 0; k < blocks; k++) {
        int64_t j = k * KS_BLOCK, e = j + KS_BLOCK < n ? j + KS_BLOCK : n;
        /* the values after x_j in the block lie between x_j and x_e (the last value for the
         * last block, whose own terms are counted above) */
        double up = (double)e / dn - f[k], down = f[k + 1] - (double)j / dn;
        if ((up > down ? up : down) < d - slack) continue;
        for (int64_t i = j + 1; i < e; i++) {
            double v = cdf_at(&c, sorted[i]);
            double above = (double)(i + 1) / dn - v, below = v - (double)i / dn;
            nan |= above != above || below != below;
            if (above > d) d = above;
            if (below > d) d = below;
        }
    }
    free(f);
    return nan ? NAN : d;
}

/* The layout of scan_t and acc_t and the functions' signatures: native.py checks it matches its
 * own (a module built from another version of this file is not used). */
int fused_version(void) { return 6; }

/* The instruction set the scans and rows run with: "avx2" or "portable". */
const char *fused_isa(void) { return isa; }

/* For tests: run the portable code even where the CPU has AVX2 (portable = 1), or the best the
 * CPU has (0). Not while a scan runs. Returns fused_isa(). */
const char *fused_prefer_portable(int portable) {
    pick_isa(portable);
    return isa;
}

/* The extension module: nothing but a file Python can find and import (as
 * initscope.stats._kernel), which is how the installed library is located. Limited API, so
 * one build serves every Python from 3.10 on. */
static PyModuleDef_Slot kernel_slots[] = {
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED}, /* free-threaded Python: nothing here needs the GIL */
#endif
    {0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT,
    "initscope.stats._kernel",
    "initscope's fused statistics kernel; its functions are called through ctypes.",
    0,
    NULL,
    kernel_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModuleDef_Init(&kernel_module); }
