// Error model: bad user input throws attend::invalid_argument from the validation that runs
// before any parallel region; kernels after validation are noexcept.
#ifndef ATTEND_CORE_ERROR_HPP_
#define ATTEND_CORE_ERROR_HPP_

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>

#ifdef ATTEND_NO_EXCEPTIONS
#include <cstdio>
#include <cstdlib>
#endif

namespace attend {

/// Thrown for invalid shapes, strides, lengths or parameters. The message names the function,
/// the argument and the offending sizes. With ATTEND_NO_EXCEPTIONS defined the message is
/// printed to stderr and the process aborts instead.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void throw_invalid(const char* condition, const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  os << " [check failed: " << condition << "]";
#ifdef ATTEND_NO_EXCEPTIONS
  std::fprintf(stderr, "attend: invalid argument: %s\n", os.str().c_str());
  std::abort();
#else
  throw invalid_argument(os.str());
#endif
}

}  // namespace detail
}  // namespace attend

/// Validates user input: ATTEND_CHECK(k.extent(3) == q.extent(3), "attention: k head dim (",
/// k.extent(3), ") must equal q head dim (", q.extent(3), ")"). The message is mandatory.
#define ATTEND_CHECK(cond, ...)                                  \
  do {                                                           \
    if (!(cond)) ::attend::detail::throw_invalid(#cond, __VA_ARGS__); \
  } while (0)

/// Internal invariant; compiled out with NDEBUG.
#define ATTEND_DCHECK(cond) assert(cond)

#endif  // ATTEND_CORE_ERROR_HPP_
