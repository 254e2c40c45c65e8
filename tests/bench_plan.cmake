# kvferry bench plan (host time to build a GPU copy plan): needs no GPU, runs everywhere.
kvferry_add_test(NAME test_bench_plan SOURCES integration/bench_plan_test.cpp
  LIBS nlohmann_json::nlohmann_json LABELS integration TIMEOUT 120)
add_dependencies(test_bench_plan kvferry)
