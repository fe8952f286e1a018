"""Rule evaluators: turn matched lines and the passing of time into alert signals.

One module per rule kind; ``registry.py`` maps a :class:`~detector.model.RuleConfig` kind to its
evaluator class with one explicit dict, no plugin system.
"""
