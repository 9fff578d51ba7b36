-- pobox PostgreSQL store, schema version 1.
-- Applied by `pobox db migrate` (pobox_store_pg::migrate) in one transaction.

-- One row per maildrop (a user who ever received mail or logged in).
CREATE TABLE maildrops (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every message: in the maildrop (folder IS NULL), in a folder (Sieve
-- fileinto, Junk), or in the restore area (removed_at IS NOT NULL).
-- Times are the node's clock (retention is computed by the node, as on
-- Maildir); leases use the database's clock.
CREATE TABLE messages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    maildrop_id  bigint NOT NULL REFERENCES maildrops (id) ON DELETE CASCADE,
    uidl         text NOT NULL CHECK (octet_length(uidl) BETWEEN 1 AND 70),
    size         bigint NOT NULL,   -- POP3 octets: CRLF line endings, final CRLF included
    stored_bytes bigint NOT NULL,   -- the stored (LF) bytes in message_chunks
    chunks       integer NOT NULL,  -- how many rows message_chunks holds for it
    received_at  timestamptz NOT NULL,
    retrieved_at timestamptz,
    folder       text,
    removed_at   timestamptz,
    -- A UIDL is unique in a maildrop, across folders and the restore area,
    -- so releasing or restoring a message never collides.
    UNIQUE (maildrop_id, uidl)
);
-- The POP3 snapshot and the quota sum: the maildrop's live messages.
CREATE INDEX messages_inbox ON messages (maildrop_id, received_at, id)
    INCLUDE (size) WHERE folder IS NULL AND removed_at IS NULL;

-- Bodies in fixed-size pieces so that delivery and RETR stream in constant
-- memory whatever the message size.
CREATE TABLE message_chunks (
    message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);

-- The RFC 1939 maildrop lock across nodes: a lease with a fencing token.
-- The row is never deleted, so the token only grows: a holder whose lease
-- was taken over can never match the token again.
CREATE TABLE maildrop_lease (
    maildrop_id bigint PRIMARY KEY REFERENCES maildrops (id) ON DELETE CASCADE,
    node        text NOT NULL,
    token       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
