-- A counter bumped by every change to a user: the source of its ETag.
-- (updated_at could tie within one clock tick; a counter cannot.)
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1;
