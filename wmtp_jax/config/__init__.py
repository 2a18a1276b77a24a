"""Run configs: the sections every ``configs/<pipeline>.py`` shares (``common``)."""
