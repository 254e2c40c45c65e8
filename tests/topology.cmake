# Topology loading and validation, metrics, `kvferry launch` / `status`, and
# the two-namespace multi-host test.
kvferry_add_test(NAME test_topology SOURCES unit/topology_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_metrics SOURCES unit/metrics_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)
