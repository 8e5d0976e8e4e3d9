// mae.c: see ttt.h for the API. (being written)
#include "ttt.h"
