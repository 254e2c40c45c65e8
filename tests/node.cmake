# kvferry::node (issue #15): the facade and the node actor.
# Two nodes in one process over kvsock (loopback), host memory: push, pull
# all at once and layer by layer, notifications, peers that stop.
kvferry_add_test(NAME test_node SOURCES unit/node_test.cpp
  LIBS kvferry_node LABELS unit TIMEOUT 120)
add_dependencies(test_node nccl-net-kvsock)
# Two processes (the test binary runs itself as the prefill): push and pull
# verified byte for byte; a prefill killed (SIGKILL) mid-pull fails the pull
# within 2 s, naming it.
kvferry_add_test(NAME test_node_process SOURCES integration/node_process_test.cpp
  LIBS kvferry_node LABELS integration faults TIMEOUT 120)
add_dependencies(test_node_process nccl-net-kvsock)
# The CAF level (node_actors.hpp): nodes' actors in the caller's own actor
# system, driven by the caller's own actor; an offered pull answered by the
# decode's transfer actor, a failed one settled before its caller hears; pull
# lanes: a refused pull lands nothing and the next on the same lane lands,
# pulls racing pushes to the same peer land in their own blocks.
kvferry_add_test(NAME test_node_actors SOURCES unit/node_actors_test.cpp
  LIBS kvferry_node LABELS unit TIMEOUT 60)
add_dependencies(test_node_actors nccl-net-kvsock)
# Two processes on GPU 0 (gpu: skipped without one): a layer-by-layer pull is
# a one-sided CUDA IPC read waiting for each layer's CUDA event (interprocess
# or polled); with use_ipc off the plugin path; every byte verified.
kvferry_add_test(NAME test_node_gpu SOURCES gpu/node_gpu_test.cpp
  LIBS kvferry_node GPU LABELS integration TIMEOUT 180)
add_dependencies(test_node_gpu nccl-net-kvsock)
# Directory mode: two nodes meet through a real directory (in this process),
# push and pull verified byte for byte; a node leaving mid-request fails the
# pull naming it; a wrong secret, a taken name are errors of start().
kvferry_add_test(NAME test_node_directory SOURCES unit/node_directory_test.cpp
  LIBS kvferry_node LABELS unit TIMEOUT 120)
add_dependencies(test_node_directory nccl-net-kvsock)
# `kvferry bench node` end to end: its report, and that it exits.
kvferry_add_test(NAME test_bench_node SOURCES integration/bench_node_test.cpp
  LABELS integration TIMEOUT 240)
add_dependencies(test_bench_node kvferry)
