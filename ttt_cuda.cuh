// ttt_cuda.cuh: what the CUDA files share (ttt_kernels.cu: the kernels; ttt_runtime.cu: the
// runtime): the error checks, the launch grid, the cuBLAS handle, the workspaces, the matrix
// product settings and the per-op timer. Internal to the CUDA backend; C code includes ttt.h.
#pragma once
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include "ttt.h"

// ----------------------------------------------------------------------------
// error checking: every CUDA / cuBLAS call and every launch

static inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "error: CUDA: %s  [%s:%d]\n", cudaGetErrorString(err), file, line);
        exit(1);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)
// after every kernel launch: catches bad launch configurations at once
#define launchCheck() cuda_check(cudaGetLastError(), __FILE__, __LINE__)

static inline void cublas_check(cublasStatus_t st, const char* file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS status %d  [%s:%d]\n", (int)st, file, line);
        exit(1);
    }
}
#define cublasCheck(st) cublas_check((st), __FILE__, __LINE__)

// grid size for n elements at `threads` per block (a grid-stride loop covers the rest)
static inline unsigned int grid_for(size_t n, int threads) {
    size_t blocks = (n + threads - 1) / threads;
    if (blocks > 65535u * 16u) blocks = 65535u * 16u;
    return blocks > 0 ? (unsigned int)blocks : 1u;
}

// ----------------------------------------------------------------------------
// shared state of the runtime (ttt_runtime.cu)

// the process's cuBLAS handle on our stream, created on first use
cublasHandle_t get_cublas(void);

// FLOPs of the matrix products issued so far (their precision: ttt_cuda_precision, ttt.h)
extern double gemm_flop_count;

// persistent growable workspaces (never shrink): workspace_get returns at least `bytes`
typedef struct { void* ptr; size_t bytes; } Workspace;
extern Workspace ws_gemm;     // im2col / col2im columns, attention score gradients
extern Workspace ws_reduce;   // partial sums of reductions (doubles)
void* workspace_get(Workspace* w, size_t bytes);

// per-op timing under TTT_PROFILE=1: every _cuda op puts one on its stack, OpTimer t("name");
// the name must be a string literal (it is compared by address)
struct OpTimer {
    int slot;
    OpTimer(const char* name);
    // TTT_PROFILE=2 keeps a total per (name, a, b, c): the sizes an op passes (e.g. M, K, N)
    OpTimer(const char* name, long a, long b, long c);
    ~OpTimer();
};
