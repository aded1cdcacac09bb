// The dense operator's instantiations, compiled once per test target architecture and shared
// by every dense test binary of that architecture.
#include "attend/dense/instantiate.hpp"

ATTEND_INSTANTIATE_DENSE_TEMPLATES
