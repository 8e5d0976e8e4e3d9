# ttt: online test-time training on video streams, plain C + CUDA.
#   make            build the programs (CUDA backend too when nvcc is found)
#   make test       build and run every CPU test; last line "N passed, N failed"
#   make test-gpu   build and run the CUDA-vs-CPU checks (needs a GPU)
#   make test-sanitize  the CPU tests under ASan + UBSan (build-san/, CPU only)
#   make test-gpu-memcheck  the GPU checks under compute-sanitizer (needs a GPU)
#   make NO_CUDA=1  force a CPU-only build
#   make NO_NCCL=1  build without NCCL (--gpus N > 1 then says so)
#   make test-nccl  the data-parallel checks on a machine with two GPUs (test/nccl_check.c)
#   make demo       regenerate the demo video data/demo/ and its labels data/demo_labels/

CC ?= gcc
CFLAGS ?= -O3
CFLAGS += -std=gnu11 -Wall -Wno-unused-function -fopenmp -I. -Ivendor
LDLIBS = -lm -fopenmp

# CUDA: found on PATH or at the usual place, unless NO_CUDA=1
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(NO_CUDA),1)
  NVCC :=
endif
ifneq ($(NVCC),)
ifneq ($(wildcard ttt_kernels.cu),)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  CFLAGS += -DTTT_CUDA
  CUDA_OBJ = ttt_kernels.o ttt_runtime.o
  NVCCFLAGS = -O3 -std=c++17 -DTTT_CUDA -I. --default-stream per-thread \
              -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif
endif

# NCCL (data parallel over GPUs, dist.c): with CUDA, nccl.h under NCCL_HOME, else next to CUDA
# (the CUDA toolkit's own copy), else /usr (Debian's libnccl-dev); unless NO_NCCL=1. The
# library: NCCL_HOME/lib64, lib or lib/x86_64-linux-gnu (PyPI's nvidia-nccl-cu12 has
# nvidia/nccl/{include,lib} with libnccl.so.2 only: NCCL_HOME=.../site-packages/nvidia/nccl).
DIST_CFLAGS =
ifneq ($(CUDA_OBJ),)
ifneq ($(NO_NCCL),1)
  NCCL_HOME ?= $(firstword $(foreach d,$(CUDA_HOME) /usr,$(if $(wildcard $(d)/include/nccl.h),$(d))))
  NCCL_LIB := $(firstword $(foreach d,lib64 lib lib/x86_64-linux-gnu,$(wildcard $(NCCL_HOME)/$(d)/libnccl.so.2)))
ifneq ($(and $(NCCL_HOME),$(NCCL_LIB)),)
  DIST_CFLAGS = -DTTT_NCCL $(filter-out -I/usr/include,$(sort -I$(CUDA_HOME)/include -I$(NCCL_HOME)/include))
  LDLIBS += -L$(dir $(NCCL_LIB)) -Wl,-rpath,$(dir $(NCCL_LIB)) -l:libnccl.so.2
endif
endif
endif

# the library every program links: ops, IO, checkpoints, the three parts of the Y, data parallel
LIB_OBJ = ttt.o dispatch.o swin.o mask2former.o mae.o data.o coco_eval.o coco_data.o coco_stream.o dist.o color.o color_stream.o vendor/cJSON.o vendor/stb_impl.o $(CUDA_OBJ)
PROGRAMS = stream train gen
TEST_SRC = $(sort $(wildcard test/test_*.c))
TEST_BIN = $(TEST_SRC:.c=)
GPU_TEST_SRC = $(sort $(wildcard test/gpu_*.c))
GPU_TEST_BIN = $(GPU_TEST_SRC:.c=)

all: $(PROGRAMS)

%.o: %.c ttt.h ttt_index.h
	$(CC) $(CFLAGS) -c $< -o $@

dist.o: dist.c ttt.h
	$(CC) $(CFLAGS) $(DIST_CFLAGS) -c $< -o $@

# cJSON (vendor/README.md): the JSON of COCO's panoptic and results formats
vendor/cJSON.o: vendor/cJSON.c vendor/cJSON.h
	$(CC) $(CFLAGS) -c $< -o $@

# stb_image / stb_image_write implementations (vendor/stb_impl.c says why the shift check is off)
vendor/stb_impl.o: vendor/stb_impl.c vendor/stb_image.h vendor/stb_image_write.h
	$(CC) $(CFLAGS) -fno-sanitize=shift-base -c $< -o $@

