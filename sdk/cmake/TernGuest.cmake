# tern_add_guest(NAME <name> SOURCES <files...> [INCLUDES <dirs...>] [FLAGS <flags...>]
#                [OUTPUT_DIR <dir>])
#
# Builds a tern service from C or C++ sources into <OUTPUT_DIR>/<name>.wasm (default:
# ${CMAKE_BINARY_DIR}/wasm) with Debian's clang-19 for wasm32-wasi, as a reactor module
# that exports `__stack_pointer`, with its shadow stack first in memory (below the data:
# a stack overflow traps instead of overwriting data, and durable instances can tell the
# dead stack a request leaves behind from state; docs/design/migration.md). C++ sources are built without exceptions and RTTI
# (the wasm32 libc++abi has no exception support). Defines a custom target <name>.
#
# Usable outside the tern tree: include(sdk/cmake/TernGuest.cmake) and set
# TERN_SDK_INCLUDE_DIR to sdk/include.

find_program(TERN_WASM_CC NAMES clang-19 DOC "clang for wasm32-wasi guests")
find_program(TERN_WASM_CXX NAMES clang++-19 DOC "clang++ for wasm32-wasi guests")
if(NOT TERN_WASM_CC OR NOT TERN_WASM_CXX)
  message(FATAL_ERROR "clang-19 not found: run scripts/setup.sh (installs clang-19 lld-19 wasi-libc ...)")
endif()
if(NOT TERN_SDK_INCLUDE_DIR)
  get_filename_component(TERN_SDK_INCLUDE_DIR ${CMAKE_CURRENT_LIST_DIR}/../include ABSOLUTE)
endif()
set(TERN_GUEST_CFLAGS --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Wextra -Werror)
set(TERN_GUEST_LDFLAGS -Wl,--export=__stack_pointer -Wl,--stack-first -Wl,--strip-debug)

function(tern_add_guest)
  cmake_parse_arguments(ARG "" "NAME;OUTPUT_DIR" "SOURCES;INCLUDES;FLAGS" ${ARGN})
  if(NOT ARG_OUTPUT_DIR)
    set(ARG_OUTPUT_DIR ${CMAKE_BINARY_DIR}/wasm)
  endif()
  set(out ${ARG_OUTPUT_DIR}/${ARG_NAME}.wasm)
  set(is_cxx FALSE)
  set(srcs)
  foreach(s ${ARG_SOURCES})
    get_filename_component(abs ${s} ABSOLUTE)
    list(APPEND srcs ${abs})
    if(s MATCHES "\\.(cc|cpp|cxx)$")
      set(is_cxx TRUE)
    endif()
  endforeach()
  if(is_cxx)
    set(cc ${TERN_WASM_CXX})
    set(langflags -std=c++20 -fno-exceptions -fno-rtti)
  else()
    set(cc ${TERN_WASM_CC})
    set(langflags -std=c17)
  endif()
  set(incs -I${TERN_SDK_INCLUDE_DIR})
  foreach(i ${ARG_INCLUDES})
    get_filename_component(absi ${i} ABSOLUTE)
    list(APPEND incs -I${absi})
  endforeach()
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${ARG_OUTPUT_DIR}
    COMMAND ${cc} ${TERN_GUEST_CFLAGS} ${langflags} ${incs} ${ARG_FLAGS} ${TERN_GUEST_LDFLAGS}
            -o ${out} ${srcs}
    DEPENDS ${srcs} ${TERN_SDK_INCLUDE_DIR}/tern/tern.h ${TERN_SDK_INCLUDE_DIR}/tern/tern.hpp
    COMMENT "wasm guest ${ARG_NAME}.wasm"
    VERBATIM)
  add_custom_target(${ARG_NAME} ALL DEPENDS ${out})
endfunction()

# tern_add_native_guest(NAME <name> SOURCES <files...> [INCLUDES <dirs...>])
#
# Builds the same guest sources natively (host compiler, -O2) into a static library
# <name>_native, linked with tern_sdk_native (sdk/native/tern_native.c: the tern_v1
# imports implemented on the host; include "tern_native.h" to drive it). Use it to
# benchmark a guest against native code and to unit-test its handlers. Handlers are
# called by their C symbol, so give every handler a C symbol that is unique across the
# guests linked into one binary (TERN_EXPORT(incr) int32_t counter_incr(void) in C,
# TERN_HANDLER(counter_incr, "incr") in C++). C++ sources get -fno-exceptions
# -fno-rtti, as in the wasm build, so native-only code does not creep in.
get_filename_component(TERN_SDK_NATIVE_DIR ${CMAKE_CURRENT_LIST_DIR}/../native ABSOLUTE)

function(tern_add_native_guest)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;INCLUDES" ${ARGN})
  set(warn -Wall -Wextra)
  if(TERN_WERROR)
    list(APPEND warn -Werror)
  endif()
  if(NOT TARGET tern_sdk_native)
    add_library(tern_sdk_native STATIC ${TERN_SDK_NATIVE_DIR}/tern_native.c)
    target_include_directories(tern_sdk_native PUBLIC ${TERN_SDK_INCLUDE_DIR}
                                                      ${TERN_SDK_NATIVE_DIR})
    set_target_properties(tern_sdk_native PROPERTIES C_STANDARD 17 C_EXTENSIONS OFF)
    target_compile_options(tern_sdk_native PRIVATE -O2 ${warn})
  endif()
  add_library(${ARG_NAME}_native STATIC ${ARG_SOURCES})
  target_include_directories(${ARG_NAME}_native PRIVATE ${ARG_INCLUDES})
  target_link_libraries(${ARG_NAME}_native PUBLIC tern_sdk_native)
  set_target_properties(${ARG_NAME}_native PROPERTIES
    C_STANDARD 17 C_EXTENSIONS OFF CXX_STANDARD 20 CXX_EXTENSIONS OFF)
  target_compile_options(${ARG_NAME}_native PRIVATE -O2 ${warn}
                         $<$<COMPILE_LANGUAGE:CXX>:-fno-exceptions -fno-rtti>)
endfunction()
