# kvsock, the bundled v7 plugin: driven through its table after dlopen.
kvferry_add_test(NAME test_kvsock_plugin SOURCES unit/kvsock_plugin_test.cpp
  LIBS kvsock_headers ${CMAKE_DL_LIBS} LABELS unit TIMEOUT 120)
add_dependencies(test_kvsock_plugin nccl-net-kvsock)
kvferry_add_test(NAME test_kvsock_faults SOURCES faults/kvsock_faults_test.cpp
  LIBS kvsock_headers ${CMAKE_DL_LIBS} LABELS faults TIMEOUT 120)
add_dependencies(test_kvsock_faults nccl-net-kvsock)
