// ttt_runtime.cu: the CUDA runtime behind dispatch.c (device count, memory, copies), the one
// cuBLAS handle, the growable workspaces, the per-op profiler (TTT_PROFILE=1), CUDA graphs
// (TTT_GRAPHS=0: off) and the event timers. No kernels: those are in ttt_kernels.cu, which
// shares this file's helpers through ttt_cuda.cuh.
// Environment switches read here: TTT_PROFILE=1 (device time per op printed at exit; =2 per op
// and size for the ops that pass their sizes),
// TTT_GRAPHS=0 (no CUDA graphs: every kernel launched from the host each time), TTT_TF32=0
// (float32 matrix products; read by gemm_rm in ttt_kernels.cu, stored here).
#include "ttt_cuda.cuh"

// ----------------------------------------------------------------------------
// runtime plumbing

extern "C" int ttt_cuda_device_count(void) {
    // no driver or no GPU is not an error here: the CPU path keeps working
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
}

static int graph_capturing = 0;   // 1 while a CUDA graph is being recorded

extern "C" void* ttt_cuda_malloc(size_t bytes) {
    if (graph_capturing) ttt_die("internal: GPU memory allocated while a CUDA graph was recorded (run with TTT_GRAPHS=0)");
    void* p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (err != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        fprintf(stderr, "error: out of GPU memory allocating %zu bytes (%.2f GiB; %.2f GiB free of %.2f): %s\n",
                bytes, bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0,
                cudaGetErrorString(err));
        exit(1);
    }
    return p;
}

extern "C" void ttt_cuda_free(void* p) {
    if (graph_capturing) ttt_die("internal: GPU memory freed while a CUDA graph was recorded (run with TTT_GRAPHS=0)");
    if (p) cudaCheck(cudaFree(p));
}

extern "C" void ttt_cuda_zero(void* p, size_t bytes) {
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, cudaStreamPerThread));
}

extern "C" void ttt_cuda_copy(void* dst, const void* src, size_t bytes, int kind) {
    if (bytes == 0) return;
    cudaMemcpyKind k = kind == 1 ? cudaMemcpyHostToDevice
                     : kind == 2 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    if (k == cudaMemcpyDeviceToDevice) cudaCheck(cudaMemcpyAsync(dst, src, bytes, k, cudaStreamPerThread));
    else cudaCheck(cudaMemcpy(dst, src, bytes, k));   // host memory: waits for the stream
}

extern "C" void ttt_cuda_synchronize(void) { cudaCheck(cudaDeviceSynchronize()); }

// one cuBLAS handle for the process, created on first use, on our stream and with a
// workspace of its own (so that cuBLAS never allocates while a graph is being recorded)
static cublasHandle_t cublas_handle = NULL;
cublasHandle_t get_cublas(void) {
    if (cublas_handle == NULL) {
        const size_t workspace_bytes = 32u << 20;
        cublasCheck(cublasCreate(&cublas_handle));
        cublasCheck(cublasSetStream(cublas_handle, cudaStreamPerThread));
        cublasCheck(cublasSetWorkspace(cublas_handle, ttt_cuda_malloc(workspace_bytes), workspace_bytes));
    }
    return cublas_handle;
}

// persistent growable workspaces (never shrink). Growing frees the old buffer;
// cudaFree waits for the device, so kernels still reading it finish first.
Workspace ws_gemm;     // im2col / col2im columns, attention score gradients
Workspace ws_reduce;   // partial sums of reductions (doubles)
static long workspace_epoch = 0;   // bumped whenever a workspace moves (graphs record pointers)
void* workspace_get(Workspace* w, size_t bytes) {
    if (bytes > w->bytes) {
        if (graph_capturing)
            ttt_die("internal: a CUDA workspace had to grow while a graph was recorded (run with TTT_GRAPHS=0)");
        workspace_epoch++;
        if (w->ptr) cudaCheck(cudaFree(w->ptr));
        size_t grow = bytes + bytes / 4;
        w->ptr = ttt_cuda_malloc(grow);
        w->bytes = grow;
    }
    return w->ptr;
}

// FLOPs of the matrix products issued so far (2 M N K each). ttt_cuda_set_tf32, the older
// precision switch: TF32 (1) or float32 (0) products (ttt_cuda_set_precision says more)
double gemm_flop_count = 0.0;
extern "C" void ttt_cuda_set_tf32(int on) { ttt_cuda_set_precision(on ? PRECISION_TF32 : PRECISION_FP32); }
extern "C" double ttt_cuda_gemm_flops(void) { return gemm_flop_count; }

extern "C" void ttt_cuda_memory_info(size_t* used, size_t* total) {
    size_t free_b = 0, total_b = 0;
    cudaCheck(cudaMemGetInfo(&free_b, &total_b));
    *used = total_b - free_b;
    *total = total_b;
}

