# Finds every dependency of the build and makes imported targets for them.
#
# LibTorch comes from the Python environment's torch wheel (no separate download). We
# link its libraries directly, as torch.utils.cpp_extension does, rather than through
# TorchConfig.cmake: that file probes for a CUDA setup matching the wheel's even when we
# build without CUDA, which fails on machines that lack one.

# --- Python and torch --------------------------------------------------------------------
find_package(Python3 3.10 REQUIRED COMPONENTS Interpreter Development.Module)
execute_process(
  COMMAND ${Python3_EXECUTABLE} -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch.compiled_with_cxx11_abi())); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _sy_torch_info RESULT_VARIABLE _sy_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _sy_rc EQUAL 0)
  message(FATAL_ERROR "switchyard: cannot import torch with ${Python3_EXECUTABLE}. "
                      "Run scripts/install-deps, or pass -DPython3_EXECUTABLE=<venv>/bin/python.")
endif()
string(REPLACE "\n" ";" _sy_torch_info "${_sy_torch_info}")
list(GET _sy_torch_info 0 SY_TORCH_DIR)
list(GET _sy_torch_info 1 SY_TORCH_VERSION)
list(GET _sy_torch_info 2 SY_TORCH_CXX11_ABI)
list(LENGTH _sy_torch_info _n)
set(SY_TORCH_CUDA "")
if(_n GREATER 3)
  list(GET _sy_torch_info 3 SY_TORCH_CUDA)
endif()
if(SY_TORCH_VERSION VERSION_LESS 2.11)
  message(FATAL_ERROR "switchyard needs torch >= 2.11 (found ${SY_TORCH_VERSION} in ${SY_TORCH_DIR})")
endif()
set(SY_TORCH_LIB_DIR ${SY_TORCH_DIR}/lib)

function(sy_torch_library target)
  add_library(${target} INTERFACE IMPORTED GLOBAL)
  set(_libs)
  foreach(name IN LISTS ARGN)
    # A plain path, not a cached find_library result: a new venv must never keep the old one.
    set(_lib ${SY_TORCH_LIB_DIR}/lib${name}.so)
    if(NOT EXISTS ${_lib})
      message(FATAL_ERROR "switchyard: ${_lib} is missing; is the torch in ${SY_TORCH_DIR} complete?")
    endif()
    list(APPEND _libs ${_lib})
  endforeach()
  target_link_libraries(${target} INTERFACE ${_libs})
endfunction()

sy_torch_library(sy::torch c10 torch_cpu torch)
target_include_directories(sy::torch SYSTEM INTERFACE
    ${SY_TORCH_DIR}/include ${SY_TORCH_DIR}/include/torch/csrc/api/include)
target_compile_definitions(sy::torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${SY_TORCH_CXX11_ABI})
sy_torch_library(sy::torch_python torch_python)
target_link_libraries(sy::torch_python INTERFACE Python3::Module)
target_compile_definitions(sy::torch_python INTERFACE TORCH_EXTENSION_NAME=_C)

# Where the built libswitchyard and _C land: inside the Python package, so that
# `import switchyard._C` works from the source tree (editable install) and from a wheel.
set(SWITCHYARD_PACKAGE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/python/switchyard CACHE PATH
    "directory that receives libswitchyard.so and the _C extension")

# --- MPI, yaml-cpp, GoogleTest, nlohmann/json, zlib -------------------------------------------------------------
find_package(MPI REQUIRED COMPONENTS C)
find_package(yaml-cpp REQUIRED)
find_package(GTest REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)  # Debian: nlohmann-json3-dev
find_package(ZLIB REQUIRED)                # Debian: zlib1g-dev

# --- GLPK: the MILP solver behind placement/ilp_solver.cpp (Debian: libglpk-dev) -----------
# GLPK ships no CMake config; NO_CACHE so that a fresh configure always looks again.
find_path(_sy_glpk_inc glpk.h NO_CACHE)
find_library(_sy_glpk_lib glpk NO_CACHE)
if(NOT _sy_glpk_inc OR NOT _sy_glpk_lib)
  message(FATAL_ERROR "switchyard: GLPK not found (glpk.h: ${_sy_glpk_inc}, libglpk: ${_sy_glpk_lib}); "
                      "install it with: apt-get install -y libglpk-dev")
endif()
add_library(sy::glpk UNKNOWN IMPORTED GLOBAL)
set_target_properties(sy::glpk PROPERTIES
    IMPORTED_LOCATION ${_sy_glpk_lib}
    INTERFACE_INCLUDE_DIRECTORIES ${_sy_glpk_inc})

