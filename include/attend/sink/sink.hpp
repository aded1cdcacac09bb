// The sink-calibrated family in one include: learnable sink logits, attention statistics (two-pass
// LSE method), ACT calibration, StreamingLLM caches with rotary embedding on load, DuoAttention,
// gated attention and Found-in-the-middle calibration, all on the one engine.
#ifndef ATTEND_SINK_SINK_HPP_
#define ATTEND_SINK_SINK_HPP_

#include "act.hpp"
#include "duo.hpp"
#include "fitm.hpp"
#include "gate.hpp"
#include "masks.hpp"
#include "sink_logits.hpp"
#include "stats.hpp"
#include "streaming.hpp"

#endif  // ATTEND_SINK_SINK_HPP_
