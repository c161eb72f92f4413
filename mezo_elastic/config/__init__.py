"""The one config tree (schema.py: every default, with its help) and how it is read (parse.py: file + flags);
docs.py writes docs/configuration.md from it. May import: errors, data.tasks (task names). Nothing else.
"""

from mezo_elastic.config.parse import (
                                        from_dict,
                                        help_text,
                                        iter_fields,
                                        load_file,
                                        parse_args,
)
from mezo_elastic.config.schema import (
                                        SECTIONS,
                                        CheckpointConfig,
                                        Config,
                                        DataConfig,
                                        DistConfig,
                                        GenerateConfig,
                                        MezoConfig,
                                        ModelConfig,
                                        PeftConfig,
                                        TrainConfig,
)

__all__ = ["SECTIONS", "CheckpointConfig", "Config", "DataConfig", "DistConfig", "GenerateConfig", "MezoConfig",
           "ModelConfig", "PeftConfig", "TrainConfig", "from_dict", "help_text", "iter_fields", "load_file",
           "parse_args"]