# --- NCCL: the one torch loads ---------------------------------------------------------------
# Note [One libnccl]: torch's CUDA wheel depends on the nvidia-nccl wheel, and libtorch_cuda
# loads its site-packages/nvidia/nccl/lib/libnccl.so.2. We link that very file (soname
# libnccl.so.2), so the process holds one NCCL whichever library is loaded first; never a
# system libnccl or a static copy. Headers: the wheel's own include/ when it ships one
# (exactly the library's version), else the CUDA toolkit's nccl.h. The header must not be
# newer than the library; NcclBackend also checks that at run time (ncclGetVersion).
# Defines sy::nccl, SY_NCCL_LIBRARY, SY_NCCL_LIB_DIR, SY_NCCL_INCLUDE_DIR, SY_NCCL_VERSION.
function(sy_find_torch_nccl)
  get_filename_component(_wheel_dir ${SY_TORCH_DIR}/../nvidia/nccl ABSOLUTE)
  set(_lib ${_wheel_dir}/lib/libnccl.so.2)
  if(NOT EXISTS ${_lib})
    message(FATAL_ERROR "switchyard: torch ${SY_TORCH_VERSION} is a CUDA build but ${_lib} is missing "
                        "(the nvidia-nccl wheel torch depends on). Reinstall torch, or configure with "
                        "-DSWITCHYARD_CUDA=OFF.")
  endif()
  # NO_CACHE and a local name: a new venv must never keep an old answer.
  find_path(_inc nccl.h HINTS ${_wheel_dir}/include ${CUDAToolkit_INCLUDE_DIRS} NO_CACHE)
  if(NOT _inc)
    message(FATAL_ERROR "switchyard: no nccl.h in ${_wheel_dir}/include or ${CUDAToolkit_INCLUDE_DIRS}")
  endif()
  file(STRINGS ${_inc}/nccl.h _defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
  string(REGEX REPLACE ".*NCCL_MAJOR ([0-9]+).*NCCL_MINOR ([0-9]+).*NCCL_PATCH ([0-9]+).*" "\\1.\\2.\\3"
         _version "${_defs}")
  add_library(sy::nccl SHARED IMPORTED GLOBAL)
  set_target_properties(sy::nccl PROPERTIES
      IMPORTED_LOCATION ${_lib}
      IMPORTED_SONAME libnccl.so.2
      INTERFACE_INCLUDE_DIRECTORIES ${_inc}
      INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${_inc})
  set(SY_NCCL_LIBRARY ${_lib} PARENT_SCOPE)
  set(SY_NCCL_LIB_DIR ${_wheel_dir}/lib PARENT_SCOPE)
  set(SY_NCCL_INCLUDE_DIR ${_inc} PARENT_SCOPE)
  set(SY_NCCL_VERSION ${_version} PARENT_SCOPE)
endfunction()

# --- CUDA (optional) ------------------------------------------------------------------------
set(SWITCHYARD_CUDA AUTO CACHE STRING "build the CUDA kernels: AUTO (if nvcc is found), ON, OFF")
set_property(CACHE SWITCHYARD_CUDA PROPERTY STRINGS AUTO ON OFF)
set(SWITCHYARD_WITH_CUDA OFF)
if(NOT SWITCHYARD_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER AND SY_TORCH_CUDA)
    # Data-centre GPUs we target: A100 (sm_80) and H100/H200 (sm_90). Never probed at
    # build time: the build machines have no GPU.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # the same libcudart as torch, never a static copy
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(SWITCHYARD_WITH_CUDA ON)
    sy_torch_library(sy::torch_cuda c10_cuda torch_cuda)
    target_link_libraries(sy::torch INTERFACE sy::torch_cuda CUDA::cudart)
    target_compile_definitions(sy::torch INTERFACE SWITCHYARD_WITH_CUDA=1)
    sy_find_torch_nccl()
    message(STATUS "switchyard: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                   "${CMAKE_CUDA_ARCHITECTURES}, torch CUDA ${SY_TORCH_CUDA}, NCCL ${SY_NCCL_VERSION} "
                   "(${SY_NCCL_LIBRARY}, nccl.h in ${SY_NCCL_INCLUDE_DIR})")
  elseif(SWITCHYARD_CUDA STREQUAL "ON")
    if(CMAKE_CUDA_COMPILER)
      set(_why "torch in ${SY_TORCH_DIR} is a CPU-only build")
    else()
      set(_why "no nvcc was found (install the CUDA toolkit in /usr/local/cuda)")
    endif()
    message(FATAL_ERROR "SWITCHYARD_CUDA=ON but ${_why}; or configure with -DSWITCHYARD_CUDA=AUTO")
  endif()
endif()

# --- ccache for every compiler we use ------------------------------------------------------
find_program(SY_CCACHE ccache)
if(SY_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${SY_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${SY_CCACHE})
endif()
