// mask2former.c: the main-task head h: deformable-free pixel decoder (FPN),
// masked-attention transformer decoder, set loss (Hungarian matching, CE, BCE, dice)
// and semantic / panoptic inference. API and structs in ttt.h.
#include "ttt.h"

// ============================================================================
// PIXEL DECODER AND TRANSFORMER DECODER
// ============================================================================

// (decoder goes here)

// ============================================================================
// end of PIXEL DECODER AND TRANSFORMER DECODER
// ============================================================================


// ============================================================================
// SET LOSS: targets from label maps, Hungarian matching, point sampling, losses
// ============================================================================

// (set loss goes here)

// ============================================================================
// end of SET LOSS
// ============================================================================
