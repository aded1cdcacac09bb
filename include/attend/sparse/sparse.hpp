// The sparse family in one include: block-sparse attention over block masks (static patterns,
// Quest, MoBA, FlexPrefill, MInference, ProxyAttn, low-bit selectors, accuracy tools) and
// token-sparse gather attention over token lists (exact top-k, int8 top-k, TokenSelect,
// Recycled, HiP, DHSA, HyperAttention).
#ifndef ATTEND_SPARSE_SPARSE_HPP_
#define ATTEND_SPARSE_SPARSE_HPP_

#include "accuracy.hpp"
#include "block_mask.hpp"
#include "block_sparse.hpp"
#include "gather.hpp"
#include "hierarchical.hpp"
#include "patterns.hpp"
#include "select/dhsa.hpp"
#include "select/flexprefill.hpp"
#include "select/hyper.hpp"
#include "select/int8_row_keys.hpp"
#include "select/lowbit.hpp"
#include "select/minference.hpp"
#include "select/moba.hpp"
#include "select/proxy.hpp"
#include "select/quest.hpp"
#include "select/recycled.hpp"
#include "select/selection_cache.hpp"
#include "select/tokenselect.hpp"
#include "select/topk.hpp"
#include "select/topk_int8.hpp"
#include "token_lists.hpp"

#endif  // ATTEND_SPARSE_SPARSE_HPP_
