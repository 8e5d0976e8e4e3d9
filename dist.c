// dist.c: several GPUs through NCCL: launching one process per GPU, the NCCL communicator, the
// gradient all-reduce that mae.c's steps call (model_set_data_parallel), and a supervisor that
// stops every rank when one fails. The design is in ttt.h (DATA PARALLEL).
//
// Built without NCCL (TTT_NCCL undefined: no nccl.h found, NO_CUDA=1 or NO_NCCL=1), the process
// plumbing (dist_spawn) still compiles and is tested on the CPU; --gpus N > 1 dies with one line.
//
// Why fork before any CUDA call: a process that has initialised CUDA cannot hand a working CUDA
// to a forked child, so the parent never touches CUDA (the GPU count is read by a short-lived
// probe child) and each rank selects its GPU first thing after the fork. OpenMP likewise: the
// launch comes before any parallel region.
#include "ttt.h"
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef TTT_NCCL
#include <nccl.h>
#endif

#define DIST_MAX_RANKS 1024

static int g_rank = 0, g_world = 1, g_local_rank = 0;
// dist_spawn: a pipe from rank 0 to each other rank (the NCCL id travels through it)
static int g_to_rank[DIST_MAX_RANKS];   // rank 0: write ends, index = rank (0 unused)
static int g_from_root = -1;            // rank > 0: the read end of its pipe

int dist_rank(void) { return g_rank; }
int dist_world(void) { return g_world; }
int is_main_rank(void) { return g_rank == 0; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// seconds a rank waits for the others before it gives up (TTT_NCCL_TIMEOUT, default 600)
static double dist_timeout(void) {
    const char* s = getenv("TTT_NCCL_TIMEOUT");
    if (s == NULL || *s == 0) return 600.0;
    char* end;
    double t = strtod(s, &end);
    if (*end != 0 || !(t > 0.0)) ttt_die("TTT_NCCL_TIMEOUT must be a number of seconds > 0, got '%s'", s);
    return t;
}

// ----------------------------------------------------------------------------
// process plumbing: fork the ranks, supervise them

static pid_t child_pid[DIST_MAX_RANKS];
static FILE* child_err[DIST_MAX_RANKS];   // stderr of ranks > 0 (unlinked temporary files)
static int rank0_err = -1;                // read end of rank 0's stderr (forwarded live)
#define TAIL_BYTES 8192
static char rank0_tail[TAIL_BYTES + 1];   // the last bytes rank 0 wrote to stderr
static size_t rank0_tail_n = 0;

// forward what rank 0 wrote to stderr, keeping its tail; returns 0 at end of file
static int forward_rank0_stderr(void) {
    char buf[4096];
    ssize_t n = read(rank0_err, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) return 1;
    if (n <= 0) { close(rank0_err); rank0_err = -1; return 0; }
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
    if (rank0_tail_n + n > TAIL_BYTES) {   // n <= 4096 < TAIL_BYTES: drop the oldest bytes
        size_t drop = rank0_tail_n + n - TAIL_BYTES;
        memmove(rank0_tail, rank0_tail + drop, rank0_tail_n - drop);
        rank0_tail_n -= drop;
    }
    memcpy(rank0_tail + rank0_tail_n, buf, (size_t)n);
    rank0_tail_n += n;
    rank0_tail[rank0_tail_n] = 0;
    return 1;
}

// 1 if rank 0 wrote this exact line to stderr lately
static int rank0_said(const char* line) {
    size_t n = strlen(line);
    for (const char* p = rank0_tail; (p = strstr(p, line)) != NULL; p++)
        if ((p == rank0_tail || p[-1] == '\n') && (p[n] == '\n' || p[n] == 0)) return 1;
    return 0;
}

// rank r's last lines of stderr (at most max_lines) that rank 0 did not print itself, each
// prefixed "rank r: "; returns how many were printed
static int print_rank_stderr(int r, int max_lines) {
    if (child_err[r] == NULL) return 0;
    int fd = fileno(child_err[r]);
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0) return 0;
    size_t keep = size > TAIL_BYTES ? TAIL_BYTES : (size_t)size;
    char* buf = (char*)mallocCheck(keep + 1);
    ssize_t got = pread(fd, buf, keep, size - (off_t)keep);
    if (got <= 0) { free(buf); return 0; }
    buf[got] = 0;
    char* end = buf + got;
    if (end > buf && end[-1] == '\n') *--end = 0;
    char* start = end;
    int lines = 0, printed = 0;
    while (start > buf && !(start[-1] == '\n' && ++lines == max_lines)) start--;
    for (char* line = start; line && *line;) {
        char* nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line && !rank0_said(line)) { fprintf(stderr, "rank %d: %s\n", r, line); printed++; }
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    return printed;
}

