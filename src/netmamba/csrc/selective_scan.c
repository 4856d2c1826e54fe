/* The Mamba mixer on CPU: selective scan (forward and backward) and the causal depthwise conv
 * (forward and backward), float32 and float64.
 *
 *   delta_t = softplus(delta_raw_t + bias) m_t        (bias, softplus, mask m all optional)
 *   h_t[e, n] = exp(delta_t[e] A[e, n]) h_{t-1}[e, n] + delta_t[e] B_t[n] u_t[e]
 *   y_t[e]    = sum_n C_t[n] h_t[e, n] + D[e] u_t[e]
 *   out_t[e]  = y_t[e] * silu(z_t[e])                 (when z is given)
 *
 * Layout (B, L, E) with the channel axis contiguous, so every operation is a vertical vector
 * operation over channels and B_t[n], C_t[n] are broadcast scalars. The states of a block of
 * 32 channels live in L1 for the whole sequence; the batch x length x channels x states tensor
 * is never stored. Why it is fast: exp is an inline polynomial (range reduction to 2^f with
 * f in [-1/2, 1/2], degree-5 fit, relative error 2e-7) rather than a libm call; each state is
 * updated by 4 independent vectors (no loop-carried stall); bias, softplus, mask and the silu
 * gate are fused in, so delta and y make one trip through memory; a masked (padding) position
 * skips its exponentials; and the code is compiled twice, for AVX2+FMA and for the baseline ISA,
 * picked at run time (never -march=native, so a build made anywhere runs everywhere).
 * The backward recomputes the states of one (row, 16-channel block) into a thread-local buffer
 * (L x N x 16 values, in L2) and then runs the adjoint recurrence backwards.
 *
 * Threads: the jobs are cut into one contiguous share per thread, with per-thread partial sums
 * for the gradients reduced over rows or channels. The shares run on torch's own OpenMP team when
 * Python hands us torch's runtime (nm_use_openmp), else on pthreads. We never link an OpenMP
 * runtime of our own: torch ships one, and two runtimes spinning on few cores slow each other.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#endif
#define ALWAYS_INLINE __attribute__((always_inline))

#define LOG2E 1.4426950408889634
#define KERNELS_ABI_VERSION 2
#define BLOCK_VECS_FWD 4  /* scan forward: 4 vectors = 32 float channels per job */
#define BLOCK_VECS_BWD 2  /* scan backward: 16 float channels, so L x N x 16 states stay in L2 */
#define CONV_CHUNK 64      /* conv: positions per job (all channels) */
#define MAX_THREADS 256

/* Selective scan arguments; pointers are float* or double*.
 * u, delta, z: element [b, t, e] at b * s_b + t * s_l + e. B, C: [b, t, n] at b * s_b + t * s_l
 * + n. A: (E, N) contiguous; D, delta_bias: (E) or NULL; z may be NULL; mask: (B, L) bytes at
 * b * mask_sb + t * mask_sl, or NULL. Outputs are contiguous: out, dout, du, ddelta (gradient of
 * the raw delta), dz (B, L, E); dB, dC (B, L, N); dA (E, N); dD, ddelta_bias (E) or NULL. */
typedef struct {
    int64_t batch, length, channels, states;
    const void *u;
    int64_t u_sb, u_sl;
    const void *delta;
    int64_t delta_sb, delta_sl;
    const void *A;
    const void *Bm;
    int64_t B_sb, B_sl;
    const void *Cm;
    int64_t C_sb, C_sl;
    const void *D;
    const void *z;
    int64_t z_sb, z_sl;
    const void *delta_bias;
    int64_t delta_softplus;
    const uint8_t *mask;
    int64_t mask_sb, mask_sl;
    void *out;
    const void *dout;
    void *du, *ddelta, *dz, *dA, *dB, *dC, *dD, *ddelta_bias;
} scan_args;

/* Causal depthwise conv arguments. x: [b, t, e] at b * x_sb + t * x_sl + e; weight (K, E) and
 * bias (E) contiguous (bias may be NULL); mask as above. Outputs contiguous: out, dout, dx
 * (B, L, E); dweight (K, E); dbias (E). */
typedef struct {
    int64_t batch, length, channels, width;
    const void *x;
    int64_t x_sb, x_sl;
    const void *weight;
    const void *bias;
    const uint8_t *mask;
    int64_t mask_sb, mask_sl;
    int64_t silu;
    void *out;
    const void *dout;
    void *dx, *dweight, *dbias;
} conv_args;

