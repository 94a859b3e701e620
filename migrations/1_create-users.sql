-- Users, as the API serves them. Email uniqueness is case-insensitive in the
-- database itself (the index on lower(email)), so no race between two
-- requests can let "Ada@x.io" and "ada@x.io" both in.
CREATE TABLE users (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 50),
  email      text CHECK (email IS NULL OR char_length(email) BETWEEN 3 AND 254),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
