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
# Sending a type without a type id must be a compile error (two compiler runs,
# ~10 s of CPU).
add_test(NAME test_runtime_type_id_checks
  COMMAND ${CMAKE_COMMAND} -DCXX=${CMAKE_CXX_COMPILER}
    -DINCLUDE=${PROJECT_SOURCE_DIR}/runtime/include
    -DSOURCE=${CMAKE_CURRENT_SOURCE_DIR}/unit/runtime_type_id_check.cpp
    -P ${CMAKE_CURRENT_SOURCE_DIR}/unit/runtime_type_id_check.cmake)
set_tests_properties(test_runtime_type_id_checks PROPERTIES LABELS unit TIMEOUT 120)
