# syntax=docker/dockerfile:1
#
# marketflow Airflow image.
#
# * Base: the official Airflow image, pinned to the same version as the `apache-airflow==` pin in
#   requirements.txt (tests/compose checks that they agree).
# * Airflow-side dependencies (providers, astronomer-cosmos, ccxt, pymongo, ...) are installed from
#   the fully pinned requirements.txt into the airflow user's site-packages, as the official
#   "extend the image" recipe does. No constraints file is used: the requirements file is the lock.
# * dbt (requirements-dbt.txt) lives in its OWN virtualenv, because dbt-core's pins conflict with
#   Airflow's. Cosmos / the CLI reach it through MARKETFLOW_DBT_EXECUTABLE=${DBT_VENV}/bin/dbt.
# * Nothing that docker-compose bind-mounts in development (dags/, plugins/, include/, dbt/) is
#   copied into the image; .dockerignore keeps the build context down to the two requirements files.
# * The product and nothing else: no exchange emulator, nx-27017 or other test tool, no tests, bench or
#   fault suite (requirements-dev.txt holds those; tests/compose/test_image_contents.py checks it).

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
ARG DBT_VENV=/opt/dbt-venv

# --- dbt in an isolated virtualenv (root-owned, world-readable/executable) -------------------------
USER root
COPY requirements-dbt.txt /tmp/requirements-dbt.txt
# The base image sets PIP_USER=true for the airflow user; a --user install is invalid inside a venv.
# /opt/airflow/auth is the mount point of the shared `airflow-auth` volume (simple auth manager
# passwords file): a fresh named volume copies its ownership, so airflow (any UID, GID 0) can write.
RUN python -m venv "${DBT_VENV}" \
    && PIP_USER=false PIP_ROOT_USER_ACTION=ignore \
       "${DBT_VENV}/bin/pip" install --no-cache-dir -r /tmp/requirements-dbt.txt \
    && "${DBT_VENV}/bin/python" -c "import dbt.adapters.postgres" \
    && rm -f /tmp/requirements-dbt.txt \
    && mkdir -p /opt/airflow/auth \
    && chown airflow:0 /opt/airflow/auth \
    && chmod 0775 /opt/airflow/auth

# --- Airflow-side Python dependencies ------------------------------------------------------------
USER airflow
COPY --chown=airflow:0 requirements.txt /tmp/requirements.txt
# Re-stating apache-airflow==${AIRFLOW_VERSION} guards against a requirement silently moving Airflow.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/requirements.txt

ENV MARKETFLOW_DBT_EXECUTABLE=${DBT_VENV}/bin/dbt
