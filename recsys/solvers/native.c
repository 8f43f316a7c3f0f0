/* Native CPU kernels of the row-sparse gradient step (recsys/solvers/native.py compiles and loads them).
 *
 * The torch path of a step is a chain of index_select / index_add_ / index_copy_ calls, each a pass over the
 * batch's rows with its own temporaries; on a wide table every pass misses the cache again. Each kernel here is
 * one pass that touches a row once, prefetching the rows PF entries ahead. Same math as the torch path
 * (recsys/models/nets.py Bilinear.gradients, recsys/solvers/sparse.py RowAdam); only the order of float
 * additions differs. Tables are row-major float32, indices int64; the work is split over OpenMP threads where the
 * library is built with OpenMP (from PARALLEL_FROM rows or ratings). Each kernel first checks every index against
 * its table's rows and returns the position of the first one out of range (-1: all in range). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PF 8 /* rows prefetched ahead */
#define PARALLEL_FROM 256 /* fewer rows or ratings than this: one thread (waking the others costs more) */
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_num_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
#endif

/* Denormal floats (below 1.2e-38: the moments of rows whose gradients have died away) are flushed to zero inside
 * the kernels, as GPUs do by default: on x86 each operation on one costs about a hundred normal ones, and a
 * trained model's epochs would slow by half. Each thread sets the mode inside the parallel region and restores
 * its own on leaving it. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FLUSH_DENORMALS const unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040u);
#define RESTORE_MODE _mm_setcsr(saved_csr);
#else
#define FLUSH_DENORMALS
#define RESTORE_MODE
#endif

/* The row loops compiled twice where GCC can (x86-64 with glibc's ifunc): for AVX2 + FMA (x86-64-v3: 8 floats an
 * instruction) and for the baseline; the loader picks the one this CPU runs. Elsewhere the baseline only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define ROW_LOOPS __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ROW_LOOPS
#endif

static inline void prefetch_row(const float *row, int64_t k, int write) {
    const char *p = (const char *)row;
    for (int64_t o = 0; o < k * (int64_t)sizeof(float); o += 64) {
        if (write) __builtin_prefetch(p + o, 1);
        else __builtin_prefetch(p + o, 0);
    }
}

/* one rating's rows ahead of use: its user's and item's factor rows and, where given, their biases (a macro: a
 * function here, not inlined into the target_clones builds, halved rows_dot's speed) */
#define PREFETCH_RATING(user, item)                  \
    do {                                             \
        prefetch_row(P + (user) * k, k, 0);          \
        prefetch_row(Q + (item) * k, k, 0);          \
        if (BU) {                                    \
            __builtin_prefetch(BU + (user), 0);      \
            __builtin_prefetch(BI + (item), 0);      \
        }                                            \
    } while (0)

/* the threads a parallel kernel uses (OpenMP's count, which torch.set_num_threads sets); 0: built serial */
int64_t rows_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}

/* whether a rating's row position pos[b] is among the rows [lo, hi) this thread owns */
static inline int owns(const int64_t *pos, int64_t b, int64_t lo, int64_t hi) { return pos[b] >= lo && pos[b] < hi; }

static int64_t out_of_range(const int64_t *index, int64_t B, int64_t n) {
    for (int64_t b = 0; b < B; b++)
        if (index[b] < 0 || index[b] >= n) return b;
    return -1;
}

/* The distinct values of index[0..B) (each in [0, n)), sorted, into rows[0..*count), and each entry's position
 * among them into pos: torch.unique(index, return_inverse=True) by marks in a bitmap of n bits (zero on entry and
 * on return) and a scan of its words, no sort. slot (n entries) is scratch. */
