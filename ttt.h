// ttt.h: shared types, error-checking macros and the op library of ttt.
//
// Conventions (read these once, every op follows them):
// - float32 storage, channels-last layout: a feature map is (B, H, W, C).
// - forward ops WRITE (=) their outputs.
// - backward ops ACCUMULATE (+=) into every gradient they produce, llm.c style,
//   so a tensor used twice (residuals) simply gets both contributions. Callers
//   zero gradient buffers once before a backward pass. Any gradient pointer
//   may be NULL, meaning "not needed". Five exceptions WRITE (=) activation
//   gradients, for Swin's backward, where they are the first writer of a buffer that
//   then needs no zeroing: linear_backward_write (its dinp), mlp_backward (its dx and
//   scratch), qkv_window_attention_backward (its dx and scratch),
//   window_reverse_residual_backward and scale_rows_add_backward (both outputs);
//   each says so at its declaration.
// - every op exists three times: `name` (dispatch.c: picks a backend on ttt_device),
//   `name_cpu` (reference in ttt.c, float64 or careful float32 accumulation,
//   OpenMP where loops are large) and `name_cuda` (ttt_kernels.cu, present when
//   built with nvcc, TTT_CUDA defined). All three have the same signature and
//   the same memory layout; pointers live on the device the op runs on. This file
//   shows `name` with its math; the twins are declared in its last section, BACKENDS.
#ifndef TTT_H
#define TTT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "ttt_index.h"   // the index math both backends share (window, resize and sampling taps)

#ifdef __cplusplus
extern "C" {
#endif

// ----------------------------------------------------------------------------
// error checking, llm.c style: every call that can fail goes through one of these

void fopen_check_fail(const char* path, const char* mode, const char* file, int line);
void fread_check_fail(const char* what, size_t want, size_t got, const char* file, int line);
void malloc_check_fail(size_t bytes, const char* file, int line);

FILE* fopen_check(const char* path, const char* mode, const char* file, int line);
void fread_check(void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line);
void fwrite_check(const void* ptr, size_t size, size_t nmemb, FILE* stream, const char* file, int line);
void fclose_check(FILE* fp, const char* file, int line);
void* malloc_check(size_t size, const char* file, int line);
void* calloc_check(size_t nmemb, size_t size, const char* file, int line);

#define fopenCheck(path, mode) fopen_check(path, mode, __FILE__, __LINE__)
#define freadCheck(ptr, size, nmemb, stream) fread_check(ptr, size, nmemb, stream, __FILE__, __LINE__)
#define fwriteCheck(ptr, size, nmemb, stream) fwrite_check(ptr, size, nmemb, stream, __FILE__, __LINE__)
#define fcloseCheck(fp) fclose_check(fp, __FILE__, __LINE__)
#define mallocCheck(size) malloc_check(size, __FILE__, __LINE__)
#define callocCheck(nmemb, size) calloc_check(nmemb, size, __FILE__, __LINE__)

// print "error: <message>" on stderr and exit(1); for user-facing bad input
void ttt_die(const char* fmt, ...);

// ----------------------------------------------------------------------------
// run-time device switch and memory helpers

typedef enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 } Device;
extern Device ttt_device;               // the device every dispatched op runs on
int ttt_cuda_available(void);           // 1 if built with CUDA and a GPU is present
void ttt_set_device(Device d);          // dies with a clear message if d is unavailable
Device ttt_parse_device(const char* s); // "cpu" | "cuda" | "auto" (cuda if present)
const char* ttt_device_name(Device d);

void* ttt_malloc(size_t bytes);                       // on ttt_device, checked
void ttt_free(void* p);
void ttt_zero(void* p, size_t bytes);                 // memset 0 on ttt_device
void ttt_copy(void* dst, const void* src, size_t bytes);      // within ttt_device
void ttt_to_device(void* dst, const void* src, size_t bytes);  // host -> ttt_device
void ttt_to_host(void* dst, const void* src, size_t bytes);    // ttt_device -> host
void ttt_synchronize(void);

// ----------------------------------------------------------------------------
// random numbers: xorshift64*, deterministic across machines

typedef struct { uint64_t state; } Rng;
void rng_seed(Rng* rng, uint64_t seed);
uint32_t rng_u32(Rng* rng);
float rng_uniform(Rng* rng);            // [0, 1)
float rng_normal(Rng* rng);             // N(0, 1), Box-Muller
int rng_int(Rng* rng, int n);           // [0, n)
void rng_fill_uniform(Rng* rng, float* x, size_t n, float lo, float hi);  // host memory
void rng_fill_normal(Rng* rng, float* x, size_t n, float mean, float std); // host memory

// ----------------------------------------------------------------------------
// op library. Each op is listed once with its math and shapes; its _cpu and _cuda twins
// are declared at the end of this file (BACKENDS), the dispatchers are in dispatch.c.

#define LN_EPS 1e-5f   // LayerNorm and GroupNorm epsilon (Swin, Mask2Former)
// Activation arenas hand out pieces that start at multiples of ACT_ALIGN floats (64 bytes):
// cuBLAS's tensor-core kernels run 2.5-3.3x slower on a matrix only 4 or 8 bytes aligned
// (measured on the H200, dev/align_check.cu). Parameters stay packed in the checkpoint's
// layout; the GPU's matrix products copy a misaligned weight to an aligned scratch first.
#define ACT_ALIGN 16

// elementwise: out = a + b ; a += b ; x *= s   (N elements)
void add_forward(float* out, const float* a, const float* b, size_t N);
void add_inplace(float* a, const float* b, size_t N);
void scale_inplace(float* x, float s, size_t N);
// per-sample scaling of a batch of B rows of N elements (Swin's drop-path):
// forward out[b, i] = inp[b, i] * scale[b] (out may equal inp); backward dinp += dout * scale[b].
// scale (B) lives on the device the op runs on.
void scale_rows_forward(float* out, const float* inp, const float* scale, int B, size_t N);
void scale_rows_backward(float* dinp, const float* dout, const float* scale, int B, size_t N);

// linear: out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC); bias may be NULL.
// Also the batched product used by Mask2Former's mask logits (weight = features).
void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC);
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC);
// linear_backward_write: the same, but dinp is WRITTEN: dinp (N, C) = dout @ weight (its old
//   contents, even NaN, are never read); dweight and dbias still accumulate. For a dinp that
//   this op writes first (Swin's block gradients), so that it needs no zeroing.
void linear_backward_write(float* dinp, float* dweight, float* dbias, const float* dout,
                           const float* inp, const float* weight, int N, int C, int OC);
// Swin's MLP, fc2(gelu(fc1(x))): pre (N, Ch) = x (N, C) @ w1 (Ch, C)^T, WITHOUT fc1's bias b1 (kept
// for the backward; b1 is added where gelu reads it, so no pass adds it to the (N, Ch) output);
// out (N, C) = gelu(pre + b1) @ w2 (C, Ch)^T + b2. pre is the op's own storage between forward
// and backward: float32 on the CPU and the GPU's float32 path; the GPU's bf16 path keeps it as
// (N, Ch) bf16 values in the buffer's first half. hidden (N, Ch) is a scratch that may receive
// gelu(pre + b1): the CPU and the GPU's float32 path write it there and multiply it; the GPU's
// bf16 path rounds gelu(pre + b1) straight into fc2's bf16 operand (no float32 pass over it).
// Backward (gelu recomputed): dw1, db1, dw2, db2 accumulate (+=); dx is WRITTEN (=), not
// accumulated (Swin's dLN2 has no other writer: an exception to the += rule); dhidden (N, Ch) is a
// scratch that receives the gradient at gelu's output (then, on the CPU and the float32 path,
// dpre = dhidden * gelu'(pre + b1) in place; the bf16 path writes dhidden in bf16 to its own
// scratch and applies the slope there); hidden as in the forward. b1 and b2 may be NULL.
void mlp_forward(float* out, float* pre, float* hidden, const float* x, const float* w1, const float* b1,
                 const float* w2, const float* b2, int N, int C, int Ch);
void mlp_backward(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden, float* hidden,
                  const float* dout, const float* pre, const float* x, const float* w1, const float* b1,
                  const float* w2, int N, int C, int Ch);

// layernorm over the last dim C: out = (x - mean) * rstd * weight + bias.
// mean, rstd (N) are saved for backward. eps = LN_EPS.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);

// groupnorm on (B, HW, C) channels-last, G groups of C/G consecutive channels;
// statistics per (b, g) over HW * C/G values. mean, rstd (B, G). eps = LN_EPS.
void groupnorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int B, int HW, int C, int G);
void groupnorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int B, int HW, int C, int G);

// activations, N elements. gelu is the exact erf form: x * 0.5 * (1 + erf(x / sqrt 2)).
// out may equal inp for relu/sigmoid forward. relu/sigmoid backward use the forward OUTPUT.
void gelu_forward(float* out, const float* inp, size_t N);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t N);
void relu_forward(float* out, const float* inp, size_t N);
void relu_backward(float* dinp, const float* out, const float* dout, size_t N);
void sigmoid_forward(float* out, const float* inp, size_t N);
void sigmoid_backward(float* dinp, const float* out, const float* dout, size_t N);

// softmax over the last dim of (N, C)
void softmax_forward(float* out, const float* inp, int N, int C);
void softmax_backward(float* dinp, const float* out, const float* dout, int N, int C);

// multi-head scaled-dot-product attention.
//   q: (B, Tq, NH*HS) rows of stride q_stride floats; k, v: (B, Tk, NH*HS) rows of
//   stride kv_stride (so a fused qkv buffer (B, T, 3C) is q=qkv, k=qkv+C, v=qkv+2C
//   with both strides 3C). out: (B, Tq, NH*HS) contiguous.
//   scores[b,h,i,j] = q.k / sqrt(HS) + rel_bias[h,i,j] + mask[b % n_mask, i, j]
//   att (B, NH, Tq, Tk) = softmax_j(scores), saved for backward; out = att @ v.
//   rel_bias (NH, Tq, Tk) is learnable (Swin's relative position bias, already
//   gathered from its table) and may be NULL; mask (n_mask, Tq, Tk) is an additive
//   constant shared by all heads (Swin's -100 shift mask; -INFINITY for Mask2Former's
//   blocked positions) and may be NULL. A row must keep at least one finite score.
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       const float* rel_bias, const float* mask, int n_mask,
                       int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
// dq, dk, dv have the same strides as q, k, v; drel_bias (NH, Tq, Tk) sums over B.
void attention_backward(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                        const float* att, const float* q, const float* k, const float* v,
                        int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);

// window attention without a stored attention map (Swin; flash-attention style).
// The math of attention_forward with Tq = Tk = T, B windows: same q, k, v strides, rel_bias
// (NH, T, T), mask (n_mask, T, T) for window b at b % n_mask, an all -inf row giving a zero
// output row. Instead of att (B, NH, T, T) the forward saves one number per score row,
//   lse (B, NH, T): lse[b,h,i] = log sum_j exp(scores[b,h,i,j])  (-INFINITY for an all -inf row),
// and may be given lse = NULL when no backward follows. The backward recomputes the scores
// from q, k, rel_bias, mask and, with the forward's out and lse (both required),
//   P_ij = exp(scores_ij - lse_i) (0 when lse_i = -inf);  D_i = dout_i . out_i (= sum_j P_ij dP_ij)
//   dP_ij = dout_i . v_j;  dS_ij = P_ij (dP_ij - D_i)
//   dv_j += sum_i P_ij dout_i;  dq_i += sum_j dS_ij k_j / sqrt(HS);  dk_j += sum_i dS_ij q_i / sqrt(HS)
//   drel_bias[h] += sum_b dS[b, h]   (NH, T, T)
// accumulating like attention_backward (dq, dk, dv laid out like q, k, v; any may be NULL).
// The CPU reference recomputes each head's softmax with exactly the operations of
// attention_forward_cpu, so both ops give the same numbers bit for bit there (it checks out
// and lse are given but does not read them); the CUDA kernels use lse and D (in bf16 precision
// with T <= 64 and HS 16, 32, 48 or 64 on the tensor cores: bf16 operands, float32 softmax and
// sums; TTT_WATT_TC=0 keeps the float32 kernels).
void window_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                              const float* rel_bias, const float* mask, int n_mask,
                              int B, int T, int NH, int HS, int q_stride, int kv_stride);
void window_attention_backward(float* dq, float* dk, float* dv, float* drel_bias, const float* dout,
                               const float* out, const float* lse, const float* q, const float* k,
                               const float* v, const float* rel_bias, const float* mask, int n_mask,
                               int B, int T, int NH, int HS, int q_stride, int kv_stride);

// Swin's qkv linear and window attention as one op: qkv (B*T, 3C) = x (B*T, C) @ w (3C, C)^T + b,
// then window_attention_forward over its q, k, v (columns 0, C, 2C; strides 3C; C = NH * HS):
// out (B*T, C), lse (B, NH, T) as there. qkv is the op's own storage between forward and backward
// ((B*T, 3C) floats): float32 with the bias on the CPU and the GPU's float32 path; on the GPU's
// bf16 path (bf16 precision, the tensor-core attention and the bf16 linears on) it holds (B*T, 3C)
// bf16 values WITHOUT the bias in its first half, and the attention kernels add b as they load
// q, k, v (no float32 qkv is written, no bias pass runs over it). Backward: dx is WRITTEN (=);
// dw, db and drel_bias accumulate (+=); dqkv (B*T, 3C) is a scratch that receives the gradient
// of qkv (the bf16 path writes it in bf16, so it needs no zeroing). b may be NULL.
void qkv_window_attention_forward(float* out, float* lse, float* qkv, const float* x, const float* w,
                                  const float* b, const float* rel_bias, const float* mask, int n_mask,
                                  int B, int T, int NH, int HS);
void qkv_window_attention_backward(float* dx, float* dw, float* db, float* drel_bias, float* dqkv,
                                   const float* dout, const float* out, const float* lse, const float* qkv,
                                   const float* x, const float* w, const float* b, const float* rel_bias,
                                   const float* mask, int n_mask, int B, int T, int NH, int HS);

// multi-head attention without a stored attention map, general Tq, Tk (Mask2Former's masked
// cross-attention and self-attention; flash-attention style). The math of attention_forward
// without rel_bias: same q, k, v strides, mask (n_mask, Tq, Tk) additive and shared by all heads
// (batch b uses mask b % n_mask; NULL: none), an all -inf row giving a zero output row. Instead of
// att (B, NH, Tq, Tk) the forward saves one number per score row,
//   lse (B, NH, Tq): lse[b,h,i] = log sum_j exp(scores[b,h,i,j])  (-INFINITY for an all -inf row),
// and may be given lse = NULL when no backward follows. The backward recomputes the scores from
// q, k, mask and, with the forward's out and lse (both required; it dies without them), the
// steps of window_attention_backward (P_ij = exp(s_ij - lse_i), D_i = dout_i . out_i,
// dS_ij = P_ij (dout_i . v_j - D_i)), accumulating into dq, dk, dv (laid out like q, k, v; any
// may be NULL). The CPU reference recomputes each head's softmax with exactly the operations of
// attention_forward_cpu, so out and the gradients equal the old op's bit for bit there; the CUDA
// kernels (HS up to 64; else, or with TTT_FUSED_ATTENTION=0, the old cuBLAS path with the map in
// a transient workspace) run an online softmax over key tiles, in bf16 precision with HS 16, 32,
// 48 or 64 on the tensor cores (bf16 operands, float32 sums; TTT_FATT_TC=0: float32 kernels).
void flash_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                             const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                             int q_stride, int kv_stride);
void flash_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                              const float* lse, const float* q, const float* k, const float* v,
                              const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS,
                              int q_stride, int kv_stride);

// gather from a table: out (NH, N) with out[h, n] = table[index[n] * NH + h]; Swin's
// relative position bias (table (169, NH), index (49*49) on the device). Backward
// scatter-adds into dtable.
void bias_gather_forward(float* out, const float* table, const int* index, int N, int NH);
void bias_gather_backward(float* dtable, const float* dout, const int* index, int N, int NH);

// Swin windows. inp (B, H, W, C) is zero-padded at the bottom/right to Hp = ceil(H/ws)*ws,
// Wp likewise, rolled by -shift on both axes (padded[(i+shift)%Hp][(j+shift)%Wp] lands
// at (i, j)), and cut into windows in row-major window order:
// out (B * Hp/ws * Wp/ws, ws*ws, C). window_reverse is the exact inverse (roll +shift,
// crop to H, W): inp (B*nW, ws*ws, C) -> out (B, H, W, C).
void window_partition_forward(float* out, const float* inp, int B, int H, int W, int C,
                              int ws, int shift);
void window_partition_backward(float* dinp, const float* dout, int B, int H, int W, int C,
                               int ws, int shift);
void window_reverse_forward(float* out, const float* inp, int B, int H, int W, int C,
                            int ws, int shift);
void window_reverse_backward(float* dinp, const float* dout, int B, int H, int W, int C,
                             int ws, int shift);

// Swin block fusions: each replaces a chain of the ops above by one memory pass (same math).
// layernorm_partition: the LayerNorm of inp (B, H, W, C) written straight into window order,
//   out (B*nW, ws*ws, C) = window_partition(layernorm(inp)): padding tokens are zeros; mean,
//   rstd (B*H*W) per pixel as layernorm_forward stores them, or both NULL (not kept: the
//   backward's recomputation of the windows). Backward: dout in window order (padding ignored),
//   dinp, dweight, dbias as layernorm_backward(window_partition_backward(dout)) gives them.
void layernorm_partition_forward(float* out, float* mean, float* rstd, const float* inp,
                                 const float* weight, const float* bias, int B, int H, int W, int C,
                                 int ws, int shift);
void layernorm_partition_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                  const float* inp, const float* weight, const float* mean,
                                  const float* rstd, int B, int H, int W, int C, int ws, int shift);
// window_reverse_residual: out (B, H, W, C) = residual + scale[b] * window_reverse(inp + bias),
//   inp (B*nW, ws*ws, C); bias (C) added to every token (Swin's proj bias: the proj linear then
//   needs no bias pass), NULL meaning none; scale (B) a drop-path row, NULL meaning 1 (out may
//   equal residual). bias has no gradient here: it is the column sums of dinp (the linear's).
//   Backward WRITES (=) both gradients (Swin's backward writes them first, no zeroing):
//   dresidual = dout; dinp = scale[b] * window_partition(dout), 0 on the padding tokens.
//   Either gradient may be NULL.
void window_reverse_residual_forward(float* out, const float* inp, const float* bias, const float* residual,
                                     const float* scale, int B, int H, int W, int C, int ws, int shift);
void window_reverse_residual_backward(float* dresidual, float* dinp, const float* dout,
                                      const float* scale, int B, int H, int W, int C, int ws, int shift);
// layernorm_apply: layernorm_forward with the statistics given, out (N, C) =
//   (inp - mean[n]) * rstd[n] * weight + bias (the backward's recomputation of a LayerNorm's output)
void layernorm_apply(float* out, const float* inp, const float* mean, const float* rstd,
                     const float* weight, const float* bias, int N, int C);
// scale_rows_add: a residual branch with its drop-path scale, out (B, N) = residual + inp *
//   scale[b] (scale NULL: 1; out may equal inp or residual). Backward WRITES (=) both gradients
//   (Swin's backward writes them first, no zeroing): dinp = dout * scale[b], dresidual = dout
//   (either may be NULL).
void scale_rows_add_forward(float* out, const float* inp, const float* residual, const float* scale,
                            int B, size_t N);
void scale_rows_add_backward(float* dinp, float* dresidual, const float* dout, const float* scale,
                             int B, size_t N);

// Swin patch merging gather: inp (B, H, W, C), odd H/W zero-padded by one at the
// bottom/right, out (B, ceil(H/2), ceil(W/2), 4C) = concat of
// x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (row, col).
void patch_merge_forward(float* out, const float* inp, int B, int H, int W, int C);
void patch_merge_backward(float* dinp, const float* dout, int B, int H, int W, int C);

// conv2d, NHWC. inp (B, H, W, C), weight (OC, K, K, C), bias (OC) or NULL,
// out (B, Ho, Wo, OC): out[b,y,x,o] = bias[o] + sum_{ky,kx,c}
//   weight[o,ky,kx,c] * inp[b, y*stride - pad + ky, x*stride - pad + kx, c],
// reads outside the input are zero. Ho, Wo are given by the caller, so Swin's patch
// embedding (pad bottom/right to a multiple of 4) is K=4, stride=4, pad=0,
// Ho=ceil(H/4); a same-size 3x3 conv is K=3, stride=1, pad=1, Ho=H.
void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int H, int W, int C, int OC, int K, int stride, int pad,
                    int Ho, int Wo);
void conv2d_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight,
                     int B, int H, int W, int C, int OC, int K, int stride, int pad,
                     int Ho, int Wo);

// resizing (B, H, W, C) -> (B, Ho, Wo, C), PyTorch F.interpolate semantics.
// nearest: src = floor(dst * H / Ho) (mode="nearest").
// bilinear: align_corners=False, src = max((dst + 0.5) * H / Ho - 0.5, 0), no antialias;
// works for up- and down-sampling.
void upsample_nearest_forward(float* out, const float* inp, int B, int H, int W, int C,
                              int Ho, int Wo);
void upsample_nearest_backward(float* dinp, const float* dout, int B, int H, int W, int C,
                               int Ho, int Wo);
