"""marketflow's Airflow plugin: registers what Airflow itself must be able to load.

Only this file is a plugin; plugins/.airflowignore keeps Airflow's plugin loader out of the
``marketflow`` package (DAG files import it from plugins/, which Airflow puts on its import path).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from marketflow.timetables import FirstRunAtDeployTimetable, LeadingCronDataIntervalTimetable


@cache
def market_data_api() -> list[dict[str, Any]]:
    """The market-data API inside Airflow's API server, under /marketflow, behind Airflow's own login
    (plugin apps are not protected by Airflow by default: every route of this app checks the caller).
    Its database session opens at the first request, as the login role of MARKETFLOW_API_DATABASE or of
    the Airflow connection marketflow_api (a member of marketflow_api: the marts only)."""
    from marketflow.api.app import create_app
    from marketflow.api.settings import ApiSettings

    app = create_app(ApiSettings.from_env(auth="airflow"))
    return [{"app": app, "url_prefix": "/marketflow", "name": "marketflow market-data API"}]


class MarketflowPlugin(AirflowPlugin):
    name = "marketflow"
    # The hourly and minute DAGs' schedules (serialized DAGs name them; the scheduler loads them from here).
    timetables = [FirstRunAtDeployTimetable, LeadingCronDataIntervalTimetable]
    # "Markets" in the UI's navigation: the page the API serves (ui/, built by `make ui`), shown by Airflow
    # in a frame at /plugin/markets; the frame is same-origin, so the page's calls carry the login cookie.
    external_views = [{"name": "Markets", "href": "/marketflow/ui/", "url_route": "markets", "destination": "nav",
                       "nav_top_level": True, "category": "marketflow"}]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Built when read, and only Airflow's API server reads it: every task process loads this plugin
        # (for the timetable), and importing the app there would add ~0.4 s to each task's start-up.
        return market_data_api()
