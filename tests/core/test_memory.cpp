// huge_page_allocator: alignment, use as a vector allocator, and (on Linux with transparent huge
// pages available) that large allocations carry the huge-page advice.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "attend/core/memory.hpp"

namespace attend {
namespace {

bool aligned_to(const void* p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}

TEST(Memory, AlignsLargeBuffersToHugePagesAndSmallOnesToCacheLines) {
  huge_page_allocator<float> alloc;
  float* small = alloc.allocate(100);
  float* large = alloc.allocate(huge_page_bytes / sizeof(float) + 1);
  EXPECT_TRUE(aligned_to(small, 64));
  EXPECT_TRUE(aligned_to(large, huge_page_bytes));
  alloc.deallocate(small, 100);
  alloc.deallocate(large, huge_page_bytes / sizeof(float) + 1);
  void* empty = allocate_cache_memory(0);
  EXPECT_NE(empty, nullptr);
  std::free(empty);
}

TEST(Memory, CacheVectorStaysAlignedThroughGrowthAndCopies) {
  cache_vector<std::int8_t> v(1, 7);
  EXPECT_TRUE(aligned_to(v.data(), 64));
  for (int i = 0; i < 5000; ++i) {
    v.push_back(static_cast<std::int8_t>(i));
    ASSERT_TRUE(aligned_to(v.data(), 64)) << "after " << i + 1 << " appends";
  }
  const cache_vector<std::int8_t> w = v;
  EXPECT_TRUE(aligned_to(w.data(), 64));
  EXPECT_EQ(w[0], 7);
  EXPECT_EQ(w.back(), static_cast<std::int8_t>(4999));
}

TEST(Memory, RejectsSizesPastTheAddressSpace) {
  EXPECT_THROW(allocate_cache_memory(std::numeric_limits<std::size_t>::max() - 8),
               std::bad_alloc);
}

TEST(Memory, CacheVectorHoldsAndCopiesItsContents) {
  cache_vector<std::int32_t> v(3 << 20);  // 12 MiB
  std::iota(v.begin(), v.end(), 0);
  cache_vector<std::int32_t> w = v;
  w.resize(w.size() + 5, -1);
  ASSERT_EQ(w.size(), v.size() + 5);
  EXPECT_TRUE(std::equal(v.begin(), v.end(), w.begin()));
  EXPECT_EQ(w.back(), -1);
  EXPECT_TRUE(huge_page_allocator<int>() == huge_page_allocator<float>());
}

/// The VmFlags line of the mapping of /proc/self/smaps that holds p ("" if not found).
std::string vm_flags_of(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(Memory, LargeAllocationsAreAdvisedHugePages) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  if (!std::getline(thp, mode) || mode.find("[never]") != std::string::npos)
    GTEST_SKIP() << "transparent huge pages are not available here";
  cache_vector<float> v(4 * huge_page_bytes / sizeof(float), 1.0f);
  const std::string flags = vm_flags_of(v.data());
  ASSERT_FALSE(flags.empty()) << "no mapping in /proc/self/smaps holds the buffer";
  EXPECT_NE((flags + " ").find(" hg "), std::string::npos) << flags;
  // Memory allocated elsewhere, from an unaligned start: the whole huge pages inside are advised.
  std::vector<char> own(5 * huge_page_bytes);
  char* const start = own.data() + 1;
  advise_huge_pages(start, own.size() - 1);
  const auto inner = (reinterpret_cast<std::uintptr_t>(start) + huge_page_bytes - 1) /
                     huge_page_bytes * huge_page_bytes;
  const std::string own_flags = vm_flags_of(reinterpret_cast<const void*>(inner));
  EXPECT_NE((own_flags + " ").find(" hg "), std::string::npos) << own_flags;
#else
  GTEST_SKIP() << "huge-page advice is Linux-only";
#endif
}

}  // namespace
}  // namespace attend
