# Finds V8 from Debian's libnode (Node 18 / V8 10.2) and defines the target tern::v8.
#
# scripts/setup.sh records the prefix it chose in .deps/libnode.prefix: /usr when
# Debian's libnode-dev is installed, or the project-local unpack in .deps/libnode/usr
# when a non-Debian nodejs (NodeSource) blocks apt. TERN_LIBNODE_PREFIX overrides.
#
# Guard: the headers' NODE_MODULE_VERSION must match the libnode soname
# (libnode.so.<NODE_MODULE_VERSION>). NodeSource installs Node 20 headers in
# /usr/include/node; compiling against them and linking libnode.so.108 builds fine and
# crashes at runtime, so a mismatch fails the configure step here.

set(TERN_LIBNODE_PREFIX "" CACHE PATH "Prefix holding include/node/v8.h and lib/<arch>/libnode.so.<N>")
if(NOT TERN_LIBNODE_PREFIX)
  if(EXISTS ${PROJECT_SOURCE_DIR}/.deps/libnode.prefix)
    file(READ ${PROJECT_SOURCE_DIR}/.deps/libnode.prefix _prefix)
    string(STRIP "${_prefix}" _prefix)
    set(TERN_LIBNODE_PREFIX ${_prefix} CACHE PATH "" FORCE)
  else()
    message(FATAL_ERROR "V8 not set up: run scripts/setup.sh first (it installs libnode and records where)")
  endif()
endif()

find_path(V8_INCLUDE_DIR v8.h PATHS ${TERN_LIBNODE_PREFIX}/include/node NO_DEFAULT_PATH)
find_library(NODE_LIBRARY NAMES node PATHS ${TERN_LIBNODE_PREFIX}/lib/${CMAKE_LIBRARY_ARCHITECTURE}
             ${TERN_LIBNODE_PREFIX}/lib NO_DEFAULT_PATH)
if(NOT V8_INCLUDE_DIR OR NOT NODE_LIBRARY)
  message(FATAL_ERROR "V8 headers or libnode not found under ${TERN_LIBNODE_PREFIX}: run scripts/setup.sh")
endif()

file(STRINGS ${V8_INCLUDE_DIR}/node_version.h _mv REGEX "^#define NODE_MODULE_VERSION [0-9]+")
string(REGEX REPLACE ".* ([0-9]+)$" "\\1" TERN_NODE_MODULE_VERSION "${_mv}")
get_filename_component(_libdir ${NODE_LIBRARY} DIRECTORY)
if(NOT EXISTS ${_libdir}/libnode.so.${TERN_NODE_MODULE_VERSION})
  file(GLOB _have ${_libdir}/libnode.so.*)
  message(FATAL_ERROR
    "V8 header/library mismatch: ${V8_INCLUDE_DIR}/node_version.h says NODE_MODULE_VERSION "
    "${TERN_NODE_MODULE_VERSION}, but ${_libdir} has ${_have} (needs libnode.so.${TERN_NODE_MODULE_VERSION}). "
    "Mixing them compiles and then crashes at run time. Run scripts/setup.sh, or set "
    "TERN_LIBNODE_PREFIX to a prefix whose headers and library belong together.")
endif()
file(STRINGS ${V8_INCLUDE_DIR}/v8-version.h _v8 REGEX "^#define V8_(MAJOR|MINOR)_VERSION")
message(STATUS "V8: ${V8_INCLUDE_DIR} + ${NODE_LIBRARY} (NODE_MODULE_VERSION ${TERN_NODE_MODULE_VERSION}; ${_v8})")

add_library(tern_v8 INTERFACE)
# SYSTEM: V8's headers are not ours to keep warning-free.
target_include_directories(tern_v8 SYSTEM INTERFACE ${V8_INCLUDE_DIR})
target_link_libraries(tern_v8 INTERFACE ${NODE_LIBRARY} Threads::Threads)
target_link_options(tern_v8 INTERFACE "-Wl,-rpath,${_libdir}")
add_library(tern::v8 ALIAS tern_v8)
