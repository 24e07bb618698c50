# tern_add_guest(NAME <name> SOURCES <files...> [INCLUDES <dirs...>] [FLAGS <flags...>]
#                [OUTPUT_DIR <dir>])
#
# Builds a tern service from C or C++ sources into <OUTPUT_DIR>/<name>.wasm (default:
# ${CMAKE_BINARY_DIR}/wasm) with Debian's clang-19 for wasm32-wasi, as a reactor module
# that exports `__stack_pointer`. C++ sources are built without exceptions and RTTI
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
set(TERN_GUEST_LDFLAGS -Wl,--export=__stack_pointer -Wl,--strip-debug)

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