void upsample_bilinear_forward(float* out, const float* inp, int B, int H, int W, int C,
                               int Ho, int Wo);
void upsample_bilinear_backward(float* dinp, const float* dout, int B, int H, int W, int C,
                                int Ho, int Wo);
// the index math of the two resizes (nearest_source, bilinear_source) and of point sampling
// (point_taps) is in ttt_index.h, shared with the CUDA kernels

// point sampling (Mask2Former's point_sample = grid_sample, bilinear, align_corners=False,
// zero padding): inp (M, H, W) maps, coords (M, P, 2) as (x, y) in [0, 1],
// out (M, P). Backward scatters into dinp.
void point_sample_forward(float* out, const float* inp, const float* coords,
                          int M, int H, int W, int P);
void point_sample_backward(float* dinp, const float* dout, const float* coords,
                           int M, int H, int W, int P);

// DETR/Mask2Former sine position encoding (normalize=True, scale 2*pi, temperature
// 10000, eps 1e-6) for an H x W map: out (H, W, C), C even; channels [0, C/2) from y,
// [C/2, C) from x, interleaved sin, cos. No inputs, so no backward.
void sine_position_encoding(float* out, int H, int W, int C);

// multi-scale deformable attention (Deformable DETR's MSDeformAttn core, as Mask2Former's
// pixel decoder uses it; ms_deform_attn_core_pytorch in the released code). L levels of
// maps are stacked along the token axis: level l is H_l x W_l, rows
// [start_l, start_l + H_l W_l) in row-major (y, x) order, start_l = sum_{k<l} H_k W_k
// (the reference's level_start_index); S = sum_l H_l W_l. shapes (L, 2) = (H_l, W_l) is a
// HOST int array (sizes, like B or C), L <= MSDA_MAX_LEVELS.
//   value (B, S, NH, HD); loc (B, Lq, NH, L, P, 2) as (x, y) in [0, 1] of each level's map;
//   aw (B, Lq, NH, L, P) attention weights (already softmaxed over L*P);
//   out (B, Lq, NH*HD): out[b,q,h,c] = sum_{l,p} aw[b,q,h,l,p] * sample_l(value[b,.,h,c], loc[b,q,h,l,p])
// sample_l is grid_sample(bilinear, padding zeros, align_corners=False) at 2 loc - 1:
//   px = x W_l - 0.5, py = y H_l - 0.5, x0 = floor(px), lx = px - x0 (y likewise);
//   sample = (1-lx)(1-ly) v[y0,x0] + lx(1-ly) v[y0,x0+1] + (1-lx)ly v[y0+1,x0] + lx ly v[y0+1,x0+1],
//   taps outside the map read 0 (so points partly or wholly outside the map are fine).
// Backward (each gradient may be NULL; all accumulate): dvalue[tap] += aw * tap weight * dout;
//   daw += dout . sample; dloc += aw * (W_l dout . dsample/dpx, H_l dout . dsample/dpy), the
//   derivative taken inside the cell of (px, py) (taps outside the map count as 0).
#define MSDA_MAX_LEVELS 8
// start (L) <- start_l of every level; returns S. Dies unless 1 <= L <= MSDA_MAX_LEVELS and every
// H_l, W_l >= 1.
int ms_deform_level_starts(const int* shapes, int L, int* start);
void ms_deform_attn_forward(float* out, const float* value, const int* shapes, const float* loc,
                            const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P);
void ms_deform_attn_backward(float* dvalue, float* dloc, float* daw, const float* dout,
                             const float* value, const int* shapes, const float* loc, const float* aw,
                             int B, int S, int Lq, int NH, int HD, int L, int P);
// sampling locations of the deformable ENCODER, whose queries are the S tokens of the same
// L maps (shapes as above, host ints). Query q = pixel (y, x) of level lq has the reference
// point ((x + 0.5) / W_lq, (y + 0.5) / H_lq) (pixel centre, valid ratios 1: no padding masks),
// used at every level; the offsets are in pixels of the sampled level l:
//   loc[b,q,h,l,p] = ref(q) + (off[b,q,h,l,p,0] / W_l, off[b,q,h,l,p,1] / H_l)
// off, loc (B, S, NH, L, P, 2); loc may equal off (in place). Backward: doff += dloc / (W_l, H_l)
// (doff must not alias dloc).
void ms_deform_locations_forward(float* loc, const float* off, const int* shapes, int B, int L,
                                 int NH, int P);
void ms_deform_locations_backward(float* doff, const float* dloc, const int* shapes, int B, int L,
                                  int NH, int P);

// losses. Each forward writes its loss to *loss (a single float on the device);
// each backward accumulates dloss * d(loss)/d(input).
// masked MSE (MAE): pred, target (N, C), mask (N) in {0,1};
//   loss = sum_n mask[n] * mean_c (pred - target)^2 / sum_n mask[n]
void masked_mse_forward(float* loss, const float* pred, const float* target,
                        const float* mask, int N, int C);
void masked_mse_backward(float* dpred, float dloss, const float* pred, const float* target,
                         const float* mask, int N, int C);
// weighted softmax cross-entropy, PyTorch semantics: logits (N, C), targets (N) in
// [0, C) or ignore_index; class_weight (C) or NULL for all ones;
//   loss = sum_n w[t_n] * -log softmax(logits_n)[t_n] / sum_n w[t_n]  (ignored rows skipped)
void cross_entropy_forward(float* loss, const float* logits, const int* targets,
                           const float* class_weight, int N, int C, int ignore_index);
void cross_entropy_backward(float* dlogits, float dloss, const float* logits,
                            const int* targets, const float* class_weight,
                            int N, int C, int ignore_index);
// per-row losses for M masks of P points; targets in [0, 1].
// sigmoid BCE: losses[m] = mean_p BCEWithLogits(logits[m,p], targets[m,p])
// dice: s = sigmoid(logits); losses[m] = 1 - (2 sum s*t + 1) / (sum s + sum t + 1)
// backward takes dlosses (M), one upstream gradient per row.
void sigmoid_bce_forward(float* losses, const float* logits, const float* targets, int M, int P);
void sigmoid_bce_backward(float* dlogits, const float* dlosses, const float* logits,
                          const float* targets, int M, int P);
void dice_loss_forward(float* losses, const float* logits, const float* targets, int M, int P);
void dice_loss_backward(float* dlogits, const float* dlosses, const float* logits,
                        const float* targets, int M, int P);

// AdamW (decoupled weight decay, bias correction), step t >= 1:
//   m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m / (1-b1^t); vhat = v / (1-b2^t)
//   p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p)
void adamw_update(float* params, const float* grads, float* m, float* v, size_t N,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int t);
// sum of squares of x (N) written to *out (one float on the device); for grad clipping
void sum_squares(float* out, const float* x, size_t N);

// ----------------------------------------------------------------------------
// images and labels (stb_image / stb_image_write)

// an 8-bit PNG of comp channels (H, W, comp) written to path.tmp, then renamed over path (a
// reader never sees half a file); dies naming the file on failure
void png_write_atomic(const char* path, const unsigned char* px, int H, int W, int comp);
// "a/b" (malloc'd; trailing slashes of a dropped) and the sorted names in dir: its sub-folders
// (want_dirs) or files ending with suffix (NULL: image files); data.c, dies when dir cannot be read
char* join_path(const char* a, const char* b);
char** list_names(const char* dir, int want_dirs, const char* suffix, int* count);
// 1 if name ends in .png, .jpg, .jpeg or .bmp (any case): the images a folder listing takes
int has_image_ext(const char* name);
// natural order of names: runs of digits compare by value ("frame9" < "frame10"), else bytewise
int natural_cmp(const char* a, const char* b);

// read PNG/JPG/BMP into a malloc'd float (H, W, 3) in [0, 1]; dies naming the file
// on failure. Returns the pixels, sets *H, *W.
float* image_load(const char* path, int* H, int* W);
// same, but returns NULL and fills err (one line) instead of dying
float* image_try_load(const char* path, int* H, int* W, char* err, size_t errlen);
// write float (H, W, 3) in [0, 1] (clamped) as 8-bit PNG; written to path.tmp then
// renamed, so a failed write leaves nothing half-written. Dies on failure.
void image_save_png(const char* path, const float* rgb, int H, int W);
// label PNGs: 8-bit single channel class ids, 255 = ignore.
// label_load dies if the file is unreadable, 16-bit, or not H x W (when expect_H > 0);
// label_load_format (DATA section) reads the other formats and checks the ids.
unsigned char* label_load(const char* path, int expect_H, int expect_W, int* H, int* W);
void label_save_png(const char* path, const unsigned char* ids, int H, int W);

// ----------------------------------------------------------------------------
// checkpoints: header of 256 int32 (magic, version, kind, config fields...),
// then float32 tensors in the order the model documents.

#define CKPT_MAGIC 20261122
// version 2: the 4th input channel is 1 on VISIBLE pixels (the released code); version 1
// had 1 on masked pixels. A version-1 model is converted exactly when it is loaded.
#define CKPT_VERSION 2
#define CKPT_MIN_VERSION 1
#define CKPT_HEADER_INTS 256
// write header + n floats (host memory) to path (via path.tmp + rename)
void checkpoint_write(const char* path, const int* header, const float* data, size_t n);
// read the header of path; dies with a clear message if the file is missing, too small,
// or has the wrong magic or a version outside CKPT_MIN_VERSION..CKPT_VERSION.
void checkpoint_read_header(const char* path, int* header);
// read n floats after the header; dies naming expected vs actual size if the file
// size is not exactly header + n floats.
void checkpoint_read_data(const char* path, float* data, size_t n);
// the same size check alone: call it before allocating n floats sized from a header
void checkpoint_check_size(const char* path, size_t n);

// ============================================================================
// SWIN ENCODER f (swin.c): config, parameter and activation structs, API
// ============================================================================

// Swin as Mask2Former uses it, matching Hugging Face's SwinBackbone (transformers 5.17)
// and the original Mask2Former Swin: patch embedding conv 4x4/4 (input zero-padded
// bottom/right to a multiple of 4) + LN; four stages of blocks (LN -> zero-pad to a
// multiple of the window -> roll(-shift) on odd blocks -> window attention with relative
// position bias (and the -100 shift mask) -> reverse -> crop -> residual; LN -> MLP (exact
// GELU) -> residual); patch merging between stages; a LayerNorm on each stage output.
// Every block pads and, on odd blocks, shifts by window/2 whatever the stage resolution:
// SwinBackbone runs its layers with always_partition=True, which skips the classification
// model's set_shift_and_window_size (that rule drops the shift when a stage fits in one
// window; it does not apply to the backbone). Dropout and attention dropout off (the
// released config has both at 0). Drop-path (stochastic depth, timm's DropPath) is on when
// the caller sets a.drop_scale (training and test-time training; the released code runs TTT
// in train mode with DROP_PATH_RATE 0.3) and off when it is NULL (prediction, the default):
//   x_mid = x_in + s[2 blk][b] * attention_branch(x_in); x_out = x_mid + s[2 blk + 1][b] * mlp(x_mid)
// with the table s filled by swin_drop_path_scales.
//
// Usage: n = swin_num_params(&cfg); params (ttt_malloc) + swin_point_params;
//   na = swin_point_acts(&a, NULL, &cfg, max_B, H, W); acts = ttt_malloc(na floats);
//   swin_point_acts(&a, acts, ...); swin_init_acts(&a, &cfg); likewise da (no init);
//   idx = swin_make_rel_index(&cfg); swin_forward(...) -> a.out[s];
//   swin_backward(...) with dout[s] = upstream gradients of a.out[s].
//   Drop-path: swin_drop_path_scales(host, &cfg, B, rate, &rng); copy host to a device
//   buffer of 2 * blocks * B floats; a.drop_scale = that buffer; forward and backward.

#define SWIN_MAX_BLOCKS 32

typedef struct {
    int in_chans;      // 4: RGB + mask indicator
    int embed_dim;     // channels of stage 1; stage s has embed_dim << s
    int depths[4];
    int num_heads[4];
    int window;        // 7
    int mlp_ratio;     // 4
} SwinConfig;

SwinConfig swin_config_small(void);   // Swin-S: 96, {2,2,18,2}, {3,6,12,24}, window 7
SwinConfig swin_config_tiny(void);    // for tests: 16, {2,2,2,2}, {1,2,2,4}, window 7
SwinConfig swin_config_demo(void);    // CPU demo: 32, {1,1,2,1}, {1,2,4,8}, window 7

typedef struct {
    float *norm1_w, *norm1_b;   // (C)
    float *qkv_w, *qkv_b;       // (3C, C), (3C)
    float *rel_table;           // ((2w-1)^2, heads)
    float *proj_w, *proj_b;     // (C, C), (C)
    float *norm2_w, *norm2_b;   // (C)
    float *fc1_w, *fc1_b;       // (4C, C), (4C)
    float *fc2_w, *fc2_b;       // (C, 4C), (C)
} SwinBlockParams;

// parameters in checkpoint order: patch embed, then per stage its blocks, its output norm and
// (stages 0..2) its patch merging
typedef struct {
    float *patch_w, *patch_b;            // (E, 4, 4, in_chans), (E)
    float *patch_norm_w, *patch_norm_b;  // (E)
    SwinBlockParams block[SWIN_MAX_BLOCKS];
    float *out_norm_w[4], *out_norm_b[4];              // (C_s)
    float *merge_norm_w[3], *merge_norm_b[3];          // (4 C_s)
    float *merge_w[3];                                 // (2 C_s, 4 C_s), no bias
} SwinParams;

typedef struct {
    float *x_in;                 // (B, Hs, Ws, C) block input (the residual stream)
    float *ln1_mean, *ln1_rstd;  // (B, Hs, Ws) LN1's statistics (LN1 itself is never stored)
    float *windows;              // (B*nW, w*w, C) padded, rolled, partitioned LN1  [gradients only]
    float *qkv;                  // (B*nW, w*w, 3C)
    float *rel_bias;             // (heads, w*w, w*w) gathered from the table
    float *att_lse;              // (B*nW, heads, w*w) log-sum-exp of each score row (no att map)
    float *attn;                 // (B*nW, w*w, C)
    float *proj;                 // (B*nW, w*w, C)                                  [gradients only]
    float *x_mid;                // (B, Hs, Ws, C) after the attention residual     [activations only:
                                 //   its gradient is added into dx_out's buffer in place]
    float *ln2;                  // (B, Hs, Ws, C) LN2(x_mid)                       [gradients only]
    float *ln2_mean, *ln2_rstd;
    float *fc1;                  // (B, Hs, Ws, 4C) fc1 without its bias (mlp's pre) [activations only]
    float *gelu;                 // (B, Hs, Ws, 4C) gelu(fc1)                        [gradients only:
                                 //   mlp_backward's dhidden scratch]
} SwinBlockActs;

typedef struct {
    int max_B, H, W;             // input size the activations were planned for
    int Hs[4], Ws[4], C[4], nW[4];
    size_t total;                // floats in the activation arena
    float* patch;                // (B, H1, W1, E) conv output
    float *patch_ln_mean, *patch_ln_rstd;
    SwinBlockActs block[SWIN_MAX_BLOCKS];
    float* stage_out[4];         // (B, Hs, Ws, C) last block output (x_in of "block depth")
    float* out[4];               // (B, Hs, Ws, C) LayerNorm'd stage outputs: what f returns
    float *out_mean[4], *out_rstd[4];
    float* merged[3];            // (B, Hs+1, Ws+1, 4C) patch-merge gather
    float* merged_ln[3];
    float *merged_mean[3], *merged_rstd[3];
    float* shift_mask[4];        // (nW, w*w, w*w) -100 / 0, constant
    float* drop_grad;            // (max over s of B*Hs*Ws*C) scratch of swin_backward: a
                                 // branch's gradient times its drop-path scale (used in da,
                                 // written by scale_rows_add_backward, never zeroed)
    // Work buffers shared by all blocks, sized for the largest stage. In the activations a:
    // the partitioned LN1, then the projected attention before window_reverse, then LN2
    // (work_windows), and gelu(fc1) (work_hidden), none kept for the backward. In the
    // gradients da: the same recomputed by swin_backward (the inputs of the qkv, fc1 and fc2
    // weight gradients).
    float* work_windows;         // (max over s of B*nW*w*w*C)
    float* work_hidden;          // (max over s of B*Hs*Ws*4C)
    // Drop-path scales, set by the caller (not part of the arena): NULL = no drop-path
    // (swin_point_acts sets NULL); else a device table (2 * blocks, B) for the batch B of
    // the call, row 2 blk scaling block blk's attention branch per sample and row 2 blk + 1
    // its MLP branch. swin_backward reads it from a (the table of the forward).
    float* drop_scale;
} SwinActs;

size_t swin_num_params(const SwinConfig* cfg);
void swin_point_params(SwinParams* p, float* base, const SwinConfig* cfg);
// initialise on the HOST: linears N(0, 0.02), rel tables N(0, 0.02), biases 0, norms 1/0,
// patch conv uniform(+-1/sqrt(fan_in))
void swin_init_params(float* host_base, const SwinConfig* cfg, Rng* rng);

// activations for batches up to max_B of H x W inputs; base == NULL only counts (returns
// the number of floats). swin_init_acts fills the constant shift masks (on ttt_device).
// What the forward keeps per block: x_in, LN1's mean and rstd, qkv, rel_bias, att_lse, attn,
// x_mid, LN2's mean and rstd, fc1; the windows of LN1, proj, LN2 and gelu are recomputed (or not
// needed) in the backward.
size_t swin_point_acts(SwinActs* a, float* base, const SwinConfig* cfg, int max_B, int H, int W);
size_t swin_num_acts(const SwinConfig* cfg, int max_B, int H, int W);   // = point_acts(NULL)
// The gradient buffers da of swin_backward, far smaller than a: a block's gradients are needed
// only while the backward is inside it, so all blocks share one set of per-block buffers sized
// for the largest stage (qkv, rel_bias, windows .. gelu), the residual-stream gradient x_in alternates
// between two buffers per stage (block i writes buffer i % 2 while reading block i + 1's, to
// which it adds LN2's gradient in place: that is dx_mid), and
// the per-stage ones (stage_out, merged, merged_ln) and patch have their own. Geometry fields
// as in a. base == NULL only counts.
size_t swin_point_grad_acts(SwinActs* da, float* base, const SwinConfig* cfg, int max_B, int H, int W);
void swin_init_acts(SwinActs* a, const SwinConfig* cfg);
// the relative position index (w*w*w*w ints) on ttt_device, built once per config
int* swin_make_rel_index(const SwinConfig* cfg);

// Drop-path scale table (2 * blocks, B) on the HOST (layout of SwinActs.drop_scale): block
// blk of n has rate p = rate * blk / (n - 1) (0 when n == 1); each entry is 0 with
// probability p, else 1 / (1 - p), drawn independently (nothing drawn where p == 0, so rate 0
// gives all ones and leaves rng untouched). rate must be in [0, 1).
void swin_drop_path_scales(float* host_scale, const SwinConfig* cfg, int B, float rate, Rng* rng);
// inp (B, H, W, in_chans) -> a->out[0..3]
void swin_forward(const SwinConfig* cfg, const SwinParams* p, SwinActs* a, const int* rel_index,
                  const float* inp, int B);
// dout[s] (B, Hs, Ws, C_s): gradients of the four outputs (may be NULL for an unused stage).
// Accumulates into grads (zero them first) and dinp (may be NULL). da is scratch pointed by
// swin_point_grad_acts; each buffer is zeroed here right before the backward uses it.
void swin_backward(const SwinConfig* cfg, const SwinParams* p, SwinParams* grads,
                   const SwinActs* a, SwinActs* da, const int* rel_index,
                   const float* inp, float* const dout[4], float* dinp, int B);

// Encoder weights on their own (e.g. converted from Hugging Face / original Swin by
// dev/convert_swin.py): a checkpoint file (checkpoint_write) with header
// [magic, version, CKPT_KIND_SWIN, in_chans, embed_dim, depths[4], num_heads[4], window,
// mlp_ratio, 0...] and swin_num_params floats in the SwinParams order above.
#define CKPT_KIND_SWIN 2
void swin_save_export(const char* path, const SwinConfig* cfg, const float* host_params);
// reads such a file: sets *cfg from the header (dies on another kind or an implausible
// config, or a size that does not match) and returns the malloc'd host parameters
float* swin_load_hf_export(const char* path, SwinConfig* cfg);
// the config of such a file, every field and the file's size checked (nothing allocated)
SwinConfig swin_read_export_config(const char* path);

// ============================================================================
// end of SWIN
// ============================================================================


// ============================================================================
// MASK2FORMER HEAD h (mask2former.c): pixel decoder, transformer decoder, set
// loss, matcher, inference
// ============================================================================

// --- decoder (pixel decoder, transformer decoder, inference) ---
//
// Layout: channels-last everywhere. Encoder maps feats[l] (B, Hs[l], Ws[l], in_dims[l]) for
// l = 0..3 at strides 4, 8, 16, 32; Hs[l+1] = ceil(Hs[l] / 2) (Swin patch merging pads).
// FPN level index l follows the encoder (0 = 1/4 ... 3 = 1/32). The transformer decoder reads
// "memory levels" m = 0, 1, 2 = FPN outputs at 1/32, 1/16, 1/8 (FPN levels 3, 2, 1); decoder
// layer i uses memory level i % 3 and the attention mask made from prediction i.

#define M2F_MAX_LAYERS 16

