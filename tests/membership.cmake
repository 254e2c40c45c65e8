# Self-healing membership: the lease keeper and the directory's stall
# watchdog in virtual time; the deployment surviving a stopped or killed
# directory and a stopped worker, as processes.
kvferry_add_test(NAME test_membership SOURCES unit/membership_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
