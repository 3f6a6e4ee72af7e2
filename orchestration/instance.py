"""The Dagster instance's settings, chosen by the environment (`make ui` writes them).

With nothing set, everything stays in DAGSTER_HOME: SQLite storage and local step logs,
the embedded default. A team points the instance at its own servers by environment:

- DAGSTER_PG_HOST (with DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, and optionally
  DAGSTER_PG_PORT and DAGSTER_PG_DB): runs, event logs and schedules in PostgreSQL;
- CVAE_LOGS_S3_BUCKET (with the usual AWS_* credentials, AWS_ENDPOINT_URL for a store
  other than AWS, and optionally CVAE_LOGS_S3_PREFIX): step logs in S3.

The written file names the variables, never their values, so no secret lands on disk.

    python -m orchestration.instance DAGSTER_HOME
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from cvae.core.atomic import replace_file

BASE = Path(__file__).resolve().parent / "dagster.yaml"  # pools and telemetry, for every instance
REQUIRED_PG = ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")


def _env(name: str) -> dict:
    return {"env": name}


def postgres_storage(environ: Mapping[str, str]) -> dict:
    missing = [name for name in REQUIRED_PG if name not in environ]
    if missing:
        raise SystemExit(f"DAGSTER_PG_HOST is set, so Dagster's storage goes to PostgreSQL, but {', '.join(missing)} "
                         "must be set too")
    return {"postgres": {
        "postgres_db": {
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres installs psycopg2
            "scheme": "postgresql+psycopg2",
            "hostname": _env("DAGSTER_PG_HOST"),
            "port": _env("DAGSTER_PG_PORT") if "DAGSTER_PG_PORT" in environ else 5432,
            "username": _env("DAGSTER_PG_USER"),
            "password": _env("DAGSTER_PG_PASSWORD"),
            "db_name": _env("DAGSTER_PG_DB") if "DAGSTER_PG_DB" in environ else "dagster",
        },
    }}


def s3_compute_logs(environ: Mapping[str, str], home: Path) -> dict:
    config = {
        "bucket": _env("CVAE_LOGS_S3_BUCKET"),
        "prefix": _env("CVAE_LOGS_S3_PREFIX") if "CVAE_LOGS_S3_PREFIX" in environ else "dagster-logs",
        "local_dir": str(home / "compute_logs"),  # staged here while a step runs, then uploaded
        "skip_empty_files": True,
        "show_url_only": False,  # the UI reads the logs back from the bucket (AWS console links are AWS-only)
    }
    if "AWS_ENDPOINT_URL" in environ:
        config["endpoint_url"] = _env("AWS_ENDPOINT_URL")
    return {"module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager", "config": config}


def instance_settings(home: Path, environ: Mapping[str, str] = os.environ) -> dict:
    settings = yaml.safe_load(BASE.read_text())
    if environ.get("DAGSTER_PG_HOST"):
        settings["storage"] = postgres_storage(environ)
    if environ.get("CVAE_LOGS_S3_BUCKET"):
        settings["compute_logs"] = s3_compute_logs(environ, home)
    return settings


def describe(settings: dict) -> str:
    storage = "PostgreSQL" if "storage" in settings else "SQLite in DAGSTER_HOME"
    logs = "S3" if "compute_logs" in settings else "DAGSTER_HOME"
    return f"storage: {storage}; step logs: {logs}"


def write_instance_settings(home: Path, environ: Mapping[str, str] = os.environ) -> dict:
    settings = instance_settings(home, environ)
    home.mkdir(parents=True, exist_ok=True)
    with replace_file(home / "dagster.yaml") as staged:
        staged.write_text("# Written by `python -m orchestration.instance` from the environment: see that module.\n"
                          + yaml.safe_dump(settings, sort_keys=False))
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("home", type=Path, help="the DAGSTER_HOME to write dagster.yaml into")
    args = parser.parse_args(argv)
    settings = write_instance_settings(args.home)
    print(f"{args.home / 'dagster.yaml'}: {describe(settings)}")


if __name__ == "__main__":
    main()
