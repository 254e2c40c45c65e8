# Transfer, producer and consumer actors; `kvferry worker` and `kvferry demo`.
kvferry_add_test(NAME test_plan_pool SOURCES unit/plan_pool_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_protocol_messages SOURCES unit/protocol_messages_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 30)
