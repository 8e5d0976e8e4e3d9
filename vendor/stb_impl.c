// vendor/stb_impl.c: the implementations of stb_image and stb_image_write (public domain /
// MIT, vendor/README.md), compiled on their own with their warnings quieted. The sanitized build
// (make test-sanitize) leaves out UBSan's shift-base check here only: stb's JPEG writer shifts a
// signed int past its range (stbiw__jpg_writeBits), which is its code, not ours.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wmisleading-indentation"
#include "stb_image.h"
#include "stb_image_write.h"
#pragma GCC diagnostic pop
