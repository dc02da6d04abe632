"""marketflow's Airflow plugin: registers what Airflow itself must be able to load.

Only this file is a plugin; plugins/.airflowignore keeps Airflow's plugin loader out of the
``marketflow`` package (DAG files import it from plugins/, which Airflow puts on its import path).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from marketflow.timetables import FirstRunAtDeployTimetable


class MarketflowPlugin(AirflowPlugin):
    name = "marketflow"
    # The hourly DAG's schedule (serialized DAGs name it; the scheduler loads it from here).
    timetables = [FirstRunAtDeployTimetable]