ttt_kernels.o: ttt_kernels.cu ttt_cuda.cuh ttt.h ttt_index.h
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

ttt_runtime.o: ttt_runtime.cu ttt_cuda.cuh ttt.h ttt_index.h
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

stream: stream.c $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

train: train.c $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

gen: dev/gen.c $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# timing of the Y model (dev/bench.c): make bench && ./bench --batch 8
bench: dev/bench.c $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

test/test_%: test/test_%.c test/test.h $(LIB_OBJ)
	$(CC) $(CFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

test/gpu_%: test/gpu_%.c test/test.h $(LIB_OBJ)
	$(CC) $(CFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

test: $(TEST_BIN) $(PROGRAMS)
	@sh test/run_tests.sh $(TEST_BIN)

test-gpu: $(GPU_TEST_BIN) $(PROGRAMS)
	@sh test/run_tests.sh $(GPU_TEST_BIN)

# the GPU checks under compute-sanitizer's memcheck (out-of-bounds and misaligned device accesses,
# failing CUDA calls), ./stream started by gpu_stream included; much slower than
# make test-gpu. Other tools: make test-gpu-memcheck SANITIZER_TOOL=racecheck (or initcheck, synccheck)
COMPUTE_SANITIZER ?= $(shell command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
SANITIZER_TOOL ?= memcheck
test-gpu-memcheck: $(GPU_TEST_BIN) $(PROGRAMS)
	@test -n "$(COMPUTE_SANITIZER)" || { echo "compute-sanitizer not found (it comes with the CUDA toolkit)"; exit 1; }
	@TEST_WRAPPER="$(COMPUTE_SANITIZER) --tool $(SANITIZER_TOOL) --error-exitcode 86 --target-processes all" \
	  sh test/run_tests.sh $(GPU_TEST_BIN)

# the data-parallel checks (test/nccl_check.c) on a machine with two GPUs; NVLink multicast off
test/nccl_check: test/nccl_check.c test/test.h $(LIB_OBJ)
	$(CC) $(CFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

test-nccl: test/nccl_check $(PROGRAMS)
	@NCCL_NVLS_ENABLE=0 sh test/run_tests.sh test/nccl_check

# the demo video shipped in data/ (committed; regenerate after changing dev/gen.c)
demo: gen
	./gen video data/demo --labels data/demo_labels --frames 24 --size 128x96 --seed 1 --drift-period 16

# The CPU suite again under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer,
# CPU only, in a copy of the sources under build-san/ (its own objects, programs and test/tmp: the
# normal build is untouched). Every process writes any finding to build-san/findings.PID; the
# target fails when one exists or a test fails. (LeakSanitizer's note that a child forked from a
# process with OpenMP threads cannot suspend them is not a finding.)
SAN_CC = $(CC) -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:exitcode=86:log_path=$(CURDIR)/build-san/findings \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86:log_path=$(CURDIR)/build-san/findings
test-sanitize:
	@mkdir -p build-san/test
	@cp -p Makefile *.c *.h *.cu *.cuh *.md build-san/ && cp -p $$(find test -maxdepth 1 -type f -name '*.[ch]' -o -maxdepth 1 -type f -name '*.sh' \
	  -o -maxdepth 1 -type f -name '*.py') build-san/test/
	@rm -rf build-san/vendor && mkdir -p build-san/vendor && cp -p vendor/*.[ch] build-san/vendor/   # its objects stay in build-san
	@for d in data dev; do ln -sfn ../$$d build-san/$$d; done && ln -sfn ../../test/data build-san/test/data
	@rm -f build-san/findings.*
	@$(MAKE) -s -C build-san NO_CUDA=1 CC="$(SAN_CC)" $(PROGRAMS) $(TEST_BIN)
	@cd build-san && $(SAN_ENV) sh test/run_tests.sh $(TEST_BIN); rc=$$?; \
	  if ls findings.* >/dev/null 2>&1 && grep -qv "was not suspended. False leaks are possible" findings.*; then \
	    echo "sanitizer findings:"; cat findings.*; exit 1; fi; echo "sanitizers: no findings"; exit $$rc

clean:
	rm -f *.o vendor/*.o $(PROGRAMS) bench $(TEST_BIN) $(GPU_TEST_BIN) test/nccl_check
	rm -rf test/tmp build-san

.PHONY: all test test-gpu test-gpu-memcheck test-sanitize test-nccl clean demo
