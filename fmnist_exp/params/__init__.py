"""Parameters: the one table (:mod:`.table`), its typed values (:mod:`.typed`) and how overrides
resolve into them (:mod:`.resolve`)."""

from . import commands, migrations, table
from .resolve import Layers, as_trained, command, compose, family, network, replaced, trained, tune_args, with_epochs
from .table import DEFAULT_FAMILY, FAMILIES, NETWORK_FAMILIES, ConfigError, Param, parse_int_list
from .typed import (
                      BaselineParams,
                      BuiltinParams,
                      CnnParams,
                      CommandArgs,
                      CustomParams,
                      DashboardArgs,
                      DataParams,
                      FamilyParams,
                      FitParams,
                      LaunchArgs,
                      MlpParams,
                      NetworkParams,
                      PredictArgs,
                      PromoteArgs,
                      ProxyArgs,
                      ReproduceArgs,
                      ServeArgs,
                      TrainArgs,
                      TuneArgs,
)

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "NETWORK_FAMILIES", "BaselineParams", "BuiltinParams",
           "CnnParams", "CommandArgs", "ConfigError", "CustomParams", "DashboardArgs", "DataParams", "FamilyParams",
           "FitParams", "LaunchArgs", "Layers", "MlpParams", "NetworkParams", "Param", "PredictArgs", "PromoteArgs",
           "ProxyArgs", "ReproduceArgs", "ServeArgs", "TrainArgs", "TuneArgs", "as_trained", "command", "commands",
           "compose", "family", "migrations", "network", "parse_int_list", "replaced", "table", "trained", "tune_args",
           "with_epochs"]
