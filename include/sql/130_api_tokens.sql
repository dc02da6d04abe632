-- Revision 0005. Tokens of the standalone market-data API (plugins/marketflow/api): only their SHA-256
-- is stored (a token is 32 random bytes, so a plain hash is not guessable; no salt or slow hash needed),
-- created and revoked with `marketflow api-token create|revoke|list`.
CREATE TABLE IF NOT EXISTS ops.api_tokens (
    token_id        bigserial   PRIMARY KEY,
    name            text        NOT NULL,
    token_sha256    text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL DEFAULT current_user,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);
COMMENT ON TABLE ops.api_tokens IS 'Bearer tokens of the standalone API, by SHA-256 (marketflow api-token).';

-- marketflow_api: the role the API logs in as (through a LOGIN member). It reads the marts as an analyst
-- and may check a token through the function below, but reads no ops table itself.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'marketflow_api') THEN
        CREATE ROLE marketflow_api NOLOGIN IN ROLE analyst;
    END IF;
END
$$;
COMMENT ON ROLE marketflow_api IS 'marketflow: the market-data API (analyst + token check).';

-- The name of the live token with this hash, NULL when unknown or revoked; stamps last_used_at at most
-- once a minute (a write per request would make every read a write).
CREATE OR REPLACE FUNCTION ops.api_token_owner(token_sha256 text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE ops.api_tokens AS t SET last_used_at = now()
    WHERE t.token_sha256 = api_token_owner.token_sha256 AND t.revoked_at IS NULL
      AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute');
    SELECT t.name FROM ops.api_tokens AS t
    WHERE t.token_sha256 = api_token_owner.token_sha256 AND t.revoked_at IS NULL;
$$;
REVOKE ALL ON FUNCTION ops.api_token_owner(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA ops TO marketflow_api;
GRANT EXECUTE ON FUNCTION ops.api_token_owner(text) TO marketflow_api;
