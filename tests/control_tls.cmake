# The control plane's mutual TLS against real directory and worker processes:
# junk at the handshake, clients without certificates, listeners' addresses.
kvferry_add_test(NAME test_control_tls SOURCES faults/control_tls_test.cpp
  LIBS kvferry_actors LABELS faults integration slow TIMEOUT 240) # 20-31 s
add_dependencies(test_control_tls kvferry)
kvferry_add_test(NAME test_tls_config SOURCES unit/tls_config_test.cpp
  LIBS kvferry_actors LABELS unit TIMEOUT 60)
