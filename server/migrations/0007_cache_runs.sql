-- The (b·P(y), a·b·P(y)) cache as runs: one row per cached graph-pass page,
-- its pairs sorted by b·P(y) and packed into one bytea (64 bytes a pair),
-- keyed by its first and last b·P(y) and the first 16 bytes of the SHA-256
-- of its b·P(y). A page costs one insert instead of 8,192 B-tree inserts,
-- and a namespace reads back as a few hundred rows.

CREATE TABLE cache_runs (
    ns    bytea NOT NULL,
    key   bytea NOT NULL,
    pairs bytea NOT NULL,
    PRIMARY KEY (ns, key)
);
-- Blinded points do not compress: do not try.
ALTER TABLE cache_runs ALTER COLUMN pairs SET STORAGE EXTERNAL;

-- The pairs already cached, in runs of 8,192.
INSERT INTO cache_runs (ns, key, pairs)
SELECT ns,
       (array_agg(bpy ORDER BY bpy))[1]
           || (array_agg(bpy ORDER BY bpy DESC))[1]
           || substring(sha256(string_agg(bpy, ''::bytea ORDER BY bpy)) FROM 1 FOR 16),
       string_agg(bpy || abpy, ''::bytea ORDER BY bpy)
FROM (SELECT ns, bpy, abpy,
             (row_number() OVER (PARTITION BY ns ORDER BY bpy) - 1) / 8192 AS run
      FROM cache_pairs) numbered
GROUP BY ns, run;

DROP TABLE cache_pairs;
