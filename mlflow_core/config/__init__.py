from mlflow_core.config.loader import CONFIG_FILENAME, load_config, load_config_text
from mlflow_core.config.schema import WorkflowConfig

__all__ = ["CONFIG_FILENAME", "WorkflowConfig", "load_config", "load_config_text"]
