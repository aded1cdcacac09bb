// Umbrella header: every public part of attend.
#ifndef ATTEND_ATTEND_HPP_
#define ATTEND_ATTEND_HPP_

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/memory.hpp"
#include "core/params.hpp"
#include "core/tensor_view.hpp"
#include "core/workspace.hpp"
#include "dense/attention.hpp"
#include "dense/merge.hpp"
#include "linear/linear.hpp"
#include "sink/sink.hpp"
#include "sparse/sparse.hpp"

#endif  // ATTEND_ATTEND_HPP_
