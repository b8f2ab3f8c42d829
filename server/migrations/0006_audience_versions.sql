-- Segment refreshes: an audience keeps its id and gets versions 2, 3, …
-- (the version and the previous version's record live in `record`). The
-- changes of its latest refresh are kept here, one row per member cookie
-- added or removed, keyed like `audience_members` so that a changes pull is
-- an ordered index scan from the cursor. `op` is '+' or '-'.
CREATE TABLE audience_changes (
    audience text     NOT NULL,
    pos      bytea    NOT NULL,
    op       "char"   NOT NULL,
    sealed   bytea    NOT NULL,
    PRIMARY KEY (audience, pos)
);
