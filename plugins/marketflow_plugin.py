"""marketflow's Airflow plugin: registers what Airflow itself must be able to load.

Only this file is a plugin; plugins/.airflowignore keeps Airflow's plugin loader out of the
``marketflow`` package (DAG files import it from plugins/, which Airflow puts on its import path).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from marketflow.api.app import create_app
from marketflow.api.settings import ApiSettings
from marketflow.timetables import FirstRunAtDeployTimetable

# The market-data API inside Airflow's API server, under /marketflow, behind Airflow's own login (plugin
# apps are not protected by Airflow by default: every route of this app checks the caller). Its database
# session opens at the first request, as the login role of MARKETFLOW_API_DATABASE or of the Airflow
# connection marketflow_api (a member of marketflow_api: the marts only).
market_data_api = create_app(ApiSettings.from_env(auth="airflow"))


class MarketflowPlugin(AirflowPlugin):
    name = "marketflow"
    # The hourly DAG's schedule (serialized DAGs name it; the scheduler loads it from here).
    timetables = [FirstRunAtDeployTimetable]
    fastapi_apps = [{"app": market_data_api, "url_prefix": "/marketflow", "name": "marketflow market-data API"}]