static void *scan_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

/* ---- variants ------------------------------------------------------------------------ */
typedef float v8sf __attribute__((vector_size(32)));
typedef double v4df __attribute__((vector_size(32)));

static inline ALWAYS_INLINE v8sf max_v8sf(v8sf a, v8sf b) { /* compare + select */
    typedef int32_t v8si __attribute__((vector_size(32)));
    const v8si a_larger = a > b;
    return (v8sf)(((v8si)a & a_larger) | ((v8si)b & ~a_larger));
}

/* float32, any CPU: GCC lowers the 32-byte vectors to what the baseline ISA has (SSE2). */
#define REAL float
#define VEC v8sf
#define VL 8
#define SPLAT(x) ((v8sf){x, x, x, x, x, x, x, x})
#define LIBM_MATH 0
#define VMAX(a, b) max_v8sf(a, b)
#define TARGET
#define NAME(x) x##_f32_generic
#include "selective_scan_impl.h"
#undef NAME
#undef TARGET
#undef VMAX
#undef VEXP2
#undef LOADU
#undef STOREU

#ifdef HAVE_X86
/* float32, AVX2 + FMA (x86-64-v3: every x86 CPU since about 2015), chosen at run time;
 * tune=haswell keeps 32-byte unaligned moves whole. */
#define TARGET __attribute__((target("avx2,fma,tune=haswell")))
#define VMAX(a, b) _mm256_max_ps(a, b)
#define NAME(x) x##_f32_avx2

/* The lane sums of v[0..7] as one vector: hadd tree, then the two 128-bit halves added. */
static inline ALWAYS_INLINE TARGET v8sf reduce8_avx2(const v8sf *v) {
    const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
    const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}
#define REDUCE8(v) reduce8_avx2(v)
#include "selective_scan_impl.h"
#undef REDUCE8
#undef NAME
#undef TARGET
#undef VMAX
#undef VEXP2
#undef LOADU
#undef STOREU
#endif
#undef REAL
#undef VEC
#undef VL
#undef SPLAT
#undef LIBM_MATH

/* float64 (gradient checks, not speed): libm exp and log1p, generic code. */
#define REAL double
#define VEC v4df
#define VL 4
#define SPLAT(x) ((v4df){x, x, x, x})
#define LIBM_MATH 1
#define VMAX(a, b) (a) /* unused with LIBM_MATH */
#define TARGET
#define NAME(x) x##_f64
#include "selective_scan_impl.h"
#undef NAME
#undef TARGET
#undef VMAX
#undef VEXP2
#undef LOADU
#undef STOREU
#undef REAL
#undef VEC
#undef VL
#undef SPLAT
#undef LIBM_MATH

static int use_avx2(void) {
#ifdef HAVE_X86
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* ---- threads ------------------------------------------------------------------------- */
typedef struct {
    int kind; /* 0 scan, 1 conv */
    const void *args;
    int is_double, backward, avx2;
    int64_t job_begin, job_end;
    int64_t splits; /* scan forward: channel ranges per row */
    void *acc[5];   /* this thread's gradient accumulators (the outputs for thread 0) */
    int status;
} task;

static void *task_run(void *p) {
    task *t = (task *)p;
#ifdef HAVE_X86
    const unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040); /* flush denormals to zero: they cost ~100 cycles each */
#endif
    if (t->kind == 0) {
        const scan_args *a = t->args;
        if (t->is_double)
            t->status = scan_jobs_f64(a, t->job_begin, t->job_end, t->backward, t->splits, t->acc[0],
                                      t->acc[1], t->acc[2], t->acc[3], t->acc[4]);
#ifdef HAVE_X86
        else if (t->avx2)
            t->status = scan_jobs_f32_avx2(a, t->job_begin, t->job_end, t->backward, t->splits, t->acc[0],
                                           t->acc[1], t->acc[2], t->acc[3], t->acc[4]);
#endif
        else
            t->status = scan_jobs_f32_generic(a, t->job_begin, t->job_end, t->backward,
                                              t->splits, t->acc[0], t->acc[1], t->acc[2],
                                              t->acc[3], t->acc[4]);
    } else {
        const conv_args *a = t->args;
        if (t->is_double)
            t->status =
                conv_jobs_f64(a, t->job_begin, t->job_end, t->backward, t->acc[0], t->acc[1]);
#ifdef HAVE_X86
        else if (t->avx2)
            t->status = conv_jobs_f32_avx2(a, t->job_begin, t->job_end, t->backward, t->acc[0],
                                           t->acc[1]);
#endif
        else
            t->status = conv_jobs_f32_generic(a, t->job_begin, t->job_end, t->backward,
                                              t->acc[0], t->acc[1]);
    }
#ifdef HAVE_X86
    _mm_setcsr(saved_csr);
#endif
    return NULL;
}

