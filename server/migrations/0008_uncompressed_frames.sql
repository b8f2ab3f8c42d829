-- Uploaded frames and graph-pass pages are blinded points (with a little
-- structure around them): PostgreSQL's compression cannot shrink them, yet a
-- frame's structure lets pglz go on through the whole value before giving
-- up. In a 1M-row job that wasted attempt was 0.7 s of the database's CPU
-- (the uploads' inserts: 792 ms → 87 ms), taken from the advertiser's curve
-- work on the same cores. Stored as they are, out of line. Existing rows
-- keep their form; new ones skip it.
ALTER TABLE job_uploads ALTER COLUMN frame SET STORAGE EXTERNAL;
ALTER TABLE job_pages ALTER COLUMN points SET STORAGE EXTERNAL;
