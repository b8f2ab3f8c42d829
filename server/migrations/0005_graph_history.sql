-- Delta imports: the persons a delta removes from its base version, staged
-- until the delta is sealed (keyed pseudonyms, never person IDs).
CREATE TABLE graph_removals (
    version bigint NOT NULL,
    person  bytea  NOT NULL,
    PRIMARY KEY (version, person)
);
