"""Automation: daily collection, weekly retraining, and a drift sensor that requests re-evaluation."""

from sensors.automation import daily_collection_schedule, drift_sensor, weekly_retraining_schedule

__all__ = ["daily_collection_schedule", "drift_sensor", "weekly_retraining_schedule"]