typedef struct {
    int in_dims[4];     // encoder channels at 1/4, 1/8, 1/16, 1/32
    int conv_dim;       // FPN width; must equal hidden_dim (no input projections, as published)
    int mask_dim;       // width of mask_features and of the mask embedding
    int num_groups;     // GroupNorm groups in the FPN
    int num_queries;    // Q
    int hidden_dim;     // D
    int num_heads;      // D % num_heads == 0
    int ffn_dim;        // F
    int dec_layers;     // masked-attention layers (9 published); predictions L = dec_layers + 1
    int num_classes;    // K; the class head has K + 1 outputs, index K = "no object"
    // pixel decoder kind and the sizes of the deformable one (all 0 for the FPN)
    int pixel_decoder;  // PIXEL_DECODER_FPN (0, the default) or PIXEL_DECODER_MSDEFORM (1)
    int enc_layers;     // msdeform: deformable encoder layers (6 published); heads = num_heads
    int enc_ffn;        // msdeform: encoder FFN width (1024 published)
    int n_points;       // msdeform: sampling points per head and level (4 published)
} M2FConfig;

#define PIXEL_DECODER_FPN 0
#define PIXEL_DECODER_MSDEFORM 1
#define MSD_LEVELS 3          // the deformable encoder's levels: 1/32, 1/16, 1/8
#define MSD_MAX_LAYERS 16

// published Mask2Former (conv 256, mask 256, GN 32, 100 queries, 8 heads, FFN 2048, 9 layers)
M2FConfig m2f_config_published(const int in_dims[4], int num_classes);
// small, fast on CPU (conv/hidden/mask 64, GN 8, 20 queries, 4 heads, FFN 256, 3 layers)
M2FConfig m2f_config_small(const int in_dims[4], int num_classes);
// tiny, for tests (conv/hidden/mask 16, GN 4, 5 queries, 2 heads, FFN 24, 3 layers)
M2FConfig m2f_config_tiny(const int in_dims[4], int num_classes);
void m2f_config_check(const M2FConfig* cfg);   // ttt_die on an inconsistent config
// select the pixel decoder: PIXEL_DECODER_FPN clears the encoder sizes; PIXEL_DECODER_MSDEFORM
// sets the published ones (6 layers, 4 points, FFN 4 * conv_dim = 1024 at width 256)
void m2f_config_set_pixel_decoder(M2FConfig* cfg, int kind);
// "fpn" -> PIXEL_DECODER_FPN, "msdeform" -> PIXEL_DECODER_MSDEFORM; anything else dies naming opt
int pixel_decoder_parse(const char* opt, const char* s);
const char* pixel_decoder_name(int kind);   // "fpn" | "msdeform"
// sizes of the four encoder levels for a 1/4 map of H4 x W4 (halving, rounding up)
void m2f_level_sizes(int H4, int W4, int Hs[4], int Ws[4]);

// ---- pixel decoder (BasePixelDecoder, FPN without deformable attention) ----
//   out[3] = relu(GN(conv3x3(feats[3])))                              (1/32)
//   l = 2, 1, 0: fused[l] = GN(conv1x1(feats[l])) + nearest_up(out[l+1])
//                out[l]   = relu(GN(conv3x3(fused[l])))
//   mask_features = conv3x3(out[0]) + mask_b                          (1/4, mask_dim)
//   multi-scale features for the decoder: out[3], out[2], out[1].
// Convs have no bias except mask_w. The MAE head g reuses this module (its own params/acts).
#define PD_NUM_TENSORS 23
typedef struct {
    float* lateral_w[3];     // l = 0..2: (conv_dim, 1, 1, in_dims[l])
    float* lateral_gn_w[3];  // (conv_dim)
    float* lateral_gn_b[3];  // (conv_dim)
    float* output_w[4];      // l = 0..3: (conv_dim, 3, 3, C), C = in_dims[3] at l = 3, else conv_dim
    float* output_gn_w[4];   // (conv_dim)
    float* output_gn_b[4];   // (conv_dim)
    float* mask_w;           // (mask_dim, 3, 3, conv_dim)
    float* mask_b;           // (mask_dim)
} PixelDecoderParams;

// activations of the msdeform pixel decoder's input projections and deformable encoder
// (B = max_B, S tokens, D = conv_dim, E = num_heads * MSD_LEVELS * n_points, FE = enc_ffn);
// they live inside PixelDecoderActs (its member msd), which also holds the outputs
typedef struct {
    int S, T[MSD_LEVELS], start[MSD_LEVELS];   // tokens: all, per level e, first row of level e
    int shapes[2 * MSD_LEVELS];                // (H_e, W_e), host ints for the ms_deform ops
    size_t n;                                  // floats of this block, from proj[0] on (0 for gradients)
    float* proj[MSD_LEVELS];       // (B, T_e, D) conv1x1 + bias of feats[3-e]
    float* proj_gn[MSD_LEVELS];    // (B, T_e, D) after GroupNorm
    float* proj_mean[MSD_LEVELS];  // (B, G)
    float* proj_rstd[MSD_LEVELS];  // (B, G)
    float* pos;                    // (S, D) sine encoding of each level + level_embed[e]
    float* level_rows;             // (S, D) level_embed[e] on every row of level e
    float* x[MSD_MAX_LAYERS + 1];  // (B, S, D) x[0] = src levels concatenated, x[i+1] = layer i output
    float* q_in[MSD_MAX_LAYERS];   // (B, S, D) x[i] + pos
    float* value[MSD_MAX_LAYERS];  // (B, S, NH, HD) value_proj(x[i])
    float* off[MSD_MAX_LAYERS];    // (B, S, NH, 3, P, 2) sampling offsets (pixels of level l)
    float* loc[MSD_MAX_LAYERS];    // (B, S, NH, 3, P, 2) sampling locations in [0, 1] (mostly)
    float* aw_logit[MSD_MAX_LAYERS];  // (B, S, NH, 3 * P)
    float* aw[MSD_MAX_LAYERS];        // softmax over the 3 * P of each head
    float* attn[MSD_MAX_LAYERS];   // (B, S, D) ms_deform_attn output
    float* res1[MSD_MAX_LAYERS];   // (B, S, D) x[i] + output_proj(attn)
    float* ln1[MSD_MAX_LAYERS];    // (B, S, D)
    float* ln1_mean[MSD_MAX_LAYERS];  // (B, S)
    float* ln1_rstd[MSD_MAX_LAYERS];
    float* fc1[MSD_MAX_LAYERS];       // (B, S, FE)
    float* fc1_relu[MSD_MAX_LAYERS];  // (B, S, FE)
    float* res2[MSD_MAX_LAYERS];   // (B, S, D) ln1 + fc2(fc1_relu); LN2 of it is x[i+1]
    float* ln2_mean[MSD_MAX_LAYERS];  // (B, S)
    float* ln2_rstd[MSD_MAX_LAYERS];
} MSDeformActs;

typedef struct {
    int max_B, H4, W4, Hs[4], Ws[4];   // sizes the buffers were pointed for
    float* lateral[3];       // (B, Hs[l], Ws[l], conv_dim) conv1x1 output
    float* lateral_gn[3];    // same, after GroupNorm
    float* lateral_mean[3];  // (B, G)
    float* lateral_rstd[3];  // (B, G)
    float* fused[3];         // lateral_gn + nearest-upsampled out[l+1]
    float* conv[4];          // (B, Hs[l], Ws[l], conv_dim) conv3x3 output
    float* gn[4];            // same, after GroupNorm
    float* mean[4];          // (B, G)
    float* rstd[4];          // (B, G)
    float* out[4];           // relu(gn): the FPN outputs
    float* mask_features;    // (B, H4, W4, mask_dim)
    MSDeformActs msd;        // msdeform only (see below); all NULL for the FPN
} PixelDecoderActs;

// floats of the pixel decoder's parameter block, of either kind (msdeform_num_params for msdeform)
size_t pixel_decoder_num_params(const M2FConfig* cfg);
// FPN only (msdeform_point_params / msdeform_init_params for the other kind)
void pixel_decoder_point_params(PixelDecoderParams* p, float* mem, const M2FConfig* cfg);
// c2_xavier_fill convs (uniform +-sqrt(3 / fan_in)), zero biases, GN weight 1 bias 0.
// mem is HOST memory of pixel_decoder_num_params floats.
void pixel_decoder_init_params(float* mem, const M2FConfig* cfg, Rng* rng);
// activations of either kind (for msdeform: the outputs and the FPN step to 1/4 in the fields
// above, the encoder in a->msd)
size_t pixel_decoder_num_acts(const M2FConfig* cfg, int max_B, int H4, int W4);
void pixel_decoder_point_acts(PixelDecoderActs* a, float* mem, const M2FConfig* cfg,
                              int max_B, int H4, int W4);
// feats[l]: (B, Hs[l], Ws[l], in_dims[l]) on ttt_device, B <= a->max_B
void pixel_decoder_forward(const M2FConfig* cfg, const PixelDecoderParams* p, PixelDecoderActs* a,
                           const float* const feats[4], int B);
// Upstream gradients: da->mask_features and da->out[1..3] (zero where none; da->out[0] is
// treated as scratch). Every other buffer of da is scratch and is zeroed here.
// Accumulates into grads (a PixelDecoderParams over a gradient buffer) and dfeats[l]
// (each may be NULL).
void pixel_decoder_backward(const M2FConfig* cfg, const PixelDecoderParams* p,
                            PixelDecoderParams* grads, const PixelDecoderActs* a,
                            PixelDecoderActs* da, const float* const feats[4], float* dfeats[4],
                            int B);

// ---- pixel decoder MSDeformAttnPixelDecoder (pixel_decoder = PIXEL_DECODER_MSDEFORM) ----
// As Mask2Former builds it (msdeformattn.py of the released code; Hugging Face
// Mask2FormerPixelDecoder / Mask2FormerPixelDecoderEncoderOnly). D = conv_dim (= hidden_dim),
// G = num_groups, NH = num_heads (also the decoder's), HD = D / NH, P = n_points, NE = enc_layers,
// FE = enc_ffn. Encoder levels e = 0, 1, 2 are feats[3], feats[2], feats[1] (1/32, 1/16, 1/8),
// T_e = H_e W_e tokens, S = T_0 + T_1 + T_2:
//   src_e = GN(conv1x1(feats[3-e]) + input_b[e])                    (B, T_e, D)
//   x_0   = the src_e concatenated along the tokens, level 0 first    (B, S, D)
//   pos   = concat_e (sine_position_encoding(H_e, W_e, D) + level_embed[e])   (S, D)
//   encoder layer i (post-norm; dropout off):
//     q = x + pos;  v = value_proj(x)                                 (B, S, NH, HD)
//     off = sampling_offsets(q)  (B, S, NH, 3, P, 2);  aw = softmax over 3P of attention_weights(q)
//     loc = ms_deform_locations(off) (reference point = the token's own pixel centre)
//     x = LN1(x + output_proj(ms_deform_attn(v, loc, aw)));  x = LN2(x + fc2(relu(fc1(x))))
//   out[3-e] = level e of the encoder output, (B, H_e, W_e, D): the multi-scale features
//   fused = GN(lateral conv1x1(feats[0])) + bilinear_up(out[1])  (align_corners=False, to 1/4;
//           Mask2Former's "nearest" comment notwithstanding, its code is bilinear)
//   out[0] = relu(GN(conv3x3(fused)));  mask_features = conv1x1(out[0]) + mask_b
// The transformer decoder reads out[1..3] and mask_features exactly as from the FPN.
//
// Parameters, in memory (= checkpoint) order; conv weights are (OC, K, K, C) channels-last
// (PyTorch's (OC, C, K, K) permuted), linear weights (out, in) as PyTorch. The encoder
// tensors are stacked over the NE layers (layer i at offset i * its size). Names: Hugging Face
// under pixel_level_module.decoder. / detectron2 under sem_seg_head.pixel_decoder. (checked
// against transformers 5.24 and the released msdeformattn.py: dev/convert_mask2former.py maps
// them, test_m2f_model_ref runs the result against Hugging Face)
#define MSD_NUM_TENSORS 37
typedef struct {
    float* input_w[MSD_LEVELS];     // (D, 1, 1, in_dims[3-e])  input_projections.e.0.weight / input_proj.e.0.weight
    float* input_b[MSD_LEVELS];     // (D)                      input_projections.e.0.bias
    float* input_gn_w[MSD_LEVELS];  // (D)                      input_projections.e.1.weight (GroupNorm)
    float* input_gn_b[MSD_LEVELS];  // (D)                      input_projections.e.1.bias
    float* level_embed;             // (3, D)                   level_embed / transformer.level_embed
    // encoder layer i: encoder.layers.i. (HF) / transformer.encoder.layers.i. (detectron2)
    float* value_w;                 // (NE, D, D)               self_attn.value_proj.weight
    float* value_b;                 // (NE, D)
    float* off_w;                   // (NE, NH*3*P*2, D)        self_attn.sampling_offsets.weight,
    float* off_b;                   // (NE, NH*3*P*2)             rows in (h, l, p, x/y) order
    float* aw_w;                    // (NE, NH*3*P, D)          self_attn.attention_weights.weight,
    float* aw_b;                    // (NE, NH*3*P)               rows in (h, l, p) order
    float* out_w;                   // (NE, D, D)               self_attn.output_proj.weight
    float* out_b;                   // (NE, D)
    float* ln1_w;                   // (NE, D)                  self_attn_layer_norm / norm1
    float* ln1_b;                   // (NE, D)
    float* fc1_w;                   // (NE, FE, D)              fc1 / linear1
    float* fc1_b;                   // (NE, FE)
    float* fc2_w;                   // (NE, D, FE)              fc2 / linear2
    float* fc2_b;                   // (NE, D)
    float* ln2_w;                   // (NE, D)                  final_layer_norm / norm2
    float* ln2_b;                   // (NE, D)
    // the FPN step to 1/4 and the mask projection
    float* lateral_w;               // (D, 1, 1, in_dims[0])    adapter_1.0.weight / adapter_1.weight (no bias)
    float* lateral_gn_w;            // (D)                      adapter_1.1.* / adapter_1.norm.*
    float* lateral_gn_b;            // (D)
    float* output_w;                // (D, 3, 3, D)             layer_1.0.weight / layer_1.weight (no bias)
    float* output_gn_w;             // (D)                      layer_1.1.* / layer_1.norm.*
    float* output_gn_b;             // (D)
    float* mask_w;                  // (mask_dim, 1, 1, D)      mask_projection / mask_features
    float* mask_b;                  // (mask_dim)
} MSDeformParams;

size_t msdeform_num_params(const M2FConfig* cfg);
void msdeform_point_params(MSDeformParams* p, float* mem, const M2FConfig* cfg);
// HOST memory, as the originals initialise: input convs xavier_uniform with bias 0; encoder
// linears xavier_uniform, value/output_proj biases 0, FFN biases uniform +-1/sqrt(fan_in);
// sampling_offsets weight 0 and bias the (cos, sin) ring of radius p+1 per head (Deformable
// DETR), attention_weights 0; level_embed N(0, 1); lateral/output/mask convs c2_xavier_fill
// (uniform +-sqrt(3 / fan_in)), mask bias 0; norms 1 / 0.
void msdeform_init_params(float* mem, const M2FConfig* cfg, Rng* rng);
// feats as for pixel_decoder_forward; a from pixel_decoder_point_acts with this config.
// Writes a->out[0..3] and a->mask_features (and every saved activation).
void msdeform_forward(const M2FConfig* cfg, const MSDeformParams* p, PixelDecoderActs* a,
                      const float* const feats[4], int B);
// As pixel_decoder_backward: upstream da->mask_features and da->out[1..3]; every other
// buffer of da (da->out[0], da->msd) is scratch and zeroed here. Accumulates into grads
// and dfeats[l] (each may be NULL; dfeats[0..3] all receive gradient).
void msdeform_backward(const M2FConfig* cfg, const MSDeformParams* p, MSDeformParams* grads,
                       const PixelDecoderActs* a, PixelDecoderActs* da, const float* const feats[4],
                       float* dfeats[4], int B);

// ---- the whole head h: pixel decoder + masked-attention transformer decoder ----
// Prediction j = 0..L-1 (L = dec_layers + 1): y_j = decoder_norm(tgt_j) with tgt_0 = query_feat
// and tgt_j = output of decoder layer j-1;
//   class_logits[j] = y_j @ class_w^T + class_b                      (B, Q, K+1)
//   e = me3(relu(me2(relu(me1(y_j)))))                               (B, Q, mask_dim)
//   mask_logits[j][b,q,p] = e[b,q,:] . mask_features[b,p,:]            (B, Q, H4*W4)
// Decoder layer i (m = i % 3, T = tokens of memory level m, src = memory + level_embed[m],
// pos = sine encoding of level m, qpos = query_embed):
//   masked cross-attn: q = W_q(tgt+qpos), k = W_k(src+pos), v = W_v(src), scores + attn_mask[i]
//                      tgt = LN(tgt + W_o attn)
//   self-attn:         q = W_q(tgt+qpos), k = W_k(tgt+qpos), v = W_v(tgt); tgt = LN(tgt + W_o attn)
//   FFN:               tgt = LN(tgt + fc2(relu(fc1(tgt))))
// attn_mask[i] (B, Q, T) = attn_mask_from_logits(bilinear resize of mask_logits[i] to level m),
// shared by all heads, no gradient.
// Memory: the pixel decoder's block first (pd for the FPN, msd for msdeform; the other kind's
// pointers are NULL), then the decoder tensors below in order. M2F_NUM_TENSORS counts the
// FPN layout's pointers (pd, then the decoder's), which are in memory order for an fpn config.
#define M2F_NUM_TENSORS (PD_NUM_TENSORS + 31)
typedef struct {
    PixelDecoderParams pd;   // FPN: first in memory, the pixel decoder's block
    float* query_feat;       // (Q, D) tgt_0
    float* query_embed;      // (Q, D) query positions
    float* level_embed;      // (3, D) memory levels 1/32, 1/16, 1/8
    // decoder layers, stacked over dec_layers (NL)
    float* ca_in_w;          // (NL, 3D, D) rows: W_q, W_k, W_v (nn.MultiheadAttention in_proj)
    float* ca_in_b;          // (NL, 3D)
    float* ca_out_w;         // (NL, D, D)
    float* ca_out_b;         // (NL, D)
    float* ca_ln_w;          // (NL, D)
    float* ca_ln_b;          // (NL, D)
    float* sa_in_w;          // (NL, 3D, D) rows: W_q, W_k, W_v
    float* sa_in_b;          // (NL, 3D)
    float* sa_out_w;         // (NL, D, D)
    float* sa_out_b;         // (NL, D)
    float* sa_ln_w;          // (NL, D)
    float* sa_ln_b;          // (NL, D)
    float* fc1_w;            // (NL, F, D)
    float* fc1_b;            // (NL, F)
    float* fc2_w;            // (NL, D, F)
    float* fc2_b;            // (NL, D)
    float* ffn_ln_w;         // (NL, D)
    float* ffn_ln_b;         // (NL, D)
    float* dec_ln_w;         // (D) decoder_norm, shared by all predictions
    float* dec_ln_b;         // (D)
    float* class_w;          // (K+1, D)
    float* class_b;          // (K+1)
    float* me1_w;            // (D, D) mask-embed MLP
    float* me1_b;            // (D)
    float* me2_w;            // (D, D)
    float* me2_b;            // (D)
    float* me3_w;            // (mask_dim, D)
    float* me3_b;            // (mask_dim)
    MSDeformParams msd;      // msdeform: first in memory, the pixel decoder's block
} M2FParams;

