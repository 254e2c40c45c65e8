# Self-healing membership: the lease keeper and the directory's stall
# watchdog in virtual time; the deployment surviving a stopped or killed
# directory and a stopped worker, as processes.
kvferry_add_test(NAME test_membership SOURCES unit/membership_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
kvferry_add_test(NAME test_membership_faults
  SOURCES faults/membership_faults_test.cpp
  LIBS kvferry_build_flags LABELS faults integration slow TIMEOUT 300) # 21-38 s
add_dependencies(test_membership_faults kvferry)
