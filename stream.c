// stream.c: online test-time training on a folder of frames. (being written)
#include "ttt.h"
int main(int argc, char** argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "error: stream is not implemented yet\n");
    return 1;
}
