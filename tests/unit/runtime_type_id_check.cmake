# Proves CAF_ENABLE_TYPE_ID_CHECKS is on for kvferry's message types in the
# real build: the probe (runtime_type_id_check.cpp), compiled with the flags
# kvferry_runtime exports (tests/runtime.cmake), must fail with CAF's "has
# no type ID" error, and compile once the probe type is registered.
#   cmake -DBUILD_DIR=<build tree> -P runtime_type_id_check.cmake
function(build_probe name rc_var out_var)
  execute_process(
    COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${name}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(${rc_var} ${rc} PARENT_SCOPE)
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

build_probe(kvferry_type_id_probe_unregistered unregistered_rc unregistered_out)
if(unregistered_rc EQUAL 0)
  message(FATAL_ERROR "sending an unregistered type compiled with "
    "kvferry_runtime's flags: type-ID checks are off")
endif()
if(NOT unregistered_out MATCHES "has no type ID")
  message(FATAL_ERROR "the probe failed for another reason than the type-ID "
    "check:\n${unregistered_out}")
endif()
build_probe(kvferry_type_id_probe_registered registered_rc registered_out)
if(NOT registered_rc EQUAL 0)
  message(FATAL_ERROR "the registered probe does not compile:\n${registered_out}")
endif()
message(STATUS "type-ID checks: unregistered type rejected at compile time "
  "with kvferry_runtime's flags, registered type accepted")
