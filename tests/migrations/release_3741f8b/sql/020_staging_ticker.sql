-- Ticker snapshots: one row per (market, exchange timestamp).
CREATE TABLE IF NOT EXISTS staging.ticker (
    exchange        text        NOT NULL,
    symbol          text        NOT NULL,
    ts              timestamptz NOT NULL,
    last            numeric,
    bid             numeric,
    ask             numeric,
    bid_volume      numeric,
    ask_volume      numeric,
    base_volume     numeric,
    quote_volume    numeric,
    raw_payload_id  text        NOT NULL,
    run_id          text        NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ticker_pk PRIMARY KEY (exchange, symbol, ts),
    CONSTRAINT ticker_non_negative CHECK (
        (last IS NULL OR last >= 0) AND (bid IS NULL OR bid >= 0) AND (ask IS NULL OR ask >= 0)
    )
);
CREATE INDEX IF NOT EXISTS ticker_ingested_at_idx ON staging.ticker (ingested_at);
COMMENT ON TABLE staging.ticker IS 'Last trade / best bid / best ask snapshots per market.';