static void describe_status(char* out, size_t n, int status) {
    if (WIFEXITED(status)) snprintf(out, n, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status)) snprintf(out, n, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else snprintf(out, n, "stopped (status %d)", status);
}

// The supervisor: forwards rank 0's stderr and reaps the ranks. On the first failure it gives
// the others 2 s to end on their own (the same bad input stops every rank), then SIGTERM, 10 s
// later SIGKILL. Exits 0 when every rank exited 0, else 1. What it prints: nothing more when
// rank 0 stopped with an error of its own and the failed rank said nothing else (a bad input:
// rank 0's one line); otherwise the failed rank's last lines and one line naming it.
static void supervise(int world) {
    int alive = world, failed = -1, fail_status = 0, stopped = 0, status0 = 0;
    double t_fail = 0.0;
    while (alive > 0 || rank0_err >= 0) {
        if (rank0_err >= 0) {
            struct pollfd pf = {rank0_err, POLLIN, 0};
            int ready = poll(&pf, 1, 50) > 0;
            if (ready) forward_rank0_stderr();
            if (alive == 0) { if (ready) continue; break; }   // drain what rank 0 left in the pipe
        } else {
            usleep(50000);
        }
        for (;;) {   // reap every rank that has ended
            int status;
            pid_t p = waitpid(-1, &status, WNOHANG);
            if (p <= 0) break;
            int r = 0;
            while (r < world && child_pid[r] != p) r++;
            if (r == world) continue;
            child_pid[r] = 0;
            alive--;
            if (r == 0) status0 = status;
            if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && failed < 0) {
                failed = r; fail_status = status; t_fail = now_seconds();
            }
        }
        if (failed >= 0 && alive > 0) {   // stop the others, on time
            double el = now_seconds() - t_fail;
            if (stopped == 0 && el > 2.0) {
                for (int r = 0; r < world; r++) if (child_pid[r] > 0) kill(child_pid[r], SIGTERM);
                stopped = 1;
            } else if (stopped == 1 && el > 12.0) {
                for (int r = 0; r < world; r++) if (child_pid[r] > 0) kill(child_pid[r], SIGKILL);
                stopped = 2;
            }
        }
    }
    if (failed < 0) exit(0);
    fflush(stdout);
    int rank0_own_error = WIFEXITED(status0) && WEXITSTATUS(status0) != 0;   // it printed why
    int said = failed > 0 ? print_rank_stderr(failed, 12) : 0;
    if (!rank0_own_error || said > 0 || (failed > 0 && !WIFEXITED(fail_status))) {
        char how[96];
        describe_status(how, sizeof(how), fail_status);
        fprintf(stderr, "error: rank %d of %d (GPU %d) %s; the other ranks were stopped\n", failed, world, failed, how);
    }
    exit(1);
}