int64_t rows_unique(const int64_t *index, int64_t B, int64_t n, uint64_t *bits, int64_t *slot, int64_t *rows,
                    int64_t *pos, int64_t *count) {
    const int64_t bad = out_of_range(index, B, n);
    if (bad >= 0) return bad;
    for (int64_t b = 0; b < B; b++) bits[index[b] >> 6] |= (uint64_t)1 << (index[b] & 63);
    int64_t R = 0;
    for (int64_t w = 0; w < (n + 63) / 64; w++) {
        uint64_t word = bits[w];
        if (!word) continue;
        bits[w] = 0;
        while (word) {
            const int64_t row = w * 64 + __builtin_ctzll(word);
            slot[row] = R;
            rows[R++] = row;
            word &= word - 1;
        }
    }
    for (int64_t b = 0; b < B; b++) pos[b] = slot[index[b]];
    *count = R;
    return -1;
}

/* score[b] = <P[u[b]], Q[i[b]]> (+ BU[u[b]] + BI[i[b]] where the bias tables are given, else NULL);
 * sq = (sum_b |P[u[b]]|^2, sum_b |Q[i[b]]|^2, sum_b BU[u[b]]^2, sum_b BI[i[b]]^2): the ridge's loss terms */
ROW_LOOPS
int64_t rows_dot(const float *P, int64_t nu, const float *Q, int64_t ni, const float *BU, const float *BI,
                 const int64_t *u, const int64_t *it, int64_t B, int64_t k, float *score, double *sq) {
    int64_t bad = out_of_range(u, B, nu);
    if (bad >= 0) return bad;
    if ((bad = out_of_range(it, B, ni)) >= 0) return bad;
    double sp = 0, sq_ = 0, sbu = 0, sbi = 0;
    #pragma omp parallel if (B >= PARALLEL_FROM) reduction(+ : sp, sq_, sbu, sbi)
    {
    FLUSH_DENORMALS
    #pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) {
        if (b + PF < B) PREFETCH_RATING(u[b + PF], it[b + PF]);
        const float *p = P + u[b] * k, *q = Q + it[b] * k;
        float d[8] = {0}, pp[8] = {0}, qq[8] = {0};
        int64_t j = 0;
        for (; j + 8 <= k; j += 8)
            for (int l = 0; l < 8; l++) {
                d[l] += p[j + l] * q[j + l];
                pp[l] += p[j + l] * p[j + l];
                qq[l] += q[j + l] * q[j + l];
            }
        for (; j < k; j++) {
            d[0] += p[j] * q[j];
            pp[0] += p[j] * p[j];
            qq[0] += q[j] * q[j];
        }
        float s = 0, a = 0, c = 0;
        for (int l = 0; l < 8; l++) {
            s += d[l];
            a += pp[l];
            c += qq[l];
        }
        if (BU) {
            const float bu = BU[u[b]], bi = BI[it[b]];
            s += bu + bi;
            sbu += bu * bu;
            sbi += bi * bi;
        }
        score[b] = s;
        sp += a;
        sq_ += c;
    }
    RESTORE_MODE
    }
    sq[0] = sp;
    sq[1] = sq_;
    sq[2] = sbu;
    sq[3] = sbi;
    return -1;
}

/* The factor tables' row gradients, summed per distinct row:
 *   GU[iu[b]] += d[b] * Q[i[b]] + a * P[u[b]],   GQ[ii[b]] += d[b] * P[u[b]] + a * Q[i[b]]
 * and, where the bias tables are given (else NULL), the biases':
 *   GBU[iu[b]] += d[b] + ab * BU[u[b]],           GBI[ii[b]] += d[b] + ab * BI[i[b]]
 * (iu, ii: each rating's position among its side's distinct rows). Each thread owns a range of each side's distinct
 * rows: it zeroes their sums (GU, GQ, GBU, GBI come uninitialized) and scans the whole batch for the ratings that
 * land in them. */
