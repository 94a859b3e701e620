-- Idempotency-Key records, shared by every replica. A row is written in the
-- same transaction as the user it created, so a key is never recorded
-- without its effect, nor the effect without its key.
CREATE TABLE idempotency_keys (
  key              text PRIMARY KEY CHECK (char_length(key) BETWEEN 1 AND 255),
  -- Hash of the route and the body: the same key with another request is a 422.
  fingerprint      text NOT NULL,
  status_code      smallint,
  response_headers jsonb,
  response_body    text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
