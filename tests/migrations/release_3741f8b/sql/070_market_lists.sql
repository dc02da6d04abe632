-- ccxt's market list per exchange and API address, shared by every task process
-- (plugins/marketflow/exchanges.py load_markets). Each backfill chunk is its own Airflow task
-- process; without this each would fetch the list again (Binance's exchangeInfo weighs 20, as
-- much as ten 1000-candle pages).
CREATE TABLE IF NOT EXISTS ops.market_lists (
    exchange    text        NOT NULL,
    api         text        NOT NULL,
    loaded_at   timestamptz NOT NULL,
    markets     json        NOT NULL,
    currencies  json,
    CONSTRAINT market_lists_pk PRIMARY KEY (exchange, api)
);
COMMENT ON TABLE ops.market_lists IS 'ccxt market lists (markets, currencies) as last loaded per exchange and API address; reused for an hour by every task.';
