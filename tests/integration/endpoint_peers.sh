#!/usr/bin/env bash
# The endpoint across two processes through each surface (issue #16): a
# server and a client, C++ with C++, C with C, Python with Python, and mixed
# (Python server, C client; C++ server, Python client), over kvsock on
# loopback. Each side verifies every byte (endpoint_peer.{cpp,c,py}).
#
# With "teardown N": the send/teardown race instead. A client that destroys
# its endpoint as soon as its send completed, with no goodbye, N times in a
# row (C++, then C); the C++ server must receive and verify every send.
# Usage: endpoint_peers.sh <cpp peer> <c peer> <python3> [teardown N]
#        (PYTHONPATH set)
set -u
cpp=$1 c=$2 py=$3 mode=${4:-pairs} rounds=${5:-0}
here=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/endpoint_peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
side() {  # <language> <role> <dir> [rounds]
  # KVFERRY_PYTHON_ENV: e.g. the sanitizer runtimes to preload (engine.cmake),
  # split into words on purpose.
  # shellcheck disable=SC2086
  case $1 in
    cpp) timeout 120 "$cpp" "$2" "$3" ${4:+"$4"} ;;
    c) timeout 120 "$c" "$2" "$3" ${4:+"$4"} ;;
    py) timeout 60 env ${KVFERRY_PYTHON_ENV:-} "$py" "$here/endpoint_peer.py" "$2" "$3" ;;
  esac
}
failures=0
# One exchange: <server> <client> <label> <server's line> [rounds]
exchange() {
  local server=$1 client=$2 label=$3 expect=$4 n=${5:-}
  local dir="$WORK/$server-$client" role=""
  [ -n "$n" ] && role="teardown-"
  mkdir -p "$dir"
  side "$server" "${role}server" "$dir" "$n" > "$dir/server.log" 2>&1 &
  local spid=$!
  pids+=("$spid")
  side "$client" "${role}client" "$dir" "$n" > "$dir/client.log" 2>&1
  local crc=$?
  wait "$spid"
  local src=$?
  if [ $crc -eq 0 ] && [ $src -eq 0 ] && grep -q "$expect" "$dir/server.log"; then
    echo "ok   - $label"
  else
    echo "FAIL - $label: server rc $src, client rc $crc"
    sed 's/^/    server: /' "$dir/server.log"
    sed 's/^/    client: /' "$dir/client.log"
    failures=$((failures + 1))
  fi
}
if [ "$mode" = teardown ]; then
  for client in cpp c; do
    exchange cpp "$client" "$client client: $rounds sends, each endpoint destroyed at once" \
      "server: verified $rounds sends" "$rounds"
  done
else
  for pair in cpp:cpp c:c py:py py:c cpp:py; do
    server=${pair%%:*} client=${pair##*:}
    exchange "$server" "$client" "$server server, $client client" "server: verified"
  done
fi
exit $((failures > 0))
