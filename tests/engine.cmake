# The engine surface (issue #16): kvferry::endpoint, the C API, Python.
# Two endpoints in one process over kvsock, host memory.
kvferry_add_test(NAME test_endpoint SOURCES unit/endpoint_test.cpp
  LIBS kvferry_engine LABELS unit TIMEOUT 120)
add_dependencies(test_endpoint nccl-net-kvsock)
