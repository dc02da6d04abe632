"""marketflow: batch ELT of crypto-exchange market data (ccxt -> MongoDB raw -> Postgres staging -> dbt marts)."""

from pathlib import Path

__version__ = "0.1.0"

# plugins/ and include/ sit side by side in the repo and in the Airflow image (/opt/airflow/...).
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
