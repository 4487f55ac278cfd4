#!/bin/bash
# Inserts one row per try through a read-write multi-host connection until one
# succeeds; prints the epoch time (s) of the first acknowledged insert. Bounded: gives
# up after $2 seconds (exit 1). $1: the token to write.
set -u
token=$1 limit=$2
deadline=$(( $(date +%s) + limit ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if psql -X -q -v ON_ERROR_STOP=1 -At \
      "$ZAPORA_PG_RW connect_timeout=1" \
      -c "INSERT INTO molecule_probe (token) VALUES ('$token')" >/dev/null 2>&1; then
    date +%s.%N
    exit 0
  fi
  sleep 0.2
done
echo "no write accepted within ${limit}s" >&2
exit 1
