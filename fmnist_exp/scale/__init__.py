"""Scale-out, apart from the pipeline: the Optuna storage for one worker or many (URL, retries,
heartbeats, locks), the gRPC storage proxy, the tracking server's health, and optuna-dashboard.
The study stage and the commands use it; it uses no stage."""
