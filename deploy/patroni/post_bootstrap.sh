#!/bin/sh
# Patroni runs this once, on the first primary, after initdb: tally's database. Patroni
# passes a connection URL as the first argument. `tally db upgrade` makes the tables.
# The first primary has no standby yet, and in strict synchronous mode a commit would
# wait for one (which cannot clone it before this script is done): this one does not.
set -eu
psql "$1" --set ON_ERROR_STOP=1 \
    --command "SET synchronous_commit TO local" --command "CREATE DATABASE tally"
