# Several NICs (issue #18): kvsock striped over two rate-limited veth pairs
# between two network namespaces. Needs root (CI); skips (77) otherwise.
add_executable(nic_stripe_peer integration/nic_stripe_peer.cpp)
target_link_libraries(nic_stripe_peer PRIVATE kvferry_transport kvferry_build_flags)
set_target_properties(nic_stripe_peer PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
add_dependencies(nic_stripe_peer nccl-net-kvsock)
add_test(NAME test_nic_stripe
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/nic_stripe_test.sh $<TARGET_FILE:nic_stripe_peer>)
# RUN_SERIAL: it compares two rates, and beside other tests on a 2-core
# machine a starved sender leaves the links idle (1.76-1.78x seen in CI and
# under builds, 1.91-1.96x alone).
set_tests_properties(test_nic_stripe PROPERTIES
  RUN_SERIAL TRUE LABELS integration TIMEOUT 300 SKIP_RETURN_CODE ${KVFERRY_SKIP_CODE}
  ENVIRONMENT "KVFERRY_PLUGIN_PATH=${PROJECT_BINARY_DIR}/lib")
