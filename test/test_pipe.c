// test/test_pipe.c: ./stream on raw rgb24 frames from standard input (./stream - --size WxH),
// the way `ffmpeg -i VIDEO -f rawvideo -pix_fmt rgb24 - | ./stream - ...` feeds it; no ffmpeg
// needed: the raw frames are written here, from a generated video.
//   - the frames of a pipe give bit for bit the predictions and overlays of a folder holding the
//     same frames as frame000001.png, ... (the names seed the TTT randomness);
//   - --out-raw - writes exactly the overlays on standard output, every log line on stderr;
//     --out-raw FILE the same bytes;
//   - a partial last frame: exit 1 with one error line, after the whole frames were written
//     out (and listed in metrics.json); an empty input is an error too;
//   - input faster than the model: every frame processed (none dropped), the producer blocked
//     on the pipe (its last write returns only after the model worked through most frames),
//     and the summary says so; input slower than the model: the summary says the model waited;
//   - SIGINT ends after the current frame with the metrics of the frames done (exit 130);
//     SIGKILL mid-run leaves a metrics.json of the frames done (written as the run goes);
//   - the reader of --out-raw closing it ends the run cleanly after that frame;
//   - options that need every frame up front (offline, shuffle, kstar, a window list), labels,
//     and a missing or misplaced --size are refused with one error line.
#define _GNU_SOURCE   // F_SETPIPE_SZ
#include "test.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define TMP "test/tmp"
#define VID TMP "/pp_video"
#define MODEL TMP "/pp_tiny.bin"
#define NF 4
#define FW 40
#define FH 32
#define COMMON "--model " MODEL " --device cpu --batch 2 --window 2 --lr 1e-2"

// frames listed in a metrics.json (-1 when it is missing or its brackets do not balance)
static int metrics_frames(const char* dir) {
    char p[512];
    snprintf(p, sizeof(p), "%s/metrics.json", dir);
    char* js = read_file(p, NULL);
    int depth = 0, ok = js[0] == '{';
    for (char* c = js; *c; c++) {
        if (*c == '{' || *c == '[') depth++;
        if (*c == '}' || *c == ']') depth--;
        if (depth < 0) ok = 0;
    }
    int n = ok && depth == 0 ? count_substr(js, "\"index\":") : -1;
    free(js);
    return n;
}

// the raw rgb24 bytes of frame t (1-based) of the generated video
static unsigned char* raw_frame(int t, int* H, int* W) {
    char p[256];
    snprintf(p, sizeof(p), VID "/frame%06d.png", t);
    float* x = image_load(p, H, W);
    size_t n = (size_t)*H * *W * 3;
    unsigned char* b = (unsigned char*)mallocCheck(n);
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)lrintf(x[i] * 255.0f);
    free(x);
    return b;
}

static void write_all(int fd, const unsigned char* b, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, b + done, n - done);
        if (w <= 0) { if (w < 0 && errno == EINTR) continue; break; }
        done += (size_t)w;
    }
}

// ./stream ARGS with standard input from a pipe (*in_fd: its write end), stdout and stderr to
// files (stdout_path may be NULL: with stderr), or stdout into a pipe (*out_fd) when out_fd is given
static pid_t spawn_stream(const char* args, int* in_fd, const char* stdout_path, const char* stderr_path, int* out_fd) {
    int in[2], out[2] = {-1, -1};
    if (pipe(in) != 0) return -1;
    if (out_fd && pipe(out) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        close(in[0]); close(in[1]);
        int e = open(stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(e, 2); close(e);
        if (out_fd) { dup2(out[1], 1); close(out[0]); close(out[1]); }
        else if (stdout_path) { int o = open(stdout_path, O_WRONLY | O_CREAT | O_TRUNC, 0644); dup2(o, 1); close(o); }
        else dup2(2, 1);
        char cmd[4096];
        snprintf(cmd, sizeof(cmd), "exec ./stream %s", args);
        execl("/bin/sh", "sh", "-c", cmd, (char*)NULL);
        _exit(127);
    }
    close(in[0]);
    *in_fd = in[1];
    if (out_fd) { close(out[1]); *out_fd = out[0]; }
    return pid;
}

static int wait_status(pid_t pid, int* signaled) {
    int st;
    waitpid(pid, &st, 0);
    if (signaled) *signaled = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// wait until DIR/metrics.json lists n frames (polls for at most 30 s); 1 when it does
static int wait_metrics(const char* dir, int n) {
    for (int i = 0; i < 3000; i++) {
        if (metrics_frames(dir) >= n) return 1;
        usleep(10000);
    }
    return 0;
}

static void expect_refusal(const char* what, const char* args, const char* needle) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "./stream %s < " TMP "/pp_all.rgb > " TMP "/pp_log.txt 2>&1", args);
    int rc = run(cmd);
    char* log = read_file(TMP "/pp_log.txt", NULL);
    int ok = rc == 1 && strncmp(log, "error:", 6) == 0 && count_substr(log, "\n") == 1 && strstr(log, needle);
    printf("%-4s refused: %-36s -> %s", ok ? "ok" : "FAIL", what, log);
    if (ok) tests_passed++; else { tests_failed++; printf("\n(exit %d)\n", rc); }
    free(log);
}

