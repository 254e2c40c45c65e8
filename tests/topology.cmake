# Topology loading and validation, metrics, `kvferry launch` / `status`, and
# the two-namespace multi-host test.
kvferry_add_test(NAME test_topology SOURCES unit/topology_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_metrics SOURCES unit/metrics_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)

# `kvferry launch` / `status` driven as a user would, with stand-in children.
add_test(NAME test_launch
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/launch_test.sh $<TARGET_FILE:kvferry>)
set_tests_properties(test_launch PROPERTIES LABELS integration TIMEOUT 180)
