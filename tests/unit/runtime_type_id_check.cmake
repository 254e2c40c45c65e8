# Proves CAF_ENABLE_TYPE_ID_CHECKS is on for kvferry's message types: the
# probe must fail to compile with CAF's "has no type ID" error, and compile
# once the probe type is registered.
#   cmake -DCXX=... -DINCLUDE=... -DSOURCE=... -P runtime_type_id_check.cmake
set(flags -std=c++17 -fsyntax-only -DCAF_ENABLE_TYPE_ID_CHECKS -I${INCLUDE})
execute_process(COMMAND ${CXX} ${flags} ${SOURCE}
  RESULT_VARIABLE unregistered_rc ERROR_VARIABLE unregistered_err)
if(unregistered_rc EQUAL 0)
  message(FATAL_ERROR "sending an unregistered type compiled: type-ID checks are off")
endif()
if(NOT unregistered_err MATCHES "has no type ID")
  message(FATAL_ERROR "the probe failed for another reason than the type-ID check:\n${unregistered_err}")
endif()
execute_process(COMMAND ${CXX} ${flags} -DKVFERRY_REGISTER_PROBE ${SOURCE}
  RESULT_VARIABLE registered_rc ERROR_VARIABLE registered_err)
if(NOT registered_rc EQUAL 0)
  message(FATAL_ERROR "the registered probe does not compile:\n${registered_err}")
endif()
message(STATUS "type-ID checks: unregistered type rejected at compile time, registered type accepted")
