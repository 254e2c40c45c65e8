# Runtime and directory tests (tests/unit/runtime_*, tests/unit/directory_*).
kvferry_add_test(NAME test_runtime_errors SOURCES unit/runtime_error_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
kvferry_add_test(NAME test_directory SOURCES unit/directory_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 30)
# Starts `kvferry directory --port 0` as a process and talks to it over TCP.
kvferry_add_test(NAME test_directory_process
  SOURCES integration/directory_process_test.cpp
  LIBS kvferry_actors LABELS integration TIMEOUT 90)
add_dependencies(test_directory_process kvferry)
# Sending a type without a type id must be a compile error. The probe is
# compiled as two object libraries that link kvferry_runtime, so it gets
# exactly the flags that target exports to its users (CAF_ENABLE_TYPE_ID_CHECKS
# among them): if the flag ever leaves the real target, the unregistered probe
# compiles and the test fails. Not part of `all`; the test builds them
# (~10 s of CPU).
foreach(_probe unregistered registered)
  add_library(kvferry_type_id_probe_${_probe} OBJECT EXCLUDE_FROM_ALL
    unit/runtime_type_id_check.cpp)
  target_link_libraries(kvferry_type_id_probe_${_probe} PRIVATE kvferry_runtime)
endforeach()
target_compile_definitions(kvferry_type_id_probe_registered PRIVATE
  KVFERRY_REGISTER_PROBE)
add_test(NAME test_runtime_type_id_checks
  COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/unit/runtime_type_id_check.cmake)
# slow: 20-35 s (two compiles of a CAF translation unit).
set_tests_properties(test_runtime_type_id_checks PROPERTIES LABELS "unit;slow" TIMEOUT 120)
# The scheduler's hot window (runtime/hot_sharing.hpp).
kvferry_add_test(NAME test_hot_scheduler SOURCES unit/hot_scheduler_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
# Bounded shutdown of actors and actor systems (runtime/system_config.hpp).
kvferry_add_test(NAME test_actor_shutdown SOURCES unit/actor_shutdown_test.cpp
  LIBS kvferry_runtime LABELS unit TIMEOUT 60)
