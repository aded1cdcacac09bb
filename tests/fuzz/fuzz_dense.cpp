// Fuzz target for attend::attention (dense softmax attention) against the double oracle.
// The first bytes choose the mode (agreement / extreme / invalid, see attention_case.hpp) and the
// K/V storage type; the rest describe the case. Agreement cases sometimes run a second time on
// one thread: results must be bitwise identical (they may not depend on the thread count).
#include <omp.h>

#include "attend/dense/instantiate.hpp"
#include "attention_case.hpp"
#include "attention_invalid.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES  // instantiated in fuzz_dense_inst_*.cpp

    namespace attend::fuzz {
  namespace {

  /// One workspace reused by the cases that ask for one, so the grown-buffer path runs too.
  workspace& shared_workspace() {
    static workspace ws;
    return ws;
  }

  template <class KV>
  void run_valid(input& in, mode m) {
    attention_case<KV> c = attention_case<KV>::make(in, m);
    if (in.flag()) c.p.scratch = &shared_workspace();
    const bool serial_rerun = m == mode::agreement && in.chance(25);
    if (verbose()) std::fprintf(stderr, "%s %s\n", dtype_name<KV>(), c.desc.c_str());

    const std::vector<float> o_before = c.o.storage, lse_before = c.lse.storage;
    attention(c.qv, c.kv, c.vv, c.o.view, c.p);
    check_only_view_written(c.o, o_before, "o", c.desc);
    if (c.want_lse) check_only_view_written(c.lse, lse_before, "lse", c.desc);

    c.run_oracle();
    c.check_outputs();

    if (serial_rerun) {
      buffer<float, 4> o1 = clone(c.o);
      std::copy(o_before.begin(), o_before.end(), o1.storage.begin());
      buffer<float, 3> l1 = clone(c.lse);
      std::copy(lse_before.begin(), lse_before.end(), l1.storage.begin());
      attention_params p1 = c.p;
      if (c.want_lse) p1.lse = l1.view;
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      attention(c.qv, c.kv, c.vv, o1.view, p1);
      omp_set_num_threads(threads);
      FUZZ_CHECK(std::memcmp(o1.storage.data(), c.o.storage.data(), o1.storage.size() * 4) == 0,
                 "o differs between ", threads, " threads and 1 | ", c.desc);
      FUZZ_CHECK(std::memcmp(l1.storage.data(), c.lse.storage.data(), l1.storage.size() * 4) == 0,
                 "lse differs between ", threads, " threads and 1 | ", c.desc);
    }
  }

  template <class KV>
  void run_invalid(input& in) {
    const attention_case<KV> c = attention_case<KV>::make(in, mode::invalid);
    invalid_call<KV> x = make_invalid(in, c);
    if (verbose())
      std::fprintf(stderr, "%s invalid: %s | %s\n", dtype_name<KV>(), x.what.c_str(),
                   c.desc.c_str());
    expect_rejected(
        x.what.c_str(), [&] { attention(x.q, x.k, x.v, x.o, x.p); }, x.needle, x.watched);
    if (!x.oracle_rejects) return;
    // The oracle validates the same inputs (it must never read out of bounds either).
    auto ref =
        buffer<double, 4>::contiguous({x.q.extent(0), x.q.extent(1), x.q.extent(2), x.v.extent(3)});
    attention_params rp = x.p;
    rp.lse = {};
    expect_rejected(("oracle: " + x.what).c_str(),
                    [&] { reference::attention(x.q, x.k, x.v, rp, ref.view); },
                    "attend::reference::attention", {});
  }

  }  // namespace
}  // namespace attend::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace attend::fuzz;
  return run_target(data, size, [](auto tag, input& in, mode m) {
    using KV = typename decltype(tag)::type;
    m == mode::invalid ? run_invalid<KV>(in) : run_valid<KV>(in, m);
  });
}
