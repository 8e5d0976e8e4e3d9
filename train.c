// train.c: joint training of f, g, h on labeled still images. (being written)
#include "ttt.h"
int main(int argc, char** argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "error: train is not implemented yet\n");
    return 1;
}
