# Foundation tests: ABI layout, the installed package.
kvferry_add_test(NAME test_abi_layout SOURCES unit/abi_layout_test.cpp
  LIBS kvferry_transport LABELS unit)
kvferry_add_test(NAME test_gpu_smoke SOURCES gpu/gpu_smoke_test.cpp
  LIBS kvferry_transport GPU LABELS gpu)

# The installed package (find_package(kvferry)) is tested with the
# embedding example built against it: tests/embedding_example.cmake.
