# Transfer, producer and consumer actors; `kvferry worker` and `kvferry demo`.
kvferry_add_test(NAME test_plan_pool SOURCES unit/plan_pool_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_protocol_messages SOURCES unit/protocol_messages_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)
# slow: 40-70 s on the 2-core CI machine (ten demo runs: a directory, a
# prefill worker and, by default, the decode worker beside the router).
kvferry_add_test(NAME test_demo_multiprocess SOURCES integration/demo_multiprocess_test.cpp
  LIBS kvferry_build_flags LABELS integration slow TIMEOUT 400)
add_dependencies(test_demo_multiprocess kvferry)
# slow: ~30 s (two deployments of 3 processes each, a kill and its notice).
kvferry_add_test(NAME test_actor_peer_death SOURCES faults/actor_peer_death_test.cpp
  LIBS kvferry_build_flags LABELS faults integration slow TIMEOUT 120)
add_dependencies(test_actor_peer_death kvferry)
# slow: 16-38 s (deployments of 3 processes, a producer killed mid-run).
kvferry_add_test(NAME test_producer_death SOURCES faults/producer_death_test.cpp
  LIBS kvferry_build_flags LABELS faults integration slow TIMEOUT 300)
add_dependencies(test_producer_death kvferry)
kvferry_add_test(NAME test_producer_consumer SOURCES unit/producer_consumer_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# GPU wiring, CPU side: data path choice, host KV pattern, --gpu errors.
kvferry_add_test(NAME test_gpu_wiring SOURCES unit/gpu_wiring_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 120)
add_dependencies(test_gpu_wiring kvferry)
# The choice of a pattern worker per fill or check (a private helper of
# actors/src, hence its include path).
kvferry_add_test(NAME test_pattern_jobs SOURCES unit/pattern_jobs_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
target_include_directories(test_pattern_jobs PRIVATE ${PROJECT_SOURCE_DIR}/actors/src)
# Sampled verification's stamps on host memory: each fault it must catch.
kvferry_add_test(NAME test_kv_stamp SOURCES unit/kv_stamp_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# Two real transfer actors over kvsock: extents from a peer that leave the
# registered region are refused (the trust boundary), nothing written; the
# idle policy (wake watch, hot window: a private rule of actors/src).
kvferry_add_test(NAME test_transfer_bounds SOURCES unit/transfer_bounds_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
target_include_directories(test_transfer_bounds PRIVATE ${PROJECT_SOURCE_DIR}/actors/src)
add_dependencies(test_transfer_bounds nccl-net-kvsock)
# Announcements batched per peer: many transfers in flight land in order, a
# channel dropped with a batch pending fails its transfers at both ends. Two
# real transfer actors in the deterministic scheduler over the fake plugin.
kvferry_add_test(NAME test_transfer_announce SOURCES unit/transfer_announce_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
target_compile_definitions(test_transfer_announce PRIVATE
  KVFERRY_FIXTURE_DIR="${PROJECT_BINARY_DIR}/tests/fixtures")
add_dependencies(test_transfer_announce nccl-net-fake)
# The routing policies the router and the simulator share (plain code).
kvferry_add_test(NAME test_route_policy SOURCES unit/route_policy_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# The router under the deterministic scheduler (virtual time, fake producers).
kvferry_add_test(NAME test_router SOURCES unit/router_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# start_worker in the test's own actor system: registration, leave, errors.
kvferry_add_test(NAME test_worker_start SOURCES unit/worker_start_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
add_dependencies(test_worker_start nccl-net-kvsock)
# The caller's memory registered in place (issue #15): two real transfer
# actors over kvsock, each with a table of three wrapped host regions.
kvferry_add_test(NAME test_region_table SOURCES unit/region_table_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
add_dependencies(test_region_table nccl-net-kvsock)
# kv_layout and plan_kv against a byte-by-byte reference copy (issue #15).
kvferry_add_test(NAME test_kv_layout SOURCES unit/kv_layout_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