typedef struct {
    int max_B, H4, W4, Hs[4], Ws[4];
    int T[3];                // tokens of memory levels 0, 1, 2 (1/32, 1/16, 1/8)
    int last_only;           // gradient layout (m2f_point_grad_acts): 1 when only the last
                             // prediction gets upstream gradients; class_logits, mask_logits then
                             // hold that one prediction (B, Q, ...). 0 for activations.
    // outputs, first in memory (dacts: upstream gradients)
    // packed densely for the B of the last forward: prediction j starts at j * B * Q * (K+1)
    float* class_logits;     // (L, B, Q, K+1), L = dec_layers + 1
    float* mask_logits;      // (L, B, Q, H4, W4)
    PixelDecoderActs pd;
    float* pos[3];           // (T[m], D) sine position encoding of memory level m
    float* level_rows[3];    // (T[m], D) level_embed[m] repeated on every row
    float* src[3];           // (B, T[m], D) FPN output + level_embed[m]
    float* src_pos[3];       // (B, T[m], D) src + pos
    float* qpos;             // (B, Q, D) query_embed broadcast over B
    float* tgt0;             // (B, Q, D) query_feat broadcast over B
    // per decoder layer i
    float* attn_mask[M2F_MAX_LAYERS];   // (B, Q, T) additive: 0 or -INFINITY
    float* ca_qin[M2F_MAX_LAYERS];      // (B, Q, D) tgt + qpos
    float* ca_q[M2F_MAX_LAYERS];        // (B, Q, D)
    float* ca_k[M2F_MAX_LAYERS];        // (B, T, D)
    float* ca_v[M2F_MAX_LAYERS];        // (B, T, D)
    float* ca_lse[M2F_MAX_LAYERS];      // (B, NH, Q) log-sum-exp of each score row (no att map)
    float* ca_o[M2F_MAX_LAYERS];        // (B, Q, D) attention output before W_o
    float* ca_res[M2F_MAX_LAYERS];      // (B, Q, D) tgt + W_o o
    float* ca_ln[M2F_MAX_LAYERS];       // (B, Q, D)
    float* ca_mean[M2F_MAX_LAYERS];     // (B, Q)
    float* ca_rstd[M2F_MAX_LAYERS];     // (B, Q)
    float* sa_qin[M2F_MAX_LAYERS];      // (B, Q, D) ca_ln + qpos
    float* sa_q[M2F_MAX_LAYERS];        // (B, Q, D)
    float* sa_k[M2F_MAX_LAYERS];
    float* sa_v[M2F_MAX_LAYERS];
    float* sa_lse[M2F_MAX_LAYERS];      // (B, NH, Q) log-sum-exp of each score row
    float* sa_o[M2F_MAX_LAYERS];
    float* sa_res[M2F_MAX_LAYERS];
    float* sa_ln[M2F_MAX_LAYERS];
    float* sa_mean[M2F_MAX_LAYERS];
    float* sa_rstd[M2F_MAX_LAYERS];
    float* fc1[M2F_MAX_LAYERS];         // (B, Q, F)
    float* fc1_relu[M2F_MAX_LAYERS];    // (B, Q, F)
    float* ffn_res[M2F_MAX_LAYERS];     // (B, Q, D)
    float* ffn_ln[M2F_MAX_LAYERS];      // (B, Q, D) layer output = tgt_{i+1}
    float* ffn_mean[M2F_MAX_LAYERS];
    float* ffn_rstd[M2F_MAX_LAYERS];
    // per prediction j = 0..L-1
    float* dn[M2F_MAX_LAYERS + 1];      // (B, Q, D) decoder_norm output
    float* dn_mean[M2F_MAX_LAYERS + 1]; // (B, Q)
    float* dn_rstd[M2F_MAX_LAYERS + 1];
    float* me1[M2F_MAX_LAYERS + 1];     // (B, Q, D)
    float* me1_relu[M2F_MAX_LAYERS + 1];
    float* me2[M2F_MAX_LAYERS + 1];
    float* me2_relu[M2F_MAX_LAYERS + 1];
    float* me3[M2F_MAX_LAYERS + 1];     // (B, Q, mask_dim) mask embedding
    float* mask_resized;                // (B, Q, max T) scratch for the next attention mask
} M2FActs;

size_t m2f_num_params(const M2FConfig* cfg);
void m2f_point_params(M2FParams* p, float* mem, const M2FConfig* cfg);
// host memory: pixel decoder as above; attention/FFN weights xavier_uniform, attention biases 0,
// FFN biases uniform +-1/sqrt(fan_in);
// query_feat, query_embed, level_embed N(0, 1); class and mask-embed Linear PyTorch default
// (uniform +-1/sqrt(fan_in) for weight and bias); LayerNorm weight 1 bias 0.
void m2f_init_params(float* mem, const M2FConfig* cfg, Rng* rng);
size_t m2f_num_acts(const M2FConfig* cfg, int max_B, int H4, int W4);
void m2f_point_acts(M2FActs* a, float* mem, const M2FConfig* cfg, int max_B, int H4, int W4);
// feats as for pixel_decoder_forward. teacher_masks: NULL normally; else the additive masks
// (0 / -INFINITY) to use instead of the computed ones, layer after layer, each (B, Q, T[i % 3])
// packed densely (reference tests). Writes a->class_logits, a->mask_logits.
void m2f_forward(const M2FConfig* cfg, const M2FParams* p, M2FActs* a,
                 const float* const feats[4], int B, const float* teacher_masks);
// the transformer decoder alone, on the pixel decoder outputs already in a->pd (out[1..3],
// mask_features); m2f_forward = pixel_decoder_forward + this. Used by reference tests.
void m2f_decoder_forward(const M2FConfig* cfg, const M2FParams* p, M2FActs* a, int B,
                         const float* teacher_masks);
// da->class_logits and da->mask_logits hold the upstream gradients (layout of the forward
// outputs, or the last prediction's only: last_only below); every other buffer of da is scratch
// and is zeroed here, each right before its first use. Accumulates into grads and
// dfeats[l] (may be NULL). Uses the attention masks saved by the forward.
void m2f_backward(const M2FConfig* cfg, const M2FParams* p, M2FParams* grads, const M2FActs* a,
                  M2FActs* da, const float* const feats[4], float* dfeats[4], int B);

// The gradient buffers of the head (issue 14): m2f_backward runs on da pointed by
// m2f_point_acts (a full mirror of the activations, as tests use) or, using far less memory, by
// m2f_point_grad_acts: buffers only for tensors that get a gradient (none for means, rstds,
// attention maps and masks, positional tables); one span of per-layer buffers shared by all
// decoder layers (each zeroes its span right before use), the layer outputs' gradients
// alternating between two buffers; one set of prediction-MLP buffers shared by all predictions;
// the pixel decoder's 1/4-resolution gradients in two alternating buffers that the coarser FPN
// levels (msdeform: its input projections) reuse, the decoder's scratch inside the second when
// it fits; msdeform's encoder layers share one span too; src's gradient is collected in the
// pixel decoder output's. last_only = 1: only the last prediction's logits get upstream
// gradients (the MAE head g); da->class_logits and da->mask_logits then hold just that
// prediction, and the other predictions' backward (all zeros) is skipped. Bit-identical
// results either way (test_m2f, test_mae).
size_t m2f_num_grad_acts(const M2FConfig* cfg, int max_B, int H4, int W4, int last_only);
void m2f_point_grad_acts(M2FActs* da, float* mem, const M2FConfig* cfg, int max_B, int H4, int W4,
                         int last_only);

// new op: Mask2Former's attention mask from (resized) mask logits, all (B, Q, T):
//   blocked = sigmoid(logit) < 0.5 (computed as 1 / (1 + expf(-x)) < 0.5f in float);
//   a row (b, q) with every t blocked is reopened entirely;
//   mask_add = -INFINITY where blocked else 0. No backward.
void attn_mask_from_logits(float* mask_add, const float* logits, int B, int Q, int T);

// ---- inference (host memory) ----
// Semantic: for one image, class_logits (Q, K+1), mask_logits (Q, H4, W4) of the last prediction.
//   seg[k, p] = sum_q softmax(class_logits[q])[k] * sigmoid(mask_logits[q, p]), k < K
//   seg (K, H4, W4) is resized bilinearly (align_corners=False) to (4*H4, 4*W4), cropped to the
//   top-left H x W (H <= 4*H4, W <= 4*W4) and resized bilinearly again to the output Ho x Wo
//   (the released code's sem_seg_postprocess: a frame resized for the model is scored at its
//   original size; Ho = H, Wo = W makes this second resize the identity, exactly);
//   ids[y, x] (Ho, Wo) = argmax_k (first max on ties).
//   (Mask2Former itself resizes the Q mask logits before the sigmoid; resizing the K class maps
//   after it is far cheaper and differs only along boundaries.)
// work: host floats of m2f_semantic_work_size(Q, K, H4, W4).
size_t m2f_semantic_work_size(int Q, int K, int H4, int W4);
// the pieces of the host inference, shared with mae.c's semantic_scores_cpu:
// softmax over the n logits of one query (double sum) into probs (n)
void softmax_row_host(float* probs, const float* logits, int n);
// (seg_x4_at, the class score of one pixel of the x4-resized class maps: ttt_index.h)
void m2f_semantic_inference(unsigned char* ids, const float* class_logits,
                            const float* mask_logits, int Q, int K, int H4, int W4,
                            int H, int W, int Ho, int Wo, float* work);
// the same on ttt_device: every pointer (ids, logits, work) lives on that device
void semantic_inference(unsigned char* ids, const float* class_logits, const float* mask_logits,
                        int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work);
// Panoptic (Mask2Former panoptic_inference): score, label = max over softmax(K+1); keep
// label != K and score > object_threshold (0.8); mask probs = sigmoid(bilinear logits at
// (4*H4, 4*W4) cropped to H x W); pixel owner = argmax_kept score * prob; a kept query becomes
// a segment if area(owner == it & prob >= 0.5) > 0 and area(owner == it) / area(prob >= 0.5)
// >= overlap_threshold (0.8); stuff classes (is_thing[k] == 0; is_thing NULL = all things)
// merge into one segment per class. seg_ids (H, W): 0 = void, else segment id 1..n.
// Returns n (<= max_segments); segments[s] describes id s+1.
typedef struct { int id; int class_id; int is_thing; int area; float score; } PanopticSegment;
size_t m2f_panoptic_work_size(int Q, int H, int W);
int m2f_panoptic_inference(int* seg_ids, PanopticSegment* segments, int max_segments,
                           const float* class_logits, const float* mask_logits,
                           int Q, int K, int H4, int W4, int H, int W,
                           const unsigned char* is_thing, float object_threshold,
                           float overlap_threshold, float* work);

// --- end of decoder declarations ---


// --- set loss (targets, matcher, losses) ---

// The Mask2Former set loss (facebookresearch/Mask2Former matcher.py + criterion.py), on the
// HOST: the caller copies the logits to host arrays and the gradients back to the device.
// For every prediction j = 0..L-1 (deep supervision, each re-matched) and image b:
//   targets: T binary masks at label resolution (H, W) with their classes (see below)
//   matching: Hungarian assignment of the T targets to distinct queries (of the Q) minimising
//     cost[t, q] = w_class * -softmax(class_logits[q])[class_t]
//                + w_mask * mean_p BCEWithLogits(x_q(p), y_t(p))
//                + w_dice * (1 - (2 sum_p s_q y_t + 1) / (sum_p s_q + sum_p y_t + 1)),
//     s = sigmoid(x), over num_points uniform random points p shared by every mask of the
//     image (x_q: mask logits point-sampled, y_t: target point-sampled, both bilinear,
//     align_corners=False). With T > Q only Q targets get a query (as scipy does).
//   loss_j = w_class * CE(every query of the batch; unmatched -> no-object class K; class
//            weights 1, and no_object_weight for K; PyTorch weighted mean over B*Q rows)
//          + w_mask * sum_matched BCE / num_masks + w_dice * sum_matched dice / num_masks,
//   BCE and dice of a matched pair on num_points points of its own, importance-sampled:
//   oversample*num_points uniform points, uncertainty -|x_q(p)|, keep the
//   int(importance*num_points) most uncertain, fill up with uniform points; no gradient
//   flows through the choice. num_masks = targets in the whole batch (at least 1).
// total = sum_j loss_j. all_pixels = 1 replaces every point set (matching and losses) by
// the Hm*Wm centres of the mask-map pixels ((x+0.5)/Wm, (y+0.5)/Hm): predictions are then
// the mask logits themselves and targets are the 0/1 label-resolution masks bilinearly
// sampled at those centres (soft values at class borders when H != Hm); deterministic.
// The mask map and the label map cover the same frame: point (x, y) in [0, 1]^2 is the same
// place in both (pad labels with 255 where the network input was padded).
// Random draws (rng_uniform; x then y of each point), for j, then b with T > 0: the matching
// points; then the oversample*num_points candidates of every matched pair (pairs in target
// order); then the fill-up points of every pair. Tests replay this order.
// Scratch memory is malloc'd per call (one call per training step; not a hot path).
typedef struct {
    int num_points;          // 12544 (112 * 112)
    float oversample;        // 3
    float importance;        // 0.75
    float w_class, w_mask, w_dice;   // 2, 5, 5
    float no_object_weight;  // 0.1
    int all_pixels;          // 0: point sampling; 1: every pixel of the mask map
    float num_masks;         // > 0: divide the mask losses by this instead of the batch's target
                             // count (a micro-batch as one of Mask2Former's data-parallel
                             // replicas: the all-reduced count / world size); 0 = the count
} SetLossConfig;
SetLossConfig set_loss_config_default(void);

// Targets of one image (Mask2Former's dataset mappers). Both return T and write
// classes (T) and, unless masks is NULL (count only), masks (T, H, W) as 0/1 floats;
// capacity: K for the semantic variant, num_segments for the panoptic one.
// semantic: labels (H, W) in [0, K) or 255 = ignore (anything else dies); one mask per class
//   present, in increasing class order; ignore pixels are 0 in every mask.
int set_loss_targets_semantic(int* classes, float* masks, const unsigned char* labels,
                              int H, int W, int K);
// panoptic: seg_ids (H, W), 0 = void, s in [1, num_segments] = segment s of class
//   segment_class[s-1] in [0, K), or < 0 for a crowd / ignored segment (no target, its
//   pixels 0 in every mask); one mask per kept segment, in segment order, empty ones kept.
int set_loss_targets_panoptic(int* classes, float* masks, const int* seg_ids, int H, int W,
                              const int* segment_class, int num_segments, int K);

// The loss on given targets. class_logits (L, B, Q, K+1), mask_logits (L, B, Q, Hm, Wm);
// num_targets (B); target_classes (sum T) and target_masks (sum T, H, W) packed image after
// image. Returns the total loss; parts (or NULL) gets the weighted CE, BCE and dice terms
// summed over L (they add up to the total). dclass_logits / dmask_logits (same layouts as
// the logits) are ACCUMULATED (+=), or skipped when NULL. rng drives every random point.
float set_loss_from_targets(const SetLossConfig* cfg, const float* class_logits,
                            const float* mask_logits, int L, int B, int Q, int K, int Hm, int Wm,
                            const int* num_targets, const int* target_classes,
                            const float* target_masks, int H, int W,
                            float* dclass_logits, float* dmask_logits, Rng* rng, float parts[3]);
// The loss on semantic label maps labels (B, H, W): set_loss_targets_semantic per image, then
// set_loss_from_targets.
float set_loss(const SetLossConfig* cfg, const float* class_logits, const float* mask_logits,
               int L, int B, int Q, int K, int Hm, int Wm, const unsigned char* labels, int H, int W,
               float* dclass_logits, float* dmask_logits, Rng* rng, float parts[3]);

// Minimum-cost assignment on an n x m cost matrix (row-major, any n, m >= 0): min(n, m) rows
// get distinct columns, col_of_row[i] = the column of row i or -1 (only when n > m).
// Shortest augmenting paths with potentials (Jonker-Volgenant style), O(min^2 max).
// Non-finite costs are treated as 1e30 (a diverged step must not hang the matcher).
// Returns the total cost of the assignment.
double hungarian_assign(const double* cost, int n, int m, int* col_of_row);

// --- end of set loss declarations ---

// ============================================================================
// end of MASK2FORMER
// ============================================================================


// ============================================================================
// MAE HEAD g AND THE Y MODEL (mae.c): masking, g, the joint model, training step
// ============================================================================

// What the paper's code does (renwang435/video-ttt-release, read 2026-11-22):
// - mask2former/maskformer_ttt_model.py: g ("recon_head") is a second MaskFormer head built
//   from the same config (pixel decoder + masked-attention transformer decoder) with
//   NUM_OBJECT_QUERIES = 48 = 3 * 4 * 4 and no class head (mask_classification=False). Its
//   48 "mask" maps at 1/4 resolution are the 3 x 4 x 4 pixels of every 4 x 4 patch.
// - modeling/criterion.py ReconCriterion: recon = reshape(48 maps -> (3, p, p, H/4, W/4)) ->
//   (3, H, W) with p = 4; target = the ImageNet-normalised image; loss = MSE (the released
//   code averages over ALL pixels; the masked-only line is commented out).
// - dataset_mappers/dropout.py: masking patch 16 x 16, exactly int(L * (1 - ratio)) patches
//   kept per image (random permutation), ratio 0.85; masked pixels are zeroed; the 4th input
//   channel is 1 on VISIBLE pixels (all ones for the main task), as ours (checkpoint version 2).
// - configs/.../maskformer2_swin_small_bs16_90k_ttt_mae.yaml: AdamW, lr 1e-4, weight decay
//   0.05, images normalised by mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375).
// The loss (masked or all pixels) and the optimizer settings are the ModelRecipe's.

#define MAE_RECON_PATCH 4   // g's 48 queries are the 3 x 4 x 4 pixels of a 4 x 4 patch

typedef struct {
    SwinConfig swin;      // f (in_chans 4)
    M2FConfig m2f;        // h
    M2FConfig mae;        // g: h's architecture with 3 * 4 * 4 queries (class head unused)
    int num_classes;      // K semantic classes (labels 0..K-1, 255 = ignore)
    int mae_patch;        // masking patch size in pixels (16)
    float mask_ratio;     // fraction of patches masked (0.8; the demo recipe's, see ModelRecipe)
    int colorize;         // 1: h's classes are the COLOR_BINS ab bins of colorization (color.c)
} ModelConfig;

typedef struct { float lr, beta1, beta2, eps, weight_decay; } OptConfig;
OptConfig opt_config_ttt(void);   // AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8, wd 0.05

// How the model is trained, at test time (model_ttt_step) and in joint training
// (model_train_step): the settings where the released code (renwang435/video-ttt-release)
// and this project's demo defaults differ, each one flag away in ./stream and ./train.
// model_recipe_demo(cfg): the demo's behaviour (mask ratio from the checkpoint, loss over the
// masked pixels, one learning rate, decay on every parameter, no clipping at test time, no
// drop-path). model_recipe_paper(): the released code's (see the comment in mae.c).
typedef struct {
    float mask_ratio;         // fraction of the mae_patch x mae_patch patches masked (paper 0.85)
    int loss_all_pixels;      // MSE over all pixels of the frame (1, paper) or the masked ones (0)
    float backbone_lr_scale;  // learning rate of f relative to the base lr (paper 0.1)
    int wd_exempt;            // 1: no weight decay on norm layers, embeddings (query_feat,
                              // query_embed, level_embed) and relative-position tables (paper)
    float ttt_clip;           // full-model gradient L2 clip in model_ttt_step, 0 = off (paper 0.01)
    float drop_path;          // stochastic depth over Swin's blocks, linear 0..rate (paper 0.3);
                              // active in TTT and training steps, never in prediction
} ModelRecipe;
ModelRecipe model_recipe_demo(const ModelConfig* cfg);
ModelRecipe model_recipe_paper(void);

typedef struct Model Model;

ModelConfig model_config_default(int num_classes);   // small, runs on a CPU
ModelConfig model_config_tiny(int num_classes);      // for tests
ModelConfig model_config_swin_s(int num_classes);    // Swin-S + published Mask2Former sizes
// switch h and g to another pixel decoder (PIXEL_DECODER_FPN, the default of every config above,
// or PIXEL_DECODER_MSDEFORM with the sizes of m2f_config_set_pixel_decoder); in mask2former.c
void model_config_set_pixel_decoder(ModelConfig* cfg, int kind);
// params f, h, g (+ frozen f0, g0), grads, AdamW state and activations, all on ttt_device,
// allocated once for batches up to max_batch of H x W frames (padded to a multiple of 32)
Model* model_create(const ModelConfig* cfg, int max_batch, int H, int W);
// the same with h's activations and gradients planned for main_batch <= max_batch frames only:
// for MAE TTT, where h only predicts (one frame) and f, g take the batch (./stream, ./bench)
Model* model_create_planned(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W);
void model_free(Model* m);
void model_init_random(Model* m, uint64_t seed);
void model_save(const Model* m, const char* path);
// a checkpoint converted without an MAE head (its header says g is absent; see mae.c) gets g
// as model_init_random(seed of the header) makes it, with a note on stderr
Model* model_load(const char* path, int max_batch, int H, int W);
Model* model_load_planned(const char* path, int max_batch, int main_batch, int H, int W);
const ModelConfig* model_config(const Model* m);
void model_snapshot_ttt(Model* m);   // f0, g0 <- f, g
void model_reset_ttt(Model* m);      // f, g <- f0, g0; TTT optimizer state cleared
// the recipe of later TTT and training steps (model_create sets model_recipe_demo)
void model_set_recipe(Model* m, const ModelRecipe* r);
const ModelRecipe* model_recipe(const Model* m);
void model_restart_optimizer(Model* m);   // fresh AdamW: moments 0, step 0; weights kept
// a second model for frames of another size that SHARES m's parameters (f, h, g, f0, g0):
// only activations and input buffers of its own, for prediction only (e.g. TTT on crops, the
// prediction on the whole frame): f's and h's activations, no g and no gradient buffers (a
// TTT or training step on it is refused). Free it with model_free before m.
Model* model_create_sharing(Model* m, int max_batch, int H, int W);
// device bytes of the activations, their gradients and the input buffers that model_create
// plans for max_batch frames of H x W (parameters and optimizer state not included)
size_t model_activation_bytes(const ModelConfig* cfg, int max_batch, int H, int W);
// the same for model_create_planned: h's buffers planned for main_batch frames
size_t model_activation_bytes_planned(const ModelConfig* cfg, int max_batch, int main_batch, int H, int W);
// the same for a prediction model (model_create_sharing(m, 1, H, W)): f's and h's activations only
size_t model_predict_bytes(const ModelConfig* cfg, int H, int W);
// test hook: nonzero when a model is created gives h and g gradient buffers that mirror their
// activations (m2f_point_acts, the layout before issue 14) instead of m2f_point_grad_acts;
// tests check that both give bit-identical gradients
extern int model_mirror_head_grads;
// the batch to plan for a TTT batch of B: B on the CPU; on the GPU the largest micro-batch
// M <= B whose buffers fit in 85% of the free device memory (the step then runs in chunks),
// after reserve_bytes for other buffers allocated later (e.g. a prediction model of another
// size: model_activation_bytes(cfg, 1, H', W')). main_trained: h runs on the micro-batch too
// (joint training, Tent, self-training); 0: h only predicts, one frame (model_create_planned
// with main_batch 1)
int model_auto_micro_batch(const ModelConfig* cfg, int B, int H, int W, size_t reserve_bytes, int main_trained);
// the config in a model checkpoint's header, with every field, the parameter counts and the
// file's size checked (model_load checks the same before it allocates anything)
ModelConfig model_read_config(const char* path);
// one TTT step on f and g: frames (B, H, W, 3) in [0, 1] on the host, B independent masks;
// returns the masked MSE; a non-finite loss leaves the weights untouched. B may exceed the
// planned max_batch: the batch then runs in micro-batches of max_batch whose gradients
// accumulate, the same step up to float rounding (same masks, same loss normalisation).
float model_ttt_step(Model* m, const float* frames, int B, const OptConfig* opt, Rng* rng);
// MAE loss only (no update), with the given rng for the masks
float model_mae_loss(Model* m, const float* frames, int B, Rng* rng);
// h(f(x)) on an unmasked frame (H, W, 3) host -> class ids host, (H, W) or the size set by
// model_set_predict_size (class scores resized bilinearly to it before the argmax)
void model_predict(Model* m, const float* frame, unsigned char* pred);
void model_set_predict_size(Model* m, int H, int W);
// optimizer state (AdamW moments and step) with n_extra caller ints (<= CKPT_HEADER_INTS - 16 = 240)
// for resuming
void model_save_optimizer(const Model* m, const char* path, const int* extra, int n_extra);
void model_load_optimizer(Model* m, const char* path, int* extra, int n_extra);
// Training resume state in one file (model, AdamW moments and step, n_extra <= 63 caller ints:
// ./train's step and RNG), written by one rename, so a kill at any moment leaves the previous
// or the new state complete. model_load_resume dies on anything else (an older optimizer file
// of model_save_optimizer included) with one line.
void model_save_resume(const Model* m, const char* path, const int* extra, int n_extra);
Model* model_load_resume(const char* path, int max_batch, int H, int W, int* extra, int n_extra);
ModelConfig model_read_resume_config(const char* path, int n_extra);   // its config, everything checked
void model_copy_params(Model* dst, const Model* src);   // same config, any frame size
void model_load_f_h(Model* m, const char* path);       // f and h from a checkpoint; g kept
// one joint training step on images (B, H, W, 3) and labels (B, H, W) (host): set loss of
// h(f(x)) plus the MAE loss of g(f(x~)), global-norm clipping (grad_clip > 0), AdamW on f, h, g.
// B may exceed the planned max_B: the batch then runs in micro-batches that act as
// data-parallel replicas (see train_chunks in mae.c), gradients accumulated.
void model_train_step(Model* m, const float* images, const unsigned char* labels, int B,
                      const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main, float* loss_mae);
