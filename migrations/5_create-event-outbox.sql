-- The transactional outbox of user events. A row is written by the very
-- statement that changes the user (so a change commits with its event or
-- not at all); the relay (src/db/outbox-relay.ts) publishes it to RabbitMQ
-- and marks it sent once the broker confirmed it. Sent rows are pruned
-- after EVENTS_RETENTION_SECONDS.
CREATE TABLE event_outbox (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The CloudEvents id: the same on every redelivery, so consumers deduplicate by it.
  event_id     uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
  type         text NOT NULL CHECK (type IN ('user.created', 'user.updated', 'user.deleted')),
  user_id      bigint NOT NULL,
  user_version bigint NOT NULL,
  -- The user after the change, or {"id"} for a delete.
  data         jsonb NOT NULL,
  -- W3C trace context of the request that made the change, when traced.
  traceparent  text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  sent_at      timestamptz
);

-- What the relay claims: unsent events in order, and per user the oldest
-- unsent one (events of one user go out in version order).
CREATE INDEX event_outbox_unsent_idx ON event_outbox (user_id, id) WHERE sent_at IS NULL;
CREATE INDEX event_outbox_unsent_order_idx ON event_outbox (id) WHERE sent_at IS NULL;
-- What the pruner deletes.
CREATE INDEX event_outbox_sent_at_idx ON event_outbox (sent_at) WHERE sent_at IS NOT NULL;
