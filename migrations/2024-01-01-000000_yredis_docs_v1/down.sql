DROP TABLE IF EXISTS yredis_docs_v1;