// confusion matrix (K x K, rows = label) of a prediction; 255 labels are skipped
void confusion_update(int64_t* conf, const unsigned char* pred, const unsigned char* label, size_t n, int K);
// IoU of one class from its pixel counts: inter / uni (intersection and union of the class in
// prediction and label), NAN when uni = 0 (the class in neither)
double class_iou(int64_t inter, int64_t uni);
// per-class IoU (class_iou of each of K classes, written to iou unless NULL) and their mean over
// the classes that are not NAN (the mIoU; NAN when all are), from per-class counts ...
double mean_iou_counts(const int64_t* inter, const int64_t* uni, int K, double* iou);
// ... or from a confusion matrix (inter = TP, uni = TP + FP + FN)
double mean_iou(const int64_t* conf, int K, double* iou);

// checksums of parameter groups, for tests and logs: 0 = f, 1 = h, 2 = g
uint64_t model_param_hash(const Model* m, int part);
size_t model_num_params(const Model* m, int part);
// host copy of every trainable parameter [f | h | g] and of the matching gradient buffer
float* model_params_host(const Model* m);
float* model_grads_host(const Model* m);
// forward + backward of the MAE loss without an update (gradient checks); masks from rng
float model_mae_forward_backward(Model* m, const float* frames, int B, Rng* rng);
// device pointer to the trainable parameters [f | h | g] (gradient checks perturb them)
float* model_params_device(Model* m);
// hold g's attention masks fixed at those of the last MAE forward of batch B (on = 1), or not
void model_freeze_mae_masks(Model* m, int B, int on);

// ---- joint training: gradient-check hooks for model_train_step ----
// the joint loss and its gradients in the grad buffer (zeroed here), no update; returns
// loss_main + loss_mae. model_train_loss: the same forward only (finite differences). The rng
// is used as model_train_step uses it (set-loss points, then the MAE masks).
float model_train_forward_backward(Model* m, const float* images, const unsigned char* labels,
                                   int B, Rng* rng, float* loss_main, float* loss_mae);
float model_train_loss(Model* m, const float* images, const unsigned char* labels, int B, Rng* rng);
// set-loss settings (default set_loss_config_default(); a mask map with no more pixels than
// num_points is always supervised on every pixel)
void model_set_loss_config(Model* m, const SetLossConfig* c);
float model_last_grad_norm(const Model* m);   // global L2 norm before clipping, last train step
// hold h's attention masks fixed at those of the last main-task forward of batch B, or not
void model_freeze_main_masks(Model* m, int B, int on);
int model_adam_step(const Model* m);          // AdamW steps taken (bias correction t)

// op: build the 4-channel network input and the MAE target.
//   rgb (B, H, W, 3) in [0, 1]; patch_mask (B, Hp/ps, Wp/ps) bytes, 1 = masked (NULL: none)
//   inp4 (B, Hp, Wp, 4): ImageNet-normalised RGB, zero where masked or beyond H x W (padding);
//        channel 3 is the released code's indicator: 1 on visible pixels, 0 on masked pixels
//        and on the padding; with patch_mask NULL (the main task) it is 1 everywhere, padding
//        included (maskformer_ttt_model.py concatenates torch.ones of the padded size)
//   target, target_mask (B, 48, Hp/4, Wp/4) in the layout of g's mask logits: query
//        q = c*16 + py*4 + px holds normalised pixel (c, 4y+py, 4x+px); target_mask = 1 on the
//        pixels the loss averages over: every pixel inside H x W when all_pixels (the released
//        code's MSE), else the masked pixels inside H x W. Either may be NULL.
void mae_prepare_input(float* inp4, float* target, float* target_mask, const float* rgb,
                       const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                       int all_pixels);

// ----------------------------------------------------------------------------
// OTHER TEST-TIME TECHNIQUES (Table 1 of the paper; mae.c, last section): Main Task Only,
// LN Adapt, Tent, Self-Train, class balance, temporal smoothing, majority vote.
// Appendix A of the paper describes them; the released code (renwang435/video-ttt-release)
// has none of them in working form: criterion.py's TentCriterion is never called (and its
// "bqc,bqhw->bc" sums the class maps over all pixels, an image-level entropy, with the sign
// of -entropy), --tent_setting, --cbt (class-balance threshold) and --ttt_topl ("top fraction
// of confident pixels") are parsed in register_in_train_loop_kitti.py and never read. What
// follows is our reading of the paper, every choice written down here and in the README.
//
// The semantic distribution of h(f(x)). For one image, with the LAST prediction's logits:
//   seg[p, k] = sum_q softmax(class_logits[q])[k] * sigmoid(mask_logits[q, p]),  k < K
// (Mask2Former's semantic inference, "sem_seg"; p a pixel of the 1/4-resolution map).
//
// Tent (A.3): loss = mean over the images and over the pixels p of the 1/4 map that cover the
//   frame (rows y < ceil(H/4), columns x < ceil(W/4); padding excluded) of the entropy
//   H_p = -sum_k P[p, k] log P[p, k], P[p, .] = softmax_k(seg[p, .]) (the softmax over the
//   class scores, as TentCriterion takes it, per pixel as the paper says). Gradients flow
//   through h and f; AdamW updates only the affine weights and biases of every LayerNorm and
//   GroupNorm of f and h (the norms mark_exempt_swin / mark_exempt_m2f list, without the
//   embeddings and relative-position tables). Unmasked frames, the recipe's drop-path.
// Self-Train (A.1 with the paper's two improvements): pseudo-labels from the current model on
//   the unmasked frame: id = argmax_k seg (at the frame's size, as the prediction), kept where
//   its confidence max_k seg / sum_k seg > threshold (else 255, ignored); then the set loss of
//   h(f(x~)) against them, x~ the frame with `mask_ratio` of its 16 x 16 patches masked as in
//   TTT-MAE (4th channel 0 on masked pixels); AdamW on f and h (the recipe's groups and clip).
// LN Adapt (A.2, Schneider et al.'s BN adaptation carried over to LayerNorm): see
//   layernorm_adapt_forward below. Only the prediction's forward pass changes; no parameter.
// Class balance (Volpi et al.): count_classes of the adapted model's prediction and of the
//   initial model's on the same frame; a difference larger than the threshold resets the
//   weights to the initial ones (stream.c).
// Temporal smoothing and majority vote (Section 5.1): Predictor below.

// ops (CPU reference and dispatcher in mae.c, CUDA twin in ttt_kernels.cu)

// semantic_scores: the class scores of semantic inference before the argmax, one image:
// scores (Ho*Wo, K) = seg resized bilinearly x4, cropped to H x W and resized to Ho x Wo
// exactly as m2f_semantic_inference does it (same float operations in the same order, so
// class_argmax(scores) gives its ids bit for bit). work: m2f_semantic_work_size floats.
void semantic_scores(float* scores, const float* class_logits, const float* mask_logits,
                     int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work);
// ids[i] = first k of the largest scores[i, k], scores (N, K) >= 0. With min_conf > 0 a row
// whose confidence max_k scores / sum_k scores (float, k ascending) is not above min_conf
// gets 255 (ignore); min_conf <= 0 never does.
void class_argmax(unsigned char* ids, const float* scores, int N, int K, float min_conf);
// out (B, H, W, C) = inp mirrored left-right: out[b, y, x, c] = inp[b, y, W-1-x, c]; out != inp
void flip_width(float* out, const float* inp, int B, int H, int W, int C);
// per-pixel majority vote of V label maps votes (V, N): ids[i] = the id most of votes[., i]
// hold; on a tie, the tied id that appears first in view order (view 0 first)
void majority_vote(unsigned char* ids, const unsigned char* votes, int V, int N);
// LN Adapt's LayerNorm. Per row i (a token: a pixel of a Swin stage, a query of the decoder,
// a token of the deformable encoder), x = inp[i, :]:
//   mu = mean_c x, var = mean_c (x - mu)^2                 (the row's own statistics, as LN)
//   if state[2]: hist_mean[r, i] = mu, hist_var[r, i] = var   (r = state[0]: this frame's entry)
//   S_mu = sum_{j < n} hist_mean[j, i], S_var likewise       (n = state[1] frames in the ring)
//   mu' = (prior mu + S_mu) / (prior + n), var' = (prior var + S_var) / (prior + n)
//   out = (x - mu') / sqrt(var' + eps) * weight + bias; mean[i] = mu', rstd[i] = 1/sqrt(var' + eps)
// i.e. the per-token statistics are replaced by their mixture with the average statistics of
// the same token over the last n revealed frames: the current frame's own statistics carry the
// weight `prior` (Schneider et al.'s N: the source statistic, here what the unadapted network
// computes) and each frame of the window weight 1. hist_* (cap, N) with cap the ring size;
// state (3 ints, on the device): r, n (1 <= n <= cap, r < cap), record. No backward.
void layernorm_adapt_forward(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var,
                             const int* state, const float* inp, const float* weight, const float* bias,
                             int N, int C, int cap, float prior);
// Tent's loss on B images: class_logits (B, Q, K+1), mask_logits (B, Q, H4, W4) (the last
// prediction), the pixels y < Hv, x < Wv of each map:
//   loss = 1 / (B Hv Wv) sum_b sum_p H_p,  H_p = -sum_k P log P,  P = softmax_k(seg[p, .])
// written to *loss (one float on the device). work: semantic_entropy_work_size floats.
// Backward (recomputes what it needs; accumulates): with g[p, k] = dloss / (B Hv Wv) *
// -P[p,k] (log P[p,k] + H_p) on valid pixels, a = softmax(class_logits), s = sigmoid(mask_logits):
//   dmask[q, p] += s (1 - s) sum_k g[p, k] a[q, k];   da[q, k] = sum_p g[p, k] s[q, p] (k < K,
//   da[q, K] = 0);  dclass[q, j] += a[q, j] (da[q, j] - sum_k a[q, k] da[q, k]).
size_t semantic_entropy_work_size(int B, int Q, int K, int H4, int W4);
void semantic_entropy_forward(float* loss, const float* class_logits, const float* mask_logits,
                              int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);
void semantic_entropy_backward(float* dclass_logits, float* dmask_logits, float dloss,
                               const float* class_logits, const float* mask_logits,
                               int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);

// While set, every layernorm_forward call goes to the hook instead of the op (ttt.c's
// dispatcher): the Predictor installs it around its forward pass for LN Adapt.
typedef void (*LayerNormHook)(void* ctx, float* out, float* mean, float* rstd, const float* inp,
                              const float* weight, const float* bias, int N, int C);
extern LayerNormHook layernorm_forward_hook;
extern void* layernorm_forward_hook_ctx;

// ---- Tent ----
// one step: loss and gradients on B frames (H, W, 3) host (B > max_batch runs in chunks of
// max_batch, each weighted by its share of the images), the recipe's clip over the norm
// gradients, AdamW on the norm parameters of f and h only (lr x backbone_lr_scale on f; no
// decay on them with the recipe's wd_exempt). Returns the loss; a non-finite loss or
// gradient norm leaves the weights untouched. rng: drop-path only.
float model_tent_step(Model* m, const float* frames, int B, const OptConfig* opt, Rng* rng);
float model_tent_loss(Model* m, const float* frames, int B, Rng* rng);
// loss and gradients of every parameter of f and h in the grad buffer (zeroed here; g's stay 0)
float model_tent_forward_backward(Model* m, const float* frames, int B, Rng* rng);
// the parameters Tent trains: (n_f + n_h + n_g) bytes, 1 on every norm weight / bias of f and h
unsigned char* model_norm_param_mask(const Model* m);   // malloc'd host array

// ---- Self-Train ----
// pseudo-labels of B frames (host) into labels (B, H, W) host: the current model's prediction
// on the unmasked frame, 255 where its confidence is not above threshold
void model_pseudo_labels(Model* m, const float* frames, int B, float threshold, unsigned char* labels);
// the set loss of h(f(x~)) against labels (B, H, W), x~ with mask_ratio of the patches masked
// (masks, then drop-path, then the set loss's points from rng, in that order). The
// forward_backward variant leaves the gradients of f and h in the grad buffer (zeroed here).
float model_self_train_loss(Model* m, const float* frames, const unsigned char* labels, int B,
                            float mask_ratio, Rng* rng);
float model_self_train_forward_backward(Model* m, const float* frames, const unsigned char* labels,
                                        int B, float mask_ratio, Rng* rng);
// one step: pseudo-labels (threshold), the loss above, the recipe's clip over f and h, AdamW on
// f and h. *kept (may be NULL) gets the fraction of pixels that kept a pseudo-label. B may
// exceed max_batch (chunks weighted by their share of the images; each chunk's set loss
// normalises over its own masks). Non-finite: weights untouched, NaN returned. No confident
// pixel in the whole batch: no step (a set loss without targets would push every query to
// no-object), 0 returned.
float model_self_train_step(Model* m, const float* frames, int B, const OptConfig* opt,
                            float threshold, float mask_ratio, Rng* rng, float* kept);

// ---- Main Task Only (./train --no-mae) ----
// one step of the main task alone: set loss of h(f(x)) on unmasked images (4th channel all
// ones), clip over f and h, AdamW on f and h; g is not touched. B may exceed max_batch.
void model_train_step_main_only(Model* m, const float* images, const unsigned char* labels, int B,
                                const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main);

// ---- class balance ----
int count_classes(const unsigned char* ids, size_t n);   // distinct ids other than 255
// Volpi et al.'s reset rule: 1 when |n_adapted - n_initial| > threshold
int class_balance_reset(int n_adapted, int n_initial, int threshold);

// ---- Predictor: the prediction with LN Adapt, temporal smoothing and majority vote ----
// For each frame: view 0 is the frame itself; views 1..tta-1 are drawn from the training
// augmentation's size-preserving part (ColorAugSSD when tta_color, then a horizontal flip with
// probability 1/2, in the order and with the draws of aug_draw; the resize and crop are left
// out so that every view has the frame's size), from an Rng seeded by the frame's seed.
// Each view's class scores (semantic_scores at the predict size) are flipped back when its
// view was flipped. Smoothing: view 0's scores are kept for the last `smooth` frames; a view's
// prediction is the argmax of the mean of its scores and the kept scores of the previous
// smooth - 1 frames. The frame's ids: the majority vote of the views' predictions (tta > 1),
// else view 0's. plain ids: the argmax of view 0's own scores (no smoothing, no vote).
// smooth = tta = 1 gives model_predict's ids exactly (same float operations).
// ln_adapt: every forward pass runs its LayerNorms as layernorm_adapt_forward with a ring of
// ln_window frames; view 0 records the frame's statistics, the other views only read them.
typedef struct { int smooth, tta, tta_color, ln_adapt, ln_window; float ln_prior; } PredictConfig;
typedef struct Predictor Predictor;
// for m's frame size and predict size (model_set_predict_size first)
Predictor* predictor_create(Model* m, const PredictConfig* c);
void predictor_free(Predictor* p);
void predictor_reset(Predictor* p);   // a new video: no kept scores, no LN statistics
// frame (H, W, 3) host at m's frame size -> ids (predict size) host; plain_ids may be NULL.
// same_frame = 1 predicts the last frame again (after a reset): it replaces that frame's
// kept scores and LN statistics instead of adding a frame.
void predictor_run(Predictor* p, const float* frame, uint64_t seed, int same_frame,
                   unsigned char* ids, unsigned char* plain_ids);

// ============================================================================
// end of MAE
// ============================================================================


// ----------------------------------------------------------------------------
// small utilities

double time_now_seconds(void);  // monotonic wall clock
// command-line values: the whole string must parse and be >= lo, else one "error:" line
// naming the option, exit 1
int parse_int_arg(const char* opt, const char* s, int lo);
float parse_float_arg(const char* opt, const char* s, float lo);
int is_finite_array(const float* x, size_t n);  // host memory
// drawing on an RGB image (H, W, 3) in [0, 1], host memory (overlays and plots): one pixel,
// and text in a 3x5 pixel font (digits, capitals, . - = / ( ) and space; scale x scale per dot)
void image_put_pixel(float* img, int H, int W, int x, int y, const float* rgb);
void image_draw_text(float* img, int H, int W, int x, int y, const char* s, int scale, const float* rgb);

// ============================================================================
// DATA (data.c): class names, label formats, the real dataset layouts (KITTI-STEP,
// Cityscapes, plain folders), detectron2's resizes and training augmentations
// ============================================================================

// The 19 Cityscapes train ids (KITTI-STEP's semantic classes are the same 19)
#define CITYSCAPES_NUM_CLASSES 19
extern const char* const cityscapes_class_names[CITYSCAPES_NUM_CLASSES];  // road ... bicycle
// the published labelId -> trainId table (cityscapesScripts labels.py): ids 0..33, trainId
// 0..18 or 255 (ignored); license plate (id -1, trainId -1) is never drawn in the PNGs
#define CITYSCAPES_NUM_LABEL_IDS 34
extern const unsigned char cityscapes_label_to_train[CITYSCAPES_NUM_LABEL_IDS];
// trainId of a labelId: the table for 0..33, 255 for 255 and -1 (license plate), -1 for
// any other id (not in the table)
int cityscapes_train_id(int label_id);

// How a label PNG holds its class ids. Every format decodes to 8-bit class ids, 255 = ignore.
//   LABEL_IDS                  8-bit single channel, the ids themselves (this project's own)
//   LABEL_KITTI_PANOPTIC       KITTI-STEP panoptic_maps: RGB, semantic train id in R,
//                              instance id in G (B is ignored)
//   LABEL_CITYSCAPES_TRAINIDS  gtFine *_labelTrainIds.png: 8-bit train ids
//   LABEL_CITYSCAPES_LABELIDS  gtFine *_labelIds.png: 8-bit label ids, mapped by the table
typedef enum { LABEL_IDS, LABEL_KITTI_PANOPTIC, LABEL_CITYSCAPES_TRAINIDS, LABEL_CITYSCAPES_LABELIDS } LabelFormat;
const char* label_format_name(LabelFormat fmt);   // "ids", "kitti-step panoptic", ...

// Header-only check (cheap; for listing time, before any output is written): the file is a
// readable 8-bit image with the format's channel count and, when expect_H > 0, of size
// expect_H x expect_W. Dies with one line naming the file. *H, *W (may be NULL) get the size.
void label_check_header(const char* path, LabelFormat fmt, int expect_H, int expect_W, int* H, int* W);
// Decode a label into malloc'd class ids (H, W), 255 = ignore: the header checks above, then
// every id must be < num_classes or 255 (for labelIds: in the table, then the mapped id).
// Dies with one line naming the file (and the id and pixel (x, y) when an id is bad).
unsigned char* label_load_format(const char* path, LabelFormat fmt, int num_classes,
                                 int expect_H, int expect_W, int* H, int* W);
