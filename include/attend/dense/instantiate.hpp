// Explicit instantiation helpers for large builds: the dense operator instantiates the engine
// for 6 head-dim paths x 2 score paths per K/V type, which takes a while to compile. Put
// ATTEND_INSTANTIATE_DENSE_TEMPLATES in one .cpp and ATTEND_EXTERN_DENSE_TEMPLATES after the
// includes of every other file that calls attend::attention; all of them must be compiled
// with the same target flags (the same xsimd::default_arch).
#ifndef ATTEND_DENSE_INSTANTIATE_HPP_
#define ATTEND_DENSE_INSTANTIATE_HPP_

#include "attention.hpp"

#define ATTEND_DENSE_TEMPLATE_(prefix, KV)                                                    \
  prefix template void ::attend::detail::attention_dispatch<::xsimd::default_arch, KV>(       \
      const ::attend::view4<const float>&, const ::attend::view4<const KV>&,                  \
      const ::attend::view4<const KV>&, const ::attend::view4<float>&,                        \
      const ::attend::attention_params&);

#define ATTEND_EXTERN_DENSE_TEMPLATES                 \
  ATTEND_DENSE_TEMPLATE_(extern, float)               \
  ATTEND_DENSE_TEMPLATE_(extern, ::attend::bf16)      \
  ATTEND_DENSE_TEMPLATE_(extern, ::attend::fp16)

#define ATTEND_INSTANTIATE_DENSE_TEMPLATES   \
  ATTEND_DENSE_TEMPLATE_(, float)            \
  ATTEND_DENSE_TEMPLATE_(, ::attend::bf16)   \
  ATTEND_DENSE_TEMPLATE_(, ::attend::fp16)

#endif  // ATTEND_DENSE_INSTANTIATE_HPP_