/* Run `jobs` jobs on `nthreads` threads (the caller is thread 0). `outputs[i]` (n_acc of them,
 * sizes[i] elements) are accumulated gradients: zeroed, thread 0 adds into them, the others into
 * private zeroed copies summed at the end. */
/* torch's own OpenMP team, when the caller hands us its runtime (nm_use_openmp): our jobs then
 * run on the threads torch already has, instead of new threads competing with torch's, which
 * spin for a while after each of its parallel regions. GOMP_parallel is the libgomp ABI of
 * `#pragma omp parallel` (LLVM's libomp exports it too). */
typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads,
                                 unsigned flags);
static gomp_parallel_fn gomp_parallel = NULL;

void nm_use_openmp(void *parallel_fn) { gomp_parallel = (gomp_parallel_fn)parallel_fn; }

typedef struct {
    task *tasks;
    int n;
    int next; /* next task to claim: whatever the team size, every task runs exactly once */
} team_work;

static void team_run(void *p) {
    team_work *w = (team_work *)p;
    for (;;) {
        const int i = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED);
        if (i >= w->n) return;
        task_run(&w->tasks[i]);
    }
}

/* Run `jobs` jobs on `nthreads` threads. `outputs[i]` (n_acc of them, sizes[i] elements) are
 * accumulated gradients: zeroed, task 0 adds into them, the others into private zeroed copies
 * summed at the end. */
static int run_parallel(int kind, const void *args, int is_double, int backward, int64_t jobs,
                        int64_t splits, int nthreads, int n_acc, void *outputs[],
                        const size_t sizes[]) {
    if (jobs <= 0) return 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > jobs) nthreads = (int)jobs;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    const size_t elem = is_double ? sizeof(double) : sizeof(float);
    const int avx2 = use_avx2();
    task tasks[MAX_THREADS];
    int status = 0;
    for (int i = 0; i < n_acc; ++i) memset(outputs[i], 0, sizes[i] * elem);
    for (int i = 0; i < nthreads; ++i) {
        task *t = &tasks[i];
        memset(t, 0, sizeof(*t));
        t->kind = kind;
        t->args = args;
        t->is_double = is_double;
        t->backward = backward;
        t->avx2 = avx2;
        t->splits = splits;
        t->job_begin = jobs * i / nthreads;
        t->job_end = jobs * (i + 1) / nthreads;
        for (int k = 0; k < n_acc; ++k) {
            t->acc[k] = i == 0 ? outputs[k] : calloc(sizes[k] ? sizes[k] : 1, elem);
            if (!t->acc[k]) status = -1;
        }
    }
    if (status == 0 && nthreads == 1) {
        task_run(&tasks[0]);
    } else if (status == 0 && gomp_parallel) {
        team_work work = {tasks, nthreads, 0};
        gomp_parallel(team_run, &work, (unsigned)nthreads, 0);
    } else if (status == 0) {
        pthread_t threads[MAX_THREADS];
        int started[MAX_THREADS] = {0};
        for (int i = 1; i < nthreads; ++i)
            started[i] = pthread_create(&threads[i], NULL, task_run, &tasks[i]) == 0;
        for (int i = 1; i < nthreads; ++i)
            if (!started[i]) task_run(&tasks[i]); /* no thread: do its share here */
        task_run(&tasks[0]);
        for (int i = 1; i < nthreads; ++i)
            if (started[i]) pthread_join(threads[i], NULL);
    }
    if (status == 0)
        for (int i = 0; i < nthreads; ++i)
            if (tasks[i].status != 0) status = tasks[i].status;
    for (int i = 1; i < nthreads; ++i)
        for (int k = 0; k < n_acc; ++k) {
            if (status == 0) {
                if (is_double) {
                    double *d = outputs[k], *p = tasks[i].acc[k];
                    for (size_t j = 0; j < sizes[k]; ++j) d[j] += p[j];
                } else {
                    float *d = outputs[k], *p = tasks[i].acc[k];
                    for (size_t j = 0; j < sizes[k]; ++j) d[j] += p[j];
                }
            }
            free(tasks[i].acc[k]);
        }
    return status;
}

