# Choosing GPUs: ordinal checks, IPC peer access, the copy ceiling of a GPU pair and the
# peer-access matrix (unit, on a fake topology), and bench ipc across two GPUs
# (gpu: skipped below two GPUs with peer access); the demo across two GPUs below.
kvferry_add_test(NAME test_gpu_topology SOURCES unit/gpu_topology_test.cpp
  LIBS kvferry_transport LABELS unit)
# `bench ipc --src-gpu 0 --dst-gpu 1` end to end: needs two GPUs with peer
# access, skipped (77) naming what is missing.
kvferry_add_test(NAME test_bench_ipc_two_gpus SOURCES gpu/bench_ipc_two_gpus_test.cpp
  LIBS kvferry_transport LABELS integration TIMEOUT 360 TWO_GPUS PEER_ACCESS)
add_dependencies(test_bench_ipc_two_gpus kvferry)
# `kvferry demo --prefill-gpu 0 --decode-gpu 1` over CUDA IPC and kvsock
# (skipped below two GPUs; without peer access it checks the refusal).
kvferry_add_test(NAME test_gpu_demo_two_gpus SOURCES gpu/gpu_demo_two_gpus_test.cpp
  LIBS kvferry_transport LABELS integration TIMEOUT 600 TWO_GPUS)
add_dependencies(test_gpu_demo_two_gpus kvferry)
