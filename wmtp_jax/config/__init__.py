"""Run configs. ``configs/<pipeline>.py`` (the files ``--config`` names) write out each run's
settings on top of the sections they share (``common``); ``common.load(name, variant)`` returns a
config file's ``get_config(variant)``."""
