# `kvferry demo --mps`: the choice of a private MPS daemon (a pure function),
# the demo's child under it (demo_private_mps.hpp), and the daemon's start
# and stop against a fake nvidia-cuda-mps-control (no GPU or MPS needed).
# The app source is compiled in: apps/ has no library.
kvferry_add_test(NAME test_mps_daemon
  SOURCES unit/mps_daemon_test.cpp ${PROJECT_SOURCE_DIR}/apps/kvferry/mps_daemon.cpp
    ${PROJECT_SOURCE_DIR}/apps/kvferry/demo_private_mps.cpp
    ${PROJECT_SOURCE_DIR}/apps/kvferry/subprocess.cpp ${PROJECT_SOURCE_DIR}/apps/kvferry/stop_signals.cpp
  LIBS fmt::fmt LABELS unit TIMEOUT 60)
target_include_directories(test_mps_daemon PRIVATE ${PROJECT_SOURCE_DIR}/apps/kvferry)

# `kvferry launch` starts a private MPS daemon for two workers of this host
# on one GPU and stops it after them (stand-in control program and workers).
add_test(NAME test_launch_mps
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/integration/launch_mps_test.sh $<TARGET_FILE:kvferry>)
set_tests_properties(test_launch_mps PROPERTIES LABELS integration TIMEOUT 180)

# A command's child processes (spawn, exit status, process group, SIGKILL
# after the deadline) and the one stop-signal rule of every command (first
# signal: graceful; second: now, with the children), against /bin/sh.
kvferry_add_test(NAME test_subprocess
  SOURCES unit/subprocess_test.cpp ${PROJECT_SOURCE_DIR}/apps/kvferry/subprocess.cpp
    ${PROJECT_SOURCE_DIR}/apps/kvferry/stop_signals.cpp
  LIBS fmt::fmt LABELS unit TIMEOUT 60)
target_include_directories(test_subprocess PRIVATE ${PROJECT_SOURCE_DIR}/apps/kvferry)