// the same, returning NULL with the line in err instead of dying (safe in parallel loops)
unsigned char* label_try_load_format(const char* path, LabelFormat fmt, int num_classes,
                                     int expect_H, int expect_W, int* H, int* W, char* err, size_t errlen);

// Where the labels of a folder of frames live, found from the folder's path alone
// (trailing slashes are fine):
//   KITTI-STEP  ROOT/images/SPLIT/SEQ     -> ROOT/panoptic_maps/SPLIT/SEQ   LABEL_KITTI_PANOPTIC
//   Cityscapes  ROOT/leftImg8bit/SPLIT/CITY -> ROOT/gtFine/SPLIT/CITY       LABEL_CITYSCAPES_TRAINIDS
//               when that folder has a *_gtFine_labelTrainIds.png, else  LABEL_CITYSCAPES_LABELIDS
//   otherwise   DIR                        -> DIR_labels                     LABEL_IDS
// Returns 1 and writes the label folder (into label_dir, n bytes) and *fmt when that folder
// exists; returns 0 (nothing written) when it does not.
int find_label_layout(const char* frame_dir, char* label_dir, size_t n, LabelFormat* fmt);
// The label file of a frame file name (no folder) in label_dir, for a format:
//   LABEL_IDS                  STEM.png        (STEM = the name without its extension)
//   LABEL_KITTI_PANOPTIC       the same name   (000042.png -> 000042.png)
//   LABEL_CITYSCAPES_*         X_leftImg8bit.png -> X_gtFine_labelTrainIds.png / X_gtFine_labelIds.png
void label_path_for_frame(char* out, size_t n, const char* label_dir, const char* frame_name, LabelFormat fmt);

// A labeled image set, listed up front with every header checked (the pixels stay on disk).
// labeled_set_list(root, split, K, check_ids) reads, by what root contains:
//   Cityscapes  root/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png with root/gtFine/SPLIT/CITY/...
//   KITTI-STEP  root/images/SPLIT/SEQ/*.png with root/panoptic_maps/SPLIT/SEQ/*.png
//   plain       root/images/NAME.(png|jpg|jpeg|bmp) with root/labels/NAME.png (LABEL_IDS)
// sorted by path. Dies with one line on an unknown layout, an empty set, an image that does
// not decode its header, a missing label, or a label failing label_check_header (size = its
// image's); check_ids = 1 also decodes every label (OpenMP) and checks its ids (< K or 255).
typedef struct {
    int n;
    char** images;        // (n) image paths
    char** labels;        // (n) label paths
    LabelFormat* fmt;     // (n) format of each label
    int *H, *W;           // (n) size of each image
    const char* layout;   // "cityscapes", "kitti-step" or "plain"
} LabeledSet;
LabeledSet labeled_set_list(const char* root, const char* split, int num_classes, int check_ids);
void labeled_set_free(LabeledSet* s);
// 8-bit RGB (H, W, 3) of an image file, malloc'd; NULL with one line in err on failure
unsigned char* image_try_load_u8(const char* path, int* H, int* W, char* err, size_t errlen);

// ---- detectron2's resizes ----
// ResizeShortestEdge.get_output_shape: scale the short side to short_edge; if the long side
// then exceeds max_long, scale it down to max_long; each side rounded as int(x + 0.5).
void resize_shortest_edge_size(int H, int W, int short_edge, int max_long, int* Ho, int* Wo);
// PIL Image.resize(BILINEAR) of an 8-bit image (Pillow <= 12, e.g. 9.5 of the paper's code;
// Pillow 13 runs the vertical pass first when the height shrinks and the width grows), what
// detectron2's ResizeTransform does to uint8 images: separable triangle filter whose support grows by in/out when downsampling
// (antialiasing), sample centres (i + 0.5) * in/out, PIL's 22-bit fixed-point weights and
// rounding, a horizontal pass rounded to 8 bits, then a vertical pass (an axis of unchanged
// size is skipped). Computes only the window rows y0..y0+h, columns x0..x0+w of the
// Ho x Wo result: in (H, W, C) -> out (h, w, C); the whole image is y0 = x0 = 0, h = Ho, w = Wo.
void resize_bilinear_u8(unsigned char* out, const unsigned char* in, int H, int W, int C,
                        int Ho, int Wo, int y0, int x0, int h, int w);
// the same on float RGB (H, W, 3) in [0, 1]: values are rounded to 8-bit levels first and the
// result is level / 255, as when detectron2 resizes the uint8 image
void image_resize_bilinear(float* out, const float* in, int H, int W, int Ho, int Wo);
// Labels: detectron2 reads a semantic label as float64, so ResizeTransform resizes it with
// F.interpolate(mode="nearest"): src = min(floor(dst * (in / out)), in - 1) (the index in
// float, as PyTorch's CPU kernel). Window as above: in (H, W) -> out (h, w).
void label_resize_nearest(unsigned char* out, const unsigned char* in, int H, int W,
                          int Ho, int Wo, int y0, int x0, int h, int w);

// ---- ColorAugSSDTransform (detectron2 projects/PointRend, used by Mask2Former) ----
// On 8-bit RGB: brightness (p 1/2: + U(-32, 32)); then, in one of two orders chosen with
// p 1/2, contrast (p 1/2: x U(0.5, 1.5)) and saturation (p 1/2: S x U(0.5, 1.5) in OpenCV's
// 8-bit HSV) and hue (p 1/2: H + randint(-18, 18) mod 180); every step computes in float32,
// clips to [0, 255] and truncates to 8 bits, as the original. The draws come from our Rng
// in the original's order (one uniform per coin and per value).
typedef struct {
    int brightness_on; float brightness;
    int contrast_first;   // 1: contrast, saturation, hue; 0: saturation, hue, contrast
    int contrast_on; float contrast;
    int saturation_on; float saturation;
    int hue_on; int hue;
} ColorAugSSD;
ColorAugSSD color_aug_ssd_draw(Rng* rng);
void color_aug_ssd_apply(unsigned char* rgb, size_t npix, const ColorAugSSD* p);
// OpenCV's cvtColor for 8-bit pixels, H in [0, 180): RGB2HSV_b and HSV2RGB_b (scalar paths)
void rgb_to_hsv_u8(const unsigned char rgb[3], unsigned char hsv[3]);
void hsv_to_rgb_u8(const unsigned char hsv[3], unsigned char rgb[3]);

// ---- the training sample of Mask2Former's semantic dataset mapper ----
// resize (random short side from a list with a cap on the long side, or a random scale),
// random crop (detectron2 "absolute": min(crop, size) per axis), ColorAugSSD, horizontal
// flip. The crop lands at the top-left of a crop_h x crop_w buffer; where the resized image
// is smaller, the rest is the ImageNet mean colour (0 after normalisation, like detectron2's
// padding of normalised images) and label 255.
#define AUG_MAX_SHORT 32
typedef struct {
    int crop_h, crop_w;
    int n_short, short_sizes[AUG_MAX_SHORT];   // n_short > 0: short side from this list
    int max_long;                              // cap on the long side (with n_short > 0)
    float min_scale, max_scale;                // n_short == 0: size = int(side * U(lo, hi) + 0.5)
    int flip, color_aug;                       // 1 = on
} AugConfig;
typedef struct {
    int Ho, Wo;            // resized size
    int y0, x0, ch, cw;    // crop window in the resized image
    int flip;
    int color_on;
    ColorAugSSD color;
} AugDraw;
// the random draws of one sample of an H x W image, in order: size, crop y, crop x, colour, flip
AugDraw aug_draw(const AugConfig* c, int H, int W, Rng* rng);
// apply them: img (H, W, 3) 8-bit, lab (H, W) -> out_img (crop_h, crop_w, 3) in [0, 1],
// out_lab (crop_h, crop_w)
void aug_apply(const AugConfig* c, const AugDraw* d, const unsigned char* img, const unsigned char* lab,
               int H, int W, float* out_img, unsigned char* out_lab);

// ============================================================================
// end of DATA
// ============================================================================


// ============================================================================
// COCO (coco_eval.c, coco_data.c): run-length encoded masks, panoptic quality, mask AP,
// the panoptic format (JSON + PNG), instance and panoptic inference at the frame's size
// ============================================================================

// A binary mask of h x w as pycocotools' maskApi holds it: runs over the pixels in
// column-major order (x outer, y inner), alternating 0s and 1s, the first run counting 0s
// (it may be empty). cnts (m) is malloc'd; rle_free releases it.
typedef struct { int h, w, m; uint32_t* cnts; } Rle;
void rle_free(Rle* r);
// mask (h, w) row-major, nonzero = inside (rleEncode of the mask's Fortran-order view)
void rle_encode(Rle* r, const unsigned char* mask, int h, int w);
// the mask ids == id of an id map (h, w) row-major
void rle_encode_id(Rle* r, const uint32_t* ids, int h, int w, uint32_t id);
void rle_decode(const Rle* r, unsigned char* mask);   // -> (h, w) row-major 0/1
uint32_t rle_area(const Rle* r);                       // pixels inside
void rle_to_bbox(const Rle* r, double bb[4]);          // [x, y, width, height] (toBbox), 0s if empty
// COCO's compressed "counts" string (rleToString): malloc'd, NUL-terminated
char* rle_to_string(const Rle* r);
// the inverse (rleFrString) for a mask of h x w; -1 with a message in err when the string is
// malformed or its runs do not cover exactly h * w pixels
int rle_from_string(Rle* r, const char* s, int h, int w, char* err, size_t errlen);
// intersection / union (rleIou); crowd: intersection / area(dt); 0 when they do not meet;
// -1 when the sizes differ
double rle_iou(const Rle* dt, const Rle* gt, int crowd);

// ---- panoptic quality (PQ = SQ x RQ) ----
// Per image (panopticapi pq_compute_single_core): a ground-truth and a predicted segment of
// the same category match when IoU > 0.5, with the union leaving out the prediction's void
// pixels (id 0 in the ground truth); a match adds its IoU and a TP to the category, an
// unmatched ground-truth segment an FN, an unmatched prediction an FP unless more than half
// of it lies on void. crowd_mode PQ_CROWD_COCO (panopticapi, COCO's definition): crowd
// segments never match, are no FN, and the pixels of the (last listed) crowd segment of a
// category count as void for predictions of that category. PQ_CROWD_RELEASED: the released
// TTT code's copy, which ignores "iscrowd" (crowd segments are ordinary) and also requires
// IoU <= 1. Then per category pq = sum IoU / (TP + FP/2 + FN/2), sq = sum IoU / TP (0 if no
// TP), rq = TP / (TP + FP/2 + FN/2), averaged over the categories with TP + FP + FN > 0.
#define PQ_CROWD_COCO 0
#define PQ_CROWD_RELEASED 1
// a segment: id > 0 in its id map; category = index into the category table, or -1 for a
// category outside it (COCO Videos' 255: never matched, counted nowhere, not void); area:
// for the ground truth the JSON's "area" (it enters the union), predictions' are counted here
typedef struct { uint32_t id; int category; int iscrowd; int64_t area; } PanSeg;
typedef struct { double iou; int64_t tp, fp, fn; } PQCat;   // per category, accumulated
// accumulate one image into stat (indexed by category); gt_map, pred_map (npix) segment ids.
// Returns 0, or -1 with a message in err (nothing added) when an id in a map is not in its
// list, a listed id is not in its map, or an id is 0 or listed twice.
int pq_image(PQCat* stat, const uint32_t* gt_map, const PanSeg* gt, int n_gt,
             const uint32_t* pred_map, const PanSeg* pred, int n_pred, size_t npix,
             int crowd_mode, char* err, size_t errlen);
typedef struct { double pq, sq, rq; int n; } PQResult;   // n: categories averaged
// which: -1 all categories, 1 things, 0 stuff (isthing (n_categories) 0/1); per_category_pq
// (n_categories, may be NULL) gets each category's PQ, NAN where it is absent. With no
// category present the result is 0 (the released code's guard; panopticapi divides by 0).
PQResult pq_average(const PQCat* stat, const unsigned char* isthing, int n_categories, int which,
                    double* per_category_pq);

// ---- mask AP (pycocotools COCOeval, iouType "segm") ----
// For every category and area range (all, small < 32^2, medium, large > 96^2 pixels) and each
// image: detections by score (ties in input order), at most max_dets (100) per image and
// category; at each IoU threshold 0.50:0.05:0.95 each detection in turn takes the best
// remaining ground truth with IoU >= the threshold (crowd ground truth: IoU = intersection /
// detection area, may be taken many times; ground truth that is crowd or outside the area
// range is "ignored" and only taken when nothing else is left); detections matched to ignored
// ground truth, and unmatched ones outside the area range, are ignored. Over all images:
// precision at the 101 recall thresholds 0:0.01:1 (interpolated: the max precision at any
// higher recall). AP = the mean over thresholds, recall points and the categories that have
// unignored ground truth.
typedef struct {
    int image, category_id;   // ids as in the JSON
    int iscrowd;              // ground truth only
    double score;             // detections only
    double area;              // ground truth: the JSON's "area" (the mask's when absent); detections:
                              // as pycocotools' loadRes: bbox w x h when the result has a "bbox"
                              // (detectron2's always do), else the mask's area
    Rle rle;
} CocoMaskObject;
#define COCO_AP_STATS 6   // AP, AP50, AP75, AP small, AP medium, AP large; -1 where undefined
// the images and categories evaluated (COCOeval's imgIds, catIds: the ground truth's);
// objects of other images or categories are left out. ap_per_category (n_categories, may be
// NULL): AP of each category over all areas, NAN where undefined.
void coco_mask_ap(double stats[COCO_AP_STATS], double* ap_per_category,
                  const CocoMaskObject* gt, int n_gt, const CocoMaskObject* dt, int n_dt,
                  const int* category_ids, int n_categories, const int* image_ids, int n_images,
                  int max_dets);

// ---- instance and panoptic inference at the frame's size (mask2former.c, host memory) ----
// Both post-process the last prediction of one image as Mask2Former does: the mask logits
// (Q, H4, W4) are resized bilinearly x4 (align_corners=False), cropped to the top-left H x W
// (the frame the model saw) and resized bilinearly to Ho x Wo (sem_seg_postprocess: the
// frame's original size; Ho = H, Wo = W skips it) before the sigmoid. class_logits (Q, K+1).
// Panoptic: m2f_panoptic_inference (above) at Ho x Wo; seg_ids (Ho, Wo).
int m2f_panoptic_inference_resized(int* seg_ids, PanopticSegment* segments, int max_segments,
                                   const float* class_logits, const float* mask_logits,
                                   int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo,
                                   const unsigned char* is_thing, float object_threshold,
                                   float overlap_threshold);
// Instance (Mask2Former instance_inference): p = softmax(class_logits[q])[k] over the Q*K
// (query, class) pairs, no-object dropped; the top_k largest (100 = TEST.DETECTIONS_PER_IMAGE;
// ties by lower q*K + k); with is_thing given (a panoptic model) the pairs of stuff classes are
// then dropped. Each detection: mask = resized logit > 0 (sigmoid > 0.5), score = p x the mean
// sigmoid over the mask (sum / (area + 1e-6)). Fills dets (top_k capacity) and returns their
// number; each dets[i].rle is malloc'd (rle_free).
typedef struct {
    int query, class_id;
    float class_prob, mask_score, score;
    int64_t area;
    Rle rle;          // the mask at Ho x Wo
} InstanceDet;
int m2f_instance_inference(InstanceDet* dets, int top_k, const float* class_logits,
                           const float* mask_logits, int Q, int K, int H4, int W4, int H, int W,
                           int Ho, int Wo, const unsigned char* is_thing);

// ---- COCO panoptic data (coco_data.c) ----
// Categories: index = the model's class (detectron2's contiguous id: the categories sorted by
// id), with the dataset id, thing/stuff, name and colour.
typedef struct {
    int n;
    int* id;                 // (n) dataset category ids, increasing
    unsigned char* isthing;  // (n) 1 thing, 0 stuff
    char** name;             // (n)
    unsigned char* color;    // (n, 3)
} CocoCategories;
#define COCO_PANOPTIC_NUM_CATEGORIES 133   // 80 things (ids 1..90) + 53 stuff (92..200)
#define COCO_IGNORE_CATEGORY 255           // COCO Videos' "ignored" segments (see PanSeg)
CocoCategories coco_categories_builtin(void);   // COCO's 133 (panopticapi panoptic_coco_categories.json)
CocoCategories coco_categories_things(const CocoCategories* all);   // the thing categories only (COCO: 80)
// n categories with ids 1..n, named "0".."n-1", distinct colours; isthing (n) or NULL = all things
CocoCategories coco_categories_numbered(int n, const unsigned char* isthing);
int coco_category_index(const CocoCategories* c, int id);   // index of a dataset id, -1 if absent
void coco_categories_free(CocoCategories* c);

// A COCO panoptic JSON (panoptic_{split}2017.json; COCO Videos' annotations/train/VID.json):
//   "annotations": [{"image_id", "file_name" (the PNG), "segments_info": [{"id", "category_id",
//                    "iscrowd" (optional, 0), "area" (optional)}, ...]}, ...]   required
//   "images": [{"id", "file_name", "height", "width"}, ...]   optional (every annotation's image)
//   "categories": [{"id", "name", "isthing", "color"}, ...]   optional: COCO's 133 when absent
//                                                             (the released code substitutes them)
// coco_panoptic_read dies with one line naming the file and the image / segment id on: invalid
// JSON, a missing or ill-typed field, a category id outside the table (except 255 = ignored:
// PanSeg.category -1), a segment id listed twice, an image with two annotations, an annotation
// whose image_id is not in "images". Images listed without an annotation are counted (the
// callers decide: a scored frame or a training image without one is an error).
typedef struct {
    long image_id;
    char* file_name;     // the image's file ("images"), else the annotation's PNG name
    char* png_name;      // the annotation's "file_name": the PNG in the panoptic folder
    int H, W;            // from "images", 0 when not given
    int n;               // segments
    PanSeg* seg;         // category: index in the table (-1: 255); area: the JSON's, -1 if absent
} CocoPanopticAnn;
typedef struct {
    char* json_path;
    char* png_dir;
    CocoCategories cats;
    int categories_from_file;      // 0: the built-in COCO table
    int n;
    CocoPanopticAnn* ann;
    int n_images_without_ann;
    char first_image_without_ann[512];   // "image id N (file)" of the first one
} CocoPanoptic;
CocoPanoptic coco_panoptic_read(const char* json_path, const char* png_dir);
void coco_panoptic_free(CocoPanoptic* p);
// the annotation of an image file (by the images' file_name, else the PNG name's stem); NULL if none
const CocoPanopticAnn* coco_panoptic_find(const CocoPanoptic* p, const char* image_name);
// the segment ids (H, W) of an annotation from PNG_DIR/png_name, malloc'd: 8-bit RGB, the size
// of "images" and of expect_H x expect_W (when > 0), every id in the PNG listed and every listed
// id in the PNG. NULL with one line in err (naming the PNG, the JSON and the id) otherwise.
uint32_t* coco_panoptic_try_load(const CocoPanoptic* p, const CocoPanopticAnn* a, int expect_H, int expect_W,
                                 int* H, int* W, char* err, size_t errlen);
uint32_t* coco_panoptic_load(const CocoPanoptic* p, const CocoPanopticAnn* a, int expect_H, int expect_W,
                             int* H, int* W);   // the same, dying on error
// training targets of an id map (npix) as Mask2Former's panoptic mapper makes them: out (npix)
// = index s of the kept segments (not crowd, category in the table), classes[s] its class; 255
// for void, crowd and ignored pixels. classes: room for 254. Returns the count, or -1 with a
// message when an image has more than 254 kept segments.
int coco_panoptic_index_map(unsigned char* out, int* classes, const uint32_t* ids, size_t npix,
                            const CocoPanopticAnn* a, char* err, size_t errlen);
// Where the panoptic annotation of a folder of images lives, found from its path:
//   COCO Videos  ROOT/raw_images/VID -> ROOT/annotations/train/VID.json, ROOT/panoptic_images/VID
//                (as the released runner_ttt_mae_panoptic.py / register_*_coco_videos_panoptic.py)
//   COCO 2017    ROOT/SPLIT2017 -> ROOT/annotations/panoptic_SPLIT2017.json, with the PNGs in
//                ROOT/panoptic_SPLIT2017 (detectron2) or ROOT/annotations/panoptic_SPLIT2017
// Returns the layout (and writes both paths) when the files exist, else 0.
#define PANOPTIC_LAYOUT_COCO 1
#define PANOPTIC_LAYOUT_COCO_VIDEOS 2
int find_panoptic_layout(const char* image_dir, char* json_path, size_t n1, char* png_dir, size_t n2);
// A training set in the COCO panoptic layout: ROOT/SPLIT2017 (or ROOT/SPLIT) with
// ROOT/annotations/panoptic_SPLIT2017.json and its PNGs (find_panoptic_layout). Every
// annotation's image must exist with the JSON's size; an image listed without an annotation is
// an error; check_pngs = 1 decodes every PNG (OpenMP) with coco_panoptic_try_load's checks.
typedef struct {
    CocoPanoptic gt;     // annotation i belongs to images[i]
    int n;
    char** images;       // (n) image paths
    int *H, *W;          // (n)
    char* image_dir;
} PanopticSet;
PanopticSet panoptic_set_list(const char* root, const char* split, int check_pngs);
void panoptic_set_free(PanopticSet* s);
// ids (H, W) as an RGB PNG (id2rgb), written to path.tmp and renamed into place
void panoptic_png_save(const char* path, const uint32_t* ids, int H, int W);
// JSON output helpers: a quoted, escaped string; a file written to path.tmp and renamed into
// place on close (dies on any write error); the "categories" member of a COCO file
void json_write_string(FILE* fp, const char* s);
FILE* coco_json_open(const char* path);
void coco_json_close(FILE* fp, const char* path);
void coco_json_write_categories(FILE* fp, const CocoCategories* c);

