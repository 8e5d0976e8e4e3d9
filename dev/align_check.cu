// scratch: does a weight pointer's alignment change cuBLAS's speed? (not part of the build)
#include <cstdio>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#define CK(x) do { auto e = (x); if ((int)e != 0) { printf("error %d at %d\n", (int)e, __LINE__); return 1; } } while (0)
int main() {
    cublasHandle_t h; CK(cublasCreate(&h));
    int shapes[3][3] = {{8 * 29952, 96, 288}, {8 * 1872, 384, 1536}, {8 * 1872, 1536, 384}};
    float *A, *W, *C;
    CK(cudaMalloc(&A, (size_t)8 * 29952 * 1536 * 4)); CK(cudaMalloc(&W, (size_t)1536 * 1536 * 4 + 64)); CK(cudaMalloc(&C, (size_t)8 * 29952 * 1536 * 4));
    CK(cudaMemset(A, 0, (size_t)8 * 29952 * 1536 * 4)); CK(cudaMemset(W, 0, (size_t)1536 * 1536 * 4 + 64));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    cublasComputeType_t cts[2] = {CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_32F_FAST_16BF};
    const char* ctn[2] = {"tf32", "bf16"};
    for (int s = 0; s < 3; s++) for (int c = 0; c < 2; c++) for (int off = 0; off <= 4; off += 1) {
        if (off == 3) continue;
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float al = 1, be = 0;
        for (int pass = 0; pass < 2; pass++) {
            int it = pass ? 20 : 3;
            cudaEventRecord(e0);
            for (int i = 0; i < it; i++)   // forward C (M,N) = A (M,K) W^T, W (N,K) at W + off
                CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &al, W + off, CUDA_R_32F, K, A, CUDA_R_32F, K, &be, C, CUDA_R_32F, N, cts[c], CUBLAS_GEMM_DEFAULT));
            cudaEventRecord(e1); cudaEventSynchronize(e1);
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            if (pass) printf("M %6d K %4d N %4d %s weight offset %d floats: %.3f ms  %.1f TFLOP/s\n", M, K, N, ctn[c], off, ms / it, 2.0 * M * N * K / (ms / it * 1e9));
        }
    }
    return 0;
}
