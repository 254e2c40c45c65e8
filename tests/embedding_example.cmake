# The embedding example (apps/embedding-example, issue #15).
# Its own parts: block manager, model-step content and verifier, notify
# messages, trace plan, report.
kvferry_add_test(NAME test_example_parts SOURCES unit/example_parts_test.cpp
  LIBS kvferry_example_parts LABELS unit TIMEOUT 60)
