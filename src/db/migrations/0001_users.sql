-- The first table: users, for POST /api/users and GET /api/users/{id}.
CREATE TABLE users (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    email      text        NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    created_at timestamptz NOT NULL DEFAULT now()
);
