# tern_cc_library(NAME name SRCS ... [HDRS ...] [DEPS ...])
#   A static library `tern_<name>`; include paths are rooted at src/.
# tern_cc_test(NAME name SRCS ... [DEPS ...] [GUESTS ...] [LABELS ...])
#   A gtest binary `<name>`, its tests registered one by one with ctest.
#   GUESTS: guest targets (tern_add_guest) the test needs built first; the test finds
#   them in the directory given by the TERN_WASM_DIR environment variable.
#   Sanitizer options for tests come from tests/testing/sanitizer_options.cc.

set(TERN_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(TERN_WERROR)
  list(APPEND TERN_WARNINGS -Werror)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  list(APPEND TERN_WARNINGS -Wthread-safety)
endif()

if(TERN_SANITIZE STREQUAL "address")
  # vptr checks need RTTI, which Debian's libnode (V8) is built without.
  add_compile_options(-fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(TERN_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread)
  add_link_options(-fsanitize=thread)
elseif(NOT TERN_SANITIZE STREQUAL "")
  message(FATAL_ERROR "TERN_SANITIZE must be '', 'address' or 'thread', not '${TERN_SANITIZE}'")
endif()

set(TERN_WASM_DIR ${CMAKE_BINARY_DIR}/wasm)

function(tern_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  add_library(tern_${ARG_NAME} STATIC ${ARG_SRCS})
  target_include_directories(tern_${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_compile_options(tern_${ARG_NAME} PRIVATE ${TERN_WARNINGS})
  target_link_libraries(tern_${ARG_NAME} PUBLIC ${ARG_DEPS})
endfunction()

function(tern_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;GUESTS;LABELS" ${ARGN})
  if(NOT TERN_BUILD_TESTS)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_compile_options(${ARG_NAME} PRIVATE ${TERN_WARNINGS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  foreach(g ${ARG_GUESTS})
    add_dependencies(${ARG_NAME} ${g})
  endforeach()
  # One ENVIRONMENT entry only: gtest_discover_tests splits lists. Other paths are
  # compiled into tern_testing (tests/testing/test_env.cc).
  set(props ENVIRONMENT "TERN_WASM_DIR=${TERN_WASM_DIR}" TIMEOUT 120)
  if(ARG_LABELS)
    list(APPEND props LABELS ${ARG_LABELS})
  endif()
  gtest_discover_tests(${ARG_NAME} DISCOVERY_MODE PRE_TEST PROPERTIES ${props})
endfunction()
