-- Row count and checksum of every user table in the current database, one line each:
-- table|rows|md5 of the rows' text in a fixed order. Run by restore-drill.yml on the
-- primary and on the restored copy.
SELECT format(
  'SELECT %L, count(*), md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) FROM %s t',
  c.oid::regclass::text, c.oid::regclass)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
\gexec
