"""Asset jobs: collection per day, the training lifecycle per as-of day, and re-evaluation after drift.

``jobs_for`` builds them for one policy graph (its asset keys, its job names); the module-level jobs are the
single-policy default graph's, under the names they have always had. With the ``celery`` extra installed,
``celery_jobs`` adds each graph's ``celery_collection_job``: the launch sequence's first part — the policy and the
training window's collection backfill — with every step executed by Celery workers.
"""

from importlib.util import find_spec
from typing import Any

from dagster import AssetSelection, define_asset_job

from ppml_assets.graph import DEFAULT_GRAPH, PolicyGraph
from ppml_assets.settings import daily_partitions

COLLECTION_ASSETS = ["raw_records", "deidentified_records"]
TRAINING_ASSETS = [
    "anonymized_records",
    "dp_statistics",
    "cleaned_records",
    "training_features",
    "drift_reference",
    "dp_model",
    "non_private_baseline",
    "privacy_budget",
    "model_evaluation",
    "privacy_evaluation",
    "privacy_audit",
    "compliance_status",
    "registered_model",
    "compliance_report",
]
REEVALUATION_ASSETS = [
    "model_evaluation",
    "privacy_evaluation",
    "compliance_status",
    "registered_model",
    "compliance_report",
]


def jobs_for(graph: PolicyGraph) -> list[Any]:
    """The requirements, collection, training, re-evaluation and serving-monitoring jobs of one policy graph."""

    def select(names: list[str]) -> AssetSelection:
        return AssetSelection.assets(*[graph.key(name) for name in names])

    return [
        define_asset_job(
            graph.name("requirements_job"),
            selection=select(["privacy_requirements"]),
            description="Validate the policy.",
        ),
        define_asset_job(
            graph.name("collection_job"),
            selection=select(COLLECTION_ASSETS),
            partitions_def=daily_partitions,
            description="Collect and de-identify one day (or a range of days in one run).",
        ),
        define_asset_job(
            graph.name("training_job"),
            selection=select(TRAINING_ASSETS),
            partitions_def=daily_partitions,
            description="The lifecycle from anonymization to the compliance report, as of one day.",
        ),
        define_asset_job(
            graph.name("reevaluation_job"),
            selection=select(REEVALUATION_ASSETS),
            partitions_def=daily_partitions,
            description="Re-run evaluation and the compliance gate for an as-of day (requested by the drift sensor).",
        ),
        define_asset_job(
            graph.name("serving_monitoring_job"),
            selection=select(["serving_monitoring"]),
            description="Monitor the served production version over the prediction log (drift, accuracy, age).",
        ),
    ]


requirements_job, collection_job, training_job, reevaluation_job, serving_monitoring_job = jobs_for(DEFAULT_GRAPH)


def celery_jobs(graph: PolicyGraph) -> list[Any]:
    """One graph's celery-executor jobs, when dagster-celery is installed (``pip install 'ppml[celery]'``)."""
    if find_spec("dagster_celery") is None:
        return []
    from dagster_celery import celery_executor

    from ppml_assets.celery_app import celery_executor_config

    return [
        define_asset_job(
            graph.name("celery_collection_job"),
            selection=AssetSelection.assets(
                *[graph.key(name) for name in ["privacy_requirements", *COLLECTION_ASSETS]]
            ),
            partitions_def=daily_partitions,
            executor_def=celery_executor.configured(celery_executor_config(), name="ppml_celery"),
            description="The policy and a range of days' collection in one run, each step on a Celery worker.",
        )
    ]
