# Warnings and target flags for the project's own binaries (tests, bench, examples); the
# library target itself carries no flags.
#
# GCC < 13 reports false -Wuninitialized / -Wmaybe-uninitialized inside its own AVX-512
# intrinsic headers (GCC bug 105593). Those two are disabled only for GCC < 13 builds that
# target AVX-512; every other warning stays on for the project's code.

set(ATTEND_WARNINGS -Wall -Wextra -Wpedantic)

# Head dims with compile-time fast paths in the project's own test and example binaries
# (ATTEND_FAST_HEAD_DIMS, see core/config.hpp). Every listed dim instantiates each kernel once
# more; the dense tests cover all five (ATTEND_DENSE_TEST_FAST_HEAD_DIMS), the families, built
# on the same engine, one fast dim plus the run-time-dim path, which keeps a clean build of the
# test suite within minutes on two cores. "all" = the library default, "none" = run-time dims
# only, otherwise a comma-separated list.
set(ATTEND_TEST_FAST_HEAD_DIMS "64" CACHE STRING
    "Fast-path head dims of test and example binaries (all | none | comma-separated list)")
set(ATTEND_DENSE_TEST_FAST_HEAD_DIMS "all" CACHE STRING
    "Fast-path head dims of the dense operator's tests (all | none | comma-separated list)")

# attend_head_dims(<target> <setting>): applies one of the settings above to a target.
function(attend_head_dims target setting)
  if(setting STREQUAL "none")
    target_compile_definitions(${target} PRIVATE "ATTEND_FAST_HEAD_DIMS=")
  elseif(NOT setting STREQUAL "all" AND NOT setting STREQUAL "")
    target_compile_definitions(${target} PRIVATE "ATTEND_FAST_HEAD_DIMS=${setting}")
  endif()
endfunction()

# attend_target_flags(<target> <arch>) with arch = native | avx2 | avx512 | default
function(attend_target_flags target arch)
  target_compile_options(${target} PRIVATE ${ATTEND_WARNINGS})
  set(flags "")
  if(arch STREQUAL "native")
    if(ATTEND_NATIVE)
      set(flags -march=native)
    endif()
  elseif(arch STREQUAL "avx2")
    set(flags -mavx2 -mfma -mf16c -mno-avx512f)
  elseif(arch STREQUAL "avx512")
    set(flags -mavx512f -mavx512cd -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -mf16c)
  endif()
  target_compile_options(${target} PRIVATE ${flags})
  set(may_use_avx512 OFF)
  if(arch STREQUAL "avx512")
    set(may_use_avx512 ON)
  elseif(arch STREQUAL "native" AND ATTEND_NATIVE)
    include(CheckCXXSourceCompiles)
    set(CMAKE_REQUIRED_FLAGS -march=native)
    check_cxx_source_compiles("#ifndef __AVX512F__\n#error no\n#endif\nint main(){}" ATTEND_NATIVE_HAS_AVX512)
    unset(CMAKE_REQUIRED_FLAGS)
    set(may_use_avx512 ${ATTEND_NATIVE_HAS_AVX512})
  endif()
  if(may_use_avx512 AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE -Wno-uninitialized -Wno-maybe-uninitialized)
  endif()
endfunction()
