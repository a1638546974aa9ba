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
 * sum (v_r - mean v)^2 / v0, s2, v0, |row 0|^2, row 0 . row 1}: the two chi-square
 * statistics (k - 1 degrees of freedom each) and what they are divided by, which the caller
 * checks (s2 = 0: no spread, v0 <= 0: no variance test), then the orthogonality test's first
 * numbers. Returns 0, or -1 when scratch memory cannot be had. */
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
    /* The first row's squared norm and its product with the second: the orthogonality test
     * (_orthogonal) asks these first and stops there for all but orthogonal matrices. */
    double norm0 = 0.0, dot01 = 0.0;
    for (int64_t j = 0; j < len; j++) norm0 += rows[j] * rows[j];
    for (int64_t j = 0; k > 1 && j < len; j++) dot01 += rows[j] * rows[len + j];
    out[4] = norm0;
    out[5] = k > 1 ? dot01 : NAN;
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
 * which compare equal, so the sorted values are those of any correct sort. Branch-free: a
 * sample's signs are random, and a branch on them mispredicts half the time. */
static inline uint64_t sort_key(double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u ^ ((0 - (u >> 63)) | 0x8000000000000000ull);
}

static inline double key_value(uint64_t k) {
    uint64_t u = k ^ (((k >> 63) - 1) | 0x8000000000000000ull);
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* LSD radix sort of n doubles into out, with keys and tmp (n words each) as buffers; returns
 * the values' sum (four partial sums, added pairwise), for their mean.
 *
 * Only the bits that vary within a sign are sorted on: keys of one sign share every bit above
 * the highest that differs among them and below the lowest (a negative key has its bits
 * flipped, so the signs are taken apart), so each key is packed into those w bits with the
 * sign above them, and the shared bits of its sign are put back as the last pass writes the
 * value. A bf16 value as a double varies in 7 mantissa bits and a few exponent bits (~13
 * bits with the sign: two passes), float32's in ~29 (three), float64's in ~58 (six); passes
 * of at most RADIX_BITS bits. Stable, and branch-free in its inner loops: O(n) whatever the
 * values. count holds 2^RADIX_BITS counters. */
#define RADIX_BITS 11
static double radix_sort(const double *restrict x, int64_t n, uint64_t *restrict keys,
                         uint64_t *restrict tmp, double *restrict out, int64_t *restrict count) {
    if (n == 0) return 0.0;
    /* the bits set in every key of a sign (and_*) and in any (or_*), with masks, not
     * branches */
    uint64_t or_p = 0, and_p = ~0ull, or_n = 0, and_n = ~0ull;
    int64_t npos = 0, i;
    for (i = 0; i < n; i++) {
        uint64_t k = sort_key(x[i]), positive = k >> 63, m = 0 - positive;
        keys[i] = k;
        npos += (int64_t)positive;
        or_p |= k & m;
        and_p &= k | ~m;
        or_n |= k & ~m;
        and_n &= k | m;
    }
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (i = 0; i + 4 <= n; i += 4) {
        s0 += x[i];
        s1 += x[i + 1];
        s2 += x[i + 2];
        s3 += x[i + 3];
    }
    for (; i < n; i++) s0 += x[i];
    const double sum = (s0 + s1) + (s2 + s3);
    uint64_t differ = 0;
    if (npos > 0) differ |= or_p ^ and_p;
    if (npos < n) differ |= or_n ^ and_n;
    differ &= 0x7fffffffffffffffull;
    const uint64_t both = npos > 0 && npos < n, one_sign = npos > 0;
    const int low = differ ? __builtin_ctzll(differ) : 0;
    const int w = differ ? 64 - __builtin_clzll(differ) - low : 0;
    const uint64_t wmask = w >= 64 ? ~0ull : (1ull << w) - 1;
    const uint64_t base[2] = {and_n & ~(wmask << low), and_p & ~(wmask << low)};
    const int bits = w + (int)both;
    if (bits == 0) { /* every key the same */
        for (i = 0; i < n; i++) out[i] = key_value(keys[0]);
        return sum;
    }
    for (i = 0; i < n; i++) {
        uint64_t k = keys[i];
        keys[i] = (((k >> 63) & both) << w) | ((k >> low) & wmask);
    }
    const int passes = (bits + RADIX_BITS - 1) / RADIX_BITS;
    const int width = (bits + passes - 1) / passes;
    const uint64_t mask = (1ull << width) - 1;
    const size_t buckets = (size_t)1 << width;
    uint64_t *src = keys, *dst = tmp;
    for (int p = 0; p < passes; p++) {
        const int shift = p * width;
        memset(count, 0, buckets * sizeof(int64_t));
        for (i = 0; i < n; i++) count[(src[i] >> shift) & mask]++;
        int64_t at = 0;
        for (size_t d = 0; d < buckets; d++) {
            int64_t m = count[d];
            count[d] = at;
            at += m;
        }
        if (p < passes - 1) {
            for (i = 0; i < n; i++) {
                uint64_t k = src[i];
                dst[count[(k >> shift) & mask]++] = k;
            }
            uint64_t *swap = src;
            src = dst;
            dst = swap;
        } else { /* the last pass writes the values, their shared bits put back */
            for (i = 0; i < n; i++) {
                uint64_t k = src[i], sign = both ? (k >> w) & 1 : one_sign;
                out[count[(k >> shift) & mask]++] = key_value(base[sign] | ((k & wmask) << low));
            }
        }
    }
    return sum;
}

/* For each of count samples (sample j: the offsets[j + 1] - offsets[j] values at values[j],
 * each where its caller holds it, nothing copied together first): the values sorted
 * ascending into sorted[offsets[j] .. offsets[j + 1]) and the sample kurtosis b2 = m4 / m2^2 about
 * the mean into b2[j] (NaN for an empty or constant sample). The sums run in four partial
 * sums (the loops pipeline; one running sum waits on each add). Returns 0, or -1 when the
 * scratch memory cannot be had. */
int fused_samples(const double *const *values, const int64_t *offsets, int64_t count,
                  double *sorted, double *b2) {
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
        const double *x = values[j];
        int64_t m = offsets[j + 1] - offsets[j], i;
        double sum = radix_sort(x, m, keys, keys + longest, sorted + offsets[j], counters);
        double mean = m ? sum / (double)m : 0.0;
        double a2[4] = {0.0, 0.0, 0.0, 0.0}, a4[4] = {0.0, 0.0, 0.0, 0.0};
        for (i = 0; i + 4 <= m; i += 4) {
            for (int l = 0; l < 4; l++) {
                double d = x[i + l] - mean, d2 = d * d;
                a2[l] += d2;
                a4[l] += d2 * d2;
            }
        }
        for (; i < m; i++) {
            double d = x[i] - mean, d2 = d * d;
            a2[0] += d2;
            a4[0] += d2 * d2;
        }
        double s2 = (a2[0] + a2[1]) + (a2[2] + a2[3]), s4 = (a4[0] + a4[1]) + (a4[2] + a4[3]);
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

/* P(K > x) for the Kolmogorov distribution, as goodness.kolmogorov_sf computes it in Python
 * (the same terms, summed in the same order: the same bits), where its loop of up to a
 * hundred exp calls was most of a KS test's Python time. */
double fused_kolmogorov_sf(double x) {
    if (x <= 0 || x < 0.2) return 1.0; /* 1 to 1e-20 below 0.2, where the series is slow */
    double total = 0.0;
    for (int k = 1; k <= 100; k++) {
        double term = exp(-2.0 * (double)k * (double)k * x * x);
        total = (k % 2) ? total + term : total - term;
        if (term < 1e-16) break;
    }
    double r = 2.0 * total;
    r = r < 1.0 ? r : 1.0; /* Python's min(1.0, r) and max(0.0, .), NaN included */
    return r > 0.0 ? r : 0.0;
}

/* The layout of scan_t and acc_t and the functions' signatures: native.py checks it matches its
 * own (a module built from another version of this file is not used). */
/* -- sample positions ------------------------------------------------------------------
 *
 * tensor.sample_positions draws one position in each of size equal strata of a tensor's flat
 * range with torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=float64):
 * ~50 us a tensor in torch calls (a generator made and seeded, the draw, four ops), where a
 * checkpoint of thousands of small tensors needs microseconds. The same positions, computed
 * as torch computes them: its CPU generator is the Mersenne Twister MT19937
 * (ATen/core/MT19937RNGEngine.h, seeded with the low 32 bits of the seed); a float64 draw
 * takes two of its words, the first as the high half (CPUGeneratorImpl::random64), and keeps
 * the low 53 bits times 2^-53 (uniform_real in ATen/core/TransformationHelper.h); rand fills
 * the tensor in order (uniform_kernel in ATen/native/cpu/DistributionTemplates.h). A test
 * checks the positions against torch's, seed by seed. */
#define MT_N 624
#define MT_M 397

typedef struct {
    uint32_t state[MT_N];
    uint32_t out[MT_N]; /* the current state's words, tempered */
    int next;
} mt19937_t;

static void mt_seed(mt19937_t *g, uint64_t seed) {
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (uint32_t j = 1; j < MT_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
    g->next = MT_N; /* the first draw twists first, as torch's left_ = 1 does */
}

/* mask, not branch: the loops below vectorize */
static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
    uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((0u - (v & 1u)) & 0x9908b0dfu);
}

/* The next state (torch's next_state), and all its words tempered at once. */
static void mt_refill(mt19937_t *g) {
    uint32_t *s = g->state;
    int j = 0;
    for (; j < MT_N - MT_M; j++) s[j] = s[j + MT_M] ^ mt_twist(s[j], s[j + 1]);
    for (; j < MT_N - 1; j++) s[j] = s[j + MT_M - MT_N] ^ mt_twist(s[j], s[j + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
    for (j = 0; j < MT_N; j++) {
        uint32_t y = s[j];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        g->out[j] = y;
    }
    g->next = 0;
}

static inline uint32_t mt_draw(mt19937_t *g) {
    if (g->next >= MT_N) mt_refill(g);
    return g->out[g->next++];
}

/* out[i] for i < size (0 < size < numel): stratum i is [i * numel / size, (i + 1) * numel /
 * size) (integer division, as torch.arange(size + 1) * numel // size), and its position the
 * first plus min(floor(u_i * width), width - 1) for the i-th uniform u_i of the seed. */
void fused_positions(uint64_t seed, int64_t numel, int64_t size, int64_t *out) {
    mt19937_t g;
    mt_seed(&g, seed);
    const double scale = 1.0 / 9007199254740992.0; /* 2^-53 */
    /* (i + 1) * numel / size = (i + 1) * q + floor((i + 1) * r / size), the second term
     * counted as (i + 1) * r wraps past size: no product that could overflow, no division */
    const int64_t q = numel / size, r = numel % size;
    int64_t first = 0, next = 0, rem = 0;
    for (int64_t i = 0; i < size; i++) {
        uint64_t high = mt_draw(&g), low = mt_draw(&g);
        uint64_t bits = ((high << 32) | low) & ((1ull << 53) - 1);
        double u = (double)bits * scale;
        next += q;
        rem += r;
        if (rem >= size) {
            rem -= size;
            next += 1;
        }
        int64_t width = next - first, offset = (int64_t)(u * (double)width);
        out[i] = first + (offset < width - 1 ? offset : width - 1);
        first = next;
    }
}

/* -- the regularized incomplete gamma functions -------------------------------------------
 *
 * P(a, x) and Q(a, x) = 1 - P(a, x), as torch.special.gammainc and gammaincc compute them on
 * the CPU: a port of calc_igamma, calc_igammac and their helpers in torch's
 * aten/src/ATen/native/Math.h (torch 2.13), which follow SciPy's gammainc: Cephes's igam and
 * igamc with Boost's Lanczos approximation (BSD-licensed; see torch's NOTICE). The variance
 * test takes one of them per candidate and the row test two per tensor, where a torch call
 * costs ~6 us (a tensor made from two floats, and a dispatch) and this a fraction of one.
 * Every constant below is torch's, at the line of Math.h named beside it. */

#define IGAM_MACHEP 1.11022302462515654042E-16 /* _igam_helper_series's MACHEP (double) */
#define IGAM_MAXITER 2000                      /* the helpers' MAXITER */

/* ratevl: the ratio of two polynomials with coefficients num[0..m], den[0..n] */
static double igam_ratevl(double x, const double *num, int m, const double *den, int n) {
    double absx = fabs(x), y, num_ans, den_ans;
    const double *p;
    int dir, i;
    if (absx > 1) { /* evaluated as polynomials in 1/x */
        dir = -1;
        p = num + m;
        y = 1 / x;
    } else {
        dir = 1;
        p = num;
        y = x;
    }
    num_ans = *p;
    p += dir;
    for (i = 1; i <= m; i++) {
        num_ans = num_ans * y + *p;
        p += dir;
    }
    p = absx > 1 ? den + n : den;
    den_ans = *p;
    p += dir;
    for (i = 1; i <= n; i++) {
        den_ans = den_ans * y + *p;
        p += dir;
    }
    if (absx > 1) return pow(x, n - m) * num_ans / den_ans;
    return num_ans / den_ans;
}

/* lanczos_sum_expg_scaled: Boost's Lanczos approximation (13 terms, g = 6.0246800407767296) */
static double igam_lanczos(double x) {
    static const double num[13] = {0.006061842346248906525783753964555936883222,
                                   0.5098416655656676188125178644804694509993,
                                   19.51992788247617482847860966235652136208,
                                   449.9445569063168119446858607650988409623,
                                   6955.999602515376140356310115515198987526,
                                   75999.29304014542649875303443598909137092,
                                   601859.6171681098786670226533699352302507,
                                   3481712.15498064590882071018964774556468,
                                   14605578.08768506808414169982791359218571,
                                   43338889.32467613834773723740590533316085,
                                   86363131.28813859145546927288977868422342,
                                   103794043.1163445451906271053616070238554,
                                   56906521.91347156388090791033559122686859};
    static const double den[13] = {1.,        66.,        1925.,      32670.,    357423.,
                                   2637558.,  13339535.,  45995730.,  105258076., 150917976.,
                                   120543840., 39916800., 0.};
    return igam_ratevl(x, num, 12, den, 12);
}

/* _igam_helper_fac: x^a e^-x / Gamma(a) */
static double igam_fac(double a, double x) {
    const double maxlog = 7.09782712893383996843E2, e1 = 2.718281828459045;
    const double g = 6.024680040776729583740234375; /* lanczos_g */
    if (fabs(a - x) > 0.4 * fabs(a)) {
        double ax = a * log(x) - x - lgamma(a);
        return ax < -maxlog ? 0.0 : exp(ax);
    }
    double fac = a + g - 0.5;
    double res = sqrt(fac / e1) / igam_lanczos(a);
    if (a < 200 && x < 200) {
        res *= exp(a - x) * pow(x / fac, a);
    } else {
        double num = x - a - g + 0.5, numfac = num / fac;
        res *= exp(a * (log1p(numfac) - numfac) + x * (0.5 - g) / fac);
    }
    return res;
}

/* _igam_helper_series: P by DLMF 8.11.4 */
static double igam_series(double a, double x) {
    double ax = igam_fac(a, x);
    if (ax == 0.0) return 0.0;
    double r = a, c = 1.0, ans = 1.0;
    for (int i = 0; i < IGAM_MAXITER; i++) {
        r += 1.0;
        c *= x / r;
        ans += c;
        if (c <= IGAM_MACHEP * ans) break;
    }
    return ans * ax / a;
}

/* _igamc_helper_series: Q by DLMF 8.7.3, for small x */
static double igamc_series(double a, double x) {
    double fac = 1, sum = 0, term;
    for (int n = 1; n < IGAM_MAXITER; n++) {
        fac *= -x / n;
        term = fac / (a + n);
        sum += term;
        if (fabs(term) <= IGAM_MACHEP * fabs(sum)) break;
    }
    double logx = log(x);
    term = -expm1(a * logx - lgamma(1 + a));
    return term - exp(a * logx - lgamma(a)) * sum;
}

/* the coefficients d[k][n] of DLMF 8.12.3/8.12.4's expansion (Math.h, in
 * _igam_helper_asymptotic_series) */
static const double igam_d[25][25] = {
    {
     -3.3333333333333333e-1, 8.3333333333333333e-2, -1.4814814814814815e-2, 1.1574074074074074e-3,
     3.527336860670194e-4, -1.7875514403292181e-4, 3.9192631785224378e-5, -2.1854485106799922e-6,
     -1.85406221071516e-6, 8.296711340953086e-7, -1.7665952736826079e-7, 6.7078535434014986e-9,
     1.0261809784240308e-8, -4.3820360184533532e-9, 9.1476995822367902e-10, -2.551419399494625e-11,
     -5.8307721325504251e-11, 2.4361948020667416e-11, -5.0276692801141756e-12, 1.1004392031956135e-13,
     3.3717632624009854e-13, -1.3923887224181621e-13, 2.8534893807047443e-14, -5.1391118342425726e-16,
     -1.9752288294349443e-15},
    {
     -1.8518518518518519e-3, -3.4722222222222222e-3, 2.6455026455026455e-3, -9.9022633744855967e-4,
     2.0576131687242798e-4, -4.0187757201646091e-7, -1.8098550334489978e-5, 7.6491609160811101e-6,
     -1.6120900894563446e-6, 4.6471278028074343e-9, 1.378633446915721e-7, -5.752545603517705e-8,
     1.1951628599778147e-8, -1.7543241719747648e-11, -1.0091543710600413e-9, 4.1627929918425826e-10,
     -8.5639070264929806e-11, 6.0672151016047586e-14, 7.1624989648114854e-12, -2.9331866437714371e-12,
     5.9966963656836887e-13, -2.1671786527323314e-16, -4.9783399723692616e-14, 2.0291628823713425e-14,
     -4.13125571381061e-15},
    {
     4.1335978835978836e-3, -2.6813271604938272e-3, 7.7160493827160494e-4, 2.0093878600823045e-6,
     -1.0736653226365161e-4, 5.2923448829120125e-5, -1.2760635188618728e-5, 3.4235787340961381e-8,
     1.3721957309062933e-6, -6.298992138380055e-7, 1.4280614206064242e-7, -2.0477098421990866e-10,
     -1.4092529910867521e-8, 6.228974084922022e-9, -1.3670488396617113e-9, 9.4283561590146782e-13,
     1.2872252400089318e-10, -5.5645956134363321e-11, 1.1975935546366981e-11, -4.1689782251838635e-15,
     -1.0940640427884594e-12, 4.6622399463901357e-13, -9.905105763906906e-14, 1.8931876768373515e-17,
     8.8592218725911273e-15},
    {
     6.4943415637860082e-4, 2.2947209362139918e-4, -4.6918949439525571e-4, 2.6772063206283885e-4,
     -7.5618016718839764e-5, -2.3965051138672967e-7, 1.1082654115347302e-5, -5.6749528269915966e-6,
     1.4230900732435884e-6, -2.7861080291528142e-11, -1.6958404091930277e-7, 8.0994649053880824e-8,
     -1.9111168485973654e-8, 2.3928620439808118e-12, 2.0620131815488798e-9, -9.4604966618551322e-10,
     2.1541049775774908e-10, -1.388823336813903e-14, -2.1894761681963939e-11, 9.7909989511716851e-12,
     -2.1782191880180962e-12, 6.2088195734079014e-17, 2.126978363279737e-13, -9.3446887915174333e-14,
     2.0453671226782849e-14},
    {
     -8.618882909167117e-4, 7.8403922172006663e-4, -2.9907248030319018e-4, -1.4638452578843418e-6,
     6.6414982154651222e-5, -3.9683650471794347e-5, 1.1375726970678419e-5, 2.5074972262375328e-10,
     -1.6954149536558306e-6, 8.9075075322053097e-7, -2.2929348340008049e-7, 2.956794137544049e-11,
     2.8865829742708784e-8, -1.4189739437803219e-8, 3.4463580499464897e-9, -2.3024517174528067e-13,
     -3.9409233028046405e-10, 1.8602338968504502e-10, -4.356323005056618e-11, 1.2786001016296231e-15,
     4.6792750266579195e-12, -2.1492464706134829e-12, 4.9088156148096522e-13, -6.3385914848915603e-18,
     -5.0453320690800944e-14},
    {
     -3.3679855336635815e-4, -6.9728137583658578e-5, 2.7727532449593921e-4, -1.9932570516188848e-4,
     6.7977804779372078e-5, 1.419062920643967e-7, -1.3594048189768693e-5, 8.0184702563342015e-6,
     -2.2914811765080952e-6, -3.252473551298454e-10, 3.4652846491085265e-7, -1.8447187191171343e-7,
     4.8240967037894181e-8, -1.7989466721743515e-14, -6.3061945000135234e-9, 3.1624176287745679e-9,
     -7.8409242536974293e-10, 5.1926791652540407e-15, 9.3589442423067836e-11, -4.5134262161632782e-11,
     1.0799129993116827e-11, -3.661886712685252e-17, -1.210902069055155e-12, 5.6807435849905643e-13,
     -1.3249659916340829e-13},
    {
     5.3130793646399222e-4, -5.9216643735369388e-4, 2.7087820967180448e-4, 7.9023532326603279e-7,
     -8.1539693675619688e-5, 5.6116827531062497e-5, -1.8329116582843376e-5, -3.0796134506033048e-9,
     3.4651553688036091e-6, -2.0291327396058604e-6, 5.7887928631490037e-7, 2.338630673826657e-13,
     -8.8286007463304835e-8, 4.7435958880408128e-8, -1.2545415020710382e-8, 8.6496488580102925e-14,
     1.6846058979264063e-9, -8.5754928235775947e-10, 2.1598224929232125e-10, -7.6132305204761539e-16,
     -2.6639822008536144e-11, 1.3065700536611057e-11, -3.1799163902367977e-12, 4.7109761213674315e-18,
     3.6902800842763467e-13},
    {
     3.4436760689237767e-4, 5.1717909082605922e-5, -3.3493161081142236e-4, 2.812695154763237e-4,
     -1.0976582244684731e-4, -1.2741009095484485e-7, 2.7744451511563644e-5, -1.8263488805711333e-5,
     5.7876949497350524e-6, 4.9387589339362704e-10, -1.0595367014026043e-6, 6.1667143761104075e-7,
     -1.7562973359060462e-7, -1.2974473287015439e-12, 2.695423606288966e-8, -1.4578352908731271e-8,
     3.887645959386175e-9, -3.8810022510194121e-17, -5.3279941738772867e-10, 2.7437977643314845e-10,
     -6.9957960920705679e-11, 2.5899863874868481e-17, 8.8566890996696381e-12, -4.403168815871311e-12,
     1.0865561947091654e-12},
    {
     -6.5262391859530942e-4, 8.3949872067208728e-4, -4.3829709854172101e-4, -6.969091458420552e-7,
     1.6644846642067548e-4, -1.2783517679769219e-4, 4.6299532636913043e-5, 4.5579098679227077e-9,
     -1.0595271125805195e-5, 6.7833429048651666e-6, -2.1075476666258804e-6, -1.7213731432817145e-11,
     3.7735877416110979e-7, -2.1867506700122867e-7, 6.2202288040189269e-8, 6.5977038267330006e-16,
     -9.5903864974256858e-9, 5.2132144922808078e-9, -1.3991589583935709e-9, 5.382058999060575e-16,
     1.9484714275467745e-10, -1.0127287556389682e-10, 2.6077347197254926e-11, -5.0904186999932993e-18,
     -3.3721464474854592e-12},
    {
     -5.9676129019274625e-4, -7.2048954160200106e-5, 6.7823088376673284e-4, -6.4014752602627585e-4,
     2.7750107634328704e-4, 1.8197008380465151e-7, -8.4795071170685032e-5, 6.105192082501531e-5,
     -2.1073920183404862e-5, -8.8585890141255994e-10, 4.5284535953805377e-6, -2.8427815022504408e-6,
     8.7082341778646412e-7, 3.6886101871706965e-12, -1.5344695190702061e-7, 8.862466778790695e-8,
     -2.5184812301826817e-8, -1.0225912098215092e-14, 3.8969470758154777e-9, -2.1267304792235635e-9,
     5.7370135528051385e-10, -1.887749850169741e-19, -8.0931538694657866e-11, 4.2382723283449199e-11,
     -1.1002224534207726e-11},
    {
     1.3324454494800656e-3, -1.9144384985654775e-3, 1.1089369134596637e-3, 9.932404122642299e-7,
     -5.0874501293093199e-4, 4.2735056665392884e-4, -1.6858853767910799e-4, -8.1301893922784998e-9,
     4.5284402370562147e-5, -3.127053674781734e-5, 1.044986828530338e-5, 4.8435226265680926e-11,
     -2.1482565873456258e-6, 1.329369701097492e-6, -4.0295693092101029e-7, -1.7567877666323291e-13,
     7.0145043163668257e-8, -4.040787734999483e-8, 1.1474026743371963e-8, 3.9642746853563325e-18,
     -1.7804938269892714e-9, 9.7480262548731646e-10, -2.6405338676507616e-10, 5.794875163403742e-18,
     3.7647749553543836e-11},
    {
     1.579727660730835e-3, 1.6251626278391582e-4, -2.0633421035543276e-3, 2.1389686185689098e-3,
     -1.0108559391263003e-3, -3.9912705529919201e-7, 3.6235025084764691e-4, -2.8143901463712154e-4,
     1.0449513336495887e-4, 2.1211418491830297e-9, -2.5779417251947842e-5, 1.7281818956040463e-5,
     -5.6413773872904282e-6, -1.1024320105776174e-11, 1.1223224418895175e-6, -6.8693396379526735e-7,
     2.0653236975414887e-7, 4.6714772409838506e-14, -3.5609886164949055e-8, 2.0470855345905963e-8,
     -5.8091738633283358e-9, -1.332821287582869e-16, 9.0354604391335133e-10, -4.9598782517330834e-10,
     1.3481607129399749e-10},
    {
     -4.0725121195140166e-3, 6.4033628338080698e-3, -4.0410161081676618e-3, -2.183732802866233e-6,
     2.1740441801254639e-3, -1.9700440518418892e-3, 8.3595469747962458e-4, 1.9445447567109655e-8,
     -2.5779387120421696e-4, 1.9009987368139304e-4, -6.7696499937438965e-5, -1.4440629666426572e-10,
     1.5712512518742269e-5, -1.0304008744776893e-5, 3.304517767401387e-6, 7.9829760242325709e-13,
     -6.4097794149313004e-7, 3.8894624761300056e-7, -1.1618347644948869e-7, -2.816808630596451e-15,
     1.9878012911297093e-8, -1.1407719956357511e-8, 3.2355857064185555e-9, 4.1759468293455945e-20,
     -5.0423112718105824e-10},
    {
     -5.9475779383993003e-3, -5.4016476789260452e-4, 8.7910413550767898e-3, -9.8576315587856125e-3,
     5.0134695031021538e-3, 1.2807521786221875e-6, -2.0626019342754683e-3, 1.7109128573523058e-3,
     -6.7695312714133799e-4, -6.9011545676562133e-9, 1.8855128143995902e-4, -1.3395215663491969e-4,
     4.6263183033528039e-5, 4.0034230613321351e-11, -1.0255652921494033e-5, 6.612086372797651e-6,
     -2.0913022027253008e-6, -2.0951775649603837e-13, 3.9756029041993247e-7, -2.3956211978815887e-7,
     7.1182883382145864e-8, 8.925574873053455e-16, -1.2101547235064676e-8, 6.9350618248334386e-9,
     -1.9661464453856102e-9},
    {
     1.7402027787522711e-2, -2.9527880945699121e-2, 2.0045875571402799e-2, 7.0289515966903407e-6,
     -1.2375421071343148e-2, 1.1976293444235254e-2, -5.4156038466518525e-3, -6.3290893396418616e-8,
     1.8855118129005065e-3, -1.473473274825001e-3, 5.5515810097708387e-4, 5.2406834412550662e-10,
     -1.4357913535784836e-4, 9.9181293224943297e-5, -3.3460834749478311e-5, -3.5755837291098993e-12,
     7.1560851960630076e-6, -4.5516802628155526e-6, 1.4236576649271475e-6, 1.8803149082089664e-14,
     -2.6623403898929211e-7, 1.5950642189595716e-7, -4.7187514673841102e-8, -6.5107872958755177e-17,
     7.9795091026746235e-9},
    {
     3.0249124160905891e-2, 2.4817436002649977e-3, -4.9939134373457022e-2, 5.9915643009307869e-2,
     -3.2483207601623391e-2, -5.7212968652103441e-6, 1.5085251778569354e-2, -1.3261324005088445e-2,
     5.5515262632426148e-3, 3.0263182257030016e-8, -1.7229548406756723e-3, 1.2893570099929637e-3,
     -4.6845138348319876e-4, -1.830259937893045e-10, 1.1449739014822654e-4, -7.7378565221244477e-5,
     2.5625836246985201e-5, 1.0766165333192814e-12, -5.3246809282422621e-6, 3.349634863064464e-6,
     -1.0381253128684018e-6, -5.608909920621128e-15, 1.9150821930676591e-7, -1.1418365800203486e-7,
     3.3654425209171788e-8},
    {
     -9.9051020880159045e-2, 1.7954011706123486e-1, -1.2989606383463778e-1, -3.1478872752284357e-5,
     9.0510635276848131e-2, -9.2828824411184397e-2, 4.4412112839877808e-2, 2.7779236316835888e-7,
     -1.7229543805449697e-2, 1.4182925050891573e-2, -5.6214161633747336e-3, -2.39598509186381e-9,
     1.6029634366079908e-3, -1.1606784674435773e-3, 4.1001337768153873e-4, 1.8365800754090661e-11,
     -9.5844256563655903e-5, 6.3643062337764708e-5, -2.076250624489065e-5, -1.1806020912804483e-13,
     4.2131808239120649e-6, -2.6262241337012467e-6, 8.0770620494930662e-7, 6.0125912123632725e-16,
     -1.4729737374018841e-7},
    {
     -1.9994542198219728e-1, -1.5056113040026424e-2, 3.6470239469348489e-1, -4.6435192311733545e-1,
     2.6640934719197893e-1, 3.4038266027147191e-5, -1.3784338709329624e-1, 1.276467178337056e-1,
     -5.6213828755200985e-2, -1.753150885483011e-7, 1.9235592956768113e-2, -1.5088821281095315e-2,
     5.7401854451350123e-3, 1.0622382710310225e-9, -1.5335082692563998e-3, 1.0819320643228214e-3,
     -3.7372510193945659e-4, -6.6170909729031985e-12, 8.4263617380909628e-5, -5.5150706827483479e-5,
     1.7769536448348069e-5, 3.8827923210205533e-14, -3.53513697488768e-6, 2.1865832130045269e-6,
     -6.6812849447625594e-7},
    {
     7.2438608504029431e-1, -1.3918010932653375, 1.0654143352413968, 1.876173868950258e-4,
     -8.2705501176152696e-1, 8.9352433347828414e-1, -4.4971003995291339e-1, -1.6107401567546652e-6,
     1.9235590165271091e-1, -1.6597702160042609e-1, 6.8882222681814333e-2, 1.3910091724608687e-8,
     -2.146911561508663e-2, 1.6228980898865892e-2, -5.9796016172584256e-3, -1.1287469112826745e-10,
     1.5167451119784857e-3, -1.0478634293553899e-3, 3.5539072889126421e-4, 8.1704322111801517e-13,
     -7.7773013442452395e-5, 5.0291413897007722e-5, -1.6035083867000518e-5, 1.2469354315487605e-14,
     3.1369106244517615e-6},
    {
     1.6668949727276811, 1.165462765994632e-1, -3.3288393225018906, 4.4692325482864037,
     -2.6977693045875807, -2.600667859891061e-4, 1.5389017615694539, -1.4937962361134612,
     6.8881964633233148e-1, 1.3077482004552385e-6, -2.5762963325596288e-1, 2.1097676102125449e-1,
     -8.3714408359219882e-2, -7.7920428881354753e-9, 2.4267923064833599e-2, -1.7813678334552311e-2,
     6.3970330388900056e-3, 4.9430807090480523e-11, -1.5554602758465635e-3, 1.0561196919903214e-3,
     -3.5277184460472902e-4, 9.3002334645022459e-14, 7.5285855026557172e-5, -4.8186515569156351e-5,
     1.5227271505597605e-5},
    {
     -6.6188298861372935, 1.3397985455142589e+1, -1.0789350606845146e+1, -1.4352254537875018e-3,
     9.2333694596189809, -1.0456552819547769e+1, 5.5105526029033471, 1.2024439690716742e-5,
     -2.5762961164755816, 2.3207442745387179, -1.0045728797216284, -1.0207833290021914e-7,
     3.3975092171169466e-1, -2.6720517450757468e-1, 1.0235252851562706e-1, 8.4329730484871625e-10,
     -2.7998284958442595e-2, 2.0066274144976813e-2, -7.0554368915086242e-3, 1.9402238183698188e-12,
     1.6562888105449611e-3, -1.1082898580743683e-3, 3.654545161310169e-4, -5.1290032026971794e-11,
     -7.6340103696869031e-5},
    {
     -1.7112706061976095e+1, -1.1208044642899116, 3.7131966511885444e+1, -5.2298271025348962e+1,
     3.3058589696624618e+1, 2.4791298976200222e-3, -2.061089403411526e+1, 2.088672775145582e+1,
     -1.0045703956517752e+1, -1.2238783449063012e-5, 4.0770134274221141, -3.473667358470195,
     1.4329352617312006, 7.1359914411879712e-8, -4.4797257159115612e-1, 3.4112666080644461e-1,
     -1.2699786326594923e-1, -2.8953677269081528e-10, 3.3125776278259863e-2, -2.3274087021036101e-2,
     8.0399993503648882e-3, -1.177805216235265e-9, -1.8321624891071668e-3, 1.2108282933588665e-3,
     -3.9479941246822517e-4},
    {
     7.389033153567425e+1, -1.5680141270402273e+2, 1.322177542759164e+2, 1.3692876877324546e-2,
     -1.2366496885920151e+2, 1.4620689391062729e+2, -8.0365587724865346e+1, -1.1259851148881298e-4,
     4.0770132196179938e+1, -3.8210340013273034e+1, 1.719522294277362e+1, 9.3519707955168356e-7,
     -6.2716159907747034, 5.1168999071852637, -2.0319658112299095, -4.9507215582761543e-9,
     5.9626397294332597e-1, -4.4220765337238094e-1, 1.6079998700166273e-1, -2.4733786203223402e-8,
     -4.0307574759979762e-2, 2.7849050747097869e-2, -9.4751858992054221e-3, 6.419922235909132e-6,
     2.1250180774699461e-3},
    {
     2.1216837098382522e+2, 1.3107863022633868e+1, -4.9698285932871748e+2, 7.3121595266969204e+2,
     -4.8213821720890847e+2, -2.8817248692894889e-2, 3.2616720302947102e+2, -3.4389340280087117e+2,
     1.7195193870816232e+2, 1.4038077378096158e-4, -7.52594195897599e+1, 6.651969984520934e+1,
     -2.8447519748152462e+1, -7.613702615875391e-7, 9.5402237105304373, -7.5175301113311376,
     2.8943997568871961, -4.6612194999538201e-7, -8.0615149598794088e-1, 5.8483006570631029e-1,
     -2.0845408972964956e-1, 1.4765818959305817e-4, 5.1000433863753019e-2, -3.3066252141883665e-2,
     1.5109265210467774e-2},
    {
     -9.8959643098322368e+2, 2.1925555360905233e+3, -1.9283586782723356e+3, -1.5925738122215253e-1,
     1.9569985945919857e+3, -2.4072514765081556e+3, 1.3756149959336496e+3, 1.2920735237496668e-3,
     -7.525941715948055e+2, 7.3171668742208716e+2, -3.4137023466220065e+2, -9.9857390260608043e-6,
     1.3356313181291573e+2, -1.1276295161252794e+2, 4.6310396098204458e+1, -7.9237387133614756e-6,
     -1.4510726927018646e+1, 1.1111771248100563e+1, -4.1690817945270892, 3.1008219800117808e-3,
     1.1220095449981468, -7.6052379926149916e-1, 3.6262236505085254e-1, 2.216867741940747e-1,
     4.8683443692930507e-1}};

/* _igam_helper_asymptotic_series: P (igam = 1) or Q (igam = 0) for large a near x */
static double igam_asymptotic(double a, double x, int igam) {
    int sgn = igam ? -1 : 1, maxpow = 0;
    double lambda = x / a, sigma = (x - a) / a, eta;
    double absoldterm = INFINITY, etapow[25] = {1}, sum = 0, afac = 1;
    if (lambda > 1) {
        eta = sqrt(-2 * (log1p(sigma) - sigma));
    } else if (lambda < 1) {
        eta = -sqrt(-2 * (log1p(sigma) - sigma));
    } else {
        eta = 0;
    }
    double res = 0.5 * erfc(sgn * eta * sqrt(a / 2));
    for (int k = 0; k < 25; k++) {
        double ck = igam_d[k][0];
        for (int n = 1; n < 25; n++) {
            if (n > maxpow) {
                etapow[n] = eta * etapow[n - 1];
                maxpow += 1;
            }
            double ckterm = igam_d[k][n] * etapow[n];
            ck += ckterm;
            if (fabs(ckterm) < IGAM_MACHEP * fabs(ck)) break;
        }
        double term = ck * afac, absterm = fabs(term);
        if (absterm > absoldterm) break;
        sum += term;
        if (absterm < IGAM_MACHEP * fabs(sum)) break;
        absoldterm = absterm;
        afac /= a;
    }
    /* torch takes pi here as a float (c10::pi<float>), 3.1415927410125732 */
    const double pi_f = (double)(float)3.14159265358979323846;
    return res + sgn * exp(-0.5 * a * eta * eta) * sum / sqrt(2 * pi_f * a);
}

/* _igamc_helper_continued_fraction: Q by DLMF 8.9.2 */
static double igamc_fraction(double a, double x) {
    const double big = 4.503599627370496e15, biginv = 2.22044604925031308085e-16;
    double ax = igam_fac(a, x);
    if (ax == 0.0) return 0.0;
    double y = 1.0 - a, z = x + y + 1.0, c = 0.0;
    double pkm2 = 1.0, qkm2 = x, pkm1 = x + 1.0, qkm1 = z * x;
    double ans = pkm1 / qkm1, t;
    for (int i = 0; i < IGAM_MAXITER; i++) {
        c += 1.0;
        y += 1.0;
        z += 2.0;
        double yc = y * c;
        double pk = pkm1 * z - pkm2 * yc, qk = qkm1 * z - qkm2 * yc;
        if (qk != 0) {
            double r = pk / qk;
            t = fabs((ans - r) / r);
            ans = r;
        } else {
            t = 1.0;
        }
        pkm2 = pkm1;
        pkm1 = pk;
        qkm2 = qkm1;
        qkm1 = qk;
        if (fabs(pk) > big) {
            pkm2 *= biginv;
            pkm1 *= biginv;
            qkm2 *= biginv;
            qkm1 *= biginv;
        }
        if (t <= IGAM_MACHEP) break;
    }
    return ans * ax;
}

static double igammac(double a, double x);

/* calc_igamma: P(a, x) */
static double igamma(double a, double x) {
    if (x < 0 || a < 0) return NAN;
    if (a == 0) return x > 0 ? 1.0 : NAN;
    if (x == 0) return 0.0;
    if (isinf(a)) return isinf(x) ? NAN : 0.0;
    if (isinf(x)) return 1.0;
    double absxma_a = fabs(x - a) / a; /* SMALL 20, LARGE 200, SMALLRATIO 0.3, LARGERATIO 4.5 */
    if (a > 20 && a < 200 && absxma_a < 0.3) return igam_asymptotic(a, x, 1);
    if (a > 200 && absxma_a < 4.5 / sqrt(a)) return igam_asymptotic(a, x, 1);
    if (x > 1.0 && x > a) return 1.0 - igammac(a, x);
    return igam_series(a, x);
}

/* calc_igammac: Q(a, x) */
static double igammac(double a, double x) {
    if (x < 0 || a < 0) return NAN;
    if (a == 0) return x > 0 ? 0.0 : NAN;
    if (x == 0) return 1.0;
    if (isinf(a)) return isinf(x) ? NAN : 1.0;
    if (isinf(x)) return 0.0;
    double absxma_a = fabs(x - a) / a;
    if (a > 20 && a < 200 && absxma_a < 0.3) return igam_asymptotic(a, x, 0);
    if (a > 200 && absxma_a < 4.5 / sqrt(a)) return igam_asymptotic(a, x, 0);
    if (x > 1.1) return x < a ? 1.0 - igam_series(a, x) : igamc_fraction(a, x);
    if (x <= 0.5) return -0.4 / log(x) < a ? 1.0 - igam_series(a, x) : igamc_series(a, x);
    return x * 1.1 < a ? 1.0 - igam_series(a, x) : igamc_series(a, x);
}

/* P(a, x) (upper = 0) or Q(a, x) (upper = 1); NaN (NaN in, or outside a, x >= 0) as torch */
double fused_gammainc(double a, double x, int upper) {
    if (isnan(a) || isnan(x)) return NAN;
    return upper ? igammac(a, x) : igamma(a, x);
}

int fused_version(void) { return 8; }

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
