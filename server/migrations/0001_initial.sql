-- onboard's PostgreSQL schema, version 1. Migrations only move forward:
-- a change is a new numbered file, never an edit of an applied one.
-- Unsigned 64-bit values are stored as bigint (two's complement); blinded
-- points, person pseudonyms and hashes as bytea; records the services never
-- query inside as JSON (bytea) beside the indexed columns they are looked up by.

-- Small keyed values: the current graph, the sled-compatible schema number.
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE principals (
    name   text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    hash   bytea NOT NULL UNIQUE,
    record bytea NOT NULL
);

-- Graph versions: numbers from a sequence; `info` once sealed.
CREATE SEQUENCE graph_version_seq;
CREATE TABLE graph_sealed (
    version bigint PRIMARY KEY,
    info    bytea NOT NULL
);

CREATE TABLE imports (
    id     text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE import_batches (
    import   text     NOT NULL,
    part     smallint NOT NULL,
    batch_no integer  NOT NULL,
    hash     bytea    NOT NULL,
    PRIMARY KEY (import, part, batch_no)
);

-- b·P(y) → person per version and kind: the primary key is the join's and
-- the graph pass's index (point look-ups and ordered scans).
CREATE TABLE graph_points (
    version bigint   NOT NULL,
    kind    smallint NOT NULL,
    point   bytea    NOT NULL,
    person  bytea    NOT NULL,
    PRIMARY KEY (version, kind, point)
);

-- Sealed cookie IDs per version, destination and person.
CREATE TABLE graph_cookies (
    version     bigint NOT NULL,
    destination text   NOT NULL,
    person      bytea  NOT NULL,
    tag         bytea  NOT NULL,
    sealed      bytea  NOT NULL,
    PRIMARY KEY (version, destination, person, tag)
);

CREATE TABLE graph_suppressed (
    version bigint NOT NULL,
    person  bytea  NOT NULL,
    PRIMARY KEY (version, person)
);

-- The per-(advertiser, key) cache of (b·P(y), a·b·P(y)).
CREATE TABLE cache_pairs (
    ns   bytea NOT NULL,
    bpy  bytea NOT NULL,
    abpy bytea NOT NULL,
    PRIMARY KEY (ns, bpy)
);

CREATE TABLE cache_complete (
    ns      bytea    NOT NULL,
    version bigint   NOT NULL,
    kind    smallint NOT NULL,
    PRIMARY KEY (ns, version, kind)
);

CREATE TABLE jobs (
    id         text   PRIMARY KEY,
    advertiser text   NOT NULL,
    status     text   NOT NULL,
    touched    bigint NOT NULL,
    record     bytea  NOT NULL
);
CREATE INDEX jobs_by_advertiser ON jobs (advertiser);
CREATE INDEX jobs_by_status_touched ON jobs (status, touched);

CREATE TABLE job_pages (
    job     text     NOT NULL,
    kind    smallint NOT NULL,
    page_no integer  NOT NULL,
    points  bytea    NOT NULL,
    PRIMARY KEY (job, kind, page_no)
);

CREATE TABLE job_pages_done (
    job     text     NOT NULL,
    kind    smallint NOT NULL,
    page_no integer  NOT NULL,
    PRIMARY KEY (job, kind, page_no)
);

CREATE TABLE job_uploads (
    job      text    NOT NULL,
    batch_no integer NOT NULL,
    hash     bytea   NOT NULL,
    frame    bytea   NOT NULL,
    PRIMARY KEY (job, batch_no)
);

CREATE TABLE audiences (
    id           text    PRIMARY KEY,
    advertiser   text    NOT NULL,
    destination  text    NOT NULL,
    expires_unix bigint  NOT NULL,
    pulled       boolean NOT NULL,
    record       bytea   NOT NULL
);
CREATE INDEX audiences_by_destination ON audiences (destination);
CREATE INDEX audiences_by_pair ON audiences (advertiser, destination);
CREATE INDEX audiences_by_expiry ON audiences (expires_unix);
CREATE INDEX audiences_unpulled ON audiences (id) WHERE NOT pulled;

-- Members: `pos` is the opaque cursor position (`len | person | tag`), so a
-- pull is an ordered index scan from the cursor.
CREATE TABLE audience_members (
    audience text  NOT NULL,
    pos      bytea NOT NULL,
    person   text  NOT NULL,
    sealed   bytea NOT NULL,
    PRIMARY KEY (audience, pos)
);

CREATE TABLE optouts (
    point bytea PRIMARY KEY
);

CREATE TABLE erased_persons (
    person bytea PRIMARY KEY
);

CREATE TABLE erased_points (
    point  bytea NOT NULL,
    person bytea NOT NULL,
    PRIMARY KEY (point, person)
);
CREATE INDEX erased_points_by_person ON erased_points (person);

CREATE TABLE audit (
    seq   bigint PRIMARY KEY,
    entry bytea  NOT NULL
);

-- One row per advertiser, locked FOR UPDATE by a spend; charges beside it.
CREATE TABLE budget_advertisers (
    advertiser text PRIMARY KEY
);
CREATE TABLE budget_charges (
    advertiser text   NOT NULL,
    job        text   NOT NULL,
    unix       bigint NOT NULL,
    micro      bigint NOT NULL,
    PRIMARY KEY (advertiser, job)
);
