"""Names shared by the warm-start modules: the files of a run folder and the keys the study stores."""

from __future__ import annotations

STUDY_DB = "study.db"
STUDY_JOURNAL = "study.journal"
SUMMARY = "warmstart.json"
CONFIG = "config.yaml"
PLOT_HISTORY = "optuna_history.png"
PLOT_INTERMEDIATE = "optuna_intermediate.png"
PLOT_IMPORTANCES = "optuna_importances.png"

# study / trial user attributes
ATTR_SETTINGS = "ab_plugin.settings"
ATTR_WORKER = "ab_plugin.worker"
ATTR_SURPLUS = "ab_plugin.surplus"
ATTR_ERROR = "ab_plugin.error"
ATTR_RETRY_OF = "ab_plugin.retry_of"