// ---- the Y model's last prediction (mae.c) ----
// After model_predict(m, frame, ...): the last decoder prediction of that frame copied to the
// host, class_logits (Q, K+1) and mask_logits (Q, H4, W4) of the padded frame; H x W is the
// frame the model saw (within 4 H4 x 4 W4). Panoptic and instance inference run on these.
void model_prediction_sizes(const Model* m, int* Q, int* K, int* H4, int* W4, int* H, int* W);
void model_last_logits(const Model* m, float* class_logits, float* mask_logits);
// Joint training on panoptic targets (./train --task panoptic): as model_train_step, with
// seg_index (B, H, W) the kept segments' indexes (255 = void, crowd, ignored;
// coco_panoptic_index_map) and seg_classes (B, PANOPTIC_MAX_TRAIN_SEGMENTS) the class of
// each, seg_counts (B) how many; one target mask per segment (empty ones after a crop kept,
// as Mask2Former's panoptic mapper). model_train_loss_panoptic: the loss only.
#define PANOPTIC_MAX_TRAIN_SEGMENTS 254
void model_train_step_panoptic(Model* m, const float* images, const unsigned char* seg_index,
                               const int* seg_classes, const int* seg_counts, int B, const OptConfig* opt,
                               float grad_clip, Rng* rng, float* loss_main, float* loss_mae);
float model_train_loss_panoptic(Model* m, const float* images, const unsigned char* seg_index,
                                const int* seg_classes, const int* seg_counts, int B, Rng* rng);

// ---- ./stream --task panoptic | instance (coco_stream.c) ----
#define TASK_SEMANTIC 0
#define TASK_PANOPTIC 1
#define TASK_INSTANCE 2
int task_parse(const char* opt, const char* s);   // "semantic" | "panoptic" | "instance"; dies naming opt
const char* task_name(int task);
// What a task needs before the run. The ground truth: json_path + png_dir when given, else
// found from the layout of frame_dir (find_panoptic_layout), else none (outputs only). The
// model's K classes are the annotation's categories (K = their number), or, for --task
// instance, their things (an 80-class COCO instance model); without an annotation COCO's 133
// (K = 133), COCO's 80 things (K = 80), or K numbered classes. pq_rule: PQ_CROWD_COCO,
// PQ_CROWD_RELEASED, or -1 = the released rule for the COCO Videos layout, COCO's otherwise.
// instance_gt_all: 0 = the instance ground truth is the thing segments (COCO's definition);
// 1 = every segment not ignored (what the released code's COCO Videos loader takes).
// Panoptic inference thresholds 0.8 / 0.8 and 100 detections, as the released configs.
typedef struct {
    int task;
    CocoCategories cats;      // class k of the model = cats entry k
    int own_cats;             // cats allocated here (else it is gt.cats)
    CocoPanoptic gt;
    int has_gt, layout;       // layout: PANOPTIC_LAYOUT_* or 0
    int pq_rule, instance_gt_all;
    float object_threshold, overlap_threshold;
    int top_k;
} TaskSetup;
TaskSetup task_setup(int task, int K, const char* model_path, const char* frame_dir, const char* json_path,
                     const char* png_dir, int pq_rule, int instance_gt_all);
void task_setup_free(TaskSetup* s);
// the annotation index of each frame (names: file names), -1 where it has none; dies (before
// any output) when a scored frame has no annotation or its PNG fails a check
int* task_check_frames(const TaskSetup* s, char* const* names, const int* scored, int n, int H, int W);
// One run (one output folder): per frame, the inference on the logits (model_last_logits) at
// the frame's size H x W, its outputs (OUT/panoptic/STEM.png + an entry of OUT/panoptic.json;
// entries of OUT/instances.json; overlays OUT/STEM_panoptic.png / OUT/STEM_instances.png) and,
// when scored, its scores; text gets the frame's part of the stream's line. Hm x Wm: the
// frame the model saw; frame (H, W, 3) in [0, 1] for the overlay; ann: the frame's annotation
// (-1: none); the outputs' image_id is the annotation's, else (largest annotated id + 1 +
// frame_index) when there is ground truth, frame_index + 1 when there is none. task_run_end writes the JSON files and
// OUT/{panoptic,instance}_scores.json and prints the summary and a RESULT line.
typedef struct TaskRun TaskRun;
typedef struct { double video, pooled; int n_scored; } TaskResult;
TaskRun* task_run_begin(const TaskSetup* s, const char* out_dir, int H, int W);
void task_run_frame(TaskRun* r, const char* stem, int frame_index, int ann, int scored, const float* frame,
                    const float* class_logits, const float* mask_logits, int Q, int H4, int W4, int Hm, int Wm,
                    char* text, size_t n);
TaskResult task_run_end(TaskRun* r, const char* dir);

// ============================================================================
// end of COCO
// ============================================================================

// ============================================================================
// DATA PARALLEL: several GPUs through NCCL (dist.c; the hook in mae.c)
// ============================================================================
// One process per GPU: rank r of world N. Every rank holds the same weights (same seed or the
// same checkpoint) and draws the same random numbers (same seed, same batch of frames). A
// gradient step cuts its batch of B into chunks of at most min(max_B, ceil(B / N)) images and
// runs chunk c on rank c mod N; the gradients (of the trained parts) and the losses are summed
// over the ranks with one all-reduce in float32, between backward and clipping; every rank
// then clips and runs the same AdamW, so the weights stay identical. Every random number of
// the batch (masks, drop-path tables, the set loss's per-chunk seeds) is drawn up front on
// every rank, so the step equals one process running the same chunks (micro-batches of the
// same size), up to float summation order. For the TTT step that is the whole-batch step
// whatever the chunks (each chunk enters with its share of the masked values); the joint
// training step's chunks are data-parallel replicas (see train_chunks in mae.c), so N GPUs
// with micro-batch M equal one GPU with --micro-batch M.
// Collective (every rank calls them, in the same order): model_ttt_step,
// model_mae_forward_backward, model_train_step(_panoptic), model_train_forward_backward,
// dist_check_same_weights. Everything else (prediction, model_mae_loss, model_train_loss,
// checkpoint IO) runs on each rank alone; rank 0 writes every output (is_main_rank).

// sums n_bufs arrays of floats on ttt_device (counts[i] floats at bufs[i]) over the ranks, in place
typedef void (*DataParallelSum)(float* const* bufs, const size_t* counts, int n_bufs, void* ctx);
// makes m rank `rank` of `world` (world 1: a plain model again). sum NULL: no transport, each
// rank's gradient step leaves its own chunks' part (the CPU tests add the parts by hand)
void model_set_data_parallel(Model* m, int rank, int world, DataParallelSum sum, void* ctx);

// Launch. One node: ./train --gpus N (./stream, ./bench likewise) calls dist_launch(N, device)
// right after parsing its options, before any CUDA call. The process forks N ranks and
// stays behind as their supervisor: rank r uses GPU r; rank 0 makes the NCCL id and hands it
// to the others through pipes; ranks > 0 print nothing (stdout to /dev/null, stderr kept for
// the supervisor). When a rank fails, the supervisor stops the others (SIGTERM, then SIGKILL)
// and exits 1 naming it, with its last error lines; when all exit 0 it exits 0.
// Several nodes (or any launcher that starts the processes itself, e.g. Debian's OpenMPI:
// mpirun -np 16 --map-by ppr:8:node -x TTT_NCCL_ID_FILE=/shared/ttt.id ./train ...): each
// process reads its rank from TTT_RANK / TTT_WORLD / TTT_LOCAL_RANK, or OpenMPI's
// OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK, uses GPU local rank; rank 0 writes the NCCL id
// with a run token (TTT_RUN_ID, else OpenMPI's PMIX_NAMESPACE) into TTT_NCCL_ID_FILE on a
// filesystem every node sees, the others wait for that token's file. --gpus stays 1 there.
// Robustness: the communicator is non-blocking; its init and every all-reduce are polled
// (ncclCommGetAsyncError, cudaStreamQuery) and a rank that waits longer than TTT_NCCL_TIMEOUT
// seconds (default 600) aborts the communicator and exits with a message (a dead or hung
// peer). NCCL's NVLink multicast (NVLS) is always off (NCCL_NVLS_ENABLE=0).
// Test hook: TTT_DIST_FAULT=R:K kills rank R (SIGKILL) as it enters its K-th all-reduce.
// Without NCCL (make found no nccl.h, NO_CUDA=1 or NO_NCCL=1) --gpus N > 1 dies with one line.
void dist_launch(int gpus, const char* device);
int dist_rank(void);
int dist_world(void);
int is_main_rank(void);          // rank 0, or a single process: writes outputs, prints
int dist_nccl_built(void);       // 1 if this build has NCCL
// m's gradient steps run this rank's chunks and sum over the ranks (nothing with one process);
// then checks that every rank holds the same weights
void dist_attach(Model* m);
// collective: dies unless every rank's f, h, g are bitwise equal; rank 0 prints one line
void dist_check_same_weights(const Model* m, const char* when);
// process plumbing of dist_launch, without NCCL (the CPU tests use it): forks `world` ranks and
// returns the rank in each; the calling process supervises them and exits (never returns)
int dist_spawn(int world);

// ============================================================================
// end of DATA PARALLEL
// ============================================================================

// ============================================================================
// MATRIX-PRODUCT PRECISION (the GPU's matrix products; ttt.c, used by ttt_kernels.cu)
// ============================================================================
// Every matrix product on the GPU (cuBLAS / cuBLASLt) reads and writes float32 and sums in
// float32; the precision says what the tensor cores multiply:
//   fp32  float32 products (CUBLAS_COMPUTE_32F): the checking path
//   tf32  inputs rounded to TF32, 10-bit mantissa (CUBLAS_COMPUTE_32F_FAST_TF32)
//   bf16  the default: convolutions and the large linears on bf16 copies of their operands (a
//         bf16 x bf16 GEMM, float32 sums and outputs: ttt_kernels.cu, BF16 OPERANDS), the other
//         products inputs rounded to bfloat16 (CUBLAS_COMPUTE_32F_FAST_16BF). Measured on an
//         H200 (Swin-S Y, B = 8, 384 x 1248): TTT step 121.6 ms vs 137.6 in tf32; the demo
//         stream's video mIoU fp32 0.832410, tf32 0.832424, bf16 0.832252
// Chosen by the environment, TTT_PRECISION=bf16|tf32|fp32 (empty: unset), or by
// ttt_cuda_set_precision. The older TTT_TF32=0 still means fp32 (and TTT_TF32=1, alone, tf32); TTT_TF32=0 with
// TTT_PRECISION other than fp32 is an error. The CPU reference is always float32.
enum { PRECISION_FP32 = 0, PRECISION_TF32 = 1, PRECISION_BF16 = 2 };
#define PRECISION_DEFAULT PRECISION_BF16
int precision_parse(const char* s);          // "fp32" | "tf32" | "bf16" -> PRECISION_*; -1 otherwise
const char* precision_name(int p);           // "fp32" | "tf32" | "bf16" ("?" otherwise)
// the precision the values of TTT_PRECISION and TTT_TF32 select (either may be NULL: unset);
// -1 with a one-line reason in err when they are invalid or disagree
int precision_from_env_values(const char* precision, const char* tf32, char* err, size_t err_bytes);
void ttt_cuda_set_precision(int p);          // PRECISION_*; dies on another value
int ttt_cuda_precision(void);                // the current one (read from the environment on first use)
// the precision of this process's matrix products for settings lines: the CUDA one on the GPU,
// "fp32" on the CPU (dies on a bad TTT_PRECISION on either device)
const char* matmul_precision_name(void);
#ifdef TTT_CUDA
// linear_forward/backward_cuda through cuBLASLt (bias and bias-gradient epilogues; ttt_kernels.cu
// says when): on (1, TTT_LINEAR_LT=1) or off (0, the default: cuBLAS GEMM + bias kernels, faster)
void ttt_cuda_set_linear_lt(int on);
long ttt_cuda_linear_lt_calls(int which);    // calls done by cuBLASLt: 0 forward, 1 dweight + dbias
// the card's dense bf16 rate in TFLOP/s: n^3 bf16 GEMMs (float32 sums), warmup then iters timed
double ttt_cuda_bf16_peak_tflops(int n, int warmup, int iters);
// real bf16 operands in bf16 mode (ttt_kernels.cu, BF16 OPERANDS): conv2d (all but the 1x1
// same-grid ones, which are linears) as a bf16 im2col times a bf16 weight in one GEMM per chunk,
// unless TTT_BF16_CONV=0; linear on bf16 copies where the size rule says it pays, unless
// TTT_BF16_LINEAR=0 (which also turns off the bf16 paths of mlp and qkv_window_attention, whose
// (N, 4C) and (N, 3C) tensors are kept in bf16 there). Float32 outputs and sums. fp32 and tf32
// modes never take these.
void ttt_cuda_set_bf16_conv(int on);         // 1 on, 0 off, -1 back to TTT_BF16_CONV (default 1)
void ttt_cuda_set_bf16_linear(int mode);     // 0 off, 1 the size rule, 2 every linear (tests), -1 TTT_BF16_LINEAR
int ttt_cuda_bf16_linear_taken(int rows, int C, int OC);  // whether such a linear takes bf16 operands now
void ttt_cuda_set_bf16_scratch(size_t n);    // test hook: bf16 chunk limit in elements (0: 512 MiB)
long ttt_cuda_bf16_calls(int which);         // ops run on bf16 operands so far: 0 linear, 1 conv2d
// same-size 3x3 convs (K 3, stride 1, pad 1) in bf16 mode: forward and dinp by an implicit GEMM on
// the tensor cores (ttt_kernels.cu, conv3x3_implicit_bf16_kernel: no im2col buffer) when the input
// channels are a multiple of 32 and the output channels of 8, with TTT_CONV_IMPLICIT=1 (default 0:
// faster per large conv on the H200, but not for the whole step or the prediction: ttt_kernels.cu)
void ttt_cuda_set_conv_implicit(int on);     // 1 on, 0 off, -1 back to TTT_CONV_IMPLICIT (default 0)
long ttt_cuda_conv_implicit_calls(int which);  // calls run by the implicit kernel: 0 forward, 1 dinp
// flash_attention_forward/backward_cuda on the tensor cores (bf16 operands, float32 sums; ttt_kernels.cu,
// "flash attention on the tensor cores") in bf16 precision for HS = 16, 32, 48, 64, unless TTT_FATT_TC=0
void ttt_cuda_set_fatt_tc(int on);           // 1 on, 0 off, -1 back to TTT_FATT_TC (default 1)
long ttt_cuda_fatt_tc_calls(void);           // forward and backward calls run by them so far (host calls)
// window_attention_forward/backward_cuda on the tensor cores (mma.sync bf16 operands, float32 sums and
// softmax, scores in registers; ttt_kernels.cu, "window attention on the tensor cores with mma.sync")
// in bf16 precision for T <= 64 and HS = 16, 32, 48, 64, unless TTT_WATT_TC=0
void ttt_cuda_set_watt_tc(int on);           // 1 on, 0 off, -1 back to TTT_WATT_TC (default 1)
long ttt_cuda_watt_tc_calls(int which);      // calls run by them so far: 0 forward, 1 backward (host calls)
#endif

// ============================================================================
// end of MATRIX-PRODUCT PRECISION
// ============================================================================

// ============================================================================
// COLORIZATION (color.c, color_stream.c): the paper's fourth application (Table 3), after
// Zhang et al. 2016. The Y model sees the gray frame (L replicated to R, G, B) and h predicts
// per pixel of its 1/4 map a distribution over the 313 in-gamut ab bins (h's classes); g and
// the TTT step are unchanged (MAE on the gray frames). The choices: the top of color.c.
// ============================================================================
#define TASK_COLORIZE 3          // ./stream and ./train --task colorize (task_parse)
#define COLOR_BINS 313           // ab bins of grid 10 (Zhang's pts_in_hull)
#define COLOR_NEIGHBOURS 5       // soft encoding: nearest bins
#define COLOR_SIGMA 5.0f         // soft encoding and prior smoothing: Gaussian sigma (ab units)
#define COLOR_LAMBDA 0.5f        // rebalancing: mix with the uniform distribution
#define COLOR_TEMPERATURE 0.38f  // annealed mean
extern const signed char color_bin_table[COLOR_BINS][2];   // bin k's centre / 10: (a, b)
void color_bin_centre(int k, float* a, float* b);
// sRGB (n, 3) in [0, 1] <-> CIE Lab (n, 3), D65 (skimage.color's formulas); lab_to_srgb clips
void srgb_to_lab(float* lab, const float* rgb, size_t n);
void lab_to_srgb(float* rgb, const float* lab, size_t n);
// gray (n, 3): the sRGB gray of each pixel's L (Lab (L, 0, 0)), R = G = B
void color_gray_frame(float* gray, const float* rgb, size_t n);
// the ab cells (nearest centre 10 i, 10 j) holding some 8-bit sRGB colour; in_gamut 23 x 23 or NULL
int color_gamut_cells(unsigned char* in_gamut);
int color_bin_nearest(float a, float b);
void color_soft_encode(int* ids, float* w, float a, float b);   // (5) nearest bins, Gaussian weights
// training targets of one image rgb (H, W, 3): ids, w (H4, W4, 5), w = 0 on the padding
void color_targets(int* ids, float* w, const float* rgb, int H, int W, int H4, int W4);
void color_hist_add(double* hist, const float* rgb, size_t n);   // nearest-bin counts
void color_rebalance_weights(float* w, const double* hist);      // (COLOR_BINS), E_p~[w] = 1
// p (N, COLOR_BINS) from one image's class_logits (Q, COLOR_BINS + 1), mask_logits (Q, N)
void color_distribution(float* p, const float* class_logits, const float* mask_logits, int Q, int N);
// the rebalanced multinomial loss summed over L layers (each a mean over valid pixels);
// gradients ACCUMULATE into dcls, dmask (or NULL); layouts as set_loss_from_targets
float color_loss(const float* class_logits, const float* mask_logits, int L, int B, int Q, int H4, int W4,
                 const int* ids, const float* w, const float* rebal, float* dcls, float* dmask);
void color_annealed_mean(float* ab, const float* p, int N, float T);   // ab (N, 2)
// the colourised frame rgb (H, W, 3): frame's L, the annealed mean of h's last prediction
void color_decode(float* rgb, const float* frame, const float* class_logits, const float* mask_logits,
                  int Q, int H4, int W4, int H, int W, float T);
double color_psnr(const unsigned char* a, const unsigned char* b, size_t n);   // dB, 8-bit
double color_ssim(const unsigned char* a, const unsigned char* b, int H, int W, int C);   // skimage's

// the model's side (mae.c). A colorization checkpoint has ModelConfig.colorize = 1, h with
// COLOR_BINS classes, and its rebalancing weights (COLOR_BINS floats) after the parameters.
void model_set_color_weights(Model* m, const float* w);   // (COLOR_BINS), host
void model_color_weights(const Model* m, float* w);
// one joint training step on gray images (B, H, W, 3) with targets ids, w (B, H4, W4, 5) of
// the model's map (color_targets of the colour images): the colour loss of h(f(x)) + the MAE
// loss of g(f(x~)), as model_train_step otherwise
void model_train_step_colorize(Model* m, const float* gray, const int* ids, const float* w, int B,
                               const OptConfig* opt, float grad_clip, Rng* rng, float* loss_main, float* loss_mae);
float model_train_loss_colorize(Model* m, const float* gray, const int* ids, const float* w, int B, Rng* rng);
// h(f(x)) on an unmasked frame (H, W, 3), no semantic inference: read with model_last_logits
void model_predict_logits(Model* m, const float* frame);

// ./stream --task colorize (color_stream.c): the settings stream.c parsed
typedef struct {
    const char* dir;          // frames
    const char* model_path;
    const char* out_dir;
    int mode;                 // 0 fixed, 1 nomem, 2 implicit, 3 explicit, 4 online (stream.c's order)
    int window, batch, steps;
    OptConfig opt;
    uint64_t seed;
    int save_png;             // 0: no PNG (scores only)
    ModelRecipe recipe;       // TTT settings (mask ratio, loss pixels, clip, ...), when has_recipe
    int has_recipe;
} ColorStreamArgs;
int color_stream_run(const ColorStreamArgs* a);
// ./train --task colorize (color_stream.c): the images of DIR (or DIR/images), sizes read
typedef struct { int n; char** images; int *H, *W; } ColorImageSet;
ColorImageSet color_image_list(const char* dir);
void color_image_set_free(ColorImageSet* s);
// a training batch: gray crops (B, crop_h, crop_w, 3) and targets ids, w (B, H4, W4, 5)
void color_train_batch(const ColorImageSet* ds, const int* idx, const AugDraw* draws, int B, const AugConfig* aug,
                       int H4, int W4, float* gray, int* ids, float* w);
