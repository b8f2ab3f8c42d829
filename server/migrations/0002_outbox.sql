-- Push delivery: each destination's webhook endpoint and the durable outbox.
-- A message row is written in the same transaction as the job or audience
-- record whose change causes it. `seq` orders a destination's messages;
-- the partial index finds each destination's oldest pending ones.
CREATE TABLE webhook_endpoints (
    destination text  PRIMARY KEY,
    record      bytea NOT NULL
);

CREATE SEQUENCE outbox_seq;

CREATE TABLE outbox (
    id          text    PRIMARY KEY,
    destination text    NOT NULL,
    seq         bigint  NOT NULL,
    pending     boolean NOT NULL,
    -- Unix ms when delivered or failed (NULL while pending): pruning.
    ended_ms    bigint,
    record      bytea   NOT NULL
);
CREATE INDEX outbox_by_destination ON outbox (destination, seq);
CREATE INDEX outbox_pending ON outbox (destination, seq) WHERE pending;
CREATE INDEX outbox_ended ON outbox (ended_ms) WHERE ended_ms IS NOT NULL;
