// dev/gen.c: synthetic labeled images and drifting videos. (being written)
#include "ttt.h"
int main(int argc, char** argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "error: gen is not implemented yet\n");
    return 1;
}
