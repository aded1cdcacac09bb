# Finds attend's dependencies; shared by the build tree and the installed attendConfig.cmake.
#
# Debian's xsimd 8.1 package exports a target whose INTERFACE_LINK_LIBRARIES names `xtl`
# (the xtensor-stack utility library) although xsimd needs none of it unless complex-number
# support is requested. Without libxtl-dev the name falls through to the linker as `-lxtl` and
# every link fails; an empty imported target of that name resolves it.
include(CMakeFindDependencyMacro)
if(NOT TARGET xtl)
  find_package(xtl CONFIG QUIET)
  if(NOT TARGET xtl)
    add_library(xtl INTERFACE IMPORTED)
  endif()
endif()
find_dependency(xsimd 8 CONFIG)
find_dependency(Eigen3 3.4 CONFIG)
find_dependency(OpenMP COMPONENTS CXX)
