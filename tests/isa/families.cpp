// Compile-only check: every family's entry points instantiated for one ISA (the one the host
// does not run natively; the family tests run the native one). Nothing here executes: the
// function is only compiled, so a kernel that does not build for AVX2 or AVX-512 fails the build.
#include <attend/attend.hpp>

namespace attend {

void instantiate_families(const view4<const float>& q, const view4<const float>& k,
                          const view4<const float>& v, const view4<float>& o,
                          const view4<const float>& gate, const sparse::mask_geometry& g,
                          sparse::token_list_buffer& lists) {
  const attention_params p{};
  const sparse::block_mask mask = sparse::block_mask::all_blocks(g);
  sparse::block_sparse_attention(q, k, v, o, mask, p);
  sparse::gather_attention(q, k, v, o, lists.view());
  sparse::topk_attention(q, k, v, o, lists);
  const sparse::int8_keys keys(1, 16, 1, 4);
  sparse::topk_int8_select(q, keys, lists);
  sparse::hip_attention(q, k, v, o, lists);
  const sparse::int8_row_keys row_keys(1, 16, 1, 4);
  sparse::hip_select(q, row_keys, lists);
  linear_attention(q, k, v, o);
  mala_attention(q, k, v, o);
  sink::gated_attention(q, k, v, o, gate, p);
  sink::act_attention(q, k, v, o);
  sink::duo_attention(q, k, v, o, sink::duo_params{}, p);
  sink::streaming_attention(q, k, v, o, sink::streaming_params{}, p);
}

}  // namespace attend