int dist_spawn(int world) {
    if (world < 2 || world > DIST_MAX_RANKS) ttt_die("dist_spawn: %d ranks (2..%d)", world, DIST_MAX_RANKS);
    int from_root[DIST_MAX_RANKS][2], err0[2];
    if (pipe(err0) != 0) ttt_die("cannot create a pipe: %s", strerror(errno));
    for (int r = 1; r < world; r++) {
        if (pipe(from_root[r]) != 0) ttt_die("cannot create a pipe for rank %d: %s", r, strerror(errno));
        child_err[r] = tmpfile();
        if (child_err[r] == NULL) ttt_die("cannot create a temporary file for rank %d's messages: %s", r, strerror(errno));
    }
    pid_t parent = getpid();
    fflush(NULL);   // nothing buffered may be printed twice
    for (int r = 0; r < world; r++) {
        pid_t p = fork();
        if (p < 0) {
            for (int q = 0; q < r; q++) kill(child_pid[q], SIGKILL);
            ttt_die("cannot start rank %d: fork: %s", r, strerror(errno));
        }
        if (p == 0) {   // rank r
            prctl(PR_SET_PDEATHSIG, SIGTERM);   // the supervisor gone: stop too
            if (getppid() != parent) _exit(1);
            g_rank = r; g_world = world; g_local_rank = r;
            for (int q = 1; q < world; q++) {
                if (r == 0) { close(from_root[q][0]); g_to_rank[q] = from_root[q][1]; }
                else {
                    close(from_root[q][1]);
                    if (q == r) g_from_root = from_root[q][0]; else close(from_root[q][0]);
                }
            }
            close(err0[0]);
            if (r == 0) dup2(err0[1], STDERR_FILENO);
            else {   // quiet: rank 0 prints; errors go to the supervisor
                int null_fd = open("/dev/null", O_WRONLY);
                if (null_fd >= 0) { dup2(null_fd, STDOUT_FILENO); close(null_fd); }
                dup2(fileno(child_err[r]), STDERR_FILENO);
            }
            close(err0[1]);
#ifdef _OPENMP
            // the ranks share the node's cores (host work: decoding, the set loss)
            if (getenv("OMP_NUM_THREADS") == NULL) {
                int n = omp_get_num_procs() / world;
                omp_set_num_threads(n > 0 ? n : 1);
            }
#endif
            return r;
        }
        child_pid[r] = p;
    }
    for (int r = 1; r < world; r++) { close(from_root[r][0]); close(from_root[r][1]); }
    close(err0[1]);
    rank0_err = err0[0];
    supervise(world);
    return -1;   // not reached
}

// ----------------------------------------------------------------------------
// NCCL

#ifdef TTT_NCCL
#include <cuda_runtime_api.h>

static ncclComm_t g_comm = NULL;
// NCCL's own stream. Not the per-thread default stream of the model's kernels: a non-blocking
// communicator launches from a thread of NCCL's, where cudaStreamPerThread would name that
// thread's stream. Order is kept by the host: the device is synchronised before every
// all-reduce, and the all-reduce has finished (polled) before the model goes on.
static cudaStream_t g_stream = NULL;
static uint64_t* g_hash_buf = NULL;   // device scratch of dist_check_same_weights
static long g_allreduce_calls = 0;

int dist_nccl_built(void) { return 1; }

// a failure of the communicator: one line, then abort it (an abort that hangs on a dead peer
// is ended by the alarm 30 s later) and exit 1
static void nccl_fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(NULL);
    alarm(30);
    if (g_comm) ncclCommAbort(g_comm);
    exit(1);
}

// waits for the communicator's pending work (init, or a group just ended) to be queued, then,
// when `stream_too`, for the stream to finish it; aborts and dies after the timeout or on error
static void nccl_wait(const char* what, int stream_too) {
    double t0 = now_seconds(), limit = dist_timeout();
    for (;;) {
        ncclResult_t async;
        ncclResult_t r = ncclCommGetAsyncError(g_comm, &async);
        if (r != ncclSuccess) async = r;
        if (async != ncclSuccess && async != ncclInProgress)
            nccl_fail("rank %d: NCCL %s failed: %s (another rank may have died)", g_rank, what, ncclGetErrorString(async));
        if (async == ncclSuccess) {
            if (!stream_too) return;
            cudaError_t q = cudaStreamQuery(g_stream);
            if (q == cudaSuccess) return;
            if (q != cudaErrorNotReady) nccl_fail("rank %d: CUDA error during NCCL %s: %s", g_rank, what, cudaGetErrorString(q));
        }
        if (now_seconds() - t0 > limit)
            nccl_fail("rank %d of %d: NCCL %s did not complete within %.0f s: another rank died or hangs "
                      "(TTT_NCCL_TIMEOUT sets the limit)", g_rank, g_world, what, limit);
        usleep(20);
    }
}

static void nccl_check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress) nccl_fail("rank %d: NCCL %s: %s", g_rank, what, ncclGetErrorString(r));
}

