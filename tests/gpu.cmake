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
# KV pools in GPU memory: allocate_cuda, the GPU KV pattern and its compare.
kvferry_add_test(NAME test_gpu_kv SOURCES gpu/gpu_kv_test.cpp
  LIBS kvferry_actors GPU LABELS integration TIMEOUT 120)
# `kvferry demo` with both workers on GPU 0: CUDA IPC (push, layerwise, pull)
# and kvsock with GPU memory.
kvferry_add_test(NAME test_gpu_demo SOURCES gpu/gpu_demo_test.cpp
  LIBS kvferry_build_flags GPU LABELS integration TIMEOUT 600)
add_dependencies(test_gpu_demo kvferry)
# kvsock forced host-only (KVSOCK_PTR_SUPPORT=host): the channel stages CUDA
# regions through pinned bounce slots with CUDA copies; every byte verified.
kvferry_add_test(NAME test_gpu_staging_kvsock SOURCES gpu/gpu_staging_kvsock_test.cpp
  LIBS kvferry_transport GPU LABELS integration TIMEOUT 180)
add_dependencies(test_gpu_staging_kvsock nccl-net-kvsock)
# The per-GPU copy-kernel choice without a GPU: cache file, key, choosing
# from timings, override precedence (copy_choice.hpp).
kvferry_add_test(NAME test_copy_choice SOURCES unit/copy_choice_test.cpp
  LIBS kvferry_transport LABELS unit)
# The same choice on a GPU: a real autotune, its cache entry, and engines
# running the chosen (and the plain) kernels, every byte verified.
kvferry_add_test(NAME test_gpu_copy_choice SOURCES gpu/gpu_copy_choice_test.cpp
  LIBS kvferry_transport GPU LABELS integration TIMEOUT 180)
# The caller's GPU memory registered in place, three regions per side, over
# kvsock (issue #15; the host variant is test_region_table).
kvferry_add_test(NAME test_region_table_gpu SOURCES gpu/region_table_gpu_test.cpp
  LIBS kvferry_actors GPU LABELS integration TIMEOUT 120)
add_dependencies(test_region_table_gpu nccl-net-kvsock)
