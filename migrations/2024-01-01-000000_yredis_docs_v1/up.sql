-- The table @y/redis 0.1.x creates; IF NOT EXISTS so an existing deployment's table is adopted as is.
CREATE TABLE IF NOT EXISTS yredis_docs_v1 (
  room text,
  doc text,
  r SERIAL,
  update bytea,
  sv bytea,
  PRIMARY KEY (room, doc, r)
);