/* ---- entry points (ctypes); each returns 0, or -1 when memory ran out ---------------------- */
int64_t nm_kernels_abi_version(void) { return KERNELS_ABI_VERSION; }

static int64_t channel_jobs(int64_t batch, int64_t channels, int64_t width) {
    return batch * ((channels + width - 1) / width);
}

int nm_selective_scan_fwd(const scan_args *a, int is_double, int nthreads) {
    if (a->length <= 0 || a->states <= 0 || a->batch <= 0) return 0;
    /* jobs: (row, range of channel blocks); split rows only when there are too few of them */
    const int64_t width = (is_double ? 4 : 8) * BLOCK_VECS_FWD;
    const int64_t blocks = (a->channels + width - 1) / width;
    const int64_t threads = nthreads < 1 ? 1 : nthreads;
    int64_t splits = (2 * threads + a->batch - 1) / a->batch;
    splits = splits < 1 ? 1 : (splits > blocks ? blocks : splits);
    return run_parallel(0, a, is_double, 0, a->batch * splits, splits, nthreads, 0, NULL, NULL);
}

int nm_selective_scan_bwd(const scan_args *a, int is_double, int nthreads) {
    const size_t elem = is_double ? sizeof(double) : sizeof(float);
    const size_t E = (size_t)a->channels, N = (size_t)a->states;
    const size_t BLN = (size_t)a->batch * a->length * N;
    void *dD = a->dD, *dbias = a->ddelta_bias;
    void *scratch_D = NULL, *scratch_bias = NULL;
    if (!dD && !(dD = scratch_D = malloc(E * elem + 1))) return -1;
    if (!dbias && !(dbias = scratch_bias = malloc(E * elem + 1))) {
        free(scratch_D);
        return -1;
    }
    void *outputs[5] = {a->dA, dD, dbias, a->dB, a->dC};
    const size_t sizes[5] = {E * N, E, E, BLN, BLN};
    int status = 0;
    if (a->length > 0 && a->states > 0) {
        const int64_t jobs =
            channel_jobs(a->batch, a->channels, (is_double ? 4 : 8) * BLOCK_VECS_BWD);
        status = run_parallel(0, a, is_double, 1, jobs, 1, nthreads, 5, outputs, sizes);
    } else {
        for (int k = 0; k < 5; ++k) memset(outputs[k], 0, sizes[k] * elem);
    }
    free(scratch_D);
    free(scratch_bias);
    return status;
}

/* The conv's kernel width must be in [1, 64]: -2 otherwise. */
static int64_t conv_jobs_of(const conv_args *a) {
    return a->batch * ((a->length + CONV_CHUNK - 1) / CONV_CHUNK);
}

int nm_causal_conv1d_fwd(const conv_args *a, int is_double, int nthreads) {
    if (a->width < 1 || a->width > 64) return -2;
    if (a->length <= 0) return 0;
    return run_parallel(1, a, is_double, 0, conv_jobs_of(a), 1, nthreads, 0, NULL, NULL);
}

int nm_causal_conv1d_bwd(const conv_args *a, int is_double, int nthreads) {
    if (a->width < 1 || a->width > 64) return -2;
    const size_t elem = is_double ? sizeof(double) : sizeof(float);
    const size_t E = (size_t)a->channels;
    void *dbias = a->dbias, *scratch = NULL;
    if (!dbias && !(dbias = scratch = malloc(E * elem + 1))) return -1;
    void *outputs[2] = {a->dweight, dbias};
    const size_t sizes[2] = {(size_t)a->width * E, E};
    int status = 0;
    if (a->length > 0) {
        status = run_parallel(1, a, is_double, 1, conv_jobs_of(a), 1, nthreads, 2, outputs, sizes);
    } else {
        for (int k = 0; k < 2; ++k) memset(outputs[k], 0, sizes[k] * elem);
    }
    free(scratch);
    return status;
}
