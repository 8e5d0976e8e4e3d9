// ttt_kernels.cu: the CUDA twin of every op in ttt.h (the runtime: ttt_runtime.cu).
// Same signatures and layouts as the CPU references in ttt.c; every pointer lives on
// the GPU. Matrix products go through cuBLAS in the precision TTT_PRECISION picks (default
// bf16: convolutions and large linears on bf16 copies of their operands, the rest with
// CUBLAS_COMPUTE_32F_FAST_16BF; tf32; fp32), always with float32 accumulation and float32
// storage; everything else is a hand-written kernel. All work runs on
// one stream, the per-thread default stream (built with --default-stream per-thread), so
// ops are ordered as they are called and fixed sequences of them can be recorded as CUDA
// graphs (the legacy NULL stream cannot be captured).
// Backward kernels ACCUMULATE (+=) into gradients, as the contract says (but for the four
// that ttt.h marks WRITES: linear_backward_write's dinp, mlp_backward's dx, window_reverse_residual
// and scale_rows_add backward). Scatters
// where several outputs feed one input (upsampling, point sampling, col2im, bias gather)
// and sums split over blocks (parameter gradients of the LayerNorm fallback, bias sums) use
// atomicAdd; the LayerNorm row kernels and GroupNorm sum their parameter gradients per block into a
// workspace, added in a fixed order. Every other kernel writes each element from exactly one thread.
// Swin's small-window attention forward (T <= 64) is one fused kernel in float32; so are the
// window and flash attention ops (no stored map).
// Environment switches: TTT_TF32=0 (float32 matrix products), TTT_FUSED_ATTENTION=0
// (cuBLAS path for windows and the flash op too), TTT_CONV_IM2COL=0|1 (same-size 3x3 convs by shifted
// GEMMs | im2col; default: CONV_IM2COL_DEFAULT below), TTT_BF16_CONV=0|1 and
// TTT_BF16_LINEAR=0|1 (with TTT_PRECISION=bf16: real bf16 operands, section BF16 OPERANDS at
// the end; default 1), TTT_FATT_TC=0|1 (with bf16: Mask2Former's flash attention on the tensor
// cores, default 1), TTT_WATT_TC=0|1 (with bf16: Swin's window attention on the tensor cores,
// default 1), TTT_CONV_IMPLICIT=0|1 (with bf16: same-size 3x3 conv forward and dinp by
// conv3x3_implicit_bf16_kernel, no im2col buffer, default 0: measured slower); ttt_runtime.cu
// reads TTT_PROFILE and TTT_GRAPHS.
// Checked with compute-sanitizer: memcheck on test/gpu_ops, racecheck on test/gpu_model.
#include <type_traits>
#include <float.h>
#include <cuda_bf16.h>
#include "ttt_cuda.cuh"

// ----------------------------------------------------------------------------
// row-major GEMM through column-major cuBLAS.
// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C, all row-major with leading
// dimensions lda, ldb, ldc (floats between rows). A row-major matrix read column-major
// is its transpose, so we ask cuBLAS for C^T = op(B)^T op(A)^T: operands swapped, the
// transpose flags unchanged. Batched over `batch` with element strides sA, sB, sC.

// The precision (ttt.h: TTT_PRECISION, ttt_cuda_set_precision) as a cuBLAS compute type: float32
// storage and float32 sums in all three; the tensor cores multiply bf16, TF32 or float32 inputs.
static cublasComputeType_t gemm_compute_type(void) {
    int p = ttt_cuda_precision();
    return p == PRECISION_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
         : p == PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

// cuBLAS runs its tensor-core kernels 2.5-3.3x slower on a matrix that is not 16-byte aligned
// (measured on the H200 with dev/align_check.cu): a weight inside the packed parameter buffer
// (after Swin's (2w-1)^2 x heads relative-position table, 507 floats at stage 1, most are only
// 4 or 8 bytes aligned). Such a matrix is copied to an aligned scratch first; an output is
// computed in a scratch (the old values copied in first when they are read: beta != 0) and
// copied back. Only when the rows can be aligned at all (ld a multiple of 4 floats); a copy of
// a weight costs microseconds. Activations are aligned by their arenas (ACT_ALIGN).
// ws_stage[0..2]: gemm_rm's A, B and C; [3], [4]: linear's weight and weight gradient (staged
// before it calls gemm_rm, which must not reuse or move them)
static Workspace ws_stage[5];
static int misaligned(const void* p, int ld) { return ((uintptr_t)p % 16) != 0 && ld % 4 == 0; }
// the floats spanned by a rows x cols row-major matrix with leading dimension ld
static size_t matrix_extent(int rows, int cols, int ld) { return (size_t)(rows - 1) * ld + cols; }
static float* stage_copy(const float* X, size_t n, int which) {
    float* s = (float*)workspace_get(&ws_stage[which], n * sizeof(float));
    cudaCheck(cudaMemcpyAsync(s, X, n * sizeof(float), cudaMemcpyDeviceToDevice, cudaStreamPerThread));
    return s;
}

static void gemm_rm_aligned(bool transA, bool transB, int M, int N, int K, float alpha,
                            const float* A, int lda, long long sA, const float* B, int ldb, long long sB,
                            float beta, float* C, int ldc, long long sC, int batch);

// a misaligned output C (M, N), ld ldc: computed in the aligned scratch ws_stage[2] (holding C's
// values first when beta != 0, as they are read), then copied back by unstage_output
static float* stage_output(float* C, int M, int N, int ldc, float beta) {
    size_t n = matrix_extent(M, N, ldc);
    return beta != 0.0f ? stage_copy(C, n, 2) : (float*)workspace_get(&ws_stage[2], n * sizeof(float));
}
static void unstage_output(float* C, const float* Cs, int M, int N, int ldc) {
    if (Cs == C) return;
    cudaCheck(cudaMemcpyAsync(C, Cs, matrix_extent(M, N, ldc) * sizeof(float), cudaMemcpyDeviceToDevice,
                              cudaStreamPerThread));
}

static void gemm_rm(bool transA, bool transB, int M, int N, int K, float alpha,
                    const float* A, int lda, long long sA, const float* B, int ldb, long long sB,
                    float beta, float* C, int ldc, long long sC, int batch) {
    if (batch == 1 && M > 0 && N > 0 && K > 0) {
        if (misaligned(A, lda)) A = stage_copy(A, transA ? matrix_extent(K, M, lda) : matrix_extent(M, K, lda), 0);
        if (misaligned(B, ldb)) B = stage_copy(B, transB ? matrix_extent(N, K, ldb) : matrix_extent(K, N, ldb), 1);
        if (misaligned(C, ldc)) {
            float* Cs = stage_output(C, M, N, ldc, beta);
            gemm_rm_aligned(transA, transB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, Cs, ldc, sC, batch);
            unstage_output(C, Cs, M, N, ldc);
            return;
        }
    }
    gemm_rm_aligned(transA, transB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}

static void gemm_rm_aligned(bool transA, bool transB, int M, int N, int K, float alpha,
                            const float* A, int lda, long long sA, const float* B, int ldb, long long sB,
                            float beta, float* C, int ldc, long long sC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    if (K <= 0) {   // empty sum: C = beta * C
        if (beta == 1.0f) return;
        ttt_die("gemm_rm: K = 0 with beta != 1 is not supported");
    }
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasComputeType_t compute = gemm_compute_type();
    gemm_flop_count += 2.0 * M * N * K * (double)batch;
    if (batch == 1) {
        cublasCheck(cublasGemmEx(get_cublas(), opB, opA, N, M, K, &alpha,
                                 B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta,
                                 C, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT));
    } else {
        cublasCheck(cublasGemmStridedBatchedEx(get_cublas(), opB, opA, N, M, K, &alpha,
                                               B, CUDA_R_32F, ldb, sB, A, CUDA_R_32F, lda, sA, &beta,
                                               C, CUDA_R_32F, ldc, sC, batch,
                                               compute, CUBLAS_GEMM_DEFAULT));
    }
}

// real bf16 operands under TTT_PRECISION=bf16 (section BF16 OPERANDS at the end of this file):
// linear_*_cuda take linear_*_bf16 where bf16_linear_taken says so, conv2d_*_cuda (all but the
// 1x1 ones, which are linears) take conv2d_*_bf16 where bf16_conv_taken says so
static int bf16_linear_taken(int rows, int C, int OC);
static int bf16_mlp_taken(int rows, int C, int Ch);
static int bf16_conv_taken(int C);
static void linear_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                                int N, int C, int OC);
static void linear_backward_bf16(float* dinp, float dinp_beta, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int N, int C, int OC);
static void mlp_forward_bf16(float* out, float* pre, const float* x, const float* w1, const float* b1,
                             const float* w2, const float* b2, int N, int C, int Ch);
static void mlp_backward_bf16(float* dx, float* dw1, float* db1, float* dw2, float* db2, const float* dout,
                              const float* pre, const float* x, const float* w1, const float* b1, const float* w2,
                              int N, int C, int Ch);
static void conv2d_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                                int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
static void conv2d_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                 const float* weight, int B, int H, int W, int C, int OC, int K, int stride,
                                 int pad, int Ho, int Wo);

// a kernel's dynamic shared memory limit raised to `bytes` when that is above both the default
// 48 KiB and what *raised records (0 at first); each launcher keeps its own record, so the
// attribute call runs on the first (eager) launch of each larger size only
template <typename Kernel>
static void smem_limit_raise(Kernel kernel, size_t bytes, size_t* raised) {
    if (bytes <= 48 * 1024 || bytes <= *raised) return;
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    *raised = bytes;
}

// ----------------------------------------------------------------------------
// reductions: warp and block sums (blockDim.x a multiple of 32, at most 1024)

template <typename T>
__device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum over the block, result returned to every thread. Uses 33 shared slots.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T part[33];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();               // part[] may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    T s = lane < nwarps ? part[lane] : (T)0;
    s = warp_sum(s);
    if (threadIdx.x == 0) part[32] = s;
    __syncthreads();
    return part[32];
}

// final pass of a two-stage sum: partials (npart, nvals) -> out[v] = sum over parts
__global__ void sum_partials_kernel(double* out, const double* partials, int npart, int nvals) {
    for (int v = 0; v < nvals; v++) {
        double s = 0.0;
        for (int p = threadIdx.x; p < npart; p += blockDim.x) s += partials[(size_t)p * nvals + v];
        s = block_sum(s);
        if (threadIdx.x == 0) out[v] = s;
    }
}

#define REDUCE_BLOCKS 512
#define REDUCE_THREADS 256
// workspace for a two-stage reduction of nvals sums: partials then the nvals results
static double* reduce_scratch(int nvals) {
    return (double*)workspace_get(&ws_reduce, (size_t)(REDUCE_BLOCKS + 1) * nvals * sizeof(double));
}

// ----------------------------------------------------------------------------
// elementwise

__global__ void add_forward_kernel(float* out, const float* a, const float* b, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}
// a += b; vec: both 16-byte aligned, N / 4 float4 units, then the last N % 4 one by one
__global__ void add_inplace_kernel(float* a, const float* b, size_t N, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = vec ? N / 4 : 0;
    for (size_t i = tid; i < n4; i += stride) {
        float4 x = ((float4*)a)[i], y = ((const float4*)b)[i];
        x.x += y.x; x.y += y.y; x.z += y.z; x.w += y.w;
        ((float4*)a)[i] = x;
    }
    for (size_t i = 4 * n4 + tid; i < N; i += stride) a[i] += b[i];
}
__global__ void scale_inplace_kernel(float* x, float s, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}
// (B, N) rows: element i belongs to sample i / N
__global__ void scale_rows_forward_kernel(float* out, const float* inp, const float* scale, size_t total, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = inp[i] * scale[i / N];
}
__global__ void scale_rows_backward_kernel(float* dinp, const float* dout, const float* scale, size_t total, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        dinp[i] += dout[i] * scale[i / N];
}

extern "C" void add_forward_cuda(float* out, const float* a, const float* b, size_t N) {
    OpTimer timer("add_forward");
    if (N == 0) return;
    add_forward_kernel<<<grid_for(N, 256), 256>>>(out, a, b, N); launchCheck();
}
extern "C" void add_inplace_cuda(float* a, const float* b, size_t N) {
    OpTimer timer("add_inplace");
    if (N == 0) return;
    int vec = ((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0;
    add_inplace_kernel<<<grid_for(vec ? (N + 3) / 4 : N, 256), 256>>>(a, b, N, vec); launchCheck();
}
extern "C" void scale_inplace_cuda(float* x, float s, size_t N) {
    OpTimer timer("scale_inplace");
    if (N == 0) return;
    scale_inplace_kernel<<<grid_for(N, 256), 256>>>(x, s, N); launchCheck();
}
extern "C" void scale_rows_forward_cuda(float* out, const float* inp, const float* scale, int B, size_t N) {
    OpTimer timer("scale_rows_forward");
    size_t total = (size_t)B * N;
    if (total == 0) return;
    scale_rows_forward_kernel<<<grid_for(total, 256), 256>>>(out, inp, scale, total, N); launchCheck();
}
extern "C" void scale_rows_backward_cuda(float* dinp, const float* dout, const float* scale, int B, size_t N) {
    OpTimer timer("scale_rows_backward");
    size_t total = (size_t)B * N;
    if (total == 0) return;
    scale_rows_backward_kernel<<<grid_for(total, 256), 256>>>(dinp, dout, scale, total, N); launchCheck();
}

// ----------------------------------------------------------------------------
// linear

#include <cublasLt.h>

// out (N, OC) += bias (OC), broadcast over the rows. Threads (x, y): x over groups of V columns
// (V = 4: float4 when OC % 4 == 0 and out is 16-byte aligned), y over rows, the grid
// striding over the rows; each thread keeps its V bias values in registers (no index arithmetic
// per element: a 64-bit `i % OC` per element made the old grid-stride kernel slow)
template <int V>
__global__ void add_bias_kernel(float* out, const float* bias, size_t N, int OC) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= OC) return;
    float b[V];
    #pragma unroll
    for (int v = 0; v < V; v++) b[v] = bias[c + v];
    for (size_t r = blockIdx.y * (size_t)blockDim.y + threadIdx.y; r < N; r += (size_t)gridDim.y * blockDim.y) {
        float* o = out + r * OC + c;
        if (V == 4) {
            float4 x = *reinterpret_cast<float4*>(o);
            x.x += b[0]; x.y += b[1]; x.z += b[2]; x.w += b[3];
            *reinterpret_cast<float4*>(o) = x;
        } else {
            #pragma unroll
            for (int v = 0; v < V; v++) o[v] += b[v];
        }
    }
}

// the launch of add_bias_kernel: 256 threads, x wide enough for the row's column groups (a
// multiple of 32, at most 256), y the rest of the block; the grid strides over the rows
static void add_bias(float* out, const float* bias, size_t N, int OC) {
    if (N == 0 || OC <= 0) return;
    // bias is read one float at a time (once per thread), so only out's alignment matters: a bias
    // inside the packed parameter buffer is often only 4-byte aligned
    bool vec = OC % 4 == 0 && (uintptr_t)out % 16 == 0;
    int groups = vec ? OC / 4 : OC;
    int tx = groups >= 256 ? 256 : (groups + 31) / 32 * 32, ty = 256 / tx;
    size_t gy = (N + ty - 1) / ty;
    if (gy > 4096) gy = 4096;
    dim3 grid((unsigned)((groups + tx - 1) / tx), (unsigned)gy), block(tx, ty);
    if (vec) add_bias_kernel<4><<<grid, block>>>(out, bias, N, OC);
    else add_bias_kernel<1><<<grid, block>>>(out, bias, N, OC);
    launchCheck();
}

// gelu, the exact erf form (ttt.h), and its slope d/dx [x Phi(x)] = Phi(x) + x phi(x)
__device__ __forceinline__ float gelu_value(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_slope(float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

// mlp's gelu with fc1's bias folded in, on (rows, C) row-major (bias (C) or NULL): threads x over
// groups of V columns, y over rows (the columns, hence the bias, known per thread without index
// arithmetic). MODE 0: out = gelu(pre + bias) (T float: hidden; T bf16: fc2's operand); MODE 1:
// out *= gelu'(pre + bias), in place (float: dhidden becomes dpre). V = 4 (float4 loads, 16-byte
// float or 8-byte bf16 stores) when C % 4 == 0 and pre and out are aligned for them
__device__ __forceinline__ void load4(float* x, const float* p) {
    float4 a = *reinterpret_cast<const float4*>(p);
    x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
}
__device__ __forceinline__ void load4(float* x, const __nv_bfloat16* p) {   // 8 bytes: 2 bf16 pairs
    uint2 u = *reinterpret_cast<const uint2*>(p);
    float2 lo = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u.x));
    float2 hi = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u.y));
    x[0] = lo.x; x[1] = lo.y; x[2] = hi.x; x[3] = hi.y;
}
__device__ __forceinline__ void store4(float* p, const float* x) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float* x) {
    __nv_bfloat162* d2 = reinterpret_cast<__nv_bfloat162*>(p);
    d2[0] = __floats2bfloat162_rn(x[0], x[1]);
    d2[1] = __floats2bfloat162_rn(x[2], x[3]);
}
__device__ __forceinline__ float load_value(const float* p) { return *p; }
__device__ __forceinline__ float load_value(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_value(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_value(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
// aligned for load4 / store4 of T
template <typename T> static bool aligned4(const T* p) { return (uintptr_t)p % (4 * sizeof(T)) == 0; }
template <typename T, typename TP, int MODE, int V>
__global__ void mlp_gelu_kernel(T* out, const TP* pre, const float* bias, size_t rows, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= C) return;
    float b[V];
    #pragma unroll
    for (int v = 0; v < V; v++) b[v] = bias ? bias[c + v] : 0.0f;
    for (size_t r = blockIdx.y * (size_t)blockDim.y + threadIdx.y; r < rows; r += (size_t)gridDim.y * blockDim.y) {
        size_t i = r * C + c;
        if (V == 4) {
            float x[4], y[4];
            load4(x, pre + i);
            if (MODE == 1) load4(y, out + i);
            #pragma unroll
            for (int v = 0; v < 4; v++) y[v] = MODE == 0 ? gelu_value(x[v] + b[v]) : y[v] * gelu_slope(x[v] + b[v]);
            store4(out + i, y);
        } else {
            float x = load_value(pre + i) + b[0];
            if (MODE == 0) store_value(&out[i], gelu_value(x));
            else store_value(&out[i], load_value(out + i) * gelu_slope(x));
        }
    }
}
template <typename T, int MODE, typename TP>
static void mlp_gelu(T* out, const TP* pre, const float* bias, size_t rows, int C) {
    if (rows == 0 || C <= 0) return;
    bool vec = C % 4 == 0 && aligned4(pre) && aligned4(out);
    int groups = vec ? C / 4 : C;
    dim3 block(32, 8);
    size_t gy = (rows + 7) / 8;
    if (gy > 8192) gy = 8192;
    dim3 grid((groups + 31) / 32, (unsigned)gy);
    if (vec) mlp_gelu_kernel<T, TP, MODE, 4><<<grid, block>>>(out, pre, bias, rows, C);
    else mlp_gelu_kernel<T, TP, MODE, 1><<<grid, block>>>(out, pre, bias, rows, C);
    launchCheck();
}

// dst (N, OC, unless NULL) = v rounded to bf16, and dbias (OC, unless NULL) += the column sums
// of v (float32, before rounding), v = src, or src * gelu'(pre + pre_bias[c]) when pre is not NULL
// (mlp's fc1: the gradient at gelu's output times its slope; pre_bias may be NULL). So a bf16
// linear's backward reads dout once for its bf16 copy and its bias gradient, and with dst NULL
// this is the plain column sum. Block (32, 16): x over groups of V columns (V = 4: float4 loads
// and 8-byte bf16 stores, column_sum_vec4 says when), y over the rows of this block's row chunk;
// one atomicAdd per column per block (a plain add when one block covers the rows).
template <typename TS, typename TP, int V>
__global__ void column_sum_convert_kernel(__nv_bfloat16* dst, float* dbias, const TS* src, const TP* pre,
                                          const float* pre_bias, int N, int OC, int rows_per_block) {
    __shared__ float part[V][16][33];
    int c = (blockIdx.x * 32 + threadIdx.x) * V;
    int r0 = blockIdx.y * rows_per_block, r1 = min(N, r0 + rows_per_block);
    float s[V], pb[V];
    #pragma unroll
    for (int v = 0; v < V; v++) { s[v] = 0.0f; pb[v] = pre_bias && c < OC ? pre_bias[c + v] : 0.0f; }
    if (c < OC)
        for (int r = r0 + threadIdx.y; r < r1; r += 16) {
            size_t i = (size_t)r * OC + c;
            float x[V];
            if (V == 4) load4(x, src + i);
            else x[0] = load_value(src + i);
            if (pre) {
                float g[V];
                if (V == 4) load4(g, pre + i);
                else g[0] = load_value(pre + i);
                #pragma unroll
                for (int v = 0; v < V; v++) x[v] *= gelu_slope(g[v] + pb[v]);
            }
            if (dst) {
                if (V == 4) store4(dst + i, x);
                else dst[i] = __float2bfloat16(x[0]);
            }
            #pragma unroll
            for (int v = 0; v < V; v++) s[v] += x[v];
        }
    #pragma unroll
    for (int v = 0; v < V; v++) part[v][threadIdx.y][threadIdx.x] = s[v];
    __syncthreads();
    if (threadIdx.y == 0 && c < OC && dbias) {   // dbias NULL: the conversion (with the slope) alone
        #pragma unroll
        for (int v = 0; v < V; v++) {
            float t = 0.0f;
            for (int k = 0; k < 16; k++) t += part[v][k][threadIdx.x];
            if (gridDim.y == 1) dbias[c + v] += t; else atomicAdd(&dbias[c + v], t);
        }
    }
}

// the launch of column_sum_convert_kernel: 512 rows per block (more when the rows would need over
// 65535 blocks); four columns per thread when OC % 4 == 0 and src, pre and dst are aligned for
// load4 / store4. dst may be src (bf16, in place: each element is read before it is written, by
// the same thread)
template <typename TS, typename TP>
static void column_sum_convert(__nv_bfloat16* dst, float* dbias, const TS* src, const TP* pre,
                               const float* pre_bias, int N, int OC) {
    if (N <= 0 || OC <= 0) return;
    int rpb = 512;
    int chunks = (N + rpb - 1) / rpb;
    if (chunks > 65535) { rpb = (N + 65534) / 65535; chunks = (N + rpb - 1) / rpb; }
    bool vec = OC % 4 == 0 && aligned4(src) && aligned4(pre) && aligned4(dst);
    int V = vec ? 4 : 1;
    dim3 grid((OC / V + 31) / 32, chunks), block(32, 16);
    if (vec) column_sum_convert_kernel<TS, TP, 4><<<grid, block>>>(dst, dbias, src, pre, pre_bias, N, OC, rpb);
    else column_sum_convert_kernel<TS, TP, 1><<<grid, block>>>(dst, dbias, src, pre, pre_bias, N, OC, rpb);
    launchCheck();
}

// dbias (OC) += column sums of dout (N, OC)
static void column_sum_accumulate(float* dbias, const float* dout, int N, int OC) {
    column_sum_convert(NULL, dbias, dout, (const float*)NULL, NULL, N, OC);
}

// linear through cuBLASLt: the bias added by the GEMM's epilogue (CUBLASLT_EPILOGUE_BIAS) and the
// bias gradient summed by the dweight GEMM's epilogue (CUBLASLT_EPILOGUE_BGRADB), in gemm_rm's
// compute type. Taken when the row lengths C and OC are multiples of 4 floats (16 bytes) and
// cuBLASLt's heuristic offers an algorithm for the shape, the epilogue and the actual alignment of
// every pointer (told to it as the MIN_ALIGNMENT preferences; parameters live in one packed
// buffer, so a weight may be only 4-byte aligned); otherwise gemm_rm plus add_bias_kernel / the
// column sums. OFF by default (TTT_LINEAR_LT=1 or ttt_cuda_set_linear_lt(1) turn it on): on the
// H200 (Swin-S Y, B = 8, 384 x 1248) the TTT step took 157.7 ms with it and 151.9 ms without, the
// prediction 12.5 and 11.7 ms: the heuristic's one algorithm per shape loses to cublasGemmEx's
// choice by more than the separate bias kernels cost.
// cuBLASLt's GELU epilogues are NOT used: they compute the tanh approximation of GELU, and Swin
// and Mask2Former use the exact erf GELU (gelu_forward).
//
// Row-major (N, C) read column-major is its (C, N) transpose, so in cuBLASLt's column-major terms:
//   forward  out^T (OC, N) = W (OC, C) . inp^T (C, N) + bias  m = OC, n = N, k = C; A = W buffer
//            (C x OC, ld C, op T), B = inp (C x N, ld C), D = out (OC x N, ld OC). BIAS adds a
//            vector of D's rows (m = OC): bias per output channel, broadcast over the N rows.
//   dweight  dW^T (C, OC) += inp^T (C, N) . dout (N, OC)      m = C, n = OC, k = N; A = inp (C x N,
//            ld C), B = dout buffer (OC x N, ld OC, op T), C = D = dweight (C x OC, ld C), beta 1.
//            BGRADB sums op(B) = dout over k (the N rows) for each of D's n = OC columns: dbias.
// The epilogue WRITES the bias gradient while the op's contract ACCUMULATES, so it goes to a
// scratch vector of OC floats and one small kernel adds it to dbias. That beats keeping the
// column-sum kernel, which reads all of dout (N x OC floats) a second time (at B = 8, 384 x 1248,
// Swin-S stage 1's MLP: 240k rows x 384 = 368 MB) where the add reads 2 x OC floats.

static cublasLtHandle_t cublaslt_handle = NULL;
static Workspace ws_lt;          // cuBLASLt's workspace: one size, so it never moves
static Workspace ws_lt_dbias;    // the bias gradient the BGRADB epilogue writes, before the add
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)
static int linear_lt_on = -1;    // TTT_LINEAR_LT=1 or ttt_cuda_set_linear_lt(1): cuBLASLt where it can
static long linear_lt_count[2];  // linear calls done by cuBLASLt: 0 forward, 1 dweight + dbias

extern "C" void ttt_cuda_set_linear_lt(int on) { linear_lt_on = on != 0; }
extern "C" long ttt_cuda_linear_lt_calls(int which) { return linear_lt_count[which != 0]; }

static cublasLtHandle_t get_cublaslt(void) {
    if (cublaslt_handle == NULL) {
        cublasCheck(cublasLtCreate(&cublaslt_handle));
        workspace_get(&ws_lt, LT_WORKSPACE_BYTES);
    }
    return cublaslt_handle;
}

// alignment of a device pointer in bytes, up to 256 (what cuBLASLt's preferences ask for)
static unsigned pointer_alignment(const void* p) {
    uintptr_t a = (uintptr_t)p;
    unsigned r = 256;
    while (r > 1 && a % r != 0) r >>= 1;
    return r;
}

// one matmul plan per (epilogue, shape, compute type, alignments): descriptor, layouts and the
// heuristic's algorithm, or ok = 0 when cuBLASLt has none (then the fallback path is used)
typedef struct {
    int epilogue, m, n, k, compute;
    unsigned align_a, align_b, align_c, align_bias;
    int ok;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} LtPlan;
#define LT_MAX_PLANS 1024
static LtPlan lt_plans[LT_MAX_PLANS];
static int lt_nplans = 0;

// the plan of D (m, n) = op(A) (m, k) op(B) (k, n) [+ epilogue], column-major; transa / transb
// and the leading dimensions follow from the epilogue (BIAS: forward, BGRADB: dweight, above).
// NULL when the plan table is full (fallback).
static LtPlan* lt_plan(cublasLtEpilogue_t epilogue, int m, int n, int k, const void* A, const void* B,
                       const void* C, const void* bias) {
    cublasComputeType_t compute = gemm_compute_type();
    unsigned aa = pointer_alignment(A), ab = pointer_alignment(B), ac = pointer_alignment(C);
    unsigned abias = pointer_alignment(bias);
    for (int i = 0; i < lt_nplans; i++) {
        LtPlan* p = &lt_plans[i];
        if (p->epilogue == (int)epilogue && p->m == m && p->n == n && p->k == k && p->compute == (int)compute &&
            p->align_a == aa && p->align_b == ab && p->align_c == ac && p->align_bias == abias) return p;
    }
    if (lt_nplans == LT_MAX_PLANS) return NULL;
    LtPlan* p = &lt_plans[lt_nplans++];
    memset(p, 0, sizeof(*p));
    p->epilogue = (int)epilogue; p->m = m; p->n = n; p->k = k; p->compute = (int)compute;
    p->align_a = aa; p->align_b = ab; p->align_c = ac; p->align_bias = abias;
    bool forward = epilogue == CUBLASLT_EPILOGUE_BIAS;
    cublasOperation_t ta = forward ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = forward ? CUBLAS_OP_N : CUBLAS_OP_T;
    int32_t bias_type = CUDA_R_32F;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, compute, CUDA_R_32F));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    // the heuristic reads the bias pointer's alignment from the descriptor
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    // layouts of the stored matrices (before op): rows, columns, leading dimension
    if (forward) {
        cublasCheck(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_32F, k, m, k));   // W: C x OC, ld C
        cublasCheck(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_32F, k, n, k));   // inp: C x N, ld C
    } else {
        cublasCheck(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_32F, m, k, m));   // inp: C x N, ld C
        cublasCheck(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_32F, n, k, n));   // dout: OC x N, ld OC
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&p->lc, CUDA_R_32F, m, n, m));       // out / dweight
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws_bytes = LT_WORKSPACE_BYTES;
    uint32_t al[4] = {aa, ab, ac, ac};   // A, B, C, D (D is C)
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], sizeof(al[0])));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], sizeof(al[1])));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], sizeof(al[2])));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], sizeof(al[3])));
    cublasLtMatmulHeuristicResult_t result;
    int nresults = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(get_cublaslt(), p->desc, p->la, p->lb, p->lc, p->lc, pref,
                                                       1, &result, &nresults);
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    // NOT_SUPPORTED (no algorithm) is an answer; INVALID_VALUE (this library version rejects the
    // epilogue with these types) too, said once per epilogue; any other failure is an error
    if (st == CUBLAS_STATUS_INVALID_VALUE) {
        static int said[2];
        if (!said[forward]) {
            fprintf(stderr, "note: cuBLASLt rejects the %s epilogue (m %d, n %d, k %d): linear uses the cuBLAS path\n",
                    forward ? "BIAS" : "BGRADB", m, n, k);
            said[forward] = 1;
        }
    } else if (st != CUBLAS_STATUS_NOT_SUPPORTED) cublasCheck(st);
    p->ok = st == CUBLAS_STATUS_SUCCESS && nresults > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
            result.workspaceSize <= LT_WORKSPACE_BYTES;
    if (p->ok) p->algo = result.algo;
    return p;
}

static int linear_lt_enabled(void) {
    if (linear_lt_on < 0) {
        const char* e = getenv("TTT_LINEAR_LT");
        linear_lt_on = e && e[0] == '1';   // off by default: measured slower (below)
    }
    return linear_lt_on;
}

// the shapes cuBLASLt gets: rows of a multiple of 4 floats (16 bytes); the pointers' alignment is
// left to the heuristic
static int linear_lt_shape_ok(int C, int OC) { return C % 4 == 0 && OC % 4 == 0; }

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias in one cuBLASLt call; 0 if not taken
static int linear_forward_lt(float* out, const float* inp, const float* weight, const float* bias,
                             int N, int C, int OC) {
    if (!linear_lt_enabled() || !linear_lt_shape_ok(C, OC)) return 0;
    LtPlan* p = lt_plan(CUBLASLT_EPILOGUE_BIAS, OC, N, C, weight, inp, out, bias);
    if (p == NULL || !p->ok) return 0;
    float alpha = 1.0f, beta = 0.0f;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    cublasCheck(cublasLtMatmul(get_cublaslt(), p->desc, &alpha, weight, p->la, inp, p->lb, &beta,
                               out, p->lc, out, p->lc, &p->algo, ws_lt.ptr, LT_WORKSPACE_BYTES, cudaStreamPerThread));
    gemm_flop_count += 2.0 * N * OC * (double)C;
    linear_lt_count[0]++;
    return 1;
}

// dweight (OC, C) += dout^T @ inp and dbias (OC) += column sums of dout (N, OC), the sums by the
// same GEMM's epilogue into a scratch, then added; 0 if not taken
static int linear_backward_weight_lt(float* dweight, float* dbias, const float* dout, const float* inp,
                                     int N, int C, int OC) {
    if (!linear_lt_enabled() || !linear_lt_shape_ok(C, OC)) return 0;
    // never smaller than 64k floats: the first (eager) call of a graph grows it, if ever
    float* scratch = (float*)workspace_get(&ws_lt_dbias, (size_t)(OC > 65536 ? OC : 65536) * sizeof(float));
    LtPlan* p = lt_plan(CUBLASLT_EPILOGUE_BGRADB, C, OC, N, inp, dout, dweight, scratch);
    if (p == NULL || !p->ok) return 0;
    float alpha = 1.0f, beta = 1.0f;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &scratch, sizeof(scratch)));
    cublasCheck(cublasLtMatmul(get_cublaslt(), p->desc, &alpha, inp, p->la, dout, p->lb, &beta,
                               dweight, p->lc, dweight, p->lc, &p->algo, ws_lt.ptr, LT_WORKSPACE_BYTES,
                               cudaStreamPerThread));
    add_inplace_kernel<<<grid_for(OC, 256), 256>>>(dbias, scratch, (size_t)OC, 0); launchCheck();
    gemm_flop_count += 2.0 * N * OC * (double)C;
    linear_lt_count[1]++;
    return 1;
}

extern "C" void linear_forward_cuda(float* out, const float* inp, const float* weight, const float* bias,
                                    int N, int C, int OC) {
    OpTimer timer("linear_forward", N, C, OC);
    if (N <= 0 || OC <= 0) return;
    if (bf16_linear_taken(N, C, OC)) { linear_forward_bf16(out, inp, weight, bias, N, C, OC); return; }
    if (C > 0 && misaligned(weight, C)) weight = stage_copy(weight, (size_t)OC * C, 3);   // see gemm_rm
    if (C > 0 && bias && linear_forward_lt(out, inp, weight, bias, N, C, OC)) return;
    if (C <= 0) { ttt_cuda_zero(out, (size_t)N * OC * sizeof(float)); }
    // out (N, OC) = inp (N, C) @ weight (OC, C)^T
    else gemm_rm(false, true, N, OC, C, 1.0f, inp, C, 0, weight, C, 0, 0.0f, out, OC, 0, 1);
    if (bias) add_bias(out, bias, (size_t)N, OC);
}

static void linear_backward_staged(float* dinp, float dinp_beta, float* dweight, float* dbias, const float* dout,
                                   const float* inp, const float* weight, int N, int C, int OC);

// linear_backward_cuda (dinp_beta 1: dinp accumulates) and linear_backward_write_cuda (dinp_beta 0:
// dinp = the product, its old contents never read, as cuBLAS does not read C when beta is 0)
static void linear_backward_beta(float* dinp, float dinp_beta, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int N, int C, int OC) {
    if (N <= 0) return;
    if (OC <= 0) {   // the empty product: written as zeros, nothing added
        if (dinp && dinp_beta == 0.0f && C > 0) ttt_cuda_zero(dinp, (size_t)N * C * sizeof(float));
        return;
    }
    if (bf16_linear_taken(N, C, OC)) {
        linear_backward_bf16(dinp, dinp_beta, dweight, dbias, dout, inp, weight, N, C, OC);
        return;
    }
    // misaligned weight / weight gradient: through aligned copies (see gemm_rm); dweight
    // accumulates, so its copy starts from its values and is copied back after
    if (dinp && C > 0 && misaligned(weight, C)) weight = stage_copy(weight, (size_t)OC * C, 3);
    if (dweight && C > 0 && misaligned(dweight, C)) {
        float* dw = stage_copy(dweight, (size_t)OC * C, 4);
        linear_backward_staged(dinp, dinp_beta, dw, dbias, dout, inp, weight, N, C, OC);
        cudaCheck(cudaMemcpyAsync(dweight, dw, (size_t)OC * C * sizeof(float), cudaMemcpyDeviceToDevice,
                                  cudaStreamPerThread));
        return;
    }
    linear_backward_staged(dinp, dinp_beta, dweight, dbias, dout, inp, weight, N, C, OC);
}

extern "C" void linear_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                     const float* inp, const float* weight, int N, int C, int OC) {
    OpTimer timer("linear_backward", N, C, OC);
    linear_backward_beta(dinp, 1.0f, dweight, dbias, dout, inp, weight, N, C, OC);
}

extern "C" void linear_backward_write_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                           const float* inp, const float* weight, int N, int C, int OC) {
    OpTimer timer("linear_backward_write", N, C, OC);
    linear_backward_beta(dinp, 0.0f, dweight, dbias, dout, inp, weight, N, C, OC);
}

static void linear_backward_staged(float* dinp, float dinp_beta, float* dweight, float* dbias, const float* dout,
                                   const float* inp, const float* weight, int N, int C, int OC) {
    // dinp (N, C) = dout (N, OC) @ weight (OC, C) + dinp_beta * dinp
    if (dinp) gemm_rm(false, false, N, C, OC, 1.0f, dout, OC, 0, weight, C, 0, dinp_beta, dinp, C, 0, 1);
    if (dweight && dbias && C > 0 && linear_backward_weight_lt(dweight, dbias, dout, inp, N, C, OC)) return;
    // dweight (OC, C) += dout^T (OC, N) @ inp (N, C)
    if (dweight) gemm_rm(true, false, OC, C, N, 1.0f, dout, OC, 0, inp, C, 0, 1.0f, dweight, C, 0, 1);
    if (dbias) column_sum_accumulate(dbias, dout, N, OC);
}

// mlp (ttt.h): fc1 is a plain linear without its bias (pre = x w1^T; b1 is added where gelu reads
// pre, so the (N, Ch) output gets no bias pass). Where bf16_mlp_taken says so, the whole op runs on
// bf16 operands with pre kept in bf16 (mlp_forward_bf16, section BF16 OPERANDS); otherwise gelu
// goes into hidden (mlp_gelu) and the two linears take their own paths. Backward: fc2's dinp is
// dhidden, written (beta 0); fc1's dout is dhidden * gelu'(pre + b1) (mlp_gelu in place); dx is
// written (beta 0).
extern "C" void mlp_forward_cuda(float* out, float* pre, float* hidden, const float* x, const float* w1,
                                 const float* b1, const float* w2, const float* b2, int N, int C, int Ch) {
    OpTimer timer("mlp_forward", N, C, Ch);
    if (N <= 0 || C <= 0 || Ch <= 0) return;
    if (bf16_mlp_taken(N, C, Ch)) { mlp_forward_bf16(out, pre, x, w1, b1, w2, b2, N, C, Ch); return; }
    linear_forward_cuda(pre, x, w1, NULL, N, C, Ch);
    mlp_gelu<float, 0>(hidden, pre, b1, (size_t)N, Ch);
    linear_forward_cuda(out, hidden, w2, b2, N, Ch, C);
}

extern "C" void mlp_backward_cuda(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden,
                                  float* hidden, const float* dout, const float* pre, const float* x,
                                  const float* w1, const float* b1, const float* w2, int N, int C, int Ch) {
    OpTimer timer("mlp_backward", N, C, Ch);
    if (N <= 0 || C <= 0 || Ch <= 0) return;
    if (bf16_mlp_taken(N, C, Ch)) {
        mlp_backward_bf16(dx, dw1, db1, dw2, db2, dout, pre, x, w1, b1, w2, N, C, Ch);
        return;
    }
    // fc2: dhidden = dout @ w2 (written), dw2 += dout^T gelu(pre + b1), db2 += column sums of dout
    mlp_gelu<float, 0>(hidden, pre, b1, (size_t)N, Ch);
    linear_backward_write_cuda(dhidden, dw2, db2, dout, hidden, w2, N, Ch, C);
    // fc1: dpre = dhidden * gelu'(pre + b1); dx = dpre @ w1 (written), dw1 += dpre^T x, db1 += sums of dpre
    mlp_gelu<float, 1>(dhidden, pre, b1, (size_t)N, Ch);
    linear_backward_write_cuda(dx, dw1, db1, dhidden, x, w1, N, C, Ch);
}

// ----------------------------------------------------------------------------
// layernorm: one warp per row

// window token (b, w, t) of flat token index tok (B*nW*T tokens, row-major)
__device__ inline long window_token_source(size_t tok, int H, int W, int ws, int shift, int* b_out) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    int t = tok % T;
    size_t bw = tok / T;
    int w = bw % (nWh * nWw), b = bw / (nWh * nWw);
    if (b_out) *b_out = b;
    return window_source(b, w, t, H, W, ws, shift, nWw);
}

// one row's LayerNorm by one warp: y (C) from x (C); the row's mean and rstd returned
__device__ __forceinline__ void layernorm_row_warp(float* y, float* mean_out, float* rstd_out, const float* x,
                                                   const float* weight, const float* bias, int C, int lane) {
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += x[c];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) { float d = x[c] - m; v += d * d; }
    v = warp_sum(v) / C;
    float r = rsqrtf(v + LN_EPS);
    for (int c = lane; c < C; c += 32) y[c] = (x[c] - m) * r * weight[c] + bias[c];
    *mean_out = m;
    *rstd_out = r;
}

// dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = dout * weight; one row
// by one warp, accumulated into dx
__device__ __forceinline__ void layernorm_row_backward_warp(float* dx, const float* dy, const float* x,
                                                            const float* weight, float m, float r, int C,
                                                            int lane) {
    float a = 0.0f, b = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dn = dy[c] * weight[c];
        a += dn; b += dn * (x[c] - m) * r;
    }
    a = warp_sum(a) / C; b = warp_sum(b) / C;
    for (int c = lane; c < C; c += 32) {
        float norm = (x[c] - m) * r;
        dx[c] += (dy[c] * weight[c] - a - norm * b) * r;
    }
}

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    float m, r;
    layernorm_row_warp(out + (size_t)row * C, &m, &r, inp + (size_t)row * C, weight, bias, C, lane);
    if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

__global__ void layernorm_backward_kernel(float* dinp, const float* dout, const float* inp,
                                          const float* weight, const float* mean, const float* rstd,
                                          int N, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    layernorm_row_backward_warp(dinp + (size_t)row * C, dout + (size_t)row * C, inp + (size_t)row * C, weight,
                                mean[row], rstd[row], C, lane);
}

// the rows of a gradient that norm_param_grad sums: row r is pixel r (ws = 0), or window token r
// of a (B, H, W) map cut into ws x ws windows rolled by -shift (the pixel window_token_source
// gives; padding tokens, -1, are skipped)
struct NormRows { int H, W, ws, shift; };
__device__ __forceinline__ long norm_row_pixel(NormRows rows, int r) {
    return rows.ws ? window_token_source((size_t)r, rows.H, rows.W, rows.ws, rows.shift, NULL) : (long)r;
}

// dweight[c] += sum_rows dout * norm, dbias[c] += sum_rows dout: the LayerNorm fallback (rows too
// long for the register kernels below; groupnorm_backward has its own partials).
// Row r of dout is pixel n = norm_row_pixel(rows, r) of inp (n = r unless dout is in window
// order); channel c uses statistics index (n / HW) * G + c / Cg (layernorm: HW = 1, G = 1,
// Cg = C, so the index is n). Block (32, 16) as column_sum_convert_kernel.
__global__ void norm_param_grad_kernel(float* dweight, float* dbias, const float* dout, const float* inp,
                                       const float* mean, const float* rstd, int Nrows, int C,
                                       int HW, int G, int Cg, NormRows rows, int rows_per_block) {
    __shared__ float pw[16][33], pb[16][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * rows_per_block, r1 = min(Nrows, r0 + rows_per_block);
    float sw = 0.0f, sb = 0.0f;
    if (c < C) {
        for (int r = r0 + threadIdx.y; r < r1; r += 16) {
            long n = norm_row_pixel(rows, r);
            if (n < 0) continue;   // a padding window token
            int si = (int)(n / HW) * G + c / Cg;
            float d = dout[(size_t)r * C + c];
            sw += d * (inp[(size_t)n * C + c] - mean[si]) * rstd[si];
            sb += d;
        }
    }
    pw[threadIdx.y][threadIdx.x] = sw; pb[threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < 16; k++) { tw += pw[k][threadIdx.x]; tb += pb[k][threadIdx.x]; }
        if (gridDim.y == 1) {
            if (dweight) dweight[c] += tw;
            if (dbias) dbias[c] += tb;
        } else {
            if (dweight) atomicAdd(&dweight[c], tw);
            if (dbias) atomicAdd(&dbias[c], tb);
        }
    }
}

static void norm_param_grad(float* dweight, float* dbias, const float* dout, const float* inp,
                            const float* mean, const float* rstd, size_t nrows, int C, int HW, int G, int Cg,
                            NormRows rows) {
    if (nrows == 0 || C <= 0) return;
    if (nrows > 0x7fffffff) ttt_die("norm_param_grad: %zu rows", nrows);
    int Nrows = (int)nrows;
    int rows_per_block = 256;
    int chunks = (Nrows + rows_per_block - 1) / rows_per_block;
    if (chunks > 65535) { rows_per_block = (Nrows + 65534) / 65535; chunks = (Nrows + rows_per_block - 1) / rows_per_block; }
    dim3 grid((C + 31) / 32, chunks), block(32, 16);
    norm_param_grad_kernel<<<grid, block>>>(dweight, dbias, dout, inp, mean, rstd, Nrows, C, HW, G, Cg, rows,
                                            rows_per_block);
    launchCheck();
}

// ----------------------------------------------------------------------------
// LayerNorm rows in registers: the fast path of layernorm_forward / _backward, layernorm_partition_*
// and layernorm_apply (the warp-per-row kernels above remain the fallback for any C).
// A row of C floats is cut into U = C / VEC units: VEC = 4 (float4 loads and stores) when C % 4 == 0
// and the row pointers are 16-byte aligned, else VEC = 1. A group of G lanes (4, 8, 16 or 32) works
// on one row: lane l holds units l, l + G, l + 2G, ... (at most NV of them) in registers, so the
// row is read from memory once and a warp works on 32 / G rows at a time (Swin's C = 96, 192, 384,
// 768 as float4: G = 8, 16, 32, 32 with 3, 3, 3, 6 units per lane). The group's sums are xor
// butterflies (every lane ends with the same value); the sums run in a different order than the
// CPU's (float32 here, double there): equal to float32 rounding, not bit for bit. Weight and bias
// may sit at any 4-byte offset of the packed parameter buffer: float4 loads of them only when
// aligned. Row loops have the same trip count for every lane of a warp (the shuffles need all 32).
//
// The backward fuses the parameter gradients: each block takes a contiguous range of rows, each
// lane sums dout * norm and dout for its columns over the block's rows in registers, the block
// adds its groups' sums in shared memory (fixed order) into its row of a workspace (nblocks, 2, C),
// and norm_param_sum_kernel adds the blocks' rows in a fixed order into dweight, dbias (+=):
// deterministic, no float atomics. A window-order row's source pixel is computed once per row.

#define LN_THREADS 256
static Workspace ws_ln;   // the backward's per-block parameter gradient sums (nblocks, 2, C)

template <int VEC>
__device__ __forceinline__ void load_unit(float* d, const float* p) {
    if (VEC == 4) {
        float4 v = *(const float4*)p;
        d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
    } else {
        d[0] = *p;
    }
}
template <int VEC>
__device__ __forceinline__ void store_unit(float* p, const float* d) {
    if (VEC == 4) *(float4*)p = make_float4(d[0], d[1], d[2], d[3]);
    else *p = d[0];
}
// a unit of a parameter vector (weight, bias): float4 only when it is 16-byte aligned
template <int VEC>
__device__ __forceinline__ void load_param_unit(float* d, const float* p, int aligned) {
    if (VEC == 4 && aligned) load_unit<4>(d, p);
    else for (int j = 0; j < VEC; j++) d[j] = __ldg(p + j);
}
// sum over the G lanes of this lane's group (G a power of two <= 32; all 32 lanes call it)
__device__ __forceinline__ float group_sum(float v, int G) {
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// y = (x - mean) rstd w + b on the rows of inp. Row r (< nrows) reads pixel n = norm_row_pixel(rows, r)
// of inp and writes row r of out (window order when rows.ws > 0: padding tokens, n = -1, get
// zeros); mean[n], rstd[n] stored when the pointers are not NULL.
template <int VEC, int NV>
__global__ void __launch_bounds__(LN_THREADS)
layernorm_rows_forward_kernel(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                              const float* bias, int nrows, int C, int G, int params_aligned, NormRows rows) {
    int ng = blockDim.x / G, l = threadIdx.x % G, U = C / VEC;
    for (long base = (long)blockIdx.x * ng; base < nrows; base += (long)gridDim.x * ng) {
        long r = base + threadIdx.x / G;
        long n = r < nrows ? norm_row_pixel(rows, (int)r) : -2;   // -1 padding, -2 past the end
        const float* x_row = inp + (size_t)(n > 0 ? n : 0) * C;
        float x[NV * VEC];
        float s = 0.0f;
        #pragma unroll
        for (int k = 0; k < NV; k++) {
            int u = k * G + l;
            if (n >= 0 && u < U) load_unit<VEC>(x + k * VEC, x_row + (size_t)u * VEC);
            else for (int j = 0; j < VEC; j++) x[k * VEC + j] = 0.0f;
            for (int j = 0; j < VEC; j++) s += x[k * VEC + j];
        }
        float m = group_sum(s, G) / C;
        float v = 0.0f;
        #pragma unroll
        for (int k = 0; k < NV; k++)
            if (k * G + l < U)
                for (int j = 0; j < VEC; j++) { float d = x[k * VEC + j] - m; v += d * d; }
        v = group_sum(v, G) / C;
        float rs = rsqrtf(v + LN_EPS);
        if (n == -2) continue;
        float* y = out + (size_t)r * C;
        #pragma unroll
        for (int k = 0; k < NV; k++) {
            int u = k * G + l;
            if (u >= U) continue;
            float o[VEC];
            if (n >= 0) {
                float w[VEC], b[VEC];
                load_param_unit<VEC>(w, weight + u * VEC, params_aligned);
                load_param_unit<VEC>(b, bias + u * VEC, params_aligned);
                for (int j = 0; j < VEC; j++) o[j] = (x[k * VEC + j] - m) * rs * w[j] + b[j];
            } else {
                for (int j = 0; j < VEC; j++) o[j] = 0.0f;
            }
            store_unit<VEC>(y + (size_t)u * VEC, o);
        }
        if (n >= 0 && l == 0) {
            if (mean) mean[n] = m;
            if (rstd) rstd[n] = rs;
        }
    }
}

// dinp[n] += rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)), dnorm = dout[r] w, for the rows r
// of this block (rows_per_block of them from blockIdx.x * rows_per_block), n = norm_row_pixel(rows, r)
// (padding tokens skipped); dinp may be NULL. With partial: partial[blockIdx.x][0][c] = sum over the
// block's rows of dout * norm, [1][c] = sum of dout. Dynamic shared memory, when partial is given:
// the blockDim.x / G groups' sums, (blockDim.x / G, C) floats. At most 76 (NV * VEC <= 12: Swin's
// C = 96, 192, 384) or 128 registers, no spills (nvcc -Xptxas -v, sm_90): 3 or 2 blocks an SM.
template <int VEC, int NV>
__global__ void __launch_bounds__(LN_THREADS, NV * VEC <= 12 ? 3 : 2)
layernorm_rows_backward_kernel(float* dinp, float* partial, const float* dout, const float* inp,
                               const float* weight, const float* mean, const float* rstd, int nrows, int C,
                               int G, int params_aligned, int rows_per_block, NormRows rows) {
    extern __shared__ float ln_smem[];   // (ng, C)
    int ng = blockDim.x / G, group = threadIdx.x / G, l = threadIdx.x % G, U = C / VEC;
    long r0 = (long)blockIdx.x * rows_per_block, r1 = min((long)nrows, r0 + rows_per_block);
    float sum_dy_norm[NV * VEC], sum_dy[NV * VEC];
    #pragma unroll
    for (int i = 0; i < NV * VEC; i++) { sum_dy_norm[i] = 0.0f; sum_dy[i] = 0.0f; }
    for (long base = r0; base < r1; base += ng) {
        long r = base + group;
        long n = r < r1 ? norm_row_pixel(rows, (int)r) : -1;   // -1: padding token or past the end
        float m = 0.0f, rs = 0.0f;
        if (n >= 0) { m = mean[n]; rs = rstd[n]; }
        const float* x_row = inp + (size_t)(n > 0 ? n : 0) * C;
        const float* dy_row = dout + (size_t)(r < r1 ? r : r0) * C;
        float x[NV * VEC], dy[NV * VEC];
        float a = 0.0f, b = 0.0f;
        #pragma unroll
        for (int k = 0; k < NV; k++) {
            int u = k * G + l;
            if (n >= 0 && u < U) {
                load_unit<VEC>(x + k * VEC, x_row + (size_t)u * VEC);
                load_unit<VEC>(dy + k * VEC, dy_row + (size_t)u * VEC);
                float w[VEC];
                load_param_unit<VEC>(w, weight + u * VEC, params_aligned);
                for (int j = 0; j < VEC; j++) {
                    float norm = (x[k * VEC + j] - m) * rs;
                    float dn = dy[k * VEC + j] * w[j];
                    a += dn; b += dn * norm;
                    sum_dy_norm[k * VEC + j] += dy[k * VEC + j] * norm;
                    sum_dy[k * VEC + j] += dy[k * VEC + j];
                }
            } else {
                for (int j = 0; j < VEC; j++) { x[k * VEC + j] = 0.0f; dy[k * VEC + j] = 0.0f; }
            }
        }
        a = group_sum(a, G) / C; b = group_sum(b, G) / C;
        if (!dinp || n < 0) continue;
        float* dx_row = dinp + (size_t)n * C;
        #pragma unroll
        for (int k = 0; k < NV; k++) {
            int u = k * G + l;
            if (u >= U) continue;
            float w[VEC], dx[VEC];
            load_param_unit<VEC>(w, weight + u * VEC, params_aligned);
            load_unit<VEC>(dx, dx_row + (size_t)u * VEC);
            for (int j = 0; j < VEC; j++) {
                float norm = (x[k * VEC + j] - m) * rs;
                dx[j] += (dy[k * VEC + j] * w[j] - a - norm * b) * rs;
            }
            store_unit<VEC>(dx_row + (size_t)u * VEC, dx);
        }
    }
    if (!partial) return;
    // the groups' sums, added per column in group order 0, 1, ..., ng - 1
    for (int which = 0; which < 2; which++) {
        #pragma unroll
        for (int k = 0; k < NV; k++) {
            int u = k * G + l;
            if (u < U)
                for (int j = 0; j < VEC; j++)
                    ln_smem[group * C + u * VEC + j] = which ? sum_dy[k * VEC + j] : sum_dy_norm[k * VEC + j];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float t = 0.0f;
            for (int g = 0; g < ng; g++) t += ln_smem[g * C + c];
            partial[((size_t)blockIdx.x * 2 + which) * C + c] = t;
        }
        __syncthreads();
    }
}

// dweight[c] += sum over k of partial[k][0][c], dbias[c] += sum of partial[k][1][c] (k: the blocks
// of layernorm_rows_backward_kernel, or groupnorm's (b, chunk)). Grid (ceil(C / 32), 2: dweight,
// dbias), block (32, 32): thread y sums k = y, y + 32, ... in order, 8 loads in flight at a time
// (the partials were just written: L2 latency, not bandwidth, is the cost), then thread y = 0 adds
// the 32 sums in order (deterministic).
__global__ void norm_param_sum_kernel(float* dweight, float* dbias, const float* partial, int nrows, int C) {
    __shared__ float part[32][33];
    int c = blockIdx.x * 32 + threadIdx.x, which = blockIdx.y;
    float* dst = which ? dbias : dweight;
    if (!dst) return;   // the whole block
    float s = 0.0f;
    if (c < C) {
        for (int k0 = threadIdx.y; k0 < nrows; k0 += 32 * 8) {
            float v[8];
            #pragma unroll
            for (int q = 0; q < 8; q++) {
                int k = k0 + 32 * q;
                v[q] = k < nrows ? partial[((size_t)k * 2 + which) * C + c] : 0.0f;
            }
            #pragma unroll
            for (int q = 0; q < 8; q++) s += v[q];
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.0f;
        for (int k = 0; k < 32; k++) t += part[k][threadIdx.x];
        dst[c] += t;
    }
}

// dweight, dbias (either may be NULL) += the sums over the nrows rows (2, C) of partial
static void norm_param_sum(float* dweight, float* dbias, const float* partial, int nrows, int C) {
    dim3 grid((C + 31) / 32, 2), block(32, 32);
    norm_param_sum_kernel<<<grid, block>>>(dweight, dbias, partial, nrows, C);
    launchCheck();
}

// out = (inp - mean[r]) rstd[r] w + b over rows of any length: a group of G lanes per row, the
// statistics read once per row
template <int VEC>
__global__ void __launch_bounds__(LN_THREADS)
layernorm_apply_rows_kernel(float* out, const float* inp, const float* mean, const float* rstd,
                            const float* weight, const float* bias, int N, int C, int G, int params_aligned) {
    int ng = blockDim.x / G, l = threadIdx.x % G, U = C / VEC;
    for (long r = (long)blockIdx.x * ng + threadIdx.x / G; r < N; r += (long)gridDim.x * ng) {
        float m = mean[r], rs = rstd[r];
        const float* x_row = inp + (size_t)r * C;
        float* y = out + (size_t)r * C;
        for (int u = l; u < U; u += G) {
            float x[VEC], w[VEC], b[VEC], o[VEC];
            load_unit<VEC>(x, x_row + (size_t)u * VEC);
            load_param_unit<VEC>(w, weight + u * VEC, params_aligned);
            load_param_unit<VEC>(b, bias + u * VEC, params_aligned);
            for (int j = 0; j < VEC; j++) o[j] = (x[j] - m) * rs * w[j] + b[j];
            store_unit<VEC>(y + (size_t)u * VEC, o);
        }
    }
}

static int is_aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }   // NULL counts as aligned

static int gpu_sm_count(void) {
    static int n = 0;
    if (n == 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}

// blocks of LN_THREADS threads of `kernel` (with smem bytes of dynamic shared memory) resident on
// the whole GPU at once; remembered per (kernel, smem)
static int resident_blocks(const void* kernel, size_t smem) {
    static struct { const void* kernel; size_t smem; int blocks; } seen[32];
    static int nseen = 0;
    for (int i = 0; i < nseen; i++)
        if (seen[i].kernel == kernel && seen[i].smem == smem) return seen[i].blocks;
    int per_sm = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, LN_THREADS, smem));
    int blocks = (per_sm > 0 ? per_sm : 1) * gpu_sm_count();
    if (nseen < 32) { seen[nseen].kernel = kernel; seen[nseen].smem = smem; seen[nseen].blocks = blocks; nseen++; }
    return blocks;
}

// lanes per row G (4, 8, 16 or 32): the fewest that give each lane at most nv_target of the row's
// U = C / vec units; *nv: the units per lane that leaves (above nv_target only when G = 32)
static int ln_group_lanes(int C, int vec, int nv_target, int* nv) {
    int U = C / vec, G = 4;
    while (G < 32 && (U + G - 1) / G > nv_target) G *= 2;
    if (nv) *nv = (U + G - 1) / G;
    return G;
}

template <int VEC, int NV>
static void layernorm_rows_forward_launch(float* out, float* mean, float* rstd, const float* inp,
                                          const float* weight, const float* bias, int nrows, int C, int G,
                                          NormRows rows) {
    const void* kernel = (const void*)layernorm_rows_forward_kernel<VEC, NV>;
    long ng = LN_THREADS / G, want = (nrows + ng - 1) / ng;
    int blocks = (int)(want < resident_blocks(kernel, 0) ? want : resident_blocks(kernel, 0));
    int params_aligned = is_aligned16(weight) && is_aligned16(bias);
    layernorm_rows_forward_kernel<VEC, NV><<<blocks, LN_THREADS>>>(out, mean, rstd, inp, weight, bias, nrows, C,
                                                                   G, params_aligned, rows);
    launchCheck();
}

// the forward on registers when the row fits (C <= 1536 as float4, C <= 256 otherwise); returns 0
// when it does not (the caller takes the warp-per-row kernel)
static int layernorm_rows_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                  const float* bias, size_t nrows, int C, NormRows rows) {
    if (nrows > 0x7fffffff) return 0;
    int vec4 = C % 4 == 0 && is_aligned16(out) && is_aligned16(inp), nv;
    if (vec4) {
        int G = ln_group_lanes(C, 4, 4, &nv);
        if (nv <= 4) { layernorm_rows_forward_launch<4, 4>(out, mean, rstd, inp, weight, bias, (int)nrows, C, G, rows); return 1; }
        if (nv <= 6) { layernorm_rows_forward_launch<4, 6>(out, mean, rstd, inp, weight, bias, (int)nrows, C, G, rows); return 1; }
        if (nv <= 12) { layernorm_rows_forward_launch<4, 12>(out, mean, rstd, inp, weight, bias, (int)nrows, C, G, rows); return 1; }
        return 0;
    }
    int G = ln_group_lanes(C, 1, 8, &nv);
    if (nv > 8) return 0;
    layernorm_rows_forward_launch<1, 8>(out, mean, rstd, inp, weight, bias, (int)nrows, C, G, rows);
    return 1;
}

template <int VEC, int NV>
static void layernorm_rows_backward_launch(float* dinp, float* dweight, float* dbias, const float* dout,
                                           const float* inp, const float* weight, const float* mean,
                                           const float* rstd, int nrows, int C, int G, NormRows rows) {
    const void* kernel = (const void*)layernorm_rows_backward_kernel<VEC, NV>;
    int with_params = dweight || dbias;
    long ng = LN_THREADS / G;
    size_t smem = with_params ? (size_t)ng * C * sizeof(float) : 0;
    long want = (nrows + ng - 1) / ng, resident = resident_blocks(kernel, smem);
    long blocks = want < resident ? want : resident;
    long rows_per_block = (nrows + blocks - 1) / blocks;
    rows_per_block = (rows_per_block + ng - 1) / ng * ng;   // whole passes of the block's groups
    blocks = (nrows + rows_per_block - 1) / rows_per_block;
    float* partial = with_params ? (float*)workspace_get(&ws_ln, (size_t)blocks * 2 * C * sizeof(float)) : NULL;
    int params_aligned = is_aligned16(weight);
    layernorm_rows_backward_kernel<VEC, NV><<<(unsigned int)blocks, LN_THREADS, smem>>>(
        dinp, partial, dout, inp, weight, mean, rstd, nrows, C, G, params_aligned, (int)rows_per_block, rows);
    launchCheck();
    if (with_params) norm_param_sum(dweight, dbias, partial, (int)blocks, C);
}

// the backward on registers when the row fits (C <= 768 as float4, C <= 256 otherwise; 3 units a
// lane, Swin's C = 96, 192, 384, have their own kernel: fewer registers, more blocks); returns 0
// when it does not (the caller takes the warp-per-row kernel and norm_param_grad)
static int layernorm_rows_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                   const float* weight, const float* mean, const float* rstd, size_t nrows, int C,
                                   NormRows rows) {
    if (nrows > 0x7fffffff) return 0;
    int vec4 = C % 4 == 0 && is_aligned16(dinp) && is_aligned16(dout) && is_aligned16(inp), nv;
    if (vec4) {
        int G = ln_group_lanes(C, 4, 4, &nv);
        if (nv <= 3) { layernorm_rows_backward_launch<4, 3>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, (int)nrows, C, G, rows); return 1; }
        if (nv <= 4) { layernorm_rows_backward_launch<4, 4>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, (int)nrows, C, G, rows); return 1; }
        if (nv <= 6) { layernorm_rows_backward_launch<4, 6>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, (int)nrows, C, G, rows); return 1; }
        return 0;
    }
    int G = ln_group_lanes(C, 1, 8, &nv);
    if (nv > 8) return 0;
    layernorm_rows_backward_launch<1, 8>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, (int)nrows, C, G, rows);
    return 1;
}

extern "C" void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                       const float* weight, const float* bias, int N, int C) {
    OpTimer timer("layernorm_forward");
    if (N <= 0 || C <= 0) return;
    if (layernorm_rows_forward(out, mean, rstd, inp, weight, bias, (size_t)N, C, NormRows{0, 0, 0, 0})) return;
    layernorm_forward_kernel<<<(N + 7) / 8, 256>>>(out, mean, rstd, inp, weight, bias, N, C); launchCheck();
}

extern "C" void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                        const float* inp, const float* weight, const float* mean,
                                        const float* rstd, int N, int C) {
    OpTimer timer("layernorm_backward");
    if (N <= 0 || C <= 0 || (!dinp && !dweight && !dbias)) return;
    if (layernorm_rows_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, (size_t)N, C,
                                NormRows{0, 0, 0, 0}))
        return;
    if (dinp) { layernorm_backward_kernel<<<(N + 7) / 8, 256>>>(dinp, dout, inp, weight, mean, rstd, N, C); launchCheck(); }
    if (dweight || dbias) norm_param_grad(dweight, dbias, dout, inp, mean, rstd, N, C, 1, 1, C, NormRows{0, 0, 0, 0});
}

// ----------------------------------------------------------------------------
// groupnorm on (B, HW, C). The plain form (groupnorm_forward_cpu): per (b, g), mean and
// variance over the HW x C/G values of the group, then out = (x - mean) rstd w + b. Here the
// rows of each image are cut into chunks of GN_CHUNK_ROWS pixels: one block per (chunk, b)
// reads its rows coalesced (threads over channels) and writes per group the chunk's sum and
// sum of squared deviations from the chunk's mean; one warp per (b, g) merges the chunks
// (Chan et al.'s pairwise formula, in double). So even B = 1 fills the GPU (one block per
// (b, g) gave 32 blocks for a 1/4-resolution map at B = 1).

#define GN_CHUNK_ROWS 64
#define GN_THREADS 256
static Workspace ws_gn;   // per (b, g, chunk) partial statistics; the backward's per-group sums

static int gn_chunks(int HW) { return (HW + GN_CHUNK_ROWS - 1) / GN_CHUNK_ROWS; }

// per-channel sums of f(row, c) over the chunk's rows into ch[C] (shared), then per group into
// grp[G] (shared). Threads over channels: the reads of one row are consecutive floats.
__device__ __forceinline__ void gn_group_sums(float* grp, float* ch, const float* vals, int r0, int r1,
                                              int C, int G, int mode, const float* gmean) {
    int Cg = C / G;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        int g = c / Cg;
        for (int r = r0; r < r1; r++) {
            float x = vals[(size_t)r * C + c];
            if (mode == 0) acc += x;                                          // sum x
            else { float d = x - gmean[g]; acc += d * d; }                    // sum (x - chunk mean)^2
        }
        ch[c] = acc;
    }
    __syncthreads();
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        float t = 0.0f;
        for (int c = g * Cg; c < (g + 1) * Cg; c++) t += ch[c];
        grp[g] = t;
    }
    __syncthreads();
}

// partial[((b G + g) nchunks + chunk) * 2 + {0, 1}] = (sum, M2) of the chunk's values of group g
__global__ void groupnorm_partial_stats_kernel(float* partial, const float* inp, int HW, int C, int G) {
    extern __shared__ float gn_smem[];
    float* ch = gn_smem;           // (C)
    float* grp = ch + C;           // (G) sums
    float* gmean = grp + G;        // (G) chunk means
    int chunk = blockIdx.x, b = blockIdx.y, nchunks = gridDim.x;
    int r0 = chunk * GN_CHUNK_ROWS, r1 = min(HW, r0 + GN_CHUNK_ROWS);
    const float* x = inp + (size_t)b * HW * C;
    float cnt = (float)(r1 - r0) * (C / G);
    gn_group_sums(grp, ch, x, r0, r1, C, G, 0, NULL);
    for (int g = threadIdx.x; g < G; g += blockDim.x) gmean[g] = grp[g] / cnt;
    __syncthreads();
    for (int g = threadIdx.x; g < G; g += blockDim.x)
        partial[(((size_t)b * G + g) * nchunks + chunk) * 2] = grp[g];
    __syncthreads();
    gn_group_sums(grp, ch, x, r0, r1, C, G, 1, gmean);
    for (int g = threadIdx.x; g < G; g += blockDim.x)
        partial[(((size_t)b * G + g) * nchunks + chunk) * 2 + 1] = grp[g];
}

// one warp per (b, g): merge the chunks' (n, mean, M2) pairwise, in double
__global__ void groupnorm_merge_stats_kernel(float* mean, float* rstd, const float* partial, int B, int G,
                                             int HW, int Cg, int nchunks) {
    int bg = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (bg >= B * G) return;
    double n = 0.0, m = 0.0, M2 = 0.0;
    for (int k = lane; k < nchunks; k += 32) {
        int rows = min(HW, (k + 1) * GN_CHUNK_ROWS) - k * GN_CHUNK_ROWS;
        double nb = (double)rows * Cg;
        const float* p = partial + ((size_t)bg * nchunks + k) * 2;
        double mb = p[0] / nb, delta = mb - m, nn = n + nb;
        m += delta * nb / nn;
        M2 += p[1] + delta * delta * n * nb / nn;
        n = nn;
    }
    for (int o = 16; o > 0; o >>= 1) {
        double n2 = __shfl_xor_sync(0xffffffffu, n, o), m2 = __shfl_xor_sync(0xffffffffu, m, o);
        double M22 = __shfl_xor_sync(0xffffffffu, M2, o);
        double nn = n + n2;
        if (nn > 0.0) {
            double delta = m2 - m;
            M2 = M2 + M22 + delta * delta * n * n2 / nn;
            m = (n * m + n2 * m2) / nn;
        }
        n = nn;
    }
    if (lane == 0) {
        mean[bg] = (float)m;
        rstd[bg] = rsqrtf((float)(M2 / n) + LN_EPS);
    }
}

// out = (x - mean) rstd w + b, block (chunk, b) over its rows, threads over channels
__global__ void groupnorm_apply_kernel(float* out, const float* inp, const float* mean, const float* rstd,
                                       const float* weight, const float* bias, int HW, int C, int G) {
    int chunk = blockIdx.x, b = blockIdx.y, Cg = C / G;
    int r0 = chunk * GN_CHUNK_ROWS, r1 = min(HW, r0 + GN_CHUNK_ROWS);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        int si = b * G + c / Cg;
        float sc = rstd[si] * weight[c], sh = bias[c] - mean[si] * sc;
        for (int r = r0; r < r1; r++) {
            size_t i = ((size_t)b * HW + r) * C + c;
            out[i] = inp[i] * sc + sh;
        }
    }
}

// backward partials, one block per (chunk, b), threads over channels (coalesced rows): per channel c
// the sums over the chunk's rows of dout * norm and of dout, into partial[((b nchunks + chunk) 2 +
// {0, 1}) C + c]. They give both the parameter gradients (their sums over (b, chunk):
// norm_param_sum) and the group sums the input gradient needs (groupnorm_merge_grad_kernel): the
// input and dout are read once for both.
__global__ void groupnorm_partial_grad_kernel(float* partial, const float* dout, const float* inp,
                                              const float* mean, const float* rstd, int HW, int C, int G) {
    int chunk = blockIdx.x, b = blockIdx.y, nchunks = gridDim.x, Cg = C / G;
    int r0 = chunk * GN_CHUNK_ROWS, r1 = min(HW, r0 + GN_CHUNK_ROWS);
    const float* x = inp + (size_t)b * HW * C;
    const float* dy = dout + (size_t)b * HW * C;
    float* p = partial + ((size_t)b * nchunks + chunk) * 2 * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        int si = b * G + c / Cg;
        float m = mean[si], r = rstd[si], s_dy_norm = 0.0f, s_dy = 0.0f;
        for (int row = r0; row < r1; row++) {
            float d = dy[(size_t)row * C + c];
            s_dy_norm += d * ((x[(size_t)row * C + c] - m) * r);
            s_dy += d;
        }
        p[c] = s_dy_norm;
        p[C + c] = s_dy;
    }
}

// one warp per (b, g): a = mean(dn), bb = mean(dn norm) over the group, dn = dout w, into
// ab[bg * 2 + {0, 1}], from the per-channel partials: sum dn = sum_c w[c] sum_rows dout and
// sum dn norm = sum_c w[c] sum_rows dout norm (in double, lanes over (chunk, channel))
__global__ void groupnorm_merge_grad_kernel(float* ab, const float* partial, const float* weight, int B, int G,
                                            int HW, int C, int nchunks) {
    int bg = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (bg >= B * G) return;
    int b = bg / G, g = bg % G, Cg = C / G;
    double a = 0.0, bb = 0.0;
    for (int k = lane; k < nchunks * Cg; k += 32) {
        int chunk = k / Cg, c = g * Cg + k % Cg;
        const float* p = partial + ((size_t)b * nchunks + chunk) * 2 * C;
        double w = weight[c];
        a += w * p[C + c];
        bb += w * p[c];
    }
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        bb += __shfl_xor_sync(0xffffffffu, bb, o);
    }
    double cnt = (double)HW * Cg;
    if (lane == 0) { ab[bg * 2] = (float)(a / cnt); ab[bg * 2 + 1] = (float)(bb / cnt); }
}

// dx += (dn - a - norm bb) rstd, block (chunk, b), threads over channels
__global__ void groupnorm_backward_apply_kernel(float* dinp, const float* dout, const float* inp,
                                                const float* weight, const float* mean, const float* rstd,
                                                const float* ab, int HW, int C, int G) {
    int chunk = blockIdx.x, b = blockIdx.y, Cg = C / G;
    int r0 = chunk * GN_CHUNK_ROWS, r1 = min(HW, r0 + GN_CHUNK_ROWS);
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        int si = b * G + c / Cg;
        float m = mean[si], r = rstd[si], a = ab[si * 2], bb = ab[si * 2 + 1], w = weight[c];
        for (int row = r0; row < r1; row++) {
            size_t i = ((size_t)b * HW + row) * C + c;
            float norm = (inp[i] - m) * r;
            dinp[i] += (dout[i] * w - a - norm * bb) * r;
        }
    }
}

static size_t gn_smem_bytes(int C, int G) { return (size_t)(C + 2 * G) * sizeof(float); }

extern "C" void groupnorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                       const float* weight, const float* bias, int B, int HW, int C, int G) {
    OpTimer timer("groupnorm_forward");
    if (B <= 0 || HW <= 0) return;
    int nchunks = gn_chunks(HW);
    float* partial = (float*)workspace_get(&ws_gn, (size_t)B * G * nchunks * 2 * sizeof(float));
    dim3 grid(nchunks, B);
    groupnorm_partial_stats_kernel<<<grid, GN_THREADS, gn_smem_bytes(C, G)>>>(partial, inp, HW, C, G);
    launchCheck();
    groupnorm_merge_stats_kernel<<<(B * G + 7) / 8, 256>>>(mean, rstd, partial, B, G, HW, C / G, nchunks);
    launchCheck();
    groupnorm_apply_kernel<<<grid, GN_THREADS>>>(out, inp, mean, rstd, weight, bias, HW, C, G);
    launchCheck();
}

extern "C" void groupnorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                        const float* inp, const float* weight, const float* mean,
                                        const float* rstd, int B, int HW, int C, int G) {
    OpTimer timer("groupnorm_backward");
    if (B <= 0 || HW <= 0 || C <= 0 || (!dinp && !dweight && !dbias)) return;
    int nchunks = gn_chunks(HW);
    if ((size_t)B * nchunks > 0x7fffffff) ttt_die("groupnorm_backward: %d images of %d pixels", B, HW);
    size_t npart = (size_t)B * nchunks * 2 * C;
    float* partial = (float*)workspace_get(&ws_gn, (npart + (size_t)B * G * 2) * sizeof(float));
    float* ab = partial + npart;
    dim3 grid(nchunks, B);
    groupnorm_partial_grad_kernel<<<grid, GN_THREADS>>>(partial, dout, inp, mean, rstd, HW, C, G);
    launchCheck();
    if (dinp) {
        groupnorm_merge_grad_kernel<<<(B * G + 7) / 8, 256>>>(ab, partial, weight, B, G, HW, C, nchunks);
        launchCheck();
        groupnorm_backward_apply_kernel<<<grid, GN_THREADS>>>(dinp, dout, inp, weight, mean, rstd, ab, HW, C, G);
        launchCheck();
    }
    if (dweight || dbias) norm_param_sum(dweight, dbias, partial, B * nchunks, C);
}

// ----------------------------------------------------------------------------
// activations

// gelu: vec (every pointer 16-byte aligned): N / 4 float4 units, then the last N % 4 one by one
// (gelu_value and gelu_slope: above, with the bias kernels)
__global__ void gelu_forward_kernel(float* out, const float* inp, size_t N, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = vec ? N / 4 : 0;
    for (size_t i = tid; i < n4; i += stride) {
        float4 x = ((const float4*)inp)[i];
        ((float4*)out)[i] = make_float4(gelu_value(x.x), gelu_value(x.y), gelu_value(x.z), gelu_value(x.w));
    }
    for (size_t i = 4 * n4 + tid; i < N; i += stride) out[i] = gelu_value(inp[i]);
}
__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t N, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = vec ? N / 4 : 0;
    for (size_t i = tid; i < n4; i += stride) {
        float4 x = ((const float4*)inp)[i], d = ((const float4*)dout)[i], g = ((float4*)dinp)[i];
        g.x += d.x * gelu_slope(x.x); g.y += d.y * gelu_slope(x.y);
        g.z += d.z * gelu_slope(x.z); g.w += d.w * gelu_slope(x.w);
        ((float4*)dinp)[i] = g;
    }
    for (size_t i = 4 * n4 + tid; i < N; i += stride) dinp[i] += dout[i] * gelu_slope(inp[i]);
}
__global__ void relu_forward_kernel(float* out, const float* inp, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}
__global__ void relu_backward_kernel(float* dinp, const float* out, const float* dout, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        if (out[i] > 0.0f) dinp[i] += dout[i];
}
__global__ void sigmoid_forward_kernel(float* out, const float* inp, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        out[i] = 1.0f / (1.0f + expf(-inp[i]));
}
__global__ void sigmoid_backward_kernel(float* dinp, const float* out, const float* dout, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        dinp[i] += dout[i] * out[i] * (1.0f - out[i]);
}

extern "C" void gelu_forward_cuda(float* out, const float* inp, size_t N) {
    OpTimer timer("gelu_forward");
    if (N == 0) return;
    int vec = ((uintptr_t)out & 15) == 0 && ((uintptr_t)inp & 15) == 0;
    gelu_forward_kernel<<<grid_for(vec ? (N + 3) / 4 : N, 256), 256>>>(out, inp, N, vec); launchCheck();
}
extern "C" void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, size_t N) {
    OpTimer timer("gelu_backward");
    if (N == 0) return;
    int vec = ((uintptr_t)dinp & 15) == 0 && ((uintptr_t)inp & 15) == 0 && ((uintptr_t)dout & 15) == 0;
    gelu_backward_kernel<<<grid_for(vec ? (N + 3) / 4 : N, 256), 256>>>(dinp, inp, dout, N, vec); launchCheck();
}
extern "C" void relu_forward_cuda(float* out, const float* inp, size_t N) {
    OpTimer timer("relu_forward");
    if (N == 0) return;
    relu_forward_kernel<<<grid_for(N, 256), 256>>>(out, inp, N); launchCheck();
}
extern "C" void relu_backward_cuda(float* dinp, const float* out, const float* dout, size_t N) {
    OpTimer timer("relu_backward");
    if (N == 0) return;
    relu_backward_kernel<<<grid_for(N, 256), 256>>>(dinp, out, dout, N); launchCheck();
}
extern "C" void sigmoid_forward_cuda(float* out, const float* inp, size_t N) {
    OpTimer timer("sigmoid_forward");
    if (N == 0) return;
    sigmoid_forward_kernel<<<grid_for(N, 256), 256>>>(out, inp, N); launchCheck();
}
extern "C" void sigmoid_backward_cuda(float* dinp, const float* out, const float* dout, size_t N) {
    OpTimer timer("sigmoid_backward");
    if (N == 0) return;
    sigmoid_backward_kernel<<<grid_for(N, 256), 256>>>(dinp, out, dout, N); launchCheck();
}

// ----------------------------------------------------------------------------
// softmax over the last dim: one warp per row. The same kernel finishes attention
// scores in place: row r of (B, NH, Tq, Tk) gets + rel_bias[h, i] + mask[b % n_mask, i]
// before the softmax. A row whose scores are all -inf becomes all zeros (as the CPU).

__global__ void softmax_rows_kernel(float* out, const float* inp, int N, int C,
                                    const float* rel_bias, const float* mask, int n_mask, int NH, int Tq) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;
    const float* rb = NULL;
    const float* mk = NULL;
    if (rel_bias || mask) {
        int i = row % Tq, h = (row / Tq) % NH, b = row / (Tq * NH);
        if (rel_bias) rb = rel_bias + ((size_t)h * Tq + i) * C;
        if (mask) mk = mask + ((size_t)(b % n_mask) * Tq + i) * C;
    }
    float mx = -INFINITY;
    for (int c = lane; c < C; c += 32) {
        float s = x[c];
        if (rb) s += rb[c];
        if (mk) s += mk[c];
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    if (mx == -INFINITY) { for (int c = lane; c < C; c += 32) y[c] = 0.0f; return; }
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float s = x[c];
        if (rb) s += rb[c];
        if (mk) s += mk[c];
        float e = expf(s - mx);
        y[c] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int c = lane; c < C; c += 32) y[c] *= inv;
}

// dx = y * (dy - sum(dy * y)); accumulate (+=) into dinp, or overwrite when `write`
__global__ void softmax_backward_kernel(float* dinp, const float* out, const float* dout, int N, int C, int write) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float* y = out + (size_t)row * C;
    const float* dy = dout + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += dy[c] * y[c];
    s = warp_sum(s);
    float* dx = dinp + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        float g = y[c] * (dy[c] - s);
        if (write) dx[c] = g; else dx[c] += g;
    }
}

extern "C" void softmax_forward_cuda(float* out, const float* inp, int N, int C) {
    OpTimer timer("softmax_forward");
    if (N <= 0) return;
    softmax_rows_kernel<<<(N + 7) / 8, 256>>>(out, inp, N, C, NULL, NULL, 1, 1, 1); launchCheck();
}

extern "C" void softmax_backward_cuda(float* dinp, const float* out, const float* dout, int N, int C) {
    OpTimer timer("softmax_backward");
    if (N <= 0) return;
    softmax_backward_kernel<<<(N + 7) / 8, 256>>>(dinp, out, dout, N, C, 0); launchCheck();
}

// ----------------------------------------------------------------------------
// attention: per head h, batched over b with cuBLAS
//   att[b,h] (Tq, Tk) = scale * Q[b,h] (Tq, HS) @ K[b,h]^T; softmax rows with bias and mask;
//   out[b,:,h] (Tq, HS) = att[b,h] @ V[b,h]
// Q[b,h] starts at q + b*Tq*q_stride + h*HS with rows q_stride apart (likewise K, V).

// Fused attention for small windows (Swin: T = 49): one block per (b, h) keeps q, k, v
// and the T x T scores in shared memory, so the scores go to device memory once (att,
// saved for backward) instead of GEMM write + softmax read/write + GEMM read. Float32 FMA.
// Shared memory: q (T, HS), k (T, HS + 1) (padded: row reads hit distinct banks), v (T, HS),
// scores (T, T).
#define WINDOW_ATT_MAX_T 64
// 0: always the cuBLAS path. Set by ttt_cuda_set_fused_attention, else by the environment
// (TTT_FUSED_ATTENTION=0 turns it off), else on.
static int window_attention_ok = -1;
extern "C" void ttt_cuda_set_fused_attention(int on) { window_attention_ok = on != 0; }
// the fused attention kernels (window and flash) unless TTT_FUSED_ATTENTION=0 or the setter said off
static int fused_attention_on(void) {
    if (window_attention_ok < 0) {
        const char* e = getenv("TTT_FUSED_ATTENTION");
        window_attention_ok = !(e && e[0] == '0');
    }
    return window_attention_ok;
}
#define WINDOW_ATT_MAX_HS 64
static size_t window_attention_smem(int T, int HS) {
    return ((size_t)T * HS * 2 + (size_t)T * (HS + 1) + (size_t)T * T) * sizeof(float);
}

__global__ void window_attention_forward_kernel(float* out, float* att, const float* q, const float* k,
                                                const float* v, const float* rel_bias, const float* mask,
                                                int n_mask, int NH, int T, int HS, int q_stride, int kv_stride,
                                                float scale) {
    extern __shared__ float smem[];
    float* sq = smem;                       // (T, HS)
    float* sk = sq + T * HS;                // (T, HS + 1)
    float* sv = sk + T * (HS + 1);          // (T, HS)
    float* ss = sv + T * HS;                // (T, T)
    int b = blockIdx.x / NH, h = blockIdx.x % NH;
    int C = NH * HS;
    for (int e = threadIdx.x; e < T * HS; e += blockDim.x) {
        int t = e / HS, d = e % HS;
        sq[e] = q[((size_t)b * T + t) * q_stride + h * HS + d];
        sk[t * (HS + 1) + d] = k[((size_t)b * T + t) * kv_stride + h * HS + d];
        sv[e] = v[((size_t)b * T + t) * kv_stride + h * HS + d];
    }
    __syncthreads();
    const float* rb = rel_bias ? rel_bias + (size_t)h * T * T : NULL;
    const float* mk = mask ? mask + (size_t)(b % n_mask) * T * T : NULL;
    for (int e = threadIdx.x; e < T * T; e += blockDim.x) {
        int i = e / T, j = e % T;
        float dot = 0.0f;
        for (int d = 0; d < HS; d++) dot += sq[i * HS + d] * sk[j * (HS + 1) + d];
        float sc = dot * scale;
        if (rb) sc += rb[e];
        if (mk) sc += mk[e];
        ss[e] = sc;
    }
    __syncthreads();
    // softmax, one warp per row; an all -inf row becomes zeros (as the CPU)
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float* att_bh = att + ((size_t)b * NH + h) * T * T;
    for (int i = warp; i < T; i += nwarps) {
        float* row = ss + i * T;
        float mx = -INFINITY;
        for (int j = lane; j < T; j += 32) mx = fmaxf(mx, row[j]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < T; j += 32) {
            float e = mx == -INFINITY ? 0.0f : expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int j = lane; j < T; j += 32) {
            row[j] *= inv;
            att_bh[i * T + j] = row[j];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < T * HS; e += blockDim.x) {
        int i = e / HS, d = e % HS;
        float acc = 0.0f;
        for (int j = 0; j < T; j++) acc += ss[i * T + j] * sv[j * HS + d];
        out[((size_t)b * T + i) * C + h * HS + d] = acc;
    }
}

extern "C" void attention_forward_cuda(float* out, float* att, const float* q, const float* k, const float* v,
                                       const float* rel_bias, const float* mask, int n_mask,
                                       int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    OpTimer timer("attention_forward");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    if (Tq == Tk && Tq <= WINDOW_ATT_MAX_T && HS <= WINDOW_ATT_MAX_HS && fused_attention_on() &&
        window_attention_smem(Tq, HS) <= 48 * 1024) {
        size_t smem = window_attention_smem(Tq, HS);
        window_attention_forward_kernel<<<B * NH, 128, smem>>>(out, att, q, k, v, rel_bias, mask,
                                                               n_mask > 0 ? n_mask : 1, NH, Tq, HS,
                                                               q_stride, kv_stride, scale);
        launchCheck();
        return;
    }
    long long sQ = (long long)Tq * q_stride, sK = (long long)Tk * kv_stride;
    long long sA = (long long)NH * Tq * Tk, sO = (long long)Tq * C;
    for (int h = 0; h < NH; h++) {
        gemm_rm(false, true, Tq, Tk, HS, scale, q + h * HS, q_stride, sQ, k + h * HS, kv_stride, sK,
                0.0f, att + (size_t)h * Tq * Tk, Tk, sA, B);
    }
    int rows = B * NH * Tq;
    softmax_rows_kernel<<<(rows + 7) / 8, 256>>>(att, att, rows, Tk, rel_bias, mask, n_mask > 0 ? n_mask : 1, NH, Tq);
    launchCheck();
    for (int h = 0; h < NH; h++) {
        gemm_rm(false, false, Tq, HS, Tk, 1.0f, att + (size_t)h * Tq * Tk, Tk, sA, v + h * HS, kv_stride, sK,
                0.0f, out + h * HS, C, sO, B);
    }
}

// drel_bias[h, i, j] += sum_b ds[b, i, j] for one head; ds (B, Tq*Tk). Grid y splits b.
__global__ void sum_over_batch_kernel(float* dst, const float* ds, int B, int TT, int b_per_block) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= TT) return;
    int b0 = blockIdx.y * b_per_block, b1 = min(B, b0 + b_per_block);
    float s = 0.0f;
    for (int b = b0; b < b1; b++) s += ds[(size_t)b * TT + e];
    if (gridDim.y == 1) dst[e] += s; else atomicAdd(&dst[e], s);
}

// ds[b, i, :] = att * (datt - sum(att * datt)) in place over datt, for head h:
// ds row (b, i) is row b * Tq + i; its att row is ((b * NH + h) * Tq + i)
__global__ void attention_dscore_kernel(float* ds, const float* att, int B, int Tq, int Tk, int NH, int h) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= B * Tq) return;
    int b = row / Tq, i = row % Tq;
    const float* a = att + (((size_t)b * NH + h) * Tq + i) * Tk;
    float* d = ds + (size_t)row * Tk;
    float s = 0.0f;
    for (int j = lane; j < Tk; j += 32) s += a[j] * d[j];
    s = warp_sum(s);
    for (int j = lane; j < Tk; j += 32) d[j] = a[j] * (d[j] - s);
}

extern "C" void attention_backward_cuda(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                                        const float* att, const float* q, const float* k, const float* v,
                                        int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride) {
    OpTimer timer("attention_backward");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    int C = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    long long sQ = (long long)Tq * q_stride, sK = (long long)Tk * kv_stride;
    long long sA = (long long)NH * Tq * Tk, sO = (long long)Tq * C, sD = (long long)Tq * Tk;
    int need_ds = dq || dk || drel_bias;
    // one head's score gradient (B, Tq, Tk) at a time
    float* ds = need_ds ? (float*)workspace_get(&ws_gemm, (size_t)B * Tq * Tk * sizeof(float)) : NULL;
    for (int h = 0; h < NH; h++) {
        const float* att_h = att + (size_t)h * Tq * Tk;
        // dv[b,h] (Tk, HS) += att^T (Tk, Tq) @ dout[b,:,h] (Tq, HS)
        if (dv) gemm_rm(true, false, Tk, HS, Tq, 1.0f, att_h, Tk, sA, dout + h * HS, C, sO,
                        1.0f, dv + h * HS, kv_stride, sK, B);
        if (!need_ds) continue;
        // datt (Tq, Tk) = dout[b,:,h] (Tq, HS) @ V[b,h]^T, then ds = att * (datt - sum(att datt))
        gemm_rm(false, true, Tq, Tk, HS, 1.0f, dout + h * HS, C, sO, v + h * HS, kv_stride, sK,
                0.0f, ds, Tk, sD, B);
        attention_dscore_kernel<<<(B * Tq + 7) / 8, 256>>>(ds, att, B, Tq, Tk, NH, h);
        launchCheck();
        if (drel_bias) {
            int TT = Tq * Tk, threads = 256;
            int b_per_block = 64, chunks = (B + b_per_block - 1) / b_per_block;
            if (chunks > 65535) { b_per_block = (B + 65534) / 65535; chunks = (B + b_per_block - 1) / b_per_block; }
            dim3 grid((TT + threads - 1) / threads, chunks);
            sum_over_batch_kernel<<<grid, threads>>>(drel_bias + (size_t)h * TT, ds, B, TT, b_per_block);
            launchCheck();
        }
        // dq[b,h] (Tq, HS) += scale * ds (Tq, Tk) @ K[b,h] (Tk, HS)
        if (dq) gemm_rm(false, false, Tq, HS, Tk, scale, ds, Tk, sD, k + h * HS, kv_stride, sK,
                        1.0f, dq + h * HS, q_stride, sQ, B);
        // dk[b,h] (Tk, HS) += scale * ds^T (Tk, Tq) @ Q[b,h] (Tq, HS)
        if (dk) gemm_rm(true, false, Tk, HS, Tq, scale, ds, Tk, sD, q + h * HS, q_stride, sQ,
                        1.0f, dk + h * HS, kv_stride, sK, B);
    }
}

// ----------------------------------------------------------------------------
// window attention without a stored attention map (math in ttt.h), flash-attention style,
// for Swin's windows (T = 49 tokens, head size 32). One block of 256 threads per (window, head):
// the head's q, k, v (and dout) rows of the window go to shared memory once, the T x T scores
// stay on chip, and only out and one log-sum-exp per score row (forward) or dq, dk, dv
// (backward, accumulated in place) go back to device memory.
// Thread (tr, tc) = (tid / 16, tid % 16) owns a 4 x 4 register tile of every T x T product:
// rows 4 tr .. 4 tr + 3 and columns tc, tc + 16, tc + 32, tc + 48 (so T <= 64), and a 4 x DC
// tile of every T x HS product: rows 4 tr .. 4 tr + 3 and columns tc + 16 c, c < DC = HS / 16
// rounded up (a template parameter, HS <= 64). Row and column indices past the end are clamped
// to the last one for loads (the duplicate results are never stored), so every loop runs over
// exactly T or HS. Shared arrays have odd row strides: within a warp the two row groups and the
// 16 column threads then hit distinct banks in every product (checked per product below).
// drel_bias (NH, T, T) sums dS over all windows: with it, a block runs several windows of one
// head in turn, keeps its part of that sum in registers, and writes it to a workspace row of
// its chunk; a second kernel sums the chunks (no atomics, the same result on every run).
// Larger T or HS, or TTT_FUSED_ATTENTION=0: the old path (attention_forward/backward_cuda with
// the attention map in a workspace, recomputed for the backward).

#define WATT_THREADS 256
#define WATT_MAX_T 64
#define WATT_MAX_HS 64
#ifndef WATT_TARGET_BLOCKS
#define WATT_TARGET_BLOCKS 2048   // with drel_bias: windows per block so that the grid is about this
#endif
#ifndef WATT_MIN_BLOCKS
#define WATT_MIN_BLOCKS 4         // blocks per SM the registers must allow: 4 (64 registers) ran the
                                  // forward 15% faster than 3 on an H200 (85 -> 72 ms per bench run)
#endif

static Workspace ws_watt;   // drel_bias partial sums per chunk of windows; the old path's att and out

// row stride of a (rows, n) array in shared memory: n rounded up to odd
static int watt_ld(int n) { return n | 1; }
static size_t watt_fwd_smem(int T, int HS) {   // q, k, v (T, ld), P (T, lds)
    return ((size_t)3 * T * watt_ld(HS) + (size_t)T * watt_ld(T)) * sizeof(float);
}
static size_t watt_bwd_smem(int T, int HS) {   // q, k, v, dout (T, ld), P, dS, drel (T, lds), lse, D (T)
    return ((size_t)4 * T * watt_ld(HS) + (size_t)3 * T * watt_ld(T) + (size_t)2 * T) * sizeof(float);
}

// load the (T, HS) slice of head h of window w (rows `stride` floats apart) into s (T, ld):
// consecutive threads read consecutive floats of a row (coalesced) and write consecutive banks
__device__ __forceinline__ void watt_load(float* s, int ld, const float* x, int stride, int w, int h,
                                          int T, int HS) {
    const float* base = x + (size_t)w * T * stride + (size_t)h * HS;
    for (int e = threadIdx.x; e < T * HS; e += WATT_THREADS) {
        int t = e / HS, d = e % HS;
        s[t * ld + d] = base[(size_t)t * stride + d];
    }
}

// acc[r][c] = sum_{d < K} A[rows[r], d] * B[cols[c], d]  (A, B row-major, stride ld, in shared).
// Banks: A: two rows per warp, 4 ld apart (ld odd: distinct banks); B: 16 rows tc (+16 c),
// ld apart (ld odd: 16 distinct banks), the same for both row groups (broadcast).
__device__ __forceinline__ void watt_nt(float acc[4][4], const float* A, const float* Bm, int ld,
                                        const int rows[4], const int cols[4], int K) {
    #pragma unroll
    for (int r = 0; r < 4; r++)
        #pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;
    for (int d = 0; d < K; d++) {
        float a[4], b[4];
        #pragma unroll
        for (int r = 0; r < 4; r++) a[r] = A[rows[r] * ld + d];
        #pragma unroll
        for (int c = 0; c < 4; c++) b[c] = Bm[cols[c] * ld + d];
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < 4; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
}

// acc[r][c] = sum_{k < K} X(rows[r], k) * Y[k, cols[c]], all in shared memory; X(row, k) is
// X[row * xr + k * xk]: (xr, xk) = (ldx, 1) reads X as stored (watt_nn), (1, ldx) its transpose
// (watt_tn). Banks: X two addresses per warp (4 xr apart; ldx odd); Y 16 consecutive columns.
template <int DC>
__device__ __forceinline__ void watt_mm(float acc[4][DC], const float* X, int xr, int xk, const float* Y, int ldy,
                                        const int rows[4], const int cols[DC], int K) {
    #pragma unroll
    for (int r = 0; r < 4; r++)
        #pragma unroll
        for (int c = 0; c < DC; c++) acc[r][c] = 0.0f;
    for (int k = 0; k < K; k++) {
        float x[4], y[DC];
        #pragma unroll
        for (int r = 0; r < 4; r++) x[r] = X[rows[r] * xr + k * xk];
        #pragma unroll
        for (int c = 0; c < DC; c++) y[c] = Y[k * ldy + cols[c]];
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < DC; c++) acc[r][c] = fmaf(x[r], y[c], acc[r][c]);
    }
}
template <int DC>
__device__ __forceinline__ void watt_nn(float acc[4][DC], const float* X, int ldx, const float* Y, int ldy,
                                        const int rows[4], const int cols[DC], int K) {
    watt_mm<DC>(acc, X, ldx, 1, Y, ldy, rows, cols, K);
}
template <int DC>
__device__ __forceinline__ void watt_tn(float acc[4][DC], const float* X, int ldx, const float* Y, int ldy,
                                        const int rows[4], const int cols[DC], int K) {
    watt_mm<DC>(acc, X, 1, ldx, Y, ldy, rows, cols, K);
}

// g[(row) * stride + col] += alpha * acc for the valid part of a 4 x DC tile (g: one head's
// columns of window w, rows `stride` floats apart)
template <int DC>
__device__ __forceinline__ void watt_accumulate(float* g, int stride, const float acc[4][DC], float alpha,
                                                int r0, int tc, int T, int HS) {
    #pragma unroll
    for (int r = 0; r < 4; r++) {
        if (r0 + r >= T) continue;
        #pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = tc + 16 * c;
            if (d < HS) g[(size_t)(r0 + r) * stride + d] += alpha * acc[r][c];
        }
    }
}

// forward, grid B * NH blocks (block = w * NH + h)
template <int DC>
__global__ void __launch_bounds__(WATT_THREADS, WATT_MIN_BLOCKS)
window_attention_fwd_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                            const float* rel_bias, const float* mask, int n_mask, int NH, int T, int HS,
                            int q_stride, int kv_stride, float scale) {
    extern __shared__ float smem[];
    const int ld = HS | 1, lds = T | 1;
    float* sq = smem;              // (T, ld)
    float* sk = sq + T * ld;       // (T, ld)
    float* sv = sk + T * ld;       // (T, ld)
    float* sp = sv + T * ld;       // (T, lds) probabilities
    const int w = blockIdx.x / NH, h = blockIdx.x % NH, C = NH * HS;
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16, r0 = 4 * tr;
    watt_load(sq, ld, q, q_stride, w, h, T, HS);
    watt_load(sk, ld, k, kv_stride, w, h, T, HS);
    watt_load(sv, ld, v, kv_stride, w, h, T, HS);
    __syncthreads();
    int rows[4], cols[4], dcols[DC];
    #pragma unroll
    for (int r = 0; r < 4; r++) rows[r] = min(r0 + r, T - 1);
    #pragma unroll
    for (int c = 0; c < 4; c++) cols[c] = min(tc + 16 * c, T - 1);
    #pragma unroll
    for (int c = 0; c < DC; c++) dcols[c] = min(tc + 16 * c, HS - 1);
    const bool active = r0 < T;   // whole half-warps are idle past the last row group
    const float* rb = rel_bias ? rel_bias + (size_t)h * T * T : NULL;
    const float* mk = mask ? mask + (size_t)(w % n_mask) * T * T : NULL;
    float s[4][4];
    if (active) {
        watt_nt(s, sq, sk, ld, rows, cols, HS);
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = tc + 16 * c;
                if (j < T) {
                    int e = rows[r] * T + j;
                    s[r][c] = s[r][c] * scale + (rb ? rb[e] : 0.0f) + (mk ? mk[e] : 0.0f);
                } else {
                    s[r][c] = -INFINITY;   // not a key: no weight
                }
            }
    } else {
        #pragma unroll
        for (int r = 0; r < 4; r++)
            #pragma unroll
            for (int c = 0; c < 4; c++) s[r][c] = -INFINITY;
    }
    // softmax of each row over its 16 column threads (one half-warp: xor offsets below 16);
    // every lane takes part in the shuffles. An all -inf row gives zeros and lse = -inf.
    #pragma unroll
    for (int r = 0; r < 4; r++) {
        float mx = fmaxf(fmaxf(s[r][0], s[r][1]), fmaxf(s[r][2], s[r][3]));
        for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.0f;
        #pragma unroll
        for (int c = 0; c < 4; c++) {
            s[r][c] = mx == -INFINITY ? 0.0f : expf(s[r][c] - mx);
            sum += s[r][c];
        }
        for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        int i = r0 + r;
        if (active && i < T) {
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = tc + 16 * c;
                if (j < T) sp[i * lds + j] = s[r][c] * inv;
            }
            if (lse && tc == 0) lse[(size_t)blockIdx.x * T + i] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
        }
    }
    __syncthreads();
    if (active) {
        // out (T, HS) = P (T, T) @ v (T, HS)
        float o[4][DC];
        watt_nn<DC>(o, sp, lds, sv, ld, rows, dcols, T);
        float* ob = out + (size_t)w * T * C + (size_t)h * HS;
        #pragma unroll
        for (int r = 0; r < 4; r++) {
            if (r0 + r >= T) continue;
            #pragma unroll
            for (int c = 0; c < DC; c++) {
                int d = tc + 16 * c;
                if (d < HS) ob[(size_t)(r0 + r) * C + d] = o[r][c];
            }
        }
    }
}

// backward, grid (chunks, NH): block (chunk, h) runs windows chunk * wpb .. + wpb - 1 (< B) of
// head h in turn. drel_partial (chunks, NH, T, T) or NULL.
template <int DC>
__global__ void __launch_bounds__(WATT_THREADS, WATT_MIN_BLOCKS)
window_attention_bwd_kernel(float* dq, float* dk, float* dv, float* drel_partial, const float* dout,
                            const float* out, const float* lse, const float* q, const float* k,
                            const float* v, const float* rel_bias, const float* mask, int n_mask,
                            int B, int NH, int T, int HS, int q_stride, int kv_stride, float scale, int wpb) {
    extern __shared__ float smem[];
    const int ld = HS | 1, lds = T | 1;
    float* sq = smem;               // (T, ld)
    float* sk = sq + T * ld;        // (T, ld)
    float* sv = sk + T * ld;        // (T, ld)
    float* sdo = sv + T * ld;       // (T, ld) dout
    float* sp = sdo + T * ld;       // (T, lds) P
    float* sds = sp + T * lds;      // (T, lds) dS
    float* sdrel = sds + T * lds;   // (T, lds) this block's sum of dS over its windows
    float* slse = sdrel + T * lds;  // (T)
    float* sD = slse + T;           // (T) D_i = dout_i . out_i
    const int h = blockIdx.y, C = NH * HS;
    const int tr = threadIdx.x / 16, tc = threadIdx.x % 16, r0 = 4 * tr;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int rows[4], cols[4], dcols[DC];
    #pragma unroll
    for (int r = 0; r < 4; r++) rows[r] = min(r0 + r, T - 1);
    #pragma unroll
    for (int c = 0; c < 4; c++) cols[c] = min(tc + 16 * c, T - 1);
    #pragma unroll
    for (int c = 0; c < DC; c++) dcols[c] = min(tc + 16 * c, HS - 1);
    const bool active = r0 < T;
    const float* rb = rel_bias ? rel_bias + (size_t)h * T * T : NULL;
    // sdrel: every thread zeroes, adds to and writes out only the entries of its own tile
    #pragma unroll
    for (int r = 0; r < 4; r++)
        #pragma unroll
        for (int c = 0; c < 4; c++)
            if (r0 + r < T && tc + 16 * c < T) sdrel[(r0 + r) * lds + tc + 16 * c] = 0.0f;
    const int w0 = blockIdx.x * wpb, w1 = min(B, w0 + wpb);
    for (int w = w0; w < w1; w++) {
        watt_load(sq, ld, q, q_stride, w, h, T, HS);
        watt_load(sk, ld, k, kv_stride, w, h, T, HS);
        watt_load(sv, ld, v, kv_stride, w, h, T, HS);
        watt_load(sdo, ld, dout, C, w, h, T, HS);
        // D_i and lse_i: one warp per row, D read straight from device memory (coalesced)
        for (int i = warp; i < T; i += WATT_THREADS / 32) {
            const float* dorow = dout + ((size_t)w * T + i) * C + (size_t)h * HS;
            const float* orow = out + ((size_t)w * T + i) * C + (size_t)h * HS;
            float acc = 0.0f;
            for (int d = lane; d < HS; d += 32) acc += dorow[d] * orow[d];
            acc = warp_sum(acc);
            if (lane == 0) {
                sD[i] = acc;
                slse[i] = lse[((size_t)w * NH + h) * T + i];
            }
        }
        __syncthreads();
        if (active) {
            // P = exp(scores - lse) (the scores summed in the forward's order) into sp, then
            // dP = dout v^T and dS = P (dP - D) into sds: two passes keep 16 accumulators live
            float t[4][4];
            watt_nt(t, sq, sk, ld, rows, cols, HS);
            const float* mk = mask ? mask + (size_t)(w % n_mask) * T * T : NULL;
            #pragma unroll
            for (int r = 0; r < 4; r++) {
                int i = r0 + r;
                if (i >= T) continue;
                float l = slse[i];
                #pragma unroll
                for (int c = 0; c < 4; c++) {
                    int j = tc + 16 * c;
                    if (j >= T) continue;
                    int e = i * T + j;
                    float sc = t[r][c] * scale + (rb ? rb[e] : 0.0f) + (mk ? mk[e] : 0.0f);
                    sp[i * lds + j] = l == -INFINITY ? 0.0f : expf(sc - l);
                }
            }
            watt_nt(t, sdo, sv, ld, rows, cols, HS);
            #pragma unroll
            for (int r = 0; r < 4; r++) {
                int i = r0 + r;
                if (i >= T) continue;
                float Di = sD[i];
                #pragma unroll
                for (int c = 0; c < 4; c++) {
                    int j = tc + 16 * c;
                    if (j >= T) continue;
                    float dS = sp[i * lds + j] * (t[r][c] - Di);   // P written by this thread above
                    sds[i * lds + j] = dS;
                    sdrel[i * lds + j] += dS;
                }
            }
        }
        __syncthreads();
        if (active) {
            float acc[4][DC];
            // dq (T, HS) += scale * dS (T, T) @ k (T, HS)
            if (dq) {
                watt_nn<DC>(acc, sds, lds, sk, ld, rows, dcols, T);
                watt_accumulate<DC>(dq + (size_t)w * T * q_stride + (size_t)h * HS, q_stride, acc, scale, r0, tc, T, HS);
            }
            // dk (T, HS) += scale * dS^T (T, T) @ q (T, HS)
            if (dk) {
                watt_tn<DC>(acc, sds, lds, sq, ld, rows, dcols, T);
                watt_accumulate<DC>(dk + (size_t)w * T * kv_stride + (size_t)h * HS, kv_stride, acc, scale, r0, tc, T, HS);
            }
            // dv (T, HS) += P^T (T, T) @ dout (T, HS)
            if (dv) {
                watt_tn<DC>(acc, sp, lds, sdo, ld, rows, dcols, T);
                watt_accumulate<DC>(dv + (size_t)w * T * kv_stride + (size_t)h * HS, kv_stride, acc, 1.0f, r0, tc, T, HS);
            }
        }
        __syncthreads();   // shared arrays are reloaded for the next window
    }
    if (drel_partial && active) {
        float* part = drel_partial + ((size_t)blockIdx.x * NH + h) * T * T;
        #pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = r0 + r;
            if (i >= T) continue;
            #pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = tc + 16 * c;
                if (j < T) part[i * T + j] = sdrel[i * lds + j];
            }
        }
    }
}

// drel_bias[e] += sum over chunks of partial[chunk, e], e < n; block (32, 8): x the element
// (coalesced), y strides the chunks; the 8 partial sums are added in a fixed order
__global__ void watt_drel_reduce_kernel(float* drel_bias, const float* partial, int chunks, int n) {
    __shared__ float part[8][33];
    int e = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (e < n) for (int c = threadIdx.y; c < chunks; c += 8) s += partial[(size_t)c * n + e];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && e < n) {
        for (int y = 1; y < 8; y++) s += part[y][threadIdx.x];
        drel_bias[e] += s;
    }
}

// the old path's lse (window and flash op): one warp per score row (b, h, i) of (B, NH, Tq, Tk),
// scores recomputed in two passes
__global__ void watt_lse_kernel(float* lse, const float* q, const float* k, const float* rel_bias,
                                const float* mask, int n_mask, int B, int NH, int Tq, int Tk, int HS,
                                int q_stride, int kv_stride, float scale) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= B * NH * Tq) return;
    int i = row % Tq, h = (row / Tq) % NH, b = row / (Tq * NH);
    const float* qi = q + ((size_t)b * Tq + i) * q_stride + (size_t)h * HS;
    const float* rb = rel_bias ? rel_bias + ((size_t)h * Tq + i) * Tk : NULL;
    const float* mk = mask ? mask + ((size_t)(b % n_mask) * Tq + i) * Tk : NULL;
    float mx = -INFINITY, sum = 0.0f;
    for (int pass = 0; pass < 2; pass++) {
        for (int j = lane; j < Tk; j += 32) {
            const float* kj = k + ((size_t)b * Tk + j) * kv_stride + (size_t)h * HS;
            float dot = 0.0f;
            for (int d = 0; d < HS; d++) dot += qi[d] * kj[d];
            float sc = dot * scale + (rb ? rb[j] : 0.0f) + (mk ? mk[j] : 0.0f);
            if (pass == 0) mx = fmaxf(mx, sc);
            else if (mx != -INFINITY) sum += expf(sc - mx);
        }
        if (pass == 0) mx = warp_max(mx);
    }
    sum = warp_sum(sum);
    if (lane == 0) lse[row] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
}

// fused kernels usable for this size (else the old path); raises the kernel's shared-memory
// limit past 48 KiB when needed (once per size, on the first, eager call)
static int watt_fused_ok(int T, int HS) {
    if (!fused_attention_on() || T > WATT_MAX_T || HS > WATT_MAX_HS || T < 1 || HS < 1) return 0;
    static int optin = -1;
    if (optin < 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    }
    return watt_bwd_smem(T, HS) <= (size_t)optin;   // the larger of the two
}

template <int DC>
static void watt_launch_fwd(float* out, float* lse, const float* q, const float* k, const float* v,
                            const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH,
                            int HS, int q_stride, int kv_stride, float scale) {
    static size_t smem_raised = 0;
    size_t smem = watt_fwd_smem(T, HS);
    smem_limit_raise(window_attention_fwd_kernel<DC>, smem, &smem_raised);
    window_attention_fwd_kernel<DC><<<(unsigned)(B * NH), WATT_THREADS, smem>>>(
        out, lse, q, k, v, rel_bias, mask, n_mask, NH, T, HS, q_stride, kv_stride, scale);
    launchCheck();
}

template <int DC>
static void watt_launch_bwd(float* dq, float* dk, float* dv, float* drel_partial, const float* dout,
                            const float* out, const float* lse, const float* q, const float* k,
                            const float* v, const float* rel_bias, const float* mask, int n_mask,
                            int B, int T, int NH, int HS, int q_stride, int kv_stride, float scale,
                            int wpb, int chunks) {
    static size_t smem_raised = 0;
    size_t smem = watt_bwd_smem(T, HS);
    smem_limit_raise(window_attention_bwd_kernel<DC>, smem, &smem_raised);
    dim3 grid((unsigned)chunks, (unsigned)NH);
    window_attention_bwd_kernel<DC><<<grid, WATT_THREADS, smem>>>(
        dq, dk, dv, drel_partial, dout, out, lse, q, k, v, rel_bias, mask, n_mask,
        B, NH, T, HS, q_stride, kv_stride, scale, wpb);
    launchCheck();
}

// ----------------------------------------------------------------------------
// window attention on the tensor cores with mma.sync, scores in registers (bf16 precision).
// The math of window_attention_forward/backward (ttt.h); the plain reference is
// window_attention_forward/backward_cpu (ttt.c), the float32 kernels above the CUDA one. Taken in
// bf16 precision (ttt_cuda_precision() == PRECISION_BF16) for T <= 64 and HS = 16, 32, 48 or 64
// with the fused kernels on, unless TTT_WATT_TC=0 (or ttt_cuda_set_watt_tc(0)); everything else
// (fp32, tf32, other sizes) keeps the float32 kernels above.
// Products: the warp-level mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (inline PTX, sm_80+):
// D (16 x 8, float32) += A (16 x 16, bf16) B (16 x 8, bf16). With g = lane / 4, t = lane % 4
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"; a register holds two
// bf16, the low half the smaller column / k index):
//   A: a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]
//   B: b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]
//   C: c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
// So the C fragments of n-tiles 2j and 2j+1 of a (16, 64) score block (columns 16j .. 16j+15) ARE
// the A fragment of k-step j of the next product (a0 = pack(c0, c1 of 2j), a1 = pack(c2, c3 of 2j),
// a2 = pack(c0, c1 of 2j+1), a3 = pack(c2, c3 of 2j+1)): P (forward) and dS (for dq) never leave
// the registers. Every operand is read from shared memory as 32-bit bf16 pairs (watt_tc_afrag,
// watt_tc_bfrag): an A operand X (m, k) from X stored row-major [m][k]; a B operand (k, n) from
// B^T stored row-major [n][k]. Hence the layouts, bf16 in shared memory, T padded to 64 with zero
// rows (zero columns in the transposed tiles):
//   row-major (64, HS + 8): q, k (S = Q K^T: A = q rows, B^T = k rows), v and dout (dP = dO V^T)
//   transposed (HS, 72): v^T (O = P V), and in the backward k^T (dQ = dS K), q^T (dK = dS^T Q),
//   dout^T (dV = P^T dO); P^T and dS^T (64, 72) [key][query] (A operands of dV and dK)
// The strides (HS + 8 and 72 bf16: 12, 20, 28, 36 and 36 words, all 4 mod 8: the 8 rows g of a
// fragment load start on 8 distinct multiples of 4 banks, the 4 lanes t fill them) put the 32
// lanes of every fragment load on 32 distinct banks; watt_tc_load's lane map (8 rows x 4
// column pairs per warp step: one 32-byte sector per row from global) writes both the row-major
// and the transposed tile without bank conflicts.
// Forward (window_attention_fwd_tc_kernel): a block of 4 warps per (window, head) item, looping
// over items (grid about WATT_TC_FWD_BLOCKS_PER_SM per SM); warp w owns query rows 16w .. 16w+15
// (a warp whose rows all lie past T idles until the next item). S = Q K^T for the k-steps holding
// keys (j < nks = ceil(T / 16)), s = S scale + rel_bias[h,i,j] + mask[w % n_mask,i,j] in float32
// (keys j >= T: -inf), softmax in float32 as the float32 kernel (row max and sum over the quad
// t = 0..3 by __shfl_xor_sync 1, 2; expf, logf; an all -inf row gives P = 0, out 0, lse -inf),
// O = P V with the unnormalised P packed to bf16 A fragments, out = O / sum (float32) for rows < T.
// Backward (window_attention_bwd_tc_kernel): the float32 kernel's drel scheme: block (chunk, h)
// runs windows chunk * wpb .. of head h; a thread's (i, j) entries of dS are the same for every
// window, so it sums them in registers (drel, 32 floats) and writes its part of the chunk's
// (NH, T, T) partial at the end; watt_drel_reduce_kernel adds the chunks in a fixed order. Per
// window, with D_i = dout_i . out_i and lse_i in float32 from global (a quad per row): warp w
// (query rows 16w ..) walks the k-steps j < nks: S and dP = dO V^T for the 16 keys, P = exp(s -
// lse) (0 for rows, keys >= T and lse = -inf), dS = P (dP - D), drel += dS, P^T and dS^T to
// shared as bf16, dq += scale dS K right away from the dS registers (float32 accumulators, added
// to global at the end). One __syncthreads; then warp w owns keys 16w .. 16w+15: dV = P^T dO and
// dK = scale dS^T Q over the query k-steps, += to global rows < T. The op's contract (ttt.h):
// dq, dk, dv, drel_bias accumulate; NULL skips its part.
// Precision: bf16 operands (q, k, v, dout, P, dS: each off by up to 2^-9 relatively), float32
// sums, softmax, lse, D and drel: relative L2 errors about 2e-3 on out, 2e-4 on lse (max error
// over max |lse|), 2.2e-3 .. 4e-3 on the gradients (these kernels run on the host with the PTX
// fragment semantics and bf16 rounding emulated, against the CPU reference; test/gpu_ops.c:
// bounds 1e-2 and 1.5e-2).
// Shared memory: forward (2 x 64 (HS + 8) + HS x 72) bf16 (14.8 KiB at HS 32), backward
// (4 x 64 (HS + 8) + 3 x HS x 72 + 2 x 64 x 72) bf16 (51.5 KiB at HS 32: 4 blocks per SM).
// Registers (ptxas, sm_90, no spills): forward 76 / 80 / 128 / 128 at HS 16 / 32 / 48 / 64 (6
// blocks per SM at HS <= 32), backward 116 / 128 / 163 / 231 (4 / 4 / 3 / 2 blocks per SM, what
// shared memory allows).
#define WATT_TC_THREADS 128             // 4 warps x 16 query (or key) rows = 64 >= T
#define WATT_TC_LDT 72                  // bf16 between rows of a transposed tile or P^T / dS^T
static_assert(WATT_TC_THREADS == 128, "4 warps: 64 rows, and watt_tc_load's 4 units per step");
#ifndef WATT_TC_FWD_MIN_BLOCKS
#define WATT_TC_FWD_MIN_BLOCKS 6        // forward blocks per SM the registers must allow at HS <= 32
#endif                                  // (80 registers, no spills; 4 at HS 48, 64)
// backward blocks per SM the registers must allow: what shared memory allows (228 KiB per SM)
#define WATT_TC_BWD_MIN_BLOCKS(HS) ((HS) <= 32 ? 4 : (HS) == 48 ? 3 : 2)
#ifndef WATT_TC_FWD_BLOCKS_PER_SM
#define WATT_TC_FWD_BLOCKS_PER_SM 16    // forward grid: about this many blocks per SM, looping over items
#endif

static int env_switch01(const char* name, int fallback);   // BF16 OPERANDS, below
static int watt_tc_on = -1;      // -1 unread (TTT_WATT_TC), 0 off, 1 on
static long watt_tc_calls[2];    // forward, backward calls run on the tensor cores
extern "C" void ttt_cuda_set_watt_tc(int on) { watt_tc_on = on < 0 ? -1 : on != 0; }
extern "C" long ttt_cuda_watt_tc_calls(int which) { return which == 0 || which == 1 ? watt_tc_calls[which] : 0; }

// the tensor-core kernels for this size and precision (the fused kernels are on)
static int watt_tc_ok(int T, int HS) {
    if (ttt_cuda_precision() != PRECISION_BF16 || !fused_attention_on()) return 0;
    if (T < 1 || T > 64 || HS < 16 || HS > 64 || HS % 16 != 0) return 0;
    if (watt_tc_on < 0) watt_tc_on = env_switch01("TTT_WATT_TC", 1);
    return watt_tc_on;
}

static size_t watt_tc_fwd_smem(int HS) {   // q, k (64, HS + 8), v^T (HS, 72)
    return ((size_t)2 * 64 * (HS + 8) + (size_t)HS * WATT_TC_LDT) * sizeof(__nv_bfloat16);
}
static size_t watt_tc_bwd_smem(int HS) {   // q, k, v, dout (64, HS + 8); q^T, k^T, dout^T (HS, 72); P^T, dS^T (64, 72)
    return ((size_t)4 * 64 * (HS + 8) + (size_t)3 * HS * WATT_TC_LDT + (size_t)2 * 64 * WATT_TC_LDT) *
           sizeof(__nv_bfloat16);
}

// two floats as a bf16 pair (lo: the smaller index, the low half)
__device__ __forceinline__ uint32_t watt_tc_pack(float lo, float hi) {
    __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t*)&p;
}
__device__ __forceinline__ uint32_t watt_tc_ld32(const __nv_bfloat16* p) { return *(const uint32_t*)p; }

// N accumulator fragments (C layout, 4 floats a lane each) set to zero
template <int N>
__device__ __forceinline__ void watt_tc_zero(float (&acc)[N][4]) {
    #pragma unroll
    for (int n = 0; n < N; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// c (16 x 8, float32) += A (16 x 16, bf16) B (16 x 8, bf16), fragments as in the comment above
__device__ __forceinline__ void watt_tc_mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// A fragment of rows m0 .. m0 + 15, columns k0 .. k0 + 15 of X stored row-major (ld bf16 apart)
__device__ __forceinline__ void watt_tc_afrag(uint32_t a[4], const __nv_bfloat16* X, int ld, int m0, int k0,
                                              int g, int t) {
    const __nv_bfloat16* p = X + (m0 + g) * ld + k0 + 2 * t;
    a[0] = watt_tc_ld32(p);
    a[1] = watt_tc_ld32(p + 8 * ld);
    a[2] = watt_tc_ld32(p + 8);
    a[3] = watt_tc_ld32(p + 8 * ld + 8);
}

// B fragment of k0 .. k0 + 15, n0 .. n0 + 7 of B = Y^T, Y (n, k) stored row-major (ld bf16 apart)
__device__ __forceinline__ void watt_tc_bfrag(uint32_t b[2], const __nv_bfloat16* Y, int ld, int n0, int k0,
                                              int g, int t) {
    const __nv_bfloat16* p = Y + (n0 + g) * ld + k0 + 2 * t;
    b[0] = watt_tc_ld32(p);
    b[1] = watt_tc_ld32(p + 8);
}

// two neighbouring values at p (p even: a bf16 pair is one 4-byte load)
__device__ __forceinline__ void watt_tc_load2(const float* p, float* a, float* c) { *a = p[0]; *c = p[1]; }
__device__ __forceinline__ void watt_tc_load2(const __nv_bfloat16* p, float* a, float* c) {
    float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    *a = f.x; *c = f.y;
}

// the (T, HS) slice of head h of window w of x (rows `stride` elements apart; float32, or bf16 on
// qkv_window_attention's bf16 path) plus bias[h * HS + d] per column d when bias is not NULL, as
// bf16, zero at rows T .. 63: into s (64, HS + 8) row-major and/or st (HS, 72) transposed (either
// may be NULL). float32 sources: a warp step covers 8 rows x 4 column pairs: lane -> row
// 8 (u % 8) + lane % 8, columns 8 (u / 8) + 2 (lane / 8) + {0, 1} (u = warp + 4 it < HS: the
// step's unit); bf16 sources: 16-byte units of 8 columns (below)
template <int HS, typename TI>
__device__ __forceinline__ void watt_tc_load(__nv_bfloat16* s, __nv_bfloat16* st, const TI* x, int stride,
                                             const float* bias, int w, int h, int T) {
    constexpr int LDH = HS + 8;
    const TI* base = x + (size_t)w * T * stride + (size_t)h * HS;
    const float* hb = bias ? bias + (size_t)h * HS : NULL;
    if constexpr (std::is_same<TI, __nv_bfloat16>::value) {
        // bf16 source (qkv_window_attention's qkv: rows 16-byte aligned): units of one row's 8
        // columns, one 16-byte load each, 4 lanes per row at HS 32 (all of a thread's in flight)
        constexpr int GROUPS = HS / 8, UNITS = 64 * GROUPS;
        static_assert(UNITS % WATT_TC_THREADS == 0, "whole units per thread");
        #pragma unroll
        for (int it = 0; it < UNITS / WATT_TC_THREADS; it++) {
            const int u = threadIdx.x + WATT_TC_THREADS * it, r = u / GROUPS, d = 8 * (u % GROUPS);
            float f[8];
            if (r < T) {
                uint4 raw = *reinterpret_cast<const uint4*>(base + (size_t)r * stride + d);
                const __nv_bfloat162* p2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
                #pragma unroll
                for (int j = 0; j < 4; j++) {
                    float2 v = __bfloat1622float2(p2[j]);
                    f[2 * j] = v.x; f[2 * j + 1] = v.y;
                }
                if (hb) {
                    #pragma unroll
                    for (int j = 0; j < 8; j++) f[j] += hb[d + j];
                }
            } else {
                #pragma unroll
                for (int j = 0; j < 8; j++) f[j] = 0.0f;
            }
            uint4 packed;
            __nv_bfloat162* pr = reinterpret_cast<__nv_bfloat162*>(&packed);
            #pragma unroll
            for (int j = 0; j < 4; j++) pr[j] = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
            if (s) *reinterpret_cast<uint4*>(s + r * LDH + d) = packed;
            if (st) {
                const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&packed);
                #pragma unroll
                for (int j = 0; j < 8; j++) st[(d + j) * WATT_TC_LDT + r] = e[j];
            }
        }
        return;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    #pragma unroll
    for (int it = 0; it < HS / 4; it++) {   // all the warp's loads in flight together
        const int u = warp + 4 * it;
        int r = 8 * (u % 8) + lane % 8, d = 8 * (u / 8) + 2 * (lane / 8);
        float a = 0.0f, c = 0.0f;
        if (r < T) {
            watt_tc_load2(base + (size_t)r * stride + d, &a, &c);
            if (hb) { a += hb[d]; c += hb[d + 1]; }
        }
        __nv_bfloat162 pr = __floats2bfloat162_rn(a, c);
        if (s) *(__nv_bfloat162*)(s + r * LDH + d) = pr;
        if (st) {
            st[d * WATT_TC_LDT + r] = pr.x;
            st[(d + 1) * WATT_TC_LDT + r] = pr.y;
        }
    }
}

// forward: items (w, h) = (item / NH, item % NH), item = blockIdx.x, + gridDim.x, ...
// q, k, v of type TI (float32, or bf16 on qkv_window_attention's path), plus the per-column
// biases qb, kb, vb where not NULL (the (NH * HS) columns of q, k, v: head h uses qb[h HS + d])
template <int HS, typename TI>
__global__ void __launch_bounds__(WATT_TC_THREADS, HS <= 32 ? WATT_TC_FWD_MIN_BLOCKS : 4)
window_attention_fwd_tc_kernel(float* out, float* lse, const TI* q, const TI* k, const TI* v, const float* qb,
                               const float* kb, const float* vb, const float* rel_bias, const float* mask,
                               int n_mask, int B, int NH, int T, int q_stride, int kv_stride, float scale) {
    constexpr int LDH = HS + 8, NT = HS / 8, KS = HS / 16;
    extern __shared__ __align__(16) unsigned char watt_tc_smem[];
    __nv_bfloat16* sq = (__nv_bfloat16*)watt_tc_smem;   // (64, LDH)
    __nv_bfloat16* sk = sq + 64 * LDH;                  // (64, LDH)
    __nv_bfloat16* svt = sk + 64 * LDH;                 // (HS, 72) v^T
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = 16 * warp, i0 = r0 + g, i1 = i0 + 8;
    const int nks = (T + 15) / 16, C = NH * HS;
    for (int item = blockIdx.x; item < B * NH; item += gridDim.x) {
        const int w = item / NH, h = item % NH;
        __syncthreads();   // the previous item's reads of shared memory are done
        watt_tc_load<HS>(sq, NULL, q, q_stride, qb, w, h, T);
        watt_tc_load<HS>(sk, NULL, k, kv_stride, kb, w, h, T);
        watt_tc_load<HS>(NULL, svt, v, kv_stride, vb, w, h, T);
        __syncthreads();
        if (r0 >= T) continue;   // warp-uniform; the next barrier is the next item's first
        uint32_t qa[KS][4];
        #pragma unroll
        for (int kk = 0; kk < KS; kk++) watt_tc_afrag(qa[kk], sq, LDH, r0, 16 * kk, g, t);
        // s (16, 64): n-tile nt holds keys 8 nt + 2t + {0, 1} of rows i0 (s[nt][0..1]), i1 (s[nt][2..3])
        float s[8][4];
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            if (16 * (nt / 2) < T) {
                #pragma unroll
                for (int kk = 0; kk < KS; kk++) {
                    uint32_t b[2];
                    watt_tc_bfrag(b, sk, LDH, 8 * nt, 16 * kk, g, t);
                    watt_tc_mma(s[nt], qa[kk], b);
                }
            }
        }
        const float* rb = rel_bias ? rel_bias + (size_t)h * T * T : NULL;
        const float* mk = mask ? mask + (size_t)(w % n_mask) * T * T : NULL;
        #pragma unroll
        for (int nt = 0; nt < 8; nt++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = e < 2 ? i0 : i1, j = 8 * nt + 2 * t + (e & 1);
                if (j >= T) s[nt][e] = -INFINITY;   // not a key: no weight
                else if (i < T) {
                    int x = i * T + j;
                    s[nt][e] = s[nt][e] * scale + (rb ? rb[x] : 0.0f) + (mk ? mk[x] : 0.0f);
                }   // rows past T: finite junk, never stored
            }
        // softmax of rows i0 (values e = 0, 1) and i1 (e = 2, 3) over the quad's 4 lanes
        float mx0 = -INFINITY, mx1 = -INFINITY;
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        float sum0 = 0.0f, sum1 = 0.0f;
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = mx0 == -INFINITY ? 0.0f : expf(s[nt][0] - mx0);
            s[nt][1] = mx0 == -INFINITY ? 0.0f : expf(s[nt][1] - mx0);
            s[nt][2] = mx1 == -INFINITY ? 0.0f : expf(s[nt][2] - mx1);
            s[nt][3] = mx1 == -INFINITY ? 0.0f : expf(s[nt][3] - mx1);
            sum0 += s[nt][0] + s[nt][1];
            sum1 += s[nt][2] + s[nt][3];
        }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        if (lse && t == 0) {
            float* lrow = lse + ((size_t)w * NH + h) * T;
            if (i0 < T) lrow[i0] = mx0 == -INFINITY ? -INFINITY : mx0 + logf(sum0);
            if (i1 < T) lrow[i1] = mx1 == -INFINITY ? -INFINITY : mx1 + logf(sum1);
        }
        // O (16, HS) = P (16, 64) V (64, HS): P's A fragments straight from the s registers
        float o[NT][4];
        watt_tc_zero(o);
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j >= nks) continue;
            uint32_t a[4] = {watt_tc_pack(s[2 * j][0], s[2 * j][1]), watt_tc_pack(s[2 * j][2], s[2 * j][3]),
                             watt_tc_pack(s[2 * j + 1][0], s[2 * j + 1][1]),
                             watt_tc_pack(s[2 * j + 1][2], s[2 * j + 1][3])};
            #pragma unroll
            for (int n = 0; n < NT; n++) {
                uint32_t b[2];
                watt_tc_bfrag(b, svt, WATT_TC_LDT, 8 * n, 16 * j, g, t);
                watt_tc_mma(o[n], a, b);
            }
        }
        const float inv0 = sum0 > 0.0f ? 1.0f / sum0 : 0.0f, inv1 = sum1 > 0.0f ? 1.0f / sum1 : 0.0f;
        float* ob = out + (size_t)w * T * C + (size_t)h * HS + 2 * t;
        #pragma unroll
        for (int n = 0; n < NT; n++) {
            if (i0 < T) {
                ob[(size_t)i0 * C + 8 * n] = o[n][0] * inv0;
                ob[(size_t)i0 * C + 8 * n + 1] = o[n][1] * inv0;
            }
            if (i1 < T) {
                ob[(size_t)i1 * C + 8 * n] = o[n][2] * inv1;
                ob[(size_t)i1 * C + 8 * n + 1] = o[n][3] * inv1;
            }
        }
    }
}

// g[row * stride + 8 n + 2t + {0, 1}] += alpha * acc for rows m0 + g, m0 + g + 8 below T (g: one
// head's columns of a window)
template <int NT>
__device__ __forceinline__ void watt_tc_accumulate(float* gb, int stride, const float acc[NT][4], float alpha,
                                                   int m0, int g, int t, int T) {
    const int ra = m0 + g, rc = ra + 8;
    #pragma unroll
    for (int n = 0; n < NT; n++) {
        int d = 8 * n + 2 * t;
        if (ra < T) {
            gb[(size_t)ra * stride + d] += alpha * acc[n][0];
            gb[(size_t)ra * stride + d + 1] += alpha * acc[n][1];
        }
        if (rc < T) {
            gb[(size_t)rc * stride + d] += alpha * acc[n][2];
            gb[(size_t)rc * stride + d + 1] += alpha * acc[n][3];
        }
    }
}
// the same rows and columns WRITTEN as bf16 pairs (qkv_window_attention's bf16 dqkv: every
// element of a (window, head) slice belongs to one block, so nothing needs zeroing first)
template <int NT>
__device__ __forceinline__ void watt_tc_accumulate(__nv_bfloat16* gb, int stride, const float acc[NT][4],
                                                   float alpha, int m0, int g, int t, int T) {
    const int ra = m0 + g, rc = ra + 8;
    #pragma unroll
    for (int n = 0; n < NT; n++) {
        int d = 8 * n + 2 * t;
        if (ra < T)
            *reinterpret_cast<__nv_bfloat162*>(gb + (size_t)ra * stride + d) =
                __floats2bfloat162_rn(alpha * acc[n][0], alpha * acc[n][1]);
        if (rc < T)
            *reinterpret_cast<__nv_bfloat162*>(gb + (size_t)rc * stride + d) =
                __floats2bfloat162_rn(alpha * acc[n][2], alpha * acc[n][3]);
    }
}

// backward, grid (chunks, NH): block (chunk, h) runs windows chunk * wpb .. + wpb - 1 (< B) of
// head h in turn. drel_partial (chunks, NH, T, T) or NULL.
// acc (16, 8 NT) += X (rows m0 .. m0 + 15, columns k0 .. k0 + 15) Y^T (Y's rows 0 .. 8 NT - 1,
// the same columns), X and Y row-major (WATT_TC_LDT apart) in shared memory: the backward's
// dV = P^T dO and dK = dS^T Q over one 16-query k-step (X = P^T or dS^T, Y = dO^T or Q^T)
template <int NT>
__device__ __forceinline__ void watt_tc_mma_rows(float (&acc)[NT][4], const __nv_bfloat16* X, const __nv_bfloat16* Y,
                                                 int m0, int k0, int g, int t) {
    uint32_t a[4];
    watt_tc_afrag(a, X, WATT_TC_LDT, m0, k0, g, t);
    #pragma unroll
    for (int n = 0; n < NT; n++) {
        uint32_t b[2];
        watt_tc_bfrag(b, Y, WATT_TC_LDT, 8 * n, k0, g, t);
        watt_tc_mma(acc[n], a, b);
    }
}

// this lane's part of D_row = dout_row . out_row over head h's columns t, t + 4, ... (rows C
// floats apart; the quad's four lanes t = 0 .. 3 sum the parts)
template <int HS>
__device__ __forceinline__ float watt_tc_row_dot(const float* dout, const float* out, size_t row, int C, int h,
                                                 int t) {
    const float* a = dout + row * C + (size_t)h * HS;
    const float* b = out + row * C + (size_t)h * HS;
    float sum = 0.0f;
    #pragma unroll
    for (int d = t; d < HS; d += 4) sum += a[d] * b[d];
    return sum;
}

// TI as the forward's; TG float: dq, dk, dv accumulate (+=), bf16: written (=)
template <int HS, typename TI, typename TG>
__global__ void __launch_bounds__(WATT_TC_THREADS, WATT_TC_BWD_MIN_BLOCKS(HS))
window_attention_bwd_tc_kernel(TG* dq, TG* dk, TG* dv, float* drel_partial, const float* dout,
                               const float* out, const float* lse, const TI* q, const TI* k,
                               const TI* v, const float* qb, const float* kb, const float* vb,
                               const float* rel_bias, const float* mask, int n_mask,
                               int B, int NH, int T, int q_stride, int kv_stride, float scale, int wpb) {
    constexpr int LDH = HS + 8, NT = HS / 8, KS = HS / 16;
    extern __shared__ __align__(16) unsigned char watt_tc_smem[];
    __nv_bfloat16* sq = (__nv_bfloat16*)watt_tc_smem;   // (64, LDH) q
    __nv_bfloat16* sk = sq + 64 * LDH;                  // (64, LDH) k
    __nv_bfloat16* sv = sk + 64 * LDH;                  // (64, LDH) v
    __nv_bfloat16* sdo = sv + 64 * LDH;                 // (64, LDH) dout
    __nv_bfloat16* sqt = sdo + 64 * LDH;                // (HS, 72) q^T
    __nv_bfloat16* skt = sqt + HS * WATT_TC_LDT;        // (HS, 72) k^T
    __nv_bfloat16* sdot = skt + HS * WATT_TC_LDT;       // (HS, 72) dout^T
    __nv_bfloat16* spt = sdot + HS * WATT_TC_LDT;       // (64, 72) P^T [key][query]
    __nv_bfloat16* sdst = spt + 64 * WATT_TC_LDT;       // (64, 72) dS^T [key][query]
    const int h = blockIdx.y, C = NH * HS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int r0 = 16 * warp, i0 = r0 + g, i1 = i0 + 8;
    const int nks = (T + 15) / 16;
    const bool active = r0 < T;   // warp-uniform: the warp has query rows (and key rows) below T
    const float* rb = rel_bias ? rel_bias + (size_t)h * T * T : NULL;
    // this thread's part of the block's sum of dS over its windows: entries (i0 | i1, key
    // 16j + 8 half + 2t + {0, 1}) at drel[j][half][e], e as in the C fragment
    float drel[4][2][4];
    #pragma unroll
    for (int j = 0; j < 4; j++) watt_tc_zero(drel[j]);
    const int w0 = blockIdx.x * wpb, w1 = min(B, w0 + wpb);
    for (int w = w0; w < w1; w++) {
        __syncthreads();   // the previous window's reads of shared memory are done
        watt_tc_load<HS>(sq, sqt, q, q_stride, qb, w, h, T);
        watt_tc_load<HS>(sk, skt, k, kv_stride, kb, w, h, T);
        watt_tc_load<HS>(sv, NULL, v, kv_stride, vb, w, h, T);
        watt_tc_load<HS>(sdo, sdot, dout, C, (const float*)NULL, w, h, T);
        // D_i = dout_i . out_i and lse_i of rows i0, i1 (float32, from global): a quad per row
        float D0 = 0.0f, D1 = 0.0f, l0 = -INFINITY, l1 = -INFINITY;
        if (active) {
            const float* lrow = lse + ((size_t)w * NH + h) * T;
            if (i0 < T) { D0 = watt_tc_row_dot<HS>(dout, out, (size_t)w * T + i0, C, h, t); l0 = lrow[i0]; }
            if (i1 < T) { D1 = watt_tc_row_dot<HS>(dout, out, (size_t)w * T + i1, C, h, t); l1 = lrow[i1]; }
            D0 += __shfl_xor_sync(0xffffffffu, D0, 1);
            D0 += __shfl_xor_sync(0xffffffffu, D0, 2);
            D1 += __shfl_xor_sync(0xffffffffu, D1, 1);
            D1 += __shfl_xor_sync(0xffffffffu, D1, 2);
        }
        __syncthreads();
        if (active) {
            const float* mk = mask ? mask + (size_t)(w % n_mask) * T * T : NULL;
            uint32_t qa[KS][4], da[KS][4];
            #pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                watt_tc_afrag(qa[kk], sq, LDH, r0, 16 * kk, g, t);
                watt_tc_afrag(da[kk], sdo, LDH, r0, 16 * kk, g, t);
            }
            float dqa[NT][4];
            watt_tc_zero(dqa);
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                if (j >= nks) continue;
                // S and dP = dO V^T for keys 16j .. 16j + 15 (n-tiles 2j, 2j + 1)
                float sc[2][4], dp[2][4];
                watt_tc_zero(sc);
                watt_tc_zero(dp);
                #pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    #pragma unroll
                    for (int kk = 0; kk < KS; kk++) {
                        uint32_t b[2];
                        watt_tc_bfrag(b, sk, LDH, 16 * j + 8 * hf, 16 * kk, g, t);
                        watt_tc_mma(sc[hf], qa[kk], b);
                        watt_tc_bfrag(b, sv, LDH, 16 * j + 8 * hf, 16 * kk, g, t);
                        watt_tc_mma(dp[hf], da[kk], b);
                    }
                }
                // P = exp(s - lse), dS = P (dP - D): P into sc, dS into dp; P^T, dS^T to shared
                #pragma unroll
                for (int hf = 0; hf < 2; hf++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int i = e < 2 ? i0 : i1, key = 16 * j + 8 * hf + 2 * t + (e & 1);
                        const float l = e < 2 ? l0 : l1, Di = e < 2 ? D0 : D1;
                        float p = 0.0f;
                        if (i < T && key < T && l != -INFINITY) {
                            int x = i * T + key;
                            float s = sc[hf][e] * scale + (rb ? rb[x] : 0.0f) + (mk ? mk[x] : 0.0f);
                            p = expf(s - l);
                        }
                        float ds = p * (dp[hf][e] - Di);
                        sc[hf][e] = p;
                        dp[hf][e] = ds;
                        drel[j][hf][e] += ds;
                        spt[key * WATT_TC_LDT + i] = __float2bfloat16_rn(p);
                        sdst[key * WATT_TC_LDT + i] = __float2bfloat16_rn(ds);
                    }
                // dq (16, HS) += dS (16, 16) K (16 keys, HS): dS's A fragment from the registers
                if (dq) {
                    uint32_t a[4] = {watt_tc_pack(dp[0][0], dp[0][1]), watt_tc_pack(dp[0][2], dp[0][3]),
                                     watt_tc_pack(dp[1][0], dp[1][1]), watt_tc_pack(dp[1][2], dp[1][3])};
                    #pragma unroll
                    for (int n = 0; n < NT; n++) {
                        uint32_t b[2];
                        watt_tc_bfrag(b, skt, WATT_TC_LDT, 8 * n, 16 * j, g, t);
                        watt_tc_mma(dqa[n], a, b);
                    }
                }
            }
            if (dq) watt_tc_accumulate<NT>(dq + (size_t)w * T * q_stride + (size_t)h * HS, q_stride, dqa, scale,
                                           r0, g, t, T);
        }
        __syncthreads();   // P^T and dS^T complete
        if (active && (dk || dv)) {
            // keys 16 warp .. + 15: dV = P^T dO, dK = dS^T Q over the query k-steps
            float dka[NT][4], dva[NT][4];
            watt_tc_zero(dka);
            watt_tc_zero(dva);
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                if (j >= nks) continue;
                if (dv) watt_tc_mma_rows<NT>(dva, spt, sdot, r0, 16 * j, g, t);
                if (dk) watt_tc_mma_rows<NT>(dka, sdst, sqt, r0, 16 * j, g, t);
            }
            if (dk) watt_tc_accumulate<NT>(dk + (size_t)w * T * kv_stride + (size_t)h * HS, kv_stride, dka, scale,
                                           r0, g, t, T);
            if (dv) watt_tc_accumulate<NT>(dv + (size_t)w * T * kv_stride + (size_t)h * HS, kv_stride, dva, 1.0f,
                                           r0, g, t, T);
        }
    }
    if (drel_partial && active) {
        float* part = drel_partial + ((size_t)blockIdx.x * NH + h) * T * T;
        #pragma unroll
        for (int j = 0; j < 4; j++)
            #pragma unroll
            for (int hf = 0; hf < 2; hf++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = e < 2 ? i0 : i1, key = 16 * j + 8 * hf + 2 * t + (e & 1);
                    if (j < nks && i < T && key < T) part[i * T + key] = drel[j][hf][e];
                }
    }
}

template <int HS, typename TI>
static void watt_tc_launch_fwd(float* out, float* lse, const TI* q, const TI* k, const TI* v, const float* qb,
                               const float* kb, const float* vb, const float* rel_bias, const float* mask,
                               int n_mask, int B, int T, int NH, int q_stride, int kv_stride, float scale) {
    static int sms = 0;
    if (sms == 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    size_t smem = watt_tc_fwd_smem(HS);   // below 48 KiB at HS <= 64
    long long items = (long long)B * NH, cap = (long long)sms * WATT_TC_FWD_BLOCKS_PER_SM;
    unsigned grid = (unsigned)(items < cap ? items : cap);
    window_attention_fwd_tc_kernel<HS, TI><<<grid, WATT_TC_THREADS, smem>>>(
        out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask, B, NH, T, q_stride, kv_stride, scale);
    launchCheck();
}

template <int HS, typename TI, typename TG>
static void watt_tc_launch_bwd(TG* dq, TG* dk, TG* dv, float* drel_partial, const float* dout,
                               const float* out, const float* lse, const TI* q, const TI* k,
                               const TI* v, const float* qb, const float* kb, const float* vb,
                               const float* rel_bias, const float* mask, int n_mask,
                               int B, int T, int NH, int q_stride, int kv_stride, float scale, int wpb,
                               int chunks) {
    static size_t smem_raised = 0;
    size_t smem = watt_tc_bwd_smem(HS);
    smem_limit_raise(window_attention_bwd_tc_kernel<HS, TI, TG>, smem, &smem_raised);
    dim3 grid((unsigned)chunks, (unsigned)NH);
    window_attention_bwd_tc_kernel<HS, TI, TG><<<grid, WATT_TC_THREADS, smem>>>(
        dq, dk, dv, drel_partial, dout, out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask,
        B, NH, T, q_stride, kv_stride, scale, wpb);
    launchCheck();
}
// the launches for a head size the tensor-core kernels take (watt_tc_ok: 16, 32, 48 or 64)
template <typename TI>
static void watt_tc_forward(int HS, float* out, float* lse, const TI* q, const TI* k, const TI* v, const float* qb,
                            const float* kb, const float* vb, const float* rel_bias, const float* mask, int n_mask,
                            int B, int T, int NH, int q_stride, int kv_stride, float scale) {
    auto launch = HS == 16 ? watt_tc_launch_fwd<16, TI> : HS == 32 ? watt_tc_launch_fwd<32, TI>
                : HS == 48 ? watt_tc_launch_fwd<48, TI> : watt_tc_launch_fwd<64, TI>;
    launch(out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask, B, T, NH, q_stride, kv_stride, scale);
}
template <typename TI, typename TG>
static void watt_tc_backward(int HS, TG* dq, TG* dk, TG* dv, float* drel_partial, const float* dout, const float* out,
                             const float* lse, const TI* q, const TI* k, const TI* v, const float* qb, const float* kb,
                             const float* vb, const float* rel_bias, const float* mask, int n_mask, int B, int T,
                             int NH, int q_stride, int kv_stride, float scale, int wpb, int chunks) {
    auto launch = HS == 16 ? watt_tc_launch_bwd<16, TI, TG> : HS == 32 ? watt_tc_launch_bwd<32, TI, TG>
                : HS == 48 ? watt_tc_launch_bwd<48, TI, TG> : watt_tc_launch_bwd<64, TI, TG>;
    launch(dq, dk, dv, drel_partial, dout, out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask, B, T, NH, q_stride,
           kv_stride, scale, wpb, chunks);
}

extern "C" void window_attention_forward_cuda(float* out, float* lse, const float* q, const float* k,
                                              const float* v, const float* rel_bias, const float* mask,
                                              int n_mask, int B, int T, int NH, int HS, int q_stride,
                                              int kv_stride) {
    OpTimer timer("window_attention_forward");
    if (B <= 0 || T <= 0 || NH <= 0) return;
    if (n_mask <= 0) n_mask = 1;
    float scale = 1.0f / sqrtf((float)HS);
    if (watt_tc_ok(T, HS)) {   // bf16: the tensor-core kernels
        watt_tc_calls[0]++;
        watt_tc_forward(HS, out, lse, q, k, v, NULL, NULL, NULL, rel_bias, mask, n_mask, B, T, NH, q_stride, kv_stride,
                        scale);
        return;
    }
    if (!watt_fused_ok(T, HS)) {
        // old path: the attention map in a workspace, thrown away; lse from its own kernel
        float* att = (float*)workspace_get(&ws_watt, (size_t)B * NH * T * T * sizeof(float));
        attention_forward_cuda(out, att, q, k, v, rel_bias, mask, n_mask, B, T, T, NH, HS, q_stride, kv_stride);
        if (lse) {
            int rows = B * NH * T;
            watt_lse_kernel<<<(rows + 7) / 8, 256>>>(lse, q, k, rel_bias, mask, n_mask, B, NH, T, T, HS,
                                                     q_stride, kv_stride, scale);
            launchCheck();
        }
        return;
    }
    switch ((HS + 15) / 16) {
    case 1: watt_launch_fwd<1>(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale); break;
    case 2: watt_launch_fwd<2>(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale); break;
    case 3: watt_launch_fwd<3>(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale); break;
    default: watt_launch_fwd<4>(out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale); break;
    }
}

// the backward's blocks with drel_bias: wpb windows per block, so that chunks * NH is about
// WATT_TARGET_BLOCKS, each block writing its sum of dS to a (chunks, NH, T, T) partial (returned;
// NULL without drel_bias: one window per block); watt_drel_finish adds the partials to drel_bias
static float* watt_drel_partial(bool drel, int B, int NH, int T, int* wpb, int* chunks) {
    *wpb = 1; *chunks = B;
    if (!drel) return NULL;
    long long blocks = (long long)B * NH;
    *wpb = (int)((blocks + WATT_TARGET_BLOCKS - 1) / WATT_TARGET_BLOCKS);
    if (*wpb < 1) *wpb = 1;
    *chunks = (B + *wpb - 1) / *wpb;
    return (float*)workspace_get(&ws_watt, (size_t)*chunks * NH * T * T * sizeof(float));
}
static void watt_drel_finish(float* drel_bias, const float* partial, int chunks, int NH, int T) {
    int n = NH * T * T;
    watt_drel_reduce_kernel<<<(n + 31) / 32, dim3(32, 8)>>>(drel_bias, partial, chunks, n);
    launchCheck();
}

extern "C" void window_attention_backward_cuda(float* dq, float* dk, float* dv, float* drel_bias,
                                               const float* dout, const float* out, const float* lse,
                                               const float* q, const float* k, const float* v,
                                               const float* rel_bias, const float* mask, int n_mask,
                                               int B, int T, int NH, int HS, int q_stride, int kv_stride) {
    OpTimer timer("window_attention_backward");
    if (!out || !lse) ttt_die("window_attention_backward: the forward's out and lse are required");
    if (B <= 0 || T <= 0 || NH <= 0) return;
    if (!dq && !dk && !dv && !drel_bias) return;
    if (n_mask <= 0) n_mask = 1;
    float scale = 1.0f / sqrtf((float)HS);
    if (!watt_fused_ok(T, HS)) {
        // old path: recompute the attention map (and out, thrown away) into the workspace
        size_t natt = (size_t)B * NH * T * T, nout = (size_t)B * T * NH * HS;
        float* att = (float*)workspace_get(&ws_watt, (natt + nout) * sizeof(float));
        attention_forward_cuda(att + natt, att, q, k, v, rel_bias, mask, n_mask, B, T, T, NH, HS, q_stride, kv_stride);
        attention_backward_cuda(dq, dk, dv, drel_bias, dout, att, q, k, v, B, T, T, NH, HS, q_stride, kv_stride);
        return;
    }
    int wpb, chunks;
    float* partial = watt_drel_partial(drel_bias != NULL, B, NH, T, &wpb, &chunks);
    if (watt_tc_ok(T, HS)) {   // bf16: the tensor-core kernels
        watt_tc_calls[1]++;
        watt_tc_backward(HS, dq, dk, dv, partial, dout, out, lse, q, k, v, (const float*)NULL, NULL, NULL, rel_bias,
                         mask, n_mask, B, T, NH, q_stride, kv_stride, scale, wpb, chunks);
    } else switch ((HS + 15) / 16) {
    case 1: watt_launch_bwd<1>(dq, dk, dv, partial, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale, wpb, chunks); break;
    case 2: watt_launch_bwd<2>(dq, dk, dv, partial, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale, wpb, chunks); break;
    case 3: watt_launch_bwd<3>(dq, dk, dv, partial, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale, wpb, chunks); break;
    default: watt_launch_bwd<4>(dq, dk, dv, partial, dout, out, lse, q, k, v, rel_bias, mask, n_mask, B, T, NH, HS, q_stride, kv_stride, scale, wpb, chunks); break;
    }
    if (drel_bias) watt_drel_finish(drel_bias, partial, chunks, NH, T);
}

// ----------------------------------------------------------------------------
// multi-head attention without a stored attention map, general Tq, Tk (math in ttt.h):
// Mask2Former's masked cross-attention (Tq = 100 or 48 queries, Tk up to ~8000 memory tokens)
// and self-attention (Tq = Tk = Q), head size 32. Three kernels of 128 threads, each block one
// (batch, head) and one tile of FATT_ROWS = 16 rows that it owns, streaming over the other side
// in steps of FATT_COLS = 64:
// - forward: a query tile; online softmax over key tiles (running max m and sum l per row, the
//   output rescaled by exp(m_old - m_new) whenever the max grows); writes out = o / l and
//   lse = m + log l (an all -inf row: out 0, lse -inf, as attention_forward).
// - backward dq: a query tile over key tiles; dq_i += scale sum_j dS_ij k_j.
// - backward dk, dv: a key tile over query tiles; dv_j += sum_i P_ij dout_i,
//   dk_j += scale sum_i dS_ij q_i.
//   Both recompute P_ij = exp(s_ij - lse_i) and dS_ij = P_ij (dout_i . v_j - D_i) with
//   D_i = dout_i . out_i from a small kernel. Every gradient row is owned by one block: no atomics.
// Thread t owns row r = t / 8 of the tile and, of the 64 streamed columns, c0 + 8 j (j < 8), c0 =
// t % 8; of a head-size row it owns the NC = HSP / 8 consecutive columns c0 NC ... The 8 threads
// of a row are 8 consecutive lanes of one warp: row maxima and sums reduce by shuffles within
// the group, and a row of P or dS written to shared memory by its group is read back by the same
// group after a __syncwarp. Head-size rows sit in shared memory zero-padded to HSP = 16, 32 or
// 64 floats (a template parameter; any HS <= 64) with row stride HSP + 4: float4 reads, and the 8
// rows c0 + 8 j read by a quarter-warp land on distinct banks. Rows past Tq or Tk load as zeros;
// their scores are -inf (keys) or never stored (queries). Shared memory <= 48 KiB at HSP = 64.
// Few (batch, head, query tile) blocks (h predicting one frame: 8 heads x 7 query tiles) would
// leave most SMs idle over thousands of keys, so the forward and dq kernels split the keys into
// nsplit chunks of whole key tiles (flash-decoding), about FATT_TARGET_BLOCKS blocks in all, each
// chunk's result (forward: unnormalised o with its m and l; dq: its sum) going to a workspace
// and a second kernel combining the chunks in a fixed order (no atomics, the same result on every
// run). With enough blocks (training batches) nsplit = 1 and the kernels write their rows directly.
// HS > 64 or TTT_FUSED_ATTENTION=0: the old path (attention_forward/backward_cuda with the map in
// a transient workspace, recomputed for the backward).
// In bf16 precision with HS = 16, 32, 48 or 64: the tensor-core kernels instead (below, "flash
// attention on the tensor cores").

#define FATT_THREADS 128
#define FATT_ROWS 16
#define FATT_COLS 64
#define FATT_LDW (FATT_COLS + 4)   // row stride of the (FATT_ROWS, FATT_COLS) tile of P or dS
#define FATT_TARGET_BLOCKS 1024    // key splits until the grid has about this many blocks
#define FATT_MIN_SPLIT_TILES 4     // but at least this many key tiles per split

static Workspace ws_flash;    // D of the backward; the old path's att (and out)
static Workspace ws_fsplit;   // the key splits' partial results

// Key splits for a grid of `blocks` (batch, head, query tile) blocks over Tk keys: returns
// nsplit and sets *keys_per_split (a multiple of FATT_COLS; the last split may hold fewer keys)
static int flash_key_splits(long long blocks, int Tk, int* keys_per_split) {
    long long ktiles = (Tk + FATT_COLS - 1) / FATT_COLS;
    long long n = (FATT_TARGET_BLOCKS + blocks - 1) / blocks;
    long long most = (ktiles + FATT_MIN_SPLIT_TILES - 1) / FATT_MIN_SPLIT_TILES;
    if (n > most) n = most;
    if (n < 1) n = 1;
    long long per = (ktiles + n - 1) / n;   // key tiles per split; no split is left empty
    *keys_per_split = (int)(per * FATT_COLS);
    return (int)((ktiles + per - 1) / per);
}

// the key splits of flash_key_splits and the workspace for their partial results, per_split
// floats per split (NULL when there is one split: the kernels then write their rows directly)
static float* flash_split_part(long long blocks, int Tk, size_t per_split, int* nsplit, int* keys_per_split) {
    *nsplit = flash_key_splits(blocks, Tk, keys_per_split);
    return *nsplit > 1 ? (float*)workspace_get(&ws_fsplit, (size_t)*nsplit * per_split * sizeof(float)) : NULL;
}

// s (rows, HSP + 4) = rows r0 .. r0 + rows - 1 of head h of batch b of x ((B, n) rows `stride`
// floats apart), zero past row n and past column HS (zeros add nothing to any dot product)
template <int HSP>
__device__ __forceinline__ void fatt_load(float* s, const float* x, int stride, int b, int h, int r0, int rows,
                                          int n, int HS) {
    const int LD = HSP + 4;
    for (int e = threadIdx.x; e < rows * HSP; e += FATT_THREADS) {
        int t = e / HSP, d = e % HSP, row = r0 + t;
        s[t * LD + d] = (row < n && d < HS) ? x[((size_t)b * n + row) * stride + (size_t)h * HS + d] : 0.0f;
    }
}

// acc[j] = a . B[c0 + 8 j] for j < 8 (a: one row, B: rows HSP + 4 apart, all in shared memory)
template <int HSP>
__device__ __forceinline__ void fatt_dots(float acc[8], const float* a, const float* Bm, int c0) {
    const int LD = HSP + 4;
    #pragma unroll
    for (int j = 0; j < 8; j++) acc[j] = 0.0f;
    #pragma unroll
    for (int d = 0; d < HSP; d += 4) {
        float4 x = *(const float4*)(a + d);
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            float4 y = *(const float4*)(Bm + (c0 + 8 * j) * LD + d);
            acc[j] = fmaf(x.x, y.x, acc[j]);
            acc[j] = fmaf(x.y, y.y, acc[j]);
            acc[j] = fmaf(x.z, y.z, acc[j]);
            acc[j] = fmaf(x.w, y.w, acc[j]);
        }
    }
}

// acc[c] += sum_{j < FATT_COLS} w[j] X[j, c0 NC + c] for c < NC = HSP / 8 (w: a row of weights,
// X: (FATT_COLS, HSP + 4), both in shared memory)
template <int HSP>
__device__ __forceinline__ void fatt_weighted_rows(float* acc, const float* w, const float* X, int c0) {
    const int LD = HSP + 4, NC = HSP / 8;
    #pragma unroll 4
    for (int j = 0; j < FATT_COLS; j += 4) {
        float4 w4 = *(const float4*)(w + j);
        float wj[4] = {w4.x, w4.y, w4.z, w4.w};
        #pragma unroll
        for (int u = 0; u < 4; u++) {
            const float* xr = X + (j + u) * LD + c0 * NC;
            if constexpr (NC % 4 == 0) {
                #pragma unroll
                for (int c = 0; c < NC; c += 4) {
                    float4 x = *(const float4*)(xr + c);
                    acc[c] = fmaf(wj[u], x.x, acc[c]);
                    acc[c + 1] = fmaf(wj[u], x.y, acc[c + 1]);
                    acc[c + 2] = fmaf(wj[u], x.z, acc[c + 2]);
                    acc[c + 3] = fmaf(wj[u], x.w, acc[c + 3]);
                }
            } else {
                #pragma unroll
                for (int c = 0; c < NC; c++) acc[c] = fmaf(wj[u], xr[c], acc[c]);
            }
        }
    }
}

// max and sum over the 8 lanes of a row group (every lane gets the same value)
__device__ __forceinline__ float fatt_group_max(float v) {
    for (int o = 4; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float fatt_group_sum(float v) {
    for (int o = 4; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// what a forward or dq block works on: block ((b * NH + h) * qtiles + query tile) * nsplit + key
// split: queries i0 .. i0 + rows - 1 of head h of batch b (bh = b * NH + h), keys
// k_begin .. k_end - 1 (rows: FATT_ROWS, or FATT_TC_ROWS for the tensor-core kernels)
struct FattQueryTile { int split, bh, b, h, i0, k_begin, k_end; };
__device__ __forceinline__ FattQueryTile fatt_query_tile(int NH, int Tq, int Tk, int nsplit, int keys_per_split,
                                                         int rows = FATT_ROWS) {
    FattQueryTile t;
    const int qtiles = (Tq + rows - 1) / rows;
    const int tile = blockIdx.x / nsplit;
    t.split = blockIdx.x % nsplit;
    t.bh = tile / qtiles; t.b = t.bh / NH; t.h = t.bh % NH;
    t.i0 = (tile % qtiles) * rows;
    t.k_begin = t.split * keys_per_split;
    t.k_end = min(Tk, t.k_begin + keys_per_split);
    return t;
}

// forward: grid B * NH * ceil(Tq / 16) * nsplit, block ((b * NH + h) * qtiles + query tile) *
// nsplit + key split. With nsplit > 1 the block writes its unnormalised o, m and l to part:
// o (nsplit, B * NH * Tq, HS), then m and l (nsplit, B * NH * Tq) each.
template <int HSP>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_fwd_kernel(float* out, float* lse, float* part, const float* q, const float* k, const float* v,
                           const float* mask, int n_mask, int B, int NH, int Tq, int Tk, int HS, int q_stride,
                           int kv_stride, float scale, int nsplit, int keys_per_split) {
    constexpr int LD = HSP + 4, NC = HSP / 8;
    __shared__ __align__(16) float sq[FATT_ROWS * LD];
    __shared__ __align__(16) float sk[FATT_COLS * LD];
    __shared__ __align__(16) float sv[FATT_COLS * LD];
    __shared__ __align__(16) float sp[FATT_ROWS * FATT_LDW];
    const FattQueryTile qt = fatt_query_tile(NH, Tq, Tk, nsplit, keys_per_split);
    const int split = qt.split, bh = qt.bh, b = qt.b, h = qt.h, i0 = qt.i0, k_begin = qt.k_begin, k_end = qt.k_end;
    const int r = threadIdx.x / 8, c0 = threadIdx.x % 8, i = i0 + r;
    fatt_load<HSP>(sq, q, q_stride, b, h, i0, FATT_ROWS, Tq, HS);
    const float* mrow = (mask && i < Tq) ? mask + ((size_t)(b % n_mask) * Tq + i) * Tk : NULL;
    float m = -INFINITY, l = 0.0f, o[NC];
    #pragma unroll
    for (int c = 0; c < NC; c++) o[c] = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += FATT_COLS) {
        __syncthreads();   // every thread is done with the previous k, v tile (and sq is loaded)
        fatt_load<HSP>(sk, k, kv_stride, b, h, k0, FATT_COLS, Tk, HS);
        fatt_load<HSP>(sv, v, kv_stride, b, h, k0, FATT_COLS, Tk, HS);
        __syncthreads();
        float s[8];
        fatt_dots<HSP>(s, sq + r * LD, sk, c0);
        float tmax = -INFINITY;
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            int key = k0 + c0 + 8 * j;
            s[j] = key < k_end ? s[j] * scale + (mrow ? mrow[key] : 0.0f) : -INFINITY;
            tmax = fmaxf(tmax, s[j]);
        }
        float mnew = fmaxf(m, fatt_group_max(tmax));
        float corr = 1.0f, psum = 0.0f;
        if (mnew != -INFINITY) {   // else every score so far is -inf: P = 0, nothing changes
            corr = expf(m - mnew);   // 0 when m = -inf (o and l are 0 then)
            #pragma unroll
            for (int j = 0; j < 8; j++) { s[j] = expf(s[j] - mnew); psum += s[j]; }
        } else {
            #pragma unroll
            for (int j = 0; j < 8; j++) s[j] = 0.0f;
        }
        l = l * corr + fatt_group_sum(psum);
        m = mnew;
        #pragma unroll
        for (int j = 0; j < 8; j++) sp[r * FATT_LDW + c0 + 8 * j] = s[j];
        __syncwarp();   // row r of sp is complete (written by this row group)
        #pragma unroll
        for (int c = 0; c < NC; c++) o[c] *= corr;
        fatt_weighted_rows<HSP>(o, sp + r * FATT_LDW, sv, c0);   // o += P (this tile) v
    }
    if (i >= Tq) return;
    size_t row = (size_t)bh * Tq + i;
    if (nsplit > 1) {   // this split's o, m, l for flash_attention_combine_kernel
        size_t rows = (size_t)B * NH * Tq, prow = (size_t)split * rows + row;
        #pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = c0 * NC + c;
            if (d < HS) part[prow * HS + d] = o[c];
        }
        if (c0 == 0) {
            part[(size_t)nsplit * rows * HS + prow] = m;
            part[(size_t)nsplit * rows * (HS + 1) + prow] = l;
        }
        return;
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;   // l >= 1 unless every score is -inf
    float* orow = out + ((size_t)b * Tq + i) * ((size_t)NH * HS) + (size_t)h * HS;
    #pragma unroll
    for (int c = 0; c < NC; c++) {
        int d = c0 * NC + c;
        if (d < HS) orow[d] = o[c] * inv;
    }
    if (lse && c0 == 0) lse[row] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// the key splits of the forward combined, one warp per row (b, h, i):
//   M = max_s m_s; L = sum_s l_s exp(m_s - M); out = sum_s o_s exp(m_s - M) / L; lse = M + log L
// (an all -inf row: every m_s = -inf, out 0, lse -inf)
__global__ void flash_attention_combine_kernel(float* out, float* lse, const float* part, int nsplit, int B,
                                               int NH, int Tq, int HS) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t rows = (size_t)B * NH * Tq;
    if (row >= (int)rows) return;
    const float* pm = part + (size_t)nsplit * rows * HS;
    const float* pl = part + (size_t)nsplit * rows * (HS + 1);
    float M = -INFINITY, L = 0.0f;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pm[s * rows + row]);
    if (M != -INFINITY)
        for (int s = 0; s < nsplit; s++) L += pl[s * rows + row] * expf(pm[s * rows + row] - M);
    int i = row % Tq, bh = row / Tq, b = bh / NH, h = bh % NH;
    float* orow = out + ((size_t)b * Tq + i) * ((size_t)NH * HS) + (size_t)h * HS;
    for (int d = lane; d < HS; d += 32) {
        float acc = 0.0f;
        if (L > 0.0f)
            for (int s = 0; s < nsplit; s++) acc += part[(s * rows + row) * HS + d] * expf(pm[s * rows + row] - M);
        orow[d] = L > 0.0f ? acc / L : 0.0f;
    }
    if (lse && lane == 0) lse[row] = L > 0.0f ? M + logf(L) : -INFINITY;
}

// D (B, NH, Tq): D[b, h, i] = dout_i . out_i over head h's columns; one warp per row
__global__ void flash_attention_d_kernel(float* D, const float* dout, const float* out, int B, int NH, int Tq,
                                         int HS) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= B * NH * Tq) return;
    int i = row % Tq, h = (row / Tq) % NH, b = row / (Tq * NH);
    size_t base = ((size_t)b * Tq + i) * ((size_t)NH * HS) + (size_t)h * HS;
    float acc = 0.0f;
    for (int d = lane; d < HS; d += 32) acc += dout[base + d] * out[base + d];
    acc = warp_sum(acc);
    if (lane == 0) D[row] = acc;
}

// backward dq: grid and key splits as the forward's. With nsplit > 1 the block writes its part
// of scale * sum_j dS_ij k_j to part (nsplit, B * NH * Tq, HS) for flash_attention_dq_sum_kernel.
template <int HSP>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_dq_kernel(float* dq, float* part, const float* dout, const float* lse, const float* D,
                          const float* q, const float* k, const float* v, const float* mask, int n_mask, int B,
                          int NH, int Tq, int Tk, int HS, int q_stride, int kv_stride, float scale, int nsplit,
                          int keys_per_split) {
    constexpr int LD = HSP + 4, NC = HSP / 8;
    __shared__ __align__(16) float sq[FATT_ROWS * LD];
    __shared__ __align__(16) float sdo[FATT_ROWS * LD];
    __shared__ __align__(16) float sk[FATT_COLS * LD];
    __shared__ __align__(16) float sv[FATT_COLS * LD];
    __shared__ __align__(16) float sds[FATT_ROWS * FATT_LDW];
    const FattQueryTile qt = fatt_query_tile(NH, Tq, Tk, nsplit, keys_per_split);
    const int split = qt.split, bh = qt.bh, b = qt.b, h = qt.h, i0 = qt.i0, k_begin = qt.k_begin, k_end = qt.k_end;
    const int r = threadIdx.x / 8, c0 = threadIdx.x % 8, i = i0 + r;
    fatt_load<HSP>(sq, q, q_stride, b, h, i0, FATT_ROWS, Tq, HS);
    fatt_load<HSP>(sdo, dout, NH * HS, b, h, i0, FATT_ROWS, Tq, HS);
    const float li = i < Tq ? lse[(size_t)bh * Tq + i] : -INFINITY;
    const float Di = i < Tq ? D[(size_t)bh * Tq + i] : 0.0f;
    const float* mrow = (mask && i < Tq) ? mask + ((size_t)(b % n_mask) * Tq + i) * Tk : NULL;
    float acc[NC];
    #pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += FATT_COLS) {
        __syncthreads();
        fatt_load<HSP>(sk, k, kv_stride, b, h, k0, FATT_COLS, Tk, HS);
        fatt_load<HSP>(sv, v, kv_stride, b, h, k0, FATT_COLS, Tk, HS);
        __syncthreads();
        float s[8], dp[8];
        fatt_dots<HSP>(s, sq + r * LD, sk, c0);     // q_i . k_j
        fatt_dots<HSP>(dp, sdo + r * LD, sv, c0);   // dP_ij = dout_i . v_j
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            int key = k0 + c0 + 8 * j;
            float p = 0.0f;
            if (key < k_end && li != -INFINITY) p = expf(s[j] * scale + (mrow ? mrow[key] : 0.0f) - li);
            sds[r * FATT_LDW + c0 + 8 * j] = p * (dp[j] - Di);
        }
        __syncwarp();
        fatt_weighted_rows<HSP>(acc, sds + r * FATT_LDW, sk, c0);   // sum_j dS_ij k_j
    }
    if (i >= Tq) return;
    float* g = nsplit > 1 ? part + ((size_t)split * B * NH * Tq + (size_t)bh * Tq + i) * HS
                          : dq + ((size_t)b * Tq + i) * q_stride + (size_t)h * HS;
    #pragma unroll
    for (int c = 0; c < NC; c++) {
        int d = c0 * NC + c;
        if (d >= HS) continue;
        if (nsplit > 1) g[d] = scale * acc[c];
        else g[d] += scale * acc[c];
    }
}

// dq += the key splits' parts summed in order; one thread per element (row (b, h, i), d)
__global__ void flash_attention_dq_sum_kernel(float* dq, const float* part, int nsplit, int B, int NH, int Tq,
                                              int HS, int q_stride) {
    size_t rows = (size_t)B * NH * Tq, n = rows * HS;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < nsplit; s++) acc += part[(size_t)s * n + e];
        size_t row = e / HS;
        int d = (int)(e % HS), i = (int)(row % Tq), bh = (int)(row / Tq), b = bh / NH, h = bh % NH;
        dq[((size_t)b * Tq + i) * q_stride + (size_t)h * HS + d] += acc;
    }
}

// backward dk, dv: grid B * NH * ceil(Tk / 16), block (b * NH + h) * ktiles + key tile
template <int HSP>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_dkdv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* D,
                            const float* q, const float* k, const float* v, const float* mask, int n_mask,
                            int NH, int Tq, int Tk, int HS, int q_stride, int kv_stride, float scale) {
    constexpr int LD = HSP + 4, NC = HSP / 8;
    __shared__ __align__(16) float sk[FATT_ROWS * LD];
    __shared__ __align__(16) float sv[FATT_ROWS * LD];
    __shared__ __align__(16) float sq[FATT_COLS * LD];
    __shared__ __align__(16) float sdo[FATT_COLS * LD];
    __shared__ __align__(16) float sw[FATT_ROWS * FATT_LDW];   // P^T, then dS^T
    __shared__ float slse[FATT_COLS], sD[FATT_COLS];
    const int ktiles = (Tk + FATT_ROWS - 1) / FATT_ROWS;
    const int bh = blockIdx.x / ktiles, b = bh / NH, h = bh % NH;
    const int j0 = (blockIdx.x % ktiles) * FATT_ROWS;
    const int r = threadIdx.x / 8, c0 = threadIdx.x % 8, j = j0 + r;
    fatt_load<HSP>(sk, k, kv_stride, b, h, j0, FATT_ROWS, Tk, HS);
    fatt_load<HSP>(sv, v, kv_stride, b, h, j0, FATT_ROWS, Tk, HS);
    const float* mk = mask ? mask + (size_t)(b % n_mask) * Tq * Tk : NULL;
    float adk[NC], adv[NC];
    #pragma unroll
    for (int c = 0; c < NC; c++) adk[c] = adv[c] = 0.0f;
    for (int i0 = 0; i0 < Tq; i0 += FATT_COLS) {
        __syncthreads();
        fatt_load<HSP>(sq, q, q_stride, b, h, i0, FATT_COLS, Tq, HS);
        fatt_load<HSP>(sdo, dout, NH * HS, b, h, i0, FATT_COLS, Tq, HS);
        for (int e = threadIdx.x; e < FATT_COLS; e += FATT_THREADS) {
            int i = i0 + e;
            slse[e] = i < Tq ? lse[(size_t)bh * Tq + i] : -INFINITY;
            sD[e] = i < Tq ? D[(size_t)bh * Tq + i] : 0.0f;
        }
        __syncthreads();
        float s[8], dp[8], p[8];
        fatt_dots<HSP>(s, sk + r * LD, sq, c0);     // k_j . q_i for the 8 queries i of this thread
        fatt_dots<HSP>(dp, sv + r * LD, sdo, c0);   // dP_ij = v_j . dout_i
        #pragma unroll
        for (int u = 0; u < 8; u++) {
            int cc = c0 + 8 * u, i = i0 + cc;
            float li = slse[cc];   // -inf past Tq
            p[u] = 0.0f;
            if (j < Tk && li != -INFINITY)
                p[u] = expf(s[u] * scale + (mk ? mk[(size_t)i * Tk + j] : 0.0f) - li);
            sw[r * FATT_LDW + cc] = p[u];
        }
        __syncwarp();
        fatt_weighted_rows<HSP>(adv, sw + r * FATT_LDW, sdo, c0);   // sum_i P_ij dout_i
        __syncwarp();   // the row group is done reading P before it writes dS over it
        #pragma unroll
        for (int u = 0; u < 8; u++) {
            int cc = c0 + 8 * u;
            sw[r * FATT_LDW + cc] = p[u] * (dp[u] - sD[cc]);
        }
        __syncwarp();
        fatt_weighted_rows<HSP>(adk, sw + r * FATT_LDW, sq, c0);    // sum_i dS_ij q_i
    }
    if (j < Tk) {
        size_t row = ((size_t)b * Tk + j) * kv_stride + (size_t)h * HS;
        #pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = c0 * NC + c;
            if (d >= HS) continue;
            if (dk) dk[row + d] += scale * adk[c];
            if (dv) dv[row + d] += adv[c];
        }
    }
}

// ----------------------------------------------------------------------------
// flash attention on the tensor cores: the three kernels above with their products on bf16
// operands and float32 sums (WMMA, 16 x 16 x 16 bf16 fragments, float accumulators), taken in
// bf16 precision (ttt_cuda_precision() == PRECISION_BF16) for HS = 16, 32, 48 or 64 unless
// TTT_FATT_TC=0 (or ttt_cuda_set_fatt_tc(0)); the float32 kernels above in fp32 / tf32 and for
// other head sizes. The plain reference is flash_attention_forward/backward_cpu (ttt.c); the
// algorithm is the one above (online softmax over key tiles, lse per row, D_i = dout_i . out_i
// from flash_attention_d_kernel, key splits combined in a fixed order, no float atomics, every
// gradient row written by one block). What changes:
// - A block of 4 warps owns FATT_TC_ROWS = 64 rows (warp w: rows 16 w .. 16 w + 15), so every
//   K, V (or Q, dout) tile streamed through shared memory serves 64 rows instead of 16:
//   forward and dq: 64 queries over key tiles of FATT_TC_COLS = 64; dk, dv: 64 keys over query
//   tiles of 64. A warp whose 16 rows all lie past Tq (Tk) skips the products but keeps to the
//   block's __syncthreads.
// - Tiles are loaded from float32 (float loads: rows may be only 4-byte aligned, slices of a
//   packed buffer) into shared memory as bf16, rows HS + 8 apart (WMMA wants 16-byte multiples;
//   the 8 pad the banks), zero past Tq / Tk. A warp keeps its own 16 rows (Q and dout, or K and
//   V) in A fragments for the whole kernel.
// - The fragment layout is unspecified, so every elementwise step runs on float32 tiles in
//   shared memory: the warp stores its (16, 64) product S = Q K^T (or dP = dout V^T, or the
//   transposes in dk/dv) with store_matrix_sync into its 16 rows of the float tile (64, 68);
//   two lanes per row (lane = 2 r + hf) read columns 4 c + 2 hf, 4 c + 2 hf + 1 (c < 16; float2,
//   no bank conflicts) and do scale, mask, the online softmax (running max m and sum l per row,
//   the output rescaled by exp(m_old - m_new)), P = exp(s - lse), dS = P (dP - D); P or dS goes
//   back as a bf16 tile (64, 72) for the next product. Keys past Tk (or the split) score -inf;
//   queries past Tq have lse -inf (P = 0). Column groups of 16 wholly past the keys (queries) of
//   the last tile are neither multiplied nor read.
// - Products: forward S = Q K^T, then P V into fresh fragments, stored and added by the lanes to
//   their float registers o (o = o * corr + P V); dq: S, then dP = dout V^T, then dS K summed in
//   fragments over all key tiles (no rescaling in the backward); dk, dv: S^T = K Q^T,
//   dP^T = V dout^T, dv += P^T dout, dk += dS^T Q, in fragments over all query tiles. The sums
//   leave through the float tile: scale * (dS K) to dq (or the split's part), dk += scale dS^T Q,
//   dv += P^T dout, two lanes per row.
// Precision: each bf16 operand is off by up to 2^-9 relatively; sums and the softmax are float32
// (l sums the float32 P, the product uses its bf16 copy): about 5e-3 relative L2 error on out,
// 1e-2 on the gradients (test/gpu_ops.c: bounds 2e-2 and 3e-2). exp is __expf (a few ulp).
// Shared memory (dynamic, above 48 KiB by cudaFuncSetAttribute): forward 3 head tiles + the
// float tile + a bf16 tile (41 KiB at HS 32, 53 at 64), dq 4 + 1 + 1 (46, 62), dk/dv 4 + 1 + 2
// + lse and D (56, 72).
#include <mma.h>

#define FATT_TC_ROWS 64               // rows a block owns: 4 warps x 16
#define FATT_TC_COLS 64               // streamed keys (forward, dq) or queries (dk, dv) per step
#define FATT_TC_LDS (FATT_TC_COLS + 4)   // floats between rows of the float tile
#define FATT_TC_LDP (FATT_TC_COLS + 8)   // bf16 between rows of a P or dS tile
static_assert(FATT_THREADS == 2 * FATT_TC_ROWS, "two lanes per row of a tensor-core block");
static_assert(FATT_TC_COLS == FATT_COLS, "key splits are whole key tiles of both kernel families");

typedef nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> FattA;
// B (k, n) at p[k ld + n]
typedef nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> FattB;
// B (k, n) at p[n ld + k]: B given by the rows of B^T (K or V rows for Q K^T, dout V^T)
typedef nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::col_major> FattBt;
typedef nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> FattC;

static int env_switch01(const char* name, int fallback);   // BF16 OPERANDS, below
static int fatt_tc_on = -1;     // -1 unread (TTT_FATT_TC), 0 off, 1 on
static long fatt_tc_calls;      // forward and backward calls run on the tensor cores
extern "C" void ttt_cuda_set_fatt_tc(int on) { fatt_tc_on = on < 0 ? -1 : on != 0; }
extern "C" long ttt_cuda_fatt_tc_calls(void) { return fatt_tc_calls; }

// the tensor-core kernels for this head size and precision (the fused kernels are on)
static int fatt_tc_ok(int HS) {
    if (ttt_cuda_precision() != PRECISION_BF16 || HS < 16 || HS > 64 || HS % 16 != 0) return 0;
    if (fatt_tc_on < 0) fatt_tc_on = env_switch01("TTT_FATT_TC", 1);
    return fatt_tc_on;
}

// bytes of a bf16 tile of 64 head-size rows, of the float tile, of a P / dS tile
template <int HS> constexpr size_t fatt_tc_head_bytes() { return (size_t)FATT_TC_ROWS * (HS + 8) * 2; }
constexpr size_t FATT_TC_FLOAT_BYTES = (size_t)FATT_TC_ROWS * FATT_TC_LDS * 4;
constexpr size_t FATT_TC_P_BYTES = (size_t)FATT_TC_ROWS * FATT_TC_LDP * 2;

// s (64, HS + 8) bf16 = rows r0 .. r0 + 63 of head h of batch b of x ((B, n) rows `stride` floats
// apart), zero past row n; two floats per thread and step, loaded one by one
template <int HS>
__device__ __forceinline__ void fatt_tc_load(__nv_bfloat16* s, const float* x, int stride, int b, int h, int r0,
                                             int n) {
    constexpr int LDH = HS + 8, HALF = HS / 2;
    for (int e = threadIdx.x; e < FATT_TC_ROWS * HALF; e += FATT_THREADS) {
        int t = e / HALF, d = 2 * (e % HALF), row = r0 + t;
        float a = 0.0f, c = 0.0f;
        if (row < n) {
            const float* p = x + ((size_t)b * n + row) * stride + (size_t)h * HS + d;
            a = p[0]; c = p[1];
        }
        *(__nv_bfloat162*)(s + t * LDH + d) = __floats2bfloat162_rn(a, c);
    }
}

// the warp's (16, 16 ncb) float tile t (row stride FATT_TC_LDS) = A (16, HS) . R^T, A in
// fragments, R: rows 0 .. 16 ncb - 1 (HS + 8 apart) of a bf16 tile
template <int HS>
__device__ __forceinline__ void fatt_tc_abt(float* t, const FattA* a, const __nv_bfloat16* R, int ncb) {
    for (int n = 0; n < ncb; n++) {
        FattC c;
        nvcuda::wmma::fill_fragment(c, 0.0f);
        #pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) {
            FattBt bt;
            nvcuda::wmma::load_matrix_sync(bt, R + 16 * n * (HS + 8) + 16 * kk, HS + 8);
            nvcuda::wmma::mma_sync(c, a[kk], bt, c);
        }
        nvcuda::wmma::store_matrix_sync(t + 16 * n, c, FATT_TC_LDS, nvcuda::wmma::mem_row_major);
    }
}

// acc[n] += W (16, 16 nkb) . X (16 nkb, HS) for n < HS / 16 (the 16 columns 16 n ..): W the
// warp's rows of a P / dS tile (row stride FATT_TC_LDP), X rows of a bf16 head tile
template <int HS>
__device__ __forceinline__ void fatt_tc_ab(FattC* acc, const __nv_bfloat16* W, const __nv_bfloat16* X, int nkb) {
    for (int kk = 0; kk < nkb; kk++) {
        FattA a;
        nvcuda::wmma::load_matrix_sync(a, W + 16 * kk, FATT_TC_LDP);
        #pragma unroll
        for (int n = 0; n < HS / 16; n++) {
            FattB bm;
            nvcuda::wmma::load_matrix_sync(bm, X + 16 * kk * (HS + 8) + 16 * n, HS + 8);
            nvcuda::wmma::mma_sync(acc[n], a, bm, acc[n]);
        }
    }
}

// the warp's (16, HS) fragments to its rows of the float tile
template <int HS>
__device__ __forceinline__ void fatt_tc_store(float* t, const FattC* acc) {
    #pragma unroll
    for (int n = 0; n < HS / 16; n++)
        nvcuda::wmma::store_matrix_sync(t + 16 * n, acc[n], FATT_TC_LDS, nvcuda::wmma::mem_row_major);
}

// a lane's NV values of its row of the float tile: v[2 c + e] = row[4 c + 2 hf + e]
template <int NV>
__device__ __forceinline__ void fatt_tc_read(float* v, const float* row, int hf) {
    #pragma unroll
    for (int c = 0; c < NV / 2; c++) {
        float2 x = *(const float2*)(row + 4 * c + 2 * hf);
        v[2 * c] = x.x; v[2 * c + 1] = x.y;
    }
}
// the column of value u of a lane (fatt_tc_read's order)
__device__ __forceinline__ int fatt_tc_col(int u, int hf) { return 4 * (u / 2) + 2 * hf + (u % 2); }

// a lane's 32 values of its row (fatt_tc_read's order) to a P / dS tile as bf16
__device__ __forceinline__ void fatt_tc_write(__nv_bfloat16* row, const float* v, int hf) {
    #pragma unroll
    for (int c = 0; c < 16; c++)
        *(__nv_bfloat162*)(row + 4 * c + 2 * hf) = __floats2bfloat162_rn(v[2 * c], v[2 * c + 1]);
}

// the warp's 16 rows of a bf16 head tile (row stride HS + 8) as A fragments
template <int HS>
__device__ __forceinline__ void fatt_tc_rows(FattA* a, const __nv_bfloat16* rows) {
    #pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) nvcuda::wmma::load_matrix_sync(a[kk], rows + 16 * kk, HS + 8);
}

// forward: grid B * NH * ceil(Tq / 64) * nsplit, blocks as flash_attention_fwd_kernel's (with 64
// queries); with nsplit > 1 o, m, l to part as there
template <int HS>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_fwd_tc_kernel(float* out, float* lse, float* part, const float* q, const float* k, const float* v,
                              const float* mask, int n_mask, int B, int NH, int Tq, int Tk, int q_stride,
                              int kv_stride, float scale, int nsplit, int keys_per_split) {
    constexpr int LDH = HS + 8;
    extern __shared__ __align__(128) unsigned char fatt_tc_smem[];
    __nv_bfloat16* sq = (__nv_bfloat16*)fatt_tc_smem;                      // (64, HS + 8) queries
    __nv_bfloat16* sk = sq + FATT_TC_ROWS * LDH;                            // (64, HS + 8) keys
    __nv_bfloat16* sv = sk + FATT_TC_COLS * LDH;                            // (64, HS + 8) values
    float* st = (float*)(sv + FATT_TC_COLS * LDH);                          // (64, 68) S, then P V
    __nv_bfloat16* sp = (__nv_bfloat16*)(st + FATT_TC_ROWS * FATT_TC_LDS);  // (64, 72) P
    const FattQueryTile qt = fatt_query_tile(NH, Tq, Tk, nsplit, keys_per_split, FATT_TC_ROWS);
    const int b = qt.b, h = qt.h, k_end = qt.k_end;
    const int w0 = 16 * (threadIdx.x / 32), lane = threadIdx.x % 32, hf = lane % 2, r = w0 + lane / 2;
    const int i = qt.i0 + r;
    const bool active = qt.i0 + w0 < Tq;   // the same for the whole warp
    float* trow = st + r * FATT_TC_LDS;
    fatt_tc_load<HS>(sq, q, q_stride, b, h, qt.i0, Tq);
    __syncthreads();
    FattA qa[HS / 16];
    if (active) fatt_tc_rows<HS>(qa, sq + w0 * LDH);
    const float* mrow = (mask && i < Tq) ? mask + ((size_t)(b % n_mask) * Tq + i) * Tk : NULL;
    float m = -INFINITY, l = 0.0f, o[HS / 2];
    #pragma unroll
    for (int c = 0; c < HS / 2; c++) o[c] = 0.0f;
    for (int k0 = qt.k_begin; k0 < k_end; k0 += FATT_TC_COLS) {
        __syncthreads();   // every warp is done with the previous k, v tile
        fatt_tc_load<HS>(sk, k, kv_stride, b, h, k0, Tk);
        fatt_tc_load<HS>(sv, v, kv_stride, b, h, k0, Tk);
        __syncthreads();
        if (!active) continue;
        const int ncb = min(FATT_TC_COLS / 16, (k_end - k0 + 15) / 16);   // column groups holding keys
        fatt_tc_abt<HS>(st + w0 * FATT_TC_LDS, qa, sk, ncb);               // S = Q K^T
        __syncwarp();
        float s[32];
        fatt_tc_read<32>(s, trow, hf);
        float tmax = -INFINITY;
        #pragma unroll
        for (int u = 0; u < 32; u++) {
            int key = k0 + fatt_tc_col(u, hf);
            s[u] = key < k_end ? s[u] * scale + (mrow ? mrow[key] : 0.0f) : -INFINITY;
            tmax = fmaxf(tmax, s[u]);
        }
        float mnew = fmaxf(m, fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1)));
        float corr = 1.0f, psum = 0.0f;
        if (mnew != -INFINITY) {   // else every score so far is -inf: P = 0, nothing changes
            corr = __expf(m - mnew);   // 0 when m = -inf (o and l are 0 then)
            #pragma unroll
            for (int u = 0; u < 32; u++) { s[u] = __expf(s[u] - mnew); psum += s[u]; }
        } else {
            #pragma unroll
            for (int u = 0; u < 32; u++) s[u] = 0.0f;
        }
        l = l * corr + psum + __shfl_xor_sync(0xffffffffu, psum, 1);
        m = mnew;
        fatt_tc_write(sp + r * FATT_TC_LDP, s, hf);
        __syncwarp();   // the warp's rows of P are complete (and every lane has read its S)
        FattC pv[HS / 16];
        #pragma unroll
        for (int n = 0; n < HS / 16; n++) nvcuda::wmma::fill_fragment(pv[n], 0.0f);
        fatt_tc_ab<HS>(pv, sp + w0 * FATT_TC_LDP, sv, ncb);   // P V of this tile
        fatt_tc_store<HS>(st + w0 * FATT_TC_LDS, pv);
        __syncwarp();
        float t[HS / 2];
        fatt_tc_read<HS / 2>(t, trow, hf);
        #pragma unroll
        for (int c = 0; c < HS / 2; c++) o[c] = o[c] * corr + t[c];
    }
    if (!active || i >= Tq) return;
    size_t row = (size_t)qt.bh * Tq + i;
    if (nsplit > 1) {   // this split's o, m, l for flash_attention_combine_kernel
        size_t rows = (size_t)B * NH * Tq, prow = (size_t)qt.split * rows + row;
        #pragma unroll
        for (int u = 0; u < HS / 2; u++) part[prow * HS + fatt_tc_col(u, hf)] = o[u];
        if (hf == 0) {
            part[(size_t)nsplit * rows * HS + prow] = m;
            part[(size_t)nsplit * rows * (HS + 1) + prow] = l;
        }
        return;
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;   // l >= 1 unless every score is -inf
    float* orow = out + ((size_t)b * Tq + i) * ((size_t)NH * HS) + (size_t)h * HS;
    #pragma unroll
    for (int u = 0; u < HS / 2; u++) orow[fatt_tc_col(u, hf)] = o[u] * inv;
    if (lse && hf == 0) lse[row] = l > 0.0f ? m + logf(l) : -INFINITY;
}

// backward dq: grid and key splits as the forward's; with nsplit > 1 scale * sum_j dS_ij k_j to
// part (nsplit, B * NH * Tq, HS) for flash_attention_dq_sum_kernel
template <int HS>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_dq_tc_kernel(float* dq, float* part, const float* dout, const float* lse, const float* D,
                             const float* q, const float* k, const float* v, const float* mask, int n_mask, int B,
                             int NH, int Tq, int Tk, int q_stride, int kv_stride, float scale, int nsplit,
                             int keys_per_split) {
    constexpr int LDH = HS + 8;
    extern __shared__ __align__(128) unsigned char fatt_tc_smem[];
    __nv_bfloat16* sq = (__nv_bfloat16*)fatt_tc_smem;                      // (64, HS + 8) queries
    __nv_bfloat16* sdo = sq + FATT_TC_ROWS * LDH;                           // (64, HS + 8) their dout
    __nv_bfloat16* sk = sdo + FATT_TC_ROWS * LDH;                           // (64, HS + 8) keys
    __nv_bfloat16* sv = sk + FATT_TC_COLS * LDH;                            // (64, HS + 8) values
    float* st = (float*)(sv + FATT_TC_COLS * LDH);                          // (64, 68) S, dP, dS K
    __nv_bfloat16* sds = (__nv_bfloat16*)(st + FATT_TC_ROWS * FATT_TC_LDS); // (64, 72) dS
    const FattQueryTile qt = fatt_query_tile(NH, Tq, Tk, nsplit, keys_per_split, FATT_TC_ROWS);
    const int b = qt.b, h = qt.h, bh = qt.bh, k_end = qt.k_end;
    const int w0 = 16 * (threadIdx.x / 32), lane = threadIdx.x % 32, hf = lane % 2, r = w0 + lane / 2;
    const int i = qt.i0 + r;
    const bool active = qt.i0 + w0 < Tq;
    float* trow = st + r * FATT_TC_LDS;
    fatt_tc_load<HS>(sq, q, q_stride, b, h, qt.i0, Tq);
    fatt_tc_load<HS>(sdo, dout, NH * HS, b, h, qt.i0, Tq);
    __syncthreads();
    FattA qa[HS / 16], da[HS / 16];
    if (active) {
        fatt_tc_rows<HS>(qa, sq + w0 * LDH);
        fatt_tc_rows<HS>(da, sdo + w0 * LDH);
    }
    const float li = i < Tq ? lse[(size_t)bh * Tq + i] : -INFINITY;
    const float Di = i < Tq ? D[(size_t)bh * Tq + i] : 0.0f;
    const float* mrow = (mask && i < Tq) ? mask + ((size_t)(b % n_mask) * Tq + i) * Tk : NULL;
    FattC acc[HS / 16];
    #pragma unroll
    for (int n = 0; n < HS / 16; n++) nvcuda::wmma::fill_fragment(acc[n], 0.0f);
    for (int k0 = qt.k_begin; k0 < k_end; k0 += FATT_TC_COLS) {
        __syncthreads();
        fatt_tc_load<HS>(sk, k, kv_stride, b, h, k0, Tk);
        fatt_tc_load<HS>(sv, v, kv_stride, b, h, k0, Tk);
        __syncthreads();
        if (!active) continue;
        const int ncb = min(FATT_TC_COLS / 16, (k_end - k0 + 15) / 16);
        fatt_tc_abt<HS>(st + w0 * FATT_TC_LDS, qa, sk, ncb);   // S = Q K^T
        __syncwarp();
        float p[32], dp[32];
        fatt_tc_read<32>(p, trow, hf);
        #pragma unroll
        for (int u = 0; u < 32; u++) {
            int key = k0 + fatt_tc_col(u, hf);
            p[u] = (key < k_end && li != -INFINITY)
                 ? __expf(p[u] * scale + (mrow ? mrow[key] : 0.0f) - li) : 0.0f;
        }
        __syncwarp();   // every lane has read its S before dP goes over it
        fatt_tc_abt<HS>(st + w0 * FATT_TC_LDS, da, sv, ncb);   // dP = dout V^T
        __syncwarp();
        fatt_tc_read<32>(dp, trow, hf);
        #pragma unroll
        for (int u = 0; u < 32; u++) dp[u] = p[u] > 0.0f ? p[u] * (dp[u] - Di) : 0.0f;   // dS
        fatt_tc_write(sds + r * FATT_TC_LDP, dp, hf);
        __syncwarp();
        fatt_tc_ab<HS>(acc, sds + w0 * FATT_TC_LDP, sk, ncb);   // += dS K
    }
    if (!active) return;
    fatt_tc_store<HS>(st + w0 * FATT_TC_LDS, acc);   // every lane has read its last dP
    __syncwarp();
    if (i >= Tq) return;
    float t[HS / 2];
    fatt_tc_read<HS / 2>(t, trow, hf);
    if (nsplit > 1) {
        float* g = part + ((size_t)qt.split * B * NH * Tq + (size_t)bh * Tq + i) * HS;
        #pragma unroll
        for (int u = 0; u < HS / 2; u++) g[fatt_tc_col(u, hf)] = scale * t[u];
    } else {
        float* g = dq + ((size_t)b * Tq + i) * q_stride + (size_t)h * HS;
        #pragma unroll
        for (int u = 0; u < HS / 2; u++) g[fatt_tc_col(u, hf)] += scale * t[u];
    }
}

// backward dk, dv: grid B * NH * ceil(Tk / 64), block (b * NH + h) * ktiles + key tile, over all
// query tiles
template <int HS>
__global__ void __launch_bounds__(FATT_THREADS)
flash_attention_dkdv_tc_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* D,
                               const float* q, const float* k, const float* v, const float* mask, int n_mask,
                               int NH, int Tq, int Tk, int q_stride, int kv_stride, float scale) {
    constexpr int LDH = HS + 8;
    extern __shared__ __align__(128) unsigned char fatt_tc_smem[];
    __nv_bfloat16* sk = (__nv_bfloat16*)fatt_tc_smem;                      // (64, HS + 8) keys
    __nv_bfloat16* sv = sk + FATT_TC_ROWS * LDH;                            // (64, HS + 8) values
    __nv_bfloat16* sq = sv + FATT_TC_ROWS * LDH;                            // (64, HS + 8) queries
    __nv_bfloat16* sdo = sq + FATT_TC_COLS * LDH;                           // (64, HS + 8) their dout
    float* st = (float*)(sdo + FATT_TC_COLS * LDH);                         // (64, 68) S^T, dP^T, sums
    __nv_bfloat16* sp = (__nv_bfloat16*)(st + FATT_TC_ROWS * FATT_TC_LDS);  // (64, 72) P^T
    __nv_bfloat16* sds = sp + FATT_TC_ROWS * FATT_TC_LDP;                   // (64, 72) dS^T
    float* slse = (float*)(sds + FATT_TC_ROWS * FATT_TC_LDP);               // (64) lse of the queries
    float* sD = slse + FATT_TC_COLS;                                        // (64) their D
    const int ktiles = (Tk + FATT_TC_ROWS - 1) / FATT_TC_ROWS;
    const int bh = blockIdx.x / ktiles, b = bh / NH, h = bh % NH;
    const int j0 = (blockIdx.x % ktiles) * FATT_TC_ROWS;
    const int w0 = 16 * (threadIdx.x / 32), lane = threadIdx.x % 32, hf = lane % 2, r = w0 + lane / 2;
    const int j = j0 + r;
    const bool active = j0 + w0 < Tk;
    float* trow = st + r * FATT_TC_LDS;
    fatt_tc_load<HS>(sk, k, kv_stride, b, h, j0, Tk);
    fatt_tc_load<HS>(sv, v, kv_stride, b, h, j0, Tk);
    __syncthreads();
    FattA ka[HS / 16], va[HS / 16];
    if (active) {
        fatt_tc_rows<HS>(ka, sk + w0 * LDH);
        fatt_tc_rows<HS>(va, sv + w0 * LDH);
    }
    const float* mk = (mask && j < Tk) ? mask + (size_t)(b % n_mask) * Tq * Tk + j : NULL;   // column j
    FattC adk[HS / 16], adv[HS / 16];
    #pragma unroll
    for (int n = 0; n < HS / 16; n++) {
        nvcuda::wmma::fill_fragment(adk[n], 0.0f);
        nvcuda::wmma::fill_fragment(adv[n], 0.0f);
    }
    for (int i0 = 0; i0 < Tq; i0 += FATT_TC_COLS) {
        __syncthreads();
        fatt_tc_load<HS>(sq, q, q_stride, b, h, i0, Tq);
        fatt_tc_load<HS>(sdo, dout, NH * HS, b, h, i0, Tq);
        for (int e = threadIdx.x; e < FATT_TC_COLS; e += FATT_THREADS) {
            int iq = i0 + e;
            slse[e] = iq < Tq ? lse[(size_t)bh * Tq + iq] : -INFINITY;
            sD[e] = iq < Tq ? D[(size_t)bh * Tq + iq] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int ncb = min(FATT_TC_COLS / 16, (Tq - i0 + 15) / 16);   // column groups holding queries
        fatt_tc_abt<HS>(st + w0 * FATT_TC_LDS, ka, sq, ncb);   // S^T = K Q^T
        __syncwarp();
        float p[32], dp[32];
        fatt_tc_read<32>(p, trow, hf);
        #pragma unroll
        for (int u = 0; u < 32; u++) {
            int cc = fatt_tc_col(u, hf), iq = i0 + cc;
            float li = slse[cc];   // -inf past Tq
            p[u] = (j < Tk && li != -INFINITY)
                 ? __expf(p[u] * scale + (mk ? mk[(size_t)iq * Tk] : 0.0f) - li) : 0.0f;
        }
        fatt_tc_write(sp + r * FATT_TC_LDP, p, hf);
        __syncwarp();   // P^T complete; every lane has read its S^T before dP^T goes over it
        fatt_tc_abt<HS>(st + w0 * FATT_TC_LDS, va, sdo, ncb);   // dP^T = V dout^T
        fatt_tc_ab<HS>(adv, sp + w0 * FATT_TC_LDP, sdo, ncb);    // dv += P^T dout
        __syncwarp();
        fatt_tc_read<32>(dp, trow, hf);
        #pragma unroll
        for (int u = 0; u < 32; u++) dp[u] = p[u] > 0.0f ? p[u] * (dp[u] - sD[fatt_tc_col(u, hf)]) : 0.0f;   // dS^T
        fatt_tc_write(sds + r * FATT_TC_LDP, dp, hf);
        __syncwarp();
        fatt_tc_ab<HS>(adk, sds + w0 * FATT_TC_LDP, sq, ncb);    // dk += dS^T Q (scale at the end)
    }
    if (!active) return;
    float t[HS / 2];
    size_t row = ((size_t)b * Tk + j) * kv_stride + (size_t)h * HS;
    if (dk) {
        fatt_tc_store<HS>(st + w0 * FATT_TC_LDS, adk);   // every lane has read its last dP^T
        __syncwarp();
        fatt_tc_read<HS / 2>(t, trow, hf);
        if (j < Tk) {
            #pragma unroll
            for (int u = 0; u < HS / 2; u++) dk[row + fatt_tc_col(u, hf)] += scale * t[u];
        }
        __syncwarp();   // every lane has read its dk row before dv goes over it
    }
    if (dv) {
        fatt_tc_store<HS>(st + w0 * FATT_TC_LDS, adv);
        __syncwarp();
        fatt_tc_read<HS / 2>(t, trow, hf);
        if (j < Tk) {
            #pragma unroll
            for (int u = 0; u < HS / 2; u++) dv[row + fatt_tc_col(u, hf)] += t[u];
        }
    }
}

// the key splits' partial results (flash_split_part) combined into out / lse, or summed into dq
// (+=), in a fixed order; nothing to do with one split
static void flash_combine_splits(float* out, float* lse, const float* part, int nsplit, int B, int NH, int Tq,
                                 int HS) {
    if (nsplit <= 1) return;
    size_t rows = (size_t)B * NH * Tq;
    flash_attention_combine_kernel<<<(unsigned)((rows + 7) / 8), 256>>>(out, lse, part, nsplit, B, NH, Tq, HS);
    launchCheck();
}
static void flash_dq_sum_splits(float* dq, const float* part, int nsplit, int B, int NH, int Tq, int HS,
                                int q_stride) {
    if (nsplit <= 1) return;
    size_t n = (size_t)B * NH * Tq * HS;
    flash_attention_dq_sum_kernel<<<grid_for(n, 256), 256>>>(dq, part, nsplit, B, NH, Tq, HS, q_stride);
    launchCheck();
}

template <int HS>
static void fatt_tc_launch_fwd(float* out, float* lse, const float* q, const float* k, const float* v,
                               const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int q_stride,
                               int kv_stride, float scale) {
    static size_t smem_raised = 0;
    const size_t smem = 3 * fatt_tc_head_bytes<HS>() + FATT_TC_FLOAT_BYTES + FATT_TC_P_BYTES;
    smem_limit_raise(flash_attention_fwd_tc_kernel<HS>, smem, &smem_raised);
    long long blocks = (long long)B * NH * ((Tq + FATT_TC_ROWS - 1) / FATT_TC_ROWS);
    size_t rows = (size_t)B * NH * Tq;
    int nsplit = 1, keys_per_split = 0;
    float* part = flash_split_part(blocks, Tk, rows * (HS + 2), &nsplit, &keys_per_split);
    flash_attention_fwd_tc_kernel<HS><<<(unsigned)(blocks * nsplit), FATT_THREADS, smem>>>(
        out, lse, part, q, k, v, mask, n_mask, B, NH, Tq, Tk, q_stride, kv_stride, scale, nsplit, keys_per_split);
    launchCheck();
    flash_combine_splits(out, lse, part, nsplit, B, NH, Tq, HS);
}

template <int HS>
static void fatt_tc_launch_bwd(float* dq, float* dk, float* dv, const float* dout, const float* lse,
                               const float* D, const float* q, const float* k, const float* v,
                               const float* mask, int n_mask, int B, int Tq, int Tk, int NH,
                               int q_stride, int kv_stride, float scale) {
    if (dq) {
        static size_t smem_raised = 0;
        const size_t smem = 4 * fatt_tc_head_bytes<HS>() + FATT_TC_FLOAT_BYTES + FATT_TC_P_BYTES;
        smem_limit_raise(flash_attention_dq_tc_kernel<HS>, smem, &smem_raised);
        long long blocks = (long long)B * NH * ((Tq + FATT_TC_ROWS - 1) / FATT_TC_ROWS);
        size_t n = (size_t)B * NH * Tq * HS;
        int nsplit = 1, keys_per_split = 0;
        float* part = flash_split_part(blocks, Tk, n, &nsplit, &keys_per_split);
        flash_attention_dq_tc_kernel<HS><<<(unsigned)(blocks * nsplit), FATT_THREADS, smem>>>(
            dq, part, dout, lse, D, q, k, v, mask, n_mask, B, NH, Tq, Tk, q_stride, kv_stride, scale, nsplit,
            keys_per_split);
        launchCheck();
        flash_dq_sum_splits(dq, part, nsplit, B, NH, Tq, HS, q_stride);
    }
    if (dk || dv) {
        static size_t smem_raised = 0;
        const size_t smem = 4 * fatt_tc_head_bytes<HS>() + FATT_TC_FLOAT_BYTES + 2 * FATT_TC_P_BYTES +
                            2 * FATT_TC_COLS * sizeof(float);
        smem_limit_raise(flash_attention_dkdv_tc_kernel<HS>, smem, &smem_raised);
        long long blocks = (long long)B * NH * ((Tk + FATT_TC_ROWS - 1) / FATT_TC_ROWS);
        flash_attention_dkdv_tc_kernel<HS><<<(unsigned)blocks, FATT_THREADS, smem>>>(
            dk, dv, dout, lse, D, q, k, v, mask, n_mask, NH, Tq, Tk, q_stride, kv_stride, scale);
        launchCheck();
    }
}

// the fused kernels for this head size (else the old path)
static int flash_fused_ok(int HS) {
    return fused_attention_on() && HS >= 1 && HS <= 64;
}

template <int HSP>
static void flash_launch_fwd(float* out, float* lse, const float* q, const float* k, const float* v,
                             const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                             int q_stride, int kv_stride, float scale) {
    long long blocks = (long long)B * NH * ((Tq + FATT_ROWS - 1) / FATT_ROWS);
    size_t rows = (size_t)B * NH * Tq;
    int nsplit = 1, keys_per_split = 0;
    float* part = flash_split_part(blocks, Tk, rows * (HS + 2), &nsplit, &keys_per_split);
    flash_attention_fwd_kernel<HSP><<<(unsigned)(blocks * nsplit), FATT_THREADS>>>(
        out, lse, part, q, k, v, mask, n_mask, B, NH, Tq, Tk, HS, q_stride, kv_stride, scale, nsplit,
        keys_per_split);
    launchCheck();
    flash_combine_splits(out, lse, part, nsplit, B, NH, Tq, HS);
}

template <int HSP>
static void flash_launch_bwd(float* dq, float* dk, float* dv, const float* dout, const float* lse,
                             const float* D, const float* q, const float* k, const float* v,
                             const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                             int q_stride, int kv_stride, float scale) {
    if (dq) {
        long long blocks = (long long)B * NH * ((Tq + FATT_ROWS - 1) / FATT_ROWS);
        size_t n = (size_t)B * NH * Tq * HS;
        int nsplit = 1, keys_per_split = 0;
        float* part = flash_split_part(blocks, Tk, n, &nsplit, &keys_per_split);
        flash_attention_dq_kernel<HSP><<<(unsigned)(blocks * nsplit), FATT_THREADS>>>(
            dq, part, dout, lse, D, q, k, v, mask, n_mask, B, NH, Tq, Tk, HS, q_stride, kv_stride, scale, nsplit,
            keys_per_split);
        launchCheck();
        flash_dq_sum_splits(dq, part, nsplit, B, NH, Tq, HS, q_stride);
    }
    if (dk || dv) {
        long long blocks = (long long)B * NH * ((Tk + FATT_ROWS - 1) / FATT_ROWS);
        flash_attention_dkdv_kernel<HSP><<<(unsigned)blocks, FATT_THREADS>>>(dk, dv, dout, lse, D, q, k, v, mask,
                                                                             n_mask, NH, Tq, Tk, HS, q_stride,
                                                                             kv_stride, scale);
        launchCheck();
    }
}

extern "C" void flash_attention_forward_cuda(float* out, float* lse, const float* q, const float* k,
                                             const float* v, const float* mask, int n_mask, int B, int Tq,
                                             int Tk, int NH, int HS, int q_stride, int kv_stride) {
    OpTimer timer("flash_attention_forward");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    if (n_mask <= 0) n_mask = 1;
    float scale = 1.0f / sqrtf((float)HS);
    if (!flash_fused_ok(HS)) {
        // old path: the attention map in a workspace, thrown away; lse from its own kernel
        float* att = (float*)workspace_get(&ws_flash, (size_t)B * NH * Tq * Tk * sizeof(float));
        attention_forward_cuda(out, att, q, k, v, NULL, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
        if (lse) {
            int rows = B * NH * Tq;
            watt_lse_kernel<<<(rows + 7) / 8, 256>>>(lse, q, k, NULL, mask, n_mask, B, NH, Tq, Tk, HS,
                                                     q_stride, kv_stride, scale);
            launchCheck();
        }
        return;
    }
    if (fatt_tc_ok(HS)) {   // bf16: the tensor-core kernels
        fatt_tc_calls++;
        if (HS == 16) fatt_tc_launch_fwd<16>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else if (HS == 32) fatt_tc_launch_fwd<32>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else if (HS == 48) fatt_tc_launch_fwd<48>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else fatt_tc_launch_fwd<64>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        return;
    }
    if (HS <= 16) flash_launch_fwd<16>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
    else if (HS <= 32) flash_launch_fwd<32>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
    else flash_launch_fwd<64>(out, lse, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
}

extern "C" void flash_attention_backward_cuda(float* dq, float* dk, float* dv, const float* dout,
                                              const float* out, const float* lse, const float* q,
                                              const float* k, const float* v, const float* mask, int n_mask,
                                              int B, int Tq, int Tk, int NH, int HS, int q_stride,
                                              int kv_stride) {
    OpTimer timer("flash_attention_backward");
    if (!out || !lse) ttt_die("flash_attention_backward: the forward's out and lse are required");
    if (B <= 0 || Tq <= 0 || Tk <= 0 || NH <= 0) return;
    if (!dq && !dk && !dv) return;
    if (n_mask <= 0) n_mask = 1;
    float scale = 1.0f / sqrtf((float)HS);
    if (!flash_fused_ok(HS)) {
        // old path: recompute the attention map (and out, thrown away) into the workspace
        size_t natt = (size_t)B * NH * Tq * Tk, nout = (size_t)B * Tq * NH * HS;
        float* att = (float*)workspace_get(&ws_flash, (natt + nout) * sizeof(float));
        attention_forward_cuda(att + natt, att, q, k, v, NULL, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride);
        attention_backward_cuda(dq, dk, dv, NULL, dout, att, q, k, v, B, Tq, Tk, NH, HS, q_stride, kv_stride);
        return;
    }
    int rows = B * NH * Tq;
    float* D = (float*)workspace_get(&ws_flash, (size_t)rows * sizeof(float));
    flash_attention_d_kernel<<<(rows + 7) / 8, 256>>>(D, dout, out, B, NH, Tq, HS);
    launchCheck();
    if (fatt_tc_ok(HS)) {   // bf16: the tensor-core kernels
        fatt_tc_calls++;
        if (HS == 16) fatt_tc_launch_bwd<16>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else if (HS == 32) fatt_tc_launch_bwd<32>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else if (HS == 48) fatt_tc_launch_bwd<48>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        else fatt_tc_launch_bwd<64>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, q_stride, kv_stride, scale);
        return;
    }
    if (HS <= 16) flash_launch_bwd<16>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
    else if (HS <= 32) flash_launch_bwd<32>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
    else flash_launch_bwd<64>(dq, dk, dv, dout, lse, D, q, k, v, mask, n_mask, B, Tq, Tk, NH, HS, q_stride, kv_stride, scale);
}

// ----------------------------------------------------------------------------
// bias gather: out (NH, N), out[h, n] = table[index[n] * NH + h]; the backward
// scatter-adds (several n share one table row: atomics)

__global__ void bias_gather_kernel(float* out, float* table, const int* index, int N, int NH, int backward) {
    size_t total = (size_t)N * NH;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int h = i / N, n = i % N;
        size_t src = (size_t)index[n] * NH + h;
        if (!backward) out[i] = table[src];
        else atomicAdd(&table[src], out[i]);
    }
}

extern "C" void bias_gather_forward_cuda(float* out, const float* table, const int* index, int N, int NH) {
    OpTimer timer("bias_gather_forward");
    if ((size_t)N * NH == 0) return;
    bias_gather_kernel<<<grid_for((size_t)N * NH, 256), 256>>>(out, (float*)table, index, N, NH, 0); launchCheck();
}
extern "C" void bias_gather_backward_cuda(float* dtable, const float* dout, const int* index, int N, int NH) {
    OpTimer timer("bias_gather_backward");
    if ((size_t)N * NH == 0) return;
    bias_gather_kernel<<<grid_for((size_t)N * NH, 256), 256>>>((float*)dout, dtable, index, N, NH, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// Swin windows: token (w, t) of image b reads padded-and-rolled pixel window_source (ttt_index.h);
// -1 = padding

// one thread per window-token element (b, w, t, c). `dir`: 0 partition forward
// (win = inp[src]), 1 partition backward (dimg[src] += dwin), 2 reverse forward
// (img[src] = win), 3 reverse backward (dwin += dimg[src]). Each pixel appears in
// exactly one window slot, so no two threads touch one element.
__global__ void window_kernel(float* win, float* img, int B, int H, int W, int C, int ws, int shift, int dir) {
    int nWh = (H + ws - 1) / ws, nWw = (W + ws - 1) / ws, T = ws * ws;
    size_t total = (size_t)B * nWh * nWw * T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = i % C;
        size_t tok = i / C;
        int t = tok % T;
        size_t bw = tok / T;
        int w = bw % (nWh * nWw), b = bw / (nWh * nWw);
        long src = window_source(b, w, t, H, W, ws, shift, nWw);
        if (dir == 0) win[i] = src < 0 ? 0.0f : img[(size_t)src * C + c];
        else if (src >= 0) {
            if (dir == 1) img[(size_t)src * C + c] += win[i];
            else if (dir == 2) img[(size_t)src * C + c] = win[i];
            else win[i] += img[(size_t)src * C + c];
        }
    }
}

static void window_launch(float* win, float* img, int B, int H, int W, int C, int ws, int shift, int dir) {
    size_t total = (size_t)B * ((H + ws - 1) / ws) * ((W + ws - 1) / ws) * ws * ws * C;
    if (total == 0) return;
    window_kernel<<<grid_for(total, 256), 256>>>(win, img, B, H, W, C, ws, shift, dir); launchCheck();
}

extern "C" void window_partition_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
    OpTimer timer("window_partition_forward");
    window_launch(out, (float*)inp, B, H, W, C, ws, shift, 0);
}
extern "C" void window_partition_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
    OpTimer timer("window_partition_backward");
    window_launch((float*)dout, dinp, B, H, W, C, ws, shift, 1);
}
extern "C" void window_reverse_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift) {
    OpTimer timer("window_reverse_forward");
    window_launch((float*)inp, out, B, H, W, C, ws, shift, 2);
}
extern "C" void window_reverse_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift) {
    OpTimer timer("window_reverse_backward");
    window_launch(dinp, (float*)dout, B, H, W, C, ws, shift, 3);
}

// ----------------------------------------------------------------------------
// Swin block fusions (ttt.h): the window ops fused with the LayerNorm, residual and drop-path
// around them. Products that the unfused chain rounds on their own are written __fmul_rn so
// that nvcc does not contract them into an fma: the results equal the unfused kernels'.
// (window_token_source, the LayerNorm row helpers and norm_param_grad's window rows: above.)

// one warp per window token: layernorm_forward_kernel's arithmetic on its source pixel
__global__ void layernorm_partition_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                                   const float* weight, const float* bias, size_t ntok,
                                                   int H, int W, int C, int ws, int shift) {
    size_t tok = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (tok >= ntok) return;
    long src = window_token_source(tok, H, W, ws, shift, NULL);
    float* y = out + tok * C;
    if (src < 0) {   // padding: zeros after the LayerNorm
        for (int c = lane; c < C; c += 32) y[c] = 0.0f;
        return;
    }
    float m, r;
    layernorm_row_warp(y, &m, &r, inp + (size_t)src * C, weight, bias, C, lane);
    if (lane == 0) {
        if (mean) mean[src] = m;
        if (rstd) rstd[src] = r;
    }
}

// one warp per window token: layernorm_backward_kernel with dout read in window order
__global__ void layernorm_partition_backward_kernel(float* dinp, const float* dout, const float* inp,
                                                    const float* weight, const float* mean, const float* rstd,
                                                    size_t ntok, int H, int W, int C, int ws, int shift) {
    size_t tok = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (tok >= ntok) return;
    long src = window_token_source(tok, H, W, ws, shift, NULL);
    if (src < 0) return;   // padding: its gradient goes nowhere
    layernorm_row_backward_warp(dinp + (size_t)src * C, dout + tok * C, inp + (size_t)src * C, weight, mean[src],
                                rstd[src], C, lane);
}

// window_reverse_residual: a group of G lanes per window token (consecutive lanes on consecutive
// channels, float4 units when vec: C % 4 == 0 and every pointer 16-byte aligned); the token's
// source pixel and image computed once per token. Pixel src = residual + s * (window + bias), the
// bias (C, or NULL) read one float at a time (a bias in the packed parameters is 4-byte aligned).
template <int VEC>
__global__ void window_reverse_residual_forward_kernel(float* out, const float* inp, const float* bias,
                                                       const float* residual, const float* scale, long ntok,
                                                       int H, int W, int C, int ws, int shift, int G) {
    int ng = blockDim.x / G, l = threadIdx.x % G, U = C / VEC;
    for (long tok = (long)blockIdx.x * ng + threadIdx.x / G; tok < ntok; tok += (long)gridDim.x * ng) {
        int b;
        long src = window_token_source((size_t)tok, H, W, ws, shift, &b);
        if (src < 0) continue;   // padding is cropped away
        float s = scale ? scale[b] : 1.0f;
        const float* win = inp + (size_t)tok * C;
        const float* res = residual + (size_t)src * C;
        float* o = out + (size_t)src * C;
        for (int u = l; u < U; u += G) {
            float x[VEC], r[VEC];
            load_unit<VEC>(x, win + (size_t)u * VEC);
            load_unit<VEC>(r, res + (size_t)u * VEC);
            if (bias)
                for (int j = 0; j < VEC; j++) x[j] = __fadd_rn(x[j], bias[u * VEC + j]);
            for (int j = 0; j < VEC; j++) x[j] = __fmul_rn(x[j], s) + r[j];
            store_unit<VEC>(o + (size_t)u * VEC, x);
        }
    }
}

// WRITES (ttt.h): dresidual[src] = dout[src]; dwindow = s * dout[src], 0 on padding tokens. Each
// pixel is one window slot: race-free.
template <int VEC>
__global__ void window_reverse_residual_backward_kernel(float* dresidual, float* dinp, const float* dout,
                                                        const float* scale, long ntok, int H, int W, int C,
                                                        int ws, int shift, int G) {
    int ng = blockDim.x / G, l = threadIdx.x % G, U = C / VEC;
    for (long tok = (long)blockIdx.x * ng + threadIdx.x / G; tok < ntok; tok += (long)gridDim.x * ng) {
        int b;
        long src = window_token_source((size_t)tok, H, W, ws, shift, &b);
        if (src < 0) {   // cropped tokens get no gradient: 0
            float z[VEC];
            for (int j = 0; j < VEC; j++) z[j] = 0.0f;
            if (dinp) for (int u = l; u < U; u += G) store_unit<VEC>(dinp + (size_t)tok * C + (size_t)u * VEC, z);
            continue;
        }
        float s = scale ? scale[b] : 1.0f;
        const float* d_row = dout + (size_t)src * C;
        for (int u = l; u < U; u += G) {
            float d[VEC], a[VEC];
            load_unit<VEC>(d, d_row + (size_t)u * VEC);
            if (dinp) {
                for (int j = 0; j < VEC; j++) a[j] = __fmul_rn(d[j], s);
                store_unit<VEC>(dinp + (size_t)tok * C + (size_t)u * VEC, a);
            }
            if (dresidual) store_unit<VEC>(dresidual + (size_t)src * C + (size_t)u * VEC, d);
        }
    }
}

// (layernorm_apply: layernorm_apply_rows_kernel, with the LayerNorm rows above.)

// (B, N) rows: out = residual + inp * scale[b] (scale NULL: 1). Grid (chunks of a row, images):
// blockIdx.y walks the images, so no index is divided; float4 units when vec (N % 4 == 0 and every
// pointer 16-byte aligned), the last N % 4 elements of a row one by one otherwise.
__global__ void scale_rows_add_forward_kernel(float* out, const float* inp, const float* residual,
                                              const float* scale, int B, size_t N, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = vec ? N / 4 : 0;
    for (int b = blockIdx.y; b < B; b += gridDim.y) {
        float s = scale ? scale[b] : 1.0f;
        size_t off = (size_t)b * N;
        for (size_t i = tid; i < n4; i += stride) {
            float x[4], r[4];
            load_unit<4>(x, inp + off + 4 * i);
            load_unit<4>(r, residual + off + 4 * i);
            for (int j = 0; j < 4; j++) x[j] = __fmul_rn(x[j], s) + r[j];
            store_unit<4>(out + off + 4 * i, x);
        }
        for (size_t i = 4 * n4 + tid; i < N; i += stride)
            out[off + i] = __fmul_rn(inp[off + i], s) + residual[off + i];
    }
}
// WRITES (ttt.h): dinp = dout * scale[b], dresidual = dout
__global__ void scale_rows_add_backward_kernel(float* dinp, float* dresidual, const float* dout,
                                               const float* scale, int B, size_t N, int vec) {
    size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = vec ? N / 4 : 0;
    for (int b = blockIdx.y; b < B; b += gridDim.y) {
        float s = scale ? scale[b] : 1.0f;
        size_t off = (size_t)b * N;
        for (size_t i = tid; i < n4; i += stride) {
            float d[4], a[4];
            load_unit<4>(d, dout + off + 4 * i);
            if (dinp) {
                for (int j = 0; j < 4; j++) a[j] = __fmul_rn(d[j], s);
                store_unit<4>(dinp + off + 4 * i, a);
            }
            if (dresidual) store_unit<4>(dresidual + off + 4 * i, d);
        }
        for (size_t i = 4 * n4 + tid; i < N; i += stride) {
            float d = dout[off + i];
            if (dinp) dinp[off + i] = __fmul_rn(d, s);
            if (dresidual) dresidual[off + i] = d;
        }
    }
}

static size_t window_tokens(int B, int H, int W, int ws) {
    return (size_t)B * ((H + ws - 1) / ws) * ((W + ws - 1) / ws) * ws * ws;
}

extern "C" void layernorm_partition_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                                 const float* weight, const float* bias, int B, int H, int W,
                                                 int C, int ws, int shift) {
    OpTimer timer("layernorm_partition_forward");
    size_t ntok = window_tokens(B, H, W, ws);
    if (ntok == 0 || C <= 0) return;
    if (layernorm_rows_forward(out, mean, rstd, inp, weight, bias, ntok, C, NormRows{H, W, ws, shift})) return;
    layernorm_partition_forward_kernel<<<(unsigned int)((ntok + 7) / 8), 256>>>(out, mean, rstd, inp, weight, bias,
                                                                              ntok, H, W, C, ws, shift);
    launchCheck();
}

extern "C" void layernorm_partition_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                                  const float* inp, const float* weight, const float* mean,
                                                  const float* rstd, int B, int H, int W, int C, int ws, int shift) {
    OpTimer timer("layernorm_partition_backward");
    size_t ntok = window_tokens(B, H, W, ws);
    if (ntok == 0 || C <= 0 || (!dinp && !dweight && !dbias)) return;
    if (layernorm_rows_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, ntok, C,
                                NormRows{H, W, ws, shift}))
        return;
    if (dinp) {
        layernorm_partition_backward_kernel<<<(unsigned int)((ntok + 7) / 8), 256>>>(dinp, dout, inp, weight, mean,
                                                                                   rstd, ntok, H, W, C, ws, shift);
        launchCheck();
    }
    if (dweight || dbias)
        norm_param_grad(dweight, dbias, dout, inp, mean, rstd, ntok, C, 1, 1, C, NormRows{H, W, ws, shift});
}

// blocks of LN_THREADS threads for one row per group of G lanes (a grid-stride loop covers the rest)
static unsigned int row_group_blocks(size_t nrows, int G) {
    size_t ng = LN_THREADS / G, blocks = (nrows + ng - 1) / ng;
    if (blocks > 65535u * 16u) blocks = 65535u * 16u;
    return blocks > 0 ? (unsigned int)blocks : 1u;
}

extern "C" void window_reverse_residual_forward_cuda(float* out, const float* inp, const float* bias,
                                                     const float* residual, const float* scale, int B, int H,
                                                     int W, int C, int ws, int shift) {
    OpTimer timer("window_reverse_residual_forward");
    size_t ntok = window_tokens(B, H, W, ws);
    if (ntok == 0 || C <= 0) return;
    int vec4 = C % 4 == 0 && is_aligned16(out) && is_aligned16(inp) && is_aligned16(residual);
    int G = ln_group_lanes(C, vec4 ? 4 : 1, 4, NULL);
    if (vec4) window_reverse_residual_forward_kernel<4><<<row_group_blocks(ntok, G), LN_THREADS>>>(
        out, inp, bias, residual, scale, (long)ntok, H, W, C, ws, shift, G);
    else window_reverse_residual_forward_kernel<1><<<row_group_blocks(ntok, G), LN_THREADS>>>(
        out, inp, bias, residual, scale, (long)ntok, H, W, C, ws, shift, G);
    launchCheck();
}

extern "C" void window_reverse_residual_backward_cuda(float* dresidual, float* dinp, const float* dout,
                                                      const float* scale, int B, int H, int W, int C, int ws,
                                                      int shift) {
    OpTimer timer("window_reverse_residual_backward");
    size_t ntok = window_tokens(B, H, W, ws);
    if (ntok == 0 || C <= 0 || (!dresidual && !dinp)) return;
    int vec4 = C % 4 == 0 && is_aligned16(dresidual) && is_aligned16(dinp) && is_aligned16(dout);
    int G = ln_group_lanes(C, vec4 ? 4 : 1, 4, NULL);
    if (vec4) window_reverse_residual_backward_kernel<4><<<row_group_blocks(ntok, G), LN_THREADS>>>(
        dresidual, dinp, dout, scale, (long)ntok, H, W, C, ws, shift, G);
    else window_reverse_residual_backward_kernel<1><<<row_group_blocks(ntok, G), LN_THREADS>>>(
        dresidual, dinp, dout, scale, (long)ntok, H, W, C, ws, shift, G);
    launchCheck();
}

extern "C" void layernorm_apply_cuda(float* out, const float* inp, const float* mean, const float* rstd,
                                     const float* weight, const float* bias, int N, int C) {
    OpTimer timer("layernorm_apply");
    if (N <= 0 || C <= 0) return;
    int vec4 = C % 4 == 0 && is_aligned16(out) && is_aligned16(inp);
    int G = ln_group_lanes(C, vec4 ? 4 : 1, 4, NULL);
    int params_aligned = is_aligned16(weight) && is_aligned16(bias);
    if (vec4) layernorm_apply_rows_kernel<4><<<row_group_blocks(N, G), LN_THREADS>>>(
        out, inp, mean, rstd, weight, bias, N, C, G, params_aligned);
    else layernorm_apply_rows_kernel<1><<<row_group_blocks(N, G), LN_THREADS>>>(
        out, inp, mean, rstd, weight, bias, N, C, G, params_aligned);
    launchCheck();
}

// grid of the scale_rows_add kernels: (chunks of a row's N / 4 or N units, images)
static dim3 scale_rows_grid(int B, size_t N, int vec) {
    return dim3(grid_for(vec ? N / 4 : N, 256), (unsigned int)(B < 65535 ? B : 65535));
}

extern "C" void scale_rows_add_forward_cuda(float* out, const float* inp, const float* residual, const float* scale,
                                            int B, size_t N) {
    OpTimer timer("scale_rows_add_forward");
    if (B <= 0 || N == 0) return;
    int vec = N % 4 == 0 && is_aligned16(out) && is_aligned16(inp) && is_aligned16(residual);
    scale_rows_add_forward_kernel<<<scale_rows_grid(B, N, vec), 256>>>(out, inp, residual, scale, B, N, vec);
    launchCheck();
}

extern "C" void scale_rows_add_backward_cuda(float* dinp, float* dresidual, const float* dout, const float* scale,
                                             int B, size_t N) {
    OpTimer timer("scale_rows_add_backward");
    if (B <= 0 || N == 0 || (!dinp && !dresidual)) return;
    int vec = N % 4 == 0 && is_aligned16(dinp) && is_aligned16(dresidual) && is_aligned16(dout);
    scale_rows_add_backward_kernel<<<scale_rows_grid(B, N, vec), 256>>>(dinp, dresidual, dout, scale, B, N, vec);
    launchCheck();
}

// ----------------------------------------------------------------------------
// patch merging: out (B, Ho, Wo, 4C), quarter q reads (2y + q % 2, 2x + q / 2)

__global__ void patch_merge_kernel(float* out, float* inp, int B, int H, int W, int C, int backward) {
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    size_t total = (size_t)B * Ho * Wo * 4 * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = i % C;
        size_t r = i / C;
        int qd = r % 4; r /= 4;
        int x = r % Wo; r /= Wo;
        int y = r % Ho;
        size_t b = r / Ho;
        int iy, ix;
        patch_merge_source(y, x, qd, &iy, &ix);   // ttt_index.h
        int inside = iy < H && ix < W;
        size_t src = ((b * H + iy) * W + ix) * C + c;
        if (!backward) out[i] = inside ? inp[src] : 0.0f;
        else if (inside) inp[src] += out[i];
    }
}

extern "C" void patch_merge_forward_cuda(float* out, const float* inp, int B, int H, int W, int C) {
    OpTimer timer("patch_merge_forward");
    size_t total = (size_t)B * ((H + 1) / 2) * ((W + 1) / 2) * 4 * C;
    if (total == 0) return;
    patch_merge_kernel<<<grid_for(total, 256), 256>>>(out, (float*)inp, B, H, W, C, 0); launchCheck();
}
extern "C" void patch_merge_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C) {
    OpTimer timer("patch_merge_backward");
    size_t total = (size_t)B * ((H + 1) / 2) * ((W + 1) / 2) * 4 * C;
    if (total == 0) return;
    patch_merge_kernel<<<grid_for(total, 256), 256>>>((float*)dout, dinp, B, H, W, C, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// conv2d via im2col + GEMM, in chunks of output pixels so the column buffer stays
// bounded. col row p (an output pixel) holds the K x K x C patch, order (ky, kx, c),
// matching weight (OC, K, K, C); positions outside the input are zero.

__global__ void im2col_kernel(float* col, const float* inp, int H, int W, int C, int K, int stride, int pad,
                              int Ho, int Wo, size_t p0, size_t np) {
    size_t KKC = (size_t)K * K * C;
    size_t total = np * KKC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = p0 + i / KKC;
        int e = i % KKC;
        int c = e % C, kx = (e / C) % K, ky = e / (C * K);
        int x = p % Wo, y = (p / Wo) % Ho;
        size_t b = p / ((size_t)Wo * Ho);
        int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
        col[i] = (iy < 0 || iy >= H || ix < 0 || ix >= W) ? 0.0f : inp[((b * H + iy) * W + ix) * C + c];
    }
}

// dinp += scatter of dcol (several output pixels may cover one input pixel: atomics)
__global__ void col2im_kernel(float* dinp, const float* dcol, int H, int W, int C, int K, int stride, int pad,
                              int Ho, int Wo, size_t p0, size_t np) {
    size_t KKC = (size_t)K * K * C;
    size_t total = np * KKC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t p = p0 + i / KKC;
        int e = i % KKC;
        int c = e % C, kx = (e / C) % K, ky = e / (C * K);
        int x = p % Wo, y = (p / Wo) % Ho;
        size_t b = p / ((size_t)Wo * Ho);
        int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
        atomicAdd(&dinp[((b * H + iy) * W + ix) * C + c], dcol[i]);
    }
}

// output pixels per chunk: col buffer of at most ~64M floats (256 MiB) per chunk
static size_t conv_chunk_pixels(size_t npix, size_t KKC) {
    size_t limit = ((size_t)64 << 20) / (KKC > 0 ? KKC : 1);
    if (limit < 1) limit = 1;
    return npix < limit ? npix : limit;
}

// ----------------------------------------------------------------------------
// conv2d, same-size 3x3 (K=3, stride 1, pad 1) without im2col: "shifted GEMMs".
// Copy a chunk of nb images into a zero-padded buffer Xp (nb, H+2, W+2, C) and read it as
// a plain (rows, C) matrix, padded pixel r = (b*(H+2) + y)*(W+2) + x. Then the output at
// padded index r (the pixel (y, x), y < H, x < W) is
//   Yp[r] = sum over taps (dy, dx) of Xp[r + dy*(W+2) + dx] @ weight[:, dy, dx, :]^T,
// i.e. 9 GEMMs on row-shifted views of Xp (no copy), accumulating into Yp. Rows with
// y >= H or x >= W are garbage and dropped when Yp is copied to out. The last valid row
// is nb*P - G - 1 (P = (H+2)(W+2) pixels per padded image, G = 2*(W+2) + 2 the largest
// shift), so the GEMMs run over M = nb*P - G rows and every shifted read stays inside Xp.
// Backward, with dYp = dout scattered into the padded grid (zeros at the garbage rows),
// stored after G leading zero rows:
//   dweight[:, dy, dx, :] += dYp^T @ Xp shifted by +offset
//   dXp[s] = sum over taps of dYp[s - offset] @ weight[:, dy, dx, :]
// then dinp += the interior of dXp. Chunked by images so each scratch region stays
// below conv_shift_max_floats. TTT_CONV_IM2COL=1 forces the im2col path, =0 this one.

// floats per scratch region: 64M (256 MiB) unless a test sets a small limit to force chunks
static size_t conv_shift_max_floats = (size_t)64 << 20;
extern "C" void ttt_cuda_set_conv_scratch_floats(size_t n) { conv_shift_max_floats = n ? n : (size_t)64 << 20; }

// 0: shifted GEMMs for same-size 3x3 convs, 1: always im2col. Set by
// ttt_cuda_set_conv_im2col (a negative value: back to the default), else by the environment
// (TTT_CONV_IM2COL=0|1), else CONV_IM2COL_DEFAULT: shifted GEMMs (checked by test/gpu_ops
// and the whole make test-gpu on an H100; 14% off a Swin-S TTT step at B=8).
#define CONV_IM2COL_DEFAULT 0
static int conv_force_im2col = -1;
extern "C" void ttt_cuda_set_conv_im2col(int on) { conv_force_im2col = on < 0 ? -1 : on != 0; }

static int conv_use_shifted(int H, int W, int K, int stride, int pad, int Ho, int Wo) {
    if (conv_force_im2col < 0) {
        const char* e = getenv("TTT_CONV_IM2COL");
        conv_force_im2col = e && (e[0] == '0' || e[0] == '1') ? e[0] == '1' : CONV_IM2COL_DEFAULT;
    }
    return !conv_force_im2col && K == 3 && stride == 1 && pad == 1 && Ho == H && Wo == W;
}

// dst (lead + nb*(H+2)*(W+2), C): `lead` zero rows, then src (nb, H, W, C) placed at
// padded (y+1, x+1) (shift = 1) or at (y, x) (shift = 0, the dYp layout); all other rows
// zero. One block per destination row, threads over channels.
__global__ void conv_pad_kernel(float* dst, const float* src, int H, int W, int C, size_t lead,
                                size_t rows, int shift) {
    int Wp = W + 2, P = (H + 2) * Wp;
    for (size_t row = blockIdx.x; row < rows; row += gridDim.x) {
        float* d = dst + row * C;
        const float* s = NULL;
        if (row >= lead) {
            size_t r = row - lead;
            size_t b = r / P;
            int rem = (int)(r % P);
            int y = rem / Wp - shift, x = rem % Wp - shift;
            if (y >= 0 && y < H && x >= 0 && x < W) s = src + ((b * H + y) * W + x) * C;
        }
        for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s ? s[c] : 0.0f;
    }
}

// out (nb, H, W, OC) = rows of Yp at padded index (b, y, x) + bias (may be NULL), when
// accumulate = 0; out += those rows (dinp of the backward, Yp = dXp read at (y+1, x+1))
// when accumulate = 1. One block per output pixel.
__global__ void conv_unpad_kernel(float* out, const float* Yp, const float* bias, int H, int W, int OC,
                                  size_t npix, int shift, int accumulate) {
    int Wp = W + 2;
    for (size_t p = blockIdx.x; p < npix; p += gridDim.x) {
        size_t b = p / ((size_t)H * W);
        int rem = (int)(p % ((size_t)H * W));
        int y = rem / W + shift, x = rem % W + shift;
        const float* s = Yp + ((b * (H + 2) + y) * Wp + x) * OC;
        float* d = out + p * OC;
        for (int o = threadIdx.x; o < OC; o += blockDim.x) {
            if (accumulate) d[o] += s[o];
            else d[o] = s[o] + (bias ? bias[o] : 0.0f);
        }
    }
}

static int conv_block_threads(int C) { return C >= 128 ? 128 : (C >= 64 ? 64 : 32); }

// images per chunk: each scratch region (G + nb*P rows of maxC floats) under the limit
static int conv_shift_chunk_images(int B, int H, int W, int maxC) {
    size_t P = (size_t)(H + 2) * (W + 2), G = 2 * (size_t)(W + 2) + 2;
    size_t rows = conv_shift_max_floats / (size_t)maxC;
    size_t nb = rows > G ? (rows - G) / P : 0;
    if (nb < 1) nb = 1;
    return nb < (size_t)B ? (int)nb : B;
}

static void conv3x3_forward_shifted(float* out, const float* inp, const float* weight, const float* bias,
                                    int B, int H, int W, int C, int OC) {
    int Wp = W + 2, maxC = C > OC ? C : OC;
    size_t P = (size_t)(H + 2) * Wp, G = 2 * (size_t)Wp + 2;
    int chunk = conv_shift_chunk_images(B, H, W, maxC);
    size_t region = (G + (size_t)chunk * P) * maxC;
    float* Xp = (float*)workspace_get(&ws_gemm, 2 * region * sizeof(float));
    float* Yp = Xp + region;
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int nb = B - b0 < chunk ? B - b0 : chunk;
        size_t rows = (size_t)nb * P, M = rows - G;
        conv_pad_kernel<<<grid_for(rows, 1), conv_block_threads(C)>>>(
            Xp, inp + (size_t)b0 * H * W * C, H, W, C, 0, rows, 1);
        launchCheck();
        // Yp (M, OC) (+)= Xp shifted (M, C) @ weight[:, dy, dx, :]^T  (rows 9C apart)
        for (int tap = 0; tap < 9; tap++) {
            size_t offset = (size_t)(tap / 3) * Wp + tap % 3;
            gemm_rm(false, true, (int)M, OC, C, 1.0f, Xp + offset * C, C, 0,
                    weight + (size_t)tap * C, 9 * C, 0, tap == 0 ? 0.0f : 1.0f, Yp, OC, 0, 1);
        }
        size_t npix = (size_t)nb * H * W;
        conv_unpad_kernel<<<grid_for(npix, 1), conv_block_threads(OC)>>>(
            out + (size_t)b0 * H * W * OC, Yp, bias, H, W, OC, npix, 0, 0);
        launchCheck();
    }
}

static void conv3x3_backward_shifted(float* dinp, float* dweight, const float* dout, const float* inp,
                                     const float* weight, int B, int H, int W, int C, int OC) {
    int Wp = W + 2, maxC = C > OC ? C : OC;
    size_t P = (size_t)(H + 2) * Wp, G = 2 * (size_t)Wp + 2;
    int chunk = conv_shift_chunk_images(B, H, W, maxC);
    size_t region = (G + (size_t)chunk * P) * maxC;
    // two regions: Xp (later reused for dXp) and dYp with G leading zero rows
    float* Xp = (float*)workspace_get(&ws_gemm, 2 * region * sizeof(float));
    float* dYpad = Xp + region;
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int nb = B - b0 < chunk ? B - b0 : chunk;
        size_t rows = (size_t)nb * P, M = rows - G;
        conv_pad_kernel<<<grid_for(G + rows, 1), conv_block_threads(OC)>>>(
            dYpad, dout + (size_t)b0 * H * W * OC, H, W, OC, G, G + rows, 0);
        launchCheck();
        const float* dYp = dYpad + G * OC;   // dYp[r], r >= -G readable (zeros)
        if (dweight) {
            conv_pad_kernel<<<grid_for(rows, 1), conv_block_threads(C)>>>(
                Xp, inp + (size_t)b0 * H * W * C, H, W, C, 0, rows, 1);
            launchCheck();
            // dweight[:, dy, dx, :] (OC, C) += dYp^T (OC, M) @ Xp shifted (M, C)
            for (int tap = 0; tap < 9; tap++) {
                size_t offset = (size_t)(tap / 3) * Wp + tap % 3;
                gemm_rm(true, false, OC, C, (int)M, 1.0f, dYp, OC, 0, Xp + offset * C, C, 0,
                        1.0f, dweight + (size_t)tap * C, 9 * C, 0, 1);
            }
        }
        if (dinp) {
            // dXp[s] (rows, C) (+)= dYp[s - offset] (rows, OC) @ weight[:, dy, dx, :] (OC, C)
            float* dXp = Xp;
            for (int tap = 0; tap < 9; tap++) {
                size_t offset = (size_t)(tap / 3) * Wp + tap % 3;
                gemm_rm(false, false, (int)rows, C, OC, 1.0f, dYp - offset * OC, OC, 0,
                        weight + (size_t)tap * C, 9 * C, 0, tap == 0 ? 0.0f : 1.0f, dXp, C, 0, 1);
            }
            size_t npix = (size_t)nb * H * W;
            conv_unpad_kernel<<<grid_for(npix, 1), conv_block_threads(C)>>>(
                dinp + (size_t)b0 * H * W * C, dXp, NULL, H, W, C, npix, 1, 1);
            launchCheck();
        }
    }
}

extern "C" void conv2d_forward_cuda(float* out, const float* inp, const float* weight, const float* bias,
                                    int B, int H, int W, int C, int OC, int K, int stride, int pad,
                                    int Ho, int Wo) {
    OpTimer timer("conv2d_forward", (long)B * Ho * Wo, (long)K * K * C, OC);
    size_t npix = (size_t)B * Ho * Wo;
    if (npix == 0 || OC <= 0) return;
    // a 1x1 conv over the same grid is a linear layer on the pixels
    if (K == 1 && stride == 1 && pad == 0 && Ho == H && Wo == W) {
        linear_forward_cuda(out, inp, weight, bias, (int)npix, C, OC);
        return;
    }
    if (bf16_conv_taken(C)) {
        conv2d_forward_bf16(out, inp, weight, bias, B, H, W, C, OC, K, stride, pad, Ho, Wo);
        return;
    }
    if (conv_use_shifted(H, W, K, stride, pad, Ho, Wo)) {
        conv3x3_forward_shifted(out, inp, weight, bias, B, H, W, C, OC);
        return;
    }
    size_t KKC = (size_t)K * K * C;
    size_t chunk = conv_chunk_pixels(npix, KKC);
    float* col = (float*)workspace_get(&ws_gemm, chunk * KKC * sizeof(float));
    for (size_t p0 = 0; p0 < npix; p0 += chunk) {
        size_t np = npix - p0 < chunk ? npix - p0 : chunk;
        im2col_kernel<<<grid_for(np * KKC, 256), 256>>>(col, inp, H, W, C, K, stride, pad, Ho, Wo, p0, np);
        launchCheck();
        // out chunk (np, OC) = col (np, KKC) @ weight (OC, KKC)^T
        gemm_rm(false, true, (int)np, OC, (int)KKC, 1.0f, col, (int)KKC, 0, weight, (int)KKC, 0,
                0.0f, out + p0 * OC, OC, 0, 1);
    }
    if (bias) add_bias(out, bias, npix, OC);
}

extern "C" void conv2d_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout,
                                     const float* inp, const float* weight,
                                     int B, int H, int W, int C, int OC, int K, int stride, int pad,
                                     int Ho, int Wo) {
    OpTimer timer("conv2d_backward", (long)B * Ho * Wo, (long)K * K * C, OC);
    size_t npix = (size_t)B * Ho * Wo;
    if (npix == 0 || OC <= 0) return;
    if (K == 1 && stride == 1 && pad == 0 && Ho == H && Wo == W) {
        linear_backward_cuda(dinp, dweight, dbias, dout, inp, weight, (int)npix, C, OC);
        return;
    }
    if (bf16_conv_taken(C)) {
        // dinp by the transposed im2col at stride 1 only (at stride s only 1/s^2 of its columns
        // are non-zero): a strided conv's dinp takes the float32 im2col path below
        // dbias: summed while the dweight pass converts dout, else by the column sums
        float* dinp_bf16 = stride == 1 ? dinp : NULL;
        if (dinp_bf16 || dweight)
            conv2d_backward_bf16(dinp_bf16, dweight, dweight ? dbias : NULL, dout, inp, weight, B, H, W, C, OC, K,
                                 stride, pad, Ho, Wo);
        if (dbias && !dweight) column_sum_accumulate(dbias, dout, (int)npix, OC);
        if (dinp_bf16 == dinp) return;
        dweight = NULL; dbias = NULL;   // done above
    }
    if (conv_use_shifted(H, W, K, stride, pad, Ho, Wo)) {
        if (dinp || dweight) conv3x3_backward_shifted(dinp, dweight, dout, inp, weight, B, H, W, C, OC);
        if (dbias) column_sum_accumulate(dbias, dout, (int)npix, OC);
        return;
    }
    size_t KKC = (size_t)K * K * C;
    size_t chunk = conv_chunk_pixels(npix, KKC);
    // two regions: the columns of the chunk, and their gradient
    float* col = (float*)workspace_get(&ws_gemm, 2 * chunk * KKC * sizeof(float));
    float* dcol = col + chunk * KKC;
    for (size_t p0 = 0; p0 < npix; p0 += chunk) {
        size_t np = npix - p0 < chunk ? npix - p0 : chunk;
        const float* d = dout + p0 * OC;
        if (dweight) {
            im2col_kernel<<<grid_for(np * KKC, 256), 256>>>(col, inp, H, W, C, K, stride, pad, Ho, Wo, p0, np);
            launchCheck();
            // dweight (OC, KKC) += dout chunk^T (OC, np) @ col (np, KKC)
            gemm_rm(true, false, OC, (int)KKC, (int)np, 1.0f, d, OC, 0, col, (int)KKC, 0,
                    1.0f, dweight, (int)KKC, 0, 1);
        }
        if (dinp) {
            // dcol (np, KKC) = dout chunk (np, OC) @ weight (OC, KKC), then scatter into dinp
            gemm_rm(false, false, (int)np, (int)KKC, OC, 1.0f, d, OC, 0, weight, (int)KKC, 0,
                    0.0f, dcol, (int)KKC, 0, 1);
            col2im_kernel<<<grid_for(np * KKC, 256), 256>>>(dinp, dcol, H, W, C, K, stride, pad, Ho, Wo, p0, np);
            launchCheck();
        }
    }
    if (dbias) column_sum_accumulate(dbias, dout, (int)npix, OC);
}

// ----------------------------------------------------------------------------
// resizing, F.interpolate semantics: the source indices are the CPU reference's own
// nearest_source and bilinear_source (ttt_index.h)

// nearest resize on (B, H, W, C) <-> (B, Ho, Wo, C), in groups of V channels (V = 4: float4 when
// C % 4 == 0 and both pointers are 16-byte aligned; else V = 1). Threads (x, y): x over a pixel's channel
// groups, y over pixels (the pixel's source computed once per thread, not per element).
// forward: out pixel (y, x) copies inp pixel (nearest_source(y), nearest_source(x)).
template <int V>
__global__ void upsample_nearest_forward_kernel(float* out, const float* inp, int B, int H, int W, int C, int Ho,
                                                int Wo) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= C) return;
    size_t npix = (size_t)B * Ho * Wo;
    for (size_t p = blockIdx.y * (size_t)blockDim.y + threadIdx.y; p < npix; p += (size_t)gridDim.y * blockDim.y) {
        int x = (int)(p % Wo), y = (int)((p / Wo) % Ho);
        size_t b = p / ((size_t)Wo * Ho);
        const float* s = inp + ((b * H + nearest_source(y, H, Ho)) * W + nearest_source(x, W, Wo)) * C + c;
        float* d = out + p * C + c;
        if (V == 4) *reinterpret_cast<float4*>(d) = *reinterpret_cast<const float4*>(s);
        else d[0] = s[0];
    }
}

// backward, the gather form of upsample_nearest_backward_cpu (no atomics): input pixel (iy, ix)
// sums dout over the output rows y with nearest_source(y) == iy and columns x with
// nearest_source(x) == ix. nearest_source is non-decreasing, so those are runs that start at
// first_output(iy), found from a guess (floor of iy * out / in) that steps back then forward.
__device__ __forceinline__ int nearest_first_output(int i, int in, int out) {
    int o = (int)(((long long)i * out) / in);
    if (o > out - 1) o = out - 1;
    while (o > 0 && nearest_source(o - 1, in, out) >= i) o--;
    while (o < out && nearest_source(o, in, out) < i) o++;
    return o;
}

template <int V>
__global__ void upsample_nearest_backward_kernel(float* dinp, const float* dout, int B, int H, int W, int C,
                                                 int Ho, int Wo) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (c >= C) return;
    size_t npix = (size_t)B * H * W;
    for (size_t p = blockIdx.y * (size_t)blockDim.y + threadIdx.y; p < npix; p += (size_t)gridDim.y * blockDim.y) {
        int ix = (int)(p % W), iy = (int)((p / W) % H);
        size_t b = p / ((size_t)W * H);
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);   // V = 1: .x only
        int y0 = nearest_first_output(iy, H, Ho), x0 = nearest_first_output(ix, W, Wo);
        for (int y = y0; y < Ho && nearest_source(y, H, Ho) == iy; y++)
            for (int x = x0; x < Wo && nearest_source(x, W, Wo) == ix; x++) {
                const float* s = dout + ((b * Ho + y) * Wo + x) * C + c;
                if (V == 4) {
                    float4 g = *reinterpret_cast<const float4*>(s);
                    acc.x += g.x; acc.y += g.y; acc.z += g.z; acc.w += g.w;
                } else {
                    acc.x += s[0];
                }
            }
        float* d = dinp + p * C + c;
        if (V == 4) {
            float4 o = *reinterpret_cast<float4*>(d);
            o.x += acc.x; o.y += acc.y; o.z += acc.z; o.w += acc.w;
            *reinterpret_cast<float4*>(d) = o;
        } else {
            d[0] += acc.x;
        }
    }
}

// threads and grid of the two kernels above for npix pixels of C channels
static void nearest_launch_shape(int C, bool vec, size_t npix, dim3* grid, dim3* block) {
    int groups = vec ? C / 4 : C;
    int tx = groups >= 256 ? 256 : (groups + 31) / 32 * 32, ty = 256 / tx;
    size_t gy = (npix + ty - 1) / ty;
    if (gy > 8192) gy = 8192;
    *grid = dim3((unsigned)((groups + tx - 1) / tx), (unsigned)gy);
    *block = dim3(tx, ty);
}

__global__ void upsample_bilinear_kernel(float* out, float* inp, int B, int H, int W, int C, int Ho, int Wo, int backward) {
    size_t total = (size_t)B * Ho * Wo * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = i % C;
        size_t r = i / C;
        int x = r % Wo; r /= Wo;
        int y = r % Ho;
        size_t b = r / Ho;
        int y0, y1, x0, x1; float ly, lx;
        bilinear_source(y, H, Ho, &y0, &y1, &ly);
        bilinear_source(x, W, Wo, &x0, &x1, &lx);
        size_t i00 = ((b * H + y0) * W + x0) * C + c, i01 = ((b * H + y0) * W + x1) * C + c;
        size_t i10 = ((b * H + y1) * W + x0) * C + c, i11 = ((b * H + y1) * W + x1) * C + c;
        if (!backward) {
            out[i] = (1.0f - ly) * ((1.0f - lx) * inp[i00] + lx * inp[i01])
                   + ly * ((1.0f - lx) * inp[i10] + lx * inp[i11]);
        } else {
            float d = out[i];
            atomicAdd(&inp[i00], (1.0f - ly) * (1.0f - lx) * d);
            atomicAdd(&inp[i01], (1.0f - ly) * lx * d);
            atomicAdd(&inp[i10], ly * (1.0f - lx) * d);
            atomicAdd(&inp[i11], ly * lx * d);
        }
    }
}

extern "C" void upsample_nearest_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
    OpTimer timer("upsample_nearest_forward");
    size_t total = (size_t)B * Ho * Wo * C;
    if (total == 0) return;
    bool vec = C % 4 == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)inp % 16 == 0;
    dim3 grid, block;
    nearest_launch_shape(C, vec, (size_t)B * Ho * Wo, &grid, &block);
    if (vec) upsample_nearest_forward_kernel<4><<<grid, block>>>(out, inp, B, H, W, C, Ho, Wo);
    else upsample_nearest_forward_kernel<1><<<grid, block>>>(out, inp, B, H, W, C, Ho, Wo);
    launchCheck();
}
extern "C" void upsample_nearest_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
    OpTimer timer("upsample_nearest_backward");
    size_t total = (size_t)B * Ho * Wo * C;
    if (total == 0) return;
    bool vec = C % 4 == 0 && (uintptr_t)dinp % 16 == 0 && (uintptr_t)dout % 16 == 0;
    dim3 grid, block;
    nearest_launch_shape(C, vec, (size_t)B * H * W, &grid, &block);
    if (vec) upsample_nearest_backward_kernel<4><<<grid, block>>>(dinp, dout, B, H, W, C, Ho, Wo);
    else upsample_nearest_backward_kernel<1><<<grid, block>>>(dinp, dout, B, H, W, C, Ho, Wo);
    launchCheck();
}
extern "C" void upsample_bilinear_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo) {
    OpTimer timer("upsample_bilinear_forward");
    size_t total = (size_t)B * Ho * Wo * C;
    if (total == 0) return;
    upsample_bilinear_kernel<<<grid_for(total, 256), 256>>>(out, (float*)inp, B, H, W, C, Ho, Wo, 0); launchCheck();
}
extern "C" void upsample_bilinear_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo) {
    OpTimer timer("upsample_bilinear_backward");
    size_t total = (size_t)B * Ho * Wo * C;
    if (total == 0) return;
    upsample_bilinear_kernel<<<grid_for(total, 256), 256>>>((float*)dout, dinp, B, H, W, C, Ho, Wo, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// point sampling: grid_sample(bilinear, align_corners=False, zeros) at (x, y) in [0, 1]

__global__ void point_sample_kernel(float* out, float* inp, const float* coords, int M, int H, int W, int P, int backward) {
    size_t total = (size_t)M * P;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t m = i / P;
        int idx[4]; float wt[4];
        point_taps(coords[i * 2], coords[i * 2 + 1], H, W, idx, wt);   // ttt_index.h
        float* map = inp + m * H * W;
        float s = 0.0f, d = backward ? out[i] : 0.0f;
        for (int t = 0; t < 4; t++) {
            if (idx[t] < 0) continue;
            if (!backward) s += wt[t] * map[idx[t]];
            else atomicAdd(&map[idx[t]], wt[t] * d);
        }
        if (!backward) out[i] = s;
    }
}

extern "C" void point_sample_forward_cuda(float* out, const float* inp, const float* coords, int M, int H, int W, int P) {
    OpTimer timer("point_sample_forward");
    size_t total = (size_t)M * P;
    if (total == 0) return;
    point_sample_kernel<<<grid_for(total, 256), 256>>>(out, (float*)inp, coords, M, H, W, P, 0); launchCheck();
}
extern "C" void point_sample_backward_cuda(float* dinp, const float* dout, const float* coords, int M, int H, int W, int P) {
    OpTimer timer("point_sample_backward");
    size_t total = (size_t)M * P;
    if (total == 0) return;
    point_sample_kernel<<<grid_for(total, 256), 256>>>((float*)dout, dinp, coords, M, H, W, P, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// sine position encoding (double arithmetic, as the CPU reference)

__global__ void sine_position_kernel(float* out, int H, int W, int C) {
    int F = C / 2;
    size_t total = (size_t)H * W * F;
    const double scale = 2.0 * 3.14159265358979323846, eps = 1e-6;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int kf = i % F;
        size_t pix = i / F;
        int x = pix % W, y = pix / W;
        double ye = (y + 1) / (H + eps) * scale, xe = (x + 1) / (W + eps) * scale;
        double dim_t = pow(10000.0, 2.0 * (kf / 2) / F);
        double py = ye / dim_t, px = xe / dim_t;
        float* o = out + pix * C;
        o[kf] = (float)(kf % 2 == 0 ? sin(py) : cos(py));
        o[F + kf] = (float)(kf % 2 == 0 ? sin(px) : cos(px));
    }
}

extern "C" void sine_position_encoding_cuda(float* out, int H, int W, int C) {
    OpTimer timer("sine_position_encoding");
    size_t total = (size_t)H * W * (C / 2);
    if (total == 0) return;
    sine_position_kernel<<<grid_for(total, 256), 256>>>(out, H, W, C); launchCheck();
}

// ----------------------------------------------------------------------------
// multi-scale deformable attention (math in ttt.h; ms_deform_attn_*_cpu in ttt.c is the
// reference). One thread per output element (b, q, h, c): the HD threads of a head read
// neighbouring channels of each tap (coalesced) and share the location and weight.

struct MsdaLevels { int H[MSDA_MAX_LEVELS], W[MSDA_MAX_LEVELS], start[MSDA_MAX_LEVELS]; };

static MsdaLevels msda_levels(const int* shapes, int L, int* S) {
    MsdaLevels lv;
    memset(&lv, 0, sizeof(lv));
    *S = ms_deform_level_starts(shapes, L, lv.start);
    for (int l = 0; l < L; l++) { lv.H[l] = shapes[2 * l]; lv.W[l] = shapes[2 * l + 1]; }
    return lv;
}

// the four taps of (x, y) in [0, 1] on an H x W map, as point_taps (ttt_index.h): indices of
// (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1) (-1 outside) and the cell weights lx, ly
__device__ void msda_taps(float x, float y, int H, int W, int* idx, float* lx, float* ly) {
    // no fused multiply-add here: the CPU rounds the product first, and a pixel coordinate
    // one ulp across an integer would take the other cell (its location gradient differs)
    float px = __fsub_rn(__fmul_rn(x, (float)W), 0.5f), py = __fsub_rn(__fmul_rn(y, (float)H), 0.5f);
    bilinear_taps(px, py, H, W, idx, lx, ly);
}

__global__ void ms_deform_attn_forward_kernel(float* out, const float* value, MsdaLevels lv, const float* loc,
                                              const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    size_t total = (size_t)B * Lq * NH * HD, D = (size_t)NH * HD;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = i % HD;
        size_t bqh = i / HD;
        int h = bqh % NH;
        size_t b = bqh / NH / Lq;
        float acc = 0.0f;
        for (int l = 0; l < L; l++) {
            const float* v = value + (b * S + lv.start[l]) * D + (size_t)h * HD + c;
            for (int p = 0; p < P; p++) {
                size_t k = (bqh * L + l) * P + p;
                int idx[4]; float lx, ly;
                msda_taps(loc[2 * k], loc[2 * k + 1], lv.H[l], lv.W[l], idx, &lx, &ly);
                float t[4];
                for (int j = 0; j < 4; j++) t[j] = idx[j] >= 0 ? v[(size_t)idx[j] * D] : 0.0f;
                float s = (1.0f - lx) * (1.0f - ly) * t[0] + lx * (1.0f - ly) * t[1] +
                          (1.0f - lx) * ly * t[2] + lx * ly * t[3];
                acc += aw[k] * s;
            }
        }
        out[i] = acc;
    }
}

// Backward, one thread per (b, q, h, c), at most one element per thread (no grid-stride loop,
// so every lane of a warp runs the same iterations and can shuffle). The sums over c of
// daw and dloc are reduced over groups of `width` lanes (the largest power of two <= 32
// dividing HD; groups never straddle heads) and added by the group's first lane; dvalue
// gets one atomicAdd per tap and channel.
__global__ void ms_deform_attn_backward_kernel(float* dvalue, float* dloc, float* daw, const float* dout,
                                               const float* value, MsdaLevels lv, const float* loc,
                                               const float* aw, int B, int S, int Lq, int NH, int HD,
                                               int L, int P, int width) {
    size_t total = (size_t)B * Lq * NH * HD, D = (size_t)NH * HD;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    int active = i < total;
    if (!active) i = 0;   // inactive lanes follow along with zero contributions
    int c = i % HD;
    size_t bqh = i / HD;
    int h = bqh % NH;
    size_t b = bqh / NH / Lq;
    float g = active ? dout[i] : 0.0f;
    int leader = active && (c % width) == 0;
    for (int l = 0; l < L; l++) {
        int H = lv.H[l], W = lv.W[l];
        size_t row0 = b * S + lv.start[l];
        const float* v = value + row0 * D + (size_t)h * HD + c;
        for (int p = 0; p < P; p++) {
            size_t k = (bqh * L + l) * P + p;
            int idx[4]; float lx, ly;
            msda_taps(loc[2 * k], loc[2 * k + 1], H, W, idx, &lx, &ly);
            float a = aw[k];
            float t[4];
            for (int j = 0; j < 4; j++) t[j] = (active && idx[j] >= 0) ? v[(size_t)idx[j] * D] : 0.0f;
            float wt[4] = {(1.0f - lx) * (1.0f - ly), lx * (1.0f - ly), (1.0f - lx) * ly, lx * ly};
            float gs = g * (wt[0] * t[0] + wt[1] * t[1] + wt[2] * t[2] + wt[3] * t[3]);
            float gx = g * ((1.0f - ly) * (t[1] - t[0]) + ly * (t[3] - t[2]));
            float gy = g * ((1.0f - lx) * (t[2] - t[0]) + lx * (t[3] - t[1]));
            for (int o = width / 2; o > 0; o >>= 1) {
                gs += __shfl_xor_sync(0xffffffffu, gs, o, width);
                gx += __shfl_xor_sync(0xffffffffu, gx, o, width);
                gy += __shfl_xor_sync(0xffffffffu, gy, o, width);
            }
            if (!active) continue;
            if (dvalue) {
                float* dv = dvalue + row0 * D + (size_t)h * HD + c;
                for (int j = 0; j < 4; j++)
                    if (idx[j] >= 0) atomicAdd(&dv[(size_t)idx[j] * D], a * wt[j] * g);
            }
            if (leader) {
                if (daw) atomicAdd(&daw[k], gs);
                if (dloc) {
                    atomicAdd(&dloc[2 * k], a * gx * W);
                    atomicAdd(&dloc[2 * k + 1], a * gy * H);
                }
            }
        }
    }
}

extern "C" void ms_deform_attn_forward_cuda(float* out, const float* value, const int* shapes, const float* loc,
                                            const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    OpTimer timer("ms_deform_attn_forward");
    int S_levels;
    MsdaLevels lv = msda_levels(shapes, L, &S_levels);
    if (S_levels != S) ttt_die("ms_deform_attn: the levels hold %d tokens, value has %d", S_levels, S);
    size_t total = (size_t)B * Lq * NH * HD;
    if (total == 0) return;
    ms_deform_attn_forward_kernel<<<grid_for(total, 256), 256>>>(out, value, lv, loc, aw, B, S, Lq, NH, HD, L, P);
    launchCheck();
}

extern "C" void ms_deform_attn_backward_cuda(float* dvalue, float* dloc, float* daw, const float* dout,
                                             const float* value, const int* shapes, const float* loc,
                                             const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P) {
    OpTimer timer("ms_deform_attn_backward");
    int S_levels;
    MsdaLevels lv = msda_levels(shapes, L, &S_levels);
    if (S_levels != S) ttt_die("ms_deform_attn: the levels hold %d tokens, value has %d", S_levels, S);
    size_t total = (size_t)B * Lq * NH * HD;
    if (total == 0 || (!dvalue && !dloc && !daw)) return;
    int width = 1;
    while (width < 32 && HD % (2 * width) == 0) width *= 2;
    size_t blocks = (total + 255) / 256;
    if (blocks > 0x7fffffffu) ttt_die("ms_deform_attn_backward: %zu elements are too many", total);
    ms_deform_attn_backward_kernel<<<(unsigned int)blocks, 256>>>(dvalue, dloc, daw, dout, value, lv, loc, aw,
                                                                  B, S, Lq, NH, HD, L, P, width);
    launchCheck();
}

// sampling locations of the deformable encoder: one thread per (b, q, h, l, p), same float
// operations as the CPU reference (so the results are equal)
__global__ void ms_deform_locations_kernel(float* out, const float* in, MsdaLevels lv, int B, int S, int L,
                                           int NH, int P, int backward) {
    size_t total = (size_t)B * S * NH * L * P, per_q = (size_t)NH * L * P;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total; k += (size_t)gridDim.x * blockDim.x) {
        int l = (int)((k / P) % L);
        float W = (float)lv.W[l], H = (float)lv.H[l];
        if (backward) {
            out[2 * k] += in[2 * k] / W;
            out[2 * k + 1] += in[2 * k + 1] / H;
            continue;
        }
        int q = (int)((k / per_q) % S);
        int lq = L - 1;
        while (lq > 0 && q < lv.start[lq]) lq--;
        int r = q - lv.start[lq], x = r % lv.W[lq], y = r / lv.W[lq];
        float rx = (x + 0.5f) / (float)lv.W[lq], ry = (y + 0.5f) / (float)lv.H[lq];
        float ox = in[2 * k], oy = in[2 * k + 1];
        out[2 * k] = rx + ox / W;
        out[2 * k + 1] = ry + oy / H;
    }
}

extern "C" void ms_deform_locations_forward_cuda(float* loc, const float* off, const int* shapes, int B, int L,
                                                 int NH, int P) {
    OpTimer timer("ms_deform_locations_forward");
    int S;
    MsdaLevels lv = msda_levels(shapes, L, &S);
    size_t total = (size_t)B * S * NH * L * P;
    if (total == 0) return;
    ms_deform_locations_kernel<<<grid_for(total, 256), 256>>>(loc, off, lv, B, S, L, NH, P, 0); launchCheck();
}

extern "C" void ms_deform_locations_backward_cuda(float* doff, const float* dloc, const int* shapes, int B, int L,
                                                  int NH, int P) {
    OpTimer timer("ms_deform_locations_backward");
    int S;
    MsdaLevels lv = msda_levels(shapes, L, &S);
    size_t total = (size_t)B * S * NH * L * P;
    if (total == 0) return;
    ms_deform_locations_kernel<<<grid_for(total, 256), 256>>>(doff, dloc, lv, B, S, L, NH, P, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// losses. Scalar losses: blocks write partial sums (double) to the reduce workspace,
// one block adds them up and finishes on the device.

// partials[blk] = (sum_i mask[n] (pred - target)^2 / C, sum_n mask[n])
__global__ void masked_mse_partial_kernel(double* partials, const float* pred, const float* target,
                                          const float* mask, int N, int C) {
    size_t total = (size_t)N * C;
    double num = 0.0, den = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float mk = mask[i / C];
        if (mk != 0.0f) { double d = (double)pred[i] - target[i]; num += mk * d * d; }
    }
    for (size_t n = blockIdx.x * (size_t)blockDim.x + threadIdx.x; n < (size_t)N; n += (size_t)gridDim.x * blockDim.x)
        den += mask[n];
    num = block_sum(num);
    den = block_sum(den);
    if (threadIdx.x == 0) { partials[blockIdx.x * 2] = num / C; partials[blockIdx.x * 2 + 1] = den; }
}

// *loss = sums[0] / sums[1], or 0 when the denominator is not positive
__global__ void ratio_kernel(float* loss, const double* sums) {
    *loss = sums[1] > 0.0 ? (float)(sums[0] / sums[1]) : 0.0f;
}

extern "C" void masked_mse_forward_cuda(float* loss, const float* pred, const float* target,
                                        const float* mask, int N, int C) {
    OpTimer timer("masked_mse_forward");
    double* partials = reduce_scratch(2);
    double* sums = partials + REDUCE_BLOCKS * 2;
    masked_mse_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, pred, target, mask, N, C > 0 ? C : 1);
    launchCheck();
    sum_partials_kernel<<<1, 256>>>(sums, partials, REDUCE_BLOCKS, 2); launchCheck();
    ratio_kernel<<<1, 1>>>(loss, sums); launchCheck();
}

// partials[blk] = sum of x over this block's elements (double)
__global__ void sum_partial_kernel(double* partials, const float* x, size_t N, int squared) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x)
        s += squared ? (double)x[i] * x[i] : (double)x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// dpred += 2 dloss / (den C) * mask[n] (pred - target), den = *den_sum on the device
__global__ void masked_mse_backward_kernel(float* dpred, float dloss, const double* den_sum, const float* pred,
                                           const float* target, const float* mask, int N, int C) {
    double den = *den_sum;
    if (den <= 0.0) return;
    float k = (float)(2.0 * dloss / (den * C));
    size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float mk = mask[i / C];
        if (mk != 0.0f) dpred[i] += k * mk * (pred[i] - target[i]);
    }
}

extern "C" void masked_mse_backward_cuda(float* dpred, float dloss, const float* pred, const float* target,
                                         const float* mask, int N, int C) {
    OpTimer timer("masked_mse_backward");
    if (N <= 0 || C <= 0) return;
    double* partials = reduce_scratch(1);
    double* den = partials + REDUCE_BLOCKS;
    sum_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, mask, (size_t)N, 0); launchCheck();
    sum_partials_kernel<<<1, 256>>>(den, partials, REDUCE_BLOCKS, 1); launchCheck();
    size_t total = (size_t)N * C;
    masked_mse_backward_kernel<<<grid_for(total, 256), 256>>>(dpred, dloss, den, pred, target, mask, N, C);
    launchCheck();
}

// log-sum-exp of one row by one warp (float max, double sum), returned to all lanes
__device__ double warp_logsumexp(const float* x, int C, int lane) {
    float mx = -INFINITY;
    for (int c = lane; c < C; c += 32) mx = fmaxf(mx, x[c]);
    mx = warp_max(mx);
    double s = 0.0;
    for (int c = lane; c < C; c += 32) s += exp((double)x[c] - mx);
    s = warp_sum(s);
    return mx + log(s);
}

// one warp per row; block partials (num, den) of sum w (lse - x_t), sum w
__global__ void cross_entropy_partial_kernel(double* partials, const float* logits, const int* targets,
                                             const float* class_weight, int N, int C, int ignore_index) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    double num = 0.0, den = 0.0;
    for (int n = blockIdx.x * nwarps + warp; n < N; n += gridDim.x * nwarps) {
        int t = targets[n];
        if (t == ignore_index) continue;
        double w = class_weight ? class_weight[t] : 1.0;
        const float* x = logits + (size_t)n * C;
        double lse = warp_logsumexp(x, C, lane);
        if (lane == 0) { num += w * (lse - x[t]); den += w; }
    }
    num = block_sum(num);
    den = block_sum(den);
    if (threadIdx.x == 0) { partials[blockIdx.x * 2] = num; partials[blockIdx.x * 2 + 1] = den; }
}

extern "C" void cross_entropy_forward_cuda(float* loss, const float* logits, const int* targets,
                                           const float* class_weight, int N, int C, int ignore_index) {
    OpTimer timer("cross_entropy_forward");
    double* partials = reduce_scratch(2);
    double* sums = partials + REDUCE_BLOCKS * 2;
    cross_entropy_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, logits, targets, class_weight,
                                                                    N, C, ignore_index);
    launchCheck();
    sum_partials_kernel<<<1, 256>>>(sums, partials, REDUCE_BLOCKS, 2); launchCheck();
    ratio_kernel<<<1, 1>>>(loss, sums); launchCheck();
}

// block partials of sum_n w[t_n] over rows that are not ignored
__global__ void class_weight_sum_partial_kernel(double* partials, const int* targets, const float* class_weight,
                                                int N, int ignore_index) {
    double s = 0.0;
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
        int t = targets[n];
        if (t != ignore_index) s += class_weight ? class_weight[t] : 1.0;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// dlogits[n, c] += dloss w_t (softmax_c - [c == t]) / den; one warp per row
__global__ void cross_entropy_backward_kernel(float* dlogits, float dloss, const double* den_sum, const float* logits,
                                              const int* targets, const float* class_weight, int N, int C,
                                              int ignore_index) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    double den = *den_sum;
    int t = targets[row];
    if (den <= 0.0 || t == ignore_index) return;
    double w = class_weight ? class_weight[t] : 1.0;
    const float* x = logits + (size_t)row * C;
    double lse = warp_logsumexp(x, C, lane);
    float* dx = dlogits + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        double p = exp((double)x[c] - lse);
        dx[c] += (float)(dloss * w * (p - (c == t)) / den);
    }
}

extern "C" void cross_entropy_backward_cuda(float* dlogits, float dloss, const float* logits,
                                            const int* targets, const float* class_weight,
                                            int N, int C, int ignore_index) {
    OpTimer timer("cross_entropy_backward");
    if (N <= 0) return;
    double* partials = reduce_scratch(1);
    double* den = partials + REDUCE_BLOCKS;
    class_weight_sum_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, targets, class_weight, N, ignore_index);
    launchCheck();
    sum_partials_kernel<<<1, 256>>>(den, partials, REDUCE_BLOCKS, 1); launchCheck();
    cross_entropy_backward_kernel<<<(N + 7) / 8, 256>>>(dlogits, dloss, den, logits, targets, class_weight,
                                                        N, C, ignore_index);
    launchCheck();
}

// sigmoid BCE with logits, one block per row m: losses[m] = mean_p of
// max(x, 0) - x t + log(1 + exp(-|x|))
__global__ void sigmoid_bce_forward_kernel(float* losses, const float* logits, const float* targets, int P) {
    int m = blockIdx.x;
    double s = 0.0;
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        double x = logits[(size_t)m * P + p], t = targets[(size_t)m * P + p];
        s += (x > 0 ? x : 0) - x * t + log1p(exp(-fabs(x)));
    }
    s = block_sum(s);
    if (threadIdx.x == 0) losses[m] = (float)(s / P);
}

__global__ void sigmoid_bce_backward_kernel(float* dlogits, const float* dlosses, const float* logits,
                                            const float* targets, int M, int P) {
    size_t total = (size_t)M * P;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float k = dlosses[i / P] / P;
        float s = 1.0f / (1.0f + expf(-logits[i]));
        dlogits[i] += k * (s - targets[i]);
    }
}

extern "C" void sigmoid_bce_forward_cuda(float* losses, const float* logits, const float* targets, int M, int P) {
    OpTimer timer("sigmoid_bce_forward");
    if (M <= 0) return;
    sigmoid_bce_forward_kernel<<<M, 256>>>(losses, logits, targets, P); launchCheck();
}
extern "C" void sigmoid_bce_backward_cuda(float* dlogits, const float* dlosses, const float* logits,
                                          const float* targets, int M, int P) {
    OpTimer timer("sigmoid_bce_backward");
    size_t total = (size_t)M * P;
    if (total == 0) return;
    sigmoid_bce_backward_kernel<<<grid_for(total, 256), 256>>>(dlogits, dlosses, logits, targets, M, P); launchCheck();
}

// dice, one block per row m: sums of s t, s, t with s = sigmoid(logit) (double)
__global__ void dice_kernel(float* losses, float* dlogits, const float* dlosses, const float* logits,
                            const float* targets, int P, int backward) {
    int m = blockIdx.x;
    const float* x = logits + (size_t)m * P;
    const float* tg = targets + (size_t)m * P;
    double st = 0.0, ss = 0.0, stt = 0.0;
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        double s = 1.0 / (1.0 + exp(-(double)x[p]));
        st += s * tg[p]; ss += s; stt += tg[p];
    }
    st = block_sum(st); ss = block_sum(ss); stt = block_sum(stt);
    double num = 2.0 * st + 1.0, den = ss + stt + 1.0;
    if (!backward) {
        if (threadIdx.x == 0) losses[m] = (float)(1.0 - num / den);
        return;
    }
    // dloss/ds_p = -(2 t_p den - num) / den^2, ds/dx = s (1 - s)
    double dl = dlosses[m];
    float* dx = dlogits + (size_t)m * P;
    for (int p = threadIdx.x; p < P; p += blockDim.x) {
        double s = 1.0 / (1.0 + exp(-(double)x[p]));
        double g = -(2.0 * tg[p] * den - num) / (den * den);
        dx[p] += (float)(dl * g * s * (1.0 - s));
    }
}

extern "C" void dice_loss_forward_cuda(float* losses, const float* logits, const float* targets, int M, int P) {
    OpTimer timer("dice_loss_forward");
    if (M <= 0) return;
    dice_kernel<<<M, 256>>>(losses, NULL, NULL, logits, targets, P, 0); launchCheck();
}
extern "C" void dice_loss_backward_cuda(float* dlogits, const float* dlosses, const float* logits,
                                        const float* targets, int M, int P) {
    OpTimer timer("dice_loss_backward");
    if (M <= 0) return;
    dice_kernel<<<M, 256>>>(NULL, dlogits, dlosses, logits, targets, P, 1); launchCheck();
}

// ----------------------------------------------------------------------------
// optimizer and gradient norm

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t N,
                             float lr, float beta1, float beta2, float eps, float weight_decay, float c1, float c2) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        float g = grads[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi; v[i] = vi;
        float mhat = mi / c1, vhat = vi / c2;
        params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
    }
}

extern "C" void adamw_update_cuda(float* params, const float* grads, float* m, float* v, size_t N,
                                  float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    OpTimer timer("adamw_update");
    if (N == 0) return;
    // bias corrections on the host, with the same float arithmetic as the CPU reference
    float c1 = 1.0f - powf(beta1, (float)t), c2 = 1.0f - powf(beta2, (float)t);
    adamw_kernel<<<grid_for(N, 256), 256>>>(params, grads, m, v, N, lr, beta1, beta2, eps, weight_decay, c1, c2);
    launchCheck();
}

__global__ void double_to_float_kernel(float* out, const double* x) { *out = (float)*x; }

extern "C" void sum_squares_cuda(float* out, const float* x, size_t N) {
    OpTimer timer("sum_squares");
    double* partials = reduce_scratch(1);
    double* total = partials + REDUCE_BLOCKS;
    sum_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, x, N, 1); launchCheck();
    sum_partials_kernel<<<1, 256>>>(total, partials, REDUCE_BLOCKS, 1); launchCheck();
    double_to_float_kernel<<<1, 1>>>(out, total); launchCheck();
}

// ----------------------------------------------------------------------------
// ops of the model files (declared in their sections of ttt.h). Defined extern "C"
// explicitly, so they link whether or not that section has landed yet.

// Mask2Former attention mask: blocked = sigmoid(logit) < 0.5 (same float formula as the
// CPU); mask_add = -inf where blocked else 0; a row with every position blocked is
// reopened entirely. One warp per row (b, q) of T logits.
// one block per row (a query's T mask logits): at B*Q = 800 rows one warp per row gave 100 blocks
// for 132 SMs; the block learns whether any key is open with __syncthreads_or
__global__ void attn_mask_from_logits_kernel(float* mask_add, const float* logits, int T) {
    const float* x = logits + (size_t)blockIdx.x * T;
    float* m = mask_add + (size_t)blockIdx.x * T;
    int open = 0;
    for (int t = threadIdx.x; t < T; t += blockDim.x) {
        int blocked = 1.0f / (1.0f + expf(-x[t])) < 0.5f;
        m[t] = blocked ? -INFINITY : 0.0f;
        open |= !blocked;
    }
    if (!__syncthreads_or(open)) for (int t = threadIdx.x; t < T; t += blockDim.x) m[t] = 0.0f;
}

extern "C" void attn_mask_from_logits_cuda(float* mask_add, const float* logits, int B, int Q, int T) {
    OpTimer timer("attn_mask_from_logits");
    int rows = B * Q;
    if (rows <= 0 || T <= 0) return;
    attn_mask_from_logits_kernel<<<rows, 256>>>(mask_add, logits, T); launchCheck();
}

// MAE input and target (mae.c's op): one thread per pixel (b, y, x) of the padded
// Hp x Wp grid. inp4 (B, Hp, Wp, 4): normalised RGB, zero where masked or padding,
// channel 3 = 1 on visible pixels (all ones without a mask); target, target_mask (B, 48, Hp/4, Wp/4) with query
// q = c*16 + (y%4)*4 + (x%4). Same float arithmetic as the CPU reference.
__global__ void mae_prepare_input_kernel(float* inp4, float* target, float* target_mask, const float* rgb,
                                         const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                                         int all_pixels) {
    const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
    int nPw = Wp / ps, nPh = Hp / ps, H4 = Hp / 4, W4 = Wp / 4;
    size_t total = (size_t)B * Hp * Wp;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int x = i % Wp, y = (i / Wp) % Hp;
        size_t b = i / ((size_t)Wp * Hp);
        int inside = y < H && x < W;
        int masked = patch_mask ? patch_mask[(b * nPh + y / ps) * nPw + x / ps] : 0;
        float* o = inp4 ? inp4 + i * 4 : NULL;
        for (int c = 0; c < 3; c++) {
            float v = inside ? __fdiv_rn(rgb[((b * H + y) * W + x) * 3 + c] - mean[c], stdv[c]) : 0.0f;
            if (o) o[c] = masked ? 0.0f : v;
            int q = c * 16 + (y % 4) * 4 + (x % 4);
            size_t t = ((b * 48 + q) * H4 + y / 4) * W4 + x / 4;
            if (target) target[t] = v;
            if (target_mask) target_mask[t] = (inside && (masked || all_pixels)) ? 1.0f : 0.0f;
        }
        if (o) o[3] = patch_mask == NULL ? 1.0f : (inside && !masked) ? 1.0f : 0.0f;
    }
}

extern "C" void mae_prepare_input_cuda(float* inp4, float* target, float* target_mask, const float* rgb,
                                       const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                                       int all_pixels) {
    OpTimer timer("mae_prepare_input");
    size_t total = (size_t)B * Hp * Wp;
    if (total == 0) return;
    mae_prepare_input_kernel<<<grid_for(total, 256), 256>>>(inp4, target, target_mask, rgb, patch_mask,
                                                            B, H, W, Hp, Wp, ps, all_pixels);
    launchCheck();
}

// ----------------------------------------------------------------------------
// semantic inference (m2f_semantic_inference in mask2former.c is the CPU reference):
// per-query class probabilities, the class maps at 1/4 resolution, then the bilinear
// x4 resize, crop and argmax fused per output pixel. Same float operations in the same
// order as the reference, so ids differ only where two class scores tie within rounding.

// one thread per query: softmax over the K+1 logits (double sum, as the reference)
__global__ void semantic_probs_kernel(float* probs, const float* class_logits, int Q, int K1) {
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= Q) return;
    const float* lg = class_logits + (size_t)q * K1;
    float* p = probs + (size_t)q * K1;
    float mx = lg[0];
    for (int k = 1; k < K1; k++) mx = fmaxf(mx, lg[k]);
    double z = 0.0;
    for (int k = 0; k < K1; k++) { p[k] = expf(lg[k] - mx); z += p[k]; }
    for (int k = 0; k < K1; k++) p[k] = (float)(p[k] / z);
}

// seg[p, k] = sum_q probs[q, k] * sigmoid(mask[q, p]), one thread per (p, k), q ascending
__global__ void semantic_maps_kernel(float* seg, const float* probs, const float* mask_logits,
                                     int Q, int K, int HW) {
    size_t total = (size_t)HW * K;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int k = i % K;
        size_t p = i / K;
        float acc = 0.0f;
        for (int q = 0; q < Q; q++) {
            float s = 1.0f / (1.0f + expf(-mask_logits[(size_t)q * HW + p]));
            acc += probs[(size_t)q * (K + 1) + k] * s;
        }
        seg[i] = acc;
    }
}

// one thread per output pixel of Ho x Wo: class scores of the H x W crop resized to the
// output (identity when Ho = H, Wo = W), first argmax
__global__ void semantic_argmax_kernel(unsigned char* ids, const float* seg, int K, int H4, int W4, int H, int W,
                                       int Ho, int Wo) {
    size_t total = (size_t)Ho * Wo;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int x = i % Wo, y = i / Wo;
        int ya, yb, xa, xb; float ly, lx;
        bilinear_source(y, H, Ho, &ya, &yb, &ly);
        bilinear_source(x, W, Wo, &xa, &xb, &lx);
        int best = 0;
        float best_val = 0.0f;
        for (int k = 0; k < K; k++) {
            float top = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, ya, xa, k) + lx * seg_x4_at(seg, K, H4, W4, ya, xb, k);
            float bot = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, yb, xa, k) + lx * seg_x4_at(seg, K, H4, W4, yb, xb, k);
            float v = (1.0f - ly) * top + ly * bot;
            if (k == 0 || v > best_val) { best = k; best_val = v; }
        }
        ids[i] = (unsigned char)best;
    }
}

extern "C" void semantic_inference_cuda(unsigned char* ids, const float* class_logits, const float* mask_logits,
                                        int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work) {
    OpTimer timer("semantic_inference");
    if (H > 4 * H4 || W > 4 * W4) ttt_die("semantic inference: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int HW = H4 * W4;
    float* probs = work;                          // (Q, K+1)
    float* seg = work + (size_t)Q * (K + 1);      // (H4*W4, K)
    semantic_probs_kernel<<<(Q + 127) / 128, 128>>>(probs, class_logits, Q, K + 1); launchCheck();
    semantic_maps_kernel<<<grid_for((size_t)HW * K, 256), 256>>>(seg, probs, mask_logits, Q, K, HW); launchCheck();
    semantic_argmax_kernel<<<grid_for((size_t)Ho * Wo, 256), 256>>>(ids, seg, K, H4, W4, H, W, Ho, Wo); launchCheck();
}

// ============================================================================
// OTHER TEST-TIME TECHNIQUES (Table 1): the ops of the section of that name in ttt.h (CPU
// references in mae.c). Semantic scores reuse the semantic inference kernels above.
// ============================================================================

// the class scores of every output pixel (semantic_argmax_kernel's values, before its argmax)
__global__ void semantic_scores_kernel(float* scores, const float* seg, int K, int H4, int W4, int H, int W,
                                       int Ho, int Wo) {
    size_t total = (size_t)Ho * Wo;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int x = i % Wo, y = i / Wo;
        int ya, yb, xa, xb; float ly, lx;
        bilinear_source(y, H, Ho, &ya, &yb, &ly);
        bilinear_source(x, W, Wo, &xa, &xb, &lx);
        float* out = scores + i * K;
        for (int k = 0; k < K; k++) {
            float top = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, ya, xa, k) + lx * seg_x4_at(seg, K, H4, W4, ya, xb, k);
            float bot = (1.0f - lx) * seg_x4_at(seg, K, H4, W4, yb, xa, k) + lx * seg_x4_at(seg, K, H4, W4, yb, xb, k);
            out[k] = (1.0f - ly) * top + ly * bot;
        }
    }
}

extern "C" void semantic_scores_cuda(float* scores, const float* class_logits, const float* mask_logits,
                                     int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work) {
    OpTimer timer("semantic_scores");
    if (H > 4 * H4 || W > 4 * W4) ttt_die("semantic scores: image %dx%d larger than 4 x (%dx%d)", H, W, H4, W4);
    int HW = H4 * W4;
    float* probs = work;                          // (Q, K+1)
    float* seg = work + (size_t)Q * (K + 1);      // (H4*W4, K)
    semantic_probs_kernel<<<(Q + 127) / 128, 128>>>(probs, class_logits, Q, K + 1); launchCheck();
    semantic_maps_kernel<<<grid_for((size_t)HW * K, 256), 256>>>(seg, probs, mask_logits, Q, K, HW); launchCheck();
    semantic_scores_kernel<<<grid_for((size_t)Ho * Wo, 256), 256>>>(scores, seg, K, H4, W4, H, W, Ho, Wo); launchCheck();
}

// one thread per row: the first largest score; 255 when the confidence is not above min_conf
__global__ void class_argmax_kernel(unsigned char* ids, const float* scores, int N, int K, float min_conf) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)N; i += (size_t)gridDim.x * blockDim.x) {
        const float* s = scores + i * K;
        int best = 0;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) { if (s[k] > s[best]) best = k; sum += s[k]; }
        ids[i] = min_conf > 0.0f && !(s[best] / sum > min_conf) ? 255 : (unsigned char)best;
    }
}

extern "C" void class_argmax_cuda(unsigned char* ids, const float* scores, int N, int K, float min_conf) {
    OpTimer timer("class_argmax");
    class_argmax_kernel<<<grid_for((size_t)N, 256), 256>>>(ids, scores, N, K, min_conf); launchCheck();
}

__global__ void flip_width_kernel(float* out, const float* inp, int B, int H, int W, int C) {
    size_t total = (size_t)B * H * W * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int c = i % C;
        size_t pix = i / C;
        int x = pix % W;
        size_t row = pix / W;
        out[i] = inp[(row * W + (W - 1 - x)) * C + c];
    }
}

extern "C" void flip_width_cuda(float* out, const float* inp, int B, int H, int W, int C) {
    OpTimer timer("flip_width");
    flip_width_kernel<<<grid_for((size_t)B * H * W * C, 256), 256>>>(out, inp, B, H, W, C); launchCheck();
}

// one thread per pixel: each id counted at its first vote; the earliest of the most frequent wins
__global__ void majority_vote_kernel(unsigned char* ids, const unsigned char* votes, int V, int N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)N; i += (size_t)gridDim.x * blockDim.x) {
        int best = votes[i], best_count = 0;
        for (int j = 0; j < V; j++) {
            int c = votes[(size_t)j * N + i], seen = 0, count = 0;
            for (int l = 0; l < j; l++) seen |= votes[(size_t)l * N + i] == c;
            if (seen) continue;
            for (int l = j; l < V; l++) count += votes[(size_t)l * N + i] == c;
            if (count > best_count) { best = c; best_count = count; }
        }
        ids[i] = (unsigned char)best;
    }
}

extern "C" void majority_vote_cuda(unsigned char* ids, const unsigned char* votes, int V, int N) {
    OpTimer timer("majority_vote");
    majority_vote_kernel<<<grid_for((size_t)N, 256), 256>>>(ids, votes, V, N); launchCheck();
}

// LN Adapt: one warp per row; the row's statistics, its ring entry, the mixture, the output
__global__ void layernorm_adapt_kernel(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var,
                                       const int* state, const float* inp, const float* weight, const float* bias,
                                       int N, int C, float prior) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    int r = state[0], n = state[1], record = state[2];
    const float* x = inp + (size_t)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += x[c];
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) { float d = x[c] - m; v += d * d; }
    v = warp_sum(v) / C;
    if (record && lane == 0) { hist_mean[(size_t)r * N + row] = m; hist_var[(size_t)r * N + row] = v; }
    float sm = 0.0f, sv = 0.0f;
    for (int j = lane; j < n; j += 32) {   // this frame's entry from registers: no read-after-write
        int own = record && j == r;
        sm += own ? m : hist_mean[(size_t)j * N + row];
        sv += own ? v : hist_var[(size_t)j * N + row];
    }
    sm = warp_sum(sm); sv = warp_sum(sv);
    float mm = (prior * m + sm) / (prior + n), vv = (prior * v + sv) / (prior + n);
    float rs = rsqrtf(vv + LN_EPS);
    float* y = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) y[c] = (x[c] - mm) * rs * weight[c] + bias[c];
    if (lane == 0) { mean[row] = mm; rstd[row] = rs; }
}

extern "C" void layernorm_adapt_forward_cuda(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var,
                                             const int* state, const float* inp, const float* weight, const float* bias,
                                             int N, int C, int cap, float prior) {
    OpTimer timer("layernorm_adapt_forward");
    (void)cap;   // the ring entry and count come from the device (CUDA graphs replay them)
    layernorm_adapt_kernel<<<(N + 7) / 8, 256>>>(out, mean, rstd, hist_mean, hist_var, state, inp, weight, bias,
                                                 N, C, prior);
    launchCheck();
}

// Tent's entropy. work: probs (B, Q, K+1) | g (B, P, K) | ent (B, P) | da (B, Q, K+1)

// per pixel (b, p), in double as the CPU reference (the gradient P (log P + H) is a small
// difference when P is near uniform): seg[k] = sum_q a[b, q, k] sigmoid(m[b, q, p]), P =
// softmax(seg), H = -sum P log P into ent, g[b, p, k] = -scale P (log P + H); 0 outside Hv x Wv
__global__ void entropy_pixel_kernel(float* g, float* ent, const float* probs, const float* mask_logits, int B, int Q,
                                     int K, int W4, size_t P, int Hv, int Wv, float scale) {
    for (size_t bp = blockIdx.x * (size_t)blockDim.x + threadIdx.x; bp < (size_t)B * P; bp += (size_t)gridDim.x * blockDim.x) {
        size_t b = bp / P, p = bp % P;
        int y = p / W4, x = p % W4;
        float* gp = g + bp * K;
        if (y >= Hv || x >= Wv) { for (int k = 0; k < K; k++) gp[k] = 0.0f; ent[bp] = 0.0f; continue; }
        double seg[256];
        for (int k = 0; k < K; k++) seg[k] = 0.0;
        for (int q = 0; q < Q; q++) {
            double s = 1.0 / (1.0 + exp(-(double)mask_logits[(b * Q + q) * P + p]));
            const float* a = probs + (b * Q + q) * (K + 1);
            for (int k = 0; k < K; k++) seg[k] += a[k] * s;
        }
        double mx = seg[0], z = 0.0, H = 0.0;
        for (int k = 1; k < K; k++) mx = fmax(mx, seg[k]);
        for (int k = 0; k < K; k++) z += exp(seg[k] - mx);
        double logz = log(z);
        for (int k = 0; k < K; k++) { double lp = seg[k] - mx - logz; H -= exp(lp) * lp; }
        for (int k = 0; k < K; k++) { double lp = seg[k] - mx - logz; gp[k] = (float)(-scale * exp(lp) * (lp + H)); }
        ent[bp] = (float)H;
    }
}

static void entropy_pixels_cuda(const float* class_logits, const float* mask_logits, int B, int Q, int K, int H4, int W4,
                                int Hv, int Wv, float scale, float* work) {
    size_t P = (size_t)H4 * W4;
    float* probs = work;
    float* g = probs + (size_t)B * Q * (K + 1);
    float* ent = g + (size_t)B * P * K;
    semantic_probs_kernel<<<(B * Q + 127) / 128, 128>>>(probs, class_logits, B * Q, K + 1); launchCheck();
    if (K > 256) ttt_die("semantic_entropy: at most 256 classes, got %d", K);
    entropy_pixel_kernel<<<grid_for((size_t)B * P, 128), 128>>>(g, ent, probs, mask_logits, B, Q, K, W4, P, Hv, Wv, scale);
    launchCheck();
}

__global__ void scaled_double_to_float_kernel(float* out, const double* x, double s) { *out = (float)(*x * s); }

extern "C" void semantic_entropy_forward_cuda(float* loss, const float* class_logits, const float* mask_logits,
                                              int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
    OpTimer timer("semantic_entropy_forward");
    size_t P = (size_t)H4 * W4;
    entropy_pixels_cuda(class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, 0.0f, work);
    const float* ent = work + (size_t)B * Q * (K + 1) + (size_t)B * P * K;
    double* partials = reduce_scratch(1);
    double* total = partials + REDUCE_BLOCKS;
    sum_partial_kernel<<<REDUCE_BLOCKS, REDUCE_THREADS>>>(partials, ent, (size_t)B * P, 0); launchCheck();
    sum_partials_kernel<<<1, 256>>>(total, partials, REDUCE_BLOCKS, 1); launchCheck();
    scaled_double_to_float_kernel<<<1, 1>>>(loss, total, 1.0 / ((double)B * Hv * Wv)); launchCheck();
}

// da[b, q, k] = sum_p g[b, p, k] sigmoid(m[b, q, p]) (k < K), da[b, q, K] = 0; one warp per (b, q, k)
__global__ void entropy_da_kernel(float* da, const float* g, const float* mask_logits, int BQ, int Q, int K, size_t P) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (w >= (size_t)BQ * (K + 1)) return;
    int k = w % (K + 1);
    size_t bq = w / (K + 1), b = bq / Q;
    float acc = 0.0f;
    if (k < K)
        for (size_t p = lane; p < P; p += 32)
            acc += g[(b * P + p) * K + k] * (1.0f / (1.0f + expf(-mask_logits[bq * P + p])));
    acc = warp_sum(acc);
    if (lane == 0) da[w] = acc;
}

// dclass[b, q, j] += a_j (da_j - sum_k a_k da_k); one thread per (b, q)
__global__ void entropy_dclass_kernel(float* dclass, const float* probs, const float* da, int BQ, int K1) {
    for (size_t bq = blockIdx.x * (size_t)blockDim.x + threadIdx.x; bq < (size_t)BQ; bq += (size_t)gridDim.x * blockDim.x) {
        const float* a = probs + bq * K1;
        const float* d = da + bq * K1;
        float dot = 0.0f;
        for (int k = 0; k < K1; k++) dot += a[k] * d[k];
        for (int k = 0; k < K1; k++) dclass[bq * K1 + k] += a[k] * (d[k] - dot);
    }
}

// dmask[b, q, p] += s (1 - s) sum_k a[b, q, k] g[b, p, k]; one thread per (b, q, p)
__global__ void entropy_dmask_kernel(float* dmask, const float* probs, const float* g, const float* mask_logits,
                                     int BQ, int Q, int K, size_t P) {
    size_t total = (size_t)BQ * P;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t bq = i / P, p = i % P, b = bq / Q;
        const float* a = probs + bq * (K + 1);
        const float* gp = g + (b * P + p) * K;
        double ds = 0.0;   // a small sum of terms of both signs: double, as the reference
        for (int k = 0; k < K; k++) ds += (double)gp[k] * a[k];
        float s = 1.0f / (1.0f + expf(-mask_logits[i]));
        dmask[i] += (float)(ds * s * (1.0f - s));
    }
}

extern "C" void semantic_entropy_backward_cuda(float* dclass_logits, float* dmask_logits, float dloss,
                                               const float* class_logits, const float* mask_logits,
                                               int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work) {
    OpTimer timer("semantic_entropy_backward");
    size_t P = (size_t)H4 * W4;
    float scale = (float)(dloss / ((double)B * Hv * Wv));
    entropy_pixels_cuda(class_logits, mask_logits, B, Q, K, H4, W4, Hv, Wv, scale, work);
    const float* probs = work;
    const float* g = probs + (size_t)B * Q * (K + 1);
    float* da = (float*)g + (size_t)B * P * K + (size_t)B * P;
    int BQ = B * Q;
    if (dclass_logits) {
        size_t threads = (size_t)BQ * (K + 1) * 32;
        entropy_da_kernel<<<(unsigned int)((threads + 255) / 256), 256>>>(da, g, mask_logits, BQ, Q, K, P); launchCheck();
        entropy_dclass_kernel<<<grid_for((size_t)BQ, 128), 128>>>(dclass_logits, probs, da, BQ, K + 1); launchCheck();
    }
    if (dmask_logits) {
        entropy_dmask_kernel<<<grid_for((size_t)BQ * P, 256), 256>>>(dmask_logits, probs, g, mask_logits, BQ, Q, K, P);
        launchCheck();
    }
}

// ----------------------------------------------------------------------------
// the card's dense bf16 matrix rate, measured (dev/bench.c prints it beside the model's rate):
// C (n, n) = A @ B in bf16 with float32 sums (cublasGemmEx, CUBLAS_COMPUTE_32F), A and B random
// (not zero: zeros draw less power and would flatter the clock), `warmup` calls, then `iters`
// timed between CUDA events. Not counted in ttt_cuda_gemm_flops. Buffers freed before returning.

#include <cuda_bf16.h>

__global__ void fill_bf16_random_kernel(__nv_bfloat16* x, size_t n, unsigned int seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 2654435761u ^ seed;   // integer hash -> uniform in [-1, 1)
        h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
        x[i] = __float2bfloat16((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

extern "C" double ttt_cuda_bf16_peak_tflops(int n, int warmup, int iters) {
    if (n <= 0 || iters <= 0) ttt_die("internal: ttt_cuda_bf16_peak_tflops(%d, %d, %d)", n, warmup, iters);
    size_t nn = (size_t)n * n;
    __nv_bfloat16* A = (__nv_bfloat16*)ttt_cuda_malloc(nn * sizeof(__nv_bfloat16));
    __nv_bfloat16* B = (__nv_bfloat16*)ttt_cuda_malloc(nn * sizeof(__nv_bfloat16));
    __nv_bfloat16* C = (__nv_bfloat16*)ttt_cuda_malloc(nn * sizeof(__nv_bfloat16));
    fill_bf16_random_kernel<<<grid_for(nn, 256), 256>>>(A, nn, 1u); launchCheck();
    fill_bf16_random_kernel<<<grid_for(nn, 256), 256>>>(B, nn, 2u); launchCheck();
    float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t ev[2];
    cudaCheck(cudaEventCreate(&ev[0]));
    cudaCheck(cudaEventCreate(&ev[1]));
    for (int it = -warmup; it < iters; it++) {
        if (it == 0) cudaCheck(cudaEventRecord(ev[0], cudaStreamPerThread));
        cublasCheck(cublasGemmEx(get_cublas(), CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, A, CUDA_R_16BF, n,
                                 B, CUDA_R_16BF, n, &beta, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    cudaCheck(cudaEventRecord(ev[1], cudaStreamPerThread));
    cudaCheck(cudaEventSynchronize(ev[1]));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    cudaCheck(cudaEventDestroy(ev[0]));
    cudaCheck(cudaEventDestroy(ev[1]));
    ttt_cuda_free(A); ttt_cuda_free(B); ttt_cuda_free(C);
    return 2.0 * (double)n * n * n * iters / (ms * 1e-3) / 1e12;
}

// ============================================================================
// BF16 OPERANDS: real bf16 matrix products under TTT_PRECISION=bf16
// ============================================================================
// CUBLAS_COMPUTE_32F_FAST_16BF on float32 storage (gemm_rm in bf16 mode) ran no faster than TF32
// on the H200; a GEMM whose operands are STORED in bf16 (float32 output and sums,
// CUBLAS_COMPUTE_32F) runs at ~600-790 TFLOP/s there vs ~310 for TF32. So in bf16 mode:
//   conv2d (every conv but the 1x1 same-grid ones, which are linears): the im2col matrix is
//     built in bf16 and multiplied by a bf16 copy of the weight in ONE GEMM per chunk of output
//     pixels (instead of the 9 shifted float32 GEMMs); the backward's dweight is one GEMM per
//     chunk on bf16 copies of dout and the recomputed columns; dinp is the transposed
//     convolution: a bf16 im2col of dout around each INPUT pixel (below) times the weight
//     rearranged to (C, K*K*OC), accumulated into dinp by the GEMM (beta = 1: no atomics); at
//     stride 1 only (a strided conv's dinp: the float32 im2col path, FAST_16BF).
//     Off with TTT_BF16_CONV=0 (then the float32 paths above, FAST_16BF).
//     With TTT_CONV_IMPLICIT=1, same-size 3x3 convs with Cin % 32 == 0: forward and dinp by the
//     implicit GEMM below (conv3x3_implicit_bf16_kernel: no im2col buffer; off by default: slower).
//   linear: bf16 copies of inp and weight (backward: dout, weight, inp), one bf16 GEMM per chunk
//     of rows, where bf16_linear_taken's size rule says it pays; TTT_BF16_LINEAR=0: never.
// Biases and bias gradients stay float32 (add_bias, column_sum_accumulate). The bf16
// buffers live in ws_bf16, in chunks of rows so it stays under bf16_scratch_elems (512 MiB);
// each part starts 256-byte aligned (cuBLAS's fast kernels want 16-byte aligned operands).
// Rounding: float -> bf16 to nearest even (8 significant bits, relative error <= 2^-9 per
// operand); test/gpu_ops checks the results against the float32 CPU reference (L2 < 2e-2).
//
// The transposed im2col. Forward: out[b, oy, ox, o] = sum over (ky, kx, c) of
//   inp[b, oy*s - pad + ky, ox*s - pad + kx, c] * weight[o, ky, kx, c]
// so an input pixel (iy, ix) meets the output pixel (oy, ox) through tap (ky, kx) exactly when
// oy*s = iy + pad - ky and ox*s = ix + pad - kx. Hence
//   dinp[b, iy, ix, c] = sum over (ky, kx, o) of dcolT[(b, iy, ix), (ky, kx, o)] * wt[c, (ky, kx, o)]
//   dcolT[(b, iy, ix), (ky, kx, o)] = dout[b, (iy + pad - ky)/s, (ix + pad - kx)/s, o] when both
//       divisions are exact and land inside (Ho, Wo), else 0
//   wt[c, (ky, kx, o)] = weight[o, ky, kx, c]
// For the same-size 3x3 conv (s = 1, pad = 1) dcolT's row is the 3x3 neighbourhood of dout
// around (iy, ix), flipped: tap (ky, kx) reads dout at (iy + 1 - ky, ix + 1 - kx).

#define BF16_SCRATCH_DEFAULT ((size_t)256 << 20)   // bf16 elements: 512 MiB
static Workspace ws_bf16;                           // bf16 operands of the current op
static size_t bf16_scratch_elems = BF16_SCRATCH_DEFAULT;
static int bf16_linear_mode = -1;   // -1 unread, 0 off, 1 the size rule, 2 every linear (test hook)
static int bf16_conv_on = -1;       // -1 unread, 0 off, 1 on
static long bf16_calls[2];          // ops done on bf16 operands: 0 linear, 1 conv2d

extern "C" void ttt_cuda_set_bf16_scratch(size_t n) { bf16_scratch_elems = n ? n : BF16_SCRATCH_DEFAULT; }
extern "C" void ttt_cuda_set_bf16_linear(int mode) { bf16_linear_mode = mode < 0 ? -1 : mode; }
extern "C" void ttt_cuda_set_bf16_conv(int on) { bf16_conv_on = on < 0 ? -1 : on != 0; }
extern "C" long ttt_cuda_bf16_calls(int which) { return bf16_calls[which != 0]; }

// an environment switch that must be 0 or 1 when set; `fallback` when unset or empty
static int env_switch01(const char* name, int fallback) {
    const char* e = getenv(name);
    if (e == NULL || e[0] == '\0') return fallback;
    if (strcmp(e, "0") != 0 && strcmp(e, "1") != 0) ttt_die("%s: expected 0 or 1, got '%s'", name, e);
    return e[0] == '1';
}

static int bf16_conv_taken(int C) {
    if (ttt_cuda_precision() != PRECISION_BF16 || C <= 0) return 0;
    if (bf16_conv_on < 0) bf16_conv_on = env_switch01("TTT_BF16_CONV", 1);
    return bf16_conv_on;
}

// The size rule for linears in bf16 mode: converting the operands costs an extra pass over them
// (read float32, write bf16), which pays only where the products dominate: both widths C and OC
// at least 192 (narrower products are bound by memory either way) and at least 2^30
// multiply-adds (smaller ones take microseconds, e.g. Mask2Former's 100-query layers, where the
// extra launches would be most of the time). The lead measures it (TTT_BF16_LINEAR=0 vs 1).
// 0: bf16 linears off (TTT_BF16_LINEAR=0, or not bf16 precision), 1: the size rules, 2: every linear
static int bf16_linear_switch(void) {
    if (ttt_cuda_precision() != PRECISION_BF16) return 0;
    if (bf16_linear_mode < 0) bf16_linear_mode = env_switch01("TTT_BF16_LINEAR", 1);
    return bf16_linear_mode;
}
static int bf16_linear_taken(int rows, int C, int OC) {
    int mode = bf16_linear_switch();
    if (mode == 0 || C <= 0 || rows <= 0 || OC <= 0) return 0;
    if (mode >= 2) return 1;
    return C >= 192 && OC >= 192 && (double)rows * C * OC >= 1073741824.0;
}
extern "C" int ttt_cuda_bf16_linear_taken(int rows, int C, int OC) { return bf16_linear_taken(rows, C, OC); }

// the rule of the mlp (fc2(gelu(fc1(x))), x (rows, C), hidden width Ch) in bf16 (mlp_forward_bf16):
// the hidden width Ch >= 192 and at least 2^30 multiply-adds per product. The input width C does
// not matter: the (rows, Ch) tensors, Ch / C times larger than x, are what the bf16 path halves
// (fc1's output kept in bf16, the hidden and its gradient only in bf16), so Swin-S stage 1's
// (C 96, Ch 384) is taken too; the same switch and test mode as bf16_linear_taken
static int bf16_mlp_taken(int rows, int C, int Ch) {
    int mode = bf16_linear_switch();
    if (mode == 0 || C <= 0 || rows <= 0 || Ch <= 0) return 0;
    if (mode >= 2) return 1;
    return Ch >= 192 && (double)rows * C * Ch >= 1073741824.0;
}

// bf16 elements rounded up to 256 bytes: every part of ws_bf16 starts aligned
static size_t bf16_round(size_t n) { return (n + 127) / 128 * 128; }

// rows per chunk when each row takes row_elems bf16 of the scratch: a multiple of 8 where
// possible (float32 outputs of later chunks stay 32-byte aligned), at least 1, at most total
static size_t bf16_chunk_rows(size_t total, size_t row_elems) {
    size_t r = bf16_scratch_elems / (row_elems > 0 ? row_elems : 1);
    if (r >= 8) r -= r % 8;
    if (r < 1) r = 1;
    return r < total ? r : total;
}

// dst (n) = src (n) rounded to bf16, four values per thread with two bf16 pairs stored when dst is
// 8-byte aligned (vec4): float4 loads when src is 16-byte aligned too, else four float loads (a
// weight inside the packed parameter buffer is often only 4-byte aligned; the warp's loads still
// cover whole lines); the tail, and everything when !vec4, one float at a time
__global__ void float_to_bf16_kernel(__nv_bfloat16* dst, const float* src, size_t n, int vec4, int src16) {
    size_t start = blockIdx.x * (size_t)blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (vec4) {
        size_t n4 = n / 4;
        for (size_t i = start; i < n4; i += step) {
            float4 v;
            if (src16) v = reinterpret_cast<const float4*>(src)[i];
            else v = make_float4(src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]);
            __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(dst + 4 * i);
            d[0] = __floats2bfloat162_rn(v.x, v.y);
            d[1] = __floats2bfloat162_rn(v.z, v.w);
        }
        done = 4 * n4;
    }
    for (size_t i = done + start; i < n; i += step) dst[i] = __float2bfloat16(src[i]);
}

static void to_bf16(__nv_bfloat16* dst, const float* src, size_t n) {
    if (n == 0) return;
    int vec4 = (uintptr_t)dst % 8 == 0, src16 = (uintptr_t)src % 16 == 0;
    float_to_bf16_kernel<<<grid_for(vec4 ? (n + 3) / 4 : n, 256), 256>>>(dst, src, n, vec4, src16); launchCheck();
}

// C (M, N) = op(A) (M, K) @ op(B) (K, N) + beta * C, row-major with leading dimensions as in
// gemm_rm (same operand swap for column-major cuBLAS); A and B bf16, C float32, float32 sums.
// A misaligned C goes through gemm_rm's C scratch (ws_stage[2]); K > 0.
static void gemm_bf16_rm(bool transA, bool transB, int M, int N, int K, const __nv_bfloat16* A, int lda,
                         const __nv_bfloat16* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    float* Cs = misaligned(C, ldc) ? stage_output(C, M, N, ldc, beta) : C;
    float alpha = 1.0f;
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    gemm_flop_count += 2.0 * M * N * (double)K;
    cublasCheck(cublasGemmEx(get_cublas(), opB, opA, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                             &beta, Cs, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    unstage_output(C, Cs, M, N, ldc);
}

// V floats at s, or V zeros when !inside, rounded to bf16 at d (V = 4: s 16-byte, d 8-byte aligned)
template <int V>
__device__ __forceinline__ void put_bf16(__nv_bfloat16* d, const float* s, bool inside) {
    if (V == 4) {
        float4 v = inside ? *reinterpret_cast<const float4*>(s) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        __nv_bfloat162* d2 = reinterpret_cast<__nv_bfloat162*>(d);
        d2[0] = __floats2bfloat162_rn(v.x, v.y);
        d2[1] = __floats2bfloat162_rn(v.z, v.w);
    } else {
        for (int v = 0; v < V; v++) d[v] = __float2bfloat16(inside ? s[v] : 0.0f);
    }
}

// A bf16 im2col of src (B, Hs, Ws, Cs): row r is pixel r0 + r of a (B, Hr, Wr) grid, its K x K
// taps in (ky, kx, c) order, zeros where a tap reaches no pixel. Forward (TRANSPOSED false): the
// rows are output pixels (y, x) and tap (ky, kx) reads src (the input) at (y*s - pad + ky,
// x*s - pad + kx), as im2col_kernel. Transposed: the rows are input pixels (iy, ix), src is dout
// (Ho, Wo, OC) and tap (ky, kx) reads it at ((iy + pad - ky)/s, (ix + pad - kx)/s) where both
// divisions are exact (the transposed im2col, section comment). One block per row, threads over
// groups of V channels (V = 4 when Cs % 4 == 0 and src is 16-byte aligned).
template <int V, bool TRANSPOSED>
__global__ void im2col_bf16_kernel(__nv_bfloat16* col, const float* src, int Hs, int Ws, int Cs, int Hr, int Wr,
                                   int K, int stride, int pad, size_t r0, size_t nr) {
    int groups = Cs / V, row_groups = K * K * groups;
    size_t KKC = (size_t)K * K * Cs;
    for (size_t r = blockIdx.x; r < nr; r += gridDim.x) {
        size_t p = r0 + r;
        int x = (int)(p % Wr), y = (int)((p / Wr) % Hr);
        size_t b = p / ((size_t)Wr * Hr);
        __nv_bfloat16* d = col + r * KKC;
        for (int e = threadIdx.x; e < row_groups; e += blockDim.x) {
            int tap = e / groups, c = (e - tap * groups) * V;
            int ky = tap / K, kx = tap - ky * K;
            int sy, sx;
            bool inside;
            if (!TRANSPOSED) {
                sy = y * stride - pad + ky; sx = x * stride - pad + kx;
                inside = sy >= 0 && sy < Hs && sx >= 0 && sx < Ws;
            } else {
                int ny = y + pad - ky, nx = x + pad - kx;   // sy * stride, sx * stride when the tap reaches one
                sy = ny / stride; sx = nx / stride;
                inside = ny >= 0 && nx >= 0 && sy * stride == ny && sx * stride == nx && sy < Hs && sx < Ws;
            }
            const float* sp = src + ((b * Hs + (inside ? sy : 0)) * Ws + (inside ? sx : 0)) * Cs + c;
            put_bf16<V>(d + (size_t)tap * Cs + c, sp, inside);
        }
    }
}

// wt (C, KK*OC) in bf16: wt[c, tap*OC + o] = weight[o, tap, c], weight (OC, KK, C), KK = K*K
__global__ void conv_weight_transpose_bf16_kernel(__nv_bfloat16* wt, const float* weight, int C, int OC, int KK) {
    size_t KKOC = (size_t)KK * OC, total = (size_t)C * KKOC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t c = i / KKOC;
        int j = (int)(i - c * KKOC), tap = j / OC, o = j - tap * OC;
        wt[i] = __float2bfloat16(weight[((size_t)o * KK + tap) * C + c]);
    }
}

// threads per block of the one-block-per-row kernels above: row_groups rounded to a warp, <= 128
static int bf16_row_threads(size_t row_groups) { return row_groups >= 128 ? 128 : (row_groups >= 64 ? 64 : 32); }

// the launch of im2col_bf16_kernel: float4 reads where the channels allow
template <bool TRANSPOSED>
static void im2col_bf16_launch(__nv_bfloat16* col, const float* src, int Hs, int Ws, int Cs, int Hr, int Wr, int K,
                               int stride, int pad, size_t r0, size_t nr) {
    if ((Cs % 4 == 0) && (uintptr_t)src % 16 == 0)
        im2col_bf16_kernel<4, TRANSPOSED><<<grid_for(nr, 1), bf16_row_threads((size_t)K * K * Cs / 4)>>>(
            col, src, Hs, Ws, Cs, Hr, Wr, K, stride, pad, r0, nr);
    else
        im2col_bf16_kernel<1, TRANSPOSED><<<grid_for(nr, 1), bf16_row_threads((size_t)K * K * Cs)>>>(
            col, src, Hs, Ws, Cs, Hr, Wr, K, stride, pad, r0, nr);
    launchCheck();
}

// col (np, K*K*C): output pixels p0 .. p0 + np - 1 of (B, Ho, Wo), their patches of inp (B, H, W, C)
static void im2col_bf16(__nv_bfloat16* col, const float* inp, int H, int W, int C, int K, int stride, int pad,
                        int Ho, int Wo, size_t p0, size_t np) {
    im2col_bf16_launch<false>(col, inp, H, W, C, Ho, Wo, K, stride, pad, p0, np);
}

// dcolT (nq, K*K*OC): input pixels q0 .. q0 + nq - 1 of (B, H, W), the taps of dout (B, Ho, Wo, OC)
static void im2col_transposed_bf16(__nv_bfloat16* dcol, const float* dout, int H, int W, int OC, int K, int stride,
                                   int pad, int Ho, int Wo, size_t q0, size_t nq) {
    im2col_bf16_launch<true>(dcol, dout, Ho, Wo, OC, H, W, K, stride, pad, q0, nq);
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias, operands in bf16; rows in chunks
static void linear_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                                int N, int C, int OC) {
    size_t rows = bf16_chunk_rows((size_t)N, (size_t)C);
    size_t wpart = bf16_round((size_t)OC * C);
    __nv_bfloat16* w = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + rows * C) * sizeof(__nv_bfloat16));
    __nv_bfloat16* x = w + wpart;
    to_bf16(w, weight, (size_t)OC * C);
    for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
        size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
        to_bf16(x, inp + r0 * C, nr * C);
        // out rows (nr, OC) = inp rows (nr, C) @ weight (OC, C)^T
        gemm_bf16_rm(false, true, (int)nr, OC, C, x, C, w, C, 0.0f, out + r0 * OC, OC);
    }
    if (bias) add_bias(out, bias, (size_t)N, OC);
    bf16_calls[0]++;
}

// dst (nr, OC) = src in bf16, and dbias (OC) += src's column sums when dbias is not NULL
static void to_bf16_column_sum(__nv_bfloat16* dst, float* dbias, const float* src, size_t nr, int OC) {
    if (dbias == NULL) to_bf16(dst, src, nr * OC);
    else column_sum_convert(dst, dbias, src, (const float*)NULL, NULL, (int)nr, OC);
}

// dinp (N, C) = dout @ weight + dinp_beta * dinp (1: accumulate, 0: write), dweight (OC, C) +=
// dout^T @ inp on bf16 copies, rows in chunks (each chunk's dinp rows by one product: each row's
// beta applies once); dbias (OC) += column sums of dout in float32 (summed while dout is converted)
static void linear_backward_bf16(float* dinp, float dinp_beta, float* dweight, float* dbias, const float* dout,
                                 const float* inp, const float* weight, int N, int C, int OC) {
    if (dinp || dweight) {
        // per row of a chunk: dout's OC, and inp's C for dweight
        size_t rows = bf16_chunk_rows((size_t)N, (size_t)OC + (dweight ? C : 0));
        size_t wpart = dinp ? bf16_round((size_t)OC * C) : 0, dpart = bf16_round(rows * OC);
        size_t xpart = dweight ? rows * C : 0;
        __nv_bfloat16* w = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + dpart + xpart) * sizeof(__nv_bfloat16));
        __nv_bfloat16* d = w + wpart;
        __nv_bfloat16* x = d + dpart;
        if (dinp) to_bf16(w, weight, (size_t)OC * C);
        for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
            size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
            to_bf16_column_sum(d, dbias, dout + r0 * OC, nr, OC);
            // dinp rows (nr, C) = dout rows (nr, OC) @ weight (OC, C) + dinp_beta * dinp rows
            if (dinp) gemm_bf16_rm(false, false, (int)nr, C, OC, d, OC, w, C, dinp_beta, dinp + r0 * C, C);
            if (dweight) {
                // dweight (OC, C) += dout rows^T (OC, nr) @ inp rows (nr, C)
                to_bf16(x, inp + r0 * C, nr * C);
                gemm_bf16_rm(true, false, OC, C, (int)nr, d, OC, x, C, 1.0f, dweight, C);
            }
        }
    } else if (dbias) {
        column_sum_accumulate(dbias, dout, N, OC);   // no products: the sums alone
    }
    bf16_calls[0]++;
}

// Swin's MLP on bf16 operands (mlp_forward_cuda / mlp_backward_cuda when bf16_mlp_taken). The
// (N, Ch) tensors are Ch / C = 4 times larger than x and out, so they never exist in float32:
//   forward  pre = bf16(x) @ bf16(w1)^T, written as bf16 by the product (the first half of the
//            caller's float32 pre buffer holds it: (N, Ch) bf16 values); hidden = gelu(pre + b1)
//            rounded to bf16 (mlp_gelu); out = hidden @ bf16(w2)^T + b2 in float32
//   backward hidden recomputed from pre; dw2 += dout^T hidden; dhidden = dout @ w2 written as
//            bf16 over hidden; dpre = dhidden * gelu'(pre + b1) in place with db1 += its column
//            sums (column_sum_convert); dx = dpre @ w1 (written); dw1 += dpre^T x
// Every product sums in float32; the bf16 roundings are those of the operands plus pre's and
// dhidden's (each 2^-9 relative, the size of the operand rounding already there). The caller's
// hidden and dhidden buffers are not used. Rows in chunks of the bf16 scratch.

// C (M, N) = op(A) @ op(B) written as bf16 (beta 0), otherwise as gemm_bf16_rm
static void gemm_bf16_rm_bf16_out(bool transA, bool transB, int M, int N, int K, const __nv_bfloat16* A, int lda,
                                  const __nv_bfloat16* B, int ldb, __nv_bfloat16* C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    float alpha = 1.0f, beta = 0.0f;
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    gemm_flop_count += 2.0 * M * N * (double)K;
    cublasCheck(cublasGemmEx(get_cublas(), opB, opA, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                             &beta, C, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void mlp_forward_bf16(float* out, float* pre, const float* x, const float* w1, const float* b1,
                             const float* w2, const float* b2, int N, int C, int Ch) {
    __nv_bfloat16* preb = (__nv_bfloat16*)pre;   // (N, Ch)
    size_t rows = bf16_chunk_rows((size_t)N, (size_t)C + Ch);
    size_t wpart = bf16_round((size_t)Ch * C), xpart = bf16_round(rows * C);
    __nv_bfloat16* w1b =
        (__nv_bfloat16*)workspace_get(&ws_bf16, (2 * wpart + xpart + rows * Ch) * sizeof(__nv_bfloat16));
    __nv_bfloat16* w2b = w1b + wpart;   // (C, Ch)
    __nv_bfloat16* xb = w2b + wpart;    // (rows, C)
    __nv_bfloat16* hb = xb + xpart;     // (rows, Ch)
    to_bf16(w1b, w1, (size_t)Ch * C);
    to_bf16(w2b, w2, (size_t)C * Ch);
    for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
        size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
        to_bf16(xb, x + r0 * C, nr * C);
        // pre rows (nr, Ch) = x rows (nr, C) @ w1 (Ch, C)^T, without b1
        gemm_bf16_rm_bf16_out(false, true, (int)nr, Ch, C, xb, C, w1b, C, preb + r0 * Ch, Ch);
        mlp_gelu<__nv_bfloat16, 0>(hb, preb + r0 * Ch, b1, nr, Ch);
        // out rows (nr, C) = hidden rows (nr, Ch) @ w2 (C, Ch)^T
        gemm_bf16_rm(false, true, (int)nr, C, Ch, hb, Ch, w2b, Ch, 0.0f, out + r0 * C, C);
    }
    if (b2) add_bias(out, b2, (size_t)N, C);
    bf16_calls[0] += 2;
}

static void mlp_backward_bf16(float* dx, float* dw1, float* db1, float* dw2, float* db2, const float* dout,
                              const float* pre, const float* x, const float* w1, const float* b1, const float* w2,
                              int N, int C, int Ch) {
    const __nv_bfloat16* preb = (const __nv_bfloat16*)pre;   // (N, Ch), mlp_forward_bf16's
    size_t rows = bf16_chunk_rows((size_t)N, 2 * (size_t)C + Ch);
    size_t wpart = bf16_round((size_t)Ch * C), cpart = bf16_round(rows * C);
    __nv_bfloat16* w1b =
        (__nv_bfloat16*)workspace_get(&ws_bf16, (2 * wpart + 2 * cpart + rows * Ch) * sizeof(__nv_bfloat16));
    __nv_bfloat16* w2b = w1b + wpart;   // (C, Ch)
    __nv_bfloat16* db = w2b + wpart;    // dout rows (rows, C)
    __nv_bfloat16* xb = db + cpart;     // x rows (rows, C)
    __nv_bfloat16* hb = xb + cpart;     // hidden rows, then dhidden, then dpre (rows, Ch)
    to_bf16(w1b, w1, (size_t)Ch * C);
    to_bf16(w2b, w2, (size_t)C * Ch);
    for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
        size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
        const __nv_bfloat16* pr = preb + r0 * Ch;
        to_bf16_column_sum(db, db2, dout + r0 * C, nr, C);   // db2 += column sums of dout
        if (dw2) {
            // dw2 (C, Ch) += dout rows^T (C, nr) @ gelu(pre + b1) rows (nr, Ch)
            mlp_gelu<__nv_bfloat16, 0>(hb, pr, b1, nr, Ch);
            gemm_bf16_rm(true, false, C, Ch, (int)nr, db, C, hb, Ch, 1.0f, dw2, Ch);
        }
        // dhidden rows (nr, Ch) = dout rows (nr, C) @ w2 (C, Ch); dpre = dhidden * gelu'(pre + b1)
        gemm_bf16_rm_bf16_out(false, false, (int)nr, Ch, C, db, C, w2b, Ch, hb, Ch);
        column_sum_convert(hb, db1, hb, pr, b1, (int)nr, Ch);   // in place; db1 += its column sums
        // dx rows (nr, C) = dpre rows (nr, Ch) @ w1 (Ch, C), written
        if (dx) gemm_bf16_rm(false, false, (int)nr, C, Ch, hb, Ch, w1b, C, 0.0f, dx + r0 * C, C);
        if (dw1) {
            // dw1 (Ch, C) += dpre rows^T (Ch, nr) @ x rows (nr, C)
            to_bf16(xb, x + r0 * C, nr * C);
            gemm_bf16_rm(true, false, Ch, C, (int)nr, hb, Ch, xb, C, 1.0f, dw1, C);
        }
    }
    bf16_calls[0] += 2;
}

// ----------------------------------------------------------------------------
// Swin's qkv linear and window attention as one op (ttt.h). The bf16 path (qkv_watt_bf16_taken):
//   forward  qkv = bf16(x) @ bf16(w)^T written as bf16 by the product, no bias (the first half of
//            the caller's qkv buffer); the tensor-core attention reads q, k, v from it and adds
//            b's three parts (b, b + C, b + 2C) while it rounds them into shared memory
//   backward the tensor-core backward reads qkv the same way and WRITES dq, dk, dv in bf16 to the
//            first half of dqkv (each (window, head) slice is one block's: no zeroing, no
//            read-modify-write); the linear's backward then takes that bf16 dqkv as its operand
//            as it is: db += its column sums, dx = dqkv @ bf16(w) (written), dw += dqkv^T bf16(x)
// The bias pass over the float32 (B*T, 3C) qkv, its float32 write and reads, the memset of dqkv
// and the float32 dqkv's conversion all disappear. Otherwise: linear_forward_cuda then
// window_attention_forward_cuda, and backward the zeroed float32 dqkv.

// the bf16 path: bf16 precision with the bf16 linears on (any width: the (B*T, 3C) output is what
// it halves) and the tensor-core window attention for (T, HS)
static int qkv_watt_bf16_taken(int T, int HS) { return bf16_linear_switch() != 0 && watt_tc_ok(T, HS); }

extern "C" void qkv_window_attention_forward_cuda(float* out, float* lse, float* qkv, const float* x,
                                                  const float* w, const float* b, const float* rel_bias,
                                                  const float* mask, int n_mask, int B, int T, int NH, int HS) {
    OpTimer timer("qkv_window_attention_forward", B * T, NH * HS, 3 * NH * HS);
    if (B <= 0 || T <= 0 || NH <= 0 || HS <= 0) return;
    int N = B * T, C = NH * HS;
    if (!qkv_watt_bf16_taken(T, HS)) {
        linear_forward_cuda(qkv, x, w, b, N, C, 3 * C);
        window_attention_forward_cuda(out, lse, qkv, qkv + C, qkv + 2 * C, rel_bias, mask, n_mask, B, T, NH, HS,
                                      3 * C, 3 * C);
        return;
    }
    if (n_mask <= 0) n_mask = 1;
    __nv_bfloat16* qkvb = (__nv_bfloat16*)qkv;   // (N, 3C)
    size_t rows = bf16_chunk_rows((size_t)N, (size_t)C), wpart = bf16_round((size_t)3 * C * C);
    __nv_bfloat16* wb = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + rows * C) * sizeof(__nv_bfloat16));
    __nv_bfloat16* xb = wb + wpart;
    to_bf16(wb, w, (size_t)3 * C * C);
    for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
        size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
        to_bf16(xb, x + r0 * C, nr * C);
        // qkv rows (nr, 3C) = x rows (nr, C) @ w (3C, C)^T, without b
        gemm_bf16_rm_bf16_out(false, true, (int)nr, 3 * C, C, xb, C, wb, C, qkvb + r0 * 3 * C, 3 * C);
    }
    bf16_calls[0]++;
    watt_tc_calls[0]++;
    const float *qb = b, *kb = b ? b + C : NULL, *vb = b ? b + 2 * C : NULL;
    float scale = 1.0f / sqrtf((float)HS);
    const __nv_bfloat16 *q = qkvb, *k = qkvb + C, *v = qkvb + 2 * C;
    watt_tc_forward(HS, out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask, B, T, NH, 3 * C, 3 * C, scale);
}

extern "C" void qkv_window_attention_backward_cuda(float* dx, float* dw, float* db, float* drel_bias, float* dqkv,
                                                   const float* dout, const float* out, const float* lse,
                                                   const float* qkv, const float* x, const float* w, const float* b,
                                                   const float* rel_bias, const float* mask, int n_mask, int B,
                                                   int T, int NH, int HS) {
    OpTimer timer("qkv_window_attention_backward", B * T, NH * HS, 3 * NH * HS);
    if (B <= 0 || T <= 0 || NH <= 0 || HS <= 0) return;
    if (!out || !lse) ttt_die("qkv_window_attention_backward: the forward's out and lse are required");
    int N = B * T, C = NH * HS;
    if (!qkv_watt_bf16_taken(T, HS)) {
        ttt_cuda_zero(dqkv, (size_t)N * 3 * C * sizeof(float));   // window_attention_backward accumulates
        window_attention_backward_cuda(dqkv, dqkv + C, dqkv + 2 * C, drel_bias, dout, out, lse, qkv, qkv + C,
                                       qkv + 2 * C, rel_bias, mask, n_mask, B, T, NH, HS, 3 * C, 3 * C);
        linear_backward_write_cuda(dx, dw, db, dqkv, x, w, N, C, 3 * C);
        return;
    }
    if (n_mask <= 0) n_mask = 1;
    const __nv_bfloat16* qkvb = (const __nv_bfloat16*)qkv;
    __nv_bfloat16* dqkvb = (__nv_bfloat16*)dqkv;   // (N, 3C), written below
    const float *qb = b, *kb = b ? b + C : NULL, *vb = b ? b + 2 * C : NULL;
    float scale = 1.0f / sqrtf((float)HS);
    int wpb, chunks;
    float* partial = watt_drel_partial(drel_bias != NULL, B, NH, T, &wpb, &chunks);
    watt_tc_calls[1]++;
    const __nv_bfloat16 *q = qkvb, *k = qkvb + C, *v = qkvb + 2 * C;
    __nv_bfloat16 *dq = dqkvb, *dk = dqkvb + C, *dv = dqkvb + 2 * C;
    watt_tc_backward(HS, dq, dk, dv, partial, dout, out, lse, q, k, v, qb, kb, vb, rel_bias, mask, n_mask, B, T, NH,
                     3 * C, 3 * C, scale, wpb, chunks);
    if (drel_bias) watt_drel_finish(drel_bias, partial, chunks, NH, T);
    // the qkv linear's backward on the bf16 dqkv (N, 3C)
    if (db) column_sum_convert(NULL, db, (const __nv_bfloat16*)dqkvb, (const float*)NULL, NULL, N, 3 * C);
    size_t wpart = bf16_round((size_t)3 * C * C);
    size_t rows = dw ? bf16_chunk_rows((size_t)N, (size_t)C) : 0;
    __nv_bfloat16* wb = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + rows * C) * sizeof(__nv_bfloat16));
    __nv_bfloat16* xb = wb + wpart;
    if (dx) {
        // dx (N, C) = dqkv (N, 3C) @ w (3C, C), written
        to_bf16(wb, w, (size_t)3 * C * C);
        gemm_bf16_rm(false, false, N, C, 3 * C, dqkvb, 3 * C, wb, C, 0.0f, dx, C);
    }
    if (dw)
        for (size_t r0 = 0; r0 < (size_t)N; r0 += rows) {
            size_t nr = (size_t)N - r0 < rows ? (size_t)N - r0 : rows;
            // dw (3C, C) += dqkv rows^T (3C, nr) @ x rows (nr, C)
            to_bf16(xb, x + r0 * C, nr * C);
            gemm_bf16_rm(true, false, 3 * C, C, (int)nr, dqkvb + r0 * 3 * C, 3 * C, xb, C, 1.0f, dw, C);
        }
    bf16_calls[0]++;
}

// ----------------------------------------------------------------------------
// implicit-GEMM 3x3 convolution on the tensor cores (bf16 operands, float32 sums)
//
// For a same-size 3x3 conv (K = 3, stride 1, pad 1, Ho = H, Wo = W) on channels-last src
// (B, H, W, Cin), here a bf16 copy of the float32 activations (one to_bf16 pass before the
// kernel), with wk (N, 9, Cin) in bf16 (k = tap * Cin + c contiguous):
//   out[b, y, x, o] (= or +=) sum over taps (ky, kx) and c of
//       src[b, y + dy, x + dx, c] * wk[o, tap, c]
//   forward: (dy, dx) = (ky - 1, kx - 1), src = inp, wk = weight (OC, 9, C), N = OC
//   FLIP (dinp): (dy, dx) = (1 - ky, 1 - kx), src = dout (Cin = OC), N = C and wk = wt from
//     conv_weight_transpose_bf16_kernel: wt[c, tap, o] = weight[o, tap, c]. This is the transposed
//     im2col of the section comment at s = 1, pad = 1: input pixel (iy, ix) meets dout at
//     (iy + 1 - ky, ix + 1 - kx) through tap (ky, kx), so dinp is a conv of dout with the
//     spatially flipped, transposed kernel.
//   zeros where (y + dy, x + dx) leaves the image. The plain reference is conv2d_forward_cpu /
//   conv2d_backward_cpu (checked by test/gpu_ops.c, test_conv2d_implicit).
// Tiles: a block computes a 2D tile of TILE_H x 16 output pixels (rows y0 .. y0 + TILE_H - 1,
// columns x0 .. x0 + 15 of one image; tiles past the image's right or bottom edge are partial,
// their outside pixels computed from zeros and not stored) times BN output channels: TILE_H 8
// with BN 128, or 64 when N % 128 != 0 (a 16 x 16 x 128 tile with 8 warps of 64 x 64, tried as a
// variant, ran slower on the H200: 1.11 vs 1.06 ms a forward, 2.69 vs 2.42 ms a backward, and was
// removed; the template keeps TILE_H and WN as parameters). K loop: chunk outer (32 channels
// c0 .. c0 + 31), tap inner, one K-step per (chunk, tap). Per chunk the (TILE_H + 2) x (16 + 2) HALO of the tile (180 pixels x 32
// channels, zeros outside the image) is staged in shared memory ONCE and all 9 taps read their A operand
// from shifted views of it: output pixel (r, c) of the tile reads halo pixel (r + fy, c + fx),
// (fy, fx) = (ky, kx) forward, (2 - ky, 2 - kx) FLIP (halo origin (y0 - 1, x0 - 1)). So each
// source pixel leaves L2 ~1.4 times per chunk instead of 9 times. Per K-step the B tile (BN
// channels x 32 k of tap `tap`) comes from wk.
// Pipeline: cp.async (16 bytes, .cg; the halo's outside pixels by zero-fill, src-size 0) into a
// ring of STAGES = 4 B buffers and 2 halo buffers; step s's group is committed STAGES - 1 steps
// ahead (halo of chunk c in the group of step 9c), one cp.async.wait_group + __syncthreads per
// step. Safety: the copy issued at step s writes B buffer (s - 1) % 4 (last read by step s - 1,
// before this step's barrier) and, at s = 9c - 3, halo buffer c % 2 (last read by chunk c - 2,
// step 9c - 10).
// Warps: 256 threads = 8 warps, warp tile 64 x 32 (BN 128: 2 x 4 warps), 32 x 32 (BN 64:
// 4 x 2 warps); a warp's 16-row mma tile mi is tile row
// r = wm * MT + mi (16 pixels of one image row). Fragments by ldmatrix.x4 (lane l gives the
// row address of matrix l / 8, row l % 8):
//   A (16 pixels x 16 k): lane l -> pixel c = l % 16 of row r, k + 8 (l / 16): a0..a3 as mma's
//     a0 (rows 0-7, k 0-7), a1 (rows 8-15, k 0-7), a2 (rows 0-7, k 8-15), a3 (rows 8-15, k 8-15)
//   B (two n8 tiles x 16 k), stored [channel][k]: lane l -> channel (l % 8) + 8 (l / 16),
//     k + 8 ((l / 8) % 2): b0, b1 of tile ni, then b0, b1 of tile ni + 1
// mma.m16n8k16 maps (PTX ISA, .bf16; g = lane / 4, t = lane % 4; each 32-bit register holds
// two bf16, the lower k in the low half):
//   A (16 x 16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16 x 8 f32):   c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
// Shared rows are padded from 32 to 40 bf16 (80 bytes: any 8 consecutive rows of an ldmatrix
// fall in distinct banks, and the shifted halo views stay conflict-free). Dynamic shared memory
// (conv3x3_implicit_smem): (2 * halo + 4 * BN) * 80 bytes = 69760 (BN 128), 49280 (BN 64).
// Weight rows n >= N are clamped to N - 1 (their channels are not stored).
// Epilogue: + bias (forward, may be NULL), then out written (=) or added to (+=, dinp's
// contract) as float2 pairs, pixels outside the image and channels >= N skipped.
// Taken (conv3x3_implicit_taken) when Cin % 32 == 0, N % 8 == 0, src 16-byte and out 8-byte
// aligned, and M * max(Cin, N) fits an int, and it is on (below); else the im2col path.
// The dweight stays on im2col + GEMM.
// nvcc -Xptxas -v (sm_90, CUDA 13.0): TILE_H 8, __launch_bounds__(256, 2): BN 128: 126 registers,
// BN 64: 112 (forward) / 114 (FLIP), 2 blocks (16 warps) an SM by registers. No stack, no spills (the #pragma
// unrolls keep acc in registers: without them BN 128 put acc in a 256-byte stack frame).
// Index maps checked on the host by an emulation of the kernel (cp.async with zero-fill,
// ldmatrix and mma by the PTX maps above, exact small-integer sums) against a plain conv,
// forward and FLIP, partial spatial tiles, B > 1, one-pixel images, partial N tiles.

// OFF by default: measured on the H200 (B = 8, 384 x 1248 Swin-S Y step, bf16, one device call),
// this kernel runs the big convs faster than the bf16 im2col + cuBLAS path (TTT_PROFILE=2:
// conv2d_forward 239616 x 2304 x 256 1.06 vs 1.18 ms a call, conv2d_backward (its dinp) 2.42 vs
// 2.60 ms, the prediction's 29952-pixel forward 0.154 vs 0.168 ms), but the whole step and the
// prediction do not gain: step 80.35 / 79.59 ms on vs 79.69 / 78.48 off, prediction 7.43 / 7.25
// vs 6.93 / 6.91 (the smaller pyramid levels' convs, under one wave of tiles, lose what the big
// ones win). The first version (1D pixel tiles, float32 loads converted in the loop, every tap
// re-read from L2) was slower still: 1.49 ms a forward. TTT_CONV_IMPLICIT=1 turns it on.
#define CONV_IMPLICIT_DEFAULT 0
static int conv_implicit_on = -1;      // -1 unread, 0 off, 1 on
static long conv_implicit_calls[2];    // calls run by the implicit kernel: 0 forward, 1 dinp
extern "C" void ttt_cuda_set_conv_implicit(int on) { conv_implicit_on = on < 0 ? -1 : on != 0; }
extern "C" long ttt_cuda_conv_implicit_calls(int which) { return conv_implicit_calls[which != 0]; }

// d (16 x 8, float32) += A (16 x 16) @ B (16 x 8), bf16 fragments as in the section comment
__device__ __forceinline__ void mma_m16n8k16_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without registers; src_bytes 0: the 16 bytes are zero-filled (gsrc
// must still be a valid address)
__device__ __forceinline__ void conv_cp_async16(void* sdst, const void* gsrc, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gsrc), "r"(src_bytes));
}
__device__ __forceinline__ void conv_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// wait until at most n of this thread's newest groups are still in flight
template <int n>
__device__ __forceinline__ void conv_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(n)); }
// four 8 x 8 bf16 matrices from shared memory (row addresses from lanes 8i .. 8i + 7 for matrix i)
__device__ __forceinline__ void conv_ldmatrix_x4(uint32_t* r, const void* srow) {
    unsigned s = (unsigned)__cvta_generic_to_shared(srow);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

#define CONV_TILE_W 16   // output columns of a block's tile (one mma row tile)
#define CONV_HALO_W (CONV_TILE_W + 2)
#define CONV_LDS 40      // bf16 per shared row (32 + 8 padding)
#define CONV_STAGES 4    // B buffers in flight
// dynamic shared memory of a tile of tile_h x 16 pixels x bn channels: 2 halos + the B ring
static size_t conv3x3_implicit_smem(int tile_h, int bn) {
    return (size_t)(2 * (tile_h + 2) * CONV_HALO_W + CONV_STAGES * bn) * CONV_LDS * sizeof(__nv_bfloat16);
}

// out (B, H, W, N) (= or +=) the implicit GEMM above of src (B, H, W, Cin) bf16; grid B *
// ceil(H / TILE_H) * ceil(W / 16) * ceil(N / BN), 256 threads, conv3x3_implicit_smem(TILE_H, BN)
// bytes. Launched with TILE_H 8 and warp width WN 32 (BN 128 or 64; 2 blocks an SM)
template <int BN, int TILE_H, int WN, bool FLIP>
__global__ void __launch_bounds__(256, TILE_H == 8 ? 2 : 1)
conv3x3_implicit_bf16_kernel(float* __restrict__ out, const __nv_bfloat16* __restrict__ src,
                             const __nv_bfloat16* __restrict__ wk, const float* __restrict__ bias,
                             int H, int W, int Cin, int N, int accumulate) {
    constexpr int BK = 32, LDS = CONV_LDS, STAGES = CONV_STAGES;
    constexpr int HALO_W = CONV_HALO_W, HALO_PIX = (TILE_H + 2) * HALO_W;   // 180
    constexpr int WM = BN == 128 ? 64 : 32;            // warp tile WM x WN
    constexpr int WARPS_M = TILE_H * CONV_TILE_W / WM; // 2 (BN 128), 4 (BN 64)
    static_assert(WARPS_M * (BN / WN) == 8, "8 warps a block");
    constexpr int MT = WM / 16, NT = WN / 8;           // mma tiles per warp: (4 or 2) x 4
    constexpr int BLOADS = BN * BK / 8 / 256;          // 16-byte weight copies per thread: 2 or 1
    extern __shared__ __align__(16) unsigned char conv_smem[];
    __nv_bfloat16* halo = reinterpret_cast<__nv_bfloat16*>(conv_smem);   // [2][HALO_PIX][LDS]
    __nv_bfloat16* Bs = halo + 2 * HALO_PIX * LDS;                       // [STAGES][BN][LDS]
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, t = lane & 3;
    int wm = warp % WARPS_M, wn = warp / WARPS_M;
    // block: channel tile bid % ntiles_n of spatial tile bid / ntiles_n (neighbouring blocks share
    // the pixels, read once from memory into L2)
    int ntiles_n = (N + BN - 1) / BN;
    int tiles_x = (W + CONV_TILE_W - 1) / CONV_TILE_W, tiles_y = (H + TILE_H - 1) / TILE_H;
    int st = (int)(blockIdx.x / ntiles_n), n0 = (int)(blockIdx.x % ntiles_n) * BN;
    int b = st / (tiles_y * tiles_x), rest = st - b * (tiles_y * tiles_x);
    int y0 = (rest / tiles_x) * TILE_H, x0 = (rest % tiles_x) * CONV_TILE_W;
    const __nv_bfloat16* img = src + (size_t)b * H * W * Cin;   // (H, W, Cin) of image b
    int csteps = Cin / BK, nsteps = 9 * csteps;
    size_t Ktot = (size_t)9 * Cin;
    float acc[MT][NT][4];
    #pragma unroll
    for (int mi = 0; mi < MT; mi++)
        #pragma unroll
        for (int ni = 0; ni < NT; ni++)
            #pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;

    // the copies of K-step s = 9 * chunk + tap: B (BN channels, 32 k of the tap) into buffer
    // s % STAGES; at tap 0 the chunk's halo into halo buffer chunk % 2
    auto issue_step = [&](int s) {
        int chunk = s / 9, tap = s - 9 * chunk, c0 = chunk * BK;
        if (tap == 0) {
            __nv_bfloat16* hb = halo + (chunk & 1) * HALO_PIX * LDS;
            for (int idx = tid; idx < HALO_PIX * 4; idx += 256) {   // 4 x 16 bytes per pixel
                int h = idx >> 2, k8 = (idx & 3) * 8;
                int hy = h / HALO_W, hx = h - HALO_W * hy;
                int y = y0 - 1 + hy, x = x0 - 1 + hx;
                bool inside = y >= 0 && y < H && x >= 0 && x < W;
                const __nv_bfloat16* gp = inside ? img + ((size_t)y * W + x) * Cin + c0 + k8 : src;
                conv_cp_async16(hb + h * LDS + k8, gp, inside ? 16 : 0);
            }
        }
        __nv_bfloat16* bs = Bs + (s % STAGES) * BN * LDS;
        #pragma unroll
        for (int j = 0; j < BLOADS; j++) {
            int idx = tid + 256 * j, row = idx >> 2, k8 = (idx & 3) * 8;
            int n = n0 + row < N ? n0 + row : N - 1;
            conv_cp_async16(bs + row * LDS + k8, wk + (size_t)n * Ktot + (size_t)tap * Cin + c0 + k8, 16);
        }
    };
    // acc += A (the warp's pixels through the tap's halo view, 32 k) @ B (the warp's channels)^T
    auto mma_step = [&](int s) {
        int chunk = s / 9, tap = s - 9 * chunk;
        int ky = tap / 3, kx = tap - 3 * ky;
        int fy = FLIP ? 2 - ky : ky, fx = FLIP ? 2 - kx : kx;
        const __nv_bfloat16* hb = halo + (chunk & 1) * HALO_PIX * LDS;
        const __nv_bfloat16* bs = Bs + (s % STAGES) * BN * LDS;
        #pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t bf[NT][2];
            #pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t r[4];
                int n = wn * WN + np * 16 + (lane & 7) + ((lane >> 4) << 3);
                conv_ldmatrix_x4(r, bs + n * LDS + kk + ((lane >> 3) & 1) * 8);
                bf[2 * np][0] = r[0];
                bf[2 * np][1] = r[1];
                bf[2 * np + 1][0] = r[2];
                bf[2 * np + 1][1] = r[3];
            }
            #pragma unroll
            for (int mi = 0; mi < MT; mi++) {
                int r = wm * MT + mi;   // tile row of the mma tile
                uint32_t af[4];
                conv_ldmatrix_x4(af, hb + ((r + fy) * HALO_W + (lane & 15) + fx) * LDS + kk + (lane >> 4) * 8);
                #pragma unroll
                for (int ni = 0; ni < NT; ni++) mma_m16n8k16_bf16(acc[mi][ni], af, bf[ni][0], bf[ni][1]);
            }
        }
    };

    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nsteps) issue_step(s);
        conv_cp_async_commit();   // one group per step, empty ones too: the wait count stays exact
    }
    for (int s = 0; s < nsteps; s++) {
        conv_cp_async_wait<STAGES - 2>();   // step s's group has landed (this thread's copies)
        __syncthreads();                    // everyone's copies visible; step s - 1's reads done
        if (s + STAGES - 1 < nsteps) issue_step(s + STAGES - 1);
        conv_cp_async_commit();
        mma_step(s);
    }

    // epilogue: c0, c1 at (pixel g, channels 2t, 2t + 1), c2, c3 at pixel g + 8 of tile row r;
    // N % 8 == 0, so channel 2t + 1 is inside whenever 2t is
    #pragma unroll
    for (int ni = 0; ni < NT; ni++) {
        int col = n0 + wn * WN + ni * 8 + 2 * t;
        if (col >= N) continue;
        float bias0 = bias ? bias[col] : 0.0f, bias1 = bias ? bias[col + 1] : 0.0f;
        #pragma unroll
        for (int mi = 0; mi < MT; mi++) {
            int y = y0 + wm * MT + mi;
            if (y >= H) continue;
            #pragma unroll
            for (int h = 0; h < 2; h++) {
                int x = x0 + g + 8 * h;
                if (x >= W) continue;
                float2* o = reinterpret_cast<float2*>(out + (((size_t)b * H + y) * W + x) * N + col);
                float2 v = make_float2(acc[mi][ni][2 * h] + bias0, acc[mi][ni][2 * h + 1] + bias1);
                if (accumulate) {
                    float2 old = *o;
                    v.x += old.x;
                    v.y += old.y;
                }
                *o = v;
            }
        }
    }
}

// whether the implicit kernel takes this conv: src (npix, Cin) in, out (npix, N) out
static int conv3x3_implicit_taken(const float* src, const float* out, int H, int W, int K, int stride, int pad,
                                  int Ho, int Wo, size_t npix, int Cin, int N) {
    if (conv_implicit_on < 0) conv_implicit_on = env_switch01("TTT_CONV_IMPLICIT", CONV_IMPLICIT_DEFAULT);
    if (!conv_implicit_on || K != 3 || stride != 1 || pad != 1 || Ho != H || Wo != W) return 0;
    if (Cin <= 0 || N <= 0 || Cin % 32 != 0 || N % 8 != 0) return 0;
    if ((uintptr_t)src % 16 != 0 || (uintptr_t)out % 8 != 0) return 0;
    size_t widest = (size_t)(Cin > N ? Cin : N);
    return npix > 0 && npix * widest <= (size_t)2147483647;
}

// one variant of the kernel on grid blocks, its shared memory limit raised on the first call
template <int BN, int TILE_H, int WN, bool FLIP>
static void conv3x3_implicit_launch(unsigned grid, float* out, const __nv_bfloat16* src, const __nv_bfloat16* wk,
                                    const float* bias, int H, int W, int Cin, int N, int accumulate) {
    static size_t smem_raised = 0;
    size_t smem = conv3x3_implicit_smem(TILE_H, BN);
    smem_limit_raise(conv3x3_implicit_bf16_kernel<BN, TILE_H, WN, FLIP>, smem, &smem_raised);
    conv3x3_implicit_bf16_kernel<BN, TILE_H, WN, FLIP><<<grid, 256, smem>>>(out, src, wk, bias, H, W, Cin, N,
                                                                           accumulate);
    launchCheck();
}

// out (B, H, W, N) (= or + bias, or += when accumulate) the implicit GEMM of src (B, H, W, Cin)
// in bf16 with wk (N, 9 * Cin) in bf16; flip: the dinp taps (section comment)
static void conv3x3_implicit_bf16(float* out, const __nv_bfloat16* src, const __nv_bfloat16* wk, const float* bias,
                                  int B, int H, int W, int Cin, int N, bool flip, int accumulate) {
    gemm_flop_count += 2.0 * B * H * W * N * 9.0 * Cin;
    bool wide = N % 128 == 0;
    int bn = wide ? 128 : 64, tile_h = 8;
    unsigned tiles = (unsigned)B * (unsigned)((H + tile_h - 1) / tile_h) *
                     (unsigned)((W + CONV_TILE_W - 1) / CONV_TILE_W);
    unsigned grid = tiles * (unsigned)((N + bn - 1) / bn);
    int acc = accumulate;
    if (wide && !flip) conv3x3_implicit_launch<128, 8, 32, false>(grid, out, src, wk, bias, H, W, Cin, N, acc);
    else if (wide) conv3x3_implicit_launch<128, 8, 32, true>(grid, out, src, wk, bias, H, W, Cin, N, acc);
    else if (!flip) conv3x3_implicit_launch<64, 8, 32, false>(grid, out, src, wk, bias, H, W, Cin, N, acc);
    else conv3x3_implicit_launch<64, 8, 32, true>(grid, out, src, wk, bias, H, W, Cin, N, acc);
}

// conv2d forward: per chunk of output pixels, col (np, KKC) in bf16, then
// out chunk (np, OC) = col @ weight (OC, KKC)^T with the weight in bf16; + bias
static void conv2d_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                                int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo) {
    size_t npix = (size_t)B * Ho * Wo, KKC = (size_t)K * K * C;
    if (conv3x3_implicit_taken(inp, out, H, W, K, stride, pad, Ho, Wo, npix, C, OC)) {
        // same-size 3x3: the implicit GEMM on bf16 copies of the weight and of inp (no im2col)
        size_t wpart = bf16_round((size_t)OC * KKC);
        __nv_bfloat16* w = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + npix * C) * sizeof(__nv_bfloat16));
        __nv_bfloat16* xb = w + wpart;
        to_bf16(w, weight, (size_t)OC * KKC);
        to_bf16(xb, inp, npix * C);
        conv3x3_implicit_bf16(out, xb, w, bias, B, H, W, C, OC, false, 0);
        conv_implicit_calls[0]++;
        bf16_calls[1]++;
        return;
    }
    size_t rows = bf16_chunk_rows(npix, KKC);
    size_t wpart = bf16_round((size_t)OC * KKC);
    __nv_bfloat16* w = (__nv_bfloat16*)workspace_get(&ws_bf16, (wpart + rows * KKC) * sizeof(__nv_bfloat16));
    __nv_bfloat16* col = w + wpart;
    to_bf16(w, weight, (size_t)OC * KKC);
    for (size_t p0 = 0; p0 < npix; p0 += rows) {
        size_t np = npix - p0 < rows ? npix - p0 : rows;
        im2col_bf16(col, inp, H, W, C, K, stride, pad, Ho, Wo, p0, np);
        gemm_bf16_rm(false, true, (int)np, OC, (int)KKC, col, (int)KKC, w, (int)KKC, 0.0f, out + p0 * OC, OC);
    }
    if (bias) add_bias(out, bias, npix, OC);
    bf16_calls[1]++;
}

// conv2d backward. dweight (OC, KKC) += dout chunk^T (OC, np) @ col (np, KKC), and dbias (OC) += dout's
// column sums (only with dweight: summed while dout is converted; NULL: the caller's), per chunk
// of output pixels; dinp chunk (nq, C) += dcolT (nq, KK*OC) @ wt (C, KK*OC)^T per chunk of input
// pixels (the transposed im2col, section comment)
static void conv2d_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                 const float* weight, int B, int H, int W, int C, int OC, int K, int stride,
                                 int pad, int Ho, int Wo) {
    size_t npix = (size_t)B * Ho * Wo, nin = (size_t)B * H * W;
    size_t KKC = (size_t)K * K * C, KKOC = (size_t)K * K * OC;
    // dweight pass: per output pixel a col row (KKC) and a dout row (OC); dinp pass: per input
    // pixel a dcolT row (KKOC). The passes share the scratch after the transposed weight.
    // dinp of a same-size 3x3 by the implicit GEMM (FLIP: dout with wt, no dcolT buffer)
    int implicit_dinp = dinp && conv3x3_implicit_taken(dout, dinp, H, W, K, stride, pad, Ho, Wo, nin, OC, C);
    size_t rows_w = dweight ? bf16_chunk_rows(npix, KKC + OC) : 0;
    size_t rows_x = dinp && !implicit_dinp ? bf16_chunk_rows(nin, KKOC) : 0;
    size_t wpart = dinp ? bf16_round((size_t)C * KKOC) : 0, dpart = bf16_round(rows_w * OC);
    size_t need_w = dpart + rows_w * KKC, need_x = implicit_dinp ? nin * OC : rows_x * KKOC;
    __nv_bfloat16* wt = (__nv_bfloat16*)workspace_get(
        &ws_bf16, (wpart + (need_w > need_x ? need_w : need_x)) * sizeof(__nv_bfloat16));
    __nv_bfloat16* scratch = wt + wpart;
    if (dweight) {
        __nv_bfloat16* d = scratch;
        __nv_bfloat16* col = scratch + dpart;
        for (size_t p0 = 0; p0 < npix; p0 += rows_w) {
            size_t np = npix - p0 < rows_w ? npix - p0 : rows_w;
            to_bf16_column_sum(d, dbias, dout + p0 * OC, np, OC);
            im2col_bf16(col, inp, H, W, C, K, stride, pad, Ho, Wo, p0, np);
            gemm_bf16_rm(true, false, OC, (int)KKC, (int)np, d, OC, col, (int)KKC, 1.0f, dweight, (int)KKC);
        }
    }
    if (dinp) {
        conv_weight_transpose_bf16_kernel<<<grid_for((size_t)C * KKOC, 256), 256>>>(wt, weight, C, OC, K * K);
        launchCheck();
        if (implicit_dinp) {
            // dinp (nin, C) += the conv of dout (nin, OC), copied to bf16 in the scratch, with the
            // flipped kernel wt (C, 9, OC)
            to_bf16(scratch, dout, nin * OC);
            conv3x3_implicit_bf16(dinp, scratch, wt, NULL, B, H, W, OC, C, true, 1);
            conv_implicit_calls[1]++;
        } else {
            __nv_bfloat16* dcol = scratch;
            for (size_t q0 = 0; q0 < nin; q0 += rows_x) {
                size_t nq = nin - q0 < rows_x ? nin - q0 : rows_x;
                im2col_transposed_bf16(dcol, dout, H, W, OC, K, stride, pad, Ho, Wo, q0, nq);
                gemm_bf16_rm(false, true, (int)nq, C, (int)KKOC, dcol, (int)KKOC, wt, (int)KKOC, 1.0f,
                             dinp + q0 * C, C);
            }
        }
    }
    bf16_calls[1]++;
}

// ============================================================================
// end of BF16 OPERANDS
// ============================================================================