// TTT_DIST_FAULT=R:K: rank R kills itself as it enters its K-th all-reduce (tests of a dead rank)
static void maybe_fault(void) {
    const char* s = getenv("TTT_DIST_FAULT");
    int r, k;
    if (s == NULL || sscanf(s, "%d:%d", &r, &k) != 2) return;
    if (r == g_rank && g_allreduce_calls == k) {
        fprintf(stderr, "rank %d: TTT_DIST_FAULT: killing this process at all-reduce %d\n", g_rank, k);
        fflush(stderr);
        raise(SIGKILL);
    }
}

// DataParallelSum through NCCL: one group of in-place float32 sums on g_stream, after the
// model's work has finished, waited for with the timeout
static void nccl_sum(float* const* bufs, const size_t* counts, int n_bufs, void* ctx) {
    (void)ctx;
    g_allreduce_calls++;
    maybe_fault();
    ttt_synchronize();   // the backward has finished: the timeout measures the wait for the others
    nccl_check(ncclGroupStart(), "group start");
    for (int i = 0; i < n_bufs; i++)
        nccl_check(ncclAllReduce(bufs[i], bufs[i], counts[i], ncclFloat, ncclSum, g_comm, g_stream),
                   "all-reduce");
    nccl_check(ncclGroupEnd(), "group end");
    nccl_wait("gradient all-reduce", 1);
}

// the NCCL id from rank 0: through the pipes of dist_spawn, or a shared file (launchers)
static void id_from_pipe(ncclUniqueId* id) {
    if (g_rank == 0) {
        void (*old_handler)(int) = signal(SIGPIPE, SIG_IGN);   // a dead reader: EPIPE, not a silent death
        for (int r = 1; r < g_world; r++) {
            ssize_t w = write(g_to_rank[r], id, sizeof(*id));   // the supervisor reports that rank
            (void)w;
            close(g_to_rank[r]);
        }
        signal(SIGPIPE, old_handler);
        return;
    }
    size_t got = 0;
    double t0 = now_seconds(), limit = dist_timeout();
    while (got < sizeof(*id)) {
        struct pollfd pf = {g_from_root, POLLIN, 0};
        int left_ms = (int)((limit - (now_seconds() - t0)) * 1000.0);
        if (left_ms <= 0) ttt_die("rank %d: no NCCL id from rank 0 within %.0f s", g_rank, limit);
        int pr = poll(&pf, 1, left_ms);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t n = read(g_from_root, (char*)id + got, sizeof(*id) - got);
        if (n == 0) ttt_die("rank %d: rank 0 exited before it sent the NCCL id", g_rank);
        if (n < 0) { if (errno == EINTR) continue; ttt_die("rank %d: reading the NCCL id: %s", g_rank, strerror(errno)); }
        got += (size_t)n;
    }
    close(g_from_root);
}

#define ID_MAGIC "ttt-nccl-id 1"
static void id_from_file(ncclUniqueId* id, const char* path, const char* token) {
    if (g_rank == 0) {
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
        FILE* fp = fopen(tmp, "wb");
        if (fp == NULL) ttt_die("cannot write the NCCL id file '%s': %s", tmp, strerror(errno));
        fprintf(fp, "%s %s\n", ID_MAGIC, token);
        fwriteCheck(id, sizeof(*id), 1, fp);
        if (fclose(fp) != 0 || rename(tmp, path) != 0) ttt_die("cannot write the NCCL id file '%s': %s", path, strerror(errno));
        return;
    }
    char want[512];
    snprintf(want, sizeof(want), "%s %s\n", ID_MAGIC, token);
    double t0 = now_seconds(), limit = dist_timeout();
    for (;;) {   // an older run's file (another token) is waited past
        FILE* fp = fopen(path, "rb");
        if (fp) {
            char line[512];
            int ok = fgets(line, sizeof(line), fp) && !strcmp(line, want) && fread(id, sizeof(*id), 1, fp) == 1;
            fclose(fp);
            if (ok) return;
        }
        if (now_seconds() - t0 > limit)
            ttt_die("rank %d: no NCCL id for run '%s' in '%s' within %.0f s (is rank 0 running, and the file on a "
                    "filesystem every node sees?)", g_rank, token, path, limit);
        usleep(100000);
    }
}

