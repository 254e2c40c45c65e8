namespace kvferry::actors { int placeholder() { return 0; } }