// ----------------------------------------------------------------------------
// per-op timing, on when the environment has TTT_PROFILE=1: every _cuda op records a CUDA
// event pair around its work (an OpTimer on its stack); at exit the total time per op is
// printed to stderr, sorted. Off: one branch per op.

#define PROF_MAX_OPS 512
#define PROF_MAX_PENDING 65536
static int prof_on = -1;
static const char* prof_names[PROF_MAX_OPS];
static char prof_shaped[PROF_MAX_OPS][72];   // TTT_PROFILE=2: "name a x b x c" keys, owned here
static double prof_ms[PROF_MAX_OPS];
static long prof_calls[PROF_MAX_OPS];
static int prof_nops = 0;
static cudaEvent_t prof_ev[PROF_MAX_PENDING][2];
static int prof_ev_op[PROF_MAX_PENDING];
static int prof_npending = 0, prof_nev_created = 0;

// fold the recorded pairs into the per-op totals (waits for the device)
static void prof_flush(void) {
    if (prof_npending == 0) return;
    cudaCheck(cudaDeviceSynchronize());
    for (int i = 0; i < prof_npending; i++) {
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, prof_ev[i][0], prof_ev[i][1]));
        prof_ms[prof_ev_op[i]] += ms;
        prof_calls[prof_ev_op[i]]++;
    }
    prof_npending = 0;
}

