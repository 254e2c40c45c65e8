# The embedding example (apps/embedding-example, issue #15).
# Its own parts: block manager, model-step content and verifier, notify
# messages, trace plan, report, command line.
kvferry_add_test(NAME test_example_parts SOURCES unit/example_parts_test.cpp
  LIBS kvferry_example_parts LABELS unit TIMEOUT 60)
# The example built against the installed package and run as two processes
# on a trace slice, then with its prefill server killed (replaces the old
# install + find_package check). slow: the install and the example's build.
add_test(NAME test_embedding_example
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/embedding_example_test.sh
    ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
set_tests_properties(test_embedding_example PROPERTIES
  LABELS "integration;install;slow" TIMEOUT 600)