void color_train_weights(const ColorImageSet* ds, float* w);   // rebalancing weights of a set
// mean PSNR and SSIM of the colourised gray versions of a held-out set (any sizes)
void color_validate(Model* trained, const ColorImageSet* vs, double* psnr, double* ssim);

// ============================================================================
// end of COLORIZATION
// ============================================================================

// ============================================================================
// BACKENDS: what the dispatchers call (dispatch.c), and the device plumbing
// ============================================================================
// Nothing above needs this section to be read: every op is documented once, in its dispatched
// form. Here: CUDA graphs and the timers, the _cpu twins (CPU references: ttt.c, mask2former.c,
// mae.c), the _naive references, the _cuda twins (ttt_kernels.cu) and the CUDA runtime
// (ttt_runtime.cu). Twins take the op's arguments and are listed in the op's order.

// ---- CUDA graphs and timers (dispatch.c; on the GPU through ttt_runtime.cu) ----
// CUDA graphs: a fixed sequence of device work (same pointers and sizes on every call) is
// recorded once and then replayed with one launch, which removes the launch cost of the
// thousands of small kernels in a TTT step. The first call of a graph runs eagerly (it
// sizes the workspaces); the second records and runs; later ones replay. On the CPU, with
// TTT_GRAPHS=0 or TTT_PROFILE=1, the work simply runs each time. A graph whose workspaces
// have moved since it was recorded is dropped and recorded again. Usage:
//   if (!device_graph_replay(&g)) { device_graph_begin(&g); ...ops...; device_graph_end(&g); }
typedef struct { void* exec; long workspace_epoch; double flops; int calls; int capturing; } DeviceGraph;
int device_graph_replay(DeviceGraph* g);   // 1: replayed (the work is queued); 0: run it
void device_graph_begin(DeviceGraph* g);
void device_graph_end(DeviceGraph* g);
void device_graph_free(DeviceGraph* g);

// Stage timing for benchmarks. While enabled, stage_begin(name) ends the open stage and
// opens the next; stage_begin(NULL) ends it. Device time between the marks is summed per
// name: CUDA events on the GPU (CUDA graphs are off meanwhile, their work cannot be split),
// the host clock on the CPU. Disabled (the default), a mark costs one branch.
#define MAX_STAGES 16
#define STAGE_MAX_PENDING 4096   // intervals held before they are folded into totals
void stage_timing_enable(int on);
int stage_timing_enabled(void);
void stage_begin(const char* name);
const char* stage_current(void);   // the open stage's name (NULL: none, or timing off)
// totals so far (waits for the device): names and ms, returns the number of stages; resets
int stage_timing_collect(const char** names, double* ms, int max);
// one interval of device time for benchmarks: CUDA events on the GPU, host clock on the CPU
void device_timer_start(void);
double device_timer_stop_ms(void);   // waits for the device

// ---- the _cpu twins ----

void add_forward_cpu(float* out, const float* a, const float* b, size_t N);
void add_inplace_cpu(float* a, const float* b, size_t N);
void scale_inplace_cpu(float* x, float s, size_t N);
void scale_rows_forward_cpu(float* out, const float* inp, const float* scale, int B, size_t N);
void scale_rows_backward_cpu(float* dinp, const float* dout, const float* scale, int B, size_t N);
void linear_forward_cpu(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC);
void linear_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC);
void linear_backward_write_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC);
void mlp_forward_cpu(float* out, float* pre, float* hidden, const float* x, const float* w1, const float* b1, const float* w2, const float* b2, int N, int C, int Ch);
void mlp_backward_cpu(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden, float* hidden, const float* dout, const float* pre, const float* x, const float* w1, const float* b1, const float* w2, int N, int C, int Ch);
void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int N, int C);
void layernorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int N, int C);
void groupnorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int HW, int C, int G);
void groupnorm_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int HW, int C, int G);
void gelu_forward_cpu(float* out, const float* inp, size_t N);
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, size_t N);
void relu_forward_cpu(float* out, const float* inp, size_t N);
void relu_backward_cpu(float* dinp, const float* out, const float* dout, size_t N);
void sigmoid_forward_cpu(float* out, const float* inp, size_t N);
void sigmoid_backward_cpu(float* dinp, const float* out, const float* dout, size_t N);
void softmax_forward_cpu(float* out, const float* inp, int N, int C);
void softmax_backward_cpu(float* dinp, const float* out, const float* dout, int N, int C);
void attention_forward_cpu(float* out, float* att, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void attention_backward_cpu(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* att, const float* q, const float* k, const float* v, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void window_attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride);
void window_attention_backward_cpu(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride);
void qkv_window_attention_forward_cpu(float* out, float* lse, float* qkv, const float* x, const float* w, const float* b, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS);
void qkv_window_attention_backward_cpu(float* dx, float* dw, float* db, float* drel_bias, float* dqkv, const float* dout, const float* out, const float* lse, const float* qkv, const float* x, const float* w, const float* b, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS);
void flash_attention_forward_cpu(float* out, float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void flash_attention_backward_cpu(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void bias_gather_forward_cpu(float* out, const float* table, const int* index, int N, int NH);
void bias_gather_backward_cpu(float* dtable, const float* dout, const int* index, int N, int NH);
void window_partition_forward_cpu(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift);
void window_partition_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift);
void window_reverse_forward_cpu(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift);
void window_reverse_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift);
void layernorm_partition_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int ws, int shift);
void layernorm_partition_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int H, int W, int C, int ws, int shift);
void window_reverse_residual_forward_cpu(float* out, const float* inp, const float* bias, const float* residual, const float* scale, int B, int H, int W, int C, int ws, int shift);
void window_reverse_residual_backward_cpu(float* dresidual, float* dinp, const float* dout, const float* scale, int B, int H, int W, int C, int ws, int shift);
void layernorm_apply_cpu(float* out, const float* inp, const float* mean, const float* rstd, const float* weight, const float* bias, int N, int C);
void scale_rows_add_forward_cpu(float* out, const float* inp, const float* residual, const float* scale, int B, size_t N);
void scale_rows_add_backward_cpu(float* dinp, float* dresidual, const float* dout, const float* scale, int B, size_t N);
void patch_merge_forward_cpu(float* out, const float* inp, int B, int H, int W, int C);
void patch_merge_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C);
void conv2d_forward_cpu(float* out, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
void conv2d_backward_cpu(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
void upsample_nearest_forward_cpu(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo);
void upsample_nearest_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo);
void upsample_bilinear_forward_cpu(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo);
void upsample_bilinear_backward_cpu(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo);
void point_sample_forward_cpu(float* out, const float* inp, const float* coords, int M, int H, int W, int P);
void point_sample_backward_cpu(float* dinp, const float* dout, const float* coords, int M, int H, int W, int P);
void sine_position_encoding_cpu(float* out, int H, int W, int C);
void ms_deform_attn_forward_cpu(float* out, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P);
void ms_deform_attn_backward_cpu(float* dvalue, float* dloc, float* daw, const float* dout, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P);
void ms_deform_locations_forward_cpu(float* loc, const float* off, const int* shapes, int B, int L, int NH, int P);
void ms_deform_locations_backward_cpu(float* doff, const float* dloc, const int* shapes, int B, int L, int NH, int P);
void masked_mse_forward_cpu(float* loss, const float* pred, const float* target, const float* mask, int N, int C);
void masked_mse_backward_cpu(float* dpred, float dloss, const float* pred, const float* target, const float* mask, int N, int C);
void cross_entropy_forward_cpu(float* loss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index);
void cross_entropy_backward_cpu(float* dlogits, float dloss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index);
void sigmoid_bce_forward_cpu(float* losses, const float* logits, const float* targets, int M, int P);
void sigmoid_bce_backward_cpu(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P);
void dice_loss_forward_cpu(float* losses, const float* logits, const float* targets, int M, int P);
void dice_loss_backward_cpu(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P);
void adamw_update_cpu(float* params, const float* grads, float* m, float* v, size_t N, float lr, float beta1, float beta2, float eps, float weight_decay, int t);
void sum_squares_cpu(float* out, const float* x, size_t N);
void attn_mask_from_logits_cpu(float* mask_add, const float* logits, int B, int Q, int T);
void mae_prepare_input_cpu(float* inp4, float* target, float* target_mask, const float* rgb,
                           const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                           int all_pixels);
void semantic_scores_cpu(float* scores, const float* class_logits, const float* mask_logits, int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work);
void class_argmax_cpu(unsigned char* ids, const float* scores, int N, int K, float min_conf);
void flip_width_cpu(float* out, const float* inp, int B, int H, int W, int C);
void majority_vote_cpu(unsigned char* ids, const unsigned char* votes, int V, int N);
void layernorm_adapt_forward_cpu(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var, const int* state, const float* inp, const float* weight, const float* bias, int N, int C, int cap, float prior);
void semantic_entropy_forward_cpu(float* loss, const float* class_logits, const float* mask_logits, int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);
void semantic_entropy_backward_cpu(float* dclass_logits, float* dmask_logits, float dloss, const float* class_logits, const float* mask_logits, int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);

// ---- the _naive references ----
// the algorithmic references of the ops whose _cpu code is optimised beyond its formula (the
// loops of the op's formula, in double, one thread; in ttt.c right above the fast versions;
// test/test_naive.c checks the fast ones equal them). Same arguments as the op.
void linear_forward_naive(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC);
void linear_backward_naive(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC);
void attention_forward_naive(float* out, float* att, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void attention_backward_naive(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* att, const float* q, const float* k, const float* v, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
void conv2d_forward_naive(float* out, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
void conv2d_backward_naive(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);

// ---- the _cuda twins (ttt_kernels.cu) ----
// A build without CUDA (no nvcc, or make NO_CUDA=1) links no CUDA objects: there these names are
// weak declarations that nothing defines, which links because the dispatchers never call them
// in such a build (dispatch.c's on_gpu() is 0). With CUDA, CUDA_TWIN is empty.
#ifdef TTT_CUDA
#define CUDA_TWIN
#else
#define CUDA_TWIN __attribute__((weak))
#endif
CUDA_TWIN void add_forward_cuda(float* out, const float* a, const float* b, size_t N);
CUDA_TWIN void add_inplace_cuda(float* a, const float* b, size_t N);
CUDA_TWIN void scale_inplace_cuda(float* x, float s, size_t N);
CUDA_TWIN void scale_rows_forward_cuda(float* out, const float* inp, const float* scale, int B, size_t N);
CUDA_TWIN void scale_rows_backward_cuda(float* dinp, const float* dout, const float* scale, int B, size_t N);
CUDA_TWIN void linear_forward_cuda(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC);
CUDA_TWIN void linear_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC);
CUDA_TWIN void linear_backward_write_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int N, int C, int OC);
CUDA_TWIN void mlp_forward_cuda(float* out, float* pre, float* hidden, const float* x, const float* w1, const float* b1, const float* w2, const float* b2, int N, int C, int Ch);
CUDA_TWIN void mlp_backward_cuda(float* dx, float* dw1, float* db1, float* dw2, float* db2, float* dhidden, float* hidden, const float* dout, const float* pre, const float* x, const float* w1, const float* b1, const float* w2, int N, int C, int Ch);
CUDA_TWIN void layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int N, int C);
CUDA_TWIN void layernorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int N, int C);
CUDA_TWIN void groupnorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int HW, int C, int G);
CUDA_TWIN void groupnorm_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int HW, int C, int G);
CUDA_TWIN void gelu_forward_cuda(float* out, const float* inp, size_t N);
CUDA_TWIN void gelu_backward_cuda(float* dinp, const float* inp, const float* dout, size_t N);
CUDA_TWIN void relu_forward_cuda(float* out, const float* inp, size_t N);
CUDA_TWIN void relu_backward_cuda(float* dinp, const float* out, const float* dout, size_t N);
CUDA_TWIN void sigmoid_forward_cuda(float* out, const float* inp, size_t N);
CUDA_TWIN void sigmoid_backward_cuda(float* dinp, const float* out, const float* dout, size_t N);
CUDA_TWIN void softmax_forward_cuda(float* out, const float* inp, int N, int C);
CUDA_TWIN void softmax_backward_cuda(float* dinp, const float* out, const float* dout, int N, int C);
CUDA_TWIN void attention_forward_cuda(float* out, float* att, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void attention_backward_cuda(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* att, const float* q, const float* k, const float* v, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void window_attention_forward_cuda(float* out, float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void window_attention_backward_cuda(float* dq, float* dk, float* dv, float* drel_bias, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void qkv_window_attention_forward_cuda(float* out, float* lse, float* qkv, const float* x, const float* w, const float* b, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS);
CUDA_TWIN void qkv_window_attention_backward_cuda(float* dx, float* dw, float* db, float* drel_bias, float* dqkv, const float* dout, const float* out, const float* lse, const float* qkv, const float* x, const float* w, const float* b, const float* rel_bias, const float* mask, int n_mask, int B, int T, int NH, int HS);
CUDA_TWIN void flash_attention_forward_cuda(float* out, float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void flash_attention_backward_cuda(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse, const float* q, const float* k, const float* v, const float* mask, int n_mask, int B, int Tq, int Tk, int NH, int HS, int q_stride, int kv_stride);
CUDA_TWIN void bias_gather_forward_cuda(float* out, const float* table, const int* index, int N, int NH);
CUDA_TWIN void bias_gather_backward_cuda(float* dtable, const float* dout, const int* index, int N, int NH);
CUDA_TWIN void window_partition_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void window_partition_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void window_reverse_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void window_reverse_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void layernorm_partition_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void layernorm_partition_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, const float* mean, const float* rstd, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void window_reverse_residual_forward_cuda(float* out, const float* inp, const float* bias, const float* residual, const float* scale, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void window_reverse_residual_backward_cuda(float* dresidual, float* dinp, const float* dout, const float* scale, int B, int H, int W, int C, int ws, int shift);
CUDA_TWIN void layernorm_apply_cuda(float* out, const float* inp, const float* mean, const float* rstd, const float* weight, const float* bias, int N, int C);
CUDA_TWIN void scale_rows_add_forward_cuda(float* out, const float* inp, const float* residual, const float* scale, int B, size_t N);
CUDA_TWIN void scale_rows_add_backward_cuda(float* dinp, float* dresidual, const float* dout, const float* scale, int B, size_t N);
CUDA_TWIN void patch_merge_forward_cuda(float* out, const float* inp, int B, int H, int W, int C);
CUDA_TWIN void patch_merge_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C);
CUDA_TWIN void conv2d_forward_cuda(float* out, const float* inp, const float* weight, const float* bias, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
CUDA_TWIN void conv2d_backward_cuda(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp, const float* weight, int B, int H, int W, int C, int OC, int K, int stride, int pad, int Ho, int Wo);
CUDA_TWIN void upsample_nearest_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo);
CUDA_TWIN void upsample_nearest_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo);
CUDA_TWIN void upsample_bilinear_forward_cuda(float* out, const float* inp, int B, int H, int W, int C, int Ho, int Wo);
CUDA_TWIN void upsample_bilinear_backward_cuda(float* dinp, const float* dout, int B, int H, int W, int C, int Ho, int Wo);
CUDA_TWIN void point_sample_forward_cuda(float* out, const float* inp, const float* coords, int M, int H, int W, int P);
CUDA_TWIN void point_sample_backward_cuda(float* dinp, const float* dout, const float* coords, int M, int H, int W, int P);
CUDA_TWIN void sine_position_encoding_cuda(float* out, int H, int W, int C);
CUDA_TWIN void ms_deform_attn_forward_cuda(float* out, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P);
CUDA_TWIN void ms_deform_attn_backward_cuda(float* dvalue, float* dloc, float* daw, const float* dout, const float* value, const int* shapes, const float* loc, const float* aw, int B, int S, int Lq, int NH, int HD, int L, int P);
CUDA_TWIN void ms_deform_locations_forward_cuda(float* loc, const float* off, const int* shapes, int B, int L, int NH, int P);
CUDA_TWIN void ms_deform_locations_backward_cuda(float* doff, const float* dloc, const int* shapes, int B, int L, int NH, int P);
CUDA_TWIN void masked_mse_forward_cuda(float* loss, const float* pred, const float* target, const float* mask, int N, int C);
CUDA_TWIN void masked_mse_backward_cuda(float* dpred, float dloss, const float* pred, const float* target, const float* mask, int N, int C);
CUDA_TWIN void cross_entropy_forward_cuda(float* loss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index);
CUDA_TWIN void cross_entropy_backward_cuda(float* dlogits, float dloss, const float* logits, const int* targets, const float* class_weight, int N, int C, int ignore_index);
CUDA_TWIN void sigmoid_bce_forward_cuda(float* losses, const float* logits, const float* targets, int M, int P);
CUDA_TWIN void sigmoid_bce_backward_cuda(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P);
CUDA_TWIN void dice_loss_forward_cuda(float* losses, const float* logits, const float* targets, int M, int P);
CUDA_TWIN void dice_loss_backward_cuda(float* dlogits, const float* dlosses, const float* logits, const float* targets, int M, int P);
CUDA_TWIN void adamw_update_cuda(float* params, const float* grads, float* m, float* v, size_t N, float lr, float beta1, float beta2, float eps, float weight_decay, int t);
CUDA_TWIN void sum_squares_cuda(float* out, const float* x, size_t N);
CUDA_TWIN void attn_mask_from_logits_cuda(float* mask_add, const float* logits, int B, int Q, int T);
CUDA_TWIN void mae_prepare_input_cuda(float* inp4, float* target, float* target_mask, const float* rgb,
                                      const unsigned char* patch_mask, int B, int H, int W, int Hp, int Wp, int ps,
                                      int all_pixels);
CUDA_TWIN void semantic_inference_cuda(unsigned char* ids, const float* class_logits, const float* mask_logits, int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work);
CUDA_TWIN void semantic_scores_cuda(float* scores, const float* class_logits, const float* mask_logits, int Q, int K, int H4, int W4, int H, int W, int Ho, int Wo, float* work);
CUDA_TWIN void class_argmax_cuda(unsigned char* ids, const float* scores, int N, int K, float min_conf);
CUDA_TWIN void flip_width_cuda(float* out, const float* inp, int B, int H, int W, int C);
CUDA_TWIN void majority_vote_cuda(unsigned char* ids, const unsigned char* votes, int V, int N);
CUDA_TWIN void layernorm_adapt_forward_cuda(float* out, float* mean, float* rstd, float* hist_mean, float* hist_var, const int* state, const float* inp, const float* weight, const float* bias, int N, int C, int cap, float prior);
CUDA_TWIN void semantic_entropy_forward_cuda(float* loss, const float* class_logits, const float* mask_logits, int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);
CUDA_TWIN void semantic_entropy_backward_cuda(float* dclass_logits, float* dmask_logits, float dloss, const float* class_logits, const float* mask_logits, int B, int Q, int K, int H4, int W4, int Hv, int Wv, float* work);

// ---- CUDA runtime (ttt_runtime.cu; the three set_ switches of kernels: ttt_kernels.cu) ----
CUDA_TWIN int ttt_cuda_device_count(void);
CUDA_TWIN void* ttt_cuda_malloc(size_t bytes);
CUDA_TWIN void ttt_cuda_free(void* p);
CUDA_TWIN void ttt_cuda_zero(void* p, size_t bytes);
CUDA_TWIN void ttt_cuda_copy(void* dst, const void* src, size_t bytes, int kind); // 0 d2d, 1 h2d, 2 d2h
CUDA_TWIN void ttt_cuda_synchronize(void);
CUDA_TWIN void ttt_cuda_set_tf32(int on);          // matrix products in TF32 (1, default) or float32 (0)
CUDA_TWIN double ttt_cuda_gemm_flops(void);         // FLOPs of all matrix products issued so far
CUDA_TWIN void ttt_cuda_memory_info(size_t* used, size_t* total);  // device memory in use / total, bytes
// TTT_PROFILE: ops run while paused (1) are not timed; ./bench pauses over its warm-up calls
CUDA_TWIN void ttt_cuda_profile_pause(int paused);
CUDA_TWIN void ttt_cuda_set_fused_attention(int on);  // 1 (default): fused kernels for windows T <= 64 and flash_attention HS <= 64
CUDA_TWIN void ttt_cuda_set_conv_im2col(int on);      // same-size 3x3 convs: 0 shifted GEMMs, 1 im2col, -1 default
CUDA_TWIN void ttt_cuda_set_conv_scratch_floats(size_t n);  // test hook: shifted-GEMM chunk limit (0: default)
CUDA_TWIN void ttt_cuda_stage_record(int slot, int which);   // CUDA event of a stage mark (0 start, 1 end)
CUDA_TWIN float ttt_cuda_stage_elapsed(int slot);            // ms between the two events of a slot (waits)
CUDA_TWIN void ttt_cuda_timer_start(void);
CUDA_TWIN double ttt_cuda_timer_stop_ms(void);
CUDA_TWIN void ttt_cuda_set_graphs(int on);         // CUDA graphs on (1, default unless TTT_GRAPHS=0) or off
CUDA_TWIN int ttt_cuda_graph_replay(DeviceGraph* g);
CUDA_TWIN void ttt_cuda_graph_begin(DeviceGraph* g);
CUDA_TWIN void ttt_cuda_graph_end(DeviceGraph* g);
CUDA_TWIN void ttt_cuda_graph_free(DeviceGraph* g);

// ============================================================================
// end of BACKENDS
// ============================================================================

#ifdef __cplusplus
}
#endif
#endif // TTT_H
