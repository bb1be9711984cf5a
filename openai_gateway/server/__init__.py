"""The process: bind, serve, reload, drain, workers, the head guard, systemd notifications."""
