# Sinks: per-frame output records (records.py) and their transaction (checkpoint.py).
