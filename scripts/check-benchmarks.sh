#!/usr/bin/env bash
# Checks docs/benchmarks.md against its own rules (issue #19):
#   - every commit it cites (a word of 7-40 hex digits, see below) is in
#     the history of the checked-out commit (`git merge-base --is-ancestor
#     <sha> HEAD`; on main: an ancestor of main), so that anyone with a
#     clone can build the code a figure came from (a commit that exists only
#     on a side branch or in someone's object store is not enough);
#   - every row of its results table has the six fields (date, machine,
#     command, result, baseline in the same run, peak RSS), the date first.
# Exit status 1 naming each problem (line number and what), 0 otherwise.
# Fast (no build): scripts/test.sh runs it.
#
#   scripts/check-benchmarks.sh [path/to/benchmarks.md]
set -uo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
doc=${1:-$repo_root/docs/benchmarks.md}
[ -f "$doc" ] || { echo "check-benchmarks: $doc not found" >&2; exit 2; }
git -C "$repo_root" rev-parse --git-dir >/dev/null 2>&1 ||
  { echo "check-benchmarks: $repo_root is not a git checkout" >&2; exit 2; }

problems=0
problem() { echo "$doc:$1: $2"; problems=$((problems + 1)); }

# A shallow clone lacks most history: every commit would read as missing,
# so the commit check is skipped there, saying so (run it in a full clone).
shallow=$(git -C "$repo_root" rev-parse --is-shallow-repository 2>/dev/null || echo false)
[ "$shallow" = true ] &&
  echo "check-benchmarks: shallow clone: cited commits NOT checked (fetch the full history to check them)"

# Cited commits: every word of 7-40 hex digits with a digit in it, all-digit
# ones included (a short commit id may have no letter). The doc writes
# figures of 7 digits or more with units or separators (256 MiB, 1,048,576)
# so that none is taken for a commit.
while IFS=: read -r line sha; do
  case $sha in *[0-9]*) ;; *) continue ;; esac
  if ! git -C "$repo_root" cat-file -e "$sha^{commit}" 2>/dev/null; then
    problem "$line" "commit $sha is not in this repository"
  elif ! git -C "$repo_root" merge-base --is-ancestor "$sha" HEAD; then
    problem "$line" "commit $sha is not in the history of HEAD ($(git -C "$repo_root" rev-parse --short HEAD))"
  fi
done < <([ "$shallow" = true ] || grep -noE '\b[0-9a-f]{7,40}\b' "$doc")

# Table rows: | date | machine | command | result | baseline | peak RSS |
while IFS=: read -r line row; do
  case $row in '| date |'*|'| ---'*) continue ;; esac
  fields=$(awk -F'|' '{ print NF - 2 }' <<<"$row")
  [ "$fields" -eq 6 ] ||
    problem "$line" "a results row has $fields fields, not 6 (date, machine, command, result, baseline, peak RSS)"
  [[ $row =~ ^\|\ 20[0-9][0-9]-[0-9][0-9]-[0-9][0-9] ]] ||
    problem "$line" "a results row does not start with its date (YYYY-MM-DD)"
done < <(grep -n '^| ' "$doc")

if [ "$problems" -gt 0 ]; then
  echo "check-benchmarks: $problems problem(s) in $doc"
  exit 1
fi
if [ "$shallow" = true ]; then
  echo "check-benchmarks: $doc: rows complete (commits not checked: shallow clone)"
else
  echo "check-benchmarks: $doc follows its rules (cited commits in the history of HEAD, rows complete)"
fi
