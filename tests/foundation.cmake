# Foundation tests: ABI layout, the installed package.
kvferry_add_test(NAME test_abi_layout SOURCES unit/abi_layout_test.cpp
  LIBS kvferry_transport LABELS unit)
kvferry_add_test(NAME test_gpu_smoke SOURCES gpu/gpu_smoke_test.cpp
  LIBS kvferry_transport GPU LABELS gpu)

# Installs kvferry into a scratch prefix and builds the embedding example
# against it with find_package(kvferry), as an outside project would.
add_test(NAME test_install_find_package
  COMMAND ${CMAKE_COMMAND}
    -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DBINARY_DIR=${PROJECT_BINARY_DIR}
    -DWORK_DIR=${PROJECT_BINARY_DIR}/install-test
    -P ${CMAKE_CURRENT_SOURCE_DIR}/integration/install_find_package.cmake)
set_tests_properties(test_install_find_package PROPERTIES LABELS "integration;install;slow" TIMEOUT 600)
