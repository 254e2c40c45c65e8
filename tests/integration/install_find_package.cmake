# Script test: install the build into WORK_DIR/prefix, then configure, build
# and run apps/embedding-example against it as an outside project.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${what}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

run_step("install" ${CMAKE_COMMAND} --install "${BINARY_DIR}" --prefix "${WORK_DIR}/prefix")
run_step("configure example" ${CMAKE_COMMAND} -S "${SOURCE_DIR}/apps/embedding-example"
  -B "${WORK_DIR}/build" -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
run_step("build example" ${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_step("run example" "${WORK_DIR}/build/kvferry-embedding-example" --help)
message(STATUS "${step_output}")
