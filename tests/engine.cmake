# The engine surface (issue #16): kvferry::endpoint, the C API, Python.
# Two endpoints in one process over kvsock, host memory.
kvferry_add_test(NAME test_endpoint SOURCES unit/endpoint_test.cpp
  LIBS kvferry_engine LABELS unit TIMEOUT 120)
add_dependencies(test_endpoint nccl-net-kvsock kvferry) # kvferry pki init
# The control actor when its own transfer actor stops (deterministic).
kvferry_add_test(NAME test_endpoint_control SOURCES unit/endpoint_control_test.cpp
  LIBS kvferry_engine LABELS unit TIMEOUT 60)
target_compile_definitions(test_endpoint_control PRIVATE
  KVFERRY_FIXTURE_DIR="${PROJECT_BINARY_DIR}/tests/fixtures")
add_dependencies(test_endpoint_control nccl-net-fake)

# The C API from C99 (-pedantic, warnings are errors): both sides in one
# process, bad input included. The same program is one side of
# test_endpoint_peers (two processes).
add_executable(endpoint_peer_c integration/endpoint_peer.c)
set_target_properties(endpoint_peer_c PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON
  C_EXTENSIONS OFF RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
target_compile_options(endpoint_peer_c PRIVATE -pedantic -Wall -Wextra -Werror)
# kvferry_build_flags: under KVFERRY_SANITIZE the program must bring the
# sanitizer runtimes that libkvferry.so was built against.
target_link_libraries(endpoint_peer_c PRIVATE kvferry_c kvferry_build_flags)
add_test(NAME test_endpoint_c COMMAND endpoint_peer_c both)
set_tests_properties(test_endpoint_c PROPERTIES LABELS unit TIMEOUT 60
  ENVIRONMENT "KVFERRY_PLUGIN_PATH=${PROJECT_BINARY_DIR}/lib")
add_dependencies(endpoint_peer_c nccl-net-kvsock)

# The Python module over libkvferry.so, with Debian's python3 and numpy:
# both sides in one process (vector form, timeout, raw pointers, errors).
find_program(KVFERRY_TEST_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT KVFERRY_TEST_PYTHON)
  find_program(KVFERRY_TEST_PYTHON NAMES python3)
endif()
# Under KVFERRY_SANITIZE, python3 loads an instrumented libkvferry.so: the
# sanitizer runtimes must come first (preloaded), and the interpreter's own
# allocations are not ours to leak-check.
set(KVFERRY_PYTHON_TEST_ENV "")
set(KVFERRY_PEERS_PYTHON_ENV "")
if(KVFERRY_SANITIZE)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libasan.so
                  OUTPUT_VARIABLE _asan OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libubsan.so
                  OUTPUT_VARIABLE _ubsan OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(KVFERRY_PYTHON_TEST_ENV "LD_PRELOAD=${_asan}:${_ubsan};ASAN_OPTIONS=detect_leaks=0")
  # endpoint_peers.sh puts these before its python3 only (env).
  set(KVFERRY_PEERS_PYTHON_ENV "KVFERRY_PYTHON_ENV=LD_PRELOAD=${_asan}:${_ubsan} ASAN_OPTIONS=detect_leaks=0")
endif()
add_test(NAME test_endpoint_python
  COMMAND ${KVFERRY_TEST_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/integration/endpoint_peer.py both)
set_tests_properties(test_endpoint_python PROPERTIES LABELS unit TIMEOUT 60
  ENVIRONMENT "PYTHONPATH=${PROJECT_BINARY_DIR}/python;${KVFERRY_PYTHON_TEST_ENV}")
# A library without the C API (the plugin) stands for a stale libkvferry.so.
add_test(NAME test_endpoint_python_stale_library
  COMMAND ${KVFERRY_TEST_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/integration/python_stale_library.py
          $<TARGET_FILE:nccl-net-kvsock>)
set_tests_properties(test_endpoint_python_stale_library PROPERTIES LABELS unit TIMEOUT 60
  ENVIRONMENT "PYTHONPATH=${PROJECT_BINARY_DIR}/python;${KVFERRY_PYTHON_TEST_ENV}")

# Two processes through each surface (C++, C, Python, and mixed) on kvsock.
add_executable(endpoint_peer_cpp integration/endpoint_peer.cpp)
target_link_libraries(endpoint_peer_cpp PRIVATE kvferry_engine kvferry_build_flags)
set_target_properties(endpoint_peer_cpp PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
add_dependencies(endpoint_peer_cpp nccl-net-kvsock)
add_test(NAME test_endpoint_peers
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/endpoint_peers.sh
          $<TARGET_FILE:endpoint_peer_cpp> $<TARGET_FILE:endpoint_peer_c> ${KVFERRY_TEST_PYTHON})
set_tests_properties(test_endpoint_peers PROPERTIES LABELS integration TIMEOUT 300
  ENVIRONMENT "PYTHONPATH=${PROJECT_BINARY_DIR}/python;KVFERRY_PLUGIN_PATH=${PROJECT_BINARY_DIR}/lib;${KVFERRY_PEERS_PYTHON_ENV}")

# GPU memory (skip without a GPU): C++ endpoints on cudaMalloc'd buffers, and
# Python with torch/cupy tensors (__cuda_array_interface__); both over kvsock.
kvferry_add_test(NAME test_endpoint_gpu SOURCES gpu/endpoint_gpu_test.cpp
  LIBS kvferry_engine GPU LABELS integration TIMEOUT 120)
add_dependencies(test_endpoint_gpu nccl-net-kvsock)
# A target of the same name, so that device-run.sh's bundle builds it.
add_custom_target(test_endpoint_torch DEPENDS kvferry_c nccl-net-kvsock)
add_test(NAME test_endpoint_torch COMMAND ${PROJECT_BINARY_DIR}/tests/test_endpoint_torch)
set_tests_properties(test_endpoint_torch PROPERTIES LABELS "gpu;integration" TIMEOUT 120
  SKIP_RETURN_CODE 77 ENVIRONMENT "KVFERRY_PLUGIN_PATH=${PROJECT_BINARY_DIR}/lib;KVFERRY_PYTHON=${KVFERRY_TEST_PYTHON}")

# The send/teardown race: 50 clients in a row destroy their endpoint as soon
# as their send completed (no goodbye); the server verifies every send.
add_test(NAME test_endpoint_teardown
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/endpoint_peers.sh
          $<TARGET_FILE:endpoint_peer_cpp> $<TARGET_FILE:endpoint_peer_c> ${KVFERRY_TEST_PYTHON}
          teardown 50)
set_tests_properties(test_endpoint_teardown PROPERTIES LABELS integration TIMEOUT 300
  ENVIRONMENT "KVFERRY_PLUGIN_PATH=${PROJECT_BINARY_DIR}/lib")

# `kvferry bench endpoint` end to end (rounds, bench net, the Python column).
kvferry_add_test(NAME test_bench_endpoint SOURCES integration/bench_endpoint_test.cpp
  LIBS nlohmann_json::nlohmann_json LABELS integration TIMEOUT 300)
# Under KVFERRY_SANITIZE the Python column is left out (its python3 would
# load an instrumented libkvferry.so without the runtimes preloaded).
if(KVFERRY_SANITIZE)
  set(_bench_python "")
else()
  set(_bench_python "${KVFERRY_TEST_PYTHON}")
endif()
target_compile_definitions(test_bench_endpoint PRIVATE
  KVFERRY_TEST_PYTHON="${_bench_python}")
add_dependencies(test_bench_endpoint kvferry nccl-net-kvsock)
