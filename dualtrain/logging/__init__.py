"""Loggers: one interface (plain numbers in), several sinks (JSONL, console)."""

from dualtrain.logging.base import Logger, LoggerGroup
from dualtrain.logging.console import ConsoleLogger, format_summary
from dualtrain.logging.jsonl import JsonlLogger

__all__ = ["ConsoleLogger", "JsonlLogger", "Logger", "LoggerGroup", "format_summary"]
