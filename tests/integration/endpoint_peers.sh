#!/usr/bin/env bash
# The endpoint across two processes through each surface (issue #16): a
# server and a client, C++ with C++, C with C, Python with Python, and mixed
# (Python server, C client; C++ server, Python client), over kvsock on
# loopback. Each side verifies every byte (endpoint_peer.{cpp,c,py}).
# Usage: endpoint_peers.sh <cpp peer> <c peer> <python3>   (PYTHONPATH set)
set -u
cpp=$1 c=$2 py=$3
here=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/endpoint_peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
side() {  # <language> <role> <dir>
  case $1 in
    cpp) timeout 60 "$cpp" "$2" "$3" ;;
    c) timeout 60 "$c" "$2" "$3" ;;
    # KVFERRY_PYTHON_ENV: e.g. the sanitizer runtimes to preload (engine.cmake)
    # shellcheck disable=SC2086
    py) timeout 60 env ${KVFERRY_PYTHON_ENV:-} "$py" "$here/endpoint_peer.py" "$2" "$3" ;;
  esac
}
failures=0
for pair in cpp:cpp c:c py:py py:c cpp:py; do
  server=${pair%%:*} client=${pair##*:}
  dir="$WORK/$server-$client"
  mkdir -p "$dir"
  side "$server" server "$dir" > "$dir/server.log" 2>&1 &
  spid=$!
  pids+=("$spid")
  side "$client" client "$dir" > "$dir/client.log" 2>&1
  crc=$?
  wait "$spid"
  src=$?
  if [ $crc -eq 0 ] && [ $src -eq 0 ] &&
     grep -q "server: verified" "$dir/server.log" &&
     grep -q "client: wrote, read back and sent" "$dir/client.log"; then
    echo "ok   - $server server, $client client"
  else
    echo "FAIL - $server server (rc $src), $client client (rc $crc)"
    sed 's/^/    server: /' "$dir/server.log"
    sed 's/^/    client: /' "$dir/client.log"
    failures=$((failures + 1))
  fi
done
exit $((failures > 0))