static void prof_report(void) {
    prof_flush();
    double total = 0.0;
    for (int i = 0; i < prof_nops; i++) total += prof_ms[i];
    fprintf(stderr, "TTT_PROFILE: device time per op (sum of event intervals), total %.2f ms\n", total);
    int order[PROF_MAX_OPS];
    for (int i = 0; i < prof_nops; i++) order[i] = i;
    for (int i = 1; i < prof_nops; i++)   // insertion sort by time, descending
        for (int j = i; j > 0 && prof_ms[order[j]] > prof_ms[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    for (int k = 0; k < prof_nops; k++) {
        int i = order[k];
        fprintf(stderr, "  %-32s %10.2f ms %5.1f%%  %8ld calls\n", prof_names[i], prof_ms[i],
                100.0 * prof_ms[i] / (total > 0 ? total : 1), prof_calls[i]);
    }
}

static int prof_depth = 0;   // only the outermost op is timed (conv2d 1x1 calls linear)
static int prof_paused = 0;  // ttt_cuda_profile_pause: warm-up calls (first-use costs) not timed
extern "C" void ttt_cuda_profile_pause(int paused) { prof_paused = paused != 0; }

// the profiling level from TTT_PROFILE: 0 off, 1 per op, 2 per op and size (where the op
// passes its sizes: linear, conv2d)
static int prof_level(void) {
    if (prof_on < 0) {
        const char* e = getenv("TTT_PROFILE");
        prof_on = e && (e[0] == '1' || e[0] == '2') ? e[0] - '0' : 0;
        if (prof_on) atexit(prof_report);
    }
    return prof_on;
}

// start timing op `name` (a string literal, compared by address) or, when `shaped` is given, the
// op named by that key text (compared by value; name unused); returns the event slot or -1
static int prof_begin(const char* name, const char* shaped) {
    int op = 0;
    if (shaped) while (op < prof_nops && !(prof_names[op] == prof_shaped[op] && !strcmp(prof_shaped[op], shaped))) op++;
    else while (op < prof_nops && prof_names[op] != name) op++;
    if (op == prof_nops) {
        if (prof_nops == PROF_MAX_OPS) return -1;
        if (shaped) {
            snprintf(prof_shaped[prof_nops], sizeof(prof_shaped[0]), "%s", shaped);
            prof_names[prof_nops] = prof_shaped[prof_nops];
        } else prof_names[prof_nops] = name;
        prof_nops++;
    }
    if (prof_npending == PROF_MAX_PENDING) prof_flush();
    int slot = prof_npending++;
    if (slot >= prof_nev_created) {
        cudaCheck(cudaEventCreate(&prof_ev[slot][0]));
        cudaCheck(cudaEventCreate(&prof_ev[slot][1]));
        prof_nev_created = slot + 1;
    }
    prof_ev_op[slot] = op;
    cudaCheck(cudaEventRecord(prof_ev[slot][0]));
    return slot;
}

OpTimer::OpTimer(const char* name) : slot(-1) {
    prof_depth++;
    if (prof_depth > 1 || prof_paused || !prof_level()) return;
    slot = prof_begin(name, NULL);
}
OpTimer::OpTimer(const char* name, long a, long b, long c) : slot(-1) {
    prof_depth++;
    int level = prof_depth > 1 || prof_paused ? 0 : prof_level();
    if (!level) return;
    if (level == 1) { slot = prof_begin(name, NULL); return; }
    char key[72];
    snprintf(key, sizeof(key), "%s %ldx%ldx%ld", name, a, b, c);
    slot = prof_begin(name, key);
}
OpTimer::~OpTimer() {
    prof_depth--;
    if (slot >= 0) cudaCheck(cudaEventRecord(prof_ev[slot][1]));
}

// ----------------------------------------------------------------------------
// CUDA graphs (see DeviceGraph in ttt.h): record the work of a fixed op sequence on our
// stream once, replay it with one launch. Not used under TTT_PROFILE=1 (its per-op events
// need the eager launches) or with TTT_GRAPHS=0.

// stage timing events (ttt.c keeps the bookkeeping; slots index its pending intervals)
static cudaEvent_t stage_ev[STAGE_MAX_PENDING][2];
static int stage_ev_created = 0;
extern "C" void ttt_cuda_stage_record(int slot, int which) {
    while (stage_ev_created <= slot) {
        cudaCheck(cudaEventCreate(&stage_ev[stage_ev_created][0]));
        cudaCheck(cudaEventCreate(&stage_ev[stage_ev_created][1]));
        stage_ev_created++;
    }
    cudaCheck(cudaEventRecord(stage_ev[slot][which], cudaStreamPerThread));
}
extern "C" float ttt_cuda_stage_elapsed(int slot) {
    float ms = 0.0f;
    cudaCheck(cudaEventSynchronize(stage_ev[slot][1]));
    cudaCheck(cudaEventElapsedTime(&ms, stage_ev[slot][0], stage_ev[slot][1]));
    return ms;
}

static cudaEvent_t timer_ev[2];
static int timer_ev_created = 0;
extern "C" void ttt_cuda_timer_start(void) {
    if (!timer_ev_created) {
        cudaCheck(cudaEventCreate(&timer_ev[0]));
        cudaCheck(cudaEventCreate(&timer_ev[1]));
        timer_ev_created = 1;
    }
    cudaCheck(cudaEventRecord(timer_ev[0], cudaStreamPerThread));
}
extern "C" double ttt_cuda_timer_stop_ms(void) {
    float ms = 0.0f;
    cudaCheck(cudaEventRecord(timer_ev[1], cudaStreamPerThread));
    cudaCheck(cudaEventSynchronize(timer_ev[1]));
    cudaCheck(cudaEventElapsedTime(&ms, timer_ev[0], timer_ev[1]));
    return ms;
}

static int graphs_on = -1;
extern "C" void ttt_cuda_set_graphs(int on) { graphs_on = on != 0; }
static int graphs_enabled(void) {
    if (graphs_on < 0) {
        const char* g = getenv("TTT_GRAPHS");
        graphs_on = !(g && g[0] == '0');
    }
    return graphs_on && !prof_level() && !stage_timing_enabled();
}

extern "C" void ttt_cuda_graph_free(DeviceGraph* g) {
    if (g->exec) cudaCheck(cudaGraphExecDestroy((cudaGraphExec_t)g->exec));
    g->exec = NULL;
}

extern "C" int ttt_cuda_graph_replay(DeviceGraph* g) {
    if (g->exec == NULL || !graphs_enabled()) return 0;
    if (g->workspace_epoch != workspace_epoch) {   // a buffer it reads has moved: record again
        ttt_cuda_graph_free(g);
        g->calls = 0;
        return 0;
    }
    cudaCheck(cudaGraphLaunch((cudaGraphExec_t)g->exec, cudaStreamPerThread));
    gemm_flop_count += g->flops;
    return 1;
}

extern "C" void ttt_cuda_graph_begin(DeviceGraph* g) {
    g->calls++;
    g->capturing = 0;
    if (g->calls < 2 || !graphs_enabled() || graph_capturing) return;   // first call: eager
    g->flops = gemm_flop_count;
    cudaCheck(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal));
    graph_capturing = 1;
    g->capturing = 1;
}

extern "C" void ttt_cuda_graph_end(DeviceGraph* g) {
    if (!g->capturing) return;
    cudaGraph_t graph;
    cudaCheck(cudaStreamEndCapture(cudaStreamPerThread, &graph));
    graph_capturing = 0;
    g->capturing = 0;
    cudaGraphExec_t exec;
    cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
    cudaCheck(cudaGraphDestroy(graph));
    g->exec = (void*)exec;
    g->flops = gemm_flop_count - g->flops;   // the matrix products counted while recording
    g->workspace_epoch = workspace_epoch;
    cudaCheck(cudaGraphLaunch(exec, cudaStreamPerThread));   // recording did not run the work
}
