"""Automation: daily collection, weekly retraining, a drift sensor that requests re-evaluation, and the served
model's monitoring sensor (re-evaluation or retraining) and schedule."""

from sensors.automation import (
    daily_collection_schedule,
    drift_sensor,
    serving_monitoring_schedule,
    serving_monitoring_sensor,
    weekly_retraining_schedule,
)

__all__ = [
    "daily_collection_schedule",
    "drift_sensor",
    "serving_monitoring_schedule",
    "serving_monitoring_sensor",
    "weekly_retraining_schedule",
]
