#!/usr/bin/env bash
# The send/teardown race (issue #16): a client that destroys its endpoint as
# soon as its send completed, with no goodbye, N times in a row; the server
# (C++) must receive and verify every send. Clients: C++, then C.
# Usage: endpoint_teardown.sh <cpp peer> <c peer> <rounds>
set -u
cpp=$1 c=$2 rounds=$3
WORK=$(mktemp -d /tmp/endpoint_teardown.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
failures=0
for client in cpp c; do
  dir="$WORK/$client"
  mkdir -p "$dir"
  timeout 120 "$cpp" teardown-server "$dir" "$rounds" > "$dir/server.log" 2>&1 &
  spid=$!
  pids+=("$spid")
  if [ "$client" = cpp ]; then peer=$cpp; else peer=$c; fi
  timeout 120 "$peer" teardown-client "$dir" "$rounds" > "$dir/client.log" 2>&1
  crc=$?
  wait "$spid"
  src=$?
  if [ $crc -eq 0 ] && [ $src -eq 0 ] &&
     grep -q "server: verified $rounds sends" "$dir/server.log"; then
    echo "ok   - $client client: $rounds sends, each endpoint destroyed at once"
  else
    echo "FAIL - $client client (rc $crc), C++ server (rc $src)"
    sed 's/^/    server: /' "$dir/server.log"
    sed 's/^/    client: /' "$dir/client.log"
    failures=$((failures + 1))
  fi
done
exit $((failures > 0))
