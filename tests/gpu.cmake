# GPU data path: plans and unpack mapping (unit, run everywhere) and the
# kernels, CUDA IPC across processes (gpu: skipped without a GPU).
kvferry_add_test(NAME test_copy_plan SOURCES unit/copy_plan_test.cpp
  LIBS kvferry_transport LABELS unit)
kvferry_add_test(NAME test_unpack_mapping SOURCES unit/unpack_test.cpp
  LIBS kvferry_transport LABELS unit)
kvferry_add_test(NAME test_gpu_memory_host SOURCES unit/gpu_memory_test.cpp
  LIBS kvferry_transport LABELS unit)
kvferry_add_test(NAME test_gpu_copy SOURCES gpu/gpu_copy_test.cpp
  LIBS kvferry_transport GPU LABELS integration TIMEOUT 120)
kvferry_add_test(NAME test_gpu_ipc SOURCES gpu/gpu_ipc_test.cpp
  LIBS kvferry_transport GPU LABELS integration TIMEOUT 120)
# kvsock in UNPACK mode + the unpack kernel, end to end (loads the built plugin).
kvferry_add_test(NAME test_gpu_unpack_kvsock SOURCES gpu/gpu_unpack_kvsock_test.cpp
  LIBS kvferry_transport ${CMAKE_DL_LIBS} GPU LABELS integration TIMEOUT 120)
add_dependencies(test_gpu_unpack_kvsock nccl-net-kvsock)
# GPU choice (ordinals, copy ceiling, peer-access matrix) on a fake topology.
kvferry_add_test(NAME test_gpu_topology SOURCES unit/gpu_topology_test.cpp
  LIBS kvferry_transport LABELS unit)
# `bench ipc --src-gpu 0 --dst-gpu 1` end to end. Its own main: it needs two
# GPUs with peer access and skips (77) naming what is missing, which the
# shared GPU main (one GPU is enough) cannot say.
add_executable(test_bench_ipc_two_gpus gpu/bench_ipc_two_gpus_test.cpp)
target_link_libraries(test_bench_ipc_two_gpus PRIVATE kvferry_transport doctest::doctest kvferry_build_flags)
set_target_properties(test_bench_ipc_two_gpus PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
target_compile_definitions(test_bench_ipc_two_gpus PRIVATE KVFERRY_BINARY_DIR="${PROJECT_BINARY_DIR}")
add_dependencies(test_bench_ipc_two_gpus kvferry)
add_test(NAME test_bench_ipc_two_gpus COMMAND test_bench_ipc_two_gpus)
set_tests_properties(test_bench_ipc_two_gpus PROPERTIES
  LABELS "integration;gpu" TIMEOUT 360 SKIP_RETURN_CODE ${KVFERRY_SKIP_CODE})
