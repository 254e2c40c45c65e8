# Choosing GPUs: ordinal checks, IPC peer access, the copy ceiling of a GPU pair and the
# peer-access matrix (unit, on a fake topology), and bench ipc across two GPUs
# (gpu: skipped below two GPUs with peer access); the demo across two GPUs below.
kvferry_add_test(NAME test_gpu_topology SOURCES unit/gpu_topology_test.cpp
  LIBS kvferry_transport LABELS unit)
# `bench ipc --src-gpu 0 --dst-gpu 1` end to end. Its own main: it needs two
# GPUs with peer access and skips (77) naming what is missing, which the
# shared GPU main (one GPU is enough) cannot say.
add_executable(test_bench_ipc_two_gpus gpu/bench_ipc_two_gpus_test.cpp)
target_link_libraries(test_bench_ipc_two_gpus PRIVATE kvferry_transport doctest::doctest kvferry_build_flags)
set_target_properties(test_bench_ipc_two_gpus PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
target_compile_definitions(test_bench_ipc_two_gpus PRIVATE KVFERRY_BINARY_DIR="${PROJECT_BINARY_DIR}")
target_include_directories(test_bench_ipc_two_gpus PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/support)
add_dependencies(test_bench_ipc_two_gpus kvferry)
add_test(NAME test_bench_ipc_two_gpus COMMAND test_bench_ipc_two_gpus)
set_tests_properties(test_bench_ipc_two_gpus PROPERTIES
  LABELS "integration;gpu" TIMEOUT 360 SKIP_RETURN_CODE ${KVFERRY_SKIP_CODE})
# `kvferry demo --prefill-gpu 0 --decode-gpu 1` over CUDA IPC and kvsock
# (gpu: skipped below two GPUs; its own main says so).
add_executable(test_gpu_demo_two_gpus gpu/gpu_demo_two_gpus_test.cpp)
target_link_libraries(test_gpu_demo_two_gpus PRIVATE kvferry_transport doctest::doctest kvferry_build_flags)
set_target_properties(test_gpu_demo_two_gpus PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
target_compile_definitions(test_gpu_demo_two_gpus PRIVATE KVFERRY_BINARY_DIR="${PROJECT_BINARY_DIR}")
target_include_directories(test_gpu_demo_two_gpus PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/support)
add_dependencies(test_gpu_demo_two_gpus kvferry)
add_test(NAME test_gpu_demo_two_gpus COMMAND test_gpu_demo_two_gpus)
set_tests_properties(test_gpu_demo_two_gpus PROPERTIES
  LABELS "integration;gpu" TIMEOUT 600 SKIP_RETURN_CODE ${KVFERRY_SKIP_CODE})
