-- Run once, on the first start of a new database, by the image's entrypoint
-- (docker/Dockerfile copies it into /docker-entrypoint-initdb.d; psql runs it with
-- ON_ERROR_STOP against $POSTGRES_DB). A bucket that already holds a database is never
-- initialised again, so this never runs twice on the same data.

-- OrioleDB tables need the extension in every database that holds them.
CREATE EXTENSION IF NOT EXISTS orioledb;

-- Databases made later with CREATE DATABASE copy template1: give it the extension too.
\connect template1
CREATE EXTENSION IF NOT EXISTS orioledb;
