-- Graph versions in partitions of their own. An import fills its version's
-- partitions without indexes (a heap append per row instead of a random
-- B-tree insert); sealing the version builds each primary key in one sort,
-- and deleting a version drops its partitions instead of deleting rows.
-- The parents carry no index: each sealed partition has its own primary
-- key, the one the join, the graph pass and cookie look-ups scan.

ALTER TABLE graph_points RENAME TO graph_points_unpartitioned;
ALTER TABLE graph_cookies RENAME TO graph_cookies_unpartitioned;

CREATE TABLE graph_points (
    version bigint   NOT NULL,
    kind    smallint NOT NULL,
    point   bytea    NOT NULL,
    person  bytea    NOT NULL
) PARTITION BY LIST (version);

CREATE TABLE graph_cookies (
    version     bigint NOT NULL,
    destination text   NOT NULL,
    person      bytea  NOT NULL,
    tag         bytea  NOT NULL,
    sealed      bytea  NOT NULL
) PARTITION BY LIST (version);

-- Move the versions already stored, keys and all.
DO $$
DECLARE
    v bigint;
BEGIN
    FOR v IN SELECT version FROM graph_points_unpartitioned
             UNION SELECT version FROM graph_cookies_unpartitioned
    LOOP
        EXECUTE format('CREATE TABLE graph_points_v%s PARTITION OF graph_points FOR VALUES IN (%s)', v, v);
        EXECUTE format('CREATE TABLE graph_cookies_v%s PARTITION OF graph_cookies FOR VALUES IN (%s)', v, v);
        EXECUTE format('INSERT INTO graph_points_v%s SELECT * FROM graph_points_unpartitioned WHERE version = %s', v, v);
        EXECUTE format('INSERT INTO graph_cookies_v%s SELECT * FROM graph_cookies_unpartitioned WHERE version = %s', v, v);
        EXECUTE format('ALTER TABLE graph_points_v%s ADD PRIMARY KEY (version, kind, point)', v);
        EXECUTE format('ALTER TABLE graph_cookies_v%s ADD PRIMARY KEY (version, destination, person, tag)', v);
    END LOOP;
END $$;

DROP TABLE graph_points_unpartitioned;
DROP TABLE graph_cookies_unpartitioned;
