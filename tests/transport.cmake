# Transport: the plugin loader, the channel wrapper, netcheck and bench net.
# Fixture plugins are built into <build>/tests/fixtures: a deterministic
# in-process fake (libnccl-net-fake.so), four plugins that misbehave at load,
# six builds of the fake that each break one rule netcheck checks and three
# with a habit NCCL tolerates.
set(KVFERRY_FIXTURE_DIR ${PROJECT_BINARY_DIR}/tests/fixtures)

function(kvferry_fixture_plugin name source)
  add_library(${name} MODULE ${source})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/transport/include)
  target_link_libraries(${name} PRIVATE kvferry_build_flags Threads::Threads)
  set_target_properties(${name} PROPERTIES PREFIX "lib" LIBRARY_OUTPUT_DIRECTORY ${KVFERRY_FIXTURE_DIR})
endfunction()

kvferry_fixture_plugin(nccl-net-fake unit/transport_fake_plugin.cpp)
set(_bad_kinds exit segv v8only hang)
foreach(_index RANGE 1 4)
  math(EXPR _at "${_index} - 1")
  list(GET _bad_kinds ${_at} _kind)
  kvferry_fixture_plugin(nccl-net-bad-${_kind} unit/transport_bad_plugins.cpp)
  target_compile_definitions(nccl-net-bad-${_kind} PRIVATE KVFERRY_BAD_PLUGIN_KIND=${_index})
endforeach()

# The fake, each build breaking one rule of the v7 contract that a netcheck
# check guards (KVFERRY_FAKE_BREAKS, see transport_fake_plugin.cpp).
set(_broken_rules order tags sizes close iflush table)
set(_broken_plugins)
foreach(_index RANGE 1 6)
  math(EXPR _at "${_index} - 1")
  list(GET _broken_rules ${_at} _rule)
  kvferry_fixture_plugin(nccl-net-broken-${_rule} unit/transport_fake_plugin.cpp)
  target_compile_definitions(nccl-net-broken-${_rule} PRIVATE KVFERRY_FAKE_BREAKS=${_index})
  list(APPEND _broken_plugins nccl-net-broken-${_rule})
endforeach()

# The fake with a third-party habit that NCCL tolerates (KVFERRY_FAKE_QUIRK):
# netcheck, the loader and the channel must tolerate it too.
set(_quirks speed0 slow-listen nocomms)
set(_quirk_plugins)
foreach(_index RANGE 1 3)
  math(EXPR _at "${_index} - 1")
  list(GET _quirks ${_at} _quirk)
  kvferry_fixture_plugin(nccl-net-quirk-${_quirk} unit/transport_fake_plugin.cpp)
  target_compile_definitions(nccl-net-quirk-${_quirk} PRIVATE KVFERRY_FAKE_QUIRK=${_index})
  list(APPEND _quirk_plugins nccl-net-quirk-${_quirk})
endforeach()

function(kvferry_transport_test name)
  kvferry_add_test(NAME ${name} ${ARGN})
  target_compile_definitions(${name} PRIVATE KVFERRY_FIXTURE_DIR="${KVFERRY_FIXTURE_DIR}")
  add_dependencies(${name} nccl-net-fake nccl-net-bad-exit nccl-net-bad-segv
                   nccl-net-bad-v8only nccl-net-bad-hang ${_broken_plugins}
                   ${_quirk_plugins})
endfunction()

kvferry_transport_test(test_transport_loader SOURCES unit/transport_loader_test.cpp
  LIBS kvferry_transport LABELS unit faults TIMEOUT 60)
kvferry_transport_test(test_transport_channel SOURCES unit/transport_channel_test.cpp
  LIBS kvferry_transport LABELS unit TIMEOUT 60)
add_dependencies(test_transport_channel nccl-net-kvsock)  # one case runs over kvsock
# Several NICs: a channel striped over two kvsock devices (loopback
# addresses), and how a worker chooses its devices.
kvferry_transport_test(test_channel_devices SOURCES unit/channel_devices_test.cpp
  LIBS kvferry_transport LABELS unit TIMEOUT 60)
add_dependencies(test_channel_devices nccl-net-kvsock)
kvferry_add_test(NAME test_device_choice SOURCES unit/device_choice_test.cpp
  LIBS kvferry_transport LABELS unit TIMEOUT 30)

# Integration: the kvferry binary's netcheck and bench net.
kvferry_transport_test(test_netcheck SOURCES integration/netcheck_test.cpp
  LIBS kvferry_transport LABELS integration TIMEOUT 300)
add_dependencies(test_netcheck kvferry nccl-net-kvsock)
kvferry_transport_test(test_bench_net SOURCES integration/bench_net_test.cpp
  LIBS kvferry_transport LABELS integration TIMEOUT 300)
add_dependencies(test_bench_net kvferry nccl-net-kvsock)
# Staging CUDA memory through pinned bounce slots for host-only plugins, with
# host copiers standing in for CUDA (the GPU version is tests/gpu).
kvferry_transport_test(test_transport_staging SOURCES unit/transport_staging_test.cpp
  LIBS kvferry_transport LABELS unit TIMEOUT 120)
add_dependencies(test_transport_staging nccl-net-kvsock)