static void nccl_init(const char* id_file, const char* token) {
    cudaError_t ce = cudaSetDevice(g_local_rank);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    if (ce != cudaSuccess) ttt_die("rank %d: cannot use GPU %d: %s", g_rank, g_local_rank, cudaGetErrorString(ce));
    ncclUniqueId id;
    if (g_rank == 0) nccl_check(ncclGetUniqueId(&id), "unique id");
    if (id_file) id_from_file(&id, id_file, token); else id_from_pipe(&id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;   // init and collectives return at once; nccl_wait polls with a timeout
    nccl_check(ncclCommInitRankConfig(&g_comm, g_world, id, g_rank, &config), "init");
    nccl_wait("init (all ranks joining)", 0);
    if (id_file && g_rank == 0) remove(id_file);   // every rank has joined, so every rank has read it
    int version = 0;
    ncclGetVersion(&version);
    printf("dist: %d ranks, NCCL %d.%d.%d, rank 0 on GPU %d; the batch of every gradient step is split over the ranks\n",
           g_world, version / 10000, version / 100 % 100, version % 100, g_local_rank);
    fflush(stdout);
}

void dist_check_same_weights(const Model* m, const char* when) {
    if (g_world == 1) return;
    uint64_t h[6];
    for (int p = 0; p < 3; p++) h[p] = h[p + 3] = model_param_hash(m, p);
    if (g_hash_buf == NULL && cudaMalloc((void**)&g_hash_buf, sizeof(h)) != cudaSuccess)
        ttt_die("rank %d: cannot allocate 48 bytes of GPU memory", g_rank);
    if (cudaMemcpy(g_hash_buf, h, sizeof(h), cudaMemcpyHostToDevice) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
        ttt_die("rank %d: cudaMemcpy", g_rank);   // (a copy from pageable memory may return before it lands)
    nccl_check(ncclGroupStart(), "group start");
    nccl_check(ncclAllReduce(g_hash_buf, g_hash_buf, 3, ncclUint64, ncclMax, g_comm, g_stream), "max");
    nccl_check(ncclAllReduce(g_hash_buf + 3, g_hash_buf + 3, 3, ncclUint64, ncclMin, g_comm, g_stream), "min");
    nccl_check(ncclGroupEnd(), "group end");
    nccl_wait("weight check", 1);
    uint64_t r[6];
    if (cudaMemcpy(r, g_hash_buf, sizeof(r), cudaMemcpyDeviceToHost) != cudaSuccess) ttt_die("rank %d: cudaMemcpy", g_rank);
    for (int p = 0; p < 3; p++)
        if (r[p] != r[p + 3])
            ttt_die("rank %d: the ranks' weights of %s differ %s (hashes %016llx .. %016llx); this rank's %016llx",
                    g_rank, p == 0 ? "f" : p == 1 ? "h" : "g", when, (unsigned long long)r[p + 3],
                    (unsigned long long)r[p], (unsigned long long)h[p]);
    if (g_rank == 0) {
        printf("dist: weights identical on all %d ranks %s (f %016llx h %016llx g %016llx)\n", g_world, when,
               (unsigned long long)h[0], (unsigned long long)h[1], (unsigned long long)h[2]);
        fflush(stdout);
    }
}

void dist_attach(Model* m) {
    if (g_world == 1) return;
    if (ttt_device != DEVICE_CUDA) ttt_die("data parallel runs on GPUs (--device cuda)");
    model_set_data_parallel(m, g_rank, g_world, nccl_sum, NULL);
    dist_check_same_weights(m, "at the start");
}

// the number of GPUs, read in a child process so that this one stays free of CUDA
static int probe_gpu_count(void) {
    int fd[2];
    if (pipe(fd) != 0) ttt_die("cannot create a pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t p = fork();
    if (p < 0) ttt_die("cannot fork: %s", strerror(errno));
    if (p == 0) {
        close(fd[0]);
        int n = ttt_cuda_device_count();
        ssize_t w = write(fd[1], &n, sizeof(n));
        _exit(w == (ssize_t)sizeof(n) ? 0 : 1);
    }
    close(fd[1]);
    int n = 0;
    ssize_t got = read(fd[0], &n, sizeof(n));
    close(fd[0]);
    int status;
    waitpid(p, &status, 0);
    return got == (ssize_t)sizeof(n) ? n : 0;
}

#else   // built without NCCL

int dist_nccl_built(void) { return 0; }
void dist_check_same_weights(const Model* m, const char* when) { (void)m; (void)when; }
void dist_attach(Model* m) { (void)m; }

#endif

// ----------------------------------------------------------------------------
// launch

// an integer from the first of two environment variables that is set; -1 if neither
static int env_int(const char* a, const char* b) {
    const char* s = getenv(a);
    if (s == NULL || *s == 0) s = b ? getenv(b) : NULL;
    if (s == NULL || *s == 0) return -1;
    char* end;
    long v = strtol(s, &end, 10);
    if (*end != 0 || v < 0 || v > 1000000) ttt_die("environment: '%s' is not a rank or a size", s);
    return (int)v;
}

void dist_launch(int gpus, const char* device) {
    if (gpus < 1 || gpus > DIST_MAX_RANKS) ttt_die("--gpus must be in 1..%d, got %d", DIST_MAX_RANKS, gpus);
    int env_world = env_int("TTT_WORLD", "OMPI_COMM_WORLD_SIZE");
    int launched = env_world > 1;   // the processes were started by a launcher (mpirun, ...)
    if (gpus == 1 && !launched) return;
    if (launched && gpus > 1)
        ttt_die("--gpus %d with a launcher's %d processes (TTT_WORLD / OMPI_COMM_WORLD_SIZE): each process is one "
                "rank on one GPU; leave --gpus out", gpus, env_world);
    int world = launched ? env_world : gpus;
    char what[64];   // what asked for several ranks, for the messages
    if (launched) snprintf(what, sizeof(what), "%d processes (TTT_WORLD / OMPI_COMM_WORLD_SIZE)", world);
    else snprintf(what, sizeof(what), "--gpus %d", gpus);
    if (device && !strcmp(device, "cpu")) ttt_die("%s: one process per GPU; it cannot run with --device cpu", what);
#ifndef TTT_NCCL
    ttt_die("%s: this build has no NCCL (built without CUDA, with NO_NCCL=1, or no nccl.h found; see README, Several GPUs)", what);
#else
    setenv("NCCL_NVLS_ENABLE", "0", 1);   // NVLink multicast (NVLS) stays off
    const char* id_file = NULL;
    const char* token = NULL;
    if (launched) {
        g_world = world;
        g_rank = env_int("TTT_RANK", "OMPI_COMM_WORLD_RANK");
        g_local_rank = env_int("TTT_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK");
        if (g_rank < 0 || g_rank >= world) ttt_die("rank %d of %d: set TTT_RANK (0..TTT_WORLD-1)", g_rank, world);
        if (g_local_rank < 0) g_local_rank = g_rank;
        id_file = getenv("TTT_NCCL_ID_FILE");
        if (id_file == NULL || *id_file == 0)
            ttt_die("%d processes: set TTT_NCCL_ID_FILE to a path every node sees (rank 0 writes the NCCL id there)", world);
        token = getenv("TTT_RUN_ID");
        if (token == NULL || *token == 0) token = getenv("PMIX_NAMESPACE");
        if (token == NULL || *token == 0)
            ttt_die("%d processes: set TTT_RUN_ID to a value of this run on every rank (e.g. mpirun -x TTT_RUN_ID=$(date +%%s))", world);
        if (strlen(token) > 256 || strchr(token, '\n')) ttt_die("TTT_RUN_ID is too long or has a newline");
        int n = ttt_cuda_device_count();
        if (g_local_rank >= n) ttt_die("rank %d: local rank %d but this node has %d GPU(s) visible", g_rank, g_local_rank, n);
        if (g_rank > 0) {   // quiet: rank 0 prints
            int null_fd = open("/dev/null", O_WRONLY);
            if (null_fd >= 0) { dup2(null_fd, STDOUT_FILENO); close(null_fd); }
        }
    } else {
        int n = probe_gpu_count();
        if (n < gpus) {
            const char* vis = getenv("CUDA_VISIBLE_DEVICES");
            ttt_die("--gpus %d: only %d CUDA GPU(s) visible%s%s%s", gpus, n, vis ? " (CUDA_VISIBLE_DEVICES=" : "",
                    vis ? vis : "", vis ? ")" : "");
        }
        dist_spawn(gpus);
    }
    nccl_init(id_file, token);
#endif
}
