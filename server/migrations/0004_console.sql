-- The operator console: operators (Argon2id password hash, sealed TOTP
-- secret, last accepted TOTP step) and sessions, kept only as a keyed hash
-- of their ID. An operator's removal ends its sessions (ON DELETE CASCADE).
CREATE TABLE console_operators (
    name           text   PRIMARY KEY,
    -- The last accepted TOTP step, outside the record so that accepting a
    -- code is one compare-and-set (UPDATE ... WHERE totp_last_step < $2).
    totp_last_step bigint NOT NULL,
    record         bytea  NOT NULL
);

CREATE TABLE console_sessions (
    id_hash   bytea  PRIMARY KEY,
    operator  text   NOT NULL REFERENCES console_operators (name) ON DELETE CASCADE,
    created   bigint NOT NULL,
    last_seen bigint NOT NULL
);
CREATE INDEX console_sessions_by_operator ON console_sessions (operator);
