# ttt: online test-time training on video streams, plain C + CUDA.
#   make            build the programs (CUDA backend too when nvcc is found)
#   make test       build and run every CPU test; last line "N passed, N failed"
#   make test-gpu   build and run the CUDA-vs-CPU checks (needs a GPU)
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
  CUDA_OBJ = ttt_kernels.o
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
LIB_OBJ = ttt.o swin.o mask2former.o mae.o data.o coco_eval.o coco_data.o coco_stream.o dist.o vendor/cJSON.o $(CUDA_OBJ)
PROGRAMS = stream train gen
TEST_SRC = $(sort $(wildcard test/test_*.c))
TEST_BIN = $(TEST_SRC:.c=)
GPU_TEST_SRC = $(sort $(wildcard test/gpu_*.c))
GPU_TEST_BIN = $(GPU_TEST_SRC:.c=)

all: $(PROGRAMS)

%.o: %.c ttt.h
	$(CC) $(CFLAGS) -c $< -o $@

dist.o: dist.c ttt.h
	$(CC) $(CFLAGS) $(DIST_CFLAGS) -c $< -o $@

# cJSON (vendor/README.md): the JSON of COCO's panoptic and results formats
vendor/cJSON.o: vendor/cJSON.c vendor/cJSON.h
	$(CC) $(CFLAGS) -c $< -o $@

ttt_kernels.o: ttt_kernels.cu ttt.h
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

# the data-parallel checks (test/nccl_check.c) on a machine with two GPUs; NVLink multicast off
test/nccl_check: test/nccl_check.c test/test.h $(LIB_OBJ)
	$(CC) $(CFLAGS) $< $(LIB_OBJ) -o $@ $(LDLIBS)

test-nccl: test/nccl_check $(PROGRAMS)
	@NCCL_NVLS_ENABLE=0 sh test/run_tests.sh test/nccl_check

# the demo video shipped in data/ (committed; regenerate after changing dev/gen.c)
demo: gen
	./gen video data/demo --labels data/demo_labels --frames 24 --size 128x96 --seed 1 --drift-period 16

clean:
	rm -f *.o vendor/*.o $(PROGRAMS) bench $(TEST_BIN) $(GPU_TEST_BIN) test/nccl_check
	rm -rf test/tmp

.PHONY: all test test-gpu test-nccl clean demo