ROW_LOOPS
int64_t rows_accumulate(const float *P, int64_t nu, const float *Q, int64_t ni, const float *BU, const float *BI,
                        const int64_t *u, const int64_t *it, const float *d, int64_t B, int64_t k, float a, float ab,
                        const int64_t *iu, int64_t ru, const int64_t *ii, int64_t ri, float *GU, float *GQ,
                        float *GBU, float *GBI) {
    int64_t bad;
    if ((bad = out_of_range(u, B, nu)) >= 0 || (bad = out_of_range(it, B, ni)) >= 0 ||
        (bad = out_of_range(iu, B, ru)) >= 0 || (bad = out_of_range(ii, B, ri)) >= 0)
        return bad;
    #pragma omp parallel if (B >= PARALLEL_FROM)
    {
    FLUSH_DENORMALS
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t u_lo = ru * t / T, u_hi = ru * (t + 1) / T, i_lo = ri * t / T, i_hi = ri * (t + 1) / T;
    memset(GU + u_lo * k, 0, (size_t)((u_hi - u_lo) * k) * sizeof(float));
    memset(GQ + i_lo * k, 0, (size_t)((i_hi - i_lo) * k) * sizeof(float));
    if (GBU) memset(GBU + u_lo, 0, (size_t)(u_hi - u_lo) * sizeof(float));
    if (GBI) memset(GBI + i_lo, 0, (size_t)(i_hi - i_lo) * sizeof(float));
    for (int64_t b = 0; b < B; b++) {
        const int64_t ahead = b + PF;  /* prefetched: the rows of a rating ahead that this thread will use */
        if (ahead < B && (owns(iu, ahead, u_lo, u_hi) || owns(ii, ahead, i_lo, i_hi)))
            PREFETCH_RATING(u[ahead], it[ahead]);
        const int mine_u = owns(iu, b, u_lo, u_hi), mine_i = owns(ii, b, i_lo, i_hi);
        if (!mine_u && !mine_i) continue;
        const float *p = P + u[b] * k, *q = Q + it[b] * k;
        const float db = d[b];
        if (mine_u) {
            float *gu = GU + iu[b] * k;
            for (int64_t j = 0; j < k; j++) gu[j] += db * q[j] + a * p[j];
            if (GBU) GBU[iu[b]] += db + ab * BU[u[b]];
        }
        if (mine_i) {
            float *gq = GQ + ii[b] * k;
            for (int64_t j = 0; j < k; j++) gq[j] += db * p[j] + a * q[j];
            if (GBI) GBI[ii[b]] += db + ab * BI[it[b]];
        }
    }
    RESTORE_MODE
    }
    return -1;
}

/* Lazy Adam with per-row step counts, in place, for the R distinct rows `rows` with summed gradients G (R x k):
 * g <- G[r] + wd * w;  m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2;  t <- t + 1;
 * w <- w - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).   M holds m and v of a row side by side (n x 2 x k),
 * S the rows' step counts. b^t is computed as exp(t log b): a row's two corrections cost two expf, not two powf. */
ROW_LOOPS
int64_t rows_adam(float *W, int64_t n, float *M, float *S, const int64_t *rows, const float *G, int64_t R, int64_t k,
                  float lr, float b1, float b2, float eps, float wd) {
    const int64_t bad = out_of_range(rows, R, n);
    if (bad >= 0) return bad;
    const float log_b1 = logf(b1), log_b2 = logf(b2);
    #pragma omp parallel if (R >= PARALLEL_FROM)
    {
    FLUSH_DENORMALS
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        if (r + PF < R) {
            const int64_t ahead = rows[r + PF];
            prefetch_row(M + ahead * 2 * k, 2 * k, 1);
            prefetch_row(W + ahead * k, k, 1);
            __builtin_prefetch(S + ahead, 1);
        }
        const int64_t row = rows[r];
        float *w = W + row * k, *m = M + row * 2 * k, *v = m + k;
        const float *g = G + r * k;
        const float t = S[row] + 1.0f;
        S[row] = t;
        const float step = lr / (1.0f - expf(t * log_b1)), correction = 1.0f - expf(t * log_b2);
        for (int64_t j = 0; j < k; j++) {
            const float gj = g[j] + wd * w[j];
            const float mj = m[j] + (1.0f - b1) * (gj - m[j]);
            const float vj = b2 * v[j] + (1.0f - b2) * gj * gj;
            m[j] = mj;
            v[j] = vj;
            w[j] -= step * mj / (sqrtf(vj / correction) + eps);
        }
    }
    RESTORE_MODE
    }
    return -1;
}
