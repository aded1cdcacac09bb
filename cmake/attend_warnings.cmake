# Warnings and target flags for the project's own binaries (tests, bench, examples); the
# library target itself carries no flags.
#
# GCC < 13 reports false -Wuninitialized / -Wmaybe-uninitialized inside its own AVX-512
# intrinsic headers (GCC bug 105593). Those two are disabled only for GCC < 13 builds that
# target AVX-512; every other warning stays on for the project's code.

set(ATTEND_WARNINGS -Wall -Wextra -Wpedantic)

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