int main(void) {
    if (run("mkdir -p " TMP " && rm -rf " TMP "/pp_*") != 0) return 1;
    CHECK(run("./gen video " VID " --frames 4 --size 40x32 --seed 5 >/dev/null") == 0, "gen failed");
    ModelConfig cfg = model_config_tiny(8);
    Model* m = model_create(&cfg, 2, FH, FW);
    model_init_random(m, 1);
    model_save(m, MODEL);
    model_free(m);
    size_t fbytes = (size_t)FH * FW * 3;
    unsigned char* frames[NF];
    FILE* fp = fopen(TMP "/pp_all.rgb", "wb");
    for (int t = 0; t < NF; t++) {
        int H, W;
        frames[t] = raw_frame(t + 1, &H, &W);
        CHECK(H == FH && W == FW, "frame size %dx%d", W, H);
        fwrite(frames[t], 1, fbytes, fp);
    }
    fclose(fp);
    char args[4096];

    // 1. a pipe gives bit for bit what the folder of the same frames gives
    CHECK(run("./stream " VID " " COMMON " --out " TMP "/pp_folder >/dev/null 2>&1") == 0, "folder run failed");
    CHECK(run("./stream - --size 40x32 " COMMON " --out " TMP "/pp_pipe < " TMP "/pp_all.rgb > " TMP "/pp_log.txt 2>&1") == 0,
          "pipe run failed");
    int same = 1;
    for (int t = 1; t <= NF; t++) {
        char a[512], b[512], cmd[1200];
        for (int k = 0; k < 2; k++) {
            snprintf(a, sizeof(a), TMP "/pp_pipe/frame%06d%s.png", t, k ? "_overlay" : "");
            snprintf(b, sizeof(b), TMP "/pp_folder/frame%06d%s.png", t, k ? "_overlay" : "");
            snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
            same &= run(cmd) == 0;
        }
    }
    char* log = read_file(TMP "/pp_log.txt", NULL);
    CHECK(same, "the predictions from the pipe differ from those of the folder of the same frames");
    CHECK(strstr(log, "frame    4 frame000004.png") && strstr(log, "input: 4 frames from standard input") &&
          metrics_frames(TMP "/pp_pipe") == NF, "pipe run: frame lines, input summary or metrics.json missing:\n%s", log);
    if (same) printf("ok   4 raw frames from a pipe = the folder of the same frames, bit for bit (predictions, overlays)\n");
    free(log);

    // 2. --out-raw -: standard output holds exactly the overlays; the log is on stderr
    CHECK(run("./stream - --size 40x32 " COMMON " --out " TMP "/pp_raw --out-raw - < " TMP "/pp_all.rgb > " TMP
              "/pp_raw.rgb 2> " TMP "/pp_err.txt") == 0, "--out-raw - run failed");
    size_t n_raw;
    unsigned char* raw = (unsigned char*)read_file(TMP "/pp_raw.rgb", &n_raw);
    int raw_ok = n_raw == NF * fbytes;
    for (int t = 1; t <= NF && raw_ok; t++) {
        char p[256];
        int H, W;
        snprintf(p, sizeof(p), TMP "/pp_raw/frame%06d_overlay.png", t);
        float* ov = image_load(p, &H, &W);
        for (size_t i = 0; i < fbytes && raw_ok; i++) raw_ok = raw[(t - 1) * fbytes + i] == (unsigned char)lrintf(ov[i] * 255.0f);
        free(ov);
    }
    log = read_file(TMP "/pp_err.txt", NULL);
    CHECK(raw_ok, "--out-raw -: %zu bytes on stdout (want %zu), or they differ from the overlay PNGs", n_raw, NF * fbytes);
    CHECK(strstr(log, "summary: 4 frames") && strstr(log, "frame    1 "), "--out-raw -: the log is not on stderr");
    if (raw_ok) printf("ok   --out-raw -: stdout is exactly the 4 overlays (%zu bytes), the log on stderr\n", n_raw);
    free(log);
    // --out-raw FILE: the same bytes
    CHECK(run("./stream - --size 40x32 " COMMON " --out " TMP "/pp_raw2 --out-raw " TMP "/pp_raw2.rgb < " TMP
              "/pp_all.rgb > /dev/null 2>&1") == 0, "--out-raw FILE run failed");
    size_t n_raw2;
    char* raw2 = read_file(TMP "/pp_raw2.rgb", &n_raw2);
    CHECK(n_raw2 == n_raw && memcmp(raw, raw2, n_raw) == 0, "--out-raw FILE differs from --out-raw -");
    free(raw); free(raw2);

    // 3. a partial last frame: the whole frames are done and written, then one error line, exit 1
    fp = fopen(TMP "/pp_partial.rgb", "wb");
    fwrite(frames[0], 1, fbytes, fp); fwrite(frames[1], 1, fbytes, fp); fwrite(frames[2], 1, fbytes / 2, fp);
    fclose(fp);
    int rc = run("./stream - --size 40x32 " COMMON " --out " TMP "/pp_partial < " TMP "/pp_partial.rgb > " TMP "/pp_log.txt 2>&1");
    log = read_file(TMP "/pp_log.txt", NULL);
    const char* err = strstr(log, "error:");
    CHECK(rc == 1 && err && strstr(err, "into frame 3") && count_substr(err, "\n") == 1 && count_substr(log, "error:") == 1,
          "partial frame: exit %d, log:\n%s", rc, log);
    CHECK(metrics_frames(TMP "/pp_partial") == 2 && access(TMP "/pp_partial/frame000002_overlay.png", F_OK) == 0 &&
          access(TMP "/pp_partial/frame000003.png", F_OK) != 0 && access(TMP "/pp_partial/metrics.png", F_OK) == 0,
          "partial frame: the 2 whole frames are not all written out (metrics.json lists %d)", metrics_frames(TMP "/pp_partial"));
    printf("%-4s a partial last frame -> %s", rc == 1 ? "ok" : "FAIL", err ? err : "(no error)\n");
    free(log);
    rc = run("./stream - --size 40x32 " COMMON " --out " TMP "/pp_empty < /dev/null > " TMP "/pp_log.txt 2>&1");
    log = read_file(TMP "/pp_log.txt", NULL);
    CHECK(rc == 1 && strstr(log, "error: standard input ended before the first frame"), "empty input: exit %d\n%s", rc, log);
    free(log);

    // 4. input faster than the model: the producer blocks on the pipe, nothing is dropped. Frames of
    // 96x96 (27648 bytes) and a pipe of 64 KiB: the producer's last write (frame 8) can return
    // only once the model has read frame 6, i.e. after it processed frames 1..5
    {
        const int N = 8, BW = 96, BH = 96;
        size_t bb = (size_t)BW * BH * 3;
        unsigned char* big = (unsigned char*)mallocCheck(bb);
        Rng r;
        rng_seed(&r, 3);
        int in_fd;
        snprintf(args, sizeof(args), "- --size 96x96 " COMMON " --steps 2 --out " TMP "/pp_fast");
        double t0 = time_now_seconds();
        pid_t pid = spawn_stream(args, &in_fd, NULL, TMP "/pp_fast.txt", NULL);
        int pipe_size = fcntl(in_fd, F_SETPIPE_SZ, 65536);
        for (int t = 0; t < N; t++) {
            for (size_t i = 0; i < bb; i++) big[i] = (unsigned char)rng_int(&r, 256);
            write_all(in_fd, big, bb);
        }
        double t_written = time_now_seconds() - t0;   // when the last write returned
        close(in_fd);
        rc = wait_status(pid, NULL);
        free(big);
        log = read_file(TMP "/pp_fast.txt", NULL);
        double ms_first5 = 0.0;   // the model's time on frames 1..5 (TTT + predict), from the log
        int lines = 0;
        for (const char* p = strstr(log, "\nframe "); p; p = strstr(p + 1, "\nframe ")) {
            double ttt, pred;
            const char* q = strstr(p, " ttt ");
            if (q && sscanf(q, " ttt %lf ms predict %lf ms", &ttt, &pred) == 2 && ++lines <= 5) ms_first5 += ttt + pred;
        }
        int all = rc == 0 && lines == N && metrics_frames(TMP "/pp_fast") == N &&
                  access(TMP "/pp_fast/frame000008_overlay.png", F_OK) == 0;
        CHECK(all, "fast input: exit %d, %d frame lines, metrics.json lists %d (want %d): a frame was dropped?\n%s", rc, lines,
              metrics_frames(TMP "/pp_fast"), N, log);
        CHECK(pipe_size == 65536 && t_written * 1e3 >= ms_first5,
              "fast input: the producer's writes returned after %.0f ms, before the model's %.0f ms on frames 1..5 (pipe %d): "
              "frames were taken faster than the model processed them", t_written * 1e3, ms_first5, pipe_size);
        CHECK(strstr(log, "the input was faster than the model") != NULL, "fast input: the summary does not say so:\n%s", log);
        printf("%-4s input faster than the model: 8 frames, none dropped; the producer blocked until %.0f ms (model on frames 1-5: %.0f ms)\n",
               all && t_written * 1e3 >= ms_first5 ? "ok" : "FAIL", t_written * 1e3, ms_first5);
        free(log);
    }

    // 5. input slower than the model (a frame every 0.4 s): the summary says the model waited and
    // gives the input's rate (on a machine too loaded to keep up, only that it gives a verdict)
    {
        int in_fd;
        pid_t pid = spawn_stream("- --size 40x32 " COMMON " --out " TMP "/pp_slow", &in_fd, NULL, TMP "/pp_slow.txt", NULL);
        // the first frame after 1 s, when ./stream's start-up is over (a CUDA build probes for a GPU
        // first, ~0.3 s): a first frame read late would shorten the measured arrival interval
        for (int t = 0; t < 3; t++) { usleep(t ? 400000 : 1000000); write_all(in_fd, frames[t], fbytes); }
        close(in_fd);
        rc = wait_status(pid, NULL);
        log = read_file(TMP "/pp_slow.txt", NULL);
        const char* p = strstr(log, "frames arrived at ");
        double rate = p ? atof(p + strlen("frames arrived at ")) : NAN, ms_max = 0.0;
        for (const char* q = strstr(log, " ttt "); q; q = strstr(q + 1, " ttt ")) {
            double ttt, pred;
            if (sscanf(q, " ttt %lf ms predict %lf ms", &ttt, &pred) == 2 && ttt + pred > ms_max) ms_max = ttt + pred;
        }
        int kept_up = ms_max < 200.0;   // every frame took under half the interval
        int ok = rc == 0 && (kept_up ? strstr(log, "the model waited for the input") && rate > 1.0 && rate < 3.0
                                     : strstr(log, "the input was faster than the model") || strstr(log, "the model waited"));
        CHECK(ok, "slow input (2.5 frames/s, slowest frame %.0f ms): exit %d, arrival rate %g:\n%s", ms_max, rc, rate, log);
        if (ok) printf("ok   input at 2.5 frames/s, slowest frame %.0f ms: the summary says %s; frames arrived at %.2f/s\n", ms_max,
                       kept_up ? "the model waited" : "(machine too loaded to keep up) one verdict", rate);
        free(log);
    }

    // 6. SIGINT after 2 frames: ends with the metrics of the frames done, exit 130
    {
        int in_fd;
        pid_t pid = spawn_stream("- --size 40x32 " COMMON " --out " TMP "/pp_int", &in_fd, NULL, TMP "/pp_int.txt", NULL);
        write_all(in_fd, frames[0], fbytes); write_all(in_fd, frames[1], fbytes);
        int seen = wait_metrics(TMP "/pp_int", 2);
        kill(pid, SIGINT);
        rc = wait_status(pid, NULL);
        close(in_fd);
        log = read_file(TMP "/pp_int.txt", NULL);
        CHECK(seen && rc == 130 && strstr(log, "stopped by signal 2 after 2 frames") && strstr(log, "summary: 2 frames") &&
              metrics_frames(TMP "/pp_int") == 2 && access(TMP "/pp_int/metrics.png", F_OK) == 0,
              "SIGINT: exit %d, metrics.json lists %d:\n%s", rc, metrics_frames(TMP "/pp_int"), log);
        if (seen && rc == 130) printf("ok   SIGINT after 2 frames: summary, metrics.json and metrics.png of the 2 frames, exit %d\n", rc);
        free(log);
    }

    // 7. SIGKILL after 3 frames: metrics.json (written as the run goes, atomically) lists them
    {
        int in_fd, sig;
        pid_t pid = spawn_stream("- --size 40x32 " COMMON " --out " TMP "/pp_kill", &in_fd, NULL, TMP "/pp_kill.txt", NULL);
        for (int t = 0; t < 3; t++) write_all(in_fd, frames[t], fbytes);
        int seen = wait_metrics(TMP "/pp_kill", 3);
        kill(pid, SIGKILL);
        wait_status(pid, &sig);
        close(in_fd);
        CHECK(seen && sig == SIGKILL && metrics_frames(TMP "/pp_kill") == 3,
              "SIGKILL: metrics.json of a killed run lists %d frames (want 3)", metrics_frames(TMP "/pp_kill"));
        if (seen) printf("ok   killed after 3 frames: its metrics.json is whole and lists the 3 frames\n");
    }

    // 8. the reader of --out-raw closes it: the run ends after that frame, cleanly
    {
        int in_fd, out_fd;
        pid_t pid = spawn_stream("- --size 40x32 " COMMON " --out " TMP "/pp_epipe --out-raw -", &in_fd, NULL,
                                 TMP "/pp_epipe.txt", &out_fd);
        close(out_fd);   // the reader is gone before the first frame
        for (int t = 0; t < 3; t++) write_all(in_fd, frames[t], fbytes);
        close(in_fd);
        rc = wait_status(pid, NULL);
        log = read_file(TMP "/pp_epipe.txt", NULL);
        CHECK(rc == 0 && strstr(log, "warning: the reader of --out-raw closed it") && metrics_frames(TMP "/pp_epipe") == 1,
              "closed --out-raw reader: exit %d, metrics.json lists %d:\n%s", rc, metrics_frames(TMP "/pp_epipe"), log);
        if (rc == 0) printf("ok   the reader of --out-raw closed it: warning, the run ends after frame 1 (exit %d)\n", rc);
        free(log);
    }

    // 9. refusals
    expect_refusal("no --size", "- " COMMON " --out " TMP "/pp_bad", "need --size");
    expect_refusal("--size with a folder", VID " --size 40x32 " COMMON " --out " TMP "/pp_bad", "--size is the size of raw frames");
    expect_refusal("--size 40", "- --size 40 " COMMON " --out " TMP "/pp_bad", "--size");
    expect_refusal("--mode offline", "- --size 40x32 " COMMON " --mode offline --out " TMP "/pp_bad", "offline");
    expect_refusal("--shuffle", "- --size 40x32 " COMMON " --shuffle --out " TMP "/pp_bad", "--shuffle");
    expect_refusal("--kstar", "- --size 40x32 " COMMON " --kstar --out " TMP "/pp_bad", "--kstar");
    expect_refusal("a --window list", "- --size 40x32 " COMMON " --window 1,2 --out " TMP "/pp_bad", "--window");
    expect_refusal("--labels", "- --size 40x32 " COMMON " --labels " VID "_labels --out " TMP "/pp_bad", "no labels");
    expect_refusal("two sources", "- " VID " --size 40x32 " COMMON " --out " TMP "/pp_bad", "more than one frame source");
    CHECK(access(TMP "/pp_bad", F_OK) != 0, "a refused run created its output folder");
    run("mkdir -p " TMP "/pp_mine && echo notes > " TMP "/pp_mine/frame000001.png");
    expect_refusal("--out holding the user's files", "- --size 40x32 " COMMON " --out " TMP "/pp_mine", "could replace them");
    for (int t = 0; t < NF; t++) free(frames[t]);
    return test_summary("test_pipe");
}
