"""The market-data API (FastAPI): app.py; auth.py; settings.py."""
