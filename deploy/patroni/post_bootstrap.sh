#!/bin/sh
# Patroni runs this once, on the first primary, after initdb: tally's database. Patroni
# passes a connection URL as the first argument. `tally db upgrade` makes the tables.
set -eu
psql "$1" --set ON_ERROR_STOP=1 --command "CREATE DATABASE tally"
