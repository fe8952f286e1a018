"""detector: a log-tailing anomaly and silence detector for Linux hosts.

Data flows one way: sources → matching → rules → store → delivery; ``service.py`` wires the stages.
"""

__version__ = "0.1.0"
