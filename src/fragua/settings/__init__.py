"""One typed settings model for every Fragua flow, task and CLI command.

``root`` holds the ``Settings`` model and how it loads (profile, file, environment, overrides);
each section group lives in its own module (``data``, ``train``, ``validate``, ``operations``),
with what they share in ``base``. Import the names from here.
"""

from fragua.settings.base import NAME_PATTERN, check_name, resource_path, shipped_profiles
from fragua.settings.benchmarks import SHIPPED_TASK, BenchmarkSpec
from fragua.settings.data import HF_PREFIX, MODEL_STRATEGIES, DataSettings, DomainRule, ExpandGenerationSettings, ExpandSettings, SourceSpec
from fragua.settings.judge import JudgeSettings
from fragua.settings.operations import CanarySettings, IntakeSettings, NotificationSettings, RegistrySettings, ScaleSettings, TrackingSettings
from fragua.settings.parameters import SettingsOverrides, SettingsParameter, settings_from_overrides
from fragua.settings.serve import ServeSettings
from fragua.settings.root import Settings, describe_validation_error, parse_overrides
from fragua.settings.train import AccelerateSettings, HpoSettings, LoraSettings, QuantSettings, TinyBaseSettings, TrainSettings
from fragua.settings.validate import ChatSettings, ScoreMetric, ValidateSettings

__all__ = [
    "HF_PREFIX",
    "MODEL_STRATEGIES",
    "NAME_PATTERN",
    "SHIPPED_TASK",
    "AccelerateSettings",
    "BenchmarkSpec",
    "CanarySettings",
    "ChatSettings",
    "DataSettings",
    "DomainRule",
    "ExpandGenerationSettings",
    "ExpandSettings",
    "HpoSettings",
    "IntakeSettings",
    "JudgeSettings",
    "LoraSettings",
    "NotificationSettings",
    "QuantSettings",
    "RegistrySettings",
    "ScaleSettings",
    "ScoreMetric",
    "ServeSettings",
    "Settings",
    "SettingsOverrides",
    "SettingsParameter",
    "SourceSpec",
    "TinyBaseSettings",
    "TrackingSettings",
    "TrainSettings",
    "ValidateSettings",
    "check_name",
    "describe_validation_error",
    "parse_overrides",
    "resource_path",
    "settings_from_overrides",
    "shipped_profiles",
]
