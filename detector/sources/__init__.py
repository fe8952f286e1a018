"""Sources: where lines come from (log files, journald). Only this package touches log files."""
