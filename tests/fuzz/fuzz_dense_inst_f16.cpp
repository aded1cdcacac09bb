// The dense operator's instantiations for f16 K/V, compiled apart from fuzz_dense.cpp so that
// the (sanitised, instrumented) build runs in parallel.
#include "attend/dense/instantiate.hpp"

ATTEND_DENSE_TEMPLATE_(, ::attend::fp16)
