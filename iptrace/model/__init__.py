"""Frozen dataclasses for rulesets (and, in cluster.py, the cluster's API objects). Imports nothing of
iptrace but errors."""

from iptrace.model.rules import Chain, LoadWarning, Match, Option, Rule, Ruleset, RuleShape, Table, Target

__all__ = ["Chain", "LoadWarning", "Match", "Option", "Rule", "RuleShape", "Ruleset", "Table", "Target"]
