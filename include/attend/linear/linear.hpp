// Linear-attention family: feature maps, linear_attention (non-causal and chunked causal with
// decay and gates), mala_attention and the recurrent linear_state.
#ifndef ATTEND_LINEAR_LINEAR_HPP_
#define ATTEND_LINEAR_LINEAR_HPP_

#include "feature_maps.hpp"
#include "linear_attention.hpp"
#include "mala.hpp"
#include "params.hpp"
#include "state.hpp"

#endif  // ATTEND_LINEAR_LINEAR_HPP_
