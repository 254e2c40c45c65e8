# kvferry::node (issue #15): the facade and the node actor.
# Two nodes in one process over kvsock (loopback), host memory: push, pull
# all at once and layer by layer, notifications, peers that stop.
kvferry_add_test(NAME test_node SOURCES unit/node_test.cpp
  LIBS kvferry_node LABELS unit TIMEOUT 120)
add_dependencies(test_node nccl-net-kvsock)
